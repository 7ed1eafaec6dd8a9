// The engine in a Web Worker: every call to the GPU, and the copying of a
// long document's results, happens here, so the page's main thread never
// waits. The page (main.js) sends { type, id, ... } messages and gets back
// progress, results and errors. In an app that installed the npm package,
// the import is `from 'luna-wgpu'`.
import init, { LunaEngine } from '../../pkg/luna_wgpu.js';

let engine = null;
let model = null;
/** The AbortController of each call under way, by its id, for { type: 'abort' }. */
const calls = new Map();

/** Runs `work(signal)` for message `id`: its result, or its error, goes back to the page. */
async function run(id, work) {
  const controller = new AbortController();
  calls.set(id, controller);
  try {
    const result = await work(controller.signal);
    // Typed arrays move to the page rather than being copied.
    const transfer = Object.values(result).filter((v) => ArrayBuffer.isView(v)).map((v) => v.buffer);
    postMessage({ type: 'done', id, result }, transfer);
  } catch (e) {
    // A LunaError's kind says what went wrong ("aborted", "io", "model", ...).
    postMessage({ type: 'error', id, kind: e.kind ?? 'internal', message: e.message ?? String(e) });
  } finally {
    calls.delete(id);
  }
}

onmessage = ({ data: msg }) => {
  if (msg.type === 'abort') {
    calls.get(msg.id)?.abort();
  } else if (msg.type === 'load') {
    run(msg.id, async (signal) => {
      if (!engine) {
        await init();
        engine = await LunaEngine.create();
      }
      const next = await engine.loadModel(msg.url, {
        signal,
        cache: true, // kept in the Cache API: the next visit reads it from there
        onProgress: (p) => postMessage({ type: 'progress', id: msg.id, done: p.loaded, total: p.total }),
      });
      model?.free();
      model = next;
      return { kind: model.kind, adapter: engine.adapter.name };
    });
  } else if (msg.type === 'score') {
    run(msg.id, async (signal) => {
      if (!model) throw new Error('load a model first');
      const r = await model.score(msg.text, {
        signal,
        onProgress: (p) => postMessage({ type: 'progress', id: msg.id, done: p.done, total: p.total }),
      });
      return { bitsPerByte: r.bitsPerByte, tokens: r.tokens, ms: r.ms, chars: r.chars };
    });
  }
};
