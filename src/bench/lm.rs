//! `luna bench --op lm`: the causal LM of the shipped demo model's shape
//! (random weights), in two forms: the authors' (`causal-lm`) and the
//! shipped model's, with the local-context extension (`causal-lm-local`:
//! per-head decay, a width-4 convolution, no token positions; docs/luna.md,
//! "Local context"). A whole forward pass at each n of each form is timed in
//! turn with the 1024³ GEMM, so that each form's GFLOP/s can be read as a
//! share of what the GEMM reaches on the same adapter at the same moment, and
//! the two forms against each other; then the decode step of each form
//! (prefill, then one token at a time, the two decoders in turn).
//!
//! FLOPs of the causal LM per token (multiply-add = 2), width d, FFN f,
//! projection length l, stacked q/k/v/pc width w (3d tied, 4d untied), per
//! layer: projections `2·d·w`, output `2·d²`, FFN `4·d·f`, attention
//! `10·l·d` (pack weights 2, the two state updates 4, scores 2, output 2),
//! the convolution `2·k·d` (width k, when there is one); plus the logits
//! `2·d·vocab`. The decay's few multiplies per state element are not counted:
//! both forms are credited with the same attention work.

use super::{measure, Point};
use crate::config::Config;
use crate::engine::Engine;
use crate::error::Result;
use crate::gpu::recorder::Timestamps;
use crate::init::random_tokens;
use crate::input::Batch;
use crate::kernels::gemm::{self, Gemm};
use crate::model::Model;

/// The shipped demo model's shape (models/README.md), with room for
/// `max_positions`: with `local`, its config exactly (the local-context
/// extension); without, the authors' form of the same shape.
pub fn demo_config(max_positions: usize, local: bool) -> Result<Config> {
    let mut json = serde_json::json!({
        "model": "causal_lm", "vocab_size": 259, "embed_dim": 192, "ffn_embed_dim": 768, "num_layers": 4,
        "num_heads": 4, "num_pheads": 4, "projection_length": 32, "max_positions": max_positions, "padding_idx": 1,
        "normalize_before": true, "tie_kv": true, "learned_pos": false, "tie_output_embedding": true,
        "activation": "gelu", "embed_scale": 192f64.sqrt(),
    });
    if local {
        json["decay"] = serde_json::json!([0.875, 0.984375, 0.998046875, 0.999755859375]);
        json["conv_width"] = 4.into();
        json["no_token_positional_embeddings"] = true.into();
    }
    Config::from_json(&json.to_string())
}

/// FLOPs of one token through the causal LM (see the module docs).
pub fn flops_per_token(c: &Config) -> f64 {
    let (d, f, l) = (c.embed_dim as f64, c.ffn_embed_dim as f64, c.projection_length as f64);
    let w = if c.tie_kv { 3.0 * d } else { 4.0 * d };
    let layer = 2.0 * d * w + 2.0 * d * d + 4.0 * d * f + 10.0 * l * d + 2.0 * c.conv_width as f64 * d;
    c.num_layers as f64 * layer + 2.0 * d * c.vocab_size as f64
}

/// The reference GEMM the model's rate is read against.
const GEMM: [usize; 3] = [1024, 1024, 1024];

/// The two forms, in the order they are timed: (method of the forward pass,
/// method of the decode step, local-context extension).
const FORMS: [(&str, &str, bool); 2] = [("causal-lm", "decode-step", false), ("causal-lm-local", "decode-step-local", true)];

