//! What every layer of the engine does after its attention (the Luna encoder,
//! the causal LM and the softmax baseline alike): output projection, residual,
//! LayerNorm and the feed-forward block, post-norm or pre-norm; and the
//! scratch those layers share, allocated by liveness.

use crate::config::Activation;
use crate::engine::weights::{GpuBlock, GpuNorm};
use crate::gpu::buffers::Workspace;
use crate::gpu::context::GpuContext;
use crate::gpu::recorder::Recorder;
use crate::kernels::gemm;
use crate::kernels::layernorm;

/// Shapes and options of a stack of layers over `rows` token rows.
#[derive(Clone, Copy)]
pub(crate) struct Dims {
    pub rows: usize,
    pub d: usize,
    pub ffn: usize,
    /// Floats per row of the fused input projections.
    pub proj_width: usize,
    pub pre_norm: bool,
    pub act: Activation,
    pub eps: f32,
}

/// The per-token scratch of a layer stack. The fused projections and the FFN
/// hidden layer are never live together, so they share one buffer; `xn` exists
/// only pre-norm and `y` only post-norm. Per token: 8·d floats for FFN = 4·d.
pub(crate) struct Scratch {
    /// The layer input and output, swapped as layers go.
    pub x: wgpu::Buffer,
    pub x_alt: wgpu::Buffer,
    /// `LN(x)` (pre-norm).
    pub xn: wgpu::Buffer,
    /// The fused projections `[rows, proj_width]`; later the FFN hidden layer.
    pub proj: wgpu::Buffer,
    /// The attention output, before the output projection.
    pub o: wgpu::Buffer,
    /// The output projection and FFN results before their LayerNorm (post-norm).
    y: wgpu::Buffer,
    dims: Dims,
}

impl Scratch {
    pub(crate) fn get(ws: &mut Workspace, ctx: &GpuContext, dummy: &wgpu::Buffer, dims: Dims) -> Scratch {
        let rows = dims.rows as u64;
        let mut get = |name: &'static str, floats: usize| ws.get(ctx, name, rows * floats as u64 * 4);
        Scratch {
            x: get("x0", dims.d),
            x_alt: get("x1", dims.d),
            xn: if dims.pre_norm { get("x_norm", dims.d) } else { dummy.clone() },
            proj: get("proj", dims.proj_width.max(dims.ffn)),
            o: get("o", dims.d),
            y: if dims.pre_norm { dummy.clone() } else { get("y", dims.d) },
            dims,
        }
    }

    fn ln(&self, rec: &mut Recorder, x: &wgpu::Buffer, residual: Option<&wgpu::Buffer>, g: &GpuNorm, out: &wgpu::Buffer) {
        let d = &self.dims;
        layernorm::record(rec, layernorm::Step { x, residual, norm: g.pair(), mask: None, out }, d.rows, d.d, d.eps);
    }

    /// Records the attention's input: `LN(x)` into `xn` (pre-norm), or `x` itself.
    pub(crate) fn attention_input(&self, rec: &mut Recorder, block: &GpuBlock) -> &wgpu::Buffer {
        if self.dims.pre_norm {
            self.ln(rec, &self.x, None, &block.ln_attn, &self.xn);
            &self.xn
        } else {
            &self.x
        }
    }

    /// Records the rest of the layer once the attention has written `o`:
    /// post-norm `x = LN(x + out(o)); x = LN(x + fc2(act(fc1(x))))`,
    /// pre-norm `x = x + out(o); x = x + fc2(act(fc1(LN(x))))`.
    pub(crate) fn record_tail(&mut self, rec: &mut Recorder, b: &GpuBlock) {
        let Dims { rows, pre_norm, act, .. } = self.dims;
        let act = Some(act);
        if pre_norm {
            gemm::record(rec, &b.out_proj.gemm(&self.o, &self.x_alt, rows).residual(Some(&self.x)));
            std::mem::swap(&mut self.x, &mut self.x_alt);
            self.ln(rec, &self.x, None, &b.ln_final, &self.xn);
            gemm::record(rec, &b.fc1.gemm(&self.xn, &self.proj, rows).act(act));
            gemm::record(rec, &b.fc2.gemm(&self.proj, &self.x_alt, rows).residual(Some(&self.x)));
        } else {
            gemm::record(rec, &b.out_proj.gemm(&self.o, &self.y, rows));
            self.ln(rec, &self.x, Some(&self.y), &b.ln_attn, &self.x_alt);
            std::mem::swap(&mut self.x, &mut self.x_alt);
            gemm::record(rec, &b.fc1.gemm(&self.x, &self.proj, rows).act(act));
            gemm::record(rec, &b.fc2.gemm(&self.proj, &self.y, rows));
            self.ln(rec, &self.x, Some(&self.y), &b.ln_final, &self.x_alt);
        }
        std::mem::swap(&mut self.x, &mut self.x_alt);
    }

    /// Records `x = LN(x)` (a final LayerNorm).
    pub(crate) fn record_norm(&mut self, rec: &mut Recorder, g: &GpuNorm) {
        self.ln(rec, &self.x, None, g, &self.x_alt);
        std::mem::swap(&mut self.x, &mut self.x_alt);
    }
}

