// Surprisal of each row's target token, in bits:
//   out[r] = -(logits[r, target[r]] - logsumexp(logits[r])) / ln 2
// rows whose target is NONE get 0. One workgroup per row.
// Math: docs/luna.md, "The causal LM" (surprisal). Recorded by kernels::causal::logprob.

struct Params {
    rows: u32,
    vocab: u32,
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 64u;
const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, WG>;

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
    let base = row * p.vocab;
    var m = -3.0e38;
    for (var v = tid; v < p.vocab; v += WG) {
        m = max(m, logits[base + v]);
    }
    red[tid] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            red[tid] = max(red[tid], red[tid + s]);
        }
        workgroupBarrier();
    }
    let mx = red[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var v = tid; v < p.vocab; v += WG) {
        sum += exp(logits[base + v] - mx);
    }
    red[tid] = sum;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            red[tid] += red[tid + s];
        }
        workgroupBarrier();
    }
    if (tid == 0u) {
        let t = targets[row];
        if (t == NONE) {
            out[row] = 0.0;
        } else {
            out[row] = -(logits[base + t] - mx - log(red[0])) / 0.69314718055994531;
        }
    }
}
