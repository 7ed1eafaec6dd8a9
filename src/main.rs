//! `luna`: the command-line front end of luna-wgpu.

use clap::{Parser, Subcommand, ValueEnum};
use luna_wgpu::config::Config;
use luna_wgpu::gpu::context::{describe, list_adapters};
use luna_wgpu::{tensors, AdapterChoice, Batch, EncoderOutput, Engine, LunaError, Model, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(name = "luna", version, about = "Luna (Linear Unified Nested Attention) on WebGPU")]
struct Cli {
    /// Adapter to use, by name, backend (vulkan, metal, dx12, gl) or type (cpu, discretegpu); default: LUNA_ADAPTER, else the best one
    #[arg(long, global = true)]
    adapter: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Device {
    /// The GPU, or the CPU reference (with a warning) when no adapter exists
    Auto,
    /// The GPU only; fails without an adapter
    Gpu,
    /// The float64 CPU reference
    Cpu,
}

#[derive(Subcommand)]
enum Command {
    /// Print the adapters, and the chosen one's limits and features
    Info,
    /// Run a model on a token file: writes `x` [B, n, d] and `p` [B, l', d]
    Forward {
        #[arg(long)]
        model: PathBuf,
        /// safetensors file holding `tokens`, int32 or int64 [B, n], right-padded with padding_idx
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value = "auto")]
        device: Device,
        /// Run the forward pass this many times and report the median time (the first run builds pipelines)
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
    /// Make a model with random weights for a config
    InitRandom {
        /// JSON config (the `luna.config` keys of LUNA_SPEC.md)
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Make a token file of random sequences for a model, right-padded
    RandomTokens {
        #[arg(long)]
        model: PathBuf,
        /// Lengths of the sequences, comma-separated (e.g. 3000,1200)
        #[arg(long, value_delimiter = ',', required = true)]
        lengths: Vec<usize>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let choice = AdapterChoice::from_arg_or_env(cli.adapter);
    match cli.command {
        Command::Info => info(&choice),
        Command::Forward { model, input, output, device, repeat } => forward(&choice, model, input, output, device, repeat),
        Command::InitRandom { config, out, seed } => {
            let text = std::fs::read_to_string(&config)
                .map_err(|source| LunaError::Io { path: config.display().to_string(), source })?;
            let config = Config::from_json(&text)?;
            let model = Model::random(&config, seed)?;
            model.save(&out)?;
            eprintln!("wrote {} ({} tensors)", out.display(), model.named_tensors().len());
            Ok(())
        }
        Command::RandomTokens { model, lengths, out, seed } => {
            let model = Model::load(&model)?;
            if lengths.contains(&0) {
                return Err(LunaError::Input("every length must be at least 1".into()));
            }
            let (tokens, b, n) = luna_wgpu::init::random_tokens(&model.config, &lengths, seed);
            tensors::write_file(&out, &tensors::serialize_tokens(&tokens, [b, n])?)?;
            eprintln!("wrote {} (tokens [{b}, {n}])", out.display());
            Ok(())
        }
    }
}

fn info(choice: &AdapterChoice) -> Result<()> {
    let adapters = pollster::block_on(list_adapters());
    println!("adapters (best first):");
    for a in &adapters {
        println!("  {}", describe(&a.get_info()));
    }
    let engine = Engine::new_blocking(choice)?;
    println!("\nchosen:\n{}", engine.ctx.report());
    Ok(())
}

fn forward(choice: &AdapterChoice, model_path: PathBuf, input: PathBuf, output: PathBuf, device: Device, repeat: usize) -> Result<()> {
    let model = Model::load(&model_path)?;
    let batch = Batch::from_safetensors(&model.config, &tensors::read_file(&input)?)?;
    let c = &model.config;
    let shape = format!("B={} n={} l'={} d={} layers={}", batch.batch, batch.len, batch.proj_len, c.embed_dim, c.num_layers);
    let engine = match device {
        Device::Cpu => None,
        Device::Gpu => Some(Engine::new_blocking(choice)?),
        Device::Auto => match Engine::new_blocking(choice) {
            Ok(e) => Some(e),
            Err(e @ LunaError::NoAdapter(_)) => {
                eprintln!("warning: {e}\nwarning: falling back to the float64 CPU reference (slow)");
                None
            }
            Err(e) => return Err(e),
        },
    };
    let tokens = batch.lengths.iter().sum::<usize>() as f64;
    let (out, note): (EncoderOutput, String) = match engine {
        None => {
            let t = Instant::now();
            let out = luna_wgpu::reference::encode(&model, &batch);
            let s = t.elapsed().as_secs_f64();
            (out, format!("cpu reference: {shape}: {:.1} ms, {:.0} tokens/s", s * 1e3, tokens / s))
        }
        Some(mut engine) => {
            let gm = engine.load(&model)?;
            let mut times = Vec::new();
            let mut out = None;
            for _ in 0..repeat.max(1) {
                let t = Instant::now();
                out = Some(engine.encode_blocking(&gm, &batch)?);
                times.push(t.elapsed().as_secs_f64());
            }
            let first = times[0];
            times.sort_by(f64::total_cmp);
            let median = times[times.len() / 2];
            let (_, peak) = engine.memory();
            (
                out.unwrap(),
                format!(
                    "{}: {shape}: {:.1} ms (median of {}; first run {:.1} ms), {:.0} tokens/s, GPU memory peak {:.1} MiB",
                    describe(&engine.ctx.info),
                    median * 1e3,
                    times.len(),
                    first * 1e3,
                    tokens / median,
                    peak as f64 / (1 << 20) as f64
                ),
            )
        }
    };
    let meta = HashMap::from([("luna.lengths".to_string(), format!("{:?}", batch.lengths))]);
    let bytes = tensors::serialize_f32(
        &[
            tensors::Named { name: "x", shape: vec![out.batch, out.len, out.dim], data: &out.x },
            tensors::Named { name: "p", shape: vec![out.batch, out.proj_len, out.dim], data: &out.p },
        ],
        Some(meta),
    )?;
    tensors::write_file(&output, &bytes)?;
    eprintln!("{note}\nwrote {}", output.display());
    Ok(())
}
