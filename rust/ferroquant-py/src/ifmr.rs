//! Bindings of `core::ifmr`: the search on raw data, and on a histogram.

use ferroquant_core::ifmr::{self, init::counts_from_i64, Bound as Searched, IfmrOptions, IfmrResult};
use numpy::{PyReadonlyArray1, PyReadonlyArrayDyn};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::arrays::slice;
use crate::errors::run;

/// Histogram counts as they come from Python (`np.histogram` gives int64).
#[derive(FromPyObject)]
enum Counts<'py> {
    U64(PyReadonlyArray1<'py, u64>),
    I64(PyReadonlyArray1<'py, i64>),
}

fn result_dict<'py>(py: Python<'py>, r: &IfmrResult, o: &IfmrOptions) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let bound = match r.bound {
        Searched::Max => "max",
        Searched::Min => "min",
        Searched::Symmetric => "symmetric",
        Searched::Both => "both",
    };
    d.set_item("scale", r.scale)?;
    d.set_item("zero_point", r.zero_point)?;
    d.set_item("clip_min", r.clip_min)?;
    d.set_item("clip_max", r.clip_max)?;
    d.set_item("max_init", r.max_init)?;
    d.set_item("min_init", r.min_init)?;
    d.set_item("bound", bound)?;
    d.set_item("ratio", r.ratio)?;
    d.set_item("index", r.index)?;
    d.set_item("ratio_min", r.ratio_min)?;
    d.set_item("index_min", r.index_min)?;
    d.set_item("extended", r.extended())?;
    d.set_item("extension", r.extension)?;
    d.set_item("candidates", r.candidates)?;
    d.set_item("window", o.count())?;
    d.set_item("loss", r.loss)?;
    d.set_item("search_extend", o.search_extend)?;
    d.set_item("search_2d", o.search_2d)?;
    Ok(d)
}

#[allow(clippy::too_many_arguments)]
fn options(
    bits: u32,
    symmetric: bool,
    max_percentile: f64,
    min_percentile: f64,
    search_start: f64,
    search_end: f64,
    search_step: f64,
    search_extend: bool,
    search_2d: bool,
) -> IfmrOptions {
    IfmrOptions {
        bits,
        symmetric,
        max_percentile,
        min_percentile,
        search_start,
        search_end,
        search_step,
        search_extend,
        search_2d,
    }
}

/// IFMR on the raw data (flattened): exact percentiles, then the clip search. Returns a dict.
#[pyfunction(name = "ifmr")]
#[pyo3(signature = (x, bits=8, symmetric=false, max_percentile=0.999999, min_percentile=0.999999,
    search_start=0.7, search_end=1.3, search_step=0.01, search_extend=true, search_2d=false))]
#[allow(clippy::too_many_arguments)]
fn ifmr_py<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    bits: u32,
    symmetric: bool,
    max_percentile: f64,
    min_percentile: f64,
    search_start: f64,
    search_end: f64,
    search_step: f64,
    search_extend: bool,
    search_2d: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let xs = slice(py, &x, "x")?;
    let o = options(bits, symmetric, max_percentile, min_percentile, search_start, search_end, search_step,
        search_extend, search_2d);
    let r = run(py, || ifmr::ifmr(xs, &o))?;
    result_dict(py, &r, &o)
}

/// IFMR from a histogram (`counts` over equal bins of `[lo, hi]`): percentiles from the cumulative counts;
/// losses on `x` when given, else on the bin centres weighted by the counts. Returns a dict.
#[pyfunction(name = "ifmr_histogram")]
#[pyo3(signature = (counts, lo, hi, x=None, bits=8, symmetric=false, max_percentile=0.999999,
    min_percentile=0.999999, search_start=0.7, search_end=1.3, search_step=0.01, search_extend=true,
    search_2d=false))]
#[allow(clippy::too_many_arguments)]
fn ifmr_histogram_py<'py>(
    py: Python<'py>,
    counts: Counts<'py>,
    lo: f32,
    hi: f32,
    x: Option<PyReadonlyArrayDyn<'py, f32>>,
    bits: u32,
    symmetric: bool,
    max_percentile: f64,
    min_percentile: f64,
    search_start: f64,
    search_end: f64,
    search_step: f64,
    search_extend: bool,
    search_2d: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let xs = match &x {
        Some(a) => Some(slice(py, a, "x")?),
        None => None,
    };
    let o = options(bits, symmetric, max_percentile, min_percentile, search_start, search_end, search_step,
        search_extend, search_2d);
    let r = match &counts {
        Counts::U64(c) => {
            let cs = c.as_slice()?;
            run(py, || ifmr::ifmr_histogram(cs, lo, hi, xs, &o))?
        }
        Counts::I64(c) => {
            let cs = c.as_slice()?;
            run(py, || ifmr::ifmr_histogram(&counts_from_i64(cs)?, lo, hi, xs, &o))?
        }
    };
    result_dict(py, &r, &o)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(ifmr_py, m)?)?;
    m.add_function(wrap_pyfunction!(ifmr_histogram_py, m)?)?;
    Ok(())
}
