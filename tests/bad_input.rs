//! Bad input never panics: every failure a user can cause comes back as a typed
//! `LunaError` whose message names the problem, and no failure leaves the GPU
//! engine unusable (after each one, a good call still matches the reference).

mod common;

use common::cli::TempDir;
use common::compare::{first_rows, max_err};
use common::configs;
use luna_wgpu::model::Model;
use luna_wgpu::sample::Sampler;
use luna_wgpu::tokenizer::Tokenizer;
use luna_wgpu::tensors::{self, Named};
use luna_wgpu::{Batch, Config, LunaError};
use safetensors::{tensor::TensorView, Dtype};
use serde_json::json;
use std::collections::HashMap;

/// Asserts that `$e` is an `Err` of variant `$pat` whose message contains every phrase; returns the error.
macro_rules! assert_err {
    ($e:expr, $pat:pat, $($phrase:expr),+ $(,)?) => {{
        match $e {
            Ok(_) => panic!("expected an error from `{}`, got Ok", stringify!($e)),
            Err(err) => {
                let msg = err.to_string();
                assert!(matches!(err, $pat), "`{}`: wrong variant {err:?} ({msg})", stringify!($e));
                $(assert!(msg.contains($phrase), "`{}`: message {msg:?} lacks {:?}", stringify!($e), $phrase);)+
                eprintln!("ok: {msg}");
                err
            }
        }
    }};
}

/// A good call on the shared GPU engine still succeeds and matches the float64 reference.
fn assert_engine_still_works() {
    let Some(mut engine) = common::engine() else { return };
    let c = small();
    let model = Model::random(&c, 7).unwrap();
    let batch = common::random_batch(&c, &[7, 4], 3);
    common::check_model(&mut engine, &model, &batch, 1e-4);
}

/// The small encoder of `common::configs` (vocabulary 50, d 24, ffn 40).
fn small() -> Config {
    configs::encoder(json!({}))
}

/// Owned tensors of a model, to be altered and written back.
type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

fn owned(model: &Model) -> Tensors {
    model.named_tensors().into_iter().map(|(n, s, d)| (n, s, d.to_vec())).collect()
}

fn write(tensors: &Tensors, config_json: Option<String>) -> Vec<u8> {
    let views: Vec<Named> = tensors.iter().map(|(n, s, d)| Named { name: n, shape: s.clone(), data: d }).collect();
    let meta = config_json.map(|j| HashMap::from([("luna.config".to_string(), j)]));
    tensors::serialize_f32(&views, meta).unwrap()
}

/// A model file of `config` (random weights) after `edit` changed its tensors.
fn model_file(config: &Config, edit: impl FnOnce(&mut Tensors)) -> Vec<u8> {
    let model = Model::random(config, 11).unwrap();
    let mut t = owned(&model);
    edit(&mut t);
    write(&t, Some(config.to_json()))
}

/// A model file with good tensors for `small()` but `luna.config` replaced by `text` (or absent).
fn model_file_with_config(text: Option<String>) -> Vec<u8> {
    let model = Model::random(&small(), 11).unwrap();
    write(&owned(&model), text)
}

/// `small()`'s config JSON with keys overridden (a `null` removes the key).
fn config_json(overrides: serde_json::Value) -> String {
    configs::merge(serde_json::from_str(&small().to_json()).unwrap(), overrides).to_string()
}

fn tokens_file(dtype: Dtype, shape: &[usize], values: &[i64]) -> Vec<u8> {
    let bytes: Vec<u8> = match dtype {
        Dtype::I64 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::I32 => values.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
        Dtype::F32 => values.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect(),
        Dtype::U8 => values.iter().map(|&v| v as u8).collect(),
        other => panic!("{other:?}"),
    };
    let view = TensorView::new(dtype, shape.to_vec(), &bytes).unwrap();
    safetensors::serialize([("tokens", view)], None).unwrap()
}

// 1. Empty token tensors.

