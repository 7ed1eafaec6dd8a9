//! `luna info`: the adapters, best first, and the chosen one's limits and features.

use luna_wgpu::gpu::context::{describe, list_adapters};
use luna_wgpu::{AdapterChoice, Result};

pub fn run(choice: &AdapterChoice) -> Result<()> {
    let adapters = pollster::block_on(list_adapters());
    println!("adapters (best first):");
    for a in &adapters {
        println!("  {}", describe(&a.get_info()));
    }
    let engine = crate::device::new_engine(choice)?;
    println!("\nchosen:\n{}", engine.ctx.report());
    Ok(())
}
