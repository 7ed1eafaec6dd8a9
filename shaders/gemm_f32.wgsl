// The GEMM family's weight element: float32 (see gemm_f16.wgsl). Prepended to
// shaders/gemm_vec4.wgsl by kernels::gemm.
alias WVec = vec4<f32>;
