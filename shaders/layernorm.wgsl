// Row-wise LayerNorm with the residual add fused in, and optional zeroing of
// masked rows:   v = x (+ r);  out = LN(v) * gamma + beta  (or v when not normalising);
//                out = 0 on rows whose mask is set.
// Two layouts (kernels::layernorm::Layout, the faster measured per adapter):
// `main`, one workgroup per row with tree sums through workgroup memory; and
// `per_thread`, one thread per row walking it serially, no barriers. Mean and
// (biased) variance in two passes for accuracy in both.
// Math: docs/luna.md, "Notation" (LayerNorm) and "The encoder layer". Recorded by kernels::layernorm::record.

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

override HAS_RES: bool = false;
override DO_NORM: bool = true;
override HAS_MASK: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> r: array<f32>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> beta: array<f32>;
@group(0) @binding(5) var<storage, read> row_mask: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;

fn load(i: u32) -> f32 {
    if (HAS_RES) {
        return x[i] + r[i];
    }
    return x[i];
}

fn workgroup_sum(value: f32, tid: u32) -> f32 {
    partial[tid] = value;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            partial[tid] += partial[tid + s];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    if (HAS_MASK && row_mask[row] != 0u) {
        for (var c = tid; c < p.dim; c += WG) {
            out[base + c] = 0.0;
        }
        return;
    }
    if (!DO_NORM) {
        for (var c = tid; c < p.dim; c += WG) {
            out[base + c] = load(base + c);
        }
        return;
    }
    var s = 0.0;
    for (var c = tid; c < p.dim; c += WG) {
        s += load(base + c);
    }
    let mean = workgroup_sum(s, tid) / f32(p.dim);
    var sq = 0.0;
    for (var c = tid; c < p.dim; c += WG) {
        let dv = load(base + c) - mean;
        sq = fma(dv, dv, sq);
    }
    let var_ = workgroup_sum(sq, tid) / f32(p.dim);
    let inv = inverseSqrt(var_ + p.eps);
    for (var c = tid; c < p.dim; c += WG) {
        out[base + c] = (load(base + c) - mean) * inv * gamma[c] + beta[c];
    }
}

// One thread per row: the same three passes over the row, without barriers.
@compute @workgroup_size(WG, 1, 1)
fn per_thread(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = gid.x + gid.y * nwg.x * WG;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    if (HAS_MASK && row_mask[row] != 0u) {
        for (var c = 0u; c < p.dim; c++) {
            out[base + c] = 0.0;
        }
        return;
    }
    if (!DO_NORM) {
        for (var c = 0u; c < p.dim; c++) {
            out[base + c] = load(base + c);
        }
        return;
    }
    var s = 0.0;
    for (var c = 0u; c < p.dim; c++) {
        s += load(base + c);
    }
    let mean = s / f32(p.dim);
    var sq = 0.0;
    for (var c = 0u; c < p.dim; c++) {
        let dv = load(base + c) - mean;
        sq = fma(dv, dv, sq);
    }
    let inv = inverseSqrt(sq / f32(p.dim) + p.eps);
    for (var c = 0u; c < p.dim; c++) {
        out[base + c] = (load(base + c) - mean) * inv * gamma[c] + beta[c];
    }
}
