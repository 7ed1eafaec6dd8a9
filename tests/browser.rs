//! The browser build end to end: builds the wasm package (web/build.sh),
//! makes models and inputs here, runs native `luna forward` / `luna score` and
//! the pack weights on them, then drives Debian's Chromium headless with
//! WebGPU (SwiftShader) through playwright-core (web/tests/e2e.mjs) and checks
//! that the engine in the browser gives the same outputs to 1e-3, that the
//! demo page scores the sample, paints its heat map, shows the pack weights
//! and streams a continuation, and that the error paths show their messages.
//! Screenshots go to target/browser-e2e/screenshots/.
//!
//! It also uses the npm package as its users do: `npm pack` of web/pkg,
//! installed from the tarball into the small app of web/tests/app/ (copied to
//! target/browser-e2e/app/), type-checked with `tsc --strict`, bundled by Vite
//! and by esbuild, and run by e2e.mjs (download progress, the Cache API,
//! progress and abort of a score, the esbuild bundle given the wasm's URL).
//!
//! Needs chromium, node with the repository's npm packages (`npm ci`), the
//! wasm32-unknown-unknown target and the wasm-bindgen CLI of Cargo.lock's
//! version (.ci/run installs all of them). Without them the test is skipped;
//! `LUNA_REQUIRE_BROWSER=1` makes that a failure. `LUNA_CHROMIUM` names another
//! Chromium binary.

mod common;

use common::cli::assert_ok;
use common::configs;
use luna_wgpu::tokenizer::Tokenizer;
use luna_wgpu::{tensors, AdapterChoice, Batch, Config, Engine, Model};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `luna` with `args`, which must succeed.
fn luna(args: &[&str]) {
    assert_ok(&common::cli::luna(args), &format!("luna {args:?}"));
}

fn cmd_stdout(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The wasm-bindgen version pinned by Cargo.lock.
fn locked_wasm_bindgen() -> Option<String> {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l == "name = \"wasm-bindgen\"" {
            return lines.next()?.strip_prefix("version = \"")?.strip_suffix('"').map(str::to_string);
        }
    }
    None
}

