//! Core errors to the Python classes of `ferroquant/errors.py`, one exhaustive match; and the guard that
//! turns a Rust panic into `InternalError` so that no `PanicException` ever reaches Python.

use std::panic::{catch_unwind, AssertUnwindSafe};

use ferroquant_core::QuantError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

fn class_name(e: &QuantError) -> &'static str {
    match e {
        QuantError::NonFinite { .. } => "NonFiniteError",
        QuantError::EmptyInput { .. } => "EmptyInputError",
        QuantError::InvalidBits { .. } => "BitsError",
        QuantError::InvalidAxis { .. } => "AxisError",
        QuantError::ShapeMismatch { .. } => "ShapeError",
        QuantError::InvalidScale { .. } => "ScaleError",
        QuantError::InvalidZeroPoint { .. } => "ZeroPointError",
        QuantError::InvalidParameter { .. } => "ParameterError",
        QuantError::Interrupted => "InternalError",
    }
}

pub fn raise(py: Python<'_>, name: &str, msg: String) -> PyErr {
    let made = py
        .import("ferroquant.errors")
        .and_then(|m| m.getattr(name))
        .and_then(|cls| cls.call1((msg.clone(),)));
    match made {
        Ok(obj) => PyErr::from_value(obj),
        Err(_) => PyRuntimeError::new_err(msg),
    }
}

pub fn to_pyerr(py: Python<'_>, e: QuantError) -> PyErr {
    raise(py, class_name(&e), e.to_string())
}

/// Run core work with the GIL released, inside the configured pool, turning errors and panics into Python
/// exceptions.
pub fn run<R: Send>(py: Python<'_>, f: impl FnOnce() -> Result<R, QuantError> + Send) -> PyResult<R> {
    let out = py.detach(|| catch_unwind(AssertUnwindSafe(|| crate::pool::install(f))));
    match out {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(to_pyerr(py, e)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(raise(py, "InternalError", format!("internal error in a native kernel (please report): {what}")))
        }
    }
}
