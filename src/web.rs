//! The JavaScript API of the browser build, made by wasm-bindgen (web/README.md
//! shows it in use; web/build.sh builds it into web/pkg/).
//!
//! - [`LunaEngine`]: a WebGPU device (`LunaEngine.create()`), models uploaded
//!   to it (`loadModel(bytes)`, `randomModel(config)`), its GPU memory, and a
//!   small Luna-against-softmax benchmark.
//! - [`LunaModel`]: a model on that device: `forward` (encoder `x`/`p` or
//!   causal logits), `score` (surprisal of every byte of a text), `generate`
//!   (a continuation streamed token by token to a callback), `packWeights`
//!   (what the `l` packed slots read, for a layer), the tokenizer.
//!
//! Everything that touches the GPU is `async` and never blocks: it returns a
//! `Promise`. Every failure rejects that promise (or throws) with an `Error`
//! whose `name` is `"LunaError"`, whose `message` is the engine's message, and
//! whose `kind` says which kind of failure it is (see [`kind`]). One call runs
//! on an engine at a time: a second call made before the first has settled is
//! refused with kind `"busy"` (await each call), except that a generation lets
//! other calls in between its tokens.

#![allow(clippy::await_holding_refcell_ref)]

use crate::baseline::{Kind, SoftmaxConfig, SoftmaxInput};
use crate::config::{Config, ModelKind};
use crate::engine::{Engine, GpuModel};
use crate::error::LunaError;
use crate::gpu::buffers::MemoryStats;
use crate::gpu::GpuContext;
use crate::input::Batch;
use crate::model::Model;
use crate::sample::Sampler;
use crate::tokenizer::Tokenizer;
use js_sys::{Array, Float32Array, Function, Object, Reflect, Uint32Array};
use std::cell::{RefCell, RefMut};
use std::rc::Rc;
use std::sync::Arc;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &str = r#"
/** What `LunaEngine.adapter` reports about the WebGPU adapter. */
export interface AdapterInfo {
  name: string; vendor: string; architecture: string; backend: string; deviceType: string;
  /** True for a software rasteriser (SwiftShader, llvmpipe): only ratios and slopes of timings mean anything. */
  software: boolean;
  maxStorageBufferBindingSize: number; maxBufferSize: number;
  features: string[];
}
/** Bytes of GPU buffers the engine holds now (`live`) and the most it has held (`peak`). */
export interface Memory { live: number; peak: number; }
export interface EncoderForward {
  kind: "encoder";
  /** `[B, n, d]`, row-major; rows at padding carry no meaning. */
  x: Float32Array; xShape: number[];
  /** `[B, l', d]`. */
  p: Float32Array; pShape: number[];
  ms: number;
}
export interface CausalForward {
  kind: "causal_lm";
  /** `[B, n, vocab]`. */
  logits: Float32Array; logitsShape: number[];
  ms: number;
}
export type ForwardResult = EncoderForward | CausalForward;
export interface ScoreResult {
  /** Surprisal in bits of each byte of the UTF-8 text: -log2 p(byte | bytes before it). NaN for the first byte when the tokenizer has no bos. */
  bytes: Float32Array;
  /** Per Unicode code point (as `Array.from(text)` splits the text): the sum over its bytes. */
  chars: Float32Array;
  /** Tokens scored in one pass (bytes, plus bos). */
  tokens: number;
  bitsPerByte: number;
  ms: number; tokensPerSecond: number;
  /** Peak bytes of GPU buffers during the call. */
  peakBytes: number;
}
export interface GenerateOptions {
  /** Most tokens to generate (default 200); generation also stops at eos. */
  maxTokens?: number;
  /** Softmax temperature; 0 is greedy (default 0.8). */
  temperature?: number;
  topK?: number;
  /** Seed of the sampler (default 0): the same seed gives the same text. */
  seed?: number;
}
/** Passed to the `onToken` callback of `generate` after each token. */
export interface TokenEvent {
  token: number;
  /** Tokens generated so far, this one included. */
  index: number;
  /** Tokens the decoder has consumed (prompt and generated). */
  position: number;
  /** Bytes of the decoder state: constant, whatever the position. */
  stateBytes: number;
  /** Bytes of all GPU buffers the engine holds now. */
  liveBytes: number;
  /** Milliseconds since the first generated token was asked for. */
  ms: number;
}
export interface GenerateResult {
  text: string; tokens: number; promptTokens: number;
  prefillMs: number; ms: number; tokensPerSecond: number;
  stateBytes: number; stoppedAt: string;
  /** Smallest and largest `liveBytes` seen while streaming. */
  liveBytesMin: number; liveBytesMax: number;
}
export interface PackWeights {
  /** `[len, heads, slots]`: A[t, h, j] = softplus_ln2(pc_proj(X)[t]_h . Q_P,h[j]), the weight with which token t is folded into slot j. */
  weights: Float32Array;
  len: number; heads: number; slots: number; layer: number;
  /** Tokens before the first byte of the text (1 when the tokenizer has bos). */
  offset: number;
  ms: number;
}
export interface BenchOptions { d?: number; heads?: number; l?: number; layers?: number; repeats?: number; }
export interface BenchPoint {
  method: string; n: number; d: number; heads: number; l: number; layers: number;
  /** Median wall-clock milliseconds of a forward pass, its output read back. */
  ms: number; tokensPerSecond: number; peakBytes: number;
}
"#;

