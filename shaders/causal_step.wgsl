// Causal Luna attention, the streaming form: one new token per sequence folded
// into a persistent state (docs/luna.md, "The decoder state"). One workgroup per
// (sequence, head), three barriers in all:
//   1. thread j < l:   a_j = softplus_ln2(pc · Qp_j)                       (pack weight)
//   2. thread j < l:   Sk_j += a_j k ; Sv_j += a_j v ; s_j = q · Sk_j / t   (its own state rows)
//   3. every thread:   the softmax's max and sum over the l scores (l reads each, no tree);
//      thread r < dh:  o_r = sum_j e_j Sv_j[r] / t / sum_j e_j
// With DECAY (docs/luna.md, "Local context") the state shrinks by the head's
// rate before the token is added and t becomes the decayed count Z_t.
// Each thread owns whole rows of the state, so the update and the score need no
// communication; rows are read and written contiguously. Loops stride by WG where
// l or dh is larger than the workgroup. A sequence whose length is 0 (padding in a
// batch) leaves its state alone and writes nothing.
// Recorded by kernels::causal::step.

struct Params {
    heads: u32,
    head_dim: u32,
    proj_len: u32,    // l
    x_stride: u32,    // floats per row of the fused projection buffer
    q_off: u32,
    k_off: u32,
    v_off: u32,
    pc_off: u32,
    qp_stride: u32,   // floats per row of Q_P (= d)
    o_stride: u32,
    t_base: u32,      // tokens before this one
    total: u32,       // batch * heads
}

override DECAY: bool = false;

const WG: u32 = 64u;
const MAX_L: u32 = 1024u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> qp: array<f32>;
@group(0) @binding(3) var<storage, read> lengths: array<u32>;
@group(0) @binding(4) var<storage, read_write> state: array<f32>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;
@group(0) @binding(6) var<storage, read> decay: array<f32>;

var<workgroup> w: array<f32, MAX_L>;   // pack weights, then scores

@compute @workgroup_size(WG, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    // Uniform across the workgroup (it depends on the workgroup id only).
    let id = min(wid.x + wid.y * nwg.x, p.total - 1u);
    let live = wid.x + wid.y * nwg.x < p.total && lengths[id / p.heads] > 0u;
    let h = id % p.heads;
    let b = id / p.heads;
    let hd = p.head_dim;
    let l = p.proj_len;
    let col = h * hd;
    let sk = id * 2u * l * hd;
    let sv = sk + l * hd;
    let xb = b * p.x_stride;
    var inv_t = 1.0 / f32(p.t_base + 1u);
    var g = 1.0;
    if (DECAY) {
        g = decay[h];
        inv_t = 1.0 / decayed_count(decay[p.heads + h], f32(p.t_base + 1u));
    }

    for (var j = tid; j < l; j += WG) {
        var dot = 0.0;
        for (var r = 0u; r < hd; r++) {
            dot = fma(x[xb + p.pc_off + col + r], qp[j * p.qp_stride + col + r], dot);
        }
        w[j] = softplus_ln2(dot);
    }
    workgroupBarrier();
    for (var j = tid; j < l; j += WG) {
        let a = w[j];
        var dot = 0.0;
        for (var r = 0u; r < hd; r++) {
            let e = j * hd + r;
            var k = state[sk + e];
            var v = state[sv + e];
            if (live) {
                if (DECAY) {
                    k *= g;
                    v *= g;
                }
                k = fma(a, x[xb + p.k_off + col + r], k);
                v = fma(a, x[xb + p.v_off + col + r], v);
                state[sk + e] = k;
                state[sv + e] = v;
            }
            dot = fma(x[xb + p.q_off + col + r], k, dot);
        }
        w[j] = dot * inv_t;
    }
    storageBarrier();
    workgroupBarrier();
    var mx = -3.0e38;
    for (var j = 0u; j < l; j++) {
        mx = max(mx, w[j]);
    }
    var total = 0.0;
    for (var j = 0u; j < l; j++) {
        total += exp(w[j] - mx);
    }
    let scale = inv_t / total;
    let ob = b * p.o_stride + col;
    for (var r = tid; r < hd; r += WG) {
        var acc = 0.0;
        for (var j = 0u; j < l; j++) {
            acc = fma(exp(w[j] - mx), state[sv + j * hd + r], acc);
        }
        if (live) {
            o[ob + r] = acc * scale;
        }
    }
}
