// Merges the partial softmax states of attention.wgsl's key splits:
//   M = max_s m_s,  L = sum_s l_s e^(m_s - M),  out = sum_s acc_s e^(m_s - M) / L
// One workgroup per (batch, head, query row); threads over the head's columns.
// Math: docs/luna.md, "Pack and unpack". Recorded by kernels::attention::record.

struct Params {
    q_rows: u32,
    heads: u32,
    head_dim: u32,
    splits: u32,
    o_stride: u32,
    total: u32,     // batch * heads * q_rows
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 64u;
const NEG: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> partial: array<f32>;
@group(0) @binding(2) var<storage, read_write> o: array<f32>;

@compute @workgroup_size(WG, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.total) {
        return;
    }
    let hd = p.head_dim;
    let stride = hd + 2u;
    let first = row * p.splits;
    var m = NEG;
    for (var s = 0u; s < p.splits; s++) {
        m = max(m, partial[(first + s) * stride]);
    }
    var l = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        let base = (first + s) * stride;
        let ms = partial[base];
        if (ms > NEG) {
            l += partial[base + 1u] * exp(ms - m);
        }
    }
    let inv = select(0.0, 1.0 / l, l > 0.0);
    let i = row % p.q_rows;
    let bh = row / p.q_rows;
    let h = bh % p.heads;
    let b = bh / p.heads;
    let o_base = (b * p.q_rows + i) * p.o_stride + h * hd;
    for (var c = tid; c < hd; c += WG) {
        var acc = 0.0;
        for (var s = 0u; s < p.splits; s++) {
            let base = (first + s) * stride;
            let ms = partial[base];
            if (ms > NEG) {
                acc = fma(partial[base + 2u + c], exp(ms - m), acc);
            }
        }
        o[o_base + c] = acc * inv;
    }
}
