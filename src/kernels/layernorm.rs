//! LayerNorm with fused residual add and masked-row zeroing (`shaders/layernorm.wgsl`),
//! in two layouts: a workgroup per row, or a thread per row; `engine::tune`
//! measures which is faster for a width on this adapter.

use crate::gpu::pipelines::{Access, KernelSpec};
use crate::gpu::recorder::Recorder;

pub const SOURCE: &str = include_str!("../../shaders/layernorm.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

/// How rows are spread over threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `main`: a workgroup of 64 threads per row, tree sums (barriers).
    Group,
    /// `per_thread`: a thread per row, no barriers.
    Thread,
}

impl Layout {
    pub const ALL: [Layout; 2] = [Layout::Group, Layout::Thread];

    pub fn name(&self) -> &'static str {
        match self {
            Layout::Group => "group",
            Layout::Thread => "thread",
        }
    }

    pub fn from_name(s: &str) -> Option<Layout> {
        Layout::ALL.into_iter().find(|l| l.name() == s)
    }
}

/// The tuning key of a LayerNorm of `rows` rows of `dim`: a few rows (a decode step) or many.
pub fn class_key(rows: usize, dim: usize) -> String {
    let rows = if rows <= 4 { "few" } else { "many" };
    format!("layernorm:{rows}:d{dim}")
}

pub fn spec(residual: bool, normalize: bool, mask: bool) -> KernelSpec {
    spec_for(Layout::Group, residual, normalize, mask)
}

pub fn spec_for(layout: Layout, residual: bool, normalize: bool, mask: bool) -> KernelSpec {
    KernelSpec {
        name: "layernorm",
        source: SOURCE,
        entry: match layout {
            Layout::Group => "main",
            Layout::Thread => "per_thread",
        },
        storage: &[Access::Read, Access::Read, Access::Read, Access::Read, Access::Read, Access::Write],
        constants: vec![
            ("HAS_RES", residual as u8 as f64),
            ("DO_NORM", normalize as u8 as f64),
            ("HAS_MASK", mask as u8 as f64),
        ],
    }
}

pub fn variants() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for r in [false, true] {
        for n in [false, true] {
            for m in [false, true] {
                v.extend(Layout::ALL.map(|layout| spec_for(layout, r, n, m)));
            }
        }
    }
    v
}

/// What to do with each row: `x (+ residual)`, then LayerNorm with `norm`
/// (`(gamma, beta)`) if given, then zero the rows where `mask` is set.
pub struct Step<'a> {
    pub x: &'a wgpu::Buffer,
    pub residual: Option<&'a wgpu::Buffer>,
    pub norm: Option<(&'a wgpu::Buffer, &'a wgpu::Buffer)>,
    pub mask: Option<&'a wgpu::Buffer>,
    pub out: &'a wgpu::Buffer,
}

/// Records one [`Step`] over `rows` rows of `dim`, in the layout tuned for them (else `Group`).
pub fn record(rec: &mut Recorder, step: Step, rows: usize, dim: usize, eps: f32) {
    let layout = rec.tuned(&class_key(rows, dim)).and_then(|s| Layout::from_name(&s)).unwrap_or(Layout::Group);
    record_with(rec, step, rows, dim, eps, layout);
}

/// [`record`] in a given layout.
pub fn record_with(rec: &mut Recorder, step: Step, rows: usize, dim: usize, eps: f32, layout: Layout) {
    let kernel = rec.kernel(spec_for(layout, step.residual.is_some(), step.norm.is_some(), step.mask.is_some()));
    let params = Params { rows: rows as u32, dim: dim as u32, eps, _pad: 0 };
    let d = rec.dummy;
    let (gamma, beta) = step.norm.unwrap_or((d, d));
    let groups = match layout {
        Layout::Group => rec.grid(rows as u32),
        // `per_thread` rebuilds its row as x + y * (groups in x) * 64, as `grid` lays them out.
        Layout::Thread => rec.grid((rows as u32).div_ceil(64)),
    };
    rec.dispatch(
        &kernel,
        &params,
        &[step.x, step.residual.unwrap_or(d), gamma, beta, step.mask.unwrap_or(d), step.out],
        groups,
    );
}
