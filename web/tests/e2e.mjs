// The browser end-to-end test, run by tests/browser.rs (which builds web/pkg/
// and writes the fixtures and the native outputs first):
//
//   LUNA_E2E_FIXTURES=DIR LUNA_E2E_APP=DIR LUNA_E2E_OUT=DIR node web/tests/e2e.mjs
//
// (LUNA_E2E_ONLY=api,package,worker,demo,errors runs only those parts.)
// It serves web/ (the fixtures under /fixtures/, the bundled app LUNA_E2E_APP
// under /app/) on 127.0.0.1, drives
// Chromium headless with WebGPU (SwiftShader) through playwright-core, and
// checks:
//   - the JavaScript API against native `luna forward` / `luna score` (also on
//     the authors' fixtures, tests/fixtures/public_*) and the
//     native pack weights, to 1e-3; a streamed greedy continuation against
//     the parallel form; its errors (bad model, bad token, busy, bad
//     options, wrong model kind) and that the engine still works after them;
//   - a document of three segments scored in the browser (with progress)
//     against native `luna score`;
//   - the npm package as its users get it (tests/browser.rs packs it,
//     installs the tarball into web/tests/app/ and bundles that with Vite and
//     esbuild): it loads a model from a URL with progress and from the Cache
//     API, scores with progress, stops a score with an AbortSignal (a
//     LunaError of kind "aborted") and works after, and runs from the esbuild
//     bundle given the wasm's URL;
//   - the Web Worker example (web/examples/worker/): scores with progress and
//     stops;
//   - the demo page: scores the bundled sample and paints a
//     non-blank heat map while staying responsive, charts and tabulates bits
//     per byte against position (also at a phone's width), shows a slot's pack
//     weights, streams a continuation with flat memory, draws the Luna against
//     softmax chart, and shows its messages when WebGPU is missing, there is
//     no adapter, or the model file is bad.
// Screenshots go to $LUNA_E2E_OUT/screenshots/. The last line is
// "N passed, M failed"; the exit code is 1 when a check failed.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const FIXTURES = process.env.LUNA_E2E_FIXTURES;
const APP = process.env.LUNA_E2E_APP;
const ONLY = process.env.LUNA_E2E_ONLY ? process.env.LUNA_E2E_ONLY.split(',') : null;
const OUT = process.env.LUNA_E2E_OUT || path.join(WEB, '..', 'target', 'browser-e2e');
const CHROMIUM = process.env.LUNA_CHROMIUM || '/usr/bin/chromium';
const SHOTS = path.join(OUT, 'screenshots');
const TOL = 1e-3;
if (!FIXTURES) {
  console.error('set LUNA_E2E_FIXTURES (tests/browser.rs does)');
  process.exit(2);
}
fs.mkdirSync(SHOTS, { recursive: true });

// ------------------------------------------------------------------ checks

let passed = 0;
let failed = 0;
function check(name, ok, detail = '') {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? 'ok    ' : 'FAILED'} ${name}${detail ? `: ${detail}` : ''}`);
  return ok;
}

/** Max |a - b| over the rows where `keep(row)`; rows of `width` values. */
function maxDiff(a, b, width, keep = () => true) {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    if (!keep(Math.floor(i / width))) continue;
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

function readSafetensors(file) {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const out = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [a, b] = t.data_offsets;
    const bytes = new Uint8Array(buf.subarray(8 + n + a, 8 + n + b));
    let data;
    if (t.dtype === 'F32') data = Array.from(new Float32Array(bytes.buffer));
    else if (t.dtype === 'F64') data = Array.from(new Float64Array(bytes.buffer));
    else if (t.dtype === 'I64') data = Array.from(new BigInt64Array(bytes.buffer), Number);
    else if (t.dtype === 'I32') data = Array.from(new Int32Array(bytes.buffer));
    else throw new Error(`${file}: dtype ${t.dtype}`);
    out[name] = { shape: t.shape, data };
  }
  return out;
}

// ------------------------------------------------------------------ server

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm',
  '.css': 'text/css', '.txt': 'text/plain; charset=utf-8', '.json': 'application/json', '.ts': 'text/plain' };
const server = http.createServer((req, res) => {
  const url = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  const [base, rel] = url.startsWith('/fixtures/') ? [FIXTURES, url.slice('/fixtures/'.length)]
    : url.startsWith('/app/') && APP ? [APP, url.slice('/app/'.length)] : [WEB, url.slice(1) || 'index.html'];
  const file = path.resolve(base, rel);
  if (!file.startsWith(path.resolve(base) + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
    res.writeHead(404, { 'Content-Type': 'text/plain' });
    res.end('not found');
    return;
  }
  res.writeHead(200, { 'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream', 'Cache-Control': 'no-store',
    'Content-Length': fs.statSync(file).size });
  fs.createReadStream(file).pipe(res);
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const BASE = `http://127.0.0.1:${server.address().port}`;
console.log(`serving ${WEB} at ${BASE}/`);

// ------------------------------------------------------------------ browser

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-quic'],
});
console.log(`chromium ${browser.version()}`);

