//! Hostile files and sizes given to the `luna` binary: each run ends with
//! `error: ...` and exit code 1, or with a correct, finite result, and does
//! so quickly, without a signal, a hang or a NaN. (`tests/bad_input.rs`
//! covers the library's typed errors; `tests/fuzz.rs` mutates files at random.)

mod common;

use common::cli::{assert_fails, assert_fails_first, assert_ok, forward, luna, luna_command, read, s, write_tokens, TempDir};
use common::configs;
use luna_wgpu::model::KvProj;
use luna_wgpu::{Config, LunaError, Model};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

fn save(model: &Model, path: &Path) {
    model.save(path).unwrap();
}

/// Writes `count` tokens of one sequence, cycling through ids 3, 4, ...
fn tokens(path: &Path, c: &Config, count: usize) {
    let ids: Vec<i64> = (0..count).map(|i| 3 + (i % (c.vocab_size - 3)) as i64).collect();
    write_tokens(path, &ids, [1, count]);
}

/// A config with the widest positions table there is (max_positions 2^24 at
/// d = 1024) runs a 3-token input at once, on the GPU and the CPU, with the
/// same result: positions are sized by the input, not by the config.
#[test]
fn max_positions_does_not_size_anything() {
    let temp = TempDir::new("positions");
    for c in [
        configs::encoder(json!({"embed_dim": 1024, "ffn_embed_dim": 64, "num_layers": 1, "num_heads": 2, "max_positions": 1 << 24, "learned_pos": false})),
        configs::causal(json!({"embed_dim": 1024, "ffn_embed_dim": 64, "num_layers": 1, "num_heads": 2, "max_positions": 1 << 24})),
    ] {
        let (model, input) = (temp.path("m.safetensors"), temp.path("t.safetensors"));
        save(&Model::random(&c, 1).unwrap(), &model);
        tokens(&input, &c, 3);
        let start = Instant::now();
        let cpu = forward(&model, &input, &temp.path("cpu.safetensors"), "cpu");
        assert_ok(&cpu, "forward --device cpu");
        if common::has_gpu() {
            let gpu = forward(&model, &input, &temp.path("gpu.safetensors"), "gpu");
            assert_ok(&gpu, "forward --device gpu");
            assert_ok(&luna(&["compare", &s(&temp.path("gpu.safetensors")), &s(&temp.path("cpu.safetensors")), "--tolerance", "1e-4"]), "compare");
        }
        assert!(start.elapsed() < Duration::from_secs(60), "took {:?}", start.elapsed());
    }
}

/// `num_layers` 10^6 with tied layer weights is an 18 KB file whose work is
/// unbounded: refused when the config is read, by init-random and by forward.
#[test]
fn absurd_layer_and_head_counts_are_refused() {
    let temp = TempDir::new("layers");
    let mut model = Model::random(&configs::byte_lm(json!({"tie_layer_weights": true})), 1).unwrap();
    model.config.num_layers = 1_000_000;
    save(&model, &temp.path("m.safetensors"));
    tokens(&temp.path("t.safetensors"), &model.config, 3);
    for device in ["gpu", "cpu"] {
        let o = forward(&temp.path("m.safetensors"), &temp.path("t.safetensors"), &temp.path("o.safetensors"), device);
        assert_fails_first(&o, &["num_layers = 1000000", "limit of 1024", "tie_layer_weights"]);
    }
    for (key, value) in [("num_layers", 4096), ("num_heads", 2048)] {
        let mut config = serde_json::to_value(configs::byte_lm(json!({}))).unwrap();
        config[key] = json!(value);
        config["embed_dim"] = json!(4096);
        std::fs::write(temp.path("c.json"), config.to_string()).unwrap();
        let o = luna(&["init-random", "--config", &s(&temp.path("c.json")), "--out", &s(&temp.path("x.safetensors"))]);
        assert_fails_first(&o, &[&format!("{key} = {value}"), "limit"]);
    }
}

