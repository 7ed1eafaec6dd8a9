//! GPU buffers: uploads, a grow-only workspace reused across calls, live-byte
//! accounting, and asynchronous readback (with a blocking wrapper for native callers).

use super::context::GpuContext;
use crate::error::{LunaError, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// Bytes of live buffers the engine holds, and the most it has held at once.
#[derive(Default, Debug)]
pub struct MemoryStats {
    live: AtomicU64,
    peak: AtomicU64,
}

impl MemoryStats {
    pub fn add(&self, bytes: u64) {
        let now = self.live.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }
    pub fn sub(&self, bytes: u64) {
        self.live.fetch_sub(bytes, Ordering::SeqCst);
    }
    pub fn live(&self) -> u64 {
        self.live.load(Ordering::SeqCst)
    }
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }
    pub fn reset_peak(&self) {
        self.peak.store(self.live(), Ordering::SeqCst);
    }
}

/// A buffer whose bytes are counted in [`MemoryStats`] while it lives.
pub struct Tracked {
    pub buffer: wgpu::Buffer,
    stats: Arc<MemoryStats>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.stats.sub(self.buffer.size());
        self.buffer.destroy();
    }
}

const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Rounds a byte count up to a multiple of 16 (and at least 16).
fn padded(bytes: u64) -> u64 {
    bytes.max(16).div_ceil(16) * 16
}

/// Uploads `data` as a read-only storage buffer, checking it fits one binding.
pub fn upload<T: bytemuck::Pod>(ctx: &GpuContext, stats: &Arc<MemoryStats>, label: &str, data: &[T]) -> Result<Tracked> {
    let bytes: &[u8] = bytemuck::cast_slice(data);
    check_binding(ctx, label, bytes.len() as u64)?;
    let mut contents = bytes.to_vec();
    contents.resize(padded(bytes.len() as u64) as usize, 0);
    let buffer = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents: &contents,
        usage: STORAGE,
    });
    stats.add(buffer.size());
    Ok(Tracked { buffer, stats: stats.clone() })
}

/// An uninitialised storage buffer of `size` bytes (a multiple of 16).
fn storage(ctx: &GpuContext, label: &str, size: u64) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage: STORAGE, mapped_at_creation: false })
}

/// A storage buffer of `bytes` for a kernel to write, checking it fits one binding.
pub fn create(ctx: &GpuContext, stats: &Arc<MemoryStats>, label: &str, bytes: u64) -> Result<Tracked> {
    check_binding(ctx, label, bytes)?;
    let buffer = storage(ctx, label, padded(bytes));
    stats.add(buffer.size());
    Ok(Tracked { buffer, stats: stats.clone() })
}

/// Refuses, before any GPU work, a buffer that would not fit one storage binding.
pub fn check_binding(ctx: &GpuContext, what: &str, bytes: u64) -> Result<()> {
    let limit = ctx.max_binding();
    if bytes > limit {
        return Err(LunaError::too_large(what, bytes, limit));
    }
    Ok(())
}

/// Refuses `rows` token rows when a row-per-thread kernel (64 rows a
/// workgroup) would need more workgroups than one dispatch dimension allows.
pub fn check_dispatch_rows(ctx: &GpuContext, rows: u64) -> Result<()> {
    let max_groups = ctx.limits.max_compute_workgroups_per_dimension as u64;
    if rows.div_ceil(64) > max_groups {
        return Err(LunaError::Input(format!(
            "{rows} token rows in one batch exceed this adapter's dispatch limit of {} rows; split the batch",
            max_groups * 64
        )));
    }
    Ok(())
}

/// Named scratch buffers reused across calls: a buffer is replaced only when a
/// call needs more bytes than it has.
pub struct Workspace {
    buffers: HashMap<(&'static str, usize), Tracked>,
    stats: Arc<MemoryStats>,
}

impl Workspace {
    pub fn new(stats: Arc<MemoryStats>) -> Workspace {
        Workspace { buffers: HashMap::new(), stats }
    }

