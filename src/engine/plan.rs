//! How a pass is cut, and what it allocates, decided before any GPU work.
//!
//! A pass over a batch runs as groups of whole sequences (one submission
//! each); a group of one long sequence runs in row blocks ([`Cut`]), each
//! block keeping its own layer input and sharing one block's scratch
//! (`engine::tail::Block`). Each pass lists the buffers it will allocate
//! ([`Need`]); [`Engine::check_plan`] checks every one against one binding
//! and all of them, with the weights held, against the device's memory
//! (`gpu::memory`), naming the longest sequence that would fit.

use crate::engine::context::Engine;
use crate::error::{LunaError, Result};
use crate::gpu::buffers;
use crate::config::ModelKind;
use crate::model::Model;

/// Rows a block keeps at least when a sequence is cut for memory's sake.
const MIN_BLOCK: usize = 512;
/// A sequence long enough is cut into at least this many blocks, so that the
/// block scratch costs a fraction of the layer input.
const MIN_BLOCKS: usize = 4;

/// How a pass is cut: groups of `seqs` whole sequences, each group one
/// submission; a group of one long sequence runs in blocks of `block_rows`
/// rows (a group of several sequences is one block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cut {
    pub seqs: usize,
    pub block_rows: usize,
}

impl Cut {
    /// Whether sequences run in several row blocks.
    pub(crate) fn blocked(&self, n: usize) -> bool {
        self.block_rows < n
    }

    /// Rows of the largest block (a whole group when not blocked).
    pub(crate) fn rows(&self, n: usize) -> usize {
        if self.blocked(n) { self.block_rows } else { self.seqs * n }
    }

    /// Row blocks `(first row, rows)` of a group of `seqs` sequences of `n` tokens.
    pub(crate) fn blocks(&self, n: usize, seqs: usize) -> Vec<(usize, usize)> {
        if self.blocked(n) {
            (0..n).step_by(self.block_rows).map(|s| (s, (n - s).min(self.block_rows))).collect()
        } else {
            vec![(0, seqs * n)]
        }
    }
}

/// Buffers of one kind a pass allocates: the largest of them (`each` bytes,
/// bound whole) and all of them together (`total` bytes).
#[derive(Clone, Copy)]
pub(crate) struct Need {
    pub what: &'static str,
    pub each: u64,
    pub total: u64,
}

impl Need {
    pub(crate) fn one(what: &'static str, bytes: u64) -> Need {
        Need { what, each: bytes, total: bytes }
    }
}

/// A plan over the device's memory: bytes needed in all, held for weights, and the limit.
pub(crate) struct Over {
    pub needed: u64,
    pub held: u64,
    pub limit: u64,
}

/// Bytes as MiB, for messages.
pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// Bytes of all of a plan's buffers.
pub(crate) fn total(plan: &[Need]) -> u64 {
    plan.iter().map(|p| p.total).sum()
}

impl Engine {
    /// After a plan of `bytes` passed [`Engine::check_plan`]: when scratch that
    /// earlier calls left (other shapes, other models) would take the pass
    /// over the device's memory, gives it back first, so that what the pass
    /// holds is what the check counted (the weights and the plan).
    pub(crate) fn make_room(&mut self, bytes: u64) {
        if self.memory_limit().is_some_and(|limit| self.stats.live() + bytes > limit) {
            self.release_workspace();
        }
    }

    /// How `sequences` sequences of `n` tokens are cut when the widest
    /// per-token buffer has `widest` floats: blocks of a quarter of the
    /// sequence (at least 512 rows) within the rows per segment
    /// ([`Engine::set_segment_rows`]), one binding and one dispatch;
    /// sequences that fit one block share a group. Without `blocks`, every
    /// sequence is one block (a method that needs all its rows at once).
    pub(crate) fn cut_rows(&self, widest: usize, n: usize, sequences: usize, blocks: bool) -> Result<Cut> {
        if n == 0 || sequences == 0 {
            return Err(LunaError::Input(format!("an empty batch: {sequences} sequences of {n} tokens")));
        }
        let fit_binding = (self.ctx.max_binding() / (widest.max(1) as u64 * 4)) as usize;
        let fit_dispatch = self.ctx.limits.max_compute_workgroups_per_dimension as usize * 64;
        let cap = self.segment.min(fit_binding).min(fit_dispatch) / 64 * 64;
        if cap == 0 {
            return Err(LunaError::TooLarge {
                what: format!("64 token rows of a {widest}-float layer buffer"),
                needed: widest as u64 * 4 * 64,
                limit: self.ctx.max_binding(),
                advice: "this model is too wide for this adapter; use a model with a smaller embed_dim or ffn_embed_dim".into(),
            });
        }
        let block = if blocks { (n.div_ceil(MIN_BLOCKS).div_ceil(64) * 64).max(MIN_BLOCK).min(cap) } else { n };
        Ok(if block >= n { Cut { seqs: (cap / n).clamp(1, sequences), block_rows: n } } else { Cut { seqs: 1, block_rows: block } })
    }

