//! Bits per byte against position in the document, for the long-document
//! report (`long_document.rs`): does the model do better as it reads on, with
//! more context behind each byte, or worse?
//!
//! Two series over the byte position `p` (1-based: the first `p` bytes read),
//! on a log axis, since the early positions are where context changes most:
//! the running mean (the mean bits per byte of bytes `1..=p`) and the mean
//! over log-spaced windows (quarter octaves, at least `MIN_BIN` bytes each),
//! which shows the local quality at a position; and the same means over
//! fixed position ranges, for a table. Bytes without a score (NaN: a first
//! byte without context) count in no mean. `web/position.js` computes the
//! same series for the browser demo, with the same constants.

use std::fmt::Write as _;
use std::ops::Range;

/// The ranges of byte offsets of the table, as in `web/position.js`.
pub const RANGES: [(usize, usize, &str); 5] = [
    (0, 128, "first 128 B"),
    (128, 1 << 10, "128 B–1 KiB"),
    (1 << 10, 8 << 10, "1–8 KiB"),
    (8 << 10, 64 << 10, "8–64 KiB"),
    (64 << 10, usize::MAX, "past 64 KiB"),
];
/// Points per octave of position at which the running mean is drawn (every position below about 46).
const POINTS_PER_OCTAVE: f64 = 32.0;
/// Bins per octave of the windowed mean, and the fewest bytes in one.
const BINS_PER_OCTAVE: f64 = 4.0;
const MIN_BIN: usize = 16;

/// The mean of the finite values, `None` when there are none.
pub fn mean_finite(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.into_iter().filter(|v| v.is_finite()).fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// The running mean at log-spaced positions `p` (every position up to about
/// 46, then 32 per octave, and the last): `(p, mean of bits[..p])`, from the
/// first position with a score on.
pub fn running_mean(bits: &[f64]) -> Vec<(usize, f64)> {
    let mut at: Vec<usize> = Vec::new();
    for k in 0.. {
        let p = 2f64.powf(k as f64 / POINTS_PER_OCTAVE).round() as usize;
        if p >= bits.len() {
            break;
        }
        if at.last() != Some(&p) {
            at.push(p);
        }
    }
    at.push(bits.len());
    let (mut sum, mut n, mut i) = (0.0, 0usize, 0);
    let mut out = Vec::with_capacity(at.len());
    for p in at.into_iter().filter(|&p| p > 0) {
        for &v in &bits[i..p] {
            if v.is_finite() {
                sum += v;
                n += 1;
            }
        }
        i = p;
        if n > 0 {
            out.push((p, sum / n as f64));
        }
    }
    out
}

/// Log-spaced bins of byte offsets that cover `0..len` once, in order: each
/// ends at the first quarter-octave edge (`2^(k/4)`, rounded) at least
/// `MIN_BIN` bytes past its start, so every power of two from 128 on (the
/// ranges' bounds) is an edge; a last bin shorter than `MIN_BIN` joins the one before.
pub fn log_bins(len: usize) -> Vec<Range<usize>> {
    let mut bins: Vec<Range<usize>> = Vec::new();
    let (mut start, mut k) = (0, 0);
    while start < len {
        let mut end;
        loop {
            end = 2f64.powf(k as f64 / BINS_PER_OCTAVE).round() as usize;
            if end >= start + MIN_BIN {
                break;
            }
            k += 1;
        }
        let end = end.min(len);
        match bins.last_mut() {
            Some(last) if end - start < MIN_BIN => last.end = end,
            _ => bins.push(start..end),
        }
        start = end;
    }
    bins
}

/// The mean of each bin of `log_bins(bits.len())`, with the bin (`None` where no byte of it has a score).
pub fn windowed_mean(bits: &[f64]) -> Vec<(Range<usize>, Option<f64>)> {
    log_bins(bits.len()).into_iter().map(|r| (r.clone(), mean_finite(bits[r].iter().copied()))).collect()
}

/// A row of the table: a range of byte offsets, cut to the document.
pub struct RangeMean {
    pub label: String,
    pub range: Range<usize>,
    /// Bytes of the range with a score.
    pub scored: usize,
    pub bits_per_byte: Option<f64>,
}

/// The means over the ranges of `RANGES` that the document reaches, then over the whole document.
pub fn range_means(bits: &[f64]) -> Vec<RangeMean> {
    let row = |label: &str, r: Range<usize>| RangeMean {
        label: label.to_string(),
        scored: bits[r.clone()].iter().filter(|v| v.is_finite()).count(),
        bits_per_byte: mean_finite(bits[r.clone()].iter().copied()),
        range: r,
    };
    let mut rows: Vec<RangeMean> =
        RANGES.iter().filter(|r| r.0 < bits.len()).map(|&(a, b, label)| row(label, a..b.min(bits.len()))).collect();
    rows.push(row("whole document", 0..bits.len()));
    rows
}

fn fmt_mean(m: Option<f64>) -> String {
    m.map_or_else(|| "–".into(), |v| format!("{v:.3}"))
}

/// The table for a terminal, one line per range.
pub fn table_text(rows: &[RangeMean]) -> String {
    let mut s = String::new();
    for r in rows {
        let _ = writeln!(s, "  {:<16} {:>9} bytes  {:>6} bits/byte", r.label, r.range.len(), fmt_mean(r.bits_per_byte));
    }
    s
}

/// The table as HTML (`<table class="ranges">`).
pub fn table_html(rows: &[RangeMean]) -> String {
    let mut s = String::from("<table class=\"ranges\"><tr><th>bytes of the document</th><th>offsets</th><th>bytes</th><th>bits per byte</th></tr>");
    for r in rows {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}–{}</td><td>{}</td><td>{}</td></tr>",
            r.label,
            r.range.start,
            r.range.end.saturating_sub(1),
            r.range.len(),
            fmt_mean(r.bits_per_byte)
        );
    }
    s.push_str("</table>");
    s
}

