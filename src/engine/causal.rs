//! The causal LM's parallel (chunked) form on the GPU (docs/luna.md, "Causal
//! attention" and "The causal LM"): [`Run`] records the embedding and every
//! layer of a pass over some token rows into one submission, with hooks for
//! callers that record more work as the layers go by; `causal_forward` gives
//! the logits of a batch in one pass. The decoder (`engine::decoder`) and
//! long sequences (`engine::segments`) build on it.

use crate::config::Config;
use crate::engine::context::Engine;
use crate::engine::plan::{mib, Need, Over};
use crate::engine::tail::{Dims, Scratch};
use crate::engine::weights::{causal_columns, GpuCausal, GpuModel, TokenPositions};
use crate::error::{LunaError, Result};
use crate::gpu::buffers::{self, Tracked, Workspace};
use crate::gpu::recorder::Recorder;
use crate::gpu::scope::ErrorScopes;
use crate::input::Batch;
use crate::kernels::causal::{self as kernel, Causal, Inputs, Shape};
use crate::kernels::conv::{self, Conv};
use crate::kernels::embed;
use crate::kernels::gemm::{self, Gemm};

/// Logits of a causal LM: `[B, n, vocab]`.
#[derive(Clone, Debug)]
pub struct CausalOutput {
    pub batch: usize,
    pub len: usize,
    pub vocab: usize,
    pub logits: Vec<f32>,
}

impl Engine {
    /// Sets the tokens per chunk of the parallel form (a power of two from 1
    /// to 4096; 64 by default). Results do not depend on it beyond rounding.
    pub fn set_causal_chunk(&mut self, chunk: usize) -> Result<()> {
        if !chunk.is_power_of_two() || chunk > 4096 {
            return Err(LunaError::Input(format!("chunk {chunk} must be a power of two up to 4096")));
        }
        self.causal_chunk = chunk;
        Ok(())
    }

    /// Checks a pass over `rows` token rows (`shape`, `logit_rows` rows of
    /// logits, and the `extra` buffers its caller allocates for it) before
    /// any GPU work: every buffer against one binding, and all of them with
    /// the weights held against the device's memory (`engine::plan`).
    pub(crate) fn check_causal_sizes(&self, c: &Config, rows: usize, shape: &Shape, logit_rows: usize, extra: &[Need]) -> Result<()> {
        let (_, _, _, _, width) = causal_columns(c);
        let f = 4u64;
        let (rows64, d) = (rows as u64, c.embed_dim as u64);
        let mut plan = vec![
            Need::one("the fused q/k/v/pc projections and the feed-forward hidden layer", rows64 * width.max(c.ffn_embed_dim) as u64 * f),
            Need { what: "the layer input, its LayerNorm and the attention output", each: rows64 * d * f, total: 5 * rows64 * d * f },
            Need { what: "the token ids, positions, targets and surprisal", each: rows64 * f, total: 4 * rows64 * f },
            Need::one("the position rows", rows64 * d * f),
            Need::one("the causal chunk states", shape.state_floats() as u64 * f),
            Need { what: "the logits and their readback", each: (logit_rows * c.vocab_size) as u64 * f, total: 2 * (logit_rows * c.vocab_size) as u64 * f },
        ];
        plan.extend_from_slice(extra);
        for need in &plan {
            buffers::check_binding(&self.ctx, need.what, need.each).map_err(|e| match e {
                // A segment is never cut below one chunk: a shorter input cannot help.
                LunaError::TooLarge { what, needed, limit, .. } if rows <= self.causal_chunk => LunaError::TooLarge {
                    what,
                    needed,
                    limit,
                    advice: format!("even {rows} tokens are too many for this adapter with this model; a model with a smaller vocabulary or width would fit"),
                },
                e => e,
            })?;
        }
        if let Some(Over { needed, held, limit }) = self.over_memory(&plan) {
            return Err(LunaError::OutOfMemory(format!(
                "a pass of {rows} tokens of this causal LM needs {:.1} MiB of GPU memory ({:.1} MiB the engine holds for weights), over the {:.1} MiB this adapter has (LUNA_MEMORY_LIMIT or Engine::set_memory_limit changes it); Engine::set_segment_rows with fewer rows lowers it",
                mib(needed),
                mib(held),
                mib(limit)
            )));
        }
        Ok(())
    }

    fn parallel_shape(&self, c: &Config, batch: &Batch) -> Shape {
        Shape {
            batch: batch.batch,
            rows: batch.len,
            heads: c.num_heads,
            head_dim: c.head_dim(),
            proj_len: c.projection_length,
            chunk: self.causal_chunk.min(batch.len.next_power_of_two()),
            t_base: 0,
        }
    }