async function newPage(initScript) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  if (initScript) await context.addInitScript(initScript);
  const page = await context.newPage();
  page.on('pageerror', (e) => console.log(`  [page error] ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error' && !m.text().includes('404')) console.log(`  [console] ${m.text()}`); });
  return page;
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, name), fullPage: true });
  console.log(`       screenshot ${path.join(SHOTS, name)}`);
}

const parts = { api: apiChecks, package: packageChecks, worker: workerChecks, demo: demoChecks, errors: errorPageChecks };
try {
  for (const [name, run] of Object.entries(parts)) {
    if (ONLY && !ONLY.includes(name)) continue;
    const t0 = Date.now();
    await run();
    console.log(`       (${name}: ${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  }
} catch (e) {
  check('the test ran to its end', false, e.stack || String(e));
} finally {
  await browser.close();
  server.close();
}
console.log(`\n${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);

// ------------------------------------------------------------------ the JavaScript API

async function apiChecks() {
  const page = await newPage();
  await page.goto(`${BASE}/tests/harness.html`);
  await page.waitForFunction(() => window.harness, null, { timeout: 60_000 });
  await page.evaluate(() => window.harness);

  const adapter = await page.evaluate(async () => {
    window.engine = await window.luna.LunaEngine.create();
    return window.engine.adapter;
  });
  check('LunaEngine.create() opens a WebGPU adapter', adapter && adapter.backend === 'BrowserWebGpu', JSON.stringify(adapter));

  // Encoder: x and p against native `luna forward`.
  const encIn = readSafetensors(path.join(FIXTURES, 'encoder.tokens.safetensors')).tokens;
  const encOut = readSafetensors(path.join(FIXTURES, 'encoder.out.safetensors'));
  const enc = await page.evaluate(async ([tokens, shape]) => {
    const bytes = new Uint8Array(await (await fetch('/fixtures/encoder.safetensors')).arrayBuffer());
    window.encoder = await window.engine.loadModel(bytes);
    const r = await window.encoder.forward(Int32Array.from(tokens), shape[0], shape[1]);
    return { kind: r.kind, x: Array.from(r.x), xShape: r.xShape, p: Array.from(r.p), pShape: r.pShape, ms: r.ms };
  }, [encIn.data, encIn.shape]);
  const [B, n] = encIn.shape;
  const d = enc.xShape[2];
  check('encoder forward: shapes as native', JSON.stringify(enc.xShape) === JSON.stringify(encOut.x.shape) && JSON.stringify(enc.pShape) === JSON.stringify(encOut.p.shape),
    `x ${JSON.stringify(enc.xShape)}, p ${JSON.stringify(enc.pShape)}`);
  const ex = maxDiff(enc.x, encOut.x.data, d, (row) => encIn.data[row] !== 1);
  const ep = maxDiff(enc.p, encOut.p.data, d);
  check(`encoder forward: x matches native luna forward to ${TOL}`, ex <= TOL, `max |diff| ${ex.toExponential(2)} (B=${B}, n=${n}, padding rows skipped)`);
  check(`encoder forward: p matches native luna forward to ${TOL}`, ep <= TOL, `max |diff| ${ep.toExponential(2)}`);

  // Causal LM: logits, surprisal, pack weights against native.
  const lmIn = readSafetensors(path.join(FIXTURES, 'causal.tokens.safetensors')).tokens;
  const lmOut = readSafetensors(path.join(FIXTURES, 'causal.out.safetensors')).logits;
  const lmScore = readSafetensors(path.join(FIXTURES, 'causal.score.safetensors')).surprisal;
  const packFile = path.join(FIXTURES, 'pack.safetensors');
  const pack = fs.existsSync(packFile) ? readSafetensors(packFile).weights : null;
  const packTokens = pack ? readSafetensors(path.join(FIXTURES, 'pack.tokens.safetensors')).tokens.data : [];
  const lm = await page.evaluate(async ([tokens, shape, packTokens]) => {
    const bytes = new Uint8Array(await (await fetch('/fixtures/causal.safetensors')).arrayBuffer());
    window.lm = await window.engine.loadModel(bytes);
    const f = await window.lm.forward(Int32Array.from(tokens), shape[0], shape[1]);
    const s = await window.lm.scoreTokens(Int32Array.from(tokens), shape[0], shape[1]);
    const heard = [];
    const p = packTokens.length ? await window.lm.packWeightsTokens(Uint32Array.from(packTokens), 1, { onProgress: (q) => heard.push(q) }) : null;
    return { kind: f.kind, logits: Array.from(f.logits), shape: f.logitsShape, surprisal: Array.from(s),
      pack: p && { weights: Array.from(p.weights), len: p.len, heads: p.heads, projLen: p.projLen, heard } };
  }, [lmIn.data, lmIn.shape, packTokens]);
  const vocab = lm.shape[2];
  const el = maxDiff(lm.logits, lmOut.data, vocab, (row) => lmIn.data[row] !== 1);
  check(`causal LM forward: logits match native luna forward to ${TOL}`, lm.kind === 'causal_lm' && el <= TOL, `max |diff| ${el.toExponential(2)}, shape ${JSON.stringify(lm.shape)}`);
  const es = maxDiff(lm.surprisal, lmScore.data, 1);
  check(`scoreTokens matches native luna score --surprisal to ${TOL}`, es <= TOL, `max |diff| ${es.toExponential(2)} bits`);
  if (pack) {
    const ew = maxDiff(lm.pack.weights, pack.data, 1);
    check(`packWeights matches the native engine to ${TOL}`, ew <= TOL && lm.pack.len === pack.shape[0] && lm.pack.heads === pack.shape[1] && lm.pack.projLen === pack.shape[2],
      `max |diff| ${ew.toExponential(2)} over [${lm.pack.len}, ${lm.pack.heads}, ${lm.pack.projLen}]`);
    const last = lm.pack.heard.at(-1);
    check('packWeightsTokens reports its progress to onProgress', last && last.done === lm.pack.len && last.total === lm.pack.len, JSON.stringify(lm.pack.heard));
  } else {
    console.log('       (no native pack weights: no GPU engine natively)');
  }

  // The authors' fixtures: the browser against native `luna forward`, and against the
  // authors' own float64 outputs, on the rows that carry meaning.
  for (const name of ['public_encoder', 'public_causal']) {
    const input = readSafetensors(path.join(FIXTURES, `${name}.input.safetensors`)).tokens;
    const native = readSafetensors(path.join(FIXTURES, `${name}.native.safetensors`));
    const expected = readSafetensors(path.join(FIXTURES, `${name}.expected.safetensors`));
    const r = await page.evaluate(async ([name, tokens, shape]) => {
      const bytes = new Uint8Array(await (await fetch(`/fixtures/${name}.model.safetensors`)).arrayBuffer());
      const m = await window.engine.loadModel(bytes);
      const f = await m.forward(Int32Array.from(tokens), shape[0], shape[1]);
      const out = f.kind === 'encoder' ? { kind: f.kind, x: Array.from(f.x), p: Array.from(f.p) } : { kind: f.kind, logits: Array.from(f.logits) };
      m.free();
      return out;
    }, [name, input.data, input.shape]);
    const n = input.shape[1];
    const lengths = expected.lengths.data;
    const tokenRow = (row) => (row % n) < lengths[Math.floor(row / n)];
    const parts = r.kind === 'encoder' ? [['x', tokenRow], ['p', null]] : [['logits', tokenRow]];
    for (const [key, keep] of parts) {
      const shape = native[key].shape;
      const width = shape[2];
      let rowKeep = keep;
      if (key === 'p') {
        const rows = shape[1];
        rowKeep = (row) => (row % rows) < expected.p_valid.data[Math.floor(row / rows)];
      }
      const vsNative = maxDiff(r[key], native[key].data, width, rowKeep);
      const vsAuthors = maxDiff(r[key], expected[key].data, width, rowKeep);
      check(`authors' fixture ${name}: ${key} matches native luna forward to ${TOL}, and the authors' outputs`,
        vsNative <= TOL && vsAuthors <= TOL, `max |diff| ${vsNative.toExponential(2)} vs native, ${vsAuthors.toExponential(2)} vs the authors' float64, shape ${JSON.stringify(shape)}`);
    }
  }

  // A greedy continuation streams token by token, with flat memory, and agrees with the parallel form.
  const gen = await page.evaluate(async () => {
    const prompt = 'Friends, Romans';
    const events = [];
    const pieces = [];
    const r = await window.lm.generate(prompt, { maxTokens: 24, temperature: 0 }, (text, ev) => {
      pieces.push(text);
      if (ev) events.push(ev);
    });
    const ids = Array.from(window.lm.tokenize(prompt, true));
    const gen = events.map((e) => e.token);
    const all = ids.concat(gen.slice(0, -1));
    const f = await window.lm.forward(Int32Array.from(all), 1, all.length);
    const V = f.logitsShape[2];
    // Greedy never picks padding (1) or bos (0): compare among the ids it may pick.
    const margins = gen.map((tok, k) => {
      const row = f.logits.subarray((ids.length - 1 + k) * V, (ids.length + k) * V);
      let best = -Infinity;
      for (let v = 2; v < V; v++) best = Math.max(best, row[v]);
      return best - row[tok];
    });
    return { r, events, pieces, margins, text: window.lm.detokenize(Uint32Array.from(gen)) };
  });
  check('generate streams one callback per token', gen.events.length === gen.r.tokens && gen.r.tokens > 0,
    `${gen.events.length} events, ${gen.r.tokens} tokens, stopped at ${gen.r.stoppedAt}, ${gen.r.tokensPerSecond.toFixed(1)} tokens/s`);
  check('generate: the streamed text is the generated tokens', gen.pieces.join('') === gen.r.text && gen.r.text === gen.text);
  const states = new Set(gen.events.map((e) => e.stateBytes));
  const lives = gen.events.map((e) => e.liveBytes);
  check('generate: decoder state and GPU memory stay flat while streaming', states.size === 1 && Math.max(...lives) === Math.min(...lives),
    `state ${[...states].join(',')} B, engine ${Math.min(...lives)}..${Math.max(...lives)} B`);
  check('generate: greedy streaming tokens are the argmax of the parallel form', gen.margins.every((m) => m <= 1e-3),
    `largest margin ${Math.max(...gen.margins).toExponential(2)}`);

  // A document longer than a segment: scored segment by segment (each pass continuing from the
  // states the last one left), with progress after each, against native `luna score` in one pass.
  const longText = fs.readFileSync(path.join(FIXTURES, 'long.txt'), 'utf8');
  const longNative = readSafetensors(path.join(FIXTURES, 'long.score.safetensors')).surprisal;
  const long = await page.evaluate(async (text) => {
    const events = [];
    const r = await window.lm.score(text, { onProgress: (p) => events.push(p) });
    return { bytes: Array.from(r.bytes), tokens: r.tokens, ms: r.ms, events };
  }, longText);
  const nLong = longNative.shape[1];
  // Byte i is token i + 1 (bos first): its surprisal is native entry i + 1.
  const eLong = maxDiff(long.bytes, longNative.data.slice(1), 1);
  const steps = long.events.map((e) => `${e.done}/${e.total}`).join(' ');
  const segments = Math.ceil(nLong / 2048);
  check(`score of a ${nLong}-token document runs in ${segments} segments of 2048 tokens and matches native luna score to ${TOL}`,
    eLong <= TOL && long.tokens === nLong, `max |diff| ${eLong.toExponential(2)} bits over ${long.bytes.length} bytes, ${long.ms.toFixed(0)} ms`);
  check('score reports its progress after each segment', long.events.length === segments
    && long.events.every((e, i) => e.total === nLong && e.done === Math.min((i + 1) * 2048, nLong)), steps);

  // Errors come back as LunaError exceptions with the engine's message, and leave the engine usable.
  const errs = await page.evaluate(async () => {
    const catchErr = async (f) => {
      try { await f(); return null; } catch (e) { return { name: e.name, kind: e.kind, message: e.message }; }
    };
    const out = {};
    out.badModel = await catchErr(() => window.engine.loadModel(new TextEncoder().encode('not a model at all')));
    out.badToken = await catchErr(() => window.lm.forward([0, 5000], 1, 2));
    out.badShape = await catchErr(() => window.lm.forward([0, 5, 6], 2, 2));
    out.encoderScore = await catchErr(() => window.encoder.score('hello'));
    out.badProgress = await catchErr(() => window.lm.score('hello', { onProgress: 5 }));
    out.badSignal = await catchErr(() => window.lm.score('hello', { signal: {} }));
    out.badSource = await catchErr(() => window.engine.loadModel(42));
    out.throwing = await catchErr(() => window.lm.score('hello', { onProgress: () => { throw new RangeError('thrown by onProgress'); } }));
    const a = window.lm.score('The first call.');
    out.busy = await catchErr(() => window.lm.score('A second call made before the first settled.'));
    await a;
    out.badLayer = await catchErr(() => window.lm.packWeights('hello', 7));
    out.badConfig = await catchErr(() => window.engine.randomModel('{"model": "causal_lm"}', 1, true));
    const after = await window.lm.score('Still working after all of that.');
    out.after = after.bitsPerByte;
    out.memory = window.engine.memory();
    return out;
  });
  const isErr = (e, kind, text) => e && e.name === 'LunaError' && e.kind === kind && e.message.includes(text);
  check('a bad model file is refused (kind "model")', isErr(errs.badModel, 'model', 'invalid model'), errs.badModel?.message);
  check('a token outside the vocabulary is refused (kind "input")', isErr(errs.badToken, 'input', 'outside the vocabulary'), errs.badToken?.message);
  check('tokens that do not fill the shape are refused', isErr(errs.badShape, 'input', 'do not fill'), errs.badShape?.message);
  check('scoring with an encoder is refused (kind "unsupported")', isErr(errs.encoderScore, 'unsupported', 'causal_lm'), errs.encoderScore?.message);
  check('score options that are not a function and an AbortSignal are refused (kind "input")',
    isErr(errs.badProgress, 'input', 'onProgress') && isErr(errs.badSignal, 'input', 'AbortSignal'), `${errs.badProgress?.message}; ${errs.badSignal?.message}`);
  check('what onProgress throws stops the call and is what it rejects with', errs.throwing?.name === 'RangeError' && errs.throwing.message === 'thrown by onProgress',
    JSON.stringify(errs.throwing));
  check('loadModel of something that is neither bytes nor a URL is refused (kind "input")', isErr(errs.badSource, 'input', 'loadModel takes'), errs.badSource?.message);
  check('a second call while one runs is refused (kind "busy")', isErr(errs.busy, 'busy', 'busy'), errs.busy?.message);
  check('a layer that does not exist is refused', isErr(errs.badLayer, 'input', 'layer 7'), errs.badLayer?.message);
  check('a bad config is refused (kind "config")', isErr(errs.badConfig, 'config', ''), errs.badConfig?.message);
  check('the engine still works after the errors', Number.isFinite(errs.after) && errs.after > 0, `${errs.after} bits/byte; memory ${JSON.stringify(errs.memory)}`);
  await page.context().close();
}

