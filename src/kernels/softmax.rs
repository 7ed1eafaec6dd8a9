//! Standard softmax multi-head attention, the baseline Luna is measured
//! against, in two forms:
//!
//! - `shaders/softmax_flash.wgsl`: fused and tiled with an online softmax
//!   (FlashAttention-style). Memory O(n): beyond Q/K/V and the output, two
//!   floats per (batch, head, query row) carry the softmax state between passes.
//! - `shaders/softmax_naive.wgsl`: the plain method that materialises the
//!   `[B, H, n, n]` score matrix (QK^T, row softmax, P·V), as the Transformer
//!   baseline of the Luna paper does. Memory O(n²); refused with
//!   [`LunaError::TooLarge`] when the matrix does not fit one buffer binding.
//!
//! Both read Q, K and V through strides and column offsets (the fused
//! `[q | k | v]` projection), mask keys with a `[batch, k_rows]` u32 mask
//! (nonzero = padding), and apply the score scale (`head_dim^-0.5`) themselves.

use crate::error::{LunaError, Result};
use crate::gpu::buffers;
use crate::gpu::GpuContext;
use crate::gpu::pipelines::{Access, KernelSpec};
use crate::gpu::recorder::Recorder;
/// The same views and shapes as Luna's attention kernels.
pub use crate::kernels::attention::{Attention, Shape, View};
use crate::kernels::attention::Layout;

pub const FLASH_SOURCE: &str = include_str!("../../shaders/softmax_flash.wgsl");
pub const NAIVE_SOURCE: &str = include_str!("../../shaders/softmax_naive.wgsl");

/// Largest head dimension of the flash kernel (4 invocations × 32 columns per query row).
pub const MAX_HEAD_DIM: usize = 128;
/// Invocations per flash workgroup.
const FLASH_WG: usize = 256;
/// Keys per flash tile.
const FLASH_BK: usize = 8;
/// Keys one flash dispatch walks at most: longer sequences take several
/// passes that carry the softmax state, so no invocation loops for long.
pub const FLASH_KEYS_PER_PASS: usize = 2048;
/// Keys one naive P·V dispatch walks at most (its passes accumulate).
pub const NAIVE_KEYS_PER_PASS: usize = 1024;
const NAIVE_TILE: usize = 64;

/// Which softmax attention to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Fused, tiled, online softmax; memory O(n).
    Flash,
    /// Materialised `[B, H, n, n]` scores; memory O(n²).
    Naive,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Flash => "flash",
            Kind::Naive => "naive",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = LunaError;
    fn from_str(s: &str) -> Result<Kind> {
        match s.to_ascii_lowercase().as_str() {
            "flash" => Ok(Kind::Flash),
            "naive" => Ok(Kind::Naive),
            other => Err(LunaError::Input(format!("unknown softmax attention kind {other:?} (expected \"flash\" or \"naive\")"))),
        }
    }
}

impl Shape {
    /// Floats of the state buffer [`record_flash`] needs: 0 when one pass covers the keys.
    pub fn flash_state_floats(&self) -> usize {
        if self.k_rows <= FLASH_KEYS_PER_PASS {
            0
        } else {
            2 * self.batch * self.heads * self.q_rows
        }
    }

    /// Floats of the score matrix [`record_naive`] needs: `B·H·q_rows·k_rows`.
    pub fn naive_scores_floats(&self) -> u64 {
        (self.batch * self.heads) as u64 * self.q_rows as u64 * self.k_rows as u64
    }

