//! Where the files shipped with the source tree are: the trained demo model
//! (models/README.md is its card) and the demos' sample document. Both are
//! looked up under the current directory first, then under the source tree
//! this binary was built from, so `luna score` and the demos find them from
//! the repository root or from anywhere after `cargo run`.

use crate::error::{LunaError, Result};
use std::path::{Path, PathBuf};

/// The demo model, relative to the repository root.
pub const MODEL: &str = "models/luna-pydoc-bytes.safetensors";

/// The sample document (public domain, about 114 KB), relative to the repository root.
pub const SAMPLE: &str = "web/samples/julius-caesar.txt";

fn find(relative: &str, what: &str) -> Result<PathBuf> {
    let candidates = [PathBuf::from(relative), Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)];
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        LunaError::Input(format!(
            "{what} is not there: looked for {} and {}; run from the repository root or name a file",
            candidates[0].display(),
            candidates[1].display()
        ))
    })
}

/// The path of the shipped demo model.
pub fn model_path() -> Result<PathBuf> {
    find(MODEL, "the shipped demo model")
}

/// The path of the bundled sample document.
pub fn sample_path() -> Result<PathBuf> {
    find(SAMPLE, "the bundled sample document")
}
