//! The whole encoder on the GPU against the float64 reference, for every
//! config variant (docs/luna.md, "The model file": the config keys), padded
//! batches, tiny and long sequences.

mod common;

use common::configs;
use common::{check_model, random_batch};
use luna_wgpu::Model;
use serde_json::json;

/// docs/luna.md, "Tolerances": within 1e-4 relative to the outputs' size.
const TOL: f64 = 1e-4;

fn run(overrides: serde_json::Value, lengths: &[usize], seed: u64) {
    let Some(mut engine) = common::engine() else { return };
    let c = configs::encoder(overrides);
    let model = Model::random(&c, seed).unwrap();
    let batch = random_batch(&c, lengths, seed + 1);
    check_model(&mut engine, &model, &batch, TOL);
}

#[test]
fn post_norm_untied_learned_dynamic_mixed_batch() {
    // Hp != H, padded batch of mixed lengths, one sequence shorter than l (masked P rows).
    run(json!({"num_pheads": 4, "num_heads": 2, "dynamic_projection": true, "projection_length": 6}), &[37, 3, 70], 1);
}

#[test]
fn pre_norm_tied_sinusoidal_gelu_layernorm_embedding() {
    run(
        json!({"normalize_before": true, "tie_kv": true, "learned_pos": false, "embed_scale": 4.898979485566356,
               "activation": "gelu", "layernorm_embedding": true, "num_pheads": 3, "num_heads": 4}),
        &[20, 65, 1],
        2,
    );
}

#[test]
fn post_norm_tied_layer_weights_single_head() {
    run(json!({"tie_layer_weights": true, "num_layers": 3, "num_heads": 1, "num_pheads": 1, "tie_kv": true}), &[9, 14], 3);
}

#[test]
fn pre_norm_untied_fixed_projection_longer_than_sequence() {
    // Fixed projection with l > n: no P rows masked, l' = l.
    run(json!({"normalize_before": true, "projection_length": 9, "dynamic_projection": false}), &[4, 2], 4);
}

#[test]
fn dynamic_projection_shorter_than_l() {
    // n < l under dynamic projection: l' = longest sequence.
    run(json!({"dynamic_projection": true, "projection_length": 16, "num_pheads": 6}), &[5, 3], 5);
}

#[test]
fn single_token() {
    run(json!({"dynamic_projection": true}), &[1], 6);
    run(json!({"dynamic_projection": false, "learned_pos": false, "embed_scale": 2.0}), &[1], 7);
}

#[test]
fn odd_width_tile_tails() {
    // d = 69 (odd: a zero sinusoid column), ffn 131, heads of 23 columns, l = 67: every tile has a tail.
    run(
        json!({"embed_dim": 69, "ffn_embed_dim": 131, "num_heads": 3, "num_pheads": 1, "projection_length": 67,
               "learned_pos": false, "embed_scale": 8.306623862918075, "normalize_before": true, "layernorm_embedding": true}),
        &[100, 67],
        8,
    );
}

#[test]
fn long_sequence_3000_tokens() {
    run(json!({"embed_dim": 32, "ffn_embed_dim": 48, "num_heads": 4, "num_pheads": 2, "projection_length": 16,
               "learned_pos": false, "embed_scale": 5.656854249492381}), &[3000], 9);
}

#[test]
fn long_pack_reduction_batch() {
    // n >= 4096 in a padded batch: long online softmax in pack, learned positions.
    run(json!({"embed_dim": 16, "ffn_embed_dim": 16, "num_heads": 2, "num_pheads": 2, "projection_length": 8,
               "num_layers": 1, "max_positions": 5000}), &[4200, 1000], 10);
}

#[test]
fn engine_reuses_workspace_across_shapes() {
    let Some(mut engine) = common::engine() else { return };
    let c = configs::encoder(json!({"dynamic_projection": true}));
    let model = Model::random(&c, 20).unwrap();
    // Large, then small, then large again: the reused buffers must not leak stale rows.
    for (i, lengths) in [vec![90, 40], vec![3], vec![64, 64, 2]].iter().enumerate() {
        let batch = random_batch(&c, lengths, 30 + i as u64);
        check_model(&mut engine, &model, &batch, TOL);
    }
    let built = engine.pipelines_built();
    let gm = engine.load(&model).unwrap();
    let batch = random_batch(&c, &[10], 40);
    engine.encode_blocking(&gm, &batch).unwrap();
    assert_eq!(engine.pipelines_built(), built, "a repeated forward pass built new pipelines");
}

