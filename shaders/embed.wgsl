// Embedding gather:  out[row] = scale * table[ids[row]] + positions[pos[row]]  (positions optional),
// or with ADD_OUT  out[row] = out[row] + scale * table[ids[row]]  (the host wrote
// the row's sinusoid into out, so no position table lives on the GPU),
// rows with a set mask written as zeros (optional; when a LayerNorm follows,
// the LayerNorm kernel zeroes them instead).
// Serves both X (token embeddings + fairseq-offset positions) and P
// (projected_embeddings rows 0..l'-1 + unoffset sinusoid rows).
// Math: docs/luna.md, "The encoder" (positions, X and P). Recorded by kernels::embed::record.

struct Params {
    rows: u32,
    dim: u32,
    scale: f32,
    _pad: u32,
}

override HAS_POS: bool = true;
override ZERO_MASKED: bool = true;
override ADD_OUT: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> pos: array<u32>;
@group(0) @binding(3) var<storage, read> table: array<f32>;
@group(0) @binding(4) var<storage, read> pos_table: array<f32>;
@group(0) @binding(5) var<storage, read> row_mask: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(WG, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    if (ZERO_MASKED && row_mask[row] != 0u) {
        for (var c = tid; c < p.dim; c += WG) {
            out[base + c] = 0.0;
        }
        return;
    }
    let t_base = ids[row] * p.dim;
    let p_base = pos[row] * p.dim;
    for (var c = tid; c < p.dim; c += WG) {
        var v = p.scale * table[t_base + c];
        if (HAS_POS) {
            v += pos_table[p_base + c];
        }
        if (ADD_OUT) {
            v = out[base + c] + v;
        }
        out[base + c] = v;
    }
}
