// The long-document demo: score a whole document with a causal Luna LM on
// WebGPU (segment by segment, with progress and a Stop button), paint every character by its surprisal, chart bits per
// byte against position in the document (does context help?), show what a packed slot reads, stream a continuation with a decoder whose memory stays flat,
// and time Luna against softmax attention on this browser's adapter.
//
// Everything heavy runs on the GPU and is awaited; the page itself only
// paints, in slices, so the tab stays responsive.

import init, { LunaEngine } from './pkg/luna_wgpu.js';
import { positionStats } from './position.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

/** The trained demo model, when it has been put in models/ (luna serve maps it under /models/). */
const TRAINED_MODEL = 'models/luna-pydoc-bytes.safetensors';
const SAMPLE = 'samples/julius-caesar.txt';
/** The stand-in when no trained model is there: a small byte-level causal LM with random weights
 * (smaller still on a software adapter, where every layer over 100 KB takes a while). */
function randomConfig(software) {
  const [d, heads, l] = software ? [16, 1, 8] : [64, 4, 16];
  return {
    model: 'causal_lm', vocab_size: 259, embed_dim: d, ffn_embed_dim: 4 * d, num_layers: 2, num_heads: heads,
    projection_length: l, max_positions: 4096, padding_idx: 1, normalize_before: true, tie_kv: true,
    learned_pos: false, tie_output_embedding: true, activation: 'gelu', embed_scale: Math.sqrt(d), layer_norm_eps: 1e-5,
  };
}

const state = {
  phase: 'loading',       // loading | ready | error (no engine)
  busy: false,
  error: null,            // the last error shown: { kind, message }
  engine: null,
  adapter: null,
  model: null,
  modelName: '',
  random: false,
  text: '',               // the scored document
  chars: [],
  byteStarts: null,
  score: null,            // { bitsPerByte, tokens, ms, tokensPerSecond, peakBytes, hi }
  scoring: null,          // the AbortController of the score running now
  charBits: null,
  byteBits: null,         // the surprisal of every byte (score's `bytes`)
  position: null,         // bits per byte against position: positionStats(byteBits) (position.js)
  pack: null,             // { layer, head, slot, min, max, mean, ms }
  packRaw: null,
  packChars: null,
  generation: null,       // { tokens, text, series: [[index, liveBytes, stateBytes]], result }
  bench: [],              // the comparison's points, in the order timed: BenchPoint + { wallMs }, or { method, n, skipped }
  benchRunning: false,
  benchEnd: null,         // why the comparison stopped: { why, n, seconds, next?, method? } (see runBench)
};
let spans = [];
let stopRequested = false;
let benchStopRequested = false;
let readyResolve;
window.lunaDemo = { state, ready: new Promise((r) => { readyResolve = r; }) };

// ---------------------------------------------------------------- helpers

const fmtBytes = (b) => b >= 1 << 30 ? `${(b / (1 << 30)).toFixed(2)} GiB` : b >= 1 << 20 ? `${(b / (1 << 20)).toFixed(1)} MiB`
  : b >= 1 << 10 ? `${(b / (1 << 10)).toFixed(1)} KiB` : `${b} B`;
const fmtInt = (n) => Math.round(n).toLocaleString('en-US');
const fmtMs = (ms) => ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(1)} ms`;
/** A duration in round words: "0.4 s", "25 s", "1.6 min". */
const fmtDuration = (ms) => ms < 10e3 ? `${(ms / 1000).toFixed(1)} s` : ms < 100e3 ? `${Math.round(ms / 1000)} s` : `${(ms / 60e3).toFixed(1)} min`;
/** A number to two significant digits, for estimates: 700, 1,500, 12,000. */
const fmtAbout = (v) => fmtInt(+v.toPrecision(2));
const nextFrame = () => new Promise((r) => requestAnimationFrame(() => r()));
const utf8Len = (cp) => cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
const byteLength = (s) => new TextEncoder().encode(s).length;

function errorOf(e) {
  if (e && typeof e === 'object' && 'message' in e) return { kind: e.kind || e.name || 'error', message: String(e.message) };
  return { kind: 'error', message: String(e) };
}

function setStatus(text) { $('status-text').textContent = text; }

/** Marks the page busy with a live elapsed-time line; returns a function that ends it.
 * `label` is the text, or a function that gives the current text. */
function busy(label) {
  const text = typeof label === 'function' ? label : () => label;
  state.busy = true;
  updateControls();
  $('spinner').hidden = false;
  const t0 = performance.now();
  let raf = 0;
  const tick = () => {
    setStatus(`${text()}… ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    raf = requestAnimationFrame(tick);
  };
  tick();
  return (message) => {
    cancelAnimationFrame(raf);
    $('spinner').hidden = true;
    state.busy = false;
    updateControls();
    if (message !== undefined) setStatus(message);
  };
}

function clearNotice() {
  $('notice').hidden = true;
  $('notice').textContent = '';
}

/** Shows an error in plain words; `action` is an optional [label, fn] button. */
function showError(e, action) {
  const err = errorOf(e);
  state.error = err;
  const lead = {
    'no-webgpu': 'WebGPU is missing. ',
    'no-adapter': 'No GPU adapter. ',
    'model': 'This model file is bad: ',
    'config': 'This model file is bad: ',
    'too-large': 'Too large for this adapter: ',
    'out-of-memory': 'The GPU ran out of memory. ',
    'device': 'The GPU failed: ',
    'fetch': '',
  }[err.kind] ?? '';
  const box = $('notice');
  box.textContent = lead + err.message;
  box.dataset.kind = err.kind;
  if (action) {
    const b = document.createElement('button');
    b.textContent = action[0];
    b.onclick = action[1];
    box.append(' ', b);
  }
  box.hidden = false;
  console.warn(`[luna demo] ${err.kind}: ${err.message}`);
}

function updateControls() {
  const ok = state.phase === 'ready' && !state.busy && state.model;
  for (const id of ['sample-btn', 'text-file', 'text', 'score-btn', 'model-file', 'random-btn', 'pack-btn', 'gen-btn', 'bench-btn']) {
    $(id).disabled = !ok;
  }
  $('color-by-pack').disabled = !ok || !state.packChars;
  $('stop-btn').disabled = !(state.busy && state.generation && !state.generation.result);
  $('score-stop-btn').disabled = !state.scoring;
  $('bench-stop-btn').disabled = !state.benchRunning || benchStopRequested;
}

function updateDocStats() {
  const text = $('text').value;
  if (!text) { $('doc-stats').textContent = ''; return; }
  const bytes = byteLength(text);
  let s = `${fmtInt(Array.from(text).length)} characters, ${fmtInt(bytes)} bytes`;
  if (state.adapter && state.adapter.software) {
    // The rate of this model's last pass here, when there was one: it differs between models by 30x.
    const rate = state.score && state.score.rateModel === state.modelName ? state.score.tokensPerSecond : 0;
    s += rate > 0
      ? ` (a software adapter: at the last pass's ${fmtInt(rate)} tokens/s, about ${fmtDuration(bytes / rate * 1000)} for this text; a GPU takes a fraction of a second)`
      : ' (a software adapter: a long text takes minutes with a trained model, a fraction of a second on a GPU)';
  }
  $('doc-stats').textContent = s;
}

