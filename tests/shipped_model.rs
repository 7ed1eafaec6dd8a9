//! The shipped demo model (models/luna-pydoc-bytes.safetensors, card in
//! models/README.md): it loads, it scores held-out text as its card says, and
//! it generates text under a fixed seed exactly as the float64 reference does.

mod common;

use common::cli::{assert_ok, luna_command, stderr, stdout};
use luna_wgpu::reference::causal::causal_lm_logits;
use luna_wgpu::sample::Sampler;
use luna_wgpu::tokenizer::Tokenizer;
use luna_wgpu::{shipped, Batch, Model, ModelKind};

fn model() -> Model {
    Model::load(&shipped::model_path().unwrap()).unwrap()
}

/// The card's figure for the test excerpt read as `protocol` (`blocks` or
/// `one pass`): the number in the PyTorch column of its
/// `| test excerpt, PROTOCOL |` row.
fn card_excerpt_bpb(protocol: &str) -> f64 {
    let card = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/README.md")).unwrap();
    let label = format!("| test excerpt, {protocol} |");
    let row = card.lines().find(|l| l.starts_with(&label)).unwrap_or_else(|| panic!("models/README.md has no `{label}` row"));
    row.split('|').nth(2).and_then(|c| c.trim().trim_matches('*').parse().ok()).unwrap_or_else(|| panic!("no number in {row:?}"))
}

/// The GPU's figure against the card's (PyTorch, float64): the same to rounding.
fn check_against_card(bpb: f64, protocol: &str) {
    let card = card_excerpt_bpb(protocol);
    eprintln!("held-out excerpt, {protocol}: {bpb:.6} bits per byte on the GPU, {card:.6} in the card");
    assert!((bpb - card).abs() <= 1e-4, "{protocol}: {bpb} bits per byte, the card says {card}");
}

#[test]
fn shipped_model_fits_and_loads() {
    let path = shipped::model_path().unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size <= 8 << 20, "{} is {size} bytes, over the 8 MiB limit", path.display());
    let m = model();
    assert_eq!(m.config.model, ModelKind::CausalLm);
    let tok = Tokenizer::from_model(&m).unwrap().expect("the shipped model carries its byte tokenizer");
    assert_eq!(tok.decode(&tok.encode("print('héllo')")), "print('héllo')");
}

/// The first 2,048 held-out bytes (tests/fixtures/pydoc-heldout-excerpt.txt),
/// in blocks of 128 after bos as in the card, scored on the GPU.
#[test]
fn shipped_model_scores_the_heldout_excerpt_as_its_card_says() {
    let Some(mut engine) = common::engine() else { return };
    let m = model();
    let tok = Tokenizer::from_model(&m).unwrap().unwrap();
    let text = std::fs::read(common::fixture("pydoc-heldout-excerpt.txt")).unwrap();
    let block = 128;
    let rows: Vec<&[u8]> = text.chunks(block).collect();
    let mut ids = Vec::new();
    for r in &rows {
        let mut seq: Vec<i64> = tok.encode_with_bos(r).iter().map(|&t| t as i64).collect();
        seq.resize(block + 1, m.config.padding_idx as i64);
        ids.extend(seq);
    }
    let batch = Batch::new(&m.config, &ids, rows.len(), block + 1).unwrap();
    let gpu = engine.load(&m).unwrap();
    let bits = engine.score_blocking(&gpu, &batch).unwrap();
    let total: f64 = rows.iter().enumerate().flat_map(|(b, r)| (0..r.len()).map(move |t| b * (block + 1) + t)).map(|i| bits[i] as f64).sum();
    check_against_card(total / text.len() as f64, "blocks");
    // And in one pass, bos + all 2,048 bytes.
    let ids: Vec<i64> = tok.encode_with_bos(&text).iter().map(|&t| t as i64).collect();
    let batch = Batch::new(&m.config, &ids, 1, ids.len()).unwrap();
    let bits = engine.score_blocking(&gpu, &batch).unwrap();
    check_against_card(bits.iter().map(|&b| b as f64).sum::<f64>() / text.len() as f64, "one pass");
}

#[test]
fn shipped_model_generates_under_a_fixed_seed_as_the_reference_does() {
    let Some(mut engine) = common::engine() else { return };
    let m = model();
    let c = &m.config;
    let tok = Tokenizer::from_model(&m).unwrap().unwrap();
    let prompt = tok.encode_with_bos(b"The json module");
    let allowed: Vec<bool> = (0..c.vocab_size as u32).map(|i| tok.can_generate(i)).collect();
    let count = 40;

    let gpu = engine.load(&m).unwrap();
    let gpu_run = |engine: &mut luna_wgpu::Engine| {
        let mut sampler = Sampler::new(0.8, None, 7).unwrap().restrict(allowed.clone());
        let (mut dec, mut logits) = engine.prefill_blocking(&gpu, &prompt).unwrap();
        let mut out = Vec::new();
        for _ in 0..count {
            let next = sampler.sample(&logits).unwrap();
            out.push(next);
            logits = engine.step_blocking(&gpu, &mut dec, next).unwrap();
        }
        out
    };
    let on_gpu = gpu_run(&mut engine);
    assert_eq!(on_gpu, gpu_run(&mut engine), "the same seed gave another text");

    let mut sampler = Sampler::new(0.8, None, 7).unwrap().restrict(allowed.clone());
    let mut states = Vec::new();
    let pad = c.padding_idx as u32;
    let positions: Vec<u32> = (1..=prompt.len() as u32).map(|i| pad + i).collect();
    let mut logits = causal_lm_logits(&m, &prompt, &positions, &mut states)[(prompt.len() - 1) * c.vocab_size..].to_vec();
    let mut reference = Vec::new();
    for i in 0..count {
        let next = sampler.sample(&logits).unwrap();
        reference.push(next);
        logits = causal_lm_logits(&m, &[next], &[pad + (prompt.len() + i + 1) as u32], &mut states);
    }
    let text = tok.decode(&on_gpu);
    eprintln!("seed 7: {:?}", text);
    assert_eq!(on_gpu, reference, "GPU {:?} vs reference {:?}", text, tok.decode(&reference));
    // A model trained on English prose writes mostly printable ASCII.
    let printable = text.chars().filter(|ch| ch.is_ascii_graphic() || ch.is_ascii_whitespace()).count();
    assert!(printable * 10 >= text.chars().count() * 9, "{text:?}");
}

/// `luna score` and `luna generate` use the shipped model when given no --model.
#[test]
fn the_cli_uses_the_shipped_model_by_default() {
    if common::engine().is_none() {
        return;
    }
    let luna = |args: &[&str]| {
        let out = luna_command().args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
        assert_ok(&out, &format!("luna {args:?}"));
        (stdout(&out), stderr(&out))
    };
    let excerpt = common::fixture("pydoc-heldout-excerpt.txt");
    let (stdout, _) = luna(&["score", "--device", "gpu", "--text", excerpt.to_str().unwrap()]);
    let bpb: f64 = stdout.split_whitespace().next().unwrap().parse().unwrap();
    assert!(stdout.contains("bits per byte (2048 bytes scored") && bpb > 0.5 && bpb < 6.0, "{stdout}");
    let (text, stderr) = luna(&["generate", "--device", "gpu", "--prompt", "The ", "--max-tokens", "20", "--seed", "1"]);
    assert!(!text.is_empty() && stderr.contains("generated"), "{text:?} / {stderr}");
}
