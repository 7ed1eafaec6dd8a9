//! How much memory the adapter has, so that a pass too large for it is
//! refused before any GPU work: `LUNA_MEMORY_LIMIT` (bytes, or with a K, M
//! or G suffix) when set, else the sum of the device-local memory heaps the
//! Vulkan driver reports (natively, through wgpu-hal; every heap for an
//! integrated GPU, which shares system memory). Other backends and the
//! browser tell nothing; there an allocation that fails comes back as an
//! out-of-memory error instead.

/// The memory budget of `adapter`, in bytes, if known.
pub fn device_memory(adapter: &wgpu::Adapter) -> Option<u64> {
    if let Some(limit) = from_env() {
        return Some(limit);
    }
    vulkan_heaps(adapter)
}

fn from_env() -> Option<u64> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let v = std::env::var("LUNA_MEMORY_LIMIT").ok()?;
        parse_bytes(&v)
    }
    #[cfg(target_arch = "wasm32")]
    None
}

/// `"512M"`, `"24G"`, `"1048576"`: bytes.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(all(not(target_arch = "wasm32"), any(target_os = "linux", target_os = "windows", target_os = "android")))]
fn vulkan_heaps(adapter: &wgpu::Adapter) -> Option<u64> {
    // SAFETY: the hal adapter is only read (one query of the physical device's
    // memory properties) while `adapter` keeps it alive.
    unsafe {
        let hal = adapter.as_hal::<wgpu::hal::api::Vulkan>()?;
        let props = hal.shared_instance().raw_instance().get_physical_device_memory_properties(hal.raw_physical_device());
        let heaps = &props.memory_heaps[..props.memory_heap_count as usize];
        // A discrete GPU's buffers live in its device-local heaps; an integrated
        // one may also place them in the system memory it shares (an APU's
        // device-local heap is often a small carve-out), so every heap counts.
        let shared = adapter.get_info().device_type == wgpu::DeviceType::IntegratedGpu;
        let total: u64 = heaps.iter().filter(|h| shared || h.flags.contains(ash::vk::MemoryHeapFlags::DEVICE_LOCAL)).map(|h| h.size).sum();
        (total > 0).then_some(total)
    }
}

#[cfg(not(all(not(target_arch = "wasm32"), any(target_os = "linux", target_os = "windows", target_os = "android"))))]
fn vulkan_heaps(_adapter: &wgpu::Adapter) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use crate::gpu::memory::parse_bytes;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes(" 24G "), Some(24 << 30));
        assert_eq!(parse_bytes("3k"), Some(3 << 10));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes(""), None);
    }
}
