//! The softmax-attention baseline on the GPU: a standard Transformer encoder
//! (see [`crate::reference::softmax`] for the exact computation) run by the
//! same engine, with the same GEMM, LayerNorm and FFN kernels and the same
//! fused `[q | k | v]` projection as the Luna encoder layer, so that a
//! benchmark comparison isolates the attention. The attention itself is
//! [`Kind::Flash`] (fused online softmax, memory O(n)) or [`Kind::Naive`]
//! (materialised `[B, H, n, n]` scores, memory O(n²)); see
//! [`crate::kernels::softmax`].
//!
//! Its memory follows the same plan as Luna's encoder (`engine::plan`): a long
//! sequence runs in row blocks that keep their layer input and their keys and
//! values, with one block's scratch shared; the flash attention walks the key
//! blocks one after another, carrying its softmax state. The naive attention
//! needs every query row at once, so it runs each sequence as one block.
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
use crate::engine::plan::{self, Cut, Need};
use crate::engine::tail::{Block, Dims};
use crate::engine::weights::{GpuBlock, GpuLinear};
use crate::error::{LunaError, Result};
use crate::gpu::buffers;
use crate::gpu::recorder::{Recorder, Timestamps};
use crate::gpu::scope::ErrorScopes;
use crate::kernels::gemm;
use crate::kernels::softmax::{self as kernel, Attention, Shape, View};

pub use crate::kernels::softmax::Kind;
pub use crate::softmax_model::{SoftmaxConfig, SoftmaxLayer};

