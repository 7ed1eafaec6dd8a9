//! Each kernel against the float64 reference on random data, on shapes that
//! hit tile tails, single rows and heads, masks, and a long pack reduction.

mod common;

use luna_wgpu::kernels::gemm::Gemm;
use luna_wgpu::kernels::attention::Attention;
use common::attention::Strided;
use common::compare;
use luna_wgpu::config::Activation;
use luna_wgpu::init::Rng;
use luna_wgpu::kernels::attention::{self, Shape};
use luna_wgpu::kernels::{embed, gemm, layernorm};
use luna_wgpu::model::{Linear, Norm};
use luna_wgpu::reference::ops;

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Max |got - want| relative to max(1, max |want|), over every value.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    compare::rel_err(got, want, 1, |_| true)
}

/// One GEMM on random data against the float64 reference (on the float32
/// weights, also when `half` uploads them rounded to float16): the error
/// relative to max(1, largest output).
fn gemm_case(engine: &luna_wgpu::Engine, rng: &mut Rng, [m, n, k]: [usize; 3], act: Option<Activation>, residual: bool, variant: gemm::Variant, half: bool) -> f64 {
    let lin = Linear { out: n, inp: k, weight: rng.fill(n * k, 1.0), bias: rng.fill(n, 1.0) };
    let a = rng.fill(m * k, 1.0);
    let r = rng.fill(m * n, 1.0);
    let mut want = ops::linear(&to64(&a), m, &lin);
    for (i, v) in want.iter_mut().enumerate() {
        if let Some(act) = act {
            *v = ops::activation(act, *v);
        }
        if residual {
            *v += r[i] as f64;
        }
    }
    let wb = if half {
        let bits: Vec<u16> = lin.weight.iter().map(|&w| half::f16::from_f32(w).to_bits()).collect();
        engine.upload("w", &bits).unwrap()
    } else {
        engine.upload("w", &lin.weight).unwrap()
    };
    let (ab, bb, rb) = (engine.upload("a", &a).unwrap(), engine.upload("b", &lin.bias).unwrap(), engine.upload("r", &r).unwrap());
    let out = engine.upload("c", &vec![f32::NAN; m * n]).unwrap();
    let mut rec = engine.recorder();
    let g = Gemm::new(&ab.buffer, &wb.buffer, &bb.buffer, &out.buffer, [m, n, k])
        .residual(residual.then_some(&rb.buffer))
        .act(act)
        .half_weights(half)
        .variant(variant);
    gemm::record(&mut rec, &g);
    rec.submit();
    let got = engine.read_blocking(&[(&out.buffer, m * n)]).unwrap().remove(0);
    rel_err(&got, &want)
}

#[test]
fn gemm_matches_reference() {
    let Some(engine) = common::engine() else { return };
    let mut rng = Rng::new(7);
    // Tails in every dimension (64x64 tiles with K steps of 16; 4x8 register
    // blocks in workgroups of up to 16x16), single rows and columns, K that is
    // and is not a multiple of 4 (the vec4 variants need it), m <= 4 (the gemv
    // class) and a long K. Every member of the family that fits runs each shape.
    let shapes = [
        (1, 1, 1), (65, 70, 33), (130, 17, 300), (7, 200, 64), (64, 64, 16), (3, 129, 1), (4, 300, 70),
        (2, 65, 513), (5, 3, 2), (1, 9, 4), (3, 70, 516), (70, 259, 8), (129, 33, 1028),
    ];
    for &(m, n, k) in &shapes {
        for variant in gemm::family().into_iter().filter(|v| v.fits([m, n, k], false)) {
            for act in [None, Some(Activation::Relu), Some(Activation::Gelu)] {
                for residual in [false, true] {
                    let e = gemm_case(&engine, &mut rng, [m, n, k], act, residual, variant, false);
                    let name = variant.name();
                    assert!(e < 1e-5, "gemm {name} {m}x{n}x{k} act {act:?} residual {residual}: error {e}");
                }
            }
        }
    }
}

/// Float16 weights (`Precision::F16`), float32 arithmetic: every vec4 member
/// against the float64 reference on the float32 weights, within the bound
/// docs/luna.md states (2e-3 of the largest output).
#[test]
fn gemm_half_weights_within_bound() {
    let Some(engine) = common::engine() else { return };
    if !engine.ctx.device.features().contains(wgpu::Features::SHADER_F16) {
        eprintln!("skipped: the adapter has no shader-f16");
        return;
    }
    let mut rng = Rng::new(11);
    let mut worst = 0f64;
    for &(m, n, k) in &[(1, 9, 4), (3, 70, 516), (70, 259, 8), (129, 33, 1028), (4, 300, 192)] {
        for variant in gemm::family().into_iter().filter(|v| v.fits([m, n, k], true)) {
            for (act, residual) in [(None, false), (Some(Activation::Gelu), false), (None, true)] {
                let e = gemm_case(&engine, &mut rng, [m, n, k], act, residual, variant, true);
                worst = worst.max(e);
                assert!(e < 2e-3, "f16 gemm {} {m}x{n}x{k} act {act:?} residual {residual}: error {e}", variant.name());
                // It is float16 that is read: the error is well above float32's.
                if k >= 192 {
                    assert!(e > 1e-6, "f16 gemm {} {m}x{n}x{k}: error {e} looks like float32 weights", variant.name());
                }
            }
        }
    }
    eprintln!("worst f16 gemm error: {worst:.2e}");
}

