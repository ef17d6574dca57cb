//! Bindings of `core::metrics`.

use ferroquant_core::metrics;
use numpy::PyReadonlyArrayDyn;
use pyo3::prelude::*;

use crate::arrays::slice;
use crate::errors::run;

/// `(sum r^2, sum t^2, sum r*t, sum (r-t)^2, max |r-t|)` of `test` against `reference`, in f64.
#[pyfunction]
fn compare<'py>(
    py: Python<'py>,
    reference: PyReadonlyArrayDyn<'py, f32>,
    test: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<(f64, f64, f64, f64, f64)> {
    let (r, t) = (slice(py, &reference, "reference")?, slice(py, &test, "test")?);
    let s = run(py, || metrics::compare(r, t))?;
    Ok((s.ref_sq, s.test_sq, s.dot, s.diff_sq, s.max_abs_diff))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(compare, m)?)?;
    Ok(())
}