    /// A storage buffer of at least `bytes` bytes under `name`.
    pub fn get(&mut self, ctx: &GpuContext, name: &'static str, bytes: u64) -> wgpu::Buffer {
        self.get_nth(ctx, name, 0, bytes)
    }

    /// The `index`-th buffer under `name` (one per row block of a long
    /// sequence), of at least `bytes` bytes.
    pub fn get_nth(&mut self, ctx: &GpuContext, name: &'static str, index: usize, bytes: u64) -> wgpu::Buffer {
        let need = padded(bytes);
        let key = (name, index);
        if let Some(t) = self.buffers.get(&key) {
            if t.buffer.size() >= need {
                return t.buffer.clone();
            }
        }
        if self.buffers.remove(&key).is_some() {
            // Cached bind groups would keep the old buffer alive.
            ctx.reuse.forget_bind_groups();
        }
        let buffer = storage(ctx, name, need);
        self.stats.add(need);
        self.buffers.insert(key, Tracked { buffer: buffer.clone(), stats: self.stats.clone() });
        buffer
    }

    /// Bytes of the scratch buffers held now.
    pub fn bytes(&self) -> u64 {
        self.buffers.values().map(|t| t.buffer.size()).sum()
    }

    /// Drops every scratch buffer (after a failed call, or to give memory back).
    pub fn clear(&mut self) {
        self.buffers.clear();
    }

    /// Drops the buffers under `name` from `index` on (row blocks a shorter
    /// call no longer uses), so that memory follows the latest call.
    pub fn drop_from(&mut self, ctx: &GpuContext, name: &'static str, index: usize) {
        let before = self.buffers.len();
        self.buffers.retain(|&(n, i), _| n != name || i < index);
        if self.buffers.len() != before {
            ctx.reuse.forget_bind_groups();
        }
    }
}

/// Reads the first `len` floats of an output buffer back and checks that
/// every one is finite ([`LunaError::NotFinite`] names `tensor` otherwise).
pub async fn read_output(ctx: &GpuContext, tensor: &str, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
    let values = read_f32(ctx, &[(buffer, len)]).await?.remove(0);
    crate::error::check_finite(tensor, &values)?;
    Ok(values)
}

/// Copies the first `len` f32 values of each buffer back to the host.
/// Asynchronous: on the web the browser drives the mapping; natively the
/// device is polled until the copy is done.
pub async fn read_f32(ctx: &GpuContext, sources: &[(&wgpu::Buffer, usize)]) -> Result<Vec<Vec<f32>>> {
    let mut encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
    let mut staging = Vec::new();
    for (src, len) in sources {
        let bytes = padded(*len as u64 * 4);
        let buf = ctx.reuse.staging(&ctx.device, bytes);
        encoder.copy_buffer_to_buffer(src, 0, &buf, 0, bytes.min(src.size()));
        staging.push(buf);
    }
    ctx.queue.submit([encoder.finish()]);
    let mut receivers = Vec::new();
    for buf in &staging {
        let (tx, rx) = futures::channel::oneshot::channel();
        buf.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        receivers.push(rx);
    }
    #[cfg(not(target_arch = "wasm32"))]
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| LunaError::Device(format!("waiting for the GPU failed: {e}")))?;
    let mut out = Vec::new();
    for ((buf, rx), (_, len)) in staging.iter().zip(receivers).zip(sources) {
        rx.await
            .map_err(|_| LunaError::Device("readback was cancelled".into()))?
            .map_err(|e| LunaError::Device(format!("reading results back failed: {e}")))?;
        let view = buf
            .slice(..)
            .get_mapped_range()
            .map_err(|e| LunaError::Device(format!("mapping results failed: {e}")))?;
        out.push(bytemuck::cast_slice::<u8, f32>(&view)[..*len].to_vec());
        drop(view);
        buf.unmap();
    }
    for buf in staging {
        ctx.reuse.give_back(buf);
    }
    Ok(out)
}