/// Forward passes of both forms at each n (in turn with the reference GEMM),
/// then `repeats` decode steps of each at position `decode_at`.
pub fn run_lm(engine: &mut Engine, ns: &[usize], decode_at: usize, repeats: usize, on_point: &mut dyn FnMut(&Point)) -> Result<Vec<Point>> {
    let max = ns.iter().copied().max().unwrap_or(1).max(decode_at + repeats + 2);
    let mut forms = Vec::new();
    for (i, &(_, _, local)) in FORMS.iter().enumerate() {
        let config = demo_config(max + 1, local)?;
        let model = engine.load(&Model::random(&config, 5 + i as u64)?)?;
        forms.push((config, model));
    }
    let [m, n, k] = GEMM;
    pollster::block_on(engine.tune_gemms(&[gemm::Class::plain(GEMM)]))?;
    let (a, w, bias, c) = (engine.upload("a", &vec![0.5f32; m * k])?, engine.upload("w", &vec![0.5f32; n * k])?, engine.upload("b", &vec![0f32; n])?, engine.upload("c", &vec![0f32; m * n])?);
    let timestamps = Timestamps::new(&engine.ctx);
    let time_gemm = |e: &mut Engine| {
        e.time_submission(
            |e| {
                let mut rec = e.recorder();
                gemm::record(&mut rec, &Gemm::new(&a.buffer, &w.buffer, &bias.buffer, &c.buffer, GEMM));
                match &timestamps {
                    Some(t) => rec.submit_timed(t),
                    None => rec.submit(),
                }
                Ok(())
            },
            timestamps.as_ref(),
        )
    };
    let timer = super::timer_name(engine);
    let base = &forms[0].0;
    let point = |method: &str, n: usize| {
        let mut p = Point::new("lm", method);
        (p.n, p.projection_length, p.d, p.heads, p.batch, p.layers) = (n, base.projection_length, base.embed_dim, base.num_heads, 1, base.num_layers);
        p.timer = timer.clone();
        p
    };
    let mut points = Vec::new();
    // One round: each form's forward pass, then the GEMM; the first round warms up.
    let turns = FORMS.len() + 1;
    for &len in ns {
        let (tokens, _, _) = random_tokens(base, &[len], 9);
        let batch = Batch::new(base, &tokens, 1, len)?;
        let mut times = vec![Vec::new(); turns];
        let mut turn = 0usize;
        let (_, peak) = measure(engine, turns * (repeats.max(1) + 1) - 1, |e| {
            let which = turn % turns;
            let t = match forms.get(which) {
                Some((_, model)) => e.time_causal(model, &batch)?,
                None => time_gemm(e)?,
            };
            if turn >= turns {
                times[which].push(t);
            }
            turn += 1;
            Ok(t)
        })?;
        for (i, (config, _)) in forms.iter().enumerate() {
            let mut lm = point(FORMS[i].0, len);
            lm.peak_bytes = peak;
            lm.set_times(std::mem::take(&mut times[i]), flops_per_token(config) * len as f64, len as f64);
            on_point(&lm);
            points.push(lm);
        }
        let mut g = point("gemm-1024", len);
        g.shape = Some(GEMM);
        g.set_times(std::mem::take(&mut times[FORMS.len()]), 2.0 * (m * n * k) as f64, m as f64);
        on_point(&g);
        points.push(g);
    }
    // The decode steps, the two decoders in turn (the first step of each warms up).
    let (tokens, _, _) = random_tokens(base, &[decode_at.max(1)], 4);
    let ids: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
    let mut decoders = Vec::new();
    for (_, model) in &forms {
        decoders.push(engine.prefill_blocking(model, &ids)?.0);
    }
    let mut times = vec![Vec::new(); forms.len()];
    for i in 0..=repeats.max(1) {
        for (f, (_, model)) in forms.iter().enumerate() {
            let t = std::time::Instant::now();
            engine.step_blocking(model, &mut decoders[f], 3 + (i % 200) as u32)?;
            if i > 0 {
                times[f].push(t.elapsed().as_secs_f64());
            }
        }
    }
    for (f, (config, _)) in forms.iter().enumerate() {
        let mut p = point(FORMS[f].1, decode_at);
        p.timer = "wall-clock".into();
        p.peak_bytes = decoders[f].state_bytes();
        p.set_times(std::mem::take(&mut times[f]), flops_per_token(config), 1.0);
        on_point(&p);
        points.push(p);
    }
    Ok(points)
}

/// The summary's lines: each form's GFLOP/s as a share of the GEMM's at each
/// n, and the local-context form's time against the authors' (forward pass
/// and decode step).
pub fn ratios(points: &[Point]) -> Vec<String> {
    let find = |method: &str, n: usize| points.iter().find(|p| p.op == "lm" && p.method == method && p.n == n && p.skipped.is_none());
    let mut lines = Vec::new();
    for lm in points.iter().filter(|p| p.op == "lm" && p.method == "causal-lm") {
        for (form, name) in [("causal-lm", "authors' form"), ("causal-lm-local", "local context")] {
            if let (Some(f), Some(g)) = (find(form, lm.n), find("gemm-1024", lm.n)) {
                lines.push(format!(
                    "causal LM (demo shape, {name}) at n = {}: {:.2} GFLOP/s = {:.0}% of the 1024^3 GEMM's {:.2} GFLOP/s, timed in turn",
                    lm.n,
                    f.gflops,
                    100.0 * f.gflops / g.gflops,
                    g.gflops
                ));
            }
        }
        if let Some(local) = find("causal-lm-local", lm.n) {
            lines.push(format!("local context against the authors' form at n = {}: {:.2}x the time of a forward pass", lm.n, local.median_s / lm.median_s));
        }
    }
    for step in points.iter().filter(|p| p.op == "lm" && p.method == "decode-step") {
        if let Some(local) = find("decode-step-local", step.n) {
            lines.push(format!("local context against the authors' form at position {}: {:.2}x the time of a decode step", step.n, local.median_s / step.median_s));
        }
    }
    lines
}
