//! The `luna` binary: bad input ends in a one-line `error:` and a non-zero exit
//! (never a panic), and good input gives the reference's numbers on every device.

mod common;

use common::cli::{assert_fails, assert_fails_first, assert_ok, forward, luna, luna_command, read, read_counts, s, stderr, write_tokens, TempDir};
use common::compare::max_diff;
use common::{fixture, has_gpu};
use luna_wgpu::model::Model;
use luna_wgpu::{tensors, AdapterChoice, Batch, Engine};
use std::path::PathBuf;

fn encoder_model() -> PathBuf {
    fixture("public_encoder.model.safetensors")
}

#[test]
fn forward_with_bad_token_file_fails_cleanly() {
    let dir = TempDir::new("bad-tokens");
    let out = dir.path("out.safetensors");
    let vocab = Model::load(&encoder_model()).unwrap().config.vocab_size as i64;
    let token = format!("token {vocab}");
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "out-of-vocab",
            tensors::serialize_tokens(&[2, 3, vocab, 4], [1, 4]).unwrap(),
            vec!["invalid input", &token, "vocabulary"],
        ),
        ("negative", tensors::serialize_tokens(&[2, -3, 4], [1, 3]).unwrap(), vec!["invalid input", "token -3"]),
        ("all-padding", tensors::serialize_tokens(&[2, 3, 1, 1], [2, 2]).unwrap(), vec!["sequence 1", "all padding"]),
        ("empty", tensors::serialize_tokens(&[], [0, 4]).unwrap(), vec!["empty"]),
        (
            "too-long",
            tensors::serialize_tokens(&vec![5; 200], [1, 200]).unwrap(),
            vec!["200 tokens", "max_positions = 128"],
        ),
        ("not-safetensors", b"1 2 3 4\n".to_vec(), vec!["input file", "safetensors"]),
        ("empty-file", Vec::new(), vec!["input file", "safetensors"]),
        ("a-model-file", std::fs::read(encoder_model()).unwrap(), vec!["no tensor \"tokens\""]),
    ];
    for (name, bytes, phrases) in cases {
        let input = dir.path(&format!("{name}.safetensors"));
        std::fs::write(&input, bytes).unwrap();
        let o = forward(&encoder_model(), &input, &out, "cpu");
        assert_fails_first(&o, &phrases);
        assert!(!out.exists(), "{name}: an output was written");
    }
    // The default device fails the same way (the input is checked before any adapter is opened).
    let input = dir.path("auto.safetensors");
    write_tokens(&input, &[2, 3, vocab + 7], [1, 3]);
    let o = forward(&encoder_model(), &input, &out, "auto");
    assert_fails(&o, &["token", "vocabulary"]);
    // A token file that does not exist.
    let o = forward(&encoder_model(), &dir.path("no-such-tokens.safetensors"), &out, "cpu");
    assert_fails_first(&o, &["no-such-tokens.safetensors", "No such file"]);
}

