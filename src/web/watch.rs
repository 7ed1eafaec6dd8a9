//! Progress and cancellation of a long call as JavaScript asks for them: the
//! `{ onProgress, signal }` options of `score`. They become the engine's
//! progress observer (`Engine::set_progress`) for the length of one call:
//! `onProgress({ done, total })` hears after each segment, and an aborted
//! `AbortSignal` stops the call at the next segment's end, which then rejects
//! with a `LunaError` of kind `"aborted"` and leaves the engine free.

use super::errors::{error, input, js};
use super::js::{num, obj};
use crate::{Engine, LunaError, OnProgress, Progress};
use js_sys::{Function, Reflect};
use std::cell::RefCell;
use std::rc::Rc;
use wasm_bindgen::{JsCast, JsValue};

/// The `onProgress` and `signal` of a call's options, checked.
pub(super) struct Watch {
    on_progress: Option<Function>,
    signal: Option<JsValue>,
    /// What `onProgress` threw, if it threw: the call rejects with it.
    thrown: Rc<RefCell<Option<JsValue>>>,
}

/// Whether an `AbortSignal` (or anything with an `aborted` property) says aborted.
fn aborted(signal: &JsValue) -> bool {
    Reflect::get(signal, &"aborted".into()).map(|v| v.is_truthy()).unwrap_or(false)
}

impl Watch {
    /// Reads `options.onProgress` (a function) and `options.signal` (an
    /// `AbortSignal`); `options` may be `undefined`. Anything else is an
    /// `"input"` error.
    pub(super) fn from_options(options: &JsValue) -> Result<Watch, JsValue> {
        let none = Watch { on_progress: None, signal: None, thrown: Rc::default() };
        if options.is_undefined() || options.is_null() {
            return Ok(none);
        }
        if !options.is_object() {
            return Err(input("the options must be an object such as { onProgress, signal }"));
        }
        let get = |key: &str| Reflect::get(options, &key.into()).ok().filter(|v| !v.is_undefined() && !v.is_null());
        let on_progress = match get("onProgress") {
            None => None,
            Some(f) => Some(f.dyn_into::<Function>().map_err(|_| input("option onProgress must be a function"))?),
        };
        let signal = match get("signal") {
            None => None,
            Some(s) if s.is_object() && Reflect::has(&s, &"aborted".into()).unwrap_or(false) => Some(s),
            Some(_) => return Err(input("option signal must be an AbortSignal (from new AbortController().signal)")),
        };
        Ok(Watch { on_progress, signal, ..none })
    }

    /// The `"aborted"` error when the signal is already aborted: a call given
    /// an aborted signal does not start.
    pub(super) fn check(&self) -> Result<(), JsValue> {
        match &self.signal {
            Some(s) if aborted(s) => Err(self.aborted_error("before it started")),
            _ => Ok(()),
        }
    }

    /// The engine's observer for this call: reports to `onProgress`, and stops
    /// the call when the signal is aborted (checked before and after the
    /// report, so that `onProgress` may abort it) or `onProgress` throws.
    /// `None` when there is nothing to watch.
    fn observer(&self) -> Option<OnProgress> {
        if self.on_progress.is_none() && self.signal.is_none() {
            return None;
        }
        let (on_progress, signal, thrown) = (self.on_progress.clone(), self.signal.clone(), self.thrown.clone());
        let stop = move || signal.as_ref().is_some_and(aborted);
        Some(Box::new(move |p: Progress| {
            if stop() {
                return false;
            }
            if let Some(f) = &on_progress {
                let event = obj(&[("done", num(p.done as f64)), ("total", num(p.total as f64))]);
                if let Err(e) = f.call1(&JsValue::NULL, &event) {
                    *thrown.borrow_mut() = Some(e);
                    return false;
                }
            }
            !stop()
        }))
    }

    /// Runs `call` on `engine` with this call's observer set, and removes it
    /// after, whatever the outcome. A cancelled call rejects with kind
    /// `"aborted"` (its `cause` the signal's reason), or with what
    /// `onProgress` threw; any other failure with its own kind.
    pub(super) async fn run<T>(&self, engine: &mut Engine, call: impl AsyncFnOnce(&mut Engine) -> crate::Result<T>) -> Result<T, JsValue> {
        self.check()?;
        engine.set_progress(self.observer());
        let result = call(engine).await;
        engine.set_progress(None);
        match result {
            Ok(v) => Ok(v),
            Err(LunaError::Cancelled(when)) => match self.thrown.borrow_mut().take() {
                Some(thrown) => Err(thrown),
                None => Err(self.aborted_error(&when)),
            },
            Err(e) => Err(js(e)),
        }
    }

    /// A `LunaError` of kind `"aborted"` saying when, its `cause` the signal's reason.
    fn aborted_error(&self, when: &str) -> JsValue {
        let e = error("aborted", &format!("the call was aborted by its signal ({when}); the engine is free for the next call"));
        if let Some(s) = &self.signal {
            let _ = Reflect::set(&e, &"cause".into(), &Reflect::get(s, &"reason".into()).unwrap_or(JsValue::UNDEFINED));
        }
        e
    }
}
