//! Choosing the next token from logits (temperature, top-k, a seeded RNG), and
//! the surprisal of a document's tokens from its logits.
//!
//! Everything here is plain arithmetic on the host, in float64: the same seed
//! and the same logits give the same tokens on every platform, natively and
//! on the web (nothing blocks).

use crate::error::{LunaError, Result};
use crate::init::Rng;
use crate::input::Batch;

/// Samples token ids from logits.
///
/// - `temperature == 0`: greedy, the id of the largest logit (the smallest id among equal ones);
///   no random numbers are drawn.
/// - `temperature > 0`: `softmax(logits / temperature)` restricted to the `top_k`
///   largest logits (all of them when `None`), drawn with a SplitMix64 stream
///   seeded by `seed` (one draw per sample).
///
/// An optional allow-list ([`Sampler::restrict`]) removes ids from every draw
/// (e.g. padding and `bos`, which a model should not generate).
pub struct Sampler {
    temperature: f64,
    top_k: Option<usize>,
    rng: Rng,
    allowed: Option<Vec<bool>>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler").field("temperature", &self.temperature).field("top_k", &self.top_k).finish()
    }
}

impl Sampler {
    /// Checks the parameters: a temperature that is finite and not negative, a `top_k` of at least 1.
    pub fn new(temperature: f64, top_k: Option<usize>, seed: u64) -> Result<Sampler> {
        if !temperature.is_finite() || temperature < 0.0 {
            return Err(LunaError::Input(format!(
                "temperature {temperature} is invalid: it must be a finite number >= 0 (0 means greedy)"
            )));
        }
        if top_k == Some(0) {
            return Err(LunaError::Input("top-k 0 leaves no token to choose; use at least 1 (or leave it out)".into()));
        }
        Ok(Sampler { temperature, top_k, rng: Rng::new(seed), allowed: None })
    }

    /// The greedy sampler (temperature 0).
    pub fn greedy() -> Sampler {
        Sampler { temperature: 0.0, top_k: None, rng: Rng::new(0), allowed: None }
    }

    /// Only ids with `allowed[id] == true` can be drawn from now on; ids at or
    /// beyond `allowed.len()` cannot be drawn either.
    pub fn restrict(mut self, allowed: Vec<bool>) -> Sampler {
        self.allowed = Some(allowed);
        self
    }

    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    pub fn top_k(&self) -> Option<usize> {
        self.top_k
    }

    fn allowed(&self, i: usize) -> bool {
        self.allowed.as_ref().is_none_or(|a| a.get(i).copied().unwrap_or(false))
    }

    /// Draws one id from a row of logits (f32 or f64).
    ///
    /// Fails on an empty row, a NaN or `+inf` logit, or when no allowed id has a
    /// finite logit (`-inf` marks an impossible id).
    pub fn sample<T: Copy + Into<f64>>(&mut self, logits: &[T]) -> Result<u32> {
        if logits.is_empty() {
            return Err(LunaError::Input("cannot sample from an empty row of logits".into()));
        }
        let mut cand: Vec<(usize, f64)> = Vec::with_capacity(logits.len());
        for (i, &v) in logits.iter().enumerate() {
            let v: f64 = v.into();
            if v.is_nan() || v == f64::INFINITY {
                return Err(LunaError::Input(format!(
                    "logit {i} is {v}: the model produced non-finite numbers, so no token can be sampled"
                )));
            }
            if v > f64::NEG_INFINITY && self.allowed(i) {
                cand.push((i, v));
            }
        }
        if cand.is_empty() {
            return Err(LunaError::Input("no token can be sampled: every allowed logit is -inf".into()));
        }
        // Largest logit first; equal logits by id, so the order is total and deterministic.
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.temperature == 0.0 {
            return Ok(cand[0].0 as u32);
        }
        if let Some(k) = self.top_k {
            cand.truncate(k);
        }
        let max = cand[0].1;
        // exp((v - max) / T) <= 1 and the largest term is 1: no overflow, a sum >= 1.
        let weights: Vec<f64> = cand.iter().map(|&(_, v)| ((v - max) / self.temperature).exp()).collect();
        let total: f64 = weights.iter().sum();
        // A uniform draw in [0, 1) with 53 random bits.
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut acc = 0.0;
        for (&(i, _), w) in cand.iter().zip(&weights) {
            acc += w;
            if u < acc {
                return Ok(i as u32);
            }
        }
        // Rounding left u at (or past) the sum: the last candidate with weight.
        Ok(cand.iter().zip(&weights).rev().find(|(_, &w)| w > 0.0).map(|(&(i, _), _)| i as u32).unwrap_or(cand[0].0 as u32))
    }
}