/// A byte count for a tick: "16 B", "128 B", "1 KiB", "64 KiB", "4 MiB".
fn fmt_size(b: usize) -> String {
    match b {
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// The chart as an inline SVG: position (log) across, bits per byte up; the
/// running mean as a dark line (`class="running"`, one point per entry of
/// `running_mean`), the windowed mean as a light one (`class="windowed"`),
/// a legend, ticks every three octaves (2 B, 16 B, 128 B, 1 KiB…).
pub fn svg(bits: &[f64]) -> String {
    let (w, h) = (760.0, 300.0);
    let (l, r, t, b) = (52.0, 18.0, 36.0, 46.0);
    let running = running_mean(bits);
    let windows: Vec<(f64, f64)> =
        windowed_mean(bits).into_iter().filter_map(|(r, m)| m.map(|m| ((((r.start + 1) * r.end) as f64).sqrt(), m))).collect();
    let top = running.iter().map(|p| p.1).chain(windows.iter().map(|p| p.1)).fold(1.0f64, f64::max);
    let step = if top > 10.0 { 2.0 } else { 1.0 };
    let ymax = (top / step).ceil() * step;
    let span = (bits.len().max(2) as f64).log2();
    let x = |p: f64| l + p.log2() / span * (w - l - r);
    let y = |v: f64| h - b - v / ymax * (h - t - b);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg class="position-chart" viewBox="0 0 {w} {h}" role="img" aria-label="bits per byte against position in the document" xmlns="http://www.w3.org/2000/svg" font-family="system-ui,sans-serif" font-size="12">"##
    );
    let mut v = 0.0;
    while v <= ymax + 1e-9 {
        let yv = y(v);
        let grid = if v == 0.0 { "#889" } else { "#e3e6ec" };
        let _ = write!(s, r##"<line x1="{l}" x2="{}" y1="{yv:.1}" y2="{yv:.1}" stroke="{grid}"/><text x="{}" y="{:.1}" text-anchor="end" fill="#445">{v}</text>"##, w - r, l - 6.0, yv + 4.0);
        v += step;
    }
    let mut tick = 2;
    while tick <= bits.len() {
        let xt = x(tick as f64);
        let _ = write!(s, r##"<line x1="{xt:.1}" x2="{xt:.1}" y1="{t}" y2="{}" stroke="#e3e6ec"/><text x="{xt:.1}" y="{}" text-anchor="middle" fill="#445">{}</text>"##, h - b + 4.0, h - b + 17.0, fmt_size(tick));
        tick *= 8;
    }
    let _ = write!(
        s,
        r##"<line x1="{l}" x2="{l}" y1="{t}" y2="{}" stroke="#889"/><text x="{}" y="{}" text-anchor="middle" fill="#445">position in the document: bytes read (log scale)</text><text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle" fill="#445">bits per byte</text>"##,
        h - b,
        (l + w - r) / 2.0,
        h - 8.0,
        (t + h - b) / 2.0,
        (t + h - b) / 2.0
    );
    let points = |pts: &mut dyn Iterator<Item = (f64, f64)>| pts.map(|(p, m)| format!("{:.1},{:.1}", x(p), y(m))).collect::<Vec<_>>().join(" ");
    let _ = write!(s, r##"<polyline class="windowed" fill="none" stroke="#9db8ef" stroke-width="1.5" points="{}"/>"##, points(&mut windows.iter().copied()));
    for &(p, m) in &windows {
        let _ = write!(s, r##"<circle cx="{:.1}" cy="{:.1}" r="2" fill="#9db8ef"/>"##, x(p), y(m));
    }
    let _ = write!(s, r##"<polyline class="running" fill="none" stroke="#1f49b4" stroke-width="2.2" points="{}"/>"##, points(&mut running.iter().map(|&(p, m)| (p as f64, m))));
    if let Some(&(p, m)) = running.last() {
        let _ = write!(s, r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#1f49b4">{m:.2}</text>"##, x(p as f64), y(m) - 7.0);
    }
    let _ = write!(
        s,
        r##"<line x1="{l}" x2="{}" y1="16" y2="16" stroke="#1f49b4" stroke-width="2.2"/><text x="{}" y="20" fill="#223">running mean (bytes 1 to here)</text><line x1="{}" x2="{}" y1="16" y2="16" stroke="#9db8ef" stroke-width="1.5"/><circle cx="{}" cy="16" r="2" fill="#9db8ef"/><text x="{}" y="20" fill="#223">mean over a window (a quarter octave of positions)</text></svg>"##,
        l + 22.0,
        l + 28.0,
        l + 250.0,
        l + 272.0,
        l + 261.0,
        l + 278.0
    );
    s
}

/// A sentence on the trend: the first range's mean against the last range's.
pub fn trend(rows: &[RangeMean]) -> Option<String> {
    let ranges = &rows[..rows.len().saturating_sub(1)];
    if ranges.len() < 2 {
        return None;
    }
    let (first, last) = (&ranges[0], &ranges[ranges.len() - 1]);
    let (a, z) = (first.bits_per_byte?, last.bits_per_byte?);
    let how = if z < a - 0.05 { "falls" } else if z > a + 0.05 { "rises" } else { "stays about level" };
    Some(format!("Bits per byte {how} from {a:.2} over the {} to {z:.2} over {}.", first.label, last.label.replace("past", "bytes past")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_mean_of_a_constant_is_that_constant_and_ends_at_the_mean() {
        let bits = vec![2.5; 5000];
        let run = running_mean(&bits);
        assert!(run.iter().all(|&(_, m)| (m - 2.5).abs() < 1e-12));
        assert_eq!(run.last().unwrap().0, 5000, "the last point is the whole document");
        assert!(run.windows(2).all(|w| w[0].0 < w[1].0), "positions increase");
        assert_eq!(run.iter().take(40).map(|p| p.0).collect::<Vec<_>>(), (1..=40).collect::<Vec<_>>(), "every early position");
        // Every position to 46, then 32 per octave: about 46 + 32 · log2(5000 / 46), far fewer than 5000.
        let want = 46.0 + 32.0 * (5000.0f64 / 46.0).log2();
        assert!((run.len() as f64 - want).abs() <= 3.0, "{} points, not about {want:.0}", run.len());
    }

    #[test]
    fn the_running_mean_is_the_mean_of_the_prefix_and_skips_bytes_without_a_score() {
        let bits: Vec<f64> = (0..3000).map(|i| if i == 0 { f64::NAN } else { (i % 7) as f64 }).collect();
        let run = running_mean(&bits);
        assert_eq!(run[0].0, 2, "position 1 has no score");
        for &(p, m) in &run {
            let want = bits[1..p].iter().sum::<f64>() / (p - 1) as f64;
            assert!((m - want).abs() < 1e-9, "at {p}: {m} vs {want}");
        }
    }

    #[test]
    fn bins_cover_every_byte_once_and_grow() {
        for len in [1, 2, 15, 16, 17, 127, 128, 129, 4096, 4100, 114_000] {
            let bins = log_bins(len);
            assert_eq!(bins[0].start, 0);
            assert_eq!(bins.last().unwrap().end, len);
            assert!(bins.windows(2).all(|w| w[0].end == w[1].start), "{len}: contiguous");
            assert!(bins.iter().all(|r| r.len() >= MIN_BIN.min(len)), "{len}: {bins:?}");
            let mut seen = vec![0; len];
            bins.iter().flat_map(|r| r.clone()).for_each(|i| seen[i] += 1);
            assert!(seen.iter().all(|&c| c == 1), "{len}");
        }
        let bins = log_bins(1 << 17);
        for edge in [128, 1 << 10, 8 << 10, 64 << 10] {
            assert!(bins.iter().any(|r| r.start == edge), "{edge} is a bin edge");
        }
        // Log-spaced: each of the late bins is about 2^(1/4) times as wide as the one before.
        let late = &bins[bins.len() - 8..];
        assert!(late.windows(2).all(|w| (w[1].len() as f64 / w[0].len() as f64 - 2f64.powf(0.25)).abs() < 0.02));
    }

    #[test]
    fn windowed_and_range_means_see_a_step() {
        // 2 bits per byte for the first KiB, then 5: the windows and ranges tell them apart.
        let bits: Vec<f64> = (0..9000).map(|i| if i < 1024 { 2.0 } else { 5.0 }).collect();
        for (r, m) in windowed_mean(&bits) {
            assert_eq!(m, Some(if r.end <= 1024 { 2.0 } else { 5.0 }), "{r:?}");
        }
        let rows = range_means(&bits);
        let got: Vec<(&str, usize, Option<f64>)> = rows.iter().map(|r| (r.label.as_str(), r.range.len(), r.bits_per_byte)).collect();
        let whole = (2.0 * 1024.0 + 5.0 * (9000.0 - 1024.0)) / 9000.0;
        assert_eq!(got, [("first 128 B", 128, Some(2.0)), ("128 B–1 KiB", 896, Some(2.0)), ("1–8 KiB", 7168, Some(5.0)), ("8–64 KiB", 808, Some(5.0)), ("whole document", 9000, Some(whole))]);
        assert_eq!(trend(&rows).unwrap(), "Bits per byte rises from 2.00 over the first 128 B to 5.00 over 8–64 KiB.");
    }

    #[test]
    fn the_chart_has_a_point_per_running_mean_and_window() {
        let bits: Vec<f64> = (0..4096).map(|i| 1.0 + (i % 5) as f64).collect();
        let svg = svg(&bits);
        let points = |class: &str| {
            let at = svg.find(&format!("class=\"{class}\"")).unwrap();
            let p = &svg[at..];
            let p = &p[p.find("points=\"").unwrap() + 8..];
            p[..p.find('"').unwrap()].split(' ').count()
        };
        assert_eq!(points("running"), running_mean(&bits).len());
        assert_eq!(points("windowed"), log_bins(4096).len());
        for tick in ["16 B", "128 B", "1 KiB"] {
            assert!(svg.contains(&format!(">{tick}</text>")), "tick {tick}");
        }
        assert!(!svg.contains("8 KiB"), "no tick past the document");
    }
}
