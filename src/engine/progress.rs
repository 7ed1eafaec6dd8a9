//! Progress of the long calls, and cancelling them: an observer set on the
//! engine ([`Engine::set_progress`]) hears after each unit of work (a
//! segment of a long sequence, a group of sequences) how many of the call's
//! tokens are done, and may stop the call there. A stopped call ends with
//! [`LunaError::Cancelled`] and leaves the engine usable, like any failure.

use crate::engine::context::Engine;
use crate::error::{LunaError, Result};

/// How far a call has come: `done` of its `total` token rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

/// A progress observer: returns `false` to cancel the call. (Natively it must
/// be `Send`, like the engine; in the browser it may hold JavaScript values.)
#[cfg(not(target_arch = "wasm32"))]
pub type OnProgress = Box<dyn FnMut(Progress) -> bool + Send>;
/// A progress observer: returns `false` to cancel the call.
#[cfg(target_arch = "wasm32")]
pub type OnProgress = Box<dyn FnMut(Progress) -> bool>;

impl Engine {
    /// Sets (or with `None` removes) the observer that hears the progress of
    /// `score`, `causal_forward`, `encode`, `prefill` and the pack weights, and
    /// may cancel them. Calls that fit one submission report once, at their end.
    pub fn set_progress(&mut self, observer: Option<OnProgress>) {
        self.progress = observer;
    }

    /// Tells the observer that `done` of `total` rows are done; a
    /// [`LunaError::Cancelled`] when it asks to stop.
    pub(crate) fn report(&mut self, done: usize, total: usize) -> Result<()> {
        let go_on = self.progress.as_mut().is_none_or(|observe| observe(Progress { done, total }));
        if go_on { Ok(()) } else { Err(LunaError::Cancelled(format!("after {done} of {total} tokens"))) }
    }
}
