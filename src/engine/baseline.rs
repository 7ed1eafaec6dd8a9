//! The softmax-attention baseline on the GPU: a standard Transformer encoder
//! (see [`crate::reference::softmax`] for the exact computation) run by the
//! same engine, with the same GEMM, LayerNorm and FFN kernels and the same
//! fused `[q | k | v]` projection as the Luna encoder layer, so that a
//! benchmark comparison isolates the attention. The attention itself is
//! [`Kind::Flash`] (fused online softmax, memory O(n)) or [`Kind::Naive`]
//! (materialised `[B, H, n, n]` scores, memory O(n²)); see
//! [`crate::kernels::softmax`].
//!
//! ```no_run
//! # use luna_wgpu::{Engine, AdapterChoice};
//! # use luna_wgpu::baseline::*;
//! # fn main() -> luna_wgpu::Result<()> {
//! let mut engine = Engine::new_blocking(&AdapterChoice::default())?;
//! let config = SoftmaxConfig {
//!     embed_dim: 64, ffn_embed_dim: 256, num_heads: 4, num_layers: 2,
//!     activation: luna_wgpu::Activation::Relu, normalize_before: false, layer_norm_eps: 1e-5,
//! };
//! let layers: Vec<SoftmaxLayer> = (0..2).map(|i| SoftmaxLayer::random(64, 256, i)).collect();
//! let encoder = engine.load_softmax(&config, &layers)?;
//! let (batch, len) = (2, 100);
//! let x = vec![0.5f32; batch * len * 64];
//! let key_mask: Vec<bool> = (0..batch * len).map(|i| i >= len + 60).collect(); // second sequence: 60 tokens
//! let input = SoftmaxInput { x: &x, batch, len, key_mask: &key_mask };
//! let y = engine.softmax_forward_blocking(&encoder, &input, Kind::Flash)?; // [batch, len, 64]
//! # Ok(()) }
//! ```

use crate::engine::context::Engine;
use crate::engine::tail::{Dims, Scratch};
use crate::engine::weights::{GpuBlock, GpuLinear};
use crate::error::{LunaError, Result};
use crate::gpu::buffers::{self, Tracked};
use crate::gpu::context::GpuContext;
use crate::gpu::pipelines::PipelineCache;
use crate::gpu::recorder::Recorder;
#[cfg(not(target_arch = "wasm32"))]
use crate::gpu::recorder::Timestamps;
use crate::gpu::scope::ErrorScopes;
use crate::kernels::gemm;
use crate::kernels::softmax::{self as kernel, Attention, Shape, View};

pub use crate::kernels::softmax::Kind;
pub use crate::softmax_model::{SoftmaxConfig, SoftmaxLayer};

struct GpuSoftmaxLayer {
    /// `[q_proj; k_proj; v_proj]` stacked: X is read once for all three.
    qkv_proj: GpuLinear,
    /// Output projection, FFN and LayerNorms: the same code as Luna's layers.
    block: GpuBlock,
}

/// A softmax-attention encoder's weights on the GPU.
pub struct SoftmaxEncoder {
    pub config: SoftmaxConfig,
    /// One shared layer, or one per layer.
    layers: Vec<GpuSoftmaxLayer>,
}

impl SoftmaxEncoder {
    fn layer(&self, i: usize) -> &GpuSoftmaxLayer {
        &self.layers[if self.layers.len() == 1 { 0 } else { i }]
    }
}

/// A batch for the softmax encoder: `x [batch, len, embed_dim]` (f32) and the
/// key padding mask `[batch, len]` (true = padding token, never attended to).
/// Rows of the output at padding positions carry no meaning.
#[derive(Clone, Copy, Debug)]
pub struct SoftmaxInput<'a> {
    pub x: &'a [f32],
    pub batch: usize,
    pub len: usize,
    pub key_mask: &'a [bool],
}

impl SoftmaxInput<'_> {
    /// Refuses inconsistent shapes, an empty batch and a sequence with no unmasked token.
    pub fn check(&self, c: &SoftmaxConfig) -> Result<()> {
        if self.batch == 0 || self.len == 0 {
            return Err(LunaError::Input(format!("empty batch: {} sequences of {} tokens", self.batch, self.len)));
        }
        let rows = self.batch * self.len;
        if self.x.len() != rows * c.embed_dim {
            return Err(LunaError::Input(format!(
                "x has {} values, expected batch {} × len {} × embed_dim {}",
                self.x.len(),
                self.batch,
                self.len,
                c.embed_dim
            )));
        }
        if self.key_mask.len() != rows {
            return Err(LunaError::Input(format!(
                "key_mask has {} values, expected batch {} × len {}",
                self.key_mask.len(),
                self.batch,
                self.len
            )));
        }
        if let Some(b) = self.key_mask.chunks(self.len).position(|m| m.iter().all(|&p| p)) {
            return Err(LunaError::Input(format!("sequence {b} of the batch is all padding")));
        }
        Ok(())
    }
}

