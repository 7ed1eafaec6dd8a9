//! Benchmark output: a text table, CSV, JSON, and log-log SVG plots with the
//! fitted slope of each series.

use crate::bench::{loglog_slope, Point};
use std::fmt::Write;

fn fmt_time(s: f64) -> String {
    if s.is_nan() {
        "-".into()
    } else if s < 1e-3 {
        format!("{:.1} us", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn fmt_bytes(b: u64) -> String {
    match b {
        0 => "-".into(),
        b if b < 1 << 20 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
    }
}

/// One line of the table for a point.
pub fn table_row(p: &Point) -> String {
    let what = match p.shape {
        Some([m, n, k]) => format!("{m}x{n}x{k}"),
        None => format!("n={} l={} d={} h={} B={} L={}", p.n, p.projection_length, p.d, p.heads, p.batch, p.layers),
    };
    match &p.skipped {
        Some(why) => format!("{:<8} {:<14} {:<38} skipped: {why}", p.op, p.method, what),
        None => format!(
            "{:<8} {:<14} {:<38} {:>10} [{} .. {}] {:>12.0} tok/s {:>8} GFLOP/s {:>10}",
            p.op,
            p.method,
            what,
            fmt_time(p.median_s),
            fmt_time(p.min_s),
            fmt_time(p.max_s),
            p.tokens_per_s,
            if p.gflops.is_nan() { "-".to_string() } else { format!("{:.2}", p.gflops) },
            fmt_bytes(p.peak_bytes)
        ),
    }
}

pub fn csv(points: &[Point]) -> String {
    let mut s = String::from("op,method,n,l,d,heads,batch,layers,m,gemm_n,k,median_s,min_s,max_s,tokens_per_s,gflops,peak_bytes,timer,skipped\n");
    for p in points {
        let [m, gn, k] = p.shape.map_or([String::new(), String::new(), String::new()], |s| s.map(|v| v.to_string()));
        let skipped = p.skipped.as_deref().unwrap_or("").replace(['"', ','], " ");
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{m},{gn},{k},{},{},{},{},{},{},{},\"{skipped}\"",
            p.op, p.method, p.n, p.projection_length, p.d, p.heads, p.batch, p.layers, p.median_s, p.min_s, p.max_s, p.tokens_per_s, p.gflops, p.peak_bytes, p.timer
        );
    }
    s
}

pub fn json(points: &[Point], adapter: &str) -> String {
    serde_json::to_string_pretty(&serde_json::json!({ "adapter": adapter, "points": points })).unwrap_or_default()
}

/// Series of (n, y) per method for one op, measured points only.
fn series(points: &[Point], op: &str, y: impl Fn(&Point) -> f64) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for p in points.iter().filter(|p| p.op == op && p.skipped.is_none()) {
        let v = (p.n as f64, y(p));
        match out.iter_mut().find(|(m, _)| *m == p.method) {
            Some((_, s)) => s.push(v),
            None => out.push((p.method.clone(), vec![v])),
        }
    }
    out
}

/// The slope of a series over its points with n >= `from` (all points if fewer than two qualify).
pub fn fitted_slope(pts: &[(f64, f64)], from: f64) -> Option<f64> {
    let tail: Vec<(f64, f64)> = pts.iter().copied().filter(|(x, _)| *x >= from).collect();
    loglog_slope(if tail.len() >= 2 { &tail } else { pts })
}

/// A log-log SVG plot of `op`'s points against n; `memory` plots peak bytes instead of time.
pub fn svg(points: &[Point], op: &str, memory: bool, title: &str) -> Option<String> {
    let y = |p: &Point| if memory { p.peak_bytes as f64 } else { p.median_s };
    let data = series(points, op, y);
    let all: Vec<(f64, f64)> = data.iter().flat_map(|(_, s)| s.iter().copied()).filter(|(x, y)| *x > 0.0 && *y > 0.0).collect();
    if all.is_empty() {
        return None;
    }
    let (w, h, left, right, top, bottom) = (720.0, 460.0, 80.0, 220.0, 40.0, 50.0);
    let lx = |v: f64| v.log10();
    let (mut x0, mut x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(lx(p.0)), b.max(lx(p.0))));
    let (mut y0, mut y1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(lx(p.1)), b.max(lx(p.1))));
    x0 = x0.floor();
    x1 = x1.ceil().max(x0 + 1.0);
    y0 = y0.floor();
    y1 = y1.ceil().max(y0 + 1.0);
    let px = |v: f64| left + (lx(v) - x0) / (x1 - x0) * (w - left - right);
    let py = |v: f64| h - bottom - (lx(v) - y0) / (y1 - y0) * (h - top - bottom);
    let mut s = String::new();
    let _ = writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#);
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="22" font-size="15">{title}</text>"#, left);
    for e in x0 as i32..=x1 as i32 {
        let x = left + (e as f64 - x0) / (x1 - x0) * (w - left - right);
        let _ = writeln!(s, r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">1e{e}</text>"##, h - bottom, h - bottom + 18.0);
    }
    for e in y0 as i32..=y1 as i32 {
        let y = h - bottom - (e as f64 - y0) / (y1 - y0) * (h - top - bottom);
        let _ = writeln!(s, r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">1e{e}</text>"##, w - right, left - 6.0, y + 4.0);
    }
    let ylabel = if memory { "peak GPU bytes" } else { "seconds" };
    let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">sequence length n</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">{ylabel}</text>"#, (left + w - right) / 2.0, h - 12.0, h / 2.0, h / 2.0);
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"];
    for (i, (name, pts)) in data.iter().enumerate() {
        let c = colors[i % colors.len()];
        let path: Vec<String> = pts.iter().filter(|p| p.1 > 0.0).map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1))).collect();
        let _ = writeln!(s, r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#, path.join(" "));
        for p in pts.iter().filter(|p| p.1 > 0.0) {
            let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#, px(p.0), py(p.1));
        }
        let slope = fitted_slope(pts, 4096.0).map_or("-".into(), |v| format!("{v:.2}"));
        let ly = top + 20.0 + i as f64 * 20.0;
        let _ = writeln!(s, r#"<rect x="{}" y="{}" width="12" height="12" fill="{c}"/><text x="{}" y="{}">{name}: slope {slope}</text>"#, w - right + 12.0, ly - 10.0, w - right + 30.0, ly);
    }
    s.push_str("</svg>\n");
    Some(s)
}

