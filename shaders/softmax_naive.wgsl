// Plain multi-head softmax attention that materialises the score matrix, as a
// standard Transformer does (batched QK^T, row softmax, batched P·V):
//
//   scores:  S[b, h, i, j] = scale · q_i,h · k_j,h   (a masked key: NEG)
//   softmax: S[b, h, i, :] = softmax(S[b, h, i, :])   in place
//   pv:      out[b, i, head h] (+)= S[b, h, i, keys] · V_h[keys]
//
// S is [batch, heads, q_rows, k_rows] in one global buffer: memory O(n^2).
// Q, K, V are read through strides and column offsets (the fused [q|k|v]
// projection), the output is written at column h·head_dim of rows o_stride wide.
// The two products are tiled GEMMs (64x64 output tile per workgroup of 16x16
// invocations, 4x4 outputs each, reduction dimension in steps of 16 through
// workgroup memory). `pv` covers the keys [key_begin, key_end) and, with
// `accumulate`, adds to the output: the host splits a long sequence into
// passes so that no invocation loops more than a bounded number of times.
// All three entry points share one binding layout.
// The softmax baseline only (its float64 oracle: src/reference/softmax.rs).
// Recorded by kernels::softmax::record_naive.

struct Params {
    q_rows: u32,
    k_rows: u32,
    heads: u32,
    head_dim: u32,
    q_stride: u32,
    q_off: u32,
    k_stride: u32,
    k_off: u32,
    v_stride: u32,
    v_off: u32,
    o_stride: u32,
    rows: u32,        // batch * heads * q_rows (softmax)
    scale: f32,
    key_begin: u32,   // pv: this pass's keys
    key_end: u32,
    accumulate: u32,  // pv: 1 = add to the output
}

const NEG: f32 = -3.0e38;
const TILE: u32 = 64u;
const TK: u32 = 16u;
const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> key_mask: array<u32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> o: array<f32>;

var<workgroup> ta: array<f32, 1024>;   // [TK][TILE]
var<workgroup> tb: array<f32, 1024>;   // [TK][TILE]
var<workgroup> red: array<f32, WG>;

