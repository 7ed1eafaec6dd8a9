//! The float64 CPU reference: plain loops written line by line from
//! docs/luna.md. It is the oracle every GPU kernel is tested against, and the
//! `--device cpu` path. No cleverness here on purpose.

pub mod budget;
pub mod causal;
pub mod ops;
pub mod softmax;

use crate::config::Config;
use crate::error::{check_finite, check_finite_f32, Result};
use crate::input::{Batch, EncoderOutput};
use crate::model::{KvProj, Layer, Model};
use ops::*;

/// Bidirectional Luna attention for one sequence (docs/luna.md, "Pack and unpack").
/// `x` is `[n, d]`, `p` is `[l', d]`; returns `(Y [n, d], Yp [l', d])`.
pub fn luna_attention(
    c: &Config,
    layer: &Layer,
    x: &[f64],
    p: &[f64],
    x_mask: &[bool],
    p_mask: &[bool],
) -> (Vec<f64>, Vec<f64>) {
    let d = c.embed_dim;
    let n = x.len() / d;
    let proj_len = p.len() / d;
    // Pack: P reads the sequence with Hp heads of dp columns.
    let (kp, vp) = kv(&layer.pack_kv, x, n);
    let mut qp = linear(p, proj_len, &layer.pq_proj);
    scale(&mut qp, (c.pack_head_dim() as f64).powf(-0.5));
    let yp = multihead_attention(&qp, &kp, &vp, proj_len, n, d, c.num_pheads, x_mask);
    // Unpack: every token reads the packed sequence with H heads of dh columns.
    let mut q = linear(x, n, &layer.q_proj);
    scale(&mut q, (c.head_dim() as f64).powf(-0.5));
    let (k, v) = kv(&layer.unpack_kv, &yp, proj_len);
    let o = multihead_attention(&q, &k, &v, n, proj_len, d, c.num_heads, p_mask);
    let y = linear(&o, n, &layer.out_proj);
    (y, yp)
}

fn kv(proj: &KvProj, x: &[f64], rows: usize) -> (Vec<f64>, Vec<f64>) {
    match proj {
        KvProj::Tied(c) => {
            let kv = linear(x, rows, c);
            (kv.clone(), kv)
        }
        KvProj::Separate { k, v } => (linear(x, rows, k), linear(x, rows, v)),
    }
}

/// One encoder layer (post-norm or pre-norm) on one sequence; updates `x` and `p` in place.
pub fn encoder_layer(c: &Config, layer: &Layer, x: &mut Vec<f64>, p: &mut Vec<f64>, x_mask: &[bool], p_mask: &[bool]) {
    let d = c.embed_dim;
    let eps = c.layer_norm_eps;
    let n = x.len() / d;
    let proj_len = p.len() / d;
    if c.normalize_before {
        let xn = layer_norm(x, d, &layer.self_attn_layer_norm, eps);
        let pn = layer_norm(p, d, &layer.self_atten_proj_layer_norm, eps);
        let (y, yp) = luna_attention(c, layer, &xn, &pn, x_mask, p_mask);
        add(x, &y);
        add(p, &yp);
        let h = layer_norm(x, d, &layer.final_layer_norm, eps);
        let f = ffn(c, layer, &h, n);
        add(x, &f);
    } else {
        let (y, yp) = luna_attention(c, layer, x, p, x_mask, p_mask);
        add(x, &y);
        *x = layer_norm(x, d, &layer.self_attn_layer_norm, eps);
        add(p, &yp);
        *p = layer_norm(p, d, &layer.self_atten_proj_layer_norm, eps);
        let f = ffn(c, layer, x, n);
        add(x, &f);
        *x = layer_norm(x, d, &layer.final_layer_norm, eps);
    }
    let _ = proj_len;
}

fn ffn(c: &Config, layer: &Layer, x: &[f64], n: usize) -> Vec<f64> {
    let mut h = linear(x, n, &layer.fc1);
    for v in h.iter_mut() {
        *v = activation(c.activation, *v);
    }
    linear(&h, n, &layer.fc2)
}

