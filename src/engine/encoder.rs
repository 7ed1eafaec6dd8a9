//! The Luna encoder on the GPU (docs/luna.md, "The encoder layer" and "The
//! encoder"): embedding and P, then per layer the pack queries, the pack's
//! K/V and the pack attention (P reads the sequence), the unpack K/V, the
//! unpack's queries and attention (every token reads the packed rows), P's
//! LayerNorm and the layer tail. No `[l', n]` or `[n, l']` score matrix is
//! ever stored.
//!
//! Memory follows the activations themselves (docs/ARCHITECTURE.md, "Memory"):
//! a long sequence runs in row blocks. Each block keeps its own layer input
//! `x` (one buffer per block, so no buffer grows past a binding however long
//! the sequence); everything else a layer needs per token lives in one
//! block's scratch (`engine::tail::Block`), reused block after block. Per
//! layer, every block first computes its pack K/V and writes the pack's
//! partial softmax states over its keys; one merge gives the packed rows;
//! then every block runs its unpack and tail. The pack over the whole
//! sequence is therefore exact, and a block costs no recomputation (pre-norm
//! layers redo one LayerNorm). A batch runs as groups of whole sequences, one
//! submission each ([`Cut`]).

use crate::config::Config;
use crate::engine::context::Engine;
use crate::engine::plan::{self, Cut, Need};
use crate::engine::tail::{Block, Dims};
use crate::engine::weights::{sinusoid_rows, GpuModel, GpuNorm};
use crate::error::{LunaError, Result};
use crate::gpu::buffers;
use crate::gpu::recorder::{Recorder, Timestamps};
use crate::gpu::scope::ErrorScopes;
use crate::input::{Batch, EncoderOutput};
use crate::kernels::attention::{self, Attention, Part, Shape, View};
use crate::kernels::gemm;
use crate::kernels::{embed, layernorm, softmax};