fn chromium() -> PathBuf {
    std::env::var_os("LUNA_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// What is missing for the browser test, if anything.
fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    if !chromium().is_file() {
        missing.push(format!("chromium at {} (apt-get install chromium)", chromium().display()));
    }
    match cmd_stdout("node", &["--version"]) {
        None => missing.push("node (apt-get install nodejs npm)".into()),
        Some(v) => {
            let major: u32 = v.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
            if major < 20 {
                missing.push(format!("node >= 20 (found {v})"));
            }
        }
    }
    if ["playwright-core", "vite", "typescript", "esbuild"].iter().any(|p| !root().join("node_modules").join(p).join("package.json").is_file()) {
        missing.push("the npm packages (npm ci at the repository root)".into());
    }
    let sysroot = cmd_stdout("rustc", &["--print", "sysroot"]).unwrap_or_default();
    if !Path::new(&sysroot).join("lib/rustlib/wasm32-unknown-unknown").is_dir() {
        missing.push("the wasm32-unknown-unknown target (rustup target add wasm32-unknown-unknown)".into());
    }
    let want = locked_wasm_bindgen().unwrap_or_default();
    let have = cmd_stdout("wasm-bindgen", &["--version"]).unwrap_or_default();
    if have.split_whitespace().nth(1) != Some(want.as_str()) {
        missing.push(format!(
            "wasm-bindgen {want} (found {:?}; cargo install wasm-bindgen-cli --version {want} --locked)",
            if have.is_empty() { "none" } else { have.as_str() }
        ));
    }
    missing
}

/// `common::configs::byte_lm` twice as wide (d 32, ffn 64, l 8), for up to 4096 tokens.
fn causal_config(overrides: serde_json::Value) -> Config {
    let wider = json!({
        "embed_dim": 32, "ffn_embed_dim": 64, "projection_length": 8, "max_positions": 4096,
        "tie_output_embedding": true, "embed_scale": 5.656854249492381, "layer_norm_eps": 1e-5
    });
    configs::byte_lm(configs::merge(wider, overrides))
}

/// Models, inputs and native outputs for the browser to match.
fn make_fixtures(dir: &Path) {
    let p = |name: &str| dir.join(name);
    let s = |path: PathBuf| path.to_str().unwrap().to_string();

    // An encoder, two right-padded sequences: 1300 tokens run as row blocks
    // of 512 (the pack merged across blocks), each sequence its own group.
    let enc = Config::from_json(
        &json!({
            "model": "encoder", "vocab_size": 50, "embed_dim": 32, "ffn_embed_dim": 48, "num_layers": 2,
            "num_heads": 4, "num_pheads": 2, "projection_length": 6, "max_positions": 512, "padding_idx": 1,
            "normalize_before": true, "tie_kv": false, "layernorm_embedding": true, "activation": "gelu",
            "learned_pos": false, "embed_scale": 5.656854249492381, "layer_norm_eps": 1e-5
        })
        .to_string(),
    )
    .unwrap();
    Model::random(&enc, 3).unwrap().save(&p("encoder.safetensors")).unwrap();
    let (tokens, b, n) = luna_wgpu::init::random_tokens(&enc, &[1300, 41], 4);
    tensors::write_file(&p("encoder.tokens.safetensors"), &tensors::serialize_tokens(&tokens, [b, n]).unwrap()).unwrap();
    luna(&["forward", "--model", &s(p("encoder.safetensors")), "--input", &s(p("encoder.tokens.safetensors")), "--output", &s(p("encoder.out.safetensors"))]);

    // A causal LM with a byte tokenizer (post-norm, separate k/v) and the
    // local-context extension (a fast and a slow decay, a convolution, no
    // token positions), two texts; the authors' causal form is the fixture's below.
    let lm = causal_config(json!({"normalize_before": false, "tie_kv": false, "decay": [0.875, 0.998046875],
                                  "conv_width": 4, "no_token_positional_embeddings": true}));
    let (model, _) = configs::byte_model(&lm, 5);
    model.save(&p("causal.safetensors")).unwrap();
    let tok = Tokenizer::from_model(&model).unwrap().unwrap();
    let texts = ["Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him.", "The evil that men do lives after them."];
    let seqs: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode_with_bos(t.as_bytes())).collect();
    let n = seqs.iter().map(Vec::len).max().unwrap();
    let mut ids = Vec::new();
    for s in &seqs {
        ids.extend(s.iter().map(|&t| t as i64));
        ids.extend(std::iter::repeat_n(lm.padding_idx as i64, n - s.len()));
    }
    tensors::write_file(&p("causal.tokens.safetensors"), &tensors::serialize_tokens(&ids, [2, n]).unwrap()).unwrap();
    luna(&["forward", "--model", &s(p("causal.safetensors")), "--input", &s(p("causal.tokens.safetensors")), "--output", &s(p("causal.out.safetensors"))]);
    luna(&["score", "--model", &s(p("causal.safetensors")), "--tokens", &s(p("causal.tokens.safetensors")), "--surprisal", &s(p("causal.score.safetensors"))]);

    // Pack weights of layer 1 over the first text, from the native engine.
    match Engine::new_blocking(&AdapterChoice::from_arg_or_env(None)) {
        Ok(mut engine) => {
            let gm = engine.load(&model).unwrap();
            let pw = engine.pack_weights_blocking(&gm, &model, &seqs[0], &[1]).unwrap().remove(0);
            let ids: Vec<i64> = seqs[0].iter().map(|&t| t as i64).collect();
            let named = [tensors::Named { name: "weights", shape: vec![pw.len, pw.heads, pw.proj_len], data: &pw.values }];
            tensors::write_file(&p("pack.safetensors"), &tensors::serialize_f32(&named, None).unwrap()).unwrap();
            tensors::write_file(&p("pack.tokens.safetensors"), &tensors::serialize_tokens(&ids, [1, ids.len()]).unwrap()).unwrap();
        }
        Err(e) => {
            assert!(std::env::var("LUNA_REQUIRE_GPU").as_deref() != Ok("1"), "LUNA_REQUIRE_GPU=1 but no GPU engine: {e}");
            eprintln!("no native GPU engine ({e}): the pack weights are not compared");
        }
    }

    // The authors' fixtures (tests/fixtures/README.md), with native `luna forward` outputs.
    for case in ["public_encoder", "public_causal"] {
        for part in ["model", "input", "expected"] {
            let name = format!("{case}.{part}.safetensors");
            std::fs::copy(root().join("tests/fixtures").join(&name), p(&name)).unwrap();
        }
        let (model, input, out) = (p(&format!("{case}.model.safetensors")), p(&format!("{case}.input.safetensors")), p(&format!("{case}.native.safetensors")));
        luna(&["forward", "--model", &s(model), "--input", &s(input), "--output", &s(out)]);
    }

    // A document of three segments of 2048 tokens (the browser's segment), for native `luna score`
    // in one pass to check the browser's segment-by-segment scoring against.
    let sample = std::fs::read_to_string(root().join("web/samples/julius-caesar.txt")).unwrap();
    let long: String = sample.chars().scan(0, |bytes, c| {
        *bytes += c.len_utf8();
        (*bytes <= 5000).then_some(c)
    }).collect();
    std::fs::write(p("long.txt"), &long).unwrap();
    let ids: Vec<i64> = tok.encode_with_bos(long.as_bytes()).iter().map(|&t| t as i64).collect();
    assert!(ids.len() > 2 * 2048, "the long document must span three segments");
    tensors::write_file(&p("long.tokens.safetensors"), &tensors::serialize_tokens(&ids, [1, ids.len()]).unwrap()).unwrap();
    luna(&["score", "--model", &s(p("causal.safetensors")), "--tokens", &s(p("long.tokens.safetensors")), "--surprisal", &s(p("long.score.safetensors"))]);

    // The demo page's model: tiny, so that the 114 KB sample scores in a minute or two on a
    // software adapter (the real model wants a GPU: SwiftShader reads it at about 200 tokens/s).
    let demo = causal_config(json!({"embed_dim": 16, "ffn_embed_dim": 32, "num_heads": 1, "num_layers": 1, "embed_scale": 4.0}));
    configs::byte_model(&demo, 7).0.save(&p("demo.safetensors")).unwrap();
    // A file that is no model.
    std::fs::write(p("bad.safetensors"), b"this is not a safetensors file, just some text").unwrap();
    // Check the fixtures agree with the library (a cheap guard on the files themselves).
    let back = Model::load(&p("causal.safetensors")).unwrap();
    assert_eq!(back.config, lm);
    let batch = Batch::from_safetensors(&lm, &tensors::read_file(&p("causal.tokens.safetensors")).unwrap()).unwrap();
    assert_eq!(batch.lengths, seqs.iter().map(Vec::len).collect::<Vec<_>>());
}

