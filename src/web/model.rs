//! `LunaModel`: a model uploaded to a `LunaEngine`: its forward pass, scoring,
//! generation (by the loop shared with the CLI, crate::generate), the pack
//! weights and the tokenizer.

#![allow(clippy::await_holding_refcell_ref)] // one call at a time: a second one gets "busy"

use super::errors::{borrow, input, js};
use super::js::{f32s, now_ms, num, obj, opt_count, opt_num, shape};
use super::watch::Watch;
use crate::generate::{Generation, Settings, Stop, TokenModel};
use crate::gpu::buffers::MemoryStats;
use crate::tokenizer::Tokenizer;
use crate::{Batch, Decoder, Engine, GpuModel, LunaError, Model, ModelKind};
use js_sys::{Float32Array, Function, Uint32Array};
use std::cell::RefCell;
use std::ops::ControlFlow;
use std::rc::Rc;
use std::sync::Arc;
use wasm_bindgen::prelude::*;

/// A model uploaded to a [`LunaEngine`](super::LunaEngine). `free()` gives its GPU memory back.
#[wasm_bindgen]
pub struct LunaModel {
    engine: Rc<RefCell<Engine>>,
    stats: Arc<MemoryStats>,
    max_binding: u64,
    model: Rc<Model>,
    gpu: Rc<GpuModel>,
    tokenizer: Option<Tokenizer>,
}

impl LunaModel {
    pub(super) fn new(
        engine: Rc<RefCell<Engine>>,
        stats: Arc<MemoryStats>,
        max_binding: u64,
        model: Model,
        gpu: GpuModel,
        tokenizer: Option<Tokenizer>,
    ) -> LunaModel {
        LunaModel { engine, stats, max_binding, model: Rc::new(model), gpu: Rc::new(gpu), tokenizer }
    }

    fn tok(&self) -> Result<&Tokenizer, JsValue> {
        self.tokenizer.as_ref().ok_or_else(|| {
            input("this model has no tokenizer (no \"luna.tokenizer\" metadata), so it cannot read text; give token ids instead")
        })
    }

    fn require_causal(&self, what: &str) -> Result<(), JsValue> {
        if self.model.config.model != ModelKind::CausalLm {
            return Err(js(LunaError::Unsupported(format!("{what} needs a causal_lm; this model is an encoder"))));
        }
        Ok(())
    }

    /// Token ids of a text (bos first when the tokenizer has one).
    fn text_ids(&self, text: &str) -> Result<Vec<u32>, JsValue> {
        if text.is_empty() {
            return Err(input("the text is empty: there is nothing to read"));
        }
        Ok(self.tok()?.encode_with_bos(text.as_bytes()))
    }

    /// Floats per token of the widest per-token buffer of one pass.
    fn widest_row(&self) -> usize {
        let c = &self.model.config;
        let d = c.embed_dim;
        match c.model {
            ModelKind::CausalLm => (if c.tie_kv { 4 * d } else { 5 * d }).max(c.ffn_embed_dim).max(c.vocab_size),
            ModelKind::Encoder => (if c.tie_kv { 2 * d } else { 3 * d }).max(c.ffn_embed_dim),
        }
    }

    fn check_positions(&self, tokens: usize) -> Result<(), JsValue> {
        let c = &self.model.config;
        if c.learned_pos && tokens > c.max_positions {
            return Err(input(format!(
                "the text is {tokens} tokens, more than max_positions = {} of this model's learned positions; use a shorter text",
                c.max_positions
            )));
        }
        Ok(())
    }

