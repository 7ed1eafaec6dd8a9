//! Autotuning: at the first use of a GEMM shape class on this adapter, every
//! candidate of the GEMM family that fits is timed on the real adapter and the
//! fastest is kept in the pipeline cache's `Tuning` (and its cache file); the
//! same for the two LayerNorm layouts at a model's width, and for the two
//! forms of the causal attention's parallel pass at a causal LM's heads
//! (`kernels::causal::parallel`).
//! What wins on a software rasteriser is not what wins on a discrete GPU, so
//! nothing here assumes a winner. Timings come from GPU timestamps where the
//! adapter has them, else (natively) from the wall clock around a wait; in a
//! browser without timestamps the defaults stay.

use crate::config::{Activation, Config, ModelKind};
use crate::engine::weights::causal_columns;
use crate::engine::Engine;
use crate::error::Result;
use crate::gpu::recorder::Timestamps;
use crate::gpu::scope::ErrorScopes;
use crate::gpu::recorder::Recorder;
use crate::kernels::gemm::{self, half_weights, Class, Gemm, Precision, Variant, GEMV_ROWS};
use crate::kernels::causal;
use crate::kernels::layernorm::{self, Layout};

/// FLOPs of one timed GEMM: enough to dwarf a dispatch's fixed cost, small
/// enough that a shape class tunes in well under a second on a software adapter.
const SAMPLE_FLOPS: usize = 1 << 26;
/// Timed runs per candidate after a warm-up (the minimum is kept).
const RUNS: usize = 2;
/// Tokens of the causal attention timed for the parallel form's choice: 4
/// chunks of 64 per head. Most of what the choice costs on a software adapter
/// is building both forms' pipelines (about 5 s more to load the demo model in
/// Chromium on SwiftShader, of which the walk's would be built at the first
/// pass anyway); on lavapipe about 0.3 s, once per machine (the choice is cached).
const CAUSAL_SAMPLE_ROWS: usize = 256;

/// One GEMM of a model's passes: `[n, k]`, activation, residual, and whether
/// its weight is a stacked Linear (float16 at `Precision::F16`) rather than
/// the logits' float32 token table.
type GemmUse = ([usize; 2], Option<Activation>, bool, bool);

/// Every GEMM a model's forward pass and decode step run (see `engine::tail`,
/// `engine::encoder`, `engine::causal`).
fn gemm_uses(c: &Config) -> Vec<GemmUse> {
    let (d, f, act, res) = (c.embed_dim, c.ffn_embed_dim, Some(c.activation), c.normalize_before);
    let kvw = if c.tie_kv { d } else { 2 * d };
    // The layer tail: out_proj, fc1, fc2 (residuals fused only in the pre-norm order).
    let mut v = vec![([d, d], None, res, true), ([f, d], act, false, true), ([d, f], None, res, true)];
    if c.model == ModelKind::CausalLm {
        v.extend([([causal_columns(c).4, d], None, false, true), ([c.vocab_size, d], None, false, false)]);
    } else {
        v.extend([([d, d], None, false, true), ([kvw, d], None, false, true)]);
    }
    v.sort_unstable_by_key(|u| format!("{u:?}"));
    v.dedup();
    v
}

impl Engine {
    /// Turns autotuning on or off (on by default, unless `LUNA_AUTOTUNE=0`).
    /// Off, every GEMM runs the family's default variant for its shape.
    pub fn set_autotune(&self, on: bool) {
        self.cache.tuning.set_enabled(on);
    }

    /// The tuned choices so far, as "shape class → variant".
    pub fn tuned_gemms(&self) -> std::collections::BTreeMap<String, String> {
        self.cache.tuning.choices()
    }

    /// Tunes the GEMM and LayerNorm classes a model uses (many rows, and for a
    /// causal LM also the few rows of a decode step).
    pub(crate) async fn tune_model(&self, c: &Config, precision: Precision) -> Result<()> {
        let mut classes = Vec::new();
        for ([n, k], act, residual, linear) in gemm_uses(c) {
            let half = linear && half_weights(precision, k);
            classes.push(Class { mnk: [GEMV_ROWS + 1, n, k], act, residual, half });
            if c.model == ModelKind::CausalLm {
                classes.push(Class { mnk: [1, n, k], act, residual, half });
            }
        }
        self.tune_gemms(&classes).await?;
        let timestamps = Timestamps::new(&self.ctx);
        if self.cache.tuning.enabled() && (cfg!(not(target_arch = "wasm32")) || timestamps.is_some()) {
            self.tune_layernorm(false, c.embed_dim, timestamps.as_ref()).await?;
            if c.model == ModelKind::CausalLm {
                self.tune_layernorm(true, c.embed_dim, timestamps.as_ref()).await?;
                self.tune_causal(c, timestamps.as_ref()).await?;
            }
        }
        Ok(())
    }

