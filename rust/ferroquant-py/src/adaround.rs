//! Binding of `core::adaround`: learned rounding of one layer's weight on its grid, from the Gram matrix of
//! its input patches. Ctrl-C interrupts it.

use ferroquant_core::adaround::{self as core_adaround, AdaRoundOptions, Layer};
use ferroquant_core::Scheme;
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArray3, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::errors::{raise, run, run_long};
use crate::groupwise::slice2;
use crate::types::build;

/// An `AdaRoundOptions`, read field by field.
#[derive(FromPyObject)]
pub struct AdaRoundArg {
    #[pyo3(attribute)]
    iterations: usize,
    #[pyo3(attribute)]
    reg_weight: f64,
    #[pyo3(attribute)]
    beta_start: f64,
    #[pyo3(attribute)]
    beta_end: f64,
    #[pyo3(attribute)]
    warm_start: f64,
    #[pyo3(attribute)]
    lr: f64,
}

impl From<AdaRoundArg> for AdaRoundOptions {
    fn from(o: AdaRoundArg) -> Self {
        AdaRoundOptions {
            iterations: o.iterations,
            reg_weight: o.reg_weight,
            beta_start: o.beta_start,
            beta_end: o.beta_end,
            warm_start: o.warm_start,
            lr: o.lr,
        }
    }
}

/// Learned rounding of `w` `[rows, p]` with per-row `scale` and `zero_point` and the Gram `[groups, p, p]`;
/// returns an `AdaRoundResult`.
#[pyfunction(name = "adaround")]
fn adaround_py<'py>(
    py: Python<'py>,
    w: PyReadonlyArray2<'py, f32>,
    scale: PyReadonlyArray1<'py, f32>,
    zero_point: PyReadonlyArray1<'py, i32>,
    gram: PyReadonlyArray3<'py, f64>,
    bits: u32,
    options: AdaRoundArg,
) -> PyResult<Bound<'py, PyAny>> {
    let (ws, rows, p) = slice2(py, &w, "w")?;
    let layout = |what: &str| raise(py, "LayoutError", format!("{what} must be C-contiguous"));
    let (ss, zs) = (scale.as_slice().map_err(|_| layout("scale"))?, zero_point.as_slice().map_err(|_| layout("zero_point"))?);
    let gs = gram.as_slice().map_err(|_| layout("gram"))?;
    let gshape = gram.shape().to_vec();
    if gshape[1..] != [p, p] {
        return Err(raise(py, "ShapeError", format!("gram must be [groups, {p}, {p}] for rows of {p} inputs, got {gshape:?}")));
    }
    let scheme = run(py, || Scheme::new(bits, true))?;
    let layer = Layer { w: ws, rows, scale: ss, zero_point: zs, gram: gs, groups: gshape[0], qmin: scheme.qmin(), qmax: scheme.qmax() };
    let o = AdaRoundOptions::from(options);
    let r = run_long(py, |stop| core_adaround::adaround(&layer, &o, stop))?;
    let codes = PyArray1::from_vec(py, r.codes).reshape([rows, p])?;
    let v = PyArray1::from_vec(py, r.v).reshape([rows, p])?;
    build!(py, "AdaRoundResult" { codes: codes, v: v, loss_nearest: r.loss_nearest, loss: r.loss })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(adaround_py, m)?)?;
    Ok(())
}
