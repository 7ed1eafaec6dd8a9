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

/// One GEMM: `out[m, n] = act(a[m, k] · w[n, k]^T + bias[n]) (+ residual[m, n])`.
#[derive(Clone, Copy)]
pub struct Gemm<'a> {
    pub a: &'a wgpu::Buffer,
    pub w: &'a wgpu::Buffer,
    pub bias: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
    /// `[m, n, k]`.
    pub mnk: [usize; 3],
    pub residual: Option<&'a wgpu::Buffer>,
    pub act: Option<Activation>,
}

impl<'a> Gemm<'a> {
    /// `out[m, n] = a[m, k] · w[n, k]^T + bias[n]`, no activation, no residual.
    pub fn new(a: &'a wgpu::Buffer, w: &'a wgpu::Buffer, bias: &'a wgpu::Buffer, out: &'a wgpu::Buffer, mnk: [usize; 3]) -> Gemm<'a> {
        Gemm { a, w, bias, out, mnk, residual: None, act: None }
    }

    /// Adds `residual[m, n]` to the output (after the activation).
    pub fn residual(self, residual: Option<&'a wgpu::Buffer>) -> Gemm<'a> {
        Gemm { residual, ..self }
    }

    /// Applies `act` to `a · w^T + bias`.
    pub fn act(self, act: Option<Activation>) -> Gemm<'a> {
        Gemm { act, ..self }
    }
}

/// Records one [`Gemm`].
pub fn record(rec: &mut Recorder, g: &Gemm) {
    let ([m, n, k], act, residual) = (g.mnk, g.act, g.residual);
    let entry = if m <= GEMV_ROWS { "gemv" } else { "main" };
    let kernel = rec.kernel(spec_entry(entry, act, residual.is_some()));
    let params = Params { m: m as u32, n: n as u32, k: k as u32, _pad: 0 };
    let groups = if m <= GEMV_ROWS {
        rec.grid(((m * n) as u32).div_ceil(64))
    } else {
        [(n as u32).div_ceil(TILE), (m as u32).div_ceil(TILE), 1]
    };
    let res = residual.unwrap_or(rec.dummy);
    rec.dispatch(&kernel, &params, &[g.a, g.w, g.bias, res, g.out], groups);
}
