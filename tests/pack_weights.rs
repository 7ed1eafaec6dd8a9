//! The pack weights of the causal LM (`Engine::pack_weights` and
//! `Engine::score_with_pack_weights`, what the demos paint for a layer and
//! slot) against a float64 reference written here from docs/luna.md,
//! "Causal attention": the layers before the chosen one run token
//! by token, then `A = softplus_ln2(pc_proj(X)_h · Q_P,h^T)` with
//! `Q_P = pq_proj(P) · dh^-0.5` (X after the local-context convolution,
//! when the model has one).

mod common;

use common::configs;
use luna_wgpu::reference::causal::{causal_layer_step, causal_p, convolve, softplus_ln2, CausalState};
use luna_wgpu::reference::ops::{layer_norm, linear, scale, token_sinusoid_row};
use luna_wgpu::{Config, LunaError, Model};
use serde_json::json;

/// `common::configs::causal` with a vocabulary of 40 and 3 layers.
fn causal_config(overrides: serde_json::Value) -> Config {
    configs::causal(configs::merge(json!({"vocab_size": 40, "num_layers": 3}), overrides))
}

/// `A [n, H, l]` of `target` for one sequence (positions 2, 3, ... for padding_idx 1).
fn reference_pack_weights(model: &Model, tokens: &[u32], target: usize) -> Vec<f64> {
    let c = &model.config;
    let (d, h_count, l, dh) = (c.embed_dim, c.num_heads, c.projection_length, c.head_dim());
    let p = causal_p(model);
    let mut states: Vec<CausalState> = (0..target).map(|_| CausalState::new(c)).collect();
    let tl = model.causal_layer(target);
    let mut qp = linear(&p, l, &tl.pq_proj);
    scale(&mut qp, (dh as f64).powf(-0.5));
    // The target layer's own convolution history (its sums are not needed).
    let mut target_state = CausalState::new(c);
    let mut out = Vec::new();
    for (i, &tok) in tokens.iter().enumerate() {
        let r = c.padding_idx + 1 + i;
        let pos: Vec<f64> = match &model.embed_positions {
            Some(table) => table[r * d..(r + 1) * d].iter().map(|&v| v as f64).collect(),
            None if c.no_token_positional_embeddings => vec![0.0; d],
            None => token_sinusoid_row(r, c.padding_idx, d),
        };
        let mut x: Vec<f64> = (0..d).map(|k| c.embed_scale * model.embed_tokens[tok as usize * d + k] as f64 + pos[k]).collect();
        for (li, state) in states.iter_mut().enumerate() {
            causal_layer_step(c, model.causal_layer(li), &p, &mut x, state);
        }
        let mut ax = if c.normalize_before { layer_norm(&x, d, &tl.self_attn_layer_norm, c.layer_norm_eps) } else { x.clone() };
        if let Some(w) = &tl.conv {
            ax = convolve(c, w, &ax, &mut target_state);
        }
        let pc = linear(&ax, 1, &tl.pc_proj);
        for h in 0..h_count {
            for j in 0..l {
                let z: f64 = (h * dh..(h + 1) * dh).map(|cc| pc[cc] * qp[j * d + cc]).sum();
                out.push(softplus_ln2(z));
            }
        }
    }
    out
}

fn tokens(c: &Config, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = luna_wgpu::init::Rng::new(seed);
    (0..n)
        .map(|_| loop {
            let t = rng.below(c.vocab_size as u64) as u32;
            if t as usize != c.padding_idx {
                break t;
            }
        })
        .collect()
}

