//! `luna bench`: timing sweeps of Luna against softmax baselines, GEMM
//! throughput, and the causal decode step against position. Each point is
//! warmed up, then timed several times (GPU timestamps when the adapter has
//! them, else the wall clock around a submission and a wait); the median and
//! spread are kept, with the peak bytes of GPU buffers the engine held.
//!
//! FLOP counts (multiply-add = 2), per sequence of n tokens, width d, FFN f:
//! - Luna layer: projections `2n·d·(d + kv) + 2l·d·d + 2l·d·kv + 2n·d·d`
//!   (kv = d tied, 2d untied), pack `4·l·n·d`, unpack `4·n·l·d`, FFN `4n·d·f`.
//! - Softmax layer: projections `2n·d·3d + 2n·d·d`, attention `4·n²·d`, FFN `4n·d·f`.
//! - GEMM m×n×k: `2mnk`.

pub mod lm;
pub mod longest;
pub mod peer;
pub mod report;

use crate::baseline::{Kind, SoftmaxConfig, SoftmaxInput};
use crate::config::Config;
use crate::error::{LunaError, Result};
use crate::gpu::recorder::Timestamps;
use crate::init::random_tokens;
use crate::kernels::gemm::{self, Gemm};
use crate::engine::Engine;
use crate::input::Batch;
use crate::model::Model;
use serde::Serialize;

/// One measured (or skipped) point of a sweep.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// "layer", "encoder", "matmul" or "decode".
    pub op: String,
    /// "luna-16", "softmax-flash", "softmax-naive", "gemm", "decode-step".
    pub method: String,
    pub n: usize,
    /// Luna's projection length (0 for other methods); `l` in the CSV and JSON.
    #[serde(rename = "l")]
    pub projection_length: usize,
    pub d: usize,
    pub heads: usize,
    pub batch: usize,
    pub layers: usize,
    /// GEMM shape `[m, n, k]` for matmul points.
    pub shape: Option<[usize; 3]>,
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub tokens_per_s: f64,
    pub gflops: f64,
    pub peak_bytes: u64,
    pub timer: String,
    pub skipped: Option<String>,
}

impl Point {
    fn new(op: &str, method: &str) -> Point {
        Point {
            op: op.into(),
            method: method.into(),
            n: 0,
            projection_length: 0,
            d: 0,
            heads: 0,
            batch: 0,
            layers: 0,
            shape: None,
            median_s: f64::NAN,
            min_s: f64::NAN,
            max_s: f64::NAN,
            tokens_per_s: f64::NAN,
            gflops: f64::NAN,
            peak_bytes: 0,
            timer: String::new(),
            skipped: None,
        }
    }

    fn set_times(&mut self, mut times: Vec<f64>, flops: f64, tokens: f64) {
        times.sort_by(f64::total_cmp);
        self.median_s = times[times.len() / 2];
        self.min_s = times[0];
        self.max_s = times[times.len() - 1];
        self.gflops = flops / self.median_s * 1e-9;
        self.tokens_per_s = tokens / self.median_s;
    }
}

/// The attention methods a sweep compares.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    Luna { projection_length: usize },
    SoftmaxFlash,
    SoftmaxNaive,
}

impl Method {
    pub fn name(&self) -> String {
        match self {
            Method::Luna { projection_length } => format!("luna-{projection_length}"),
            Method::SoftmaxFlash => "softmax-flash".into(),
            Method::SoftmaxNaive => "softmax-naive".into(),
        }
    }
}

/// What a sweep covers.
#[derive(Clone, Debug)]
pub struct Sweep {
    pub ns: Vec<usize>,
    pub methods: Vec<Method>,
    pub d: usize,
    pub heads: usize,
    pub batch: usize,
    /// Layers of the "encoder" op; the "layer" op uses one.
    pub layers: usize,
    pub repeats: usize,
    /// A point predicted to take longer than this (from the previous n) is skipped.
    pub max_seconds: f64,
    /// Run each point once untimed before timing it (off for `--op longest`,
    /// whose points are too long to run twice).
    pub warm_up: bool,
}