setInterval(() => {
  if (!state.engine) return;
  const m = state.engine.memory();
  $('memory-chip').textContent = `GPU memory: ${fmtBytes(m.live)} held, peak ${fmtBytes(m.peak)}`;
}, 400);

// ---------------------------------------------------------------- colours

function ramp(stops) {
  const lut = [];
  for (let i = 0; i < 256; i++) {
    const x = i / 255 * (stops.length - 1);
    const k = Math.min(stops.length - 2, Math.floor(x));
    const f = x - k;
    const c = stops[k].map((v, j) => Math.round(v + (stops[k + 1][j] - v) * f));
    lut.push(`rgb(${c[0]},${c[1]},${c[2]})`);
  }
  return lut;
}
const HEAT = ramp([[255, 255, 255], [255, 240, 170], [255, 190, 100], [240, 110, 60], [200, 30, 40]]);
const COOL = ramp([[255, 255, 255], [214, 228, 250], [140, 180, 240], [60, 110, 220], [20, 50, 160]]);
const lutIndex = (v, hi) => Math.max(0, Math.min(255, Math.round(v / hi * 255)));
$('legend-ramp').style.background = `linear-gradient(to right, ${HEAT[0]}, ${HEAT[64]}, ${HEAT[128]}, ${HEAT[192]}, ${HEAT[255]})`;

// ---------------------------------------------------------------- model

/** Loads a model from a URL, streamed, saying on the status line how much has come. */
function loadFrom(url, what) {
  const onProgress = ({ loaded, total, fromCache }) => {
    const of = total ? ` of ${fmtBytes(total)} (${Math.round(100 * loaded / total)} %)` : '';
    setStatus(`${fromCache ? 'Reading' : 'Fetching'} ${what}: ${fmtBytes(loaded)}${of}…`);
  };
  return state.engine.loadModel(url, { onProgress });
}

function useModel(m, name, random) {
  if (m.kind !== 'causal_lm' || !m.tokenizer) {
    const what = m.kind === 'causal_lm' ? 'a causal LM without a tokenizer' : 'an encoder';
    m.free();
    throw { kind: 'model', message: `${name} is ${what}; this demo needs a causal_lm with a byte tokenizer ("luna.tokenizer").` };
  }
  if (state.model) state.model.free();
  state.model = m;
  state.modelName = name;
  state.random = random;
  state.packRaw = null;
  const c = JSON.parse(m.config);
  $('model-chip').textContent = `model: ${name} (d=${c.embed_dim}, ${c.num_layers} layers, ${c.num_heads} heads, l=${c.projection_length}, ${fmtBytes(m.weightBytes)})`;
  const banner = $('model-banner');
  banner.hidden = !random;
  banner.textContent = random
    ? `Random weights: the trained model (${TRAINED_MODEL}) was not found, so this page made a byte-level causal LM with random weights in the browser. `
      + 'The surprisal, the pack weights and the continuation are those of an untrained model: they show the machinery, not language. '
      + 'Drop a trained .safetensors model on the page, or open the page with ?model=URL.'
    : '';
  fillSelect($('pack-layer'), [...Array(c.num_layers).keys()].map((i) => [i, `${i}`]));
  fillSelect($('pack-head'), [['mean', 'mean of heads'], ...[...Array(c.num_heads).keys()].map((i) => [i, `${i}`])]);
  fillSelect($('pack-slot'), [...Array(c.projection_length).keys()].map((i) => [i, `${i}`]));
  updateDocStats();
}

function fillSelect(sel, items) {
  sel.textContent = '';
  for (const [v, label] of items) {
    const o = document.createElement('option');
    o.value = v;
    o.textContent = label;
    sel.append(o);
  }
}

async function useRandom() {
  const m = await state.engine.randomModel(JSON.stringify(randomConfig(state.adapter.software)), 1, true);
  useModel(m, 'random weights', true);
}

async function loadModelFile(bytes, name) {
  clearNotice();
  const done = busy(`Loading ${name} (${fmtBytes(bytes.length)})`);
  try {
    useModel(await state.engine.loadModel(bytes), name, false);
    done(`Loaded ${name}.`);
  } catch (e) {
    done(`Could not load ${name}; the previous model is still in use.`);
    showError(e);
  }
}

// ---------------------------------------------------------------- scoring and painting

async function score(textOverride) {
  const text = textOverride ?? $('text').value;
  if (!text) {
    showError({ kind: 'input', message: 'The document is empty: paste some text, drop a file, or pick the sample.' });
    return;
  }
  clearNotice();
  const bytes = byteLength(text);
  // Segment by segment: the engine reports each one, and Stop aborts at the next.
  let progress = '';
  const controller = new AbortController();
  state.scoring = controller;
  let done = busy(() => `Scoring ${fmtInt(bytes)} bytes on the GPU${progress}`);
  const onProgress = ({ done: d, total }) => { progress = `: ${fmtInt(d)} of ${fmtInt(total)} tokens (${Math.round(100 * d / total)} %)`; };
  let r;
  try {
    state.engine.resetPeakMemory();
    r = await state.model.score(text, { onProgress, signal: controller.signal });
  } catch (e) {
    state.scoring = null;
    const err = errorOf(e);
    if (err.kind === 'aborted') {
      done(`Scoring stopped${progress}. The previous result, if any, is still shown.`);
      return;
    }
    done('Scoring failed.');
    showError(err);
    return;
  }
  state.scoring = null;
  done();
  state.text = text;
  state.packRaw = null;
  state.packChars = null;
  state.pack = null;
  $('pack-stats').textContent = '';
  $('color-by-pack').checked = false;
  const sorted = Float32Array.from(r.chars.filter((v) => Number.isFinite(v))).sort();
  const hi = Math.max(4, sorted.length ? sorted[Math.floor(sorted.length * 0.98)] : 4);
  state.score = { bitsPerByte: r.bitsPerByte, tokens: r.tokens, ms: r.ms, tokensPerSecond: r.tokensPerSecond, peakBytes: r.peakBytes, hi, bytes,
    rateModel: state.modelName };
  updateDocStats();
  state.charBits = r.chars;
  state.byteBits = r.bytes;
  state.position = positionStats(r.bytes);
  $('legend-max').textContent = `${hi.toFixed(1)}+ bits`;
  $('summary').innerHTML = `<b>${r.bitsPerByte.toFixed(3)} bits per byte</b> over ${fmtInt(bytes)} bytes · `
    + `${fmtInt(r.tokens)} tokens: <b>${fmtMs(r.ms)}</b>, ${fmtInt(r.tokensPerSecond)} tokens/s · `
    + `GPU memory peak ${fmtBytes(r.peakBytes)} · ${state.adapter.software ? 'software adapter' : 'GPU'}`;
  $('result').hidden = false;
  $('continue').hidden = false;
  $('bench').hidden = false;
  drawPosition();
  done = busy('Painting the document');
  await paint(text, r.chars, hi);
  done(`Scored ${fmtInt(bytes)} bytes in ${fmtMs(r.ms)} (${fmtInt(r.tokensPerSecond)} tokens/s). Hover a character for its surprisal.`);
}

