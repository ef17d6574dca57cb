//! Bindings of `core::ifmr`: the search on raw data, and on a histogram. Both take one `IfmrOptions` and
//! return an `IfmrResult`; Ctrl-C interrupts them.

use ferroquant_core::ifmr::{self, Bound as Searched, IfmrOptions, IfmrResult};
use numpy::{PyReadonlyArrayDyn, PyReadwriteArray1};
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::arrays::slice;
use crate::errors::{raise, run, run_long};
use crate::types::{build, HistArg, OptionsArg};

fn result<'py>(py: Python<'py>, r: &IfmrResult, o: &IfmrOptions) -> PyResult<Bound<'py, PyAny>> {
    let bound = match r.bound {
        Searched::Max => "max",
        Searched::Min => "min",
        Searched::Symmetric => "symmetric",
        Searched::Both => "both",
    };
    build!(py, "IfmrResult" {
        scale: r.scale, zero_point: r.zero_point, clip_min: r.clip_min, clip_max: r.clip_max,
        max_init: r.max_init, min_init: r.min_init, bound: bound, ratio: r.ratio, index: r.index,
        ratio_min: r.ratio_min, index_min: r.index_min, extended: r.extended(), extension: r.extension,
        candidates: r.candidates, window: o.count(), loss: r.loss, search_extend: o.search_extend,
        search_2d: o.search_2d,
    })
}

/// IFMR on the raw data (flattened) and `zeros` more values of 0: exact percentiles, then the clip search.
#[pyfunction(name = "ifmr")]
#[pyo3(signature = (x, options, zeros=0))]
fn ifmr_py<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    options: OptionsArg,
    zeros: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let xs = slice(py, &x, "x")?;
    let o = IfmrOptions::from(options);
    let r = run_long(py, |stop| ifmr::ifmr(xs, zeros, &o, stop))?;
    result(py, &r, &o)
}

/// `ifmr` of each `(xs[i], options[i], zeros[i])` in one call, in parallel across them; the first error
/// (in order) is raised.
#[pyfunction]
fn ifmr_many<'py>(
    py: Python<'py>,
    xs: Vec<PyReadonlyArrayDyn<'py, f32>>,
    options: Vec<OptionsArg>,
    zeros: Vec<usize>,
) -> PyResult<Bound<'py, PyList>> {
    if options.len() != xs.len() || zeros.len() != xs.len() {
        let why = format!("ifmr_many: {} arrays, {} options and {} zero counts", xs.len(), options.len(), zeros.len());
        return Err(raise(py, "ShapeError", why));
    }
    let data = xs.iter().enumerate().map(|(i, x)| slice(py, x, &format!("xs[{i}]"))).collect::<PyResult<Vec<_>>>()?;
    let opts: Vec<IfmrOptions> = options.into_iter().map(IfmrOptions::from).collect();
    let out = run_long(py, |stop| {
        let reqs: Vec<ifmr::Request<'_>> =
            data.iter().zip(&opts).zip(&zeros).map(|((&x, options), &zeros)| ifmr::Request { x, zeros, options }).collect();
        ifmr::ifmr_many(&reqs, stop).into_iter().collect::<Result<Vec<_>, _>>()
    })?;
    PyList::new(py, out.iter().zip(&opts).map(|(r, o)| result(py, r, o)).collect::<PyResult<Vec<_>>>()?)
}

/// Copy the non-zero values of `x` into `buf` from `offset` on (NaN/Inf raise, nothing written); returns
/// `(written, zeros)`.
#[pyfunction]
fn ifmr_store<'py>(
    py: Python<'py>,
    mut buf: PyReadwriteArray1<'py, f32>,
    offset: usize,
    x: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<(usize, usize)> {
    let xs = slice(py, &x, "x")?;
    let out = buf.as_slice_mut().map_err(|_| raise(py, "LayoutError", "buf must be C-contiguous".into()))?;
    let past = || raise(py, "ParameterError", format!("offset {offset} is past the buffer's end"));
    let rest = out.get_mut(offset..).ok_or_else(past)?;
    run(py, || ifmr::store_nonzero(xs, rest))
}

/// IFMR from a histogram: percentiles from the cumulative counts; losses on `x` when given, else on the bin
/// centres weighted by the counts.
#[pyfunction(name = "ifmr_histogram")]
#[pyo3(signature = (hist, x, options))]
fn ifmr_histogram_py<'py>(
    py: Python<'py>,
    hist: HistArg<'py>,
    x: Option<PyReadonlyArrayDyn<'py, f32>>,
    options: OptionsArg,
) -> PyResult<Bound<'py, PyAny>> {
    let xs = match &x {
        Some(a) => Some(slice(py, a, "x")?),
        None => None,
    };
    let o = IfmrOptions::from(options);
    let (c, lo, hi) = (hist.counts(py)?, hist.lo(), hist.hi());
    let r = run_long(py, |stop| ifmr::ifmr_histogram(&c, lo, hi, xs, &o, stop))?;
    result(py, &r, &o)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(ifmr_py, m)?)?;
    m.add_function(wrap_pyfunction!(ifmr_histogram_py, m)?)?;
    m.add_function(wrap_pyfunction!(ifmr_store, m)?)?;
    m.add_function(wrap_pyfunction!(ifmr_many, m)?)?;
    Ok(())
}
