//! Causal Luna attention (`shaders/causal_chunk.wgsl`, `shaders/causal.wgsl`,
//! `shaders/causal_scan.wgsl`, `shaders/causal_step.wgsl`) and next-token
//! surprisal (`shaders/logprob.wgsl`).
//!
//! The parallel form splits each sequence into chunks: a first pass sums each
//! chunk's state `(Sk, Sv)`, a scan turns the sums into prefixes, and a second
//! pass goes through every chunk from its prefix, emitting outputs. Both passes
//! are `causal_chunk.wgsl`, which takes a chunk in tiles of up to 64 tokens,
//! each thread owning whole token rows; where its registers or workgroup
//! memory cannot hold a head (`dh` over 128 or not a multiple of 4, `l` over
//! 128), `causal.wgsl` walks the tokens one by one instead. Scratch is `B · chunks · H · 2 · l · dh` floats: O(n·l·d / chunk),
//! never `[n, dh, l]`. The streaming form is `causal_step.wgsl`: one new token
//! per sequence folded into a persistent state, each thread owning whole rows
//! of it, three barriers in all.
//!
//! Every kernel takes the local-context extension's per-head decay (docs/luna.md,
//! "Local context") as the `DECAY` constant and a `decay` binding holding
//! `gamma_h` then `ln gamma_h` ([`decay_table`]); without it the code is the
//! authors' form, unchanged.

use crate::gpu::pipelines::{Access, KernelSpec};
use crate::gpu::recorder::Recorder;

pub const SOURCE: &str =
    concat!(include_str!("../../shaders/softplus.wgsl"), include_str!("../../shaders/decay.wgsl"), include_str!("../../shaders/causal.wgsl"));
pub const CHUNK_SOURCE: &str =
    concat!(include_str!("../../shaders/softplus.wgsl"), include_str!("../../shaders/decay.wgsl"), include_str!("../../shaders/causal_chunk.wgsl"));
pub const STEP_SOURCE: &str =
    concat!(include_str!("../../shaders/softplus.wgsl"), include_str!("../../shaders/decay.wgsl"), include_str!("../../shaders/causal_step.wgsl"));