    /// Checks a batch for the parallel form and sizes its buffers.
    pub(crate) fn prepare_parallel(&self, model: &GpuModel, batch: &Batch, logit_rows: usize) -> Result<(Shape, TokenPositions)> {
        self.ctx.check_alive()?;
        model.causal()?;
        batch.check_for(&model.config)?;
        let shape = self.parallel_shape(&model.config, batch);
        self.check_causal_sizes(&model.config, batch.batch * batch.len, &shape, logit_rows, &[])?;
        let positions = self.token_positions(model, &batch.positions)?;
        Ok((shape, positions))
    }

    /// Records one parallel pass over `batch`, then `output` after its final
    /// states `x`; submits it and reads back the floats `output` names
    /// (checked finite, as `tensor`).
    pub(crate) async fn parallel_pass(
        &mut self,
        model: &GpuModel,
        batch: &Batch,
        logit_rows: usize,
        tensor: &str,
        output: impl FnOnce(&Run, &mut Recorder, &mut Workspace, &wgpu::Buffer) -> (wgpu::Buffer, usize),
    ) -> Result<Vec<f32>> {
        let (shape, positions) = self.prepare_parallel(model, batch, logit_rows)?;
        let scope = ErrorScopes::push(&self.ctx);
        let result = async {
            let Engine { ctx, cache, workspace, dummy, .. } = &mut *self;
            let mut rec = Recorder::new(ctx, cache, &dummy.buffer);
            let run = Run::new(model, &positions.table, shape, None)?;
            let x = run.record(&mut rec, workspace, &batch.tokens, &positions.index, &lengths_u32(batch), Hooks::default())?;
            let (out, floats) = output(&run, &mut rec, workspace, &x);
            rec.submit();
            buffers::read_output(ctx, tensor, &out, floats).await
        }
        .await;
        let values = self.close(scope, result).await?;
        let rows = batch.batch * batch.len;
        self.report(rows, rows)?;
        Ok(values)
    }

    /// Logits of every position of a batch of causal sequences, in one parallel pass.
    /// A batch too large for one pass runs sequence by sequence, segment by
    /// segment (`engine::segments`); its logits past a sequence's length are 0.
    pub async fn causal_forward(&mut self, model: &GpuModel, batch: &Batch) -> Result<CausalOutput> {
        let rows = batch.batch * batch.len;
        let vocab = model.config.vocab_size;
        model.causal()?;
        let logits = if rows > self.segment_rows(&model.config, 0) {
            self.per_sequence(model, batch, Emit::Logits).await?
        } else {
            self.parallel_pass(model, batch, rows, "logits", |run, rec, ws, x| (run.logits(rec, ws, x, rows, "logits"), rows * vocab)).await?
        };
        Ok(CausalOutput { batch: batch.batch, len: batch.len, vocab, logits })
    }

}

/// One layer's state, carried between segments of a sequence or between
/// decoder steps: the running sums `(Sk, Sv)` of every head (`[H, 2, l, dh]`)
/// and, with the local-context convolution, its last `conv_width - 1` inputs
/// (`[conv_width - 1, d]`). Its size never depends on the position.
pub(crate) struct LayerState {
    pub(crate) sums: Tracked,
    pub(crate) history: Option<Tracked>,
}

impl LayerState {
    /// Floats of one layer's state for config `c`: the sums and the history.
    pub(crate) fn floats(c: &Config) -> (usize, usize) {
        (c.num_heads * 2 * c.projection_length * c.head_dim(), c.conv_width.saturating_sub(1) * c.embed_dim)
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.sums.buffer.size() + self.history.as_ref().map_or(0, |h| h.buffer.size())
    }
}

impl Engine {
    /// Zero states for every layer of `c` (a sequence's start).
    pub(crate) fn zero_states(&self, c: &Config, what: &'static str) -> Result<Vec<LayerState>> {
        let (sums, history) = LayerState::floats(c);
        (0..c.num_layers)
            .map(|_| {
                Ok(LayerState {
                    sums: buffers::upload(&self.ctx, &self.stats, what, &vec![0f32; sums])?,
                    history: (history > 0).then(|| buffers::upload(&self.ctx, &self.stats, what, &vec![0f32; history])).transpose()?,
                })
            })
            .collect()
    }
}

/// What a [`Engine::sequence_pass`] gives back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Emit {
    /// Nothing (its captures are the point).
    Nothing,
    /// The surprisal of each next token.
    Surprisal,
    /// The logits of every position.
    Logits,
    /// The logits after the last token (a prompt's).
    LastLogits,
}