/// Runs `cmd` to completion within `limit`, its output going to this test's output.
fn run_with_limit(mut cmd: Command, what: &str, limit: Duration) {
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{what} failed ({status})");
            return;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} took longer than {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A command that must succeed, its output going to this test's output.
fn run_ok(program: &str, args: &[&str], dir: &Path, what: &str) {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(dir).env("npm_config_update_notifier", "false");
    run_with_limit(cmd, what, Duration::from_secs(300));
}

/// The npm package as its users get it: packs web/pkg, installs the tarball
/// (offline: it has no dependencies) into a copy of web/tests/app/, checks
/// the app against the typings with `tsc --strict` (the default DOM library,
/// and esnext, whose `Symbol.dispose` must not clash with the typings'), and
/// bundles it with Vite and with esbuild. Returns the folder to serve.
fn build_app(root: &Path, out: &Path) -> PathBuf {
    let app = out.join("app");
    std::fs::create_dir_all(&app).unwrap();
    for entry in std::fs::read_dir(root.join("web/tests/app")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, app.join(path.file_name().unwrap())).unwrap();
    }
    let pack = Command::new("npm").args(["pack", "--pack-destination"]).arg(&app).arg(root.join("web/pkg")).output().expect("npm pack");
    assert!(pack.status.success(), "npm pack web/pkg failed: {}", String::from_utf8_lossy(&pack.stderr));
    let tarball = String::from_utf8_lossy(&pack.stdout).lines().last().unwrap_or_default().trim().to_string();
    std::fs::rename(app.join(&tarball), app.join("luna-wgpu.tgz")).unwrap_or_else(|e| panic!("npm pack made no {tarball}: {e}"));
    eprintln!("npm pack: {tarball}, {} bytes", std::fs::metadata(app.join("luna-wgpu.tgz")).unwrap().len());
    run_ok("npm", &["install", "--offline", "--no-audit", "--no-fund", "--no-package-lock"], &app, "npm install of the packed tarball");

    // What npm installed says what the package is.
    let installed = app.join("node_modules/luna-wgpu");
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(installed.join("package.json")).unwrap()).unwrap();
    assert_eq!(manifest["version"], env!("CARGO_PKG_VERSION"), "the package's version is Cargo.toml's");
    assert_eq!(manifest["license"], env!("CARGO_PKG_LICENSE"));
    for file in ["luna_wgpu.js", "luna_wgpu_bg.wasm", "luna_wgpu.d.ts", "README.md"] {
        assert!(installed.join(file).is_file(), "the installed package has no {file}");
    }

    let modules = root.join("node_modules");
    let tsc = modules.join("typescript/bin/tsc");
    let tsc = tsc.to_str().unwrap();
    run_ok("node", &[tsc, "-p", "tsconfig.json"], &app, "tsc --strict (lib es2022, dom) on the app");
    run_ok("node", &[tsc, "-p", "tsconfig.json", "--lib", "esnext,dom"], &app, "tsc --strict (lib esnext, dom) on the app");
    let vite = modules.join("vite/bin/vite.js");
    run_ok("node", &[vite.to_str().unwrap(), "build", "--base", "./", "--outDir", "dist", "--logLevel", "warn"], &app, "vite build of the app");
    let esbuild = modules.join(".bin/esbuild");
    let args = ["esbuild.ts", "--bundle", "--format=esm", "--loader:.wasm=file", "--outdir=dist", "--log-level=warning"];
    run_ok(esbuild.to_str().unwrap(), &args, &app, "esbuild of the app");
    std::fs::copy(app.join("esbuild.html"), app.join("dist/esbuild.html")).unwrap();
    app.join("dist")
}