/// The attention's partial results at d = 64, one head, l = 8192 and
/// n = 65,536 pass one binding: the check before any GPU work names the
/// buffer, its size and the limit (it used to reach wgpu's validation).
#[test]
fn a_scratch_buffer_beyond_one_binding_is_refused_before_gpu_work() {
    if !common::has_gpu() {
        return;
    }
    let temp = TempDir::new("scratch");
    let c = configs::encoder(json!({"embed_dim": 64, "ffn_embed_dim": 64, "num_layers": 1, "num_heads": 1, "projection_length": 8192, "max_positions": 100000}));
    save(&Model::random(&c, 1).unwrap(), &temp.path("m.safetensors"));
    tokens(&temp.path("t.safetensors"), &c, 65536);
    let o = forward(&temp.path("m.safetensors"), &temp.path("t.safetensors"), &temp.path("o.safetensors"), "gpu");
    let line = assert_fails(&o, &["the attention's partial results", "bytes in one buffer binding", "limit of"]);
    assert!(!line.contains("bug"), "{line}");
}

/// Weights and scales near float32's limit: refused at load when they are
/// beyond what float32 arithmetic can carry, and caught on readback when
/// they are within it but the computation still overflows.
#[test]
fn float32_overflow_ends_in_an_error_not_nan() {
    let temp = TempDir::new("overflow");
    let c = configs::encoder(json!({"num_layers": 1}));
    let (m, t, o) = (temp.path("m.safetensors"), temp.path("t.safetensors"), temp.path("o.safetensors"));
    tokens(&t, &c, 9);

    let mut model = Model::random(&c, 1).unwrap();
    model.layers[0].fc1.weight[5] = 3e38;
    save(&model, &m);
    assert_fails_first(&forward(&m, &t, &o, "gpu"), &["fc1.weight", "3e38", "overflow float32"]);

    let mut model = Model::random(&c, 1).unwrap();
    model.config.embed_scale = 1e38;
    save(&model, &m);
    assert_fails_first(&forward(&m, &t, &o, "cpu"), &["embed_scale", "float32"]);

    // Within every bound, yet the pack's scores overflow float32 (about 2^137):
    // the GPU's softmax would give NaN. The float64 reference does not overflow.
    let mut model = Model::random(&c, 1).unwrap();
    model.config.embed_scale = 2f64.powi(32);
    model.embed_tokens.fill(2f32.powi(31));
    model.projected_embeddings.fill(2f32.powi(31));
    let layer = &mut model.layers[0];
    layer.pq_proj.weight.fill(1.0);
    match &mut layer.pack_kv {
        KvProj::Tied(k) | KvProj::Separate { k, .. } => k.weight.fill(1.0),
    }
    save(&model, &m);
    if common::has_gpu() {
        assert_fails(&forward(&m, &t, &o, "gpu"), &["not finite", "overflow float32"]);
    }
    let cpu = forward(&m, &t, &o, "cpu");
    if cpu.status.success() {
        let (x, _) = read(&o, "x");
        assert!(x.iter().all(|v| v.is_finite()), "the reference wrote a non-finite x");
    } else {
        assert_fails(&cpu, &["not finite"]);
    }
}

/// The float64 reference estimates its memory first: a causal LM at
/// n = 10^7 (about 6 GB of logits) and an encoder over its budget are
/// refused at once with the estimate, instead of aborting in the allocator.
#[test]
fn the_cpu_reference_refuses_what_it_cannot_hold() {
    let temp = TempDir::new("cpu-budget");
    let c = configs::causal(json!({"learned_pos": false}));
    let (m, t, o) = (temp.path("m.safetensors"), temp.path("t.safetensors"), temp.path("o.safetensors"));
    save(&Model::random(&c, 1).unwrap(), &m);
    tokens(&t, &c, 10_000_000);
    let start = Instant::now();
    let out = luna_command().args(["forward", "--device", "cpu", "--model", &s(&m), "--input", &s(&t), "--output", &s(&o)]).env_remove("LUNA_CPU_MEMORY_LIMIT").output().unwrap();
    assert_fails_first(&out, &["float64 CPU reference", "GiB of host memory", "LUNA_CPU_MEMORY_LIMIT"]);
    assert!(start.elapsed() < Duration::from_secs(60));

    let c = configs::encoder(json!({"learned_pos": false}));
    save(&Model::random(&c, 1).unwrap(), &m);
    tokens(&t, &c, 20_000);
    let run = |limit: &str| luna_command().args(["forward", "--device", "cpu", "--model", &s(&m), "--input", &s(&t), "--output", &s(&o)]).env("LUNA_CPU_MEMORY_LIMIT", limit).output().unwrap();
    assert_fails_first(&run("8M"), &["float64 CPU reference", "1 × 20000 tokens", "budget of 0.01 GiB"]);
    assert_ok(&run("1G"), "forward --device cpu within the budget");
}

