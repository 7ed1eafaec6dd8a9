//! The WebGPU side of the engine: context, pipeline cache, buffers, dispatch
//! recording, and the error scopes that turn GPU errors into `LunaError`s.

pub mod buffers;
pub mod context;
pub mod pipelines;
pub mod recorder;
pub mod scope;

pub use context::{describe, AdapterChoice, GpuContext};
