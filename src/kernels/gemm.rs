//! The GEMM family with fused bias, activation and residual:
//! `shaders/gemm.wgsl` (any K: 64×64 tiles through workgroup memory, and a
//! one-thread-per-output gemv) and `shaders/gemm_vec4.wgsl` (K % 4 == 0: 4×8
//! register blocks without workgroup memory, and a gemv that splits each
//! column over several threads), both ending in `shaders/gemm_epilogue.wgsl`.
//!
//! Which member runs is a [`Variant`]: forced per call ([`Gemm::variant`]),
//! else the one measured fastest for the shape class on this adapter
//! (`engine::tune`, kept in the pipeline cache's [`Tuning`]), else [`default_variant`].

use crate::config::Activation;
use crate::gpu::pipelines::{Access, KernelSpec};
use crate::gpu::recorder::Recorder;

pub const SOURCE: &str = concat!(include_str!("../../shaders/gemm_epilogue.wgsl"), include_str!("../../shaders/gemm.wgsl"));
pub const VEC4_SOURCE: &str =
    concat!(include_str!("../../shaders/gemm_f32.wgsl"), include_str!("../../shaders/gemm_epilogue.wgsl"), include_str!("../../shaders/gemm_vec4.wgsl"));
/// `gemm_vec4.wgsl` reading float16 weights (needs the device's `shader-f16`).
pub const VEC4_F16_SOURCE: &str =
    concat!(include_str!("../../shaders/gemm_f16.wgsl"), include_str!("../../shaders/gemm_epilogue.wgsl"), include_str!("../../shaders/gemm_vec4.wgsl"));
/// Output tile of the `Tiled` variant.
const TILE: u32 = 64;
/// Up to this many rows form the "few rows" shape class (gemv variants).
pub const GEMV_ROWS: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    /// K for `gemm.wgsl`, K / 4 for `gemm_vec4.wgsl`.
    k: u32,
    /// First row of the dispatch (`Vec4` splits tall matrices over dispatches).
    row_base: u32,
}

/// One member of the GEMM family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// `gemm.wgsl` `main`: 64×64 output tiles, K in steps of 16 through workgroup memory. Any shape.
    Tiled,
    /// `gemm.wgsl` `gemv`: one thread per output. Any shape; meant for a few rows.
    Gemv,
    /// `gemm_vec4.wgsl` `main`: `rows × cols` outputs a thread (each at most 8) in
    /// workgroups of `wg_x × wg_y` threads. K % 4 == 0.
    Vec4 { rows: u32, cols: u32, wg_x: u32, wg_y: u32 },
    /// `gemm_vec4.wgsl` `gemv`: `split` threads a column, `wg` threads a workgroup.
    /// K % 4 == 0, m ≤ 4 (the pipeline is specialised to m).
    Vec4Gemv { wg: u32, split: u32 },
}

impl Variant {
    /// A short stable name (the tuning cache stores it).
    pub fn name(&self) -> String {
        match self {
            Variant::Tiled => "tiled".into(),
            Variant::Gemv => "gemv".into(),
            Variant::Vec4 { rows, cols, wg_x, wg_y } => format!("vec4-{rows}x{cols}-{wg_x}x{wg_y}"),
            Variant::Vec4Gemv { wg, split } => format!("vec4gemv-{wg}/{split}"),
        }
    }

    pub fn from_name(s: &str) -> Option<Variant> {
        let pair = |t: &str, sep| -> Option<(u32, u32)> {
            let (x, y) = t.split_once(sep)?;
            Some((x.parse().ok()?, y.parse().ok()?))
        };
        match s {
            "tiled" => Some(Variant::Tiled),
            "gemv" => Some(Variant::Gemv),
            _ => {
                if let Some((tile, wg)) = s.strip_prefix("vec4-").and_then(|t| t.split_once('-')) {
                    let ((rows, cols), (wg_x, wg_y)) = (pair(tile, 'x')?, pair(wg, 'x')?);
                    let ok = (1..=8).contains(&rows) && (1..=8).contains(&cols) && wg_x * wg_y > 0;
                    ok.then_some(Variant::Vec4 { rows, cols, wg_x, wg_y })
                } else {
                    let (wg, split) = s.strip_prefix("vec4gemv-").and_then(|t| pair(t, '/'))?;
                    let ok = split.is_power_of_two() && wg % split == 0 && wg <= 256;
                    ok.then_some(Variant::Vec4Gemv { wg, split })
                }
            }
        }
    }

    /// Whether this variant computes `[m, n, k]` with float16 weights or not
    /// (vec4 loads need K % 4 == 0; the vec4 gemv holds at most 4 rows; only
    /// the vec4 variants read float16).
    pub fn fits(&self, [m, _, k]: [usize; 3], half: bool) -> bool {
        match self {
            Variant::Tiled | Variant::Gemv => !half,
            Variant::Vec4 { .. } => k.is_multiple_of(4),
            Variant::Vec4Gemv { .. } => k.is_multiple_of(4) && m <= GEMV_ROWS,
        }
    }
}

