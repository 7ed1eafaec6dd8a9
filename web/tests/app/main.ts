// An app written against the luna-wgpu npm package as its users write one:
// bundled by Vite (import.meta.url finds the wasm), type-checked by
// `tsc --strict` with the default DOM library. web/tests/e2e.mjs calls the
// functions of `window.lunaApp` and checks what they return.

import init, { LunaEngine, LunaModel } from 'luna-wgpu';
import type { LoadProgress, LunaError, LunaErrorKind, ScoreProgress } from 'luna-wgpu';

/** A caught value as a LunaError, or undefined when it is something else. */
function asLunaError(e: unknown): LunaError | undefined {
  return e instanceof Error && e.name === 'LunaError' ? (e as LunaError) : undefined;
}

/** What a page would tell its user for each kind: the switch is exhaustive,
 *  so a kind added to or removed from LunaErrorKind fails tsc here. */
export function advice(kind: LunaErrorKind): string {
  switch (kind) {
    case 'no-webgpu': return 'use a browser with WebGPU';
    case 'no-adapter': return 'this browser offers no GPU adapter';
    case 'model': case 'config': return 'the model file is bad';
    case 'input': return 'check the input';
    case 'too-large': return 'use a smaller input or model';
    case 'out-of-memory': return 'the GPU ran out of memory';
    case 'not-finite': return 'the model overflowed float32';
    case 'device': return 'the GPU failed; reload the page';
    case 'unsupported': return 'this model cannot do that';
    case 'busy': return 'wait for the call under way';
    case 'aborted': return 'stopped';
    case 'io': return 'the download failed';
    default: {
      const unknown: never = kind;
      return unknown;
    }
  }
}

/** A failure as plain data for the test. */
interface Failure { name: string; kind: LunaErrorKind | undefined; message: string; advice: string; cause: unknown }
function failure(e: unknown): Failure {
  const err = asLunaError(e);
  if (!err) return { name: String((e as Error)?.name), kind: undefined, message: String(e), advice: '', cause: undefined };
  return { name: err.name, kind: err.kind, message: err.message, advice: advice(err.kind), cause: err.cause };
}

const engine: Promise<LunaEngine> = init().then(() => LunaEngine.create());
let model: LunaModel | undefined;

function current(): LunaModel {
  if (!model) throw new Error('load a model first');
  return model;
}

const api = {
  /** The adapter's backend once the wasm is loaded and WebGPU opened. */
  async ready(): Promise<string> {
    return (await engine).adapter.backend;
  },

  /** Loads the model at `url` (streamed, with progress; kept in the Cache API when `cache`). */
  async load(url: string, cache: boolean | string = false): Promise<{ kind: string; events: LoadProgress[] }> {
    const events: LoadProgress[] = [];
    const next = await (await engine).loadModel(url, { onProgress: (p) => { events.push(p); }, cache });
    model?.free();
    model = next;
    return { kind: next.kind, events };
  },

  /** A loadModel that fails: its error. */
  async loadFailure(source: string, abortAtFirstProgress = false): Promise<Failure | null> {
    const controller = new AbortController();
    try {
      const m = await (await engine).loadModel(source, { signal: controller.signal, onProgress: () => { if (abortAtFirstProgress) controller.abort(); } });
      m.free();
      return null;
    } catch (e) {
      return failure(e);
    }
  },

  /** Scores `text`, with the progress events. */
  async score(text: string): Promise<{ bitsPerByte: number; tokens: number; bytes: number; events: ScoreProgress[] }> {
    const events: ScoreProgress[] = [];
    const r = await current().score(text, { onProgress: (p) => { events.push(p); } });
    return { bitsPerByte: r.bitsPerByte, tokens: r.tokens, bytes: r.bytes.length, events };
  },

  /** Aborts a score after its first segment (or before it starts): the error,
   *  whether its cause is the signal's reason, the progress seen, and a score
   *  made right after (the engine must be free). */
  async abortScore(text: string, before: boolean): Promise<{ error: Failure | null; causeIsReason: boolean; events: ScoreProgress[]; after: number }> {
    const controller = new AbortController();
    const reason = new Error('the user pressed Stop');
    if (before) controller.abort(reason);
    const events: ScoreProgress[] = [];
    let error: Failure | null = null;
    try {
      await current().score(text, { signal: controller.signal, onProgress: (p) => { events.push(p); controller.abort(reason); } });
    } catch (e) {
      error = failure(e);
    }
    const after = (await current().score('Still working after the abort.')).bitsPerByte;
    return { error, causeIsReason: error?.cause === reason, events, after };
  },
};

declare global {
  interface Window { lunaApp: typeof api }
}
window.lunaApp = api;
