//! Text in, text out: the tokenizer a causal LM may carry in its model file.
//!
//! A model file may hold the metadata key `luna.tokenizer`, a JSON object.
//! The one kind supported is byte-level text:
//!
//! ```json
//! {"kind": "bytes", "offset": 3, "pad": 1, "bos": 0, "eos": 2}
//! ```
//!
//! Byte `b` of the UTF-8 text is token `b + offset`; `pad`, `bos` and `eos`
//! (each optional) name the ids of the special tokens. The 256 byte ids must
//! lie inside the vocabulary and must not overlap `padding_idx` or a special
//! id; a `pad` that is given must equal the config's `padding_idx`.
//!
//! Encoding never adds special tokens by itself: [`Tokenizer::encode`] gives
//! the bytes only, [`Tokenizer::encode_with_bos`] puts `bos` (when the
//! tokenizer has one) in front, which is what generation and scoring use.
//! Decoding drops special ids and ids outside the byte range; [`Utf8Stream`]
//! decodes one id at a time and only ever yields whole UTF-8 characters.

use crate::config::Config;
use crate::error::{LunaError, Result};
use crate::model::Model;
use serde_json::{Map, Value};

/// The metadata key of a model file that holds the tokenizer.
pub const METADATA_KEY: &str = "luna.tokenizer";

/// A byte-level tokenizer (`"kind": "bytes"`), checked against a model's config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokenizer {
    /// Byte `b` is token `b + offset`.
    pub offset: u32,
    /// The padding id (equal to the config's `padding_idx` when given).
    pub pad: Option<u32>,
    /// Beginning of sequence: put in front of prompts and documents.
    pub bos: Option<u32>,
    /// End of sequence: generation stops when it is sampled.
    pub eos: Option<u32>,
}

fn bad(msg: String) -> LunaError {
    LunaError::Model(format!("{METADATA_KEY}: {msg}"))
}

impl Tokenizer {
    /// The model's tokenizer, `None` when its file has no `luna.tokenizer` metadata.
    pub fn from_model(model: &Model) -> Result<Option<Tokenizer>> {
        match model.metadata.get(METADATA_KEY) {
            None => Ok(None),
            Some(text) => Tokenizer::from_json(text, &model.config).map(Some),
        }
    }