// ------------------------------------------------------------------ the npm package, bundled

async function packageChecks() {
  if (!APP) {
    check('the bundled app is there (LUNA_E2E_APP; tests/browser.rs builds it)', false);
    return;
  }
  const page = await newPage();
  await page.goto(`${BASE}/app/index.html`);
  await page.waitForFunction(() => window.lunaApp, null, { timeout: 60_000 });
  const backend = await page.evaluate(() => window.lunaApp.ready());
  check('the npm package, installed from its tarball and bundled by Vite, loads its wasm and opens WebGPU', backend === 'BrowserWebGpu', backend);

  // loadModel(url): a streamed download with progress, then the same file from the Cache API.
  const size = fs.statSync(path.join(FIXTURES, 'causal.safetensors')).size;
  const url = '/fixtures/causal.safetensors';
  const first = await page.evaluate((url) => window.lunaApp.load(url, 'luna-e2e'), url);
  const second = await page.evaluate((url) => window.lunaApp.load(url, 'luna-e2e'), url);
  const rising = (events) => events.every((e, i) => i === 0 || e.loaded >= events[i - 1].loaded);
  const summary = (events) => events.map((e) => `${e.loaded}/${e.total}${e.fromCache ? ' (cache)' : ''}`).join(' ');
  const last = (events) => events[events.length - 1] || {};
  check('loadModel(url) downloads the model with progress events up to its size', first.kind === 'causal_lm' && first.events.length >= 1
    && rising(first.events) && last(first.events).loaded === size && first.events.every((e) => e.total === size && !e.fromCache), summary(first.events));
  check('loadModel(url, { cache }) reads it from the Cache API the second time', second.kind === 'causal_lm' && second.events.length >= 1
    && last(second.events).loaded === size && second.events.every((e) => e.fromCache), summary(second.events));

  const missing = await page.evaluate(() => window.lunaApp.loadFailure('/fixtures/no-such-model.safetensors'));
  check('loadModel of a URL that is not there rejects with kind "io" and the HTTP status', missing?.name === 'LunaError' && missing.kind === 'io'
    && missing.message.includes('404'), missing?.message);
  const stopped = await page.evaluate((url) => window.lunaApp.loadFailure(url, true), url);
  check('loadModel stopped by its AbortSignal rejects with kind "aborted"', stopped?.name === 'LunaError' && stopped.kind === 'aborted', stopped?.message);
  const bad = await page.evaluate(() => window.lunaApp.loadFailure('/fixtures/bad.safetensors'));
  check('loadModel of a URL that is no model rejects with kind "model"', bad?.kind === 'model', bad?.message);

  // score: progress, and an AbortSignal that stops it mid-document.
  const short = await page.evaluate(() => window.lunaApp.score('Friends, Romans, countrymen, lend me your ears.'));
  check('score(text, { onProgress }) reports once for a text of one segment', short.events.length === 1
    && short.events[0].done === short.tokens && short.events[0].total === short.tokens && Number.isFinite(short.bitsPerByte),
    `${JSON.stringify(short.events)}, ${short.bitsPerByte.toFixed(3)} bits/byte`);
  const longText = fs.readFileSync(path.join(FIXTURES, 'long.txt'), 'utf8');
  const mid = await page.evaluate((t) => window.lunaApp.abortScore(t, false), longText);
  check('score stopped by its AbortSignal mid-document rejects with a LunaError of kind "aborted" after that segment, the reason as its cause',
    mid.error?.name === 'LunaError' && mid.error.kind === 'aborted' && mid.causeIsReason && mid.events.length === 1 && mid.events[0].done === 2048,
    `${mid.error?.message} (progress ${JSON.stringify(mid.events)})`);
  check('the engine scores again right after the abort', Number.isFinite(mid.after) && mid.after > 0, `${mid.after} bits/byte`);
  const early = await page.evaluate((t) => window.lunaApp.abortScore(t, true), longText);
  check('score given an aborted signal rejects with kind "aborted" before any work', early.error?.kind === 'aborted' && early.events.length === 0
    && Number.isFinite(early.after), early.error?.message);
  await page.context().close();

  // The same package bundled by esbuild, which leaves import.meta.url assets alone: init gets the wasm's URL.
  const eb = await newPage();
  await eb.goto(`${BASE}/app/esbuild.html`);
  await eb.waitForFunction(() => window.esbuildResult, null, { timeout: 60_000 });
  const r = await eb.evaluate(() => window.esbuildResult);
  check('the package bundled by esbuild runs with init({ module_or_path: wasmUrl })', !r.error && Number.isFinite(r.bitsPerByte) && /\.wasm$/.test(r.wasmUrl),
    r.error || `${r.wasmUrl}: ${r.bitsPerByte.toFixed(3)} bits/byte`);
  await eb.context().close();
}