pub const SCAN_SOURCE: &str = concat!(include_str!("../../shaders/decay.wgsl"), include_str!("../../shaders/causal_scan.wgsl"));
pub const LOGPROB_SOURCE: &str = include_str!("../../shaders/logprob.wgsl");
/// Largest projection length the kernel's workgroup arrays hold.
pub const MAX_PROJECTION: usize = 1024;
/// vec4s of `causal_chunk.wgsl`'s workgroup pool (its `POOL4`).
const CHUNK_POOL4: usize = 1024;
/// Largest tile of `causal_chunk.wgsl`, in tokens.
const MAX_TILE: usize = 64;
/// Largest `dh` and `l` `causal_chunk.wgsl` keeps in registers (4 `MAX_DQ`, 4 `MAX_LQ`).
const MAX_CHUNK_WIDTH: usize = 128;
/// Marks a row with no next token in [`logprob`].
pub const NO_TARGET: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    chunk: u32,
    chunks: u32,
    heads: u32,
    head_dim: u32,
    proj_len: u32,
    x_stride: u32,
    q_off: u32,
    k_off: u32,
    v_off: u32,
    pc_off: u32,
    qp_stride: u32,
    o_stride: u32,
    t_base: u32,
    total: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ScanParams {
    chunks: u32,
    heads: u32,
    block: u32,
    total: u32,
    rows: u32,
    chunk: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LogprobParams {
    rows: u32,
    vocab: u32,
    _pad: [u32; 2],
}

/// The storage bindings of the three attention kernels: x, Q_P, lengths, state, out, decay.
const ATTENTION_BINDINGS: &[Access] = &[Access::Read, Access::Read, Access::Read, Access::Write, Access::Write, Access::Read];

pub fn spec(emit: bool, decay: bool) -> KernelSpec {
    KernelSpec {
        name: "causal",
        source: SOURCE,
        entry: "main",
        storage: ATTENTION_BINDINGS,
        constants: vec![("EMIT", emit as u8 as f64), ("DECAY", decay as u8 as f64)],
    }
}

/// What the kernels' `decay` binding holds for per-head rates `gamma`:
/// `gamma_h` at `[h]`, `ln gamma_h` at `[heads + h]`. The logarithm is taken
/// (in float64) of the float32 rate the kernels multiply by, so the forms that
/// multiply (token walk, steps) and those that exponentiate (tiles, scan,
/// `Z_t`) decay alike; `Config` rounds the rates to float32 already.
pub fn decay_table(gamma: &[f64]) -> Vec<f32> {
    let g32: Vec<f32> = gamma.iter().map(|&g| g as f32).collect();
    g32.iter().copied().chain(g32.iter().map(|&g| (g as f64).ln() as f32)).collect()
}

/// `causal_chunk.wgsl` summing (`emit = false`) or emitting, in tiles of
/// `tile` tokens, for heads of `head_dim` columns and `proj_len` pack rows.
pub fn chunk_spec(emit: bool, decay: bool, tile: usize, head_dim: usize, proj_len: usize) -> KernelSpec {
    KernelSpec {
        name: "causal_chunk",
        source: CHUNK_SOURCE,
        entry: "main",
        storage: ATTENTION_BINDINGS,
        constants: vec![
            ("EMIT", emit as u8 as f64),
            ("DECAY", decay as u8 as f64),
            ("TILE", tile as f64),
            ("DH", head_dim as f64),
            ("L", proj_len as f64),
        ],
    }
}

/// vec4s of workgroup memory `causal_chunk.wgsl` uses for a tile of `t` tokens:
/// `A` and a row of scratch per token, `l` padded to a multiple of 4.
fn pool_vec4s(t: usize, l: usize) -> usize {
    2 * t * l.div_ceil(4)
}

/// The tile `causal_chunk.wgsl` takes for `shape`: the largest power of two up
/// to 64 and up to the chunk whose arrays fit its pool; `None` (the token by
/// token `causal.wgsl` instead) when a head does not fit its registers (`dh`
/// over 128 or not a multiple of 4, `l` over 128), or when the tile would be
/// under 8 tokens for a chunk of 8 or more.
pub fn tile(shape: &Shape) -> Option<usize> {
    let (dh, l) = (shape.head_dim, shape.proj_len);
    if dh % 4 != 0 || dh > MAX_CHUNK_WIDTH || l > MAX_CHUNK_WIDTH || dh == 0 || l == 0 {
        return None;
    }
    let mut t = shape.chunk.clamp(1, MAX_TILE).next_power_of_two();
    if t > shape.chunk {
        t /= 2;
    }
    while t > 1 && pool_vec4s(t, l) > CHUNK_POOL4 {
        t /= 2;
    }
    let fits = pool_vec4s(t, l) <= CHUNK_POOL4;
    (fits && t >= shape.chunk.min(8)).then_some(t)
}

/// Whether `causal_chunk.wgsl` can read these inputs: it reads rows in vec4s,
/// so the row stride and the column offsets must be multiples of 4.
fn vec4_inputs(inp: &Inputs) -> bool {
    [inp.stride, inp.q, inp.k, inp.v, inp.pc].iter().all(|v| v % 4 == 0)
}

pub fn scan_spec(carry: bool, decay: bool) -> KernelSpec {
    KernelSpec {
        name: "causal_scan",
        source: SCAN_SOURCE,
        entry: "main",
        storage: &[Access::Write, Access::Write, Access::Read, Access::Read],
        constants: vec![("CARRY", carry as u8 as f64), ("DECAY", decay as u8 as f64)],
    }
}

pub fn logprob_spec() -> KernelSpec {
    KernelSpec {
        name: "logprob",
        source: LOGPROB_SOURCE,
        entry: "main",
        storage: &[Access::Read, Access::Read, Access::Write],
        constants: vec![],
    }
}

pub fn step_spec(decay: bool) -> KernelSpec {
    KernelSpec {
        name: "causal_step",
        source: STEP_SOURCE,
        entry: "main",
        storage: ATTENTION_BINDINGS,
        constants: vec![("DECAY", decay as u8 as f64)],
    }
}

/// Parameters of `causal_step.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct StepParams {
    heads: u32,
    head_dim: u32,
    proj_len: u32,
    x_stride: u32,
    q_off: u32,
    k_off: u32,
    v_off: u32,
    pc_off: u32,
    qp_stride: u32,
    o_stride: u32,
    t_base: u32,
    total: u32,
}

pub fn variants() -> Vec<KernelSpec> {
    let mut v = vec![logprob_spec()];
    for decay in [false, true] {
        v.extend([spec(false, decay), spec(true, decay), step_spec(decay), scan_spec(false, decay), scan_spec(true, decay)]);
        // Every tile at the demo model's head (dh 48, l 32), and the widest head.
        for t in (0..=MAX_TILE.trailing_zeros()).map(|k| 1usize << k) {
            v.extend([chunk_spec(false, decay, t, 48, 32), chunk_spec(true, decay, t, 48, 32)]);
        }
        v.extend([chunk_spec(false, decay, 16, 128, 128), chunk_spec(true, decay, 16, 128, 128), chunk_spec(true, decay, 64, 4, 7)]);
    }
    v
}

