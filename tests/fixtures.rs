//! The authors' fixtures: the reference and the GPU against outputs computed by
//! the authors' own PyTorch modules.

mod common;

use luna_wgpu::{tensors, Batch, Model};
use safetensors::SafeTensors;

fn expected(name: &str, key: &str) -> (Vec<f64>, Vec<usize>) {
    let bytes = std::fs::read(common::fixture(name)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor(key).unwrap();
    let shape = v.shape().to_vec();
    let data = match v.dtype() {
        safetensors::Dtype::F64 => v.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
        safetensors::Dtype::I64 => v.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        other => panic!("{other:?}"),
    };
    (data, shape)
}

fn load_encoder() -> (Model, Batch) {
    let model = Model::load(&common::fixture("public_encoder.model.safetensors")).unwrap();
    let input = tensors::read_file(&common::fixture("public_encoder.input.safetensors")).unwrap();
    let batch = Batch::from_safetensors(&model.config, &input).unwrap();
    (model, batch)
}

/// Max abs difference over meaningful rows (`valid[b]` rows of each sequence).
fn compare(got: &[f64], want: &[f64], rows: usize, d: usize, valid: &[f64]) -> f64 {
    let mut err: f64 = 0.0;
    for (b, &v) in valid.iter().enumerate() {
        for r in 0..v as usize {
            for k in 0..d {
                let i = (b * rows + r) * d + k;
                err = err.max((got[i] - want[i]).abs());
            }
        }
    }
    err
}

#[test]
fn reference_matches_authors_encoder() {
    let (model, batch) = load_encoder();
    let out = luna_wgpu::reference::encoder_forward(&model, &batch);
    let (x, xs) = expected("public_encoder.expected.safetensors", "x");
    let (p, ps) = expected("public_encoder.expected.safetensors", "p");
    let (lengths, _) = expected("public_encoder.expected.safetensors", "lengths");
    let (p_valid, _) = expected("public_encoder.expected.safetensors", "p_valid");
    assert_eq!(xs, vec![batch.batch, batch.len, 32]);
    assert_eq!(ps, vec![batch.batch, batch.proj_len, 32]);
    let ex = compare(&out.x, &x, batch.len, 32, &lengths);
    let ep = compare(&out.p, &p, batch.proj_len, 32, &p_valid);
    eprintln!("reference vs authors: x {ex:.2e}, p {ep:.2e}");
    assert!(ex < 1e-9 && ep < 1e-9, "x {ex}, p {ep}");
}

#[test]
fn gpu_matches_authors_encoder() {
    let Some(mut engine) = common::engine() else { return };
    let (model, batch) = load_encoder();
    let gm = engine.load(&model).unwrap();
    let out = engine.encode_blocking(&gm, &batch).unwrap();
    let (x, _) = expected("public_encoder.expected.safetensors", "x");
    let (p, _) = expected("public_encoder.expected.safetensors", "p");
    let (lengths, _) = expected("public_encoder.expected.safetensors", "lengths");
    let (p_valid, _) = expected("public_encoder.expected.safetensors", "p_valid");
    let gx: Vec<f64> = out.x.iter().map(|&v| v as f64).collect();
    let gp: Vec<f64> = out.p.iter().map(|&v| v as f64).collect();
    let ex = compare(&gx, &x, batch.len, 32, &lengths);
    let ep = compare(&gp, &p, batch.proj_len, 32, &p_valid);
    eprintln!("gpu vs authors: x {ex:.2e}, p {ep:.2e}");
    assert!(ex < 1e-4 && ep < 1e-4, "x {ex}, p {ep}");
}

fn load_causal() -> (Model, Batch) {
    let model = Model::load(&common::fixture("public_causal.model.safetensors")).unwrap();
    let input = tensors::read_file(&common::fixture("public_causal.input.safetensors")).unwrap();
    let batch = Batch::from_safetensors(&model.config, &input).unwrap();
    (model, batch)
}

#[test]
fn reference_matches_authors_causal_lm() {
    let (model, batch) = load_causal();
    let logits = luna_wgpu::reference::causal_lm_forward(&model, &batch);
    let (want, shape) = expected("public_causal.expected.safetensors", "logits");
    let (lengths, _) = expected("public_causal.expected.safetensors", "lengths");
    assert_eq!(shape, vec![batch.batch, batch.len, model.config.vocab_size]);
    let e = compare(&logits, &want, batch.len, model.config.vocab_size, &lengths);
    eprintln!("causal reference vs authors: {e:.2e}");
    // The authors build sinusoid tables in float32 (torch.float), the
    // reference in float64: positions differ by ~1e-7, logits by ~3e-7.
    assert!(e < 2e-6, "{e}");
}