impl Emit {
    /// The name of what is read back, for errors.
    pub(crate) fn tensor(self) -> &'static str {
        match self {
            Emit::Surprisal => "surprisal",
            _ => "logits",
        }
    }

    /// Rows of logits a pass over `rows` tokens computes.
    pub(crate) fn logit_rows(self, rows: usize) -> usize {
        match self {
            Emit::Nothing => 0,
            Emit::LastLogits => 1,
            Emit::Surprisal | Emit::Logits => rows,
        }
    }
}

pub(crate) fn lengths_u32(batch: &Batch) -> Vec<u32> {
    batch.lengths.iter().map(|&l| l as u32).collect()
}

/// A hook of a run: `(recorder, layer, buffer)`.
pub(crate) type Hook<'h> = &'h mut dyn FnMut(&mut Recorder, usize, &wgpu::Buffer);

/// Work a caller records into a run as each layer goes by.
#[derive(Default)]
pub(crate) struct Hooks<'h> {
    /// Called with layer `i`'s attention input `[rows, d]` (after its
    /// LayerNorm when pre-norm, and after the local-context convolution when
    /// the model has one): what the projections read.
    pub attention_input: Option<Hook<'h>>,
}

/// One recorded run of the causal LM over some token rows.
pub(crate) struct Run<'a> {
    model: &'a GpuModel,
    gc: &'a GpuCausal,
    pos_table: &'a wgpu::Buffer,
    shape: Shape,
    /// Persistent decoder states (the streaming form), or `None` for the parallel form.
    states: Option<&'a [LayerState]>,
    /// Per-layer states a parallel run continues from and leaves updated (a segment of a long sequence).
    carry: Option<&'a [LayerState]>,
    /// Layers to run (all by default; fewer when only an early layer's hooks matter).
    layers: usize,
}

