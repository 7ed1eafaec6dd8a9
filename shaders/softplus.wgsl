// softplus_ln2(z) = log2(1 + 2^z), the causal pack weights' activation
// (docs/luna.md, "Notation"). Prepended to causal.wgsl, causal_chunk.wgsl and
// causal_step.wgsl by kernels::causal (WGSL has no imports).

const LN2: f32 = 0.69314718055994531;

// ln(1 + 2^z) / ln 2 without overflow, accurate at both ends; branch-free, so
// that no invocation waits on another's side of a branch.
fn softplus_ln2(z: f32) -> f32 {
    let xz = z * LN2;
    let mid = log(1.0 + exp(min(xz, 15.0))) / LN2;
    let ex = exp(-abs(xz)) / LN2;
    return select(select(mid, ex, xz < -15.0), z + ex, xz > 15.0);
}