    /// Parses and validates a `luna.tokenizer` JSON text for a model of `config`.
    pub fn from_json(text: &str, config: &Config) -> Result<Tokenizer> {
        let value: Value = serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| bad(format!("expected a JSON object, found {value}")))?;
        let kind = match obj.get("kind") {
            Some(Value::String(k)) => k.as_str(),
            Some(other) => return Err(bad(format!("\"kind\" must be a string, found {other}"))),
            None => return Err(bad("no \"kind\" key (expected \"kind\": \"bytes\")".into())),
        };
        if kind != "bytes" {
            return Err(bad(format!(
                "unknown tokenizer kind {kind:?}; this version supports only \"bytes\" (byte-level text)"
            )));
        }
        for key in obj.keys().filter(|k| !["kind", "offset", "pad", "bos", "eos"].contains(&k.as_str())) {
            log::warn!("{METADATA_KEY}: ignoring unknown key {key:?}");
        }
        let id = |key: &str| -> Result<Option<u32>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(i) if i <= u32::MAX as u64 => Ok(Some(i as u32)),
                    _ => Err(bad(format!("\"{key}\" must be a non-negative integer id, found {v}"))),
                },
            }
        };
        let offset = id("offset")?.ok_or_else(|| bad("a \"bytes\" tokenizer needs \"offset\" (byte b is token b + offset)".into()))?;
        let t = Tokenizer { offset, pad: id("pad")?, bos: id("bos")?, eos: id("eos")? };
        t.validate(config)?;
        Ok(t)
    }

    /// Checks the ids against a model's config.
    pub fn validate(&self, config: &Config) -> Result<()> {
        let vocab = config.vocab_size as u64;
        let last = self.offset as u64 + 255;
        if last >= vocab {
            return Err(bad(format!(
                "byte tokens {}..={last} (offset {}) do not fit in vocab_size {vocab}; a byte tokenizer needs offset + 256 <= vocab_size",
                self.offset, self.offset
            )));
        }
        let pad = config.padding_idx as u64;
        if self.byte_range().contains(&pad) {
            return Err(bad(format!(
                "padding_idx {pad} falls inside the byte tokens {}..={last}; a byte would be read as padding",
                self.offset
            )));
        }
        if let Some(p) = self.pad {
            if p as u64 != pad {
                return Err(bad(format!("pad id {p} differs from the config's padding_idx {pad}")));
            }
        }
        for (name, id) in [("bos", self.bos), ("eos", self.eos)] {
            let Some(id) = id else { continue };
            let id = id as u64;
            if id >= vocab {
                return Err(bad(format!("{name} id {id} is outside the vocabulary [0, {vocab})")));
            }
            if self.byte_range().contains(&id) {
                return Err(bad(format!("{name} id {id} falls inside the byte tokens {}..={last}", self.offset)));
            }
            if id == pad {
                return Err(bad(format!("{name} id {id} is the padding_idx")));
            }
        }
        if let (Some(b), Some(e)) = (self.bos, self.eos) {
            if b == e {
                return Err(bad(format!("bos and eos are the same id {b}")));
            }
        }
        Ok(())
    }

    fn byte_range(&self) -> std::ops::Range<u64> {
        self.offset as u64..self.offset as u64 + 256
    }

    /// A byte tokenizer with sensible ids for `config`: `pad` = `padding_idx`,
    /// `bos` and `eos` the two smallest other ids, and the bytes right after
    /// the largest special id (`{"bos":0,"pad":1,"eos":2,"offset":3}` for the
    /// usual `padding_idx` 1, which needs `vocab_size >= 259`). When the
    /// vocabulary has no room for `bos`/`eos`, they are left out (the first
    /// tuple member says so: `false`); when it has no room for the 256 bytes
    /// besides `padding_idx`, this fails.
    pub fn bytes_for(config: &Config) -> Result<(Tokenizer, bool)> {
        let pad = config.padding_idx as u32;
        let vocab = config.vocab_size as u64;
        let fits = |t: &Tokenizer| t.validate(config).is_ok();
        // With bos and eos: the two smallest ids that are not padding_idx.
        let mut free = (0u32..).filter(|&i| i != pad);
        let (bos, eos) = (free.next().unwrap(), free.next().unwrap());
        let top = bos.max(eos);
        for offset in [top + 1, top.max(pad) + 1] {
            let t = Tokenizer { offset, pad: Some(pad), bos: Some(bos), eos: Some(eos) };
            if fits(&t) {
                return Ok((t, true));
            }
        }
        for offset in [0, pad + 1] {
            let t = Tokenizer { offset, pad: Some(pad), bos: None, eos: None };
            if fits(&t) {
                return Ok((t, false));
            }
        }
        Err(LunaError::Config(format!(
            "vocab_size {vocab} is too small for a byte tokenizer: the 256 bytes must not overlap padding_idx {pad}, \
             so it needs vocab_size >= {} (and {} with bos and eos)",
            if pad >= 256 { 256 } else { pad as u64 + 257 },
            top.max(pad) as u64 + 257
        )))
    }

    /// The `luna.tokenizer` JSON text.
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("kind".into(), "bytes".into());
        m.insert("offset".into(), self.offset.into());
        for (k, v) in [("pad", self.pad), ("bos", self.bos), ("eos", self.eos)] {
            if let Some(v) = v {
                m.insert(k.into(), v.into());
            }
        }
        Value::Object(m).to_string()
    }

    /// Stores this tokenizer in a model's metadata (kept when the model is saved).
    pub fn store(&self, model: &mut Model) -> Result<()> {
        self.validate(&model.config)?;
        model.metadata.insert(METADATA_KEY.to_string(), self.to_json());
        Ok(())
    }

    /// The byte tokens of `text`, with no special tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_bytes(text.as_bytes())
    }

    /// The byte tokens of raw bytes (not necessarily UTF-8), with no special tokens.
    pub fn encode_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        bytes.iter().map(|&b| b as u32 + self.offset).collect()
    }

    /// `bos` (when the tokenizer has one) followed by the byte tokens: the form
    /// of a prompt to generate from, or of a document to score (with `bos`,
    /// every byte, the first one too, has a context and a probability).
    pub fn encode_with_bos(&self, bytes: &[u8]) -> Vec<u32> {
        let mut ids = Vec::with_capacity(bytes.len() + 1);
        ids.extend(self.bos);
        ids.extend(self.encode_bytes(bytes));
        ids
    }

    /// The byte a token stands for; `None` for special ids and ids outside the byte range.
    pub fn byte(&self, id: u32) -> Option<u8> {
        id.checked_sub(self.offset).filter(|&b| b < 256).map(|b| b as u8)
    }

    /// Whether generation may produce `id`: a byte, or `eos`. Padding, `bos`
    /// and unused ids are never sampled.
    pub fn can_generate(&self, id: u32) -> bool {
        self.byte(id).is_some() || Some(id) == self.eos
    }

    /// The bytes of a token sequence, special and unused ids dropped.
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        ids.iter().filter_map(|&i| self.byte(i)).collect()
    }

    /// The text of a token sequence; byte sequences that are not UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids)).into_owned()
    }

    /// A streaming decoder that turns ids, one at a time, into whole characters.
    pub fn stream(&self) -> Utf8Stream {
        Utf8Stream { tokenizer: self.clone(), pending: Vec::new() }
    }
}

