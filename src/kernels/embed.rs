//! Embedding gather with positions and masked-row zeroing (`shaders/embed.wgsl`),
//! for both X (tokens) and P (projected embeddings).

use crate::gpu::pipelines::{Access, KernelSpec};
use crate::gpu::recorder::Recorder;

pub const SOURCE: &str = include_str!("../../shaders/embed.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    scale: f32,
    _pad: u32,
}

pub fn spec(positions: Positions, zero_masked: bool) -> KernelSpec {
    let (table, add) = match positions {
        Positions::None => (false, false),
        Positions::Table(..) => (true, false),
        Positions::InOut => (false, true),
    };
    KernelSpec {
        name: "embed",
        source: SOURCE,
        entry: "main",
        storage: &[Access::Read, Access::Read, Access::Read, Access::Read, Access::Read, Access::Write],
        constants: vec![("HAS_POS", table as u8 as f64), ("ZERO_MASKED", zero_masked as u8 as f64), ("ADD_OUT", add as u8 as f64)],
    }
}

pub fn variants() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for p in [Positions::None, Positions::Table(None), Positions::InOut] {
        for z in [false, true] {
            v.push(spec(p, z));
        }
    }
    v
}

/// The positional term of a gather.
#[derive(Clone, Copy)]
pub enum Positions<'a> {
    None,
    /// `pos_table[pos[r]]`: `(pos, pos_table)` (`None` only to name the kernel variant).
    Table(Option<(&'a wgpu::Buffer, &'a wgpu::Buffer)>),
    /// `out` already holds each row's positional term (written by the host).
    InOut,
}

/// Inputs of one gather: `out[r] = scale * table[ids[r]] + positions`.
pub struct Gather<'a> {
    pub ids: &'a wgpu::Buffer,
    pub table: &'a wgpu::Buffer,
    pub positions: Positions<'a>,
    /// Rows to write as zeros, or `None` to zero nothing.
    pub mask: Option<&'a wgpu::Buffer>,
    pub out: &'a wgpu::Buffer,
}

pub fn record(rec: &mut Recorder, g: Gather, rows: usize, dim: usize, scale: f32) {
    let kernel = rec.kernel(spec(g.positions, g.mask.is_some()));
    let params = Params { rows: rows as u32, dim: dim as u32, scale, _pad: 0 };
    let d = rec.dummy;
    let (pos, pos_table) = match g.positions {
        Positions::Table(Some(pair)) => pair,
        _ => (d, d),
    };
    let groups = rec.grid(rows as u32);
    rec.dispatch(&kernel, &params, &[g.ids, pos, g.table, pos_table, g.mask.unwrap_or(d), g.out], groups);
}
