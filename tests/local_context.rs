//! This project's local-context extension of causal Luna (docs/luna.md, "Local
//! context"): per-head decay of the running sums and a causal convolution
//! before the projections. Every GPU form (parallel in chunks and tiles, the
//! token walk for wide heads, segments, prefill and steps) against the float64
//! reference; the config's checks; and that the authors' form is untouched.

mod common;

use common::compare::{self, first_rows, max_err};
use common::configs;
use luna_wgpu::kernels::causal as kernel;
use luna_wgpu::{reference, Batch, Config, Engine, Model};
use serde_json::{json, Value};

/// Decay rates of every kind: fast, slow, and the authors' 1.
const DECAY3: [f64; 3] = [0.5, 0.96875, 1.0];

fn local(overrides: Value) -> Config {
    configs::causal(configs::merge(json!({"decay": DECAY3, "conv_width": 4}), overrides))
}

/// Max |logit - reference| over the meaningful rows, relative to max(1, max |reference|).
fn parallel_err(engine: &mut Engine, model: &Model, batch: &Batch, chunk: usize) -> f64 {
    engine.set_causal_chunk(chunk).unwrap();
    let gm = engine.load(model).unwrap();
    let out = engine.causal_forward_blocking(&gm, batch).unwrap();
    engine.set_causal_chunk(64).unwrap();
    let want = reference::causal_lm_forward(model, batch);
    let (err, mag) = max_err(&out.logits, &want, model.config.vocab_size, first_rows(batch.len, &batch.lengths));
    err / mag.max(1.0)
}

#[test]
fn parallel_form_with_decay_and_convolution_matches_the_reference() {
    let Some(mut engine) = common::engine() else { return };
    for (seed, over) in [
        (1, json!({"normalize_before": true, "tie_kv": true})),
        (2, json!({"normalize_before": false, "tie_kv": false, "conv_width": 1})),
        (3, json!({"normalize_before": true, "conv_width": 0})),
        (4, json!({"normalize_before": true, "decay": null, "conv_width": 7})),
    ] {
        let c = local(over.clone());
        let model = Model::random(&c, seed).unwrap();
        // A padded batch; lengths off the chunk; one sequence of one token.
        let batch = common::random_batch(&c, &[70, 33, 1], seed + 10);
        for chunk in [1, 4, 16, 64] {
            let e = parallel_err(&mut engine, &model, &batch, chunk);
            eprintln!("{over}: chunk {chunk}: {e:.2e}");
            assert!(e < 1e-4, "{over}, chunk {chunk}: logits error {e}");
        }
    }
}

#[test]
fn chunkwise_tiles_of_the_demo_width_and_the_token_walk() {
    // dh 48, l 32 (the demo model's head): causal_chunk.wgsl in tiles of 64
    // (chunk 128: two tiles, the state grown between them) and 16; l 130 has no
    // tile, so causal.wgsl walks the tokens.
    let Some(mut engine) = common::engine() else { return };
    let c = local(json!({"embed_dim": 96, "num_heads": 2, "projection_length": 32, "decay": [0.875, 0.998046875]}));
    let model = Model::random(&c, 5).unwrap();
    let batch = common::random_batch(&c, &[200, 77], 6);
    assert!(kernel::tile(&common::shape_of(&c, 200, 128)).is_some());
    for chunk in [16, 128] {
        let e = parallel_err(&mut engine, &model, &batch, chunk);
        eprintln!("demo width, chunk {chunk}: {e:.2e}");
        assert!(e < 1e-4, "chunk {chunk}: logits error {e}");
    }
    let c = local(json!({"embed_dim": 8, "num_heads": 2, "projection_length": 130, "decay": [0.75, 0.99]}));
    assert!(kernel::tile(&common::shape_of(&c, 90, 64)).is_none());
    let model = Model::random(&c, 7).unwrap();
    let batch = common::random_batch(&c, &[90], 8);
    let e = parallel_err(&mut engine, &model, &batch, 32);
    eprintln!("token walk: {e:.2e}");
    assert!(e < 1e-4, "token walk: logits error {e}");
}

