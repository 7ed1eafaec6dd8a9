//! The engine: a GPU context with its pipeline cache and reusable workspace,
//! models uploaded to it, and the encoder forward pass recorded as one
//! submission of fused kernels.

use crate::config::Config;
use crate::error::{LunaError, Result};
use crate::gpu::buffers::{self, MemoryStats, Tracked, Workspace};
use crate::gpu::pipelines::PipelineCache;
use crate::gpu::recorder::{Recorder, Timestamps};
use crate::gpu::{AdapterChoice, GpuContext};
use crate::input::{Batch, EncoderOutput};
use crate::kernels::attention::{self, Shape, View};
use crate::block::{Dims, GpuBlock, Scratch};
use crate::kernels::{embed, gemm, layernorm, softmax};
use crate::model::{KvProj, Linear, Model, Norm};
use crate::reference::ops::{sinusoid_row, token_sinusoid_row};
use std::sync::{Arc, Mutex};

/// A Luna engine on one GPU.
pub struct Engine {
    pub ctx: GpuContext,
    pub(crate) cache: PipelineCache,
    pub(crate) stats: Arc<MemoryStats>,
    pub(crate) workspace: Workspace,
    pub(crate) dummy: Tracked,
    /// Tokens per chunk of the causal parallel form.
    pub(crate) causal_chunk: usize,
    /// Most tokens per segment when one long sequence runs segment by segment.
    pub(crate) segment: usize,
}

pub(crate) struct GpuNorm {
    pub(crate) weight: Tracked,
    pub(crate) bias: Tracked,
}

struct GpuLayer {
    /// `[q_proj; pack k; pack v]` stacked (pack k = v when tied): X is read once for all three.
    wx: Tracked,
    bx: Tracked,
    wpq: Tracked,
    bpq: Tracked,
    /// `[k; v]` of the unpack (one block when tied).
    wkv: Tracked,
    bkv: Tracked,
    /// `self_atten_proj_layer_norm`.
    ln_proj: GpuNorm,
    /// Output projection, FFN and X's LayerNorms.
    block: GpuBlock,
}

/// A model's weights on the GPU.
pub struct GpuModel {
    pub config: Config,
    /// Tells decoders which model they belong to.
    pub(crate) id: u64,
    pub(crate) embed_tokens: Tracked,
    /// Learned table, or `None` for sinusoids (built on demand in `token_pos`).
    pub(crate) embed_positions: Option<Tracked>,
    projected_embeddings: Tracked,
    /// Sinusoid rows 0..l for P, when positions are not learned.
    proj_positions: Option<Tracked>,
    emb_norms: Option<(GpuNorm, GpuNorm)>,
    final_norms: Option<(GpuNorm, GpuNorm)>,
    layers: Vec<GpuLayer>,
    /// Grow-only sinusoid table for token positions: (rows, buffer).
    token_pos: Mutex<Option<(usize, Tracked)>>,
    /// The causal LM's weights, for a `causal_lm` model.
    pub(crate) causal: Option<crate::causal::GpuCausal>,
}

impl GpuModel {
    fn layer(&self, i: usize) -> &GpuLayer {
        &self.layers[if self.config.tie_layer_weights { 0 } else { i }]
    }
}

pub(crate) fn norm(g: &GpuNorm) -> Option<(&wgpu::Buffer, &wgpu::Buffer)> {
    Some((&g.weight.buffer, &g.bias.buffer))
}

fn sinusoid_table(rows: usize, d: usize, zero_row: Option<usize>) -> Vec<f32> {
    let mut t = Vec::with_capacity(rows * d);
    for r in 0..rows {
        let row = match zero_row {
            Some(pad) => token_sinusoid_row(r, pad, d),
            None => sinusoid_row(r, d),
        };
        t.extend(row.iter().map(|&v| v as f32));
    }
    t
}

impl Engine {
    /// Opens the adapter named by `choice` (or the best one).
    pub async fn new(choice: &AdapterChoice) -> Result<Engine> {
        Ok(Engine::with_context(GpuContext::new(choice).await?))
    }