    async fn forward_batch(&self, batch: Batch) -> Result<JsValue, JsValue> {
        let c = &self.model.config;
        let mut e = borrow(&self.engine)?;
        let t = now_ms();
        Ok(match c.model {
            ModelKind::Encoder => {
                let out = e.encode(&self.gpu, &batch).await.map_err(js)?;
                let ms = now_ms() - t;
                obj(&[
                    ("kind", "encoder".into()),
                    ("x", f32s(&out.x)),
                    ("xShape", shape(&[out.batch, out.len, out.dim])),
                    ("p", f32s(&out.p)),
                    ("pShape", shape(&[out.batch, out.proj_len, out.dim])),
                    ("ms", num(ms)),
                ])
            }
            ModelKind::CausalLm => {
                let out = e.causal_forward(&self.gpu, &batch).await.map_err(js)?;
                let ms = now_ms() - t;
                obj(&[
                    ("kind", "causal_lm".into()),
                    ("logits", f32s(&out.logits)),
                    ("logitsShape", shape(&[out.batch, out.len, out.vocab])),
                    ("ms", num(ms)),
                ])
            }
        })
    }
}

#[wasm_bindgen]
impl LunaModel {
    /// `"encoder"` or `"causal_lm"`.
    #[wasm_bindgen(getter)]
    pub fn kind(&self) -> String {
        match self.model.config.model {
            ModelKind::Encoder => "encoder".into(),
            ModelKind::CausalLm => "causal_lm".into(),
        }
    }

    /// The model's `luna.config`, as JSON text.
    #[wasm_bindgen(getter)]
    pub fn config(&self) -> String {
        self.model.config.to_json()
    }

    /// The `luna.tokenizer` JSON text, or `undefined` when the model has none.
    #[wasm_bindgen(getter)]
    pub fn tokenizer(&self) -> Option<String> {
        self.tokenizer.as_ref().map(|t| t.to_json())
    }

    #[wasm_bindgen(getter, js_name = numLayers)]
    pub fn num_layers(&self) -> usize {
        self.model.config.num_layers
    }

    #[wasm_bindgen(getter, js_name = numHeads)]
    pub fn num_heads(&self) -> usize {
        self.model.config.num_heads
    }

    #[wasm_bindgen(getter, js_name = projectionLength)]
    pub fn projection_length(&self) -> usize {
        self.model.config.projection_length
    }

    /// Bytes of the model's weights as stored on the GPU (f32).
    #[wasm_bindgen(getter, js_name = weightBytes)]
    pub fn weight_bytes(&self) -> f64 {
        self.model.named_tensors().iter().map(|(_, _, d)| d.len() as f64 * 4.0).sum()
    }

    /// The most tokens one pass could take on this adapter: the widest
    /// per-token buffer (projections, feed-forward, logits) must fit one
    /// storage binding. (The device's total memory may bind first.) No limit
    /// on the input: the calls run longer inputs segment by segment (`score`,
    /// a causal `forward`) or in groups (an encoder's `forward`).
    #[wasm_bindgen(js_name = maxTokens)]
    pub fn max_tokens(&self) -> f64 {
        (self.max_binding / (self.widest_row() as u64 * 4)) as f64
    }

    /// Token ids of `text`; with `bos`, the tokenizer's bos first (the form `score` and `generate` use).
    pub fn tokenize(&self, text: &str, bos: bool) -> Result<Uint32Array, JsValue> {
        let t = self.tok()?;
        let ids = if bos { t.encode_with_bos(text.as_bytes()) } else { t.encode(text) };
        Ok(Uint32Array::from(&ids[..]))
    }

    /// The text of token ids (special and unused ids dropped; invalid UTF-8 becomes U+FFFD).
    pub fn detokenize(&self, ids: Vec<u32>) -> Result<String, JsValue> {
        Ok(self.tok()?.decode(&ids))
    }

    /// The model file's bytes (safetensors), e.g. to save a random model.
    #[wasm_bindgen(js_name = toBytes)]
    pub fn to_bytes(&self) -> Result<Vec<u8>, JsValue> {
        self.model.to_bytes().map_err(js)
    }

    /// Runs the model on a batch of token ids `[batch, len]` (row-major,
    /// right-padded with `padding_idx`): an encoder gives `x` and `p`, a causal
    /// LM `logits`, each a `Float32Array` with its shape.
    #[wasm_bindgen(unchecked_return_type = "ForwardResult")]
    pub async fn forward(&self, #[wasm_bindgen(unchecked_param_type = "Int32Array | number[]")] tokens: Vec<i32>, batch: usize, len: usize) -> Result<JsValue, JsValue> {
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let batch = Batch::new(&self.model.config, &ids, batch, len).map_err(js)?;
        self.forward_batch(batch).await
    }

