// Causal Luna attention (docs/luna.md, "Causal attention"), one
// workgroup per (batch, chunk, head), walking the chunk's tokens in order:
//   a_t   = softplus_ln2(pc_t · Q_P^T)                      [l]   pack weights
//   Sk   += a_t (outer) k_t ;  Sv += a_t (outer) v_t         [l, dh] each
//   alpha = softmax(q_t · Sk^T / t) ;  o_t = alpha · Sv / t  (only with EMIT)
// The state lives in global memory, one [2][l][dh] block per (batch, chunk,
// head). The streaming form is this kernel on one token with a persistent
// state block. The parallel form runs it twice only where causal_chunk.wgsl's
// tiles do not fit (large l or dh): first without EMIT from a zero state to get
// each chunk's sums, then (after causal_scan.wgsl turned the sums into
// exclusive prefixes) with EMIT from the prefix state.
// With DECAY (docs/luna.md, "Local context") the state shrinks by the head's
// rate before each token is added, and t becomes the decayed count Z_t; a
// chunk's sums are then decayed to its last token, as causal_scan.wgsl expects.
// Tokens at or past a sequence's length leave the state alone, so the block of
// the chunk holding a sequence's last token ends as its final state.
// Recorded by kernels::causal::parallel (with causal_scan.wgsl) and kernels::causal::step.

struct Params {
    rows: u32,        // token rows per sequence (n)
    chunk: u32,       // tokens per chunk
    chunks: u32,      // chunks per sequence
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
    t_base: u32,      // tokens before row 0 (the streaming position)
    total: u32,       // batch * chunks * heads
    _pad: u32,
}

override EMIT: bool = true;
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

var<workgroup> w: array<f32, MAX_L>;   // pack weights, then attention weights
var<workgroup> red: array<f32, WG>;
var<workgroup> seq_len: u32;

fn reduce_max(v: f32, tid: u32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            red[tid] = max(red[tid], red[tid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(v: f32, tid: u32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            red[tid] += red[tid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let id = wid.x + wid.y * nwg.x;
    if (id >= p.total) {
        return;
    }
    let h = id % p.heads;
    let bc = id / p.heads;
    let c = bc % p.chunks;
    let b = bc / p.chunks;
    let hd = p.head_dim;
    let l = p.proj_len;
    let col = h * hd;
    let sk = id * 2u * l * hd;
    let sv = sk + l * hd;
    if (tid == 0u) {
        seq_len = lengths[b];
    }
    let len = workgroupUniformLoad(&seq_len);
    var g = 1.0;
    var lg = 0.0;
    if (DECAY) {
        g = decay[h];
        lg = decay[p.heads + h];
    }
    if (!EMIT) {
        // The first pass sums each chunk from zero.
        for (var e = tid; e < 2u * l * hd; e += WG) {
            state[sk + e] = 0.0;
        }
        storageBarrier();
    }

    for (var i = 0u; i < p.chunk; i++) {
        let t = c * p.chunk + i;
        if (t >= p.rows || t >= len) {
            break;
        }
        let xb = (b * p.rows + t) * p.x_stride;
        // Pack weights of this token against every P row.
        for (var j = tid; j < l; j += WG) {
            var dot = 0.0;
            for (var r = 0u; r < hd; r++) {
                dot = fma(x[xb + p.pc_off + col + r], qp[j * p.qp_stride + col + r], dot);
            }
            w[j] = softplus_ln2(dot);
        }
        workgroupBarrier();
        // State update; each thread owns the same entries for every token.
        for (var e = tid; e < l * hd; e += WG) {
            let j = e / hd;
            let r = e % hd;
            var s_k = state[sk + e];
            var s_v = state[sv + e];
            if (DECAY) {
                s_k *= g;
                s_v *= g;
            }
            state[sk + e] = fma(w[j], x[xb + p.k_off + col + r], s_k);
            state[sv + e] = fma(w[j], x[xb + p.v_off + col + r], s_v);
        }
        if (EMIT) {
            storageBarrier();
            workgroupBarrier();
            var inv_t = 1.0 / f32(p.t_base + t + 1u);
            if (DECAY) {
                inv_t = 1.0 / decayed_count(lg, f32(p.t_base + t + 1u));
            }
            var m = -3.0e38;
            for (var j = tid; j < l; j += WG) {
                var dot = 0.0;
                for (var r = 0u; r < hd; r++) {
                    dot = fma(x[xb + p.q_off + col + r], state[sk + j * hd + r], dot);
                }
                let s = dot * inv_t;
                w[j] = s;
                m = max(m, s);
            }
            let mx = reduce_max(m, tid);
            var sum = 0.0;
            for (var j = tid; j < l; j += WG) {
                let e = exp(w[j] - mx);
                w[j] = e;
                sum += e;
            }
            let total = reduce_sum(sum, tid);
            let scale = inv_t / total;
            let ob = (b * p.rows + t) * p.o_stride + col;
            for (var r = tid; r < hd; r += WG) {
                var acc = 0.0;
                for (var j = 0u; j < l; j++) {
                    acc = fma(w[j], state[sv + j * hd + r], acc);
                }
                o[ob + r] = acc * scale;
            }
        }
        workgroupBarrier();
    }
}