#[test]
fn empty_token_tensor_is_refused() {
    let c = small();
    assert_err!(Batch::new(&c, &[], 0, 5), LunaError::Input(_), "empty", "[0, 5]");
    assert_err!(Batch::new(&c, &[], 3, 0), LunaError::Input(_), "empty", "[3, 0]");
    assert_err!(Batch::new(&c, &[], 0, 0), LunaError::Input(_), "empty");
    // The same through a token file.
    assert_err!(Batch::from_safetensors(&c, &tokens_file(Dtype::I64, &[0, 5], &[])), LunaError::Input(_), "empty");
    assert_err!(Batch::from_safetensors(&c, &tokens_file(Dtype::I64, &[2, 0], &[])), LunaError::Input(_), "empty");
    // Tokens that do not fill the stated shape.
    assert_err!(Batch::new(&c, &[2, 3, 4], 2, 2), LunaError::Input(_), "do not fill");
    assert_err!(Batch::new(&c, &[2, 3, 4, 5], usize::MAX, 2), LunaError::Input(_), "do not fill");
    // A token file whose header claims an impossibly large shape.
    let header = br#"{"tokens":{"dtype":"I64","shape":[4611686018427387904,4],"data_offsets":[0,16]}}"#;
    let mut huge = (header.len() as u64).to_le_bytes().to_vec();
    huge.extend(header);
    huge.extend([0u8; 16]);
    assert_err!(Batch::from_safetensors(&c, &huge), LunaError::Input(_), "input file", "safetensors");
    assert_engine_still_works();
}

// 2. Token ids outside the vocabulary.

#[test]
fn token_out_of_vocabulary_is_refused() {
    let c = small(); // vocab_size 50
    assert_err!(Batch::new(&c, &[2, 3, 50, 4], 2, 2), LunaError::Input(_), "token 50", "[1, 0]", "vocabulary", "50");
    assert_err!(Batch::new(&c, &[2, 3, 4, i64::MAX], 1, 4), LunaError::Input(_), "vocabulary");
    assert_err!(Batch::new(&c, &[2, -1, 4], 1, 3), LunaError::Input(_), "token -1", "[0, 1]", "vocabulary");
    assert_err!(Batch::new(&c, &[i64::MIN, 2], 1, 2), LunaError::Input(_), "vocabulary");
    // int32 files: a negative id, and one above the vocabulary.
    assert_err!(
        Batch::from_safetensors(&c, &tokens_file(Dtype::I32, &[1, 3], &[2, -7, 3])),
        LunaError::Input(_),
        "token -7",
        "vocabulary"
    );
    assert_err!(
        Batch::from_safetensors(&c, &tokens_file(Dtype::I32, &[1, 3], &[2, 3, 1000])),
        LunaError::Input(_),
        "token 1000",
        "vocabulary"
    );
    // The largest id in range is fine.
    Batch::new(&c, &[49, 0, 2], 1, 3).unwrap();
    assert_engine_still_works();
}

// 3. All-padding sequences.

#[test]
fn all_padding_sequence_is_refused() {
    let c = small(); // padding_idx 1
    assert_err!(Batch::new(&c, &[1, 1, 1], 1, 3), LunaError::Input(_), "sequence 0", "all padding");
    assert_err!(Batch::new(&c, &[5, 6, 7, 1, 1, 1], 2, 3), LunaError::Input(_), "sequence 1", "all padding");
    // With a dynamic projection too (l' would be 0).
    let dynamic = configs::encoder(json!({"dynamic_projection": true}));
    assert_err!(Batch::new(&dynamic, &[4, 1, 1, 1], 2, 2), LunaError::Input(_), "sequence 1", "all padding");
    // A causal LM reads a sequence's first rows: padding before a real token is refused
    // (an encoder masks it wherever it is).
    let lm = configs::causal(json!({}));
    assert_err!(Batch::new(&lm, &[5, 6, 7, 1, 8, 9], 2, 3), LunaError::Input(_), "sequence 1", "position 0", "right-padded");
    assert_err!(Batch::new(&lm, &[5, 1, 7], 1, 3), LunaError::Input(_), "sequence 0", "position 1");
    assert!(Batch::new(&lm, &[5, 6, 7, 8, 1, 1], 2, 3).is_ok());
    assert!(Batch::new(&c, &[5, 1, 7], 1, 3).is_ok());
    assert_engine_still_works();
}

// 4. Sequences longer than the learned position table.

#[test]
fn too_many_tokens_for_learned_positions_is_refused() {
    let learned = configs::encoder(json!({"learned_pos": true, "max_positions": 8}));
    let (tokens, b, n) = luna_wgpu::init::random_tokens(&learned, &[12, 3], 5);
    assert_err!(Batch::new(&learned, &tokens, b, n), LunaError::Input(_), "sequence 0", "12 tokens", "max_positions = 8");
    // Exactly max_positions tokens is fine.
    let (ok, b8, n8) = luna_wgpu::init::random_tokens(&learned, &[8, 3], 5);
    Batch::new(&learned, &ok, b8, n8).unwrap();
    // Padding does not count: a row of 8 tokens padded to 12 is fine.
    let mut row = ok[..8].to_vec();
    row.extend([1, 1, 1, 1]);
    Batch::new(&learned, &row, 1, 12).unwrap();

    // Sinusoidal positions have no such limit: the same 12 tokens run, on the GPU too.
    let sinus = configs::encoder(json!({"learned_pos": false, "max_positions": 8, "embed_scale": 4.9}));
    let batch = Batch::new(&sinus, &tokens, b, n).unwrap();
    assert_eq!(batch.lengths, vec![12, 3]);
    if let Some(mut engine) = common::engine() {
        let model = Model::random(&sinus, 3).unwrap();
        common::check_model(&mut engine, &model, &batch, 1e-4);
    }
    assert_engine_still_works();
}