/// The embedded X `[n, d]` and P `[l', d]` of sequence `b`, masked rows zeroed.
pub fn embed(model: &Model, batch: &Batch, b: usize) -> (Vec<f64>, Vec<f64>) {
    let c = &model.config;
    let d = c.embed_dim;
    let n = batch.len;
    let proj_len = batch.proj_len;
    let mut x = vec![0.0; n * d];
    for t in 0..n {
        let tok = batch.tokens[b * n + t] as usize;
        let pos = batch.positions[b * n + t] as usize;
        let pos_row: Vec<f64> = match &model.embed_positions {
            Some(table) => table[pos * d..(pos + 1) * d].iter().map(|&v| v as f64).collect(),
            None => token_sinusoid_row(pos, c.padding_idx, d),
        };
        for k in 0..d {
            x[t * d + k] = c.embed_scale * model.embed_tokens[tok * d + k] as f64 + pos_row[k];
        }
    }
    let mut p = vec![0.0; proj_len * d];
    for j in 0..proj_len {
        let pos_row = if c.learned_pos { vec![0.0; d] } else { sinusoid_row(j, d) };
        for k in 0..d {
            p[j * d + k] = c.embed_scale * model.projected_embeddings[j * d + k] as f64 + pos_row[k];
        }
    }
    if let (Some(ln_x), Some(ln_p)) = (&model.emb_layer_norm, &model.proj_emb_layer_norm) {
        x = layer_norm(&x, d, ln_x, c.layer_norm_eps);
        p = layer_norm(&p, d, ln_p, c.layer_norm_eps);
    }
    zero_rows(&mut x, d, &batch.x_mask[b * n..(b + 1) * n]);
    zero_rows(&mut p, d, &batch.p_mask[b * proj_len..(b + 1) * proj_len]);
    (x, p)
}

/// The float64 outputs of the whole encoder: `x [B, n, d]`, `p [B, l', d]`.
pub struct Output64 {
    pub x: Vec<f64>,
    pub p: Vec<f64>,
}

/// The whole encoder (docs/luna.md, "The encoder"), one sequence at a time.
pub fn encoder_forward(model: &Model, batch: &Batch) -> Output64 {
    let c = &model.config;
    let d = c.embed_dim;
    let (n, proj_len) = (batch.len, batch.proj_len);
    let mut out = Output64 { x: Vec::with_capacity(batch.batch * n * d), p: Vec::with_capacity(batch.batch * proj_len * d) };
    for b in 0..batch.batch {
        let x_mask = &batch.x_mask[b * n..(b + 1) * n];
        let p_mask = &batch.p_mask[b * proj_len..(b + 1) * proj_len];
        let (mut x, mut p) = embed(model, batch, b);
        for i in 0..c.num_layers {
            encoder_layer(c, model.layer(i), &mut x, &mut p, x_mask, p_mask);
        }
        if let (Some(ln_x), Some(ln_p)) = (&model.layer_norm, &model.proj_layer_norm) {
            x = layer_norm(&x, d, ln_x, c.layer_norm_eps);
            p = layer_norm(&p, d, ln_p, c.layer_norm_eps);
        }
        out.x.extend(x);
        out.p.extend(p);
    }
    out
}

/// The reference as an [`EncoderOutput`] (rounded to f32), for the `--device
/// cpu` path: refused first when it would pass the host memory budget
/// ([`budget`]), and checked finite in float32 after.
pub fn encoder_output(model: &Model, batch: &Batch) -> Result<EncoderOutput> {
    let what = format!("{} × {} tokens of this encoder", batch.batch, batch.len);
    budget::check(&what, budget::encoder_bytes(&model.config, batch.batch, batch.len, batch.proj_len))?;
    let o = encoder_forward(model, batch);
    let out = EncoderOutput {
        batch: batch.batch,
        len: batch.len,
        proj_len: batch.proj_len,
        dim: model.config.embed_dim,
        x: o.x.iter().map(|&v| v as f32).collect(),
        p: o.p.iter().map(|&v| v as f32).collect(),
    };
    check_finite("x", &out.x)?;
    check_finite("p", &out.p)?;
    Ok(out)
}

/// [`causal_lm_forward`] for the `--device cpu` paths: refused first when it
/// would pass the host memory budget ([`budget`]); the logits are checked
/// finite as float32, the precision they are written in.
pub fn causal_lm_checked(model: &Model, batch: &Batch) -> Result<Vec<f64>> {
    let what = format!("{} × {} tokens of this causal LM", batch.batch, batch.len);
    budget::check(&what, budget::causal_bytes(&model.config, batch.batch, batch.len))?;
    let logits = causal_lm_forward(model, batch);
    check_finite_f32("logits", &logits)?;
    Ok(logits)
}

/// Causal LM logits `[B, n, vocab]` for a batch (positions past a sequence's length are not meaningful).
pub fn causal_lm_forward(model: &Model, batch: &Batch) -> Vec<f64> {
    let n = batch.len;
    let mut out = Vec::new();
    for b in 0..batch.batch {
        let mut states = Vec::new();
        out.extend(causal::causal_lm_logits(model, &batch.tokens[b * n..(b + 1) * n], &batch.positions[b * n..(b + 1) * n], &mut states));
    }
    out
}
