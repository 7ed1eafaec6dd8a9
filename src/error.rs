//! The one error type of the engine. Every failure a user can cause comes back
//! as a `LunaError` that says what was wrong and, where it helps, what to do.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LunaError {
    /// No GPU adapter exists on this machine.
    #[error("no GPU adapter found ({0}); install a GPU driver, or `mesa-vulkan-drivers` (lavapipe) for a software one, or run with `--device cpu`")]
    NoAdapter(String),
    /// `--adapter` / `LUNA_ADAPTER` matched no adapter.
    #[error("no adapter matches {wanted:?}; available: {available}")]
    AdapterNotFound { wanted: String, available: String },
    /// The device could not be created or was lost.
    #[error("GPU device error: {0}")]
    Device(String),
    /// The GPU ran out of memory or rejected an allocation.
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),
    /// The model file is unreadable, malformed, or does not match its config.
    #[error("invalid model: {0}")]
    Model(String),
    /// The `luna.config` metadata is missing or inconsistent.
    #[error("invalid config: {0}")]
    Config(String),
    /// The input (tokens, shapes, dtypes) is unusable.
    #[error("invalid input: {0}")]
    Input(String),
    /// The work would exceed a device limit.
    #[error("{what} needs {needed} bytes in one buffer binding, over this adapter's limit of {limit} bytes; use a shorter sequence or a smaller batch")]
    TooLarge { what: String, needed: u64, limit: u64 },
    /// A feature that this version does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, LunaError>;
