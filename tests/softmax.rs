//! The softmax-attention baseline: both attention kernels (flash and naive)
//! against the float64 multi-head attention of the reference, and whole
//! encoder layers (post-norm and pre-norm, relu and gelu) against
//! `reference::softmax`, on shapes that hit tile tails, masks, one head,
//! n = 1, mixed lengths in a batch, and long sequences; plus the refusals.

mod common;

use luna_wgpu::kernels::attention::Attention;
use common::attention::Strided;
use common::compare::rel_err;
use luna_wgpu::baseline::{Kind, SoftmaxConfig, SoftmaxInput, SoftmaxLayer};
use luna_wgpu::init::Rng;
use luna_wgpu::kernels::softmax::{self, Shape, View};
use luna_wgpu::reference;
use luna_wgpu::{Activation, Engine, LunaError};

/// A key mask `[batch, k_rows]`: keys at or past each sequence's length, and
/// every `every`-th key (never the first one, so no sequence is all masked).
fn key_mask(batch: usize, k_rows: usize, lengths: &[usize], every: usize) -> Vec<u32> {
    let mut mask = vec![0u32; batch * k_rows];
    for b in 0..batch {
        let len = lengths.get(b).copied().unwrap_or(k_rows);
        for j in 0..k_rows {
            let padded = j >= len;
            let dropped = every > 0 && j > 0 && (j + b) % every == 0;
            mask[b * k_rows + j] = (padded || dropped) as u32;
        }
    }
    mask
}

struct Case {
    batch: usize,
    q_rows: usize,
    k_rows: usize,
    heads: usize,
    head_dim: usize,
    lengths: &'static [usize],
    mask_every: usize,
    seed: u64,
}

/// Runs one attention kernel with Q inside wider rows and K, V side by side
/// in another buffer (`common::attention::Strided`), and compares every output
/// value with the reference's multi-head attention. Returns the error.
fn run_kernel(engine: &Engine, kind: Kind, c: &Case) -> Result<f64, LunaError> {
    let input = Strided::random(&mut Rng::new(c.seed), c.batch, c.q_rows, c.k_rows, c.heads, c.head_dim);
    let d = input.d();
    let (batch, q_rows, k_rows) = (c.batch, c.q_rows, c.k_rows);
    let mask = key_mask(batch, k_rows, c.lengths, c.mask_every);
    let want = input.reference(&mask);
    let shape = Shape { batch, q_rows, k_rows, heads: c.heads, head_dim: c.head_dim, scale: input.scale() as f32 };
    let qbuf = engine.upload("q", &input.q).unwrap();
    let kvbuf = engine.upload("kv", &input.kv).unwrap();
    let mbuf = engine.upload("mask", &mask).unwrap();
    let out = engine.upload("o", &vec![f32::NAN; batch * q_rows * d]).unwrap();
    let scratch = engine.upload("scratch", &vec![f32::NAN; softmax::scratch_floats(kind, &shape).max(1) as usize]).unwrap();
    let mut rec = engine.recorder();
    let [q, k, v] = input.views(&qbuf.buffer, &kvbuf.buffer);
    softmax::record(&mut rec, kind, &Attention {
        q,
        k,
        v,
        key_mask: &mbuf.buffer,
        out: &out.buffer,
        out_stride: d,
        shape,
        scratch: &scratch.buffer,
    })?;
    rec.submit();
    let got = engine.read_blocking(&[(&out.buffer, batch * q_rows * d)]).unwrap().remove(0);
    Ok(rel_err(&got, &want, d, |_| true))
}

fn check_kernel(kind: Kind, cases: &[Case], tol: f64) {
    let Some(engine) = common::engine() else { return };
    for c in cases {
        let e = run_kernel(&engine, kind, c).unwrap();
        eprintln!(
            "{} b={} q={} k={} h={} hd={} lengths {:?}: {e:.2e}",
            kind.name(),
            c.batch,
            c.q_rows,
            c.k_rows,
            c.heads,
            c.head_dim,
            c.lengths
        );
        assert!(
            e < tol,
            "{} attention b={} q={} k={} h={} hd={}: error {e}",
            kind.name(),
            c.batch,
            c.q_rows,
            c.k_rows,
            c.heads,
            c.head_dim
        );
    }
}

