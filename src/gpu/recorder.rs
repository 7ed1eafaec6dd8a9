//! Records a sequence of kernel dispatches and submits them as one command
//! buffer: every dispatch's uniform parameters go into one buffer, each at its
//! own 256-byte-aligned offset, so nothing is written between dispatches. The
//! buffer is the context's, reused from one submission to the next, and so
//! are the bind groups of dispatches that bind the same buffers again.

use super::context::{BindKey, GpuContext};
use super::pipelines::{Kernel, KernelSpec, PipelineCache};
use std::sync::Arc;

struct Dispatch {
    kernel: Arc<Kernel>,
    buffers: Vec<wgpu::Buffer>,
    params_offset: u64,
    params_size: u64,
    groups: [u32; 3],
}

/// A buffer-to-buffer copy between dispatches.
struct Copy {
    src: wgpu::Buffer,
    src_offset: u64,
    dst: wgpu::Buffer,
    dst_offset: u64,
    size: u64,
}

enum Op {
    Dispatch(Dispatch),
    Copy(Copy),
}

/// Dispatches waiting to be submitted.
pub struct Recorder<'a> {
    pub ctx: &'a GpuContext,
    cache: &'a PipelineCache,
    /// Bound where a kernel's optional input is switched off.
    pub dummy: &'a wgpu::Buffer,
    ops: Vec<Op>,
    params: Vec<u8>,
    align: u64,
    max_groups: u32,
}

impl<'a> Recorder<'a> {
    pub fn new(ctx: &'a GpuContext, cache: &'a PipelineCache, dummy: &'a wgpu::Buffer) -> Recorder<'a> {
        Recorder {
            ctx,
            cache,
            dummy,
            ops: Vec::new(),
            params: Vec::new(),
            align: ctx.limits.min_uniform_buffer_offset_alignment.max(16) as u64,
            max_groups: ctx.limits.max_compute_workgroups_per_dimension,
        }
    }

    /// The pipeline for `spec`, built on first use.
    pub fn kernel(&self, spec: KernelSpec) -> Arc<Kernel> {
        self.cache.get(&self.ctx.device, spec)
    }

    /// The variant measured fastest for a shape class, if tuned.
    pub fn tuned(&self, class: &str) -> Option<String> {
        self.cache.tuning.get(class)
    }

    /// Most workgroups in one dimension of a dispatch.
    pub fn max_groups(&self) -> u32 {
        self.max_groups
    }

    /// Adds a dispatch of `groups` workgroups; `buffers` bind to 1, 2, ... in order.
    pub fn dispatch<P: bytemuck::Pod>(&mut self, kernel: &Arc<Kernel>, params: &P, buffers: &[&wgpu::Buffer], groups: [u32; 3]) {
        debug_assert_eq!(buffers.len(), kernel.spec.storage.len(), "{}", kernel.spec.name);
        let offset = self.params.len() as u64;
        let bytes = bytemuck::bytes_of(params);
        self.params.extend_from_slice(bytes);
        let end = (self.params.len() as u64).div_ceil(self.align) * self.align;
        self.params.resize(end as usize, 0);
        self.ops.push(Op::Dispatch(Dispatch {
            kernel: kernel.clone(),
            buffers: buffers.iter().map(|b| (*b).clone()).collect(),
            params_offset: offset,
            params_size: bytes.len() as u64,
            groups,
        }));
    }

    /// Copies `floats` f32 values between buffers, in order with the dispatches around it.
    pub fn copy(&mut self, src: &wgpu::Buffer, src_float: usize, dst: &wgpu::Buffer, dst_float: usize, floats: usize) {
        self.ops.push(Op::Copy(Copy {
            src: src.clone(),
            src_offset: src_float as u64 * 4,
            dst: dst.clone(),
            dst_offset: dst_float as u64 * 4,
            size: floats as u64 * 4,
        }));
    }

    /// Spreads `count` workgroups over x and y so that neither exceeds the
    /// device limit; kernels rebuild the linear id as `x + y * num_workgroups.x`.
    pub fn grid(&self, count: u32) -> [u32; 3] {
        let count = count.max(1);
        let x = count.min(self.max_groups);
        [x, count.div_ceil(x), 1]
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Encodes the dispatches into compute passes (split where a copy stands
    /// between them) of one command buffer and submits it.
    pub fn submit(self) {
        self.submit_inner(None);
    }

    /// Like [`Recorder::submit`], with GPU timestamps written at the start of
    /// the first pass and the end of the last (read them with [`Timestamps::seconds`]).
    pub fn submit_timed(self, timestamps: &Timestamps) {
        self.submit_inner(Some(timestamps));
    }

    fn submit_inner(self, timestamps: Option<&Timestamps>) {
        let ctx = self.ctx;
        if self.ops.is_empty() {
            return;
        }
        let uniforms = ctx.reuse.params(&ctx.device, self.params.len() as u64);
        ctx.queue.write_buffer(&uniforms, 0, &self.params);
        let groups: Vec<Option<wgpu::BindGroup>> = self
            .ops
            .iter()
            .map(|op| {
                let Op::Dispatch(d) = op else { return None };
                let key = BindKey {
                    layout: d.kernel.layout.clone(),
                    params: uniforms.clone(),
                    offset: d.params_offset,
                    size: d.params_size,
                    storage: d.buffers.clone(),
                };
                Some(ctx.reuse.bind_group(key, |k| {
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &k.params,
                            offset: k.offset,
                            size: wgpu::BufferSize::new(k.size),
                        }),
                    }];
                    for (i, b) in k.storage.iter().enumerate() {
                        entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.as_entire_binding() });
                    }
                    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(d.kernel.spec.name), layout: &k.layout, entries: &entries })
                }))
            })
            .collect();
        let mut encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("luna") });
        let first_pass = self.ops.iter().position(|op| matches!(op, Op::Dispatch(_)));
        let last_pass_start = self
            .ops
            .iter()
            .rposition(|op| matches!(op, Op::Dispatch(_)))
            .map(|last| self.ops[..last].iter().rposition(|op| matches!(op, Op::Copy(_))).map_or(0, |i| i + 1));
        let mut i = 0;
        while i < self.ops.len() {
            if let Op::Copy(c) = &self.ops[i] {
                encoder.copy_buffer_to_buffer(&c.src, c.src_offset, &c.dst, c.dst_offset, c.size);
                i += 1;
                continue;
            }
            let begin = (Some(i) == first_pass).then_some(0);
            let end = (Some(i) == last_pass_start).then_some(1);
            let timestamp_writes = timestamps.filter(|_| begin.is_some() || end.is_some()).map(|t| wgpu::ComputePassTimestampWrites {
                query_set: &t.query_set,
                beginning_of_pass_write_index: begin,
                end_of_pass_write_index: end,
            });
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("luna"), timestamp_writes });
            while let Some(Op::Dispatch(d)) = self.ops.get(i) {
                pass.set_pipeline(&d.kernel.pipeline);
                pass.set_bind_group(0, groups[i].as_ref(), &[]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                i += 1;
            }
        }
        if let Some(t) = timestamps {
            t.resolve(&mut encoder);
        }
        ctx.queue.submit([encoder.finish()]);
    }
}