impl Sweep {
    /// Timed runs per point for [`measure`]: 0 means one run and no warm-up.
    fn measured_repeats(&self) -> usize {
        if self.warm_up { self.repeats.max(1) } else { 0 }
    }
}

pub fn luna_layer_flops(n: usize, projection_length: usize, d: usize, ffn: usize) -> f64 {
    let (n, l, d, f) = (n as f64, projection_length as f64, d as f64, ffn as f64);
    let kv = 2.0 * d;
    2.0 * n * d * (d + kv) + 2.0 * l * d * d + 2.0 * l * d * kv + 2.0 * n * d * d + 8.0 * l * n * d + 4.0 * n * d * f
}

pub fn softmax_layer_flops(n: usize, d: usize, ffn: usize) -> f64 {
    let (n, d, f) = (n as f64, d as f64, ffn as f64);
    2.0 * n * d * 3.0 * d + 2.0 * n * d * d + 4.0 * n * n * d + 4.0 * n * d * f
}

/// The random-weight Luna encoder a sweep times.
pub fn luna_config(d: usize, heads: usize, projection_length: usize, layers: usize, max_n: usize) -> Result<Config> {
    Config::from_json(
        &serde_json::json!({
            "model": "encoder", "vocab_size": 1000, "embed_dim": d, "ffn_embed_dim": 4 * d, "num_layers": layers,
            "num_heads": heads, "num_pheads": heads, "projection_length": projection_length, "max_positions": max_n.clamp(16, 1 << 24),
            "learned_pos": false, "embed_scale": (d as f64).sqrt(), "activation": "gelu",
        })
        .to_string(),
    )
}

fn timer_name(engine: &Engine) -> String {
    if Timestamps::new(&engine.ctx).is_some() { "gpu-timestamps".into() } else { "wall-clock".into() }
}

/// Warm-up (unless `repeats` is 0), then `repeats` timings of `run` (one
/// when 0); the engine's peak buffer bytes over all of them.
fn measure(engine: &mut Engine, repeats: usize, mut run: impl FnMut(&mut Engine) -> Result<f64>) -> Result<(Vec<f64>, u64)> {
    engine.release_workspace();
    engine.reset_peak_memory();
    if repeats > 0 {
        run(engine)?;
    }
    let mut times = Vec::new();
    for _ in 0..repeats.max(1) {
        times.push(run(engine)?);
    }
    Ok((times, engine.memory().1))
}

/// Times one method at one n with `layers` layers. Errors that mean "does not
/// fit" come back as a skipped point; others are returned.
pub fn time_point(engine: &mut Engine, method: Method, n: usize, sweep: &Sweep, layers: usize) -> Result<Point> {
    let op = if layers == 1 { "layer" } else { "encoder" };
    let mut p = Point::new(op, &method.name());
    let (d, heads, batch) = (sweep.d, sweep.heads, sweep.batch);
    p.n = n;
    p.d = d;
    p.heads = heads;
    p.batch = batch;
    p.layers = layers;
    p.timer = timer_name(engine);
    let ffn = 4 * d;
    let outcome = match method {
        Method::Luna { projection_length } => {
            p.projection_length = projection_length;
            let config = luna_config(d, heads, projection_length, layers, n)?;
            let model = Model::random(&config, 1)?;
            let gm = engine.load(&model)?;
            let (tokens, b, len) = random_tokens(&config, &vec![n; batch], 2);
            let input = Batch::new(&config, &tokens, b, len)?;
            let r = measure(engine, sweep.measured_repeats(), |e| e.time_encoder(&gm, &input));
            drop(gm);
            r.map(|t| (t, luna_layer_flops(n, projection_length, d, ffn)))
        }
        Method::SoftmaxFlash | Method::SoftmaxNaive => {
            let naive = method == Method::SoftmaxNaive;
            time_softmax(engine, naive, batch, n, d, heads, layers, sweep.measured_repeats()).map(|t| (t, softmax_layer_flops(n, d, ffn)))
        }
    };
    match outcome {
        Ok(((times, peak), flops_per_layer)) => {
            p.peak_bytes = peak;
            p.set_times(times, flops_per_layer * (layers * batch) as f64, (n * batch) as f64);
        }
        Err(e @ (LunaError::TooLarge { .. } | LunaError::OutOfMemory(_))) => {
            engine.release_workspace();
            p.skipped = Some(e.to_string());
        }
        Err(e) => return Err(e),
    }
    Ok(p)
}

