//! `luna compare`: how far one `luna forward` output is from another (the
//! GPU's from the float64 CPU reference's, say), tensor by tensor. Rows past
//! a sequence's length (padding, whose outputs carry no meaning) are skipped,
//! using the `luna.lengths` metadata that `luna forward` writes.

use crate::args::CompareArgs;
use luna_wgpu::{tensors, LunaError, Result};

pub fn run(args: CompareArgs) -> Result<()> {
    let (a_bytes, b_bytes) = (tensors::read_file(&args.output)?, tensors::read_file(&args.reference)?);
    let (a, b) = (tensors::parse(&a_bytes, "output")?, tensors::parse(&b_bytes, "reference")?);
    let lengths = lengths(&a_bytes)?;
    let mut names: Vec<String> = a.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut worst: Option<(String, f64)> = None;
    for name in &names {
        let (va, vb) = (a.tensor(name).map_err(|e| missing(name, e))?, b.tensor(name).map_err(|e| missing(name, e))?);
        if va.shape() != vb.shape() {
            return Err(LunaError::Input(format!("{name}: shape {:?} against {:?}", va.shape(), vb.shape())));
        }
        let shape = va.shape().to_vec();
        let (xa, xb) = (tensors::view_to_f32(name, &va)?, tensors::view_to_f32(name, &vb)?);
        // Rows of a [B, n, ...] tensor at t >= length[b] are padding.
        let per_row = shape.iter().skip(2).product::<usize>().max(1);
        let padded = |i: usize| match (&lengths, shape.len() >= 2) {
            (Some(l), true) if l.len() == shape[0] => (i / per_row) % shape[1] >= l[(i / per_row) / shape[1]],
            _ => false,
        };
        let (mut diff, mut scale, mut at) = (0f64, 0f64, 0usize);
        for (i, (&x, &y)) in xa.iter().zip(&xb).enumerate() {
            if padded(i) {
                continue;
            }
            scale = scale.max((y as f64).abs());
            let e = (x as f64 - y as f64).abs();
            if e > diff || e.is_nan() {
                diff = if e.is_nan() { f64::INFINITY } else { e };
                at = i;
            }
        }
        let rel = diff / scale.max(1.0);
        println!("{name} {shape:?}: max |difference| {diff:.3e} (at flat index {at}), max |reference| {scale:.3}, relative {rel:.3e}");
        if worst.as_ref().is_none_or(|(_, w)| rel > *w) {
            worst = Some((name.to_string(), rel));
        }
    }
    for name in b.names() {
        if !names.iter().any(|n| n == name) {
            return Err(LunaError::Input(format!("{} has no tensor {name}", args.output.display())));
        }
    }
    match worst {
        Some((name, rel)) if rel > args.tolerance => Err(LunaError::Input(format!("{name} differs by {rel:.3e} relative, over the tolerance {:e}", args.tolerance))),
        Some(_) => {
            println!("within {:e}", args.tolerance);
            Ok(())
        }
        None => Err(LunaError::Input("no tensors to compare".into())),
    }
}

fn missing(name: &str, e: impl std::fmt::Display) -> LunaError {
    LunaError::Input(format!("tensor {name} is in one file only ({e})"))
}

/// The `luna.lengths` metadata (`[3000, 1200]`), if present.
fn lengths(bytes: &[u8]) -> Result<Option<Vec<usize>>> {
    let meta = tensors::metadata(bytes)?;
    Ok(meta.get("luna.lengths").and_then(|s| s.trim_matches(|c| c == '[' || c == ']').split(',').map(|v| v.trim().parse().ok()).collect()))
}
