//! A model's weights on the GPU ([`GpuModel`]): uploading an encoder or a
//! causal LM, with the projections that read the same input stacked into one
//! matrix, the causal LM's fixed pack queries computed once on the host, and
//! the token position table.

use crate::config::{Config, ModelKind};
use crate::engine::context::Engine;
use crate::error::{LunaError, Result};
use crate::gpu::buffers::{self, Tracked};
use crate::gpu::scope::ErrorScopes;
use crate::kernels::gemm::{self, Gemm};
use crate::kernels::{attention, causal};
use crate::math;
use crate::model::{KvProj, Linear, Model, Norm};

pub(crate) struct GpuNorm {
    pub(crate) weight: Tracked,
    pub(crate) bias: Tracked,
}

impl GpuNorm {
    /// `(gamma, beta)` as the LayerNorm kernel takes them.
    pub(crate) fn pair(&self) -> Option<(&wgpu::Buffer, &wgpu::Buffer)> {
        Some((&self.weight.buffer, &self.bias.buffer))
    }
}

/// A Linear layer (or several stacked) on the GPU, read by the GEMM: weight
/// `[n, k]` and bias `[n]`. The weight is float16 when the model was uploaded
/// at [`gemm::Precision::F16`] and `k % 4 == 0` ([`gemm::half_weights`]), else float32.
pub(crate) struct GpuLinear {
    pub(crate) w: Tracked,
    pub(crate) b: Tracked,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) half: bool,
}

impl GpuLinear {
    /// `out[m, n] = a[m, k] · w^T + b`; add an activation or a residual to the returned [`Gemm`].
    pub(crate) fn gemm<'a>(&'a self, a: &'a wgpu::Buffer, out: &'a wgpu::Buffer, m: usize) -> Gemm<'a> {
        Gemm::new(a, &self.w.buffer, &self.b.buffer, out, [m, self.n, self.k]).half_weights(self.half)
    }
}

/// The weights of a layer's tail: output projection, FFN and X's LayerNorms
/// (recorded by `engine::tail`).
pub(crate) struct GpuBlock {
    pub(crate) out_proj: GpuLinear,
    pub(crate) fc1: GpuLinear,
    pub(crate) fc2: GpuLinear,
    /// `self_attn_layer_norm`: after the attention (post-norm) or before it (pre-norm).
    pub(crate) ln_attn: GpuNorm,
    pub(crate) ln_final: GpuNorm,
}

/// One encoder layer.
pub(crate) struct GpuLayer {
    /// `q_proj` of the unpack: run after the pack, when the pack's K/V are dead.
    pub(crate) q_proj: GpuLinear,
    /// `[k; v]` of the pack stacked (one block when tied).
    pub(crate) pack_kv: GpuLinear,
    pub(crate) pq_proj: GpuLinear,
    /// `[k; v]` of the unpack (one block when tied).
    pub(crate) kv_proj: GpuLinear,
    /// `self_atten_proj_layer_norm`.
    pub(crate) ln_proj: GpuNorm,
    pub(crate) block: GpuBlock,
}

/// One causal LM layer.
pub(crate) struct GpuCausalLayer {
    /// `[q_proj · dh^-0.5; c (or k; v); pc_proj]` stacked: X is read once for all.
    pub(crate) x_proj: GpuLinear,
    /// `Q_P · dh^-0.5`, `[l, d]`: P is fixed, so this is computed once at load.
    pub(crate) qp: Tracked,
    pub(crate) block: GpuBlock,
    /// `self_attn.conv.weight [d, conv_width]` (the local-context convolution), if any.
    pub(crate) conv: Option<Tracked>,
}

/// What a causal LM has beyond the shared parts of [`GpuModel`].
pub(crate) struct GpuCausal {
    pub(crate) layers: Vec<GpuCausalLayer>,
    pub(crate) final_norm: Option<GpuNorm>,
    /// `output_projection.weight` when not tied to the token embedding.
    pub(crate) output: Option<Tracked>,
    pub(crate) zero_bias: Tracked,
    /// The per-head decay rates as the kernels read them (`kernels::causal::decay_table`), if any.
    pub(crate) decay: Option<Tracked>,
}

/// A model's weights on the GPU.
pub struct GpuModel {
    pub config: Config,
    /// Tells decoders which model they belong to.
    pub(crate) id: u64,
    pub(crate) embed_tokens: Tracked,
    /// Learned table, or `None` for sinusoids (rows built per pass: [`Engine::token_positions`]).
    pub(crate) embed_positions: Option<Tracked>,
    pub(crate) projected_embeddings: Tracked,
    /// Sinusoid rows 0..l for P, when positions are not learned.
    pub(crate) proj_positions: Option<Tracked>,
    pub(crate) emb_norms: Option<(GpuNorm, GpuNorm)>,
    pub(crate) final_norms: Option<(GpuNorm, GpuNorm)>,
    /// The encoder's layers (empty for a causal LM).
    pub(crate) layers: Vec<GpuLayer>,
    /// The causal LM's weights, for a `causal_lm` model.
    pub(crate) causal: Option<GpuCausal>,
}