// 5. Token files of the wrong dtype or rank, or without `tokens`.

#[test]
fn token_file_with_wrong_dtype_rank_or_name_is_refused() {
    let c = small();
    assert_err!(
        Batch::from_safetensors(&c, &tokens_file(Dtype::F32, &[1, 3], &[2, 3, 4])),
        LunaError::Input(_),
        "\"tokens\"",
        "F32",
        "I32 or I64"
    );
    assert_err!(Batch::from_safetensors(&c, &tokens_file(Dtype::U8, &[1, 3], &[2, 3, 4])), LunaError::Input(_), "U8");
    assert_err!(
        Batch::from_safetensors(&c, &tokens_file(Dtype::I64, &[3], &[2, 3, 4])),
        LunaError::Input(_),
        "rank 1",
        "[B, n]"
    );
    assert_err!(
        Batch::from_safetensors(&c, &tokens_file(Dtype::I64, &[1, 1, 3], &[2, 3, 4])),
        LunaError::Input(_),
        "rank 3",
        "[1, 1, 3]"
    );
    assert_err!(Batch::from_safetensors(&c, &tokens_file(Dtype::I64, &[], &[2])), LunaError::Input(_), "rank 0");
    // No `tokens` tensor: the message lists what the file has.
    let data = [1.0f32, 2.0];
    let other = tensors::serialize_f32(&[Named { name: "ids", shape: vec![1, 2], data: &data }], None).unwrap();
    assert_err!(Batch::from_safetensors(&c, &other), LunaError::Input(_), "no tensor \"tokens\"", "ids");
    // Not a safetensors file at all, and an empty one.
    assert_err!(Batch::from_safetensors(&c, b"2 3 4 5\n"), LunaError::Input(_), "input file", "safetensors");
    assert_err!(Batch::from_safetensors(&c, &[]), LunaError::Input(_), "input file", "safetensors");
    // A model file given as the input.
    let model_bytes = Model::random(&c, 1).unwrap().to_bytes().unwrap();
    assert_err!(Batch::from_safetensors(&c, &model_bytes), LunaError::Input(_), "no tensor \"tokens\"", "embed_tokens.weight", "more)");
    assert_engine_still_works();
}

// 6. Unreadable model files.

#[test]
fn truncated_model_file_is_refused() {
    let bytes = Model::random(&small(), 2).unwrap().to_bytes().unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert!(8 + header < bytes.len());
    let cuts = [0, 1, 7, 8, 9, 8 + header / 2, 8 + header - 1, 8 + header, 8 + header + 1, bytes.len() / 2, bytes.len() - 4, bytes.len() - 1];
    for cut in cuts {
        assert_err!(Model::from_bytes(&bytes[..cut]), LunaError::Model(_), "model file", "safetensors");
    }
    // And through the file system.
    let dir = TempDir::new("truncated");
    let path = dir.path("cut.safetensors");
    std::fs::write(&path, &bytes[..8 + header / 2]).unwrap();
    assert_err!(Model::load(&path), LunaError::Model(_), "not a readable safetensors file");
    assert_engine_still_works();
}

