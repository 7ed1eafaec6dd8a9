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
    "tie_output_embedding", "activation", "embed_scale", "layer_norm_eps", "decay", "conv_width",
    "no_token_positional_embeddings",
];

/// The widest causal convolution (`conv_width`) the engine runs.
pub const MAX_CONV_WIDTH: usize = 16;
/// The smallest decay rate, 2^-16: smaller rates forget within a token anyway,
/// and a bound keeps `ln(decay)` (what the kernels take) moderate.
pub const MIN_DECAY: f64 = 1.0 / 65536.0;

/// The largest value of each size in a config (README, "The model file").
/// Sizes that a weight's shape carries (the vocabulary, widths, l) are also
/// bounded by the file; `num_layers` and the head counts are not (one stored
/// layer runs `num_layers` times with `tie_layer_weights`), so they are
/// capped at what a real model uses, far beyond any published Luna model.
pub const LIMITS: &[(&str, usize)] = &[
    ("vocab_size", 1 << 31),
    ("embed_dim", 1 << 16),
    ("ffn_embed_dim", 1 << 18),
    ("num_layers", 1024),
    ("num_heads", 1024),
    ("num_pheads", 1024),
    ("projection_length", 1 << 24),
    ("max_positions", 1 << 24),
];

/// The largest `|embed_scale|`: `2^32`, so that a scaled embedding row stays
/// far from float32's overflow (3.4e38) for any weight the loader accepts.
pub const MAX_SCALE: f64 = 4_294_967_296.0;

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
    decay: Option<Vec<f64>>,
    conv_width: Option<usize>,
    local_window: Option<usize>,
    no_token_positional_embeddings: Option<bool>,
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
    /// This project's local-context extension (docs/luna.md, "Local context"),
    /// causal LM only: per-head decay rates of the running sums, in
    /// [`MIN_DECAY`, 1], rounded to float32 when read: the kernels compute in
    /// float32, and every form (tiles, token walk, steps) and the reference
    /// then use the same rate. `None` (or all 1) is the authors' form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decay: Option<Vec<f64>>,
    /// Width of the causal depthwise convolution before each attention's
    /// projections (`layers.{i}.self_attn.conv.weight [d, conv_width]`); 0: none.
    #[serde(skip_serializing_if = "is_zero")]
    pub conv_width: usize,
    /// Tokens get no absolute position term (fairseq's option of this name;
    /// P keeps its sinusoid rows). With decay on every head and the
    /// convolution, a causal LM then reads the same way at any position.
    #[serde(skip_serializing_if = "is_false")]
    pub no_token_positional_embeddings: bool,
}

fn is_false(v: &bool) -> bool {
    !*v
}

fn is_zero(v: &usize) -> bool {
    *v == 0
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
            // (a NaN stays NaN, and validate refuses it)
            decay: raw.decay.map(|d| d.into_iter().map(|g| g as f32 as f64).collect()),
            conv_width: raw.conv_width.unwrap_or(0),
            no_token_positional_embeddings: raw.no_token_positional_embeddings.unwrap_or(false),
        };
        if raw.local_window.unwrap_or(0) != 0 {
            return Err(LunaError::Config(
                "local_window (a sliding-window softmax branch) was a training-time candidate of the local-context ablation (models/README.md); this engine does not run it".into(),
            ));
        }
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
        if !(self.layer_norm_eps >= f32::MIN_POSITIVE as f64 && self.layer_norm_eps <= f32::MAX as f64) {
            return err(format!(
                "layer_norm_eps {} must be positive and a normal float32 ({:e} to {:e})",
                self.layer_norm_eps,
                f32::MIN_POSITIVE,
                f32::MAX
            ));
        }
        if !self.embed_scale.is_finite() {
            return err("embed_scale must be finite".into());
        }
        // Token ids and row indices are u32 on the GPU.
        for (name, value, limit) in LIMITS.iter().map(|&(name, limit)| (name, self.size(name), limit)) {
            if value > limit {
                return err(format!(
                    "{name} = {value} is over this engine's limit of {limit}{}",
                    if name == "num_layers" && self.tie_layer_weights {
                        " (with tie_layer_weights one stored layer runs num_layers times, so the file's size does not bound the work)"
                    } else {
                        ""
                    }
                ));
            }
        }
        self.validate_local_context()?;
        // The GPU computes in float32: a scale near its limit overflows the embedding.
        if self.embed_scale.abs() > MAX_SCALE {
            return err(format!("embed_scale {:e} is beyond float32's safe range (|embed_scale| <= {MAX_SCALE:e})", self.embed_scale));
        }
        Ok(())
    }

    /// The local-context extension's keys: causal LM only, one decay rate per
    /// head in [[`MIN_DECAY`], 1], a convolution up to [`MAX_CONV_WIDTH`], and
    /// no token positions only without learned ones.
    fn validate_local_context(&self) -> Result<()> {
        let err = |m: String| Err(LunaError::Config(m));
        let used = self.decay.is_some() || self.conv_width > 0 || self.no_token_positional_embeddings;
        if used && self.model != ModelKind::CausalLm {
            return err("decay, conv_width and no_token_positional_embeddings (the local-context extension) are causal_lm options".into());
        }
        if self.no_token_positional_embeddings && self.learned_pos {
            return err("no_token_positional_embeddings and learned_pos contradict each other: choose one".into());
        }
        if let Some(decay) = &self.decay {
            if decay.len() != self.num_heads {
                return err(format!("decay holds {} rates; it needs one per head (num_heads = {})", decay.len(), self.num_heads));
            }
            if let Some((h, g)) = decay.iter().enumerate().find(|(_, g)| !(**g >= MIN_DECAY && **g <= 1.0)) {
                return err(format!("decay[{h}] = {g} must lie in [{MIN_DECAY}, 1] (1 is the authors' form)"));
            }
        }
        if self.conv_width > MAX_CONV_WIDTH {
            return err(format!("conv_width = {} is over this engine's limit of {MAX_CONV_WIDTH}", self.conv_width));
        }
        Ok(())
    }

    /// The per-head decay rates, `None` for the authors' form (no key, or every rate 1).
    pub fn decays(&self) -> Option<&[f64]> {
        self.decay.as_deref().filter(|d| d.iter().any(|&g| g != 1.0))
    }

    /// The size field `name` of [`LIMITS`].
    fn size(&self, name: &str) -> usize {
        match name {
            "vocab_size" => self.vocab_size,
            "embed_dim" => self.embed_dim,
            "ffn_embed_dim" => self.ffn_embed_dim,
            "num_layers" => self.num_layers,
            "num_heads" => self.num_heads,
            "num_pheads" => self.num_pheads,
            "projection_length" => self.projection_length,
            "max_positions" => self.max_positions,
            _ => 0,
        }
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
