//! Streams a continuation of a prompt with the causal decoder and shows that
//! both its speed and its state stay flat as the text grows: the decoder keeps
//! one `(Sk, Sv)` per layer and head, whatever the position.
//!
//!     cargo run --release --example stream
//!     cargo run --release --example stream -- --prompt "The os module" --tokens 3000 --every 500
//!
//! Options: --prompt TEXT, --tokens N (1000), --every K (200), --temperature T
//! (0.8), --seed S (1), --model FILE (the shipped model). The text goes to
//! stdout; a line on stderr every K tokens gives the position, tokens/s over
//! the last K tokens, the decoder state's bytes and the engine's GPU memory.

use luna_wgpu::sample::Sampler;
use luna_wgpu::tokenizer::Tokenizer;
use luna_wgpu::{shipped, AdapterChoice, Engine, LunaError, Model};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

pub struct Options {
    pub prompt: String,
    pub tokens: usize,
    pub every: usize,
    pub temperature: f64,
    pub seed: u64,
    pub model: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Options {
        Options { prompt: "The json module provides".into(), tokens: 1000, every: 200, temperature: 0.8, seed: 1, model: None }
    }
}

/// One report line: after `generated` tokens, at decoder position `position`.
pub struct Report {
    pub generated: usize,
    pub position: usize,
    pub tokens_per_second: f64,
    pub state_bytes: u64,
    pub live_bytes: u64,
}

pub struct Streamed {
    pub text: String,
    pub reports: Vec<Report>,
}

fn parse(args: &[String]) -> luna_wgpu::Result<Options> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| LunaError::Input(format!("{flag} needs a value")));
        let number = |v: String| v.parse::<f64>().map_err(|_| LunaError::Input(format!("{flag}: {v:?} is not a number")));
        match flag.as_str() {
            "--prompt" => o.prompt = value()?,
            "--tokens" => o.tokens = number(value()?)? as usize,
            "--every" => o.every = (number(value()?)? as usize).max(1),
            "--temperature" => o.temperature = number(value()?)?,
            "--seed" => o.seed = number(value()?)? as u64,
            "--model" => o.model = Some(PathBuf::from(value()?)),
            other => return Err(LunaError::Input(format!("unknown option {other}; see the top of demos/stream.rs"))),
        }
    }
    Ok(o)
}

pub fn run(o: &Options, out: &mut dyn Write, log: &mut dyn Write) -> luna_wgpu::Result<Streamed> {
    let io = |e: std::io::Error| LunaError::Io { path: "<stdout>".into(), source: e };
    let mut engine = Engine::new_blocking(&AdapterChoice::from_arg_or_env(None))?;
    let model = Model::load(&o.model.clone().map_or_else(shipped::model_path, Ok)?)?;
    let tok = Tokenizer::from_model(&model)?.ok_or_else(|| LunaError::Input("this model has no tokenizer".into()))?;
    let gpu = engine.load(&model)?;
    let allowed = (0..model.config.vocab_size as u32).map(|i| tok.can_generate(i)).collect();
    let mut sampler = Sampler::new(o.temperature, None, o.seed)?.restrict(allowed);
    writeln!(log, "adapter: {}; {} layers, {} heads, l = {}", luna_wgpu::gpu::describe(&engine.ctx.info), model.config.num_layers, model.config.num_heads, model.config.projection_length).map_err(io)?;

    // The prompt goes through the parallel form once; its final state seeds the decoder.
    let prompt = tok.encode_with_bos(o.prompt.as_bytes());
    let (mut decoder, mut logits) = engine.prefill_blocking(&gpu, &prompt)?;
    write!(out, "{}", o.prompt).map_err(io)?;
    let mut stream = tok.stream();
    let mut text = String::new();
    let mut reports = Vec::new();
    let mut since = Instant::now();
    for generated in 1..=o.tokens {
        let next = sampler.sample(&logits)?;
        if Some(next) == tok.eos {
            // A document ended: the stream goes on, as a new document would, after a blank line.
            let piece = stream.push_byte(b'\n');
            text.push_str(&piece);
            write!(out, "{piece}").map_err(io)?;
        } else {
            let piece = stream.push(next);
            text.push_str(&piece);
            write!(out, "{piece}").map_err(io)?;
        }
        logits = engine.step_blocking(&gpu, &mut decoder, next)?;
        if generated % o.every == 0 || generated == o.tokens {
            out.flush().map_err(io)?;
            let span = generated - reports.last().map_or(0, |r: &Report| r.generated);
            let r = Report {
                generated,
                position: decoder.position,
                tokens_per_second: span as f64 / since.elapsed().as_secs_f64(),
                state_bytes: decoder.state_bytes(),
                live_bytes: engine.memory().0,
            };
            writeln!(
                log,
                "\n[{:>6} tokens, position {:>6}: {:>7.1} tokens/s, decoder state {} bytes, GPU memory {:.2} MiB]",
                r.generated,
                r.position,
                r.tokens_per_second,
                r.state_bytes,
                r.live_bytes as f64 / (1 << 20) as f64
            )
            .map_err(io)?;
            reports.push(r);
            since = Instant::now();
        }
    }
    text.push_str(&stream.finish());
    if let (Some(first), Some(last)) = (reports.first(), reports.last()) {
        let speeds = reports.iter().map(|r| r.tokens_per_second);
        let (lo, hi) = speeds.fold((f64::MAX, 0f64), |(lo, hi), s| (lo.min(s), hi.max(s)));
        writeln!(
            log,
            "\nfrom position {} to {}: tokens/s between {lo:.1} and {hi:.1}; decoder state {} bytes at the start and {} at the end; GPU memory {:.2} then {:.2} MiB",
            first.position,
            last.position,
            first.state_bytes,
            last.state_bytes,
            first.live_bytes as f64 / (1 << 20) as f64,
            last.live_bytes as f64 / (1 << 20) as f64
        )
        .map_err(io)?;
    }
    Ok(Streamed { text, reports })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = parse(&args).and_then(|o| run(&o, &mut std::io::stdout(), &mut std::io::stderr()));
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
