//! Helpers shared by the integration tests. Each `tests/*.rs` is a crate of its
//! own that includes this folder with `mod common;`:
//!
//! - this file: the shared GPU engine, fixtures, random batches, a whole-model check;
//! - [`cli`]: running the `luna` binary, how it ended, temporary folders, its files;
//! - [`configs`]: small model configs, and random models with a byte tokenizer;
//! - [`compare`]: error measures against the float64 reference;
//! - [`attention`]: the inputs of an attention-kernel check and the reference's answer.

// Every test binary compiles all of this but uses only a part: the rest would
// warn as dead code in each of them.
#![allow(dead_code)]

pub mod attention;
pub mod cli;
pub mod compare;
pub mod configs;

use luna_wgpu::{AdapterChoice, Batch, Config, Engine, Model};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// A GPU engine on the default adapter (or `LUNA_ADAPTER`). `None` when no
/// adapter exists, unless `LUNA_REQUIRE_GPU=1`, which makes that a failure.
fn open_engine() -> Option<Engine> {
    match Engine::new_blocking(&AdapterChoice::from_arg_or_env(None)) {
        Ok(e) => {
            eprintln!("GPU tests on {}", luna_wgpu::gpu::describe(&e.ctx.info));
            Some(e)
        }
        Err(err) => {
            if std::env::var("LUNA_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("LUNA_REQUIRE_GPU=1 but no GPU engine: {err}");
            }
            eprintln!("skipping GPU tests: {err}");
            None
        }
    }
}

/// One engine for the whole test binary (opening a device is slow on software
/// adapters). `None` when no adapter exists, unless `LUNA_REQUIRE_GPU=1`.
pub fn engine() -> Option<MutexGuard<'static, Engine>> {
    static ENGINE: OnceLock<Option<Mutex<Engine>>> = OnceLock::new();
    let e = ENGINE.get_or_init(|| open_engine().map(Mutex::new));
    e.as_ref().map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Runs `f` on the shared engine with at most `rows` rows per segment or
/// block (`Engine::set_segment_rows`), and puts the default (16,384) back
/// afterwards, even when `f` fails: the engine is shared by every test of a binary.
pub fn with_segment_rows<T>(engine: &mut Engine, rows: usize, f: impl FnOnce(&mut Engine) -> T) -> T {
    engine.set_segment_rows(rows).unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(engine)));
    engine.set_segment_rows(16384).unwrap();
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Whether a GPU adapter exists, for tests that run the GPU in the `luna`
/// binary: the probe's engine is closed again rather than kept for the whole
/// run. A failure instead of `false` when `LUNA_REQUIRE_GPU=1`.
pub fn has_gpu() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| open_engine().is_some())
}

/// A file of tests/fixtures/.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Random tokens of `lengths` (right-padded to the longest) as a batch for `c`.
pub fn random_batch(c: &Config, lengths: &[usize], seed: u64) -> Batch {
    let (tokens, b, n) = luna_wgpu::init::random_tokens(c, lengths, seed);
    Batch::new(c, &tokens, b, n).unwrap()
}

/// Runs `model` on `batch` on the GPU and checks x and p against the float64
/// reference on the meaningful rows: within `tol` relative to the outputs' size
/// (docs/luna.md, "Tolerances": 1e-4, that is 1e-3 absolute on outputs of order 1).
pub fn check_model(engine: &mut Engine, model: &Model, batch: &Batch, tol: f64) {
    let gm = engine.load(model).unwrap();
    let out = engine.encode_blocking(&gm, batch).unwrap();
    let reference = luna_wgpu::reference::encoder_forward(model, batch);
    let d = model.config.embed_dim;
    let (n, lp) = (batch.len, batch.proj_len);
    let (ex, mx) = compare::max_err(&out.x, &reference.x, d, |r| !batch.x_mask[r]);
    let (ep, mp) = compare::max_err(&out.p, &reference.p, d, |r| !batch.p_mask[r]);
    eprintln!("x: max err {ex:.2e} (|x| <= {mx:.2}); p: max err {ep:.2e} (|p| <= {mp:.2}); n = {n}, l' = {lp}");
    assert!(ex <= tol * mx.max(1.0), "x error {ex} over {tol} x {mx}");
    assert!(ep <= tol * mp.max(1.0), "p error {ep} over {tol} x {mp}");
}

/// The causal kernels' shape for one sequence of `rows` tokens of config `c` in chunks of `chunk`.
pub fn shape_of(c: &Config, rows: usize, chunk: usize) -> luna_wgpu::kernels::causal::Shape {
    luna_wgpu::kernels::causal::Shape {
        batch: 1,
        rows,
        heads: c.num_heads,
        head_dim: c.head_dim(),
        proj_len: c.projection_length,
        chunk: chunk.min(rows.next_power_of_two()),
        t_base: 0,
    }
}
