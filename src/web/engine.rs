//! `LunaEngine`: a WebGPU device of the browser with Luna's pipelines, the
//! models uploaded to it, its memory, and a small benchmark.

#![allow(clippy::await_holding_refcell_ref)] // one call at a time: a second one gets "busy"

use super::errors::{borrow, error, input, js};
use super::js::{now_ms, num, obj, opt_count};
use super::model::LunaModel;
use crate::baseline::{Kind, SoftmaxConfig, SoftmaxInput};
use crate::gpu::buffers::MemoryStats;
use crate::gpu::GpuContext;
use crate::tokenizer::Tokenizer;
use crate::{Batch, Config, Engine, Model};
use js_sys::{Array, Function, Reflect, Uint8Array};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use wasm_bindgen::prelude::*;

/// Tokens per segment when the browser runs a long document segment by
/// segment (`Engine::set_segment_rows`): small enough that progress comes
/// often and an abort is heard soon, large enough that each segment keeps
/// the GPU busy.
const SEGMENT_TOKENS: usize = 2048;

#[wasm_bindgen(module = "/src/web/load.js")]
extern "C" {
    /// The bytes of a model file: the bytes given, or downloaded (load.js).
    #[wasm_bindgen(js_name = modelBytes, catch)]
    async fn model_bytes(source: &JsValue, options: &JsValue) -> Result<JsValue, JsValue>;
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
        let mut engine = Engine::with_context(ctx);
        engine.set_segment_rows(SEGMENT_TOKENS).map_err(js)?;
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

    /// Loads a model file (safetensors with `luna.config` metadata) and
    /// uploads it. `source` is its bytes (`Uint8Array`, `ArrayBuffer`, `Blob`)
    /// or where to fetch it (a URL, a string or a `Request`; a `Response`
    /// is read as it is). Options: `onProgress({ loaded, total, fromCache })`
    /// as the download arrives, `signal` (an `AbortSignal`) to stop it, and
    /// `cache` (`true`, or the name of a Cache API store) to keep the file
    /// for the next visit (load.js does the downloading). Rejects with kind
    /// `"model"` or `"config"` for a bad file, `"io"` for a failed download,
    /// `"aborted"` when the signal stops it.
    #[wasm_bindgen(js_name = loadModel)]
    pub async fn load_model(
        &self,
        #[wasm_bindgen(unchecked_param_type = "ModelSource")] source: JsValue,
        #[wasm_bindgen(unchecked_optional_param_type = "LoadOptions")] options: Option<JsValue>,
    ) -> Result<LunaModel, JsValue> {
        let options = options.unwrap_or(JsValue::UNDEFINED);
        let file: Uint8Array = model_bytes(&source, &options).await?.unchecked_into(); // load.js gives a Uint8Array
        let bytes = file.to_vec();
        let model = Model::from_bytes(&bytes).map_err(js)?;
        drop(bytes); // parsed: the file's bytes are not needed while the weights upload
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
        Ok(LunaModel::new(self.engine.clone(), self.stats.clone(), self.max_binding, model, gpu, tokenizer))
    }
}