/// What a tuned choice is kept for: the shape class ("few rows" or "many
/// rows", N, K), the epilogue and the weights' precision. The epilogue counts:
/// timed without its GELU, a variant once won that then ran 2x slower with it
/// on lavapipe.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Class {
    pub mnk: [usize; 3],
    pub act: Option<Activation>,
    pub residual: bool,
    pub half: bool,
}

impl Class {
    /// No activation, no residual, float32 weights.
    pub fn plain(mnk: [usize; 3]) -> Class {
        Class { mnk, act: None, residual: false, half: false }
    }

    pub fn key(&self) -> String {
        let [m, n, k] = self.mnk;
        let rows = if m <= GEMV_ROWS { "few" } else { "many" };
        let act = match self.act {
            None => "",
            Some(Activation::Relu) => ":relu",
            Some(Activation::Gelu) => ":gelu",
        };
        format!("gemm:{rows}:n{n}:k{k}{act}{}{}", if self.residual { ":res" } else { "" }, if self.half { ":f16" } else { "" })
    }
}

/// The variants worth timing for a shape, fastest-expected first.
pub fn candidates(mnk: [usize; 3], half: bool) -> Vec<Variant> {
    let all: &[Variant] = if mnk[0] <= GEMV_ROWS {
        &[
            Variant::Vec4Gemv { wg: 64, split: 1 },
            Variant::Vec4Gemv { wg: 64, split: 8 },
            Variant::Vec4Gemv { wg: 256, split: 32 },
            Variant::Gemv,
        ]
    } else {
        &[
            Variant::Vec4 { rows: 4, cols: 8, wg_x: 8, wg_y: 8 },
            Variant::Vec4 { rows: 8, cols: 8, wg_x: 8, wg_y: 8 },
            Variant::Vec4 { rows: 8, cols: 4, wg_x: 8, wg_y: 8 },
            Variant::Vec4 { rows: 4, cols: 8, wg_x: 16, wg_y: 4 },
            Variant::Vec4 { rows: 4, cols: 4, wg_x: 16, wg_y: 16 },
            Variant::Tiled,
        ]
    };
    all.iter().copied().filter(|v| v.fits(mnk, half)).collect()
}

/// What runs when nothing was tuned: the first candidate. Float16 weights
/// only exist where K % 4 == 0 ([`half_weights`]), so there always is one.
pub fn default_variant(mnk: [usize; 3], half: bool) -> Variant {
    candidates(mnk, half).first().copied().unwrap_or(Variant::Tiled)
}

/// Float32 or float16 weights on the GPU (see `shaders/gemm_f16.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    F16,
}

/// Whether a weight with `k` columns is stored as float16 at `precision`:
/// the vec4 variants read float16, and they need K % 4 == 0.
pub fn half_weights(precision: Precision, k: usize) -> bool {
    precision == Precision::F16 && k.is_multiple_of(4)
}

fn act_code(act: Option<Activation>) -> f64 {
    match act {
        None => 0.0,
        Some(Activation::Relu) => 1.0,
        Some(Activation::Gelu) => 2.0,
    }
}

/// The pipeline of `variant` for `m` rows (only `Vec4Gemv` is specialised to
/// m) reading float32 or (`half`) float16 weights.
pub fn spec(variant: Variant, m: usize, act: Option<Activation>, residual: bool, half: bool) -> KernelSpec {
    let vec4 = if half { VEC4_F16_SOURCE } else { VEC4_SOURCE };
    let rows = m.clamp(1, GEMV_ROWS);
    let mut constants = vec![("ACT", act_code(act)), ("HAS_RES", residual as u8 as f64)];
    let (name, source, entry) = match variant {
        Variant::Tiled => ("gemm", SOURCE, "main"),
        Variant::Gemv => ("gemm", SOURCE, "gemv"),
        Variant::Vec4 { rows, cols, wg_x, wg_y } => {
            constants.extend([("WG_X", wg_x as f64), ("WG_Y", wg_y as f64), ("TR", rows as f64), ("TC", cols as f64)]);
            ("gemm_vec4", vec4, "main")
        }
        Variant::Vec4Gemv { wg, split } => {
            constants.extend([("WG_X", wg as f64), ("SPLIT", split as f64), ("ROWS", rows as f64)]);
            ("gemm_vec4", vec4, if split == 1 { "gemv" } else { "gemv_split" })
        }
    };
    KernelSpec {
        name,
        source,
        entry,
        storage: &[Access::Read, Access::Read, Access::Read, Access::Read, Access::Write],
        constants,
    }
}