#[test]
fn forward_with_missing_or_bad_model_file_fails_cleanly() {
    let dir = TempDir::new("bad-model");
    let input = fixture("public_encoder.input.safetensors");
    let out = dir.path("out.safetensors");
    let o = forward(&dir.path("no-such.model.safetensors"), &input, &out, "cpu");
    assert_fails_first(&o, &["no-such.model.safetensors", "No such file"]);
    // A truncated model file, and the token file given as the model.
    let bytes = std::fs::read(encoder_model()).unwrap();
    let cut = dir.path("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails_first(&forward(&cut, &input, &out, "cpu"), &["invalid model", "safetensors"]);
    assert_fails_first(&forward(&input, &input, &out, "cpu"), &["invalid model", "luna.config"]);
    // A causal LM file is accepted: it writes logits, not an encoder's x and p (tests/causal_cli.rs checks the numbers).
    let causal = fixture("public_causal.model.safetensors");
    let causal_in = fixture("public_causal.input.safetensors");
    let logits = dir.path("logits.safetensors");
    assert_ok(&forward(&causal, &causal_in, &logits, "cpu"), "forward on a causal LM");
    assert_eq!(read(&logits, "logits").1, vec![1, 20, 40]);
    // An output in a directory that does not exist.
    let o = forward(&encoder_model(), &input, &dir.path("no/such/dir/out.safetensors"), "cpu");
    assert_fails(&o, &["no/such/dir/out.safetensors"]);
    assert!(!out.exists());
}

#[test]
fn forward_cpu_matches_the_authors_fixture() {
    let dir = TempDir::new("cpu-fixture");
    let out = dir.path("out.safetensors");
    let o = forward(&encoder_model(), &fixture("public_encoder.input.safetensors"), &out, "cpu");
    assert_ok(&o, "forward --device cpu");
    let expected = fixture("public_encoder.expected.safetensors");
    let (x, xs) = read(&out, "x");
    let (p, ps) = read(&out, "p");
    let (ex, exs) = read(&expected, "x");
    let (ep, eps) = read(&expected, "p");
    assert_eq!(xs, exs);
    assert_eq!(ps, eps);
    let lengths = read_counts(&expected, "lengths");
    let p_valid = read_counts(&expected, "p_valid");
    let dx = max_diff(&x, &ex, &xs, &lengths);
    let dp = max_diff(&p, &ep, &ps, &p_valid);
    eprintln!("cli cpu vs authors: x {dx:.2e}, p {dp:.2e}");
    assert!(dx <= 1e-5, "x differs by {dx}");
    assert!(dp <= 1e-5, "p differs by {dp}");
}

#[test]
fn forward_gpu_agrees_with_cpu() {
    if !has_gpu() {
        return;
    }
    let dir = TempDir::new("gpu-cpu");
    let input = fixture("public_encoder.input.safetensors");
    let (cpu, gpu) = (dir.path("cpu.safetensors"), dir.path("gpu.safetensors"));
    assert_ok(&forward(&encoder_model(), &input, &cpu, "cpu"), "forward --device cpu");
    let o = forward(&encoder_model(), &input, &gpu, "gpu");
    assert_ok(&o, "forward --device gpu");
    let expected = fixture("public_encoder.expected.safetensors");
    let lengths = read_counts(&expected, "lengths");
    let p_valid = read_counts(&expected, "p_valid");
    let ((xc, xs), (xg, xgs)) = (read(&cpu, "x"), read(&gpu, "x"));
    let ((pc, ps), (pg, pgs)) = (read(&cpu, "p"), read(&gpu, "p"));
    assert_eq!(xs, xgs);
    assert_eq!(ps, pgs);
    let dx = max_diff(&xg, &xc, &xs, &lengths);
    let dp = max_diff(&pg, &pc, &ps, &p_valid);
    eprintln!("cli gpu vs cpu: x {dx:.2e}, p {dp:.2e}\n{}", stderr(&o));
    assert!(dx <= 1e-4 && dp <= 1e-4, "x {dx}, p {dp}");
}

#[test]
fn compare_passes_the_gpu_against_cpu_and_fails_a_tampered_output() {
    if !has_gpu() {
        return;
    }
    let dir = TempDir::new("compare");
    let input = fixture("public_encoder.input.safetensors");
    let (cpu, gpu) = (dir.path("cpu.safetensors"), dir.path("gpu.safetensors"));
    assert_ok(&forward(&encoder_model(), &input, &cpu, "cpu"), "forward --device cpu");
    assert_ok(&forward(&encoder_model(), &input, &gpu, "gpu"), "forward --device gpu");
    let o = luna(&["compare", &s(&gpu), &s(&cpu), "--tolerance", "1e-4"]);
    assert_ok(&o, "luna compare");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("x [") && stdout.contains("p [") && stdout.contains("within"), "{stdout}");
    // One value of x changed by 0.5, at a real (not padding) row: over any tolerance below it.
    let bytes = std::fs::read(&gpu).unwrap();
    let st = tensors::parse(&bytes, "output").unwrap();
    let meta = tensors::metadata(&bytes).unwrap();
    let mut named: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .names()
        .into_iter()
        .map(|n| {
            let v = st.tensor(n).unwrap();
            (n.to_string(), v.shape().to_vec(), tensors::view_to_f32(n, &v).unwrap())
        })
        .collect();
    named.iter_mut().find(|t| t.0 == "x").unwrap().2[3] += 0.5;
    let views: Vec<tensors::Named> = named.iter().map(|(n, sh, d)| tensors::Named { name: n, shape: sh.clone(), data: d }).collect();
    let tampered = dir.path("tampered.safetensors");
    std::fs::write(&tampered, tensors::serialize_f32(&views, Some(meta)).unwrap()).unwrap();
    assert_fails(&luna(&["compare", &s(&tampered), &s(&cpu), "--tolerance", "1e-2"]), &["x differs by", "over the tolerance"]);
    // Files that do not match.
    assert_fails(&luna(&["compare", &s(&gpu), &s(&input)]), &["tensor"]);
}