/// Devices, pipes and folders are not read as files: /dev/zero as any input
/// file ends at once instead of reading until memory runs out.
#[test]
fn only_regular_files_are_read() {
    let temp = TempDir::new("reads");
    let c = configs::byte_lm(json!({}));
    let (model, tok) = configs::byte_model(&c, 1);
    let m = temp.path("m.safetensors");
    save(&model, &m);
    let _ = tok;
    let t = temp.path("t.safetensors");
    tokens(&t, &c, 5);
    let (m, t, o) = (s(&m), s(&t), s(&temp.path("o.safetensors")));
    let dir = s(temp.dir());
    for args in [
        vec!["forward", "--model", "/dev/zero", "--input", &t, "--output", &o],
        vec!["forward", "--model", &m, "--input", "/dev/zero", "--output", &o],
        vec!["forward", "--model", &dir, "--input", &t, "--output", &o],
        vec!["init-random", "--config", "/dev/zero", "--out", &o],
        vec!["score", "--model", &m, "--text", "/dev/zero"],
        vec!["score", "--model", &m, "--tokens", "/dev/zero"],
        vec!["compare", "/dev/zero", &t],
    ] {
        let start = Instant::now();
        assert_fails_first(&luna(&args), &["not a regular file"]);
        assert!(start.elapsed() < Duration::from_secs(30));
    }
}

/// A model's weights, and a causal pass (one pass, or segment by segment),
/// are checked against the device's memory before any GPU work, and the
/// engine holds nothing more for a refused call.
#[test]
fn causal_passes_and_weights_over_the_memory_limit_are_refused_before_gpu_work() {
    let Some(mut engine) = common::engine() else { return };
    let c = configs::byte_lm(json!({}));
    let model = Model::random(&c, 3).unwrap();
    let before = engine.memory_limit();
    engine.release_workspace();
    let (held, _) = engine.memory();
    engine.set_memory_limit(Some(held + 1024));
    let weights = engine.load(&model);
    engine.set_memory_limit(before);
    match weights {
        Err(e @ LunaError::OutOfMemory(_)) => assert!(e.to_string().contains("weights need"), "{e}"),
        other => panic!("weights over the limit were not refused: {:?}", other.map(|_| ())),
    }

    let gm = engine.load(&model).unwrap();
    engine.release_workspace();
    let (held, _) = engine.memory();
    let batch = common::random_batch(&c, &[2000], 1);
    engine.set_memory_limit(Some(held + (64 << 10)));
    engine.reset_peak_memory();
    let one_pass = engine.causal_forward_blocking(&gm, &batch).map(|_| ());
    let segments = common::with_segment_rows(&mut engine, 512, |e| e.score_blocking(&gm, &batch).map(|_| ()));
    let (_, peak) = engine.memory();
    engine.set_memory_limit(before);
    for result in [one_pass, segments] {
        match result {
            Err(e @ LunaError::OutOfMemory(_)) => assert!(e.to_string().contains("tokens of this causal LM needs"), "{e}"),
            other => panic!("a causal pass over the limit was not refused: {other:?}"),
        }
    }
    assert!(peak <= held, "a refused call allocated GPU memory ({peak} > {held} bytes)");
    let want = luna_wgpu::reference::causal_lm_forward(&model, &batch);
    let got = engine.causal_forward_blocking(&gm, &batch).unwrap();
    let err = got.logits.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
    assert!(err < 1e-3, "after the refusals the engine gives logits {err} off the reference");
}