/// Decodes a stream of token ids into text without ever splitting a character:
/// bytes that may start a multi-byte character wait until it is complete.
/// Invalid byte sequences become U+FFFD, exactly as [`String::from_utf8_lossy`]
/// does on the whole stream: the concatenation of every [`Utf8Stream::push`]
/// and the final [`Utf8Stream::finish`] equals [`Tokenizer::decode`] of all ids.
#[derive(Clone, Debug)]
pub struct Utf8Stream {
    tokenizer: Tokenizer,
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Takes one token id; returns the text it completes (often empty).
    pub fn push(&mut self, id: u32) -> String {
        match self.tokenizer.byte(id) {
            Some(b) => self.push_byte(b),
            None => String::new(),
        }
    }

    /// Takes one raw byte; returns the text it completes.
    pub fn push_byte(&mut self, b: u8) -> String {
        self.pending.push(b);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..good]).unwrap());
                    match e.error_len() {
                        // An invalid sequence: one replacement character, then go on after it.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..good + bad);
                        }
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Ends the stream: an incomplete character left over becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::Rng;

    fn config(vocab: usize, pad: usize) -> Config {
        let j = serde_json::json!({
            "model": "causal_lm", "vocab_size": vocab, "embed_dim": 8, "ffn_embed_dim": 8,
            "num_layers": 1, "num_heads": 2, "projection_length": 2, "max_positions": 64, "padding_idx": pad,
        });
        Config::from_json(&j.to_string()).unwrap()
    }

    fn err(r: Result<Tokenizer>) -> String {
        let e = r.unwrap_err();
        assert!(matches!(e, LunaError::Model(_)), "{e:?}");
        e.to_string()
    }

    #[test]
    fn parses_and_round_trips() {
        let c = config(259, 1);
        let t = Tokenizer::from_json(r#"{"kind":"bytes","offset":3,"pad":1,"bos":0,"eos":2}"#, &c).unwrap();
        assert_eq!(t, Tokenizer { offset: 3, pad: Some(1), bos: Some(0), eos: Some(2) });
        assert_eq!(Tokenizer::from_json(&t.to_json(), &c).unwrap(), t);
        let bare = Tokenizer::from_json(r#"{"kind":"bytes","offset":2}"#, &c).unwrap();
        assert_eq!(bare, Tokenizer { offset: 2, pad: None, bos: None, eos: None });
        assert_eq!(bare.to_json(), r#"{"kind":"bytes","offset":2}"#);
    }

    #[test]
    fn refuses_bad_metadata_with_a_clear_error() {
        let c = config(259, 1);
        let cases = [
            ("not json", "not valid JSON"),
            ("[1]", "JSON object"),
            (r#"{"offset":3}"#, "\"kind\""),
            (r#"{"kind":"bpe","offset":3}"#, "unknown tokenizer kind \"bpe\""),
            (r#"{"kind":"bytes"}"#, "needs \"offset\""),
            (r#"{"kind":"bytes","offset":-1}"#, "non-negative integer"),
            (r#"{"kind":"bytes","offset":4}"#, "do not fit in vocab_size 259"),
            (r#"{"kind":"bytes","offset":0}"#, "padding_idx 1 falls inside"),
            (r#"{"kind":"bytes","offset":3,"pad":0}"#, "pad id 0 differs from the config's padding_idx 1"),
            (r#"{"kind":"bytes","offset":3,"bos":7}"#, "bos id 7 falls inside"),
            (r#"{"kind":"bytes","offset":3,"eos":300}"#, "eos id 300 is outside the vocabulary"),
            (r#"{"kind":"bytes","offset":3,"eos":1}"#, "eos id 1 is the padding_idx"),
            (r#"{"kind":"bytes","offset":3,"bos":2,"eos":2}"#, "same id 2"),
            (r#"{"kind":"bytes","offset":"3"}"#, "non-negative integer"),
        ];
        for (text, phrase) in cases {
            let msg = err(Tokenizer::from_json(text, &c));
            assert!(msg.contains(phrase) && msg.contains(METADATA_KEY), "{text}: {msg:?} lacks {phrase:?}");
        }
    }

    #[test]
    fn chooses_ids_for_a_config() {
        let (t, specials) = Tokenizer::bytes_for(&config(259, 1)).unwrap();
        assert!(specials);
        assert_eq!(t, Tokenizer { offset: 3, pad: Some(1), bos: Some(0), eos: Some(2) });
        // padding_idx 0: bos 1, eos 2, bytes from 3.
        let (t, _) = Tokenizer::bytes_for(&config(259, 0)).unwrap();
        assert_eq!(t, Tokenizer { offset: 3, pad: Some(0), bos: Some(1), eos: Some(2) });
        // padding_idx after the bytes.
        let (t, _) = Tokenizer::bytes_for(&config(300, 299)).unwrap();
        assert_eq!(t, Tokenizer { offset: 2, pad: Some(299), bos: Some(0), eos: Some(1) });
        // No room for bos and eos.
        let (t, specials) = Tokenizer::bytes_for(&config(258, 1)).unwrap();
        assert!(!specials);
        assert_eq!(t, Tokenizer { offset: 2, pad: Some(1), bos: None, eos: None });
        let (t, _) = Tokenizer::bytes_for(&config(257, 256)).unwrap();
        assert_eq!(t.offset, 0);
        // No room at all.
        let e = Tokenizer::bytes_for(&config(40, 1)).unwrap_err();
        assert!(matches!(e, LunaError::Config(_)));
        assert!(e.to_string().contains("vocab_size 40 is too small") && e.to_string().contains("258"), "{e}");
        for (vocab, pad) in [(259, 1), (259, 0), (300, 299), (258, 1), (257, 256), (1000, 500), (600, 100)] {
            let c = config(vocab, pad);
            let (t, _) = Tokenizer::bytes_for(&c).unwrap();
            t.validate(&c).unwrap();
        }
    }

    #[test]
    fn encodes_and_decodes() {
        let t = Tokenizer { offset: 3, pad: Some(1), bos: Some(0), eos: Some(2) };
        assert_eq!(t.encode("Ab"), vec![65 + 3, 98 + 3]);
        assert_eq!(t.encode_with_bos(b"Ab"), vec![0, 68, 101]);
        assert_eq!(t.encode_with_bos(b""), vec![0]);
        let no_bos = Tokenizer { bos: None, ..t.clone() };
        assert_eq!(no_bos.encode_with_bos(b"Ab"), vec![68, 101]);
        let text = "héllo, wörld ✓ 🦀\n";
        let ids = t.encode(text);
        assert_eq!(ids.len(), text.len());
        assert_eq!(t.decode(&ids), text);
        // Special and unused ids are dropped.
        let mut mixed = vec![0];
        mixed.extend(&ids[..3]);
        mixed.extend([1, 2, 259, 1000]);
        mixed.extend(&ids[3..]);
        assert_eq!(t.decode(&mixed), text);
        assert_eq!(t.byte(2), None);
        assert_eq!(t.byte(3), Some(0));
        assert_eq!(t.byte(258), Some(255));
        assert_eq!(t.byte(259), None);
        assert!(t.can_generate(2) && t.can_generate(3) && t.can_generate(258));
        assert!(!t.can_generate(0) && !t.can_generate(1) && !t.can_generate(259));
    }

    #[test]
    fn stream_never_splits_a_character() {
        let t = Tokenizer { offset: 3, pad: Some(1), bos: Some(0), eos: Some(2) };
        let text = "a é ✓ 🦀 z";
        let mut s = t.stream();
        let mut pieces = Vec::new();
        for id in t.encode_with_bos(text.as_bytes()) {
            let piece = s.push(id);
            // Every piece is whole characters of the text, in order.
            pieces.push(piece);
        }
        pieces.push(s.finish());
        assert_eq!(pieces.concat(), text);
        // The crab (4 bytes) comes out in one piece, on its last byte.
        let crab = pieces.iter().position(|p| p.contains('🦀')).unwrap();
        assert_eq!(pieces[crab], "🦀");
        assert!(pieces[crab - 3..crab].iter().all(|p| p.is_empty()));
        // Specials in the middle of a character do not break it.
        let mut s = t.stream();
        let e = "é".as_bytes();
        assert_eq!(s.push(e[0] as u32 + 3), "");
        assert_eq!(s.pending(), 1);
        assert_eq!(s.push(2), "");
        assert_eq!(s.push(e[1] as u32 + 3), "é");
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn stream_equals_lossy_decoding_of_arbitrary_bytes() {
        let t = Tokenizer { offset: 3, pad: Some(1), bos: Some(0), eos: Some(2) };
        let mut rng = Rng::new(42);
        for len in [0usize, 1, 2, 3, 5, 17, 200] {
            for _ in 0..50 {
                // Bias towards high bytes so that invalid and truncated sequences are common.
                let bytes: Vec<u8> = (0..len)
                    .map(|_| if rng.below(3) == 0 { rng.below(128) as u8 } else { 0x80 + rng.below(128) as u8 })
                    .collect();
                let ids = t.encode_bytes(&bytes);
                let mut s = t.stream();
                let mut out = String::new();
                for &id in &ids {
                    let piece = s.push(id);
                    out.push_str(&piece);
                    assert!(s.pending() <= 3);
                }
                out.push_str(&s.finish());
                assert_eq!(out, String::from_utf8_lossy(&bytes), "{bytes:?}");
                assert_eq!(out, t.decode(&ids));
            }
        }
    }
}
