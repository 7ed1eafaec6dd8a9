//! Fused multi-head attention with an online softmax (`shaders/attention.wgsl`):
//! the pack (P over the sequence) and unpack (tokens over the packed P) halves
//! of Luna, without a score matrix in global memory. Long key sequences are
//! split over several workgroups whose partial softmax states are merged by
//! `shaders/attention_combine.wgsl`; the scratch for them is bounded by
//! `MAX_SPLITS`, not by the sequence length.

use crate::gpu::pipelines::{Access, KernelSpec};
use crate::gpu::recorder::Recorder;

pub const SOURCE: &str = include_str!("../../shaders/attention.wgsl");
pub const COMBINE_SOURCE: &str = include_str!("../../shaders/attention_combine.wgsl");
/// At most this many workgroups share one query row's keys.
pub const MAX_SPLITS: usize = 64;
/// Keys below this per workgroup are not worth a split.
pub const MIN_KEYS_PER_SPLIT: usize = 1024;
/// Largest head dimension the kernel handles (WG * DPT in the shader).
pub const MAX_HEAD_DIM: usize = 512;

/// The first eleven words of every attention kernel's `Params` (this file's,
/// and the softmax baselines'): sizes, and where Q, K, V and the output lie.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Layout {
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
}

impl Layout {
    pub(crate) fn new(a: &Attention) -> Layout {
        let (q, k, v, out_stride, s) = (&a.q, &a.k, &a.v, a.out_stride, &a.shape);
        Layout {
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
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    layout: Layout,
    total: u32,
    scale: f32,
    splits: u32,
    keys_per_split: u32,
    first_split: u32,
    all_splits: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CombineParams {
    q_rows: u32,
    heads: u32,
    head_dim: u32,
    splits: u32,
    o_stride: u32,
    total: u32,
    _pad: [u32; 2],
}

pub fn spec() -> KernelSpec {
    KernelSpec {
        name: "attention",
        source: SOURCE,
        entry: "main",
        storage: &[Access::Read, Access::Read, Access::Read, Access::Read, Access::Write, Access::Write],
        constants: vec![],
    }
}

pub fn combine_spec() -> KernelSpec {
    KernelSpec {
        name: "attention_combine",
        source: COMBINE_SOURCE,
        entry: "main",
        storage: &[Access::Read, Access::Write],
        constants: vec![],
    }
}

pub fn variants() -> Vec<KernelSpec> {
    vec![spec(), combine_spec()]
}

/// A matrix of rows inside a buffer: `stride` floats per row, the view starting at column `offset`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub buffer: &'a wgpu::Buffer,
    pub stride: usize,
    pub offset: usize,
}

/// Shapes of one attention call, per sequence of the batch.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub batch: usize,
    pub q_rows: usize,
    pub k_rows: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Applied to every score (the `d^-0.5` of the spec).
    pub scale: f32,
}

impl Shape {
    /// `(splits, keys_per_split)`: how the keys of each query row are divided among workgroups.
    pub fn splits(&self) -> (usize, usize) {
        let per = MIN_KEYS_PER_SPLIT.max(self.k_rows.div_ceil(MAX_SPLITS)).div_ceil(64) * 64;
        (self.k_rows.div_ceil(per).max(1), per)
    }

    /// Floats of scratch [`record`] needs for partial states (0 with a single split).
    pub fn scratch_floats(&self) -> usize {
        match self.splits() {
            (1, _) => 0,
            (splits, _) => self.batch * self.heads * self.q_rows * splits * (self.head_dim + 2),
        }
    }
}

/// The operands of one attention call: the pack and unpack of Luna here,
/// and the softmax baselines (`kernels::softmax`) with the same layout.
#[derive(Clone, Copy)]
pub struct Attention<'a> {
    pub q: View<'a>,
    pub k: View<'a>,
    pub v: View<'a>,
    /// `[batch, k_rows]` u32, nonzero = a masked key.
    pub key_mask: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
    /// Floats per row of `out` (heads write their columns of it).
    pub out_stride: usize,
    pub shape: Shape,
    /// Partial softmax states when the keys are split ([`Shape::scratch_floats`]
    /// floats here; any buffer when that is 0), or the kernel's own scratch in
    /// `kernels::softmax`.
    pub scratch: &'a wgpu::Buffer,
}