    /// Blocking form of [`Engine::new`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(choice: &AdapterChoice) -> Result<Engine> {
        pollster::block_on(Engine::new(choice))
    }

    pub fn with_context(ctx: GpuContext) -> Engine {
        let stats = Arc::new(MemoryStats::default());
        let dummy = buffers::upload(&ctx, &stats, "dummy", &[0u32; 4]).expect("16 bytes fit any device");
        Engine { workspace: Workspace::new(stats.clone()), cache: PipelineCache::default(), stats, dummy, ctx, causal_chunk: 64, segment: crate::causal::SEGMENT }
    }

    /// Bytes of GPU buffers the engine holds now, and the most it has held.
    pub fn memory(&self) -> (u64, u64) {
        (self.stats.live(), self.stats.peak())
    }

    /// Gives back the scratch buffers (they are reallocated on the next call).
    pub fn release_workspace(&mut self) {
        self.workspace.clear();
    }

    pub fn reset_peak_memory(&self) {
        self.stats.reset_peak();
    }

    /// Number of pipelines built so far.
    pub fn pipelines_built(&self) -> usize {
        self.cache.len()
    }

    /// Uploads `data` as a storage buffer (for running single kernels, as the kernel tests do).
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> Result<Tracked> {
        buffers::upload(&self.ctx, &self.stats, label, data)
    }

    /// A recorder for dispatching kernels directly; `submit` it, then read with [`Engine::read`].
    pub fn recorder(&self) -> Recorder<'_> {
        Recorder::new(&self.ctx, &self.cache, &self.dummy.buffer)
    }

    /// Reads the first `len` floats of each buffer back (asynchronous).
    pub async fn read(&self, sources: &[(&wgpu::Buffer, usize)]) -> Result<Vec<Vec<f32>>> {
        buffers::read_f32(&self.ctx, sources).await
    }

    /// Blocking form of [`Engine::read`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_blocking(&self, sources: &[(&wgpu::Buffer, usize)]) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.read(sources))
    }

    pub(crate) fn up(&self, label: &str, data: &[f32]) -> Result<Tracked> {
        buffers::upload(&self.ctx, &self.stats, label, data)
    }

    pub(crate) fn norm(&self, n: &Norm) -> Result<GpuNorm> {
        Ok(GpuNorm { weight: self.up("ln.weight", &n.weight)?, bias: self.up("ln.bias", &n.bias)? })
    }

    /// Stacks Linear layers that read the same input into one weight and bias.
    pub(crate) fn stacked(&self, label: &str, parts: &[&Linear]) -> Result<(Tracked, Tracked)> {
        let w: Vec<f32> = parts.iter().flat_map(|l| l.weight.iter().copied()).collect();
        let b: Vec<f32> = parts.iter().flat_map(|l| l.bias.iter().copied()).collect();
        Ok((self.up(label, &w)?, self.up(label, &b)?))
    }

    pub(crate) fn kv_parts(kv: &KvProj) -> Vec<&Linear> {
        match kv {
            KvProj::Tied(c) => vec![c],
            KvProj::Separate { k, v } => vec![k, v],
        }
    }

    /// Uploads a model's weights (blocking form of [`Engine::load_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(&self, model: &Model) -> Result<GpuModel> {
        pollster::block_on(self.load_async(model))
    }

    /// Uploads a model's weights; allocation failures come back as errors.
    pub async fn load_async(&self, model: &Model) -> Result<GpuModel> {
        self.ctx.check_alive()?;
        let c = &model.config;
        for (what, hd) in [("num_heads", c.head_dim()), ("num_pheads", c.pack_head_dim())] {
            if hd > attention::MAX_HEAD_DIM {
                return Err(LunaError::Unsupported(format!(
                    "head dimension {hd} (embed_dim / {what}) is over the {} the attention kernel handles",
                    attention::MAX_HEAD_DIM
                )));
            }
        }
        let scope = ErrorScopes::push(&self.ctx);
        let causal = if c.model == crate::config::ModelKind::CausalLm { Some(self.load_causal(model)?) } else { None };
        let mut layers = Vec::new();
        for l in &model.layers {
            let mut xparts = vec![&l.q_proj];
            xparts.extend(Self::kv_parts(&l.pack_kv));
            let (wx, bx) = self.stacked("wx", &xparts)?;
            let (wpq, bpq) = self.stacked("wpq", &[&l.pq_proj])?;
            let (wkv, bkv) = self.stacked("wkv", &Self::kv_parts(&l.unpack_kv))?;
            layers.push(GpuLayer {
                wx,
                bx,
                wpq,
                bpq,
                wkv,
                bkv,
                ln_proj: self.norm(&l.self_atten_proj_layer_norm)?,
                block: self.load_block(&l.out_proj, &l.fc1, &l.fc2, &l.self_attn_layer_norm, &l.final_layer_norm)?,
            });
        }
        let pair = |a: &Option<Norm>, b: &Option<Norm>| -> Result<Option<(GpuNorm, GpuNorm)>> {
            Ok(match (a, b) {
                (Some(a), Some(b)) => Some((self.norm(a)?, self.norm(b)?)),
                _ => None,
            })
        };
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let gm = GpuModel {
            config: c.clone(),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            causal,
            embed_tokens: self.up("embed_tokens", &model.embed_tokens)?,
            embed_positions: model.embed_positions.as_ref().map(|p| self.up("embed_positions", p)).transpose()?,
            projected_embeddings: self.up("projected_embeddings", &model.projected_embeddings)?,
            proj_positions: if c.learned_pos {
                None
            } else {
                Some(self.up("proj_positions", &sinusoid_table(c.projection_length, c.embed_dim, None))?)
            },
            emb_norms: pair(&model.emb_layer_norm, &model.proj_emb_layer_norm)?,
            final_norms: pair(&model.layer_norm, &model.proj_layer_norm)?,
            layers,
            token_pos: Mutex::new(None),
        };
        scope.pop_async(&self.ctx).await?;
        Ok(gm)
    }

    /// The token position table covering `rows` rows (learned, or a cached sinusoid table).
    pub(crate) fn token_positions(&self, model: &GpuModel, rows: usize) -> Result<wgpu::Buffer> {
        if let Some(p) = &model.embed_positions {
            return Ok(p.buffer.clone());
        }
        let mut cached = model.token_pos.lock().unwrap();
        if let Some((have, buf)) = cached.as_ref() {
            if *have >= rows {
                return Ok(buf.buffer.clone());
            }
        }
        let c = &model.config;
        let rows = rows.max(c.position_rows()).next_power_of_two();
        let table = sinusoid_table(rows, c.embed_dim, Some(c.padding_idx));
        let t = self.up("token_positions", &table)?;
        let buf = t.buffer.clone();
        *cached = Some((rows, t));
        Ok(buf)
    }

    /// Runs the encoder on a batch (asynchronous; nothing blocks on the web).
    pub async fn encode(&mut self, model: &GpuModel, batch: &Batch) -> Result<EncoderOutput> {
        self.ctx.check_alive()?;
        if model.causal.is_some() {
            return Err(LunaError::Unsupported(
                "this model is a causal_lm: it gives logits (causal_forward, score, generate), not encoder outputs".into(),
            ));
        }
        batch.check_for(&model.config)?;
        let scope = ErrorScopes::push(&self.ctx);
        let result = self.record_encoder(model, batch, None);
        let result = match result {
            Ok((x, p)) => {
                let (nx, np) = (batch.batch * batch.len, batch.batch * batch.proj_len);
                let d = model.config.embed_dim;
                match buffers::read_f32(&self.ctx, &[(&x, nx * d), (&p, np * d)]).await {
                    Ok(mut v) => {
                        let p = v.pop().unwrap();
                        let x = v.pop().unwrap();
                        Ok(EncoderOutput { batch: batch.batch, len: batch.len, proj_len: batch.proj_len, dim: d, x, p })
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let scoped = scope.pop_async(&self.ctx).await;
        if result.is_err() || scoped.is_err() {
            // A failed call leaves no half-sized scratch behind.
            self.workspace.clear();
        }
        scoped?;
        result
    }

    /// Runs the encoder without reading the outputs back and returns the time
    /// the GPU spent on it: from timestamp queries when the device has them,
    /// else the wall clock around the submission and a wait (for benchmarks).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn time_encoder(&mut self, model: &GpuModel, batch: &Batch) -> Result<f64> {
        batch.check_for(&model.config)?;
        let timestamps = Timestamps::new(&self.ctx);
        self.time_submission(|e| e.record_encoder(model, batch, timestamps.as_ref()).map(|_| ()), timestamps.as_ref())
    }

    /// Times one recorded submission (see [`Engine::time_encoder`]); the workspace is cleared on failure.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn time_submission(&mut self, record: impl FnOnce(&mut Engine) -> Result<()>, timestamps: Option<&Timestamps>) -> Result<f64> {
        self.ctx.check_alive()?;
        let scope = ErrorScopes::push(&self.ctx);
        let start = std::time::Instant::now();
        let result = record(self).and_then(|()| {
            self.ctx
                .device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| LunaError::Device(format!("waiting for the GPU failed: {e}")))?;
            let wall = start.elapsed().as_secs_f64();
            match timestamps {
                Some(t) => pollster::block_on(t.seconds(&self.ctx)),
                None => Ok(wall),
            }
        });
        let scoped = pollster::block_on(scope.pop_async(&self.ctx));
        if result.is_err() || scoped.is_err() {
            self.workspace.clear();
        }
        scoped?;
        result
    }

    /// Blocking form of [`Engine::encode`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_blocking(&mut self, model: &GpuModel, batch: &Batch) -> Result<EncoderOutput> {
        pollster::block_on(self.encode(model, batch))
    }

    /// Checks every buffer against the device before any GPU work is recorded.
    fn check_sizes(&self, c: &Config, batch: &Batch) -> Result<()> {
        let (rows_x, rows_p) = ((batch.batch * batch.len) as u64, (batch.batch * batch.proj_len) as u64);
        let d = c.embed_dim as u64;
        let kv = if c.tie_kv { d } else { 2 * d };
        for (what, bytes) in [
            ("the fused q/k/v projections", rows_x * (d + kv) * 4),
            ("the feed-forward hidden layer", rows_x * c.ffn_embed_dim as u64 * 4),
            ("the sequence activations", rows_x * d * 4),
            ("the packed activations", rows_p * kv * 4),
            ("the position table", (batch.max_position() as u64 + 1).next_power_of_two() * d * 4),
        ] {
            buffers::check_binding(&self.ctx, what, bytes)?;
        }
        let max_groups = self.ctx.limits.max_compute_workgroups_per_dimension as u64;
        if rows_x.div_ceil(64) > max_groups {
            return Err(LunaError::Input(format!(
                "{rows_x} token rows in one batch exceed this adapter's dispatch limit of {} rows; split the batch",
                max_groups * 64
            )));
        }
        Ok(())
    }

    /// Records and submits the whole forward pass; returns the buffers holding `x` and `p`.
    fn record_encoder(&mut self, model: &GpuModel, batch: &Batch, timestamps: Option<&Timestamps>) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
        let c = &model.config;
        self.check_sizes(c, batch)?;
        let (bsz, n, lp, d) = (batch.batch, batch.len, batch.proj_len, c.embed_dim);
        let (rows_x, rows_p) = (bsz * n, bsz * lp);
        let pack_kv = if c.tie_kv { d } else { 2 * d };
        let wx = d + pack_kv;
        let kvw = pack_kv;
        let eps = c.layer_norm_eps as f32;
        let pos_table = self.token_positions(model, batch.max_position() + 1)?;

        let ctx = &self.ctx;
        let ws = &mut self.workspace;
        let pre = c.normalize_before;
        let dims = Dims { rows: rows_x, d, ffn: c.ffn_embed_dim, proj_width: wx, pre_norm: pre, act: c.activation, eps };
        let mut s = Scratch::get(ws, ctx, &self.dummy.buffer, dims);
        let mut get = |name: &'static str, floats: usize| ws.get(ctx, name, floats as u64 * 4);
        let tok = get("tokens", rows_x);
        let pos = get("positions", rows_x);
        let xmask = get("x_mask", rows_x);
        let pmask = get("p_mask", rows_p);
        let pids = get("p_rows", rows_p);
        let mut p = get("p0", rows_p * d);
        let mut p_alt = get("p1", rows_p * d);
        let pn = if pre { get("p_norm", rows_p * d) } else { self.dummy.buffer.clone() };
        let qp = get("qp", rows_p * d);
        let yp = get("yp", rows_p * d);
        let kv = get("kv", rows_p * kvw);
        let (dp, dh) = (c.pack_head_dim(), c.head_dim());
        let pack_shape = Shape { batch: bsz, q_rows: lp, k_rows: n, heads: c.num_pheads, head_dim: dp, scale: (dp as f32).powf(-0.5) };
        let unpack_shape = Shape { batch: bsz, q_rows: n, k_rows: lp, heads: c.num_heads, head_dim: dh, scale: (dh as f32).powf(-0.5) };
        let unpack_flash = dh <= softmax::MAX_HEAD_DIM;
        let unpack_scratch = if unpack_flash { unpack_shape.flash_state_floats() } else { unpack_shape.scratch_floats() };
        let partial = get("attn_partial", pack_shape.scratch_floats().max(unpack_scratch));

        let q = &ctx.queue;
        let as_u32 = |m: &[bool]| m.iter().map(|&b| b as u32).collect::<Vec<u32>>();
        q.write_buffer(&tok, 0, bytemuck::cast_slice(&batch.tokens));
        q.write_buffer(&pos, 0, bytemuck::cast_slice(&batch.positions));
        q.write_buffer(&xmask, 0, bytemuck::cast_slice(&as_u32(&batch.x_mask)));
        q.write_buffer(&pmask, 0, bytemuck::cast_slice(&as_u32(&batch.p_mask)));
        let p_rows: Vec<u32> = (0..bsz).flat_map(|_| 0..lp as u32).collect();
        q.write_buffer(&pids, 0, bytemuck::cast_slice(&p_rows));

        let mut rec = Recorder::new(ctx, &self.cache, &self.dummy.buffer);
        let scale = c.embed_scale as f32;
        let ln_emb = model.emb_norms.as_ref();
        // X: tokens + positions; masked rows zeroed here, or after the embedding LayerNorm.
        embed::encode(
            &mut rec,
            embed::Gather {
                ids: &tok,
                table: &model.embed_tokens.buffer,
                positions: Some((&pos, &pos_table)),
                mask: if ln_emb.is_some() { None } else { Some(&xmask) },
                out: &s.x,
            },
            rows_x,
            d,
            scale,
        );
        // P: projected embeddings rows 0..l' (+ unoffset sinusoids).
        embed::encode(
            &mut rec,
            embed::Gather {
                ids: &pids,
                table: &model.projected_embeddings.buffer,
                positions: model.proj_positions.as_ref().map(|t| (&pids, &t.buffer)),
                mask: if ln_emb.is_some() { None } else { Some(&pmask) },
                out: &p,
            },
            rows_p,
            d,
            scale,
        );
        let ln = |rec: &mut Recorder, x: &wgpu::Buffer, r: Option<&wgpu::Buffer>, g: Option<&GpuNorm>, mask, out: &wgpu::Buffer, rows| {
            layernorm::encode(rec, layernorm::Step { x, residual: r, norm: g.and_then(norm), mask, out }, rows, d, eps)
        };
        if let Some((nx, np)) = ln_emb {
            ln(&mut rec, &s.x, None, Some(nx), Some(&xmask), &s.x_alt, rows_x);
            ln(&mut rec, &p, None, Some(np), Some(&pmask), &p_alt, rows_p);
            std::mem::swap(&mut s.x, &mut s.x_alt);
            std::mem::swap(&mut p, &mut p_alt);
        }

        for i in 0..c.num_layers {
            let l = model.layer(i);
            // Inputs of the attention: X and P, or their LayerNorms (pre-norm).
            let ax = s.attention_input(&mut rec, &l.block);
            let ap = if pre {
                ln(&mut rec, &p, None, Some(&l.ln_proj), None, &pn, rows_p);
                &pn
            } else {
                &p
            };
            gemm::encode(&mut rec, ax, &l.wx.buffer, &l.bx.buffer, None, &s.proj, [rows_x, wx, d], None);
            gemm::encode(&mut rec, ap, &l.wpq.buffer, &l.bpq.buffer, None, &qp, [rows_p, d, d], None);
            // Pack: P rows read the whole sequence (Hp heads, padding masked).
            let v_pack = if c.tie_kv { d } else { 2 * d };
            attention::encode(
                &mut rec,
                View { buffer: &qp, stride: d, offset: 0 },
                View { buffer: &s.proj, stride: wx, offset: d },
                View { buffer: &s.proj, stride: wx, offset: v_pack },
                &xmask,
                &yp,
                d,
                pack_shape,
                &partial,
            );
            // Unpack: every token reads the packed rows (H heads, masked P rows excluded).
            gemm::encode(&mut rec, &yp, &l.wkv.buffer, &l.bkv.buffer, None, &kv, [rows_p, kvw, d], None);
            let (q_view, k_view, v_view) = (
                View { buffer: &s.proj, stride: wx, offset: 0 },
                View { buffer: &kv, stride: kvw, offset: 0 },
                View { buffer: &kv, stride: kvw, offset: if c.tie_kv { 0 } else { d } },
            );
            if unpack_flash {
                // Many queries over few keys: the tiled kernel stages the packed K/V once per query tile.
                softmax::encode_flash(&mut rec, q_view, k_view, v_view, &pmask, &s.o, d, unpack_shape, &partial)?;
            } else {
                attention::encode(&mut rec, q_view, k_view, v_view, &pmask, &s.o, d, unpack_shape, &partial);
            }
            // P = LN(P + Yp) (post-norm) or P + Yp (pre-norm); then X's output projection and FFN.
            ln(&mut rec, &p, Some(&yp), if pre { None } else { Some(&l.ln_proj) }, None, &p_alt, rows_p);
            std::mem::swap(&mut p, &mut p_alt);
            s.record_tail(&mut rec, &l.block);
        }
        if let Some((nx, np)) = &model.final_norms {
            s.record_norm(&mut rec, nx);
            ln(&mut rec, &p, None, Some(np), None, &p_alt, rows_p);
            std::mem::swap(&mut p, &mut p_alt);
        }
        match timestamps {
            Some(t) => rec.submit_timed(t),
            None => rec.submit(),
        }
        Ok((s.x, p))
    }
}

/// Out-of-memory and validation error scopes around a unit of GPU work, so
/// that a failure comes back as a `LunaError` instead of aborting.
pub(crate) struct ErrorScopes {
    // Field order is drop order: scopes must pop in the reverse of their push order.
    validation: wgpu::ErrorScopeGuard,
    oom: wgpu::ErrorScopeGuard,
}

impl ErrorScopes {
    pub(crate) fn push(ctx: &GpuContext) -> ErrorScopes {
        let oom = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        ErrorScopes { validation, oom }
    }

    pub(crate) async fn pop_async(self, ctx: &GpuContext) -> Result<()> {
        let validation = self.validation.pop().await;
        let oom = self.oom.pop().await;
        if let Some(e) = oom {
            return Err(LunaError::OutOfMemory(format!("{e}; try a shorter sequence or a smaller batch")));
        }
        if let Some(e) = validation {
            return Err(LunaError::Device(format!("the GPU rejected the work (an engine bug, please report it): {e}")));
        }
        let uncaptured = ctx.take_errors();
        if !uncaptured.is_empty() {
            return Err(LunaError::Device(uncaptured.join("; ")));
        }
        ctx.check_alive()
    }
}
