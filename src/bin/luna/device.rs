//! Where a command runs (`--device`) and the fallback policy: with `auto`, the
//! float64 CPU reference takes over, with a warning on stderr, when there is
//! no adapter or the GPU engine cannot run the model; `gpu` never falls back.

use clap::ValueEnum;
use luna_wgpu::{AdapterChoice, Engine, LunaError, Precision, Result};
use std::sync::OnceLock;

/// The global flags that configure an engine (`--precision`, `--no-autotune`).
pub struct Options {
    pub precision: Precision,
    pub autotune: bool,
}

static OPTIONS: OnceLock<Options> = OnceLock::new();

/// Set once by `main` from the command line.
pub fn set_options(options: Options) {
    let _ = OPTIONS.set(options);
}

/// Opens the adapter and applies the global flags.
pub fn new_engine(choice: &AdapterChoice) -> Result<Engine> {
    let mut engine = Engine::new_blocking(choice)?;
    if let Some(o) = OPTIONS.get() {
        engine.set_autotune(o.autotune);
        engine.set_precision(o.precision)?;
    }
    Ok(engine)
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum Device {
    /// The GPU, or the CPU reference (with a warning) when no adapter exists or the GPU engine does not support the model
    Auto,
    /// The GPU only; fails without an adapter
    Gpu,
    /// The float64 CPU reference
    Cpu,
}

/// The engine for `device`: `None` for the CPU reference (also `auto` without an adapter, with a warning).
pub fn open_engine(choice: &AdapterChoice, device: Device) -> Result<Option<Engine>> {
    match device {
        Device::Cpu => Ok(None),
        Device::Gpu => Ok(Some(new_engine(choice)?)),
        Device::Auto => match new_engine(choice) {
            Ok(e) => Ok(Some(e)),
            Err(e @ LunaError::NoAdapter(_)) => {
                eprintln!("warning: {e}\nwarning: falling back to the float64 CPU reference (slow)");
                Ok(None)
            }
            Err(e) => Err(e),
        },
    }
}

/// With `--device auto`, a GPU result that is `Unsupported` (a model the GPU engine
/// cannot run) falls back to the CPU reference with a warning; anything else stands.
pub fn or_cpu<T>(device: Device, gpu: Result<T>, cpu: impl FnOnce() -> Result<T>) -> Result<T> {
    match gpu {
        Err(LunaError::Unsupported(m)) if device == Device::Auto => {
            eprintln!("warning: the GPU engine cannot run this: {m}\nwarning: falling back to the float64 CPU reference (slow)");
            cpu()
        }
        r => r,
    }
}

/// Runs `gpu` on `engine`, or `cpu` when there is none; with `--device auto`,
/// `cpu` also when the GPU engine cannot run the model (see [`or_cpu`]).
pub fn gpu_or_cpu<T>(
    engine: Option<Engine>,
    device: Device,
    gpu: impl FnOnce(&mut Engine) -> Result<T>,
    cpu: impl FnOnce() -> Result<T>,
) -> Result<T> {
    match engine {
        None => cpu(),
        Some(mut engine) => or_cpu(device, gpu(&mut engine), cpu),
    }
}
