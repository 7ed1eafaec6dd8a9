//! `luna serve`, the static file server of the browser demo, run as a child
//! process on a free port: what it serves, what it refuses, and the limits
//! that keep one client from holding the server on a shared machine (issue 14):
//! idle and slow clients are cut off, huge heads are refused without being
//! read whole, connections are capped, and files are streamed.

mod common;

use common::cli::{luna, luna_command, stderr, TempDir};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdout, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a client of these tests waits on the server before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// A running `luna serve`, killed when dropped: also when a test fails.
struct Server {
    child: Child,
    /// `127.0.0.1:port`.
    addr: String,
    /// The server's stdout, kept open while it runs.
    stdout: BufReader<ChildStdout>,
    /// The server's stderr, read to its end by a thread.
    stderr: Option<JoinHandle<String>>,
}

impl Server {
    /// `luna serve --port 0 --dir <web> <extra>`, once it has printed its address.
    fn start(web: &Path, extra: &[&str]) -> Server {
        let mut child = luna_command()
            .args(["serve", "--port", "0", "--dir"])
            .arg(web)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut server = Server { child, addr: String::new(), stdout, stderr: Some(stderr) };
        let mut line = String::new();
        let _ = server.stdout.read_line(&mut line);
        server.addr = line.split("http://").nth(1).map(|s| s.trim().trim_end_matches('/').to_string()).unwrap_or_default();
        assert!(server.addr.starts_with("127.0.0.1:"), "no address in {line:?}");
        server
    }

    /// Stops the server and checks that nothing panicked in it.
    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let err = self.stderr.take().map(|t| t.join().unwrap_or_default()).unwrap_or_default();
        assert!(!err.contains("panicked"), "the server panicked:\n{err}");
    }

    /// The server's peak resident memory in KiB (Linux only).
    fn peak_memory_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new temporary folder with web/index.html, web/pkg/, models/ beside web/
/// and a file outside both that must never be served.
fn site(tag: &str) -> TempDir {
    let temp = TempDir::new(tag);
    let dir = temp.dir();
    std::fs::create_dir_all(dir.join("web/pkg")).unwrap();
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(dir.join("web/index.html"), "<p>demo</p>").unwrap();
    std::fs::write(dir.join("web/pkg/luna_wgpu_bg.wasm"), b"\0asm").unwrap();
    std::fs::write(dir.join("models/m.safetensors"), b"model bytes").unwrap();
    std::fs::write(dir.join("secret.txt"), b"secret").unwrap();
    temp
}

/// A connection to `addr` that gives up after [`PATIENCE`] on any read or
/// write, so that a server that hangs fails the test instead of hanging it.
fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

/// Sends `request` and reads the answer up to the end of the connection (or
/// up to an error, such as a reset, keeping what came before it).
fn exchange(addr: &str, request: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    s.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    answer
}

/// The whole answer to `GET path`, as text.
fn get(addr: &str, path: &str) -> String {
    String::from_utf8_lossy(&exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())).into_owned()
}

/// An answer's head (status line and headers) as text, and its body.
fn split(answer: &[u8]) -> (String, &[u8]) {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n");
    let end = end.unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(answer)));
    (String::from_utf8_lossy(&answer[..end + 2]).into_owned(), &answer[end + 4..])
}

/// `luna serve` on a free port: the web folder, models/ beside it, nothing outside them.
#[test]
fn serve_serves_the_web_folder_and_nothing_else() {
    let temp = site("serve");
    let server = Server::start(&temp.dir().join("web"), &[]);
    let get = |path: &str| get(&server.addr, path);
    let index = get("/");
    assert!(index.starts_with("HTTP/1.1 200") && index.ends_with("<p>demo</p>"), "{index}");
    assert!(get("/pkg/luna_wgpu_bg.wasm").contains("Content-Type: application/wasm"));
    assert!(get("/models/m.safetensors").ends_with("model bytes"));
    for bad in ["/../secret.txt", "/%2e%2e/secret.txt", "/models/../../secret.txt", "/nothing.html", "/.git/config"] {
        assert!(get(bad).starts_with("HTTP/1.1 404"), "{bad} was served");
    }
    server.stop();
}

