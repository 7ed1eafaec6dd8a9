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
// starts as the chunk's prefix and ends as the state after the chunk's last
// valid token, as with causal.wgsl (which serves the streaming form and the
// shapes whose tiles do not fit the pool below).
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

const WG: u32 = 256u;
// Floats of workgroup memory: 15.75 KiB, under WebGPU's default 16 KiB.
const POOL: u32 = 4032u;
const LN2: f32 = 0.69314718055994531;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> qp: array<f32>;
@group(0) @binding(3) var<storage, read> lengths: array<u32>;
@group(0) @binding(4) var<storage, read_write> state: array<f32>;
@group(0) @binding(5) var<storage, read_write> o: array<f32>;

// K [T, dh] | V [T, dh] | Q [T, dh] | A [T, l] | PC [T, dh], later e [T, l] | M [T, T] | 1/(rowsum t) [T]
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
    // Offsets into the pool.
    let o_v = TILE * dh;
    let o_q = 2u * TILE * dh;
    let o_a = 3u * TILE * dh;
    let o_u = o_a + TILE * l;
    let o_m = o_u + TILE * max(dh, l);
    let o_rs = o_m + TILE * TILE;

    if (tid == 0u) {
        seq_len = lengths[b];
    }
    let len = workgroupUniformLoad(&seq_len);
    let start = c * p.chunk;
    let stop = min(min(start + p.chunk, p.rows), len);
    if (!EMIT) {
        // Chunk sums start from zero; each thread later adds to the entries it zeroes here.
        for (var e = tid; e < l * dh; e += WG) {
            state[sk + e] = 0.0;
            state[sv + e] = 0.0;
        }
    }

    for (var t0 = start; t0 < stop; t0 += TILE) {
        // Tiles of K, V, PC (and Q), zero on rows past the valid tokens.
        for (var i = tid; i < TILE * dh; i += WG) {
            let t = i / dh;
            let r = i % dh;
            var kv = vec4<f32>(0.0);
            if (t0 + t < stop) {
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
        // A (lanes along tokens, so a Qp row is read once per group of lanes).
        for (var i = tid; i < TILE * l; i += WG) {
            let t = i % TILE;
            let j = i / TILE;
            var dot = 0.0;
            for (var r = 0u; r < dh; r++) {
                dot = fma(pool[o_u + t * dh + r], qp[j * p.qp_stride + col + r], dot);
            }
            pool[o_a + t * l + j] = select(0.0, softplus_ln2(dot), t0 + t < stop);
        }
        if (EMIT) {
            // M = mask(Q K^T).
            for (var i = tid; i < TILE * TILE; i += WG) {
                let s = i % TILE;
                let t = i / TILE;
                var dot = 0.0;
                if (s <= t) {
                    for (var r = 0u; r < dh; r++) {
                        dot = fma(pool[o_q + t * dh + r], pool[s * dh + r], dot);
                    }
                }
                pool[o_m + i] = dot;
            }
            workgroupBarrier();
            // Scores, into the PC area (PC is spent).
            for (var i = tid; i < TILE * l; i += WG) {
                let t = i % TILE;
                let j = i / TILE;
                var dot = 0.0;
                for (var r = 0u; r < dh; r++) {
                    dot = fma(pool[o_q + t * dh + r], state[sk + j * dh + r], dot);
                }
                for (var s = 0u; s < TILE; s++) {
                    dot = fma(pool[o_m + t * TILE + s], pool[o_a + s * l + j], dot);
                }
                pool[o_u + t * l + j] = dot / f32(p.t_base + t0 + t + 1u);
            }
            workgroupBarrier();
            // Row softmax, left unnormalised: e and 1 / (rowsum · t).
            for (var t = tid; t < TILE; t += WG) {
                var m = -3.0e38;
                for (var j = 0u; j < l; j++) {
                    m = max(m, pool[o_u + t * l + j]);
                }
                var sum = 0.0;
                for (var j = 0u; j < l; j++) {
                    let e = exp(pool[o_u + t * l + j] - m);
                    pool[o_u + t * l + j] = e;
                    sum += e;
                }
                pool[o_rs + t] = 1.0 / (f32(p.t_base + t0 + t + 1u) * sum);
            }
            workgroupBarrier();
            // M' = mask(e A^T), over M.
            for (var i = tid; i < TILE * TILE; i += WG) {
                let s = i % TILE;
                let t = i / TILE;
                var dot = 0.0;
                if (s <= t) {
                    for (var j = 0u; j < l; j++) {
                        dot = fma(pool[o_u + t * l + j], pool[o_a + s * l + j], dot);
                    }
                }
                pool[o_m + i] = dot;
            }
            workgroupBarrier();
            // O (lanes along dh: rows of Sv, V and O are read and written in order).
            for (var i = tid; i < TILE * dh; i += WG) {
                let r = i % dh;
                let t = i / dh;
                var acc = 0.0;
                for (var j = 0u; j < l; j++) {
                    acc = fma(pool[o_u + t * l + j], state[sv + j * dh + r], acc);
                }
                for (var s = 0u; s < TILE; s++) {
                    acc = fma(pool[o_m + t * TILE + s], pool[o_v + s * dh + r], acc);
                }
                if (t0 + t < stop) {
                    o[(b * p.rows + t0 + t) * p.o_stride + col + r] = acc * pool[o_rs + t];
                }
            }
            // Everyone has read Sv0 before it grows.
            storageBarrier();
        } else {
            workgroupBarrier();
        }
        // State += A^T [K V]; each thread owns the same entries on every tile.
        for (var e = tid; e < l * dh; e += WG) {
            let j = e / dh;
            let r = e % dh;
            var ak = 0.0;
            var av = 0.0;
            for (var s = 0u; s < TILE; s++) {
                let a = pool[o_a + s * l + j];
                ak = fma(a, pool[s * dh + r], ak);
                av = fma(a, pool[o_v + s * dh + r], av);
            }
            state[sk + e] += ak;
            state[sv + e] += av;
        }
        // The next tile overwrites the tiles, and (with EMIT) reads the new state.
        if (EMIT) {
            storageBarrier();
        }
        workgroupBarrier();
    }
}
