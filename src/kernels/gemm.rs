//! Tiled GEMM with fused bias, activation and residual (`shaders/gemm.wgsl`).

use crate::config::Activation;
use crate::gpu::pipelines::{Access, KernelSpec};
use crate::gpu::recorder::Recorder;

pub const SOURCE: &str = include_str!("../../shaders/gemm.wgsl");
const TILE: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    _pad: u32,
}

fn act_code(act: Option<Activation>) -> f64 {
    match act {
        None => 0.0,
        Some(Activation::Relu) => 1.0,
        Some(Activation::Gelu) => 2.0,
    }
}

/// Up to this many rows use the untiled `gemv` entry point.
pub const GEMV_ROWS: usize = 4;

pub fn spec(act: Option<Activation>, residual: bool) -> KernelSpec {
    spec_entry("main", act, residual)
}

fn spec_entry(entry: &'static str, act: Option<Activation>, residual: bool) -> KernelSpec {
    KernelSpec {
        name: "gemm",
        source: SOURCE,
        entry,
        storage: &[Access::Read, Access::Read, Access::Read, Access::Read, Access::Write],
        constants: vec![("ACT", act_code(act)), ("HAS_RES", residual as u8 as f64)],
    }
}

pub fn variants() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for act in [None, Some(Activation::Relu), Some(Activation::Gelu)] {
        for res in [false, true] {
            v.push(spec_entry("main", act, res));
            v.push(spec_entry("gemv", act, res));
        }
    }
    v
}

/// `out[m, n] = act(a[m, k] · w[n, k]^T + bias[n]) (+ residual[m, n])`.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    rec: &mut Recorder,
    a: &wgpu::Buffer,
    w: &wgpu::Buffer,
    bias: &wgpu::Buffer,
    residual: Option<&wgpu::Buffer>,
    out: &wgpu::Buffer,
    [m, n, k]: [usize; 3],
    act: Option<Activation>,
) {
    let entry = if m <= GEMV_ROWS { "gemv" } else { "main" };
    let kernel = rec.kernel(spec_entry(entry, act, residual.is_some()));
    let params = Params { m: m as u32, n: n as u32, k: k as u32, _pad: 0 };
    let groups = if m <= GEMV_ROWS {
        rec.grid(((m * n) as u32).div_ceil(64))
    } else {
        [(n as u32).div_ceil(TILE), (m as u32).div_ceil(TILE), 1]
    };
    let res = residual.unwrap_or(rec.dummy);
    rec.dispatch(&kernel, &params, &[a, w, bias, res, out], groups);
}
