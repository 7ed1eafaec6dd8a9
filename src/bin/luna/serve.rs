//! `luna serve`: the browser demo (web/) and the models/ folder beside it, on
//! 127.0.0.1.
//!
//! The machine may be shared, so every client gets bounded resources:
//!
//! - at most [`MAX_CONNECTIONS`] connections at once, each served by one of
//!   as many worker threads with [`STACK_SIZE`] stacks, all started with the
//!   server; one more connection is answered `503 Service Unavailable` and
//!   closed at once;
//! - the whole request head must arrive within `--timeout` seconds of the
//!   connection (a deadline, not an idle time, so a client sending a byte now
//!   and then is cut off too), and a response waits at most that long for the
//!   client to take more of it;
//! - a request line over [`MAX_REQUEST_LINE`] bytes gets `414 URI Too Long`,
//!   headers over [`MAX_HEADERS`] bytes in total get `431 Request Header
//!   Fields Too Large`: both are counted while reading, and headers are not
//!   kept, so memory per connection stays a few KiB;
//! - files are streamed from disk, never read whole.
//!
//! Why the workers start with the server rather than one per connection:
//! under an address-space limit (`ulimit -v`) a flood of connections would
//! use the limit up while serving, and then the process is aborted, not
//! handed an error, when a new thread cannot map its signal stack or an
//! allocation fails. Started up front, one at a time, as many as fit while
//! leaving [`HEADROOM`], every thread is in place before the first request.
//! (glibc's allocator reserves 64 MiB of address space for each of the first
//! 8 × cores threads; under a tight limit `MALLOC_ARENA_MAX=2` leaves room
//! for more workers.)

use crate::args::ServeArgs;
use luna_wgpu::{LunaError, Result};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;
use std::thread::Scope;
use std::time::{Duration, Instant};

/// Connections served at once: the number of worker threads. One more gets
/// 503 until one ends.
pub const MAX_CONNECTIONS: usize = 512;
/// The stack of each worker thread. A connection needs a few KiB of it (one
/// read buffer and the path checks); the default would be 2 MiB.
pub const STACK_SIZE: usize = 128 * 1024;
/// The longest request line read, in bytes without its line ending.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// The most bytes of headers read after the request line, line endings
/// and the blank line that ends them included.
pub const MAX_HEADERS: usize = 16 * 1024;
/// Address space left unmapped under a limit (`ulimit -v`) when starting
/// workers: room for the allocations of serving. Running out is not an error
/// that can be answered: a thread that cannot map its signal stack, or an
/// allocation that fails, aborts the process.
const HEADROOM: u64 = 16 << 20;
/// How long an error answer waits for the client to finish sending before the
/// connection closes (see [`refuse`]).
const LINGER: Duration = Duration::from_secs(1);
/// The pause after a failed accept (say, out of file descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What is served, and for how long a client may take.
struct Site {
    /// The served folder, canonical.
    root: PathBuf,
    /// models/ beside it, served under /models/, when it exists.
    models: Option<PathBuf>,
    /// The deadline for a request head, and the longest a write may wait.
    timeout: Duration,
}

/// `luna serve`: a static file server on 127.0.0.1 for the browser demo. GET
/// and HEAD only; paths are confined to the served folder (and `models/`
/// beside it, under `/models/`); nothing is cached by the browser. Runs until
/// the process is stopped.
pub fn run(args: ServeArgs) -> Result<()> {
    let ServeArgs { port, dir, timeout } = args;
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
    let site = Site { root, models, timeout: Duration::from_secs(timeout) };
    let (queue, waiting) = sync_channel(MAX_CONNECTIONS);
    let pool = Pool { waiting: Mutex::new(waiting), busy: AtomicUsize::new(0) };
    std::thread::scope(|scope| {
        let workers = pool.start(scope, &site).map_err(|e| io(Path::new("a thread of luna serve"), e))?;
        println!("serving {} at http://{addr}/", site.root.display());
        if !site.root.join("pkg").join("luna_wgpu.js").is_file() {
            eprintln!("warning: {} has no pkg/luna_wgpu.js yet: build it with web/build.sh", site.root.display());
        }
        if let Some(m) = &site.models {
            eprintln!("and {} at http://{addr}/models/", m.display());
        }
        if workers < MAX_CONNECTIONS {
            eprintln!("warning: only {workers} threads could be started: serving at most {workers} connections at once");
        }
        let _ = std::io::stdout().flush();
        accept_forever(&listener, &queue, &pool.busy, workers);
        Ok(())
    })
}

/// The worker threads' side: the connections handed over, and how many are
/// handed over and not done yet.
struct Pool {
    /// The connections accepted and not yet taken by a worker.
    waiting: Mutex<Receiver<TcpStream>>,
    /// Connections handed over and not done yet: 503 for the next one when
    /// it reaches the number of workers.
    busy: AtomicUsize,
}