/// Slopes of time and memory against n (from n >= 4096 where there are two
/// such points) per method, and Luna against the naive softmax at n = 4096.
pub fn summary(points: &[Point]) -> String {
    let mut s = String::new();
    for op in ["layer", "encoder"] {
        let times = series(points, op, |p| p.median_s);
        if times.is_empty() {
            continue;
        }
        let mems = series(points, op, |p| p.peak_bytes as f64);
        let _ = writeln!(s, "{op}: log-log slopes against n (from n >= 4096 where measured)");
        for ((name, t), (_, m)) in times.iter().zip(&mems) {
            let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
            let _ = writeln!(s, "  {name:<14} time {}  memory {}", f(fitted_slope(t, 4096.0)), f(fitted_slope(m, 4096.0)));
        }
        let at = |method: &str, n: usize| points.iter().find(|p| p.op == op && p.method == method && p.n == n && p.skipped.is_none());
        for n in [4096usize] {
            if let Some(naive) = at("softmax-naive", n) {
                for p in points.iter().filter(|p| p.op == op && p.n == n && p.method.starts_with("luna") && p.skipped.is_none()) {
                    let _ = writeln!(
                        s,
                        "  n={n}: {} is {:.1}x faster than softmax-naive and uses {:.1}x less memory",
                        p.method,
                        naive.median_s / p.median_s,
                        naive.peak_bytes as f64 / p.peak_bytes.max(1) as f64
                    );
                }
            }
        }
    }
    s
}