/// The `kind` of a [`LunaError`] as JavaScript sees it.
pub fn kind(e: &LunaError) -> &'static str {
    match e {
        LunaError::NoAdapter(_) | LunaError::AdapterNotFound { .. } => "no-adapter",
        LunaError::Device(_) => "device",
        LunaError::OutOfMemory(_) => "out-of-memory",
        LunaError::Model(_) => "model",
        LunaError::Config(_) => "config",
        LunaError::Input(_) => "input",
        LunaError::TooLarge { .. } => "too-large",
        LunaError::Unsupported(_) => "unsupported",
        LunaError::Io { .. } => "io",
    }
}

/// An `Error` named `LunaError` with `kind` set.
fn error(kind: &str, message: &str) -> JsValue {
    let e = js_sys::Error::new(message);
    e.set_name("LunaError");
    let _ = Reflect::set(&e, &"kind".into(), &kind.into());
    e.into()
}

fn js(e: LunaError) -> JsValue {
    error(kind(&e), &e.to_string())
}

fn input(msg: impl Into<String>) -> JsValue {
    js(LunaError::Input(msg.into()))
}

fn busy() -> JsValue {
    error("busy", "the engine is busy with another call; await each call before making the next")
}

/// A plain object from key/value pairs.
fn obj(pairs: &[(&str, JsValue)]) -> JsValue {
    let o = Object::new();
    for (k, v) in pairs {
        let _ = Reflect::set(&o, &(*k).into(), v);
    }
    o.into()
}

fn shape(dims: &[usize]) -> JsValue {
    dims.iter().map(|&d| JsValue::from_f64(d as f64)).collect::<Array>().into()
}

fn f32s(v: &[f32]) -> JsValue {
    Float32Array::from(v).into()
}

fn num(v: f64) -> JsValue {
    JsValue::from_f64(v)
}

/// `performance.now()` in milliseconds (on a window or a worker).
fn now_ms() -> f64 {
    let perf = Reflect::get(&js_sys::global(), &"performance".into()).unwrap_or(JsValue::UNDEFINED);
    if let Ok(f) = Reflect::get(&perf, &"now".into()).and_then(|f| f.dyn_into::<Function>()) {
        if let Some(t) = f.call0(&perf).ok().and_then(|v| v.as_f64()) {
            return t;
        }
    }
    js_sys::Date::now()
}