    /// Times the causal attention's parallel form both ways for this model's
    /// heads (`causal_chunk.wgsl` in tiles, and the token walk of
    /// `causal.wgsl`) over [`CAUSAL_SAMPLE_ROWS`] tokens and keeps the faster,
    /// unless tuned already or only the walk can run these heads.
    async fn tune_causal(&self, c: &Config, timestamps: Option<&Timestamps>) -> Result<()> {
        let (d, heads, dh, l) = (c.embed_dim, c.num_heads, c.head_dim(), c.projection_length);
        let rows = CAUSAL_SAMPLE_ROWS;
        let shape = causal::Shape { batch: 1, rows, heads, head_dim: dh, proj_len: l, chunk: self.causal_chunk.min(rows), t_base: 0 };
        let decay = c.decays().is_some();
        let key = causal::class_key(&shape, decay);
        let Some(tile) = causal::tile(&shape) else { return Ok(()) };
        if self.cache.tuning.contains(&key) {
            return Ok(());
        }
        // q, k, v and pc side by side (vec4-aligned, as the engine lays them out when it can).
        let (x, qp, state, out) = (self.scratch(rows * 4 * d), self.scratch(l * d), self.scratch(shape.state_floats()), self.scratch(rows * d));
        let table = self.scratch(2 * heads);
        let lengths = crate::gpu::buffers::upload(&self.ctx, &self.stats, "tuning lengths", &[rows as u32])?;
        let attention = causal::Causal {
            inputs: causal::Inputs { x: &x, stride: 4 * d, q: 0, k: d, v: 2 * d, pc: 3 * d },
            qp: &qp,
            lengths: &lengths.buffer,
            decay: decay.then_some(&table),
            state: &state,
            carry: None,
            out: &out,
            shape,
        };
        let forms = [(causal::TILES, Some(tile)), (causal::WALK, None)];
        let scope = ErrorScopes::push(&self.ctx);
        let what = format!("causal attention, {rows} tokens, {heads} heads, dh {dh}, l {l}");
        let timed = self.fastest(&what, &forms, |f| f.0.into(), |rec, f| causal::parallel_with(rec, &attention, f.1), timestamps).await;
        if let Some((_, (name, _))) = scope.close(&self.ctx, timed).await.unwrap_or(None) {
            self.cache.tuning.set(&key, name);
        }
        Ok(())
    }

    /// Times the candidates for each GEMM's class not tuned yet (shape
    /// `[m, n, k]`, activation, residual) and keeps the fastest. Only the class
    /// of `m` matters (few rows or many); the timed problem has as many rows as
    /// make it [`SAMPLE_FLOPS`].
    pub async fn tune_gemms(&self, classes: &[Class]) -> Result<()> {
        let tuning = &self.cache.tuning;
        let timestamps = Timestamps::new(&self.ctx);
        if !tuning.enabled() || (cfg!(target_arch = "wasm32") && timestamps.is_none()) {
            return Ok(());
        }
        for class in classes {
            let [m, n, k] = class.mnk;
            let key = class.key();
            if tuning.contains(&key) || n == 0 || k == 0 {
                continue;
            }
            let rows = if m <= GEMV_ROWS { 1 } else { (SAMPLE_FLOPS / (2 * n * k)).clamp(64, 16384) };
            let mnk = [rows, n, k];
            let candidates: Vec<Variant> = gemm::candidates(mnk, class.half).into_iter().filter(|v| self.fits_limits(v)).collect();
            let mut best: Option<(f64, Variant)> = None;
            if candidates.len() > 1 {
                let scope = ErrorScopes::push(&self.ctx);
                let timed = self.time_candidates(Class { mnk, ..*class }, &candidates, timestamps.as_ref()).await;
                best = scope.close(&self.ctx, timed).await.unwrap_or(None);
            }
            let choice = best.map_or_else(|| gemm::default_variant(mnk, class.half), |(_, v)| v);
            tuning.set(&key, &choice.name());
        }
        Ok(())
    }

