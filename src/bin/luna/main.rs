//! `luna`: the command-line front end of luna-wgpu. This file only parses the
//! command line (args.rs) and hands each subcommand to its own module.

mod args;
mod bench;
mod compare;
mod device;
mod forward;
mod generate;
mod info;
mod init;
mod lm;
mod score;
mod serve;
mod timing;

use args::{Cli, Command, PrecisionArg};
use luna_wgpu::{AdapterChoice, Precision, Result};
use std::process::ExitCode;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let choice = AdapterChoice::from_arg_or_env(cli.adapter);
    let precision = match cli.precision {
        PrecisionArg::F32 => Precision::F32,
        PrecisionArg::F16 => Precision::F16,
    };
    device::set_options(device::Options { precision, autotune: !cli.no_autotune });
    match cli.command {
        Command::Info => info::run(&choice),
        Command::Forward(args) => forward::run(&choice, args),
        Command::Generate(args) => generate::run(&choice, args),
        Command::Score(args) => score::run(&choice, args),
        Command::Bench(args) => bench::run(&choice, args),
        Command::InitRandom(args) => init::init_random(args),
        Command::RandomTokens(args) => init::random_tokens(args),
        Command::Serve(args) => serve::run(args),
        Command::Compare(args) => compare::run(args),
    }
}