/// Where the per-token inputs lie: one row per token of `stride` floats
/// holding the (unscaled) q, k, v and pc projections at these column offsets.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub x: &'a wgpu::Buffer,
    pub stride: usize,
    pub q: usize,
    pub k: usize,
    pub v: usize,
    pub pc: usize,
}

/// Sizes of one causal attention call.
#[derive(Clone, Copy)]
pub struct Shape {
    pub batch: usize,
    /// Token rows per sequence.
    pub rows: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub proj_len: usize,
    /// Tokens per chunk (the parallel form); `rows` for a single step.
    pub chunk: usize,
    /// Tokens consumed before row 0 (the streaming position; 0 for a whole sequence).
    pub t_base: usize,
}

impl Shape {
    pub fn chunks(&self) -> usize {
        self.rows.div_ceil(self.chunk).max(1)
    }
    /// Floats of one (chunk, head) state block: `Sk` and `Sv`, each `[l, dh]`.
    pub fn block(&self) -> usize {
        2 * self.proj_len * self.head_dim
    }
    /// Floats of state scratch the parallel form needs.
    pub fn state_floats(&self) -> usize {
        self.batch * self.chunks() * self.heads * self.block()
    }
}

/// The operands of one causal attention call.
#[derive(Clone, Copy)]
pub struct Causal<'a> {
    pub inputs: Inputs<'a>,
    /// `Q_P · dh^-0.5`, `[l, d]`.
    pub qp: &'a wgpu::Buffer,
    /// `[B]` u32: tokens past a sequence's length are not folded into the state.
    pub lengths: &'a wgpu::Buffer,
    /// The per-head decay ([`decay_table`]), or `None` for the authors' form
    /// (then `lengths` fills the binding, unread: the dummy buffer may be
    /// bound for writing in the same dispatch).
    pub decay: Option<&'a wgpu::Buffer>,
    /// The chunk states (parallel form, [`Shape::state_floats`] floats) or the
    /// decoder's persistent state (streaming form, `[B, H, 2, l, dh]`).
    pub state: &'a wgpu::Buffer,
    /// The state a parallel pass continues from and leaves updated (`[B, H, block]`), if any.
    pub carry: Option<&'a wgpu::Buffer>,
    /// `[B·rows, d]`.
    pub out: &'a wgpu::Buffer,
    pub shape: Shape,
}

/// One pass of `causal_chunk.wgsl` in tiles of `tile` tokens, or (`None`) of `causal.wgsl`.
fn pass(rec: &mut Recorder, emit: bool, tile: Option<usize>, c: &Causal) {
    let (inp, s) = (c.inputs, c.shape);
    let decay = c.decay.is_some();
    let kernel = rec.kernel(match tile {
        Some(t) => chunk_spec(emit, decay, t, s.head_dim, s.proj_len),
        None => spec(emit, decay),
    });
    let total = (s.batch * s.chunks() * s.heads) as u32;
    let params = Params {
        rows: s.rows as u32,
        chunk: s.chunk as u32,
        chunks: s.chunks() as u32,
        heads: s.heads as u32,
        head_dim: s.head_dim as u32,
        proj_len: s.proj_len as u32,
        x_stride: inp.stride as u32,
        q_off: inp.q as u32,
        k_off: inp.k as u32,
        v_off: inp.v as u32,
        pc_off: inp.pc as u32,
        qp_stride: (s.heads * s.head_dim) as u32,
        o_stride: (s.heads * s.head_dim) as u32,
        t_base: s.t_base as u32,
        total,
        _pad: 0,
    };
    let groups = rec.grid(total);
    let out = if emit { c.out } else { rec.dummy };
    rec.dispatch(&kernel, &params, &[inp.x, c.qp, c.lengths, c.state, out, c.decay.unwrap_or(c.lengths)], groups);
}

