// Tiled GEMM with fused epilogue:  C[M,N] = act(A[M,K] · W[N,K]^T + bias[N]) (+ R[M,N])
// W is a PyTorch Linear weight ([out, in], row-major), so both operands are read along K.
// A 64x64 output tile per workgroup of 16x16 threads, 4x4 outputs per thread,
// K walked in steps of 16 through workgroup memory. Tails in M, N and K are guarded.
// Math: docs/luna.md, "Notation" (Linear, activations). Recorded by kernels::gemm::record.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> res: array<f32>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> a_tile: array<f32, 1024>; // [TK][TM]
var<workgroup> w_tile: array<f32, 1024>; // [TK][TN]

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = wid.y * TM;
    let col0 = wid.x * TN;
    let tx = lid.x;
    let ty = lid.y;
    let tid = ty * 16u + tx;

    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            acc[i][j] = 0.0;
        }
    }

    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        // 1024 elements of each tile, 4 per thread; consecutive threads read consecutive k.
        for (var e = 0u; e < 4u; e++) {
            let idx = tid + e * 256u;
            let r = idx / TK;
            let kk = idx % TK;
            let gk = k0 + kk;
            let ga = row0 + r;
            var va = 0.0;
            if (ga < p.m && gk < p.k) {
                va = a[ga * p.k + gk];
            }
            a_tile[kk * TM + r] = va;
            let gw = col0 + r;
            var vw = 0.0;
            if (gw < p.n && gk < p.k) {
                vw = w[gw * p.k + gk];
            }
            w_tile[kk * TN + r] = vw;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            var av: array<f32, 4>;
            var wv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = a_tile[kk * TM + ty + 16u * i];
                wv[i] = w_tile[kk * TN + tx + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] = fma(av[i], wv[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            put(row0 + ty + 16u * i, col0 + tx + 16u * j, acc[i][j]);
        }
    }
}

// For a few rows (a decode step): one thread per output element, each walking
// its row of W along K. No tiles, so nothing is computed for rows that do not exist.
@compute @workgroup_size(64, 1, 1)
fn gemv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 64u;
    if (id >= p.m * p.n) {
        return;
    }
    let r = id / p.n;
    let col = id % p.n;
    var acc = 0.0;
    let a0 = r * p.k;
    let w0 = col * p.k;
    for (var kk = 0u; kk < p.k; kk++) {
        acc = fma(a[a0 + kk], w[w0 + kk], acc);
    }
    put(r, col, acc);
}
