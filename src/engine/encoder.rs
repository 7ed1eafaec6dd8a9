//! The Luna encoder on the GPU (docs/luna.md, "The encoder layer" and "The
//! encoder"): embedding and P, then per layer one GEMM for `[Q | Kp | Vp]`,
//! one for the pack queries, the pack attention (P reads the sequence), one
//! GEMM for the unpack K/V, the unpack attention (every token reads the packed
//! rows), P's LayerNorm and the shared layer tail. The whole pass is recorded
//! as one submission; no `[l', n]` or `[n, l']` score matrix is ever stored.

use crate::config::Config;
use crate::engine::context::Engine;
use crate::engine::tail::{Dims, Scratch};
use crate::engine::weights::{GpuModel, GpuNorm};
use crate::error::{LunaError, Result};
use crate::gpu::buffers;
use crate::gpu::recorder::{Recorder, Timestamps};
use crate::gpu::scope::ErrorScopes;
use crate::input::{Batch, EncoderOutput};
use crate::kernels::attention::{self, Attention, Shape, View};
use crate::kernels::gemm;
use crate::kernels::{embed, layernorm, softmax};

impl Engine {
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
        let result = async {
            let (x, p) = self.record_encoder(model, batch, None)?;
            let (nx, np) = (batch.batch * batch.len, batch.batch * batch.proj_len);
            let d = model.config.embed_dim;
            let mut v = buffers::read_f32(&self.ctx, &[(&x, nx * d), (&p, np * d)]).await?;
            let p = v.pop().expect("two buffers read");
            let x = v.pop().expect("two buffers read");
            Ok(EncoderOutput { batch: batch.batch, len: batch.len, proj_len: batch.proj_len, dim: d, x, p })
        }
        .await;
        self.close(scope, result).await
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