/** Builds one span per character, in blocks of whole lines, a slice per frame. */
async function paint(text, bits, hi) {
  const doc = $('doc');
  doc.textContent = '';
  const chars = Array.from(text);
  state.chars = chars;
  const starts = new Uint32Array(chars.length);
  let b = 0;
  for (let i = 0; i < chars.length; i++) {
    starts[i] = b;
    b += utf8Len(chars[i].codePointAt(0));
  }
  state.byteStarts = starts;
  spans = new Array(chars.length);
  let blk = null;
  let inBlock = 0;
  let sliceStart = performance.now();
  for (let i = 0; i < chars.length; i++) {
    if (!blk) {
      blk = document.createElement('div');
      blk.className = 'blk';
      inBlock = 0;
    }
    const s = document.createElement('span');
    s.textContent = chars[i];
    s._i = i;
    const v = bits[i];
    if (Number.isFinite(v)) s.style.backgroundColor = HEAT[lutIndex(v, hi)];
    blk.append(s);
    spans[i] = s;
    inBlock++;
    if ((inBlock >= 3000 && chars[i] === '\n') || i === chars.length - 1) {
      doc.append(blk);
      blk = null;
    }
    if (performance.now() - sliceStart > 30) {
      setStatus(`Painting the document… ${Math.round(100 * i / chars.length)} %`);
      await nextFrame();
      sliceStart = performance.now();
    }
  }
  if (blk) doc.append(blk);
  drawMinimap();
}

function drawMinimap() {
  const cv = $('minimap');
  const h = cv.height;
  const ctx = cv.getContext('2d');
  ctx.clearRect(0, 0, cv.width, h);
  const n = state.chars.length;
  if (!n) return;
  const cols = [[state.charBits, HEAT, state.score.hi, 1], [state.packChars, COOL, state.pack ? state.pack.max : 1, 23]];
  for (const [vals, lut, hi, x] of cols) {
    if (!vals) continue;
    for (let y = 0; y < h; y++) {
      const a = Math.floor(y * n / h);
      const z = Math.max(a + 1, Math.floor((y + 1) * n / h));
      let sum = 0;
      let cnt = 0;
      for (let i = a; i < z; i++) if (Number.isFinite(vals[i])) { sum += vals[i]; cnt++; }
      if (!cnt) continue;
      ctx.fillStyle = lut[lutIndex(sum / cnt, hi)];
      ctx.fillRect(x, y, 20, 1);
    }
  }
  // Where the text view is.
  const doc = $('doc');
  const top = doc.scrollTop / Math.max(1, doc.scrollHeight) * h;
  const size = Math.max(3, doc.clientHeight / Math.max(1, doc.scrollHeight) * h);
  ctx.strokeStyle = '#1d2430';
  ctx.strokeRect(0.5, top + 0.5, cv.width - 1, size);
}

$('doc').addEventListener('scroll', () => { if (state.chars.length) requestAnimationFrame(drawMinimap); });
$('minimap').addEventListener('click', (e) => {
  const n = state.chars.length;
  if (!n) return;
  const r = e.currentTarget.getBoundingClientRect();
  const i = Math.min(n - 1, Math.floor((e.clientY - r.top) / r.height * n));
  spans[i]?.scrollIntoView({ block: 'center' });
});

const tip = $('tooltip');
$('doc').addEventListener('mousemove', (e) => {
  const i = e.target._i;
  if (i === undefined) { tip.hidden = true; return; }
  const ch = state.chars[i];
  const shown = ch === '\n' ? '\\n' : ch === ' ' ? '␣' : ch === '\t' ? '\\t' : ch;
  const v = state.charBits[i];
  let s = `'${shown}'  ${Number.isFinite(v) ? `${v.toFixed(2)} bits` : 'no context (first byte)'}  · byte ${fmtInt(state.byteStarts[i])}`;
  if (state.packChars) s += `\npack weight ${state.packChars[i].toFixed(3)} (layer ${state.pack.layer}, head ${state.pack.head}, slot ${state.pack.slot})`;
  tip.textContent = s;
  tip.hidden = false;
  tip.style.left = `${Math.min(window.innerWidth - 280, e.clientX + 14)}px`;
  tip.style.top = `${e.clientY + 16}px`;
  tip.dataset.index = i;
});
$('doc').addEventListener('mouseleave', () => { tip.hidden = true; });

// ---------------------------------------------------------------- pack weights

async function showPack() {
  const layer = Number($('pack-layer').value);
  const headSel = $('pack-head').value;
  const slot = Number($('pack-slot').value);
  clearNotice();
  if (!state.packRaw || state.packRaw.layer !== layer) {
    let progress = '';
    const done = busy(() => `Reading the pack weights of layer ${layer} over ${fmtInt(state.score.tokens)} tokens on the GPU${progress}`);
    const onProgress = ({ done: d, total }) => { progress = `: ${Math.round(100 * d / total)} %`; };
    try {
      state.packRaw = await state.model.packWeights(state.text, layer, { onProgress });
      done();
    } catch (e) {
      done('Could not compute the pack weights.');
      showError(e);
      return;
    }
  }
  const { weights, heads, projLen, offset, ms } = state.packRaw;
  const n = state.chars.length;
  const vals = new Float32Array(n);
  const head = headSel === 'mean' ? -1 : Number(headSel);
  let max = 0;
  let min = Infinity;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const t = state.byteStarts[i] + offset;
    let v = 0;
    if (head < 0) {
      for (let h = 0; h < heads; h++) v += weights[(t * heads + h) * projLen + slot];
      v /= heads;
    } else {
      v = weights[(t * heads + head) * projLen + slot];
    }
    vals[i] = v;
    max = Math.max(max, v);
    min = Math.min(min, v);
    sum += v;
  }
  state.packChars = vals;
  state.pack = { layer, head: headSel === 'mean' ? 'mean' : head, slot, min, max, mean: sum / n, ms };
  $('pack-stats').textContent = `slot ${slot}, ${headSel === 'mean' ? 'mean of the heads' : `head ${head}`}, layer ${layer}: `
    + `weights ${min.toFixed(3)} to ${max.toFixed(3)} (mean ${(sum / n).toFixed(3)}), read in ${fmtMs(ms)}; `
    + 'the blue bar under each character is the weight with which it is folded into the slot';
  const done = busy('Painting the pack weights');
  await repaintPack();
  done(`Pack weights of layer ${layer}, slot ${slot} painted under the text.`);
  updateControls();
}

async function repaintPack() {
  const byPack = $('color-by-pack').checked;
  const vals = state.packChars;
  const hi = state.pack.max || 1;
  let t0 = performance.now();
  for (let i = 0; i < spans.length; i++) {
    const s = spans[i];
    const c = COOL[lutIndex(vals[i], hi)];
    s.style.boxShadow = `inset 0 -4px 0 ${c}`;
    if (byPack) s.style.backgroundColor = c;
    else {
      const v = state.charBits[i];
      s.style.backgroundColor = Number.isFinite(v) ? HEAT[lutIndex(v, state.score.hi)] : '';
    }
    if (performance.now() - t0 > 30) {
      await nextFrame();
      t0 = performance.now();
    }
  }
  drawMinimap();
}

