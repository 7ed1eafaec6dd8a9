//! The WebGPU side of the engine: context, pipeline cache, buffers, dispatch
//! recording, the measured kernel choices, and the error scopes that turn GPU errors into `LunaError`s.

pub mod buffers;
pub mod context;
pub mod memory;
pub mod pipelines;
pub mod recorder;
pub mod scope;
pub mod tuning;

pub use context::{describe, AdapterChoice, GpuContext};
