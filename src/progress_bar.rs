//! Progress bars for the CLI and the demos: on stderr, drawn only when
//! stderr is a terminal (indicatif hides them otherwise, so logs and pipes
//! stay clean), moved by the engine's progress observer
//! ([`Engine::set_progress`](crate::Engine::set_progress)).

use crate::engine::{OnProgress, Progress};
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

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
