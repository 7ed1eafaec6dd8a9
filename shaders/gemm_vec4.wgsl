// GEMM with fused epilogue, K read in vec4s:  C[M,N] = act(A[M,K] · W[N,K]^T + bias[N]) (+ R[M,N])
// Needs K % 4 == 0 (rows of A and W then start on 16-byte boundaries); shaders/gemm.wgsl
// serves every other K. W's element type WVec comes from gemm_f32.wgsl or gemm_f16.wgsl. Two entry points:
// - `main`: no workgroup memory and no barriers. Each thread keeps a TR-row by TC-column
//   block of C in registers (TR, TC up to 8) and walks K once, reading TR vec4s of A and
//   TC vec4s of W per step of 4: (TR + TC) loads for 4·TR·TC multiply-adds. Rows and
//   columns past M and N are read clamped to the last one (always in bounds) and never
//   written. TR and TC are override constants, so the loops over them have constant
//   bounds once the pipeline is built and the compiler unrolls them into registers.
// - `gemv` and `gemv_split`: for up to 4 rows (a decode step, a short prefill). One
//   thread, or SPLIT threads, an output column, each reading (every SPLIT-th) vec4 of its
//   W row for the ROWS rows of A at once; `gemv_split` sums the partials through
//   workgroup memory.
// Recorded by kernels::gemm::record, which picks the variant (TR, TC, WG_X, WG_Y, SPLIT).

struct Params {
    m: u32,
    n: u32,
    k4: u32,      // K / 4
    row_base: u32, // first row of this dispatch (`main` splits tall matrices over dispatches)
}

override WG_X: u32 = 8u;
override WG_Y: u32 = 8u;
// Threads per output column in `gemv` (a power of two dividing WG_X).
override SPLIT: u32 = 1u;
// Rows of A that `gemv` reads (1 to 4, at least M): a specialisation constant rather than
// a branch on M, which costs llvmpipe more than the dot products it would save.
override ROWS: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<WVec>; // WVec: vec4<f32> or vec4<f16>
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> res: array<f32>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;

// Four weights, as float32 whatever W is stored in.
fn wv(i: u32) -> vec4<f32> {
    return vec4<f32>(w[i]);
}

// One column's dot products with up to 4 rows of A (`gemv`).
fn dots(x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>, y: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(dot(x0, y), dot(x1, y), dot(x2, y), dot(x3, y));
}

// The gemv's outputs: column `col` of the ROWS rows.
fn put_column(col: u32, v: vec4<f32>) {
    put(0u, col, v.x);
    if (ROWS > 1u) {
        put(1u, col, v.y);
    }
    if (ROWS > 2u) {
        put(2u, col, v.z);
    }
    if (ROWS > 3u) {
        put(3u, col, v.w);
    }
}

const MAX_R: u32 = 8u;
const MAX_C: u32 = 8u;
override TR: u32 = 4u;
override TC: u32 = 8u;

@compute @workgroup_size(WG_X, WG_Y, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r0 = p.row_base + gid.y * TR;
    let c0 = gid.x * TC;
    if (r0 >= p.m || c0 >= p.n) {
        return;
    }
    let k4 = p.k4;
    var ar: array<u32, MAX_R>;
    var wr: array<u32, MAX_C>;
    for (var i = 0u; i < TR; i++) {
        ar[i] = min(r0 + i, p.m - 1u) * k4;
    }
    for (var j = 0u; j < TC; j++) {
        wr[j] = min(c0 + j, p.n - 1u) * k4;
    }
    var acc: array<array<f32, MAX_C>, MAX_R>;
    for (var i = 0u; i < TR; i++) {
        for (var j = 0u; j < TC; j++) {
            acc[i][j] = 0.0;
        }
    }
    for (var kk = 0u; kk < k4; kk++) {
        var x: array<vec4<f32>, MAX_R>;
        for (var i = 0u; i < TR; i++) {
            x[i] = a[ar[i] + kk];
        }
        for (var j = 0u; j < TC; j++) {
            let y = wv(wr[j] + kk);
            for (var i = 0u; i < TR; i++) {
                acc[i][j] += dot(x[i], y);
            }
        }
    }
    for (var i = 0u; i < TR; i++) {
        for (var j = 0u; j < TC; j++) {
            put(r0 + i, c0 + j, acc[i][j]);
        }
    }
}

// The gemv's dot products: thread `lane` of SPLIT reads every SPLIT-th vec4 of W row
// `wrow` (an offset in vec4s) and of the ROWS rows of A.
fn gemv_partial(wrow: u32, lane: u32) -> vec4<f32> {
    let k4 = p.k4;
    // Rows of A past ROWS are not read; rows past M repeat the last one (not written).
    let lm = p.m - 1u;
    let a1 = min(1u, lm) * k4;
    let a2 = min(2u, lm) * k4;
    let a3 = min(3u, lm) * k4;
    var acc = vec4<f32>();
    for (var kk = lane; kk < k4; kk += SPLIT) {
        let y = wv(wrow + kk);
        acc.x += dot(a[kk], y);
        if (ROWS > 1u) {
            acc.y += dot(a[a1 + kk], y);
        }
        if (ROWS > 2u) {
            acc.z += dot(a[a2 + kk], y);
        }
        if (ROWS > 3u) {
            acc.w += dot(a[a3 + kk], y);
        }
    }
    return acc;
}

// One thread a column: no workgroup memory, no barrier (llvmpipe runs a shader
// with barriers as coroutines, which costs more than a short gemv).
@compute @workgroup_size(WG_X, 1, 1)
fn gemv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let col = gid.x + gid.y * nwg.x * WG_X;
    if (col < p.n) {
        put_column(col, gemv_partial(col * p.k4, 0u));
    }
}

// Partial sums of `gemv_split`, one vec4 (the up-to-4 rows) per thread.
var<workgroup> partial: array<vec4<f32>, 256>;

// SPLIT threads a column, their partial sums added through workgroup memory.
@compute @workgroup_size(WG_X, 1, 1)
fn gemv_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let col = (wid.x + wid.y * nwg.x) * (WG_X / SPLIT) + tid / SPLIT;
    let lane = tid % SPLIT;
    // Columns past N read the last one (no early return: the barriers below need every thread).
    partial[tid] = gemv_partial(min(col, p.n - 1u) * p.k4, lane);
    workgroupBarrier();
    for (var s = SPLIT / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            partial[tid] += partial[tid + s];
        }
        workgroupBarrier();
    }
    if (lane == 0u) {
        put_column(col, partial[tid]);
    }
}
