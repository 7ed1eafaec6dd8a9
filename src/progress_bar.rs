//! Progress bars for the CLI and the demos: on stderr, drawn only when
//! stderr is a terminal (indicatif hides them otherwise, so logs and pipes
//! stay clean), moved by the engine's progress observer
//! ([`Engine::set_progress`](crate::Engine::set_progress)).

use crate::engine::{Engine, OnProgress, Progress};
use crate::error::Result;
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

/// Tokens per segment while a bar is drawn, so that it moves every few
/// seconds on a software adapter (results do not depend on it beyond
/// rounding); without a terminal the engine's setting holds.
const SEGMENT_WITH_BAR: usize = 2048;

/// Runs `f` on `engine` with a progress bar for `what` over `total` tokens
/// on stderr (when it is a terminal), and puts the engine's settings back after.
pub fn with_progress<T>(engine: &mut Engine, what: &str, total: usize, f: impl FnOnce(&mut Engine) -> Result<T>) -> Result<T> {
    let bar = TokenBar::new(what, total);
    let segment = engine.segment_rows_setting();
    if bar.visible() {
        engine.set_segment_rows(SEGMENT_WITH_BAR.min(segment))?;
    }
    engine.set_progress(Some(bar.observer()));
    let result = f(engine);
    engine.set_progress(None);
    engine.set_segment_rows(segment)?;
    bar.finish();
    result
}

/// A bar counting the tokens of one long call; it shows its elapsed time
/// from the start, so a call that has not finished its first segment still
/// shows that it runs.
pub struct TokenBar {
    bar: ProgressBar,
}

impl TokenBar {
    /// A bar for `what` (short: "scoring README.md") over `total` tokens.
    pub fn new(what: &str, total: usize) -> TokenBar {
        let bar = ProgressBar::new(total as u64);
        let style = ProgressStyle::with_template("{spinner} {msg} [{bar:20}] {pos}/{len} tokens, {elapsed}, ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        TokenBar { bar }
    }

    /// Whether the bar is drawn (stderr is a terminal).
    pub fn visible(&self) -> bool {
        !self.bar.is_hidden()
    }

    /// The engine observer that moves this bar (it never cancels).
    pub fn observer(&self) -> OnProgress {
        let bar = self.bar.clone();
        Box::new(move |p: Progress| {
            bar.set_length(p.total as u64);
            bar.set_position(p.done as u64);
            true
        })
    }

    /// Removes the bar, so that what is printed next starts on a clean line.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for TokenBar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