    /// `(T, SV)`: invocations per query row and vec4 columns per invocation.
    fn flash_split(&self) -> (usize, usize) {
        let t = match self.head_dim {
            0..=32 => 1,
            33..=64 => 2,
            _ => 4,
        };
        let sv = self.head_dim.div_ceil(4 * t).next_power_of_two().clamp(1, 8);
        (t, sv)
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct FlashParams {
    layout: Layout,
    q_tiles: u32,
    total: u32,
    scale: f32,
    key_begin: u32,
    key_end: u32,
    first: u32,
    last: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct NaiveParams {
    layout: Layout,
    rows: u32,
    scale: f32,
    key_begin: u32,
    key_end: u32,
    accumulate: u32,
}

const STORAGE: &[Access] = &[Access::Read, Access::Read, Access::Read, Access::Read, Access::Write, Access::Write];

/// The flash kernel for `t` invocations per query row and `sv` vec4 columns each.
pub fn flash_spec(t: usize, sv: usize) -> KernelSpec {
    KernelSpec {
        name: "softmax_flash",
        source: FLASH_SOURCE,
        entry: "main",
        storage: STORAGE,
        constants: vec![("T", t as f64), ("SV", sv as f64)],
    }
}

/// One of the naive kernel's entry points: `scores_main`, `softmax_main`, `pv_main`.
pub fn naive_spec(entry: &'static str) -> KernelSpec {
    KernelSpec { name: "softmax_naive", source: NAIVE_SOURCE, entry, storage: STORAGE, constants: vec![] }
}

/// Every specialisation the host can build.
pub fn variants() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    // Exactly the (T, SV) pairs `Shape::flash_split` gives for head_dim 1..=128.
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for hd in 1..=MAX_HEAD_DIM {
        let s = Shape { batch: 1, q_rows: 1, k_rows: 1, heads: 1, head_dim: hd, scale: 1.0 }.flash_split();
        if !pairs.contains(&s) {
            pairs.push(s);
        }
    }
    for (t, sv) in pairs {
        v.push(flash_spec(t, sv));
    }
    for entry in ["scores_main", "softmax_main", "pv_main"] {
        v.push(naive_spec(entry));
    }
    v
}

fn check_common(s: &Shape) -> Result<()> {
    if s.batch == 0 || s.q_rows == 0 || s.k_rows == 0 || s.heads == 0 || s.head_dim == 0 {
        return Err(LunaError::Input(format!("empty attention shape {s:?}")));
    }
    Ok(())
}

/// Refuses a shape the flash kernel cannot run (head dimension over [`MAX_HEAD_DIM`]).
pub fn check_flash(s: &Shape) -> Result<()> {
    check_common(s)?;
    if s.head_dim > MAX_HEAD_DIM {
        return Err(LunaError::Unsupported(format!(
            "head dimension {} is over the {MAX_HEAD_DIM} the flash softmax attention kernel handles; use more heads",
            s.head_dim
        )));
    }
    Ok(())
}

/// Refuses a shape whose score matrix does not fit one buffer binding, or whose grid is too large.
pub fn check_naive(ctx: &GpuContext, s: &Shape) -> Result<()> {
    check_common(s)?;
    buffers::check_binding(ctx, "the [batch, heads, n, n] attention score matrix", s.naive_scores_floats() * 4)?;
    let max_groups = ctx.limits.max_compute_workgroups_per_dimension as usize;
    if s.batch * s.heads > max_groups || s.q_rows.div_ceil(NAIVE_TILE) > max_groups || s.k_rows.div_ceil(NAIVE_TILE) > max_groups {
        return Err(LunaError::TooLarge {
            what: format!("naive attention over {} sequences × {} heads of {} tokens (dispatch grid)", s.batch, s.heads, s.q_rows),
            needed: (s.batch * s.heads) as u64,
            limit: max_groups as u64,
            advice: crate::error::SHORTER_INPUT.into(),
        });
    }
    Ok(())
}

/// `out[b, i, head cols] = softmax(scale · q_i · K^T, masked) · V` for every
/// batch, head and query row, fused (FlashAttention-style).
/// `a.key_mask` is `[batch, k_rows]` u32, nonzero = masked. `a.scratch` (the state) must hold
/// [`Shape::flash_state_floats`] floats (any buffer when that is 0).
pub fn record_flash(rec: &mut Recorder, a: &Attention) -> Result<()> {
    record_flash_keys(rec, a, true, true)
}

/// [`record_flash`] over one block of the keys (`a.k`, `a.v`, `a.key_mask`
/// holding only that block, `a.shape.k_rows` its rows), for keys that come
/// in several buffers: the first block starts from an empty state, the last
/// normalises, and between them the softmax state in `a.scratch`
/// (`2 · batch · heads · q_rows` floats) and the unnormalised output in
/// `a.out` carry over.
pub fn record_flash_keys(rec: &mut Recorder, a: &Attention, first_block: bool, last_block: bool) -> Result<()> {
    let (s, state) = (a.shape, a.scratch);
    check_flash(&s)?;
    let (t, sv) = s.flash_split();
    let kernel = rec.kernel(flash_spec(t, sv));
    let bq = FLASH_WG / t;
    let q_tiles = s.q_rows.div_ceil(bq);
    let total = (s.batch * s.heads * q_tiles) as u32;
    let groups = rec.grid(total);
    let passes = s.k_rows.div_ceil(FLASH_KEYS_PER_PASS);
    let state = if passes > 1 || !(first_block && last_block) { state } else { rec.dummy };
    debug_assert_eq!(FLASH_KEYS_PER_PASS % FLASH_BK, 0);
    for pass in 0..passes {
        let key_begin = pass * FLASH_KEYS_PER_PASS;
        let key_end = (key_begin + FLASH_KEYS_PER_PASS).min(s.k_rows);
        let params = FlashParams {
            layout: Layout::new(a),
            q_tiles: q_tiles as u32,
            total,
            scale: s.scale,
            key_begin: key_begin as u32,
            key_end: key_end as u32,
            first: (first_block && pass == 0) as u32,
            last: (last_block && pass + 1 == passes) as u32,
            _pad: [0; 2],
        };
        rec.dispatch(&kernel, &params, &[a.q.buffer, a.k.buffer, a.v.buffer, a.key_mask, a.out, state], groups);
    }
    Ok(())
}

/// The same attention as [`record_flash`], through a materialised score
/// matrix in `a.scratch` (at least [`Shape::naive_scores_floats`] floats).
/// Refused with [`LunaError::TooLarge`] (before anything is recorded) when
/// that matrix exceeds one buffer binding.
pub fn record_naive(rec: &mut Recorder, a: &Attention) -> Result<()> {
    let (s, scores) = (a.shape, a.scratch);
    check_naive(rec.ctx, &s)?;
    let base = NaiveParams {
        layout: Layout::new(a),
        rows: (s.batch * s.heads * s.q_rows) as u32,
        scale: s.scale,
        key_begin: 0,
        key_end: s.k_rows as u32,
        accumulate: 0,
    };
    let bh = (s.batch * s.heads) as u32;
    let q_tiles = s.q_rows.div_ceil(NAIVE_TILE) as u32;
    let buffers = [a.q.buffer, a.k.buffer, a.v.buffer, a.key_mask, scores, a.out];
    let kernel = rec.kernel(naive_spec("scores_main"));
    rec.dispatch(&kernel, &base, &buffers, [s.k_rows.div_ceil(NAIVE_TILE) as u32, q_tiles, bh]);
    let kernel = rec.kernel(naive_spec("softmax_main"));
    let groups = rec.grid(base.rows);
    rec.dispatch(&kernel, &base, &buffers, groups);
    let kernel = rec.kernel(naive_spec("pv_main"));
    let passes = s.k_rows.div_ceil(NAIVE_KEYS_PER_PASS);
    for pass in 0..passes {
        let key_begin = pass * NAIVE_KEYS_PER_PASS;
        let params = NaiveParams {
            key_begin: key_begin as u32,
            key_end: (key_begin + NAIVE_KEYS_PER_PASS).min(s.k_rows) as u32,
            accumulate: (pass > 0) as u32,
            ..base
        };
        rec.dispatch(&kernel, &params, &buffers, [s.head_dim.div_ceil(NAIVE_TILE) as u32, q_tiles, bh]);
    }
    Ok(())
}

/// Records `kind` (see [`record_flash`] and [`record_naive`]); `a.scratch` is
/// the state buffer (flash) or the score matrix (naive), sized by [`scratch_floats`].
pub fn record(rec: &mut Recorder, kind: Kind, a: &Attention) -> Result<()> {
    match kind {
        Kind::Flash => record_flash(rec, a),
        Kind::Naive => record_naive(rec, a),
    }
}

/// Floats of scratch [`record`] needs for `kind`.
pub fn scratch_floats(kind: Kind, s: &Shape) -> u64 {
    match kind {
        Kind::Flash => s.flash_state_floats() as u64,
        Kind::Naive => s.naive_scores_floats(),
    }
}

/// Checks a shape for `kind` (see [`check_flash`], [`check_naive`]) without recording.
pub fn check(ctx: &GpuContext, kind: Kind, s: &Shape) -> Result<()> {
    match kind {
        Kind::Flash => check_flash(s),
        Kind::Naive => check_naive(ctx, s),
    }
}