#[test]
fn garbage_empty_and_missing_model_files_are_refused() {
    assert_err!(Model::from_bytes(&[]), LunaError::Model(_), "model file", "safetensors");
    assert_err!(Model::from_bytes(b"this is not a model"), LunaError::Model(_), "model file", "safetensors");
    // Deterministic pseudo-random garbage of several sizes, including a huge claimed header.
    let mut rng = luna_wgpu::init::Rng::new(99);
    for len in [8usize, 16, 100, 4096] {
        let g: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        assert_err!(Model::from_bytes(&g), LunaError::Model(_), "model file");
    }
    let mut huge = (u64::MAX / 2).to_le_bytes().to_vec();
    huge.extend(b"{}");
    assert_err!(Model::from_bytes(&huge), LunaError::Model(_), "model file");
    // A header that is JSON but not a safetensors header.
    let text = br#"{"hello": [1, 2, 3]}"#;
    let mut bad = (text.len() as u64).to_le_bytes().to_vec();
    bad.extend(text);
    assert_err!(Model::from_bytes(&bad), LunaError::Model(_), "model file");

    let dir = TempDir::new("missing");
    let missing = dir.path("no-such.model.safetensors");
    let e = assert_err!(Model::load(&missing), LunaError::Io { .. }, "no-such.model.safetensors");
    if let LunaError::Io { source, .. } = e {
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
    }
    // A directory instead of a file.
    assert_err!(Model::load(dir.dir()), LunaError::Io { .. }, dir.dir().to_str().unwrap());
    let empty = dir.path("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    assert_err!(Model::load(&empty), LunaError::Model(_), "safetensors");
    assert_engine_still_works();
}

/// Corrupting any single header byte of a model file gives an error or a model, never a panic.
#[test]
fn corrupted_header_bytes_never_panic() {
    let bytes = Model::random(&small(), 2).unwrap().to_bytes().unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut rng = luna_wgpu::init::Rng::new(5);
    let mut errors = 0;
    for i in (0..8 + header).step_by(3) {
        for v in [b'0', b'9', b'"', b'{', b'-', rng.next_u64() as u8] {
            let mut b = bytes.clone();
            b[i] = v;
            if Model::from_bytes(&b).is_err() {
                errors += 1;
            }
        }
    }
    assert!(errors > 0);
}

// 7. Files whose config and tensors do not match.

#[test]
fn missing_tensor_is_refused_by_name() {
    let c = small();
    let file = model_file(&c, |t| t.retain(|(n, _, _)| n != "layers.1.fc2.bias"));
    assert_err!(Model::from_bytes(&file), LunaError::Model(_), "missing tensor", "layers.1.fc2.bias");
    let file = model_file(&c, |t| t.retain(|(n, _, _)| n != "embed_positions.weight"));
    assert_err!(Model::from_bytes(&file), LunaError::Model(_), "missing tensor", "embed_positions.weight");
    // A tied-K/V file read with an untied config: the untied names are missing.
    let tied = configs::encoder(json!({"tie_kv": true}));
    let file = write(&owned(&Model::random(&tied, 3).unwrap()), Some(c.to_json()));
    assert_err!(Model::from_bytes(&file), LunaError::Model(_), "missing tensor", "pk_proj");
    // Pre-norm config on a post-norm file: the final norms are missing.
    let file = write(&owned(&Model::random(&c, 3).unwrap()), Some(config_json(json!({"normalize_before": true}))));
    assert_err!(Model::from_bytes(&file), LunaError::Model(_), "missing tensor", "layer_norm");
    assert_engine_still_works();
}

#[test]
fn misshapen_tensor_is_refused_by_name() {
    let c = small(); // d = 24, ffn = 40
    let file = model_file(&c, |t| {
        let e = t.iter_mut().find(|(n, _, _)| n == "layers.0.self_attn.q_proj.weight").unwrap();
        e.1 = vec![24, 23];
        e.2.truncate(24 * 23);
    });
    assert_err!(Model::from_bytes(&file), LunaError::Model(_), "layers.0.self_attn.q_proj.weight", "[24, 23]", "[24, 24]");
    // Transposed fc1.
    let file = model_file(&c, |t| {
        let e = t.iter_mut().find(|(n, _, _)| n == "layers.1.fc1.weight").unwrap();
        e.1 = vec![24, 40];
    });
    assert_err!(Model::from_bytes(&file), LunaError::Model(_), "layers.1.fc1.weight", "[24, 40]", "[40, 24]");
    // A vocabulary that disagrees with the config.
    let file = model_file(&c, |t| {
        let e = t.iter_mut().find(|(n, _, _)| n == "embed_tokens.weight").unwrap();
        e.1 = vec![49, 24];
        e.2.truncate(49 * 24);
    });
    assert_err!(Model::from_bytes(&file), LunaError::Model(_), "embed_tokens.weight", "[49, 24]", "[50, 24]");
    // A norm stored as a matrix.
    let file = model_file(&c, |t| {
        let e = t.iter_mut().find(|(n, _, _)| n == "layers.0.final_layer_norm.weight").unwrap();
        e.1 = vec![1, 24];
    });
    assert_err!(Model::from_bytes(&file), LunaError::Model(_), "layers.0.final_layer_norm.weight", "[1, 24]");
    assert_engine_still_works();
}

#[test]
fn integer_weight_tensor_is_refused_by_name() {
    let c = small();
    let model = Model::random(&c, 3).unwrap();
    let t = owned(&model);
    let bytes: Vec<Vec<u8>> = t
        .iter()
        .map(|(n, _, d)| {
            if n == "projected_embeddings" {
                d.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect()
            } else {
                bytemuck::cast_slice(d).to_vec()
            }
        })
        .collect();
    let views: Vec<(String, TensorView)> = t
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            let dtype = if n == "projected_embeddings" { Dtype::I32 } else { Dtype::F32 };
            (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap())
        })
        .collect();
    let meta = HashMap::from([("luna.config".to_string(), c.to_json())]);
    let file = safetensors::serialize(views, Some(meta)).unwrap();
    assert_err!(Model::from_bytes(&file), LunaError::Model(_), "projected_embeddings", "I32");
}

