//! Records a sequence of kernel dispatches and submits them as one command
//! buffer: every dispatch's uniform parameters go into one buffer, each at its
//! own 256-byte-aligned offset, so nothing is written between dispatches.

use super::context::GpuContext;
use super::pipelines::{Kernel, KernelSpec, PipelineCache};
use std::sync::Arc;

struct Dispatch {
    kernel: Arc<Kernel>,
    buffers: Vec<wgpu::Buffer>,
    params_offset: u64,
    params_size: u64,
    groups: [u32; 3],
}

/// Dispatches waiting to be submitted.
pub struct Recorder<'a> {
    pub ctx: &'a GpuContext,
    cache: &'a PipelineCache,
    /// Bound where a kernel's optional input is switched off.
    pub dummy: &'a wgpu::Buffer,
    dispatches: Vec<Dispatch>,
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
            dispatches: Vec::new(),
            params: Vec::new(),
            align: ctx.limits.min_uniform_buffer_offset_alignment.max(16) as u64,
            max_groups: ctx.limits.max_compute_workgroups_per_dimension,
        }
    }

    /// The pipeline for `spec`, built on first use.
    pub fn kernel(&self, spec: KernelSpec) -> Arc<Kernel> {
        self.cache.get(&self.ctx.device, spec)
    }

    /// Adds a dispatch of `groups` workgroups; `buffers` bind to 1, 2, ... in order.
    pub fn dispatch<P: bytemuck::Pod>(&mut self, kernel: &Arc<Kernel>, params: &P, buffers: &[&wgpu::Buffer], groups: [u32; 3]) {
        debug_assert_eq!(buffers.len(), kernel.spec.storage.len(), "{}", kernel.spec.name);
        let offset = self.params.len() as u64;
        let bytes = bytemuck::bytes_of(params);
        self.params.extend_from_slice(bytes);
        let end = (self.params.len() as u64).div_ceil(self.align) * self.align;
        self.params.resize(end as usize, 0);
        self.dispatches.push(Dispatch {
            kernel: kernel.clone(),
            buffers: buffers.iter().map(|b| (*b).clone()).collect(),
            params_offset: offset,
            params_size: bytes.len() as u64,
            groups,
        });
    }

    /// Spreads `count` workgroups over x and y so that neither exceeds the
    /// device limit; kernels rebuild the linear id as `x + y * num_workgroups.x`.
    pub fn grid(&self, count: u32) -> [u32; 3] {
        let count = count.max(1);
        let x = count.min(self.max_groups);
        [x, count.div_ceil(x), 1]
    }

    pub fn is_empty(&self) -> bool {
        self.dispatches.is_empty()
    }

    /// Encodes every dispatch into one compute pass and submits it.
    pub fn submit(self) {
        let ctx = self.ctx;
        if self.dispatches.is_empty() {
            return;
        }
        let uniforms = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: self.params.len() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue.write_buffer(&uniforms, 0, &self.params);
        let groups: Vec<wgpu::BindGroup> = self
            .dispatches
            .iter()
            .map(|d| {
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &uniforms,
                        offset: d.params_offset,
                        size: wgpu::BufferSize::new(d.params_size),
                    }),
                }];
                for (i, b) in d.buffers.iter().enumerate() {
                    entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.as_entire_binding() });
                }
                ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(d.kernel.spec.name),
                    layout: &d.kernel.layout,
                    entries: &entries,
                })
            })
            .collect();
        let mut encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("luna") });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("luna"), timestamp_writes: None });
            for (d, g) in self.dispatches.iter().zip(&groups) {
                pass.set_pipeline(&d.kernel.pipeline);
                pass.set_bind_group(0, g, &[]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
            }
        }
        ctx.queue.submit([encoder.finish()]);
    }
}