/// A number option of an options object: `None` when absent; an error when not a finite number.
fn opt_num(options: &JsValue, key: &str) -> Result<Option<f64>, JsValue> {
    if options.is_undefined() || options.is_null() {
        return Ok(None);
    }
    let v = Reflect::get(options, &key.into()).unwrap_or(JsValue::UNDEFINED);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    match v.as_f64() {
        Some(x) if x.is_finite() => Ok(Some(x)),
        _ => Err(input(format!("option {key} must be a finite number"))),
    }
}

fn opt_count(options: &JsValue, key: &str, default: usize, min: usize, max: usize) -> Result<usize, JsValue> {
    match opt_num(options, key)? {
        None => Ok(default),
        Some(x) if x.fract() == 0.0 && x >= min as f64 && x <= max as f64 => Ok(x as usize),
        Some(x) => Err(input(format!("option {key} = {x} must be a whole number from {min} to {max}"))),
    }
}

fn borrow(engine: &Rc<RefCell<Engine>>) -> Result<RefMut<'_, Engine>, JsValue> {
    engine.try_borrow_mut().map_err(|_| busy())
}

/// A WebGPU device with Luna's pipelines, workspace and memory accounting.
#[wasm_bindgen]
pub struct LunaEngine {
    engine: Rc<RefCell<Engine>>,
    stats: Arc<MemoryStats>,
    /// What `adapter` returns, made once (reading it never waits for a running call).
    adapter: JsValue,
    /// The largest buffer binding of the device.
    max_binding: u64,
}