// ---------------------------------------------------------------- continuation

async function generate() {
  clearNotice();
  const maxTokens = Math.max(1, Math.floor(Number($('gen-tokens').value) || 1));
  const temperature = Math.max(0, Number($('gen-temp').value) || 0);
  const seed = Math.max(0, Math.floor(Number($('gen-seed').value) || 0));
  const out = $('gen-out');
  out.textContent = '';
  const tail = document.createElement('span');
  tail.className = 'doc-tail';
  tail.textContent = (state.text.length > 400 ? '…' : '') + state.text.slice(-400);
  const gen = document.createElement('span');
  out.append(tail, gen);
  const g = { tokens: 0, text: '', series: [], result: null };
  state.generation = g;
  stopRequested = false;
  const done = busy(`Reading the ${fmtInt(state.score ? state.score.tokens : 0)} tokens of the document (prefill), then streaming`);
  let lastDraw = 0;
  try {
    const r = await state.model.generate(state.text, { maxTokens, temperature, seed }, (piece, ev) => {
      g.text += piece;
      gen.textContent += piece;
      if (ev) {
        g.tokens = ev.index;
        g.series.push([ev.index, ev.liveBytes, ev.stateBytes]);
        $('gen-stats').textContent = `${fmtInt(ev.index)} tokens, ${(ev.index / Math.max(1e-3, ev.ms / 1000)).toFixed(1)} tokens/s · `
          + `position ${fmtInt(ev.position)} · decoder state ${fmtBytes(ev.stateBytes)} · engine ${fmtBytes(ev.liveBytes)}`;
        if (performance.now() - lastDraw > 100) {
          drawMemChart(g.series);
          out.scrollTop = out.scrollHeight;
          lastDraw = performance.now();
        }
      }
      return !stopRequested;
    });
    g.result = r;
    drawMemChart(g.series);
    out.scrollTop = out.scrollHeight;
    done(`Generated ${fmtInt(r.tokens)} tokens after a ${fmtInt(r.promptTokens)}-token prefill (${fmtMs(r.prefillMs)}): `
      + `${r.tokensPerSecond.toFixed(1)} tokens/s, stopped at ${r.stoppedAt}; decoder state ${fmtBytes(r.stateBytes)}, `
      + `engine memory ${fmtBytes(r.liveBytesMin)} to ${fmtBytes(r.liveBytesMax)} while streaming.`);
  } catch (e) {
    g.result = { error: errorOf(e) };
    done('The continuation failed.');
    showError(e);
  }
  updateControls();
}

// ---------------------------------------------------------------- charts
//
// Plain SVG, drawn at the element's own width in CSS pixels (one viewBox unit is
// one pixel), so labels keep their size on a narrow screen and the margins can be
// sized from the labels' measured widths: nothing is clipped. Each chart is
// redrawn from `state` when its width changes.

const CHART_FONT = '11px system-ui, sans-serif';   // as `svg text` in demo.css
const measureCtx = document.createElement('canvas').getContext('2d');

/** Width in pixels of `s` in the charts' font. */
function textWidth(s) {
  measureCtx.font = CHART_FONT;
  return measureCtx.measureText(s).width;
}

function svgEl(tag, attrs, text) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  if (tag === 'text') attrs = { fill: '#445', ...attrs };
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

/** Empties `svg` and makes its viewBox its own width by `height` pixels; returns the width. */
function chartFrame(svg, height) {
  const width = Math.round(svg.clientWidth) || 420;   // 0 while its panel is hidden
  svg.textContent = '';
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.style.height = `${height + (svg.offsetHeight - svg.clientHeight)}px`;   // plus its border
  return width;
}

/** Round ticks from 0 to at least `hi`, about `count` of them, 1, 2 or 5 × 10^k apart. */
function linearTicks(hi, count) {
  const raw = hi / count;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw * 0.999);
  const ticks = [];
  for (let k = 0; ticks.length === 0 || ticks[ticks.length - 1] < hi * 0.999; k++) ticks.push(k * step);
  return ticks;
}

/** Ticks for a log axis over [lo, hi]: 1, 2 and 5 × 10^k when a decade is `pxPerDecade` >= 60 pixels
 * tall (their closest pair, 1 and 2, is then 18 pixels apart), powers of ten otherwise, every other
 * one when even those would be closer than 18 pixels. */
function logTicks(lo, hi, pxPerDecade) {
  const mults = pxPerDecade >= 60 ? [1, 2, 5] : [1];
  const every = pxPerDecade >= 18 ? 1 : 2;
  const ticks = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    if (e % every) continue;
    for (const m of mults) {
      const v = m * 10 ** e;
      if (v >= lo * 0.999 && v <= hi * 1.001) ticks.push(v);
    }
  }
  return ticks;
}

/** The 1, 2 or 5 × 10^k next to `v`: below it with `Math.floor`, above with `Math.ceil`. */
function round125(v, dir) {
  const p = 10 ** Math.floor(Math.log10(v));
  const steps = [1, 2, 5, 10].map((m) => m * p);
  return dir === Math.floor ? steps.filter((s) => s <= v * 1.0001).pop() : steps.find((s) => s >= v * 0.9999);
}

const trimNum = (v) => `${+v.toPrecision(3)}`;
/** A tick on a time axis: "20 ms", "500 ms", "2 s". */
const fmtMsTick = (ms) => ms >= 1000 ? `${trimNum(ms / 1000)} s` : `${trimNum(ms)} ms`;
/** The binary unit to label an axis that goes up to `max` bytes: [divisor, name]. */
const byteUnit = (max) => max >= 1 << 30 ? [1 << 30, 'GiB'] : max >= 1 << 20 ? [1 << 20, 'MiB'] : max >= 1 << 10 ? [1 << 10, 'KiB'] : [1, 'B'];

function drawMemChart(series) {
  const svg = $('mem-chart');
  const H = 190;
  const W = chartFrame(svg, H);
  if (!series.length) return;
  // Two panels over one x axis (tokens generated): the engine's GPU memory on top, the decoder
  // state below, each on its own axis from 0. (One plot with two y axes hid one flat line under
  // the other.)
  const panels = [[1, '#2a5bd7', 'GPU memory held by the engine'], [2, '#e07b1a', 'decoder state']];
  const [T, B, R, GAP] = [12, 34, 12, 22];
  const ph = (H - T - B - GAP) / 2;
  const axes = panels.map(([k]) => {
    const max = Math.max(...series.map((p) => p[k])) || 1;
    const [div, unit] = byteUnit(max);
    const ticks = linearTicks(max * 1.4 / div, 2);   // headroom: the line stays below the panel's title
    return { div, ticks, labels: ticks.map((v) => (v ? `${trimNum(v)} ${unit}` : '0')) };
  });
  const L = 8 + Math.max(...axes.flatMap((a) => a.labels.map(textWidth)));
  const xmax = Math.max(2, series[series.length - 1][0]);
  const xt = linearTicks(xmax, Math.max(2, Math.floor((W - L - R) / 60)));
  const x = (v) => L + v / xt[xt.length - 1] * (W - L - R);
  panels.forEach(([k, color, title], i) => {
    const { div, ticks, labels } = axes[i];
    const top = T + i * (ph + GAP);
    const y = (v) => top + ph - v / div / ticks[ticks.length - 1] * ph;
    ticks.forEach((v, j) => {
      svg.append(svgEl('line', { x1: L, y1: y(v * div), x2: W - R, y2: y(v * div), stroke: j ? '#e3e6ec' : '#889' }));
      svg.append(svgEl('text', { x: L - 4, y: y(v * div) + 4, 'text-anchor': 'end' }, labels[j]));
    });
    svg.append(svgEl('line', { x1: L, y1: top, x2: L, y2: top + ph, stroke: '#889' }));
    svg.append(svgEl('text', { x: L + 6, y: top + 12, fill: color }, title));
    const pts = series.map((p) => `${x(p[0]).toFixed(1)},${y(p[k]).toFixed(1)}`).join(' ');
    svg.append(svgEl('polyline', { points: pts, fill: 'none', stroke: color, 'stroke-width': 2 }));
  });
  for (const v of xt) svg.append(svgEl('text', { x: x(v), y: H - B + 14, 'text-anchor': 'middle' }, fmtInt(v)));
  svg.append(svgEl('text', { x: (L + W - R) / 2, y: H - 5, 'text-anchor': 'middle' }, 'tokens generated'));
}