#[test]
fn prefill_then_steps_carry_the_decayed_sums_and_the_convolution() {
    let Some(mut engine) = common::engine() else { return };
    let c = local(json!({"normalize_before": true}));
    let model = Model::random(&c, 9).unwrap();
    let gm = engine.load(&model).unwrap();
    let batch = common::random_batch(&c, &[60], 10);
    let vocab = c.vocab_size;
    let want = reference::causal_lm_forward(&model, &batch);
    let err = |t: usize, got: &[f32]| {
        let w = &want[t * vocab..(t + 1) * vocab];
        let mag = w.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        got.iter().zip(w).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max) / mag
    };
    engine.set_causal_chunk(8).unwrap();
    // In one segment: a prompt of one token (only zeros in the history),
    // shorter than the convolution, ending mid-chunk, and on a chunk boundary.
    // In segments of 16: prompts that cross segments, the last one 1, 2 or 3
    // rows long, so that the history a decoder starts from mixes the new rows
    // with those the previous segment left (conv_width - 1 = 3).
    for (segment, splits) in [(16384, &[1, 2, 13, 16][..]), (16, &[17, 18, 19, 33, 34][..])] {
        common::with_segment_rows(&mut engine, segment, |engine| {
            for &split in splits {
                let (mut dec, first) = engine.prefill_blocking(&gm, &batch.tokens[..split]).unwrap();
                let state = dec.state_bytes();
                let mut worst = err(split - 1, &first);
                for t in split..batch.len {
                    let logits = engine.step_blocking(&gm, &mut dec, batch.tokens[t]).unwrap();
                    worst = worst.max(err(t, &logits));
                    assert_eq!(dec.state_bytes(), state, "the decoder state grew");
                }
                eprintln!("segments of {segment}, prefill of {split} then steps: {worst:.2e}");
                assert!(worst < 1e-4, "segments of {segment}, prefill {split}: logits error {worst}");
            }
        });
    }
    engine.set_causal_chunk(64).unwrap();
}

#[test]
fn long_document_in_segments_keeps_its_accuracy() {
    // 6,000 tokens in segments of 1,024: the sums decay across the scan's
    // carry, the convolution reads the previous segment's last inputs.
    // (Prompts that cross segments, and short last segments: the prefill test.)
    let Some(mut engine) = common::engine() else { return };
    engine.set_segment_rows(1024).unwrap();
    let c = configs::causal(json!({"embed_dim": 16, "ffn_embed_dim": 16, "num_heads": 2, "projection_length": 8,
                                   "num_layers": 1, "embed_scale": 4.0, "vocab_size": 20, "max_positions": 7000,
                                   "decay": [0.9, 0.999], "conv_width": 3}));
    let model = Model::random(&c, 11).unwrap();
    let batch = common::random_batch(&c, &[6000], 12);
    let gm = engine.load(&model).unwrap();
    let bits = engine.score_blocking(&gm, &batch).unwrap();
    let logits = reference::causal_lm_forward(&model, &batch);
    engine.set_segment_rows(16384).unwrap();
    let vocab = c.vocab_size;
    let mut worst: f64 = 0.0;
    for t in 0..batch.len - 1 {
        let want = compare::bits(&logits[t * vocab..(t + 1) * vocab], batch.tokens[t + 1] as usize);
        worst = worst.max((bits[t] as f64 - want).abs());
    }
    eprintln!("6,000 tokens in segments of 1,024: worst {worst:.2e} bits");
    assert!(worst < 1e-3, "surprisal off by {worst} bits");
}

#[test]
fn rates_of_one_are_the_authors_form_exactly() {
    let Some(mut engine) = common::engine() else { return };
    let plain = configs::causal(json!({}));
    let ones = configs::causal(json!({"decay": [1.0, 1.0, 1.0]}));
    assert_eq!(ones.decays(), None);
    let a = Model::random(&plain, 13).unwrap();
    let mut b = a.clone();
    b.config = ones;
    let batch = common::random_batch(&plain, &[50], 14);
    let ga = engine.load(&a).unwrap();
    let gb = engine.load(&b).unwrap();
    let la = engine.causal_forward_blocking(&ga, &batch).unwrap().logits;
    let lb = engine.causal_forward_blocking(&gb, &batch).unwrap().logits;
    assert_eq!(la, lb, "decay of 1 everywhere must run the authors' kernels");
}

