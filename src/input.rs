//! Token batches: validation of user input and everything derived from it
//! (lengths, fairseq positions, padding masks, the effective projection length).

use crate::config::{Config, ModelKind};
use crate::error::{LunaError, Result};
use crate::tensors;

/// A validated, right-padded batch of token sequences.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Number of sequences `B`.
    pub batch: usize,
    /// Padded length `n` of every sequence.
    pub len: usize,
    /// `[B, n]` token ids.
    pub tokens: Vec<u32>,
    /// `[B, n]` fairseq positions: `pad + count of non-pad tokens so far`, or `pad` on padding.
    pub positions: Vec<u32>,
    /// `[B]` number of non-padding tokens per sequence.
    pub lengths: Vec<usize>,
    /// `[B, n]` true at padding tokens.
    pub x_mask: Vec<bool>,
    /// `l'`: the projection length used for this batch.
    pub proj_len: usize,
    /// `[B, l']` true at masked P rows.
    pub p_mask: Vec<bool>,
}

impl Batch {
    /// Validates `tokens` (`[batch, len]`, row-major) against `config`.
    pub fn new(config: &Config, tokens: &[i64], batch: usize, len: usize) -> Result<Batch> {
        if batch == 0 || len == 0 {
            return Err(LunaError::Input(format!("the token tensor is empty (shape [{batch}, {len}])")));
        }
        if batch.checked_mul(len) != Some(tokens.len()) {
            return Err(LunaError::Input(format!(
                "{} tokens do not fill the shape [{batch}, {len}]",
                tokens.len()
            )));
        }
        let pad = config.padding_idx;
        let mut ids = Vec::with_capacity(tokens.len());
        for (i, &t) in tokens.iter().enumerate() {
            if t < 0 || t as u64 >= config.vocab_size as u64 {
                return Err(LunaError::Input(format!(
                    "token {t} at [{}, {}] is outside the vocabulary [0, {})",
                    i / len,
                    i % len,
                    config.vocab_size
                )));
            }
            ids.push(t as u32);
        }
        let x_mask: Vec<bool> = ids.iter().map(|&t| t as usize == pad).collect();
        let mut positions = Vec::with_capacity(ids.len());
        let mut lengths = Vec::with_capacity(batch);
        for b in 0..batch {
            let mut count = 0usize;
            for t in 0..len {
                if x_mask[b * len + t] {
                    positions.push(pad as u32);
                } else {
                    count += 1;
                    positions.push((pad + count) as u32);
                }
            }
            if count == 0 {
                return Err(LunaError::Input(format!(
                    "sequence {b} is all padding (token {pad}); every sequence needs at least one real token"
                )));
            }
            // A causal LM reads a sequence's first `count` rows: its padding must all come last.
            if config.model == ModelKind::CausalLm {
                if let Some(t) = (0..count).find(|&t| x_mask[b * len + t]) {
                    return Err(LunaError::Input(format!(
                        "sequence {b} has padding (token {pad}) at position {t} before its last real token; \
                         a causal LM's sequences are right-padded: put the padding at the end"
                    )));
                }
            }
            if config.learned_pos && count > config.max_positions {
                return Err(LunaError::Input(format!(
                    "sequence {b} has {count} tokens, more than max_positions = {} of this model's learned positions",
                    config.max_positions
                )));
            }
            lengths.push(count);
        }
        let longest = *lengths.iter().max().unwrap();
        let configured = config.projection_length;
        let proj_len = if config.dynamic_projection { configured.min(longest) } else { configured };
        let mut p_mask = Vec::with_capacity(batch * proj_len);
        for &n_b in &lengths {
            for j in 0..proj_len {
                p_mask.push(config.dynamic_projection && j >= n_b);
            }
        }
        Ok(Batch { batch, len, tokens: ids, positions, lengths, x_mask, proj_len, p_mask })
    }

    /// Checks that this batch is what [`Batch::new`] makes for `config` (its
    /// fields are public, so a batch built for another model could otherwise
    /// carry ids or positions outside this model's tables).
    pub fn check_for(&self, config: &Config) -> Result<()> {
        let tokens: Vec<i64> = self.tokens.iter().map(|&t| t as i64).collect();
        if tokens.len() != self.batch.saturating_mul(self.len) || Batch::new(config, &tokens, self.batch, self.len)? != *self {
            return Err(LunaError::Input(
                "this batch does not match the model's config; build it with Batch::new for this model".into(),
            ));
        }
        Ok(())
    }

    /// Reads `tokens` (I32 or I64, rank 2) from a safetensors input file.
    pub fn from_safetensors(config: &Config, bytes: &[u8]) -> Result<Batch> {
        let st = tensors::parse(bytes, "input")?;
        let view = st.tensor("tokens").map_err(|_| {
            // A model file given as the input has hundreds of tensors: name a few.
            let mut names = st.names();
            names.sort();
            let shown: Vec<&str> = names.iter().take(4).copied().collect();
            let more = if names.len() > shown.len() { format!(" and {} more", names.len() - shown.len()) } else { String::new() };
            LunaError::Input(format!("the input file has no tensor \"tokens\" (it has {shown:?}{more})"))
        })?;
        let shape = view.shape().to_vec();
        if shape.len() != 2 {
            return Err(LunaError::Input(format!(
                "\"tokens\" has rank {} (shape {shape:?}); expected [B, n]",
                shape.len()
            )));
        }
        let ids = tensors::view_to_i64("tokens", &view)?;
        Batch::new(config, &ids, shape[0], shape[1])
    }

    /// Largest position index used, for sizing position tables.
    pub fn max_position(&self) -> usize {
        self.positions.iter().copied().max().unwrap_or(0) as usize
    }
}

/// The encoder's outputs: `x` `[B, n, d]` and `p` `[B, l', d]`.
#[derive(Clone, Debug)]
pub struct EncoderOutput {
    pub batch: usize,
    pub len: usize,
    pub proj_len: usize,
    pub dim: usize,
    pub x: Vec<f32>,
    pub p: Vec<f32>,
}