#[wasm_bindgen]
impl LunaEngine {
    /// Opens the browser's WebGPU adapter (`powerPreference`: `"high-performance"`,
    /// the default, or `"low-power"`) and a device with its full limits.
    /// Rejects with kind `"no-webgpu"` when the browser has no WebGPU, and
    /// `"no-adapter"` when it offers no adapter.
    pub async fn create(power_preference: Option<String>) -> Result<LunaEngine, JsValue> {
        console_error_panic_hook::set_once();
        let navigator = Reflect::get(&js_sys::global(), &"navigator".into()).unwrap_or(JsValue::UNDEFINED);
        let gpu = if navigator.is_undefined() { JsValue::UNDEFINED } else { Reflect::get(&navigator, &"gpu".into()).unwrap_or(JsValue::UNDEFINED) };
        if gpu.is_undefined() || gpu.is_null() {
            return Err(error(
                "no-webgpu",
                "WebGPU is not available in this browser (navigator.gpu is missing). Use a browser with WebGPU \
                 turned on (a recent Chrome, Edge, Safari or Firefox), and open the page from https:// or \
                 http://localhost; Chromium on Linux needs --enable-unsafe-webgpu.",
            ));
        }
        let power = match power_preference.as_deref() {
            None | Some("high-performance") => wgpu::PowerPreference::HighPerformance,
            Some("low-power") => wgpu::PowerPreference::LowPower,
            Some(other) => return Err(input(format!("powerPreference {other:?} must be \"high-performance\" or \"low-power\""))),
        };
        // What the browser says about its adapter (wgpu's AdapterInfo leaves most of it empty on the web).
        let mut info: [String; 3] = Default::default();
        if let Ok(request) = Reflect::get(&gpu, &"requestAdapter".into()).and_then(|f| f.dyn_into::<Function>()) {
            let options = obj(&[("powerPreference", if power == wgpu::PowerPreference::LowPower { "low-power" } else { "high-performance" }.into())]);
            if let Ok(promise) = request.call1(&gpu, &options).and_then(|p| p.dyn_into::<js_sys::Promise>()) {
                if let Ok(adapter) = wasm_bindgen_futures::JsFuture::from(promise).await {
                    if let Ok(i) = Reflect::get(&adapter, &"info".into()) {
                        for (slot, key) in info.iter_mut().zip(["vendor", "architecture", "description"]) {
                            *slot = Reflect::get(&i, &key.into()).ok().and_then(|v| v.as_string()).unwrap_or_default();
                        }
                    }
                }
            }
        }
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = wgpu::Backends::BROWSER_WEBGPU;
        let instance = wgpu::Instance::new(desc);
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions { power_preference: power, ..Default::default() })
            .await
            .map_err(|e| {
                error(
                    "no-adapter",
                    &format!(
                        "this browser has WebGPU but offered no GPU adapter ({e}); the GPU may be blocklisted or \
                         WebGPU turned off in the browser's settings"
                    ),
                )
            })?;
        let ctx = GpuContext::from_adapter(adapter).await.map_err(js)?;
        let adapter = describe_adapter(&ctx, &info);
        let max_binding = ctx.max_binding();
        let engine = Engine::with_context(ctx);
        let stats = engine.stats.clone();
        Ok(LunaEngine { engine: Rc::new(RefCell::new(engine)), stats, adapter, max_binding })
    }

    /// The adapter: name, vendor, architecture, backend, limits that bound the sequence length, features.
    #[wasm_bindgen(getter, unchecked_return_type = "AdapterInfo")]
    pub fn adapter(&self) -> JsValue {
        self.adapter.clone()
    }

    /// Bytes of GPU buffers the engine holds now and the most it has held
    /// (since the last `resetPeakMemory`). Callable at any time, during other calls too.
    #[wasm_bindgen(unchecked_return_type = "Memory")]
    pub fn memory(&self) -> JsValue {
        obj(&[("live", num(self.stats.live() as f64)), ("peak", num(self.stats.peak() as f64))])
    }

    #[wasm_bindgen(js_name = resetPeakMemory)]
    pub fn reset_peak_memory(&self) {
        self.stats.reset_peak();
    }

    /// Gives the scratch buffers back to the browser (they are made again on the next call).
    #[wasm_bindgen(js_name = releaseWorkspace)]
    pub fn release_workspace(&self) -> Result<(), JsValue> {
        borrow(&self.engine)?.release_workspace();
        Ok(())
    }

    /// Parses a model file (safetensors bytes with `luna.config` metadata) and uploads it.
    /// Rejects with kind `"model"` or `"config"` for a bad file.
    #[wasm_bindgen(js_name = loadModel)]
    pub async fn load_model(&self, bytes: Vec<u8>) -> Result<LunaModel, JsValue> {
        let model = Model::from_bytes(&bytes).map_err(js)?;
        self.upload(model).await
    }

    /// A model of `config` (the JSON of `luna.config`) with random weights from
    /// `seed`; `bytesTokenizer` stores a byte-level tokenizer in it (a causal LM
    /// that can then score and generate text).
    #[wasm_bindgen(js_name = randomModel)]
    pub async fn random_model(&self, config: String, seed: u32, bytes_tokenizer: bool) -> Result<LunaModel, JsValue> {
        let config = Config::from_json(&config).map_err(js)?;
        let mut model = Model::random(&config, seed as u64).map_err(js)?;
        if bytes_tokenizer {
            let (tok, _) = Tokenizer::bytes_for(&config).map_err(js)?;
            tok.store(&mut model).map_err(js)?;
        }
        self.upload(model).await
    }

    /// Times one forward pass of a random-weight encoder layer stack at length
    /// `n` (batch 1): `method` is `"luna"` (Luna with projection length
    /// `options.l`, default 16), `"softmax-flash"` (fused online softmax) or
    /// `"softmax-naive"` (materialised n×n scores). Options: `d` (64), `heads`
    /// (4), `layers` (1), `repeats` (3, after one warm-up). Wall clock, with
    /// the output read back; the peak counts the engine's GPU buffers.
    #[wasm_bindgen(unchecked_return_type = "BenchPoint")]
    pub async fn benchmark(&self, method: String, n: usize, #[wasm_bindgen(unchecked_param_type = "BenchOptions")] options: JsValue) -> Result<JsValue, JsValue> {
        let d = opt_count(&options, "d", 64, 2, 4096)?;
        let heads = opt_count(&options, "heads", 4, 1, 64)?;
        let l = opt_count(&options, "l", 16, 1, 4096)?;
        let layers = opt_count(&options, "layers", 1, 1, 64)?;
        let repeats = opt_count(&options, "repeats", 3, 1, 100)?;
        if n == 0 || d % heads != 0 {
            return Err(input("n must be at least 1 and d a multiple of heads"));
        }
        let mut e = borrow(&self.engine)?;
        e.release_workspace();
        e.reset_peak_memory();
        let mut times = Vec::new();
        match method.as_str() {
            "luna" => {
                let config = Config::from_json(
                    &serde_json::json!({
                        "model": "encoder", "vocab_size": 1000, "embed_dim": d, "ffn_embed_dim": 4 * d, "num_layers": layers,
                        "num_heads": heads, "num_pheads": heads, "projection_length": l, "max_positions": n.max(16),
                        "learned_pos": false, "embed_scale": (d as f64).sqrt(), "activation": "gelu",
                    })
                    .to_string(),
                )
                .map_err(js)?;
                let model = Model::random(&config, 1).map_err(js)?;
                let gm = e.load_async(&model).await.map_err(js)?;
                let (tokens, b, len) = crate::init::random_tokens(&config, &[n], 2);
                let batch = Batch::new(&config, &tokens, b, len).map_err(js)?;
                for i in 0..=repeats {
                    let t = now_ms();
                    e.encode(&gm, &batch).await.map_err(js)?;
                    if i > 0 {
                        times.push(now_ms() - t);
                    }
                }
            }
            "softmax-flash" | "softmax-naive" => {
                let kind = if method == "softmax-naive" { Kind::Naive } else { Kind::Flash };
                let (config, weights) = SoftmaxConfig::random_bench(d, heads, layers);
                let enc = e.load_softmax_async(&config, &weights).await.map_err(js)?;
                let x = crate::init::Rng::new(5).fill(n * d, 1.0);
                let key_mask = vec![false; n];
                let input = SoftmaxInput { x: &x, batch: 1, len: n, key_mask: &key_mask };
                for i in 0..=repeats {
                    let t = now_ms();
                    e.softmax_forward(&enc, &input, kind).await.map_err(js)?;
                    if i > 0 {
                        times.push(now_ms() - t);
                    }
                }
            }
            other => return Err(input(format!("unknown method {other:?}: use \"luna\", \"softmax-flash\" or \"softmax-naive\""))),
        }
        let peak = e.memory().1;
        e.release_workspace();
        times.sort_by(f64::total_cmp);
        let ms = times[times.len() / 2];
        Ok(obj(&[
            ("method", method.into()),
            ("n", num(n as f64)),
            ("d", num(d as f64)),
            ("heads", num(heads as f64)),
            ("l", num(l as f64)),
            ("layers", num(layers as f64)),
            ("ms", num(ms)),
            ("tokensPerSecond", num(n as f64 / (ms.max(1e-3) / 1e3))),
            ("peakBytes", num(peak as f64)),
        ]))
    }
}