    /// `forward` on the tokens of a text (bos first when the tokenizer has one), batch 1.
    #[wasm_bindgen(js_name = forwardText, unchecked_return_type = "ForwardResult")]
    pub async fn forward_text(&self, text: String) -> Result<JsValue, JsValue> {
        let ids = self.text_ids(&text)?;
        self.check_positions(ids.len())?;
        let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let batch = Batch::new(&self.model.config, &ids, 1, ids.len()).map_err(js)?;
        self.forward_batch(batch).await
    }

    /// The surprisal of every byte of `text` under a causal LM with a
    /// tokenizer. A text longer than a segment (2048 tokens) runs segment by
    /// segment, each pass continuing from the states the previous one left,
    /// in memory that does not grow with the text. Options:
    /// `onProgress({ done, total })` in tokens after each segment (once, at
    /// the end, for a short text), and `signal`, an `AbortSignal` that stops
    /// the call at the end of the segment under way: it then rejects with
    /// kind `"aborted"` and the engine is free (watch.rs).
    #[wasm_bindgen(unchecked_return_type = "ScoreResult")]
    pub async fn score(&self, text: String, #[wasm_bindgen(unchecked_optional_param_type = "ScoreOptions")] options: Option<JsValue>) -> Result<JsValue, JsValue> {
        let watch = Watch::from_options(&options.unwrap_or(JsValue::UNDEFINED))?;
        self.require_causal("scoring")?;
        let tok = self.tok()?.clone();
        let ids = self.text_ids(&text)?;
        if ids.len() < 2 {
            return Err(input("the text is one byte and the tokenizer has no bos: that byte has no context, so nothing can be scored"));
        }
        self.check_positions(ids.len())?;
        let ids64: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let batch = Batch::new(&self.model.config, &ids64, 1, ids.len()).map_err(js)?;
        let (bits, ms, peak) = {
            let mut e = borrow(&self.engine)?;
            e.reset_peak_memory();
            let t = now_ms();
            let bits = watch.run(&mut e, async |e: &mut Engine| e.score(&self.gpu, &batch).await).await?;
            (bits, now_ms() - t, e.memory().1)
        };
        let nbytes = text.len();
        let offset = tok.bos.is_some() as usize;
        // Byte i is token i + offset; its surprisal is entry i + offset - 1 of the next-token layout.
        let per_byte: Vec<f32> = (0..nbytes).map(|i| if i + offset == 0 { f32::NAN } else { bits[i + offset - 1] }).collect();
        let mut per_char = Vec::with_capacity(text.chars().count());
        for (start, ch) in text.char_indices() {
            per_char.push(per_byte[start..start + ch.len_utf8()].iter().sum::<f32>());
        }
        let scored: Vec<f64> = per_byte.iter().filter(|v| !v.is_nan()).map(|&v| v as f64).collect();
        let total: f64 = scored.iter().sum();
        if !total.is_finite() {
            return Err(input(format!("the model gave a non-finite surprisal ({total}); its weights may be broken")));
        }
        Ok(obj(&[
            ("bytes", f32s(&per_byte)),
            ("chars", f32s(&per_char)),
            ("tokens", num(ids.len() as f64)),
            ("bitsPerByte", num(total / scored.len().max(1) as f64)),
            ("ms", num(ms)),
            ("tokensPerSecond", num(ids.len() as f64 / (ms.max(1e-3) / 1e3))),
            ("peakBytes", num(peak as f64)),
        ]))
    }

    /// Surprisal of token sequences `[batch, len]` (right-padded): entry
    /// `[b, i]` is `-log2 p(token i | tokens before i)`, 0 at `i = 0` and past
    /// each sequence's end (the layout of `luna score --surprisal`).
    #[wasm_bindgen(js_name = scoreTokens)]
    pub async fn score_tokens(&self, #[wasm_bindgen(unchecked_param_type = "Int32Array | number[]")] tokens: Vec<i32>, batch: usize, len: usize) -> Result<Float32Array, JsValue> {
        self.require_causal("scoring")?;
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let batch = Batch::new(&self.model.config, &ids, batch, len).map_err(js)?;
        let bits = borrow(&self.engine)?.score(&self.gpu, &batch).await.map_err(js)?;
        let n = batch.len;
        let mut out = vec![0f32; batch.batch * n];
        for b in 0..batch.batch {
            for i in 1..batch.lengths[b] {
                out[b * n + i] = bits[b * n + i - 1];
            }
        }
        Ok(Float32Array::from(&out[..]))
    }

