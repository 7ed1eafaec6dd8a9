//! The JavaScript API of the browser build, made by wasm-bindgen (web/README.md
//! shows it in use; web/build.sh builds it into web/pkg/).
//!
//! - [`LunaEngine`] (engine.rs): a WebGPU device (`LunaEngine.create()`), models
//!   uploaded to it (`loadModel(url or bytes, { onProgress, signal, cache })`,
//!   downloaded by load.js, a JavaScript module wasm-bindgen copies into the
//!   package; `randomModel(config)`), its GPU memory, and a small
//!   Luna-against-softmax benchmark.
//! - [`LunaModel`] (model.rs): a model on that device: `forward` (encoder
//!   `x`/`p` or causal logits), `score` (surprisal of every byte of a text,
//!   segment by segment, with `{ onProgress, signal }`: watch.rs),
//!   `generate` (a continuation streamed token by token to a callback, by the
//!   generation loop shared with the CLI, crate::generate), `packWeights`
//!   (what the packed slots read, for a layer), the tokenizer.
//! - The TypeScript declarations of the plain objects these take and return
//!   are in luna.d.ts, included here at build time.
//!
//! Everything that touches the GPU is `async` and never blocks: it returns a
//! `Promise`. Every failure rejects that promise (or throws) with an `Error`
//! whose `name` is `"LunaError"`, whose `message` is the engine's message, and
//! whose `kind` says which kind of failure it is (see [`kind`], errors.rs). One
//! call runs on an engine at a time: a second call made before the first has
//! settled is refused with kind `"busy"` (await each call), except that a
//! generation lets other calls in between its tokens. A call stopped by its
//! `AbortSignal` rejects with kind `"aborted"`.

mod engine;
mod errors;
mod js;
mod model;
mod watch;

pub use engine::LunaEngine;
pub use errors::kind;
pub use model::LunaModel;

use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &str = include_str!("luna.d.ts");