struct GpuSoftmaxLayer {
    q_proj: GpuLinear,
    /// `[k_proj; v_proj]` stacked: X is read once for both.
    kv_proj: GpuLinear,
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
                let q_proj = self.stacked("sm_wq", &[&l.q_proj])?;
                let kv_proj = self.stacked("sm_wkv", &[&l.k_proj, &l.v_proj])?;
                let block = self.load_block(&l.out_proj, &l.fc1, &l.fc2, &l.self_attn_layer_norm, &l.final_layer_norm)?;
                Ok(GpuSoftmaxLayer { q_proj, kv_proj, block })
            })
            .collect();
        let layers = scope.close(&self.ctx, uploaded).await?;
        Ok(SoftmaxEncoder { config: config.clone(), layers })
    }

    /// How an input is cut into groups and row blocks (`engine::plan`); the
    /// naive attention runs each sequence as one block.
    pub fn softmax_cut(&self, c: &SoftmaxConfig, n: usize, sequences: usize, kind: Kind) -> Result<Cut> {
        let widest = (2 * c.embed_dim).max(c.ffn_embed_dim);
        let mut cut = self.cut_rows(widest, n, sequences, kind == Kind::Flash)?;
        if kind == Kind::Naive {
            // A group's [seqs, heads, n, n] scores in one binding, when one sequence's fit.
            let per_sequence = (c.num_heads * n * n) as u64 * 4;
            cut.seqs = cut.seqs.min((self.ctx.max_binding() / per_sequence.max(1)).max(1) as usize);
        }
        Ok(cut)
    }

    /// Bytes of GPU buffers beyond the weights that `sequences` sequences of
    /// `n` tokens take with `kind` (activations, scratch; not the readback).
    pub fn softmax_memory(&self, c: &SoftmaxConfig, n: usize, sequences: usize, kind: Kind) -> Result<u64> {
        let cut = self.softmax_cut(c, n, sequences, kind)?;
        Ok(plan::total(&softmax_plan(c, n, cut, kind, false)))
    }

    /// Checks an input against the encoder and the device for `kind`, before
    /// any GPU work: shapes, every buffer against one binding, all of them
    /// against the device's memory (`engine::plan`).
    pub fn softmax_check(&self, enc: &SoftmaxEncoder, input: &SoftmaxInput, kind: Kind) -> Result<()> {
        self.softmax_checked(enc, input, kind, true).map(|_| ())
    }

    fn softmax_checked(&self, enc: &SoftmaxEncoder, input: &SoftmaxInput, kind: Kind, readback: bool) -> Result<Cut> {
        self.ctx.check_alive()?;
        input.check(&enc.config)?;
        self.softmax_fits(&enc.config, input.len, input.batch, kind, readback)
    }

    /// Checks, without any GPU work, that `sequences` sequences of `n` tokens
    /// would run with `kind` (read back or not) with the weights the engine
    /// holds now: the refusal a call would give, or the cut it would run.
    pub fn softmax_fits(&self, c: &SoftmaxConfig, n: usize, sequences: usize, kind: Kind, readback: bool) -> Result<Cut> {
        let cut = self.softmax_cut(c, n, sequences, kind)?;
        let dh = c.head_dim();
        let s = Shape { batch: cut.seqs, q_rows: n, k_rows: n, heads: c.num_heads, head_dim: dh, scale: 1.0 };
        kernel::check(&self.ctx, kind, &s)?;
        let needs = softmax_plan(c, n, cut, kind, readback);
        let plan_for = |n: usize| self.softmax_cut(c, n, 1, kind).ok().map(|cut| plan::total(&softmax_plan(c, n, cut, kind, readback)));
        self.check_plan(&needs, sequences, n, cut, plan_for)?;
        Ok(cut)
    }

    /// Runs the encoder's `num_layers` layers on `input` with softmax attention
    /// of `kind` and returns the output `[batch, len, embed_dim]`
    /// (asynchronous; nothing blocks on the web). A failed call (a typed
    /// error) leaves the engine usable.
    pub async fn softmax_forward(&mut self, enc: &SoftmaxEncoder, input: &SoftmaxInput<'_>, kind: Kind) -> Result<Vec<f32>> {
        let cut = self.softmax_checked(enc, input, kind, true)?;
        self.make_room(plan::total(&softmax_plan(&enc.config, input.len, cut, kind, true)));
        let d = enc.config.embed_dim;
        let scope = ErrorScopes::push(&self.ctx);
        let result = async {
            let mut out = Vec::with_capacity(input.batch * input.len * d);
            for seq0 in (0..input.batch).step_by(cut.seqs) {
                let blocks = self.softmax_group(enc, input, kind, seq0, cut.seqs.min(input.batch - seq0), cut, None)?;
                // Block by block, so that the staging memory is one block's.
                for (block, rows) in &blocks {
                    out.extend(buffers::read_output(&self.ctx, "x", block, rows * d).await?);
                }
            }
            Ok(out)
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
    /// has them and the input is one submission, else the wall clock around
    /// the submissions and a wait (the counterpart of [`Engine::time_encoder`],
    /// for benchmarks).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn softmax_time(&mut self, enc: &SoftmaxEncoder, input: &SoftmaxInput<'_>, kind: Kind) -> Result<f64> {
        let cut = self.softmax_checked(enc, input, kind, false)?;
        self.make_room(plan::total(&softmax_plan(&enc.config, input.len, cut, kind, false)));
        let timestamps = if cut.seqs >= input.batch { Timestamps::new(&self.ctx) } else { None };
        self.time_submission(
            |e| {
                for seq0 in (0..input.batch).step_by(cut.seqs) {
                    e.softmax_group(enc, input, kind, seq0, cut.seqs.min(input.batch - seq0), cut, timestamps.as_ref())?;
                }
                Ok(())
            },
            timestamps.as_ref(),
        )
    }

    /// Writes sequences `seq0..seq0 + seqs` of the input into the workspace,
    /// records every layer and submits; returns the buffers that will hold
    /// the output, one per row block with its rows (workspace buffers: valid
    /// until the next call that uses the workspace).
    #[allow(clippy::too_many_arguments)]
    fn softmax_group(&mut self, enc: &SoftmaxEncoder, input: &SoftmaxInput<'_>, kind: Kind, seq0: usize, seqs: usize, cut: Cut, timestamps: Option<&Timestamps>) -> Result<Vec<(wgpu::Buffer, usize)>> {
        let Engine { ctx, cache, workspace: ws, dummy, .. } = self;
        let c = &enc.config;
        let (n, d) = (input.len, c.embed_dim);
        let blocks = cut.blocks(n, seqs);
        let row0 = seq0 * n;
        let dims = Dims {
            rows: cut.rows(n),
            d,
            ffn: c.ffn_embed_dim,
            proj_width: d,
            pre_norm: c.normalize_before,
            act: c.activation,
            eps: c.layer_norm_eps as f32,
        };
        let blk = Block::get(ws, ctx, dims);
        for name in ["sm_x", "sm_mask", "sm_kv"] {
            ws.drop_from(ctx, name, blocks.len());
        }
        // Per block: its layer input, key mask, and keys and values.
        let mut xs = Vec::new();
        for (i, &(s, rows)) in blocks.iter().enumerate() {
            let range = row0 + s..row0 + s + rows;
            let x = ws.get_nth(ctx, "sm_x", i, (rows * d) as u64 * 4);
            let mask = ws.get_nth(ctx, "sm_mask", i, rows as u64 * 4);
            let kv = ws.get_nth(ctx, "sm_kv", i, (rows * 2 * d) as u64 * 4);
            ctx.queue.write_buffer(&x, 0, bytemuck::cast_slice(&input.x[range.start * d..range.end * d]));
            let key_mask: Vec<u32> = input.key_mask[range].iter().map(|&m| m as u32).collect();
            ctx.queue.write_buffer(&mask, 0, bytemuck::cast_slice(&key_mask));
            xs.push((x, mask, kv, rows));
        }
        let whole = Shape { batch: seqs, q_rows: n, ..shape(c, input) };
        let attn_floats = attention_floats(kind, &whole, cut);
        let attn = ws.get(ctx, if kind == Kind::Flash { "sm_state" } else { "sm_scores" }, attn_floats.max(1) * 4);
        let mut rec = Recorder::new(ctx, cache, &dummy.buffer);
        let one = blocks.len() == 1;
        for i in 0..c.num_layers {
            let l = enc.layer(i);
            for (x, _, kv, rows) in &xs {
                let input = blk.attention_input(&mut rec, x, &l.block, *rows);
                gemm::record(&mut rec, &l.kv_proj.gemm(input, kv, *rows));
            }
            for (x, _, _, rows) in &xs {
                // Pre-norm: LN(x) is still in the block scratch when there is one block.
                let input = if c.normalize_before && one { &blk.b } else { blk.attention_input(&mut rec, x, &l.block, *rows) };
                gemm::record(&mut rec, &l.q_proj.gemm(input, blk.queries(), *rows));
                let q_rows = if one { n } else { *rows };
                for (j, (_, mask, kv, k_rows)) in xs.iter().enumerate() {
                    let k_rows = if one { n } else { *k_rows };
                    let a = Attention {
                        q: View { buffer: blk.queries(), stride: d, offset: 0 },
                        k: View { buffer: kv, stride: 2 * d, offset: 0 },
                        v: View { buffer: kv, stride: 2 * d, offset: d },
                        key_mask: mask,
                        out: blk.attention_output(),
                        out_stride: d,
                        shape: Shape { q_rows, k_rows, ..whole },
                        scratch: &attn,
                    };
                    match kind {
                        Kind::Flash => kernel::record_flash_keys(&mut rec, &a, j == 0, j + 1 == xs.len())?,
                        Kind::Naive => kernel::record(&mut rec, kind, &a)?,
                    }
                }
                blk.record_tail(&mut rec, &l.block, x, *rows);
            }
        }
        match timestamps {
            Some(t) => rec.submit_timed(t),
            None => rec.submit(),
        }
        Ok(xs.into_iter().map(|(x, _, _, rows)| (x, rows)).collect())
    }
}

