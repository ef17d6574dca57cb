//! Core errors to the Python classes of `ferroquant/errors.py`, one exhaustive match; the guard that turns a
//! Rust panic into `InternalError` so that no `PanicException` ever reaches Python; and the runner of long
//! kernels that Ctrl-C interrupts.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Mutex;
use std::time::Duration;

use ferroquant_core::{QuantError, Stop};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// How often a long kernel's caller checks Python's signal handlers.
const POLL: Duration = Duration::from_millis(50);

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
        // Only returned after a stop request, which `run_long` answers with the signal's own exception.
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

type Caught<R> = std::thread::Result<Result<R, QuantError>>;

fn finish<R>(py: Python<'_>, out: Caught<R>) -> PyResult<R> {
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

/// Run core work with the GIL released, inside the configured pool, turning errors and panics into Python
/// exceptions.
pub fn run<R: Send>(py: Python<'_>, f: impl FnOnce() -> Result<R, QuantError> + Send) -> PyResult<R> {
    let out = py.detach(|| catch_unwind(AssertUnwindSafe(|| crate::pool::install(f))));
    finish(py, out)
}

/// `run` for kernels that can take long (clip searches): the work runs on a helper thread while this one
/// waits, checking Python's signal handlers every `POLL`. When a handler raises (Ctrl-C: KeyboardInterrupt),
/// the work is asked to stop (`Stop`, checked between chunks), and once it has returned the handler's
/// exception is raised.
pub fn run_long<R: Send>(py: Python<'_>, f: impl FnOnce(&Stop) -> Result<R, QuantError> + Send) -> PyResult<R> {
    let stop = Stop::new();
    let (tx, rx) = channel::<Caught<R>>();
    let rx = Mutex::new(rx); // waited on with the GIL released: shared by reference, so it must be Sync
    std::thread::scope(|s| {
        let token = &stop;
        s.spawn(move || {
            let out = catch_unwind(AssertUnwindSafe(|| crate::pool::install(|| f(token))));
            let _ = tx.send(out);
        });
        loop {
            match py.detach(|| rx.lock().map_err(|_| RecvTimeoutError::Disconnected)?.recv_timeout(POLL)) {
                Ok(out) => return finish(py, out),
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = py.check_signals() {
                        stop.request();
                        py.detach(|| drop(rx.lock().map(|r| r.recv().is_ok())));
                        return Err(e);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(raise(py, "InternalError", "a native kernel's thread ended without a result".into()))
                }
            }
        }
    })
}