/// Times the softmax baseline encoder (same GEMMs, LayerNorm and FFN as Luna's).
#[allow(clippy::too_many_arguments)]
fn time_softmax(engine: &mut Engine, naive: bool, batch: usize, n: usize, d: usize, heads: usize, layers: usize, repeats: usize) -> Result<(Vec<f64>, u64)> {
    let (config, weights) = SoftmaxConfig::random_bench(d, heads, layers);
    let encoder = engine.load_softmax(&config, &weights)?;
    let x = crate::init::Rng::new(5).fill(batch * n * d, 1.0);
    let key_mask = vec![false; batch * n];
    let input = SoftmaxInput { x: &x, batch, len: n, key_mask: &key_mask };
    let kind = if naive { Kind::Naive } else { Kind::Flash };
    measure(engine, repeats, |e| e.softmax_time(&encoder, &input, kind))
}

/// A point of `method` at `n` not run because it was predicted to take `t` seconds.
fn skipped_point(method: Method, n: usize, sweep: &Sweep, layers: usize, t: f64) -> Point {
    let mut p = Point::new(if layers == 1 { "layer" } else { "encoder" }, &method.name());
    p.n = n;
    p.d = sweep.d;
    p.heads = sweep.heads;
    p.batch = sweep.batch;
    p.layers = layers;
    if let Method::Luna { projection_length } = method {
        p.projection_length = projection_length;
    }
    p.skipped = Some(format!("predicted {t:.0} s, over the --max-seconds limit of {:.0} s", sweep.max_seconds));
    p
}

/// The whole sweep, reporting each point as it is done.
pub fn run_sweep(engine: &mut Engine, sweep: &Sweep, layers: usize, on_point: &mut dyn FnMut(&Point)) -> Result<Vec<Point>> {
    let mut points: Vec<Point> = Vec::new();
    for &method in &sweep.methods {
        let mut last: Option<(usize, f64)> = None;
        for &n in &sweep.ns {
            // Predict from the previous point (quadratic for softmax, linear for Luna).
            let exponent = if matches!(method, Method::Luna { .. }) { 1.0 } else { 2.0 };
            let predicted = last.map(|(n0, t0)| t0 * (n as f64 / n0 as f64).powf(exponent) * (sweep.repeats + 1) as f64);
            let point = match predicted {
                Some(t) if t > sweep.max_seconds => skipped_point(method, n, sweep, layers, t),
                _ => time_point(engine, method, n, sweep, layers)?,
            };
            if point.skipped.is_none() {
                last = Some((n, point.median_s));
            }
            on_point(&point);
            points.push(point);
        }
    }
    Ok(points)
}