#[test]
fn gemm_variant_names_round_trip() {
    for v in gemm::family() {
        assert_eq!(gemm::Variant::from_name(&v.name()), Some(v));
    }
    assert_eq!(gemm::Variant::from_name("vec4-8"), None);
    assert_eq!(gemm::Variant::from_name("nonsense"), None);
}

/// Runs the attention kernel with Q, K, V placed at offsets inside wider rows
/// (`common::attention::Strided`), and compares with the reference's multi-head attention.
fn check_attention(batch: usize, q_rows: usize, k_rows: usize, heads: usize, head_dim: usize, mask_every: usize, seed: u64) {
    let Some(engine) = common::engine() else { return };
    let input = Strided::random(&mut Rng::new(seed), batch, q_rows, k_rows, heads, head_dim);
    let d = input.d();
    // Mask every `mask_every`-th key, but never all keys of a sequence.
    let mut mask = vec![0u32; batch * k_rows];
    for b in 0..batch {
        for j in 0..k_rows {
            if mask_every > 0 && (j + b) % mask_every == 0 && j != k_rows - 1 {
                mask[b * k_rows + j] = 1;
            }
        }
    }
    let want = input.reference(&mask);
    let qbuf = engine.upload("q", &input.q).unwrap();
    let kvbuf = engine.upload("kv", &input.kv).unwrap();
    let mbuf = engine.upload("mask", &mask).unwrap();
    let out = engine.upload("o", &vec![f32::NAN; batch * q_rows * d]).unwrap();
    let shape = Shape { batch, q_rows, k_rows, heads, head_dim, scale: input.scale() as f32 };
    let scratch = engine.upload("scratch", &vec![f32::NAN; shape.scratch_floats().max(1)]).unwrap();
    let mut rec = engine.recorder();
    let [q, k, v] = input.views(&qbuf.buffer, &kvbuf.buffer);
    attention::record(&mut rec, &Attention {
        q,
        k,
        v,
        key_mask: &mbuf.buffer,
        out: &out.buffer,
        out_stride: d,
        shape,
        scratch: &scratch.buffer,
    });
    rec.submit();
    let got = engine.read_blocking(&[(&out.buffer, batch * q_rows * d)]).unwrap().remove(0);
    let e = rel_err(&got, &want);
    eprintln!("attention b={batch} q={q_rows} k={k_rows} h={heads} hd={head_dim}: {e:.2e}");
    assert!(e < 1e-5, "attention b={batch} q={q_rows} k={k_rows} h={heads} hd={head_dim} mask {mask_every}: error {e}");
}

#[test]
fn attention_pack_shapes() {
    // P rows over a sequence: chunk tails (k_rows not a multiple of 64), masks, one head.
    check_attention(2, 5, 70, 4, 8, 3, 1);
    check_attention(1, 1, 1, 1, 1, 0, 2);
    check_attention(3, 7, 129, 1, 24, 5, 3);
}

#[test]
fn attention_unpack_shapes() {
    // Tokens over the packed rows: few keys, many queries, head dims past 64 columns per thread.
    check_attention(2, 33, 6, 2, 16, 4, 4);
    check_attention(1, 3, 2, 3, 130, 2, 5);
    check_attention(1, 2, 5, 1, 512, 0, 6);
}

#[test]
fn attention_long_pack_reduction() {
    // One long online softmax: n = 5000 keys in 79 chunks.
    check_attention(1, 3, 5000, 2, 16, 7, 8);
}

