//! The `luna` binary: bad input ends in a one-line `error:` and a non-zero exit
//! (never a panic), and good input gives the reference's numbers on every device.

use luna_wgpu::model::Model;
use luna_wgpu::{tensors, AdapterChoice, Batch, Engine};
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A fresh, empty directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "luna-cli-{tag}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

fn luna<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_luna")).args(args).env_remove("RUST_LOG").output().expect("run luna")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed ({:?}):\n{}", o.status, stderr(o));
}

/// The run failed cleanly: non-zero exit, no panic, and an `error:` line holding every phrase.
/// With `first`, stderr must start with that line.
fn assert_fails(o: &Output, first: bool, phrases: &[&str]) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "expected a failure, got success:\n{err}");
    assert_eq!(o.status.code(), Some(1), "exit status {:?} (a crash?):\n{err}", o.status);
    assert!(!err.contains("panicked"), "panicked:\n{err}");
    if first {
        assert!(err.starts_with("error: "), "stderr does not start with \"error:\":\n{err}");
    }
    let line = err.lines().rev().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line:\n{err}"));
    for p in phrases {
        assert!(line.contains(p), "error line {line:?} lacks {p:?}");
    }
    eprintln!("ok: {line}");
    line.to_string()
}

/// Whether a GPU adapter exists (a failure instead when `LUNA_REQUIRE_GPU=1`).
fn has_gpu() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| match Engine::new_blocking(&AdapterChoice::from_arg_or_env(None)) {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("LUNA_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("LUNA_REQUIRE_GPU=1 but no GPU: {e}");
            }
            eprintln!("skipping GPU runs: {e}");
            false
        }
    })
}

/// A tensor of a safetensors file as f64, with its shape.
fn read(path: &Path, key: &str) -> (Vec<f64>, Vec<usize>) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor(key).unwrap();
    let data = match v.dtype() {
        Dtype::F32 => v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        Dtype::F64 => v.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::I64 => v.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        other => panic!("{key}: {other:?}"),
    };
    (data, v.shape().to_vec())
}

/// Max |a - b| over the first `valid[b]` rows of each of the `[B, rows, d]` tensors.
fn max_diff(a: &[f64], b: &[f64], shape: &[usize], valid: &[usize]) -> f64 {
    let (rows, d) = (shape[1], shape[2]);
    let mut err: f64 = 0.0;
    for (s, &v) in valid.iter().enumerate() {
        for r in 0..v {
            for k in 0..d {
                let i = (s * rows + r) * d + k;
                assert!(a[i].is_finite(), "non-finite output at [{s}, {r}, {k}]");
                err = err.max((a[i] - b[i]).abs());
            }
        }
    }
    err
}

fn forward(model: &Path, input: &Path, output: &Path, device: &str) -> Output {
    let args: Vec<&std::ffi::OsStr> = vec![
        "forward".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--input".as_ref(),
        input.as_os_str(),
        "--output".as_ref(),
        output.as_os_str(),
        "--device".as_ref(),
        device.as_ref(),
    ];
    luna(&args)
}

fn encoder_model() -> PathBuf {
    fixture("public_encoder.model.safetensors")
}

fn tokens_file(path: &Path, tokens: &[i64], shape: [usize; 2]) {
    std::fs::write(path, tensors::serialize_tokens(tokens, shape).unwrap()).unwrap();
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
        assert_fails(&o, true, &phrases);
        assert!(!out.exists(), "{name}: an output was written");
    }
    // The default device fails the same way (the input is checked before any adapter is opened).
    let input = dir.path("auto.safetensors");
    tokens_file(&input, &[2, 3, vocab + 7], [1, 3]);
    let o = forward(&encoder_model(), &input, &out, "auto");
    assert_fails(&o, false, &["token", "vocabulary"]);
    // A token file that does not exist.
    let o = forward(&encoder_model(), &dir.path("no-such-tokens.safetensors"), &out, "cpu");
    assert_fails(&o, true, &["no-such-tokens.safetensors", "No such file"]);
}

