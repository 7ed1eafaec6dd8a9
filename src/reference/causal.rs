//! The causal LM in float64 (docs/luna.md, "Causal attention" and
//! "The causal LM"), written as the step-by-step recurrence: for each token the
//! state `(Sk, Sv, t)` of every head grows by one outer product. With the
//! local-context extension (docs/luna.md, "Local context") the sums decay by
//! each head's rate first and `t` becomes the decayed count `Z`, and the
//! attention reads a causal convolution of its input over the last inputs.

use super::ops::*;
use crate::config::Config;
pub use crate::math::{causal_p, softplus_ln2};
use crate::model::{CausalLayer, KvProj, Model};

/// The decoder state of one layer: per head, `Sk [dh, l]`, `Sv [l, dh]`, the
/// count `t` and the decayed count `z` (`z = t` without decay), and the
/// convolution's last `conv_width - 1` inputs (oldest first, zeros before the sequence).
#[derive(Clone, Debug)]
pub struct CausalState {
    pub sk: Vec<Vec<f64>>,
    pub sv: Vec<Vec<f64>>,
    pub t: usize,
    pub z: Vec<f64>,
    pub history: Vec<f64>,
}

impl CausalState {
    pub fn new(c: &Config) -> CausalState {
        let size = c.head_dim() * c.projection_length;
        CausalState {
            sk: vec![vec![0.0; size]; c.num_heads],
            sv: vec![vec![0.0; size]; c.num_heads],
            t: 0,
            z: vec![0.0; c.num_heads],
            history: vec![0.0; c.conv_width.saturating_sub(1) * c.embed_dim],
        }
    }

    /// Floats of the sums and the convolution's history (the counts `t` and `z` aside).
    pub fn floats(&self) -> usize {
        self.sk.iter().chain(&self.sv).map(Vec::len).sum::<usize>() + self.history.len()
    }
}

/// The causal convolution of the attention input `x [d]` over the state's
/// history; shifts `x` into the history.
pub fn convolve(c: &Config, weight: &[f32], x: &[f64], state: &mut CausalState) -> Vec<f64> {
    let (d, k) = (c.embed_dim, c.conv_width);
    let u = (0..d)
        .map(|ch| {
            let past: f64 = (0..k - 1).map(|j| weight[ch * k + j] as f64 * state.history[j * d + ch]).sum();
            past + weight[ch * k + k - 1] as f64 * x[ch]
        })
        .collect();
    if k > 1 {
        state.history.drain(..d);
        state.history.extend_from_slice(x);
    }
    u
}

/// Causal Luna attention of one token `x [d]` given the state before it; updates the state.
pub fn causal_attention_step(c: &Config, layer: &CausalLayer, p: &[f64], x: &[f64], state: &mut CausalState) -> Vec<f64> {
    let d = c.embed_dim;
    let (h_count, dh, proj_len) = (c.num_heads, c.head_dim(), c.projection_length);
    let s = (dh as f64).powf(-0.5);
    let conv;
    let x = match &layer.conv {
        Some(w) => {
            conv = convolve(c, w, x, state);
            &conv[..]
        }
        None => x,
    };
    let mut qp = linear(p, proj_len, &layer.pq_proj);
    scale(&mut qp, s);
    let pc = linear(x, 1, &layer.pc_proj);
    let mut q = linear(x, 1, &layer.q_proj);
    scale(&mut q, s);
    let (k, v) = match &layer.kv {
        KvProj::Tied(cp) => {
            let kv = linear(x, 1, cp);
            (kv.clone(), kv)
        }
        KvProj::Separate { k, v } => (linear(x, 1, k), linear(x, 1, v)),
    };
    state.t += 1;
    let mut o = vec![0.0; d];
    for h in 0..h_count {
        let g = c.decay.as_ref().map_or(1.0, |d| d[h]);
        state.z[h] = g * state.z[h] + 1.0;
        let t = state.z[h];
        let cols = h * dh..(h + 1) * dh;
        let a: Vec<f64> =
            (0..proj_len).map(|j| softplus_ln2(cols.clone().map(|c| pc[c] * qp[j * d + c]).sum())).collect();
        let (sk, sv) = (&mut state.sk[h], &mut state.sv[h]);
        for r in 0..dh {
            for j in 0..proj_len {
                sk[r * proj_len + j] = g * sk[r * proj_len + j] + k[h * dh + r] * a[j];
                sv[j * dh + r] = g * sv[j * dh + r] + a[j] * v[h * dh + r];
            }
        }
        let scores: Vec<f64> = (0..proj_len).map(|j| (0..dh).map(|r| q[h * dh + r] * sk[r * proj_len + j]).sum::<f64>() / t).collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = e.iter().sum();
        for r in 0..dh {
            o[h * dh + r] = (0..proj_len).map(|j| e[j] / total * sv[j * dh + r]).sum::<f64>() / t;
        }
    }
    linear(&o, 1, &layer.out_proj)
}

/// One causal LM layer on one token, updating that layer's state.
pub fn causal_layer_step(c: &Config, layer: &CausalLayer, p: &[f64], x: &mut Vec<f64>, state: &mut CausalState) {
    let d = c.embed_dim;
    let eps = c.layer_norm_eps;
    let ffn = |h: &[f64]| {
        let mut f = linear(h, 1, &layer.fc1);
        f.iter_mut().for_each(|v| *v = activation(c.activation, *v));
        linear(&f, 1, &layer.fc2)
    };
    if c.normalize_before {
        let xn = layer_norm(x, d, &layer.self_attn_layer_norm, eps);
        let y = causal_attention_step(c, layer, p, &xn, state);
        add(x, &y);
        let h = layer_norm(x, d, &layer.final_layer_norm, eps);
        add(x, &ffn(&h));
    } else {
        let y = causal_attention_step(c, layer, p, x, state);
        add(x, &y);
        *x = layer_norm(x, d, &layer.self_attn_layer_norm, eps);
        let f = ffn(x);
        add(x, &f);
        *x = layer_norm(x, d, &layer.final_layer_norm, eps);
    }
}

/// The logits `[n, vocab]` of one sequence of token ids (every position; the
/// caller decides which are meaningful). `states` carries over between calls.
pub fn causal_lm_logits(model: &Model, tokens: &[u32], positions: &[u32], states: &mut Vec<CausalState>) -> Vec<f64> {
    let c = &model.config;
    let d = c.embed_dim;
    let p = causal_p(model);
    if states.is_empty() {
        *states = (0..c.num_layers).map(|_| CausalState::new(c)).collect();
    }
    let w = model.output_weight();
    let mut logits = Vec::with_capacity(tokens.len() * c.vocab_size);
    for (&tok, &pos) in tokens.iter().zip(positions) {
        let pos_row = match &model.embed_positions {
            Some(table) => table[pos as usize * d..(pos as usize + 1) * d].iter().map(|&v| v as f64).collect(),
            None if c.no_token_positional_embeddings => vec![0.0; d],
            None => token_sinusoid_row(pos as usize, c.padding_idx, d),
        };
        let mut x: Vec<f64> = (0..d).map(|k| c.embed_scale * model.embed_tokens[tok as usize * d + k] as f64 + pos_row[k]).collect();
        for (i, state) in states.iter_mut().enumerate() {
            causal_layer_step(c, model.causal_layer(i), &p, &mut x, state);
        }
        if let Some(ln) = &model.layer_norm {
            x = layer_norm(&x, d, ln, c.layer_norm_eps);
        }
        for v in 0..c.vocab_size {
            logits.push((0..d).map(|k| x[k] * w[v * d + k] as f64).sum());
        }
    }
    logits
}