/// Where one call's keys lie when a sequence's keys come in several calls
/// (one per row block, `engine::encoder`): its splits are written as partial
/// states `first_split..` among `all_splits` per query row, and
/// [`record_combine`] merges them once every block has run.
#[derive(Clone, Copy, Debug)]
pub struct Part {
    pub first_split: usize,
    pub all_splits: usize,
    pub keys_per_split: usize,
}

impl Part {
    /// The parts of a sequence of `k_rows` keys cut into blocks of `block_rows`
    /// (the last may be shorter), split as one call over all keys would be.
    pub fn cut(shape: &Shape, block_rows: usize) -> Vec<(usize, Part)> {
        let (_, per) = shape.splits();
        let starts: Vec<usize> = (0..shape.k_rows).step_by(block_rows.max(1)).collect();
        let all: usize = starts.iter().map(|&s| (shape.k_rows - s).min(block_rows).div_ceil(per)).sum();
        let mut first = 0;
        starts
            .into_iter()
            .map(|s| {
                let part = Part { first_split: first, all_splits: all, keys_per_split: per };
                first += (shape.k_rows - s).min(block_rows).div_ceil(per);
                (s, part)
            })
            .collect()
    }

    /// Floats of partial states the parts of `shape` need (0 with a single split in all).
    pub fn scratch_floats(shape: &Shape, all_splits: usize) -> usize {
        if all_splits > 1 {
            shape.batch * shape.heads * shape.q_rows * all_splits * (shape.head_dim + 2)
        } else {
            0
        }
    }
}

/// Records `out[b, i, head cols] = softmax(scale · q_i · K^T, masked) · V` for
/// every batch, head and query row.
pub fn record(rec: &mut Recorder, a: &Attention) {
    let (splits, keys_per_split) = a.shape.splits();
    let part = Part { first_split: 0, all_splits: splits, keys_per_split };
    record_part(rec, a, part);
    if splits > 1 {
        record_combine(rec, a.shape, splits, a.scratch, a.out, a.out_stride);
    }
}

/// Records one part of the keys (`a.shape.k_rows` of them, `a.k`/`a.v`/
/// `a.key_mask` holding only this part): with `all_splits == 1` the output is
/// written, else partial states into `a.scratch` for [`record_combine`].
pub fn record_part(rec: &mut Recorder, a: &Attention, part: Part) {
    let s = a.shape;
    let kernel = rec.kernel(spec());
    let splits = s.k_rows.div_ceil(part.keys_per_split).max(1);
    let rows = (s.batch * s.heads * s.q_rows) as u32;
    let total = rows * splits as u32;
    let params = Params {
        layout: Layout::new(a),
        total,
        scale: s.scale,
        splits: splits as u32,
        keys_per_split: part.keys_per_split as u32,
        first_split: part.first_split as u32,
        all_splits: part.all_splits as u32,
        _pad: [0; 2],
    };
    let groups = rec.grid(total);
    let partial = if part.all_splits > 1 { a.scratch } else { rec.dummy };
    rec.dispatch(&kernel, &params, &[a.q.buffer, a.k.buffer, a.v.buffer, a.key_mask, a.out, partial], groups);
}

/// Merges the `all_splits` partial states per query row of `shape` in
/// `scratch` into `out` (`out_stride` floats a row).
pub fn record_combine(rec: &mut Recorder, s: Shape, all_splits: usize, scratch: &wgpu::Buffer, out: &wgpu::Buffer, out_stride: usize) {
    let rows = (s.batch * s.heads * s.q_rows) as u32;
    let combine = rec.kernel(combine_spec());
    let params = CombineParams {
        q_rows: s.q_rows as u32,
        heads: s.heads as u32,
        head_dim: s.head_dim as u32,
        splits: all_splits as u32,
        o_stride: out_stride as u32,
        total: rows,
        _pad: [0; 2],
    };
    let groups = rec.grid(rows);
    rec.dispatch(&combine, &params, &[scratch, out], groups);
}
