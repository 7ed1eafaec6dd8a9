//! Scoring, and one long sequence segment by segment. [`Engine::score`] gives
//! the surprisal of every next token: a batch in one parallel pass, or one
//! long document as a chain of parallel passes over segments, each starting
//! from the per-layer states the previous one left (the `CARRY` form of
//! `shaders/causal_scan.wgsl`), so memory is that of one segment whatever the
//! length. The same chain carries the captures of `engine::pack_weights`.

use crate::config::Config;
use crate::engine::causal::{Emit, Hooks, LayerState, Run};
use crate::engine::context::Engine;
use crate::engine::plan::Need;
use crate::engine::weights::{causal_columns, GpuModel};
use crate::error::{LunaError, Result};
use crate::gpu::buffers;
use crate::gpu::recorder::Recorder;
use crate::gpu::scope::ErrorScopes;
use crate::input::Batch;
use crate::kernels::causal::{self as kernel, Shape};
use crate::kernels::gemm::{self, Gemm};

/// A GEMM recorded on a layer's attention input during a [`Engine::sequence_pass`]:
/// `out[t, :] = ax[t, :] · w^T + b` for every token `t`, `w` `[width, d]`, `out` `[n, width]`.
pub(crate) struct Capture<'c> {
    pub layer: usize,
    pub w: &'c wgpu::Buffer,
    pub b: &'c wgpu::Buffer,
    pub width: usize,
    pub out: &'c wgpu::Buffer,
}

/// Where one sequence's tokens lie among a call's (for progress): `before`
/// of `total` come before it.
#[derive(Clone, Copy)]
pub(crate) struct Span {
    pub before: usize,
    pub total: usize,
}

impl Span {
    /// A call of one sequence of `n` tokens.
    pub(crate) fn whole(n: usize) -> Span {
        Span { before: 0, total: n }
    }
}

impl Engine {
    /// Surprisal in bits of each next token, `[B, n]`: entry `t` is
    /// `-log2 p(tokens[t+1] | tokens[..=t])` for `t + 1 < length`, else 0.
    pub async fn score(&mut self, model: &GpuModel, batch: &Batch) -> Result<Vec<f32>> {
        if batch.batch * batch.len > self.segment_rows(&model.config, 0) {
            // Long documents: each segment by segment, in memory that does not grow with them.
            return self.per_sequence(model, batch, Emit::Surprisal).await;
        }
        let rows = batch.batch * batch.len;
        let targets = next_tokens(batch);
        self.parallel_pass(model, batch, rows, "surprisal", |run, rec, ws, x| (run.surprisal(rec, ws, x, &targets), rows)).await
    }

    /// Rows per segment of a long sequence: [`Engine::set_segment_rows`], or fewer when a
    /// segment's largest buffer (`extra` floats per row included) would not
    /// fit one binding; a multiple of the chunk.
    pub(crate) fn segment_rows(&self, c: &Config, extra: usize) -> usize {
        let (_, _, _, _, width) = causal_columns(c);
        let per_row = [width, c.ffn_embed_dim, c.vocab_size, extra, c.embed_dim].into_iter().max().unwrap_or(1) as u64 * 4;
        let fit = (self.ctx.max_binding() / per_row) as usize;
        let chunk = self.causal_chunk;
        (fit.min(self.segment) / chunk * chunk).max(chunk)
    }

    /// Sets the most tokens per segment when one long document is scored
    /// segment by segment (16,384 by default; rounded down to a multiple of
    /// the chunk), and the most rows per block or group of the encoder
    /// (rounded down to a multiple of 64). Results do not depend on it beyond rounding.
    pub fn set_segment_rows(&mut self, rows: usize) -> Result<()> {
        if rows == 0 {
            return Err(LunaError::Input("a segment holds at least one token".into()));
        }
        self.segment = rows;
        Ok(())
    }

    /// The rows per segment set by [`Engine::set_segment_rows`].
    pub fn segment_rows_setting(&self) -> usize {
        self.segment
    }

    /// Runs every sequence of a batch alone, segment by segment (a batch too
    /// large for one pass splits like a long sequence): `[B, n]` surprisal
    /// or `[B, n, vocab]` logits, zero past each sequence's length.
    pub(crate) async fn per_sequence(&mut self, model: &GpuModel, batch: &Batch, emit: Emit) -> Result<Vec<f32>> {
        batch.check_for(&model.config)?;
        let n = batch.len;
        let width = match emit {
            Emit::Logits => model.config.vocab_size,
            _ => 1,
        };
        let mut out = vec![0f32; batch.batch * n * width];
        let total = batch.lengths.iter().sum();
        for b in 0..batch.batch {
            let rows = b * n..b * n + batch.lengths[b];
            let span = Span { before: batch.lengths[..b].iter().sum(), total };
            let values = self.sequence_pass(model, &batch.tokens[rows.clone()], Some(&batch.positions[rows.clone()]), None, &[], emit, span).await?;
            out[rows.start * width..rows.end * width].copy_from_slice(&values);
        }
        Ok(out)
    }

