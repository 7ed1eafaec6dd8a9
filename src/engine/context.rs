//! The [`Engine`]: one GPU device with its pipeline cache, its reusable
//! scratch workspace and its memory accounting; the uploads, readbacks and
//! the closing of a call that every pass of the engine shares.

use crate::engine::progress::{OnProgress, Progress};
use crate::error::{LunaError, Result};
use crate::gpu::buffers::{self, MemoryStats, Tracked, Workspace};
use crate::gpu::context::{AdapterChoice, GpuContext};
use crate::gpu::pipelines::PipelineCache;
use crate::gpu::tuning::Tuning;
use crate::kernels::gemm::Precision;
use crate::gpu::recorder::Recorder;
#[cfg(not(target_arch = "wasm32"))]
use crate::gpu::recorder::Timestamps;
use crate::gpu::scope::ErrorScopes;
use std::sync::Arc;

/// Tokens per segment when one long sequence runs segment by segment.
pub(crate) const SEGMENT: usize = 16384;

/// A Luna engine on one GPU.
pub struct Engine {
    pub ctx: GpuContext,
    pub(crate) cache: PipelineCache,
    pub(crate) stats: Arc<MemoryStats>,
    pub(crate) workspace: Workspace,
    pub(crate) dummy: Tracked,
    /// Tokens per chunk of the causal parallel form.
    pub(crate) causal_chunk: usize,
    /// Most tokens per segment when one long sequence runs segment by segment.
    pub(crate) segment: usize,
    /// How models uploaded from now on store their GEMM weights.
    pub(crate) precision: Precision,
    /// Bytes of GPU memory a pass may count on (see [`Engine::set_memory_limit`]).
    memory_limit: Option<u64>,
    /// Hears the progress of long calls (see [`Engine::set_progress`]).
    pub(crate) progress: Option<OnProgress>,
}

impl Engine {
    /// Opens the adapter named by `choice` (or the best one).
    pub async fn new(choice: &AdapterChoice) -> Result<Engine> {
        Ok(Engine::with_context(GpuContext::new(choice).await?))
    }

