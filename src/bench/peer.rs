//! Our GEMM beside someone else's, on the same adapter, in one run,
//! interleaved (`luna bench --op matmul --peer-wgsl FILE`). No peer code ships
//! with the crate: the user points at a WGSL file of their choosing.
//!
//! The peer kernel computes `C[M,N] = A[M,K] · B[K,N]` (row-major, f32 or
//! vec4<f32> storage arrays) with `A`, `B`, `C` at bindings 0, 1, 2 of group 0
//! and entry point `main`; it may hard-code its sizes. The caller gives the
//! workgroup grid to dispatch. Ours runs the same problem as
//! `A · Wᵀ + bias` with `W = Bᵀ` (our weight layout). Both get inputs of 0.5
//! everywhere, so every output must be `K / 4`: a peer that computes
//! something else is reported, not timed. Both are created with the same
//! runtime checks (see `gpu::pipelines`).

use super::{measure, timer_name, Point};
use crate::engine::Engine;
use crate::error::{LunaError, Result};
use crate::gpu::pipelines::runtime_checks;
use crate::gpu::recorder::Timestamps;
use crate::gpu::scope::ErrorScopes;
use crate::kernels::gemm::{self, Gemm};

/// A peer GEMM kernel to time beside ours.
pub struct Peer {
    /// Shown in the method column ("peer:<name>").
    pub name: String,
    pub wgsl: String,
    /// Workgroups to dispatch.
    pub grid: [u32; 3],
}

struct PeerPipeline {
    pipeline: wgpu::ComputePipeline,
    group: wgpu::BindGroup,
    /// A, B and C (kept alive while the bind group is used).
    buffers: [crate::gpu::buffers::Tracked; 3],
}

fn peer_pipeline(engine: &Engine, peer: &Peer, [m, n, k]: [usize; 3]) -> Result<PeerPipeline> {
    let device = &engine.ctx.device;
    let scope = ErrorScopes::push(&engine.ctx);
    let made = (|| {
        let desc = wgpu::ShaderModuleDescriptor { label: Some("peer gemm"), source: wgpu::ShaderSource::Wgsl(peer.wgsl.as_str().into()) };
        // SAFETY: the same checks as our shaders get (only loop bounding off), so
        // that the comparison is fair; a peer kernel whose loops do not end is
        // the caller's to avoid (a benchmark option, never reached from a model).
        let module = unsafe { device.create_shader_module_trusted(desc, runtime_checks()) };
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("peer gemm"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let a = engine.upload("peer a", &vec![0.5f32; m * k])?;
        let b = engine.upload("peer b", &vec![0.5f32; k * n])?;
        let c = engine.upload("peer c", &vec![0.0f32; m * n])?;
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("peer gemm"),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: a.buffer.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: b.buffer.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 2, resource: c.buffer.as_entire_binding() },
            ],
        });
        Ok(PeerPipeline { pipeline, group, buffers: [a, b, c] })
    })();
    pollster::block_on(scope.close(&engine.ctx, made)).map_err(|e| LunaError::Input(format!("the peer kernel {} does not build: {e}", peer.name)))
}

fn run_peer(engine: &Engine, p: &PeerPipeline, grid: [u32; 3], timestamps: Option<&Timestamps>) {
    let mut encoder = engine.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("peer gemm") });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("peer gemm"),
            timestamp_writes: timestamps.map(|t| t.whole_pass()),
        });
        pass.set_pipeline(&p.pipeline);
        pass.set_bind_group(0, &p.group, &[]);
        pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
    }
    if let Some(t) = timestamps {
        t.resolve(&mut encoder);
    }
    engine.ctx.queue.submit([encoder.finish()]);
}

/// Times ours and the peer alternately on one `[m, n, k]`, `repeats` times
/// each after a warm-up; returns a point for each (ours first).
pub fn run_matmul_peer(engine: &mut Engine, peer: &Peer, mnk: [usize; 3], repeats: usize) -> Result<Vec<Point>> {
    let [m, n, k] = mnk;
    pollster::block_on(engine.tune_gemms(&[gemm::Class::plain(mnk)]))?;
    let pp = peer_pipeline(engine, peer, mnk)?;
    let a = engine.upload("a", &vec![0.5f32; m * k])?;
    let w = engine.upload("w", &vec![0.5f32; n * k])?;
    let bias = engine.upload("bias", &vec![0.0f32; n])?;
    let c = engine.upload("c", &vec![0.0f32; m * n])?;
    let timestamps = Timestamps::new(&engine.ctx);
    let ours_variant = {
        let rec = engine.recorder();
        gemm::chosen(&rec, &Gemm::new(&a.buffer, &w.buffer, &bias.buffer, &c.buffer, mnk))
    };
    // A warm-up of the peer (`measure` warms ours up).
    run_peer(engine, &pp, peer.grid, None);
    let _ = engine.ctx.device.poll(wgpu::PollType::wait_indefinitely());
    let mut which = 0usize;
    let (times, peak) = measure(engine, 2 * repeats, |e| {
        which += 1;
        e.time_submission(
            |e| {
                if which % 2 == 1 {
                    let mut rec = e.recorder();
                    gemm::record(&mut rec, &Gemm::new(&a.buffer, &w.buffer, &bias.buffer, &c.buffer, mnk));
                    match &timestamps {
                        Some(t) => rec.submit_timed(t),
                        None => rec.submit(),
                    }
                } else {
                    run_peer(e, &pp, peer.grid, timestamps.as_ref());
                }
                Ok(())
            },
            timestamps.as_ref(),
        )
    })?;
    let want = k as f32 / 4.0;
    let got = engine.read_blocking(&[(&c.buffer, m * n), (&pp.buffers[2].buffer, m * n)])?;
    for (who, values) in [("ours", &got[0]), ("the peer", &got[1])] {
        if let Some(bad) = values.iter().find(|v| (**v - want).abs() > 1e-3 * want) {
            return Err(LunaError::Input(format!("{who} computed {bad} where every output of 0.5s should be {want}: check the peer's grid and bindings")));
        }
    }
    // `measure` ran one warm-up (ours), then alternated: peer, ours, peer, ...
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for (i, t) in times.into_iter().enumerate() {
        if i % 2 == 0 { theirs.push(t) } else { ours.push(t) }
    }
    let mut points = Vec::new();
    for (method, t) in [(format!("gemm:{}", ours_variant.name()), ours), (format!("peer:{}", peer.name), theirs)] {
        let mut p = Point::new("matmul", &method);
        p.shape = Some(mnk);
        p.timer = timer_name(engine);
        p.peak_bytes = peak;
        p.set_times(t, 2.0 * (m * n * k) as f64, m as f64);
        points.push(p);
    }
    Ok(points)
}
