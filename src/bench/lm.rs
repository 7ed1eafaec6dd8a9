//! `luna bench --op lm`: the causal LM of the shipped demo model's shape
//! (random weights): a whole forward pass at each n, timed alternately with
//! the 1024³ GEMM so that the model's GFLOP/s can be read as a share of what
//! the GEMM reaches on the same adapter at the same moment; then the decode
//! step (prefill, then one token at a time).
//!
//! FLOPs of the causal LM per token (multiply-add = 2), width d, FFN f,
//! projection length l, stacked q/k/v/pc width w (3d tied, 4d untied), per
//! layer: projections `2·d·w`, output `2·d²`, FFN `4·d·f`, attention
//! `10·l·d` (pack weights 2, the two state updates 4, scores 2, output 2);
//! plus the logits `2·d·vocab`.

use super::{measure, Point};
use crate::config::Config;
use crate::engine::Engine;
use crate::error::Result;
use crate::gpu::recorder::Timestamps;
use crate::init::random_tokens;
use crate::input::Batch;
use crate::kernels::gemm::{self, Gemm};
use crate::model::Model;

/// The shipped demo model's config (models/README.md), with room for `max_positions`.
pub fn demo_config(max_positions: usize) -> Result<Config> {
    Config::from_json(
        &serde_json::json!({
            "model": "causal_lm", "vocab_size": 259, "embed_dim": 192, "ffn_embed_dim": 768, "num_layers": 4,
            "num_heads": 4, "num_pheads": 4, "projection_length": 32, "max_positions": max_positions, "padding_idx": 1,
            "normalize_before": true, "tie_kv": true, "learned_pos": false, "tie_output_embedding": true,
            "activation": "gelu", "embed_scale": 192f64.sqrt(),
        })
        .to_string(),
    )
}

/// FLOPs of one token through the causal LM (see the module docs).
pub fn flops_per_token(c: &Config) -> f64 {
    let (d, f, l) = (c.embed_dim as f64, c.ffn_embed_dim as f64, c.projection_length as f64);
    let w = if c.tie_kv { 3.0 * d } else { 4.0 * d };
    let layer = 2.0 * d * w + 2.0 * d * d + 4.0 * d * f + 10.0 * l * d;
    c.num_layers as f64 * layer + 2.0 * d * c.vocab_size as f64
}

/// The reference GEMM the model's rate is read against.
const GEMM: [usize; 3] = [1024, 1024, 1024];

/// Forward passes at each n (alternating with the reference GEMM), then
/// `repeats` decode steps at position `decode_at`.
pub fn run_lm(engine: &mut Engine, ns: &[usize], decode_at: usize, repeats: usize, on_point: &mut dyn FnMut(&Point)) -> Result<Vec<Point>> {
    let max = ns.iter().copied().max().unwrap_or(1).max(decode_at + repeats + 2);
    let config = demo_config(max + 1)?;
    let gm = engine.load(&Model::random(&config, 5)?)?;
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
    let point = |method: &str, n: usize| {
        let mut p = Point::new("lm", method);
        (p.n, p.projection_length, p.d, p.heads, p.batch, p.layers) = (n, config.projection_length, config.embed_dim, config.num_heads, 1, config.num_layers);
        p.timer = timer.clone();
        p
    };
    let mut points = Vec::new();
    for &len in ns {
        let (tokens, _, _) = random_tokens(&config, &[len], 9);
        let batch = Batch::new(&config, &tokens, 1, len)?;
        let (mut lm_times, mut gemm_times) = (Vec::new(), Vec::new());
        let mut turn = 0usize;
        let (_, peak) = measure(engine, 2 * repeats, |e| {
            turn += 1;
            let t = if turn % 2 == 1 { e.time_causal(&gm, &batch)? } else { time_gemm(e)? };
            if turn > 1 {
                if turn % 2 == 1 { lm_times.push(t) } else { gemm_times.push(t) }
            }
            Ok(t)
        })?;
        let mut lm = point("causal-lm", len);
        lm.peak_bytes = peak;
        lm.set_times(lm_times, flops_per_token(&config) * len as f64, len as f64);
        let mut g = point("gemm-1024", len);
        g.shape = Some(GEMM);
        g.set_times(gemm_times, 2.0 * (m * n * k) as f64, m as f64);
        for p in [lm, g] {
            on_point(&p);
            points.push(p);
        }
    }
    let (tokens, _, _) = random_tokens(&config, &[decode_at.max(1)], 4);
    let ids: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
    let (mut dec, _) = engine.prefill_blocking(&gm, &ids)?;
    let mut times = Vec::new();
    for i in 0..=repeats.max(1) {
        let t = std::time::Instant::now();
        engine.step_blocking(&gm, &mut dec, 3 + (i % 200) as u32)?;
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let mut p = point("decode-step", decode_at);
    p.timer = "wall-clock".into();
    p.peak_bytes = dec.state_bytes();
    p.set_times(times, flops_per_token(&config), 1.0);
    on_point(&p);
    points.push(p);
    Ok(points)
}

/// "causal-lm at n: X% of the GEMM's GFLOP/s" lines for the summary.
pub fn ratios(points: &[Point]) -> Vec<String> {
    let mut lines = Vec::new();
    for lm in points.iter().filter(|p| p.op == "lm" && p.method == "causal-lm") {
        if let Some(g) = points.iter().find(|p| p.op == "lm" && p.method == "gemm-1024" && p.n == lm.n) {
            lines.push(format!(
                "causal LM (demo shape) at n = {}: {:.2} GFLOP/s = {:.0}% of the 1024^3 GEMM's {:.2} GFLOP/s, timed alternately",
                lm.n,
                lm.gflops,
                100.0 * lm.gflops / g.gflops,
                g.gflops
            ));
        }
    }
    lines
}
