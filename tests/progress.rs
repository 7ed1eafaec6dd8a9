//! What a person waiting at a terminal sees: `luna score` draws a progress
//! bar on stderr when it is a terminal (and only then), and `luna generate`
//! keeps its statistics on a line of their own when stdout and stderr go to
//! one place.

mod common;

use common::cli::{assert_ok, luna_command, s, stderr, TempDir};
use common::configs;
use serde_json::json;
use std::process::{Command, Stdio};

/// A small causal LM with a byte tokenizer, and a text of `bytes` bytes.
fn model_and_text(temp: &TempDir, bytes: usize) -> (String, String) {
    let (model, _) = configs::byte_model(&configs::byte_lm(json!({"num_layers": 1})), 4);
    let m = temp.path("m.safetensors");
    model.save(&m).unwrap();
    let text: String = "Progress bars tell a person that work goes on. ".chars().cycle().take(bytes).collect();
    let t = temp.path("doc.txt");
    std::fs::write(&t, text).unwrap();
    (s(&m), s(&t))
}

#[test]
fn score_draws_a_progress_bar_only_on_a_terminal() {
    if !common::has_gpu() || Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: needs a GPU adapter and util-linux `script` for a terminal");
        return;
    }
    let temp = TempDir::new("progress");
    let (m, t) = model_and_text(&temp, 6000);
    // Not a terminal: stderr holds the note, no bar.
    let plain = luna_command().args(["score", "--device", "gpu", "--model", &m, "--text", &t]).output().unwrap();
    assert_ok(&plain, "luna score");
    assert!(!stderr(&plain).contains("tokens,"), "a bar was drawn without a terminal:\n{}", stderr(&plain));
    // A terminal (script's pseudo-terminal): the bar is drawn before the result.
    let luna = env!("CARGO_BIN_EXE_luna");
    let line = format!("{luna} score --device gpu --model {m} --text {t}");
    let tty = Command::new("script").args(["-q", "-e", "-c", &line, "/dev/null"]).env("TERM", "xterm").env_remove("RUST_LOG").stdin(Stdio::null()).output().unwrap();
    let screen = String::from_utf8_lossy(&tty.stdout).replace('\r', "\n");
    assert!(tty.status.success(), "{screen}");
    // (The bar redraws at most 20 times a second, so which segments show depends on speed;
    // tests/causal.rs checks that the engine reports every one.)
    let drawn = screen.find("/6001 tokens").filter(|&at| screen[..at].contains("scoring doc.txt ["));
    let result = screen.find("bits per byte").expect("the result line");
    assert!(drawn.is_some_and(|at| at < result), "no bar before the result on the terminal:\n{screen}");
}

#[test]
fn generate_statistics_start_on_their_own_line() {
    let temp = TempDir::new("generate-lines");
    let (m, _) = model_and_text(&temp, 10);
    let both = std::fs::File::create(temp.path("both.txt")).unwrap();
    let status = luna_command()
        .args(["generate", "--device", "cpu", "--model", &m, "--prompt", "Luna", "--max-tokens", "12", "--seed", "3"])
        .stdout(both.try_clone().unwrap())
        .stderr(both)
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(temp.path("both.txt")).unwrap();
    let stats = text.lines().find(|l| l.contains("tokens/s")).unwrap_or_else(|| panic!("no statistics:\n{text}"));
    assert!(stats.starts_with("cpu reference: prompt"), "the statistics share a line with the text:\n{text}");
    // Alone on stdout, the text is exactly what was generated: no line end added.
    let o = luna_command().args(["generate", "--device", "cpu", "--model", &m, "--prompt", "Luna", "--max-tokens", "12", "--seed", "3"]).output().unwrap();
    assert_ok(&o, "luna generate");
    assert!(text.starts_with(&*String::from_utf8_lossy(&o.stdout)), "{text:?} vs {:?}", String::from_utf8_lossy(&o.stdout));
}
