//! Kernel descriptions and the pipeline cache: each pipeline is built once per
//! (shader, specialisation) and reused for every dispatch after that.

use std::collections::HashMap;
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
        let mut k = format!("{}:{}", self.name, self.entry);
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

/// Pipelines by shader and specialisation; shader modules by source.
#[derive(Default)]
pub struct PipelineCache {
    pipelines: Mutex<HashMap<String, Arc<Kernel>>>,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
}

impl PipelineCache {
    pub fn get(&self, device: &wgpu::Device, spec: KernelSpec) -> Arc<Kernel> {
        let key = spec.key();
        if let Some(k) = self.pipelines.lock().unwrap().get(&key) {
            return k.clone();
        }
        let module = self
            .modules
            .lock()
            .unwrap()
            .entry(spec.name)
            .or_insert_with(|| {
                device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(spec.name),
                    source: wgpu::ShaderSource::Wgsl(spec.source.into()),
                })
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
