//! Float64 helpers that both the GPU engine and the CPU reference need: the
//! sinusoid position rows, `softplus_ln2`, a plain `Linear`, and the causal
//! LM's fixed P with its pack queries `Q_P`. The engine computes these on the
//! host at load time and uploads them; the reference uses them as they are.
//! Keeping them here lets the engine stay free of the reference (the oracle
//! it is tested against). The math is in docs/luna.md.

use crate::model::{Linear, Model};

/// `x · W^T + b` for `rows` rows (docs/luna.md, "Notation").
pub fn linear(x: &[f64], rows: usize, lin: &Linear) -> Vec<f64> {
    let mut y = vec![0.0; rows * lin.out];
    for r in 0..rows {
        for o in 0..lin.out {
            let mut acc = lin.bias[o] as f64;
            for i in 0..lin.inp {
                acc += x[r * lin.inp + i] * lin.weight[o * lin.inp + i] as f64;
            }
            y[r * lin.out + o] = acc;
        }
    }
    y
}

/// Row `r` of the sinusoid table without a zero row: `[sin(r f_0..), cos(r f_0..)]`,
/// a zero column if `d` is odd (docs/luna.md, "The encoder").
pub fn sinusoid_row(r: usize, d: usize) -> Vec<f64> {
    let k = d / 2;
    let mut row = vec![0.0; d];
    for j in 0..k {
        let f = if k > 1 { (-(j as f64) * 10000f64.ln() / (k as f64 - 1.0)).exp() } else { 1.0 };
        row[j] = (r as f64 * f).sin();
        row[k + j] = (r as f64 * f).cos();
    }
    row
}

/// Row `r` of the token position table: the sinusoid, with row `pad` all zero.
pub fn token_sinusoid_row(r: usize, pad: usize, d: usize) -> Vec<f64> {
    if r == pad {
        vec![0.0; d]
    } else {
        sinusoid_row(r, d)
    }
}

/// `softplus_ln2(z) = ln(1 + exp(z ln 2)) / ln 2`, computed without overflow
/// (the pack weights of docs/luna.md, "Causal attention").
pub fn softplus_ln2(z: f64) -> f64 {
    let x = z * std::f64::consts::LN_2;
    (x.max(0.0) + (-x.abs()).exp().ln_1p()) / std::f64::consts::LN_2
}

/// P for a causal LM: `embed_scale * projected_embeddings (+ sinusoid rows
/// 0..l-1)`, `[l, d]` (docs/luna.md, "The causal LM"). It never changes.
pub fn causal_p(model: &Model) -> Vec<f64> {
    let c = &model.config;
    let d = c.embed_dim;
    let mut p = vec![0.0; c.projection_length * d];
    for j in 0..c.projection_length {
        let pos = if c.learned_pos { vec![0.0; d] } else { sinusoid_row(j, d) };
        for k in 0..d {
            p[j * d + k] = c.embed_scale * model.projected_embeddings[j * d + k] as f64 + pos[k];
        }
    }
    p
}

/// The pack queries of causal layer `layer`: `Q_P = Linear(pq_proj)(P) · dh^-0.5`, `[l, d]`.
pub fn causal_pack_queries(model: &Model, p: &[f64], layer: usize) -> Vec<f64> {
    let c = &model.config;
    let s = (c.head_dim() as f64).powf(-0.5);
    let mut qp = linear(p, c.projection_length, &model.causal_layer(layer).pq_proj);
    qp.iter_mut().for_each(|v| *v *= s);
    qp
}