    /// Continues `prompt` (after bos when the tokenizer has one): the prompt
    /// runs through the parallel form, then each new token comes from the
    /// streaming decoder, whose state never grows. After every token,
    /// `onToken(text, event)` gets the text it completes (often one character,
    /// sometimes empty inside a multi-byte character) and a `TokenEvent`;
    /// returning `false` from it stops the generation. Other calls may run
    /// between tokens.
    #[wasm_bindgen(unchecked_return_type = "GenerateResult")]
    pub async fn generate(
        &self,
        prompt: String,
        #[wasm_bindgen(unchecked_param_type = "GenerateOptions")] options: JsValue,
        #[wasm_bindgen(unchecked_param_type = "(text: string, event: TokenEvent) => boolean | void")] on_token: Option<Function>,
    ) -> Result<JsValue, JsValue> {
        self.require_causal("generation")?;
        let tok = self.tok()?.clone();
        let max_tokens = opt_count(&options, "maxTokens", 200, 0, 1 << 24)?;
        let temperature = opt_num(&options, "temperature")?.unwrap_or(0.8);
        let top_k = match opt_num(&options, "topK")? {
            None => None,
            Some(k) if k.fract() == 0.0 && k >= 1.0 => Some(k as usize),
            Some(k) => return Err(input(format!("topK = {k} must be a whole number of at least 1"))),
        };
        let seed = match opt_num(&options, "seed")? {
            None => 0,
            Some(s) if s.fract() == 0.0 && (0.0..=9007199254740991.0).contains(&s) => s as u64,
            Some(s) => return Err(input(format!("seed = {s} must be a whole number >= 0"))),
        };
        let settings = Settings { max_tokens, temperature, top_k, seed };
        let generation = Generation::new(&self.model.config, &tok, &prompt, &settings).map_err(js)?;
        let mut decoder = GpuDecoder { engine: &self.engine, gpu: &self.gpu, decoder: None };
        let (mut live_min, mut live_max) = (f64::INFINITY, 0f64);
        let out = generation
            .run(&mut decoder, now_ms, |e| {
                let live = self.stats.live() as f64;
                live_min = live_min.min(live);
                live_max = live_max.max(live);
                if let Some(f) = &on_token {
                    let event = obj(&[
                        ("token", num(e.token as f64)),
                        ("index", num(e.index as f64)),
                        ("position", num(e.position as f64)),
                        ("stateBytes", num(e.state_bytes as f64)),
                        ("liveBytes", num(live)),
                        ("ms", num(e.ms)),
                    ]);
                    if f.call2(&JsValue::NULL, &JsValue::from_str(e.piece), &event)?.as_bool() == Some(false) {
                        return Ok(ControlFlow::Break(()));
                    }
                }
                Ok(ControlFlow::Continue(()))
            })
            .await?;
        if let (false, Some(f)) = (out.tail.is_empty(), &on_token) {
            f.call2(&JsValue::NULL, &JsValue::from_str(&out.tail), &JsValue::UNDEFINED)?;
        }
        let stopped_at = match out.stop {
            Stop::MaxTokens(n) => format!("maxTokens {n}"),
            Stop::Eos => "eos".into(),
            Stop::Caller => "the callback".into(),
            Stop::MaxPositions(m) => format!("max_positions = {m} of this model's learned positions"),
        };
        let live = self.stats.live() as f64;
        Ok(obj(&[
            ("text", out.text.as_str().into()),
            ("tokens", num(out.generated as f64)),
            ("promptTokens", num(out.prompt_tokens as f64)),
            ("prefillMs", num(out.prefill_ms)),
            ("ms", num(out.decode_ms)),
            ("tokensPerSecond", num(out.tokens_per_second())),
            ("stateBytes", num(out.state_bytes as f64)),
            ("stoppedAt", stopped_at.into()),
            ("liveBytesMin", num(if live_min.is_finite() { live_min } else { live })),
            ("liveBytesMax", num(live_max.max(live_min.min(live)))),
        ]))
    }

