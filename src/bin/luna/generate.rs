//! `luna generate`: continues a prompt with a causal LM, streaming the text to
//! stdout, on the GPU's streaming decoder or the float64 CPU reference. The
//! loop itself is the library's (luna_wgpu::generate), shared with the browser.

use crate::args::GenerateArgs;
use crate::device::{open_engine, or_cpu, Device};
use crate::lm::load_causal;
use luna_wgpu::generate::{Generation, Settings, Stop, TokenModel};
use luna_wgpu::gpu::context::describe;
use luna_wgpu::reference::budget;
use luna_wgpu::reference::causal::{causal_lm_logits, CausalState};
use luna_wgpu::tokenizer::Tokenizer;
use luna_wgpu::{AdapterChoice, Decoder, Engine, GpuModel, LunaError, Model, Result};
use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::time::Instant;

pub fn run(choice: &AdapterChoice, a: GenerateArgs) -> Result<()> {
    let (model_path, model) = load_causal(a.model, "generate")?;
    let tok = Tokenizer::from_model(&model)?.ok_or_else(|| {
        LunaError::Input(format!(
            "{} has no tokenizer (no \"luna.tokenizer\" metadata), so text cannot be turned into tokens; \
             make one with `luna init-random --tokenizer bytes`, or score token files with `luna score --tokens`",
            model_path.display()
        ))
    })?;
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
    });
    let settings = Settings { max_tokens: a.max_tokens, temperature: a.temperature, top_k: a.top_k, seed };
    // The settings and the prompt are checked before anything is printed.
    let generation = Generation::new(&model.config, &tok, &a.prompt, &settings)?;
    if a.seed.is_none() && a.temperature > 0.0 {
        eprintln!("seed {seed} (pass --seed {seed} to repeat this output)");
    }

    let backend = match open_engine(choice, a.device)? {
        None => Backend::cpu(),
        Some(engine) => match engine.load(&model) {
            Ok(gm) => Backend::Gpu { engine, gm, dec: None },
            Err(e) => or_cpu(a.device, Err(e), || Ok(Backend::cpu()))?,
        },
    };
    let mut lm = Lm { model: &model, device: a.device, backend };
    let mut out = Out { stdout: std::io::stdout(), last: None, closed: false };
    let start = Instant::now();
    let now_ms = || start.elapsed().as_secs_f64() * 1e3;
    let outcome = pollster::block_on(generation.run(&mut lm, now_ms, |event| {
        out.write(event.piece)?;
        Ok(if out.closed { ControlFlow::Break(()) } else { ControlFlow::Continue(()) })
    }))?;
    out.write(&outcome.tail)?;
    // The statistics start on a line of their own: on a terminal the text's
    // line is ended; otherwise stdout keeps exactly the generated text and
    // stderr starts with the line end (one file may take both: `2>&1`).
    let open_line = out.last.is_some_and(|ch| ch != '\n');
    if open_line && std::io::stdout().is_terminal() {
        out.write("\n")?;
    } else if open_line {
        eprintln!();
    }
    let stop = match outcome.stop {
        Stop::MaxTokens(n) => format!("--max-tokens {n}"),
        Stop::Eos => "eos".into(),
        Stop::Caller => "a closed stdout".into(),
        Stop::MaxPositions(m) => format!("max_positions = {m} of this model's learned positions"),
    };
    eprintln!(
        "{}: prompt {} tokens, prefill {:.1} ms; generated {} tokens in {:.1} ms, {:.1} tokens/s (stopped at {stop}); decoder state {}",
        lm.device(),
        outcome.prompt_tokens,
        outcome.prefill_ms,
        outcome.generated,
        outcome.decode_ms,
        outcome.tokens_per_second(),
        lm.state_note()
    );
    Ok(())
}

