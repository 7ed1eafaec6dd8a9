//! Reading and writing safetensors files: float tensors widened to f32,
//! integer token tensors, and writing f32 outputs with metadata.

use crate::error::{LunaError, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// A dense f32 tensor in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }
}

/// The most bytes [`read_file`] reads: 64 GiB (a model file holds weights
/// in float16 at least; no model this engine can run is larger).
pub const MAX_FILE_BYTES: u64 = 64 << 30;

/// A file's bytes (model, tokens, text): see [`read_limited`], up to [`MAX_FILE_BYTES`].
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    read_limited(path, MAX_FILE_BYTES)
}

/// A regular file's bytes, at most `limit` of them: anything else (a
/// device such as /dev/zero, a pipe, a folder) is refused before reading,
/// as is a file whose size is over `limit` or over the memory the machine
/// has available; the read stops at the size the metadata gave, so a
/// file that grows meanwhile cannot make it read without end.
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let io = |source| LunaError::Io { path: path.display().to_string(), source };
    let refuse = |why: String| io(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
    let file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(refuse("not a regular file (a device, pipe or folder cannot be read as one); give a file".into()));
    }
    let len = meta.len();
    if len > limit {
        return Err(refuse(format!("{len} bytes, over the {limit} bytes this file may hold")));
    }
    if let Some(free) = available_memory() {
        if len > free {
            return Err(refuse(format!("{len} bytes, more than the {free} bytes of memory available")));
        }
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(len).read_to_end(&mut bytes).map_err(io)?;
    Ok(bytes)
}

/// Refuses host work that would hold `bytes` (for `what`) when the machine
/// has less memory available, instead of aborting in the allocator.
pub fn check_host_memory(what: &str, bytes: u64) -> Result<()> {
    match available_memory() {
        Some(free) if bytes > free => Err(LunaError::OutOfMemory(format!(
            "{what} would take about {:.2} GiB of host memory, more than the {:.2} GiB available",
            bytes as f64 / (1u64 << 30) as f64,
            free as f64 / (1u64 << 30) as f64
        ))),
        _ => Ok(()),
    }
}

/// `MemAvailable` of /proc/meminfo, where there is one.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|source| LunaError::Io { path: path.display().to_string(), source })
}

/// Parses a safetensors buffer; `what` names it in errors ("model", "input").
pub fn parse<'a>(bytes: &'a [u8], what: &str) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes).map_err(|e| {
        let msg = format!("the {what} file is not a readable safetensors file ({e})");
        if what == "model" { LunaError::Model(msg) } else { LunaError::Input(msg) }
    })
}

/// The metadata map of a safetensors buffer (empty if none).
pub fn metadata(bytes: &[u8]) -> Result<HashMap<String, String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| LunaError::Model(format!("unreadable safetensors header ({e})")))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Widens a float tensor (f32, f16, bf16, f64) to f32.
pub fn view_to_f32(name: &str, view: &TensorView) -> Result<Vec<f32>> {
    let bytes = view.data();
    let chunks = |w: usize| bytes.chunks_exact(w);
    Ok(match view.dtype() {
        Dtype::F32 => chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::F16 => chunks(2)
            .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        Dtype::BF16 => chunks(2)
            .map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        Dtype::F64 => chunks(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        other => {
            return Err(LunaError::Model(format!(
                "tensor {name:?} has dtype {other:?}; expected F32, F16, BF16 or F64"
            )))
        }
    })
}

/// Reads an integer tensor (I32 or I64) as i64.
pub fn view_to_i64(name: &str, view: &TensorView) -> Result<Vec<i64>> {
    let bytes = view.data();
    Ok(match view.dtype() {
        Dtype::I64 => bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        other => {
            return Err(LunaError::Input(format!(
                "tensor {name:?} has dtype {other:?}; expected I32 or I64"
            )))
        }
    })
}

/// A named f32 tensor to be written.
pub struct Named<'a> {
    pub name: &'a str,
    pub shape: Vec<usize>,
    pub data: &'a [f32],
}

/// Serialises f32 tensors (and optional metadata) to safetensors bytes.
pub fn serialize_f32(tensors: &[Named], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| bytemuck::cast_slice(t.data).to_vec()).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            TensorView::new(Dtype::F32, t.shape.clone(), b)
                .map(|v| (t.name.to_string(), v))
                .map_err(|e| LunaError::Input(format!("tensor {}: {e}", t.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, metadata).map_err(|e| LunaError::Input(format!("cannot serialise: {e}")))
}

/// Serialises an integer token tensor `[b, n]` as I64.
pub fn serialize_tokens(tokens: &[i64], shape: [usize; 2]) -> Result<Vec<u8>> {
    let bytes: &[u8] = bytemuck::cast_slice(tokens);
    let view = TensorView::new(Dtype::I64, shape.to_vec(), bytes)
        .map_err(|e| LunaError::Input(format!("tokens: {e}")))?;
    safetensors::serialize([("tokens", view)], None).map_err(|e| LunaError::Input(format!("cannot serialise: {e}")))
}
