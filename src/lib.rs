//! luna-wgpu: Luna ("Linear Unified Nested Attention", Ma et al., NeurIPS 2021)
//! on WebGPU compute shaders, with a float64 CPU reference as its oracle.
//!
//! The numbers follow the authors' PyTorch implementation exactly; the
//! contract is written down in LUNA_SPEC.md.

pub mod baseline;
#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub(crate) mod block;
pub mod causal;
pub mod config;
pub mod engine;
pub mod error;
pub mod generate;
pub mod gpu;
pub mod init;
pub mod input;
pub mod kernels;
pub mod model;
pub mod pack;
pub mod reference;
#[cfg(not(target_arch = "wasm32"))]
pub mod report;
pub mod sample;
#[cfg(not(target_arch = "wasm32"))]
pub mod shipped;
pub mod tensors;
pub mod tokenizer;
/// The JavaScript API of the browser build (wasm-bindgen; see web/README.md).
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use causal::{CausalOutput, Decoder};
pub use config::{Activation, Config, ModelKind};
pub use engine::{Engine, GpuModel};
pub use error::{LunaError, Result};
pub use gpu::AdapterChoice;
pub use input::{Batch, EncoderOutput};
pub use model::Model;
pub use pack::PackWeights;