/// Every member of the family (the candidates of both shape classes).
pub fn family() -> Vec<Variant> {
    let mut all = candidates([GEMV_ROWS + 1, 1, 4], false);
    all.extend(candidates([1, 1, 4], false));
    all
}

/// Every pipeline the host can build (validated by naga in tests/shaders.rs).
pub fn variants() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for variant in family() {
        for act in [None, Some(Activation::Relu), Some(Activation::Gelu)] {
            for res in [false, true] {
                for half in [false, true].into_iter().filter(|&h| variant.fits([1, 1, 4], h) || variant.fits([GEMV_ROWS + 1, 1, 4], h)) {
                    let ms: &[usize] = if matches!(variant, Variant::Vec4Gemv { .. }) { &[1, 2, 3, 4] } else { &[1] };
                    v.extend(ms.iter().map(|&m| spec(variant, m, act, res, half)));
                }
            }
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
    /// Forces a family member (it must [`Variant::fits`] the shape); `None` lets the tuning choose.
    pub variant: Option<Variant>,
    /// `w` holds float16 (see [`half_weights`]).
    pub half: bool,
}

impl<'a> Gemm<'a> {
    /// `out[m, n] = a[m, k] · w[n, k]^T + bias[n]`, no activation, no residual.
    pub fn new(a: &'a wgpu::Buffer, w: &'a wgpu::Buffer, bias: &'a wgpu::Buffer, out: &'a wgpu::Buffer, mnk: [usize; 3]) -> Gemm<'a> {
        Gemm { a, w, bias, out, mnk, residual: None, act: None, variant: None, half: false }
    }

    /// Adds `residual[m, n]` to the output (after the activation).
    pub fn residual(self, residual: Option<&'a wgpu::Buffer>) -> Gemm<'a> {
        Gemm { residual, ..self }
    }

    /// Applies `act` to `a · w^T + bias`.
    pub fn act(self, act: Option<Activation>) -> Gemm<'a> {
        Gemm { act, ..self }
    }

    /// Marks `w` as float16 (only the vec4 variants read it).
    pub fn half_weights(self, half: bool) -> Gemm<'a> {
        Gemm { half, ..self }
    }

    pub fn class(&self) -> Class {
        Class { mnk: self.mnk, act: self.act, residual: self.residual.is_some(), half: self.half }
    }

    /// Runs this family member whatever the tuning says.
    pub fn variant(self, variant: Variant) -> Gemm<'a> {
        Gemm { variant: Some(variant), ..self }
    }
}

/// The member [`record`] runs for `g`: forced, tuned, or the default.
pub fn chosen(rec: &Recorder, g: &Gemm) -> Variant {
    g.variant
        .or_else(|| rec.tuned(&g.class().key()).and_then(|s| Variant::from_name(&s)))
        .filter(|v| v.fits(g.mnk, g.half))
        .unwrap_or_else(|| default_variant(g.mnk, g.half))
}

/// Records one [`Gemm`].
pub fn record(rec: &mut Recorder, g: &Gemm) {
    let variant = chosen(rec, g);
    let [m, n, k] = g.mnk;
    let kernel = rec.kernel(spec(variant, m, g.act, g.residual.is_some(), g.half));
    let buffers = [g.a, g.w, g.bias, g.residual.unwrap_or(rec.dummy), g.out];
    let params = |k, row_base| Params { m: m as u32, n: n as u32, k, row_base };
    match variant {
        Variant::Tiled => {
            let groups = [(n as u32).div_ceil(TILE), (m as u32).div_ceil(TILE), 1];
            rec.dispatch(&kernel, &params(k as u32, 0), &buffers, groups);
        }
        Variant::Gemv => {
            let groups = rec.grid(((m * n) as u32).div_ceil(64));
            rec.dispatch(&kernel, &params(k as u32, 0), &buffers, groups);
        }
        Variant::Vec4 { rows, cols, wg_x, wg_y } => {
            let groups_x = (n as u32).div_ceil(cols * wg_x);
            // Rows one dispatch covers, within the device's workgroup-count limit.
            let block = rec.max_groups() as usize * (rows * wg_y) as usize;
            for base in (0..m).step_by(block) {
                let here = (m - base).min(block) as u32;
                rec.dispatch(&kernel, &params(k as u32 / 4, base as u32), &buffers, [groups_x, here.div_ceil(rows * wg_y), 1]);
            }
        }
        Variant::Vec4Gemv { wg, split } => {
            // `gemv` rebuilds its column as x + y * (groups in x) * wg, as `grid` lays them out.
            let groups = rec.grid((n as u32).div_ceil(wg / split));
            rec.dispatch(&kernel, &params(k as u32 / 4, 0), &buffers, groups);
        }
    }
}