/// The scratch of one row block of the Luna encoder (`engine::encoder`),
/// reused by liveness so that a token costs the layer's input `x` (held by
/// the caller, one buffer per block) plus this block's share:
///
/// - `b` `[rows, d]`: `LN(x)` (pre-norm); the unpack's queries (post-norm) or
///   output (pre-norm); the output projection; the FFN output;
/// - `w` `[rows, max(width, d)]`: the pack's K/V; then the unpack's output
///   (post-norm) or queries (pre-norm); then the layer's midpoint;
/// - `h` `[rows, ffn]`: the FFN hidden layer.
///
/// The layer's result lands back in `x`.
pub(crate) struct Block {
    pub b: wgpu::Buffer,
    pub w: wgpu::Buffer,
    h: wgpu::Buffer,
    dims: Dims,
}

impl Block {
    /// Scratch for blocks of at most `dims.rows` rows; `dims.proj_width` is the pack's K/V width.
    pub(crate) fn get(ws: &mut Workspace, ctx: &GpuContext, dims: Dims) -> Block {
        let rows = dims.rows as u64;
        let mut get = |name: &'static str, floats: usize| ws.get(ctx, name, rows * floats as u64 * 4);
        Block { b: get("block_b", dims.d), w: get("block_w", dims.proj_width.max(dims.d)), h: get("block_ffn", dims.ffn), dims }
    }

    /// Where the unpack reads its queries (`[rows, d]`).
    pub(crate) fn queries(&self) -> &wgpu::Buffer {
        if self.dims.pre_norm { &self.w } else { &self.b }
    }

    /// Where the unpack writes its output (`[rows, d]`), as [`Block::record_tail`] reads it.
    pub(crate) fn attention_output(&self) -> &wgpu::Buffer {
        if self.dims.pre_norm { &self.b } else { &self.w }
    }

    fn ln(&self, rec: &mut Recorder, x: &wgpu::Buffer, residual: Option<&wgpu::Buffer>, g: &GpuNorm, out: &wgpu::Buffer, rows: usize) {
        let d = &self.dims;
        layernorm::record(rec, layernorm::Step { x, residual, norm: g.pair(), mask: None, out }, rows, d.d, d.eps);
    }

    /// Records the attention input of block `x`: `LN(x)` into `b` (pre-norm), or `x` itself.
    pub(crate) fn attention_input<'s>(&'s self, rec: &mut Recorder, x: &'s wgpu::Buffer, block: &GpuBlock, rows: usize) -> &'s wgpu::Buffer {
        if self.dims.pre_norm {
            self.ln(rec, x, None, &block.ln_attn, &self.b, rows);
            &self.b
        } else {
            x
        }
    }

    /// Records the rest of the layer once the unpack has written
    /// [`Block::attention_output`], leaving the result in `x`:
    /// post-norm `x = LN(x + out(o)); x = LN(x + fc2(act(fc1(x))))`,
    /// pre-norm `x = x + out(o); x = x + fc2(act(fc1(LN(x))))`.
    pub(crate) fn record_tail(&self, rec: &mut Recorder, blk: &GpuBlock, x: &wgpu::Buffer, rows: usize) {
        let act = Some(self.dims.act);
        let (b, w, h) = (&self.b, &self.w, &self.h);
        if self.dims.pre_norm {
            // o in b; x1 = x + out(o) in w; LN(x1) in b; x = x1 + fc2(act(fc1(LN(x1)))).
            gemm::record(rec, &blk.out_proj.gemm(b, w, rows).residual(Some(x)));
            self.ln(rec, w, None, &blk.ln_final, b, rows);
            gemm::record(rec, &blk.fc1.gemm(b, h, rows).act(act));
            gemm::record(rec, &blk.fc2.gemm(h, x, rows).residual(Some(w)));
        } else {
            // o in w; out(o) in b; x1 = LN(x + out(o)) in w; fc2(act(fc1(x1))) in b; x = LN(x1 + that).
            gemm::record(rec, &blk.out_proj.gemm(w, b, rows));
            self.ln(rec, x, Some(b), &blk.ln_attn, w, rows);
            gemm::record(rec, &blk.fc1.gemm(w, h, rows).act(act));
            gemm::record(rec, &blk.fc2.gemm(h, b, rows));
            self.ln(rec, w, Some(b), &blk.ln_final, x, rows);
        }
    }

    /// Records `x = LN(x)` (through `b`; a final or embedding LayerNorm, `mask` rows zeroed).
    pub(crate) fn record_norm(&self, rec: &mut Recorder, g: &GpuNorm, mask: Option<&wgpu::Buffer>, x: &wgpu::Buffer, rows: usize) {
        let d = &self.dims;
        layernorm::record(rec, layernorm::Step { x, residual: None, norm: g.pair(), mask, out: &self.b }, rows, d.d, d.eps);
        rec.copy(&self.b, 0, x, 0, rows * d.d);
    }
}
