//! The pack weights of a causal LM, for looking at what the `l` packed slots
//! read: at layer `i`, head `h` and slot `j`, token `t` is folded into the
//! state with weight
//!
//! ```text
//! A[t, h, j] = softplus_ln2( Linear(pc_proj)(X_i)[t]_h · Q_P,h[j] )      Q_P = Linear(pq_proj)(P) · dh^-0.5
//! ```
//!
//! where `X_i` is the input of layer `i`'s attention (after its LayerNorm when
//! `normalize_before`) (LUNA_SPEC.md, "Causal Luna attention").
//!
//! The engine's causal forward never writes `A` out, so this runs its own
//! pass on the GPU with the same kernels: layers `0..i` in full, then one GEMM
//! whose weight folds `pc_proj` and the head-blocked `Q_P` together
//! (`[H·l, d]`), so the result is `[n, H·l]` scores, turned into weights on the
//! host. The layer weights it needs are uploaded for the call and dropped
//! after it; the scratch comes from the engine's workspace.

use crate::config::ModelKind;
use crate::engine::{norm, Engine, ErrorScopes, GpuModel, GpuNorm};
use crate::error::{LunaError, Result};
use crate::gpu::buffers::{self, Tracked};
use crate::gpu::recorder::Recorder;
use crate::input::Batch;
use crate::kernels::causal::{self as kernel, Inputs, Shape};
use crate::kernels::{embed, gemm, layernorm};
use crate::model::{Linear, Model};
use crate::reference;
use crate::reference::causal::softplus_ln2;

/// Pack weights of one layer over a sequence: `values[(t * heads + h) * slots + j]`.
#[derive(Clone, Debug)]
pub struct PackWeights {
    pub layer: usize,
    /// Tokens `n`.
    pub len: usize,
    pub heads: usize,
    /// The projection length `l`.
    pub slots: usize,
    pub values: Vec<f32>,
}

impl PackWeights {
    /// Weight of token `t` for head `h`, slot `j`.
    pub fn get(&self, t: usize, h: usize, j: usize) -> f32 {
        self.values[(t * self.heads + h) * self.slots + j]
    }
}

struct FullLayer {
    wx: Tracked,
    bx: Tracked,
    qp: Tracked,
    wout: Tracked,
    bout: Tracked,
    w1: Tracked,
    b1: Tracked,
    w2: Tracked,
    b2: Tracked,
    ln_attn: GpuNorm,
    ln_final: GpuNorm,
}

/// `Q_P · dh^-0.5` of a causal layer, `[l, d]`, in float64.
fn scaled_qp(model: &Model, layer: usize) -> Vec<f64> {
    let c = &model.config;
    let p = reference::causal::causal_p(model);
    let mut qp = reference::ops::linear(&p, c.projection_length, &model.causal_layer(layer).pq_proj);
    reference::ops::scale(&mut qp, (c.head_dim() as f64).powf(-0.5));
    qp
}

