//! A structure-aware fuzz test: seeded mutations of valid model files (the
//! public encoder and causal LM fixtures) and of a token file, each of which
//! must end in a clean `LunaError` or in a finite result, on the GPU and on
//! the float64 reference, with the engine still usable after. A mutation
//! edits the safetensors structure (the `luna.config` keys, a tensor's
//! dtype, shape or offsets, the header length), the weights (NaN, infinity,
//! float32's limit), or the raw bytes (truncation, flips). A failure names
//! the seed and the mutation, so it can be replayed: `LUNA_FUZZ_SEED=... LUNA_FUZZ_CASES=1`.

mod common;

use luna_wgpu::init::Rng;
use luna_wgpu::{Batch, Engine, Model, ModelKind};
use serde_json::{json, Map, Value};
use std::time::Instant;

/// Mutations per model file, and for the token file.
const CASES: u64 = 300;

/// The parts of a safetensors file: its JSON header and its data.
struct File {
    header: Map<String, Value>,
    data: Vec<u8>,
}

impl File {
    fn parse(bytes: &[u8]) -> File {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        File { header: header.as_object().unwrap().clone(), data: bytes[8 + n..].to_vec() }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut text = serde_json::to_vec(&self.header).unwrap();
        text.resize(text.len().div_ceil(8) * 8, b' ');
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend(text);
        out.extend(&self.data);
        out
    }

    /// Tensor names, sorted (the header's metadata entry excluded).
    fn tensors(&self) -> Vec<String> {
        let mut names: Vec<String> = self.header.keys().filter(|k| *k != "__metadata__").cloned().collect();
        names.sort();
        names
    }

    fn config(&self) -> Option<Map<String, Value>> {
        let text = self.header.get("__metadata__")?.get("luna.config")?.as_str()?;
        serde_json::from_str::<Value>(text).ok()?.as_object().cloned()
    }

    fn set_config(&mut self, config: &Map<String, Value>) {
        self.header["__metadata__"]["luna.config"] = Value::String(Value::Object(config.clone()).to_string());
    }
}

fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len() as u64) as usize]
}

/// Values for a config key: valid ones (sizes that divide, flags, scales)
/// and ones that break it (zeros, negatives, huge counts, wrong types).
fn odd_value(rng: &mut Rng) -> Value {
    pick(rng, &[
        json!(1), json!(2), json!(4), json!(8), json!(16), json!(32), json!(64), json!(200), json!(1000),
        json!(true), json!(false), json!(true), json!(false), json!(1e-12), json!(30.0), json!(-2.0),
        json!(0), json!(1), json!(-1), json!(3), json!(1024), json!(1025), json!(65537), json!(1_000_000),
        json!(1u64 << 24), json!(1u64 << 31), json!(1u64 << 40), json!(u64::MAX), json!(1e38), json!(-1e38),
        json!(4294967296.0), json!(1e-45), json!(0.5), json!("relu"), json!("swish"), json!("causal_lm"),
        json!("encoder"), json!(true), json!(false), Value::Null, json!([1, 2]), json!({}),
    ])
    .clone()
}

