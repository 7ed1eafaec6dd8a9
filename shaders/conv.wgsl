// The causal depthwise convolution of the local-context extension (docs/luna.md,
// "Local context"), over a causal attention's input x [batch, rows, dim]:
//   u[b, t, c] = sum_j weight[c, j] * x[b, t - (WIDTH - 1) + j, c]
// Rows before a segment's first come from `history` ([batch, WIDTH - 1, dim],
// oldest first) with HISTORY, and are zeros without (a sequence's start).
// Entry `main`: one thread per output float. Entry `carry`, recorded after
// `main`: one thread per (sequence, channel) leaves in `history` the last
// WIDTH - 1 inputs before each sequence's length, for the next segment or step.
// Entry `step`, for one row per sequence (a decoder step) with HISTORY: both
// in one dispatch, one thread per (sequence, channel), which alone reads and
// then shifts its channel's history.
// Recorded by kernels::conv.

struct Params {
    rows: u32,    // rows per sequence
    dim: u32,
    total: u32,   // main: batch * rows * dim; carry: batch * dim
    _pad: u32,
}

override WIDTH: u32 = 4u;
override HISTORY: bool = false;
const MAX_WIDTH: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> lengths: array<u32>;
@group(0) @binding(4) var<storage, read_write> history: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

fn id_of(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = id_of(gid, nwg);
    if (id >= p.total) {
        return;
    }
    let c = id % p.dim;
    let bt = id / p.dim;
    let t = bt % p.rows;
    let b = bt / p.rows;
    let k1 = WIDTH - 1u;
    var acc = 0.0;
    for (var j = 0u; j < WIDTH; j++) {
        // the input k1 - j rows back
        let back = k1 - j;
        var v = 0.0;
        if (t >= back) {
            v = x[(bt - back) * p.dim + c];
        } else if (HISTORY) {
            v = history[(b * k1 + k1 + t - back) * p.dim + c];
        }
        acc = fma(weight[c * WIDTH + j], v, acc);
    }
    out[id] = acc;
}

@compute @workgroup_size(64, 1, 1)
fn carry(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = id_of(gid, nwg);
    if (id >= p.total) {
        return;
    }
    let c = id % p.dim;
    let b = id / p.dim;
    let k1 = WIDTH - 1u;
    let len = min(lengths[b], p.rows);
    var old: array<f32, MAX_WIDTH>;
    for (var i = 0u; i < k1; i++) {
        if (HISTORY) {
            old[i] = history[(b * k1 + i) * p.dim + c];
        }
    }
    // New entry i is the input at row len - k1 + i, or an older one.
    for (var i = 0u; i < k1; i++) {
        var v: f32;
        if (len + i >= k1) {
            v = x[(b * p.rows + len + i - k1) * p.dim + c];
        } else {
            v = old[len + i];
        }
        history[(b * k1 + i) * p.dim + c] = v;
    }
}

@compute @workgroup_size(64, 1, 1)
fn step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = id_of(gid, nwg);
    if (id >= p.total) {
        return;
    }
    let c = id % p.dim;
    let b = id / p.dim;
    let k1 = WIDTH - 1u;
    let base = b * k1 * p.dim + c;
    let now = x[id];
    // the input k1 - j rows back: history entry j for j < k1, this row for j = k1
    var acc = weight[c * WIDTH + k1] * now;
    for (var j = 0u; j < k1; j++) {
        acc = fma(weight[c * WIDTH + j], history[base + j * p.dim], acc);
    }
    out[id] = acc;
    // A sequence with no token this step (length 0) keeps its history.
    if (lengths[b] > 0u && k1 > 0u) {
        for (var i = 0u; i + 1u < k1; i++) {
            history[base + i * p.dim] = history[base + (i + 1u) * p.dim];
        }
        history[base + (k1 - 1u) * p.dim] = now;
    }
}
