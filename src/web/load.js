// The bytes of a model file for LunaEngine.loadModel (src/web/engine.rs calls
// modelBytes; wasm-bindgen copies this file into the package under snippets/).
// Downloading is JavaScript's job: fetch streams the body, so progress can be
// reported as it arrives; the Cache API can keep the file for the next visit;
// an AbortSignal stops the download. Every failure is thrown as a LunaError:
// an Error named "LunaError" whose kind is "input" (a bad argument), "io" (the
// download failed) or "aborted" (the signal).

/** The Cache API store used when `cache: true`. */
const DEFAULT_CACHE = 'luna-wgpu-models';

function lunaError(kind, message, cause) {
  const e = new Error(message, cause === undefined ? undefined : { cause });
  e.name = 'LunaError';
  e.kind = kind;
  return e;
}

function abortedError(signal, what) {
  return lunaError('aborted', `the call was aborted by its signal (${what}); the engine is free for the next call`, signal.reason);
}

/** Checks the options of loadModel: { onProgress, signal, cache }. */
function checkOptions(options) {
  if (options === undefined || options === null) return {};
  if (typeof options !== 'object') throw lunaError('input', 'the options must be an object such as { onProgress, signal, cache }');
  const { onProgress, signal, cache } = options;
  if (onProgress != null && typeof onProgress !== 'function') throw lunaError('input', 'option onProgress must be a function');
  if (signal != null && !(typeof signal === 'object' && 'aborted' in signal)) {
    throw lunaError('input', 'option signal must be an AbortSignal (from new AbortController().signal)');
  }
  if (cache != null && typeof cache !== 'boolean' && typeof cache !== 'string') {
    throw lunaError('input', 'option cache must be true, false or the name of a Cache API store');
  }
  return { onProgress: onProgress ?? undefined, signal: signal ?? undefined, cache: cache ?? false };
}

/**
 * The bytes of `source`, a `Uint8Array` that may share memory with it:
 * bytes as they are (an ArrayBuffer or a typed array), a Blob or File, a
 * Response, or a URL (string, URL or Request) to download.
 */
export async function modelBytes(source, options) {
  const { onProgress, signal, cache } = checkOptions(options);
  if (signal?.aborted) throw abortedError(signal, 'before it started');
  if (source instanceof Uint8Array) return source;
  if (source instanceof ArrayBuffer) return new Uint8Array(source);
  if (ArrayBuffer.isView(source)) return new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
  if (typeof Blob === 'function' && source instanceof Blob) return new Uint8Array(await source.arrayBuffer());
  if (typeof Response === 'function' && source instanceof Response) return readBody(source, source.url || 'the response', onProgress, signal, false);
  const isUrl = typeof source === 'string' || source instanceof URL || (typeof Request === 'function' && source instanceof Request);
  if (!isUrl) {
    throw lunaError('input', 'loadModel takes the bytes of a model file (Uint8Array, ArrayBuffer, Blob) or where to fetch it (a URL, a string or a Request)');
  }
  return download(source, onProgress, signal, cache);
}

/** Fetches `source`, from the Cache API store when asked and it is there. */
async function download(source, onProgress, signal, cache) {
  let request;
  try {
    request = new Request(source, { signal });
  } catch (e) {
    throw lunaError('input', `${String(source)} is not a URL that can be fetched: ${e.message}`, e);
  }
  const url = request.url;
  // The Cache API exists only in secure contexts (https://, localhost); elsewhere `cache` does nothing.
  const store = cache && typeof caches === 'object' ? await caches.open(cache === true ? DEFAULT_CACHE : cache).catch(() => null) : null;
  const hit = store ? await store.match(request).catch(() => undefined) : undefined;
  if (hit) return readBody(hit, url, onProgress, signal, true);
  let response;
  try {
    response = await fetch(request);
  } catch (e) {
    if (signal?.aborted) throw abortedError(signal, `while fetching ${url}`);
    throw lunaError('io', `could not download ${url}: ${e.message}`, e);
  }
  const bytes = await readBody(response, url, onProgress, signal, false);
  if (store) {
    const headers = { 'Content-Type': response.headers.get('Content-Type') || 'application/octet-stream', 'Content-Length': String(bytes.length) };
    try {
      await store.put(request, new Response(bytes, { headers }));
    } catch (e) {
      // A full or unavailable cache costs the next visit a download, not this one its model.
      console.warn(`luna-wgpu: could not keep ${url} in the cache: ${e.message}`);
    }
  }
  return bytes;
}

/**
 * Reads a response's body as it arrives, telling `onProgress({ loaded, total,
 * fromCache })` after each piece; `total` is undefined when the size is not
 * known (no Content-Length, or a compressed transfer).
 */
async function readBody(response, url, onProgress, signal, fromCache) {
  if (response.bodyUsed) throw lunaError('input', `the body of the Response for ${url} has already been read`);
  if (!response.ok) throw lunaError('io', `could not download ${url}: HTTP ${response.status} ${response.statusText}`.trim());
  const encoding = response.headers.get('Content-Encoding');
  const length = Number(response.headers.get('Content-Length'));
  const total = (!encoding || encoding === 'identity') && Number.isSafeInteger(length) && length > 0 ? length : undefined;
  const report = (loaded) => onProgress?.({ loaded, total, fromCache });
  if (!response.body) {
    const bytes = new Uint8Array(await response.arrayBuffer());
    report(bytes.length);
    return bytes;
  }
  const reader = response.body.getReader();
  const chunks = [];
  let loaded = 0;
  let finished = false;
  try {
    while (!finished) {
      if (signal?.aborted) throw abortedError(signal, `after ${loaded} bytes of ${url}`);
      let step;
      try {
        step = await reader.read();
      } catch (e) {
        if (signal?.aborted) throw abortedError(signal, `after ${loaded} bytes of ${url}`);
        throw lunaError('io', `the download of ${url} broke off after ${loaded} bytes: ${e.message}`, e);
      }
      finished = step.done;
      if (!finished) {
        chunks.push(step.value);
        loaded += step.value.length;
        report(loaded); // what onProgress throws ends the load with it
      }
    }
  } finally {
    if (!finished) reader.cancel().catch(() => {});
  }
  if (chunks.length === 1) return chunks[0];
  const bytes = new Uint8Array(loaded);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.length;
  }
  return bytes;
}
