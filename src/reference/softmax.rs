//! Float64 reference of a standard (softmax attention) Transformer encoder
//! layer, the baseline Luna is compared with: the same shapes, LayerNorms and
//! feed-forward block as a Luna encoder layer, with plain multi-head
//! self-attention in place of the pack/unpack pair. Plain loops, the oracle of
//! the GPU baseline (`crate::baseline`). The config and weights are
//! `crate::softmax_model`'s.
//!
//! Post-norm (`normalize_before = false`):
//!
//! ```text
//! X = LN(self_attn_layer_norm)(X + Linear(out_proj)(MHA(X)))
//! X = LN(final_layer_norm)(X + Linear(fc2)(act(Linear(fc1)(X))))
//! ```
//!
//! Pre-norm (`normalize_before = true`):
//!
//! ```text
//! X = X + Linear(out_proj)(MHA(LN(self_attn_layer_norm)(X)))
//! X = X + Linear(fc2)(act(Linear(fc1)(LN(final_layer_norm)(X))))
//! ```
//!
//! with `MHA(X)` per head `h`: `softmax(Q_h K_h^T · dh^-0.5, padding keys
//! masked) · V_h`, `Q, K, V = Linear(q_proj, k_proj, v_proj)(X)`.

use super::ops::{activation, add, layer_norm, linear, multihead_attention, scale};
pub use crate::softmax_model::{SoftmaxConfig, SoftmaxLayer};

/// `Linear(out_proj)(MHA(x))` for one sequence `x [n, d]`; keys under `key_mask` excluded.
pub fn self_attention(c: &SoftmaxConfig, layer: &SoftmaxLayer, x: &[f64], key_mask: &[bool]) -> Vec<f64> {
    let d = c.embed_dim;
    let n = x.len() / d;
    let mut q = linear(x, n, &layer.q_proj);
    scale(&mut q, (c.head_dim() as f64).powf(-0.5));
    let k = linear(x, n, &layer.k_proj);
    let v = linear(x, n, &layer.v_proj);
    let o = multihead_attention(&q, &k, &v, n, n, d, c.num_heads, key_mask);
    linear(&o, n, &layer.out_proj)
}

fn ffn(c: &SoftmaxConfig, layer: &SoftmaxLayer, x: &[f64]) -> Vec<f64> {
    let n = x.len() / c.embed_dim;
    let mut h = linear(x, n, &layer.fc1);
    for v in h.iter_mut() {
        *v = activation(c.activation, *v);
    }
    linear(&h, n, &layer.fc2)
}

/// One encoder layer (post-norm or pre-norm) on one sequence `x [n, d]`, in place.
pub fn encoder_layer(c: &SoftmaxConfig, layer: &SoftmaxLayer, x: &mut Vec<f64>, key_mask: &[bool]) {
    let d = c.embed_dim;
    let eps = c.layer_norm_eps;
    if c.normalize_before {
        let xn = layer_norm(x, d, &layer.self_attn_layer_norm, eps);
        let y = self_attention(c, layer, &xn, key_mask);
        add(x, &y);
        let h = layer_norm(x, d, &layer.final_layer_norm, eps);
        let f = ffn(c, layer, &h);
        add(x, &f);
    } else {
        let y = self_attention(c, layer, x, key_mask);
        add(x, &y);
        *x = layer_norm(x, d, &layer.self_attn_layer_norm, eps);
        let f = ffn(c, layer, x);
        add(x, &f);
        *x = layer_norm(x, d, &layer.final_layer_norm, eps);
    }
}

/// `num_layers` encoder layers on a batch `x [batch, len, d]` with a key padding
/// mask `[batch, len]` (true = padding). Layer `i` uses `layers[i]`, or
/// `layers[0]` for every layer when one layer is given. Returns `[batch, len, d]`.
pub fn encoder(c: &SoftmaxConfig, layers: &[SoftmaxLayer], x: &[f32], batch: usize, len: usize, key_mask: &[bool]) -> Vec<f64> {
    let d = c.embed_dim;
    assert_eq!(x.len(), batch * len * d, "x is not [batch, len, d]");
    assert_eq!(key_mask.len(), batch * len, "key_mask is not [batch, len]");
    let mut out = Vec::with_capacity(x.len());
    for b in 0..batch {
        let mut xb: Vec<f64> = x[b * len * d..(b + 1) * len * d].iter().map(|&v| v as f64).collect();
        let mask = &key_mask[b * len..(b + 1) * len];
        for i in 0..c.num_layers {
            let layer = &layers[if layers.len() == 1 { 0 } else { i }];
            encoder_layer(c, layer, &mut xb, mask);
        }
        out.extend(xb);
    }
    out
}