#[test]
fn bench_finds_the_longest_sequence_each_method_holds() {
    if !has_gpu() {
        return;
    }
    let dir = TempDir::new("bench-longest");
    let out = s(&dir.path("out"));
    // 64 MiB of device memory: Luna holds sequences far longer than the flash
    // baseline (d floats a token against its 3d), the naive one stops at its
    // n x n scores.
    let o = luna_command()
        .env("LUNA_MEMORY_LIMIT", "64M")
        .args(["bench", "--op", "longest", "--min-n", "1024", "--l", "8", "--d", "32", "--heads", "2", "--max-seconds", "2", "--out-dir", &out])
        .output()
        .unwrap();
    assert_ok(&o, "luna bench --op longest");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let longest = |method: &str| -> usize {
        let line = stdout.lines().find(|l| l.starts_with(&format!("{method} d=32: the longest sequence"))).unwrap_or_else(|| panic!("{stdout}"));
        line.split("holds is ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap()
    };
    let (luna, flash, naive) = (longest("luna-8"), longest("softmax-flash"), longest("softmax-naive"));
    eprintln!("longest under 64 MiB: luna {luna}, flash {flash}, naive {naive}");
    assert!(luna > 2 * flash && flash > naive && naive > 100, "{stdout}");
    assert!(stdout.contains("MiB this adapter has"), "{stdout}");
    // Every method's last point is its longest n, run or skipped for time.
    let csv = std::fs::read_to_string(dir.path("out").join("bench.csv")).unwrap();
    for (method, n) in [("luna-8", luna), ("softmax-flash", flash), ("softmax-naive", naive)] {
        assert!(csv.lines().any(|r| r.starts_with(&format!("layer,{method},{n},"))), "{method} {n}: {csv}");
    }
}

#[test]
fn init_random_random_tokens_forward_round_trip() {
    let dir = TempDir::new("round-trip");
    let config = dir.path("config.json");
    std::fs::write(
        &config,
        r#"{"model": "encoder", "vocab_size": 30, "embed_dim": 16, "ffn_embed_dim": 24, "num_layers": 2,
            "num_heads": 2, "num_pheads": 4, "projection_length": 4, "max_positions": 64, "padding_idx": 1,
            "normalize_before": true, "tie_kv": true, "learned_pos": false, "dynamic_projection": true,
            "activation": "gelu", "layernorm_embedding": true}"#,
    )
    .unwrap();
    let (model_path, tokens, out) = (dir.path("m.safetensors"), dir.path("t.safetensors"), dir.path("o.safetensors"));
    assert_ok(&luna(&["init-random", "--config", &s(&config), "--out", &s(&model_path), "--seed", "5"]), "init-random");
    assert_ok(
        &luna(&["random-tokens", "--model", &s(&model_path), "--lengths", "9,3", "--out", &s(&tokens), "--seed", "2"]),
        "random-tokens",
    );
    assert_ok(&forward(&model_path, &tokens, &out, "cpu"), "forward --device cpu");

    // The files are what the library makes of the same seeds.
    let model = Model::load(&model_path).unwrap();
    assert_eq!(model.config.embed_dim, 16);
    let again = Model::random(&model.config, 5).unwrap();
    assert_eq!(model.to_bytes().unwrap(), again.to_bytes().unwrap(), "init-random is not Model::random(seed)");
    let batch = Batch::from_safetensors(&model.config, &std::fs::read(&tokens).unwrap()).unwrap();
    assert_eq!(batch.lengths, vec![9, 3]);
    assert_eq!((batch.batch, batch.len, batch.proj_len), (2, 9, 4));
    let (want_tokens, _, _) = luna_wgpu::init::random_tokens(&model.config, &[9, 3], 2);
    assert_eq!(batch.tokens, want_tokens.iter().map(|&t| t as u32).collect::<Vec<_>>());
    // And the output is the reference's.
    let reference = luna_wgpu::reference::encoder_forward(&model, &batch);
    let (x, xs) = read(&out, "x");
    let (p, ps) = read(&out, "p");
    assert_eq!(xs, vec![2, 9, 16]);
    assert_eq!(ps, vec![2, 4, 16]);
    let p_valid: Vec<usize> = batch.lengths.iter().map(|&n| n.min(batch.proj_len)).collect();
    let dx = max_diff(&x, &reference.x, &xs, &batch.lengths);
    let dp = max_diff(&p, &reference.p, &ps, &p_valid);
    assert!(dx <= 1e-5 && dp <= 1e-5, "cpu: x {dx}, p {dp}");
    if has_gpu() {
        let gpu = dir.path("g.safetensors");
        assert_ok(&forward(&model_path, &tokens, &gpu, "gpu"), "forward --device gpu");
        let (xg, _) = read(&gpu, "x");
        let (pg, _) = read(&gpu, "p");
        let dx = max_diff(&xg, &reference.x, &xs, &batch.lengths);
        let dp = max_diff(&pg, &reference.p, &ps, &p_valid);
        eprintln!("round trip gpu vs reference: x {dx:.2e}, p {dp:.2e}");
        assert!(dx <= 1e-4 && dp <= 1e-4, "gpu: x {dx}, p {dp}");
    }
}

