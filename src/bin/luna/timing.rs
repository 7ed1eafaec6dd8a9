//! Timing a command's GPU runs and the one-line note it prints about them.

use luna_wgpu::gpu::context::describe;
pub use luna_wgpu::progress_bar::with_progress;
use luna_wgpu::{Engine, Result};
use std::time::Instant;

/// Runs `f` `repeat` times; returns its last result, the median and the first time in seconds.
pub fn timed<T>(repeat: usize, mut f: impl FnMut() -> Result<T>) -> Result<(T, f64, f64)> {
    let mut times = Vec::new();
    let mut out = None;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        out = Some(f()?);
        times.push(t.elapsed().as_secs_f64());
    }
    let first = times[0];
    times.sort_by(f64::total_cmp);
    Ok((out.expect("at least one run"), times[times.len() / 2], first))
}

/// The adapter, the shape, the median and first times, the throughput and the GPU memory peak.
pub fn gpu_note(engine: &Engine, shape: &str, median: f64, first: f64, runs: usize, tokens: f64) -> String {
    let (_, peak) = engine.memory();
    format!(
        "{}: {shape}: {:.1} ms (median of {runs}; first run {:.1} ms), {:.0} tokens/s, GPU memory peak {:.1} MiB",
        describe(&engine.ctx.info),
        median * 1e3,
        first * 1e3,
        tokens / median,
        peak as f64 / (1 << 20) as f64
    )
}