/// 300 clients that connect and send nothing, or half a request line, and
/// one that sends a byte every 200 ms: a normal request is still answered at
/// once, and with `--timeout 4` every one of them is closed by the server
/// about 4 s after it connected (a deadline on the whole head, not an idle time).
#[test]
fn idle_and_slow_clients_neither_block_others_nor_stay() {
    const TIMEOUT: u64 = 4;
    let temp = site("serve-idle");
    let server = Server::start(&temp.dir().join("web"), &["--timeout", &TIMEOUT.to_string()]);
    let opened = Instant::now();
    let mut clients: Vec<TcpStream> = (0..300)
        .map(|i| {
            let mut s = connect(&server.addr);
            if i % 2 == 1 {
                s.write_all(b"GET /index.ht").unwrap();
            }
            s
        })
        .collect();
    let slow = connect(&server.addr);
    let mut trickle = slow.try_clone().unwrap();
    std::thread::spawn(move || {
        let _ = trickle.write_all(b"GET / HTTP/1.1\r\nX-Slow: ");
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(200));
            if trickle.write_all(b"z").is_err() {
                break;
            }
        }
    });
    clients.push(slow);

    let asked = Instant::now();
    let index = get(&server.addr, "/");
    assert!(index.starts_with("HTTP/1.1 200"), "{index}");
    assert!(asked.elapsed() < Duration::from_millis(2500), "answered after {:?} with 301 clients waiting", asked.elapsed());
    assert!(opened.elapsed() < Duration::from_secs(TIMEOUT), "the clients were not all open while the request was answered");

    for (i, s) in clients.iter_mut().enumerate() {
        let read = s.read(&mut [0u8; 64]);
        let at = opened.elapsed();
        let closed = matches!(read, Ok(0)) || read.as_ref().is_err_and(|e| e.kind() == ErrorKind::ConnectionReset);
        assert!(closed, "client {i} was not closed by the server: {read:?} after {at:?}");
        assert!(at < Duration::from_secs(TIMEOUT + 6), "client {i} closed only after {at:?}");
        if i == 0 {
            assert!(at > Duration::from_millis(TIMEOUT * 1000 - 500), "client 0 closed after {at:?}, before the {TIMEOUT} s timeout");
        }
    }
    assert!(get(&server.addr, "/").starts_with("HTTP/1.1 200"));
    server.stop();
}

/// A 20 MB header, streamed: the server answers 431 once it has read 16 KiB
/// of headers, does not hold the rest in memory, and serves the next request.
#[test]
fn a_huge_header_gets_431_without_being_read_whole() {
    let temp = site("serve-header");
    let server = Server::start(&temp.dir().join("web"), &[]);
    let peak_before = server.peak_memory_kib();

    let mut s = connect(&server.addr);
    let mut reader = s.try_clone().unwrap();
    let reading = std::thread::spawn(move || {
        let mut answer = Vec::new();
        let _ = reader.read_to_end(&mut answer);
        answer
    });
    // Write errors are expected once the server has answered and closed.
    let mut open = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ").is_ok();
    let chunk = vec![b'a'; 64 << 10];
    let mut sent = 0;
    while open && sent < 20 << 20 {
        open = s.write_all(&chunk).is_ok();
        sent += chunk.len();
    }
    let _ = s.write_all(b"\r\n\r\n");
    let answer = reading.join().unwrap();
    let text = String::from_utf8_lossy(&answer[..answer.len().min(300)]);
    assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{text:?}");

    if let (Some(before), Some(after)) = (peak_before, server.peak_memory_kib()) {
        assert!(after < before + 8 * 1024, "the server's peak memory grew from {before} KiB to {after} KiB");
    }
    assert!(get(&server.addr, "/").starts_with("HTTP/1.1 200"));
    server.stop();
}

