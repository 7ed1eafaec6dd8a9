//! Small helpers between Rust values and JavaScript ones: plain objects,
//! numbers and arrays, the clock, and the options objects the API takes.

use super::errors::input;
use js_sys::{Array, Float32Array, Function, Object, Reflect};
use wasm_bindgen::{JsCast, JsValue};

/// A plain object from key/value pairs.
pub(super) fn obj(pairs: &[(&str, JsValue)]) -> JsValue {
    let o = Object::new();
    for (k, v) in pairs {
        let _ = Reflect::set(&o, &(*k).into(), v);
    }
    o.into()
}

/// A shape as an array of numbers.
pub(super) fn shape(dims: &[usize]) -> JsValue {
    dims.iter().map(|&d| JsValue::from_f64(d as f64)).collect::<Array>().into()
}

pub(super) fn f32s(v: &[f32]) -> JsValue {
    Float32Array::from(v).into()
}

pub(super) fn num(v: f64) -> JsValue {
    JsValue::from_f64(v)
}

/// `performance.now()` in milliseconds (on a window or a worker).
pub(super) fn now_ms() -> f64 {
    let perf = Reflect::get(&js_sys::global(), &"performance".into()).unwrap_or(JsValue::UNDEFINED);
    if let Ok(f) = Reflect::get(&perf, &"now".into()).and_then(|f| f.dyn_into::<Function>()) {
        if let Some(t) = f.call0(&perf).ok().and_then(|v| v.as_f64()) {
            return t;
        }
    }
    js_sys::Date::now()
}

/// A number option of an options object: `None` when absent; an error when not a finite number.
pub(super) fn opt_num(options: &JsValue, key: &str) -> Result<Option<f64>, JsValue> {
    if options.is_undefined() || options.is_null() {
        return Ok(None);
    }
    let v = Reflect::get(options, &key.into()).unwrap_or(JsValue::UNDEFINED);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    match v.as_f64() {
        Some(x) if x.is_finite() => Ok(Some(x)),
        _ => Err(input(format!("option {key} must be a finite number"))),
    }
}

/// A whole-number option from `min` to `max`, `default` when absent.
pub(super) fn opt_count(options: &JsValue, key: &str, default: usize, min: usize, max: usize) -> Result<usize, JsValue> {
    match opt_num(options, key)? {
        None => Ok(default),
        Some(x) if x.fract() == 0.0 && x >= min as f64 && x <= max as f64 => Ok(x as usize),
        Some(x) => Err(input(format!("option {key} = {x} must be a whole number from {min} to {max}"))),
    }
}