impl Pool {
    /// Starts up to [`MAX_CONNECTIONS`] workers and returns how many started:
    /// fewer when the system refuses more threads, or when the next one would
    /// leave less than [`HEADROOM`] under an address-space limit (an error
    /// when none starts).
    ///
    /// Each new thread is awaited before the next starts: its first
    /// allocation may reserve a new allocator arena (64 MiB of address space
    /// with glibc), and the room left is measured after that, never while it
    /// happens.
    fn start<'scope>(&'scope self, scope: &'scope Scope<'scope, '_>, site: &'scope Site) -> std::io::Result<usize> {
        let limit = address_space_limit();
        let (ready, running) = sync_channel(1);
        for started in 0..MAX_CONNECTIONS {
            let used = limit.and_then(|_| address_space_used());
            let spawned = match (limit, used) {
                (Some(limit), Some(used)) if used + HEADROOM > limit => {
                    Err(std::io::Error::new(ErrorKind::OutOfMemory, "too little address space left (ulimit -v)"))
                }
                _ => {
                    let ready = ready.clone();
                    std::thread::Builder::new().stack_size(STACK_SIZE).spawn_scoped(scope, move || {
                        let _ = ready.send(());
                        drop(ready);
                        self.work(site);
                    })
                }
            };
            match spawned {
                Ok(_) => {
                    let _ = running.recv();
                }
                Err(e) if started == 0 => return Err(e),
                Err(_) => return Ok(started),
            }
        }
        Ok(MAX_CONNECTIONS)
    }

    /// A worker: serves the connections handed over, one at a time, until the
    /// accept loop is gone. A panic while serving (a bug) ends only that
    /// connection, so the pool keeps its size.
    fn work(&self, site: &Site) {
        loop {
            let next = self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).recv();
            let Ok(stream) = next else { return };
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| handle(stream, site)));
            self.busy.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// This process's address-space limit in bytes (`ulimit -v`), as Linux's
/// /proc tells it; None when there is none, or no /proc to tell.
fn address_space_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    // "Max address space   <soft>   <hard>   bytes", the soft one a number or "unlimited".
    limits.lines().find(|l| l.starts_with("Max address space"))?.split_whitespace().nth(3)?.parse().ok()
}

/// The address space this process has mapped, in bytes, as Linux's /proc tells it.
fn address_space_used() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status.lines().find(|l| l.starts_with("VmSize:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Accepts connections and hands each to a worker through `queue`, or answers
/// 503 when all `workers` are busy. A failed accept never ends the loop: it
/// is reported once per run of failures, and the next try waits
/// [`ACCEPT_BACKOFF`] (the connection stays queued meanwhile).
fn accept_forever(listener: &TcpListener, queue: &SyncSender<TcpStream>, busy: &AtomicUsize, workers: usize) {
    let mut failing = false;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                failing = false;
                if busy.fetch_add(1, Ordering::SeqCst) >= workers {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    reject(stream);
                } else if let Err(TrySendError::Full(stream) | TrySendError::Disconnected(stream)) = queue.try_send(stream) {
                    // Not expected: the queue holds as many as there are workers.
                    busy.fetch_sub(1, Ordering::SeqCst);
                    reject(stream);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
            Err(e) => {
                if !failing {
                    eprintln!("luna serve: cannot accept a connection ({e}); retrying");
                    failing = true;
                }
                std::thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// Answers 503 on the accepting thread without ever waiting on the client:
/// the socket is non-blocking, so if the answer does not fit in its send
/// buffer it is cut short rather than stalling the accept loop.
fn reject(stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let _ = respond(&stream, "503 Service Unavailable", "Retry-After: 1\r\n", "text/plain", b"too many connections\n", false);
}

/// Why [`read_head`] gives no request line.
enum HeadError {
    /// The client closed, failed, or missed the deadline: nothing to answer.
    Gone,
    /// The request line is longer than [`MAX_REQUEST_LINE`].
    LineTooLong,
    /// The headers are longer than [`MAX_HEADERS`] in total.
    HeadersTooLarge,
}

/// Reads a request head, up to the blank line that ends it, before
/// `deadline`, and returns its request line without the line ending. The
/// headers are counted against [`MAX_HEADERS`] but not kept; nothing after
/// the head matters, as every connection closes after one answer.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> std::result::Result<Vec<u8>, HeadError> {
    let mut line = Vec::new();
    let mut in_request_line = true;
    let mut header_bytes = 0;
    // Bytes of the current header line, line ending left out: 0 at a blank line.
    let mut header_line = 0;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(HeadError::Gone);
        }
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return Err(HeadError::Gone),
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if in_request_line {
                // The line may hold one byte over the cap: the '\r' before the '\n'.
                if b == b'\n' {
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if line.len() > MAX_REQUEST_LINE {
                        return Err(HeadError::LineTooLong);
                    }
                    in_request_line = false;
                } else if line.len() > MAX_REQUEST_LINE {
                    return Err(HeadError::LineTooLong);
                } else {
                    line.push(b);
                }
                continue;
            }
            header_bytes += 1;
            if header_bytes > MAX_HEADERS {
                return Err(HeadError::HeadersTooLarge);
            }
            match b {
                b'\n' if header_line == 0 => return Ok(line),
                b'\n' => header_line = 0,
                b'\r' => {}
                _ => header_line += 1,
            }
        }
    }
}

/// The method and target of a request line `METHOD /target HTTP/1.x`, or
/// None when it is not one.
fn parse_request_line(line: &[u8]) -> Option<(&str, &str)> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    let target_ok = target.starts_with('/') && !target.bytes().any(|b| b.is_ascii_control());
    let version_ok = version.strip_prefix("HTTP/1.").is_some_and(|minor| minor.len() == 1);
    (parts.next().is_none() && method_ok && target_ok && version_ok).then_some((method, target))
}

