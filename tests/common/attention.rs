//! The inputs of an attention-kernel check (tests/kernels.rs, tests/softmax.rs)
//! and the reference's answer. Q sits inside wider rows and K, V side by side
//! in another buffer (as in a fused projection), so that the kernels' strides
//! and offsets are exercised.

use luna_wgpu::init::Rng;
use luna_wgpu::kernels::attention::View;
use luna_wgpu::reference::ops;

/// Random Q `[batch, q_rows, d + 3]` (Q at column 2) and KV `[batch, k_rows,
/// 2d + 1]` (K at column 1, V at column d + 1), with `d = heads * head_dim`.
pub struct Strided {
    pub batch: usize,
    pub q_rows: usize,
    pub k_rows: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub q: Vec<f32>,
    pub kv: Vec<f32>,
}

impl Strided {
    /// Values uniform in [-2, 2): Q drawn first, then KV.
    pub fn random(rng: &mut Rng, batch: usize, q_rows: usize, k_rows: usize, heads: usize, head_dim: usize) -> Strided {
        let mut s = Strided { batch, q_rows, k_rows, heads, head_dim, q: Vec::new(), kv: Vec::new() };
        let [(q_stride, _), (kv_stride, _), _] = s.layout();
        s.q = rng.fill(batch * q_rows * q_stride, 2.0);
        s.kv = rng.fill(batch * k_rows * kv_stride, 2.0);
        s
    }

    pub fn d(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The score scale, `head_dim^-0.5`.
    pub fn scale(&self) -> f64 {
        (self.head_dim as f64).powf(-0.5)
    }

    /// `(stride, offset)` of Q in `q`, and of K and V in `kv`.
    fn layout(&self) -> [(usize, usize); 3] {
        let d = self.d();
        [(d + 3, 2), (2 * d + 1, 1), (2 * d + 1, d + 1)]
    }

    /// Q, K and V as views of the uploaded `q` and `kv`.
    pub fn views<'a>(&self, q: &'a wgpu::Buffer, kv: &'a wgpu::Buffer) -> [View<'a>; 3] {
        let [(q_stride, q_off), (kv_stride, k_off), (_, v_off)] = self.layout();
        [
            View { buffer: q, stride: q_stride, offset: q_off },
            View { buffer: kv, stride: kv_stride, offset: k_off },
            View { buffer: kv, stride: kv_stride, offset: v_off },
        ]
    }

    /// The float64 multi-head attention of the reference, `[batch, q_rows, d]`;
    /// `mask[b * k_rows + j] != 0` hides key `j` of sequence `b`.
    pub fn reference(&self, mask: &[u32]) -> Vec<f64> {
        let d = self.d();
        let (q_rows, k_rows) = (self.q_rows, self.k_rows);
        let [(q_stride, q_off), (kv_stride, k_off), (_, v_off)] = self.layout();
        let mut want = Vec::new();
        for b in 0..self.batch {
            let take = |src: &[f32], rows: usize, stride: usize, off: usize| -> Vec<f64> {
                (0..rows).flat_map(|r| (0..d).map(move |c| (r, c))).map(|(r, c)| src[(b * rows + r) * stride + off + c] as f64).collect()
            };
            let mut qb = take(&self.q, q_rows, q_stride, q_off);
            ops::scale(&mut qb, self.scale());
            let kb = take(&self.kv, k_rows, kv_stride, k_off);
            let vb = take(&self.kv, k_rows, kv_stride, v_off);
            let mb: Vec<bool> = mask[b * k_rows..(b + 1) * k_rows].iter().map(|&m| m != 0).collect();
            want.extend(ops::multihead_attention(&qb, &kb, &vb, q_rows, k_rows, d, self.heads, &mb));
        }
        want
    }
}
