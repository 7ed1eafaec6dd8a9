//! `luna`: the command-line front end of luna-wgpu.

use clap::{Args, Parser, Subcommand, ValueEnum};
use luna_wgpu::Decoder;
use luna_wgpu::config::Config;
use luna_wgpu::gpu::context::{describe, list_adapters};
use luna_wgpu::reference::causal::{causal_lm_logits, CausalState};
use luna_wgpu::sample::{self, Sampler};
use luna_wgpu::tokenizer::Tokenizer;
use luna_wgpu::{tensors, AdapterChoice, Batch, Engine, GpuModel, LunaError, Model, ModelKind, Result};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
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
    /// The GPU, or the CPU reference (with a warning) when no adapter exists or the GPU engine does not support the model
    Auto,
    /// The GPU only; fails without an adapter
    Gpu,
    /// The float64 CPU reference
    Cpu,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum TokenizerKind {
    /// Byte-level text: byte b is token b + offset, with pad/bos/eos ids below the bytes when the vocabulary has room
    Bytes,
}

#[derive(Subcommand)]
enum Command {
    /// Print the adapters, and the chosen one's limits and features
    Info,
    /// Run a model on a token file: an encoder writes `x` [B, n, d] and `p` [B, l', d]; a causal LM writes `logits` [B, n, vocab]
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
    /// Continue a prompt with a causal LM that has a tokenizer, streaming the text to stdout
    Generate {
        /// A causal LM file with a tokenizer (`luna.tokenizer` metadata) [default: the shipped
        /// demo model, models/luna-pydoc-bytes.safetensors]
        #[arg(long)]
        model: Option<PathBuf>,
        /// The text to continue, encoded after the tokenizer's bos when it has one. It may be empty
        /// only then (generation starts from bos); without bos an empty prompt is an error
        #[arg(long)]
        prompt: String,
        /// Most tokens to generate. Generation also stops at eos (not printed), and with learned
        /// positions when the next token would pass max_positions. Padding, bos and ids that are
        /// neither a byte nor eos are never generated
        #[arg(long, default_value_t = 200)]
        max_tokens: usize,
        /// Softmax temperature; 0 picks the most likely token every time
        #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
        temperature: f64,
        /// Sample only among the K most likely tokens
        #[arg(long)]
        top_k: Option<usize>,
        /// Seed of the sampler (default: from the clock, printed on stderr)
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, value_enum, default_value = "auto")]
        device: Device,
    },
    /// Surprisal of a document under a causal LM, in one parallel pass: bits per byte (or per token)
    Score(ScoreArgs),
    /// Make a model with random weights for a config
    InitRandom {
        /// JSON config (the `luna.config` keys of LUNA_SPEC.md)
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Store a tokenizer in the model file (`luna.tokenizer` metadata)
        #[arg(long, value_enum)]
        tokenizer: Option<TokenizerKind>,
    },
    /// Benchmark Luna against softmax attention, GEMM throughput, or the decode step
    Bench(BenchArgs),
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
    /// Serve the browser demo and its JavaScript package (web/, built by web/build.sh) on 127.0.0.1,
    /// with the models/ folder beside it under /models/
    Serve {
        /// Port on 127.0.0.1 (0 picks a free one; the address is printed on stdout)
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The folder to serve (default: ./web, else the web/ folder of this source tree)
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum BenchOp {
    /// One encoder layer: Luna-l for each --l against the flash and naive softmax layers
    Layer,
    /// A whole encoder of --layers layers, the same comparison
    Encoder,
    /// GEMM GFLOP/s on square and skinny shapes
    Matmul,
    /// The causal decode step's time against position
    Decode,
    /// All of the above
    All,
}

#[derive(Args)]
struct BenchArgs {
    #[arg(long, value_enum, default_value = "layer")]
    op: BenchOp,
    /// Smallest sequence length (doubling up to --max-n)
    #[arg(long, default_value_t = 1024)]
    min_n: usize,
    /// Largest sequence length (default: 8192 on a software adapter, 65536 otherwise); for
    /// `--op decode`, the largest position (default 10^4 on a software adapter, 10^5 otherwise)
    #[arg(long)]
    max_n: Option<usize>,
    /// Projection lengths of Luna, comma-separated
    #[arg(long, value_delimiter = ',', default_values_t = [16usize, 128, 256])]
    l: Vec<usize>,
    /// Model width
    #[arg(long, default_value_t = 256)]
    d: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Layers of the whole-encoder op
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Timed runs per point, after one warm-up
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Skip a point predicted to take longer than this many seconds in all
    #[arg(long, default_value_t = 120.0)]
    max_seconds: f64,
    /// Leave out the softmax baselines
    #[arg(long)]
    no_softmax: bool,
    /// Where the CSV, JSON and SVG files go
    #[arg(long, default_value = "bench-out")]
    out_dir: PathBuf,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("document").required(true).args(["text", "tokens"])))]