#[test]
fn memory_is_linear_in_sequence_length() {
    let Some(mut engine) = common::engine() else { return };
    let c = configs::encoder(json!({"embed_dim": 16, "ffn_embed_dim": 32, "projection_length": 8, "num_layers": 1}));
    let model = Model::random(&c, 50).unwrap();
    let gm = engine.load(&model).unwrap();
    let mut workspace = Vec::new();
    for n in [1000usize, 4000] {
        // Scratch sized for this n alone: release what earlier calls left.
        engine.release_workspace();
        let (base, _) = engine.memory();
        engine.reset_peak_memory();
        let batch = random_batch(&c, &[n], 51);
        engine.encode_blocking(&gm, &batch).unwrap();
        let (_, peak) = engine.memory();
        workspace.push((peak - base) as f64);
        // The plan the engine checks against the device's memory is what it allocates.
        let planned = engine.encoder_memory(&c, n, 1).unwrap();
        assert!(engine.encoder_memory(&c, 0, 1).is_err() && engine.encoder_memory(&c, n, 0).is_err(), "an empty batch is refused, not a panic");
        let got = peak - base;
        assert!(got.abs_diff(planned) <= 64 * 16, "n = {n}: planned {planned} B, allocated {got} B");
    }
    // 4x the tokens takes at most 4x the scratch; an n x n or n x l score
    // buffer would not fit under these bounds.
    let ratio = workspace[1] / workspace[0];
    eprintln!("scratch n=1000: {} B, n=4000: {} B, ratio {ratio:.2}", workspace[0], workspace[1]);
    assert!(ratio < 4.05, "scratch grew {ratio}x for 4x tokens");
    let c = &model.config;
    // Per token: the layer input x and 3 index/mask words (tokens, mask,
    // learned positions). Per row of one block (4000 tokens run as 4 blocks of
    // at most 1024 rows): LN/queries/FFN output (d), pack K/V (2d), FFN hidden.
    let (d, ffn) = (c.embed_dim as f64, c.ffn_embed_dim as f64);
    let bound = 4000.0 * (d + 3.0) * 4.0 + 1024.0 * (3.0 * d + ffn) * 4.0 + 64.0 * 1024.0;
    assert!(workspace[1] < bound, "scratch {} B over the activations' size ({bound} B)", workspace[1]);
}

/// Runs `lengths` with at most `block` rows per block (the engine's segment
/// setting), so that long sequences run in several row blocks and short ones
/// in groups; restores the default.
fn run_in_blocks(overrides: serde_json::Value, lengths: &[usize], block: usize, seed: u64) {
    let Some(mut engine) = common::engine() else { return };
    let c = configs::encoder(overrides);
    let model = Model::random(&c, seed).unwrap();
    let batch = random_batch(&c, lengths, seed + 1);
    common::with_segment_rows(&mut engine, block, |engine| {
        let cut = engine.encoder_cut(&c, &batch).unwrap();
        eprintln!("{lengths:?} in blocks of {block}: {cut:?}");
        check_model(engine, &model, &batch, TOL)
    });
}

#[test]
fn row_blocks_post_norm_learned_padded_batch() {
    // n = 300 in blocks of 64 (the last of 44 rows), each sequence its own
    // group; one sequence shorter than a block, padding inside later blocks.
    run_in_blocks(json!({"num_pheads": 4, "num_heads": 2, "dynamic_projection": true, "projection_length": 6}), &[300, 7, 190], 64, 60);
}

#[test]
fn row_blocks_pre_norm_tied_sinusoidal_with_norms() {
    // Pre-norm (LN redone per block), tied K/V, sinusoid rows written into x
    // by the host, embedding and final LayerNorms, odd widths, two layers.
    run_in_blocks(
        json!({"normalize_before": true, "tie_kv": true, "learned_pos": false, "embed_scale": 4.898979485566356,
               "activation": "gelu", "layernorm_embedding": true, "num_pheads": 3, "num_heads": 4,
               "embed_dim": 36, "ffn_embed_dim": 52, "num_layers": 2}),
        &[257, 100],
        128,
        61,
    );
}

#[test]
fn row_blocks_with_several_key_splits_each() {
    // n = 5000 in blocks of 1280 (a quarter, under the 2048 allowed): two pack
    // splits per block, eight merged across blocks.
    run_in_blocks(
        json!({"embed_dim": 16, "ffn_embed_dim": 16, "num_heads": 2, "num_pheads": 2, "projection_length": 8,
               "num_layers": 1, "max_positions": 5000}),
        &[5000],
        2048,
        62,
    );
}

#[test]
fn short_sequences_run_in_groups() {
    // n = 40 with 128 rows a group: groups of 3 and 1 sequences.
    run_in_blocks(json!({"dynamic_projection": true, "projection_length": 6}), &[40, 13, 2, 40], 128, 63);
}
