//! The smallest complete use of luna-wgpu from Rust: open the GPU, load a
//! model, run it on a text, read the outputs.
//!
//!     cargo run --release --example embed                       # the shipped model, a sample sentence
//!     cargo run --release --example embed -- "Some text" [MODEL.safetensors]
//!
//! Copy `run` into your own program; `luna_wgpu` is the only dependency it needs.

use luna_wgpu::tokenizer::Tokenizer;
use luna_wgpu::{shipped, AdapterChoice, Batch, Engine, LunaError, Model};
use std::path::PathBuf;

/// What `run` read from the model.
pub struct Outputs {
    /// Bits per byte of the text under the model.
    pub bits_per_byte: f64,
    /// The most likely next bytes after the text, with their probabilities.
    pub next: Vec<(u8, f64)>,
}

pub fn run(text: &str, model_path: Option<PathBuf>) -> luna_wgpu::Result<Outputs> {
    // 1. The GPU: the best adapter there is (LUNA_ADAPTER=name picks another).
    let mut engine = Engine::new_blocking(&AdapterChoice::from_arg_or_env(None))?;
    println!("adapter: {}", luna_wgpu::gpu::describe(&engine.ctx.info));

    // 2. A model file (safetensors with the `luna.config` metadata), uploaded once.
    let model = Model::load(&model_path.map_or_else(shipped::model_path, Ok)?)?;
    let tokenizer = Tokenizer::from_model(&model)?.ok_or_else(|| LunaError::Input("this model has no tokenizer".into()))?;
    let gpu = engine.load(&model)?;

    // 3. A batch: token ids, one sequence here (several are right-padded to one length).
    let ids: Vec<i64> = tokenizer.encode_with_bos(text.as_bytes()).iter().map(|&t| t as i64).collect();
    let batch = Batch::new(&model.config, &ids, 1, ids.len())?;

    // 4. Run it. Logits of every position, [1, n, vocab] ...
    let out = engine.causal_forward_blocking(&gpu, &batch)?;
    // ... and the surprisal of each next token in bits, computed on the GPU.
    let bits = engine.score_blocking(&gpu, &batch)?;

    // 5. Read the outputs.
    let scored = &bits[..ids.len() - 1];
    let bits_per_byte = scored.iter().map(|&b| b as f64).sum::<f64>() / scored.len() as f64;
    let last = &out.logits[(out.len - 1) * out.vocab..out.len * out.vocab];
    let probs = luna_wgpu::sample::log_softmax(last).into_iter().map(f64::exp).collect::<Vec<_>>();
    let mut next: Vec<(u8, f64)> = (0..out.vocab as u32).filter_map(|id| tokenizer.byte(id).map(|b| (b, probs[id as usize]))).collect();
    next.sort_by(|a, b| b.1.total_cmp(&a.1));
    next.truncate(5);
    Ok(Outputs { bits_per_byte, next })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let text = args.next().unwrap_or_else(|| "The json module provides an API familiar to users of the standard library".into());
    match run(&text, args.next().map(PathBuf::from)) {
        Ok(out) => {
            println!("text: {text:?}");
            println!("{:.3} bits per byte", out.bits_per_byte);
            for (byte, p) in &out.next {
                println!("next byte {:>6}: p = {p:.3}", format!("{:?}", *byte as char));
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
