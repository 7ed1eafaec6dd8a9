//! The `luna` binary on causal LMs: `forward` (logits), `generate` and `score`,
//! checked against the float64 reference (and the authors' fixture) on the CPU,
//! and GPU against CPU. Bad input ends in one `error:` line and exit code 1.
//!
//! GPU runs are skipped without an adapter (a failure with `LUNA_REQUIRE_GPU=1`)
//! and while the GPU engine reports the causal paths as unsupported.

mod common;

use common::cli::{assert_fails, assert_ok, forward, luna, read, read_counts, s, stderr, stdout, TempDir};
use common::compare::{bits, first_rows, max_diff, max_err};
use common::configs::{byte_lm, byte_model};
use common::{fixture, has_gpu};
use luna_wgpu::reference::causal::causal_lm_logits;
use luna_wgpu::tokenizer::Tokenizer;
use luna_wgpu::{tensors, Batch, Model};
use safetensors::SafeTensors;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Output;

/// A GPU run that succeeded; `None` (skip) when the engine says the causal path is unsupported.
fn gpu_ran(o: &Output, what: &str) -> bool {
    let err = stderr(o);
    if !o.status.success() && err.lines().any(|l| l.starts_with("error: unsupported:")) {
        eprintln!("skipped: {what} on the GPU is unsupported:\n{err}");
        return false;
    }
    assert_ok(o, what);
    true
}

fn save(model: &Model, dir: &TempDir, name: &str) -> PathBuf {
    let p = dir.path(name);
    model.save(&p).unwrap();
    p
}

fn generate(model: &Path, prompt: &str, extra: &[&str]) -> Output {
    let mut args = vec!["generate".to_string(), "--model".into(), s(model), "--prompt".into(), prompt.into()];
    args.extend(extra.iter().map(|a| a.to_string()));
    luna(&args)
}

/// What the reference makes of a greedy generation: the generated ids (eos not
/// included), whether eos ended it, and the smallest gap between the best and
/// the second-best allowed logit along the way.
struct Greedy {
    ids: Vec<u32>,
    eos: bool,
    min_gap: f64,
}

fn reference_greedy(model: &Model, tok: &Tokenizer, prompt: &str, max_tokens: usize) -> Greedy {
    let c = &model.config;
    let pad = c.padding_idx as u32;
    let vocab = c.vocab_size;
    let prompt = tok.encode_with_bos(prompt.as_bytes());
    let positions: Vec<u32> = (1..=prompt.len() as u32).map(|i| pad + i).collect();
    let mut states = Vec::new();
    let all = causal_lm_logits(model, &prompt, &positions, &mut states);
    let mut logits = all[(prompt.len() - 1) * vocab..].to_vec();
    let mut consumed = prompt.len();
    let mut g = Greedy { ids: Vec::new(), eos: false, min_gap: f64::INFINITY };
    while g.ids.len() < max_tokens {
        // Only bytes and eos may be generated.
        let mut order: Vec<usize> = (0..vocab).filter(|&i| tok.byte(i as u32).is_some() || Some(i as u32) == tok.eos).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        g.min_gap = g.min_gap.min(logits[order[0]] - logits[order[1]]);
        let next = order[0] as u32;
        if Some(next) == tok.eos {
            g.eos = true;
            break;
        }
        g.ids.push(next);
        if g.ids.len() == max_tokens || (c.learned_pos && consumed + 1 > c.max_positions) {
            break;
        }
        logits = causal_lm_logits(model, &[next], &[pad + consumed as u32 + 1], &mut states);
        consumed += 1;
    }
    g
}