fn check(c: &Config, n: usize) {
    let Some(mut engine) = common::engine() else { return };
    let model = Model::random(c, 11).unwrap();
    let gm = engine.load(&model).unwrap();
    let ids = tokens(c, n, 5);
    // Every layer from one pass that also scores the sequence; its surprisal is `score`'s.
    let all: Vec<usize> = (0..c.num_layers).rev().collect();
    let (bits, weights) = engine.score_with_pack_weights_blocking(&gm, &model, &ids, &all).unwrap();
    let batch = luna_wgpu::input::Batch::new(c, &ids.iter().map(|&t| t as i64).collect::<Vec<_>>(), 1, n).unwrap();
    let want_bits = engine.score_blocking(&gm, &batch).unwrap();
    assert_eq!(bits.len(), n);
    let bits_err = bits.iter().zip(&want_bits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(bits_err <= 1e-5, "surprisal of the pack pass differs from score by {bits_err}");
    assert_eq!(weights.iter().map(|w| w.layer).collect::<Vec<_>>(), all);
    // The same pass segment by segment (64 tokens each: the state carried over) gives the same.
    engine.set_segment_rows(64).unwrap();
    let (seg_bits, seg_weights) = engine.score_with_pack_weights_blocking(&gm, &model, &ids, &all).unwrap();
    engine.set_segment_rows(16384).unwrap();
    let seg_err = seg_bits.iter().zip(&bits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(seg_err <= 1e-5, "segmented surprisal differs by {seg_err}");
    for (a, b) in seg_weights.iter().zip(&weights) {
        assert!(a.values.iter().zip(&b.values).all(|(x, y)| (x - y).abs() <= 1e-5 * x.abs().max(1.0)), "segmented pack weights differ");
    }
    for layer in 0..c.num_layers {
        // One layer alone (the run stops after it) and the same layer from the pass over all.
        let got = engine.pack_weights_blocking(&gm, &model, &ids, &[layer]).unwrap().remove(0);
        let joint = weights.iter().find(|w| w.layer == layer).unwrap();
        assert!(got.values.iter().zip(&joint.values).all(|(a, b)| (a - b).abs() <= 1e-5 * a.abs().max(1.0)));
        assert_eq!((got.len, got.heads, got.proj_len, got.layer), (n, c.num_heads, c.projection_length, layer));
        let want = reference_pack_weights(&model, &ids, layer);
        assert_eq!(got.values.len(), want.len());
        let mag = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let err = got.values.iter().zip(&want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max);
        eprintln!("pack weights, layer {layer}, n {n}, pre-norm {}: max err {err:.2e} (|A| <= {mag:.2})", c.normalize_before);
        assert!(err <= 1e-4 * mag, "layer {layer}: pack weights error {err} over 1e-4 x {mag}");
        // Softplus weights are positive, and they differ between tokens (this is not a constant).
        assert!(got.values.iter().all(|&v| v > 0.0));
        assert!(got.values.iter().any(|&v| (v - got.values[0]).abs() > 1e-3));
    }
}

#[test]
fn pack_weights_match_reference_post_norm() {
    // n = 150 spans three 64-token chunks, the last one partial.
    check(&causal_config(json!({"normalize_before": false, "tie_kv": false})), 150);
}

#[test]
fn pack_weights_match_reference_pre_norm_tied_learned_positions() {
    check(&causal_config(json!({"normalize_before": true, "tie_kv": true, "learned_pos": true})), 70);
}

#[test]
fn pack_weights_match_reference_with_the_local_context_extension() {
    // Decay, a convolution (the weights read what it outputs) and no token positions.
    check(&causal_config(json!({"normalize_before": true, "tie_kv": true, "decay": [0.5, 0.9, 1.0], "conv_width": 4,
                                "no_token_positional_embeddings": true})), 150);
}

#[test]
fn pack_weights_refuse_bad_input() {
    let Some(mut engine) = common::engine() else { return };
    let c = causal_config(json!({}));
    let model = Model::random(&c, 1).unwrap();
    let gm = engine.load(&model).unwrap();
    let bad = |r: luna_wgpu::Result<_>| match r {
        Err(LunaError::Input(m)) => m,
        other => panic!("expected an input error, got {:?}", other.map(|_: Vec<luna_wgpu::PackWeights>| ())),
    };
    assert!(bad(engine.pack_weights_blocking(&gm, &model, &[3, 4], &[3])).contains("layer 3"));
    assert!(bad(engine.pack_weights_blocking(&gm, &model, &[3, 4], &[1, 1])).contains("twice"));
    assert!(bad(engine.pack_weights_blocking(&gm, &model, &[3, 4], &[])).contains("no layers"));
    assert!(bad(engine.pack_weights_blocking(&gm, &model, &[], &[0])).contains("no tokens"));
    assert!(bad(engine.pack_weights_blocking(&gm, &model, &[3, 1, 4], &[0])).contains("padding"));
    assert!(bad(engine.pack_weights_blocking(&gm, &model, &[3, 99], &[0])).contains("outside the vocabulary"));
    let other = Model::random(&causal_config(json!({"num_layers": 2})), 1).unwrap();
    assert!(bad(engine.pack_weights_blocking(&gm, &other, &[3, 4], &[0])).contains("differ"));
    // The engine is still usable after the refusals.
    assert_eq!(engine.pack_weights_blocking(&gm, &model, &[3, 4, 5], &[1]).unwrap()[0].len, 3);
    // An encoder has no pack weights of this kind.
    let enc = Model::random(&configs::encoder(json!({})), 1).unwrap();
    let genc = engine.load(&enc).unwrap();
    assert!(matches!(engine.pack_weights_blocking(&genc, &enc, &[3, 4], &[0]), Err(LunaError::Unsupported(_))));
}
