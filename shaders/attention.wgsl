// Fused multi-head attention of one query row against a masked key sequence,
// with an online (streaming) softmax: the score row is never stored.
// Serves both halves of Luna:
//   pack:   queries = the l' rows of P,   keys/values = the n tokens  (Hp heads, key mask = padding)
//   unpack: queries = the n tokens,       keys/values = the l' packed rows (H heads, key mask = P-row mask)
// One workgroup per (batch, head, query row, split). A long key sequence is
// split into `splits` ranges of `keys_per_split` keys walked by separate
// workgroups (more parallelism for the pack, and bounded loops per
// invocation); their partial softmax states (max, sum, unnormalised output)
// are merged by attention_combine.wgsl. With one split the output is written
// directly. A sequence cut into row blocks (engine::encoder) runs one call per
// block, each writing its splits at `first_split` among `all_splits`.
// Within a range, keys are walked in chunks of WG:
// each thread scores one key of the chunk, then every thread folds the chunk
// into its own output columns (tid, tid + WG, ...), so V reads are coalesced.
// Q, K, V are read through strides and column offsets, so fused projection
// outputs ([q | k | v] side by side) are used where they lie.
// Math: docs/luna.md, "Pack and unpack". Recorded by kernels::attention::record.

struct Params {
    q_rows: u32,    // query rows per sequence
    k_rows: u32,    // key rows per sequence
    heads: u32,
    head_dim: u32,
    q_stride: u32,
    q_off: u32,
    k_stride: u32,
    k_off: u32,
    v_stride: u32,
    v_off: u32,
    o_stride: u32,
    total: u32,     // batch * heads * q_rows * splits workgroups
    scale: f32,
    splits: u32,    // splits of this call's keys
    keys_per_split: u32,
    first_split: u32, // where this call's splits lie among all_splits (a sequence cut into row blocks)
    all_splits: u32,  // partial states per query row; 1 = write the output directly
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 64u;
const DPT: u32 = 8u;        // output columns per thread: head_dim <= WG * DPT = 512
const NEG: f32 = -3.0e38;   // below every real score; marks masked keys

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> key_mask: array<u32>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;
// [total][head_dim + 2]: max, sum, then the unnormalised output (only when splits > 1)
@group(0) @binding(6) var<storage, read_write> partial: array<f32>;

var<workgroup> q_row: array<f32, 512>;
var<workgroup> scores: array<f32, WG>;

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
    let split = id % p.splits;
    let row = id / p.splits;
    let i = row % p.q_rows;
    let bh = row / p.q_rows;
    let h = bh % p.heads;
    let b = bh / p.heads;
    let hd = p.head_dim;
    let col = h * hd;

    let q_base = (b * p.q_rows + i) * p.q_stride + p.q_off + col;
    for (var c = tid; c < hd; c += WG) {
        q_row[c] = q[q_base + c];
    }
    workgroupBarrier();

    var m = NEG;      // running max of the valid scores seen
    var l = 0.0;      // running sum of exp(score - m)
    var acc: array<f32, DPT>;
    for (var e = 0u; e < DPT; e++) {
        acc[e] = 0.0;
    }

    let k_begin = split * p.keys_per_split;
    let k_end = min(k_begin + p.keys_per_split, p.k_rows);
    for (var c0 = k_begin; c0 < k_end; c0 += WG) {
        let j = c0 + tid;
        var s = NEG;
        if (j < k_end && key_mask[b * p.k_rows + j] == 0u) {
            let k_base = (b * p.k_rows + j) * p.k_stride + p.k_off + col;
            var dot = 0.0;
            for (var c = 0u; c < hd; c++) {
                dot = fma(q_row[c], k[k_base + c], dot);
            }
            s = dot * p.scale;
        }
        scores[tid] = s;
        workgroupBarrier();

        let count = min(WG, k_end - c0);
        var chunk_max = NEG;
        for (var t = 0u; t < count; t++) {
            chunk_max = max(chunk_max, scores[t]);
        }
        if (chunk_max > NEG) {
            let m_new = max(m, chunk_max);
            let corr = exp(m - m_new);
            l *= corr;
            for (var e = 0u; e < DPT; e++) {
                acc[e] *= corr;
            }
            for (var t = 0u; t < count; t++) {
                let st = scores[t];
                if (st > NEG) {
                    let w = exp(st - m_new);
                    l += w;
                    let v_base = (b * p.k_rows + c0 + t) * p.v_stride + p.v_off + col;
                    for (var e = 0u; e < DPT; e++) {
                        let c = tid + e * WG;
                        if (c < hd) {
                            acc[e] = fma(w, v[v_base + c], acc[e]);
                        }
                    }
                }
            }
            m = m_new;
        }
        workgroupBarrier();
    }

    if (p.all_splits > 1u) {
        let base = (row * p.all_splits + p.first_split + split) * (hd + 2u);
        if (tid == 0u) {
            partial[base] = m;
            partial[base + 1u] = l;
        }
        for (var e = 0u; e < DPT; e++) {
            let c = tid + e * WG;
            if (c < hd) {
                partial[base + 2u + c] = acc[e];
            }
        }
        return;
    }
    let inv = select(0.0, 1.0 / l, l > 0.0);
    let o_base = (b * p.q_rows + i) * p.o_stride + col;
    for (var e = 0u; e < DPT; e++) {
        let c = tid + e * WG;
        if (c < hd) {
            o[o_base + c] = acc[e] * inv;
        }
    }
}
