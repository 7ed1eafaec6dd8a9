// Standard multi-head softmax self-attention, fused and tiled with an online
// softmax (FlashAttention-style): the [n, n] score matrix never exists, and
// the memory beyond Q/K/V/O is 2 floats per (batch, head, query row).
//
//   out[b, i, head h] = softmax_j( scale · q_i,h · k_j,h , key j masked ) · V_h
//
// Work split. One workgroup of WG = 256 invocations owns a tile of BQ = WG / T
// query rows of one (batch, head). T invocations share a query row: each holds
// a contiguous slice of S = 4·SV columns of that row's (pre-scaled) query and
// of its output accumulator in registers. Keys are walked in tiles of BK = 8:
// the whole workgroup stages the K and V rows of a tile in workgroup memory
// (one vec4 per invocation per tile, prefetched into registers while the
// previous tile is being used), and every query row of the tile reuses them.
// With T > 1 the T partial dot products of a (row, key) pair are summed through
// workgroup memory, in a fixed order, so the T invocations of a row hold
// bit-identical scores and softmax states.
//
// Specialisations (overrides): T in {1, 2, 4} and SV in {1, 2, 4, 8}, chosen by
// the host so that T·S >= head_dim (head_dim <= 128). Columns past head_dim are
// zero in both Q and the staged K/V, so they add nothing.
//
// Bounded loops. One dispatch covers the keys [key_begin, key_end); the host
// splits a long key sequence into passes of at most a few thousand keys, and
// the softmax state (running max m and sum l per row, in `state`; the
// unnormalised accumulator in `o` itself) is carried from pass to pass. The
// last pass divides by l. So no invocation loops more than a bounded number of
// times, whatever n is (software Vulkan drivers lose accuracy on very long loops).
//
// Scores are kept in base 2: the query is multiplied by scale·log2(e) once, and
// exp2 replaces exp (the same softmax).
//
// Workgroup memory: K tile 4 KiB + V tile 4 KiB + partial dots 8 KiB = 16 KiB.
// Tiles are stored with a per-slice rotation ((e + t) mod SV) so that the T
// slices read at once fall in different banks; the partial-dot rows likewise.
// Luna's unpack runs through this kernel too (docs/luna.md, "Pack and unpack").
// Recorded by kernels::softmax::record_flash.

struct Params {
    q_rows: u32,     // query rows per sequence
    k_rows: u32,     // key rows per sequence
    heads: u32,
    head_dim: u32,
    q_stride: u32,
    q_off: u32,
    k_stride: u32,
    k_off: u32,
    v_stride: u32,
    v_off: u32,
    o_stride: u32,
    q_tiles: u32,    // ceil(q_rows / BQ)
    total: u32,      // batch * heads * q_tiles workgroups
    scale: f32,      // head_dim^-0.5 (or any score scale)
    key_begin: u32,  // this pass's keys
    key_end: u32,
    first: u32,      // 1: start from an empty state
    last: u32,       // 1: normalise and write the output
    _pad0: u32,
    _pad1: u32,
}

override T: u32 = 4u;    // invocations per query row
override SV: u32 = 8u;   // vec4 columns per invocation (S = 4 SV columns)

const WG: u32 = 256u;
const BK: u32 = 8u;      // keys per tile
const MAXV: u32 = 8u;    // largest SV: head_dim <= 4 * 4 * 8 = 128
const NEG: f32 = -3.0e38;  // below every real score: a masked key
const LOG2E: f32 = 1.4426950408889634;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> key_mask: array<u32>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;
// [batch * heads * q_rows][2]: running max (base 2) and sum, between passes
@group(0) @binding(6) var<storage, read_write> state: array<f32>;

// [BK keys][T slices][SV vec4], slice t rotated by t
var<workgroup> k_tile: array<vec4<f32>, 256>;
var<workgroup> v_tile: array<vec4<f32>, 256>;
// [BQ rows][T slices][BK / 4 vec4] partial dot products, rotated by row
var<workgroup> part: array<vec4<f32>, 512>;

// Position of vec4 column `e` of slice `t` of key `j` in a staged tile.
fn tile_at(j: u32, t: u32, e: u32) -> u32 {
    return (j * T + t) * SV + (e + t) % SV;
}

// Position of the partial dots (keys 4 jq .. 4 jq + 3) of slice `t` of row `r`.
fn part_at(r: u32, t: u32, jq: u32) -> u32 {
    let w = 2u * T;
    return r * w + (t * 2u + jq + r) % w;
}

