//! The authors' fixtures: the reference and the GPU against outputs computed by
//! the authors' own PyTorch modules.

mod common;

use common::cli::{read, read_counts};
use common::compare::max_diff;
use common::fixture;
use luna_wgpu::{tensors, Batch, Model};
use std::path::PathBuf;

/// The model and the input batch of one of the authors' cases, with its expected outputs' file.
fn load(case: &str) -> (Model, Batch, PathBuf) {
    let model = Model::load(&fixture(&format!("{case}.model.safetensors"))).unwrap();
    let input = tensors::read_file(&fixture(&format!("{case}.input.safetensors"))).unwrap();
    let batch = Batch::from_safetensors(&model.config, &input).unwrap();
    (model, batch, fixture(&format!("{case}.expected.safetensors")))
}

#[test]
fn reference_matches_authors_encoder() {
    let (model, batch, expected) = load("public_encoder");
    let out = luna_wgpu::reference::encoder_forward(&model, &batch);
    let (x, xs) = read(&expected, "x");
    let (p, ps) = read(&expected, "p");
    let (lengths, p_valid) = (read_counts(&expected, "lengths"), read_counts(&expected, "p_valid"));
    assert_eq!(xs, vec![batch.batch, batch.len, 32]);
    assert_eq!(ps, vec![batch.batch, batch.proj_len, 32]);
    let ex = max_diff(&out.x, &x, &xs, &lengths);
    let ep = max_diff(&out.p, &p, &ps, &p_valid);
    eprintln!("reference vs authors: x {ex:.2e}, p {ep:.2e}");
    assert!(ex < 1e-9 && ep < 1e-9, "x {ex}, p {ep}");
}

#[test]
fn gpu_matches_authors_encoder() {
    let Some(mut engine) = common::engine() else { return };
    let (model, batch, expected) = load("public_encoder");
    let gm = engine.load(&model).unwrap();
    let out = engine.encode_blocking(&gm, &batch).unwrap();
    let (x, _) = read(&expected, "x");
    let (p, _) = read(&expected, "p");
    let (lengths, p_valid) = (read_counts(&expected, "lengths"), read_counts(&expected, "p_valid"));
    let ex = max_diff(&out.x, &x, &[batch.batch, batch.len, 32], &lengths);
    let ep = max_diff(&out.p, &p, &[batch.batch, batch.proj_len, 32], &p_valid);
    eprintln!("gpu vs authors: x {ex:.2e}, p {ep:.2e}");
    assert!(ex < 1e-4 && ep < 1e-4, "x {ex}, p {ep}");
}

#[test]
fn reference_matches_authors_causal_lm() {
    let (model, batch, expected) = load("public_causal");
    let logits = luna_wgpu::reference::causal_lm_forward(&model, &batch);
    let (want, shape) = read(&expected, "logits");
    let lengths = read_counts(&expected, "lengths");
    assert_eq!(shape, vec![batch.batch, batch.len, model.config.vocab_size]);
    let e = max_diff(&logits, &want, &shape, &lengths);
    eprintln!("causal reference vs authors: {e:.2e}");
    // The authors build sinusoid tables in float32 (torch.float), the
    // reference in float64: positions differ by ~1e-7, logits by ~3e-7.
    assert!(e < 2e-6, "{e}");
}