fn text_of(tok: &Tokenizer, ids: &[u32]) -> String {
    let bytes: Vec<u8> = ids.iter().map(|&i| (i - tok.offset) as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The number in "generated N tokens" of a generate report.
fn generated_count(o: &Output) -> usize {
    let err = stderr(o);
    let at = err.find("generated ").unwrap_or_else(|| panic!("no report:\n{err}"));
    err[at + 10..].split_whitespace().next().unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------
// init-random

#[test]
fn init_random_makes_causal_models_with_a_byte_tokenizer() {
    let dir = TempDir::new("init");
    // The example config of models/configs.
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/configs/causal_small.json");
    let out = dir.path("small.safetensors");
    let o = luna(&["init-random", "--config", &s(&example), "--out", &s(&out), "--tokenizer", "bytes"]);
    assert_ok(&o, "init-random causal_small.json");
    let model = Model::load(&out).unwrap();
    assert_eq!(model.config.model, luna_wgpu::ModelKind::CausalLm);
    let tok = Tokenizer::from_model(&model).unwrap().expect("a tokenizer");
    assert_eq!(tok, Tokenizer { offset: 3, pad: Some(1), bos: Some(0), eos: Some(2) });
    assert!(stderr(&o).contains(r#""kind":"bytes""#), "{}", stderr(&o));
    // Without --tokenizer: no tokenizer.
    let cfg = dir.path("c.json");
    std::fs::write(&cfg, byte_lm(json!({})).to_json()).unwrap();
    let bare = dir.path("bare.safetensors");
    assert_ok(&luna(&["init-random", "--config", &s(&cfg), "--out", &s(&bare)]), "init-random");
    assert_eq!(Tokenizer::from_model(&Model::load(&bare).unwrap()).unwrap(), None);
    // A vocabulary with room for the bytes but not for bos/eos: a warning, and neither.
    std::fs::write(&cfg, byte_lm(json!({"vocab_size": 258})).to_json()).unwrap();
    let o = luna(&["init-random", "--config", &s(&cfg), "--out", &s(&bare), "--tokenizer", "bytes"]);
    assert_ok(&o, "init-random vocab 258");
    assert!(stderr(&o).contains("no room for bos and eos"), "{}", stderr(&o));
    let tok = Tokenizer::from_model(&Model::load(&bare).unwrap()).unwrap().unwrap();
    assert_eq!(tok, Tokenizer { offset: 2, pad: Some(1), bos: None, eos: None });
    // Too small a vocabulary.
    std::fs::write(&cfg, byte_lm(json!({"vocab_size": 40})).to_json()).unwrap();
    let small = dir.path("small40.safetensors");
    let o = luna(&["init-random", "--config", &s(&cfg), "--out", &s(&small), "--tokenizer", "bytes"]);
    assert_fails(&o, &["vocab_size 40 is too small", "byte tokenizer"]);
    assert!(!small.exists());
}

// ---------------------------------------------------------------------------
// forward

#[test]
fn forward_cpu_on_a_causal_lm_matches_the_authors_logits() {
    let dir = TempDir::new("forward");
    let out = dir.path("logits.safetensors");
    let (model, input) = (fixture("public_causal.model.safetensors"), fixture("public_causal.input.safetensors"));
    let o = forward(&model, &input, &out, "cpu");
    assert_ok(&o, "forward --device cpu");
    let (got, shape) = read(&out, "logits");
    let expected = fixture("public_causal.expected.safetensors");
    let (want, want_shape) = read(&expected, "logits");
    assert_eq!(shape, want_shape);
    let lengths = read_counts(&expected, "lengths");
    assert_eq!(lengths.len(), shape[0]);
    let err = max_diff(&got, &want, &shape, &lengths);
    eprintln!("cli cpu vs authors: logits {err:.2e}");
    assert!(err < 1e-5, "logits differ by {err}");
    // An encoder's outputs are not written for a causal LM.
    let bytes = std::fs::read(&out).unwrap();
    assert!(SafeTensors::deserialize(&bytes).unwrap().tensor("x").is_err());
}

#[test]
fn forward_gpu_on_a_causal_lm_agrees_with_cpu() {
    if !has_gpu() {
        return;
    }
    let dir = TempDir::new("forward-gpu");
    let c = byte_lm(json!({"normalize_before": false, "tie_kv": false, "learned_pos": true, "max_positions": 40, "activation": "relu"}));
    let model = save(&Model::random(&c, 4).unwrap(), &dir, "m.safetensors");
    let input = dir.path("in.safetensors");
    assert_ok(&luna(&["random-tokens", "--model", &s(&model), "--lengths", "37,12", "--out", &s(&input), "--seed", "3"]), "random-tokens");
    let (cpu, gpu) = (dir.path("cpu.safetensors"), dir.path("gpu.safetensors"));
    assert_ok(&forward(&model, &input, &cpu, "cpu"), "forward --device cpu");
    let o = forward(&model, &input, &gpu, "gpu");
    if !gpu_ran(&o, "forward --device gpu") {
        return;
    }
    let ((lc, shape), (lg, gshape)) = (read(&cpu, "logits"), read(&gpu, "logits"));
    assert_eq!(shape, gshape);
    let (err, mag) = max_err(&lg, &lc, shape[2], first_rows(shape[1], &[37, 12]));
    eprintln!("cli gpu vs cpu logits: {err:.2e} (|logits| <= {mag:.2})\n{}", stderr(&o));
    assert!(err <= 1e-4 * mag.max(1.0), "logits differ by {err}");
}

// ---------------------------------------------------------------------------
// generate

#[test]
fn generate_cpu_is_reproducible_under_a_seed() {
    let dir = TempDir::new("seed");
    let (model, _) = byte_model(&byte_lm(json!({})), 5);
    let path = save(&model, &dir, "m.safetensors");
    let run = |seed: &str, extra: &[&str]| {
        let mut args = vec!["--max-tokens", "40", "--seed", seed, "--device", "cpu", "--temperature", "1.5"];
        args.extend(extra);
        let o = generate(&path, "Once upon a time", &args);
        assert_ok(&o, "generate");
        o
    };
    let a = run("7", &[]);
    let b = run("7", &[]);
    assert_eq!(a.stdout, b.stdout, "same seed, different text");
    assert!(!a.stdout.is_empty());
    let c = run("8", &[]);
    assert_ne!(a.stdout, c.stdout, "different seeds gave the same 40 tokens");
    // top-k too.
    assert_eq!(run("3", &["--top-k", "5"]).stdout, run("3", &["--top-k", "5"]).stdout);
    // The report names the speed and the state.
    let err = stderr(&a);
    for p in ["prompt 17 tokens", "prefill", "tokens/s", "decoder state", "bytes"] {
        assert!(err.contains(p), "report lacks {p:?}:\n{err}");
    }
    // 2 layers x 2 heads x (Sk + Sv) x dh 8 x l 4, float64.
    assert!(err.contains(&format!("{} bytes", 2 * 2 * 2 * 8 * 4 * 8)), "{err}");
    // Without --seed, the seed used is printed so the output can be repeated.
    let o = generate(&path, "Once", &["--max-tokens", "5", "--device", "cpu"]);
    assert_ok(&o, "generate without --seed");
    let err = stderr(&o);
    let seed = err.split("--seed ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_else(|| panic!("no seed:\n{err}"));
    let again = generate(&path, "Once", &["--max-tokens", "5", "--device", "cpu", "--seed", seed]);
    assert_ok(&again, "generate with the printed seed");
    assert_eq!(o.stdout, again.stdout);
}

#[test]
fn greedy_generation_is_the_argmax_of_the_reference_logits() {
    let dir = TempDir::new("greedy");
    for (i, overrides) in [
        json!({}),
        json!({"normalize_before": false, "tie_kv": false, "learned_pos": true, "activation": "relu", "tie_output_embedding": false}),
        json!({"tie_layer_weights": true, "num_heads": 4, "projection_length": 3}),
    ]
    .into_iter()
    .enumerate()
    {
        let c = byte_lm(overrides);
        let (model, tok) = byte_model(&c, 10 + i as u64);
        let path = save(&model, &dir, &format!("m{i}.safetensors"));
        let prompt = "Über «Luna» ✓";
        let want = reference_greedy(&model, &tok, prompt, 25);
        // Temperature 0 is greedy whatever the seed and top-k.
        for extra in [&["--seed", "1"][..], &["--seed", "99", "--top-k", "3"]] {
            let mut args = vec!["--max-tokens", "25", "--temperature", "0", "--device", "cpu"];
            args.extend(extra);
            let o = generate(&path, prompt, &args);
            assert_ok(&o, "generate --temperature 0");
            assert_eq!(stdout(&o), text_of(&tok, &want.ids), "config {i}: greedy text differs from the reference argmax");
            assert_eq!(generated_count(&o), want.ids.len());
            eprintln!("config {i}: {} tokens, eos {}: {}", want.ids.len(), want.eos, stderr(&o).trim());
        }
    }
}

#[test]
fn generation_stops_at_eos() {
    let dir = TempDir::new("eos");
    let c = byte_lm(json!({}));
    let (mut model, tok) = byte_model(&c, 21);
    // Make eos (tied output embedding) likely: a long row points somewhere, so its logit is
    // large for about half of the states.
    let d = c.embed_dim;
    let eos = tok.eos.unwrap() as usize;
    for v in &mut model.embed_tokens[eos * d..(eos + 1) * d] {
        *v *= 40.0;
    }
    let path = save(&model, &dir, "m.safetensors");
    let mut found = false;
    for prompt in ["a", "ab", "The end", "xyz", "0123456789"] {
        let want = reference_greedy(&model, &tok, prompt, 50);
        let o = generate(&path, prompt, &["--max-tokens", "50", "--temperature", "0", "--device", "cpu"]);
        assert_ok(&o, "generate");
        assert_eq!(stdout(&o), text_of(&tok, &want.ids));
        if want.eos {
            found = true;
            assert!(want.ids.len() < 50);
            assert!(stderr(&o).contains("stopped at eos"), "{}", stderr(&o));
            assert_eq!(generated_count(&o), want.ids.len());
        }
    }
    assert!(found, "no prompt ended in eos; the test model does not exercise it");
    // Sampling stops at eos too (eos is never printed: it is not a byte).
    let o = generate(&path, "a", &["--max-tokens", "200", "--seed", "4", "--device", "cpu"]);
    assert_ok(&o, "generate");
    assert!(stderr(&o).contains("stopped at eos"), "{}", stderr(&o));
}

#[test]
fn generation_stops_at_max_positions_with_learned_positions() {
    let dir = TempDir::new("max-pos");
    let c = byte_lm(json!({"learned_pos": true, "max_positions": 12}));
    let (model, tok) = byte_model(&c, 8);
    let path = save(&model, &dir, "m.safetensors");
    // bos + 5 bytes = 6 tokens; 6 more fit (12 positions), and one more can be sampled
    // from the logits after the 12th token without being fed back.
    let want = reference_greedy(&model, &tok, "hello", 100);
    let o = generate(&path, "hello", &["--max-tokens", "100", "--temperature", "0", "--device", "cpu"]);
    assert_ok(&o, "generate");
    assert_eq!(stdout(&o), text_of(&tok, &want.ids));
    if !want.eos {
        assert_eq!(want.ids.len(), 7);
        assert_eq!(generated_count(&o), 7);
        assert!(stderr(&o).contains("stopped at max_positions = 12"), "{}", stderr(&o));
    }
    // A prompt of exactly max_positions tokens still gives one token; one more is an error.
    let o = generate(&path, "12345678901", &["--max-tokens", "5", "--temperature", "0", "--device", "cpu"]);
    assert_ok(&o, "generate at max_positions");
    assert!(generated_count(&o) <= 1);
    let o = generate(&path, "123456789012", &["--max-tokens", "5", "--device", "cpu"]);
    assert_fails(&o, &["prompt is 13 tokens", "max_positions = 12", "learned positions"]);
}

#[test]
fn empty_prompt_starts_from_bos_or_is_refused() {
    let dir = TempDir::new("empty");
    let c = byte_lm(json!({}));
    let (model, tok) = byte_model(&c, 2);
    let path = save(&model, &dir, "m.safetensors");
    let o = generate(&path, "", &["--max-tokens", "10", "--temperature", "0", "--device", "cpu"]);
    assert_ok(&o, "generate from bos");
    assert_eq!(stdout(&o), text_of(&tok, &reference_greedy(&model, &tok, "", 10).ids));
    assert!(stderr(&o).contains("prompt 1 tokens"), "{}", stderr(&o));
    // Without bos an empty prompt has nothing to start from.
    let mut bare = model.clone();
    Tokenizer { offset: 3, pad: Some(1), bos: None, eos: Some(2) }.store(&mut bare).unwrap();
    let path = save(&bare, &dir, "no-bos.safetensors");
    for device in ["cpu", "auto"] {
        assert_fails(&generate(&path, "", &["--device", device]), &["empty prompt", "bos"]);
    }
    // A prompt without bos is the bytes alone.
    let o = generate(&path, "hi", &["--max-tokens", "3", "--temperature", "0", "--device", "cpu"]);
    assert_ok(&o, "generate without bos");
    assert!(stderr(&o).contains("prompt 2 tokens"), "{}", stderr(&o));
}

#[test]
fn generate_gpu_agrees_with_cpu() {
    if !has_gpu() {
        return;
    }
    let dir = TempDir::new("generate-gpu");
    let c = byte_lm(json!({"num_layers": 1}));
    // A model whose greedy path has no near-ties (f32 rounding must not flip a choice).
    let (model, tok, want) = (30..60)
        .map(|seed| {
            let (m, t) = byte_model(&c, seed);
            let g = reference_greedy(&m, &t, "Luna", 12);
            (m, t, g)
        })
        .find(|(_, _, g)| g.min_gap > 1e-2 && g.ids.len() >= 6)
        .expect("a model without near-ties");
    let path = save(&model, &dir, "m.safetensors");
    let o = generate(&path, "Luna", &["--max-tokens", "12", "--temperature", "0", "--device", "gpu"]);
    if !gpu_ran(&o, "generate --device gpu") {
        return;
    }
    eprintln!("{}", stderr(&o));
    assert_eq!(stdout(&o), text_of(&tok, &want.ids), "GPU greedy text differs from the reference");
    assert_eq!(generated_count(&o), want.ids.len());
    assert!(stderr(&o).contains("on the GPU"), "{}", stderr(&o));
    // Seeded sampling: the same seed gives the same text on the GPU.
    let run = || generate(&path, "Luna", &["--max-tokens", "8", "--seed", "5", "--device", "gpu"]);
    let (a, b) = (run(), run());
    assert_ok(&a, "generate --device gpu");
    assert_eq!(a.stdout, b.stdout);
}

/// `--device auto` runs the CPU reference, with a warning, on a model the GPU engine
/// cannot run (and on a machine without an adapter); `--device gpu` fails instead.
#[test]
fn auto_falls_back_to_the_cpu_for_a_model_the_gpu_cannot_run() {
    let dir = TempDir::new("fallback");
    let l = luna_wgpu::kernels::causal::MAX_PROJECTION + 1;
    let c = byte_lm(json!({"embed_dim": 8, "ffn_embed_dim": 8, "num_layers": 1, "projection_length": l}));
    let (model, tok) = byte_model(&c, 1);
    let path = save(&model, &dir, "m.safetensors");
    let want = text_of(&tok, &reference_greedy(&model, &tok, "ab", 4).ids);
    let o = generate(&path, "ab", &["--max-tokens", "4", "--temperature", "0", "--device", "auto"]);
    assert_ok(&o, "generate --device auto");
    assert_eq!(stdout(&o), want);
    assert!(stderr(&o).contains("falling back to the float64 CPU reference"), "{}", stderr(&o));
    let doc = dir.path("doc.txt");
    std::fs::write(&doc, "abc abc").unwrap();
    let o = luna(&["score", "--model", &s(&path), "--text", &s(&doc), "--device", "auto"]);
    assert_ok(&o, "score --device auto");
    assert!(stderr(&o).contains("cpu reference"), "{}", stderr(&o));
    if has_gpu() {
        let o = generate(&path, "ab", &["--max-tokens", "4", "--device", "gpu"]);
        assert_fails(&o, &["unsupported", "projection_length"]);
        let o = luna(&["score", "--model", &s(&path), "--text", &s(&doc), "--device", "gpu"]);
        assert_fails(&o, &["unsupported", "projection_length"]);
    }
}

// ---------------------------------------------------------------------------
// score

/// The reference's surprisal of every token but the first, per token (entry i = bits of token i).
fn reference_bits(model: &Model, ids: &[u32]) -> Vec<f64> {
    let c = &model.config;
    let t: Vec<i64> = ids.iter().map(|&v| v as i64).collect();
    let batch = Batch::new(c, &t, 1, t.len()).unwrap();
    let logits = luna_wgpu::reference::causal_lm_forward(model, &batch);
    let v = c.vocab_size;
    let mut out = vec![0.0];
    for i in 1..ids.len() {
        out.push(bits(&logits[(i - 1) * v..i * v], ids[i] as usize));
    }
    out
}

/// The first number printed by `score`, and the unit after "bits per".
fn score_line(o: &Output) -> (f64, String) {
    let out = stdout(o);
    let mut w = out.split_whitespace();
    let value: f64 = w.next().unwrap_or_else(|| panic!("no score:\n{out}")).parse().unwrap();
    assert_eq!((w.next(), w.next()), (Some("bits"), Some("per")), "{out}");
    (value, w.next().unwrap().to_string())
}

#[test]
fn score_cpu_equals_the_reference_bits() {
    let dir = TempDir::new("score");
    let c = byte_lm(json!({"normalize_before": false}));
    let (model, tok) = byte_model(&c, 3);
    let path = save(&model, &dir, "m.safetensors");
    let text = "Luna: linear unified nested attention.\nÜber ✓ 🦀\n";
    let doc = dir.path("doc.txt");
    std::fs::write(&doc, text).unwrap();
    let ids = tok.encode_with_bos(text.as_bytes());
    let want = reference_bits(&model, &ids);
    let bpb = want.iter().sum::<f64>() / text.len() as f64;
    let (st, tsv) = (dir.path("s.safetensors"), dir.path("s.tsv"));
    for out in [&st, &tsv] {
        let o = luna(&["score", "--model", &s(&path), "--text", &s(&doc), "--surprisal", &s(out), "--device", "cpu"]);
        assert_ok(&o, "score --device cpu");
        let (value, unit) = score_line(&o);
        assert_eq!(unit, "byte");
        assert!((value - bpb).abs() < 1e-5, "bits per byte {value}, reference {bpb}");
        assert!(stdout(&o).contains(&format!("({} bytes scored", text.len())), "{}", stdout(&o));
    }
    // Per token, in the file: entry i is the surprisal of token i (0 for bos).
    let (got, shape) = read(&st, "surprisal");
    assert_eq!(shape, vec![1, ids.len()]);
    let (file_ids, _) = read(&st, "tokens");
    assert_eq!(file_ids, ids.iter().map(|&v| v as f64).collect::<Vec<_>>());
    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(err < 1e-5, "surprisal differs by {err}");
    // The TSV: a header and one row per scored byte, the byte and its bits.
    let table = std::fs::read_to_string(&tsv).unwrap();
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows[0], "seq\tpos\ttoken\tbyte\tbits");
    assert_eq!(rows.len(), 1 + text.len());
    for (k, row) in rows[1..].iter().enumerate() {
        let f: Vec<&str> = row.split('\t').collect();
        let i = k + 1;
        let want_row = vec!["0".to_string(), i.to_string(), ids[i].to_string(), text.as_bytes()[k].to_string()];
        assert_eq!(f[..4].iter().map(|v| v.to_string()).collect::<Vec<_>>(), want_row);
        assert!((f[4].parse::<f64>().unwrap() - want[i]).abs() < 1e-5);
    }

    // Without bos the first byte has no context: the rest are scored.
    let mut bare = model.clone();
    Tokenizer { offset: 3, pad: Some(1), bos: None, eos: Some(2) }.store(&mut bare).unwrap();
    let bare_path = save(&bare, &dir, "no-bos.safetensors");
    let o = luna(&["score", "--model", &s(&bare_path), "--text", &s(&doc), "--device", "cpu"]);
    assert_ok(&o, "score without bos");
    let want = reference_bits(&bare, &tok.encode(text));
    let bpb = want.iter().sum::<f64>() / (text.len() - 1) as f64;
    let (value, _) = score_line(&o);
    assert!((value - bpb).abs() < 1e-5, "bits per byte {value}, reference {bpb}");
    assert!(stderr(&o).contains("not scored"), "{}", stderr(&o));
}

#[test]
fn score_tokens_file_gives_bits_per_token_of_the_authors_logits() {
    // The fixture has no tokenizer: token ids come from a file. The authors' logits give the bits.
    let dir = TempDir::new("score-tokens");
    let (model, input) = (fixture("public_causal.model.safetensors"), fixture("public_causal.input.safetensors"));
    let out = dir.path("s.safetensors");
    let o = luna(&["score", "--model", &s(&model), "--tokens", &s(&input), "--surprisal", &s(&out), "--device", "cpu"]);
    assert_ok(&o, "score --tokens");
    let expected = fixture("public_causal.expected.safetensors");
    let (logits, shape) = read(&expected, "logits");
    let (tokens, _) = read(&input, "tokens");
    let lengths = read(&expected, "lengths").0;
    let (n, v) = (shape[1], shape[2]);
    let (got, _) = read(&out, "surprisal");
    let (mut total, mut count) = (0.0, 0usize);
    for (b, &len) in lengths.iter().enumerate() {
        for i in 1..len as usize {
            let row = &logits[(b * n + i - 1) * v..(b * n + i) * v];
            let want = bits(row, tokens[b * n + i] as usize);
            assert!((got[b * n + i] - want).abs() < 1e-4, "[{b}, {i}]: {} vs {want}", got[b * n + i]);
            total += want;
            count += 1;
        }
    }
    let (value, unit) = score_line(&o);
    assert_eq!(unit, "token");
    assert!((value - total / count as f64).abs() < 1e-5, "{value} vs {}", total / count as f64);
    // --text needs a tokenizer.
    let doc = dir.path("doc.txt");
    std::fs::write(&doc, "abc").unwrap();
    let o = luna(&["score", "--model", &s(&model), "--text", &s(&doc), "--device", "cpu"]);
    assert_fails(&o, &["no tokenizer", "--tokens"]);
}

#[test]
fn score_gpu_agrees_with_cpu() {
    if !has_gpu() {
        return;
    }
    let dir = TempDir::new("score-gpu");
    let c = byte_lm(json!({"tie_kv": false, "tie_output_embedding": false}));
    let (model, _) = byte_model(&c, 6);
    let path = save(&model, &dir, "m.safetensors");
    // A document longer than a few chunks of the parallel form.
    let text: String = (0..300).map(|i| ["luna ", "attention ", "über ", "✓ ", "\n"][i % 5]).collect::<String>();
    let doc = dir.path("doc.txt");
    std::fs::write(&doc, &text).unwrap();
    let (cpu, gpu) = (dir.path("cpu.safetensors"), dir.path("gpu.safetensors"));
    let run = |out: &Path, device: &str| luna(&["score", "--model", &s(&path), "--text", &s(&doc), "--surprisal", &s(out), "--device", device]);
    let oc = run(&cpu, "cpu");
    assert_ok(&oc, "score --device cpu");
    let og = run(&gpu, "gpu");
    if !gpu_ran(&og, "score --device gpu") {
        return;
    }
    let ((bc, _), (bg, _)) = (read(&cpu, "surprisal"), read(&gpu, "surprisal"));
    let err = bc.iter().zip(&bg).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let ((vc, _), (vg, _)) = (score_line(&oc), score_line(&og));
    eprintln!("score gpu vs cpu: per token {err:.2e}, bits per byte {vg} vs {vc}\n{}", stderr(&og));
    assert!(err < 1e-3, "surprisal differs by {err} bits");
    assert!((vc - vg).abs() < 1e-3);
    // A tokens file, batched and padded.
    let input = dir.path("in.safetensors");
    assert_ok(&luna(&["random-tokens", "--model", &s(&path), "--lengths", "70,9,33", "--out", &s(&input), "--seed", "1"]), "random-tokens");
    let run = |out: &Path, device: &str| luna(&["score", "--model", &s(&path), "--tokens", &s(&input), "--surprisal", &s(out), "--device", device]);
    assert_ok(&run(&cpu, "cpu"), "score --tokens --device cpu");
    assert_ok(&run(&gpu, "gpu"), "score --tokens --device gpu");
    let ((bc, _), (bg, _)) = (read(&cpu, "surprisal"), read(&gpu, "surprisal"));
    let err = bc.iter().zip(&bg).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(err < 1e-3, "batched surprisal differs by {err} bits");
}

// ---------------------------------------------------------------------------
// Bad input

#[test]
fn bad_generate_and_score_input_fails_cleanly() {
    let dir = TempDir::new("bad");
    let c = byte_lm(json!({"learned_pos": true, "max_positions": 16}));
    let (model, _) = byte_model(&c, 1);
    let path = save(&model, &dir, "m.safetensors");
    let encoder = fixture("public_encoder.model.safetensors");
    let no_tok = fixture("public_causal.model.safetensors");
    let doc = dir.path("doc.txt");
    std::fs::write(&doc, "hello").unwrap();
    let sc = |model: &Path, extra: &[&str]| {
        let mut args = vec!["score".to_string(), "--model".into(), s(model)];
        args.extend(extra.iter().map(|a| a.to_string()));
        luna(&args)
    };
    for device in ["cpu", "auto"] {
        let dev = ["--device", device];
        // A model that is not causal.
        assert_fails(&generate(&encoder, "hi", &dev), &["encoder model, not a causal LM", "generate"]);
        let mut a = vec!["--text", doc.to_str().unwrap()];
        a.extend(dev);
        assert_fails(&sc(&encoder, &a), &["encoder model, not a causal LM", "score"]);
        // A causal model without a tokenizer cannot take text.
        assert_fails(&generate(&no_tok, "hi", &dev), &["no tokenizer", "luna.tokenizer"]);
        // Sampling parameters.
        let mut a = vec!["--temperature", "-1"];
        a.extend(dev);
        assert_fails(&generate(&path, "hi", &a), &["temperature -1", ">= 0"]);
        let mut a = vec!["--top-k", "0"];
        a.extend(dev);
        assert_fails(&generate(&path, "hi", &a), &["top-k 0"]);
        let mut a = vec!["--temperature", "NaN"];
        a.extend(dev);
        assert_fails(&generate(&path, "hi", &a), &["temperature NaN"]);
        // A prompt beyond max_positions with learned positions.
        assert_fails(&generate(&path, &"x".repeat(16), &dev), &["17 tokens with bos", "max_positions = 16"]);
        // An empty document, and one beyond max_positions.
        let empty = dir.path("empty.txt");
        std::fs::write(&empty, "").unwrap();
        let mut a = vec!["--text", empty.to_str().unwrap()];
        a.extend(dev);
        assert_fails(&sc(&path, &a), &["empty.txt is empty"]);
        let long = dir.path("long.txt");
        std::fs::write(&long, "y".repeat(20)).unwrap();
        let mut a = vec!["--text", long.to_str().unwrap()];
        a.extend(dev);
        assert_fails(&sc(&path, &a), &["20 bytes (21 tokens with bos)", "max_positions = 16"]);
        // Token files: out of the vocabulary, too long, a single token, not a token file.
        let toks = dir.path("t.safetensors");
        let mut a = vec!["--tokens", toks.to_str().unwrap()];
        a.extend(dev);
        std::fs::write(&toks, tensors::serialize_tokens(&[0, 5, 259, 7], [1, 4]).unwrap()).unwrap();
        assert_fails(&sc(&path, &a), &["token 259", "vocabulary"]);
        std::fs::write(&toks, tensors::serialize_tokens(&[-2, 5], [1, 2]).unwrap()).unwrap();
        assert_fails(&sc(&path, &a), &["token -2", "vocabulary"]);
        std::fs::write(&toks, tensors::serialize_tokens(&[9; 17], [1, 17]).unwrap()).unwrap();
        assert_fails(&sc(&path, &a), &["17 tokens", "max_positions = 16"]);
        std::fs::write(&toks, tensors::serialize_tokens(&[9, 8], [2, 1]).unwrap()).unwrap();
        assert_fails(&sc(&path, &a), &["single token", "no next token"]);
        std::fs::write(&toks, tensors::serialize_tokens(&[], [0, 3]).unwrap()).unwrap();
        assert_fails(&sc(&path, &a), &["empty"]);
        let mut a = vec!["--tokens", doc.to_str().unwrap()];
        a.extend(dev);
        assert_fails(&sc(&path, &a), &["input file", "safetensors"]);
        // A surprisal file of an unknown kind is refused before any work.
        let mut a = vec!["--text", doc.to_str().unwrap(), "--surprisal", "out.csv"];
        a.extend(dev);
        assert_fails(&sc(&path, &a), &["out.csv", ".tsv or .safetensors"]);
        // Missing files.
        let mut a = vec!["--text", "no-such-doc.txt"];
        a.extend(dev);
        assert_fails(&sc(&path, &a), &["no-such-doc.txt", "No such file"]);
        assert_fails(&generate(&dir.path("no-such.safetensors"), "hi", &dev), &["no-such.safetensors", "No such file"]);
    }
    // A document of one byte when the tokenizer has no bos: nothing to score.
    let mut bare = model.clone();
    Tokenizer { offset: 3, pad: Some(1), bos: None, eos: None }.store(&mut bare).unwrap();
    let bare_path = save(&bare, &dir, "no-bos.safetensors");
    let one = dir.path("one.txt");
    std::fs::write(&one, "z").unwrap();
    assert_fails(&sc(&bare_path, &["--text", one.to_str().unwrap(), "--device", "cpu"]), &["one byte", "no bos"]);
    // Bad tokenizer metadata in a model file: refused with the key named.
    for (meta, phrase) in [
        (r#"{"kind":"bpe","offset":3}"#, "unknown tokenizer kind \"bpe\""),
        (r#"{"kind":"bytes","offset":10}"#, "do not fit in vocab_size 259"),
        (r#"{"kind":"bytes","offset":3,"eos":5}"#, "eos id 5 falls inside"),
        ("{", "not valid JSON"),
    ] {
        let mut m = model.clone();
        m.metadata.insert("luna.tokenizer".into(), meta.into());
        let p = save(&m, &dir, "bad-tok.safetensors");
        assert_fails(&generate(&p, "hi", &["--device", "cpu"]), &["invalid model", "luna.tokenizer", phrase]);
        assert_fails(&sc(&p, &["--text", doc.to_str().unwrap(), "--device", "cpu"]), &["luna.tokenizer", phrase]);
    }
    // --text and --tokens together, or neither: a usage error from the argument parser.
    let o = sc(&path, &["--text", doc.to_str().unwrap(), "--tokens", doc.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = sc(&path, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--text") && !stderr(&o).contains("panicked"));
}

#[test]
fn forward_on_a_causal_lm_refuses_bad_tokens() {
    let dir = TempDir::new("forward-bad");
    let model = fixture("public_causal.model.safetensors"); // vocab 40, sinusoidal positions
    let out = dir.path("o.safetensors");
    let input = dir.path("in.safetensors");
    for (tokens, shape, phrases) in [
        (vec![3i64, 40, 5], [1, 3], vec!["token 40", "vocabulary"]),
        (vec![1, 1, 1], [1, 3], vec!["all padding"]),
        (vec![], [1, 0], vec!["empty"]),
    ] {
        std::fs::write(&input, tensors::serialize_tokens(&tokens, shape).unwrap()).unwrap();
        for device in ["cpu", "auto"] {
            let o = forward(&model, &input, &out, device);
            assert_fails(&o, &phrases);
            assert!(!out.exists());
        }
    }
}

#[test]
fn the_parallel_form_is_chosen_by_measurement_and_both_forms_agree() {
    // At a causal LM's first load on an adapter, the tiles of causal_chunk.wgsl
    // and the token walk of causal.wgsl are timed for its heads, and the faster
    // is kept in the tuning cache (engine::tune). Whichever is kept, the other
    // gives the same surprisal: the choice changes the speed, not the numbers.
    if !has_gpu() {
        return;
    }
    let dir = TempDir::new("causal-tuning");
    let c = byte_lm(json!({"embed_dim": 32, "ffn_embed_dim": 64, "num_heads": 2, "projection_length": 8, "max_positions": 1024,
                           "decay": [0.875, 0.998046875], "conv_width": 4, "no_token_positional_embeddings": true}));
    let model = save(&byte_model(&c, 3).0, &dir, "lm.safetensors");
    let text = dir.path("doc.txt");
    std::fs::write(&text, "The packed sequence reads the whole document; every token unpacks from it.\n".repeat(9)).unwrap();
    let tuning = dir.path("tuning.json");
    let score = |out: &Path| {
        let mut cmd = common::cli::luna_command();
        cmd.env("LUNA_TUNING_CACHE", &tuning);
        cmd.args(["score", "--model", &s(&model), "--text", &s(&text), "--device", "gpu", "--surprisal", &s(out)]);
        cmd.output().unwrap()
    };
    let (first, second) = (dir.path("first.safetensors"), dir.path("second.safetensors"));
    if !gpu_ran(&score(&first), "luna score") {
        return;
    }
    let key = "\"causal dh16 l8 decay\"";
    let cache = std::fs::read_to_string(&tuning).unwrap();
    let chosen = ["tiles", "token-walk"].into_iter().find(|v| cache.contains(&format!("{key}: \"{v}\""))).unwrap_or_else(|| panic!("no choice for {key}: {cache}"));
    let other = if chosen == "tiles" { "token-walk" } else { "tiles" };
    std::fs::write(&tuning, cache.replace(&format!("{key}: \"{chosen}\""), &format!("{key}: \"{other}\""))).unwrap();
    assert_ok(&score(&second), "luna score with the other form");
    assert!(std::fs::read_to_string(&tuning).unwrap().contains(&format!("{key}: \"{other}\"")), "the cached choice was not kept");
    let (a, b) = (read(&first, "surprisal").0, read(&second, "surprisal").0);
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    eprintln!("chosen {chosen}; {other} differs by {diff:.2e} bits");
    assert!(diff <= 1e-4, "{chosen} and {other} differ by {diff} bits");
    // The two forms add in different orders, so they round differently: equal
    // bits would mean the cached choice was not what ran.
    assert!(diff > 0.0, "the same bits both times: the cached choice did not change the kernel");
}
