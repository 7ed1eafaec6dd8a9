//! Running the `luna` binary and checking how it ended; temporary folders for
//! its files, and reading the safetensors files it writes.

use luna_wgpu::tensors;
use safetensors::{Dtype, SafeTensors};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh, empty directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `luna-test-{tag}-{process id}-{count}`: a new one at each call.
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "luna-test-{tag}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// The `luna` binary of this build, with `RUST_LOG` cleared so that log lines
/// do not mix with the `error:` lines the tests read.
pub fn luna_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_luna"));
    c.env_remove("RUST_LOG");
    c
}

/// Runs `luna` with `args` to the end.
pub fn luna<S: AsRef<OsStr>>(args: &[S]) -> Output {
    luna_command().args(args).output().expect("run luna")
}

/// `luna forward --model M --input I --output O --device D`.
pub fn forward(model: &Path, input: &Path, output: &Path, device: &str) -> Output {
    let args: [&OsStr; 9] = [
        "forward".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--input".as_ref(),
        input.as_os_str(),
        "--output".as_ref(),
        output.as_os_str(),
        "--device".as_ref(),
        device.as_ref(),
    ];
    luna(&args)
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The run succeeded, and nothing panicked on the way.
pub fn assert_ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed ({:?}):\n{}", o.status, stderr(o));
    assert!(!stderr(o).contains("panicked"), "{what} panicked:\n{}", stderr(o));
}

/// The run failed cleanly: exit code 1, no panic, and a last `error:` line
/// holding every phrase. Returns that line.
pub fn assert_fails(o: &Output, phrases: &[&str]) -> String {
    failed(o, false, phrases)
}

/// As [`assert_fails`], and stderr starts with an `error:` line: the run
/// failed before printing anything else.
pub fn assert_fails_first(o: &Output, phrases: &[&str]) -> String {
    failed(o, true, phrases)
}

fn failed(o: &Output, first: bool, phrases: &[&str]) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "expected a failure, got success:\n{err}");
    assert_eq!(o.status.code(), Some(1), "exit status {:?} (a crash?):\n{err}", o.status);
    assert!(!err.contains("panicked"), "panicked:\n{err}");
    if first {
        assert!(err.starts_with("error: "), "stderr does not start with \"error:\":\n{err}");
    }
    let line = err.lines().rev().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line:\n{err}"));
    for p in phrases {
        assert!(line.contains(p), "error line {line:?} lacks {p:?}");
    }
    eprintln!("ok: {line}");
    line.to_string()
}

/// A tensor of a safetensors file as f64, with its shape.
pub fn read(path: &Path, key: &str) -> (Vec<f64>, Vec<usize>) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor(key).unwrap_or_else(|_| panic!("{}: no tensor {key}", path.display()));
    let data = match v.dtype() {
        Dtype::F32 => v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        Dtype::F64 => v.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::I64 => v.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        other => panic!("{key}: {other:?}"),
    };
    (data, v.shape().to_vec())
}

/// A tensor of counts (such as `lengths`) of a safetensors file.
pub fn read_counts(path: &Path, key: &str) -> Vec<usize> {
    read(path, key).0.iter().map(|&v| v as usize).collect()
}

/// Writes a token file `[B, n]` for `luna forward` and `luna score --tokens`.
pub fn write_tokens(path: &Path, tokens: &[i64], shape: [usize; 2]) {
    std::fs::write(path, tensors::serialize_tokens(tokens, shape).unwrap()).unwrap();
}
