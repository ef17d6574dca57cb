//! Bindings of `core::text`.

use ferroquant_core::text;
use numpy::PyReadonlyArrayDyn;
use pyo3::prelude::*;

use crate::arrays::slice;
use crate::errors::run;

/// `json.dumps(x.tolist())` of a float64 array, flattened: `[a, b, c]`, each value as `repr` writes it.
/// Non-finite values raise.
#[pyfunction]
fn json_floats(py: Python<'_>, x: PyReadonlyArrayDyn<'_, f64>) -> PyResult<String> {
    let v = slice(py, &x, "x")?;
    run(py, || text::json_floats(v))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(json_floats, m)?)?;
    Ok(())
}
