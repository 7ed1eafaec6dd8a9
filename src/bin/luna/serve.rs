//! `luna serve`: the browser demo (web/) and the models/ folder beside it, on
//! 127.0.0.1.

use crate::args::ServeArgs;
use luna_wgpu::{LunaError, Result};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

/// `luna serve`: a static file server on 127.0.0.1 for the browser demo. GET
/// and HEAD only; paths are confined to the served folder (and `models/`
/// beside it, under `/models/`); nothing is cached by the browser.
pub fn run(args: ServeArgs) -> Result<()> {
    let ServeArgs { port, dir } = args;
    let root = match dir {
        Some(d) => d,
        None => [PathBuf::from("web"), Path::new(env!("CARGO_MANIFEST_DIR")).join("web")]
            .into_iter()
            .find(|p| p.join("index.html").is_file())
            .ok_or_else(|| LunaError::Input("no web/ folder with an index.html here; run from the repository root or pass --dir".into()))?,
    };
    let io = |path: &Path, source| LunaError::Io { path: path.display().to_string(), source };
    let root = root.canonicalize().map_err(|e| io(&root, e))?;
    let models = root.parent().map(|p| p.join("models")).filter(|m| m.is_dir());
    let listener = TcpListener::bind(("127.0.0.1", port)).map_err(|e| io(Path::new(&format!("127.0.0.1:{port}")), e))?;
    let addr = listener.local_addr().map_err(|e| io(&root, e))?;
    println!("serving {} at http://{addr}/", root.display());
    if !root.join("pkg").join("luna_wgpu.js").is_file() {
        eprintln!("warning: {} has no pkg/luna_wgpu.js yet: build it with web/build.sh", root.display());
    }
    if let Some(m) = &models {
        eprintln!("and {} at http://{addr}/models/", m.display());
    }
    let _ = std::io::stdout().flush();

    fn content_type(path: &Path) -> &'static str {
        match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
            "html" => "text/html; charset=utf-8",
            "js" | "mjs" => "text/javascript; charset=utf-8",
            "wasm" => "application/wasm",
            "css" => "text/css; charset=utf-8",
            "json" => "application/json",
            "svg" => "image/svg+xml",
            "png" => "image/png",
            "txt" | "md" | "ts" => "text/plain; charset=utf-8",
            _ => "application/octet-stream",
        }
    }
    // The file a request path names, or None when it leaves the served folders or does not exist.
    let resolve = |raw: &str| -> Option<PathBuf> {
        let path = raw.split(['?', '#']).next().unwrap_or("");
        let mut bytes = Vec::new();
        let mut it = path.bytes();
        while let Some(b) = it.next() {
            if b == b'%' {
                let hex: Vec<u8> = it.by_ref().take(2).collect();
                bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            } else {
                bytes.push(b);
            }
        }
        let path = String::from_utf8(bytes).ok()?;
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        if parts.iter().any(|p| *p == ".." || *p == "." || p.contains('\\') || p.starts_with('.')) {
            return None;
        }
        let (base, rest) = match (parts.first(), &models) {
            (Some(&"models"), Some(m)) => (m.clone(), &parts[1..]),
            _ => (root.clone(), &parts[..]),
        };
        let mut file = base.clone();
        for p in rest {
            file.push(p);
        }
        if file.is_dir() {
            file.push("index.html");
        }
        let file = file.canonicalize().ok()?;
        (file.starts_with(&base) && file.is_file()).then_some(file)
    };
    let handle = |mut stream: TcpStream| {
        let mut line = String::new();
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => return,
        });
        if reader.read_line(&mut line).is_err() {
            return;
        }
        // Skip the headers.
        let mut header = String::new();
        while reader.read_line(&mut header).map(|n| n > 2).unwrap_or(false) {
            header.clear();
        }
        let mut words = line.split_whitespace();
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let respond = |stream: &mut TcpStream, status: &str, kind: &str, body: &[u8], head: bool| {
            let header = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(header.as_bytes());
            if !head {
                let _ = stream.write_all(body);
            }
        };
        if method != "GET" && method != "HEAD" {
            respond(&mut stream, "405 Method Not Allowed", "text/plain", b"only GET and HEAD\n", false);
            return;
        }
        match resolve(target).and_then(|f| std::fs::read(&f).ok().map(|b| (f, b))) {
            Some((file, body)) => respond(&mut stream, "200 OK", content_type(&file), &body, method == "HEAD"),
            None => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n", method == "HEAD"),
        }
    };
    std::thread::scope(|scope| {
        for stream in listener.incoming().flatten() {
            let handle = &handle;
            scope.spawn(move || handle(stream));
        }
    });
    Ok(())
}
