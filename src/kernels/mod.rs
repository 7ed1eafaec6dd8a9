//! One module per kernel family; each owns its shader, lists every
//! specialisation the host can build (for the naga checks) and records its
//! dispatches.

pub mod attention;
pub mod causal;
pub mod conv;
pub mod embed;
pub mod gemm;
pub mod layernorm;
pub mod softmax;

use crate::gpu::pipelines::KernelSpec;

/// Every shader specialisation the engine can build.
pub fn all_variants() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    v.extend(gemm::variants());
    v.extend(attention::variants());
    v.extend(causal::variants());
    v.extend(conv::variants());
    v.extend(layernorm::variants());
    v.extend(embed::variants());
    v.extend(softmax::variants());
    v
}

/// Changes whenever a shader whose variants `engine::tune` chooses between
/// does (tuned choices are kept per version).
pub fn tuned_shaders_version() -> u64 {
    crate::gpu::tuning::shader_version(&[
        gemm::SOURCE,
        gemm::VEC4_SOURCE,
        gemm::VEC4_F16_SOURCE,
        layernorm::SOURCE,
        causal::SOURCE,
        causal::CHUNK_SOURCE,
        causal::SCAN_SOURCE,
    ])
}