#[test]
fn forward_with_missing_or_bad_model_file_fails_cleanly() {
    let dir = TempDir::new("bad-model");
    let input = fixture("public_encoder.input.safetensors");
    let out = dir.path("out.safetensors");
    let o = forward(&dir.path("no-such.model.safetensors"), &input, &out, "cpu");
    assert_fails(&o, true, &["no-such.model.safetensors", "No such file"]);
    // A truncated model file, and the token file given as the model.
    let bytes = std::fs::read(encoder_model()).unwrap();
    let cut = dir.path("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(&forward(&cut, &input, &out, "cpu"), true, &["invalid model", "safetensors"]);
    assert_fails(&forward(&input, &input, &out, "cpu"), true, &["invalid model", "luna.config"]);
    // A causal LM file is accepted: it writes logits, not an encoder's x and p (tests/causal_cli.rs checks the numbers).
    let causal = fixture("public_causal.model.safetensors");
    let causal_in = fixture("public_causal.input.safetensors");
    let logits = dir.path("logits.safetensors");
    assert_ok(&forward(&causal, &causal_in, &logits, "cpu"), "forward on a causal LM");
    assert_eq!(read(&logits, "logits").1, vec![1, 20, 40]);
    // An output in a directory that does not exist.
    let o = forward(&encoder_model(), &input, &dir.path("no/such/dir/out.safetensors"), "cpu");
    assert_fails(&o, false, &["no/such/dir/out.safetensors"]);
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
    let lengths: Vec<usize> = read(&expected, "lengths").0.iter().map(|&v| v as usize).collect();
    let p_valid: Vec<usize> = read(&expected, "p_valid").0.iter().map(|&v| v as usize).collect();
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
    let lengths: Vec<usize> = read(&expected, "lengths").0.iter().map(|&v| v as usize).collect();
    let p_valid: Vec<usize> = read(&expected, "p_valid").0.iter().map(|&v| v as usize).collect();
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
    let s = |p: &Path| p.to_str().unwrap().to_string();
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
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let config = dir.path("config.json");
    let out = dir.path("m.safetensors");
    std::fs::write(&config, "{\"model\": \"encoder\", ").unwrap();
    let o = luna(&["init-random", "--config", &s(&config), "--out", &s(&out)]);
    assert_fails(&o, true, &["invalid config", "not valid JSON"]);
    std::fs::write(&config, r#"{"model": "encoder", "vocab_size": 30, "embed_dim": 10, "ffn_embed_dim": 8,
        "num_layers": 1, "num_heads": 3, "projection_length": 2, "max_positions": 8}"#)
        .unwrap();
    let o = luna(&["init-random", "--config", &s(&config), "--out", &s(&out)]);
    assert_fails(&o, true, &["embed_dim 10", "num_heads 3"]);
    let o = luna(&["init-random", "--config", &s(&dir.path("none.json")), "--out", &s(&out)]);
    assert_fails(&o, true, &["none.json"]);
    assert!(!out.exists());
    let o = luna(&["random-tokens", "--model", &s(&encoder_model()), "--lengths", "4,0", "--out", &s(&out)]);
    assert_fails(&o, true, &["length", "at least 1"]);
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
        let line = assert_fails(&o, false, &["no-such-adapter", "available: "]);
        let available = line.split("available: ").nth(1).unwrap();
        assert!(!available.trim().is_empty(), "no adapters listed: {line}");
        // The default adapter is among those listed.
        let engine = Engine::new_blocking(&AdapterChoice::default()).unwrap();
        assert!(line.contains(&engine.ctx.info.name), "{line:?} does not list {:?}", engine.ctx.info.name);
    } else {
        assert_fails(&o, false, &["no GPU adapter"]);
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
        assert_fails(&o, false, &["no GPU adapter"]);
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

#[test]
fn bench_refuses_bad_arguments() {
    let o = luna(&["bench", "--d", "10", "--heads", "3"]);
    assert_fails(&o, false, &["--d must be a positive multiple of --heads"]);
}