#[test]
fn unknown_activation_is_refused() {
    let file = model_file_with_config(Some(config_json(json!({"activation": "swish"}))));
    assert_err!(Model::from_bytes(&file), LunaError::Config(_), "unknown activation", "swish");
    let file = model_file_with_config(Some(config_json(json!({"model": "decoder"}))));
    assert_err!(Model::from_bytes(&file), LunaError::Config(_), "decoder");
    assert_engine_still_works();
}

#[test]
fn embed_dim_not_divisible_by_head_counts_is_refused() {
    let file = model_file_with_config(Some(config_json(json!({"num_heads": 5}))));
    assert_err!(Model::from_bytes(&file), LunaError::Config(_), "embed_dim 24", "not divisible by num_heads 5");
    let file = model_file_with_config(Some(config_json(json!({"num_pheads": 7}))));
    assert_err!(Model::from_bytes(&file), LunaError::Config(_), "embed_dim 24", "not divisible by num_pheads 7");
    let file = model_file_with_config(Some(config_json(json!({"num_heads": 0}))));
    assert_err!(Model::from_bytes(&file), LunaError::Config(_), "num_heads must be at least 1");
    // The same checks on a config alone.
    assert_err!(Config::from_json(&config_json(json!({"num_heads": 7}))), LunaError::Config(_), "num_heads 7");
    assert_engine_still_works();
}

#[test]
fn missing_or_invalid_config_metadata_is_refused() {
    let file = model_file_with_config(None);
    assert_err!(Model::from_bytes(&file), LunaError::Model(_), "luna.config");
    let file = model_file_with_config(Some("{\"model\": \"encoder\", ".into()));
    assert_err!(Model::from_bytes(&file), LunaError::Config(_), "luna.config", "not valid JSON");
    let file = model_file_with_config(Some("[1, 2, 3]".into()));
    assert_err!(Model::from_bytes(&file), LunaError::Config(_), "luna.config");
    // A required key missing, a key of the wrong type, a negative size.
    let file = model_file_with_config(Some(config_json(json!({"embed_dim": null}))));
    assert_err!(Model::from_bytes(&file), LunaError::Config(_), "embed_dim");
    let file = model_file_with_config(Some(config_json(json!({"vocab_size": "fifty"}))));
    assert_err!(Model::from_bytes(&file), LunaError::Config(_), "luna.config");
    let file = model_file_with_config(Some(config_json(json!({"ffn_embed_dim": -40}))));
    assert_err!(Model::from_bytes(&file), LunaError::Config(_), "luna.config");
    // Values that cannot work.
    let file = model_file_with_config(Some(config_json(json!({"padding_idx": 50}))));
    assert_err!(Model::from_bytes(&file), LunaError::Config(_), "padding_idx 50", "vocab_size 50");
    let file = model_file_with_config(Some(config_json(json!({"layer_norm_eps": 0.0}))));
    assert_err!(Model::from_bytes(&file), LunaError::Config(_), "layer_norm_eps");
    let file = model_file_with_config(Some(config_json(json!({"vocab_size": 1u64 << 40}))));
    assert_err!(Model::from_bytes(&file), LunaError::Config(_), "vocab_size = 1099511627776", "over this engine's limit");
    assert_engine_still_works();
}

#[test]
fn non_finite_weight_is_refused_by_name() {
    let c = small();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let file = model_file(&c, |t| {
            let e = t.iter_mut().find(|(n, _, _)| n == "layers.1.self_attn.out_proj.weight").unwrap();
            e.2[37] = bad;
        });
        assert_err!(Model::from_bytes(&file), LunaError::Model(_), "layers.1.self_attn.out_proj.weight", "not a finite float32", "index 37");
    }
    assert_engine_still_works();
}

