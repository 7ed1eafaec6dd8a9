//! Error measures: an output against the float64 reference (or against
//! another output), over the rows that carry meaning.

/// The largest |got - want| over the rows of `d` values that `valid` keeps,
/// and the largest |want| there. Every value of a kept row of `got` must be
/// finite (a NaN would vanish in the maximum).
pub fn max_err<G: Copy + Into<f64>>(got: &[G], want: &[f64], d: usize, valid: impl Fn(usize) -> bool) -> (f64, f64) {
    let mut err: f64 = 0.0;
    let mut mag: f64 = 0.0;
    for (r, (g, e)) in got.chunks(d).zip(want.chunks(d)).enumerate() {
        if !valid(r) {
            continue;
        }
        for (&a, b) in g.iter().zip(e) {
            let a: f64 = a.into();
            assert!(a.is_finite(), "non-finite output at row {r}");
            err = err.max((a - b).abs());
            mag = mag.max(b.abs());
        }
    }
    (err, mag)
}

/// The largest |got - want| relative to max(1, largest |want|), over the rows
/// of `d` values that `valid` keeps. Every value of `got` must be finite, in
/// the rows left out too.
pub fn rel_err(got: &[f32], want: &[f64], d: usize, valid: impl Fn(usize) -> bool) -> f64 {
    assert_eq!(got.len(), want.len());
    for (r, row) in got.chunks(d).enumerate() {
        assert!(row.iter().all(|v| v.is_finite()), "non-finite output in row {r}");
    }
    let (err, mag) = max_err(got, want, d, valid);
    err / mag.max(1.0)
}

/// For rows of a `[B, rows, d]` tensor: whether row `r` is one of the first
/// `valid[b]` rows of its sequence `b` (a sequence's tokens, its valid P rows).
pub fn first_rows(rows: usize, valid: &[usize]) -> impl Fn(usize) -> bool + '_ {
    move |r| valid.get(r / rows).is_some_and(|&v| r % rows < v)
}

/// The largest |a - b| over the first `valid[b]` rows of each sequence of the
/// `[B, rows, d]` tensors of `shape`; every value of `a` there must be finite.
pub fn max_diff<G: Copy + Into<f64>>(a: &[G], b: &[f64], shape: &[usize], valid: &[usize]) -> f64 {
    max_err(a, b, shape[2], first_rows(shape[1], valid)).0
}

/// The surprisal of `target` in bits, `-log2 softmax(row)[target]`, written out
/// here so that the tests do not lean on the crate's own.
pub fn bits(row: &[f64], target: usize) -> f64 {
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = row.iter().map(|v| (v - max).exp()).sum();
    -((row[target] - max) - z.ln()) / std::f64::consts::LN_2
}
