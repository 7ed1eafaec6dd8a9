// TypeScript declarations of the plain objects the browser API takes and
// returns. src/web/mod.rs includes this file at build time; wasm-bindgen copies
// it into web/pkg/luna_wgpu.d.ts beside the declarations of the classes.
// They compile under `tsc --strict` with the default DOM library (es2022, dom).

declare global {
  /** `Symbol.dispose` (ES2026 explicit resource management; TypeScript's
   *  `esnext.disposable` library): declared here too, as @types/node does, so
   *  that the classes' `[Symbol.dispose]()` compiles with older `lib` settings.
   *  At run time it exists where the engine supports it (then `using model =
   *  await engine.loadModel(url)` frees the model at the end of the block). */
  interface SymbolConstructor {
    readonly dispose: unique symbol;
  }
}

/** What kind of failure a `LunaError` is. */
export type LunaErrorKind =
  /** The browser has no WebGPU (`navigator.gpu` is missing). */
  | "no-webgpu"
  /** WebGPU offered no adapter (blocklisted GPU, WebGPU turned off). */
  | "no-adapter"
  /** The model file is not a valid Luna model (safetensors, tensors, metadata). */
  | "model"
  /** The model's `luna.config` is invalid. */
  | "config"
  /** A bad argument: empty text, a token outside the vocabulary, a bad option... */
  | "input"
  /** A buffer would exceed one of the adapter's limits. */
  | "too-large"
  /** The GPU ran out of memory. */
  | "out-of-memory"
  /** A result overflowed float32 (NaN or infinity). */
  | "not-finite"
  /** The GPU device failed or was lost. */
  | "device"
  /** Something this model cannot do (scoring with an encoder...). */
  | "unsupported"
  /** Another call is running on this engine: await each call before the next. */
  | "busy"
  /** The call's `AbortSignal` stopped it; the engine is free for the next call. */
  | "aborted"
  /** A download failed (network error, HTTP status). */
  | "io";

/** Every failure rejects (or throws) with this: an `Error` named `"LunaError"`
 *  with a `kind`. Narrow a caught value with `e instanceof Error && e.name === "LunaError"`. */
export interface LunaError extends Error {
  name: "LunaError";
  kind: LunaErrorKind;
  /** For kind `"aborted"`: the signal's `reason`. For `"io"`: the error of `fetch`. */
  cause?: unknown;
}

/** A model file for `loadModel`: its bytes, or where to fetch it. */
export type ModelSource = string | URL | Request | Response | Blob | ArrayBuffer | ArrayBufferView;
/** Passed to `onProgress` of `loadModel` as the file arrives. */
export interface LoadProgress {
  /** Bytes read so far. */
  loaded: number;
  /** Bytes in all, or undefined when the server does not say (no Content-Length, a compressed transfer). */
  total: number | undefined;
  /** True when the file comes from the Cache API store (`cache`). */
  fromCache: boolean;
}
export interface LoadOptions {
  onProgress?: (progress: LoadProgress) => void;
  /** Stops the download: `loadModel` rejects with kind `"aborted"`. */
  signal?: AbortSignal;
  /** Keep the downloaded file in the Cache API (`true`: the store `"luna-wgpu-models"`;
   *  a string: that store) and read it from there next time. Needs a secure context
   *  (https:// or localhost); elsewhere it does nothing. Default false. */
  cache?: boolean | string;
}
/** Passed to `onProgress` of `score` and `packWeights` after each segment: tokens done of the total. */
export interface ScoreProgress { done: number; total: number; }
/** The options of `score`, `packWeights` and `packWeightsTokens`. */
export interface ScoreOptions {
  /** Called after each segment (2048 tokens) with the tokens done; once, at the end, for a short text. */
  onProgress?: (progress: ScoreProgress) => void;
  /** Stops the call at the end of the segment under way: it rejects with kind `"aborted"`. */
  signal?: AbortSignal;
}

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
  /** Tokens scored (bytes, plus bos). */
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
  stateBytes: number;
  /** Why generation stopped: `"maxTokens N"`, `"eos"`, `"the callback"` (it returned false), or
   *  `"max_positions = M of this model's learned positions"`. */
  stoppedAt: string;
  /** Smallest and largest `liveBytes` seen while streaming. */
  liveBytesMin: number; liveBytesMax: number;
}
export interface PackWeights {
  /** `[len, heads, projLen]`: A[t, h, j] = softplus_ln2(pc_proj(X)[t]_h . Q_P,h[j]), the weight with which token t is folded into packed slot j. */
  weights: Float32Array;
  len: number; heads: number;
  /** The effective projection length l': how many packed slots there are. */
  projLen: number;
  layer: number;
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
