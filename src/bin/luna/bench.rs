//! `luna bench`: Luna against softmax attention (one layer, a whole encoder),
//! GEMM throughput and the decode step; a table as it goes, then CSV, JSON
//! and SVG files.

use crate::args::{BenchArgs, BenchOp};
use luna_wgpu::bench::{self, Method, Sweep};
use luna_wgpu::gpu::context::describe;
use luna_wgpu::bench::report;
use luna_wgpu::{tensors, AdapterChoice, LunaError, Result};

pub fn run(choice: &AdapterChoice, a: BenchArgs) -> Result<()> {
    if a.d == 0 || a.heads == 0 || !a.d.is_multiple_of(a.heads) || a.batch == 0 || a.layers == 0 || a.projection_length.contains(&0) {
        return Err(LunaError::Input("--d must be a positive multiple of --heads; --batch, --layers and every --projection-length at least 1".into()));
    }
    let mut engine = crate::device::new_engine(choice)?;
    let adapter = describe(&engine.ctx.info);
    let software = engine.ctx.info.device_type == wgpu::DeviceType::Cpu;
    // `--op longest` goes as far as the adapter holds: --max-n does not bound it.
    let max_n = a.max_n.unwrap_or(if software { 8192 } else { 65536 });
    let max_n = if matches!(a.op, BenchOp::Longest) { max_n.max(a.min_n) } else { max_n };
    if a.min_n == 0 || a.min_n > max_n {
        return Err(LunaError::Input(format!("--min-n {} must be between 1 and --max-n {max_n}", a.min_n)));
    }
    let mut ns = Vec::new();
    let mut n = a.min_n;
    while n <= max_n {
        ns.push(n);
        n *= 2;
    }
    let mut methods: Vec<Method> = a.projection_length.iter().map(|&l| Method::Luna { projection_length: l }).collect();
    if !a.no_softmax {
        methods.extend([Method::SoftmaxFlash, Method::SoftmaxNaive]);
    }
    let longest = matches!(a.op, BenchOp::Longest);
    let sweep = Sweep { ns, methods, d: a.d, heads: a.heads, batch: a.batch, layers: a.layers, repeats: a.repeats, max_seconds: a.max_seconds, warm_up: !longest };
    let ops: Vec<BenchOp> = match a.op {
        BenchOp::All => vec![BenchOp::Layer, BenchOp::Encoder, BenchOp::Matmul, BenchOp::Decode, BenchOp::Lm],
        op => vec![op],
    };
    eprintln!("adapter: {adapter}{}", if software { " (a software adapter: only ratios and slopes mean anything)" } else { "" });
    let matmul_shapes: Vec<[usize; 3]> = if software {
        vec![[256, 256, 256], [512, 512, 512], [1024, 1024, 1024], [4096, 256, 256], [1, 4096, 1024]]
    } else {
        vec![[1024, 1024, 1024], [2048, 2048, 2048], [4096, 4096, 4096], [8192, 8192, 8192], [16384, 1024, 1024], [1, 8192, 8192], [65536, 256, 256]]
    };
    // Decode: powers of ten up to --max-n (10^4 on a software adapter, 10^5 otherwise by default).
    let decode_max = a.max_n.unwrap_or(if software { 10_000 } else { 100_000 });
    let decode_positions: Vec<usize> = std::iter::successors(Some(10usize), |p| Some(p * 10)).take_while(|&p| p <= decode_max).collect();
    let total: usize = ops
        .iter()
        .map(|op| match op {
            BenchOp::Layer | BenchOp::Encoder => sweep.ns.len() * sweep.methods.len(),
            BenchOp::Matmul => matmul_shapes.len(),
            BenchOp::Decode => decode_positions.len(),
            BenchOp::Lm => 3 * sweep.ns.len() + 2,
            BenchOp::Longest | BenchOp::All => 0,
        })
        .sum();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} points, {elapsed} [{msg}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut on_point = |p: &bench::Point| {
        if bar.is_hidden() {
            println!("{}", report::table_row(p));
        } else {
            bar.println(report::table_row(p));
        }
        bar.set_message(format!("{} {} n={}", p.op, p.method, p.n));
        bar.inc(1);
    };
    let mut points = Vec::new();
    for op in ops {
        match op {
            BenchOp::Layer => points.extend(bench::run_sweep(&mut engine, &sweep, 1, &mut on_point)?),
            BenchOp::Encoder => points.extend(bench::run_sweep(&mut engine, &sweep, a.layers, &mut on_point)?),
            BenchOp::Matmul => match &a.peer_wgsl {
                Some(path) => {
                    let (grid, shape) = match (&a.peer_grid[..], &a.peer_shape[..]) {
                        (&[x, y, z], &[m, n, k]) if m * n * k > 0 => ([x, y, z], [m, n, k]),
                        _ => return Err(LunaError::Input("--peer-grid takes x,y,z and --peer-shape m,n,k (all positive)".into())),
                    };
                    let wgsl = String::from_utf8_lossy(&tensors::read_file(path)?).into_owned();
                    let name = path.file_stem().map_or("peer".into(), |s| s.to_string_lossy().into_owned());
                    let peer = bench::peer::Peer { name, wgsl, grid };
                    for p in bench::peer::run_matmul_peer(&mut engine, &peer, shape, a.repeats)? {
                        on_point(&p);
                        points.push(p);
                    }
                }
                None => points.extend(bench::run_matmul(&mut engine, &matmul_shapes, a.repeats, &mut on_point)?),
            },
            BenchOp::Decode => {
                points.extend(bench::run_decode(&mut engine, a.d, a.heads, a.projection_length[0], &decode_positions, a.repeats.max(10), &mut on_point)?)
            }
            BenchOp::Lm => points.extend(bench::lm::run_lm(&mut engine, &sweep.ns, 1000, a.repeats, &mut on_point)?),
            BenchOp::Longest => {
                bar.set_length(0);
                let mut limits = Vec::new();
                points.extend(bench::longest::run_longest(&mut engine, &sweep, &mut on_point, &mut |line| {
                    bar.println(line);
                    limits.push(line.to_string());
                })?);
                for line in limits {
                    println!("{line}");
                }
            }
            BenchOp::All => {}
        }
    }
    bar.finish_and_clear();
    std::fs::create_dir_all(&a.out_dir).map_err(|source| LunaError::Io { path: a.out_dir.display().to_string(), source })?;
    let write = |name: &str, text: &str| tensors::write_file(&a.out_dir.join(name), text.as_bytes());
    write("bench.csv", &report::csv(&points))?;
    write("bench.json", &report::json(&points, &adapter))?;
    for op in ["layer", "encoder"] {
        if let Some(svg) = report::svg(&points, op, false, &format!("{op}: time against n ({adapter})")) {
            write(&format!("{op}_time.svg"), &svg)?;
        }
        if let Some(svg) = report::svg(&points, op, true, &format!("{op}: peak GPU memory against n ({adapter})")) {
            write(&format!("{op}_memory.svg"), &svg)?;
        }
    }
    println!("{}", report::summary(&points));
    for line in bench::lm::ratios(&points) {
        println!("{line}");
    }
    eprintln!("wrote {}/bench.csv, bench.json and the SVG plots", a.out_dir.display());
    Ok(())
}