impl GpuModel {
    pub(crate) fn layer(&self, i: usize) -> &GpuLayer {
        &self.layers[if self.config.tie_layer_weights { 0 } else { i }]
    }

    /// The causal LM's weights, or an error for an encoder.
    pub(crate) fn causal(&self) -> Result<&GpuCausal> {
        self.causal.as_ref().ok_or_else(|| {
            LunaError::Unsupported("this model is an encoder; logits, scores and generation need a causal_lm".into())
        })
    }
}

/// Column offsets of q, k, v, pc in a causal layer's stacked projection, and its width.
pub(crate) fn causal_columns(c: &Config) -> (usize, usize, usize, usize, usize) {
    let d = c.embed_dim;
    if c.tie_kv {
        (0, d, d, 2 * d, 3 * d)
    } else {
        (0, d, 2 * d, 3 * d, 4 * d)
    }
}

/// `rows` sinusoid rows, float32; with `zero_row`, the token table whose row `pad` is zero.
/// The position rows of a pass: `table` and each token's row in it.
pub(crate) struct TokenPositions {
    pub(crate) table: wgpu::Buffer,
    pub(crate) index: Vec<u32>,
    /// The sinusoid rows this pass owns, if any.
    _rows: Option<Tracked>,
}

/// The token sinusoid rows of `positions`, `[positions.len(), d]`.
/// (Zeros with `no_token_positional_embeddings`: a pass adds no positions then.)
pub(crate) fn sinusoid_rows(c: &Config, positions: &[u32]) -> Vec<f32> {
    if c.no_token_positional_embeddings {
        return vec![0.0; positions.len() * c.embed_dim];
    }
    let d = c.embed_dim;
    let mut rows = Vec::with_capacity(positions.len() * d);
    for &t in positions {
        rows.extend(math::token_sinusoid_row(t as usize, c.padding_idx, d).iter().map(|&v| v as f32));
    }
    rows
}

/// Sinusoid rows `0..rows` (P's positions, not offset).
fn sinusoid_table(rows: usize, d: usize) -> Vec<f32> {
    (0..rows).flat_map(|r| math::sinusoid_row(r, d)).map(|v| v as f32).collect()
}

fn kv_parts(kv: &KvProj) -> Vec<&Linear> {
    match kv {
        KvProj::Tied(c) => vec![c],
        KvProj::Separate { k, v } => vec![k, v],
    }
}

impl Engine {
    pub(crate) fn norm(&self, n: &Norm) -> Result<GpuNorm> {
        Ok(GpuNorm { weight: self.up("ln.weight", &n.weight)?, bias: self.up("ln.bias", &n.bias)? })
    }

    /// Stacks Linear layers that read the same input into one weight and bias,
    /// the weight in float16 where [`gemm::half_weights`] says so.
    pub(crate) fn stacked(&self, label: &str, parts: &[&Linear]) -> Result<GpuLinear> {
        let k = parts[0].inp;
        let n = parts.iter().map(|l| l.out).sum();
        let weights = parts.iter().flat_map(|l| l.weight.iter().copied());
        let half = gemm::half_weights(self.precision, k);
        let w = if half {
            let bits: Vec<u16> = weights.map(|v| half::f16::from_f32(v).to_bits()).collect();
            buffers::upload(&self.ctx, &self.stats, label, &bits)?
        } else {
            self.up(label, &weights.collect::<Vec<f32>>())?
        };
        let b: Vec<f32> = parts.iter().flat_map(|l| l.bias.iter().copied()).collect();
        Ok(GpuLinear { w, b: self.up(label, &b)?, n, k, half })
    }

    pub(crate) fn load_block(&self, out_proj: &Linear, fc1: &Linear, fc2: &Linear, ln_attn: &Norm, ln_final: &Norm) -> Result<GpuBlock> {
        Ok(GpuBlock {
            out_proj: self.stacked("out_proj", &[out_proj])?,
            fc1: self.stacked("fc1", &[fc1])?,
            fc2: self.stacked("fc2", &[fc2])?,
            ln_attn: self.norm(ln_attn)?,
            ln_final: self.norm(ln_final)?,
        })
    }