impl<'a> Run<'a> {
    pub(crate) fn new(model: &'a GpuModel, pos_table: &'a wgpu::Buffer, shape: Shape, states: Option<&'a [LayerState]>) -> Result<Run<'a>> {
        Ok(Run { model, gc: model.causal()?, pos_table, shape, states, carry: None, layers: model.config.num_layers })
    }

    /// A parallel run that continues a sequence from the per-layer states in
    /// `carry` (after `shape.t_base` tokens) and leaves them updated.
    pub(crate) fn continuing(mut self, carry: &'a [LayerState]) -> Run<'a> {
        self.carry = Some(carry);
        self
    }

    /// Runs only layers `0..layers`; the output then is no model output.
    pub(crate) fn first_layers(mut self, layers: usize) -> Run<'a> {
        self.layers = layers.min(self.model.config.num_layers);
        self
    }

    /// Records embedding and every layer; returns the buffer of the final
    /// states `[rows, d]`. `hooks` may record more work into the same
    /// submission as each layer goes by (see [`Hooks`]).
    pub(crate) fn record(&self, rec: &mut Recorder, ws: &mut Workspace, ids: &[u32], positions: &[u32], lengths: &[u32], hooks: Hooks) -> Result<wgpu::Buffer> {
        let Hooks { mut attention_input } = hooks;
        let model = self.model;
        let c = &model.config;
        let gc = self.gc;
        let d = c.embed_dim;
        let rows = ids.len();
        let (q, k, v, pc, width) = causal_columns(c);
        let eps = c.layer_norm_eps as f32;
        let ctx = rec.ctx;
        let dims = Dims { rows, d, ffn: c.ffn_embed_dim, proj_width: width, pre_norm: c.normalize_before, act: c.activation, eps };
        let mut s = Scratch::get(ws, ctx, rec.dummy, dims);
        let mut get = |name: &'static str, floats: usize| ws.get(ctx, name, floats as u64 * 4);
        let tok = get("tokens", rows);
        let pos = get("positions", rows);
        let lens = get("lengths", lengths.len());
        let state = if self.states.is_none() { get("causal_state", self.shape.state_floats()) } else { rec.dummy.clone() };
        ctx.queue.write_buffer(&tok, 0, bytemuck::cast_slice(ids));
        ctx.queue.write_buffer(&pos, 0, bytemuck::cast_slice(positions));
        ctx.queue.write_buffer(&lens, 0, bytemuck::cast_slice(lengths));

        embed::record(
            rec,
            embed::Gather { ids: &tok, table: &model.embed_tokens.buffer, positions: embed::Positions::Table(Some((&pos, self.pos_table))), mask: None, out: &s.x },
            rows,
            d,
            c.embed_scale as f32,
        );
        for i in 0..self.layers {
            let l = &gc.layers[if c.tie_layer_weights { 0 } else { i }];
            let layer_state = self.states.or(self.carry).map(|st| &st[i]);
            let mut ax = s.attention_input(rec, &l.block);
            if let Some(weight) = &l.conv {
                // The convolution's output goes to `o`, free until the attention writes it.
                conv::record(rec, &Conv {
                    x: ax,
                    weight: &weight.buffer,
                    width: c.conv_width,
                    lengths: &lens,
                    history: layer_state.and_then(|st| st.history.as_ref()).map(|h| &h.buffer),
                    out: &s.o,
                    batch: self.shape.batch,
                    rows: self.shape.rows,
                    dim: d,
                });
                ax = &s.o;
            }
            if let Some(hook) = attention_input.as_mut() {
                hook(rec, i, ax);
            }
            gemm::record(rec, &l.x_proj.gemm(ax, &s.proj, rows));
            let inputs = Inputs { x: &s.proj, stride: width, q, k, v, pc };
            let decay = gc.decay.as_ref().map(|t| &t.buffer);
            match self.states {
                None => {
                    let carry = self.carry.map(|c| &c[i].sums.buffer);
                    kernel::parallel(rec, &Causal {
                        inputs,
                        qp: &l.qp.buffer,
                        lengths: &lens,
                        decay,
                        state: &state,
                        carry,
                        out: &s.o,
                        shape: self.shape,
                    })
                }
                Some(st) => kernel::step(rec, &Causal {
                    inputs,
                    qp: &l.qp.buffer,
                    lengths: &lens,
                    decay,
                    state: &st[i].sums.buffer,
                    carry: None,
                    out: &s.o,
                    shape: self.shape,
                }),
            }
            s.record_tail(rec, &l.block);
        }
        if let (Some(g), true) = (&gc.final_norm, self.layers == c.num_layers) {
            s.record_norm(rec, g);
        }
        Ok(s.x)
    }

    /// Records the surprisal in bits of `targets[r]` (or 0 for
    /// [`kernel::NO_TARGET`]) after each row `r` of the final states `x`, into a
    /// workspace buffer.
    pub(crate) fn surprisal(&self, rec: &mut Recorder, ws: &mut Workspace, x: &wgpu::Buffer, targets: &[u32]) -> wgpu::Buffer {
        let rows = targets.len();
        let logits = self.logits(rec, ws, x, rows, "logits");
        let target = ws.get(rec.ctx, "targets", rows as u64 * 4);
        rec.ctx.queue.write_buffer(&target, 0, bytemuck::cast_slice(targets));
        let bits = ws.get(rec.ctx, "surprisal", rows as u64 * 4);
        kernel::logprob(rec, &logits, &target, &bits, rows, self.model.config.vocab_size);
        bits
    }

    /// Records `logits [rows, vocab] = x · W_out^T` into workspace buffer `name`.
    pub(crate) fn logits(&self, rec: &mut Recorder, ws: &mut Workspace, x: &wgpu::Buffer, rows: usize, name: &'static str) -> wgpu::Buffer {
        let model = self.model;
        let gc = self.gc;
        let c = &model.config;
        let logits = ws.get(rec.ctx, name, (rows * c.vocab_size) as u64 * 4);
        let w = gc.output.as_ref().unwrap_or(&model.embed_tokens);
        gemm::record(rec, &Gemm::new(x, &w.buffer, &gc.zero_bias.buffer, &logits, [rows, c.vocab_size, c.embed_dim]));
        logits
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Engine {
    /// Blocking form of [`Engine::causal_forward`].
    pub fn causal_forward_blocking(&mut self, model: &GpuModel, batch: &Batch) -> Result<CausalOutput> {
        pollster::block_on(self.causal_forward(model, batch))
    }

    /// Runs what [`Engine::causal_forward`] runs (every layer and the logits),
    /// without reading back, and returns the GPU's time for it: from timestamp
    /// queries when the device has them, else the wall clock (for benchmarks).
    pub fn time_causal(&mut self, model: &GpuModel, batch: &Batch) -> Result<f64> {
        let rows = batch.batch * batch.len;
        let (shape, positions) = self.prepare_parallel(model, batch, rows)?;
        let timestamps = crate::gpu::recorder::Timestamps::new(&self.ctx);
        self.time_submission(
            |e| {
                let Engine { ctx, cache, workspace, dummy, .. } = &mut *e;
                let mut rec = Recorder::new(ctx, cache, &dummy.buffer);
                let run = Run::new(model, &positions.table, shape, None)?;
                let x = run.record(&mut rec, workspace, &batch.tokens, &positions.index, &lengths_u32(batch), Hooks::default())?;
                run.logits(&mut rec, workspace, &x, rows, "logits");
                match &timestamps {
                    Some(t) => rec.submit_timed(t),
                    None => rec.submit(),
                }
                Ok(())
            },
            timestamps.as_ref(),
        )
    }
}
