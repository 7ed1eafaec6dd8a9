//! The softmax-attention baseline model: the config and the weights of a
//! standard Transformer encoder layer with the same shapes, LayerNorms and
//! feed-forward block as a Luna encoder layer. The GPU baseline
//! (`engine::baseline`) runs it and the float64 reference
//! (`reference::softmax`) checks it.

use crate::config::{Activation, Config};
use crate::error::{LunaError, Result};
use crate::init::Rng;
use crate::model::{Linear, Norm};

/// Shapes and options of a softmax-attention encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct SoftmaxConfig {
    pub embed_dim: usize,
    pub ffn_embed_dim: usize,
    pub num_heads: usize,
    pub num_layers: usize,
    pub activation: Activation,
    pub normalize_before: bool,
    pub layer_norm_eps: f64,
}

impl SoftmaxConfig {
    /// The benchmarks' random baseline (post-norm, gelu, FFN 4·d) of `layers`
    /// layers, with its weights: the same for `luna bench` and the browser's chart.
    pub fn random_bench(d: usize, heads: usize, layers: usize) -> (SoftmaxConfig, Vec<SoftmaxLayer>) {
        let config = SoftmaxConfig {
            embed_dim: d,
            ffn_embed_dim: 4 * d,
            num_heads: heads,
            num_layers: layers,
            activation: Activation::Gelu,
            normalize_before: false,
            layer_norm_eps: 1e-5,
        };
        (config, (0..layers).map(|i| SoftmaxLayer::random(d, 4 * d, i as u64)).collect())
    }

    /// The baseline matching a Luna config: same width, FFN, heads, layers, activation, norms.
    pub fn from_luna(c: &Config) -> SoftmaxConfig {
        SoftmaxConfig {
            embed_dim: c.embed_dim,
            ffn_embed_dim: c.ffn_embed_dim,
            num_heads: c.num_heads,
            num_layers: c.num_layers,
            activation: c.activation,
            normalize_before: c.normalize_before,
            layer_norm_eps: c.layer_norm_eps,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// Refuses empty sizes and an `embed_dim` that the heads do not divide.
    pub fn validate(&self) -> Result<()> {
        if self.embed_dim == 0 || self.ffn_embed_dim == 0 || self.num_heads == 0 || self.num_layers == 0 {
            return Err(LunaError::Config(format!("softmax encoder sizes must be positive: {self:?}")));
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(LunaError::Config(format!(
                "embed_dim {} is not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            )));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps >= 0.0) {
            return Err(LunaError::Config(format!("layer_norm_eps {} must be a non-negative number", self.layer_norm_eps)));
        }
        Ok(())
    }

    /// Checks that `layers` fit this config: one layer (shared by all
    /// `num_layers`) or exactly `num_layers`, each of the right shapes.
    pub fn check_layers(&self, layers: &[SoftmaxLayer]) -> Result<()> {
        self.validate()?;
        if layers.len() != 1 && layers.len() != self.num_layers {
            return Err(LunaError::Model(format!(
                "{} softmax layers given for num_layers = {} (give 1 shared layer or one per layer)",
                layers.len(),
                self.num_layers
            )));
        }
        let (d, f) = (self.embed_dim, self.ffn_embed_dim);
        for (i, l) in layers.iter().enumerate() {
            for (name, lin, out, inp) in [
                ("q_proj", &l.q_proj, d, d),
                ("k_proj", &l.k_proj, d, d),
                ("v_proj", &l.v_proj, d, d),
                ("out_proj", &l.out_proj, d, d),
                ("fc1", &l.fc1, f, d),
                ("fc2", &l.fc2, d, f),
            ] {
                if lin.out != out || lin.inp != inp || lin.weight.len() != out * inp || lin.bias.len() != out {
                    return Err(LunaError::Model(format!(
                        "softmax layer {i}: {name} is [{}, {}] with {} weights and {} biases, expected [{out}, {inp}]",
                        lin.out,
                        lin.inp,
                        lin.weight.len(),
                        lin.bias.len()
                    )));
                }
            }
            for (name, n) in [("self_attn_layer_norm", &l.self_attn_layer_norm), ("final_layer_norm", &l.final_layer_norm)] {
                if n.weight.len() != d || n.bias.len() != d {
                    return Err(LunaError::Model(format!("softmax layer {i}: {name} does not have {d} weights and biases")));
                }
            }
        }
        Ok(())
    }
}

/// The weights of one softmax-attention encoder layer (fairseq's
/// `TransformerEncoderLayer` names).
#[derive(Clone, Debug)]
pub struct SoftmaxLayer {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub self_attn_layer_norm: Norm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub final_layer_norm: Norm,
}

fn random_linear(rng: &mut Rng, out: usize, inp: usize) -> Linear {
    // PyTorch's default Linear init range: U(-1/sqrt(in), 1/sqrt(in)) (as src/init.rs).
    let a = 1.0 / (inp as f32).sqrt();
    Linear { out, inp, weight: rng.fill(out * inp, a), bias: rng.fill(out, a) }
}

fn random_norm(rng: &mut Rng, d: usize) -> Norm {
    // Perturbed around the identity (as src/init.rs), so tests see the affine part.
    Norm { weight: rng.fill(d, 0.2).iter().map(|v| 1.0 + v).collect(), bias: rng.fill(d, 0.1) }
}

impl SoftmaxLayer {
    /// A layer of width `d` and feed-forward width `ffn` with random weights drawn from `seed`.
    pub fn random(d: usize, ffn: usize, seed: u64) -> SoftmaxLayer {
        let mut rng = Rng::new(seed);
        SoftmaxLayer {
            q_proj: random_linear(&mut rng, d, d),
            k_proj: random_linear(&mut rng, d, d),
            v_proj: random_linear(&mut rng, d, d),
            out_proj: random_linear(&mut rng, d, d),
            self_attn_layer_norm: random_norm(&mut rng, d),
            fc1: random_linear(&mut rng, ffn, d),
            fc2: random_linear(&mut rng, d, ffn),
            final_layer_norm: random_norm(&mut rng, d),
        }
    }
}