/// Shapes covering every flash specialisation (head_dim up to 32, 64, 128:
/// 1, 2, 4 invocations per row), tails of the query tile (256/128/64 rows)
/// and of the key tile (8), one head, n = 1, mixed lengths and masks.
fn small_cases() -> Vec<Case> {
    let case = |batch, n, heads, head_dim, lengths, mask_every, seed| Case {
        batch,
        q_rows: n,
        k_rows: n,
        heads,
        head_dim,
        lengths,
        mask_every,
        seed,
    };
    vec![
        case(2, 70, 4, 8, &[70, 37], 3, 1),
        case(1, 1, 1, 1, &[], 0, 2),
        case(3, 67, 1, 24, &[67, 1, 30], 5, 3),
        case(2, 150, 2, 40, &[150, 129], 0, 4),
        case(1, 130, 2, 64, &[], 4, 5),
        case(2, 70, 1, 100, &[9, 70], 0, 6),
        case(1, 65, 1, 128, &[], 6, 7),
        case(1, 3, 3, 12, &[2], 0, 8),
        case(1, 257, 1, 5, &[250], 0, 9),
        // Queries and keys of different lengths (the kernels are not limited to self-attention).
        Case { batch: 2, q_rows: 5, k_rows: 70, heads: 2, head_dim: 16, lengths: &[70, 33], mask_every: 0, seed: 10 },
    ]
}

#[test]
fn flash_kernel_matches_reference() {
    check_kernel(Kind::Flash, &small_cases(), 1e-5);
}

#[test]
fn naive_kernel_matches_reference() {
    check_kernel(Kind::Naive, &small_cases(), 1e-5);
}

#[test]
fn flash_kernel_long_sequence() {
    // Longer than one pass (2048 keys): the softmax state is carried across 3 passes,
    // with padding at the end and masked keys inside.
    let cases = [
        Case { batch: 1, q_rows: 4200, k_rows: 4200, heads: 2, head_dim: 16, lengths: &[4150], mask_every: 7, seed: 11 },
        Case { batch: 2, q_rows: 2100, k_rows: 2100, heads: 1, head_dim: 72, lengths: &[2100, 2049], mask_every: 0, seed: 12 },
    ];
    check_kernel(Kind::Flash, &cases, 2e-5);
}

#[test]
fn naive_kernel_long_sequence() {
    // P·V over more than one pass (1024 keys) of accumulation.
    let cases = [Case { batch: 1, q_rows: 1500, k_rows: 1500, heads: 2, head_dim: 16, lengths: &[1400], mask_every: 9, seed: 13 }];
    check_kernel(Kind::Naive, &cases, 2e-5);
}