    /// Uploads a model's weights (blocking form of [`Engine::load_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(&self, model: &Model) -> Result<GpuModel> {
        pollster::block_on(self.load_async(model))
    }

    /// Uploads a model's weights; allocation failures come back as errors.
    /// The first model of a shape on this adapter also tunes its GEMMs (see `engine::tune`).
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
        self.check_weights(model)?;
        // Bind groups of an earlier model's dispatches would keep its weights alive.
        self.ctx.reuse.forget_bind_groups();
        let scope = ErrorScopes::push(&self.ctx);
        let uploaded = self.upload_model(model);
        let gpu_model = scope.close(&self.ctx, uploaded).await?;
        self.tune_model(c, self.precision).await?;
        Ok(gpu_model)
    }

    fn upload_model(&self, model: &Model) -> Result<GpuModel> {
        let c = &model.config;
        let causal = if c.model == ModelKind::CausalLm { Some(self.upload_causal(model)?) } else { None };
        let mut layers = Vec::new();
        for l in &model.layers {
            let q_proj = self.stacked("wq", &[&l.q_proj])?;
            let pack_kv = self.stacked("wpkv", &kv_parts(&l.pack_kv))?;
            let pq_proj = self.stacked("wpq", &[&l.pq_proj])?;
            let kv_proj = self.stacked("wkv", &kv_parts(&l.unpack_kv))?;
            layers.push(GpuLayer {
                q_proj,
                pack_kv,
                pq_proj,
                kv_proj,
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
        Ok(GpuModel {
            config: c.clone(),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            causal,
            embed_tokens: self.up("embed_tokens", &model.embed_tokens)?,
            embed_positions: model.embed_positions.as_ref().map(|p| self.up("embed_positions", p)).transpose()?,
            projected_embeddings: self.up("projected_embeddings", &model.projected_embeddings)?,
            proj_positions: if c.learned_pos {
                None
            } else {
                Some(self.up("proj_positions", &sinusoid_table(c.projection_length, c.embed_dim))?)
            },
            emb_norms: pair(&model.emb_layer_norm, &model.proj_emb_layer_norm)?,
            final_norms: pair(&model.layer_norm, &model.proj_layer_norm)?,
            layers,
        })
    }

    fn upload_causal(&self, model: &Model) -> Result<GpuCausal> {
        let c = &model.config;
        if c.projection_length > causal::MAX_PROJECTION {
            return Err(LunaError::Unsupported(format!(
                "projection_length {} is over the {} the causal kernel handles",
                c.projection_length,
                causal::MAX_PROJECTION
            )));
        }
        let s = (c.head_dim() as f64).powf(-0.5);
        let p = math::causal_p(model);
        let mut layers = Vec::new();
        for (i, l) in model.causal_layers.iter().enumerate() {
            let q_scaled = Linear {
                out: l.q_proj.out,
                inp: l.q_proj.inp,
                weight: l.q_proj.weight.iter().map(|&w| (w as f64 * s) as f32).collect(),
                bias: l.q_proj.bias.iter().map(|&b| (b as f64 * s) as f32).collect(),
            };
            let mut parts = vec![&q_scaled];
            parts.extend(kv_parts(&l.kv));
            parts.push(&l.pc_proj);
            let x_proj = self.stacked("causal wx", &parts)?;
            let qp: Vec<f32> = math::causal_pack_queries(model, &p, i).iter().map(|&v| v as f32).collect();
            layers.push(GpuCausalLayer {
                x_proj,
                qp: self.up("qp", &qp)?,
                block: self.load_block(&l.out_proj, &l.fc1, &l.fc2, &l.self_attn_layer_norm, &l.final_layer_norm)?,
                conv: l.conv.as_ref().map(|w| self.up("conv", w)).transpose()?,
            });
        }
        Ok(GpuCausal {
            layers,
            final_norm: model.layer_norm.as_ref().map(|n| self.norm(n)).transpose()?,
            output: model.output_projection.as_ref().map(|w| self.up("output_projection", w)).transpose()?,
            zero_bias: self.up("zero bias", &vec![0.0; c.vocab_size])?,
            decay: c.decays().map(|g| self.up("decay", &causal::decay_table(g))).transpose()?,
        })
    }

    /// Where a pass over tokens at fairseq `positions` reads their position
    /// rows: the learned table, or exactly these tokens' sinusoid rows (sized
    /// to the pass, dropped with it; no table grows to the longest sequence seen).
    pub(crate) fn token_positions(&self, model: &GpuModel, positions: &[u32]) -> Result<TokenPositions> {
        Ok(match &model.embed_positions {
            Some(t) => TokenPositions { table: t.buffer.clone(), index: positions.to_vec(), _rows: None },
            // No positions: every token reads one zero row.
            None if model.config.no_token_positional_embeddings => {
                let zero = self.up("no positions", &vec![0.0; model.config.embed_dim])?;
                TokenPositions { table: zero.buffer.clone(), index: vec![0; positions.len()], _rows: Some(zero) }
            }
            None => {
                let rows = self.position_rows(&model.config, positions)?;
                TokenPositions { table: rows.buffer.clone(), index: (0..positions.len() as u32).collect(), _rows: Some(rows) }
            }
        })
    }

    /// The sinusoid row of each of `positions` (fairseq positions, row
    /// `padding_idx` zero), as one segment of a long sequence reads them.
    pub(crate) fn position_rows(&self, c: &Config, positions: &[u32]) -> Result<Tracked> {
        self.up("segment positions", &sinusoid_rows(c, positions))
    }
}
