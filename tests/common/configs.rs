//! Small model configs for the tests, written as JSON with keys overridden, and
//! random causal models that carry a byte tokenizer.

use luna_wgpu::tokenizer::Tokenizer;
use luna_wgpu::{Config, Model};
use serde_json::{json, Value};

/// `base` with each key of `overrides` set to its value; a `null` removes the key.
pub fn merge(mut base: Value, overrides: Value) -> Value {
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

/// The config of `base` with `overrides` applied.
pub fn build(base: Value, overrides: Value) -> Config {
    Config::from_json(&merge(base, overrides).to_string()).unwrap()
}

fn encoder_base() -> Value {
    json!({
        "model": "encoder", "vocab_size": 50, "embed_dim": 24, "ffn_embed_dim": 40,
        "num_layers": 2, "num_heads": 2, "projection_length": 5, "max_positions": 5000,
        "padding_idx": 1, "normalize_before": false, "tie_kv": false, "activation": "relu",
        "learned_pos": true, "embed_scale": 1.0, "layer_norm_eps": 1e-5,
    })
}

/// A small encoder (vocabulary 50, d 24, 2 layers of 2 heads, l 5, post-norm,
/// learned positions), keys overridden.
pub fn encoder(overrides: Value) -> Config {
    build(encoder_base(), overrides)
}

/// A small causal LM of the encoder's sizes but 3 heads, sinusoidal positions
/// (`embed_scale` sqrt(24)) and the output tied to the embedding, keys overridden.
pub fn causal(overrides: Value) -> Config {
    let causal = json!({
        "model": "causal_lm", "embed_dim": 24, "ffn_embed_dim": 40, "num_heads": 3,
        "projection_length": 5, "learned_pos": false, "embed_scale": 4.898979485566356,
        "tie_output_embedding": true,
    });
    build(merge(encoder_base(), causal), overrides)
}

/// A small pre-norm causal LM with room for a byte tokenizer (vocabulary 259:
/// 256 bytes, pad, bos and eos; d 16, 2 layers of 2 heads, l 4, tied K/V, gelu,
/// sinusoidal positions), keys overridden.
pub fn byte_lm(overrides: Value) -> Config {
    let base = json!({
        "model": "causal_lm", "vocab_size": 259, "embed_dim": 16, "ffn_embed_dim": 32, "num_layers": 2,
        "num_heads": 2, "projection_length": 4, "max_positions": 256, "padding_idx": 1,
        "normalize_before": true, "tie_kv": true, "activation": "gelu", "learned_pos": false,
    });
    build(base, overrides)
}

/// A random causal model of `c` with a byte tokenizer stored (bos 0, pad 1,
/// eos 2, bytes from 3 when the vocabulary has room for all of them).
pub fn byte_model(c: &Config, seed: u64) -> (Model, Tokenizer) {
    let mut model = Model::random(c, seed).unwrap();
    let (tok, _) = Tokenizer::bytes_for(c).unwrap();
    tok.store(&mut model).unwrap();
    (model, tok)
}