#[test]
fn browser_end_to_end() {
    let required = std::env::var("LUNA_REQUIRE_BROWSER").as_deref() == Ok("1");
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        let msg = format!("browser test: missing {}", missing.join("; "));
        assert!(!required, "LUNA_REQUIRE_BROWSER=1 but {msg}");
        eprintln!("skipping the {msg}");
        return;
    }
    let root = root();
    // The wasm build gets its own target folder: the outer `cargo test` holds target/'s lock.
    let mut build = Command::new("bash");
    build.arg(root.join("web/build.sh")).arg("--no-install").env("CARGO_TARGET_DIR", root.join("target/web-build"));
    run_with_limit(build, "web/build.sh", Duration::from_secs(1800));

    let out = root.join("target/browser-e2e");
    let _ = std::fs::remove_dir_all(&out);
    let fixtures = out.join("fixtures");
    std::fs::create_dir_all(&fixtures).unwrap();
    make_fixtures(&fixtures);
    let app = build_app(&root, &out);

    let mut node = Command::new("node");
    node.arg(root.join("web/tests/e2e.mjs"))
        .current_dir(&root)
        .env("LUNA_E2E_FIXTURES", &fixtures)
        .env("LUNA_E2E_APP", &app)
        .env("LUNA_E2E_OUT", &out)
        .env("LUNA_CHROMIUM", chromium());
    run_with_limit(node, "web/tests/e2e.mjs", Duration::from_secs(1500));
    for shot in ["demo-scored.png", "demo-pack.png", "demo-continuation.png", "error-no-webgpu.png", "error-bad-model.png"] {
        let path = out.join("screenshots").join(shot);
        assert!(std::fs::metadata(&path).map(|m| m.len() > 1000).unwrap_or(false), "no screenshot {}", path.display());
    }
}

/// The string literals that follow each `open` (such as `error(`, not part of
/// a longer name) in `code`, skipping whitespace: the kinds a call site gives.
fn literals_after(code: &str, open: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices(open) {
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = code[i + open.len()..].trim_start();
        if let Some(q @ ('"' | '\'')) = rest.chars().next() {
            out.extend(rest[1..].split(q).next().map(str::to_string));
        }
    }
    out
}

/// Every `kind` a `LunaError` of the browser API can have (src/web/*.rs and
/// load.js) is a member of the `LunaErrorKind` union of the typings, and the
/// other way round, and web/README.md and the npm package's README name each.
#[test]
fn error_kinds_are_typed_and_documented() {
    let read = |rel: &str| std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let mut thrown = std::collections::BTreeSet::new();
    for file in ["src/web/errors.rs", "src/web/engine.rs", "src/web/model.rs", "src/web/watch.rs"] {
        let code = read(file);
        thrown.extend(literals_after(&code, "error("));
        if file.ends_with("errors.rs") {
            let kind_fn = &code[code.find("pub fn kind").unwrap()..code.find("/// An `Error` named").unwrap()];
            thrown.extend(literals_after(kind_fn, "=>"));
        }
    }
    thrown.extend(literals_after(&read("src/web/load.js"), "lunaError("));
    let typings = read("src/web/luna.d.ts");
    let union = &typings[typings.find("export type LunaErrorKind =").unwrap()..];
    let union = &union[..union.find("\";").unwrap() + 1];
    let typed: std::collections::BTreeSet<String> = literals_after(union, "|").into_iter().collect();
    assert!(thrown.len() >= 12, "the kinds found in the code: {thrown:?}");
    assert_eq!(thrown, typed, "the kinds the code gives (left) and LunaErrorKind in src/web/luna.d.ts (right)");
    for doc in ["web/README.md", "web/package/README.md"] {
        let text = read(doc);
        let missing: Vec<_> = typed.iter().filter(|k| !text.contains(&format!("`{k}`"))).collect();
        assert!(missing.is_empty(), "{doc} does not name the error kinds {missing:?}");
    }
}
