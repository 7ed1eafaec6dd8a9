// Turns per-chunk state sums into exclusive prefix sums over the chunks of
// each sequence, in place: block c then holds the state before chunk c.
// One thread per (batch, head, state entry), walking the chunks in order.
// Math: docs/luna.md, "Causal attention" (the parallel form, segments). Recorded by kernels::causal::parallel.

struct Params {
    chunks: u32,
    heads: u32,
    block: u32,   // floats per (chunk, head) block: 2 * l * head_dim
    total: u32,   // batch * heads * block
    rows: u32,    // token rows per sequence
    chunk: u32,   // tokens per chunk
    _pad0: u32,
    _pad1: u32,
}

// With CARRY, the scan starts from the state a previous segment of the same
// sequence left in `carry` ([batch][heads][block]) and leaves there the state
// after this segment's last chunk, so a long sequence can run segment by
// segment with memory that does not grow with its length.
override CARRY: bool = false;
// With DECAY (docs/luna.md, "Local context") each chunk's sums arrive decayed
// to its last token, and the running state shrinks by gamma^(tokens of the
// chunk) before a chunk is added: gamma_h at decay[h], ln(gamma_h) at decay[heads + h].
override DECAY: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> state: array<f32>;
@group(0) @binding(2) var<storage, read_write> carry: array<f32>;
@group(0) @binding(3) var<storage, read> lengths: array<u32>;
@group(0) @binding(4) var<storage, read> decay: array<f32>;

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
    var lg = 0.0;
    var end = 0u;
    if (DECAY) {
        lg = decay[p.heads + h];
        end = min(p.rows, lengths[b]);
    }
    for (var c = 0u; c < p.chunks; c++) {
        let i = ((b * p.chunks + c) * p.heads + h) * p.block + e;
        let s = state[i];
        state[i] = running;
        if (DECAY) {
            // The chunk's tokens: all of them, or those before the sequence's end.
            let n = min(p.chunk, end - min(end, c * p.chunk));
            running *= decay_pow(lg, f32(n));
        }
        running += s;
    }
    if (CARRY) {
        carry[bh * p.block + e] = running;
    }
}