/// GEMM throughput of `out[m, n] = a[m, k] · w[n, k]^T + bias` for each shape.
pub fn run_matmul(engine: &mut Engine, shapes: &[[usize; 3]], repeats: usize, on_point: &mut dyn FnMut(&Point)) -> Result<Vec<Point>> {
    let mut points = Vec::new();
    for &[m, n, k] in shapes {
        pollster::block_on(engine.tune_gemms(&[gemm::Class::plain([m, n, k])]))?;
        let mut p = Point::new("matmul", "gemm");
        p.shape = Some([m, n, k]);
        p.timer = timer_name(engine);
        let fill = |len: usize| vec![0.5f32; len];
        let bufs = (|| -> Result<_> {
            Ok((engine.upload("a", &fill(m * k))?, engine.upload("w", &fill(n * k))?, engine.upload("b", &fill(n))?, engine.upload("c", &fill(m * n))?))
        })();
        match bufs {
            Ok((a, w, b, c)) => {
                p.method = format!("gemm:{}", gemm::chosen(&engine.recorder(), &Gemm::new(&a.buffer, &w.buffer, &b.buffer, &c.buffer, [m, n, k])).name());
                let timestamps = Timestamps::new(&engine.ctx);
                let (times, peak) = measure(engine, repeats, |e| {
                    e.time_submission(
                        |e| {
                            let mut rec = e.recorder();
                            gemm::record(&mut rec, &Gemm::new(&a.buffer, &w.buffer, &b.buffer, &c.buffer, [m, n, k]));
                            match &timestamps {
                                Some(t) => rec.submit_timed(t),
                                None => rec.submit(),
                            }
                            Ok(())
                        },
                        timestamps.as_ref(),
                    )
                })?;
                p.peak_bytes = peak;
                p.set_times(times, 2.0 * (m * n * k) as f64, m as f64);
            }
            Err(e @ (LunaError::TooLarge { .. } | LunaError::OutOfMemory(_))) => p.skipped = Some(e.to_string()),
            Err(e) => return Err(e),
        }
        on_point(&p);
        points.push(p);
    }
    Ok(points)
}

/// Causal decode: prefill to each position with the parallel form, then time
/// single streaming steps there (wall clock per token, logits read back).
pub fn run_decode(engine: &mut Engine, d: usize, heads: usize, projection_length: usize, positions: &[usize], repeats: usize, on_point: &mut dyn FnMut(&Point)) -> Result<Vec<Point>> {
    let max = positions.iter().copied().max().unwrap_or(1);
    let config = Config::from_json(
        &serde_json::json!({
            "model": "causal_lm", "vocab_size": 256, "embed_dim": d, "ffn_embed_dim": 4 * d, "num_layers": 2,
            "num_heads": heads, "projection_length": projection_length, "max_positions": max + repeats + 16, "learned_pos": false,
            "embed_scale": (d as f64).sqrt(), "activation": "gelu", "normalize_before": true,
        })
        .to_string(),
    )?;
    let model = Model::random(&config, 3)?;
    let gm = engine.load(&model)?;
    let mut points = Vec::new();
    for &pos in positions {
        let mut p = Point::new("decode", "decode-step");
        p.n = pos;
        p.projection_length = projection_length;
        p.d = d;
        p.heads = heads;
        p.batch = 1;
        p.layers = config.num_layers;
        p.timer = "wall-clock".into();
        let (tokens, _, _) = random_tokens(&config, &[pos.max(1)], 4);
        let ids: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
        match engine.prefill_blocking(&gm, &ids) {
            Ok((mut dec, _)) => {
                let mut times = Vec::new();
                for i in 0..repeats.max(1) + 1 {
                    let t = std::time::Instant::now();
                    engine.step_blocking(&gm, &mut dec, 2 + (i % 200) as u32)?;
                    if i > 0 {
                        times.push(t.elapsed().as_secs_f64());
                    }
                }
                p.peak_bytes = dec.state_bytes();
                p.set_times(times, 0.0, 1.0);
                p.gflops = f64::NAN;
            }
            Err(e @ (LunaError::TooLarge { .. } | LunaError::OutOfMemory(_))) => p.skipped = Some(e.to_string()),
            Err(e) => return Err(e),
        }
        on_point(&p);
        points.push(p);
    }
    Ok(points)
}

/// Least-squares slope of log(y) against log(x).
pub fn loglog_slope(xy: &[(f64, f64)]) -> Option<f64> {
    let pts: Vec<(f64, f64)> = xy.iter().filter(|(x, y)| *x > 0.0 && *y > 0.0).map(|(x, y)| (x.ln(), y.ln())).collect();
    if pts.len() < 2 {
        return None;
    }
    let n = pts.len() as f64;
    let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}