/** A byte count for a tick: "16 B", "128 B", "1 KiB", "64 KiB", "4 MiB". */
const fmtSizeTick = (b) => b >= 1 << 20 ? `${b / (1 << 20)} MiB` : b >= 1 << 10 ? `${b / (1 << 10)} KiB` : `${b} B`;

/** Bits per byte against position in the document, the position on a log scale: the running mean
 * (dark; one point per entry of state.position.running, which the end-to-end test counts) and the
 * mean over each window (light), with ticks every three octaves (2 B, 16 B, 128 B, 1 KiB, …; every
 * six or more when narrow); and the table of the same means by range of position. */
function drawPosition() {
  const st = state.position;
  const table = $('position-table');
  table.innerHTML = '<tr><th>bytes of the document</th><th>offsets</th><th>bytes</th><th>bits/byte</th></tr>';
  for (const r of st.ranges) {
    const tr = document.createElement('tr');
    tr.innerHTML = `<td>${r.label}</td><td>${fmtInt(r.start)}–${fmtInt(r.end - 1)}</td><td>${fmtInt(r.end - r.start)}</td>`
      + `<td>${r.mean === null ? '–' : r.mean.toFixed(3)}</td>`;
    table.append(tr);
  }
  $('position-trend').textContent = st.trend ?? '';

  const svg = $('position-chart');
  const H = 260;
  const W = chartFrame(svg, H);
  if (!st.running.length) return;
  const [dark, light] = ['#1f49b4', '#9db8ef'];
  // The legend, in rows across the top.
  let lx = 8;
  let ly = 16;
  for (const [color, width, label] of [[dark, 2.2, 'running mean (bytes 1 to here)'], [light, 1.5, 'mean over a window of positions']]) {
    const w = 20 + textWidth(label);
    if (lx > 8 && lx + w > W - 8) { lx = 8; ly += 16; }
    svg.append(svgEl('line', { x1: lx, y1: ly - 4, x2: lx + 15, y2: ly - 4, stroke: color, 'stroke-width': width }));
    svg.append(svgEl('text', { x: lx + 20, y: ly }, label));
    lx += w + 16;
  }
  const [T, B, R] = [ly + 14, 36, 16];
  const windows = st.windows.filter((w) => w[2] !== null).map(([a, b, m]) => [Math.sqrt((a + 1) * b), m]);
  const top = Math.max(1, ...st.running.map((p) => p[1]), ...windows.map((p) => p[1]));
  const yt = linearTicks(top, Math.max(2, Math.floor((H - T - B) / 35)));
  const ymax = yt[yt.length - 1];
  const L = 26 + Math.max(...yt.map((v) => textWidth(trimNum(v))));   // the tick labels and the axis title
  const span = Math.log2(Math.max(2, st.bytes));
  const x = (p) => L + Math.log2(p) / span * (W - L - R);
  const y = (v) => H - B - v / ymax * (H - T - B);
  for (const v of yt) {
    svg.append(svgEl('line', { x1: L, y1: y(v), x2: W - R, y2: y(v), stroke: v ? '#e3e6ec' : '#889' }));
    svg.append(svgEl('text', { x: L - 5, y: y(v) + 4, 'text-anchor': 'end' }, trimNum(v)));
  }
  const every = 3 * Math.max(1, Math.ceil((textWidth('512 KiB') + 10) / (3 * (W - L - R) / span)));
  for (let e = 1; 2 ** e <= st.bytes; e += every) {
    svg.append(svgEl('line', { x1: x(2 ** e), y1: T, x2: x(2 ** e), y2: H - B + 4, stroke: '#e3e6ec' }));
    svg.append(svgEl('text', { x: x(2 ** e), y: H - B + 15, 'text-anchor': 'middle' }, fmtSizeTick(2 ** e)));
  }
  svg.append(svgEl('line', { x1: L, y1: T, x2: L, y2: H - B, stroke: '#889' }));
  svg.append(svgEl('text', { x: (L + W - R) / 2, y: H - 4, 'text-anchor': 'middle', fill: '#667' }, 'position in the document: bytes read (log scale)'));
  const mid = (T + H - B) / 2;
  svg.append(svgEl('text', { x: 11, y: mid, 'text-anchor': 'middle', transform: `rotate(-90 11 ${mid})`, fill: '#667' }, 'bits per byte'));
  const pts = (list) => list.map(([p, m]) => `${x(p).toFixed(1)},${y(m).toFixed(1)}`).join(' ');
  svg.append(svgEl('polyline', { class: 'windowed', points: pts(windows), fill: 'none', stroke: light, 'stroke-width': 1.5 }));
  for (const [p, m] of windows) svg.append(svgEl('circle', { cx: x(p), cy: y(m), r: 2, fill: light }));
  svg.append(svgEl('polyline', { class: 'running', points: pts(st.running), fill: 'none', stroke: dark, 'stroke-width': 2.2 }));
  const [p, m] = st.running[st.running.length - 1];
  svg.append(svgEl('text', { x: x(p), y: y(m) - 7, 'text-anchor': 'end', fill: dark }, m.toFixed(2)));
}

// ---------------------------------------------------------------- benchmark
//
// One random-weight encoder layer, timed with Luna and with softmax attention at
// n = n0, 2 n0, 4 n0, … Luna's cost grows linearly in n and softmax's
// quadratically, so past some n Luna is faster: the comparison doubles n until
// Luna has been the faster one at the crossing and AFTER_CROSSING lengths past
// it, unless the next length, predicted from the measured slope, would take
// longer than a point or the whole comparison may (a software adapter is slow).

