// Times the demo page scoring a document in headless Chromium (WebGPU on
// SwiftShader, or whatever adapter the browser finds), with one or more
// builds of the browser package, in turn:
//
//   node web/tests/bench_demo.mjs --model models/luna-pydoc-bytes.safetensors \
//       [--pkg web/pkg] [--pkg OTHER/pkg ...] [--rounds 2] [--bytes 16384] [--text FILE]
//
// Each --pkg is a directory built by web/build.sh (default: web/pkg). The
// page is web/index.html, served with that package; the document is the
// page's bundled sample (or --text), cut to its first --bytes bytes (0: all
// of it). A round loads the page once per package and scores the document
// with the page's Score button; the page's own figures (seconds, tokens/s)
// are printed with the time the page took to load and get the model ready
// (which includes the engine's kernel tuning), then the median score time
// per package. Run it on a quiet machine: the
// software adapter takes both cores.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CHROMIUM = process.env.LUNA_CHROMIUM || '/usr/bin/chromium';

function parseArgs(argv) {
  const a = { pkgs: [], rounds: 2, bytes: 16384, model: null, text: null };
  for (let i = 0; i < argv.length; i++) {
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${argv[i]} needs a value`);
      return argv[++i];
    };
    switch (argv[i]) {
      case '--pkg': a.pkgs.push(path.resolve(next())); break;
      case '--model': a.model = path.resolve(next()); break;
      case '--text': a.text = path.resolve(next()); break;
      case '--rounds': a.rounds = Number(next()); break;
      case '--bytes': a.bytes = Number(next()); break;
      default: throw new Error(`unknown argument ${argv[i]} (see the head of this file)`);
    }
  }
  if (!a.model) throw new Error('--model is required');
  if (!a.pkgs.length) a.pkgs.push(path.join(WEB, 'pkg'));
  if (!(a.rounds >= 1) || !(a.bytes >= 0)) throw new Error('--rounds must be at least 1 and --bytes at least 0');
  for (const p of [a.model, a.text, ...a.pkgs].filter(Boolean)) {
    if (!fs.existsSync(p)) throw new Error(`${p} does not exist`);
  }
  return a;
}

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.wasm': 'application/wasm',
  '.css': 'text/css', '.txt': 'text/plain; charset=utf-8', '.json': 'application/json' };

/** Serves web/ with /pkg/ from `pkg` and /bench-model.safetensors from `model`; resolves to its base URL. */
async function serve(pkg, model) {
  const server = http.createServer((req, res) => {
    const url = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    const [base, rel] = url === '/bench-model.safetensors' ? [path.dirname(model), path.basename(model)]
      : url.startsWith('/pkg/') ? [pkg, url.slice('/pkg/'.length)] : [WEB, url.slice(1) || 'index.html'];
    const file = path.resolve(base, rel);
    if (!file.startsWith(path.resolve(base) + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('not found');
      return;
    }
    res.writeHead(200, { 'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream', 'Cache-Control': 'no-store' });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { server, base: `http://127.0.0.1:${server.address().port}` };
}

async function scoreOnce(browser, base, args) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  const page = await context.newPage();
  const t0 = Date.now();
  await page.goto(`${base}/index.html?model=/bench-model.safetensors`);
  const phase = await page.evaluate(() => window.lunaDemo.ready);
  const loadSeconds = (Date.now() - t0) / 1000;
  if (phase !== 'ready') throw new Error(`the page did not get ready: ${phase}`);
  if (args.text) {
    await page.fill('#text', fs.readFileSync(args.text, 'utf8'));
  } else {
    await page.click('#sample-btn');
    await page.waitForFunction(() => !window.lunaDemo.state.busy && document.getElementById('text').value.length > 0);
  }
  if (args.bytes > 0) {
    await page.evaluate((n) => {
      const el = document.getElementById('text');
      const bytes = new TextEncoder().encode(el.value).slice(0, n);
      el.value = new TextDecoder().decode(bytes).replace(/\uFFFD+$/, '');
      el.dispatchEvent(new Event('input'));
    }, args.bytes);
  }
  await page.click('#score-btn');
  await page.waitForFunction(() => !window.lunaDemo.state.busy, null, { timeout: 3_600_000, polling: 250 });
  const r = await page.evaluate(() => ({ score: window.lunaDemo.state.score, error: window.lunaDemo.state.error,
    summary: document.getElementById('summary').textContent, adapter: document.getElementById('model-chip').textContent }));
  await context.close();
  if (r.error || !r.score) throw new Error(`scoring failed: ${r.error || 'no score'}`);
  return { ...r, loadSeconds };
}

const args = parseArgs(process.argv.slice(2));
const load = () => os.loadavg().map((v) => v.toFixed(2)).join(' ');
console.log(`load average before: ${load()}`);
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-quic'],
});
console.log(`chromium ${browser.version()}; model ${args.model}`);
const servers = [];
for (const pkg of args.pkgs) servers.push({ pkg, ...(await serve(pkg, args.model)) });
const seconds = args.pkgs.map(() => []);
try {
  for (let round = 1; round <= args.rounds; round++) {
    for (const [i, s] of servers.entries()) {
      const r = await scoreOnce(browser, s.base, args);
      const secs = r.score.ms / 1000;
      seconds[i].push(secs);
      console.log(`round ${round}, ${s.pkg}: ${r.summary} (page and model ready in ${r.loadSeconds.toFixed(1)} s)`);
    }
  }
} finally {
  await browser.close();
  for (const s of servers) s.server.close();
}
const median = (v) => [...v].sort((a, b) => a - b)[Math.floor((v.length - 1) / 2)];
for (const [i, s] of servers.entries()) {
  console.log(`median ${median(seconds[i]).toFixed(2)} s over ${seconds[i].length} rounds: ${s.pkg}`);
}
console.log(`load average after: ${load()}`);
