//! Float64 building blocks of the reference, one per operation of docs/luna.md.
//! `linear` and the sinusoid rows live in `crate::math` (the engine needs them
//! too) and are re-exported here.

use crate::config::Activation;
pub use crate::math::{linear, sinusoid_row, token_sinusoid_row};
use crate::model::Norm;

/// LayerNorm of every row of width `d`, biased variance.
pub fn layer_norm(x: &[f64], d: usize, norm: &Norm, eps: f64) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for (row, out) in x.chunks(d).zip(y.chunks_mut(d)) {
        let mean = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for k in 0..d {
            out[k] = (row[k] - mean) * inv * norm.weight[k] as f64 + norm.bias[k] as f64;
        }
    }
    y
}

pub fn activation(act: Activation, x: f64) -> f64 {
    match act {
        Activation::Relu => x.max(0.0),
        Activation::Gelu => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
    }
}

/// The error function, to double precision (Abramowitz-Stegun 7.1.26 is not
/// enough; this uses the series for small |x| and the continued fraction for large).
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    let r = if a < 2.5 {
        // Maclaurin series: erf(x) = 2/sqrt(pi) * sum (-1)^k x^(2k+1) / (k! (2k+1))
        let mut term = a;
        let mut sum = a;
        let x2 = a * a;
        let mut k = 0.0;
        loop {
            k += 1.0;
            term *= -x2 / k;
            let add = term / (2.0 * k + 1.0);
            sum += add;
            if add.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else if a < 27.0 {
        // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...)))), Lentz's method.
        let tiny = 1e-300;
        let mut f = a;
        let mut c = a;
        let mut d = 0.0;
        for i in 1..300 {
            let an = i as f64 / 2.0;
            d = a + an * d;
            d = if d == 0.0 { tiny } else { d };
            c = a + an / c;
            c = if c == 0.0 { tiny } else { c };
            d = 1.0 / d;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / f
    } else {
        1.0
    };
    if x < 0.0 { -r } else { r }
}

/// Multi-head softmax attention: `q [m, d]` against `k`, `v` `[s, d]` with
/// `heads` heads splitting the columns; keys under `key_mask` are excluded.
/// Queries must already be scaled. Returns `[m, d]`.
#[allow(clippy::too_many_arguments)]
pub fn multihead_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    m: usize,
    s: usize,
    d: usize,
    heads: usize,
    key_mask: &[bool],
) -> Vec<f64> {
    let hd = d / heads;
    let mut out = vec![0.0; m * d];
    for h in 0..heads {
        let cols = h * hd..(h + 1) * hd;
        for i in 0..m {
            let mut scores = vec![f64::NEG_INFINITY; s];
            for j in 0..s {
                if !key_mask[j] {
                    scores[j] = cols.clone().map(|c| q[i * d + c] * k[j * d + c]).sum();
                }
            }
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|&sc| (sc - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for c in cols.clone() {
                out[i * d + c] = (0..s).map(|j| weights[j] * v[j * d + c]).sum::<f64>() / total;
            }
        }
    }
    out
}

pub fn scale(x: &mut [f64], s: f64) {
    x.iter_mut().for_each(|v| *v *= s);
}

pub fn add(x: &mut [f64], y: &[f64]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

pub fn zero_rows(x: &mut [f64], d: usize, mask: &[bool]) {
    for (row, &m) in x.chunks_mut(d).zip(mask) {
        if m {
            row.fill(0.0);
        }
    }
}