#[test]
fn the_config_refuses_what_it_cannot_run() {
    let bad = |over: Value, phrase: &str| {
        let base = serde_json::to_value(configs::causal(json!({}))).unwrap();
        let text = configs::merge(base, over.clone()).to_string();
        let e = Config::from_json(&text).unwrap_err().to_string();
        assert!(e.contains(phrase), "{over}: {e}");
    };
    bad(json!({"decay": [0.5, 0.5]}), "one per head");
    bad(json!({"decay": [0.5, 0.0, 1.0]}), "decay[1]");
    bad(json!({"decay": [0.5, 1.5, 1.0]}), "decay[1]");
    bad(json!({"conv_width": 17}), "conv_width = 17");
    bad(json!({"local_window": 32}), "local_window");
    bad(json!({"model": "encoder", "conv_width": 4}), "causal_lm options");
    // Rates are read as the float32 numbers the kernels compute with, so that
    // every GPU form and the reference decay alike: one just under 1 is 1
    // (that head keeps the authors' mean), and the table's logarithm is that
    // of the float32 rate.
    let c = local(json!({"decay": [1.0 - 1e-8, 0.99, 0.5]}));
    let rates = c.decays().unwrap();
    assert_eq!(rates, &[1.0, 0.99f32 as f64, 0.5]);
    let table = kernel::decay_table(rates);
    assert_eq!(table[1], 0.99f32);
    assert_eq!(table[3 + 1], (0.99f32 as f64).ln() as f32);
    assert_eq!(table[3], 0.0);
    assert_eq!(local(json!({"decay": [1.0 - 1e-8, 1.0, 1.0]})).decays(), None);
    // The keys survive a round trip, and a model file without them has none.
    let c = local(json!({}));
    let back = Config::from_json(&c.to_json()).unwrap();
    assert_eq!(back, c);
    assert!(!configs::causal(json!({})).to_json().contains("decay"));
    // A file whose convolution weight is missing is refused by name.
    let mut model = Model::random(&c, 15).unwrap();
    for l in &mut model.causal_layers {
        l.conv = None;
    }
    let e = Model::from_bytes(&model.to_bytes().unwrap()).unwrap_err().to_string();
    assert!(e.contains("self_attn.conv.weight"), "{e}");
}

#[test]
fn without_token_positions_the_model_reads_the_same_at_any_position() {
    // With no_token_positional_embeddings and every head decaying, a text read
    // after a long stretch of other text is predicted as at the start, once
    // the sums have forgotten: the GPU against the reference, and the two
    // readings of the same 40 tokens against each other.
    let Some(mut engine) = common::engine() else { return };
    let c = local(json!({"decay": [0.5, 0.5, 0.75], "no_token_positional_embeddings": true}));
    let model = Model::random(&c, 17).unwrap();
    let gm = engine.load(&model).unwrap();
    let text = common::random_batch(&c, &[40], 18).tokens;
    let filler = common::random_batch(&c, &[300], 19).tokens;
    let long: Vec<i64> = filler.iter().chain(&text).map(|&t| t as i64).collect();
    let batch = Batch::new(&c, &long, 1, long.len()).unwrap();
    assert!(parallel_err(&mut engine, &model, &batch, 64) < 1e-4);
    let vocab = c.vocab_size;
    let late = engine.causal_forward_blocking(&gm, &batch).unwrap().logits;
    let ids: Vec<i64> = text.iter().map(|&t| t as i64).collect();
    let early = engine.causal_forward_blocking(&gm, &Batch::new(&c, &ids, 1, 40).unwrap()).unwrap().logits;
    // From the 30th token on: 0.75^30 (2e-4) of the filler is left in the
    // slowest head's sums, and the convolution reads 3 inputs back.
    let diff = (30..40).map(|t| {
        let (a, b) = (&early[t * vocab..(t + 1) * vocab], &late[(300 + t) * vocab..(301 + t) * vocab]);
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max)
    }).fold(0.0f32, f32::max);
    eprintln!("the same tokens at 0 and at 300: logits differ by {diff:.2e}");
    assert!(diff < 1e-2, "{diff}");
}
