// The decayed running sums of the local-context extension (docs/luna.md,
// "Local context"): head h's sums shrink by gamma_h before each token is
// added, and the count t becomes Z_t = 1 + gamma + ... + gamma^(t-1).
// Prepended to the causal kernels by kernels::causal (WGSL has no imports).
// Their `decay` binding holds gamma_h at [h] and ln(gamma_h) at [heads + h].

// 1 - e^x for x <= 0, to float32's relative precision also near 0 (where
// 1 - exp(x) would cancel): a Taylor series there.
fn one_minus_exp(x: f32) -> f32 {
    if (x > -0.125) {
        return -x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0 + x / 720.0)))));
    }
    return 1.0 - exp(x);
}

// Z_t = (1 - gamma^t) / (1 - gamma) for ln(gamma) = lg < 0; t when gamma = 1.
fn decayed_count(lg: f32, t: f32) -> f32 {
    if (lg == 0.0) {
        return t;
    }
    return one_minus_exp(lg * t) / one_minus_exp(lg);
}

// gamma^k for ln(gamma) = lg.
fn decay_pow(lg: f32, k: f32) -> f32 {
    return exp(lg * k);
}
