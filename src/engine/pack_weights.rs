//! The pack weights of a causal LM, for looking at what the `l` packed slots
//! read: at layer `i`, head `h` and slot `j`, token `t` is folded into the
//! state with weight
//!
//! ```text
//! A[t, h, j] = softplus_ln2( Linear(pc_proj)(X_i)[t]_h · Q_P,h[j] )      Q_P = Linear(pq_proj)(P) · dh^-0.5
//! ```
//!
//! where `X_i` is the input of layer `i`'s attention (after its LayerNorm when
//! `normalize_before`) (docs/luna.md, "Causal attention").
//!
//! The causal kernels never write `A` out. This runs the causal LM's own
//! pass over the sequence (segment by segment, `engine::segments`) and,
//! as each chosen layer's attention input goes by, records one extra GEMM
//! whose weight folds `pc_proj` and the head-blocked `Q_P` together
//! (`[H·l, d]`): its output is the `[n, H·l]` scores, turned into weights on
//! the host. The same pass can score the sequence too, so a document is read
//! once for both.

use crate::config::ModelKind;
use crate::engine::context::Engine;
use crate::engine::causal::Emit;
use crate::engine::segments::{Capture, Span};
use crate::engine::weights::GpuModel;
use crate::error::{LunaError, Result};
use crate::gpu::buffers::{self, Tracked};
use crate::input::Batch;
use crate::math::{self, softplus_ln2};
use crate::model::Model;

/// Pack weights of one layer over a sequence: `values[(t * heads + h) * proj_len + j]`.
#[derive(Clone, Debug)]
pub struct PackWeights {
    pub layer: usize,
    /// Tokens `n`.
    pub len: usize,
    pub heads: usize,
    /// The projection length `l` (the causal LM has no dynamic projection).
    pub proj_len: usize,
    pub values: Vec<f32>,
}

impl PackWeights {
    /// Weight of token `t` for head `h`, slot `j`.
    pub fn get(&self, t: usize, h: usize, j: usize) -> f32 {
        self.values[(t * self.heads + h) * self.proj_len + j]
    }
}

/// The folded score weight of causal layer `layer`, `[H·l, d]`, and its bias
/// `[H·l]`: `W[h·l + j, k] = sum_{c in head h} Q_P[j, c] · pc_w[c, k]`.
fn folded_scores(model: &Model, layer: usize) -> (Vec<f32>, Vec<f32>) {
    let c = &model.config;
    let (d, heads, proj_len, dh) = (c.embed_dim, c.num_heads, c.projection_length, c.head_dim());
    let p = math::causal_p(model);
    let qp = math::causal_pack_queries(model, &p, layer);
    let pc = &model.causal_layer(layer).pc_proj;
    let mut w = vec![0f32; heads * proj_len * d];
    let mut b = vec![0f32; heads * proj_len];
    for h in 0..heads {
        for j in 0..proj_len {
            let row = h * proj_len + j;
            let mut acc = vec![0f64; d];
            let mut bias = 0f64;
            for cc in h * dh..(h + 1) * dh {
                let q = qp[j * d + cc];
                bias += q * pc.bias[cc] as f64;
                for (k, a) in acc.iter_mut().enumerate() {
                    *a += q * pc.weight[cc * d + k] as f64;
                }
            }
            for (k, a) in acc.iter().enumerate() {
                w[row * d + k] = *a as f32;
            }
            b[row] = bias as f32;
        }
    }
    (w, b)
}

impl Engine {
    /// The pack weights `A` of each of `layers` (0-based) over one sequence of
    /// `tokens` (real tokens, no padding), each `[n, H, l]`, in one pass that
    /// runs the model only as far as the last layer asked for. `gpu` must be
    /// `model` uploaded to this engine. Asynchronous: nothing blocks on the web.
    pub async fn pack_weights(&mut self, gpu: &GpuModel, model: &Model, tokens: &[u32], layers: &[usize]) -> Result<Vec<PackWeights>> {
        Ok(self.pack_pass(gpu, model, tokens, layers, false).await?.1)
    }

