// TypeScript declarations of the plain objects the browser API takes and
// returns. src/web/mod.rs includes this file at build time; wasm-bindgen copies
// it into web/pkg/luna_wgpu.d.ts beside the declarations of the classes.

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