struct ScoreArgs {
    /// A causal LM file [default: the shipped demo model, models/luna-pydoc-bytes.safetensors]
    #[arg(long)]
    model: Option<PathBuf>,
    /// The document: a file whose bytes are scored (needs a model with a tokenizer)
    #[arg(long)]
    text: Option<PathBuf>,
    /// Or token sequences: a safetensors file holding `tokens`, int32 or int64 [B, n], right-padded
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Write each token's surprisal: `.tsv` (seq, pos, token, byte, bits) or `.safetensors`
    /// (`surprisal` f32 [B, n], entry i = -log2 p(token i | tokens before i), 0 at i = 0 and past the end; and `tokens`)
    #[arg(long)]
    surprisal: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
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
        Command::Generate { model, prompt, max_tokens, temperature, top_k, seed, device } => {
            let model = model.map_or_else(luna_wgpu::shipped::model_path, Ok)?;
            generate(&choice, &model, &prompt, max_tokens, temperature, top_k, seed, device)
        }
        Command::Score(args) => score(&choice, args),
        Command::Bench(args) => bench(&choice, args),
        Command::InitRandom { config, out, seed, tokenizer } => {
            let text = std::fs::read_to_string(&config)
                .map_err(|source| LunaError::Io { path: config.display().to_string(), source })?;
            let config = Config::from_json(&text)?;
            let mut model = Model::random(&config, seed)?;
            if let Some(TokenizerKind::Bytes) = tokenizer {
                let (tok, specials) = Tokenizer::bytes_for(&config)?;
                if !specials {
                    eprintln!(
                        "warning: vocab_size {} has no room for bos and eos besides the 256 bytes; the tokenizer has neither",
                        config.vocab_size
                    );
                }
                tok.store(&mut model)?;
                eprintln!("tokenizer: {}", tok.to_json());
            }
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
        Command::Serve { port, dir } => serve(port, dir),
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

/// The engine for `device`: `None` for the CPU reference (also `auto` without an adapter, with a warning).
fn open_engine(choice: &AdapterChoice, device: Device) -> Result<Option<Engine>> {
    match device {
        Device::Cpu => Ok(None),
        Device::Gpu => Ok(Some(Engine::new_blocking(choice)?)),
        Device::Auto => match Engine::new_blocking(choice) {
            Ok(e) => Ok(Some(e)),
            Err(e @ LunaError::NoAdapter(_)) => {
                eprintln!("warning: {e}\nwarning: falling back to the float64 CPU reference (slow)");
                Ok(None)
            }
            Err(e) => Err(e),
        },
    }
}

/// With `--device auto`, a GPU result that is `Unsupported` (a model the GPU engine
/// cannot run) falls back to the CPU reference with a warning; anything else stands.
fn or_cpu<T>(device: Device, gpu: Result<T>, cpu: impl FnOnce() -> Result<T>) -> Result<T> {
    match gpu {
        Err(LunaError::Unsupported(m)) if device == Device::Auto => {
            eprintln!("warning: the GPU engine cannot run this: {m}\nwarning: falling back to the float64 CPU reference (slow)");
            cpu()
        }
        r => r,
    }
}

fn require_causal(model: &Model, path: &Path, command: &str) -> Result<()> {
    if model.config.model != ModelKind::CausalLm {
        return Err(LunaError::Input(format!(
            "{} is an encoder model, not a causal LM; `luna {command}` needs a model with \"model\": \"causal_lm\"",
            path.display()
        )));
    }
    Ok(())
}

/// Runs `f` `repeat` times; returns its last result, the median and the first time in seconds.
fn timed<T>(repeat: usize, mut f: impl FnMut() -> Result<T>) -> Result<(T, f64, f64)> {
    let mut times = Vec::new();
    let mut out = None;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        out = Some(f()?);
        times.push(t.elapsed().as_secs_f64());
    }
    let first = times[0];
    times.sort_by(f64::total_cmp);
    Ok((out.unwrap(), times[times.len() / 2], first))
}

fn gpu_note(engine: &Engine, shape: &str, median: f64, first: f64, runs: usize, tokens: f64) -> String {
    let (_, peak) = engine.memory();
    format!(
        "{}: {shape}: {:.1} ms (median of {runs}; first run {:.1} ms), {:.0} tokens/s, GPU memory peak {:.1} MiB",
        describe(&engine.ctx.info),
        median * 1e3,
        first * 1e3,
        tokens / median,
        peak as f64 / (1 << 20) as f64
    )
}

/// A named f32 tensor to be written: name, shape, data.
type OwnedTensor = (&'static str, Vec<usize>, Vec<f32>);

fn forward(choice: &AdapterChoice, model_path: PathBuf, input: PathBuf, output: PathBuf, device: Device, repeat: usize) -> Result<()> {
    let model = Model::load(&model_path)?;
    let batch = Batch::from_safetensors(&model.config, &tensors::read_file(&input)?)?;
    let c = &model.config;
    let causal = c.model == ModelKind::CausalLm;
    let shape = if causal {
        format!("B={} n={} l={} d={} layers={} vocab={}", batch.batch, batch.len, c.projection_length, c.embed_dim, c.num_layers, c.vocab_size)
    } else {
        format!("B={} n={} l'={} d={} layers={}", batch.batch, batch.len, batch.proj_len, c.embed_dim, c.num_layers)
    };
    let engine = open_engine(choice, device)?;
    let tokens = batch.lengths.iter().sum::<usize>() as f64;
    let runs = repeat.max(1);
    // (tensors to write, note)
    let cpu_note = |s: f64| format!("cpu reference: {shape}: {:.1} ms, {:.0} tokens/s", s * 1e3, tokens / s);
    let (named, note): (Vec<OwnedTensor>, String) = if causal {
        let cpu = || -> Result<(Vec<f32>, String)> {
            let t = Instant::now();
            let logits: Vec<f32> = luna_wgpu::reference::causal_lm_forward(&model, &batch).iter().map(|&v| v as f32).collect();
            Ok((logits, cpu_note(t.elapsed().as_secs_f64())))
        };
        let (logits, note) = match engine {
            None => cpu()?,
            Some(mut engine) => {
                let gpu = (|| {
                    let gm = engine.load(&model)?;
                    let (out, median, first) = timed(runs, || engine.causal_forward_blocking(&gm, &batch))?;
                    Ok((out.logits, gpu_note(&engine, &shape, median, first, runs, tokens)))
                })();
                or_cpu(device, gpu, cpu)?
            }
        };
        (vec![("logits", vec![batch.batch, batch.len, c.vocab_size], logits)], note)
    } else {
        let cpu = || -> Result<_> {
            let t = Instant::now();
            let out = luna_wgpu::reference::encoder_output(&model, &batch);
            Ok((out, cpu_note(t.elapsed().as_secs_f64())))
        };
        let (out, note) = match engine {
            None => cpu()?,
            Some(mut engine) => {
                let gpu = (|| {
                    let gm = engine.load(&model)?;
                    let (out, median, first) = timed(runs, || engine.encode_blocking(&gm, &batch))?;
                    Ok((out, gpu_note(&engine, &shape, median, first, runs, tokens)))
                })();
                or_cpu(device, gpu, cpu)?
            }
        };
        (
            vec![
                ("x", vec![out.batch, out.len, out.dim], out.x),
                ("p", vec![out.batch, out.proj_len, out.dim], out.p),
            ],
            note,
        )
    };
    let meta = HashMap::from([("luna.lengths".to_string(), format!("{:?}", batch.lengths))]);
    let views: Vec<tensors::Named> = named.iter().map(|(n, s, d)| tensors::Named { name: n, shape: s.clone(), data: d }).collect();
    tensors::write_file(&output, &tensors::serialize_f32(&views, Some(meta))?)?;
    eprintln!("{note}\nwrote {}", output.display());
    Ok(())
}

// ---------------------------------------------------------------------------
// Causal LM: streaming generation and scoring.

/// A causal LM that consumes tokens one at a time: on the GPU (a streaming
/// decoder) or the float64 reference (its per-layer states carried over).
#[allow(clippy::large_enum_variant)] // one of them per run
enum Lm<'m> {
    Gpu { engine: Engine, gm: GpuModel, dec: Option<Decoder> },
    Cpu { model: &'m Model, states: Vec<CausalState>, consumed: usize },
}

impl<'m> Lm<'m> {
    fn cpu(model: &'m Model) -> Lm<'m> {
        Lm::Cpu { model, states: Vec::new(), consumed: 0 }
    }

    /// Runs the prompt; returns the logits after its last token.
    fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f64>> {
        match self {
            Lm::Gpu { engine, gm, dec } => {
                let (d, logits) = engine.prefill_blocking(gm, tokens)?;
                *dec = Some(d);
                Ok(logits.iter().map(|&v| v as f64).collect())
            }
            Lm::Cpu { model, states, consumed } => {
                let c = &model.config;
                let pad = c.padding_idx as u32;
                let positions: Vec<u32> = (1..=tokens.len() as u32).map(|i| pad + i).collect();
                let logits = causal_lm_logits(model, tokens, &positions, states);
                *consumed = tokens.len();
                Ok(logits[(tokens.len() - 1) * c.vocab_size..].to_vec())
            }
        }
    }

    /// Consumes one more token; returns the logits after it.
    fn step(&mut self, token: u32) -> Result<Vec<f64>> {
        match self {
            Lm::Gpu { engine, gm, dec } => {
                let dec = dec.as_mut().expect("prefill before step");
                Ok(engine.step_blocking(gm, dec, token)?.iter().map(|&v| v as f64).collect())
            }
            Lm::Cpu { model, states, consumed } => {
                *consumed += 1;
                let pos = (model.config.padding_idx + *consumed) as u32;
                Ok(causal_lm_logits(model, &[token], &[pos], states))
            }
        }
    }

    fn device(&self) -> String {
        match self {
            Lm::Gpu { engine, .. } => describe(&engine.ctx.info),
            Lm::Cpu { .. } => "cpu reference".into(),
        }
    }

    /// What the decoder holds between tokens, in words.
    fn state_note(&self) -> String {
        match self {
            Lm::Gpu { dec, .. } => match dec {
                Some(d) => format!("{} bytes on the GPU (float32)", d.state_bytes()),
                None => "none".into(),
            },
            Lm::Cpu { states, .. } => {
                let floats: usize = states.iter().map(|s| s.sk.iter().chain(&s.sv).map(Vec::len).sum::<usize>()).sum();
                format!("{} bytes (float64 CPU reference; {} bytes in float32)", floats * 8, floats * 4)
            }
        }
    }
}

/// Text to stdout as it comes, flushed. A closed pipe (`luna generate ... | head`)
/// is not an error: it marks the output closed, and generation stops.
struct Out {
    stdout: std::io::Stdout,
    last: Option<char>,
    closed: bool,
}

impl Out {
    fn write(&mut self, s: &str) -> Result<()> {
        if s.is_empty() || self.closed {
            return Ok(());
        }
        let mut lock = self.stdout.lock();
        match lock.write_all(s.as_bytes()).and_then(|_| lock.flush()) {
            Ok(()) => {
                self.last = s.chars().last();
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(source) => Err(LunaError::Io { path: "stdout".into(), source }),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn generate(
    choice: &AdapterChoice,
    model_path: &Path,
    prompt: &str,
    max_tokens: usize,
    temperature: f64,
    top_k: Option<usize>,
    seed: Option<u64>,
    device: Device,
) -> Result<()> {
    let model = Model::load(model_path)?;
    require_causal(&model, model_path, "generate")?;
    let c = &model.config;
    let tok = Tokenizer::from_model(&model)?.ok_or_else(|| {
        LunaError::Input(format!(
            "{} has no tokenizer (no \"luna.tokenizer\" metadata), so text cannot be turned into tokens; \
             make one with `luna init-random --tokenizer bytes`, or score token files with `luna score --tokens`",
            model_path.display()
        ))
    })?;
    Sampler::new(temperature, top_k, 0)?; // the parameters, checked before anything is printed
    if prompt.is_empty() && tok.bos.is_none() {
        return Err(LunaError::Input(
            "empty prompt: this model's tokenizer has no bos token to start from; give a prompt of at least one character".into(),
        ));
    }
    let tokens = tok.encode_with_bos(prompt.as_bytes());
    if c.learned_pos && tokens.len() > c.max_positions {
        return Err(LunaError::Input(format!(
            "the prompt is {} tokens{}, more than max_positions = {} of this model's learned positions; shorten it",
            tokens.len(),
            if tok.bos.is_some() { " with bos" } else { "" },
            c.max_positions
        )));
    }
    let seed = seed.unwrap_or_else(|| {
        let s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        if temperature > 0.0 {
            eprintln!("seed {s} (pass --seed {s} to repeat this output)");
        }
        s
    });
    // Padding, bos and ids that are neither a byte nor eos are never generated.
    let allowed: Vec<bool> = (0..c.vocab_size as u32).map(|i| tok.can_generate(i)).collect();
    let mut sampler = Sampler::new(temperature, top_k, seed)?.restrict(allowed);

    let mut lm = match open_engine(choice, device)? {
        None => Lm::cpu(&model),
        Some(engine) => match engine.load(&model) {
            Ok(gm) => Lm::Gpu { engine, gm, dec: None },
            Err(e) => or_cpu(device, Err(e), || Ok(Lm::cpu(&model)))?,
        },
    };
    let t0 = Instant::now();
    let mut logits = match lm.prefill(&tokens) {
        Err(e) => {
            lm = or_cpu(device, Err(e), || Ok(Lm::cpu(&model)))?;
            lm.prefill(&tokens)?
        }
        ok => ok?,
    };
    let prefill = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut out = Out { stdout: std::io::stdout(), last: None, closed: false };
    let mut stream = tok.stream();
    let mut generated = 0usize;
    let mut consumed = tokens.len();
    let mut stop = format!("--max-tokens {max_tokens}");
    while generated < max_tokens {
        let next = sampler.sample(&logits)?;
        if Some(next) == tok.eos {
            stop = "eos".into();
            break;
        }
        out.write(&stream.push(next))?;
        generated += 1;
        if out.closed {
            stop = "a closed stdout".into();
            break;
        }
        if generated == max_tokens {
            break;
        }
        if c.learned_pos && consumed + 1 > c.max_positions {
            stop = format!("max_positions = {} of this model's learned positions", c.max_positions);
            break;
        }
        logits = lm.step(next)?;
        consumed += 1;
    }
    out.write(&stream.finish())?;
    let decode = t1.elapsed().as_secs_f64();
    if out.last.is_some_and(|ch| ch != '\n') && std::io::stdout().is_terminal() {
        out.write("\n")?;
    }
    eprintln!(
        "{}: prompt {} tokens, prefill {:.1} ms; generated {generated} tokens in {:.1} ms, {:.1} tokens/s (stopped at {stop}); decoder state {}",
        lm.device(),
        tokens.len(),
        prefill * 1e3,
        decode * 1e3,
        if decode > 0.0 { generated as f64 / decode } else { 0.0 },
        lm.state_note()
    );
    Ok(())
}

fn score(choice: &AdapterChoice, a: ScoreArgs) -> Result<()> {
    if let Some(path) = &a.surprisal {
        surprisal_format(path)?;
    }
    let model_path = a.model.clone().map_or_else(luna_wgpu::shipped::model_path, Ok)?;
    let model = Model::load(&model_path)?;
    require_causal(&model, &model_path, "score")?;
    let c = &model.config;
    let tok = Tokenizer::from_model(&model)?;
    // The batch, and whether the scored tokens are bytes of a text.
    let (batch, bytes) = match (&a.text, &a.tokens) {
        (Some(path), _) => {
            let tok = tok.as_ref().ok_or_else(|| {
                LunaError::Input(format!(
                    "{} has no tokenizer (no \"luna.tokenizer\" metadata), so --text cannot be read; give token ids with --tokens",
                    model_path.display()
                ))
            })?;
            let text = tensors::read_file(path)?;
            if text.is_empty() {
                return Err(LunaError::Input(format!("{} is empty: there is nothing to score", path.display())));
            }
            let ids = tok.encode_with_bos(&text);
            if ids.len() < 2 {
                return Err(LunaError::Input(format!(
                    "{} holds one byte and the tokenizer has no bos: the first byte has no context, so nothing can be scored",
                    path.display()
                )));
            }
            if c.learned_pos && ids.len() > c.max_positions {
                return Err(LunaError::Input(format!(
                    "{} is {} bytes ({} tokens{}), more than max_positions = {} of this model's learned positions; score a shorter document",
                    path.display(),
                    text.len(),
                    ids.len(),
                    if tok.bos.is_some() { " with bos" } else { "" },
                    c.max_positions
                )));
            }
            let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
            (Batch::new(c, &ids, 1, ids.len())?, true)
        }
        (None, Some(path)) => (Batch::from_safetensors(c, &tensors::read_file(path)?)?, false),
        (None, None) => unreachable!("clap requires --text or --tokens"),
    };
    let scored: usize = batch.lengths.iter().map(|&l| l - 1).sum();
    if scored == 0 {
        return Err(LunaError::Input(
            "every sequence holds a single token: there is no next token to score".into(),
        ));
    }
    let shape = format!("B={} n={} l={} d={} layers={} vocab={}", batch.batch, batch.len, c.projection_length, c.embed_dim, c.num_layers, c.vocab_size);
    let tokens = batch.lengths.iter().sum::<usize>() as f64;
    let cpu = || -> Result<(Vec<f64>, String)> {
        let t = Instant::now();
        let logits = luna_wgpu::reference::causal_lm_forward(&model, &batch);
        let bits = sample::next_token_bits(&logits, c.vocab_size, &batch)?;
        let s = t.elapsed().as_secs_f64();
        Ok((bits, format!("cpu reference: {shape}: {:.1} ms, {:.0} tokens/s", s * 1e3, tokens / s)))
    };
    let (bits, note) = match open_engine(choice, a.device)? {
        None => cpu()?,
        Some(mut engine) => {
            let gpu = (|| {
                let gm = engine.load(&model)?;
                let (bits, median, first) = timed(1, || engine.score_blocking(&gm, &batch))?;
                let bits: Vec<f64> = bits.iter().map(|&v| v as f64).collect();
                Ok((bits, gpu_note(&engine, &shape, median, first, 1, tokens)))
            })();
            or_cpu(a.device, gpu, cpu)?
        }
    };
    let n = batch.len;
    let total: f64 = (0..batch.batch).flat_map(|b| (0..batch.lengths[b] - 1).map(move |t| b * n + t)).map(|i| bits[i]).sum();
    if !total.is_finite() {
        return Err(LunaError::Input(format!("the model gave a non-finite surprisal ({total}); its weights may be broken")));
    }
    let unit = if bytes { "byte" } else { "token" };
    println!("{:.6} bits per {unit} ({scored} {unit}s scored, {total:.1} bits in all)", total / scored as f64);
    if bytes && tok.as_ref().is_some_and(|t| t.bos.is_none()) {
        eprintln!("note: the tokenizer has no bos, so the first byte has no context and is not scored");
    }
    eprintln!("{note}");
    if let Some(path) = &a.surprisal {
        write_surprisal(path, &batch, &bits, tok.as_ref())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

enum SurprisalFormat {
    Tsv,
    Safetensors,
}

fn surprisal_format(path: &Path) -> Result<SurprisalFormat> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("tsv") => Ok(SurprisalFormat::Tsv),
        Some("safetensors") => Ok(SurprisalFormat::Safetensors),
        _ => Err(LunaError::Input(format!(
            "--surprisal {}: the file name must end in .tsv or .safetensors",
            path.display()
        ))),
    }
}

/// Per-token surprisal: entry `[b, i]` is `-log2 p(token i | tokens before i)` for
/// `1 <= i < lengths[b]`, else 0 (`bits` is in the engine's next-token layout).
fn write_surprisal(path: &Path, batch: &Batch, bits: &[f64], tok: Option<&Tokenizer>) -> Result<()> {
    let n = batch.len;
    let mut per_token = vec![0f32; batch.batch * n];
    for b in 0..batch.batch {
        for i in 1..batch.lengths[b] {
            per_token[b * n + i] = bits[b * n + i - 1] as f32;
        }
    }
    let bytes = match surprisal_format(path)? {
        SurprisalFormat::Tsv => {
            let mut s = String::from("seq\tpos\ttoken\tbyte\tbits\n");
            for b in 0..batch.batch {
                for i in 1..batch.lengths[b] {
                    let id = batch.tokens[b * n + i];
                    let byte = tok.and_then(|t| t.byte(id)).map(|v| v.to_string()).unwrap_or_default();
                    s.push_str(&format!("{b}\t{i}\t{id}\t{byte}\t{:.6}\n", per_token[b * n + i]));
                }
            }
            s.into_bytes()
        }
        SurprisalFormat::Safetensors => {
            let ids: Vec<i64> = batch.tokens.iter().map(|&t| t as i64).collect();
            let (sb, ib): (&[u8], &[u8]) = (bytemuck::cast_slice(&per_token), bytemuck::cast_slice(&ids));
            let err = |e: safetensors::SafeTensorError| LunaError::Input(format!("cannot serialise the surprisal: {e}"));
            let views = vec![
                ("surprisal", TensorView::new(Dtype::F32, vec![batch.batch, n], sb).map_err(err)?),
                ("tokens", TensorView::new(Dtype::I64, vec![batch.batch, n], ib).map_err(err)?),
            ];
            let meta = HashMap::from([("luna.lengths".to_string(), format!("{:?}", batch.lengths))]);
            safetensors::serialize(views, Some(meta)).map_err(err)?
        }
    };
    tensors::write_file(path, &bytes)
}

fn bench(choice: &AdapterChoice, a: BenchArgs) -> Result<()> {
    use luna_wgpu::bench::{self, Method, Sweep};
    use luna_wgpu::bench::report;
    if a.d == 0 || a.heads == 0 || !a.d.is_multiple_of(a.heads) || a.batch == 0 || a.layers == 0 || a.l.contains(&0) {
        return Err(LunaError::Input("--d must be a positive multiple of --heads; --batch, --layers and every --l at least 1".into()));
    }
    let mut engine = Engine::new_blocking(choice)?;
    let adapter = describe(&engine.ctx.info);
    let software = engine.ctx.info.device_type == wgpu::DeviceType::Cpu;
    let max_n = a.max_n.unwrap_or(if software { 8192 } else { 65536 });
    if a.min_n == 0 || a.min_n > max_n {
        return Err(LunaError::Input(format!("--min-n {} must be between 1 and --max-n {max_n}", a.min_n)));
    }
    let mut ns = Vec::new();
    let mut n = a.min_n;
    while n <= max_n {
        ns.push(n);
        n *= 2;
    }
    let mut methods: Vec<Method> = a.l.iter().map(|&l| Method::Luna { projection_length: l }).collect();
    if !a.no_softmax {
        methods.extend([Method::SoftmaxFlash, Method::SoftmaxNaive]);
    }
    let sweep = Sweep { ns, methods, d: a.d, heads: a.heads, batch: a.batch, layers: a.layers, repeats: a.repeats, max_seconds: a.max_seconds };
    let ops: Vec<BenchOp> = match a.op {
        BenchOp::All => vec![BenchOp::Layer, BenchOp::Encoder, BenchOp::Matmul, BenchOp::Decode],
        op => vec![op],
    };
    eprintln!("adapter: {adapter}{}", if software { " (a software adapter: only ratios and slopes mean anything)" } else { "" });
    let matmul_shapes: Vec<[usize; 3]> = if software {
        vec![[256, 256, 256], [512, 512, 512], [1024, 1024, 1024], [4096, 256, 256], [1, 4096, 1024]]
    } else {
        vec![[1024, 1024, 1024], [2048, 2048, 2048], [4096, 4096, 4096], [8192, 8192, 8192], [16384, 1024, 1024], [1, 8192, 8192], [65536, 256, 256]]
    };
    // Decode: powers of ten up to --max-n (10^4 on a software adapter, 10^5 otherwise by default).
    let decode_max = a.max_n.unwrap_or(if software { 10_000 } else { 100_000 });
    let decode_positions: Vec<usize> = std::iter::successors(Some(10usize), |p| Some(p * 10)).take_while(|&p| p <= decode_max).collect();
    let total: usize = ops
        .iter()
        .map(|op| match op {
            BenchOp::Layer | BenchOp::Encoder => sweep.ns.len() * sweep.methods.len(),
            BenchOp::Matmul => matmul_shapes.len(),
            BenchOp::Decode => decode_positions.len(),
            BenchOp::All => 0,
        })
        .sum();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} points, {elapsed} [{msg}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut on_point = |p: &bench::Point| {
        if bar.is_hidden() {
            println!("{}", report::table_row(p));
        } else {
            bar.println(report::table_row(p));
        }
        bar.set_message(format!("{} {} n={}", p.op, p.method, p.n));
        bar.inc(1);
    };
    let mut points = Vec::new();
    for op in ops {
        match op {
            BenchOp::Layer => points.extend(bench::run_sweep(&mut engine, &sweep, 1, &mut on_point)?),
            BenchOp::Encoder => points.extend(bench::run_sweep(&mut engine, &sweep, a.layers, &mut on_point)?),
            BenchOp::Matmul => points.extend(bench::run_matmul(&mut engine, &matmul_shapes, a.repeats, &mut on_point)?),
            BenchOp::Decode => {
                points.extend(bench::run_decode(&mut engine, a.d, a.heads, a.l[0], &decode_positions, a.repeats.max(10), &mut on_point)?)
            }
            BenchOp::All => {}
        }
    }
    bar.finish_and_clear();
    std::fs::create_dir_all(&a.out_dir).map_err(|source| LunaError::Io { path: a.out_dir.display().to_string(), source })?;
    let write = |name: &str, text: &str| tensors::write_file(&a.out_dir.join(name), text.as_bytes());
    write("bench.csv", &report::csv(&points))?;
    write("bench.json", &report::json(&points, &adapter))?;
    for op in ["layer", "encoder"] {
        if let Some(svg) = report::svg(&points, op, false, &format!("{op}: time against n ({adapter})")) {
            write(&format!("{op}_time.svg"), &svg)?;
        }
        if let Some(svg) = report::svg(&points, op, true, &format!("{op}: peak GPU memory against n ({adapter})")) {
            write(&format!("{op}_memory.svg"), &svg)?;
        }
    }
    println!("{}", report::summary(&points));
    eprintln!("wrote {}/bench.csv, bench.json and the SVG plots", a.out_dir.display());
    Ok(())
}

/// `luna serve`: a static file server on 127.0.0.1 for the browser demo. GET
/// and HEAD only; paths are confined to the served folder (and `models/`
/// beside it, under `/models/`); nothing is cached by the browser.
fn serve(port: u16, dir: Option<PathBuf>) -> Result<()> {
    use std::io::{BufRead, BufReader};
    use std::net::{TcpListener, TcpStream};
    let root = match dir {
        Some(d) => d,
        None => [PathBuf::from("web"), Path::new(env!("CARGO_MANIFEST_DIR")).join("web")]
            .into_iter()
            .find(|p| p.join("index.html").is_file())
            .ok_or_else(|| LunaError::Input("no web/ folder with an index.html here; run from the repository root or pass --dir".into()))?,
    };
    let io = |path: &Path, source| LunaError::Io { path: path.display().to_string(), source };
    let root = root.canonicalize().map_err(|e| io(&root, e))?;
    let models = root.parent().map(|p| p.join("models")).filter(|m| m.is_dir());
    let listener = TcpListener::bind(("127.0.0.1", port)).map_err(|e| io(Path::new(&format!("127.0.0.1:{port}")), e))?;
    let addr = listener.local_addr().map_err(|e| io(&root, e))?;
    println!("serving {} at http://{addr}/", root.display());
    if !root.join("pkg").join("luna_wgpu.js").is_file() {
        eprintln!("warning: {} has no pkg/luna_wgpu.js yet: build it with web/build.sh", root.display());
    }
    if let Some(m) = &models {
        eprintln!("and {} at http://{addr}/models/", m.display());
    }
    let _ = std::io::stdout().flush();

    fn content_type(path: &Path) -> &'static str {
        match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
            "html" => "text/html; charset=utf-8",
            "js" | "mjs" => "text/javascript; charset=utf-8",
            "wasm" => "application/wasm",
            "css" => "text/css; charset=utf-8",
            "json" => "application/json",
            "svg" => "image/svg+xml",
            "png" => "image/png",
            "txt" | "md" | "ts" => "text/plain; charset=utf-8",
            _ => "application/octet-stream",
        }
    }
    // The file a request path names, or None when it leaves the served folders or does not exist.
    let resolve = |raw: &str| -> Option<PathBuf> {
        let path = raw.split(['?', '#']).next().unwrap_or("");
        let mut bytes = Vec::new();
        let mut it = path.bytes();
        while let Some(b) = it.next() {
            if b == b'%' {
                let hex: Vec<u8> = it.by_ref().take(2).collect();
                bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            } else {
                bytes.push(b);
            }
        }
        let path = String::from_utf8(bytes).ok()?;
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        if parts.iter().any(|p| *p == ".." || *p == "." || p.contains('\\') || p.starts_with('.')) {
            return None;
        }
        let (base, rest) = match (parts.first(), &models) {
            (Some(&"models"), Some(m)) => (m.clone(), &parts[1..]),
            _ => (root.clone(), &parts[..]),
        };
        let mut file = base.clone();
        for p in rest {
            file.push(p);
        }
        if file.is_dir() {
            file.push("index.html");
        }
        let file = file.canonicalize().ok()?;
        (file.starts_with(&base) && file.is_file()).then_some(file)
    };
    let handle = |mut stream: TcpStream| {
        let mut line = String::new();
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => return,
        });
        if reader.read_line(&mut line).is_err() {
            return;
        }
        // Skip the headers.
        let mut header = String::new();
        while reader.read_line(&mut header).map(|n| n > 2).unwrap_or(false) {
            header.clear();
        }
        let mut words = line.split_whitespace();
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let respond = |stream: &mut TcpStream, status: &str, kind: &str, body: &[u8], head: bool| {
            let header = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(header.as_bytes());
            if !head {
                let _ = stream.write_all(body);
            }
        };
        if method != "GET" && method != "HEAD" {
            respond(&mut stream, "405 Method Not Allowed", "text/plain", b"only GET and HEAD\n", false);
            return;
        }
        match resolve(target).and_then(|f| std::fs::read(&f).ok().map(|b| (f, b))) {
            Some((file, body)) => respond(&mut stream, "200 OK", content_type(&file), &body, method == "HEAD"),
            None => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n", method == "HEAD"),
        }
    };
    std::thread::scope(|scope| {
        for stream in listener.incoming().flatten() {
            let handle = &handle;
            scope.spawn(move || handle(stream));
        }
    });
    Ok(())
}