    /// Blocking form of [`Engine::encode`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_blocking(&mut self, model: &GpuModel, batch: &Batch) -> Result<EncoderOutput> {
        pollster::block_on(self.encode(model, batch))
    }

    /// Checks every buffer against the device before any GPU work is recorded.
    fn check_sizes(&self, c: &Config, batch: &Batch) -> Result<()> {
        let (token_rows, packed_rows) = ((batch.batch * batch.len) as u64, (batch.batch * batch.proj_len) as u64);
        let d = c.embed_dim as u64;
        let kv = if c.tie_kv { d } else { 2 * d };
        for (what, bytes) in [
            ("the fused q/k/v projections", token_rows * (d + kv) * 4),
            ("the feed-forward hidden layer", token_rows * c.ffn_embed_dim as u64 * 4),
            ("the sequence activations", token_rows * d * 4),
            ("the packed activations", packed_rows * kv * 4),
            ("the position table", (batch.max_position() as u64 + 1).next_power_of_two() * d * 4),
        ] {
            buffers::check_binding(&self.ctx, what, bytes)?;
        }
        buffers::check_dispatch_rows(&self.ctx, token_rows)?;
        Ok(())
    }

    /// Records and submits the whole forward pass; returns the buffers holding `x` and `p`.
    fn record_encoder(&mut self, model: &GpuModel, batch: &Batch, timestamps: Option<&Timestamps>) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
        let c = &model.config;
        self.check_sizes(c, batch)?;
        let (bsz, n, proj_len, d) = (batch.batch, batch.len, batch.proj_len, c.embed_dim);
        let (token_rows, packed_rows) = (bsz * n, bsz * proj_len);
        let pack_kv = if c.tie_kv { d } else { 2 * d };
        let wx = d + pack_kv;
        let kvw = pack_kv;
        let eps = c.layer_norm_eps as f32;
        let pos_table = self.token_positions(model, batch.max_position() + 1)?;

        let ctx = &self.ctx;
        let ws = &mut self.workspace;
        let pre = c.normalize_before;
        let dims = Dims { rows: token_rows, d, ffn: c.ffn_embed_dim, proj_width: wx, pre_norm: pre, act: c.activation, eps };
        let mut s = Scratch::get(ws, ctx, &self.dummy.buffer, dims);
        let mut get = |name: &'static str, floats: usize| ws.get(ctx, name, floats as u64 * 4);
        let tok = get("tokens", token_rows);
        let pos = get("positions", token_rows);
        let xmask = get("x_mask", token_rows);
        let pmask = get("p_mask", packed_rows);
        let pids = get("p_ids", packed_rows);
        let mut p = get("p0", packed_rows * d);
        let mut p_alt = get("p1", packed_rows * d);
        let pn = if pre { get("p_norm", packed_rows * d) } else { self.dummy.buffer.clone() };
        let qp = get("qp", packed_rows * d);
        let yp = get("yp", packed_rows * d);
        let kv = get("kv", packed_rows * kvw);
        let (dp, dh) = (c.pack_head_dim(), c.head_dim());
        let pack_shape = Shape { batch: bsz, q_rows: proj_len, k_rows: n, heads: c.num_pheads, head_dim: dp, scale: (dp as f32).powf(-0.5) };
        let unpack_shape = Shape { batch: bsz, q_rows: n, k_rows: proj_len, heads: c.num_heads, head_dim: dh, scale: (dh as f32).powf(-0.5) };
        let unpack_flash = dh <= softmax::MAX_HEAD_DIM;
        let unpack_scratch = if unpack_flash { unpack_shape.flash_state_floats() } else { unpack_shape.scratch_floats() };
        let partial = get("attn_partial", pack_shape.scratch_floats().max(unpack_scratch));

        let q = &ctx.queue;
        let as_u32 = |m: &[bool]| m.iter().map(|&b| b as u32).collect::<Vec<u32>>();
        q.write_buffer(&tok, 0, bytemuck::cast_slice(&batch.tokens));
        q.write_buffer(&pos, 0, bytemuck::cast_slice(&batch.positions));
        q.write_buffer(&xmask, 0, bytemuck::cast_slice(&as_u32(&batch.x_mask)));
        q.write_buffer(&pmask, 0, bytemuck::cast_slice(&as_u32(&batch.p_mask)));
        let p_ids: Vec<u32> = (0..bsz).flat_map(|_| 0..proj_len as u32).collect();
        q.write_buffer(&pids, 0, bytemuck::cast_slice(&p_ids));

        let mut rec = Recorder::new(ctx, &self.cache, &self.dummy.buffer);
        let scale = c.embed_scale as f32;
        let ln_emb = model.emb_norms.as_ref();
        // X: tokens + positions; masked rows zeroed here, or after the embedding LayerNorm.
        embed::record(
            &mut rec,
            embed::Gather {
                ids: &tok,
                table: &model.embed_tokens.buffer,
                positions: Some((&pos, &pos_table)),
                mask: if ln_emb.is_some() { None } else { Some(&xmask) },
                out: &s.x,
            },
            token_rows,
            d,
            scale,
        );
        // P: projected embeddings rows 0..l' (+ unoffset sinusoids).
        embed::record(
            &mut rec,
            embed::Gather {
                ids: &pids,
                table: &model.projected_embeddings.buffer,
                positions: model.proj_positions.as_ref().map(|t| (&pids, &t.buffer)),
                mask: if ln_emb.is_some() { None } else { Some(&pmask) },
                out: &p,
            },
            packed_rows,
            d,
            scale,
        );
        let ln = |rec: &mut Recorder, x: &wgpu::Buffer, r: Option<&wgpu::Buffer>, g: Option<&GpuNorm>, mask, out: &wgpu::Buffer, rows| {
            layernorm::record(rec, layernorm::Step { x, residual: r, norm: g.and_then(GpuNorm::pair), mask, out }, rows, d, eps)
        };
        if let Some((nx, np)) = ln_emb {
            ln(&mut rec, &s.x, None, Some(nx), Some(&xmask), &s.x_alt, token_rows);
            ln(&mut rec, &p, None, Some(np), Some(&pmask), &p_alt, packed_rows);
            std::mem::swap(&mut s.x, &mut s.x_alt);
            std::mem::swap(&mut p, &mut p_alt);
        }

        for i in 0..c.num_layers {
            let l = model.layer(i);
            // Inputs of the attention: X and P, or their LayerNorms (pre-norm).
            let ax = s.attention_input(&mut rec, &l.block);
            let ap = if pre {
                ln(&mut rec, &p, None, Some(&l.ln_proj), None, &pn, packed_rows);
                &pn
            } else {
                &p
            };
            gemm::record(&mut rec, &l.x_proj.gemm(ax, &s.proj, token_rows));
            gemm::record(&mut rec, &l.pq_proj.gemm(ap, &qp, packed_rows));
            // Pack: P rows read the whole sequence (Hp heads, padding masked).
            let v_pack = if c.tie_kv { d } else { 2 * d };
            attention::record(&mut rec, &Attention {
                q: View { buffer: &qp, stride: d, offset: 0 },
                k: View { buffer: &s.proj, stride: wx, offset: d },
                v: View { buffer: &s.proj, stride: wx, offset: v_pack },
                key_mask: &xmask,
                out: &yp,
                out_stride: d,
                shape: pack_shape,
                scratch: &partial,
            });
            // Unpack: every token reads the packed rows (H heads, masked P rows excluded).
            gemm::record(&mut rec, &l.kv_proj.gemm(&yp, &kv, packed_rows));
            let unpack = Attention {
                q: View { buffer: &s.proj, stride: wx, offset: 0 },
                k: View { buffer: &kv, stride: kvw, offset: 0 },
                v: View { buffer: &kv, stride: kvw, offset: if c.tie_kv { 0 } else { d } },
                key_mask: &pmask,
                out: &s.o,
                out_stride: d,
                shape: unpack_shape,
                scratch: &partial,
            };
            if unpack_flash {
                // Many queries over few keys: the tiled kernel stages the packed K/V once per query tile.
                softmax::record_flash(&mut rec, &unpack)?;
            } else {
                attention::record(&mut rec, &unpack);
            }
            // P = LN(P + Yp) (post-norm) or P + Yp (pre-norm); then X's output projection and FFN.
            ln(&mut rec, &p, Some(&yp), if pre { None } else { Some(&l.ln_proj) }, None, &p_alt, packed_rows);
            std::mem::swap(&mut p, &mut p_alt);
            s.record_tail(&mut rec, &l.block);
        }
        if let Some((nx, np)) = &model.final_norms {
            s.record_norm(&mut rec, nx);
            ln(&mut rec, &p, None, Some(np), None, &p_alt, packed_rows);
            std::mem::swap(&mut p, &mut p_alt);
        }
        match timestamps {
            Some(t) => rec.submit_timed(t),
            None => rec.submit(),
        }
        Ok((s.x, p))
    }
}
