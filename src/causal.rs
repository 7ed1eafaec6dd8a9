//! The causal LM on the GPU: the parallel (chunked) form for whole documents,
//! and the streaming form whose per-layer state does not grow with position.

use crate::config::Config;
use crate::block::{Dims, GpuBlock, Scratch};
use crate::engine::{Engine, ErrorScopes, GpuModel, GpuNorm};
use crate::error::{LunaError, Result};
use crate::gpu::buffers::{self, Tracked, Workspace};
use crate::gpu::recorder::Recorder;
use crate::input::Batch;
use crate::kernels::causal::{self as kernel, Inputs, Shape};
use crate::kernels::{embed, gemm};
use crate::model::{Linear, Model};
use crate::reference;

/// Logits of a causal LM: `[B, n, vocab]`.
#[derive(Clone, Debug)]
pub struct CausalOutput {
    pub batch: usize,
    pub len: usize,
    pub vocab: usize,
    pub logits: Vec<f32>,
}

/// A streaming decoder: one state `(Sk, Sv)` per layer and head on the GPU,
/// and the number of tokens consumed. Its size never depends on that number.
pub struct Decoder {
    /// Tokens consumed so far (prompt and generated).
    pub position: usize,
    model_id: u64,
    states: Vec<Tracked>,
}

impl Decoder {
    /// Bytes of GPU state this decoder holds (constant for a model).
    pub fn state_bytes(&self) -> u64 {
        self.states.iter().map(|s| s.buffer.size()).sum()
    }
}

pub(crate) struct GpuCausalLayer {
    /// `[q_proj · dh^-0.5; c (or k; v); pc_proj]` stacked: X is read once for all.
    wx: Tracked,
    bx: Tracked,
    /// `Q_P · dh^-0.5`, `[l, d]`: P is fixed, so this is computed once at load.
    qp: Tracked,
    /// Output projection, FFN and LayerNorms.
    block: GpuBlock,
}

pub(crate) struct GpuCausal {
    layers: Vec<GpuCausalLayer>,
    final_norm: Option<GpuNorm>,
    /// `output_projection.weight` when not tied to the token embedding.
    output: Option<Tracked>,
    zero_bias: Tracked,
}

/// Column offsets of q, k, v, pc in the stacked projection, and its width.
fn columns(c: &Config) -> (usize, usize, usize, usize, usize) {
    let d = c.embed_dim;
    if c.tie_kv {
        (0, d, d, 2 * d, 3 * d)
    } else {
        (0, d, 2 * d, 3 * d, 4 * d)
    }
}

impl Engine {
    pub(crate) fn load_causal(&self, model: &Model) -> Result<GpuCausal> {
        let c = &model.config;
        if c.projection_length > kernel::MAX_PROJECTION {
            return Err(LunaError::Unsupported(format!(
                "projection_length {} is over the {} the causal kernel handles",
                c.projection_length,
                kernel::MAX_PROJECTION
            )));
        }
        let s = (c.head_dim() as f64).powf(-0.5);
        let p = reference::causal::causal_p(model);
        let mut layers = Vec::new();
        for l in &model.causal_layers {
            let q_scaled = Linear {
                out: l.q_proj.out,
                inp: l.q_proj.inp,
                weight: l.q_proj.weight.iter().map(|&w| (w as f64 * s) as f32).collect(),
                bias: l.q_proj.bias.iter().map(|&b| (b as f64 * s) as f32).collect(),
            };
            let mut parts = vec![&q_scaled];
            parts.extend(Self::kv_parts(&l.kv));
            parts.push(&l.pc_proj);
            let (wx, bx) = self.stacked("causal wx", &parts)?;
            let mut qp = reference::ops::linear(&p, c.projection_length, &l.pq_proj);
            reference::ops::scale(&mut qp, s);
            let qp: Vec<f32> = qp.iter().map(|&v| v as f32).collect();
            layers.push(GpuCausalLayer {
                wx,
                bx,
                qp: self.up("qp", &qp)?,
                block: self.load_block(&l.out_proj, &l.fc1, &l.fc2, &l.self_attn_layer_norm, &l.final_layer_norm)?,
            });
        }
        Ok(GpuCausal {
            layers,
            final_norm: model.layer_norm.as_ref().map(|n| self.norm(n)).transpose()?,
            output: model.output_projection.as_ref().map(|w| self.up("output_projection", w)).transpose()?,
            zero_bias: self.up("zero bias", &vec![0.0; c.vocab_size])?,
        })
    }

