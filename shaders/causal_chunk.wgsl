// Causal Luna attention in chunkwise matrix form (docs/luna.md, "Causal
// attention", the parallel form). One workgroup per (batch, chunk, head); it
// walks its chunk in tiles of TILE tokens, each tile a few small matrix
// products in workgroup memory with a handful of barriers (not a walk token by
// token). For a tile with rows t, prefix state (Sk0, Sv0) (both [l, dh]):
//   A     = softplus_ln2(PC · Qp^T)                               [T, l]
//   M     = mask_{s<=t}(Q · K^T)                                  [T, T]
//   score = (Q · Sk0^T + M · A) / t                               [T, l]
//   e     = exp(score - rowmax) ;  alpha = e / rowsum
//   M'    = mask_{s<=t}(e · A^T)                                  [T, T]
//   O     = (e · Sv0 + M' · V) / rowsum / t                       [T, dh]
//   Sk0  += A^T · K ;  Sv0 += A^T · V
// Without EMIT only A and the state sums are formed, from a zero state: the
// chunk sums that causal_scan.wgsl turns into prefixes. With EMIT the block
// starts as the chunk's prefix and grows tile by tile up to the chunk's last
// tile, whose own terms are never added (nothing reads them: a sequence's final
// state is causal_scan.wgsl's carry). causal.wgsl serves the shapes whose tiles
// do not fit the pool below.
// Tokens at or past a sequence's length, or past `rows`, get a = 0 and no output.
// Recorded by kernels::causal::parallel.

struct Params {
    rows: u32,        // token rows per sequence (n)
    chunk: u32,       // tokens per chunk (one state block each)
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
    t_base: u32,      // tokens before row 0
    total: u32,       // batch * chunks * heads
    _pad: u32,
}

override EMIT: bool = true;
// Tokens per tile: the host picks the largest power of two up to 32 (and up to
// the chunk) whose arrays fit POOL (kernels::causal::tile).
override TILE: u32 = 16u;

const WG: u32 = 64u;
// Floats of workgroup memory: 15.75 KiB, under WebGPU's default 16 KiB.
const POOL: u32 = 4032u;
const LN2: f32 = 0.69314718055994531;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> qp: array<f32>;
@group(0) @binding(3) var<storage, read> lengths: array<u32>;
@group(0) @binding(4) var<storage, read_write> state: array<f32>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;

// Row-major tiles, rows padded to a multiple of 4 (tp = max(TILE, 4)) and
// widths to multiples of 4 (dp, lp), padding zero:
// K [tp, dp] | V [tp, dp] | Q [tp, dp] | A [tp, lp] | PC [tp, dp], later e [tp, lp] | M [tp, tp] | 1/(rowsum t) [tp]
var<workgroup> pool: array<f32, POOL>;
var<workgroup> seq_len: u32;

// ln(1 + 2^z) / ln 2 without overflow, accurate at both ends (as in causal.wgsl).
fn softplus_ln2(z: f32) -> f32 {
    let xz = z * LN2;
    if (xz > 15.0) {
        return z + exp(-xz) / LN2;
    }
    if (xz < -15.0) {
        return exp(xz) / LN2;
    }
    return log(1.0 + exp(xz)) / LN2;
}

// Four pool values down a column (`stride` apart) and along a row.
fn col4(i: u32, stride: u32) -> vec4<f32> {
    return vec4<f32>(pool[i], pool[i + stride], pool[i + 2u * stride], pool[i + 3u * stride]);
}
fn row4(i: u32) -> vec4<f32> {
    return vec4<f32>(pool[i], pool[i + 1u], pool[i + 2u], pool[i + 3u]);
}