    /// Blocking form of [`Engine::new`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(choice: &AdapterChoice) -> Result<Engine> {
        pollster::block_on(Engine::new(choice))
    }

    pub fn with_context(ctx: GpuContext) -> Engine {
        let stats = Arc::new(MemoryStats::default());
        let dummy = buffers::upload(&ctx, &stats, "dummy", &[0u32; 4]).expect("16 bytes fit any device");
        let cache = PipelineCache::new(Tuning::new(&ctx.info, crate::kernels::tuned_shaders_version()));
        let memory_limit = ctx.memory;
        Engine { workspace: Workspace::new(stats.clone()), cache, stats, dummy, ctx, causal_chunk: 64, segment: SEGMENT, precision: Precision::F32, memory_limit, progress: None }
    }

    /// How models uploaded from now on store their GEMM weights: float32 (the
    /// default), or float16 with float32 arithmetic, which needs the adapter's
    /// `shader-f16` (see docs/luna.md, "Tolerances", for what it costs in accuracy).
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        if precision == Precision::F16 && !self.ctx.device.features().contains(wgpu::Features::SHADER_F16) {
            return Err(LunaError::Unsupported(format!(
                "float16 weights need the shader-f16 feature, which {} does not offer; use float32",
                crate::gpu::context::describe(&self.ctx.info)
            )));
        }
        self.precision = precision;
        Ok(())
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Sets the GPU memory a pass may count on: a pass whose buffers (with the
    /// weights held) would pass it is refused before any GPU work, naming the
    /// longest sequence that fits. By default the device's memory when known
    /// (`LUNA_MEMORY_LIMIT`, else the Vulkan driver's device-local heaps);
    /// `None` turns the check off (a failed allocation then comes back as an
    /// out-of-memory error).
    pub fn set_memory_limit(&mut self, bytes: Option<u64>) {
        self.memory_limit = bytes;
    }

    /// The GPU memory a pass may count on (see [`Engine::set_memory_limit`]).
    pub fn memory_limit(&self) -> Option<u64> {
        self.memory_limit
    }

    /// Bytes of GPU buffers the engine holds now, and the most it has held.
    pub fn memory(&self) -> (u64, u64) {
        (self.stats.live(), self.stats.peak())
    }

    /// Gives back the scratch buffers (they are reallocated on the next call).
    pub fn release_workspace(&mut self) {
        self.workspace.clear();
        self.ctx.reuse.forget_bind_groups();
    }

    pub fn reset_peak_memory(&self) {
        self.stats.reset_peak();
    }

    /// Number of pipelines built so far.
    pub fn pipelines_built(&self) -> usize {
        self.cache.len()
    }

    /// Uploads `data` as a storage buffer (for running single kernels, as the kernel tests do).
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> Result<Tracked> {
        buffers::upload(&self.ctx, &self.stats, label, data)
    }

    /// A recorder for dispatching kernels directly; `submit` it, then read with [`Engine::read`].
    pub fn recorder(&self) -> Recorder<'_> {
        Recorder::new(&self.ctx, &self.cache, &self.dummy.buffer)
    }

    /// Reads the first `len` floats of each buffer back (asynchronous).
    pub async fn read(&self, sources: &[(&wgpu::Buffer, usize)]) -> Result<Vec<Vec<f32>>> {
        buffers::read_f32(&self.ctx, sources).await
    }

    /// Blocking form of [`Engine::read`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_blocking(&self, sources: &[(&wgpu::Buffer, usize)]) -> Result<Vec<Vec<f32>>> {
        pollster::block_on(self.read(sources))
    }

    /// Uploads floats (weights, tables) as a storage buffer counted in the engine's memory.
    pub(crate) fn up(&self, label: &str, data: &[f32]) -> Result<Tracked> {
        buffers::upload(&self.ctx, &self.stats, label, data)
    }

    /// Ends a call: pops its error scopes (a GPU error there wins over
    /// `result`), and on any failure clears the workspace, so that a failed
    /// call leaves no half-sized scratch behind and the engine stays usable.
    pub(crate) async fn close<T>(&mut self, scope: ErrorScopes, result: Result<T>) -> Result<T> {
        let result = scope.close(&self.ctx, result).await;
        if result.is_err() {
            self.workspace.clear();
            self.ctx.reuse.forget_bind_groups();
        }
        result
    }

    /// Times one recorded submission: `record` records and submits the work;
    /// the time comes from `timestamps` when the device has them, else from the
    /// wall clock around the submission and a wait (for benchmarks). The
    /// workspace is cleared on failure.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn time_submission(&mut self, record: impl FnOnce(&mut Engine) -> Result<()>, timestamps: Option<&Timestamps>) -> Result<f64> {
        self.ctx.check_alive()?;
        let scope = ErrorScopes::push(&self.ctx);
        let start = std::time::Instant::now();
        let result = record(self).and_then(|()| {
            self.ctx
                .device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| crate::error::LunaError::Device(format!("waiting for the GPU failed: {e}")))?;
            let wall = start.elapsed().as_secs_f64();
            match timestamps {
                Some(t) => pollster::block_on(t.seconds(&self.ctx)),
                None => Ok(wall),
            }
        });
        pollster::block_on(self.close(scope, result))
    }
}

impl Engine {
    /// Sets (or with `None` removes) the observer that hears the progress of
    /// `score`, `causal_forward`, `encode`, `prefill` and the pack weights, and
    /// may cancel them. Calls that fit one submission report once, at their end.
    pub fn set_progress(&mut self, observer: Option<OnProgress>) {
        self.progress = observer;
    }

    /// Tells the observer that `done` of `total` rows are done; a
    /// [`LunaError::Cancelled`] when it asks to stop.
    pub(crate) fn report(&mut self, done: usize, total: usize) -> Result<()> {
        let go_on = self.progress.as_mut().is_none_or(|observe| observe(Progress { done, total }));
        if go_on { Ok(()) } else { Err(LunaError::Cancelled(format!("after {done} of {total} tokens"))) }
    }
}