const BENCH_LAYER = { d: 64, heads: 4, l: 16, layers: 1 };
const METHODS = ['luna', 'softmax-flash', 'softmax-naive'];
const METHOD_LABELS = { luna: 'Luna-16', 'softmax-flash': 'fused softmax', 'softmax-naive': 'naive softmax' };
const AFTER_CROSSING = 2;
const MAX_N = 1 << 20;
/** The first n, the timed passes per point (after one warm-up), and the budgets in seconds. */
const benchPlan = (software) => software
  ? { n0: 128, repeats: 2, pointS: 30, totalS: 120 }
  : { n0: 512, repeats: 5, pointS: 15, totalS: 90 };

/** The timed points of `method`, in order of n. */
const measured = (method) => state.bench.filter((p) => p.method === method && p.ms > 0);

/** The next point of `method` (at twice the last n): its time per pass extrapolated along the
 * log-log slope of the method's last two points, and the wall time the point would take at the
 * last point's wall time per pass. The slope is at least 1 (no method here gets cheaper per
 * token; at small n fixed costs flatten it), and 2, softmax's worst case, from a single point. */
function predictNext(method, repeats) {
  const mp = measured(method);
  const last = mp[mp.length - 1];
  const prev = mp[mp.length - 2];
  const slope = prev ? Math.max(1, Math.log2(last.ms / prev.ms) / Math.log2(last.n / prev.n)) : 2;
  const ms = last.ms * 2 ** slope;
  // A method's first point also compiles its kernels: count only the passes there.
  const passes = prev ? last.wallMs / last.ms : 1 + repeats;
  return { method, n: 2 * last.n, ms, wallMs: ms * passes, slope };
}

/** Luna against the fastest softmax at each n where both were timed, and where Luna overtakes it:
 * `from` is the first length of the final run of lengths where Luna is faster (`wins` of them),
 * `n` the crossing interpolated in log-log between the length before it and `from`, and `about`
 * that to two digits (unless rounding would take it out of that interval) for the page. */
function benchCrossing() {
  const rows = [];
  for (const n of [...new Set(state.bench.map((p) => p.n))]) {
    const at = (m) => state.bench.find((p) => p.n === n && p.method === m && p.ms > 0);
    const luna = at('luna');
    const soft = [at('softmax-flash'), at('softmax-naive')].filter(Boolean).sort((a, b) => a.ms - b.ms)[0];
    if (luna && soft) rows.push({ n, luna: luna.ms, soft: soft.ms, softMethod: soft.method, ratio: soft.ms / luna.ms });
  }
  let k = rows.length;
  while (k > 0 && rows[k - 1].ratio > 1) k--;
  const wins = rows.length - k;
  let n = null;
  let about = null;
  if (wins && k > 0) {
    // log(luna/soft) goes from >= 0 at rows[k-1] to < 0 at rows[k]: where is it 0?
    const [a, b] = [rows[k - 1], rows[k]];
    const t = Math.log(a.ratio) / (Math.log(a.ratio) - Math.log(b.ratio));
    n = a.n * (b.n / a.n) ** t;
    about = +n.toPrecision(2);
    if (about < a.n || about > b.n) about = Math.round(n);
  }
  return { rows, wins, from: wins ? rows[k] : null, before: wins && k > 0 ? rows[k - 1] : null, n, about, last: rows[rows.length - 1] ?? null };
}

async function runBench() {
  clearNotice();
  const plan = benchPlan(state.adapter.software);
  const options = { ...BENCH_LAYER, repeats: plan.repeats };
  state.bench = [];
  state.benchEnd = null;
  state.benchRunning = true;
  benchStopRequested = false;
  $('bench-summary').hidden = true;
  drawBench();
  const t0 = performance.now();
  const elapsed = () => performance.now() - t0;
  let n = plan.n0;
  let current = `${METHOD_LABELS.luna} at n = ${fmtInt(n)}`;
  const done = busy(() => `Timing ${current}`);
  let active = [...METHODS];   // the methods still being timed
  let end = null;
  while (!end) {
    // Predict this length's points from the lengths before; Luna and fused softmax go together.
    const next = {};
    for (const m of active) if (measured(m).length) next[m] = predictNext(m, plan.repeats);
    const pair = [next.luna, next['softmax-flash']].filter(Boolean);
    const pairMs = pair.reduce((s, p) => s + p.wallMs, 0);
    const leftMs = plan.totalS * 1000 - elapsed();
    const slowest = pair.sort((a, b) => b.wallMs - a.wallMs)[0];
    if (slowest && (slowest.wallMs > plan.pointS * 1000 || pairMs > leftMs)) {
      end = { why: 'budget', next: slowest, over: slowest.wallMs > plan.pointS * 1000 ? 'point' : 'total', leftMs };
      break;
    }
    // Naive softmax is left out once it would not fit the budget.
    const naive = next['softmax-naive'];
    if (naive && naive.wallMs > Math.min(plan.pointS * 1000, leftMs - pairMs)) {
      state.bench.push({ method: naive.method, n, skipped: `left out: would take about ${fmtDuration(naive.wallMs)}` });
      active = active.filter((m) => m !== naive.method);
      drawBench();
    }
    for (const m of active) {
      if (benchStopRequested) { end = { why: 'stopped' }; break; }
      current = `${METHOD_LABELS[m]} at n = ${fmtInt(n)}${next[m] ? ` (about ${fmtDuration(next[m].wallMs)})` : ''}`;
      const t = performance.now();
      try {
        const p = await state.engine.benchmark(m, n, options);
        state.bench.push({ ...p, wallMs: performance.now() - t });
      } catch (e) {
        const err = errorOf(e);
        if (err.kind !== 'too-large' && err.kind !== 'out-of-memory') {
          state.benchRunning = false;
          done('The comparison stopped.');
          showError(err);
          return;
        }
        state.bench.push({ method: m, n, skipped: 'does not fit on this adapter' });
        active = active.filter((x) => x !== m);
        if (m !== 'softmax-naive') { end = { why: 'too-large', method: m, at: n }; break; }
      }
      drawBench();
    }
    if (!end && benchCrossing().wins > AFTER_CROSSING) end = { why: 'done' };
    if (!end && 2 * n > MAX_N) end = { why: 'max' };
    n *= 2;
  }
  const lastN = Math.max(...measured('luna').map((p) => p.n), 0);
  state.benchEnd = { ...end, n: lastN, seconds: elapsed() / 1000 };
  state.benchRunning = false;
  const summary = benchSummary(state.benchEnd, plan);
  $('bench-summary').textContent = summary;
  $('bench-summary').hidden = false;
  drawBench();
  done(summary);
}

