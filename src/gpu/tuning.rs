//! Kernel choices measured on this adapter, per shape class (see
//! `engine::tune`). Natively they persist in a JSON cache file keyed by the
//! adapter, its driver and the version of the tuned shaders, so the timing
//! runs once per machine; in the browser they last for the session.
//!
//! The file is `$LUNA_TUNING_CACHE`, else `$XDG_CACHE_HOME/luna-wgpu/tuning.json`,
//! else `$HOME/.cache/luna-wgpu/tuning.json`. A missing, unreadable or
//! foreign file only means the timing runs again.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Chosen variant names by shape-class key.
pub struct Tuning {
    enabled: AtomicBool,
    choices: Mutex<HashMap<String, String>>,
    /// Identifies adapter, driver and shader version in the cache file (natively).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    key: String,
}

impl Tuning {
    /// An empty table for the adapter `info`, tuning on unless `LUNA_AUTOTUNE=0`.
    pub fn new(info: &wgpu::AdapterInfo, shader_version: u64) -> Tuning {
        let key = format!(
            "{} | {:?} | {} {} | {:04x}:{:04x} | shaders {shader_version:016x}",
            info.name, info.backend, info.driver, info.driver_info, info.vendor, info.device
        );
        let enabled = std::env::var("LUNA_AUTOTUNE").map_or(true, |v| v != "0");
        let tuning = Tuning { enabled: AtomicBool::new(enabled), choices: Mutex::new(HashMap::new()), key };
        tuning.load();
        tuning
    }

    /// Whether shape classes not yet in the table get timed (`--no-autotune` turns it off).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    pub fn get(&self, class: &str) -> Option<String> {
        if !self.enabled() {
            return None;
        }
        self.choices.lock().unwrap().get(class).cloned()
    }

    pub fn contains(&self, class: &str) -> bool {
        self.choices.lock().unwrap().contains_key(class)
    }

    /// Records a measured choice and saves the table (natively).
    pub fn set(&self, class: &str, variant: &str) {
        self.choices.lock().unwrap().insert(class.into(), variant.into());
        self.save();
    }

    /// Every choice, sorted by class (for `luna info` and the benchmarks).
    pub fn choices(&self) -> BTreeMap<String, String> {
        self.choices.lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn path() -> Option<std::path::PathBuf> {
        use std::path::PathBuf;
        if let Some(p) = std::env::var_os("LUNA_TUNING_CACHE") {
            return Some(PathBuf::from(p));
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("luna-wgpu").join("tuning.json"))
    }

    /// The whole file: adapter key → (class → variant).
    #[cfg(not(target_arch = "wasm32"))]
    fn read_file() -> BTreeMap<String, BTreeMap<String, String>> {
        Tuning::path()
            .and_then(|p| crate::tensors::read_limited(&p, 16 << 20).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn load(&self) {
        if let Some(mine) = Tuning::read_file().remove(&self.key) {
            self.choices.lock().unwrap().extend(mine);
        }
    }

    /// Merges this adapter's choices into the file, written whole to a
    /// temporary file and renamed over it, so that concurrent processes never
    /// leave half a file. Failing to write only costs a re-tune later.
    #[cfg(not(target_arch = "wasm32"))]
    fn save(&self) {
        let Some(path) = Tuning::path() else { return };
        let mut all = Tuning::read_file();
        all.entry(self.key.clone()).or_default().extend(self.choices());
        let Ok(text) = serde_json::to_string_pretty(&all) else { return };
        static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let tmp = path.with_extension(format!("tmp{}-{}", std::process::id(), WRITES.fetch_add(1, Ordering::Relaxed)));
        let written = path.parent().is_some_and(|dir| std::fs::create_dir_all(dir).is_ok()) && std::fs::write(&tmp, text).is_ok();
        if !written || std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    #[cfg(target_arch = "wasm32")]
    fn load(&self) {}

    #[cfg(target_arch = "wasm32")]
    fn save(&self) {}
}

/// FNV-1a of the given sources: changes whenever a tuned shader does.
pub fn shader_version(sources: &[&str]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for s in sources {
        for b in s.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}