/// One structure-aware mutation of a safetensors file; says what it did.
fn mutate(rng: &mut Rng, bytes: &[u8], is_model: bool) -> (Vec<u8>, String) {
    let mut file = File::parse(bytes);
    let names = file.tensors();
    let name = pick(rng, &names).clone();
    // Kinds 0-5 and 7 break the structure; 6 (values) and 8 (config keys) mostly keep it valid.
    let kinds: &[u64] = if is_model { &[0, 1, 2, 3, 4, 5, 6, 6, 6, 7, 8, 8, 8, 8, 8] } else { &[0, 1, 2, 3, 3, 4, 6, 6, 6, 6, 7] };
    let what = match *pick(rng, kinds) {
        0 => {
            let keep = rng.below(bytes.len() as u64) as usize;
            return (bytes[..keep].to_vec(), format!("truncated to {keep} bytes"));
        }
        1 => {
            let mut out = bytes.to_vec();
            let flips = 1 + rng.below(8);
            for _ in 0..flips {
                let i = rng.below(out.len() as u64) as usize;
                out[i] ^= 1 << rng.below(8);
            }
            return (out, format!("{flips} bits flipped"));
        }
        2 => {
            let dtype = pick(rng, &["F32", "F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "F8_E4M3", "XYZ"]);
            file.header[&name]["dtype"] = json!(dtype);
            format!("{name}: dtype {dtype}")
        }
        3 => {
            let shape = file.header[&name]["shape"].as_array().unwrap().clone();
            let mut shape: Vec<i64> = shape.iter().map(|v| v.as_i64().unwrap()).collect();
            match rng.below(4) {
                0 => shape.reverse(),
                1 => shape.push(1),
                2 => shape.truncate(shape.len().saturating_sub(1)),
                _ => {
                    let i = rng.below(shape.len().max(1) as u64) as usize;
                    if let Some(v) = shape.get_mut(i) {
                        *v = *pick(rng, &[0, 1, *v + 1, *v * 2, 1 << 20, -1]);
                    }
                }
            }
            file.header[&name]["shape"] = json!(shape);
            format!("{name}: shape {shape:?}")
        }
        4 => {
            let offsets = pick(rng, &[json!([0, 0]), json!([8, 4]), json!([0, 1u64 << 40]), json!([0, 7]), json!([u64::MAX - 1, u64::MAX])]).clone();
            file.header[&name]["data_offsets"] = offsets.clone();
            format!("{name}: data_offsets {offsets}")
        }
        5 => {
            file.header.remove(&name);
            format!("{name} removed")
        }
        6 => {
            // Values: NaN, infinity, float32's limit, huge or negative ids.
            let info = &file.header[&name];
            let (start, end) = (info["data_offsets"][0].as_u64().unwrap() as usize, info["data_offsets"][1].as_u64().unwrap() as usize);
            let value: [u8; 8] = if is_model {
                let v = *pick(rng, &[f32::NAN, f32::INFINITY, f32::MAX, -1e30, 2f32.powi(31), -(2f32.powi(31)), 1e4, -1e4, 1e-40, 0.0]);
                [v.to_le_bytes(), v.to_le_bytes()].concat().try_into().unwrap()
            } else {
                pick(rng, &[-1i64, 0, 1, 2, 3, 39, 40, 41, i64::MAX, i64::MIN]).to_le_bytes()
            };
            let count = 1 + rng.below(((end - start) as u64 / 8).max(1));
            for _ in 0..count {
                let at = start + rng.below(((end - start) as u64 / 8).max(1)) as usize * 8;
                if at + 8 <= end {
                    file.data[at..at + 8].copy_from_slice(&value);
                }
            }
            format!("{name}: {count} values set to {value:?}")
        }
        7 => {
            let len = pick(rng, &[0u64, 7, 1 << 40, u64::MAX]);
            let mut out = len.to_le_bytes().to_vec();
            out.extend(&bytes[8..]);
            return (out, format!("header length {len}"));
        }
        _ => {
            let Some(mut config) = file.config() else { return (bytes.to_vec(), "unchanged".into()) };
            let keys: Vec<String> = config.keys().cloned().chain(["tie_layer_weights".into(), "num_pheads".into(), "unknown".into()]).collect();
            let key = pick(rng, &keys).clone();
            let value = odd_value(rng);
            if value.is_null() {
                config.remove(&key);
            } else {
                config.insert(key.clone(), value.clone());
            }
            file.set_config(&config);
            format!("luna.config {key} = {value}")
        }
    };
    (file.bytes(), what)
}

/// Every value finite, or the case fails naming `what`.
fn assert_finite(values: &[f32], what: &str) {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        panic!("{what}: a non-finite value {} at {i} came back as a result", values[i]);
    }
}

/// Runs a model on a batch on the GPU (when there is one) and the reference;
/// each must end in an error or in finite values.
fn run(engine: Option<&mut Engine>, model: &Model, batch: &Batch, what: &str) {
    if let Some(engine) = engine {
        match engine.load(model) {
            Err(e) => eprintln!("  gpu load: {e}"),
            Ok(gm) => match model.config.model {
                ModelKind::Encoder => match engine.encode_blocking(&gm, batch) {
                    Ok(out) => (assert_finite(&out.x, what), assert_finite(&out.p, what)).0,
                    Err(e) => eprintln!("  gpu: {e}"),
                },
                ModelKind::CausalLm => match engine.causal_forward_blocking(&gm, batch) {
                    Ok(out) => assert_finite(&out.logits, what),
                    Err(e) => eprintln!("  gpu: {e}"),
                },
            },
        }
    }
    match model.config.model {
        ModelKind::Encoder => match luna_wgpu::reference::encoder_output(model, batch) {
            Ok(out) => (assert_finite(&out.x, what), assert_finite(&out.p, what)).0,
            Err(e) => eprintln!("  cpu: {e}"),
        },
        ModelKind::CausalLm => match luna_wgpu::reference::causal_lm_checked(model, batch) {
            Ok(logits) => assert!(logits.iter().all(|v| (*v as f32).is_finite()), "{what}: non-finite logits"),
            Err(e) => eprintln!("  cpu: {e}"),
        },
    }
}

/// Small ids that every vocabulary of at least 3 holds, beyond padding.
fn batch_for(model: &Model) -> Option<Batch> {
    let c = &model.config;
    let ids: Vec<i64> = (0..12).map(|i| ((i * 7 + 2) % c.vocab_size.max(1)) as i64).map(|t| if t as usize == c.padding_idx { (t + 1) % c.vocab_size as i64 } else { t }).collect();
    Batch::new(c, &ids, 2, 6).ok()
}

fn seed() -> u64 {
    std::env::var("LUNA_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(14)
}

fn cases() -> u64 {
    std::env::var("LUNA_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(CASES)
}

/// The engine for the fuzz cases: the shared one, with autotuning off (each
/// mutated shape would otherwise time its GEMMs).
fn with_engine(f: impl FnOnce(Option<&mut Engine>)) {
    match common::engine() {
        Some(mut engine) => {
            engine.set_autotune(false);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(Some(&mut engine))));
            engine.set_autotune(true);
            result.unwrap_or_else(|p| std::panic::resume_unwind(p));
        }
        None => f(None),
    }
}

#[test]
fn mutated_model_files_end_in_an_error_or_a_finite_result() {
    let start = Instant::now();
    with_engine(|mut engine| {
        let (mut loaded, mut ran) = (0, 0);
        for fixture in ["public_encoder.model.safetensors", "public_causal.model.safetensors"] {
            let good = std::fs::read(common::fixture(fixture)).unwrap();
            let mut rng = Rng::new(seed() ^ good.len() as u64);
            for case in 0..cases() {
                let (bytes, what) = mutate(&mut rng, &good, true);
                let what = format!("{fixture} case {case} (seed {}): {what}", seed());
                eprintln!("{what}");
                let model = match Model::from_bytes(&bytes) {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("  load: {e}");
                        continue;
                    }
                };
                loaded += 1;
                if let Some(batch) = batch_for(&model) {
                    ran += 1;
                    run(engine.as_deref_mut(), &model, &batch, &what);
                }
            }
        }
        eprintln!("{loaded} mutated models loaded, {ran} ran, in {:.1} s", start.elapsed().as_secs_f64());
        assert!(loaded > 10 && ran > 10, "the mutations should leave some models valid to run");
    });
    assert_engine_still_works();
}

