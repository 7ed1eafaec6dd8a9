// The page's side of the worker example: it only posts messages and paints
// what comes back, so it stays responsive whatever the engine is doing.
const $ = (id) => document.getElementById(id);
const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });

let nextId = 1;
const pending = new Map();

/** Sends a request to the worker: a promise of its result; `onProgress(done, total)` hears its progress. */
function request(msg, onProgress) {
  const id = nextId++;
  const promise = new Promise((resolve, reject) => pending.set(id, { resolve, reject, onProgress }));
  worker.postMessage({ ...msg, id });
  return { id, promise };
}

worker.onmessage = ({ data: msg }) => {
  const call = pending.get(msg.id);
  if (!call) return;
  if (msg.type === 'progress') return call.onProgress?.(msg.done, msg.total);
  pending.delete(msg.id);
  if (msg.type === 'done') call.resolve(msg.result);
  else call.reject(Object.assign(new Error(msg.message), { name: 'LunaError', kind: msg.kind }));
};

/** Fills the progress bar; without a total (a download of unknown size) it shows activity only. */
function showProgress(done, total) {
  if (total) {
    $('progress').max = total;
    $('progress').value = done;
  } else {
    $('progress').removeAttribute('value');
  }
}

async function load() {
  const url = new URLSearchParams(location.search).get('model') ?? '/models/luna-pydoc-bytes.safetensors';
  $('status').textContent = `Loading ${url}…`;
  try {
    const m = await request({ type: 'load', url }, showProgress).promise;
    $('status').textContent = `Ready: a ${m.kind} on ${m.adapter || 'WebGPU'}.`;
    $('score').disabled = false;
  } catch (e) {
    $('status').textContent = `Could not load the model (${e.kind}): ${e.message}`;
  }
}

let scoring = null;
$('score').onclick = async () => {
  $('score').disabled = true;
  $('stop').disabled = false;
  $('status').textContent = 'Scoring…';
  scoring = request({ type: 'score', text: $('text').value }, (done, total) => {
    showProgress(done, total);
    $('status').textContent = `Scoring: ${done} of ${total} tokens`;
  });
  try {
    const r = await scoring.promise;
    $('status').textContent = `${r.bitsPerByte.toFixed(3)} bits per byte over ${r.tokens} tokens in ${r.ms.toFixed(0)} ms.`;
  } catch (e) {
    $('status').textContent = e.kind === 'aborted' ? 'Stopped.' : `Scoring failed (${e.kind}): ${e.message}`;
  } finally {
    scoring = null;
    $('score').disabled = false;
    $('stop').disabled = true;
  }
};
$('stop').onclick = () => {
  if (scoring) worker.postMessage({ type: 'abort', id: scoring.id });
};

load();
