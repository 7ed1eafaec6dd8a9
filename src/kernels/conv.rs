//! The causal depthwise convolution of the local-context extension
//! (`shaders/conv.wgsl`; docs/luna.md, "Local context"): each channel of a
//! causal attention's input mixed with its last `conv_width - 1` values
//! before the projections read it. A segment of a long sequence, or one
//! decoder step, continues from the inputs the previous one left in a
//! `history` buffer (`[B, conv_width - 1, d]`), which it then updates.

use crate::gpu::pipelines::{Access, KernelSpec};
use crate::gpu::recorder::Recorder;

pub const SOURCE: &str = include_str!("../../shaders/conv.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    total: u32,
    _pad: u32,
}

/// `entry` is `main` (the convolution), `carry` (the history update), or
/// `step` (both, for one row per sequence with a history).
pub fn spec(entry: &'static str, width: usize, history: bool) -> KernelSpec {
    KernelSpec {
        name: "conv",
        source: SOURCE,
        entry,
        storage: &[Access::Read, Access::Read, Access::Read, Access::Write, Access::Write],
        constants: vec![("WIDTH", width as f64), ("HISTORY", history as u8 as f64)],
    }
}

pub fn variants() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for width in [1, 4, crate::config::MAX_CONV_WIDTH] {
        for history in [false, true] {
            v.extend([spec("main", width, history), spec("carry", width, history)]);
        }
        v.push(spec("step", width, true));
    }
    v
}

/// One causal convolution over `batch` sequences of `rows` rows of `dim` channels.
pub struct Conv<'a> {
    pub x: &'a wgpu::Buffer,
    /// `[dim, width]`.
    pub weight: &'a wgpu::Buffer,
    pub width: usize,
    /// `[batch]` u32: a sequence's history ends at its length.
    pub lengths: &'a wgpu::Buffer,
    /// The inputs before row 0 (`[batch, width - 1, dim]`), read and then
    /// updated; `None`: every sequence starts at row 0 (zeros before it).
    pub history: Option<&'a wgpu::Buffer>,
    pub out: &'a wgpu::Buffer,
    pub batch: usize,
    pub rows: usize,
    pub dim: usize,
}

/// Records `out = conv(x)`, then (with a history) the history's update: one
/// dispatch for a decoder step (one row per sequence), two otherwise.
pub fn record(rec: &mut Recorder, c: &Conv) {
    let history = c.history.unwrap_or(rec.dummy);
    let buffers = [c.x, c.weight, c.lengths, history, c.out];
    if c.history.is_some() && c.rows == 1 {
        let kernel = rec.kernel(spec("step", c.width, true));
        let total = c.batch * c.dim;
        let params = Params { rows: 1, dim: c.dim as u32, total: total as u32, _pad: 0 };
        let groups = rec.grid((total as u32).div_ceil(64));
        rec.dispatch(&kernel, &params, &buffers, groups);
        return;
    }
    let total = c.batch * c.rows * c.dim;
    let kernel = rec.kernel(spec("main", c.width, c.history.is_some()));
    let params = Params { rows: c.rows as u32, dim: c.dim as u32, total: total as u32, _pad: 0 };
    let groups = rec.grid((total as u32).div_ceil(64));
    rec.dispatch(&kernel, &params, &buffers, groups);
    if c.history.is_some() && c.width > 1 {
        let kernel = rec.kernel(spec("carry", c.width, true));
        let total = c.batch * c.dim;
        let params = Params { rows: c.rows as u32, dim: c.dim as u32, total: total as u32, _pad: 0 };
        let groups = rec.grid((total as u32).div_ceil(64));
        rec.dispatch(&kernel, &params, &buffers, groups);
    }
}
