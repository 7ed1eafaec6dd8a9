//! Scores a whole document in one pass on the GPU with the shipped byte-level
//! Luna LM, the native twin of the browser demo (web/index.html).
//!
//!     cargo run --release --example long_document                 # the bundled sample, Julius Caesar (114 KB)
//!     cargo run --release --example long_document -- FILE [--out REPORT.html] [--model MODEL.safetensors] [--all]
//!
//! On a software adapter (no GPU) it reads as much of the document as about
//! a minute allows, measured on this machine first, and says so; `--all`
//! reads all of it. A progress bar shows on a terminal.
//!
//! It prints the document's length, the time and tokens/s of the pass, the GPU
//! memory, the bits per byte (overall and by position range) and the most and
//! least surprising passages, and writes a self-contained HTML report (default
//! target/demos/long_document.html): a chart of bits per byte against position
//! in the document (position_chart.rs), the text painted by surprisal, and heat
//! strips of what the packed slots read, aligned with the document. The pass that scores the document also
//! captures the pack weights of every layer, so the document is read once.

#[path = "position_chart.rs"]
pub mod position_chart;

use luna_wgpu::PackWeights;
use luna_wgpu::tokenizer::Tokenizer;
use luna_wgpu::{shipped, AdapterChoice, Engine, LunaError, Model};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct Options {
    pub file: Option<PathBuf>,
    pub out: PathBuf,
    pub model: Option<PathBuf>,
    /// About how long the pass may take on a software adapter: the part of
    /// the document read is cut to fit; `None` (`--all`) reads all of it.
    pub budget: Option<f64>,
}

/// How long the pass may take on a software adapter without `--all`.
pub const SOFTWARE_BUDGET_SECONDS: f64 = 60.0;
/// Tokens of the pass that measures a software adapter's speed.
const CALIBRATION_TOKENS: usize = 2048;

/// A stretch of the document: bytes `start..end`, its mean bits per byte.
pub struct Passage {
    pub start: usize,
    pub end: usize,
    pub bits_per_byte: f64,
    pub text: String,
}

pub struct Scored {
    /// Bytes read and scored: all of the document's, or its first part.
    pub bytes: usize,
    /// Bytes of the whole document.
    pub document_bytes: usize,
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_second: f64,
    /// Peak bytes of GPU buffers during the pass, the model's weights included.
    pub peak_bytes: u64,
    /// Of those, the pack weights captured for the report.
    pub pack_bytes: u64,
    pub bits_per_byte: f64,
    /// Surprisal of each byte (NaN for a first byte without context).
    pub byte_bits: Vec<f64>,
    /// Bits per byte by range of position in the document, then over all of it.
    pub by_position: Vec<position_chart::RangeMean>,
    pub most: Vec<Passage>,
    pub least: Vec<Passage>,
    pub adapter: String,
    pub report: PathBuf,
}

/// Bytes per passage in the lists of most and least surprising ones.
const PASSAGE: usize = 96;
/// Strips shown per layer: the (head, slot) pairs whose weights vary most along the document.
const STRIPS_PER_LAYER: usize = 6;
/// Most columns of a heat strip.
const MAX_BINS: usize = 1000;

fn parse(args: &[String]) -> luna_wgpu::Result<Options> {
    let mut o = Options { file: None, out: PathBuf::from("target/demos/long_document.html"), model: None, budget: Some(SOFTWARE_BUDGET_SECONDS) };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().map(PathBuf::from).ok_or_else(|| LunaError::Input(format!("{a} needs a value")));
        match a.as_str() {
            "--out" => o.out = value()?,
            "--model" => o.model = Some(value()?),
            "--all" => o.budget = None,
            flag if flag.starts_with("--") => return Err(LunaError::Input(format!("unknown option {flag}; see the top of demos/long_document.rs"))),
            _ if o.file.is_none() => o.file = Some(PathBuf::from(a)),
            _ => return Err(LunaError::Input(format!("one document at a time: {a:?} is a second one"))),
        }
    }
    Ok(o)
}