/// Serves one connection: one request, one answer, then the connection closes.
fn handle(mut stream: TcpStream, site: &Site) {
    let deadline = Instant::now() + site.timeout;
    if stream.set_write_timeout(Some(site.timeout)).is_err() {
        return;
    }
    let line = match read_head(&mut stream, deadline) {
        Ok(line) => line,
        Err(HeadError::Gone) => return,
        Err(HeadError::LineTooLong) => return refuse(stream, "414 URI Too Long", ""),
        Err(HeadError::HeadersTooLarge) => return refuse(stream, "431 Request Header Fields Too Large", ""),
    };
    let Some((method, target)) = parse_request_line(&line) else {
        return refuse(stream, "400 Bad Request", "");
    };
    if method != "GET" && method != "HEAD" {
        return refuse(stream, "405 Method Not Allowed", "Allow: GET, HEAD\r\n");
    }
    let head_only = method == "HEAD";
    match site.resolve(target).and_then(|path| open(&path)) {
        Some((path, file, len)) => {
            let header = format!("HTTP/1.1 200 OK\r\n{}\r\n", headers(content_type(&path), len, ""));
            if stream.write_all(header.as_bytes()).is_ok() && !head_only {
                // `take`: a file that grows meanwhile still sends what Content-Length said.
                let _ = std::io::copy(&mut file.take(len), &mut stream);
            }
        }
        None => {
            let _ = respond(&stream, "404 Not Found", "", "text/plain", b"not found\n", head_only);
        }
    }
}

/// The headers of every answer after the status line (`extra` is whole
/// header lines), without the blank line that ends them.
fn headers(kind: &str, len: u64, extra: &str) -> String {
    format!("Content-Type: {kind}\r\nContent-Length: {len}\r\nCache-Control: no-store\r\nConnection: close\r\n{extra}")
}

/// Writes a whole answer with a small in-memory body (left out for HEAD).
fn respond(mut stream: &TcpStream, status: &str, extra: &str, kind: &str, body: &[u8], head_only: bool) -> std::io::Result<()> {
    let header = format!("HTTP/1.1 {status}\r\n{}\r\n", headers(kind, body.len() as u64, extra));
    stream.write_all(header.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    Ok(())
}

/// Answers an error `status` and closes. The client may still be sending
/// (a body, or the rest of an oversized head); closing with its bytes unread
/// would reset the connection, and some clients then lose the answer. So the
/// connection is half-closed and what arrives is read and dropped until the
/// client closes, for at most [`LINGER`].
fn refuse(mut stream: TcpStream, status: &str, extra: &str) {
    let body = format!("{status}\n");
    if respond(&stream, status, extra, "text/plain", body.as_bytes(), false).is_err() {
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        if matches!(stream.read(&mut buf), Ok(0) | Err(_)) {
            return;
        }
    }
}

/// `path` opened, with its length, when it is a regular file.
fn open(path: &Path) -> Option<(PathBuf, File, u64)> {
    let file = File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    meta.is_file().then(|| (path.to_path_buf(), file, meta.len()))
}

/// The Content-Type of a served file, by its extension.
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

impl Site {
    /// The file a request target names, or None when it leaves the served
    /// folders or does not exist. The target is percent-decoded; any part
    /// that is `.`, `..`, hidden (a leading dot) or holds a backslash is
    /// refused, and the canonical path must stay under its folder (no way
    /// out through a symbolic link).
    fn resolve(&self, raw: &str) -> Option<PathBuf> {
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
        let (base, rest) = match (parts.first(), &self.models) {
            (Some(&"models"), Some(m)) => (m, &parts[1..]),
            _ => (&self.root, &parts[..]),
        };
        let mut file = base.clone();
        for p in rest {
            file.push(p);
        }
        if file.is_dir() {
            file.push("index.html");
        }
        let file = file.canonicalize().ok()?;
        (file.starts_with(base) && file.is_file()).then_some(file)
    }
}
