//! The causal LM that `luna generate` and `luna score` read: the shipped demo
//! model unless `--model` names another, and never an encoder.

use luna_wgpu::{LunaError, Model, ModelKind, Result};
use std::path::PathBuf;

/// Loads `--model` (default: the shipped model); fails unless it is a causal LM.
pub fn load_causal(path: Option<PathBuf>, command: &str) -> Result<(PathBuf, Model)> {
    let path = path.map_or_else(luna_wgpu::shipped::model_path, Ok)?;
    let model = Model::load(&path)?;
    if model.config.model != ModelKind::CausalLm {
        return Err(LunaError::Input(format!(
            "{} is an encoder model, not a causal LM; `luna {command}` needs a model with \"model\": \"causal_lm\"",
            path.display()
        )));
    }
    Ok((path, model))
}