pub fn run(o: &Options) -> luna_wgpu::Result<Scored> {
    let path = o.file.clone().map_or_else(shipped::sample_path, Ok)?;
    let mut bytes = luna_wgpu::tensors::read_file(&path)?;
    let document_bytes = bytes.len();
    let model = Model::load(&o.model.clone().map_or_else(shipped::model_path, Ok)?)?;
    let tok = Tokenizer::from_model(&model)?.ok_or_else(|| LunaError::Input("this model has no tokenizer".into()))?;
    if bytes.is_empty() || (bytes.len() < 2 && tok.bos.is_none()) {
        return Err(LunaError::Input(format!("{} has nothing to score: give a document of a few bytes at least", path.display())));
    }
    let mut engine = Engine::new_blocking(&AdapterChoice::from_arg_or_env(None))?;
    let adapter = luna_wgpu::gpu::describe(&engine.ctx.info);
    let gpu = engine.load(&model)?;
    let layers: Vec<usize> = (0..model.config.num_layers).collect();
    let mut ids = tok.encode_with_bos(&bytes);
    // The first byte's token: 1 after bos, else 0 (and the first byte is not scored).
    let offset = ids.len() - bytes.len();

    // Pipelines are built on first use: a short warm-up keeps that out of the timing.
    engine.score_with_pack_weights_blocking(&gpu, &model, &ids[..ids.len().min(256)], &layers)?;
    let budget = o.budget.filter(|_| engine.ctx.info.device_type == wgpu::DeviceType::Cpu);
    if let Some(seconds) = budget.filter(|_| ids.len() > CALIBRATION_TOKENS) {
        // A software adapter: as much of the document as the budget allows at the speed measured here.
        let t = Instant::now();
        engine.score_with_pack_weights_blocking(&gpu, &model, &ids[..CALIBRATION_TOKENS], &layers)?;
        let per_second = CALIBRATION_TOKENS as f64 / t.elapsed().as_secs_f64();
        let keep = whole_lines(&bytes, (per_second * seconds) as usize);
        bytes.truncate(keep);
        ids.truncate(keep + offset);
    }
    engine.release_workspace();
    engine.reset_peak_memory();
    let t = Instant::now();
    let what = format!("reading {}", path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    let (bits, pack) = luna_wgpu::progress_bar::with_progress(&mut engine, &what, ids.len(), |e| {
        e.score_with_pack_weights_blocking(&gpu, &model, &ids, &layers)
    })?;
    let seconds = t.elapsed().as_secs_f64();
    let (_, peak_bytes) = engine.memory();
    let pack_bytes = pack.iter().map(|p| p.values.len() as u64 * 4).sum();

    // bits[t] is the surprisal of token t + 1, which is byte t + 1 - offset.
    let mut byte_bits = vec![f64::NAN; bytes.len()];
    for (t, &b) in bits.iter().enumerate().take(ids.len() - 1) {
        byte_bits[t + 1 - offset] = b as f64;
    }
    let bits_per_byte = position_chart::mean_finite(byte_bits.iter().copied()).unwrap_or(f64::NAN);
    let by_position = position_chart::range_means(&byte_bits);
    let (most, least) = passages(&bytes, &byte_bits);
    let report = o.out.clone();
    write_report(&report, &path, &bytes, document_bytes, &byte_bits, &pack, offset, bits_per_byte, &adapter)?;
    Ok(Scored {
        bytes: bytes.len(),
        document_bytes,
        tokens: ids.len(),
        seconds,
        tokens_per_second: ids.len() as f64 / seconds,
        peak_bytes,
        pack_bytes,
        bits_per_byte,
        byte_bits,
        by_position,
        most,
        least,
        adapter,
        report,
    })
}

/// The first `at_most` bytes of `bytes` (all of them if fewer), cut after
/// the last line end when there is one in the second half, else at a
/// character boundary.
fn whole_lines(bytes: &[u8], at_most: usize) -> usize {
    if at_most >= bytes.len() {
        return bytes.len();
    }
    let mut end = at_most.max(1);
    if let Some(nl) = bytes[end / 2..end].iter().rposition(|&b| b == b'\n') {
        return end / 2 + nl + 1;
    }
    while end > 1 && (bytes[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    end
}

/// The text of bytes `start..end`, widened to whole UTF-8 characters, on one line.
fn excerpt(bytes: &[u8], mut start: usize, mut end: usize) -> String {
    while start > 0 && (bytes[start] & 0xC0) == 0x80 {
        start -= 1;
    }
    while end < bytes.len() && (bytes[end] & 0xC0) == 0x80 {
        end += 1;
    }
    String::from_utf8_lossy(&bytes[start..end]).replace('\n', " ⏎ ")
}

/// The three most and three least surprising non-overlapping passages of `PASSAGE` bytes.
fn passages(bytes: &[u8], bits: &[f64]) -> (Vec<Passage>, Vec<Passage>) {
    let w = PASSAGE.min(bytes.len());
    let step = (w / 4).max(1);
    let mut windows: Vec<(f64, usize)> = (0..=bytes.len() - w)
        .step_by(step)
        .filter_map(|s| position_chart::mean_finite(bits[s..s + w].iter().copied()).map(|m| (m, s)))
        .collect();
    windows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let pick = |order: &mut dyn Iterator<Item = &(f64, usize)>| {
        let mut chosen: Vec<Passage> = Vec::new();
        for &(mean, s) in order {
            if chosen.len() == 3 {
                break;
            }
            if chosen.iter().all(|p| s + w <= p.start || s >= p.end) {
                chosen.push(Passage { start: s, end: s + w, bits_per_byte: mean, text: excerpt(bytes, s, s + w) });
            }
        }
        chosen
    };
    (pick(&mut windows.iter()), pick(&mut windows.iter().rev()))
}

/// The characters of the document with their byte ranges (bytes that are not
/// UTF-8 stand for themselves as Latin-1).
fn characters(bytes: &[u8]) -> Vec<(char, usize, usize)> {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.char_indices().map(|(i, c)| (c, i, i + c.len_utf8())).collect(),
        Err(_) => bytes.iter().enumerate().map(|(i, &b)| (b as char, i, i + 1)).collect(),
    }
}

fn escape(c: char, out: &mut String) {
    match c {
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '&' => out.push_str("&amp;"),
        '"' => out.push_str("&quot;"),
        c => out.push(c),
    }
}

/// Colour bucket of a surprisal: 0 (expected) to 11 (8 bits and more).
fn bucket(bits: f64) -> usize {
    if bits.is_nan() {
        0
    } else {
        ((bits / 8.0 * 11.0).round() as usize).min(11)
    }
}

/// Per column of a strip over `bins` columns: the mean of `value(byte)` over its bytes.
fn binned(len: usize, bins: usize, value: impl Fn(usize) -> f64) -> Vec<f64> {
    (0..bins)
        .map(|k| {
            let (a, b) = (k * len / bins, ((k + 1) * len / bins).max(k * len / bins + 1));
            position_chart::mean_finite((a..b).map(&value)).unwrap_or(0.0)
        })
        .collect()
}

/// A strip scaled to integers 0..=99 between its own minimum and maximum.
fn scaled(v: &[f64]) -> String {
    let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let span = if hi > lo { hi - lo } else { 1.0 };
    v.iter().map(|x| (((x - lo) / span) * 99.0).round().to_string()).collect::<Vec<_>>().join(",")
}

#[allow(clippy::too_many_arguments)]
fn write_report(
    out: &Path,
    source: &Path,
    bytes: &[u8],
    document_bytes: usize,
    byte_bits: &[f64],
    pack: &[PackWeights],
    offset: usize,
    bits_per_byte: f64,
    adapter: &str,
) -> luna_wgpu::Result<()> {
    let io = |e| LunaError::Io { path: out.display().to_string(), source: e };
    let bins = bytes.len().min(MAX_BINS);
    // Strips: surprisal, then per layer the (head, slot) pairs whose binned
    // weights vary most (largest standard deviation over mean) along the text.
    // Each strip: a short label that fits its column, the long one as its tooltip, its values.
    let mut strips = vec![(
        "surprisal".to_string(),
        format!("surprisal in bits per byte ({bits_per_byte:.2} on average)"),
        scaled(&binned(bytes.len(), bins, |i| byte_bits[i])),
    )];
    for p in pack {
        let mut ranked: Vec<(f64, usize, usize, Vec<f64>)> = Vec::new();
        for h in 0..p.heads {
            for j in 0..p.proj_len {
                let v = binned(bytes.len(), bins, |i| p.get(i + offset, h, j) as f64);
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
                ranked.push((sd / mean.max(1e-12), h, j, v));
            }
        }
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (cv, h, j, v) in ranked.into_iter().take(STRIPS_PER_LAYER) {
            strips.push((
                format!("layer {} · head {h} · slot {j}", p.layer),
                format!("the pack weight of layer {}, head {h}, slot {j} (spread along the text {cv:.2})", p.layer),
                scaled(&v),
            ));
        }
    }

    let rows = position_chart::range_means(byte_bits);
    let mut html = String::with_capacity(bytes.len() * 12);
    let name = source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let _ = write!(
        html,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Luna surprisal: {name}</title><style>
body{{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:70em;padding:1em 2em;color:#222}}
h1{{font-size:1.3em}} .note{{color:#555}} canvas{{flex:1;min-width:0;height:12px;cursor:pointer;image-rendering:pixelated;border:1px solid #eee}}
.strip{{display:flex;align-items:center;gap:.6em;margin:2px 0}} .strip div{{flex:0 0 auto;min-width:13em;font-size:11px;color:#444;white-space:nowrap}}
#strips{{position:sticky;top:0;background:#fff;padding:.3em 0;border-bottom:1px solid #ccc;max-height:45vh;overflow:auto}}
#text{{white-space:pre-wrap;font:13px/1.5 ui-monospace,monospace;padding-top:1em}}
.legend span{{display:inline-block;width:2.2em;text-align:center;font-size:11px}}
figure{{margin:1em 0}} .position-chart{{display:block;width:100%;max-width:760px;height:auto;background:#fbfbfd;border:1px solid #ddd;border-radius:6px}}
figcaption{{color:#555;max-width:760px;margin-top:.4em}} .ranges{{border-collapse:collapse;margin:.6em 0;font-size:13px}}
.ranges td,.ranges th{{padding:2px 10px;border-bottom:1px solid #ddd;text-align:right}} .ranges td:first-child,.ranges th:first-child{{text-align:left}}
{buckets}
</style></head><body>
<h1>Surprisal of <code>{name}</code> under a byte-level Luna LM</h1>
<p class="note">{len} bytes{part} scored in one pass on {adapter}: {bits_per_byte:.3} bits per byte. Each character is painted by its
surprisal, -log2 p(byte | everything before it), summed over its bytes; hover for the value. The strips run along the whole
document, left to right: first the surprisal, then, for each layer, the packed slots whose pack weights vary most along the text
(the weight with which each byte is folded into that slot's running sums). Each strip is scaled between its own minimum and maximum.
Click a strip to jump to that place in the text.</p>
<figure id="by-position">{chart}<figcaption>Bits per byte against position in the document, read in one pass: the dark line is the
running mean (the mean over bytes 1 to <i>p</i>), the light one the mean over the bytes of each window of positions (a quarter octave
wide, at least 16 bytes), the model's quality at that point. The position axis is logarithmic, since context changes most near the
start. With the context it reads the model should do better as the document goes on: a curve that falls or stays flat; one that
rises means the model gets worse as it reads. {trend}</figcaption>{table}</figure>
<p class="legend">bits: {legend}</p>
<div id="strips"></div>
<div id="text">"#,
        len = bytes.len(),
        part = if bytes.len() < document_bytes { format!(" (the first part of {document_bytes}: about a minute on this software adapter; <code>--all</code> reads the whole document)") } else { String::new() },
        adapter = adapter.replace('<', "&lt;"),
        buckets = (0..12).map(|b| format!(".b{b}{{background:{}}}", colour(b))).collect::<String>(),
        chart = position_chart::svg(byte_bits),
        trend = position_chart::trend(&rows).unwrap_or_default(),
        table = position_chart::table_html(&rows),
        legend = (0..12).map(|b| format!("<span class=b{b}>{:.1}</span>", b as f64 * 8.0 / 11.0)).collect::<String>(),
    );
    // The text: runs of characters of one colour, each with its surprisal in the title.
    let chars = characters(bytes);
    let bits_of = |k: usize| {
        let (_, a, b) = chars[k];
        let v: Vec<f64> = byte_bits[a..b].iter().copied().filter(|v| !v.is_nan()).collect();
        if v.is_empty() { f64::NAN } else { v.iter().sum() }
    };
    // Anchor k (where a click on column k of a strip jumps) sits before the character holding byte k·len/bins.
    let mut marker = 0;
    let marker_due = |marker: usize, k: usize| marker < bins && marker * bytes.len() / bins <= chars[k].1;
    let mut i = 0;
    while i < chars.len() {
        while marker_due(marker, i) {
            let _ = write!(html, "<a id=\"k{marker}\"></a>");
            marker += 1;
        }
        let b = bucket(bits_of(i));
        let (mut title, mut body) = (String::new(), String::new());
        let mut j = i;
        while j < chars.len() && (j == i || (bucket(bits_of(j)) == b && !marker_due(marker, j))) {
            let v = bits_of(j);
            let _ = write!(title, "{}{}", if j > i { " " } else { "" }, if v.is_nan() { "–".into() } else { format!("{v:.1}") });
            escape(chars[j].0, &mut body);
            j += 1;
        }
        let _ = write!(html, "<span class=b{b} title=\"{title} bits\">{body}</span>");
        i = j;
    }
    let _ = write!(html, "</div>\n<script>\nconst STRIPS = [");
    for (label, about, values) in &strips {
        let json = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let _ = writeln!(html, "[{},{},[{values}]],", json(label), json(about));
    }
    let _ = write!(
        html,
        r#"];
const box = document.getElementById('strips');
for (const [label, about, v] of STRIPS) {{
  const d = document.createElement('div'); d.className = 'strip';
  const t = document.createElement('div'); t.textContent = label; t.title = about; d.appendChild(t);
  const c = document.createElement('canvas'); c.width = v.length; c.height = 1; d.appendChild(c); box.appendChild(d);
  const g = c.getContext('2d'); const img = g.createImageData(v.length, 1);
  v.forEach((x, i) => {{ const s = x / 99; img.data.set([255 - 40 * s, 255 - 170 * s, 255 - 230 * s, 255], 4 * i); }});
  g.putImageData(img, 0, 0);
  const at = e => Math.min(v.length - 1, Math.floor(e.offsetX / c.clientWidth * v.length));
  c.onmousemove = e => {{ c.title = `${{Math.round(100 * at(e) / v.length)}}% into the document: ${{v[at(e)]}} on this strip's 0-99 scale`; }};
  c.onclick = e => {{ const a = document.getElementById('k' + at(e)); if (a) a.scrollIntoView({{block: 'end'}}); }};
}}
</script></body></html>
"#
    );
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(out, html).map_err(io)
}

/// Background of bucket `b`: white through yellow to red.
fn colour(b: usize) -> String {
    let s = b as f64 / 11.0;
    format!("rgb({},{},{})", 255, (255.0 - 180.0 * s) as u8, (255.0 - 235.0 * s.sqrt()) as u8)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let s = match parse(&args).and_then(|o| run(&o)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("adapter:       {}", s.adapter);
    if s.bytes < s.document_bytes {
        println!(
            "document:      the first {} of {} bytes, {} tokens: about a minute on this software adapter (--all reads the whole document)",
            s.bytes, s.document_bytes, s.tokens
        );
    } else {
        println!("document:      {} bytes, {} tokens", s.bytes, s.tokens);
    }
    println!("one pass:      {:.2} s, {:.0} tokens/s (surprisal of every byte and the pack weights of every layer)", s.seconds, s.tokens_per_second);
    println!("GPU memory:    peak {:.1} MiB, of which {:.1} MiB are the captured pack weights", mib(s.peak_bytes), mib(s.pack_bytes));
    println!("bits per byte: {:.4}", s.bits_per_byte);
    print!("by position in the document (a curve in the report):\n{}", position_chart::table_text(&s.by_position));
    println!("most surprising passages:");
    for p in &s.most {
        println!("  {:6.2} bits/byte at byte {:>7}: {}", p.bits_per_byte, p.start, p.text);
    }
    println!("least surprising passages:");
    for p in &s.least {
        println!("  {:6.2} bits/byte at byte {:>7}: {}", p.bits_per_byte, p.start, p.text);
    }
    println!("report:        {}", s.report.display());
}
