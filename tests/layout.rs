//! The house rules of the source tree (docs/ARCHITECTURE.md, "Layers"), checked
//! on the files themselves so that a change that breaks them fails here:
//! no `.rs` file under `src/` is over 500 lines; no module of the library
//! imports one that imports it back, directly or through others; and nothing
//! on the GPU path (`engine`, `kernels`, `gpu`, `math`) depends on the float64
//! reference, which must stay an independent oracle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 500;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The library's modules: module path (`engine::causal`) to its file. The
/// crate root and the binaries under `src/bin/` are not library modules.
fn modules() -> BTreeMap<String, PathBuf> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut map = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src()).unwrap().with_extension("");
        let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        if parts[0] == "bin" || parts == ["lib"] {
            continue;
        }
        let mut parts = parts;
        if parts.last().map(String::as_str) == Some("mod") {
            parts.pop();
        }
        map.insert(parts.join("::"), f);
    }
    map
}

/// The code of a file without comments (so that prose naming a path is no import).
fn code(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The paths of a `use` tree: `a::{b, c::{self, D}}` gives `a::b`, `a::c`, `a::c::D`.
fn use_tree(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let mut base = prefix.to_vec();
        base.extend(tree[..open].split("::").map(str::trim).filter(|s| !s.is_empty()).map(String::from));
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let (mut depth, mut start) = (0, 0);
        for (i, ch) in inner.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    use_tree(&base, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        use_tree(&base, &inner[start..], out);
    } else {
        let mut path = prefix.to_vec();
        let tree = tree.split(" as ").next().unwrap_or("");
        path.extend(tree.split("::").map(str::trim).filter(|s| !s.is_empty() && *s != "self" && *s != "*").map(String::from));
        if path.len() > prefix.len() || tree.trim() == "self" {
            out.push(path);
        }
    }
}

/// Every path a file names from the crate root: `use crate::...` and
/// `use super::...` trees, and paths written inline (`crate::a::b::f()`),
/// `super::` resolved against the file's own module.
fn named_paths(module: &str, text: &str) -> Vec<Vec<String>> {
    // `super` of `a::b` is `a`, whether `b` is `a/b.rs` or `a/b/mod.rs`.
    let mut up: Vec<String> = module.split("::").map(String::from).collect();
    up.pop();
    let root = |word: &str| -> Option<Vec<String>> {
        match word {
            "crate" => Some(Vec::new()),
            "super" => Some(up.clone()),
            _ => None,
        }
    };
    let code = code(text);
    let mut paths = Vec::new();
    // `use` statements, which may span lines and nest braces.
    let mut rest = code.as_str();
    let mut inline = String::new();
    while let Some(at) = rest.find("use ") {
        let word_start = at == 0 || !rest[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_');
        inline.push_str(&rest[..at]);
        let after = &rest[at + 4..];
        let end = after.find(';').unwrap_or(after.len());
        let stmt = after[..end].trim();
        let first = stmt.split("::").next().unwrap_or("");
        match (word_start, root(first)) {
            (true, Some(base)) => {
                use_tree(&base, stmt[first.len()..].trim_start_matches("::"), &mut paths);
                rest = &after[end..];
            }
            _ => {
                inline.push_str("use ");
                rest = after;
            }
        }
    }
    inline.push_str(rest);
    // Inline paths.
    let chars: Vec<char> = inline.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let boundary = i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_' || chars[i - 1] == ':');
        let mut j = i;
        let mut path: Vec<String> = Vec::new();
        let mut word = String::new();
        while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_' || (chars[j] == ':' && chars.get(j + 1) == Some(&':'))) {
            if chars[j] == ':' {
                path.push(std::mem::take(&mut word));
                j += 2;
            } else {
                word.push(chars[j]);
                j += 1;
            }
        }
        if !word.is_empty() {
            path.push(word);
        }
        if boundary && path.len() > 1 {
            if let Some(mut base) = root(&path[0]) {
                base.extend(path[1..].iter().cloned());
                paths.push(base);
            }
        }
        i = j.max(i + 1);
    }
    paths
}

/// Module → the modules it names (the longest prefix of each path that is a module).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    let mut g = BTreeMap::new();
    for (name, file) in &mods {
        let text = std::fs::read_to_string(file).unwrap();
        let is_mod_rs = file.file_name().is_some_and(|f| f == "mod.rs");
        let mut deps = BTreeSet::new();
        for path in named_paths(name, &text) {
            let target = (1..=path.len()).rev().map(|k| path[..k].join("::")).find(|p| mods.contains_key(p));
            if let Some(t) = target {
                if &t != name {
                    deps.insert(t);
                }
            }
        }
        // A folder's mod.rs reaches its children through `mod x;` / `pub use x::...`.
        if is_mod_rs {
            for line in code(&text).lines() {
                let l = line.trim();
                for kw in ["pub use ", "use "] {
                    if let Some(rest) = l.strip_prefix(kw) {
                        let first = rest.split([':', ';', ' ']).next().unwrap_or("");
                        let child = format!("{name}::{first}");
                        if mods.contains_key(&child) {
                            deps.insert(child);
                        }
                    }
                }
            }
        }
        g.insert(name.clone(), deps);
    }
    g
}

fn reachable(g: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(m) = stack.pop() {
        for d in g.get(&m).into_iter().flatten() {
            if seen.insert(d.clone()) {
                stack.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn no_source_file_is_over_500_lines() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(files.len() > 20, "found only {} files under src/", files.len());
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let g = graph();
    assert!(g.contains_key("engine::context") && g["engine::causal"].contains("engine::context"), "the import scan found no edges: {g:?}");
    let mut circles = Vec::new();
    for m in g.keys() {
        for d in &g[m] {
            if reachable(&g, d).contains(m) && m < d {
                circles.push(format!("{m} <-> {d}"));
            }
        }
        if reachable(&g, m).contains(m) && !circles.iter().any(|c| c.contains(m.as_str())) {
            circles.push(format!("{m} reaches itself"));
        }
    }
    assert!(circles.is_empty(), "import circles: {circles:?}");
}

#[test]
fn the_gpu_path_does_not_depend_on_the_reference() {
    let g = graph();
    for m in g.keys().filter(|m| ["engine", "kernels", "gpu", "math"].contains(&m.split("::").next().unwrap())) {
        let bad: Vec<String> = reachable(&g, m).into_iter().filter(|d| d.starts_with("reference")).collect();
        assert!(bad.is_empty(), "{m} depends on the reference through {bad:?}");
    }
}

#[test]
fn the_scan_sees_an_import_it_is_given() {
    // The parser itself, on the shapes of `use` this tree has.
    let p = named_paths("engine::causal", "use crate::kernels::{embed, gemm::{self, Gemm}};\nuse super::weights::GpuModel; // crate::reference::x\n");
    assert!(p.contains(&vec!["kernels".to_string(), "embed".to_string()]), "{p:?}");
    assert!(p.contains(&vec!["kernels".to_string(), "gemm".to_string()]), "{p:?}");
    assert!(p.contains(&vec!["engine".to_string(), "weights".to_string(), "GpuModel".to_string()]), "{p:?}");
    assert!(!p.iter().any(|x| x.first().is_some_and(|s| s == "reference")), "a comment counted as an import: {p:?}");
}