// ------------------------------------------------------------------ the Web Worker example

async function workerChecks() {
  const page = await newPage();
  await page.goto(`${BASE}/examples/worker/index.html?model=/fixtures/causal.safetensors`);
  await page.waitForFunction(() => !document.getElementById('score').disabled || /Could not/.test(document.getElementById('status').textContent),
    null, { timeout: 120_000 });
  const loaded = await page.locator('#status').textContent();
  check('the worker example loads a model in its Web Worker', loaded.startsWith('Ready: a causal_lm'), loaded);

  const longText = fs.readFileSync(path.join(FIXTURES, 'long.txt'), 'utf8');
  await page.fill('#text', longText);
  // A 50 ms timer on the page: the worker does the work, so its gaps stay small.
  await page.evaluate(() => {
    window.beat = { last: performance.now(), max: 0 };
    window.beatTimer = setInterval(() => {
      const t = performance.now();
      window.beat.max = Math.max(window.beat.max, t - window.beat.last);
      window.beat.last = t;
    }, 50);
  });
  await page.click('#score');
  await page.waitForFunction(() => /bits per byte|failed/.test(document.getElementById('status').textContent), null, { timeout: 300_000 });
  const done = await page.evaluate(() => {
    clearInterval(window.beatTimer);
    const bar = document.getElementById('progress');
    return { status: document.getElementById('status').textContent, value: bar.value, max: bar.max, beat: window.beat.max };
  });
  const tokens = Number((done.status.match(/over (\d+) tokens/) || [])[1]);
  check('the worker example scores a document of three segments, its progress bar full at the end', tokens === new TextEncoder().encode(longText).length + 1
    && done.max === tokens && done.value === tokens, `${done.status} (progress ${done.value}/${done.max}; largest main-thread timer gap ${done.beat.toFixed(0)} ms)`);

  await page.fill('#text', longText.repeat(4));
  await page.click('#score');
  await page.waitForFunction(() => /^Scoring: /.test(document.getElementById('status').textContent), null, { timeout: 120_000 });
  await page.click('#stop');
  await page.waitForFunction(() => !/^Scoring/.test(document.getElementById('status').textContent), null, { timeout: 120_000 });
  const stopped = await page.locator('#status').textContent();
  check('the worker example stops a score with Stop (an AbortSignal in the worker)', stopped === 'Stopped.', stopped);
  await page.context().close();
}

