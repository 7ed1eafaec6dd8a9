//! The engine: models on one GPU and the passes that run them. Each file has
//! one job (docs/ARCHITECTURE.md walks through them):
//!
//! - `context`: the [`Engine`] (device, pipeline cache, workspace, memory,
//!   uploads, readback, closing a call);
//! - `weights`: a model's weights uploaded ([`GpuModel`]);
//! - `tail`: what every layer does after its attention, and its scratch;
//! - `encoder`: the Luna encoder pass;
//! - `causal`: the causal LM's parallel form ([`CausalOutput`]);
//! - `decoder`: streaming generation ([`Decoder`]);
//! - `segments`: scoring, and one long sequence segment by segment;
//! - `pack_weights`: what the packed slots read ([`PackWeights`]);
//! - `progress`: the progress of long calls, and cancelling them;
//! - `plan`: how a pass is cut into groups and row blocks, and its buffers
//!   checked against the device before any GPU work;
//! - `baseline`: the softmax-attention baselines;
//! - `tune`: timing the GEMM family's variants on this adapter.
//!
//! Nothing here imports the float64 reference: host-side math the engine
//! needs (position tables, the causal P) comes from `crate::math`.

pub mod baseline;
mod causal;
mod context;
mod decoder;
mod encoder;
mod pack_weights;
mod plan;
mod progress;
mod segments;
mod tail;
mod tune;
mod weights;

pub use causal::CausalOutput;
pub use context::Engine;
pub use decoder::Decoder;
pub use pack_weights::PackWeights;
pub use plan::Cut;
pub use progress::{OnProgress, Progress};
pub use weights::GpuModel;