/** In words: where the comparison stopped and why, and where Luna overtook softmax. */
function benchSummary(end, plan) {
  const c = benchCrossing();
  const secs = fmtDuration(end.seconds * 1000);
  const adapter = state.adapter.software ? 'this software adapter' : 'this adapter';
  let stop;
  if (end.why === 'done') stop = `Stopped at n = ${fmtInt(end.n)}, ${AFTER_CROSSING} lengths past the crossing, after ${secs}.`;
  else if (end.why === 'budget') {
    const p = end.next;
    stop = `Stopped at n = ${fmtInt(end.n)} after ${secs}: on ${adapter} the next point (${METHOD_LABELS[p.method]} at n = ${fmtInt(p.n)}) `
      + `would take about ${fmtDuration(p.wallMs)}, ${end.over === 'point' ? `over the ${plan.pointS} s a point may take`
        : `more than the ${fmtDuration(Math.max(0, end.leftMs))} left of the ${plan.totalS} s budget`}.`;
  } else if (end.why === 'too-large') stop = `Stopped at n = ${fmtInt(end.n)} after ${secs}: ${METHOD_LABELS[end.method]} does not fit on ${adapter} at n = ${fmtInt(end.at)}.`;
  else if (end.why === 'stopped') stop = `Stopped at n = ${fmtInt(end.n)} after ${secs}, as asked.`;
  else stop = `Stopped at n = ${fmtInt(end.n)}, the longest this page tries, after ${secs}.`;
  if (!c.last) return stop;
  const soft = (r) => METHOD_LABELS[r.softMethod];
  let result;
  if (c.wins && c.before) {
    result = `Luna-16 overtakes ${soft(c.from)} between n = ${fmtInt(c.before.n)} and ${fmtInt(c.from.n)} (the lines cross near n ≈ ${fmtInt(c.about)}) `
      + `and stays ahead: ${c.last.ratio.toFixed(1)}× faster at n = ${fmtInt(c.last.n)}.`;
  } else if (c.wins) {
    result = `Luna-16 was faster than softmax at every length timed, ${c.last.ratio.toFixed(1)}× at n = ${fmtInt(c.last.n)}.`;
  } else {
    result = `Luna-16 was still ${(1 / c.last.ratio).toFixed(1)}× slower than ${soft(c.last)} at n = ${fmtInt(c.last.n)}.`;
    // Where the measured slopes say the lines would cross.
    const [l, s] = [predictNext('luna', plan.repeats), predictNext(c.last.softMethod, plan.repeats)];
    if (measured('luna').length >= 2 && s.slope > l.slope) {
      const at = c.last.n * (1 / c.last.ratio) ** (1 / (s.slope - l.slope));
      result += ` Along the measured slopes (n^${l.slope.toFixed(1)} against n^${s.slope.toFixed(1)}) they would cross near n ≈ ${fmtAbout(at)}.`;
    }
  }
  return `${stop} ${result}`;
}

const METHOD_COLORS = { luna: '#2a5bd7', 'softmax-flash': '#e07b1a', 'softmax-naive': '#b3261e' };

function drawBenchTable() {
  const table = $('bench-table');
  table.innerHTML = '<tr><th>method</th><th>n</th><th>time</th><th>tokens/s</th><th>GPU peak</th></tr>';
  for (const p of state.bench) {
    const tr = document.createElement('tr');
    tr.innerHTML = p.skipped
      ? `<td>${METHOD_LABELS[p.method]}</td><td>${fmtInt(p.n)}</td><td colspan="3" class="why">${p.skipped}</td>`
      : `<td>${METHOD_LABELS[p.method]}</td><td>${fmtInt(p.n)}</td><td>${fmtMs(p.ms)}</td><td>${fmtInt(p.tokensPerSecond)}</td><td>${fmtBytes(p.peakBytes)}</td>`;
    table.append(tr);
  }
}

/** Time per forward pass against n, both on log scales: n in powers of two, time in 1-2-5 ticks,
 * the crossing (from where Luna is faster) shaded, and the point that was predicted and not run. */
function drawBench() {
  drawBenchTable();
  const svg = $('bench-chart');
  const H = 280;
  const W = chartFrame(svg, H);
  // The legend, in rows across the top.
  let lx = 8;
  let ly = 16;
  for (const m of METHODS) {
    const w = 20 + textWidth(METHOD_LABELS[m]);
    if (lx > 8 && lx + w > W - 8) { lx = 8; ly += 16; }
    svg.append(svgEl('line', { x1: lx, y1: ly - 4, x2: lx + 15, y2: ly - 4, stroke: METHOD_COLORS[m], 'stroke-width': 2 }));
    svg.append(svgEl('text', { x: lx + 20, y: ly }, METHOD_LABELS[m]));
    lx += w + 16;
  }
  svg.append(svgEl('text', { x: 8, y: ly + 20, fill: '#667' }, 'time per forward pass (log scale)'));
  const [T, B, R] = [ly + 30, 36, 12];
  const pts = state.bench.filter((p) => p.ms > 0);
  const next = state.benchEnd?.next;   // the point predicted and not run
  if (!pts.length) {
    svg.append(svgEl('line', { x1: 50, y1: H - B, x2: W - R, y2: H - B, stroke: '#889' }));
    svg.append(svgEl('line', { x1: 50, y1: T, x2: 50, y2: H - B, stroke: '#889' }));
    return;
  }
  const all = next ? [...pts, next] : pts;
  const ns = all.map((p) => p.n);
  const ms = all.map((p) => p.ms);
  // Time: log10, from the 1-2-5 value below the fastest point to the one above the slowest (so there are ticks at both ends).
  const [ylo, yhi] = [round125(Math.min(...ms) / 1.15, Math.floor), round125(Math.max(...ms) * 1.15, Math.ceil)];
  const yt = logTicks(ylo, yhi, (H - T - B) / Math.log10(yhi / ylo));
  const L = 10 + Math.max(...yt.map((v) => textWidth(fmtMsTick(v))));
  const y = (t) => H - B - Math.log10(t / ylo) / Math.log10(yhi / ylo) * (H - T - B);
  // n: log2, half an octave of room at each end for the end labels.
  const [x0, x1] = [Math.log2(Math.min(...ns)) - 0.5, Math.log2(Math.max(...ns)) + 0.5];
  const pxPerOctave = (W - L - R) / (x1 - x0);
  const x = (n) => L + (Math.log2(n) - x0) * pxPerOctave;

  // Where Luna is faster: shaded from the crossing on.
  const c = benchCrossing();
  if (c.n) {
    const xc = x(c.n);
    svg.append(svgEl('rect', { x: xc, y: T, width: W - R - xc, height: H - B - T, fill: '#eaf0fc' }));
    svg.append(svgEl('line', { x1: xc, y1: T, x2: xc, y2: H - B, stroke: METHOD_COLORS.luna, 'stroke-dasharray': '4 3' }));
    // Labelled in its bottom-right corner, where the lines (time grows with n) are not; on two lines when narrow.
    const one = `Luna-16 faster from n ≈ ${fmtInt(c.about)}`;
    const lines = textWidth(one) + 12 <= W - R - xc ? [one] : ['Luna-16 faster', `from n ≈ ${fmtInt(c.about)}`];
    lines.forEach((t, i) => svg.append(svgEl('text', { x: W - R - 5, y: H - B - 6 - 14 * (lines.length - 1 - i), 'text-anchor': 'end', fill: METHOD_COLORS.luna }, t)));
  }
  // Grid and ticks: every power of two on n (labelled every other one when they would crowd).
  for (const v of yt) {
    svg.append(svgEl('line', { x1: L, y1: y(v), x2: W - R, y2: y(v), stroke: '#e3e6ec' }));
    svg.append(svgEl('text', { x: L - 5, y: y(v) + 4, 'text-anchor': 'end' }, fmtMsTick(v)));
  }
  const [e0, e1] = [Math.ceil(x0), Math.floor(x1)];
  const every = Math.ceil((textWidth(fmtInt(2 ** e1)) + 8) / pxPerOctave);
  for (let e = e0; e <= e1; e++) {
    svg.append(svgEl('line', { x1: x(2 ** e), y1: H - B, x2: x(2 ** e), y2: H - B + 4, stroke: '#889' }));
    if ((e1 - e) % every === 0) svg.append(svgEl('text', { x: x(2 ** e), y: H - B + 15, 'text-anchor': 'middle' }, fmtInt(2 ** e)));
  }
  svg.append(svgEl('line', { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: '#889' }));
  svg.append(svgEl('line', { x1: L, y1: T, x2: L, y2: H - B, stroke: '#889' }));
  svg.append(svgEl('text', { x: (L + W - R) / 2, y: H - 4, 'text-anchor': 'middle', fill: '#667' }, 'sequence length n (log scale)'));

  // The lines: one polyline per method (the end-to-end test counts them).
  for (const m of METHODS) {
    const mp = pts.filter((p) => p.method === m);
    if (!mp.length) continue;
    const color = METHOD_COLORS[m];
    svg.append(svgEl('polyline', { points: mp.map((p) => `${x(p.n).toFixed(1)},${y(p.ms).toFixed(1)}`).join(' '), fill: 'none', stroke: color, 'stroke-width': 2 }));
    for (const p of mp) svg.append(svgEl('circle', { cx: x(p.n), cy: y(p.ms), r: 3, fill: color }));
  }
  // The point that would have taken too long: dashed, hollow, said so.
  if (next) {
    const last = measured(next.method).pop();
    const color = METHOD_COLORS[next.method];
    const [cx, cy] = [x(next.n), y(next.ms)];
    svg.append(svgEl('line', { x1: x(last.n), y1: y(last.ms), x2: cx, y2: cy, stroke: color, 'stroke-width': 1.5, 'stroke-dasharray': '4 3' }));
    svg.append(svgEl('circle', { cx, cy, r: 3.5, fill: '#fff', stroke: color, 'stroke-width': 1.5 }));
    svg.append(svgEl('text', { x: cx - 7, y: cy, 'text-anchor': 'end', fill: color }, 'predicted, not run'));
  }
}

