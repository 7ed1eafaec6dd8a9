//! Models with random weights for any config (`luna init-random`), so users and
//! tests can try any shape. Deterministic for a seed on every platform.

use crate::config::{Config, ModelKind};
use crate::error::{LunaError, Result};
use crate::model::{CausalLayer, KvProj, Layer, Linear, Model, Norm};

/// SplitMix64: small, fast, and the same stream everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn symmetric(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// `n` values uniform in [-a, a).
    pub fn fill(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.symmetric() * a).collect()
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

fn linear(rng: &mut Rng, out: usize, inp: usize) -> Linear {
    // PyTorch's default Linear init range: U(-1/sqrt(in), 1/sqrt(in)).
    let a = 1.0 / (inp as f32).sqrt();
    Linear { out, inp, weight: rng.fill(out * inp, a), bias: rng.fill(out, a) }
}

fn norm(rng: &mut Rng, d: usize) -> Norm {
    Norm { weight: rng.fill(d, 0.2).iter().map(|v| 1.0 + v).collect(), bias: rng.fill(d, 0.1) }
}

fn kv(rng: &mut Rng, tied: bool, d: usize) -> KvProj {
    if tied {
        KvProj::Tied(linear(rng, d, d))
    } else {
        KvProj::Separate { k: linear(rng, d, d), v: linear(rng, d, d) }
    }
}

impl Model {
    /// A model of `config` with random weights drawn from `seed`.
    pub fn random(config: &Config, seed: u64) -> Result<Model> {
        let c = config;
        let d = c.embed_dim;
        let per_layer = 6 * d * d + 2 * d * c.ffn_embed_dim;
        let layers = if c.tie_layer_weights { 1 } else { c.num_layers };
        // Only learned positions are weights; sinusoids cost nothing whatever max_positions says.
        let positions = if c.learned_pos { c.position_rows() } else { 0 };
        let floats = (c.vocab_size + positions + c.projection_length) as u128 * d as u128
            + layers as u128 * per_layer as u128;
        if floats > 1 << 31 {
            return Err(LunaError::Config(format!(
                "this config has about {floats} parameters; init-random makes models of at most 2^31 (8 GiB)"
            )));
        }
        // The weights, and a copy when they are saved.
        crate::tensors::check_host_memory("a random model of this config", floats as u64 * 4 * 2)?;
        let mut rng = Rng::new(seed);
        let emb_a = if c.learned_pos { 1.0 } else { 1.0 / c.embed_scale as f32 };
        let mut embed_tokens = rng.fill(c.vocab_size * d, emb_a);
        embed_tokens[c.padding_idx * d..(c.padding_idx + 1) * d].fill(0.0);
        let embed_positions = c.learned_pos.then(|| {
            let mut t = rng.fill(c.position_rows() * d, 0.5);
            t[c.padding_idx * d..(c.padding_idx + 1) * d].fill(0.0);
            t
        });
        let projected_embeddings = rng.fill(c.projection_length * d, emb_a);
        let pair = |rng: &mut Rng, on: bool| if on { (Some(norm(rng, d)), Some(norm(rng, d))) } else { (None, None) };
        let (emb_layer_norm, proj_emb_layer_norm) = pair(&mut rng, c.layernorm_embedding);
        let causal = c.model == ModelKind::CausalLm;
        let (layer_norm, proj_layer_norm) = pair(&mut rng, c.normalize_before);
        let proj_layer_norm = if causal { None } else { proj_layer_norm };
        let stored = if c.tie_layer_weights { 1 } else { c.num_layers };
        let causal_layers: Vec<CausalLayer> = (0..if causal { stored } else { 0 })
            .map(|_| CausalLayer {
                q_proj: linear(&mut rng, d, d),
                pq_proj: linear(&mut rng, d, d),
                pc_proj: linear(&mut rng, d, d),
                kv: kv(&mut rng, c.tie_kv, d),
                out_proj: linear(&mut rng, d, d),
                self_attn_layer_norm: norm(&mut rng, d),
                fc1: linear(&mut rng, c.ffn_embed_dim, d),
                fc2: linear(&mut rng, d, c.ffn_embed_dim),
                final_layer_norm: norm(&mut rng, d),
                // (drawn last, so that a config without it draws the same weights as before)
                conv: (c.conv_width > 0).then(|| rng.fill(d * c.conv_width, 1.0 / (c.conv_width as f32).sqrt())),
            })
            .collect();
        let output_projection = (causal && !c.tie_output_embedding).then(|| rng.fill(c.vocab_size * d, emb_a));
        let layers = (0..if causal { 0 } else { stored })
            .map(|_| Layer {
                q_proj: linear(&mut rng, d, d),
                pq_proj: linear(&mut rng, d, d),
                pack_kv: kv(&mut rng, c.tie_kv, d),
                unpack_kv: kv(&mut rng, c.tie_kv, d),
                out_proj: linear(&mut rng, d, d),
                self_attn_layer_norm: norm(&mut rng, d),
                self_atten_proj_layer_norm: norm(&mut rng, d),
                fc1: linear(&mut rng, c.ffn_embed_dim, d),
                fc2: linear(&mut rng, d, c.ffn_embed_dim),
                final_layer_norm: norm(&mut rng, d),
            })
            .collect();
        Ok(Model {
            config: config.clone(),
            embed_tokens,
            embed_positions,
            projected_embeddings,
            emb_layer_norm,
            proj_emb_layer_norm,
            layer_norm,
            proj_layer_norm,
            layers,
            causal_layers,
            output_projection,
            metadata: Default::default(),
        })
    }
}

/// Random right-padded token batches with the given lengths (for tests and demos).
pub fn random_tokens(config: &Config, lengths: &[usize], seed: u64) -> (Vec<i64>, usize, usize) {
    let mut rng = Rng::new(seed);
    let n = lengths.iter().copied().max().unwrap_or(0);
    let pad = config.padding_idx as i64;
    let mut tokens = Vec::with_capacity(lengths.len() * n);
    for &len in lengths {
        for t in 0..n {
            if t < len {
                let mut id = rng.below(config.vocab_size as u64) as i64;
                if id == pad {
                    id = (id + 1) % config.vocab_size as i64;
                }
                tokens.push(id);
            } else {
                tokens.push(pad);
            }
        }
    }
    (tokens, lengths.len(), n)
}
