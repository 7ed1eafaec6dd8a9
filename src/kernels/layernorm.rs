//! LayerNorm with fused residual add and masked-row zeroing (`shaders/layernorm.wgsl`).

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

pub fn spec(residual: bool, normalize: bool, mask: bool) -> KernelSpec {
    KernelSpec {
        name: "layernorm",
        source: SOURCE,
        entry: "main",
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
                v.push(spec(r, n, m));
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

pub fn record(rec: &mut Recorder, step: Step, rows: usize, dim: usize, eps: f32) {
    let kernel = rec.kernel(spec(step.residual.is_some(), step.norm.is_some(), step.mask.is_some()));
    let params = Params { rows: rows as u32, dim: dim as u32, eps, _pad: 0 };
    let d = rec.dummy;
    let (gamma, beta) = step.norm.unwrap_or((d, d));
    let groups = rec.grid(rows as u32);
    rec.dispatch(
        &kernel,
        &params,
        &[step.x, step.residual.unwrap_or(d), gamma, beta, step.mask.unwrap_or(d), step.out],
        groups,
    );
}
