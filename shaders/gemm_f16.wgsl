// The GEMM family's weight element when the model is stored in float16
// (`Precision::F16`, adapters with `shader-f16`): W is read as vec4<f16> and
// widened to float32; every product and sum stays float32. Prepended to
// shaders/gemm_vec4.wgsl by kernels::gemm (an `enable` must come first).
enable f16;

alias WVec = vec4<f16>;
