// Causal Luna attention in chunkwise matrix form (docs/luna.md, "Causal
// attention", the parallel form). One workgroup per (batch, chunk, head); it
// walks its chunk in tiles of TILE tokens (up to 64). For a tile with rows t
// and the prefix state (Sk0, Sv0) (both [l, dh]):
//   A     = softplus_ln2(PC · Qp^T)                               [T, l]
//   score = (Q · Sk0^T + mask_{s<=t}(Q · K^T) · A) / t            [T, l]
//   e     = exp(score - rowmax) ;  alpha = e / rowsum
//   O     = (e · Sv0 + mask_{s<=t}(e · A^T) · V) / rowsum / t     [T, dh]
//   Sk0  += A^T · K ;  Sv0 += A^T · V
// Without EMIT only A and the state sums are formed, from a zero state: the
// chunk sums that causal_scan.wgsl turns into prefixes. With EMIT the block
// starts as the chunk's prefix and grows tile by tile up to the chunk's last
// tile, whose own terms are never added (nothing reads them: a sequence's final
// state is causal_scan.wgsl's carry). causal.wgsl serves the shapes this one
// does not take (kernels::causal::tile).
// With DECAY (docs/luna.md, "Local context"), head h's sums shrink by gamma
// per token: row t (of the tile, from 0) sees gamma^(t+1) Sk0 and gamma^(t-s)
// of row s's terms, 1/t becomes 1/Z_t, and the state grows as
// Sk0 = gamma^T Sk0 + sum_s gamma^(T-1-s) A_s K_s (a chunk's sums end decayed
// to its last token, as causal_scan.wgsl expects).
// Tokens at or past a sequence's length, or past `rows`, get a = 0 and no output.
// Recorded by kernels::causal::parallel.
//
// Shaped for what a SIMD software adapter (llvmpipe) makes costly: every load
// from a buffer or workgroup memory is a per-lane one, whether or not its
// address is the same for all lanes, and a vec4 costs about twice a float. So
// every operand is read in vec4s (DH and the buffers' strides are multiples of
// 4), and each thread owns RB whole token rows: a vec4 read of K, V, Qp, the
// state or A then feeds RB rows' multiply-adds, the scores and the softmax
// stay in the thread's registers, and the loops over a row's columns have
// bounds the pipeline fixes (DH, L), so they unroll. Only A (shared by every
// row) and per-row scratch go through workgroup memory. A tile costs two
// barriers (when emitting, three more if the chunk has a tile after it).
//
// Every accumulator is declared with an explicit zero value (`= array<...>()`),
// not left to WGSL's implicit zeroing: in Chromium (Tint, SwiftShader) a `var`
// declared without one inside a loop was zeroed once, not on each iteration, so
// the pack weights summed over the slots (docs/luna.md, "The parallel form:
// chunks").

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
override DECAY: bool = false;
// Tokens per tile: the host picks the largest power of two up to 64 (and up to
// the chunk) whose arrays fit POOL4 (kernels::causal::tile).
override TILE: u32 = 64u;
// The head width (a multiple of 4, up to 4 MAX_DQ) and l (up to 4 MAX_LQ).
override DH: u32 = 48u;
override L: u32 = 32u;

const WG: u32 = 64u;
// Token rows per thread.
const RB: u32 = 2u;
const MAX_DQ: u32 = 32u;
const MAX_LQ: u32 = 32u;
// vec4s of workgroup memory: 16 KiB, WebGPU's default limit.
const POOL4: u32 = 1024u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> qp: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> lengths: array<u32>;
@group(0) @binding(4) var<storage, read_write> state: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> o: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> decay: array<f32>;

