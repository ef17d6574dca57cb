//! Bindings of `core::awq`, `core::channel_stats` and `core::smooth`: the activation-aware searches.

use ferroquant_core::channel_stats::{self, StatsMut};
use ferroquant_core::groupwise::{ClipSearch, GroupSpec, MatShape};
use ferroquant_core::awq as core_awq;
use ferroquant_core::smooth;
use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray1};
use pyo3::prelude::*;

use crate::errors::{raise, run};
use crate::groupwise::{quant_object, slice2, PyGroupQuant};

/// What AWQ returns.
#[pyclass(frozen, get_all, name = "AwqOutput", module = "ferroquant._native")]
pub struct PyAwqOutput {
    pub scales: Py<PyArray1<f32>>,
    pub alpha: f64,
    pub alphas: Py<PyArray1<f64>>,
    pub losses: Py<PyArray1<f64>>,
    pub quant: Py<PyGroupQuant>,
}

/// AWQ of `w` `[K, N]` with calibration rows `x` `[R, K]`.
#[pyfunction(name = "awq")]
#[pyo3(signature = (w, x, bits=4, group_size=128, symmetric=true, scale_f16=false, n_grid=20, clip_grid=Some(20),
    clip_max_shrink=0.5),
    text_signature = "(w, x, bits=4, group_size=128, symmetric=True, scale_f16=False, n_grid=20, clip_grid=20, \
    clip_max_shrink=0.5)")]
#[allow(clippy::too_many_arguments)]
fn awq_py<'py>(
    py: Python<'py>,
    w: PyReadonlyArray2<'py, f32>,
    x: PyReadonlyArray2<'py, f32>,
    bits: u32,
    group_size: usize,
    symmetric: bool,
    scale_f16: bool,
    n_grid: usize,
    clip_grid: Option<usize>,
    clip_max_shrink: f64,
) -> PyResult<PyAwqOutput> {
    let (ws, k, n) = slice2(py, &w, "w")?;
    let (xs, _, xk) = slice2(py, &x, "x")?;
    if xk != k {
        return Err(raise(py, "ShapeError", format!("x rows must hold K={k} values (the weight's rows), got {xk}")));
    }
    let s = MatShape { k, n };
    let clip = clip_grid.map(|n_grid| ClipSearch { n_grid, max_shrink: clip_max_shrink });
    let (r, groups) = run(py, || {
        let spec = GroupSpec::new(bits, group_size, symmetric, scale_f16)?;
        Ok((core_awq::awq(ws, s, xs, &core_awq::AwqOptions { spec, n_grid, clip })?, spec.groups(k)))
    })?;
    Ok(PyAwqOutput {
        scales: PyArray1::from_vec(py, r.scales).unbind(),
        alpha: r.alpha,
        alphas: PyArray1::from_vec(py, r.alphas).unbind(),
        losses: PyArray1::from_vec(py, r.losses).unbind(),
        quant: Py::new(py, quant_object(py, r.quant, s, groups)?)?,
    })
}

/// Fold the batch `x` `[rows, C]` into running per-channel `(min, max, abs_sum)` in place; returns the rows.
#[pyfunction]
fn channel_stats_update<'py>(
    py: Python<'py>,
    mut min: PyReadwriteArray1<'py, f32>,
    mut max: PyReadwriteArray1<'py, f32>,
    mut abs_sum: PyReadwriteArray1<'py, f64>,
    x: PyReadonlyArray2<'py, f32>,
) -> PyResult<usize> {
    let (xs, _, _) = slice2(py, &x, "x")?;
    let lay = |py: Python<'_>| raise(py, "LayoutError", "statistics must be C-contiguous".into());
    let mut st = StatsMut {
        min: min.as_slice_mut().map_err(|_| lay(py))?,
        max: max.as_slice_mut().map_err(|_| lay(py))?,
        abs_sum: abs_sum.as_slice_mut().map_err(|_| lay(py))?,
    };
    run(py, || channel_stats::channel_stats_update(&mut st, xs))
}

/// Merge `(min2, max2, abs_sum2)` into `(min, max, abs_sum)` in place.
#[pyfunction]
fn channel_stats_merge<'py>(
    py: Python<'py>,
    mut min: PyReadwriteArray1<'py, f32>,
    mut max: PyReadwriteArray1<'py, f32>,
    mut abs_sum: PyReadwriteArray1<'py, f64>,
    min2: PyReadonlyArray1<'py, f32>,
    max2: PyReadonlyArray1<'py, f32>,
    abs_sum2: PyReadonlyArray1<'py, f64>,
) -> PyResult<()> {
    let lay = |py: Python<'_>| raise(py, "LayoutError", "statistics must be C-contiguous".into());
    let mut st = StatsMut {
        min: min.as_slice_mut().map_err(|_| lay(py))?,
        max: max.as_slice_mut().map_err(|_| lay(py))?,
        abs_sum: abs_sum.as_slice_mut().map_err(|_| lay(py))?,
    };
    let (a, b, c) = (min2.as_slice()?, max2.as_slice()?, abs_sum2.as_slice()?);
    run(py, || st.merge(a, b, c))
}

/// What the balancing search returns.
#[pyclass(frozen, get_all, name = "SmoothOutput", module = "ferroquant._native")]
pub struct PySmoothOutput {
    pub scales: Py<PyArray1<f32>>,
    pub alpha: f64,
    pub alphas: Py<PyArray1<f64>>,
    pub losses: Py<PyArray1<f64>>,
    pub loss_unbalanced: f64,
}

/// SmoothQuant balancing search: `act_absmax` `[K]`, `w` `[K, N]`, `x` `[R, K]`, a grid of alphas.
#[pyfunction]
#[pyo3(signature = (act_absmax, w, x, alphas, bits=8))]
fn smooth_search<'py>(
    py: Python<'py>,
    act_absmax: PyReadonlyArray1<'py, f32>,
    w: PyReadonlyArray2<'py, f32>,
    x: PyReadonlyArray2<'py, f32>,
    alphas: Vec<f64>,
    bits: u32,
) -> PyResult<PySmoothOutput> {
    let a = act_absmax.as_slice()?;
    let (ws, _, n) = slice2(py, &w, "w")?;
    let (xs, _, _) = slice2(py, &x, "x")?;
    let r = run(py, || smooth::smooth_search(a, ws, n, xs, &alphas, bits))?;
    Ok(PySmoothOutput {
        scales: PyArray1::from_vec(py, r.scales).unbind(),
        alpha: r.alpha,
        alphas: PyArray1::from_vec(py, r.alphas).unbind(),
        losses: PyArray1::from_vec(py, r.losses).unbind(),
        loss_unbalanced: r.loss_unbalanced,
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyAwqOutput>()?;
    m.add_class::<PySmoothOutput>()?;
    m.add_function(wrap_pyfunction!(awq_py, m)?)?;
    m.add_function(wrap_pyfunction!(channel_stats_update, m)?)?;
    m.add_function(wrap_pyfunction!(channel_stats_merge, m)?)?;
    m.add_function(wrap_pyfunction!(smooth_search, m)?)?;
    Ok(())
}