// S = scale · Q_h K_h^T for one (batch, head): rows i (tile y), keys j (tile x).
@compute @workgroup_size(16, 16, 1)
fn scores_main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let bh = wid.z;
    let h = bh % p.heads;
    let b = bh / p.heads;
    let hd = p.head_dim;
    let col0 = h * hd;
    let i0 = wid.y * TILE;
    let j0 = wid.x * TILE;
    let tx = lid.x;
    let ty = lid.y;
    let tid = ty * 16u + tx;

    var acc: array<array<f32, 4>, 4>;
    for (var a = 0u; a < 4u; a++) {
        for (var c = 0u; c < 4u; c++) {
            acc[a][c] = 0.0;
        }
    }
    for (var c0 = 0u; c0 < hd; c0 += TK) {
        for (var e = 0u; e < 4u; e++) {
            let idx = tid + e * 256u;
            let rr = idx / TK;
            let cc = idx % TK;
            let c = c0 + cc;
            let gi = i0 + rr;
            var qa = 0.0;
            if (gi < p.q_rows && c < hd) {
                qa = q[(b * p.q_rows + gi) * p.q_stride + p.q_off + col0 + c];
            }
            ta[cc * TILE + rr] = qa;
            let gj = j0 + rr;
            var kb = 0.0;
            if (gj < p.k_rows && c < hd) {
                kb = k[(b * p.k_rows + gj) * p.k_stride + p.k_off + col0 + c];
            }
            tb[cc * TILE + rr] = kb;
        }
        workgroupBarrier();
        for (var cc = 0u; cc < TK; cc++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var a = 0u; a < 4u; a++) {
                av[a] = ta[cc * TILE + ty + 16u * a];
                bv[a] = tb[cc * TILE + tx + 16u * a];
            }
            for (var a = 0u; a < 4u; a++) {
                for (var c = 0u; c < 4u; c++) {
                    acc[a][c] = fma(av[a], bv[c], acc[a][c]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var a = 0u; a < 4u; a++) {
        let gi = i0 + ty + 16u * a;
        if (gi >= p.q_rows) {
            continue;
        }
        let row = (bh * p.q_rows + gi) * p.k_rows;
        for (var c = 0u; c < 4u; c++) {
            let gj = j0 + tx + 16u * c;
            if (gj < p.k_rows) {
                var sv = acc[a][c] * p.scale;
                if (key_mask[b * p.k_rows + gj] != 0u) {
                    sv = NEG;
                }
                scores[row + gj] = sv;
            }
        }
    }
}

fn reduce(value: f32, tid: u32, take_max: bool) -> f32 {
    red[tid] = value;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (tid < s) {
            if (take_max) {
                red[tid] = max(red[tid], red[tid + s]);
            } else {
                red[tid] += red[tid + s];
            }
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

// Row softmax in place; one workgroup per score row. A row with every key
// masked becomes all zero.
@compute @workgroup_size(WG, 1, 1)
fn softmax_main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.k_rows;
    var mx = NEG;
    for (var j = tid; j < p.k_rows; j += WG) {
        mx = max(mx, scores[base + j]);
    }
    mx = reduce(mx, tid, true);
    var sum = 0.0;
    for (var j = tid; j < p.k_rows; j += WG) {
        let sv = scores[base + j];
        if (sv > NEG) {
            sum += exp(sv - mx);
        }
    }
    sum = reduce(sum, tid, false);
    let inv = select(0.0, 1.0 / sum, sum > 0.0);
    for (var j = tid; j < p.k_rows; j += WG) {
        let sv = scores[base + j];
        scores[base + j] = select(0.0, exp(sv - mx) * inv, sv > NEG);
    }
}

// out[i, head cols] (+)= P[i, keys] · V[keys, head cols] for one (batch, head):
// rows i (tile y), head columns (tile x).
@compute @workgroup_size(16, 16, 1)
fn pv_main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let bh = wid.z;
    let h = bh % p.heads;
    let b = bh / p.heads;
    let hd = p.head_dim;
    let col0 = h * hd;
    let i0 = wid.y * TILE;
    let c0 = wid.x * TILE;
    let tx = lid.x;
    let ty = lid.y;
    let tid = ty * 16u + tx;

    var acc: array<array<f32, 4>, 4>;
    for (var a = 0u; a < 4u; a++) {
        for (var c = 0u; c < 4u; c++) {
            acc[a][c] = 0.0;
        }
    }
    for (var j0 = p.key_begin; j0 < p.key_end; j0 += TK) {
        for (var e = 0u; e < 4u; e++) {
            let idx = tid + e * 256u;
            // P tile: [TK keys][TILE rows], read along the keys of each row.
            let rr = idx / TK;
            let jj = idx % TK;
            let gj = j0 + jj;
            let gi = i0 + rr;
            var pa = 0.0;
            if (gi < p.q_rows && gj < p.key_end) {
                pa = scores[(bh * p.q_rows + gi) * p.k_rows + gj];
            }
            ta[jj * TILE + rr] = pa;
            // V tile: [TK keys][TILE columns], read along the columns of each key.
            let vj = idx / TILE;
            let vc = idx % TILE;
            let gvj = j0 + vj;
            let gc = c0 + vc;
            var vb = 0.0;
            if (gvj < p.key_end && gc < hd) {
                vb = v[(b * p.k_rows + gvj) * p.v_stride + p.v_off + col0 + gc];
            }
            tb[vj * TILE + vc] = vb;
        }
        workgroupBarrier();
        for (var jj = 0u; jj < TK; jj++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var a = 0u; a < 4u; a++) {
                av[a] = ta[jj * TILE + ty + 16u * a];
                bv[a] = tb[jj * TILE + tx + 16u * a];
            }
            for (var a = 0u; a < 4u; a++) {
                for (var c = 0u; c < 4u; c++) {
                    acc[a][c] = fma(av[a], bv[c], acc[a][c]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var a = 0u; a < 4u; a++) {
        let gi = i0 + ty + 16u * a;
        if (gi >= p.q_rows) {
            continue;
        }
        let row = (b * p.q_rows + gi) * p.o_stride + col0;
        for (var c = 0u; c < 4u; c++) {
            let gc = c0 + tx + 16u * c;
            if (gc < hd) {
                var val = acc[a][c];
                if (p.accumulate != 0u) {
                    val += o[row + gc];
                }
                o[row + gc] = val;
            }
        }
    }
}
