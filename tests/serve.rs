//! `luna serve`, the static file server of the browser demo, run as a child
//! process on a free port: what it serves, and what it refuses.

mod common;

use common::cli::{luna_command, TempDir};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;

/// `luna serve` on a free port: the web folder, models/ beside it, nothing outside them.
#[test]
fn serve_serves_the_web_folder_and_nothing_else() {
    let temp = TempDir::new("serve");
    let dir = temp.dir();
    std::fs::create_dir_all(dir.join("web/pkg")).unwrap();
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(dir.join("web/index.html"), "<p>demo</p>").unwrap();
    std::fs::write(dir.join("web/pkg/luna_wgpu_bg.wasm"), b"\0asm").unwrap();
    std::fs::write(dir.join("models/m.safetensors"), b"model bytes").unwrap();
    std::fs::write(dir.join("secret.txt"), b"secret").unwrap();

    let mut child = luna_command()
        .args(["serve", "--port", "0", "--dir"])
        .arg(dir.join("web"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split("http://").nth(1).map(|s| s.trim().trim_end_matches('/').to_string());
    let get = |path: &str| -> String {
        let mut s = std::net::TcpStream::connect(addr.as_deref().unwrap()).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    };
    let result = std::panic::catch_unwind(|| {
        assert!(addr.as_deref().is_some_and(|a| a.starts_with("127.0.0.1:")), "no address in {line:?}");
        let index = get("/");
        assert!(index.starts_with("HTTP/1.1 200") && index.ends_with("<p>demo</p>"), "{index}");
        assert!(get("/pkg/luna_wgpu_bg.wasm").contains("Content-Type: application/wasm"));
        assert!(get("/models/m.safetensors").ends_with("model bytes"));
        for bad in ["/../secret.txt", "/%2e%2e/secret.txt", "/models/../../secret.txt", "/nothing.html", "/.git/config"] {
            assert!(get(bad).starts_with("HTTP/1.1 404"), "{bad} was served");
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