// ---------------------------------------------------------------- wiring

async function loadSample() {
  const done = busy('Fetching the sample');
  try {
    const r = await fetch(SAMPLE);
    if (!r.ok) throw { kind: 'fetch', message: `could not fetch ${SAMPLE}: HTTP ${r.status}` };
    $('text').value = await r.text();
    done('The sample is in. Score it, or edit it first.');
  } catch (e) {
    done('');
    showError(e);
  }
  updateDocStats();
}

async function openTextFile(file) {
  $('text').value = await file.text();
  setStatus(`Opened ${file.name}.`);
  updateDocStats();
}

// Redraw a chart when its width changes (a narrower window, a panel shown).
const chartWidths = new Map();
const chartResize = new ResizeObserver((entries) => {
  for (const e of entries) {
    const w = Math.round(e.contentRect.width);
    if (!w || chartWidths.get(e.target) === w) continue;
    chartWidths.set(e.target, w);
    if (e.target.id === 'mem-chart' && state.generation) drawMemChart(state.generation.series);
    if (e.target.id === 'bench-chart' && state.bench.length) drawBench();
    if (e.target.id === 'position-chart' && state.position) drawPosition();
  }
});
chartResize.observe($('position-chart'));
chartResize.observe($('mem-chart'));
chartResize.observe($('bench-chart'));
$('sample-btn').onclick = loadSample;
$('score-btn').onclick = () => score();
$('pack-btn').onclick = showPack;
$('color-by-pack').onchange = async () => {
  const done = busy('Repainting');
  await repaintPack();
  done('');
};
$('gen-btn').onclick = generate;
$('stop-btn').onclick = () => { stopRequested = true; };
$('score-stop-btn').onclick = () => { if (state.scoring) state.scoring.abort(); };
$('bench-btn').onclick = runBench;
$('bench-stop-btn').onclick = () => { benchStopRequested = true; updateControls(); };
$('random-btn').onclick = async () => {
  clearNotice();
  const done = busy('Making a model with random weights');
  try { await useRandom(); done('Using random weights.'); } catch (e) { done(''); showError(e); }
};
$('text').addEventListener('input', updateDocStats);
$('text-file').onchange = (e) => { if (e.target.files[0]) openTextFile(e.target.files[0]); e.target.value = ''; };
$('model-file').onchange = async (e) => {
  const f = e.target.files[0];
  e.target.value = '';
  if (f) await loadModelFile(new Uint8Array(await f.arrayBuffer()), f.name);
};
document.addEventListener('dragover', (e) => { e.preventDefault(); document.body.classList.add('dragging'); });
document.addEventListener('dragleave', (e) => { if (!e.relatedTarget) document.body.classList.remove('dragging'); });
document.addEventListener('drop', async (e) => {
  e.preventDefault();
  document.body.classList.remove('dragging');
  const f = e.dataTransfer.files[0];
  if (!f || state.phase !== 'ready' || state.busy) return;
  if (f.name.endsWith('.safetensors')) await loadModelFile(new Uint8Array(await f.arrayBuffer()), f.name);
  else await openTextFile(f);
});

async function start() {
  setStatus('Loading the WebAssembly module…');
  try {
    await init();
  } catch (e) {
    showError({ kind: 'fetch', message: `The WebAssembly package did not load (${e.message}). Build it with web/build.sh.` });
    state.phase = 'error';
    return;
  }
  setStatus('Opening WebGPU…');
  try {
    state.engine = await LunaEngine.create();
  } catch (e) {
    showError(e);
    state.phase = 'error';
    setStatus('This page needs WebGPU.');
    $('adapter-chip').textContent = 'adapter: none';
    $('model-chip').textContent = 'model: none';
    return;
  }
  const a = state.engine.adapter;
  state.adapter = a;
  $('adapter-chip').textContent = `adapter: ${[a.vendor, a.architecture, a.name].filter((s) => s && s !== '0').join(' ') || 'WebGPU'}`
    + `${a.software ? ' (software)' : ''}, one binding up to ${fmtBytes(a.maxStorageBufferBindingSize)}`;
  const url = params.get('model');
  try {
    if (url) {
      setStatus(`Fetching the model ${url}…`);
      useModel(await loadFrom(url, `the model ${url}`), url.split('/').pop(), false);
    } else if (!params.has('random')) {
      // The trained model when the server has it (luna serve serves models/); random weights otherwise.
      const m = await loadFrom(TRAINED_MODEL, 'the trained model').catch((e) => {
        if (errorOf(e).kind !== 'io') throw e;
        return null;
      });
      if (m) useModel(m, TRAINED_MODEL.split('/').pop(), false);
    }
  } catch (e) {
    showError(e);
  }
  if (!state.model) await useRandom();
  state.phase = 'ready';
  updateControls();
  if (!state.error) setStatus('Ready: pick the sample, paste a document or drop a file, then Score.');
  else setStatus('Ready (with random weights, see above).');
}

start()
  .catch((e) => { showError(e); state.phase = 'error'; })
  .finally(() => { updateControls(); readyResolve(state.phase); });