    /// Whether a variant's workgroup is within this device's limits.
    fn fits_limits(&self, v: &Variant) -> bool {
        let l = &self.ctx.limits;
        let (x, y) = match *v {
            Variant::Vec4 { wg_x, wg_y, .. } => (wg_x, wg_y),
            Variant::Vec4Gemv { wg, .. } => (wg, 1),
            Variant::Tiled => (16, 16),
            Variant::Gemv => (64, 1),
        };
        x <= l.max_compute_workgroup_size_x && y <= l.max_compute_workgroup_size_y && x * y <= l.max_compute_invocations_per_workgroup
    }

    /// The fastest candidate on one `[m, n, k]` problem (zero-filled buffers).
    async fn time_candidates(&self, class: Class, candidates: &[Variant], timestamps: Option<&Timestamps>) -> Result<Option<(f64, Variant)>> {
        let [m, n, k] = class.mnk;
        let (a, w, bias, out, residual) = (self.scratch(m * k), self.scratch(n * k), self.scratch(n), self.scratch(m * n), self.scratch(m * n));
        let g = Gemm::new(&a, &w, &bias, &out, [m, n, k]).act(class.act).residual(class.residual.then_some(&residual)).half_weights(class.half);
        let what = format!("gemm {m}x{n}x{k}");
        self.fastest(&what, candidates, |v| v.name(), |rec, &v| gemm::record(rec, &g.variant(v)), timestamps).await
    }

    /// Times both LayerNorm layouts over rows of `dim` (a few rows, or many)
    /// and keeps the faster, unless tuned already.
    async fn tune_layernorm(&self, few: bool, dim: usize, timestamps: Option<&Timestamps>) -> Result<()> {
        let rows = if few { 1 } else { (SAMPLE_FLOPS / 16 / dim.max(1)).clamp(64, 16384) };
        let key = layernorm::class_key(rows, dim);
        if self.cache.tuning.contains(&key) || dim == 0 {
            return Ok(());
        }
        let (x, g, b, out) = (self.scratch(rows * dim), self.scratch(dim), self.scratch(dim), self.scratch(rows * dim));
        let step = || layernorm::Step { x: &x, residual: None, norm: Some((&g, &b)), mask: None, out: &out };
        let scope = ErrorScopes::push(&self.ctx);
        let what = format!("layernorm {rows}x{dim}");
        let timed = self.fastest(&what, &Layout::ALL, |l| l.name().into(), |rec, &l| layernorm::record_with(rec, step(), rows, dim, 1e-5, l), timestamps).await;
        if let Some((_, layout)) = scope.close(&self.ctx, timed).await.unwrap_or(None) {
            self.cache.tuning.set(&key, layout.name());
        }
        Ok(())
    }

    /// A zero-filled storage buffer of `floats` for timing.
    fn scratch(&self, floats: usize) -> wgpu::Buffer {
        self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tuning"),
            size: (floats.max(4) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    }

    /// Times each candidate (a warm-up, then the best of [`RUNS`]) and returns the fastest.
    async fn fastest<V: Copy>(
        &self,
        what: &str,
        candidates: &[V],
        name: impl Fn(&V) -> String,
        record: impl Fn(&mut Recorder, &V),
        timestamps: Option<&Timestamps>,
    ) -> Result<Option<(f64, V)>> {
        let mut best: Option<(f64, V)> = None;
        for v in candidates {
            let mut fastest = f64::INFINITY;
            for run in 0..=RUNS {
                let seconds = self.time_one(|rec| record(rec, v), timestamps).await?;
                if run > 0 {
                    fastest = fastest.min(seconds);
                }
            }
            log::info!("tuning {what}: {} {:.3} ms", name(v), fastest * 1e3);
            if best.is_none_or(|(t, _)| fastest < t) {
                best = Some((fastest, *v));
            }
        }
        Ok(best)
    }

    /// The time of one submission of what `record` records.
    async fn time_one(&self, record: impl FnOnce(&mut Recorder), timestamps: Option<&Timestamps>) -> Result<f64> {
        #[cfg(not(target_arch = "wasm32"))]
        let start = std::time::Instant::now();
        let mut rec = self.recorder();
        record(&mut rec);
        match timestamps {
            Some(t) => {
                rec.submit_timed(t);
                t.seconds(&self.ctx).await
            }
            None => {
                rec.submit();
                #[cfg(not(target_arch = "wasm32"))]
                {
                    self.ctx
                        .device
                        .poll(wgpu::PollType::wait_indefinitely())
                        .map_err(|e| crate::error::LunaError::Device(format!("waiting for the GPU failed: {e}")))?;
                    Ok(start.elapsed().as_secs_f64())
                }
                #[cfg(target_arch = "wasm32")]
                Ok(f64::INFINITY)
            }
        }
    }
}