/// A head dimension beyond the attention kernel is refused at upload, and the engine stays usable.
#[test]
fn head_dim_beyond_the_kernel_is_refused_at_load() {
    let Some(engine) = common::engine() else { return };
    let max = luna_wgpu::kernels::attention::MAX_HEAD_DIM;
    let d = 2 * max;
    let c = configs::encoder(json!({
        "embed_dim": d, "num_heads": 1, "num_pheads": 4, "ffn_embed_dim": 4, "num_layers": 1,
        "tie_kv": true, "tie_layer_weights": true, "vocab_size": 8, "max_positions": 8, "projection_length": 2,
    }));
    let model = Model::random(&c, 1).unwrap();
    assert_err!(engine.load(&model), LunaError::Unsupported(_), "head dimension", "num_heads");
    drop(engine);
    assert_engine_still_works();
}

// 8. Batches beyond one binding, and beyond the device's memory.

/// The model of the next two tests: the feed-forward hidden layer `[rows,
/// ffn]` is the widest buffer (16384 floats a row), with small weights.
/// (Not a larger ffn: lavapipe's loop limiter silently cuts GEMM reductions
/// over K beyond about 50000.)
fn wide_ffn_model() -> (luna_wgpu::Config, Model) {
    let c = configs::encoder(json!({
        "embed_dim": 8, "num_heads": 2, "num_pheads": 2, "ffn_embed_dim": 1 << 14, "num_layers": 1,
        "learned_pos": false, "embed_scale": 2.0, "projection_length": 4, "vocab_size": 20,
    }));
    let model = Model::random(&c, 4).unwrap();
    (c, model)
}

#[test]
fn batch_beyond_one_binding_runs_in_row_blocks() {
    let Some(mut engine) = common::engine() else { return };
    let limit = engine.ctx.max_binding();
    let (c, model) = wide_ffn_model();
    // Enough rows that the whole batch's hidden layer passes one binding.
    let rows = (limit / (c.ffn_embed_dim as u64 * 4)) as usize + 1;
    assert!(rows < 1 << 22, "binding limit {limit} too large for this test's shapes");
    let n = rows.div_ceil(2);
    let (tokens, b, n) = luna_wgpu::init::random_tokens(&c, &[n, n - 3], 8);
    let batch = Batch::new(&c, &tokens, b, n).unwrap();
    assert!((b * n * c.ffn_embed_dim * 4) as u64 > limit);
    let cut = engine.encoder_cut(&c, &batch).unwrap();
    assert!(cut.block_rows < n, "{cut:?}");
    let gm = engine.load(&model).unwrap();
    let out = engine.encode_blocking(&gm, &batch).unwrap();
    let reference = luna_wgpu::reference::encoder_forward(&model, &batch);
    let (ex, mx) = max_err(&out.x, &reference.x, c.embed_dim, |r| !batch.x_mask[r]);
    assert!(ex <= 1e-4 * mx.max(1.0), "x error {ex}");
    drop(gm);
    drop(engine);
    assert_engine_still_works();
}

#[test]
fn sequence_over_the_memory_limit_is_refused_before_gpu_work() {
    let Some(mut engine) = common::engine() else { return };
    let (c, model) = wide_ffn_model();
    let gm = engine.load(&model).unwrap();
    engine.release_workspace();
    let (held, _) = engine.memory();
    // Room for the weights and 4 MiB: a 10,000-token sequence needs more.
    let before = engine.memory_limit();
    let limit = held + (4 << 20);
    engine.set_memory_limit(Some(limit));
    let batch = common::random_batch(&c, &[10_000], 9);
    engine.reset_peak_memory();
    let e = assert_err!(engine.encode_blocking(&gm, &batch), LunaError::OutOfMemory(_), "MiB", "longest single sequence that fits is");
    let (_, peak) = engine.memory();
    assert!(peak <= held, "the refused call allocated GPU memory ({peak} > {held} bytes)");
    let longest: usize = e.to_string().rsplit("fits is ").next().unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(longest > 0 && longest < 10_000, "{e}");
    // Without the limit, a longer pass leaves its scratch (about 30 MiB) in the workspace.
    engine.set_memory_limit(before);
    engine.encode_blocking(&gm, &common::random_batch(&c, &[2000], 8)).unwrap();
    let (stale, _) = engine.memory();
    assert!(stale > limit, "{stale} {limit}");
    // Under the limit again, the length the message named runs, the stale
    // scratch given back first; a little more is refused.
    engine.set_memory_limit(Some(limit));
    let out = engine.encode_blocking(&gm, &common::random_batch(&c, &[longest], 10));
    let (live, _) = engine.memory();
    let refused = engine.encode_blocking(&gm, &common::random_batch(&c, &[longest + 64], 11));
    engine.set_memory_limit(before);
    out.unwrap();
    assert!(live <= limit, "after the call that fits the engine holds {live} bytes, over the limit of {limit}");
    assert!(matches!(refused, Err(LunaError::OutOfMemory(_))), "{refused:?}");
    drop(gm);
    drop(engine);
    assert_engine_still_works();
}

