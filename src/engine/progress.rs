//! Progress of the long calls, and cancelling them: an observer set on the
//! engine (`Engine::set_progress`, in `engine::context`) hears after each unit of work (a
//! segment of a long sequence, a group of sequences) how many of the call's
//! tokens are done, and may stop the call there. A stopped call ends with
//! `LunaError::Cancelled` and leaves the engine usable, like any failure.

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