/// A causal LM that consumes tokens one at a time: on the GPU (a streaming
/// decoder) or the float64 reference (its per-layer states carried over).
/// With `--device auto`, a prompt the GPU engine cannot run moves it to the CPU.
struct Lm<'m> {
    model: &'m Model,
    device: Device,
    backend: Backend,
}

#[allow(clippy::large_enum_variant)] // one of them per run
enum Backend {
    Gpu { engine: Engine, gm: GpuModel, dec: Option<Decoder> },
    Cpu { states: Vec<CausalState>, consumed: usize },
}

impl Backend {
    fn cpu() -> Backend {
        Backend::Cpu { states: Vec::new(), consumed: 0 }
    }
}

impl Lm<'_> {
    fn cpu_prefill(&mut self, tokens: &[u32]) -> Result<Vec<f64>> {
        let c = &self.model.config;
        let pad = c.padding_idx as u32;
        let positions: Vec<u32> = (1..=tokens.len() as u32).map(|i| pad + i).collect();
        let what = format!("a prompt of {} tokens", tokens.len());
        budget::check(&what, budget::causal_bytes(c, 1, tokens.len()))?;
        let mut states = Vec::new();
        let logits = causal_lm_logits(self.model, tokens, &positions, &mut states);
        self.backend = Backend::Cpu { states, consumed: tokens.len() };
        finite(logits[(tokens.len() - 1) * c.vocab_size..].to_vec())
    }

    fn device(&self) -> String {
        match &self.backend {
            Backend::Gpu { engine, .. } => describe(&engine.ctx.info),
            Backend::Cpu { .. } => "cpu reference".into(),
        }
    }

    /// What the decoder holds between tokens, in words.
    fn state_note(&self) -> String {
        match &self.backend {
            Backend::Gpu { dec, .. } => match dec {
                Some(d) => format!("{} bytes on the GPU (float32)", d.state_bytes()),
                None => "none".into(),
            },
            Backend::Cpu { states, .. } => {
                let floats = cpu_state_floats(states);
                format!("{} bytes (float64 CPU reference; {} bytes in float32)", floats * 8, floats * 4)
            }
        }
    }
}

/// The reference's float64 logits, refused when float32 (the GPU's and the
/// sampler's precision) cannot hold them.
fn finite(logits: Vec<f64>) -> Result<Vec<f64>> {
    luna_wgpu::error::check_finite_f32("logits", &logits)?;
    Ok(logits)
}

fn cpu_state_floats(states: &[CausalState]) -> usize {
    states.iter().map(CausalState::floats).sum()
}

impl TokenModel for Lm<'_> {
    type Error = LunaError;

    async fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f64>> {
        let gpu = match &mut self.backend {
            Backend::Cpu { .. } => return self.cpu_prefill(tokens),
            Backend::Gpu { engine, gm, dec } => match engine.prefill(gm, tokens).await {
                Ok((d, logits)) => {
                    *dec = Some(d);
                    return Ok(logits.iter().map(|&v| v as f64).collect());
                }
                Err(e) => Err(e),
            },
        };
        or_cpu(self.device, gpu, || Ok(()))?;
        self.cpu_prefill(tokens)
    }

    async fn step(&mut self, token: u32) -> Result<Vec<f64>> {
        match &mut self.backend {
            Backend::Gpu { engine, gm, dec } => {
                let dec = dec.as_mut().ok_or_else(|| LunaError::Input("step before prefill".into()))?;
                Ok(engine.step(gm, dec, token).await?.iter().map(|&v| v as f64).collect())
            }
            Backend::Cpu { states, consumed } => {
                *consumed += 1;
                let pos = (self.model.config.padding_idx + *consumed) as u32;
                finite(causal_lm_logits(self.model, &[token], &[pos], states))
            }
        }
    }

    fn state_bytes(&self) -> u64 {
        match &self.backend {
            Backend::Gpu { dec, .. } => dec.as_ref().map_or(0, Decoder::state_bytes),
            Backend::Cpu { states, .. } => cpu_state_floats(states) as u64 * 8,
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