/// A model with a tensor beyond the binding limit is refused at upload, and the engine stays usable.
#[test]
fn tensor_beyond_the_binding_limit_is_refused_at_load() {
    let Some(mut engine) = common::engine() else { return };
    let limit = engine.ctx.max_binding();
    if limit > 256 << 20 {
        eprintln!("skipped: the binding limit ({limit} bytes) would need a large host allocation");
        return;
    }
    let d = 8;
    let vocab = (limit / (d as u64 * 4)) as usize + 1;
    let c = configs::encoder(json!({
        "embed_dim": d, "num_heads": 2, "num_pheads": 2, "ffn_embed_dim": 8, "num_layers": 1,
        "vocab_size": vocab, "max_positions": 16, "projection_length": 2,
    }));
    let model = Model::random(&c, 4).unwrap();
    assert_err!(engine.load(&model), LunaError::TooLarge { .. }, "embed_tokens", &limit.to_string());
    drop(model);
    let batch = common::random_batch(&small(), &[5, 3], 1);
    let good = Model::random(&small(), 2).unwrap();
    common::check_model(&mut engine, &good, &batch, 1e-4);
}

// 9. Causal LM files, their tokenizer, sampling, and the causal engine paths.

/// `common::configs::byte_lm` with a smaller FFN (24), 64 positions and relu.
fn causal(overrides: serde_json::Value) -> Config {
    configs::byte_lm(configs::merge(json!({"ffn_embed_dim": 24, "max_positions": 64, "activation": "relu"}), overrides))
}

