//! Error scopes around a unit of GPU work: out-of-memory and validation
//! errors, which wgpu reports asynchronously, come back as a `LunaError`
//! instead of aborting the process. Every engine call that records or
//! uploads work pushes one and closes it with [`ErrorScopes::close`].

use crate::error::{LunaError, Result};
use crate::gpu::context::GpuContext;

/// The two scopes pushed around one call.
pub struct ErrorScopes {
    // Field order is drop order: scopes must pop in the reverse of their push order.
    validation: wgpu::ErrorScopeGuard,
    oom: wgpu::ErrorScopeGuard,
}

impl ErrorScopes {
    pub fn push(ctx: &GpuContext) -> ErrorScopes {
        let oom = ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        ErrorScopes { validation, oom }
    }

    /// Pops the scopes and returns `result`, unless the GPU reported an error
    /// while they were open (out of memory, a rejected command, an error
    /// raised outside any scope, a lost device): that error comes first.
    pub async fn close<T>(self, ctx: &GpuContext, result: Result<T>) -> Result<T> {
        let validation = self.validation.pop().await;
        let oom = self.oom.pop().await;
        if let Some(e) = oom {
            return Err(LunaError::OutOfMemory(format!("the GPU: {e}; try a shorter sequence or a smaller batch")));
        }
        if let Some(e) = validation {
            return Err(LunaError::Device(format!("the GPU rejected the work (an engine bug, please report it): {e}")));
        }
        let uncaptured = ctx.take_errors();
        if !uncaptured.is_empty() {
            return Err(LunaError::Device(uncaptured.join("; ")));
        }
        ctx.check_alive()?;
        result
    }
}
