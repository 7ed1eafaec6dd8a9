// The same package bundled by esbuild, which leaves `new URL('luna_wgpu_bg.wasm',
// import.meta.url)` alone: the app imports the wasm as a file (esbuild
// --loader:.wasm=file copies it beside the bundle and gives its URL) and hands
// that URL to init. web/tests/e2e.mjs reads `window.esbuildResult`.

import init, { LunaEngine } from 'luna-wgpu';
import wasmUrl from 'luna-wgpu/luna_wgpu_bg.wasm';

async function run(): Promise<{ wasmUrl: string; bitsPerByte: number }> {
  await init({ module_or_path: wasmUrl });
  const engine = await LunaEngine.create();
  const config = {
    model: 'causal_lm', vocab_size: 259, embed_dim: 16, ffn_embed_dim: 32, num_layers: 1, num_heads: 2,
    projection_length: 4, max_positions: 256, normalize_before: true, tie_kv: true, activation: 'gelu', embed_scale: 4,
  };
  const model = await engine.randomModel(JSON.stringify(config), 1, true);
  const { bitsPerByte } = await model.score('Bundled by esbuild.');
  model.free();
  return { wasmUrl, bitsPerByte };
}

declare global {
  interface Window { esbuildResult: Promise<{ wasmUrl: string; bitsPerByte: number } | { error: string }> }
}
window.esbuildResult = run().catch((e: unknown) => ({ error: e instanceof Error ? `${e.name}: ${e.message}` : String(e) }));
