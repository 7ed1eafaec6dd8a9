//! `luna score`: the surprisal of a document (a text, or token sequences) under
//! a causal LM in one parallel pass, and optionally each token's, to a file.

use crate::args::ScoreArgs;
use crate::device::{gpu_or_cpu, open_engine};
use crate::lm::load_causal;
use crate::timing::{gpu_note, timed, with_progress};
use luna_wgpu::sample;
use luna_wgpu::tokenizer::Tokenizer;
use luna_wgpu::{tensors, AdapterChoice, Batch, Engine, LunaError, Result};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

pub fn run(choice: &AdapterChoice, a: ScoreArgs) -> Result<()> {
    if let Some(path) = &a.surprisal {
        surprisal_format(path)?;
    }
    let (model_path, model) = load_causal(a.model.clone(), "score")?;
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
        let logits = luna_wgpu::reference::causal_lm_checked(&model, &batch)?;
        let bits = sample::next_token_bits(&logits, c.vocab_size, &batch)?;
        let s = t.elapsed().as_secs_f64();
        Ok((bits, format!("cpu reference: {shape}: {:.1} ms, {:.0} tokens/s", s * 1e3, tokens / s)))
    };
    let gpu = |engine: &mut Engine| {
        let gm = engine.load(&model)?;
        let file = a.text.as_ref().or(a.tokens.as_ref()).and_then(|p| p.file_name()).map(|f| f.to_string_lossy().into_owned());
        let what = format!("scoring {}", file.unwrap_or_default());
        let (bits, median, first) = with_progress(engine, &what, tokens as usize, |e| timed(1, || e.score_blocking(&gm, &batch)))?;
        let bits: Vec<f64> = bits.iter().map(|&v| v as f64).collect();
        Ok((bits, gpu_note(engine, &shape, median, first, 1, tokens)))
    };
    let (bits, note) = gpu_or_cpu(open_engine(choice, a.device)?, a.device, gpu, cpu)?;
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