/// Floats of the attention's scratch for a group (`whole`: all its queries
/// and keys): the flash state when keys take several passes or blocks, or the
/// naive score matrix.
fn attention_floats(kind: Kind, whole: &Shape, cut: Cut) -> u64 {
    let blocked = cut.blocked(whole.q_rows);
    match kind {
        Kind::Flash if blocked => 2 * (whole.heads * cut.block_rows) as u64,
        _ => kernel::scratch_floats(kind, whole),
    }
}

/// Every buffer a pass over sequences of `n` tokens cut as `cut` allocates
/// beyond the weights (as `Engine::softmax_group` does), and with `readback`
/// the staging that reads the output back.
fn softmax_plan(c: &SoftmaxConfig, n: usize, cut: Cut, kind: Kind, readback: bool) -> Vec<Need> {
    let f = 4u64;
    let d = c.embed_dim as u64;
    let rows = cut.rows(n) as u64;
    let tokens = (cut.seqs * n) as u64;
    let dh = c.head_dim();
    let whole = Shape { batch: cut.seqs, q_rows: n, k_rows: n, heads: c.num_heads, head_dim: dh, scale: 1.0 };
    let mut plan = vec![
        Need { what: "a block of the layer input", each: rows * d * f, total: tokens * d * f },
        Need { what: "a block's key mask", each: rows * f, total: tokens * f },
        Need { what: "a block of the keys and values", each: rows * 2 * d * f, total: tokens * 2 * d * f },
        Need::one("a block's LayerNorm, queries and FFN output", rows * d * f),
        Need::one("a block's attention output and layer midpoint", rows * d * f),
        Need::one("a block of the feed-forward hidden layer", rows * c.ffn_embed_dim as u64 * f),
        Need::one(if kind == Kind::Flash { "the softmax state" } else { "the [batch, heads, n, n] attention score matrix" }, attention_floats(kind, &whole, cut) * f),
    ];
    if readback {
        // Read back block by block: one block's staging at a time.
        plan.push(Need::one("the readback of a block of the output", rows * d * f));
    }
    plan
}
