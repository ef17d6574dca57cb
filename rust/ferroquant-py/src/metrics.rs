//! Bindings of `core::metrics`.

use ferroquant_core::metrics;
use numpy::PyReadonlyArrayDyn;
use pyo3::prelude::*;

use crate::arrays::slice;
use crate::errors::run;
use crate::types::build;

/// `Comparison` of `test` against `reference`: the f64 sums `sum r^2, sum t^2, sum r*t, sum (r-t)^2` and
/// `max |r-t|`.
#[pyfunction]
fn compare<'py>(
    py: Python<'py>,
    reference: PyReadonlyArrayDyn<'py, f32>,
    test: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<Bound<'py, PyAny>> {
    let (r, t) = (slice(py, &reference, "reference")?, slice(py, &test, "test")?);
    let s = run(py, || metrics::compare(r, t))?;
    build!(py, "Comparison" {
        ref_sq: s.ref_sq, test_sq: s.test_sq, dot: s.dot, diff_sq: s.diff_sq, max_abs_diff: s.max_abs_diff,
        size: r.len(),
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(compare, m)?)?;
    Ok(())
}