// A [TILE, lq] | W [TILE, lq] (each row its thread's: Q Sk0^T, then e), in vec4s
// of columns; padding columns zero.
var<workgroup> pool: array<vec4<f32>, POOL4>;

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
    let dq = DH / 4u;
    let lq = (L + 3u) / 4u;
    let col4 = h * dq;
    let xs4 = p.x_stride / 4u;
    let sk4 = id * 2u * L * dq;
    let sv4 = sk4 + L * dq;
    let o_w = TILE * lq;          // W's offset in the pool
    let last = p.rows - 1u;
    let nb = (TILE + RB - 1u) / RB; // row blocks of a tile
    let ns = 2u * lq;              // state summers: (K or V) x 4 rows of l

    // A read-only storage load at a workgroup-uniform index is uniform, so the
    // barriers below stay in uniform control flow. (Passing the length through
    // the float pool by bitcast, as this once did, makes a small length a
    // subnormal float, which adapters that flush subnormals turn into 0.)
    let len = lengths[b];
    let start = c * p.chunk;
    let stop = min(min(start + p.chunk, p.rows), len);
    // This thread's share of the tile's A^T K (tid < lq) or A^T V: rows 4 jb .. 4 jb + 3.
    var acc = array<array<vec4<f32>, MAX_DQ>, 4>();
    var lg = 0.0;
    if (DECAY) {
        lg = decay[p.heads + h];
    }

    for (var t0 = start; t0 < stop; t0 += TILE) {
        let n_s = min(TILE, stop - t0);
        // A (and with EMIT, Q Sk0^T into W) for rows RB blk .. RB blk + RB - 1.
        for (var blk = tid; blk < nb; blk += WG) {
            var pc: array<array<vec4<f32>, MAX_DQ>, RB>;
            var q: array<array<vec4<f32>, MAX_DQ>, RB>;
            for (var i = 0u; i < RB; i++) {
                let xi = (b * p.rows + min(t0 + blk * RB + i, last)) * xs4 + col4;
                for (var r4 = 0u; r4 < dq; r4++) {
                    pc[i][r4] = x[xi + p.pc_off / 4u + r4];
                    if (EMIT) {
                        q[i][r4] = x[xi + p.q_off / 4u + r4];
                    }
                }
            }
            for (var j = 0u; j < 4u * lq; j++) {
                let jc = min(j, L - 1u);
                let qi = (jc * p.qp_stride) / 4u + col4;
                let si = sk4 + jc * dq;
                var da = array<f32, RB>();
                var ds = array<f32, RB>();
                for (var r4 = 0u; r4 < dq; r4++) {
                    let w = qp[qi + r4];
                    var s = vec4<f32>(0.0);
                    if (EMIT) {
                        s = state[si + r4];
                    }
                    for (var i = 0u; i < RB; i++) {
                        da[i] += dot(pc[i][r4], w);
                        if (EMIT) {
                            ds[i] += dot(q[i][r4], s);
                        }
                    }
                }
                for (var i = 0u; i < RB; i++) {
                    let t = blk * RB + i;
                    if (t < TILE) {
                        let ok = t < n_s && j < L;
                        pool[t * lq + j / 4u][j % 4u] = select(0.0, softplus_ln2(da[i]), ok);
                        if (EMIT) {
                            pool[o_w + t * lq + j / 4u][j % 4u] = select(0.0, ds[i], j < L);
                        }
                    }
                }
            }
        }
        workgroupBarrier();
        if (EMIT) {
            emit_rows(tid, b, t0, n_s, col4, xs4, sv4, nb, lg);
        }
        // State sums: thread jb (< lq) sums rows 4 jb .. 4 jb + 3 of A^T K, thread lq + jb of A^T V.
        let more = t0 + TILE < stop;
        if (!EMIT || more) {
            for (var th = tid; th < ns; th += WG) {
                let jb = th % lq;
                let off = select(p.k_off, p.v_off, th >= lq) / 4u;
                if (EMIT) {
                    for (var a = 0u; a < 4u; a++) {
                        for (var r4 = 0u; r4 < dq; r4++) {
                            acc[a][r4] = vec4<f32>(0.0);
                        }
                    }
                } else if (DECAY) {
                    // The sums so far, decayed past this tile's tokens.
                    let f = decay_pow(lg, f32(n_s));
                    for (var a = 0u; a < 4u; a++) {
                        for (var r4 = 0u; r4 < dq; r4++) {
                            acc[a][r4] *= f;
                        }
                    }
                }
                for (var s = 0u; s < n_s; s++) {
                    var av = pool[s * lq + jb];
                    if (DECAY) {
                        av *= decay_pow(lg, f32(n_s - 1u - s));
                    }
                    let xi = (b * p.rows + t0 + s) * xs4 + col4 + off;
                    for (var r4 = 0u; r4 < dq; r4++) {
                        let kv = x[xi + r4];
                        for (var a = 0u; a < 4u; a++) {
                            acc[a][r4] = fma(vec4<f32>(av[a]), kv, acc[a][r4]);
                        }
                    }
                }
            }
        }
        if (EMIT && more) {
            // Everyone has read Sk0 and Sv0 before they grow.
            storageBarrier();
            workgroupBarrier();
            // (a tile that has one after it is whole: TILE tokens)
            let f = select(1.0, decay_pow(lg, f32(TILE)), DECAY);
            for (var th = tid; th < ns; th += WG) {
                let jb = th % lq;
                let base = select(sk4, sv4, th >= lq);
                for (var a = 0u; a < 4u; a++) {
                    if (4u * jb + a < L) {
                        for (var r4 = 0u; r4 < dq; r4++) {
                            let si = base + (4u * jb + a) * dq + r4;
                            state[si] = fma(vec4<f32>(f), state[si], acc[a][r4]);
                        }
                    }
                }
            }
            storageBarrier();
        }
        // The next tile overwrites A and W (and with EMIT reads the grown state).
        workgroupBarrier();
    }
    if (!EMIT) {
        for (var th = tid; th < ns; th += WG) {
            let jb = th % lq;
            let base = select(sk4, sv4, th >= lq);
            for (var a = 0u; a < 4u; a++) {
                if (4u * jb + a < L) {
                    for (var r4 = 0u; r4 < dq; r4++) {
                        state[base + (4u * jb + a) * dq + r4] = acc[a][r4];
                    }
                }
            }
        }
    }
}

