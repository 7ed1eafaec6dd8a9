//! Shared helpers of the integration tests.
#![allow(dead_code)]

use luna_wgpu::{AdapterChoice, Batch, Config, Engine, Model};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// One engine for the whole test binary (opening a device is slow on software
/// adapters). `None` when no adapter exists, unless `LUNA_REQUIRE_GPU=1`.
pub fn engine() -> Option<MutexGuard<'static, Engine>> {
    static ENGINE: OnceLock<Option<Mutex<Engine>>> = OnceLock::new();
    let e = ENGINE.get_or_init(|| match Engine::new_blocking(&AdapterChoice::from_arg_or_env(None)) {
        Ok(e) => {
            eprintln!("GPU tests on {}", luna_wgpu::gpu::context::describe(&e.ctx.info));
            Some(Mutex::new(e))
        }
        Err(err) => {
            if std::env::var("LUNA_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("LUNA_REQUIRE_GPU=1 but no GPU engine: {err}");
            }
            eprintln!("skipping GPU tests: {err}");
            None
        }
    });
    e.as_ref().map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A config from JSON, with keys overriding a small default encoder.
pub fn config(overrides: serde_json::Value) -> Config {
    let mut base = serde_json::json!({
        "model": "encoder", "vocab_size": 50, "embed_dim": 24, "ffn_embed_dim": 40,
        "num_layers": 2, "num_heads": 2, "projection_length": 5, "max_positions": 5000,
        "padding_idx": 1, "normalize_before": false, "tie_kv": false, "activation": "relu",
        "learned_pos": true, "embed_scale": 1.0, "layer_norm_eps": 1e-5,
    });
    for (k, v) in overrides.as_object().unwrap() {
        base[k] = v.clone();
    }
    Config::from_json(&base.to_string()).unwrap()
}

pub fn random_batch(c: &Config, lengths: &[usize], seed: u64) -> Batch {
    let (tokens, b, n) = luna_wgpu::init::random_tokens(c, lengths, seed);
    Batch::new(c, &tokens, b, n).unwrap()
}

/// Largest |gpu - reference| over the meaningful rows, and the largest |reference|.
pub fn max_err(gpu: &[f32], reference: &[f64], d: usize, valid: impl Fn(usize) -> bool) -> (f64, f64) {
    let mut err: f64 = 0.0;
    let mut mag: f64 = 0.0;
    for (r, (g, e)) in gpu.chunks(d).zip(reference.chunks(d)).enumerate() {
        if !valid(r) {
            continue;
        }
        for (a, b) in g.iter().zip(e) {
            assert!(a.is_finite(), "non-finite output at row {r}");
            err = err.max((*a as f64 - b).abs());
            mag = mag.max(b.abs());
        }
    }
    (err, mag)
}

/// Runs `model` on `batch` on the GPU and checks x and p against the float64
/// reference on the meaningful rows: within 1e-4 relative to the outputs' size
/// (LUNA_SPEC.md: 1e-3 absolute on outputs of order 1).
pub fn check_model(engine: &mut Engine, model: &Model, batch: &Batch, tol: f64) {
    let gm = engine.load(model).unwrap();
    let out = engine.encode_blocking(&gm, batch).unwrap();
    let reference = luna_wgpu::reference::encoder_forward(model, batch);
    let d = model.config.embed_dim;
    let (n, lp) = (batch.len, batch.proj_len);
    let (ex, mx) = max_err(&out.x, &reference.x, d, |r| !batch.x_mask[r]);
    let (ep, mp) = max_err(&out.p, &reference.p, d, |r| !batch.p_mask[r]);
    eprintln!("x: max err {ex:.2e} (|x| <= {mx:.2}); p: max err {ep:.2e} (|p| <= {mp:.2}); n = {n}, l' = {lp}");
    assert!(ex <= tol * mx.max(1.0), "x error {ex} over {tol} x {mx}");
    assert!(ep <= tol * mp.max(1.0), "p error {ep} over {tol} x {mp}");
}
