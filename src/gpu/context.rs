//! The GPU context: adapter choice, device with the adapter's real limits,
//! and what the engine needs to know about both.

use crate::error::{LunaError, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Which adapter to use: `None` picks the best one (hardware before software;
/// on Linux, Vulkan before GL). `Some(s)` matches `s` against the adapter's
/// name, backend or device type, case-insensitively.
#[derive(Clone, Debug, Default)]
pub struct AdapterChoice {
    pub wanted: Option<String>,
}

impl AdapterChoice {
    /// `--adapter` if given, else the `LUNA_ADAPTER` environment variable.
    pub fn from_arg_or_env(arg: Option<String>) -> AdapterChoice {
        AdapterChoice { wanted: arg.or_else(|| std::env::var("LUNA_ADAPTER").ok()).filter(|s| !s.is_empty()) }
    }
}

/// A GPU: adapter, device and queue, with the limits the engine plans against.
pub struct GpuContext {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// Bytes of memory the device has, when known (see `gpu::memory`).
    pub memory: Option<u64>,
    lost: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<String>>>,
    /// Host-side buffers reused between submissions (see [`Reuse`]).
    pub(crate) reuse: Reuse,
}

/// What the host would otherwise create for every submission and every
/// readback: the uniform buffer holding the dispatches' parameters (grown,
/// never shrunk; rewriting it for the next submission is safe because a
/// queue write is ordered after the submissions before it), a few mappable
/// staging buffers for readback, and the bind groups of recent dispatches
/// (a decode step binds the same buffers at the same offsets every token).
///
/// A cached bind group holds handles to its buffers, but the engine's buffers
/// are destroyed explicitly when dropped (`Tracked`), which frees their memory
/// whatever still refers to them, and buffer identities are never reused, so
/// a stale entry can never match a new dispatch. The cache is still emptied
/// when the engine's scratch is replaced or given back, when a model is
/// uploaded, and when it passes [`BIND_GROUPS_KEPT`] entries.
#[derive(Default)]
pub(crate) struct Reuse {
    params: Mutex<Option<wgpu::Buffer>>,
    staging: Mutex<Vec<wgpu::Buffer>>,
    bind_groups: Mutex<HashMap<BindKey, wgpu::BindGroup>>,
}

/// Everything a dispatch's bind group is made of.
#[derive(PartialEq, Eq, Hash)]
pub(crate) struct BindKey {
    pub(crate) layout: wgpu::BindGroupLayout,
    pub(crate) params: wgpu::Buffer,
    pub(crate) offset: u64,
    pub(crate) size: u64,
    pub(crate) storage: Vec<wgpu::Buffer>,
}

/// Bind groups kept at most.
const BIND_GROUPS_KEPT: usize = 512;

/// Staging buffers kept for reuse: at most this many, each at most [`STAGING_MAX`] bytes.
const STAGING_KEPT: usize = 8;
const STAGING_MAX: u64 = 16 << 20;

impl Reuse {
    /// The parameters buffer, at least `bytes` long.
    pub(crate) fn params(&self, device: &wgpu::Device, bytes: u64) -> wgpu::Buffer {
        let mut slot = self.params.lock().unwrap();
        match slot.as_ref() {
            Some(b) if b.size() >= bytes => b.clone(),
            _ => {
                let b = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("params"),
                    size: bytes.max(256).next_power_of_two(),
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                *slot = Some(b.clone());
                b
            }
        }
    }

    /// A mappable staging buffer of at least `bytes`: the smallest kept one that fits, or a new one.
    pub(crate) fn staging(&self, device: &wgpu::Device, bytes: u64) -> wgpu::Buffer {
        let mut kept = self.staging.lock().unwrap();
        let best = kept.iter().enumerate().filter(|(_, b)| b.size() >= bytes).min_by_key(|(_, b)| b.size()).map(|(i, _)| i);
        if let Some(i) = best {
            return kept.swap_remove(i);
        }
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// The bind group for `key`, made by `make` unless a recent dispatch had the same.
    pub(crate) fn bind_group(&self, key: BindKey, make: impl FnOnce(&BindKey) -> wgpu::BindGroup) -> wgpu::BindGroup {
        let mut groups = self.bind_groups.lock().unwrap();
        if let Some(g) = groups.get(&key) {
            return g.clone();
        }
        if groups.len() >= BIND_GROUPS_KEPT {
            groups.clear();
        }
        let g = make(&key);
        groups.insert(key, g.clone());
        g
    }

    /// Drops every cached bind group (and with them their hold on buffers).
    pub(crate) fn forget_bind_groups(&self) {
        self.bind_groups.lock().unwrap().clear();
    }

    /// Hands an unmapped staging buffer back for the next readback.
    pub(crate) fn give_back(&self, buffer: wgpu::Buffer) {
        let mut kept = self.staging.lock().unwrap();
        if buffer.size() <= STAGING_MAX {
            kept.push(buffer);
            if kept.len() > STAGING_KEPT {
                // Drop the smallest: the large ones are the costly ones to make.
                let smallest = kept.iter().enumerate().min_by_key(|(_, b)| b.size()).map(|(i, _)| i).unwrap_or(0);
                kept.swap_remove(smallest);
            }
        }
    }
}

fn backend_rank(b: wgpu::Backend) -> u32 {
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 | wgpu::Backend::BrowserWebGpu => 0,
        wgpu::Backend::Gl => 1,
        _ => 2,
    }
}

fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// One line describing an adapter.
pub fn describe(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Every adapter this machine offers, best first. `WGPU_BACKEND` narrows the
/// backends; otherwise the primary ones (Vulkan, Metal, DX12, WebGPU) are
/// asked first and GL only when they offer nothing or `all` is set, so that on
/// Linux a Vulkan driver is never passed over for GL.
pub async fn list_adapters_from(all: bool) -> Vec<wgpu::Adapter> {
    let from_env = wgpu::Backends::from_env();
    let first = from_env.unwrap_or(if all { wgpu::Backends::all() } else { wgpu::Backends::PRIMARY });
    let mut adapters = instance(first).enumerate_adapters(first).await;
    if adapters.is_empty() && from_env.is_none() && !all {
        adapters = instance(wgpu::Backends::all()).enumerate_adapters(wgpu::Backends::all()).await;
    }
    adapters.sort_by_key(|a| {
        let i = a.get_info();
        (type_rank(i.device_type) * 3 + backend_rank(i.backend), i.name.clone())
    });
    adapters
}

/// The adapters the engine chooses from by default, best first.
pub async fn list_adapters() -> Vec<wgpu::Adapter> {
    list_adapters_from(false).await
}

impl GpuContext {
    /// Picks an adapter per `choice` and opens a device with its full limits.
    pub async fn new(choice: &AdapterChoice) -> Result<GpuContext> {
        // Naming an adapter searches every backend (GL included).
        let adapters = list_adapters_from(choice.wanted.is_some()).await;
        if adapters.is_empty() {
            return Err(LunaError::NoAdapter("wgpu found none on any backend".into()));
        }
        let adapter = match &choice.wanted {
            None => adapters[0].clone(),
            Some(w) => {
                let w = w.to_lowercase();
                let found = adapters.iter().find(|a| {
                    let i = a.get_info();
                    i.name.to_lowercase().contains(&w)
                        || format!("{:?}", i.backend).to_lowercase() == w
                        || format!("{:?}", i.device_type).to_lowercase() == w
                });
                match found {
                    Some(a) => a.clone(),
                    None => {
                        return Err(LunaError::AdapterNotFound {
                            wanted: w,
                            available: adapters.iter().map(|a| describe(&a.get_info())).collect::<Vec<_>>().join("; "),
                        })
                    }
                }
            }
        };
        Self::from_adapter(adapter).await
    }

    /// Opens a device on `adapter`, asking for everything it offers that the engine can use.
    pub async fn from_adapter(adapter: wgpu::Adapter) -> Result<GpuContext> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let wanted = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
        let features = adapter.features() & wanted;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("luna"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| LunaError::Device(format!("could not open {}: {e}", describe(&info))))?;
        let lost = Arc::new(AtomicBool::new(false));
        let lost2 = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            log::error!("GPU device lost ({reason:?}): {msg}");
            lost2.store(true, Ordering::SeqCst);
        });
        let errors = Arc::new(Mutex::new(Vec::new()));
        let errors2 = errors.clone();
        // Errors outside an error scope are recorded instead of aborting the process.
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::error!("uncaptured GPU error: {e}");
            errors2.lock().unwrap().push(e.to_string());
        }));
        let memory = super::memory::device_memory(&adapter);
        Ok(GpuContext { adapter, device, queue, info, limits, features, memory, lost, errors, reuse: Reuse::default() })
    }

    /// Fails if the device has been lost (the engine must then be recreated).
    pub fn check_alive(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(LunaError::Device("the GPU device was lost; create a new engine".into()));
        }
        Ok(())
    }

    /// Takes the uncaptured errors recorded since the last call.
    pub fn take_errors(&self) -> Vec<String> {
        std::mem::take(&mut *self.errors.lock().unwrap())
    }

    /// Largest single buffer binding the engine may use.
    pub fn max_binding(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }

    /// A human-readable summary for `luna info`.
    pub fn report(&self) -> String {
        let i = &self.info;
        let l = &self.limits;
        let f = |feat| if self.adapter.features().contains(feat) { "yes" } else { "no" };
        format!(
            "adapter:      {}\nbackend:      {:?}\ndevice type:  {:?}\ndriver:       {} {}\nvendor/device: {:#06x}/{:#06x}\n\
             limits:\n  max_buffer_size:                       {}\n  max_storage_buffer_binding_size:       {}\n  \
             max_uniform_buffer_binding_size:       {}\n  max_compute_workgroup_storage_size:    {}\n  \
             max_compute_invocations_per_workgroup: {}\n  max_compute_workgroup_size:            {} x {} x {}\n  \
             max_compute_workgroups_per_dimension:  {}\n  max_storage_buffers_per_shader_stage:  {}\n\
             memory:       {}\n\
             features:\n  subgroups:        {}\n  shader-f16:       {}\n  timestamp-query:  {}",
            i.name,
            i.backend,
            i.device_type,
            i.driver,
            i.driver_info,
            i.vendor,
            i.device,
            l.max_buffer_size,
            l.max_storage_buffer_binding_size,
            l.max_uniform_buffer_binding_size,
            l.max_compute_workgroup_storage_size,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroup_size_x,
            l.max_compute_workgroup_size_y,
            l.max_compute_workgroup_size_z,
            l.max_compute_workgroups_per_dimension,
            l.max_storage_buffers_per_shader_stage,
            match self.memory {
                Some(b) => format!("{:.1} GiB (LUNA_MEMORY_LIMIT, else the Vulkan device-local heaps)", b as f64 / (1u64 << 30) as f64),
                None => "unknown (the backend does not say; set LUNA_MEMORY_LIMIT)".into(),
            },
            f(wgpu::Features::SUBGROUP),
            f(wgpu::Features::SHADER_F16),
            f(wgpu::Features::TIMESTAMP_QUERY),
        )
    }
}
