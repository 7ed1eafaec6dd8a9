//! Fused multi-head attention with an online softmax (`shaders/attention.wgsl`):
//! the pack (P over the sequence) and unpack (tokens over the packed P) halves
//! of Luna, without a score matrix in global memory.

use crate::gpu::pipelines::{Access, KernelSpec};
use crate::gpu::recorder::Recorder;

pub const SOURCE: &str = include_str!("../../shaders/attention.wgsl");
/// Largest head dimension the kernel handles (WG * DPT in the shader).
pub const MAX_HEAD_DIM: usize = 512;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    q_rows: u32,
    k_rows: u32,
    heads: u32,
    head_dim: u32,
    q_stride: u32,
    q_off: u32,
    k_stride: u32,
    k_off: u32,
    v_stride: u32,
    v_off: u32,
    o_stride: u32,
    total: u32,
    scale: f32,
    _pad: [u32; 3],
}

pub fn spec() -> KernelSpec {
    KernelSpec {
        name: "attention",
        source: SOURCE,
        entry: "main",
        storage: &[Access::Read, Access::Read, Access::Read, Access::Read, Access::Write],
        constants: vec![],
    }
}

pub fn variants() -> Vec<KernelSpec> {
    vec![spec()]
}

/// A matrix of rows inside a buffer: `stride` floats per row, the view starting at column `offset`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub stride: usize,
    pub offset: usize,
}

/// Shapes of one attention call, per sequence of the batch.
#[derive(Clone, Copy)]
pub struct Shape {
    pub batch: usize,
    pub q_rows: usize,
    pub k_rows: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Applied to every score (the `d^-0.5` of the spec).
    pub scale: f32,
}

/// `out[b, i, head cols] = softmax(scale · q_i · K^T, masked) · V` for every
/// batch, head and query row; `key_mask` is `[batch, k_rows]`, nonzero = masked.
pub fn encode(rec: &mut Recorder, q: View, k: View, v: View, key_mask: &wgpu::Buffer, out: &wgpu::Buffer, out_stride: usize, s: Shape) {
    let kernel = rec.kernel(spec());
    let total = (s.batch * s.heads * s.q_rows) as u32;
    let params = Params {
        q_rows: s.q_rows as u32,
        k_rows: s.k_rows as u32,
        heads: s.heads as u32,
        head_dim: s.head_dim as u32,
        q_stride: q.stride as u32,
        q_off: q.offset as u32,
        k_stride: k.stride as u32,
        k_off: k.offset as u32,
        v_stride: v.stride as u32,
        v_off: v.offset as u32,
        o_stride: out_stride as u32,
        total,
        scale: s.scale,
        _pad: [0; 3],
    };
    let groups = rec.grid(total);
    rec.dispatch(&kernel, &params, &[q.buffer, k.buffer, v.buffer, key_mask, out], groups);
}
