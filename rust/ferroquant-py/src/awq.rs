//! Bindings of `core::awq`, `core::channel_stats` and `core::smooth`: the activation-aware searches.

use ferroquant_core::channel_stats::{self, StatsMut};
use ferroquant_core::groupwise::MatShape;
use ferroquant_core::awq as core_awq;
use ferroquant_core::smooth;
use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray1};
use pyo3::prelude::*;

use crate::errors::{raise, run};
use crate::groupwise::{quant_object, slice2, ClipArg, PyGroupQuant, SpecArg};

/// An alpha grid search (AWQ's scales, SmoothQuant's balancing): the per-input-channel scales of the best alpha,
/// and every alpha tried with its loss.
#[pyclass(frozen, get_all, name = "ScaleSearch", module = "ferroquant._native")]
pub struct PyScaleSearch {
    pub scales: Py<PyArray1<f32>>,
    pub alpha: f64,
    pub alphas: Py<PyArray1<f64>>,
    pub losses: Py<PyArray1<f64>>,
}

type Found = (Vec<f32>, f64, Vec<f64>, Vec<f64>);

fn scale_search(py: Python<'_>, (scales, alpha, alphas, losses): Found) -> PyResult<Py<PyScaleSearch>> {
    let (scales, alphas) = (PyArray1::from_vec(py, scales).unbind(), PyArray1::from_vec(py, alphas).unbind());
    Py::new(py, PyScaleSearch { scales, alpha, alphas, losses: PyArray1::from_vec(py, losses).unbind() })
}

/// What AWQ returns.
#[pyclass(frozen, get_all, name = "AwqOutput", module = "ferroquant._native")]
pub struct PyAwqOutput {
    pub search: Py<PyScaleSearch>,
    pub quant: Py<PyGroupQuant>,
}

/// AWQ of `w` `[K, N]` with calibration rows `x` `[R, K]`.
#[pyfunction(name = "awq")]
#[pyo3(signature = (w, x, spec, n_grid=20, clip=None))]
fn awq_py<'py>(
    py: Python<'py>,
    w: PyReadonlyArray2<'py, f32>,
    x: PyReadonlyArray2<'py, f32>,
    spec: SpecArg,
    n_grid: usize,
    clip: Option<ClipArg>,
) -> PyResult<PyAwqOutput> {
    let (ws, k, n) = slice2(py, &w, "w")?;
    let (xs, _, xk) = slice2(py, &x, "x")?;
    if xk != k {
        return Err(raise(py, "ShapeError", format!("x rows must hold K={k} values (the weight's rows), got {xk}")));
    }
    let s = MatShape { k, n };
    let clip = clip.map(|c| c.search());
    let (r, groups) = run(py, || {
        let spec = spec.spec()?;
        Ok((core_awq::awq(ws, s, xs, &core_awq::AwqOptions { spec, n_grid, clip })?, spec.groups(k)))
    })?;
    Ok(PyAwqOutput {
        search: scale_search(py, (r.scales, r.alpha, r.alphas, r.losses))?,
        quant: Py::new(py, quant_object(py, r.quant, s, groups)?)?,
    })
}

/// Running statistics `(min, max, abs_sum)` as Python hands them in: a tuple of three arrays, updated in place.
#[derive(FromPyObject)]
struct Stats<'py>(PyReadwriteArray1<'py, f32>, PyReadwriteArray1<'py, f32>, PyReadwriteArray1<'py, f64>);

/// Another stream's statistics, read only.
#[derive(FromPyObject)]
struct StatsRef<'py>(PyReadonlyArray1<'py, f32>, PyReadonlyArray1<'py, f32>, PyReadonlyArray1<'py, f64>);

impl<'py> Stats<'py> {
    /// The statistics as mutable slices (C-contiguous, else a LayoutError).
    fn slices(&mut self, py: Python<'py>) -> PyResult<StatsMut<'_>> {
        let lay = |_| raise(py, "LayoutError", "statistics must be C-contiguous".into());
        Ok(StatsMut {
            min: self.0.as_slice_mut().map_err(lay)?,
            max: self.1.as_slice_mut().map_err(lay)?,
            abs_sum: self.2.as_slice_mut().map_err(lay)?,
        })
    }
}

/// Fold the batch `x` `[rows, C]` into running per-channel `stats` `(min, max, abs_sum)` in place; returns the
/// rows.
#[pyfunction]
fn channel_stats_update<'py>(py: Python<'py>, mut stats: Stats<'py>, x: PyReadonlyArray2<'py, f32>) -> PyResult<usize> {
    let (xs, _, _) = slice2(py, &x, "x")?;
    let mut st = stats.slices(py)?;
    run(py, || channel_stats::channel_stats_update(&mut st, xs))
}

/// Merge `other` `(min, max, abs_sum)` into `stats` in place.
#[pyfunction]
fn channel_stats_merge<'py>(py: Python<'py>, mut stats: Stats<'py>, other: StatsRef<'py>) -> PyResult<()> {
    let mut st = stats.slices(py)?;
    let (a, b, c) = (other.0.as_slice()?, other.1.as_slice()?, other.2.as_slice()?);
    run(py, || st.merge(a, b, c))
}

/// What the balancing search returns.
#[pyclass(frozen, get_all, name = "SmoothOutput", module = "ferroquant._native")]
pub struct PySmoothOutput {
    pub search: Py<PyScaleSearch>,
    pub loss_unbalanced: f64,
}

/// SmoothQuant balancing search: `act_absmax` `[K]`, `w` `[K, N]`, `x` `[R, K]`, a grid of alphas; `bits` for
/// the activations, `w_bits` for the weights (`bits` when None).
#[pyfunction]
#[pyo3(signature = (act_absmax, w, x, alphas, bits=8, w_bits=None))]
fn smooth_search<'py>(
    py: Python<'py>,
    act_absmax: PyReadonlyArray1<'py, f32>,
    w: PyReadonlyArray2<'py, f32>,
    x: PyReadonlyArray2<'py, f32>,
    alphas: Vec<f64>,
    bits: u32,
    w_bits: Option<u32>,
) -> PyResult<PySmoothOutput> {
    let a = act_absmax.as_slice()?;
    let (ws, _, n) = slice2(py, &w, "w")?;
    let (xs, _, _) = slice2(py, &x, "x")?;
    let r = run(py, || smooth::smooth_search(a, ws, n, xs, &alphas, bits, w_bits.unwrap_or(bits)))?;
    let search = scale_search(py, (r.scales, r.alpha, r.alphas, r.losses))?;
    Ok(PySmoothOutput { search, loss_unbalanced: r.loss_unbalanced })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyScaleSearch>()?;
    m.add_class::<PyAwqOutput>()?;
    m.add_class::<PySmoothOutput>()?;
    m.add_function(wrap_pyfunction!(awq_py, m)?)?;
    m.add_function(wrap_pyfunction!(channel_stats_update, m)?)?;
    m.add_function(wrap_pyfunction!(channel_stats_merge, m)?)?;
    m.add_function(wrap_pyfunction!(smooth_search, m)?)?;
    Ok(())
}
