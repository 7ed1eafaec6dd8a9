//! What a float64 reference run will hold in host memory, estimated before it
//! starts, and the budget it must fit: `LUNA_CPU_MEMORY_LIMIT` (bytes, or
//! with a K, M or G suffix) when set, else 4 GiB or the memory the machine
//! has available now, whichever is less. The reference is the oracle that
//! checks the GPU, kept plain on purpose: its buffers are whole `[n, d]`
//! float64 matrices, so a long input is refused here with the estimate
//! rather than aborting in the allocator or swapping the machine.

use crate::config::Config;
use crate::error::{LunaError, Result};

/// The budget without `LUNA_CPU_MEMORY_LIMIT`: 4 GiB.
pub const DEFAULT_LIMIT: u64 = 4 << 30;

/// Bytes the encoder reference holds for `sequences` sequences of `n`
/// tokens with `proj_len` packed rows: one sequence's working set (the
/// attention's six `[n, d]` matrices, or the FFN's hidden layer beside two
/// of them), the float64 outputs of all, and their float32 copies.
pub fn encoder_bytes(c: &Config, sequences: usize, n: usize, proj_len: usize) -> u64 {
    let (n, d, f, l, b) = (n as u64, c.embed_dim as u64, c.ffn_embed_dim as u64, proj_len as u64, sequences as u64);
    let rows = n + l;
    let working = (6 * rows * d).max(3 * rows * d + n * f) * 8;
    let outputs = b * rows * d * (8 + 4);
    working + outputs + tokens_bytes(b * n)
}

/// Bytes the causal LM reference holds for `sequences` sequences of `n`
/// tokens: the float64 logits `[B, n, vocab]` and their float32 copies, and
/// the decoder states of every layer.
pub fn causal_bytes(c: &Config, sequences: usize, n: usize) -> u64 {
    let (n, b) = (n as u64, sequences as u64);
    let logits = b * n * c.vocab_size as u64 * (8 + 4);
    logits + states_bytes(c) + tokens_bytes(b * n)
}

/// Bytes of the decoder states of every layer (`Sk` and `Sv` per head).
pub fn states_bytes(c: &Config) -> u64 {
    c.num_layers as u64 * 2 * c.embed_dim as u64 * c.projection_length as u64 * 8
}

/// The token ids, positions and masks of a batch.
fn tokens_bytes(tokens: u64) -> u64 {
    tokens * 24
}

/// The budget: `LUNA_CPU_MEMORY_LIMIT`, else [`DEFAULT_LIMIT`] or the
/// memory available now, whichever is less.
pub fn limit() -> u64 {
    if let Some(limit) = std::env::var("LUNA_CPU_MEMORY_LIMIT").ok().and_then(|v| crate::gpu::memory::parse_bytes(&v)) {
        return limit;
    }
    crate::tensors::available_memory().map_or(DEFAULT_LIMIT, |a| a.min(DEFAULT_LIMIT))
}

/// Refuses a run of `bytes` (the estimate for `what`) over the budget.
pub fn check(what: &str, bytes: u64) -> Result<()> {
    let limit = limit();
    if bytes <= limit {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(LunaError::OutOfMemory(format!(
        "the float64 CPU reference would hold about {:.2} GiB of host memory for {what}, over its budget of {:.2} GiB (4 GiB or the memory available, whichever is less; LUNA_CPU_MEMORY_LIMIT=16G raises it); use the GPU, or a shorter input",
        gib(bytes),
        gib(limit)
    )))
}
