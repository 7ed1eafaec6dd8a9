//! luna-wgpu: Luna ("Linear Unified Nested Attention", Ma et al., NeurIPS 2021)
//! on WebGPU compute shaders, with a float64 CPU reference as its oracle.
//!
//! The numbers follow the authors' PyTorch implementation exactly; the
//! math is written down in docs/luna.md and the design in
//! docs/ARCHITECTURE.md.

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod config;
pub mod engine;
pub mod error;
pub mod generate;
pub mod gpu;
pub mod init;
pub mod input;
pub mod kernels;
pub mod math;
pub mod model;
#[cfg(not(target_arch = "wasm32"))]
pub mod progress_bar;
pub mod reference;
pub mod sample;
#[cfg(not(target_arch = "wasm32"))]
pub mod shipped;
pub mod softmax_model;
pub mod tensors;
pub mod tokenizer;
/// The JavaScript API of the browser build (wasm-bindgen; see web/README.md).
#[cfg(target_arch = "wasm32")]
pub mod web;

/// The softmax-attention baselines (their code is in `engine/baseline.rs`).
pub use engine::baseline;
pub use config::{Activation, Config, ModelKind};
pub use engine::{CausalOutput, Decoder, Engine, GpuModel, OnProgress, PackWeights, Progress};
pub use error::{LunaError, Result};
pub use gpu::AdapterChoice;
pub use input::{Batch, EncoderOutput};
pub use kernels::gemm::Precision;
pub use model::Model;
