//! `luna forward`: one forward pass over a token file. An encoder writes `x`
//! and `p`, a causal LM its `logits`, to a safetensors file.

use crate::args::ForwardArgs;
use crate::device::{gpu_or_cpu, open_engine};
use crate::timing::{gpu_note, timed, with_progress};
use luna_wgpu::{tensors, AdapterChoice, Batch, Engine, Model, ModelKind, Result};
use std::collections::HashMap;
use std::time::Instant;

/// A named f32 tensor to be written: name, shape, data.
type OwnedTensor = (&'static str, Vec<usize>, Vec<f32>);

pub fn run(choice: &AdapterChoice, args: ForwardArgs) -> Result<()> {
    let ForwardArgs { model: model_path, input, output, device, repeat } = args;
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
            let logits: Vec<f32> = luna_wgpu::reference::causal_lm_checked(&model, &batch)?.iter().map(|&v| v as f32).collect();
            Ok((logits, cpu_note(t.elapsed().as_secs_f64())))
        };
        let gpu = |engine: &mut Engine| {
            let gm = engine.load(&model)?;
            let (out, median, first) = with_progress(engine, "forward", tokens as usize, |e| timed(runs, || e.causal_forward_blocking(&gm, &batch)))?;
            Ok((out.logits, gpu_note(engine, &shape, median, first, runs, tokens)))
        };
        let (logits, note) = gpu_or_cpu(engine, device, gpu, cpu)?;
        (vec![("logits", vec![batch.batch, batch.len, c.vocab_size], logits)], note)
    } else {
        let cpu = || -> Result<_> {
            let t = Instant::now();
            let out = luna_wgpu::reference::encoder_output(&model, &batch)?;
            Ok((out, cpu_note(t.elapsed().as_secs_f64())))
        };
        let gpu = |engine: &mut Engine| {
            let gm = engine.load(&model)?;
            let (out, median, first) = with_progress(engine, "forward", tokens as usize, |e| timed(runs, || e.encode_blocking(&gm, &batch)))?;
            Ok((out, gpu_note(engine, &shape, median, first, runs, tokens)))
        };
        let (out, note) = gpu_or_cpu(engine, device, gpu, cpu)?;
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
