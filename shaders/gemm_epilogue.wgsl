// The GEMM family's shared epilogue: the activation applied to a·wᵀ + bias.
// Prepended to each GEMM shader by kernels::gemm (WGSL has no imports).
// Math: docs/luna.md, "Notation" (Linear, activations).

// 0: none, 1: relu, 2: exact (erf) gelu
override ACT: u32 = 0u;
// add the residual R after the activation
override HAS_RES: bool = false;

// erf to about 1.5e-7 absolute (Abramowitz & Stegun 7.1.26), enough for f32.
fn erf_approx(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let r = 1.0 - poly * exp(-z * z);
    return select(r, -r, x < 0.0);
}

fn activate(x: f32) -> f32 {
    if (ACT == 1u) {
        return max(x, 0.0);
    } else if (ACT == 2u) {
        return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752));
    }
    return x;
}

// Writes one output: act(acc + bias) (+ residual), nothing outside [m, n].
// `p`, `bias`, `res` and `c` are declared by the shader this is prepended to.
fn put(r: u32, col: u32, acc: f32) {
    if (r < p.m && col < p.n) {
        var v = activate(acc + bias[col]);
        if (HAS_RES) {
            v += res[r * p.n + col];
        }
        c[r * p.n + col] = v;
    }
}