/// The `AdapterInfo` object of a context; `info` is the browser's vendor, architecture, description.
fn describe_adapter(ctx: &GpuContext, info: &[String; 3]) -> JsValue {
    let i = &ctx.info;
    let f = |flag: wgpu::Features, name: &str| ctx.features.contains(flag).then(|| JsValue::from_str(name));
    let features: Array = [
        f(wgpu::Features::SUBGROUP, "subgroups"),
        f(wgpu::Features::SHADER_F16, "shader-f16"),
        f(wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let [vendor, architecture, description] = info;
    let text = format!("{} {} {} {architecture} {description}", i.name, i.driver, i.driver_info).to_lowercase();
    let software = i.device_type == wgpu::DeviceType::Cpu || ["swiftshader", "llvmpipe", "lavapipe", "warp"].iter().any(|s| text.contains(s));
    let name = if description.is_empty() { i.name.clone() } else { description.clone() };
    obj(&[
        ("name", name.into()),
        ("vendor", vendor.clone().into()),
        ("architecture", architecture.clone().into()),
        ("backend", format!("{:?}", i.backend).into()),
        ("deviceType", format!("{:?}", i.device_type).into()),
        ("software", software.into()),
        ("maxStorageBufferBindingSize", num(ctx.limits.max_storage_buffer_binding_size as f64)),
        ("maxBufferSize", num(ctx.limits.max_buffer_size as f64)),
        ("features", features.into()),
    ])
}

impl LunaEngine {
    async fn upload(&self, model: Model) -> Result<LunaModel, JsValue> {
        let tokenizer = Tokenizer::from_model(&model).map_err(js)?;
        let gpu = {
            let e = borrow(&self.engine)?;
            e.load_async(&model).await.map_err(js)?
        };
        Ok(LunaModel {
            engine: self.engine.clone(),
            stats: self.stats.clone(),
            max_binding: self.max_binding,
            model: Rc::new(model),
            gpu: Rc::new(gpu),
            tokenizer,
        })
    }
}

/// A model uploaded to a [`LunaEngine`]. `free()` gives its GPU memory back.
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

    /// The page promises one pass over a document within [`LunaModel::max_tokens`].
    /// (The native engine scores a longer document segment by segment; the
    /// browser keeps the one-pass limit, which its demo explains.)
    fn check_one_pass(&self, tokens: usize) -> Result<(), JsValue> {
        if tokens as f64 > self.max_tokens() {
            return Err(js(LunaError::TooLarge {
                what: format!("a document of {tokens} tokens in one pass"),
                needed: tokens as u64 * self.widest_row() as u64 * 4,
                limit: self.max_binding,
            }));
        }
        Ok(())
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

    /// The longest sequence one pass of `forward` / `score` can take on this
    /// adapter: the widest per-token buffer (projections, feed-forward, logits)
    /// must fit one storage binding. (The device's total memory may bind first.)
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
    /// tokenizer, in one parallel pass over the whole text. A text too long
    /// for this adapter rejects with kind `"too-large"` (see `maxTokens`).
    #[wasm_bindgen(unchecked_return_type = "ScoreResult")]
    pub async fn score(&self, text: String) -> Result<JsValue, JsValue> {
        self.require_causal("scoring")?;
        let tok = self.tok()?.clone();
        let ids = self.text_ids(&text)?;
        if ids.len() < 2 {
            return Err(input("the text is one byte and the tokenizer has no bos: that byte has no context, so nothing can be scored"));
        }
        self.check_positions(ids.len())?;
        self.check_one_pass(ids.len())?;
        let ids64: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let batch = Batch::new(&self.model.config, &ids64, 1, ids.len()).map_err(js)?;
        let (bits, ms, peak) = {
            let mut e = borrow(&self.engine)?;
            e.reset_peak_memory();
            let t = now_ms();
            let bits = e.score(&self.gpu, &batch).await.map_err(js)?;
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
        let c = &self.model.config;
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
        if prompt.is_empty() && tok.bos.is_none() {
            return Err(input("empty prompt: this model's tokenizer has no bos token to start from; give at least one character"));
        }
        let allowed: Vec<bool> = (0..c.vocab_size as u32).map(|i| tok.can_generate(i)).collect();
        let mut sampler = Sampler::new(temperature, top_k, seed).map_err(js)?.restrict(allowed);
        let ids = tok.encode_with_bos(prompt.as_bytes());
        self.check_positions(ids.len())?;

        let t0 = now_ms();
        let (mut decoder, mut logits) = borrow(&self.engine)?.prefill(&self.gpu, &ids).await.map_err(js)?;
        let prefill_ms = now_ms() - t0;
        let t1 = now_ms();
        let mut stream = tok.stream();
        let mut text = String::new();
        let mut generated = 0usize;
        let mut stop = format!("maxTokens {max_tokens}");
        let (mut live_min, mut live_max) = (f64::INFINITY, 0f64);
        while generated < max_tokens {
            let next = sampler.sample(&logits).map_err(js)?;
            if Some(next) == tok.eos {
                stop = "eos".into();
                break;
            }
            generated += 1;
            let piece = stream.push(next);
            text.push_str(&piece);
            let last = generated == max_tokens;
            let at_limit = c.learned_pos && decoder.position + 1 > c.max_positions;
            if !last && !at_limit {
                // The token goes into the decoder now, so the event reports the state after it.
                logits = borrow(&self.engine)?.step(&self.gpu, &mut decoder, next).await.map_err(js)?;
            }
            let live = self.stats.live() as f64;
            live_min = live_min.min(live);
            live_max = live_max.max(live);
            if let Some(f) = &on_token {
                let event = obj(&[
                    ("token", num(next as f64)),
                    ("index", num(generated as f64)),
                    ("position", num(decoder.position as f64)),
                    ("stateBytes", num(decoder.state_bytes() as f64)),
                    ("liveBytes", num(live)),
                    ("ms", num(now_ms() - t1)),
                ]);
                let r = f.call2(&JsValue::NULL, &JsValue::from_str(&piece), &event)?;
                if r.as_bool() == Some(false) {
                    stop = "the callback".into();
                    break;
                }
            }
            if at_limit && !last {
                stop = format!("max_positions = {} of this model's learned positions", c.max_positions);
                break;
            }
        }
        let tail = stream.finish();
        if !tail.is_empty() {
            text.push_str(&tail);
            if let Some(f) = &on_token {
                f.call2(&JsValue::NULL, &JsValue::from_str(&tail), &JsValue::UNDEFINED)?;
            }
        }
        let ms = now_ms() - t1;
        Ok(obj(&[
            ("text", text.into()),
            ("tokens", num(generated as f64)),
            ("promptTokens", num(ids.len() as f64)),
            ("prefillMs", num(prefill_ms)),
            ("ms", num(ms)),
            ("tokensPerSecond", num(if ms > 0.0 { generated as f64 / (ms / 1e3) } else { 0.0 })),
            ("stateBytes", num(decoder.state_bytes() as f64)),
            ("stoppedAt", stop.into()),
            ("liveBytesMin", num(if live_min.is_finite() { live_min } else { self.stats.live() as f64 })),
            ("liveBytesMax", num(live_max.max(live_min.min(self.stats.live() as f64)))),
        ]))
    }

    /// The pack weights of `layer` (0-based) over the tokens of `text` (bos
    /// first when the tokenizer has one): `weights[(t * heads + h) * slots + j]`
    /// is the weight with which token `t` is folded into packed slot `j` of
    /// head `h`. Byte `i` of the text is token `i + offset`.
    #[wasm_bindgen(js_name = packWeights, unchecked_return_type = "PackWeights")]
    pub async fn pack_weights(&self, text: String, layer: usize) -> Result<JsValue, JsValue> {
        let ids = self.text_ids(&text)?;
        let offset = self.tok()?.bos.is_some() as usize;
        self.pack_weights_ids(ids, layer, offset).await
    }

    /// `packWeights` on token ids (one sequence, no padding).
    #[wasm_bindgen(js_name = packWeightsTokens, unchecked_return_type = "PackWeights")]
    pub async fn pack_weights_tokens(&self, tokens: Vec<u32>, layer: usize) -> Result<JsValue, JsValue> {
        self.pack_weights_ids(tokens, layer, 0).await
    }
}

impl LunaModel {
    async fn pack_weights_ids(&self, ids: Vec<u32>, layer: usize, offset: usize) -> Result<JsValue, JsValue> {
        self.require_causal("pack weights")?;
        self.check_positions(ids.len())?;
        let mut e = borrow(&self.engine)?;
        let t = now_ms();
        let w = e.pack_weights(&self.gpu, &self.model, &ids, &[layer]).await.map_err(js)?.remove(0);
        let ms = now_ms() - t;
        Ok(obj(&[
            ("weights", f32s(&w.values)),
            ("len", num(w.len as f64)),
            ("heads", num(w.heads as f64)),
            ("slots", num(w.proj_len as f64)),
            ("layer", num(w.layer as f64)),
            ("offset", num(offset as f64)),
            ("ms", num(ms)),
        ]))
    }
}
