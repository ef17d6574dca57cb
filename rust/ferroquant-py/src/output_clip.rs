//! Binding of `core::output_clip`: the output error of each candidate activation grid, through one layer.
//! Ctrl-C interrupts it.

use ferroquant_core::output_clip::{self as core_output_clip, Patches};
use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArray3, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::errors::{raise, run_long};
use crate::groupwise::slice2;

/// `L_k` (float64 `[k]`) for patches `x` `[n, groups, p]` counted with `weights` `[n]`, weight `w` `[c_out, p]`
/// and candidate grids `scales` / `zero_points` `[k]` of `bits` signed codes.
#[pyfunction(name = "output_clip_errors")]
fn output_clip_errors_py<'py>(
    py: Python<'py>,
    x: PyReadonlyArray3<'py, f32>,
    w: PyReadonlyArray2<'py, f32>,
    scales: PyReadonlyArray1<'py, f32>,
    zero_points: PyReadonlyArray1<'py, i32>,
    bits: u32,
    weights: PyReadonlyArray1<'py, f64>,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let layout = |what: &str| raise(py, "LayoutError", format!("{what} must be C-contiguous"));
    let xs = x.as_slice().map_err(|_| layout("x"))?;
    let shape = x.shape().to_vec();
    let (ws, c_out, p) = slice2(py, &w, "w")?;
    if shape[2] != p {
        return Err(raise(py, "ShapeError", format!("patches of {} inputs do not fit a weight [c_out, {p}]", shape[2])));
    }
    let (ss, zs) = (scales.as_slice().map_err(|_| layout("scales"))?, zero_points.as_slice().map_err(|_| layout("zero_points"))?);
    let om = weights.as_slice().map_err(|_| layout("weights"))?;
    let l = Patches { x: xs, n: shape[0], groups: shape[1], p, w: ws, c_out, weights: om };
    let losses = run_long(py, |stop| core_output_clip::output_clip_errors(&l, ss, zs, bits, stop))?;
    Ok(PyArray1::from_vec(py, losses))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(output_clip_errors_py, m)?)?;
    Ok(())
}