#[test]
fn causal_lm_models_load_and_keep_their_tokenizer() {
    let path = common::fixture("public_causal.model.safetensors");
    let model = Model::load(&path).unwrap();
    assert_eq!(model.config.model, luna_wgpu::ModelKind::CausalLm);
    assert!(model.layers.is_empty() && !model.causal_layers.is_empty());
    // The fixture has no tokenizer; its vocabulary (40) is too small for one.
    assert!(Tokenizer::from_model(&model).unwrap().is_none());
    assert_err!(Tokenizer::bytes_for(&model.config), LunaError::Config(_), "vocab_size 40 is too small");
    // A random causal model with a tokenizer survives a save and load.
    let c = causal(json!({}));
    let mut m = Model::random(&c, 1).unwrap();
    let (tok, _) = Tokenizer::bytes_for(&c).unwrap();
    tok.store(&mut m).unwrap();
    let back = Model::from_bytes(&m.to_bytes().unwrap()).unwrap();
    assert_eq!(Tokenizer::from_model(&back).unwrap(), Some(tok.clone()));
    // A tokenizer that does not fit the model is refused when stored, and when read back.
    let wide = Tokenizer { offset: 4, ..tok.clone() };
    assert_err!(wide.store(&mut m), LunaError::Model(_), "luna.tokenizer", "vocab_size 259");
    m.metadata.insert("luna.tokenizer".into(), wide.to_json());
    let back = Model::from_bytes(&m.to_bytes().unwrap()).unwrap();
    assert_err!(Tokenizer::from_model(&back), LunaError::Model(_), "luna.tokenizer", "do not fit");
    m.metadata.insert("luna.tokenizer".into(), r#"{"kind":"sentencepiece"}"#.into());
    assert_err!(Tokenizer::from_model(&m), LunaError::Model(_), "unknown tokenizer kind", "sentencepiece");
    assert_engine_still_works();
}

#[test]
fn bad_sampling_parameters_and_logits_are_refused() {
    assert_err!(Sampler::new(-0.5, None, 0), LunaError::Input(_), "temperature -0.5");
    assert_err!(Sampler::new(f64::NAN, None, 0), LunaError::Input(_), "temperature NaN");
    assert_err!(Sampler::new(f64::INFINITY, Some(3), 0), LunaError::Input(_), "temperature inf");
    assert_err!(Sampler::new(1.0, Some(0), 0), LunaError::Input(_), "top-k 0");
    let mut s = Sampler::new(1.0, Some(4), 0).unwrap();
    assert_err!(s.sample(&[0.5f32, f32::NAN]), LunaError::Input(_), "logit 1 is NaN");
    assert_err!(s.sample::<f64>(&[]), LunaError::Input(_), "empty");
    // The sampler still works after a refusal.
    assert_eq!(s.sample(&[0.0f32, 50.0, -50.0]).unwrap(), 1);
    // Logits that do not fit the batch.
    let c = causal(json!({}));
    let batch = common::random_batch(&c, &[5, 3], 1);
    assert_err!(luna_wgpu::sample::next_token_bits(&[0.0f64; 10], c.vocab_size, &batch), LunaError::Input(_), "do not fill");
}

/// The GPU engine with its causal paths, or `None` (skip) without an adapter or while
/// the causal paths are unsupported (a good call tells).
fn causal_engine(model: &Model) -> Option<(std::sync::MutexGuard<'static, luna_wgpu::Engine>, luna_wgpu::GpuModel)> {
    let mut engine = common::engine()?;
    let gm = engine.load(model).unwrap();
    match engine.prefill_blocking(&gm, &[5, 6, 7]) {
        Err(LunaError::Unsupported(m)) => {
            eprintln!("skipped: prefill is unsupported: {m}");
            None
        }
        r => {
            r.unwrap();
            Some((engine, gm))
        }
    }
}

/// The causal engine paths refuse bad input with a typed error, and stay usable.
#[test]
fn bad_causal_input_is_refused_by_the_engine() {
    let c = causal(json!({"learned_pos": true, "max_positions": 8}));
    let model = Model::random(&c, 3).unwrap();
    let Some((mut engine, gm)) = causal_engine(&model) else { return };
    // An empty prompt, tokens outside the vocabulary, padding in a prompt.
    assert_err!(engine.prefill_blocking(&gm, &[]), LunaError::Input(_), "empty");
    assert_err!(engine.prefill_blocking(&gm, &[5, 259]), LunaError::Input(_), "259", "vocabulary");
    assert_err!(engine.prefill_blocking(&gm, &[5, 1, 6]), LunaError::Input(_), "padding");
    // More tokens than the learned positions.
    assert!(engine.prefill_blocking(&gm, &[9; 8]).is_ok());
    assert_err!(engine.prefill_blocking(&gm, &[9; 9]), LunaError::Input(_), "max_positions = 8");
    // A decoder cannot step past max_positions, nor take a bad token.
    let (mut dec, _) = engine.prefill_blocking(&gm, &[9; 7]).unwrap();
    assert_err!(engine.step_blocking(&gm, &mut dec, 300), LunaError::Input(_), "300");
    assert_err!(engine.step_blocking(&gm, &mut dec, 1), LunaError::Input(_), "padding");
    let state = dec.state_bytes();
    engine.step_blocking(&gm, &mut dec, 10).unwrap();
    assert_eq!(dec.state_bytes(), state, "the decoder state grew");
    assert_err!(engine.step_blocking(&gm, &mut dec, 10), LunaError::Input(_), "max_positions = 8");
    // A batch for another model.
    let other = Batch::new(&causal(json!({"vocab_size": 300})), &[5, 280, 6], 1, 3).unwrap();
    assert_err!(engine.causal_forward_blocking(&gm, &other), LunaError::Input(_), "token 280", "vocabulary");
    assert_err!(engine.score_blocking(&gm, &other), LunaError::Input(_), "token 280", "vocabulary");
    // An encoder given to the causal paths, and a causal LM given to the encoder path.
    let enc = Model::random(&small(), 2).unwrap();
    let egm = engine.load(&enc).unwrap();
    let ebatch = common::random_batch(&small(), &[4, 2], 1);
    assert_err!(engine.prefill_blocking(&egm, &[5, 6]), LunaError::Unsupported(_), "encoder");
    assert_err!(engine.causal_forward_blocking(&egm, &ebatch), LunaError::Unsupported(_), "encoder");
    assert_err!(engine.score_blocking(&egm, &ebatch), LunaError::Unsupported(_), "encoder");
    let batch = common::random_batch(&c, &[4, 2], 1);
    assert_err!(engine.encode_blocking(&gm, &batch), LunaError::Unsupported(_), "causal_lm");
    // A decoder of one model given to another.
    let m2 = Model::random(&c, 4).unwrap();
    let gm2 = engine.load(&m2).unwrap();
    let (mut dec2, _) = engine.prefill_blocking(&gm2, &[5]).unwrap();
    assert_err!(engine.step_blocking(&gm, &mut dec2, 5), LunaError::Input(_), "another model");
    // Still good: the parallel logits match the reference.
    let out = engine.causal_forward_blocking(&gm, &batch).unwrap();
    let want = luna_wgpu::reference::causal_lm_forward(&model, &batch);
    let v = c.vocab_size;
    let (err, mag) = max_err(&out.logits, &want, v, first_rows(batch.len, &batch.lengths));
    assert!(err <= 1e-4 * mag.max(1.0), "logits error {err}");
    drop(engine);
    assert_engine_still_works();
}