/// Methods other than GET and HEAD get 405 with `Allow`; a request line over
/// 8 KiB gets 414; a malformed one gets 400; HEAD gets the headers alone.
#[test]
fn methods_request_lines_and_head() {
    let temp = site("serve-methods");
    let server = Server::start(&temp.dir().join("web"), &[]);
    let addr = server.addr.as_str();
    let others = [
        "POST /index.html HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nx=1",
        "PUT /index.html HTTP/1.1\r\nHost: x\r\n\r\n",
        "DELETE / HTTP/1.1\r\n\r\n",
    ];
    for request in others {
        let (head, _) = split(&exchange(addr, request.as_bytes()));
        assert!(head.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{request:?}: {head}");
        assert!(head.contains("\r\nAllow: GET, HEAD\r\n"), "{request:?}: {head}");
    }

    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
    let (head, _) = split(&exchange(addr, long.as_bytes()));
    assert!(head.starts_with("HTTP/1.1 414 "), "{head}");
    let under_the_cap = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(8000));
    assert!(exchange(addr, under_the_cap.as_bytes()).starts_with(b"HTTP/1.1 404 "));

    let malformed: [&[u8]; 7] = [
        b"garbage\r\n\r\n",
        b"\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1 more\r\n\r\n",
        b"get / HTTP/1.1\r\n\r\n",
        b"GET index.html HTTP/1.1\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\n\r\n",
    ];
    for request in malformed {
        let answer = String::from_utf8_lossy(&exchange(addr, request)).into_owned();
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{:?}: {answer:?}", String::from_utf8_lossy(request));
    }
    // Bare line feeds end lines too.
    assert!(exchange(addr, b"GET / HTTP/1.0\n\n").starts_with(b"HTTP/1.1 200 "));

    let answer = exchange(addr, b"HEAD /index.html HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, body) = split(&answer);
    assert!(head.starts_with("HTTP/1.1 200 ") && head.contains("\r\nContent-Length: 11\r\n"), "{head}");
    assert!(head.contains("\r\nCache-Control: no-store\r\n") && head.contains("\r\nConnection: close\r\n"), "{head}");
    assert!(body.is_empty(), "HEAD sent a body of {} bytes", body.len());
    let answer = exchange(addr, b"HEAD /nothing.html HTTP/1.1\r\n\r\n");
    let (head, body) = split(&answer);
    assert!(head.starts_with("HTTP/1.1 404 ") && body.is_empty(), "{head}");
    server.stop();
}

/// An 8 MiB file comes back byte for byte, with its length in Content-Length.
#[test]
fn a_large_file_is_served_exactly() {
    let temp = site("serve-large");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..8 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(temp.dir().join("models/big.safetensors"), &data).unwrap();
    let server = Server::start(&temp.dir().join("web"), &[]);
    let answer = exchange(&server.addr, b"GET /models/big.safetensors HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, body) = split(&answer);
    assert!(head.starts_with("HTTP/1.1 200 ") && head.contains(&format!("\r\nContent-Length: {}\r\n", data.len())), "{head}");
    assert!(head.contains("\r\nContent-Type: application/octet-stream\r\n"), "{head}");
    assert_eq!(body.len(), data.len());
    assert!(body == data, "the body differs from the file");
    server.stop();
}

/// The open-file limit of this process, where /proc tells it.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits.lines().find(|l| l.starts_with("Max open files"))?.split_whitespace().nth(3)?.parse().ok()
}

/// With 512 connections open, the next one gets 503 at once; when some
/// close, requests are served again.
#[test]
fn connections_over_the_cap_get_503() {
    if open_file_limit().is_some_and(|n| n < 1024) {
        eprintln!("skipping: fewer than 1024 open files allowed");
        return;
    }
    let temp = site("serve-cap");
    let server = Server::start(&temp.dir().join("web"), &["--timeout", "30"]);
    let mut held: Vec<TcpStream> = (0..512).map(|_| connect(&server.addr)).collect();
    // Sending nothing: the 503 comes unasked, and no unread request resets the connection.
    let mut answer = Vec::new();
    let _ = connect(&server.addr).read_to_end(&mut answer);
    assert!(answer.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"), "{:?}", String::from_utf8_lossy(&answer));

    // The first connections are those that hold workers.
    held.drain(..12);
    let start = Instant::now();
    let mut index = get(&server.addr, "/");
    while !index.starts_with("HTTP/1.1 200") && start.elapsed() < PATIENCE {
        std::thread::sleep(Duration::from_millis(100));
        index = get(&server.addr, "/");
    }
    assert!(index.starts_with("HTTP/1.1 200"), "{index}");
    drop(held);
    server.stop();
}

/// `--timeout` takes 1 to 30 seconds.
#[test]
fn timeout_outside_1_to_30_is_refused() {
    for bad in ["0", "31", "-1", "soon"] {
        let out = luna(&["serve", "--port", "0", &format!("--timeout={bad}")]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "--timeout {bad}: {:?}\n{err}", out.status);
        assert!(err.contains("--timeout <SECONDS>"), "--timeout {bad}: {err}");
    }
}