// ------------------------------------------------------------------ the demo page

async function demoChecks() {
  const page = await newPage();
  await page.goto(`${BASE}/index.html?model=/fixtures/demo.safetensors`);
  const phase = await page.evaluate(() => window.lunaDemo.ready);
  check('the demo page opens WebGPU and loads the model', phase === 'ready' && (await page.evaluate(() => !window.lunaDemo.state.random)),
    await page.locator('#model-chip').textContent());

  await page.click('#sample-btn');
  await page.waitForFunction(() => !window.lunaDemo.state.busy && document.getElementById('text').value.length > 0);
  const sampleBytes = await page.evaluate(() => new TextEncoder().encode(document.getElementById('text').value).length);
  check('the bundled sample is at least 100 KB', sampleBytes >= 100 * 1024, `${sampleBytes} bytes`);

  // A heartbeat on the page's main thread: its largest gap says whether the tab froze.
  await page.evaluate(() => {
    window.beat = { last: performance.now(), gaps: [], statuses: new Set() };
    window.beatTimer = setInterval(() => {
      const t = performance.now();
      window.beat.gaps.push(t - window.beat.last);
      window.beat.last = t;
      window.beat.statuses.add(document.getElementById('status-text').textContent);
    }, 50);
  });
  const t0 = Date.now();
  await page.click('#score-btn');
  await page.waitForFunction(() => !window.lunaDemo.state.busy, null, { timeout: 900_000, polling: 250 });
  const scored = await page.evaluate(() => {
    clearInterval(window.beatTimer);
    const s = window.lunaDemo.state;
    const spans = document.querySelectorAll('#doc span');
    const colours = new Set();
    for (let i = 0; i < spans.length; i += 37) colours.add(spans[i].style.backgroundColor);
    const cv = document.getElementById('minimap');
    const px = cv.getContext('2d').getImageData(0, 0, 22, cv.height).data;
    let painted = 0;
    for (let i = 0; i < px.length; i += 4) if (px[i + 3] > 0 && (px[i] < 250 || px[i + 1] < 250 || px[i + 2] < 250)) painted++;
    return { score: s.score, error: s.error, spans: spans.length, chars: s.chars.length, colours: colours.size, painted,
      beat: { gaps: window.beat.gaps, statuses: window.beat.statuses.size }, summary: document.getElementById('summary').textContent };
  });
  const secs = ((Date.now() - t0) / 1000).toFixed(1);
  check('the demo scores the whole sample', scored.score && scored.score.tokens === sampleBytes + 1 && !scored.error,
    `${scored.summary} (${secs} s in all)`);
  // On a software adapter the document's hint now says how long this text takes at the measured rate.
  const hint = await page.evaluate(() => ({ software: window.lunaDemo.state.adapter.software, text: document.getElementById('doc-stats').textContent }));
  if (hint.software) {
    check('the document hint gives the time at the pass\'s measured rate', /at the last pass's [\d,]+ tokens\/s, about [\d.]+ (s|min) for this text/.test(hint.text), hint.text);
  }
  check('the heat map is painted, one span per character, in many colours', scored.spans === scored.chars && scored.colours >= 8 && scored.painted > 100,
    `${scored.spans} spans, ${scored.colours} colours in a sample of them, ${scored.painted} minimap pixels painted`);
  // A 50 ms timer on the page's main thread: the 95th percentile of its gaps says whether the tab
  // froze. (The largest gap is only reported: on a 2-core machine the software GPU's own threads
  // can starve the renderer for a moment, which no page can prevent.)
  const gaps = scored.beat.gaps.slice().sort((a, b) => a - b);
  const p95 = gaps[Math.floor(gaps.length * 0.95)] ?? Infinity;
  const seconds = (Date.now() - t0) / 1000;
  check('the tab stays responsive while scoring (progress shown throughout, the main thread free)',
    p95 < 250 && scored.beat.statuses >= Math.min(20, seconds),
    `main-thread timer gaps: 95th percentile ${p95.toFixed(0)} ms, largest ${gaps[gaps.length - 1]?.toFixed(0)} ms; ${scored.beat.statuses} distinct status lines in ${seconds.toFixed(0)} s`);

  // Bits per byte against position: the chart's running mean has a point at every position to 46, then
  // 32 per octave, and the last (so counted here, independently of position.js), left to right, ending at
  // the document's bits per byte; the table's means are those of the bytes of each range, taken here.
  const position = () => page.evaluate(() => {
    const s = window.lunaDemo.state;
    const bits = s.byteBits;
    const mean = (a, b) => {
      let t = 0;
      let n = 0;
      for (let i = a; i < Math.min(b, bits.length); i++) if (Number.isFinite(bits[i])) { t += bits[i]; n++; }
      return (t / n).toFixed(3);
    };
    const at = new Set([bits.length]);
    for (let k = 0; Math.round(2 ** (k / 32)) < bits.length; k++) at.add(Math.round(2 ** (k / 32)));
    const svg = document.getElementById('position-chart');
    const line = (cls) => (svg.querySelector(`polyline.${cls}`)?.getAttribute('points') ?? '').trim().split(/\s+/).filter(Boolean)
      .map((p) => p.split(',').map(Number));
    const box = (el) => el.getBoundingClientRect();
    // The position axis's tick labels, left to right: none may overlap the next.
    const ticks = [...svg.querySelectorAll('text')].filter((t) => / (B|KiB|MiB)$/.test(t.textContent)).map(box).sort((a, b) => a.left - b.left);
    return {
      bytes: bits.length, expected: at.size, running: line('running'), windowed: line('windowed'), bpb: s.score.bitsPerByte,
      last: s.position.running.at(-1)?.[1], viewWidth: svg.viewBox.baseVal.width, innerWidth: window.innerWidth,
      svgRight: box(svg).right, tableRight: box(document.getElementById('position-table')).right,
      tickLabels: ticks.length, ticksOverlap: ticks.some((t, i) => i > 0 && t.left < ticks[i - 1].right + 2),
      rows: [...document.querySelectorAll('#position-table tr')].slice(1).map((tr) => [tr.cells[0].textContent, tr.cells[3].textContent]),
      want: [[0, 128], [128, 1024], [1024, 8192], [8192, 65536], [65536, Infinity], [0, Infinity]].map(([a, b]) => mean(a, b)),
    };
  });
  const drawn = (p) => p.running.length === p.expected && p.running.every(([x, y], i) => Number.isFinite(y) && y >= 0
    && x >= 0 && x <= p.viewWidth && (i === 0 || x > p.running[i - 1][0])) && p.windowed.length >= 20 && p.tickLabels >= 5 && !p.ticksOverlap;
  const pos = await position();
  const labels = ['first 128 B', '128 B–1 KiB', '1–8 KiB', '8–64 KiB', 'past 64 KiB', 'whole document'];
  check('the demo charts bits per byte against position: the running mean, point by point, and windowed means',
    drawn(pos) && Math.abs(pos.last - pos.bpb) < 1e-4,
    `${pos.running.length} points of the running mean (${pos.expected} expected) ending at ${pos.last?.toFixed(4)} (${pos.bpb.toFixed(4)} bits per byte), `
      + `${pos.windowed.length} windows, ${pos.tickLabels} position ticks${pos.ticksOverlap ? ', overlapping' : ''}`);
  check('the demo tabulates bits per byte by position range, each the mean of its bytes',
    JSON.stringify(pos.rows) === JSON.stringify(labels.map((l, i) => [l, pos.want[i]])), JSON.stringify(pos.rows));
  await page.locator('#position-chart').screenshot({ path: path.join(SHOTS, 'demo-position.png') });
  // At a phone's width (one column) the chart is redrawn to fit, its labels apart, and the table with it.
  await page.setViewportSize({ width: 480, height: 1000 });
  await page.waitForFunction(() => document.getElementById('position-chart').viewBox.baseVal.width < 480, null, { timeout: 10_000 }).catch(() => {});
  const narrow = await position();
  check('at 480 px wide the position chart and its table fit the screen, redrawn, their labels readable',
    drawn(narrow) && narrow.viewWidth < 480 && narrow.svgRight <= narrow.innerWidth && narrow.tableRight <= narrow.innerWidth,
    `chart ${narrow.viewWidth} px wide (right edge ${narrow.svgRight.toFixed(0)} of ${narrow.innerWidth}), table's right edge ${narrow.tableRight.toFixed(0)}, `
      + `${narrow.running.length} points, ${narrow.tickLabels} position ticks${narrow.ticksOverlap ? ', overlapping' : ''}`);
  await page.locator('#result').screenshot({ path: path.join(SHOTS, 'demo-position-narrow.png') }).catch(() => {});
  await page.setViewportSize({ width: 1280, height: 1000 });

  // Hovering a character shows its surprisal.
  const target = page.locator('#doc span').nth(200);
  await target.scrollIntoViewIfNeeded();
  await target.hover();
  const tip = await page.locator('#tooltip').textContent();
  check('hovering a character shows its surprisal', (await page.locator('#tooltip').isVisible()) && /bits/.test(tip), JSON.stringify(tip));
  await page.locator('#doc').evaluate((d) => { d.scrollTop = 0; });
  await shot(page, 'demo-scored.png');

  // Pack weights of a chosen layer and slot, as a strip under the text.
  await page.selectOption('#pack-layer', '0');
  await page.selectOption('#pack-slot', '3');
  await page.click('#pack-btn');
  await page.waitForFunction(() => !window.lunaDemo.state.busy, null, { timeout: 900_000, polling: 250 });
  const packed = await page.evaluate(() => {
    const s = window.lunaDemo.state;
    const spans = document.querySelectorAll('#doc span');
    const shadows = new Set();
    for (let i = 0; i < spans.length; i += 37) shadows.add(spans[i].style.boxShadow);
    const cv = document.getElementById('minimap');
    const px = cv.getContext('2d').getImageData(22, 0, 22, cv.height).data;
    let painted = 0;
    for (let i = 0; i < px.length; i += 4) if (px[i + 3] > 0 && (px[i] < 250 || px[i + 1] < 250 || px[i + 2] < 250)) painted++;
    return { pack: s.pack, error: s.error, shadows: shadows.size, painted, stats: document.getElementById('pack-stats').textContent };
  });
  check('the pack weights of layer 0, slot 3 are painted as a strip under the text', packed.pack && packed.pack.layer === 0 && packed.pack.slot === 3
    && packed.pack.max > packed.pack.min && packed.shadows >= 4 && packed.painted > 100 && !packed.error, packed.stats);
  await page.check('#color-by-pack');
  await page.waitForFunction(() => !window.lunaDemo.state.busy);
  await shot(page, 'demo-pack.png');
  await page.uncheck('#color-by-pack');
  await page.waitForFunction(() => !window.lunaDemo.state.busy);

  // A continuation of the whole document, streamed, with flat memory.
  await page.fill('#gen-tokens', '40');
  await page.click('#gen-btn');
  await page.waitForFunction(() => !window.lunaDemo.state.busy, null, { timeout: 900_000, polling: 250 });
  const g = await page.evaluate(() => {
    const g = window.lunaDemo.state.generation;
    return { tokens: g.tokens, text: g.text, series: g.series, result: g.result, out: document.getElementById('gen-out').textContent.length,
      lines: document.querySelectorAll('#mem-chart polyline').length };
  });
  const lives = g.series.map((p) => p[1]);
  const st = new Set(g.series.map((p) => p[2]));
  check('the demo streams a continuation of the document token by token', g.result && !g.result.error && g.tokens > 0 && g.series.length === g.tokens && g.lines === 2,
    g.result && g.result.error ? g.result.error.message : `${g.tokens} tokens after a ${g.result?.promptTokens}-token prefill, ${g.result?.tokensPerSecond?.toFixed(1)} tokens/s`);
  check('the demo shows memory staying flat while streaming', st.size === 1 && Math.max(...lives) === Math.min(...lives),
    `decoder state ${[...st].join(',')} B, engine ${Math.min(...lives)}..${Math.max(...lives)} B`);
  await shot(page, 'demo-continuation.png');

  // Luna against softmax on this adapter.
  await page.click('#bench-btn');
  await page.waitForFunction(() => !window.lunaDemo.state.busy && window.lunaDemo.state.bench.length >= 9, null, { timeout: 900_000, polling: 500 });
  const bench = await page.evaluate(() => ({ points: window.lunaDemo.state.bench, lines: document.querySelectorAll('#bench-chart polyline').length }));
  const timed = bench.points.filter((p) => p.ms > 0);
  check('the Luna-against-softmax chart is drawn from timings on this adapter', bench.lines === 3 && timed.length >= 6,
    timed.map((p) => `${p.method}@${p.n}: ${p.ms.toFixed(1)} ms`).join(', '));
  await shot(page, 'demo-bench.png');

  await page.context().close();
}

async function errorPageChecks() {
  // No WebGPU at all.
  let page = await newPage(() => { Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined, configurable: true }); });
  await page.goto(`${BASE}/index.html`);
  await page.evaluate(() => window.lunaDemo.ready);
  let notice = await page.locator('#notice').textContent();
  check('without WebGPU the page says so', (await page.locator('#notice').isVisible()) && notice.includes('WebGPU is missing') && notice.includes('navigator.gpu'), notice);
  check('without WebGPU the controls stay disabled', await page.locator('#score-btn').isDisabled());
  await shot(page, 'error-no-webgpu.png');
  await page.context().close();

  // WebGPU without an adapter.
  page = await newPage(() => { if (navigator.gpu) GPU.prototype.requestAdapter = async () => null; });
  await page.goto(`${BASE}/index.html`);
  await page.evaluate(() => window.lunaDemo.ready);
  notice = await page.locator('#notice').textContent();
  check('without an adapter the page says so', notice.includes('No GPU adapter') && notice.includes('offered no GPU adapter'), notice);
  await shot(page, 'error-no-adapter.png');
  await page.context().close();

  // A bad model file: the message, then random weights so the page stays usable.
  page = await newPage();
  await page.goto(`${BASE}/index.html?model=/fixtures/bad.safetensors`);
  await page.evaluate(() => window.lunaDemo.ready);
  notice = await page.locator('#notice').textContent();
  const st = await page.evaluate(() => ({ phase: window.lunaDemo.state.phase, random: window.lunaDemo.state.random, kind: window.lunaDemo.state.error?.kind }));
  check('a bad model file gets a clear message', st.kind === 'model' && notice.includes('This model file is bad') && notice.includes('safetensors'), notice);
  check('after a bad model file the page falls back to random weights and says so', st.phase === 'ready' && st.random && (await page.locator('#model-banner').isVisible()));
  await shot(page, 'error-bad-model.png');
  await page.context().close();

  // No trained model in models/: random weights, said on the page.
  page = await newPage();
  await page.goto(`${BASE}/index.html?random=1`);
  await page.evaluate(() => window.lunaDemo.ready);
  const banner = await page.locator('#model-banner').textContent();
  check('with random weights the page says so', banner.includes('Random weights'), banner.slice(0, 120));
  await page.context().close();
}
