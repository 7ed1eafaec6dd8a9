//! `luna bench --op longest`: the longest single sequence each method runs on
//! this adapter, and its memory against n up to there.
//!
//! For each method the engine's own pre-flight check (`engine::plan`: every
//! buffer against one binding, all of them with the weights against the
//! device's memory) finds the longest n it would accept, without GPU work.
//! Then one layer runs at n = min-n, 2·min-n, ... and at that longest n, each
//! point timed once and its peak memory kept, skipping points predicted to
//! take longer than --max-seconds (linear in n for Luna, quadratic for
//! softmax). So the longest n measured is either the memory limit itself or
//! the time budget, and the report says which.

use crate::baseline::{Kind, SoftmaxConfig};
use crate::bench::{luna_config, skipped_point, time_point, Method, Point, Sweep};
use crate::engine::Engine;
use crate::error::Result;
use crate::model::Model;

/// Beyond this many tokens the search stops: no adapter holds them.
const SEARCH_CAP: usize = 1 << 34;

/// The longest n one sequence of `method` may have on this adapter (with its
/// weights held), and why not one more: the engine's refusal of `n + 1`.
pub fn longest_by_plan(engine: &mut Engine, method: Method, d: usize, heads: usize) -> Result<(usize, String)> {
    match method {
        Method::Luna { projection_length } => {
            // Sinusoid positions: any length runs whatever max_positions says.
            let config = luna_config(d, heads, projection_length, 1, 16)?;
            let gm = engine.load(&Model::random(&config, 1)?)?;
            let found = search(|n| engine.encoder_check(&config, n, 1).err().map(|e| e.to_string()));
            drop(gm);
            Ok(found)
        }
        Method::SoftmaxFlash | Method::SoftmaxNaive => {
            let kind = if method == Method::SoftmaxFlash { Kind::Flash } else { Kind::Naive };
            let (config, layers) = SoftmaxConfig::random_bench(d, heads, 1);
            let enc = engine.load_softmax(&config, &layers)?;
            let found = search(|n| engine.softmax_fits(&config, n, 1, kind, false).err().map(|e| e.to_string()));
            drop(enc);
            Ok(found)
        }
    }
}

/// The largest n for which `refuse(n)` is `None`, and `refuse` of the next
/// (doubling from 1024, then bisecting).
fn search(refuse: impl Fn(usize) -> Option<String>) -> (usize, String) {
    let mut ok = 0;
    let mut bad = 1024;
    while bad < SEARCH_CAP && refuse(bad).is_none() {
        ok = bad;
        bad *= 2;
    }
    while bad - ok > 1 {
        let mid = ok + (bad - ok) / 2;
        if refuse(mid).is_none() { ok = mid } else { bad = mid }
    }
    let why = refuse(ok + 1).unwrap_or_else(|| format!("the search stops at {SEARCH_CAP} tokens"));
    (ok, why)
}

/// Per method: the longest n by the plan (printed with its reason), then one
/// layer at min-n, doubling, and at that n, within the time budget.
pub fn run_longest(engine: &mut Engine, sweep: &Sweep, on_point: &mut dyn FnMut(&Point), on_limit: &mut dyn FnMut(&str)) -> Result<Vec<Point>> {
    let mut points = Vec::new();
    for &method in &sweep.methods {
        let (longest, why) = longest_by_plan(engine, method, sweep.d, sweep.heads)?;
        on_limit(&format!("{} d={}: the longest sequence this adapter holds is {longest} tokens; one more: {why}", method.name(), sweep.d));
        let mut ns: Vec<usize> = std::iter::successors(Some(sweep.ns[0]), |n| Some(n * 2)).take_while(|&n| n < longest).collect();
        ns.push(longest);
        let mut last: Option<(usize, f64)> = None;
        let exponent = if matches!(method, Method::Luna { .. }) { 1.0 } else { 2.0 };
        for n in ns {
            let predicted = last.map(|(n0, t0)| t0 * (n as f64 / n0 as f64).powf(exponent));
            let point = match predicted {
                Some(t) if t > sweep.max_seconds => skipped_point(method, n, sweep, 1, t),
                _ => time_point(engine, method, n, sweep, 1)?,
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