    /// [`Engine::score`] of one sequence (its surprisal, entry `t` for token
    /// `t + 1`) and the pack weights of `layers`, from one pass over it.
    pub async fn score_with_pack_weights(
        &mut self,
        gpu: &GpuModel,
        model: &Model,
        tokens: &[u32],
        layers: &[usize],
    ) -> Result<(Vec<f32>, Vec<PackWeights>)> {
        self.pack_pass(gpu, model, tokens, layers, true).await
    }

    async fn pack_pass(
        &mut self,
        gpu: &GpuModel,
        model: &Model,
        tokens: &[u32],
        layers: &[usize],
        score: bool,
    ) -> Result<(Vec<f32>, Vec<PackWeights>)> {
        self.ctx.check_alive()?;
        let c = &model.config;
        if c.model != ModelKind::CausalLm {
            return Err(LunaError::Unsupported("pack weights are shown for a causal_lm; this model is an encoder".into()));
        }
        if gpu.config != *c {
            return Err(LunaError::Input("the uploaded model and the host model differ; pass the same model to both".into()));
        }
        if layers.is_empty() && !score {
            return Err(LunaError::Input("no layers: name at least one layer whose pack weights you want".into()));
        }
        for (k, &layer) in layers.iter().enumerate() {
            if layer >= c.num_layers {
                return Err(LunaError::Input(format!("layer {layer} does not exist: the model has {} layers (0..{})", c.num_layers, c.num_layers)));
            }
            if layers[..k].contains(&layer) {
                return Err(LunaError::Input(format!("layer {layer} is named twice")));
            }
        }
        if tokens.is_empty() {
            return Err(LunaError::Input("no tokens: give at least one".into()));
        }
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let batch = Batch::new(c, &ids, 1, tokens.len())?;
        if batch.lengths[0] != tokens.len() {
            return Err(LunaError::Input(format!("the tokens hold the padding token {}; give real tokens only", c.padding_idx)));
        }
        let (heads, proj_len, n) = (c.num_heads, c.projection_length, tokens.len());
        let floats = n * heads * proj_len;
        let mut folded: Vec<(usize, Tracked, Tracked, Tracked)> = Vec::new();
        for &layer in layers {
            let (w, b) = folded_scores(model, layer);
            let out = buffers::create(&self.ctx, &self.stats, "the pack weights", floats as u64 * 4)?;
            folded.push((layer, self.up("pack scores w", &w)?, self.up("pack scores b", &b)?, out));
        }
        let captures: Vec<Capture> = folded
            .iter()
            .map(|(layer, w, b, out)| Capture { layer: *layer, w: &w.buffer, b: &b.buffer, width: heads * proj_len, out: &out.buffer })
            .collect();
        let emit = if score { Emit::Surprisal } else { Emit::Nothing };
        let bits = self.sequence_pass(gpu, tokens, None, None, &captures, emit, Span::whole(tokens.len())).await?;
        let reads: Vec<(&wgpu::Buffer, usize)> = folded.iter().map(|f| (&f.3.buffer, floats)).collect();
        let raw = if reads.is_empty() { Vec::new() } else { buffers::read_f32(&self.ctx, &reads).await? };
        for z in &raw {
            crate::error::check_finite("the pack weights", z)?;
        }
        drop(captures);
        drop(folded);
        let weights = layers
            .iter()
            .zip(raw)
            .map(|(&layer, z)| PackWeights { layer, len: n, heads, proj_len, values: z.iter().map(|&z| softplus_ln2(z as f64) as f32).collect() })
            .collect();
        Ok((bits, weights))
    }

    /// Blocking form of [`Engine::pack_weights`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn pack_weights_blocking(&mut self, gpu: &GpuModel, model: &Model, tokens: &[u32], layers: &[usize]) -> Result<Vec<PackWeights>> {
        pollster::block_on(self.pack_weights(gpu, model, tokens, layers))
    }

    /// Blocking form of [`Engine::score_with_pack_weights`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn score_with_pack_weights_blocking(
        &mut self,
        gpu: &GpuModel,
        model: &Model,
        tokens: &[u32],
        layers: &[usize],
    ) -> Result<(Vec<f32>, Vec<PackWeights>)> {
        pollster::block_on(self.score_with_pack_weights(gpu, model, tokens, layers))
    }
}