#[test]
fn init_random_and_random_tokens_refuse_bad_arguments() {
    let dir = TempDir::new("bad-args");
    let config = dir.path("config.json");
    let out = dir.path("m.safetensors");
    std::fs::write(&config, "{\"model\": \"encoder\", ").unwrap();
    let o = luna(&["init-random", "--config", &s(&config), "--out", &s(&out)]);
    assert_fails_first(&o, &["invalid config", "not valid JSON"]);
    std::fs::write(&config, r#"{"model": "encoder", "vocab_size": 30, "embed_dim": 10, "ffn_embed_dim": 8,
        "num_layers": 1, "num_heads": 3, "projection_length": 2, "max_positions": 8}"#)
        .unwrap();
    let o = luna(&["init-random", "--config", &s(&config), "--out", &s(&out)]);
    assert_fails_first(&o, &["embed_dim 10", "num_heads 3"]);
    let o = luna(&["init-random", "--config", &s(&dir.path("none.json")), "--out", &s(&out)]);
    assert_fails_first(&o, &["none.json"]);
    assert!(!out.exists());
    let o = luna(&["random-tokens", "--model", &s(&encoder_model()), "--lengths", "4,0", "--out", &s(&out)]);
    assert_fails_first(&o, &["length", "at least 1"]);
    assert!(!out.exists());
}

#[test]
fn unknown_adapter_lists_the_available_ones() {
    let dir = TempDir::new("adapter");
    let out = dir.path("out.safetensors");
    let o = luna(&[
        "--adapter",
        "no-such-adapter",
        "forward",
        "--model",
        encoder_model().to_str().unwrap(),
        "--input",
        fixture("public_encoder.input.safetensors").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--device",
        "gpu",
    ]);
    if has_gpu() {
        let line = assert_fails(&o, &["no-such-adapter", "available: "]);
        let available = line.split("available: ").nth(1).unwrap();
        assert!(!available.trim().is_empty(), "no adapters listed: {line}");
        // The default adapter is among those listed.
        let engine = Engine::new_blocking(&AdapterChoice::default()).unwrap();
        assert!(line.contains(&engine.ctx.info.name), "{line:?} does not list {:?}", engine.ctx.info.name);
    } else {
        assert_fails(&o, &["no GPU adapter"]);
    }
    assert!(!out.exists());
}

#[test]
fn info_runs() {
    let o = luna(&["info"]);
    if has_gpu() {
        assert_ok(&o, "luna info");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("adapters") && text.contains("max_storage_buffer_binding_size"), "{text}");
    } else {
        assert_fails(&o, &["no GPU adapter"]);
    }
}

