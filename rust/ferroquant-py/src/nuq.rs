//! Bindings of `core::nuq`.

use ferroquant_core::nuq;
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn};
use pyo3::prelude::*;

use crate::arrays::{layout, shape_of, slice, zeros};
use crate::errors::run;
use crate::types::build;

/// NUQ: `NuqResult` (levels, scale, codes, fake-quantized weights, mse, iteration of the best round).
#[pyfunction(name = "nuq")]
#[pyo3(signature = (w, axis=Some(0), num_steps=32, num_of_iteration=1), text_signature = "(w, axis=0, num_steps=32, num_of_iteration=1)")]
fn nuq_py<'py>(
    py: Python<'py>,
    w: PyReadonlyArrayDyn<'py, f32>,
    axis: Option<isize>,
    num_steps: usize,
    num_of_iteration: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let (ws, shape) = (slice(py, &w, "w")?, shape_of(&w));
    let codes = zeros::<i8>(py, &shape);
    let fake = zeros::<f32>(py, &shape);
    let r = {
        let (mut cw, mut fw) = (codes.readwrite(), fake.readwrite());
        let (cs, fs) = (cw.as_slice_mut()?, fw.as_slice_mut()?);
        run(py, || nuq::nuq(ws, &layout(&shape, axis)?, num_steps, num_of_iteration, cs, fs))?
    };
    build!(py, "NuqResult" {
        levels: PyArray1::from_vec(py, r.levels), scale: PyArray1::from_vec(py, r.scales), codes: codes, fake: fake,
        mse: r.mse, iteration: r.iteration, num_steps: num_steps,
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(nuq_py, m)?)?;
    Ok(())
}
