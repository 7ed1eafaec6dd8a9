//! The model configuration stored as `luna.config` in a model file's metadata.

use crate::error::{LunaError, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Encoder,
    CausalLm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    Gelu,
}

const KNOWN_KEYS: &[&str] = &[
    "model", "vocab_size", "embed_dim", "ffn_embed_dim", "num_layers", "num_heads", "num_pheads",
    "projection_length", "max_positions", "padding_idx", "normalize_before", "tie_kv",
    "tie_layer_weights", "layernorm_embedding", "dynamic_projection", "learned_pos",
    "tie_output_embedding", "activation", "embed_scale", "layer_norm_eps",
];

/// The raw JSON form: optional keys are optional here, defaults applied in [`Config::from_json`].
#[derive(Deserialize)]
struct RawConfig {
    model: ModelKind,
    vocab_size: usize,
    embed_dim: usize,
    ffn_embed_dim: usize,
    num_layers: usize,
    num_heads: usize,
    num_pheads: Option<usize>,
    projection_length: usize,
    max_positions: usize,
    padding_idx: Option<usize>,
    normalize_before: Option<bool>,
    tie_kv: Option<bool>,
    tie_layer_weights: Option<bool>,
    layernorm_embedding: Option<bool>,
    dynamic_projection: Option<bool>,
    learned_pos: Option<bool>,
    tie_output_embedding: Option<bool>,
    activation: Option<String>,
    embed_scale: Option<f64>,
    layer_norm_eps: Option<f64>,
}

/// A validated model configuration (docs/luna.md, "The model file").
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    pub model: ModelKind,
    pub vocab_size: usize,
    pub embed_dim: usize,
    pub ffn_embed_dim: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_pheads: usize,
    pub projection_length: usize,
    pub max_positions: usize,
    pub padding_idx: usize,
    pub normalize_before: bool,
    pub tie_kv: bool,
    pub tie_layer_weights: bool,
    pub layernorm_embedding: bool,
    pub dynamic_projection: bool,
    pub learned_pos: bool,
    pub tie_output_embedding: bool,
    pub activation: Activation,
    pub embed_scale: f64,
    pub layer_norm_eps: f64,
}

impl Config {
    /// Parses and validates a `luna.config` JSON text.
    pub fn from_json(text: &str) -> Result<Config> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| LunaError::Config(format!("luna.config is not valid JSON: {e}")))?;
        if let Some(obj) = value.as_object() {
            for key in obj.keys().filter(|k| !KNOWN_KEYS.contains(&k.as_str())) {
                log::warn!("luna.config: ignoring unknown key {key:?}");
            }
        }
        let raw: RawConfig = serde_json::from_value(value)
            .map_err(|e| LunaError::Config(format!("luna.config is not a valid config: {e}")))?;
        let activation = match raw.activation.as_deref().unwrap_or("relu") {
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            other => {
                return Err(LunaError::Config(format!(
                    "unknown activation {other:?} (expected \"relu\" or \"gelu\")"
                )))
            }
        };
        let learned_pos = raw.learned_pos.unwrap_or(false);
        let d = raw.embed_dim;
        let config = Config {
            model: raw.model,
            vocab_size: raw.vocab_size,
            embed_dim: d,
            ffn_embed_dim: raw.ffn_embed_dim,
            num_layers: raw.num_layers,
            num_heads: raw.num_heads,
            num_pheads: raw.num_pheads.unwrap_or(raw.num_heads),
            projection_length: raw.projection_length,
            max_positions: raw.max_positions,
            padding_idx: raw.padding_idx.unwrap_or(1),
            normalize_before: raw.normalize_before.unwrap_or(false),
            tie_kv: raw.tie_kv.unwrap_or(false),
            tie_layer_weights: raw.tie_layer_weights.unwrap_or(false),
            layernorm_embedding: raw.layernorm_embedding.unwrap_or(false),
            dynamic_projection: raw.dynamic_projection.unwrap_or(false),
            learned_pos,
            tie_output_embedding: raw.tie_output_embedding.unwrap_or(true),
            activation,
            // fairseq's convention when the file does not say: 1 with learned positions, sqrt(d) otherwise.
            embed_scale: raw
                .embed_scale
                .unwrap_or(if learned_pos { 1.0 } else { (d as f64).sqrt() }),
            layer_norm_eps: raw.layer_norm_eps.unwrap_or(1e-5),
        };
        config.validate()?;
        Ok(config)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("config serialises")
    }

    fn validate(&self) -> Result<()> {
        let err = |m: String| Err(LunaError::Config(m));
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("embed_dim", self.embed_dim),
            ("ffn_embed_dim", self.ffn_embed_dim),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_pheads", self.num_pheads),
            ("projection_length", self.projection_length),
            ("max_positions", self.max_positions),
        ] {
            if v == 0 {
                return err(format!("{name} must be at least 1"));
            }
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return err(format!(
                "embed_dim {} is not divisible by num_heads {}",
                self.embed_dim, self.num_heads
            ));
        }
        if !self.embed_dim.is_multiple_of(self.num_pheads) {
            return err(format!(
                "embed_dim {} is not divisible by num_pheads {}",
                self.embed_dim, self.num_pheads
            ));
        }
        if self.model == ModelKind::CausalLm && self.layernorm_embedding {
            return err("layernorm_embedding is an encoder option; a causal_lm has no embedding LayerNorm".into());
        }
        if self.padding_idx >= self.vocab_size {
            return err(format!(
                "padding_idx {} is not below vocab_size {}",
                self.padding_idx, self.vocab_size
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return err(format!("layer_norm_eps {} must be positive", self.layer_norm_eps));
        }
        if !self.embed_scale.is_finite() {
            return err("embed_scale must be finite".into());
        }
        // Token ids and row indices are u32 on the GPU.
        if self.max_positions > 1 << 24
            || self.embed_dim > 1 << 16
            || self.ffn_embed_dim > 1 << 18
            || self.vocab_size > 1 << 31
            || self.projection_length > 1 << 24
        {
            return err("sizes are beyond what this engine supports (max_positions <= 2^24, embed_dim <= 65536, ffn_embed_dim <= 262144, vocab_size <= 2^31, projection_length <= 2^24)".into());
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }
    pub fn pack_head_dim(&self) -> usize {
        self.embed_dim / self.num_pheads
    }
    /// Rows of the learned position table: `max_positions + padding_idx + 1`.
    pub fn position_rows(&self) -> usize {
        self.max_positions + self.padding_idx + 1
    }
}