#[test]
fn mutated_token_files_end_in_an_error_or_a_finite_result() {
    let model = Model::load(&common::fixture("public_encoder.model.safetensors")).unwrap();
    let good = std::fs::read(common::fixture("public_encoder.input.safetensors")).unwrap();
    with_engine(|mut engine| {
        let mut rng = Rng::new(seed());
        let mut ran = 0;
        for case in 0..cases() {
            let (bytes, what) = mutate(&mut rng, &good, false);
            let what = format!("token file case {case} (seed {}): {what}", seed());
            eprintln!("{what}");
            match Batch::from_safetensors(&model.config, &bytes) {
                Ok(batch) => {
                    ran += 1;
                    run(engine.as_deref_mut(), &model, &batch, &what);
                }
                Err(e) => eprintln!("  input: {e}"),
            }
        }
        assert!(ran > 10, "the mutations should leave some token files valid to run");
    });
    assert_engine_still_works();
}

/// After every case, a good call still matches the float64 reference.
fn assert_engine_still_works() {
    let Some(mut engine) = common::engine() else { return };
    let model = Model::load(&common::fixture("public_encoder.model.safetensors")).unwrap();
    let batch = common::random_batch(&model.config, &[9, 4], 2);
    common::check_model(&mut engine, &model, &batch, 1e-4);
}