    /// The pack weights of `layer` (0-based) over the tokens of `text` (bos
    /// first when the tokenizer has one): `weights[(t * heads + h) * projLen + j]`
    /// is the weight with which token `t` is folded into packed slot `j` of
    /// head `h`. Byte `i` of the text is token `i + offset`. `options` as
    /// for `score`: `onProgress` after each segment, `signal` to stop it.
    #[wasm_bindgen(js_name = packWeights, unchecked_return_type = "PackWeights")]
    pub async fn pack_weights(&self, text: String, layer: usize, #[wasm_bindgen(unchecked_optional_param_type = "ScoreOptions")] options: Option<JsValue>) -> Result<JsValue, JsValue> {
        let watch = Watch::from_options(&options.unwrap_or(JsValue::UNDEFINED))?;
        let ids = self.text_ids(&text)?;
        let offset = self.tok()?.bos.is_some() as usize;
        self.pack_weights_ids(ids, layer, offset, watch).await
    }

    /// `packWeights` on token ids (one sequence, no padding).
    #[wasm_bindgen(js_name = packWeightsTokens, unchecked_return_type = "PackWeights")]
    pub async fn pack_weights_tokens(&self, tokens: Vec<u32>, layer: usize, #[wasm_bindgen(unchecked_optional_param_type = "ScoreOptions")] options: Option<JsValue>) -> Result<JsValue, JsValue> {
        let watch = Watch::from_options(&options.unwrap_or(JsValue::UNDEFINED))?;
        self.pack_weights_ids(tokens, layer, 0, watch).await
    }
}

impl LunaModel {
    async fn pack_weights_ids(&self, ids: Vec<u32>, layer: usize, offset: usize, watch: Watch) -> Result<JsValue, JsValue> {
        self.require_causal("pack weights")?;
        self.check_positions(ids.len())?;
        let mut e = borrow(&self.engine)?;
        let t = now_ms();
        let (gpu, model) = (&self.gpu, &self.model);
        let w = watch.run(&mut e, async |e: &mut Engine| e.pack_weights(gpu, model, &ids, &[layer]).await).await?.remove(0);
        let ms = now_ms() - t;
        Ok(obj(&[
            ("weights", f32s(&w.values)),
            ("len", num(w.len as f64)),
            ("heads", num(w.heads as f64)),
            ("projLen", num(w.proj_len as f64)),
            ("layer", num(w.layer as f64)),
            ("offset", num(offset as f64)),
            ("ms", num(ms)),
        ]))
    }
}

/// The model's streaming decoder on the engine, for the generation loop. The
/// engine is borrowed for one call at a time, never across the caller's
/// `onToken`, so other calls may run between tokens.
struct GpuDecoder<'a> {
    engine: &'a Rc<RefCell<Engine>>,
    gpu: &'a GpuModel,
    decoder: Option<Decoder>,
}

impl TokenModel for GpuDecoder<'_> {
    type Error = JsValue;

    async fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f64>, JsValue> {
        let (decoder, logits) = borrow(self.engine)?.prefill(self.gpu, tokens).await?;
        self.decoder = Some(decoder);
        Ok(logits.iter().map(|&v| v as f64).collect())
    }

    async fn step(&mut self, token: u32) -> Result<Vec<f64>, JsValue> {
        let decoder = self.decoder.as_mut().ok_or_else(|| input("a token before the prompt"))?;
        let logits = borrow(self.engine)?.step(self.gpu, decoder, token).await?;
        Ok(logits.iter().map(|&v| v as f64).collect())
    }

    fn state_bytes(&self) -> u64 {
        self.decoder.as_ref().map_or(0, Decoder::state_bytes)
    }
}