// One vec4 of a K or V tile: key row `key` of the sequence starting at row
// `base` (zero at or past key_end), head columns c .. c+3 (zero past head_dim);
// `col0` is the head's first column.
fn load4(is_k: bool, base: u32, key: u32, col0: u32, c: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    if (key < p.key_end) {
        for (var u = 0u; u < 4u; u++) {
            if (c + u < p.head_dim) {
                if (is_k) {
                    r[u] = k[(base + key) * p.k_stride + p.k_off + col0 + c + u];
                } else {
                    r[u] = v[(base + key) * p.v_stride + p.v_off + col0 + c + u];
                }
            }
        }
    }
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
    let qt = id % p.q_tiles;
    let bh = id / p.q_tiles;
    let h = bh % p.heads;
    let b = bh / p.heads;
    let hd = p.head_dim;
    let col0 = h * hd;
    let bq = WG / T;
    let r = tid / T;
    let t = tid % T;
    let i = qt * bq + r;
    let row_ok = i < p.q_rows;
    let c0 = t * SV * 4u;            // first head column of this invocation's slice
    let kv_base = b * p.k_rows;      // first key row of the sequence
    let mask_base = b * p.k_rows;

    // This invocation's query slice, scaled into base 2, and its accumulator
    // (the unnormalised output of the previous passes, or zero).
    let qs = p.scale * LOG2E;
    var qv: array<vec4<f32>, MAXV>;
    var acc: array<vec4<f32>, MAXV>;
    let q_base = (b * p.q_rows + i) * p.q_stride + p.q_off + col0;
    let o_base = (b * p.q_rows + i) * p.o_stride + col0;
    for (var e = 0u; e < SV; e++) {
        var x = vec4<f32>(0.0);
        var a = vec4<f32>(0.0);
        for (var u = 0u; u < 4u; u++) {
            let c = c0 + e * 4u + u;
            if (row_ok && c < hd) {
                x[u] = q[q_base + c] * qs;
                if (p.first == 0u) {
                    a[u] = o[o_base + c];
                }
            }
        }
        qv[e] = x;
        acc[e] = a;
    }
    let srow = bh * p.q_rows + i;
    var m = NEG;   // running max of the scores seen (base 2)
    var l = 0.0;   // running sum of exp2(score - m)
    if (p.first == 0u && row_ok) {
        m = state[2u * srow];
        l = state[2u * srow + 1u];
    }

    // The tile slot this invocation stages (one vec4 of K and one of V), if any.
    let has_slot = tid < BK * T * SV;
    let sj = tid / (T * SV);                 // key within the tile
    let st = (tid / SV) % T;                 // slice
    let se = tid % SV;                       // vec4 column within the slice
    let sc = (st * SV + se) * 4u;            // its first head column
    let s_at = tile_at(sj, st, se);
    var k_next = vec4<f32>(0.0);
    var v_next = vec4<f32>(0.0);
    if (has_slot) {
        k_next = load4(true, kv_base, p.key_begin + sj, col0, sc);
        v_next = load4(false, kv_base, p.key_begin + sj, col0, sc);
    }

    for (var kb = p.key_begin; kb < p.key_end; kb += BK) {
        if (has_slot) {
            k_tile[s_at] = k_next;
            v_tile[s_at] = v_next;
        }
        workgroupBarrier();
        // Start reading the next tile while this one is used.
        if (has_slot && kb + BK < p.key_end) {
            k_next = load4(true, kv_base, kb + BK + sj, col0, sc);
            v_next = load4(false, kv_base, kb + BK + sj, col0, sc);
        }

        // Partial dot products of this slice with the tile's keys.
        var s: array<f32, BK>;
        for (var j = 0u; j < BK; j++) {
            var d = 0.0;
            for (var e = 0u; e < SV; e++) {
                d += dot(qv[e], k_tile[tile_at(j, t, e)]);
            }
            s[j] = d;
        }
        if (T > 1u) {
            part[part_at(r, t, 0u)] = vec4<f32>(s[0], s[1], s[2], s[3]);
            part[part_at(r, t, 1u)] = vec4<f32>(s[4], s[5], s[6], s[7]);
            workgroupBarrier();
            var lo = vec4<f32>(0.0);
            var hi = vec4<f32>(0.0);
            for (var u = 0u; u < T; u++) {
                lo += part[part_at(r, u, 0u)];
                hi += part[part_at(r, u, 1u)];
            }
            s[0] = lo.x; s[1] = lo.y; s[2] = lo.z; s[3] = lo.w;
            s[4] = hi.x; s[5] = hi.y; s[6] = hi.z; s[7] = hi.w;
        }

        // Mask, then fold the tile into the running softmax state.
        var tile_max = NEG;
        for (var j = 0u; j < BK; j++) {
            let key = kb + j;
            if (key >= p.key_end || key_mask[mask_base + key] != 0u) {
                s[j] = NEG;
            }
            tile_max = max(tile_max, s[j]);
        }
        if (tile_max > NEG) {
            let m_new = max(m, tile_max);
            let corr = exp2(m - m_new);
            l *= corr;
            for (var e = 0u; e < SV; e++) {
                acc[e] *= corr;
            }
            for (var j = 0u; j < BK; j++) {
                if (s[j] > NEG) {
                    let w = exp2(s[j] - m_new);
                    l += w;
                    for (var e = 0u; e < SV; e++) {
                        acc[e] = fma(vec4<f32>(w), v_tile[tile_at(j, t, e)], acc[e]);
                    }
                }
            }
            m = m_new;
        }
        workgroupBarrier();
    }

    if (!row_ok) {
        return;
    }
    if (p.last == 0u) {
        if (t == 0u) {
            state[2u * srow] = m;
            state[2u * srow + 1u] = l;
        }
    }
    let inv = select(1.0, select(0.0, 1.0 / l, l > 0.0), p.last != 0u);
    for (var e = 0u; e < SV; e++) {
        let a = acc[e] * inv;
        for (var u = 0u; u < 4u; u++) {
            let c = c0 + e * 4u + u;
            if (c < hd) {
                o[o_base + c] = a[u];
            }
        }
    }
}