/// Records the parallel form over whole sequences: `out [B·rows, d]` from
/// the inputs. `state` is scratch: what its blocks hold afterwards is not
/// defined.
///
/// With `carry` (`[B, H, block]`), the rows continue sequences whose state
/// before row 0 is in `carry` (and `shape.t_base` tokens came before them), and
/// `carry` is left holding the state after each sequence's last valid token:
/// a long sequence then runs segment by segment in memory that does not grow
/// with its length, and a prompt leaves its decoder state there.
///
/// Which of the two runs where both can is measured on each adapter
/// (`engine::tune`, key [`class_key`]): on lavapipe the tiles are about 12x
/// faster than the token walk, on SwiftShader in Chromium slower at the demo
/// model's head (`dh = 48, l = 32`). Untuned (or with autotuning off), the
/// tiles. (The browser took the token walk for every shape until
/// `causal_chunk.wgsl` zeroed its loop-local accumulators explicitly:
/// Chromium zeroed them only once; see the shader's header.)
pub fn parallel(rec: &mut Recorder, c: &Causal) {
    let tile = tile(&c.shape).filter(|_| vec4_inputs(&c.inputs));
    let walk = tile.is_some() && rec.tuned(&class_key(&c.shape, c.decay.is_some())).as_deref() == Some(WALK);
    parallel_with(rec, c, tile.filter(|_| !walk));
}

/// The tuning's names for the two forms of [`parallel`].
pub const TILES: &str = "tiles";
pub const WALK: &str = "token-walk";

/// The tuning key of the parallel form's choice for heads of this shape:
/// what the kernels' cost depends on (the head, l, the decay), not the length.
pub fn class_key(shape: &Shape, decay: bool) -> String {
    format!("causal dh{} l{}{}", shape.head_dim, shape.proj_len, if decay { " decay" } else { "" })
}

/// [`parallel`] with the tile chosen by the caller (it must fit, and the
/// inputs be vec4-aligned: see [`tile`]),
/// or `None` for the token-by-token `causal.wgsl`: for comparing the two.
pub fn parallel_with(rec: &mut Recorder, c: &Causal, tile: Option<usize>) {
    // Chunk sums from a zero state (the kernel zeroes its block first when not emitting).
    pass(rec, false, tile, c);
    let s = c.shape;
    let kernel = rec.kernel(scan_spec(c.carry.is_some(), c.decay.is_some()));
    let total = (s.batch * s.heads * s.block()) as u32;
    let params = ScanParams {
        chunks: s.chunks() as u32,
        heads: s.heads as u32,
        block: s.block() as u32,
        total,
        rows: s.rows as u32,
        chunk: s.chunk as u32,
        _pad: [0; 2],
    };
    let groups = rec.grid(total.div_ceil(64));
    rec.dispatch(&kernel, &params, &[c.state, c.carry.unwrap_or(rec.dummy), c.lengths, c.decay.unwrap_or(c.lengths)], groups);
    pass(rec, true, tile, c);
}

/// Records the streaming form: one token per sequence (`shape.rows == 1`,
/// `shape.chunk == 1`, no `carry`) folded into the persistent `state`, its
/// output written to `out`.
pub fn step(rec: &mut Recorder, c: &Causal) {
    debug_assert!(c.shape.rows == 1 && c.shape.chunk == 1 && c.carry.is_none());
    let (inp, s) = (c.inputs, c.shape);
    let kernel = rec.kernel(step_spec(c.decay.is_some()));
    let d = (s.heads * s.head_dim) as u32;
    let total = (s.batch * s.heads) as u32;
    let params = StepParams {
        heads: s.heads as u32,
        head_dim: s.head_dim as u32,
        proj_len: s.proj_len as u32,
        x_stride: inp.stride as u32,
        q_off: inp.q as u32,
        k_off: inp.k as u32,
        v_off: inp.v as u32,
        pc_off: inp.pc as u32,
        qp_stride: d,
        o_stride: d,
        t_base: s.t_base as u32,
        total,
    };
    let groups = rec.grid(total);
    rec.dispatch(&kernel, &params, &[inp.x, c.qp, c.lengths, c.state, c.out, c.decay.unwrap_or(c.lengths)], groups);
}

/// `out[r] = -log2 softmax(logits[r])[target[r]]`, 0 where `target[r] == NO_TARGET`.
pub fn logprob(rec: &mut Recorder, logits: &wgpu::Buffer, target: &wgpu::Buffer, out: &wgpu::Buffer, rows: usize, vocab: usize) {
    let kernel = rec.kernel(logprob_spec());
    let params = LogprobParams { rows: rows as u32, vocab: vocab as u32, _pad: [0; 2] };
    let groups = rec.grid(rows as u32);
    rec.dispatch(&kernel, &params, &[logits, target, out], groups);
}