    fn causal_weights(model: &GpuModel) -> Result<&GpuCausal> {
        model.causal.as_ref().ok_or_else(|| {
            LunaError::Unsupported("this model is an encoder; logits, scores and generation need a causal_lm".into())
        })
    }

    /// Sets the tokens per chunk of the parallel form (a power of two from 1
    /// to 4096; 64 by default). Results do not depend on it beyond rounding.
    pub fn set_causal_chunk(&mut self, chunk: usize) -> Result<()> {
        if !chunk.is_power_of_two() || chunk > 4096 {
            return Err(LunaError::Input(format!("chunk {chunk} must be a power of two up to 4096")));
        }
        self.causal_chunk = chunk;
        Ok(())
    }

    fn check_causal_sizes(&self, c: &Config, rows: usize, shape: &Shape, logit_rows: usize) -> Result<()> {
        let (_, _, _, _, width) = columns(c);
        let f = 4u64;
        for (what, floats) in [
            ("the fused q/k/v/pc projections", rows * width),
            ("the feed-forward hidden layer", rows * c.ffn_embed_dim),
            ("the causal chunk states", shape.state_floats()),
            ("the logits", logit_rows * c.vocab_size),
        ] {
            buffers::check_binding(&self.ctx, what, floats as u64 * f)?;
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

    /// Pops the error scopes of a call; a failure clears the workspace so the engine stays usable.
    pub(crate) async fn close<T>(&mut self, scope: ErrorScopes, result: Result<T>) -> Result<T> {
        let scoped = scope.pop_async(&self.ctx).await;
        if result.is_err() || scoped.is_err() {
            self.workspace.clear();
        }
        scoped?;
        result
    }

    /// Checks a batch for the parallel form and sizes its buffers.
    pub(crate) fn prepare_parallel(&self, model: &GpuModel, batch: &Batch, logit_rows: usize) -> Result<(Shape, wgpu::Buffer)> {
        self.ctx.check_alive()?;
        Self::causal_weights(model)?;
        batch.check_for(&model.config)?;
        let shape = self.parallel_shape(&model.config, batch);
        self.check_causal_sizes(&model.config, batch.batch * batch.len, &shape, logit_rows)?;
        let pos_table = self.token_positions(model, batch.max_position() + 1)?;
        Ok((shape, pos_table))
    }

    /// Logits of every position of a batch of causal sequences, in one parallel pass.
    pub async fn causal_forward(&mut self, model: &GpuModel, batch: &Batch) -> Result<CausalOutput> {
        let rows = batch.batch * batch.len;
        let (shape, pos_table) = self.prepare_parallel(model, batch, rows)?;
        let vocab = model.config.vocab_size;
        let scope = ErrorScopes::push(&self.ctx);
        let result = async {
            let Engine { ctx, cache, workspace, dummy, .. } = &mut *self;
            let mut rec = Recorder::new(ctx, cache, &dummy.buffer);
            let run = Run::new(model, &pos_table, shape, None)?;
            let x = run.record(&mut rec, workspace, &batch.tokens, &batch.positions, &lengths_u32(batch), Hooks::default())?;
            let logits = run.logits(&mut rec, workspace, &x, rows, "logits");
            rec.submit();
            let logits = buffers::read_f32(ctx, &[(&logits, rows * vocab)]).await?.remove(0);
            Ok(CausalOutput { batch: batch.batch, len: batch.len, vocab, logits })
        }
        .await;
        self.close(scope, result).await
    }

    /// Surprisal in bits of each next token, `[B, n]`: entry `t` is
    /// `-log2 p(tokens[t+1] | tokens[..=t])` for `t + 1 < length`, else 0.
    pub async fn score(&mut self, model: &GpuModel, batch: &Batch) -> Result<Vec<f32>> {
        if batch.batch == 1 && batch.lengths[0] == batch.len && batch.len > self.segment_rows(&model.config, 0) {
            // One long document: segment by segment, in memory that does not grow with it.
            batch.check_for(&model.config)?;
            let mut bits = self.sequence_pass(model, &batch.tokens, &[], true).await?.unwrap_or_default();
            if let Some(last) = bits.last_mut() {
                *last = 0.0;
            }
            return Ok(bits);
        }
        let rows = batch.batch * batch.len;
        let (shape, pos_table) = self.prepare_parallel(model, batch, rows)?;
        let scope = ErrorScopes::push(&self.ctx);
        let result = async {
            let Engine { ctx, cache, workspace, dummy, .. } = &mut *self;
            let mut rec = Recorder::new(ctx, cache, &dummy.buffer);
            let run = Run::new(model, &pos_table, shape, None)?;
            let x = run.record(&mut rec, workspace, &batch.tokens, &batch.positions, &lengths_u32(batch), Hooks::default())?;
            let bits = run.surprisal(&mut rec, workspace, &x, &next_tokens(batch));
            rec.submit();
            Ok(buffers::read_f32(ctx, &[(&bits, rows)]).await?.remove(0))
        }
        .await;
        self.close(scope, result).await
    }

    /// Runs a prompt with the parallel form and returns a decoder holding the
    /// state it leaves, with the logits after the prompt's last token.
    pub async fn prefill(&mut self, model: &GpuModel, tokens: &[u32]) -> Result<(Decoder, Vec<f32>)> {
        if tokens.is_empty() {
            return Err(LunaError::Input("the prompt is empty; give at least one token".into()));
        }
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let batch = Batch::new(&model.config, &ids, 1, tokens.len())?;
        let (shape, pos_table) = self.prepare_parallel(model, &batch, 1)?;
        if batch.lengths[0] != tokens.len() {
            return Err(LunaError::Input(format!(
                "the prompt holds the padding token {}; a prompt must be real tokens only",
                model.config.padding_idx
            )));
        }
        let c = &model.config;
        let (d, vocab, n) = (c.embed_dim, c.vocab_size, tokens.len());
        let block = c.num_heads * shape.block();
        let states = (0..c.num_layers)
            .map(|_| buffers::upload(&self.ctx, &self.stats, "decoder state", &vec![0f32; block]))
            .collect::<Result<Vec<_>>>()?;
        // The block of the chunk holding the last token ends as the final state.
        let last_chunk = (n - 1) / shape.chunk;
        let scope = ErrorScopes::push(&self.ctx);
        let result = async {
            let Engine { ctx, cache, workspace, dummy, .. } = &mut *self;
            let mut rec = Recorder::new(ctx, cache, &dummy.buffer);
            let run = Run::new(model, &pos_table, shape, None)?;
            let mut keep = |rec: &mut Recorder, layer: usize, state: &wgpu::Buffer| {
                rec.copy(state, last_chunk * block, &states[layer].buffer, 0, block);
            };
            let x = run.record(&mut rec, workspace, &batch.tokens, &batch.positions, &lengths_u32(&batch), Hooks { after_attention: Some(&mut keep), ..Hooks::default() })?;
            let last = workspace.get(ctx, "last_x", d as u64 * 4);
            rec.copy(&x, (n - 1) * d, &last, 0, d);
            let logits = run.logits(&mut rec, workspace, &last, 1, "last_logits");
            rec.submit();
            Ok(buffers::read_f32(ctx, &[(&logits, vocab)]).await?.remove(0))
        }
        .await;
        let logits = self.close(scope, result).await?;
        Ok((Decoder { position: n, model_id: model.id, states }, logits))
    }

    /// Consumes one token with the streaming form; returns the logits after it.
    pub async fn step(&mut self, model: &GpuModel, decoder: &mut Decoder, token: u32) -> Result<Vec<f32>> {
        self.ctx.check_alive()?;
        Self::causal_weights(model)?;
        let c = &model.config;
        if decoder.model_id != model.id {
            return Err(LunaError::Input("this decoder was started with another model".into()));
        }
        if token as usize >= c.vocab_size || token as usize == c.padding_idx {
            return Err(LunaError::Input(format!(
                "token {token} is not a real token of this model (vocabulary [0, {}), padding {})",
                c.vocab_size, c.padding_idx
            )));
        }
        if c.learned_pos && decoder.position >= c.max_positions {
            return Err(LunaError::Input(format!(
                "the sequence is at max_positions = {} of this model's learned positions; it cannot grow further",
                c.max_positions
            )));
        }
        let position = (c.padding_idx + decoder.position + 1) as u32;
        let pos_table = self.token_positions(model, position as usize + 1)?;
        let shape = Shape {
            batch: 1,
            rows: 1,
            heads: c.num_heads,
            head_dim: c.head_dim(),
            proj_len: c.projection_length,
            chunk: 1,
            t_base: decoder.position,
        };
        let vocab = c.vocab_size;
        let scope = ErrorScopes::push(&self.ctx);
        let result = async {
            let Engine { ctx, cache, workspace, dummy, .. } = &mut *self;
            let mut rec = Recorder::new(ctx, cache, &dummy.buffer);
            let run = Run::new(model, &pos_table, shape, Some(&decoder.states))?;
            let x = run.record(&mut rec, workspace, &[token], &[position], &[1], Hooks::default())?;
            let logits = run.logits(&mut rec, workspace, &x, 1, "last_logits");
            rec.submit();
            Ok(buffers::read_f32(ctx, &[(&logits, vocab)]).await?.remove(0))
        }
        .await;
        let logits = self.close(scope, result).await?;
        decoder.position += 1;
        Ok(logits)
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

pub(crate) fn lengths_u32(batch: &Batch) -> Vec<u32> {
    batch.lengths.iter().map(|&l| l as u32).collect()
}

/// Tokens per segment when one long sequence runs segment by segment.
pub(crate) const SEGMENT: usize = 16384;

/// A GEMM recorded on a layer's attention input during a [`Engine::sequence_pass`]:
/// `out[t, :] = ax[t, :] · w^T + b` for every token `t`, `w` `[width, d]`, `out` `[n, width]`.
pub(crate) struct Capture<'c> {
    pub layer: usize,
    pub w: &'c wgpu::Buffer,
    pub b: &'c wgpu::Buffer,
    pub width: usize,
    pub out: &'c wgpu::Buffer,
}

impl Engine {
    /// Rows per segment of a long sequence: [`Engine::set_segment_rows`], or fewer when a
    /// segment's largest buffer (`extra` floats per row included) would not
    /// fit one binding; a multiple of the chunk.
    pub(crate) fn segment_rows(&self, c: &Config, extra: usize) -> usize {
        let (_, _, _, _, width) = columns(c);
        let per_row = [width, c.ffn_embed_dim, c.vocab_size, extra, c.embed_dim].into_iter().max().unwrap_or(1) as u64 * 4;
        let fit = (self.ctx.max_binding() / per_row) as usize;
        let chunk = self.causal_chunk;
        (fit.min(self.segment) / chunk * chunk).max(chunk)
    }

    /// Sets the most tokens per segment when one long document is scored
    /// segment by segment (16,384 by default; rounded down to a multiple of
    /// the chunk). Results do not depend on it beyond rounding.
    pub fn set_segment_rows(&mut self, rows: usize) -> Result<()> {
        if rows == 0 {
            return Err(LunaError::Input("a segment holds at least one token".into()));
        }
        self.segment = rows;
        Ok(())
    }

    /// Runs one sequence of real tokens through the causal LM segment by
    /// segment: each segment is a parallel pass (one submission) that starts
    /// from the per-layer states the previous one left. Memory is that of one
    /// segment, whatever the length. Records `captures` on the way; with
    /// `score`, returns the surprisal of each next token (`[n]`, entry `t` for
    /// token `t + 1`, the last entry 0).
    pub(crate) async fn sequence_pass(&mut self, model: &GpuModel, tokens: &[u32], captures: &[Capture<'_>], score: bool) -> Result<Option<Vec<f32>>> {
        self.ctx.check_alive()?;
        Self::causal_weights(model)?;
        let c = &model.config;
        let n = tokens.len();
        if n == 0 {
            return Err(LunaError::Input("no tokens: give at least one".into()));
        }
        let extra = captures.iter().map(|k| k.width).max().unwrap_or(0);
        let seg = self.segment_rows(c, extra);
        let (d, heads, pad) = (c.embed_dim, c.num_heads, c.padding_idx);
        let block = heads * 2 * c.projection_length * c.head_dim();
        let carry = (0..c.num_layers)
            .map(|_| buffers::upload(&self.ctx, &self.stats, "carried state", &vec![0f32; block]))
            .collect::<Result<Vec<_>>>()?;
        let bits_all = if score { Some(buffers::create(&self.ctx, &self.stats, "the surprisal", n as u64 * 4)?) } else { None };
        let last = if score { c.num_layers } else { captures.iter().map(|k| k.layer + 1).max().unwrap_or(0) };
        for start in (0..n).step_by(seg) {
            let end = (start + seg).min(n);
            let rows = end - start;
            let shape = Shape {
                batch: 1,
                rows,
                heads,
                head_dim: c.head_dim(),
                proj_len: c.projection_length,
                chunk: self.causal_chunk.min(rows.next_power_of_two()),
                t_base: start,
            };
            self.check_causal_sizes(c, rows, &shape, if score { rows } else { 0 })?;
            // Positions: learned ones by index; sinusoids as this segment's own rows.
            let (table, positions): (Option<Tracked>, Vec<u32>) = match &model.embed_positions {
                Some(_) => (None, (start..end).map(|t| (pad + 1 + t) as u32).collect()),
                None => {
                    let mut rows_table = Vec::with_capacity(rows * d);
                    for t in start..end {
                        rows_table.extend(reference::ops::token_sinusoid_row(pad + 1 + t, pad, d).iter().map(|&v| v as f32));
                    }
                    (Some(self.up("segment positions", &rows_table)?), (0..rows as u32).collect())
                }
            };
            let pos_table = match (&table, &model.embed_positions) {
                (Some(t), _) => t.buffer.clone(),
                (None, Some(p)) => p.buffer.clone(),
                (None, None) => unreachable!("one of the two position sources exists"),
            };
            let targets: Vec<u32> = (start..end).map(|t| if t + 1 < n { tokens[t + 1] } else { kernel::NO_TARGET }).collect();
            let scope = ErrorScopes::push(&self.ctx);
            let result = async {
                let Engine { ctx, cache, workspace, dummy, .. } = &mut *self;
                let mut rec = Recorder::new(ctx, cache, &dummy.buffer);
                let run = Run::new(model, &pos_table, shape, None)?.continuing(&carry).first_layers(last);
                let scratch = (!captures.is_empty()).then(|| workspace.get(ctx, "captured", (rows * extra) as u64 * 4));
                let mut capture = |rec: &mut Recorder, i: usize, ax: &wgpu::Buffer| {
                    if let Some(scratch) = &scratch {
                        for k in captures.iter().filter(|k| k.layer == i) {
                            gemm::encode(rec, ax, k.w, k.b, None, scratch, [rows, k.width, d], None);
                            rec.copy(scratch, 0, k.out, start * k.width, rows * k.width);
                        }
                    }
                };
                let hooks = Hooks { attention_input: Some(&mut capture), ..Hooks::default() };
                let x = run.record(&mut rec, workspace, &tokens[start..end], &positions, &[rows as u32], hooks)?;
                if let Some(all) = &bits_all {
                    let bits = run.surprisal(&mut rec, workspace, &x, &targets);
                    rec.copy(&bits, 0, &all.buffer, start, rows);
                }
                rec.submit();
                Ok(())
            }
            .await;
            self.close(scope, result).await?;
            drop(table);
        }
        match &bits_all {
            Some(all) => Ok(Some(buffers::read_f32(&self.ctx, &[(&all.buffer, n)]).await?.remove(0))),
            None => Ok(None),
        }
    }
}

/// A hook of a run: `(recorder, layer, buffer)`.
pub(crate) type Hook<'h> = &'h mut dyn FnMut(&mut Recorder, usize, &wgpu::Buffer);

/// Work a caller records into a run as each layer goes by.
#[derive(Default)]
pub(crate) struct Hooks<'h> {
    /// Called with layer `i`'s attention input `[rows, d]` (after its
    /// LayerNorm when pre-norm), before the attention reads it.
    pub attention_input: Option<Hook<'h>>,
    /// Called after layer `i`'s attention, while the buffer holds its chunk
    /// states (the parallel form only).
    pub after_attention: Option<Hook<'h>>,
}

/// One recorded run of the causal LM over some token rows.
pub(crate) struct Run<'a> {
    model: &'a GpuModel,
    gc: &'a GpuCausal,
    pos_table: &'a wgpu::Buffer,
    shape: Shape,
    /// Persistent decoder states (the streaming form), or `None` for the parallel form.
    states: Option<&'a [Tracked]>,
    /// Per-layer states a parallel run continues from and leaves updated (a segment of a long sequence).
    carry: Option<&'a [Tracked]>,
    /// Layers to run (all by default; fewer when only an early layer's hooks matter).
    layers: usize,
}

impl<'a> Run<'a> {
    pub(crate) fn new(model: &'a GpuModel, pos_table: &'a wgpu::Buffer, shape: Shape, states: Option<&'a [Tracked]>) -> Result<Run<'a>> {
        Ok(Run { model, gc: Engine::causal_weights(model)?, pos_table, shape, states, carry: None, layers: model.config.num_layers })
    }

    /// A parallel run that continues a sequence from the per-layer states in
    /// `carry` (after `shape.t_base` tokens) and leaves them updated.
    pub(crate) fn continuing(mut self, carry: &'a [Tracked]) -> Run<'a> {
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
        let Hooks { mut attention_input, mut after_attention } = hooks;
        let model = self.model;
        let c = &model.config;
        let gc = self.gc;
        let d = c.embed_dim;
        let rows = ids.len();
        let (q, k, v, pc, width) = columns(c);
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

        embed::encode(
            rec,
            embed::Gather { ids: &tok, table: &model.embed_tokens.buffer, positions: Some((&pos, self.pos_table)), mask: None, out: &s.x },
            rows,
            d,
            c.embed_scale as f32,
        );
        for i in 0..self.layers {
            let l = &gc.layers[if c.tie_layer_weights { 0 } else { i }];
            let ax = s.attention_input(rec, &l.block);
            if let Some(hook) = attention_input.as_mut() {
                hook(rec, i, ax);
            }
            gemm::encode(rec, ax, &l.wx.buffer, &l.bx.buffer, None, &s.proj, [rows, width, d], None);
            let inputs = Inputs { x: &s.proj, stride: width, q, k, v, pc };
            match self.states {
                None => {
                    let carry = self.carry.map(|c| &c[i].buffer);
                    kernel::parallel(rec, inputs, &l.qp.buffer, &lens, &state, carry, &s.o, self.shape)
                }
                Some(st) => kernel::step(rec, inputs, &l.qp.buffer, &lens, &st[i].buffer, &s.o, self.shape),
            }
            if let Some(hook) = after_attention.as_mut() {
                hook(rec, i, &state);
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
        gemm::encode(rec, x, &w.buffer, &gc.zero_bias.buffer, None, &logits, [rows, c.vocab_size, c.embed_dim], None);
        logits
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Engine {
    /// Blocking form of [`Engine::causal_forward`].
    pub fn causal_forward_blocking(&mut self, model: &GpuModel, batch: &Batch) -> Result<CausalOutput> {
        pollster::block_on(self.causal_forward(model, batch))
    }
    /// Blocking form of [`Engine::score`].
    pub fn score_blocking(&mut self, model: &GpuModel, batch: &Batch) -> Result<Vec<f32>> {
        pollster::block_on(self.score(model, batch))
    }
    /// Blocking form of [`Engine::prefill`].
    pub fn prefill_blocking(&mut self, model: &GpuModel, tokens: &[u32]) -> Result<(Decoder, Vec<f32>)> {
        pollster::block_on(self.prefill(model, tokens))
    }
    /// Blocking form of [`Engine::step`].
    pub fn step_blocking(&mut self, model: &GpuModel, decoder: &mut Decoder, token: u32) -> Result<Vec<f32>> {
        pollster::block_on(self.step(model, decoder, token))
    }
}