impl Engine {
    /// The pack weights `A` of `layer` (0-based) over one sequence of `tokens`
    /// (real tokens, no padding), `[n, H, l]`. `gpu` must be `model` uploaded
    /// to this engine. Asynchronous: nothing blocks on the web.
    pub async fn pack_weights(&mut self, gpu: &GpuModel, model: &Model, tokens: &[u32], layer: usize) -> Result<PackWeights> {
        self.ctx.check_alive()?;
        let c = &model.config;
        if c.model != ModelKind::CausalLm {
            return Err(LunaError::Unsupported("pack weights are shown for a causal_lm; this model is an encoder".into()));
        }
        if gpu.config != *c {
            return Err(LunaError::Input("the uploaded model and the host model differ; pass the same model to both".into()));
        }
        if layer >= c.num_layers {
            return Err(LunaError::Input(format!("layer {layer} does not exist: the model has {} layers (0..{})", c.num_layers, c.num_layers)));
        }
        if tokens.is_empty() {
            return Err(LunaError::Input("no tokens: give at least one".into()));
        }
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let batch = Batch::new(c, &ids, 1, tokens.len())?;
        if batch.lengths[0] != tokens.len() {
            return Err(LunaError::Input(format!("the tokens hold the padding token {}; give real tokens only", c.padding_idx)));
        }
        let (d, heads, l, n) = (c.embed_dim, c.num_heads, c.projection_length, tokens.len());
        let dh = c.head_dim();
        let width = if c.tie_kv { 4 * d } else { 5 * d };
        let shape = Shape {
            batch: 1,
            rows: n,
            heads,
            head_dim: dh,
            proj_len: l,
            chunk: self.causal_chunk.min(n.next_power_of_two()),
            t_base: 0,
        };
        for (what, floats) in [
            ("the fused q/k/v/pc projections", n * width),
            ("the feed-forward hidden layer", n * c.ffn_embed_dim),
            ("the causal chunk states", shape.state_floats()),
            ("the pack weights", n * heads * l),
        ] {
            buffers::check_binding(&self.ctx, what, floats as u64 * 4)?;
        }
        let pos_table = self.token_positions(gpu, batch.max_position() + 1)?;

        let scope = ErrorScopes::push(&self.ctx);
        let result = async {
            let s = (dh as f64).powf(-0.5);
            // Layers before `layer`, whole; they live until the end of this call.
            let mut full = Vec::new();
            for i in 0..layer {
                let lw = model.causal_layer(i);
                let q_scaled = Linear {
                    out: lw.q_proj.out,
                    inp: lw.q_proj.inp,
                    weight: lw.q_proj.weight.iter().map(|&w| (w as f64 * s) as f32).collect(),
                    bias: lw.q_proj.bias.iter().map(|&b| (b as f64 * s) as f32).collect(),
                };
                let mut parts = vec![&q_scaled];
                parts.extend(Self::kv_parts(&lw.kv));
                parts.push(&lw.pc_proj);
                let (wx, bx) = self.stacked("pack wx", &parts)?;
                let qp: Vec<f32> = scaled_qp(model, i).iter().map(|&v| v as f32).collect();
                let (wout, bout) = self.stacked("pack wout", &[&lw.out_proj])?;
                let (w1, b1) = self.stacked("pack fc1", &[&lw.fc1])?;
                let (w2, b2) = self.stacked("pack fc2", &[&lw.fc2])?;
                full.push(FullLayer {
                    wx,
                    bx,
                    qp: self.up("pack qp", &qp)?,
                    wout,
                    bout,
                    w1,
                    b1,
                    w2,
                    b2,
                    ln_attn: self.norm(&lw.self_attn_layer_norm)?,
                    ln_final: self.norm(&lw.final_layer_norm)?,
                });
            }
            // The chosen layer: scores[t, h*l + j] = pc(x)[t]_h · qp[j]_h, as one
            // GEMM with W[h*l + j, k] = sum_{c in head h} qp[j, c] pc_w[c, k].
            let target = model.causal_layer(layer);
            let qp = scaled_qp(model, layer);
            let pcw = &target.pc_proj;
            let mut w = vec![0f32; heads * l * d];
            let mut b = vec![0f32; heads * l];
            for h in 0..heads {
                for j in 0..l {
                    let row = h * l + j;
                    let mut acc = vec![0f64; d];
                    let mut bias = 0f64;
                    for cc in h * dh..(h + 1) * dh {
                        let q = qp[j * d + cc];
                        bias += q * pcw.bias[cc] as f64;
                        for (k, a) in acc.iter_mut().enumerate() {
                            *a += q * pcw.weight[cc * d + k] as f64;
                        }
                    }
                    for k in 0..d {
                        w[row * d + k] = acc[k] as f32;
                    }
                    b[row] = bias as f32;
                }
            }
            let w_scores = self.up("pack scores w", &w)?;
            let b_scores = self.up("pack scores b", &b)?;
            let ln_target = if c.normalize_before { Some(self.norm(&target.self_attn_layer_norm)?) } else { None };

            let Engine { ctx, cache, workspace, dummy, .. } = &mut *self;
            let mut rec = Recorder::new(ctx, cache, &dummy.buffer);
            let mut get = |name: &'static str, floats: usize| workspace.get(ctx, name, floats as u64 * 4);
            let tok = get("tokens", n);
            let pos = get("positions", n);
            let lens = get("lengths", 1);
            let mut x = get("x0", n * d);
            let mut x_alt = get("x1", n * d);
            let xn = get("x_norm", n * d);
            let xqkv = get("xqkv", n * width);
            let o = get("o", n * d);
            let y = get("y", n * d);
            let hbuf = get("ffn", n * c.ffn_embed_dim);
            let state = get("causal_state", shape.state_floats());
            let scores = get("pack_scores", n * heads * l);
            ctx.queue.write_buffer(&tok, 0, bytemuck::cast_slice(&batch.tokens));
            ctx.queue.write_buffer(&pos, 0, bytemuck::cast_slice(&batch.positions));
            ctx.queue.write_buffer(&lens, 0, bytemuck::cast_slice(&[n as u32]));

            let eps = c.layer_norm_eps as f32;
            embed::encode(
                &mut rec,
                embed::Gather { ids: &tok, table: &gpu.embed_tokens.buffer, positions: Some((&pos, &pos_table)), mask: None, out: &x },
                n,
                d,
                c.embed_scale as f32,
            );
            let (q_off, k_off, v_off, pc_off) = if c.tie_kv { (0, d, d, 2 * d) } else { (0, d, 2 * d, 3 * d) };
            let act = Some(c.activation);
            for lw in &full {
                let ln = |rec: &mut Recorder, x: &wgpu::Buffer, r: Option<&wgpu::Buffer>, g: Option<&GpuNorm>, out: &wgpu::Buffer| {
                    layernorm::encode(rec, layernorm::Step { x, residual: r, norm: g.and_then(norm), mask: None, out }, n, d, eps)
                };
                let ax = if c.normalize_before {
                    ln(&mut rec, &x, None, Some(&lw.ln_attn), &xn);
                    &xn
                } else {
                    &x
                };
                gemm::encode(&mut rec, ax, &lw.wx.buffer, &lw.bx.buffer, None, &xqkv, [n, width, d], None);
                let inputs = Inputs { x: &xqkv, stride: width, q: q_off, k: k_off, v: v_off, pc: pc_off };
                kernel::parallel(&mut rec, inputs, &lw.qp.buffer, &lens, &state, &o, shape);
                if c.normalize_before {
                    gemm::encode(&mut rec, &o, &lw.wout.buffer, &lw.bout.buffer, Some(&x), &x_alt, [n, d, d], None);
                    std::mem::swap(&mut x, &mut x_alt);
                    ln(&mut rec, &x, None, Some(&lw.ln_final), &xn);
                    gemm::encode(&mut rec, &xn, &lw.w1.buffer, &lw.b1.buffer, None, &hbuf, [n, c.ffn_embed_dim, d], act);
                    gemm::encode(&mut rec, &hbuf, &lw.w2.buffer, &lw.b2.buffer, Some(&x), &x_alt, [n, d, c.ffn_embed_dim], None);
                    std::mem::swap(&mut x, &mut x_alt);
                } else {
                    gemm::encode(&mut rec, &o, &lw.wout.buffer, &lw.bout.buffer, None, &y, [n, d, d], None);
                    ln(&mut rec, &x, Some(&y), Some(&lw.ln_attn), &x_alt);
                    std::mem::swap(&mut x, &mut x_alt);
                    gemm::encode(&mut rec, &x, &lw.w1.buffer, &lw.b1.buffer, None, &hbuf, [n, c.ffn_embed_dim, d], act);
                    gemm::encode(&mut rec, &hbuf, &lw.w2.buffer, &lw.b2.buffer, None, &y, [n, d, c.ffn_embed_dim], None);
                    ln(&mut rec, &x, Some(&y), Some(&lw.ln_final), &x_alt);
                    std::mem::swap(&mut x, &mut x_alt);
                }
            }
            let ax = match &ln_target {
                Some(g) => {
                    layernorm::encode(&mut rec, layernorm::Step { x: &x, residual: None, norm: norm(g), mask: None, out: &xn }, n, d, eps);
                    &xn
                }
                None => &x,
            };
            gemm::encode(&mut rec, ax, &w_scores.buffer, &b_scores.buffer, None, &scores, [n, heads * l, d], None);
            rec.submit();
            let raw = buffers::read_f32(ctx, &[(&scores, n * heads * l)]).await?.remove(0);
            drop(full);
            Ok(raw)
        }
        .await;
        let scoped = scope.pop_async(&self.ctx).await;
        if result.is_err() || scoped.is_err() {
            self.workspace.clear();
        }
        scoped?;
        let values = result?.iter().map(|&z| softplus_ln2(z as f64) as f32).collect();
        Ok(PackWeights { layer, len: n, heads, slots: l, values })
    }

    /// Blocking form of [`Engine::pack_weights`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn pack_weights_blocking(&mut self, gpu: &GpuModel, model: &Model, tokens: &[u32], layer: usize) -> Result<PackWeights> {
        pollster::block_on(self.pack_weights(gpu, model, tokens, layer))
    }
}