fn shape(c: &SoftmaxConfig, input: &SoftmaxInput) -> Shape {
    let dh = c.head_dim();
    Shape {
        batch: input.batch,
        q_rows: input.len,
        k_rows: input.len,
        heads: c.num_heads,
        head_dim: dh,
        scale: (dh as f64).powf(-0.5) as f32,
    }
}

impl Engine {
    /// Uploads a softmax encoder's weights (blocking form of [`Engine::load_softmax_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_softmax(&self, config: &SoftmaxConfig, layers: &[SoftmaxLayer]) -> Result<SoftmaxEncoder> {
        pollster::block_on(self.load_softmax_async(config, layers))
    }

    /// Uploads a softmax encoder: `layers` holds one layer shared by all
    /// `config.num_layers`, or one per layer. Shapes are checked first.
    pub async fn load_softmax_async(&self, config: &SoftmaxConfig, layers: &[SoftmaxLayer]) -> Result<SoftmaxEncoder> {
        self.ctx.check_alive()?;
        config.check_layers(layers)?;
        let scope = ErrorScopes::push(&self.ctx);
        let uploaded: Result<Vec<GpuSoftmaxLayer>> = layers
            .iter()
            .map(|l| {
                let qkv_proj = self.stacked("sm_wqkv", &[&l.q_proj, &l.k_proj, &l.v_proj])?;
                let block = self.load_block(&l.out_proj, &l.fc1, &l.fc2, &l.self_attn_layer_norm, &l.final_layer_norm)?;
                Ok(GpuSoftmaxLayer { qkv_proj, block })
            })
            .collect();
        let layers = scope.close(&self.ctx, uploaded).await?;
        Ok(SoftmaxEncoder { config: config.clone(), layers })
    }

    /// Checks an input against the encoder and the device for `kind`, before any GPU work.
    pub fn softmax_check(&self, enc: &SoftmaxEncoder, input: &SoftmaxInput, kind: Kind) -> Result<()> {
        self.ctx.check_alive()?;
        let c = &enc.config;
        input.check(c)?;
        let rows = (input.batch * input.len) as u64;
        let d = c.embed_dim as u64;
        for (what, bytes) in [
            ("the fused q/k/v projections", rows * 3 * d * 4),
            ("the feed-forward hidden layer", rows * c.ffn_embed_dim as u64 * 4),
            ("the sequence activations", rows * d * 4),
        ] {
            buffers::check_binding(&self.ctx, what, bytes)?;
        }
        buffers::check_dispatch_rows(&self.ctx, rows)?;
        let s = shape(c, input);
        kernel::check(&self.ctx, kind, &s)?;
        buffers::check_binding(&self.ctx, "the attention scratch", kernel::scratch_floats(kind, &s) * 4)?;
        Ok(())
    }

    /// Runs the encoder's `num_layers` layers on `input` with softmax attention
    /// of `kind` and returns the output `[batch, len, embed_dim]`
    /// (asynchronous; nothing blocks on the web). A failed call (a typed
    /// error) leaves the engine usable.
    pub async fn softmax_forward(&mut self, enc: &SoftmaxEncoder, input: &SoftmaxInput<'_>, kind: Kind) -> Result<Vec<f32>> {
        self.softmax_check(enc, input, kind)?;
        let floats = input.batch * input.len * enc.config.embed_dim;
        let scope = ErrorScopes::push(&self.ctx);
        let result = async {
            let (rec, out) = self.softmax_record(enc, input, kind)?;
            rec.submit();
            Ok(buffers::read_f32(&self.ctx, &[(&out, floats)]).await?.remove(0))
        }
        .await;
        self.close(scope, result).await
    }

    /// Blocking form of [`Engine::softmax_forward`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn softmax_forward_blocking(&mut self, enc: &SoftmaxEncoder, input: &SoftmaxInput<'_>, kind: Kind) -> Result<Vec<f32>> {
        pollster::block_on(self.softmax_forward(enc, input, kind))
    }

    /// Runs the encoder on `input` without reading the output back and returns
    /// the time the GPU spent on it: from timestamp queries when the device
    /// has them, else the wall clock around the submission and a wait (the
    /// counterpart of [`Engine::time_encoder`], for benchmarks).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn softmax_time(&mut self, enc: &SoftmaxEncoder, input: &SoftmaxInput<'_>, kind: Kind) -> Result<f64> {
        self.softmax_check(enc, input, kind)?;
        let timestamps = Timestamps::new(&self.ctx);
        self.time_submission(
            |e| {
                let (rec, _) = e.softmax_record(enc, input, kind)?;
                match &timestamps {
                    Some(t) => rec.submit_timed(t),
                    None => rec.submit(),
                }
                Ok(())
            },
            timestamps.as_ref(),
        )
    }

    /// Writes the input into the workspace and records every layer without
    /// submitting: returns the recorder (call `submit`, or `submit_timed` to
    /// time the GPU work alone) and the buffer that will hold the output
    /// `[batch, len, embed_dim]` (a workspace buffer: valid until the next
    /// call that uses the workspace). The input upload is queued at once and
    /// lands before the recorder's submission. No error scope is pushed here:
    /// wrap the call in one (as [`Engine::softmax_forward`] does) to turn GPU
    /// errors into `LunaError`s.
    pub fn softmax_record<'e>(
        &'e mut self,
        enc: &SoftmaxEncoder,
        input: &SoftmaxInput<'_>,
        kind: Kind,
    ) -> Result<(Recorder<'e>, wgpu::Buffer)> {
        self.softmax_check(enc, input, kind)?;
        let Engine { ctx, cache, workspace, dummy, .. } = self;
        let ctx: &'e GpuContext = ctx;
        let cache: &'e PipelineCache = cache;
        let dummy: &'e Tracked = dummy;
        let c = &enc.config;
        let (rows, d) = (input.batch * input.len, c.embed_dim);
        let s = shape(c, input);
        let dims = Dims {
            rows,
            d,
            ffn: c.ffn_embed_dim,
            proj_width: 3 * d,
            pre_norm: c.normalize_before,
            act: c.activation,
            eps: c.layer_norm_eps as f32,
        };
        let scratch = Scratch::get(workspace, ctx, &dummy.buffer, dims);
        let mask = workspace.get(ctx, "sm_mask", rows as u64 * 4);
        let attn = match kind {
            Kind::Flash => workspace.get(ctx, "sm_state", kernel::scratch_floats(kind, &s).max(1) * 4),
            Kind::Naive => workspace.get(ctx, "sm_scores", kernel::scratch_floats(kind, &s).max(1) * 4),
        };
        ctx.queue.write_buffer(&scratch.x, 0, bytemuck::cast_slice(input.x));
        let key_mask: Vec<u32> = input.key_mask.iter().map(|&m| m as u32).collect();
        ctx.queue.write_buffer(&mask, 0, bytemuck::cast_slice(&key_mask));
        let mut rec = Recorder::new(ctx, cache, &dummy.buffer);
        let out = record_layers(&mut rec, enc, scratch, &mask, &attn, s, kind)?;
        Ok((rec, out))
    }
}

/// Records the encoder's layers reading `s.x`; returns the buffer holding the result.
fn record_layers(rec: &mut Recorder, enc: &SoftmaxEncoder, mut s: Scratch, mask: &wgpu::Buffer, attn: &wgpu::Buffer, shape: Shape, kind: Kind) -> Result<wgpu::Buffer> {
    let c = &enc.config;
    let (rows, d) = (shape.batch * shape.q_rows, c.embed_dim);
    let w = 3 * d;
    for i in 0..c.num_layers {
        let l = enc.layer(i);
        let input = s.attention_input(rec, &l.block);
        gemm::record(rec, &l.qkv_proj.gemm(input, &s.proj, rows));
        kernel::record(rec, kind, &Attention {
            q: View { buffer: &s.proj, stride: w, offset: 0 },
            k: View { buffer: &s.proj, stride: w, offset: d },
            v: View { buffer: &s.proj, stride: w, offset: 2 * d },
            key_mask: mask,
            out: &s.o,
            out_stride: d,
            shape,
            scratch: attn,
        })?;
        s.record_tail(rec, &l.block);
    }
    Ok(s.x)
}