    /// Checks a model's weights before any upload: every tensor, and the
    /// widest projections stacked into one buffer, against one binding, and
    /// all of them, with what the engine holds, against the device's memory.
    pub(crate) fn check_weights(&self, model: &Model) -> Result<()> {
        let binding = self.ctx.max_binding();
        let d = model.config.embed_dim as u64;
        let tensors = model.named_tensors();
        let c = &model.config;
        let widest = match c.model {
            ModelKind::CausalLm => crate::engine::weights::causal_columns(c).4,
            ModelKind::Encoder if c.tie_kv => c.embed_dim,
            ModelKind::Encoder => 2 * c.embed_dim,
        };
        let stacked = ("the stacked projections of a layer".to_string(), widest as u64 * d * 4);
        let sizes = tensors.iter().map(|(name, _, data)| (format!("the model's tensor {name}"), data.len() as u64 * 4));
        for (what, bytes) in sizes.chain([stacked]) {
            if bytes > binding {
                return Err(LunaError::TooLarge {
                    what,
                    needed: bytes,
                    limit: binding,
                    advice: "this adapter cannot bind a weight this large; use a model with a smaller vocabulary or width, or another adapter".into(),
                });
            }
        }
        let total: u64 = tensors.iter().map(|(_, _, data)| data.len() as u64 * 4).sum();
        if let Some(Over { needed, held, limit }) = self.over_memory(&[Need::one("the weights", total)]) {
            return Err(LunaError::OutOfMemory(format!(
                "this model's weights need {:.1} MiB of GPU memory beside the {:.1} MiB the engine holds, over the {:.1} MiB this adapter has (LUNA_MEMORY_LIMIT or Engine::set_memory_limit changes it)",
                mib(needed - held),
                mib(held),
                mib(limit)
            )));
        }
        Ok(())
    }

    /// The plan's bytes with the weights held, when they pass the device's memory.
    pub(crate) fn over_memory(&self, plan: &[Need]) -> Option<Over> {
        let limit = self.memory_limit()?;
        let held = self.stats.live().saturating_sub(self.workspace.bytes());
        let needed = held + total(plan);
        (needed > limit).then_some(Over { needed, held, limit })
    }

    /// Checks a plan (the pass over `batch` sequences of `n` tokens cut as
    /// `cut`) before any GPU work: every buffer against one binding, the
    /// largest block against one dispatch, and all of it, with the weights
    /// the engine holds, against the device's memory when known. `plan_for(n)`
    /// plans one sequence of `n` tokens, for naming the longest that fits.
    pub(crate) fn check_plan(&self, plan: &[Need], batch: usize, n: usize, cut: Cut, plan_for: impl Fn(usize) -> Option<u64>) -> Result<()> {
        for need in plan {
            buffers::check_binding(&self.ctx, need.what, need.each)?;
        }
        buffers::check_dispatch_rows(&self.ctx, cut.rows(n) as u64)?;
        let Some(Over { needed, held, limit }) = self.over_memory(plan) else { return Ok(()) };
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if plan_for(mid).is_some_and(|b| held + b <= limit) {
                lo = mid
            } else {
                hi = mid - 1
            }
        }
        Err(LunaError::OutOfMemory(format!(
            "this batch ({batch} × {n} tokens) needs {:.1} MiB of GPU memory ({:.1} MiB the engine holds for weights, the rest for activations and scratch, and for reading the outputs back when a call does), over the {:.1} MiB this adapter has (LUNA_MEMORY_LIMIT or Engine::set_memory_limit changes it); the longest single sequence that fits is {lo} tokens",
            mib(needed),
            mib(held),
            mib(limit),
        )))
    }
}