// Every product below is a 4x4 block per thread: per step of the inner
// dimension 8 loads feed 16 fmas, and the loops have workgroup-uniform bounds.
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
    let dh = p.head_dim;
    let l = p.proj_len;
    let col = h * dh;
    let sk = id * 2u * l * dh;
    let sv = sk + l * dh;
    let tp = max(TILE, 4u);
    let dp = (dh + 3u) & ~3u;
    let lp = (l + 3u) & ~3u;
    let tq = tp / 4u;
    let dq = dp / 4u;
    let lq = lp / 4u;
    // Offsets into the pool.
    let o_v = tp * dp;
    let o_q = 2u * tp * dp;
    let o_a = 3u * tp * dp;
    let o_u = o_a + tp * lp;
    let o_m = o_u + tp * max(dp, lp);
    let o_rs = o_m + tp * tp;

    if (tid == 0u) {
        seq_len = lengths[b];
    }
    let len = workgroupUniformLoad(&seq_len);
    let start = c * p.chunk;
    let stop = min(min(start + p.chunk, p.rows), len);
    if (!EMIT) {
        // Chunk sums start from zero; each thread later adds to the entries it zeroes here.
        for (var blk = tid; blk < lq * dq; blk += WG) {
            let j0 = (blk / dq) * 4u;
            let r0 = (blk % dq) * 4u;
            for (var a = 0u; a < 4u; a++) {
                for (var e = 0u; e < 4u; e++) {
                    if (j0 + a < l && r0 + e < dh) {
                        state[sk + (j0 + a) * dh + r0 + e] = 0.0;
                        state[sv + (j0 + a) * dh + r0 + e] = 0.0;
                    }
                }
            }
        }
    }

    for (var t0 = start; t0 < stop; t0 += TILE) {
        // Tiles of K, V, PC (and Q), zero past the valid tokens and past dh.
        for (var i = tid; i < tp * dp; i += WG) {
            let t = i / dp;
            let r = i % dp;
            var kv = vec4<f32>(0.0);
            if (t < TILE && t0 + t < stop && r < dh) {
                let xb = (b * p.rows + t0 + t) * p.x_stride + col + r;
                kv = vec4<f32>(x[xb + p.k_off], x[xb + p.v_off], x[xb + p.pc_off], 0.0);
                if (EMIT) {
                    kv.w = x[xb + p.q_off];
                }
            }
            pool[i] = kv.x;
            pool[o_v + i] = kv.y;
            pool[o_u + i] = kv.z;
            if (EMIT) {
                pool[o_q + i] = kv.w;
            }
        }
        workgroupBarrier();
        // A = softplus_ln2(PC Qp^T), zero on invalid tokens and past l.
        for (var blk = tid; blk < tq * lq; blk += WG) {
            let t4 = (blk % tq) * 4u;
            let j4 = (blk / tq) * 4u;
            var qrow = vec4<u32>(0u);
            for (var c4 = 0u; c4 < 4u; c4++) {
                qrow[c4] = min(j4 + c4, l - 1u) * p.qp_stride + col;
            }
            var acc: array<vec4<f32>, 4>;
            for (var r = 0u; r < dh; r++) {
                let pc = col4(o_u + t4 * dp + r, dp);
                let q = vec4<f32>(qp[qrow.x + r], qp[qrow.y + r], qp[qrow.z + r], qp[qrow.w + r]);
                for (var a = 0u; a < 4u; a++) {
                    acc[a] = fma(vec4<f32>(pc[a]), q, acc[a]);
                }
            }
            for (var a = 0u; a < 4u; a++) {
                let t = t4 + a;
                let ok = t < TILE && t0 + t < stop;
                for (var e = 0u; e < 4u; e++) {
                    pool[o_a + t * lp + j4 + e] = select(0.0, softplus_ln2(acc[a][e]), ok && j4 + e < l);
                }
            }
        }
        if (EMIT) {
            // M = mask_{s<=t}(Q K^T).
            for (var blk = tid; blk < tq * tq; blk += WG) {
                let t4 = (blk / tq) * 4u;
                let s4 = (blk % tq) * 4u;
                var acc: array<vec4<f32>, 4>;
                if (s4 <= t4) {
                    for (var r = 0u; r < dh; r++) {
                        let q = col4(o_q + t4 * dp + r, dp);
                        let k = col4(s4 * dp + r, dp);
                        for (var a = 0u; a < 4u; a++) {
                            acc[a] = fma(vec4<f32>(q[a]), k, acc[a]);
                        }
                    }
                }
                for (var a = 0u; a < 4u; a++) {
                    for (var e = 0u; e < 4u; e++) {
                        pool[o_m + (t4 + a) * tp + s4 + e] = select(0.0, acc[a][e], s4 + e <= t4 + a);
                    }
                }
            }
            workgroupBarrier();
            // Scores (Q Sk0^T + M A) / t, into the PC area (PC is spent).
            for (var blk = tid; blk < tq * lq; blk += WG) {
                let t4 = (blk % tq) * 4u;
                let j4 = (blk / tq) * 4u;
                var srow = vec4<u32>(0u);
                for (var c4 = 0u; c4 < 4u; c4++) {
                    srow[c4] = sk + min(j4 + c4, l - 1u) * dh;
                }
                var acc: array<vec4<f32>, 4>;
                for (var r = 0u; r < dh; r++) {
                    let q = col4(o_q + t4 * dp + r, dp);
                    let s = vec4<f32>(state[srow.x + r], state[srow.y + r], state[srow.z + r], state[srow.w + r]);
                    for (var a = 0u; a < 4u; a++) {
                        acc[a] = fma(vec4<f32>(q[a]), s, acc[a]);
                    }
                }
                for (var s = 0u; s < tp; s++) {
                    let m = col4(o_m + t4 * tp + s, tp);
                    let av = row4(o_a + s * lp + j4);
                    for (var a = 0u; a < 4u; a++) {
                        acc[a] = fma(vec4<f32>(m[a]), av, acc[a]);
                    }
                }
                for (var a = 0u; a < 4u; a++) {
                    let inv_t = 1.0 / f32(p.t_base + t0 + t4 + a + 1u);
                    for (var e = 0u; e < 4u; e++) {
                        pool[o_u + (t4 + a) * lp + j4 + e] = acc[a][e] * inv_t;
                    }
                }
            }
            workgroupBarrier();
            // Row softmax over the l real columns, left unnormalised: e, and 1 / (rowsum t).
            for (var t = tid; t < tp; t += WG) {
                var m = -3.0e38;
                for (var j = 0u; j < l; j++) {
                    m = max(m, pool[o_u + t * lp + j]);
                }
                var sum = 0.0;
                for (var j = 0u; j < lp; j++) {
                    let e = select(0.0, exp(pool[o_u + t * lp + j] - m), j < l);
                    pool[o_u + t * lp + j] = e;
                    sum += e;
                }
                pool[o_rs + t] = 1.0 / (f32(p.t_base + t0 + t + 1u) * sum);
            }
            workgroupBarrier();
            // M' = mask_{s<=t}(e A^T), over M.
            for (var blk = tid; blk < tq * tq; blk += WG) {
                let t4 = (blk / tq) * 4u;
                let s4 = (blk % tq) * 4u;
                var acc: array<vec4<f32>, 4>;
                if (s4 <= t4) {
                    for (var j = 0u; j < lp; j++) {
                        let e = col4(o_u + t4 * lp + j, lp);
                        let av = col4(o_a + s4 * lp + j, lp);
                        for (var a = 0u; a < 4u; a++) {
                            acc[a] = fma(vec4<f32>(e[a]), av, acc[a]);
                        }
                    }
                }
                for (var a = 0u; a < 4u; a++) {
                    for (var e = 0u; e < 4u; e++) {
                        pool[o_m + (t4 + a) * tp + s4 + e] = select(0.0, acc[a][e], s4 + e <= t4 + a);
                    }
                }
            }
            workgroupBarrier();
            // O = (e Sv0 + M' V) / (rowsum t): lanes along dh, so Sv0 rows are read in order.
            for (var blk = tid; blk < tq * dq; blk += WG) {
                let r4 = (blk % dq) * 4u;
                let t4 = (blk / dq) * 4u;
                let rc = min(r4, dh - 1u);
                var acc: array<vec4<f32>, 4>;
                for (var j = 0u; j < l; j++) {
                    let e = col4(o_u + t4 * lp + j, lp);
                    let i = sv + j * dh;
                    let s = vec4<f32>(state[i + rc], state[i + min(r4 + 1u, dh - 1u)],
                                      state[i + min(r4 + 2u, dh - 1u)], state[i + min(r4 + 3u, dh - 1u)]);
                    for (var a = 0u; a < 4u; a++) {
                        acc[a] = fma(vec4<f32>(e[a]), s, acc[a]);
                    }
                }
                for (var s = 0u; s < tp; s++) {
                    let m = col4(o_m + t4 * tp + s, tp);
                    let v = row4(o_v + s * dp + r4);
                    for (var a = 0u; a < 4u; a++) {
                        acc[a] = fma(vec4<f32>(m[a]), v, acc[a]);
                    }
                }
                for (var a = 0u; a < 4u; a++) {
                    let t = t4 + a;
                    if (t < TILE && t0 + t < stop) {
                        let ob = (b * p.rows + t0 + t) * p.o_stride + col;
                        let scale = pool[o_rs + t];
                        for (var e = 0u; e < 4u; e++) {
                            if (r4 + e < dh) {
                                o[ob + r4 + e] = acc[a][e] * scale;
                            }
                        }
                    }
                }
            }
            // Everyone has read Sv0 before it grows.
            storageBarrier();
        } else {
            workgroupBarrier();
        }
        // State += A^T [K V]; each thread owns the same entries on every tile.
        // The emitting pass needs it only for the chunk's next tile: after the
        // last one the block is left as it is (a sequence's final state comes
        // out of causal_scan.wgsl's carry, not from here).
        let more = t0 + TILE < stop;
        for (var blk = tid; blk < select(0u, lq * dq, !EMIT || more); blk += WG) {
            let j4 = (blk / dq) * 4u;
            let r4 = (blk % dq) * 4u;
            var ak: array<vec4<f32>, 4>;
            var av: array<vec4<f32>, 4>;
            for (var s = 0u; s < tp; s++) {
                let a = row4(o_a + s * lp + j4);
                let k = row4(s * dp + r4);
                let v = row4(o_v + s * dp + r4);
                for (var i = 0u; i < 4u; i++) {
                    ak[i] = fma(vec4<f32>(a[i]), k, ak[i]);
                    av[i] = fma(vec4<f32>(a[i]), v, av[i]);
                }
            }
            for (var i = 0u; i < 4u; i++) {
                for (var e = 0u; e < 4u; e++) {
                    if (j4 + i < l && r4 + e < dh) {
                        let at = (j4 + i) * dh + r4 + e;
                        state[sk + at] += ak[i][e];
                        state[sv + at] += av[i][e];
                    }
                }
            }
        }
        // The next tile overwrites the tiles, and (with EMIT) reads the new state.
        if (EMIT) {
            storageBarrier();
        }
        workgroupBarrier();
    }
}
