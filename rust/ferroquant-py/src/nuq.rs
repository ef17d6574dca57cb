//! Bindings of `core::nuq`.

use ferroquant_core::nuq;
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn};
use pyo3::prelude::*;

use crate::arrays::{layout, shape_of, slice, zeros};
use crate::errors::run;

type NuqOut<'py> = (
    Bound<'py, PyArray1<i32>>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArrayDyn<i8>>,
    Bound<'py, PyArrayDyn<f32>>,
    f64,
    usize,
);

/// NUQ: (levels, scale, codes, fake-quantized weights, mse, iteration of the best round).
#[pyfunction(name = "nuq")]
#[pyo3(signature = (w, axis=Some(0), num_steps=32, num_of_iteration=1))]
fn nuq_py<'py>(
    py: Python<'py>,
    w: PyReadonlyArrayDyn<'py, f32>,
    axis: Option<isize>,
    num_steps: usize,
    num_of_iteration: usize,
) -> PyResult<NuqOut<'py>> {
    let (ws, shape) = (slice(py, &w, "w")?, shape_of(&w));
    let codes = zeros::<i8>(py, &shape);
    let fake = zeros::<f32>(py, &shape);
    let r = {
        let (mut cw, mut fw) = (codes.readwrite(), fake.readwrite());
        let (cs, fs) = (cw.as_slice_mut()?, fw.as_slice_mut()?);
        run(py, || nuq::nuq(ws, &layout(&shape, axis)?, num_steps, num_of_iteration, cs, fs))?
    };
    Ok((PyArray1::from_vec(py, r.levels), PyArray1::from_vec(py, r.scales), codes, fake, r.mse, r.iteration))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(nuq_py, m)?)?;
    Ok(())
}
