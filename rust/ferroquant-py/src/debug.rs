//! A deliberately panicking entry, compiled only with the `debug-panic` feature (the test build enables it;
//! release wheels do not have it): it proves that a panic in a kernel becomes `InternalError` and that the
//! no-panic test fails on one.

use pyo3::prelude::*;

use crate::errors::{run, run_long};

/// Panic inside the native runner (`long`: the interruptible one).
#[pyfunction]
#[pyo3(signature = (long=false))]
fn _debug_panic(py: Python<'_>, long: bool) -> PyResult<()> {
    if long {
        run_long(py, |_| -> Result<(), ferroquant_core::QuantError> { panic!("deliberate panic (debug-panic feature)") })
    } else {
        run(py, || -> Result<(), ferroquant_core::QuantError> { panic!("deliberate panic (debug-panic feature)") })
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_debug_panic, m)?)?;
    Ok(())
}