#[test]
fn kernels_refuse_what_they_cannot_run() {
    let Some(engine) = common::engine() else { return };
    // Flash: head dimension over 128.
    let case = Case { batch: 1, q_rows: 4, k_rows: 4, heads: 1, head_dim: 129, lengths: &[], mask_every: 0, seed: 14 };
    match run_kernel(&engine, Kind::Flash, &case) {
        Err(LunaError::Unsupported(msg)) => assert!(msg.contains("129"), "{msg}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    // The naive kernel has no head-dimension limit.
    let e = run_kernel(&engine, Kind::Naive, &case).unwrap();
    assert!(e < 1e-5, "naive hd=129: {e}");
    // Naive: the n x n matrix over one binding is refused before anything is recorded.
    let limit = engine.ctx.max_binding();
    let n = ((limit / 4) as f64).sqrt() as usize + 2;
    let shape = Shape { batch: 1, q_rows: n, k_rows: n, heads: 1, head_dim: 4, scale: 0.5 };
    assert!(shape.naive_scores_floats() * 4 > limit);
    let buf = engine.upload("x", &vec![0.0f32; n * 12]).unwrap();
    let mask = engine.upload("mask", &vec![0u32; n]).unwrap();
    let mut rec = engine.recorder();
    let view = |offset| View { buffer: &buf.buffer, stride: 12, offset };
    let r = softmax::record_naive(&mut rec, &Attention {
        q: view(0),
        k: view(4),
        v: view(8),
        key_mask: &mask.buffer,
        out: &buf.buffer,
        out_stride: 12,
        shape,
        scratch: &buf.buffer,
    });
    match r {
        Err(LunaError::TooLarge { needed, limit: l, .. }) => assert!(needed > l && l == limit),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(rec.is_empty(), "a refused call recorded work");
}

fn config(d: usize, ffn: usize, heads: usize, layers: usize, act: Activation, pre: bool) -> SoftmaxConfig {
    SoftmaxConfig {
        embed_dim: d,
        ffn_embed_dim: ffn,
        num_heads: heads,
        num_layers: layers,
        activation: act,
        normalize_before: pre,
        layer_norm_eps: 1e-5,
    }
}

/// x `[batch, n, d]` and the key mask of sequences of `lengths` (right-padded to the longest).
fn input_data(d: usize, lengths: &[usize], seed: u64) -> (Vec<f32>, Vec<bool>, usize, usize) {
    let n = *lengths.iter().max().unwrap();
    let mut rng = Rng::new(seed);
    let x = rng.fill(lengths.len() * n * d, 1.5);
    let mask = lengths.iter().flat_map(|&len| (0..n).map(move |t| t >= len)).collect();
    (x, mask, lengths.len(), n)
}

/// Runs the encoder on the GPU with `kind` and checks it against the float64
/// reference on the valid rows (docs/luna.md, "Tolerances": 1e-4 relative). Returns the output.
fn check_layers(engine: &mut Engine, c: &SoftmaxConfig, layers: &[SoftmaxLayer], lengths: &[usize], kind: Kind, seed: u64) -> Vec<f32> {
    let d = c.embed_dim;
    let (x, mask, batch, n) = input_data(d, lengths, seed);
    let enc = engine.load_softmax(c, layers).unwrap();
    let input = SoftmaxInput { x: &x, batch, len: n, key_mask: &mask };
    let got = engine.softmax_forward_blocking(&enc, &input, kind).unwrap();
    let want = reference::softmax::encoder(c, layers, &x, batch, n, &mask);
    let e = rel_err(&got, &want, d, |r| !mask[r]);
    eprintln!("{} layers={} pre={} {:?} d={d} h={} lengths {lengths:?}: {e:.2e}", kind.name(), c.num_layers, c.normalize_before, c.activation, c.num_heads);
    assert!(e < 1e-4, "{} encoder error {e} over 1e-4 ({c:?}, lengths {lengths:?})", kind.name());
    got
}

fn random_layers(d: usize, ffn: usize, count: usize, seed: u64) -> Vec<SoftmaxLayer> {
    (0..count as u64).map(|i| SoftmaxLayer::random(d, ffn, seed + i)).collect()
}

#[test]
fn post_norm_relu_layers() {
    let Some(mut engine) = common::engine() else { return };
    let c = config(24, 40, 2, 2, Activation::Relu, false);
    let layers = random_layers(24, 40, 2, 100);
    for kind in [Kind::Flash, Kind::Naive] {
        check_layers(&mut engine, &c, &layers, &[37, 3, 70], kind, 1);
    }
}

#[test]
fn pre_norm_gelu_layers_shared_weights() {
    let Some(mut engine) = common::engine() else { return };
    // One layer shared by all three; four heads; a sequence of one token in the batch.
    let c = config(32, 48, 4, 3, Activation::Gelu, true);
    let layers = random_layers(32, 48, 1, 200);
    for kind in [Kind::Flash, Kind::Naive] {
        check_layers(&mut engine, &c, &layers, &[20, 65, 1], kind, 2);
    }
}

#[test]
fn post_norm_gelu_single_head_and_pre_norm_relu() {
    let Some(mut engine) = common::engine() else { return };
    // One head of 96 columns (4 invocations per query row), n = 1.
    let c = config(96, 64, 1, 1, Activation::Gelu, false);
    let layers = random_layers(96, 64, 1, 300);
    for kind in [Kind::Flash, Kind::Naive] {
        check_layers(&mut engine, &c, &layers, &[1], kind, 3);
        check_layers(&mut engine, &c, &layers, &[66, 9], kind, 4);
    }
    let c = config(48, 80, 3, 2, Activation::Relu, true);
    let layers = random_layers(48, 80, 2, 400);
    for kind in [Kind::Flash, Kind::Naive] {
        check_layers(&mut engine, &c, &layers, &[130, 64], kind, 5);
    }
}

#[test]
fn long_sequence_layer_flash() {
    let Some(mut engine) = common::engine() else { return };
    let c = config(16, 32, 2, 1, Activation::Relu, false);
    let layers = random_layers(16, 32, 1, 500);
    check_layers(&mut engine, &c, &layers, &[2300, 2100], Kind::Flash, 6);
}

#[test]
fn naive_and_flash_agree() {
    let Some(mut engine) = common::engine() else { return };
    let c = config(64, 96, 2, 2, Activation::Gelu, true);
    let layers = random_layers(64, 96, 2, 600);
    let lengths = [300, 211];
    let (x, mask, batch, n) = input_data(64, &lengths, 7);
    let enc = engine.load_softmax(&c, &layers).unwrap();
    let input = SoftmaxInput { x: &x, batch, len: n, key_mask: &mask };
    let flash = engine.softmax_forward_blocking(&enc, &input, Kind::Flash).unwrap();
    let naive = engine.softmax_forward_blocking(&enc, &input, Kind::Naive).unwrap();
    let naive64: Vec<f64> = naive.iter().map(|&v| v as f64).collect();
    let e = rel_err(&flash, &naive64, 64, |r| !mask[r]);
    eprintln!("flash vs naive: {e:.2e}");
    assert!(e < 2e-5, "flash and naive differ by {e}");
}

#[test]
fn timing_runs_the_same_pass_and_leaves_the_engine_as_it_was() {
    let Some(mut engine) = common::engine() else { return };
    let c = config(24, 40, 3, 2, Activation::Relu, false);
    let layers = random_layers(24, 40, 2, 700);
    let (x, mask, batch, n) = input_data(24, &[50, 17], 8);
    let enc = engine.load_softmax(&c, &layers).unwrap();
    let input = SoftmaxInput { x: &x, batch, len: n, key_mask: &mask };
    for kind in [Kind::Flash, Kind::Naive] {
        let want = engine.softmax_forward_blocking(&enc, &input, kind).unwrap();
        let seconds = engine.softmax_time(&enc, &input, kind).unwrap();
        assert!(seconds.is_finite() && seconds > 0.0, "{seconds}");
        let again = engine.softmax_forward_blocking(&enc, &input, kind).unwrap();
        assert_eq!(again, want, "{}: a forward pass after timing differs", kind.name());
    }
}

#[test]
fn refusals_leave_the_engine_usable() {
    let Some(mut engine) = common::engine() else { return };
    let c = config(8, 16, 2, 1, Activation::Relu, false);
    let layers = random_layers(8, 16, 1, 800);
    let enc = engine.load_softmax(&c, &layers).unwrap();

    // The naive n x n score matrix over the binding limit: TooLarge, nothing run.
    let limit = engine.ctx.max_binding();
    let n = ((limit / 4 / 2) as f64).sqrt() as usize + 2; // 2 heads
    let x = vec![0.25f32; n * 8];
    let mask = vec![false; n];
    let big = SoftmaxInput { x: &x, batch: 1, len: n, key_mask: &mask };
    match engine.softmax_forward_blocking(&enc, &big, Kind::Naive) {
        Err(LunaError::TooLarge { needed, limit: l, what, .. }) => {
            assert!(needed > l, "{what}");
            assert!(what.contains("score"), "{what}");
        }
        other => panic!("expected TooLarge, got {:?}", other.map(|v| v.len())),
    }
    assert!(engine.softmax_check(&enc, &big, Kind::Naive).is_err());

    // Bad inputs: typed errors.
    let (x, mask, batch, n) = input_data(8, &[10, 4], 9);
    let short = SoftmaxInput { x: &x[..x.len() - 1], batch, len: n, key_mask: &mask };
    assert!(matches!(engine.softmax_forward_blocking(&enc, &short, Kind::Flash), Err(LunaError::Input(_))));
    let all_pad = vec![true; batch * n];
    let padded = SoftmaxInput { x: &x, batch, len: n, key_mask: &all_pad };
    assert!(matches!(engine.softmax_forward_blocking(&enc, &padded, Kind::Naive), Err(LunaError::Input(_))));
    let empty = SoftmaxInput { x: &[], batch: 0, len: 0, key_mask: &[] };
    assert!(matches!(engine.softmax_forward_blocking(&enc, &empty, Kind::Flash), Err(LunaError::Input(_))));

    // Head dimension over the flash kernel's 128: Unsupported for flash; naive runs it.
    let wide = config(130, 16, 1, 1, Activation::Relu, false);
    let wide_layers = random_layers(130, 16, 1, 900);
    let wide_enc = engine.load_softmax(&wide, &wide_layers).unwrap();
    let (wx, wmask, wb, wn) = input_data(130, &[5, 3], 10);
    let wide_input = SoftmaxInput { x: &wx, batch: wb, len: wn, key_mask: &wmask };
    assert!(matches!(engine.softmax_forward_blocking(&wide_enc, &wide_input, Kind::Flash), Err(LunaError::Unsupported(_))));
    check_layers(&mut engine, &wide, &wide_layers, &[5, 3], Kind::Naive, 10);

    // Mismatched layers and configs are refused at load.
    assert!(matches!(engine.load_softmax(&c, &random_layers(8, 16, 2, 1)), Err(LunaError::Model(_))));
    assert!(matches!(engine.load_softmax(&c, &random_layers(8, 20, 1, 1)), Err(LunaError::Model(_))));
    assert!(matches!(engine.load_softmax(&config(9, 16, 2, 1, Activation::Relu, false), &random_layers(9, 16, 1, 1)), Err(LunaError::Config(_))));

    // And the engine still runs both kinds correctly.
    for kind in [Kind::Flash, Kind::Naive] {
        check_layers(&mut engine, &c, &layers, &[10, 4], kind, 9);
    }
}

#[test]
fn flash_in_row_blocks_walks_every_key_block() {
    // 128 rows a block: n = 300 runs as blocks of 128, 128 and 44 rows (each
    // sequence alone), the flash state carried across the key blocks; padding
    // inside the second sequence's last blocks. Pre- and post-norm. The naive
    // form runs each sequence whole.
    let Some(mut engine) = common::engine() else { return };
    common::with_segment_rows(&mut engine, 128, |engine| {
        for (pre, seed) in [(false, 900), (true, 901)] {
            let c = config(24, 40, 3, 2, Activation::Gelu, pre);
            let layers = random_layers(24, 40, 2, seed);
            assert!(engine.softmax_cut(&c, 300, 2, Kind::Flash).unwrap().block_rows < 300);
            check_layers(engine, &c, &layers, &[300, 190], Kind::Flash, seed + 10);
            check_layers(engine, &c, &layers, &[300, 190], Kind::Naive, seed + 10);
        }
    });
}

#[test]
fn planned_memory_is_what_a_pass_allocates() {
    let Some(mut engine) = common::engine() else { return };
    let c = config(16, 32, 2, 1, Activation::Relu, false);
    let layers = random_layers(16, 32, 1, 950);
    let enc = engine.load_softmax(&c, &layers).unwrap();
    for (kind, n) in [(Kind::Flash, 3000), (Kind::Naive, 600)] {
        let (x, mask, batch, n) = input_data(16, &[n], 951);
        let input = SoftmaxInput { x: &x, batch, len: n, key_mask: &mask };
        engine.release_workspace();
        let (base, _) = engine.memory();
        engine.reset_peak_memory();
        engine.softmax_time(&enc, &input, kind).unwrap();
        let (_, peak) = engine.memory();
        let planned = engine.softmax_memory(&c, n, 1, kind).unwrap();
        assert!((peak - base).abs_diff(planned) <= 64 * 16, "{}: planned {planned} B, allocated {} B", kind.name(), peak - base);
    }
}

#[test]
fn naive_batch_past_one_binding_runs_in_groups() {
    // Each sequence's [heads, n, n] scores take a third of one binding: a batch
    // of 4 runs as groups of 3 and 1, where it used to be refused whole.
    let Some(mut engine) = common::engine() else { return };
    let limit = engine.ctx.max_binding();
    if limit > 256 << 20 {
        eprintln!("skipped: the binding limit ({limit} bytes) would need a long float64 reference");
        return;
    }
    let n = ((limit / 3 / 4) as f64).sqrt() as usize;
    let c = config(8, 16, 1, 1, Activation::Relu, false);
    let layers = random_layers(8, 16, 1, 960);
    let cut = engine.softmax_cut(&c, n, 4, Kind::Naive).unwrap();
    assert_eq!(cut.seqs, 3, "{cut:?}");
    check_layers(&mut engine, &c, &layers, &[n, n - 5, n, 40], Kind::Naive, 961);
}