/// A pair of GPU timestamps around a submission (needs `Features::TIMESTAMP_QUERY`).
pub struct Timestamps {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
}

impl Timestamps {
    /// `None` when the device has no timestamp queries.
    pub fn new(ctx: &GpuContext) -> Option<Timestamps> {
        if !ctx.device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return None;
        }
        let query_set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let buffer = |usage| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor { label: Some("timestamps"), size: 16, usage, mapped_at_creation: false })
        };
        Some(Timestamps {
            query_set,
            resolve: buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            readback: buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
        })
    }

    /// Timestamp writes for a single compute pass recorded outside a [`Recorder`].
    pub fn whole_pass(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites { query_set: &self.query_set, beginning_of_pass_write_index: Some(0), end_of_pass_write_index: Some(1) }
    }

    /// Resolves the two timestamps for [`Timestamps::seconds`]; the last command of a timed encoder.
    pub fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.resolve_query_set(&self.query_set, 0..2, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(&self.resolve, 0, &self.readback, 0, 16);
    }

    /// Seconds between the two timestamps of the last timed submission.
    pub async fn seconds(&self, ctx: &GpuContext) -> crate::Result<f64> {
        let (tx, rx) = futures::channel::oneshot::channel();
        self.readback.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        ctx.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| crate::LunaError::Device(format!("waiting for the GPU failed: {e}")))?;
        rx.await
            .map_err(|_| crate::LunaError::Device("timestamp readback was cancelled".into()))?
            .map_err(|e| crate::LunaError::Device(format!("timestamp readback failed: {e}")))?;
        let ticks: [u64; 2] = {
            let view = self
                .readback
                .slice(..)
                .get_mapped_range()
                .map_err(|e| crate::LunaError::Device(format!("timestamp readback failed: {e}")))?;
            let words: &[u64] = bytemuck::cast_slice(&view);
            [words[0], words[1]]
        };
        self.readback.unmap();
        Ok(ticks[1].saturating_sub(ticks[0]) as f64 * ctx.queue.get_timestamp_period() as f64 * 1e-9)
    }
}