    /// Runs one sequence of real tokens through the causal LM segment by
    /// segment: each segment is a parallel pass (one submission) that starts
    /// from the per-layer states the previous one left. Memory is that of one
    /// segment, whatever the length. `positions` are the tokens' fairseq
    /// positions (`padding_idx + 1 + t` when `None`); `carry` holds the
    /// per-layer states to start from and leaves them after the last token
    /// (zero states of its own when `None`). Records `captures` on the way;
    /// returns what `emit` names, read back segment by segment: the surprisal
    /// of each next token (`[n]`, entry `t` for token `t + 1`, the last entry
    /// 0), the logits `[n, vocab]`, or the last token's logits `[vocab]`.
    /// After each segment it reports progress within `span`.
    pub(crate) async fn sequence_pass(
        &mut self,
        model: &GpuModel,
        tokens: &[u32],
        positions: Option<&[u32]>,
        carry: Option<&[LayerState]>,
        captures: &[Capture<'_>],
        emit: Emit,
        span: Span,
    ) -> Result<Vec<f32>> {
        self.ctx.check_alive()?;
        model.causal()?;
        let c = &model.config;
        let n = tokens.len();
        if n == 0 {
            return Err(LunaError::Input("no tokens: give at least one".into()));
        }
        let extra = captures.iter().map(|k| k.width).max().unwrap_or(0);
        let seg = self.segment_rows(c, extra);
        let (d, heads, pad, vocab) = (c.embed_dim, c.num_heads, c.padding_idx, c.vocab_size);
        let (sums, history) = LayerState::floats(c);
        let chunk = self.causal_chunk;
        let shape_at = |start: usize, rows: usize| Shape {
            batch: 1,
            rows,
            heads,
            head_dim: c.head_dim(),
            proj_len: c.projection_length,
            chunk: chunk.min(rows.next_power_of_two()),
            t_base: start,
        };
        // The first segment is the largest: check it, with the states this call allocates, before any GPU work.
        let first = seg.min(n);
        let (f, state) = (4u64, (sums + history) as u64 * 4);
        let buffers = [
            Need { what: "the decoder states carried between segments", each: state, total: if carry.is_none() { c.num_layers as u64 * state } else { 0 } },
            Need::one("the captured rows", (first * extra) as u64 * f),
        ];
        self.check_causal_sizes(c, first, &shape_at(0, first), emit.logit_rows(first), &buffers)?;
        let own = match carry {
            Some(_) => Vec::new(),
            None => self.zero_states(c, "carried state")?,
        };
        let carry = carry.unwrap_or(&own);
        let mut values = Vec::new();
        let last = if emit == Emit::Nothing { captures.iter().map(|k| k.layer + 1).max().unwrap_or(0) } else { c.num_layers };
        for start in (0..n).step_by(seg) {
            let end = (start + seg).min(n);
            let rows = end - start;
            let shape = shape_at(start, rows);
            // Positions: learned ones by index; sinusoids as this segment's own rows.
            let here: Vec<u32> = match positions {
                Some(p) => p[start..end].to_vec(),
                None => (start..end).map(|t| (pad + 1 + t) as u32).collect(),
            };
            let positions = self.token_positions(model, &here)?;
            let targets: Vec<u32> = (start..end).map(|t| if t + 1 < n { tokens[t + 1] } else { kernel::NO_TARGET }).collect();
            let scope = ErrorScopes::push(&self.ctx);
            let result = async {
                let Engine { ctx, cache, workspace, dummy, .. } = &mut *self;
                let mut rec = Recorder::new(ctx, cache, &dummy.buffer);
                let run = Run::new(model, &positions.table, shape, None)?.continuing(carry).first_layers(last);
                let scratch = (!captures.is_empty()).then(|| workspace.get(ctx, "captured", (rows * extra) as u64 * 4));
                let mut capture = |rec: &mut Recorder, i: usize, ax: &wgpu::Buffer| {
                    if let Some(scratch) = &scratch {
                        for k in captures.iter().filter(|k| k.layer == i) {
                            gemm::record(rec, &Gemm::new(ax, k.w, k.b, scratch, [rows, k.width, d]));
                            rec.copy(scratch, 0, k.out, start * k.width, rows * k.width);
                        }
                    }
                };
                let hooks = Hooks { attention_input: Some(&mut capture) };
                let x = run.record(&mut rec, workspace, &tokens[start..end], &positions.index, &[rows as u32], hooks)?;
                let out = match emit {
                    Emit::Nothing => None,
                    Emit::Surprisal => Some((run.surprisal(&mut rec, workspace, &x, &targets), rows)),
                    Emit::Logits => Some((run.logits(&mut rec, workspace, &x, rows, "logits"), rows * vocab)),
                    Emit::LastLogits if end < n => None,
                    Emit::LastLogits => {
                        let last_x = workspace.get(ctx, "last_x", d as u64 * 4);
                        rec.copy(&x, (rows - 1) * d, &last_x, 0, d);
                        Some((run.logits(&mut rec, workspace, &last_x, 1, "last_logits"), vocab))
                    }
                };
                rec.submit();
                if let Some((buffer, floats)) = out {
                    values.extend(buffers::read_output(ctx, emit.tensor(), &buffer, floats).await?);
                }
                Ok(())
            }
            .await;
            self.close(scope, result).await?;
            drop(positions);
            self.report(span.before + end, span.total)?;
        }
        Ok(values)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Engine {
    /// Blocking form of [`Engine::score`].
    pub fn score_blocking(&mut self, model: &GpuModel, batch: &Batch) -> Result<Vec<f32>> {
        pollster::block_on(self.score(model, batch))
    }
}

/// The next token of every row of a batch (the targets of [`Engine::score`]),
/// [`kernel::NO_TARGET`] for the last token of a sequence and for padding.
fn next_tokens(batch: &Batch) -> Vec<u32> {
    let n = batch.len;
    let mut targets = vec![kernel::NO_TARGET; batch.batch * n];
    for b in 0..batch.batch {
        for t in 0..batch.lengths[b].saturating_sub(1) {
            targets[b * n + t] = batch.tokens[b * n + t + 1];
        }
    }
    targets
}