/// The index of the largest value (the first of equal ones); `None` for an empty slice or one holding NaN.
pub fn argmax<T: Copy + Into<f64>>(values: &[T]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &v) in values.iter().enumerate() {
        let v: f64 = v.into();
        if v.is_nan() {
            return None;
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// `log softmax(logits)` in float64, stable for any finite logits.
pub fn log_softmax<T: Copy + Into<f64>>(logits: &[T]) -> Vec<f64> {
    let max = logits.iter().map(|&v| v.into()).fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logits.iter().map(|&v| (v.into() - max).exp()).sum();
    let lse = max + sum.ln();
    logits.iter().map(|&v| v.into() - lse).collect()
}

/// `-log2 p(target)` under `softmax(logits)`.
pub fn surprisal_bits<T: Copy + Into<f64>>(logits: &[T], target: u32) -> f64 {
    -log_softmax(logits)[target as usize] / std::f64::consts::LN_2
}

/// Surprisal in bits of each next token of a batch, from its logits `[B, n, vocab]`,
/// in the layout of [`crate::Engine::score`]: entry `[b, t]` is
/// `-log2 p(tokens[b, t+1] | tokens[b, ..=t])` for `t + 1 < lengths[b]`, else 0.
/// (This is the CPU form of `score`: give it `reference::causal_lm_forward`.)
pub fn next_token_bits<T: Copy + Into<f64>>(logits: &[T], vocab: usize, batch: &Batch) -> Result<Vec<f64>> {
    let n = batch.len;
    if logits.len() != batch.batch * n * vocab {
        return Err(LunaError::Input(format!(
            "{} logits do not fill [B={}, n={n}, vocab={vocab}]",
            logits.len(),
            batch.batch
        )));
    }
    let mut bits = vec![0.0; batch.batch * n];
    for b in 0..batch.batch {
        for t in 0..batch.lengths[b].saturating_sub(1) {
            let row = &logits[(b * n + t) * vocab..(b * n + t + 1) * vocab];
            bits[b * n + t] = surprisal_bits(row, batch.tokens[b * n + t + 1]);
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| rng.symmetric() * 3.0).collect()
    }

    #[test]
    fn same_seed_same_sequence() {
        let rows: Vec<Vec<f32>> = (0..200).map(|i| logits(i, 37)).collect();
        let run = |seed, t, k| {
            let mut s = Sampler::new(t, k, seed).unwrap();
            rows.iter().map(|r| s.sample(r).unwrap()).collect::<Vec<u32>>()
        };
        for (t, k) in [(1.0, None), (0.7, Some(5)), (2.5, Some(1)), (0.05, None)] {
            assert_eq!(run(9, t, k), run(9, t, k));
        }
        assert_ne!(run(9, 1.0, None), run(10, 1.0, None));
        // f32 and f64 logits of the same values give the same draws.
        let mut a = Sampler::new(0.8, Some(10), 3).unwrap();
        let mut b = Sampler::new(0.8, Some(10), 3).unwrap();
        for r in &rows {
            let r64: Vec<f64> = r.iter().map(|&v| v as f64).collect();
            assert_eq!(a.sample(r).unwrap(), b.sample(&r64).unwrap());
        }
    }

    #[test]
    fn the_stream_is_pinned() {
        // The draws depend only on SplitMix64 and float64 arithmetic: pin them so a
        // change of the sampling scheme is noticed (it would change every seeded output).
        let row: Vec<f64> = (0..8).map(|i| i as f64 * 0.25).collect();
        let mut s = Sampler::new(1.0, None, 1234).unwrap();
        let got: Vec<u32> = (0..12).map(|_| s.sample(&row).unwrap()).collect();
        let mut rng = Rng::new(1234);
        let w: Vec<f64> = (0..8).map(|i| (i as f64 * 0.25 - 1.75).exp()).collect();
        let total: f64 = w.iter().sum();
        // Candidates are visited largest first: ids 7, 6, ..., 0.
        let want: Vec<u32> = (0..12)
            .map(|_| {
                let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
                let mut acc = 0.0;
                for id in (0..8).rev() {
                    acc += w[id];
                    if u < acc {
                        return id as u32;
                    }
                }
                0
            })
            .collect();
        assert_eq!(got, want);
        // And literally, so that a change of SplitMix64 or of the draw is noticed too.
        assert_eq!(got, [4, 5, 7, 6, 4, 4, 5, 7, 6, 3, 7, 6]);
    }

    #[test]
    fn greedy_is_argmax() {
        for seed in 0..50 {
            let row = logits(seed, 101);
            let want = argmax(&row).unwrap() as u32;
            assert_eq!(Sampler::greedy().sample(&row).unwrap(), want);
            // Temperature 0 ignores the seed and top-k.
            assert_eq!(Sampler::new(0.0, Some(3), seed).unwrap().sample(&row).unwrap(), want);
        }
        // Ties go to the smallest id.
        assert_eq!(Sampler::greedy().sample(&[1.0f32, 3.0, 3.0, -1.0]).unwrap(), 1);
        assert_eq!(argmax(&[1.0f32, 3.0, 3.0]), Some(1));
        // Huge logits do not overflow.
        assert_eq!(Sampler::greedy().sample(&[1e300f64, -1e300, 1e301]).unwrap(), 2);
        let mut s = Sampler::new(1.0, None, 1).unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&[1e300f64, -1e300, 1e301]).unwrap(), 2);
        }
    }

    #[test]
    fn top_k_never_picks_outside_the_top_k() {
        for k in [1usize, 2, 5, 20] {
            let mut s = Sampler::new(5.0, Some(k), k as u64).unwrap();
            for seed in 0..300 {
                let row = logits(seed, 40);
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                let id = s.sample(&row).unwrap() as usize;
                assert!(order[..k].contains(&id), "k = {k}: picked {id}, outside the top {k}");
            }
        }
        // top-k 1 is greedy.
        let mut s = Sampler::new(3.0, Some(1), 5).unwrap();
        for seed in 0..50 {
            let row = logits(seed, 40);
            assert_eq!(s.sample(&row).unwrap() as usize, argmax(&row).unwrap());
        }
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let row = [0.0f64, 1.0, 2.0, -30.0];
        let mut s = Sampler::new(1.0, None, 77).unwrap();
        let mut counts = [0usize; 4];
        let n = 40000;
        for _ in 0..n {
            counts[s.sample(&row).unwrap() as usize] += 1;
        }
        let p: Vec<f64> = log_softmax(&row).iter().map(|v| v.exp()).collect();
        for i in 0..4 {
            let f = counts[i] as f64 / n as f64;
            assert!((f - p[i]).abs() < 0.01, "id {i}: frequency {f}, probability {}", p[i]);
        }
        // A high temperature flattens, a low one sharpens.
        let mut hot = Sampler::new(100.0, None, 1).unwrap();
        let hot_top = (0..4000).filter(|_| hot.sample(&row[..3]).unwrap() == 2).count();
        assert!((1200..1500).contains(&hot_top), "{hot_top}");
        let mut cold = Sampler::new(0.05, None, 1).unwrap();
        assert!((0..1000).all(|_| cold.sample(&row).unwrap() == 2));
    }

    #[test]
    fn restricted_ids_are_never_drawn() {
        let allowed: Vec<bool> = (0..40).map(|i| i % 3 != 0).collect();
        let mut s = Sampler::new(2.0, Some(8), 11).unwrap().restrict(allowed.clone());
        let mut g = Sampler::greedy().restrict(allowed.clone());
        for seed in 0..300 {
            let row = logits(seed, 40);
            assert!(allowed[s.sample(&row).unwrap() as usize]);
            let want = (0..40).filter(|&i| allowed[i]).max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a))).unwrap();
            assert_eq!(g.sample(&row).unwrap() as usize, want);
        }
        // An allow-list shorter than the row forbids the rest.
        let mut s = Sampler::greedy().restrict(vec![true, true]);
        assert_eq!(s.sample(&[0.0f32, 1.0, 9.0]).unwrap(), 1);
    }

    #[test]
    fn bad_parameters_and_logits_are_refused() {
        for t in [-0.1, f64::NAN, f64::INFINITY, -0.0 - 1.0] {
            let e = Sampler::new(t, None, 0).unwrap_err();
            assert!(matches!(e, LunaError::Input(_)) && e.to_string().contains("temperature"), "{e}");
        }
        let e = Sampler::new(1.0, Some(0), 0).unwrap_err();
        assert!(e.to_string().contains("top-k 0"), "{e}");
        let mut s = Sampler::new(1.0, None, 0).unwrap();
        let e = s.sample(&[0.0f32, f32::NAN, 1.0]).unwrap_err();
        assert!(e.to_string().contains("logit 1 is NaN"), "{e}");
        let e = s.sample(&[0.0f64, f64::INFINITY]).unwrap_err();
        assert!(e.to_string().contains("logit 1 is inf"), "{e}");
        assert!(Sampler::greedy().sample(&[f32::NAN]).is_err());
        let e = s.sample::<f32>(&[]).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = s.sample(&[f64::NEG_INFINITY; 3]).unwrap_err();
        assert!(e.to_string().contains("-inf"), "{e}");
        // -inf marks an impossible id, which is never drawn.
        for _ in 0..100 {
            assert_eq!(s.sample(&[f64::NEG_INFINITY, 0.0, f64::NEG_INFINITY]).unwrap(), 1);
        }
        assert_eq!(argmax(&[1.0f32, f32::NAN]), None);
        assert_eq!(argmax::<f32>(&[]), None);
    }

    #[test]
    fn next_token_bits_follow_the_score_layout() {
        let c = crate::config::Config::from_json(
            r#"{"model": "causal_lm", "vocab_size": 6, "embed_dim": 4, "ffn_embed_dim": 4, "num_layers": 1,
                "num_heads": 1, "projection_length": 2, "max_positions": 16}"#,
        )
        .unwrap();
        // Two sequences, the second padded (padding_idx 1): lengths 4 and 2.
        let batch = Batch::new(&c, &[2, 3, 4, 5, 5, 0, 1, 1], 2, 4).unwrap();
        let logits: Vec<f32> = (0..2 * 4 * 6).map(|i| ((i * 7) % 11) as f32 * 0.3).collect();
        let bits = next_token_bits(&logits, 6, &batch).unwrap();
        let row = |b: usize, t: usize| &logits[(b * 4 + t) * 6..(b * 4 + t + 1) * 6];
        let want = [
            surprisal_bits(row(0, 0), 3),
            surprisal_bits(row(0, 1), 4),
            surprisal_bits(row(0, 2), 5),
            0.0,
            surprisal_bits(row(1, 0), 0),
            0.0,
            0.0,
            0.0,
        ];
        assert_eq!(bits, want);
        assert!(next_token_bits(&logits[1..], 6, &batch).is_err());
    }

    #[test]
    fn surprisal_matches_the_definition() {
        let row = [1.0f64, 2.0, 3.0];
        let z: f64 = row.iter().map(|v| v.exp()).sum();
        for t in 0..3 {
            let want = -(row[t].exp() / z).log2();
            assert!((surprisal_bits(&row, t as u32) - want).abs() < 1e-12);
        }
        // Stable for logits that would overflow exp().
        let big = [1000.0f64, 1000.0];
        assert!((surprisal_bits(&big, 0) - 1.0).abs() < 1e-12);
        let ls = log_softmax(&[0.0f32; 4]);
        assert!(ls.iter().all(|v| (v + 4f64.ln()).abs() < 1e-12));
    }
}