// Scores, softmax and outputs of rows RB blk .. RB blk + RB - 1 of a tile, by
// thread blk; W holds Q Sk0^T for them on entry.
fn emit_rows(tid: u32, b: u32, t0: u32, n_s: u32, col4: u32, xs4: u32, sv4: u32, nb: u32, lg: f32) {
    let dq = DH / 4u;
    let lq = (L + 3u) / 4u;
    let o_w = TILE * lq;
    let last = p.rows - 1u;
    for (var blk = tid; blk < nb; blk += WG) {
        let r0 = blk * RB;
        var q: array<array<vec4<f32>, MAX_DQ>, RB>;
        var sc: array<array<vec4<f32>, MAX_LQ>, RB>;
        for (var i = 0u; i < RB; i++) {
            let xi = (b * p.rows + min(t0 + r0 + i, last)) * xs4 + col4 + p.q_off / 4u;
            for (var r4 = 0u; r4 < dq; r4++) {
                q[i][r4] = x[xi + r4];
            }
            let wi = o_w + min(r0 + i, TILE - 1u) * lq;
            // (the prefix state, decayed to row r0 + i)
            let f = select(1.0, decay_pow(lg, f32(r0 + i + 1u)), DECAY);
            for (var j4 = 0u; j4 < lq; j4++) {
                sc[i][j4] = pool[wi + j4] * f;
            }
        }
        // + mask(Q K^T) A, over the tokens s <= the block's last row.
        let s_end = min(n_s, r0 + RB);
        for (var s = 0u; s < s_end; s++) {
            let ki = (b * p.rows + t0 + s) * xs4 + col4 + p.k_off / 4u;
            var m = array<f32, RB>();
            for (var r4 = 0u; r4 < dq; r4++) {
                let kv = x[ki + r4];
                for (var i = 0u; i < RB; i++) {
                    m[i] += dot(q[i][r4], kv);
                }
            }
            for (var i = 0u; i < RB; i++) {
                m[i] = select(0.0, m[i], s <= r0 + i);
                if (DECAY) {
                    m[i] *= decay_pow(lg, max(f32(r0 + i) - f32(s), 0.0));
                }
            }
            for (var j4 = 0u; j4 < lq; j4++) {
                let av = pool[s * lq + j4];
                for (var i = 0u; i < RB; i++) {
                    sc[i][j4] = fma(vec4<f32>(m[i]), av, sc[i][j4]);
                }
            }
        }
        // Softmax over the l real columns, left unnormalised: e (into W too), and the row scale.
        var scale: array<f32, RB>;
        for (var i = 0u; i < RB; i++) {
            var inv_t = 1.0 / f32(p.t_base + t0 + r0 + i + 1u);
            if (DECAY) {
                inv_t = 1.0 / decayed_count(lg, f32(p.t_base + t0 + r0 + i + 1u));
            }
            var mx = -3.0e38;
            for (var j4 = 0u; j4 < lq; j4++) {
                sc[i][j4] *= inv_t;
                for (var e = 0u; e < 4u; e++) {
                    if (4u * j4 + e < L) {
                        mx = max(mx, sc[i][j4][e]);
                    }
                }
            }
            var sum = 0.0;
            for (var j4 = 0u; j4 < lq; j4++) {
                var v = exp(sc[i][j4] - vec4<f32>(mx));
                for (var e = 0u; e < 4u; e++) {
                    if (4u * j4 + e >= L) {
                        v[e] = 0.0;
                    }
                }
                sc[i][j4] = v;
                sum += v.x + v.y + v.z + v.w;
            }
            scale[i] = inv_t / sum;
            if (r0 + i < TILE) {
                for (var j4 = 0u; j4 < lq; j4++) {
                    pool[o_w + (r0 + i) * lq + j4] = sc[i][j4];
                }
            }
        }
        // O = e Sv0 + mask(e A^T) V.
        var out = array<array<vec4<f32>, MAX_DQ>, RB>();
        for (var j = 0u; j < L; j++) {
            var ej = array<f32, RB>();
            for (var i = 0u; i < RB; i++) {
                ej[i] = pool[o_w + min(r0 + i, TILE - 1u) * lq + j / 4u][j % 4u];
            }
            let si = sv4 + j * dq;
            for (var r4 = 0u; r4 < dq; r4++) {
                let sv = state[si + r4];
                for (var i = 0u; i < RB; i++) {
                    out[i][r4] = fma(vec4<f32>(ej[i]), sv, out[i][r4]);
                }
            }
        }
        if (DECAY) {
            for (var i = 0u; i < RB; i++) {
                let f = decay_pow(lg, f32(r0 + i + 1u));
                for (var r4 = 0u; r4 < dq; r4++) {
                    out[i][r4] *= f;
                }
            }
        }
        for (var s = 0u; s < s_end; s++) {
            var m = array<f32, RB>();
            for (var j4 = 0u; j4 < lq; j4++) {
                let av = pool[s * lq + j4];
                for (var i = 0u; i < RB; i++) {
                    m[i] += dot(sc[i][j4], av);
                }
            }
            for (var i = 0u; i < RB; i++) {
                m[i] = select(0.0, m[i], s <= r0 + i);
                if (DECAY) {
                    m[i] *= decay_pow(lg, max(f32(r0 + i) - f32(s), 0.0));
                }
            }
            let vi = (b * p.rows + t0 + s) * xs4 + col4 + p.v_off / 4u;
            for (var r4 = 0u; r4 < dq; r4++) {
                let vv = x[vi + r4];
                for (var i = 0u; i < RB; i++) {
                    out[i][r4] = fma(vec4<f32>(m[i]), vv, out[i][r4]);
                }
            }
        }
        for (var i = 0u; i < RB; i++) {
            let t = r0 + i;
            if (t < n_s) {
                let ob = ((b * p.rows + t0 + t) * p.o_stride) / 4u + col4;
                for (var r4 = 0u; r4 < dq; r4++) {
                    o[ob + r4] = out[i][r4] * scale[i];
                }
            }
        }
    }
}