#[test]
fn layernorm_matches_reference() {
    let Some(engine) = common::engine() else { return };
    let mut rng = Rng::new(11);
    // Both layouts; 130 rows spread the thread-per-row layout over 3 workgroups with a tail.
    for &(rows, d) in &[(1, 1), (5, 7), (3, 100), (2, 1000), (70, 64), (130, 48)] {
        for (residual, layout) in [false, true].into_iter().flat_map(|r| layernorm::Layout::ALL.map(|l| (r, l))) {
            for normalize in [false, true] {
                for masked in [false, true] {
                    // Rows with a large common offset test the two-pass variance.
                    let x: Vec<f32> = rng.fill(rows * d, 3.0).iter().map(|v| v + 50.0).collect();
                    let r = rng.fill(rows * d, 1.0);
                    let norm = Norm { weight: rng.fill(d, 1.0), bias: rng.fill(d, 1.0) };
                    let mask: Vec<u32> = (0..rows).map(|i| (masked && i % 2 == 1) as u32).collect();
                    let mut v = to64(&x);
                    if residual {
                        ops::add(&mut v, &to64(&r));
                    }
                    let mut want = if normalize { ops::layer_norm(&v, d, &norm, 1e-5) } else { v };
                    ops::zero_rows(&mut want, d, &mask.iter().map(|&m| m != 0).collect::<Vec<_>>());
                    let bufs: Vec<_> = [&x, &r, &norm.weight, &norm.bias].iter().map(|v| engine.upload("in", v).unwrap()).collect();
                    let mbuf = engine.upload("mask", &mask).unwrap();
                    let out = engine.upload("out", &vec![f32::NAN; rows * d]).unwrap();
                    let mut rec = engine.recorder();
                    layernorm::record_with(
                        &mut rec,
                        layernorm::Step {
                            x: &bufs[0].buffer,
                            residual: residual.then_some(&bufs[1].buffer),
                            norm: normalize.then_some((&bufs[2].buffer, &bufs[3].buffer)),
                            mask: masked.then_some(&mbuf.buffer),
                            out: &out.buffer,
                        },
                        rows,
                        d,
                        1e-5,
                        layout,
                    );
                    rec.submit();
                    let got = engine.read_blocking(&[(&out.buffer, rows * d)]).unwrap().remove(0);
                    let e = rel_err(&got, &want);
                    assert!(e < 2e-5, "layernorm {layout:?} {rows}x{d} res {residual} norm {normalize} mask {masked}: {e}");
                }
            }
        }
    }
}

#[test]
fn embed_matches_reference() {
    let Some(engine) = common::engine() else { return };
    let mut rng = Rng::new(12);
    let (vocab, d, rows, npos) = (11, 37, 150, 20);
    let table = rng.fill(vocab * d, 1.0);
    let pos_table = rng.fill(npos * d, 1.0);
    let ids: Vec<u32> = (0..rows).map(|_| rng.below(vocab as u64) as u32).collect();
    let pos: Vec<u32> = (0..rows).map(|_| rng.below(npos as u64) as u32).collect();
    let mask: Vec<u32> = (0..rows).map(|i| (i % 3 == 0) as u32).collect();
    let scale = 2.5f32;
    // Positions: none, gathered from a table, or already in `out` (written by the host).
    for mode in 0..3 {
        let with_pos = mode > 0;
        for masked in [false, true] {
            let mut want = vec![0.0f64; rows * d];
            for r in 0..rows {
                if masked && mask[r] != 0 {
                    continue;
                }
                for c in 0..d {
                    let mut v = scale as f64 * table[ids[r] as usize * d + c] as f64;
                    if with_pos {
                        v += pos_table[pos[r] as usize * d + c] as f64;
                    }
                    want[r * d + c] = v;
                }
            }
            let b: Vec<_> = [&table, &pos_table].iter().map(|t| engine.upload("t", t).unwrap()).collect();
            let (ib, pb, mb) = (engine.upload("ids", &ids).unwrap(), engine.upload("pos", &pos).unwrap(), engine.upload("m", &mask).unwrap());
            // In-out mode: `out` starts as each row's positional term; otherwise as NaN (all overwritten).
            let start: Vec<f32> = match mode {
                2 => (0..rows * d).map(|i| pos_table[pos[i / d] as usize * d + i % d]).collect(),
                _ => vec![f32::NAN; rows * d],
            };
            let out = engine.upload("out", &start).unwrap();
            let mut rec = engine.recorder();
            embed::record(
                &mut rec,
                embed::Gather {
                    ids: &ib.buffer,
                    table: &b[0].buffer,
                    positions: match mode {
                        0 => embed::Positions::None,
                        1 => embed::Positions::Table(Some((&pb.buffer, &b[1].buffer))),
                        _ => embed::Positions::InOut,
                    },
                    mask: masked.then_some(&mb.buffer),
                    out: &out.buffer,
                },
                rows,
                d,
                scale,
            );
            rec.submit();
            let got = engine.read_blocking(&[(&out.buffer, rows * d)]).unwrap().remove(0);
            assert!(rel_err(&got, &want) < 1e-6, "embed positions mode {mode} mask {masked}");
        }
    }
}

#[test]
fn attention_very_long_pack_is_split() {
    // 70000 keys: 61 splits merged by the combine kernel. (One workgroup
    // walking them all loses accuracy on lavapipe, whose loops stop counting
    // past about 65k iterations.)
    let shape = Shape { batch: 1, q_rows: 2, k_rows: 70000, heads: 1, head_dim: 8, scale: 1.0 };
    assert!(shape.splits().0 > 1);
    check_attention(1, 2, 70000, 1, 8, 0, 9);
}