/// One group's recorded pass: the buffers holding `x` (one per block, with its
/// rows) and `p`.
struct GroupOut {
    x: Vec<(wgpu::Buffer, usize)>,
    p: wgpu::Buffer,
}

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
            let cut = self.encoder_cut(&model.config, batch)?;
            let bytes = self.check_sizes(&model.config, batch.len, batch.batch, batch.proj_len, cut, true)?;
            self.make_room(bytes);
            let d = model.config.embed_dim;
            let (mut x, mut p) = (Vec::new(), Vec::new());
            for seq0 in (0..batch.batch).step_by(cut.seqs) {
                let seqs = cut.seqs.min(batch.batch - seq0);
                let out = self.record_group(model, batch, seq0, seqs, cut, None)?;
                // Block by block, so that the staging memory is one block's.
                p.extend(buffers::read_output(&self.ctx, "p", &out.p, seqs * batch.proj_len * d).await?);
                for (block, rows) in &out.x {
                    x.extend(buffers::read_output(&self.ctx, "x", block, rows * d).await?);
                }
                self.report((seq0 + seqs) * batch.len, batch.batch * batch.len)?;
            }
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
        let cut = self.encoder_cut(&model.config, batch)?;
        let bytes = self.check_sizes(&model.config, batch.len, batch.batch, batch.proj_len, cut, false)?;
        self.make_room(bytes);
        // GPU timestamps cover one submission; several groups take the wall clock.
        let timestamps = if cut.seqs >= batch.batch { Timestamps::new(&self.ctx) } else { None };
        self.time_submission(
            |e| {
                for seq0 in (0..batch.batch).step_by(cut.seqs) {
                    e.record_group(model, batch, seq0, cut.seqs.min(batch.batch - seq0), cut, timestamps.as_ref())?;
                }
                Ok(())
            },
            timestamps.as_ref(),
        )
    }

    /// Blocking form of [`Engine::encode`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_blocking(&mut self, model: &GpuModel, batch: &Batch) -> Result<EncoderOutput> {
        pollster::block_on(self.encode(model, batch))
    }

    /// How a batch is cut into groups and row blocks (see [`Cut`]).
    pub fn encoder_cut(&self, c: &Config, batch: &Batch) -> Result<Cut> {
        self.cut_for(c, batch.len, batch.batch)
    }

    /// Bytes of GPU buffers beyond the weights that encoding `sequences`
    /// sequences of `n` tokens takes (activations, scratch; not the readback).
    pub fn encoder_memory(&self, c: &Config, n: usize, sequences: usize) -> Result<u64> {
        let cut = self.cut_for(c, n, sequences)?;
        Ok(plan::total(&encoder_plan(c, n, proj_len_for(c, n), cut, false)))
    }

    /// Checks, without any GPU work, that `sequences` sequences of `n` tokens
    /// would run (not read back) with the weights the engine holds now: the
    /// refusal a call would give, or `Ok`.
    pub fn encoder_check(&self, c: &Config, n: usize, sequences: usize) -> Result<()> {
        let cut = self.cut_for(c, n, sequences)?;
        self.check_sizes(c, n, sequences, proj_len_for(c, n), cut, false).map(|_| ())
    }

    fn cut_for(&self, c: &Config, n: usize, sequences: usize) -> Result<Cut> {
        let widest = [c.embed_dim, kv_width(c), c.ffn_embed_dim].into_iter().max().unwrap_or(1);
        self.cut_rows(widest, n, sequences, true)
    }

    /// Checks `sequences` sequences of `n` tokens (`proj_len` packed rows
    /// each) against the device before any GPU work (`engine::plan`);
    /// returns the bytes of the plan.
    fn check_sizes(&self, c: &Config, n: usize, sequences: usize, proj_len: usize, cut: Cut, readback: bool) -> Result<u64> {
        let needs = encoder_plan(c, n, proj_len, cut, readback);
        let plan_for = |n: usize| self.cut_for(c, n, 1).ok().map(|cut| plan::total(&encoder_plan(c, n, proj_len_for(c, n), cut, readback)));
        self.check_plan(&needs, sequences, n, cut, plan_for)?;
        Ok(plan::total(&needs))
    }

    /// Records and submits the whole pass over sequences `seq0..seq0 + seqs`
    /// of `batch`; returns where `x` and `p` lie.
    fn record_group(&mut self, model: &GpuModel, batch: &Batch, seq0: usize, seqs: usize, cut: Cut, timestamps: Option<&Timestamps>) -> Result<GroupOut> {
        let c = &model.config;
        let (n, proj_len, d) = (batch.len, batch.proj_len, c.embed_dim);
        // Row blocks `(first row, rows)` of the group's token rows.
        let blocks = cut.blocks(n, seqs);
        let rows_cap = blocks.iter().map(|b| b.1).max().unwrap_or(1);
        let (row0, packed_rows) = (seq0 * n, seqs * proj_len);
        let kvw = kv_width(c);
        let pre = c.normalize_before;
        let eps = c.layer_norm_eps as f32;
        let (pack_shape, unpack_shape) = shapes(c, batch, seqs);
        let parts = Part::cut(&pack_shape, if blocks.len() > 1 { cut.block_rows } else { n });
        let all_splits = parts[0].1.all_splits;
        let unpack_flash = unpack_shape.head_dim <= softmax::MAX_HEAD_DIM;
        let block_unpack = |rows: usize| if blocks.len() > 1 { Shape { q_rows: rows, ..unpack_shape } } else { unpack_shape };

        let ctx = &self.ctx;
        let ws = &mut self.workspace;
        let dims = Dims { rows: rows_cap, d, ffn: c.ffn_embed_dim, proj_width: kvw, pre_norm: pre, act: c.activation, eps };
        let blk = Block::get(ws, ctx, dims);
        // Per block: its layer input x, tokens, padding mask (and learned positions).
        for name in ["x", "tokens", "x_mask", "positions"] {
            ws.drop_from(ctx, name, blocks.len());
        }
        let q = &ctx.queue;
        let as_u32 = |m: &[bool]| m.iter().map(|&b| b as u32).collect::<Vec<u32>>();
        let mut xs = Vec::new();
        for (i, &(s, rows)) in blocks.iter().enumerate() {
            let range = row0 + s..row0 + s + rows;
            let x = ws.get_nth(ctx, "x", i, (rows * d) as u64 * 4);
            let tok = ws.get_nth(ctx, "tokens", i, rows as u64 * 4);
            let mask = ws.get_nth(ctx, "x_mask", i, rows as u64 * 4);
            q.write_buffer(&tok, 0, bytemuck::cast_slice(&batch.tokens[range.clone()]));
            q.write_buffer(&mask, 0, bytemuck::cast_slice(&as_u32(&batch.x_mask[range.clone()])));
            let pos = match &model.embed_positions {
                Some(_) => {
                    let pos = ws.get_nth(ctx, "positions", i, rows as u64 * 4);
                    q.write_buffer(&pos, 0, bytemuck::cast_slice(&batch.positions[range]));
                    Some(pos)
                }
                None => {
                    // The sinusoid rows go straight into x; the embedding adds to them.
                    q.write_buffer(&x, 0, bytemuck::cast_slice(&sinusoid_rows(c, &batch.positions[range])));
                    None
                }
            };
            xs.push((x, tok, mask, pos, rows));
        }
        let mut get = |name: &'static str, floats: usize| ws.get(ctx, name, floats as u64 * 4);
        let pmask = get("p_mask", packed_rows);
        let pids = get("p_ids", packed_rows);
        let mut p = get("p0", packed_rows * d);
        let mut p_alt = get("p1", packed_rows * d);
        let pn = if pre { get("p_norm", packed_rows * d) } else { self.dummy.buffer.clone() };
        let qp = get("qp", packed_rows * d);
        let yp = get("yp", packed_rows * d);
        let kv = get("kv", packed_rows * kvw);
        let partial = get("attn_partial", Part::scratch_floats(&pack_shape, all_splits).max(unpack_scratch(c, &block_unpack(rows_cap))));
        q.write_buffer(&pmask, 0, bytemuck::cast_slice(&as_u32(&batch.p_mask[seq0 * proj_len..(seq0 + seqs) * proj_len])));
        let p_ids: Vec<u32> = (0..seqs).flat_map(|_| 0..proj_len as u32).collect();
        q.write_buffer(&pids, 0, bytemuck::cast_slice(&p_ids));

        let mut rec = Recorder::new(ctx, &self.cache, &self.dummy.buffer);
        let scale = c.embed_scale as f32;
        let ln_emb = model.emb_norms.as_ref();
        // X: tokens + positions; masked rows zeroed here, or by the embedding LayerNorm.
        for (x, tok, mask, pos, rows) in &xs {
            let positions = match (pos, &model.embed_positions) {
                (Some(pos), Some(table)) => embed::Positions::Table(Some((pos, &table.buffer))),
                _ => embed::Positions::InOut,
            };
            let gather = embed::Gather { ids: tok, table: &model.embed_tokens.buffer, positions, mask: if ln_emb.is_some() { None } else { Some(mask) }, out: x };
            embed::record(&mut rec, gather, *rows, d, scale);
            if let Some((nx, _)) = ln_emb {
                blk.record_norm(&mut rec, nx, Some(mask), x, *rows);
            }
        }
        // P: projected embeddings rows 0..l' (+ unoffset sinusoids).
        embed::record(
            &mut rec,
            embed::Gather {
                ids: &pids,
                table: &model.projected_embeddings.buffer,
                positions: match &model.proj_positions {
                    Some(t) => embed::Positions::Table(Some((&pids, &t.buffer))),
                    None => embed::Positions::None,
                },
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
        if let Some((_, np)) = ln_emb {
            ln(&mut rec, &p, None, Some(np), Some(&pmask), &p_alt, packed_rows);
            std::mem::swap(&mut p, &mut p_alt);
        }

        for i in 0..c.num_layers {
            let l = model.layer(i);
            let ap = if pre {
                ln(&mut rec, &p, None, Some(&l.ln_proj), None, &pn, packed_rows);
                &pn
            } else {
                &p
            };
            gemm::record(&mut rec, &l.pq_proj.gemm(ap, &qp, packed_rows));
            // Pack: P rows read the whole sequence (Hp heads, padding masked), block by block.
            for ((x, _, mask, _, rows), (_, part)) in xs.iter().zip(&parts) {
                let input = blk.attention_input(&mut rec, x, &l.block, *rows);
                gemm::record(&mut rec, &l.pack_kv.gemm(input, &blk.w, *rows));
                let shape = if blocks.len() > 1 { Shape { k_rows: *rows, ..pack_shape } } else { pack_shape };
                attention::record_part(&mut rec, &Attention {
                    q: View { buffer: &qp, stride: d, offset: 0 },
                    k: View { buffer: &blk.w, stride: kvw, offset: 0 },
                    v: View { buffer: &blk.w, stride: kvw, offset: if c.tie_kv { 0 } else { d } },
                    key_mask: mask,
                    out: &yp,
                    out_stride: d,
                    shape,
                    scratch: &partial,
                }, *part);
            }
            if all_splits > 1 {
                attention::record_combine(&mut rec, pack_shape, all_splits, &partial, &yp, d);
            }
            // Unpack: every token reads the packed rows (H heads, masked P rows excluded).
            gemm::record(&mut rec, &l.kv_proj.gemm(&yp, &kv, packed_rows));
            for (x, _, _, _, rows) in &xs {
                // Pre-norm: LN(x) is still in the block scratch when there is one block.
                let input = if pre && blocks.len() == 1 { &blk.b } else { blk.attention_input(&mut rec, x, &l.block, *rows) };
                gemm::record(&mut rec, &l.q_proj.gemm(input, blk.queries(), *rows));
                let unpack = Attention {
                    q: View { buffer: blk.queries(), stride: d, offset: 0 },
                    k: View { buffer: &kv, stride: kvw, offset: 0 },
                    v: View { buffer: &kv, stride: kvw, offset: if c.tie_kv { 0 } else { d } },
                    key_mask: &pmask,
                    out: blk.attention_output(),
                    out_stride: d,
                    shape: block_unpack(*rows),
                    scratch: &partial,
                };
                if unpack_flash {
                    // Many queries over few keys: the tiled kernel stages the packed K/V once per query tile.
                    softmax::record_flash(&mut rec, &unpack)?;
                } else {
                    attention::record(&mut rec, &unpack);
                }
                blk.record_tail(&mut rec, &l.block, x, *rows);
            }
            // P = LN(P + Yp) (post-norm) or P + Yp (pre-norm).
            ln(&mut rec, &p, Some(&yp), if pre { None } else { Some(&l.ln_proj) }, None, &p_alt, packed_rows);
            std::mem::swap(&mut p, &mut p_alt);
        }
        if let Some((nx, np)) = &model.final_norms {
            for (x, _, _, _, rows) in &xs {
                blk.record_norm(&mut rec, nx, None, x, *rows);
            }
            ln(&mut rec, &p, None, Some(np), None, &p_alt, packed_rows);
            std::mem::swap(&mut p, &mut p_alt);
        }
        match timestamps {
            Some(t) => rec.submit_timed(t),
            None => rec.submit(),
        }
        Ok(GroupOut { x: xs.into_iter().map(|(x, _, _, _, rows)| (x, rows)).collect(), p })
    }
}

/// Every buffer a pass over sequences of `n` tokens cut as `cut` allocates
/// beyond the weights (as `Engine::record_group` does), and with `readback`
/// the staging that reads the outputs back.
/// `l'` of a single sequence of `n` tokens.
fn proj_len_for(c: &Config, n: usize) -> usize {
    if c.dynamic_projection { c.projection_length.min(n) } else { c.projection_length }
}

fn encoder_plan(c: &Config, n: usize, proj_len: usize, cut: Cut, readback: bool) -> Vec<Need> {
    let f = 4u64;
    let (d, kvw) = (c.embed_dim as u64, kv_width(c) as u64);
    let rows = cut.rows(n) as u64;
    let tokens = (cut.seqs * n) as u64;
    let packed = (cut.seqs * proj_len) as u64;
    let (dp, dh) = (c.pack_head_dim(), c.head_dim());
    let pack = Shape { batch: cut.seqs, q_rows: proj_len, k_rows: n, heads: c.num_pheads, head_dim: dp, scale: 1.0 };
    let unpack = Shape { batch: cut.seqs, q_rows: cut.block_rows.min(n), k_rows: proj_len, heads: c.num_heads, head_dim: dh, scale: 1.0 };
    let all_splits = Part::cut(&pack, cut.block_rows).first().map_or(1, |(_, p)| p.all_splits);
    let index_words = if c.learned_pos { 3 } else { 2 };
    let packed_sets = if c.normalize_before { 5 } else { 4 };
    let mut plan = vec![
        Need { what: "a block of the layer input", each: rows * d * f, total: tokens * d * f },
        Need { what: "the token ids, padding mask and positions of a block", each: rows * f, total: tokens * f * index_words },
        Need::one("a block's LayerNorm, queries and FFN output", rows * d * f),
        Need::one("a block of the pack's keys and values", rows * kvw.max(d) * f),
        Need::one("a block of the feed-forward hidden layer", rows * c.ffn_embed_dim as u64 * f),
        Need { what: "the packed rows (P, its queries, output and LayerNorm)", each: packed * d * f, total: packed * d * f * packed_sets },
        Need::one("the packed keys and values", packed * kvw * f),
        Need { what: "the packed rows' mask and ids", each: packed * f, total: 2 * packed * f },
        Need::one("the attention's partial results", Part::scratch_floats(&pack, all_splits).max(unpack_scratch(c, &unpack)) as u64 * f),
    ];
    if readback {
        // Read back block by block: one block's staging at a time.
        plan.push(Need::one("the readback of a block of x", rows * d * f));
        plan.push(Need::one("the readback of p", packed * d * f));
    }
    plan
}

/// Columns of the pack's and the unpack's K/V projections (`[k | v]`, or one block when tied).
fn kv_width(c: &Config) -> usize {
    if c.tie_kv { c.embed_dim } else { 2 * c.embed_dim }
}

/// The attention shapes of a group of `seqs` whole sequences: the pack (a
/// block's call has its own `k_rows`) and the unpack.
fn shapes(c: &Config, batch: &Batch, seqs: usize) -> (Shape, Shape) {
    let (dp, dh) = (c.pack_head_dim(), c.head_dim());
    let pack = Shape { batch: seqs, q_rows: batch.proj_len, k_rows: batch.len, heads: c.num_pheads, head_dim: dp, scale: (dp as f32).powf(-0.5) };
    let unpack = Shape { batch: seqs, q_rows: batch.len, k_rows: batch.proj_len, heads: c.num_heads, head_dim: dh, scale: (dh as f32).powf(-0.5) };
    (pack, unpack)
}

/// Floats of scratch the unpack of `shape` needs.
fn unpack_scratch(c: &Config, shape: &Shape) -> usize {
    if c.head_dim() <= softmax::MAX_HEAD_DIM { shape.flash_state_floats() } else { shape.scratch_floats() }
}
