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
    /// The GPU (or, for the float64 reference, the host) would run out of memory, or rejected an allocation.
    #[error("out of memory: {0}")]
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
    #[error("{what} needs {needed} bytes in one buffer binding, over this adapter's limit of {limit} bytes; {advice}")]
    TooLarge { what: String, needed: u64, limit: u64, advice: String },
    /// A result holds NaN or infinity: the model's numbers overflowed float32.
    #[error("{tensor} holds {count} values that are not finite (NaN or infinity; the first at flat index {first}): this model's numbers overflow float32 on this input; check its weights and embed_scale")]
    NotFinite { tensor: String, count: usize, first: usize },
    /// The caller's progress observer stopped the call (`Engine::set_progress`).
    #[error("cancelled {0}")]
    Cancelled(String),
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

/// What to change when an input's buffer is too large.
pub const SHORTER_INPUT: &str = "use a shorter sequence or a smaller batch";

impl LunaError {
    /// [`LunaError::TooLarge`] for a buffer that grows with the input.
    pub fn too_large(what: impl Into<String>, needed: u64, limit: u64) -> LunaError {
        LunaError::TooLarge { what: what.into(), needed, limit, advice: SHORTER_INPUT.into() }
    }
}

/// Refuses a result that holds NaN or infinity, naming the tensor: the
/// check every output passes before it reaches the caller.
pub fn check_finite(tensor: &str, values: &[f32]) -> Result<()> {
    not_finite(tensor, values, |v| v.is_finite())
}

/// [`check_finite`] for float64 results (the reference's), as float32 holds
/// them: a value beyond float32's range counts as infinite.
pub fn check_finite_f32(tensor: &str, values: &[f64]) -> Result<()> {
    not_finite(tensor, values, |v| (*v as f32).is_finite())
}

fn not_finite<T>(tensor: &str, values: &[T], finite: impl Fn(&T) -> bool) -> Result<()> {
    match values.iter().position(|v| !finite(v)) {
        None => Ok(()),
        Some(first) => Err(LunaError::NotFinite {
            tensor: tensor.to_string(),
            count: values[first..].iter().filter(|v| !finite(v)).count(),
            first,
        }),
    }
}
