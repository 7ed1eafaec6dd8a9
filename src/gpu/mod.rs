//! The WebGPU side of the engine: context, pipeline cache, buffers, dispatch recording.

pub mod buffers;
pub mod context;
pub mod pipelines;
pub mod recorder;

pub use context::{describe, AdapterChoice, GpuContext};