#[test]
fn bench_writes_every_point_and_its_plots() {
    if !has_gpu() {
        return;
    }
    let dir = TempDir::new("bench");
    let out = dir.path("out");
    let args = ["bench", "--op", "all", "--min-n", "64", "--max-n", "128", "--l", "4", "--d", "16", "--heads", "2", "--layers", "2", "--repeats", "1"];
    let mut all: Vec<&str> = args.to_vec();
    let out_s = out.display().to_string();
    all.extend(["--out-dir", &out_s]);
    let o = luna(&all);
    assert_ok(&o, "luna bench");
    let csv = std::fs::read_to_string(out.join("bench.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    // layer and encoder: 3 methods x 2 lengths each; matmul: 5 shapes on a software
    // adapter (7 on hardware); decode: positions 10 and 100.
    let count = |op: &str| rows.iter().filter(|r| r.starts_with(&format!("{op},"))).count();
    assert_eq!(count("layer"), 6, "{csv}");
    assert_eq!(count("encoder"), 6, "{csv}");
    assert!(count("matmul") >= 5, "{csv}");
    assert_eq!(count("decode"), 2, "{csv}");
    // lm: the causal LM in both forms and the GEMM at each of the 2 lengths,
    // and the decode step of each form.
    assert_eq!(count("lm"), 8, "{csv}");
    for method in ["causal-lm", "causal-lm-local", "gemm-1024", "decode-step", "decode-step-local"] {
        assert!(rows.iter().any(|r| r.starts_with(&format!("lm,{method},"))), "no {method} row: {csv}");
    }
    for r in &rows {
        let cols: Vec<&str> = r.split(',').collect();
        let median: f64 = cols[11].parse().unwrap();
        assert!(median > 0.0 && median.is_finite(), "unmeasured point: {r}");
    }
    for f in ["bench.json", "layer_time.svg", "layer_memory.svg", "encoder_time.svg", "encoder_memory.svg"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let svg = std::fs::read_to_string(out.join("layer_time.svg")).unwrap();
    assert!(svg.contains("luna-4: slope") && svg.contains("softmax-naive: slope"), "{svg}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("log-log slopes"), "{stdout}");
}

/// A plain GEMM of our own in the peer interface (`C = A · B`, bindings 0, 1, 2),
/// for 64³: enough to test the comparison harness without anyone else's code.
const NAIVE_PEER: &str = "
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@compute @workgroup_size(8, 8, 1)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
    var acc = 0.0;
    for (var k = 0u; k < 64u; k++) {
        acc += a[g.y * 64u + k] * b[k * 64u + g.x];
    }
    c[g.y * 64u + g.x] = acc * SCALE;
}
";

#[test]
fn bench_times_a_peer_gemm_beside_ours_and_checks_it() {
    if !has_gpu() {
        return;
    }
    let dir = TempDir::new("peer");
    let (good, bad) = (dir.path("naive.wgsl"), dir.path("wrong.wgsl"));
    std::fs::write(&good, NAIVE_PEER.replace("SCALE", "1.0")).unwrap();
    std::fs::write(&bad, NAIVE_PEER.replace("SCALE", "2.0")).unwrap();
    let tuning = dir.path("tuning.json");
    let run = |peer: &std::path::Path, extra: &[&str]| {
        let mut c = luna_command();
        c.env("LUNA_TUNING_CACHE", &tuning).args(extra);
        c.args(["bench", "--op", "matmul", "--peer-grid", "8,8,1", "--peer-shape", "64,64,64", "--repeats", "2"]);
        c.args(["--peer-wgsl", &s(peer), "--out-dir", &s(&dir.path("out"))]);
        c.output().unwrap()
    };
    let o = run(&good, &[]);
    assert_ok(&o, "luna bench --peer-wgsl");
    let csv = std::fs::read_to_string(dir.path("out").join("bench.csv")).unwrap();
    assert!(csv.lines().any(|l| l.starts_with("matmul,gemm:")), "{csv}");
    assert!(csv.lines().any(|l| l.starts_with("matmul,peer:naive")), "{csv}");
    // The tuning ran for this shape and left its choice in the cache file.
    let cache = std::fs::read_to_string(&tuning).unwrap();
    assert!(cache.contains("\"gemm:many:n64:k64\""), "{cache}");
    // A peer that computes something else is reported, not timed.
    let o = run(&bad, &["--no-autotune"]);
    assert_fails(&o, &["the peer computed"]);
}

#[test]
fn bench_refuses_bad_arguments() {
    let o = luna(&["bench", "--d", "10", "--heads", "3"]);
    assert_fails(&o, &["--d must be a positive multiple of --heads"]);
}
