//! Kernel descriptions and the pipeline cache: each pipeline is built once per
//! (shader, specialisation) and reused for every dispatch after that. The
//! cache also holds the [`Tuning`]: which variant of a kernel family runs for
//! each shape class on this adapter.
//!
//! Shader modules are made without wgpu's forced loop bounding (the check
//! that turns every loop into one with an iteration counter, 1.5x on a GEMM
//! on lavapipe). That is sound for our shaders only: every loop in
//! `shaders/` runs a counter up to a bound taken from a constant or from a
//! uniform the host sized from real buffers (or halves a counter down to
//! zero), so none can run forever; tests/shaders.rs validates every shader and
//! variant with naga. Bounds checks on buffer accesses and the guards on
//! integer division stay on. `LUNA_SHADER_CHECKS=all` turns every check back on.

use std::collections::HashMap;
use super::tuning::Tuning;
use std::sync::{Arc, Mutex};

/// Binding 0 of every kernel is its uniform `Params`; bindings 1.. are storage
/// buffers, read-only except those marked writable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    Write,
}

/// A shader entry point, its bindings and one specialisation of its overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelSpec {
    pub name: &'static str,
    pub source: &'static str,
    pub entry: &'static str,
    pub storage: &'static [Access],
    /// Override constants (`override NAME` in WGSL) and their values.
    pub constants: Vec<(&'static str, f64)>,
}

impl KernelSpec {
    fn key(&self) -> String {
        // The source's address tells apart variants of one file with different prefixes.
        let mut k = format!("{}@{:x}+{}:{}", self.name, self.source.as_ptr() as usize, self.source.len(), self.entry);
        for (n, v) in &self.constants {
            k.push_str(&format!(":{n}={v}"));
        }
        k
    }
}

/// A built pipeline and its bind group layout.
pub struct Kernel {
    pub spec: KernelSpec,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// Pipelines by shader and specialisation; shader modules by source; tuned choices.
pub struct PipelineCache {
    pipelines: Mutex<HashMap<String, Arc<Kernel>>>,
    /// By source text (two variants of one shader file can differ in what is prepended to it).
    modules: Mutex<HashMap<(usize, usize), wgpu::ShaderModule>>,
    pub tuning: Tuning,
}

/// The runtime checks our shaders are created with (see the module docs).
pub(crate) fn runtime_checks() -> wgpu::ShaderRuntimeChecks {
    if std::env::var("LUNA_SHADER_CHECKS").is_ok_and(|v| v == "all") {
        return wgpu::ShaderRuntimeChecks::checked();
    }
    let mut checks = wgpu::ShaderRuntimeChecks::checked();
    checks.force_loop_bounding = false;
    checks
}

impl PipelineCache {
    pub fn new(tuning: Tuning) -> PipelineCache {
        PipelineCache { pipelines: Mutex::default(), modules: Mutex::default(), tuning }
    }

    pub fn get(&self, device: &wgpu::Device, spec: KernelSpec) -> Arc<Kernel> {
        let key = spec.key();
        if let Some(k) = self.pipelines.lock().unwrap().get(&key) {
            return k.clone();
        }
        let module = self
            .modules
            .lock()
            .unwrap()
            .entry((spec.source.as_ptr() as usize, spec.source.len()))
            .or_insert_with(|| {
                let desc = wgpu::ShaderModuleDescriptor { label: Some(spec.name), source: wgpu::ShaderSource::Wgsl(spec.source.into()) };
                // SAFETY: only loop bounding is off, and every loop in our
                // shaders terminates (see the module docs); `spec.source` is
                // always one of the crate's own `include_str!` shaders.
                unsafe { device.create_shader_module_trusted(desc, runtime_checks()) }
            })
            .clone();
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        for (i, access) in spec.storage.iter().enumerate() {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: i as u32 + 1,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: *access == Access::Read },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(spec.name),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(spec.name),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(spec.name),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(spec.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &spec.constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        let kernel = Arc::new(Kernel { spec, pipeline, layout });
        self.pipelines.lock().unwrap().insert(key, kernel.clone());
        kernel
    }

    pub fn len(&self) -> usize {
        self.pipelines.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
