//! Failures as JavaScript sees them: an `Error` named `LunaError` whose `kind`
//! says which kind of failure it is, and the one-call-at-a-time rule ("busy").

use crate::{Engine, LunaError};
use js_sys::Reflect;
use std::cell::{RefCell, RefMut};
use std::rc::Rc;
use wasm_bindgen::JsValue;

/// The `kind` of a [`LunaError`] as JavaScript sees it.
pub fn kind(e: &LunaError) -> &'static str {
    match e {
        LunaError::NoAdapter(_) | LunaError::AdapterNotFound { .. } => "no-adapter",
        LunaError::Device(_) => "device",
        LunaError::OutOfMemory(_) => "out-of-memory",
        LunaError::Model(_) => "model",
        LunaError::Config(_) => "config",
        LunaError::Input(_) => "input",
        LunaError::TooLarge { .. } => "too-large",
        LunaError::NotFinite { .. } => "not-finite",
        LunaError::Cancelled(_) => "aborted",
        LunaError::Unsupported(_) => "unsupported",
        LunaError::Io { .. } => "io",
    }
}

/// An `Error` named `LunaError` with `kind` set.
pub(super) fn error(kind: &str, message: &str) -> JsValue {
    let e = js_sys::Error::new(message);
    e.set_name("LunaError");
    let _ = Reflect::set(&e, &"kind".into(), &kind.into());
    e.into()
}

/// The JavaScript `Error` of a [`LunaError`].
pub(super) fn js(e: LunaError) -> JsValue {
    error(kind(&e), &e.to_string())
}

/// So that `?` turns a [`LunaError`] into its JavaScript `Error` (the generation
/// loop's errors need it).
impl From<LunaError> for JsValue {
    fn from(e: LunaError) -> JsValue {
        js(e)
    }
}

/// An error of kind `"input"`.
pub(super) fn input(msg: impl Into<String>) -> JsValue {
    js(LunaError::Input(msg.into()))
}

/// The error of a call made while another runs on the same engine.
pub(super) fn busy() -> JsValue {
    error("busy", "the engine is busy with another call; await each call before making the next")
}

/// The engine for one call, or `"busy"` when another call holds it.
pub(super) fn borrow(engine: &Rc<RefCell<Engine>>) -> Result<RefMut<'_, Engine>, JsValue> {
    engine.try_borrow_mut().map_err(|_| busy())
}
