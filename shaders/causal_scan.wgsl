// Turns per-chunk state sums into exclusive prefix sums over the chunks of
// each sequence, in place: block c then holds the state before chunk c.
// One thread per (batch, head, state entry), walking the chunks in order.
// Math: docs/luna.md, "Causal attention" (the parallel form, segments). Recorded by kernels::causal::parallel.

struct Params {
    chunks: u32,
    heads: u32,
    block: u32,   // floats per (chunk, head) block: 2 * l * head_dim
    total: u32,   // batch * heads * block
}

// With CARRY, the scan starts from the state a previous segment of the same
// sequence left in `carry` ([batch][heads][block]) and leaves there the state
// after this segment's last chunk, so a long sequence can run segment by
// segment with memory that does not grow with its length.
override CARRY: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> state: array<f32>;
@group(0) @binding(2) var<storage, read_write> carry: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 64u;
    if (id >= p.total) {
        return;
    }
    let e = id % p.block;
    let bh = id / p.block;
    let h = bh % p.heads;
    let b = bh / p.heads;
    var running = 0.0;
    if (CARRY) {
        running = carry[bh * p.block + e];
    }
    for (var c = 0u; c < p.chunks; c++) {
        let i = ((b * p.chunks + c) * p.heads + h) * p.block + e;
        let s = state[i];
        state[i] = running;
        running += s;
    }
    if (CARRY) {
        carry[bh * p.block + e] = running;
    }
}
