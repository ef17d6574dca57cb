//! Bindings of `core::histogram` (streaming histogram, HFMG, baselines). Histograms travel as the `Histogram`
//! dataclass (`counts: uint64[nbins], lo, hi`), so Python calibrators can save, load and merge them; searches
//! return `HfmgSearch` and `Clip`.

use ferroquant_core::histogram::{baselines, hfmg, Histogram};
use ferroquant_core::QuantError;
use numpy::{PyArray1, PyReadonlyArrayDyn};
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::arrays::slice;
use crate::errors::{run, run_long};
use crate::types::{build, histogram, HistArg};

type F64s<'py> = Bound<'py, PyArray1<f64>>;
type Bounds<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>);

fn observe(prev: Option<State>, xs: &[f32], nbins: Option<usize>, drop: bool, zeros: u64) -> Result<Histogram, QuantError> {
    match prev {
        None => Histogram::build_with_zeros(xs, zeros, nbins.unwrap_or(4096), drop),
        Some((c, lo, hi)) => {
            if let Some(n) = nbins.filter(|&n| n != c.len()) {
                return Err(QuantError::ShapeMismatch { what: "counts (nbins)", expected: n, got: c.len() });
            }
            let mut h = Histogram::from_parts(c, lo, hi)?;
            h.observe_with_zeros(xs, zeros, drop)?;
            Ok(h)
        }
    }
}

type State = (Vec<u64>, f32, f32);

fn state(py: Python<'_>, h: &Option<HistArg<'_>>) -> PyResult<Option<State>> {
    h.as_ref().map(|h| Ok((h.counts(py)?, h.lo(), h.hi()))).transpose()
}

/// Add batch `x` (and `zeros` more values of 0) to `hist`; with `hist` None, build one from them over their
/// own range with `nbins` bins (4096 when None). Returns the new `Histogram`.
#[pyfunction]
#[pyo3(signature = (hist, x, nbins=None, drop_nonfinite=false, zeros=0))]
fn histogram_observe<'py>(
    py: Python<'py>,
    hist: Option<HistArg<'py>>,
    x: PyReadonlyArrayDyn<'py, f32>,
    nbins: Option<usize>,
    drop_nonfinite: bool,
    zeros: u64,
) -> PyResult<Bound<'py, PyAny>> {
    let xs = slice(py, &x, "x")?;
    let prev = state(py, &hist)?;
    let h = run(py, || observe(prev, xs, nbins, drop_nonfinite, zeros))?;
    histogram(py, h)
}

/// `histogram_observe` of many (histogram, batch) pairs in one call, in parallel across them; the results, in
/// order, are those of one call each. The first error (in order) is raised.
#[pyfunction]
#[pyo3(signature = (hists, xs, nbins=None, drop_nonfinite=false))]
fn histogram_observe_many<'py>(
    py: Python<'py>,
    hists: Vec<Option<HistArg<'py>>>,
    xs: Vec<PyReadonlyArrayDyn<'py, f32>>,
    nbins: Option<usize>,
    drop_nonfinite: bool,
) -> PyResult<Bound<'py, PyList>> {
    if hists.len() != xs.len() {
        return Err(crate::errors::to_pyerr(
            py,
            QuantError::ShapeMismatch { what: "batches (one per histogram)", expected: hists.len(), got: xs.len() },
        ));
    }
    let slices = xs.iter().map(|x| slice(py, x, "x")).collect::<PyResult<Vec<_>>>()?;
    let states = hists.iter().map(|h| state(py, h)).collect::<PyResult<Vec<_>>>()?;
    let out = run(py, || {
        use rayon::prelude::*;
        let r: Vec<Result<Histogram, QuantError>> = states
            .into_par_iter()
            .zip(slices.par_iter())
            .map(|(prev, xs)| observe(prev, xs, nbins, drop_nonfinite, 0))
            .collect();
        r.into_iter().collect::<Result<Vec<_>, _>>()
    })?;
    PyList::new(py, out.into_iter().map(|h| histogram(py, h)).collect::<PyResult<Vec<_>>>()?)
}

/// Merge two histograms with the count-preserving re-binning.
#[pyfunction]
fn histogram_merge<'py>(py: Python<'py>, a: HistArg<'py>, b: HistArg<'py>) -> PyResult<Bound<'py, PyAny>> {
    let (mut x, y) = (a.histogram(py)?, b.histogram(py)?);
    run(py, || x.merge(&y))?;
    histogram(py, x)
}

/// HFMG candidate truncations `(left, right)` as two int64 arrays.
#[pyfunction]
fn hfmg_candidates<'py>(
    py: Python<'py>,
    hist: HistArg<'py>,
) -> PyResult<Bounds<'py>> {
    let c = hist.counts(py)?;
    let cands = run(py, || Ok(hfmg::candidates(&c)))?;
    let (l, r): (Vec<i64>, Vec<i64>) = cands.iter().map(|&(l, r)| (l as i64, r as i64)).unzip();
    Ok((PyArray1::from_vec(py, l), PyArray1::from_vec(py, r)))
}

/// HFMG loss of every candidate, in candidate order (float64).
#[pyfunction]
#[pyo3(signature = (hist, bits=8))]
fn hfmg_losses<'py>(py: Python<'py>, hist: HistArg<'py>, bits: u32) -> PyResult<F64s<'py>> {
    let h = hist.histogram(py)?;
    let v = run_long(py, |stop| hfmg::losses(&h, &hfmg::candidates(h.counts()), bits, stop))?;
    Ok(PyArray1::from_vec(py, v))
}

fn hfmg_result<'py>(py: Python<'py>, s: &hfmg::ClipSearch) -> PyResult<Bound<'py, PyAny>> {
    build!(py, "HfmgSearch" {
        clip_min: s.clip_min, clip_max: s.clip_max, scale: s.qparams.scale, zero_point: s.qparams.zero_point,
        loss: s.loss, index: s.index, refined: s.refined, left: s.left, right: s.right,
    })
}

/// HFMG: `HfmgSearch`. `refine=false` is AMCT exactly; by default the winner is refined by coordinate scans of
/// both bounds. Ctrl-C interrupts it.
#[pyfunction]
#[pyo3(signature = (hist, bits=8, symmetric=false, refine=true))]
fn hfmg_search<'py>(
    py: Python<'py>,
    hist: HistArg<'py>,
    bits: u32,
    symmetric: bool,
    refine: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let h = hist.histogram(py)?;
    let s = run_long(py, |stop| hfmg::search(&h, bits, symmetric, refine, stop))?;
    hfmg_result(py, &s)
}

/// `hfmg_search` of many histograms in one call, in parallel across them (and within each); the results, in
/// order, are those of one call each whatever the thread count. The first error (in order) is raised.
#[pyfunction]
#[pyo3(signature = (hists, bits=8, symmetric=false, refine=true))]
fn hfmg_search_many<'py>(
    py: Python<'py>,
    hists: Vec<HistArg<'py>>,
    bits: u32,
    symmetric: bool,
    refine: bool,
) -> PyResult<Bound<'py, PyList>> {
    let hs = hists.iter().map(|h| h.histogram(py)).collect::<PyResult<Vec<_>>>()?;
    let out = run_long(py, |stop| {
        let reqs: Vec<hfmg::Request<'_>> = hs.iter().map(|hist| hfmg::Request { hist, bits, symmetric, refine }).collect();
        hfmg::search_many(&reqs, stop).into_iter().collect::<Result<Vec<_>, _>>()
    })?;
    PyList::new(py, out.iter().map(|s| hfmg_result(py, s)).collect::<PyResult<Vec<_>>>()?)
}

fn clip_result<'py>(py: Python<'py>, c: &baselines::Clip) -> PyResult<Bound<'py, PyAny>> {
    let loss = (!c.loss.is_nan()).then_some(c.loss);
    build!(py, "Clip" {
        clip_min: c.clip_min, clip_max: c.clip_max, scale: c.qparams.scale, zero_point: c.qparams.zero_point,
        loss: loss,
    })
}

/// Percentile clip (`percentile` a fraction in (0, 1]): on |x| when `symmetric`, else two-sided.
#[pyfunction]
#[pyo3(signature = (hist, percentile=0.99999, bits=8, symmetric=true))]
fn percentile_clip<'py>(
    py: Python<'py>,
    hist: HistArg<'py>,
    percentile: f64,
    bits: u32,
    symmetric: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let h = hist.histogram(py)?;
    let c = run(py, || baselines::percentile(&h, percentile, bits, symmetric))?;
    clip_result(py, &c)
}

/// KL divergence of every entropy candidate `i = nq..=n` of the folded |x| histogram (float64).
#[pyfunction]
#[pyo3(signature = (hist, num_quantized_bins=128))]
fn kl_divergences<'py>(py: Python<'py>, hist: HistArg<'py>, num_quantized_bins: usize) -> PyResult<F64s<'py>> {
    let h = hist.histogram(py)?;
    let v = run_long(py, |stop| baselines::kl_divergences(&baselines::fold_abs(&h), num_quantized_bins, stop))?;
    Ok(PyArray1::from_vec(py, v))
}

/// TensorRT entropy (KL) calibration: `Clip` with the KL divergence as its loss. Ctrl-C interrupts it.
#[pyfunction]
#[pyo3(signature = (hist, bits=8, symmetric=true, num_quantized_bins=128))]
fn kl_search<'py>(
    py: Python<'py>,
    hist: HistArg<'py>,
    bits: u32,
    symmetric: bool,
    num_quantized_bins: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let h = hist.histogram(py)?;
    let c = run_long(py, |stop| baselines::kl(&h, bits, symmetric, num_quantized_bins, stop))?;
    clip_result(py, &c)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(histogram_observe, m)?)?;
    m.add_function(wrap_pyfunction!(histogram_observe_many, m)?)?;
    m.add_function(wrap_pyfunction!(histogram_merge, m)?)?;
    m.add_function(wrap_pyfunction!(hfmg_candidates, m)?)?;
    m.add_function(wrap_pyfunction!(hfmg_losses, m)?)?;
    m.add_function(wrap_pyfunction!(hfmg_search, m)?)?;
    m.add_function(wrap_pyfunction!(hfmg_search_many, m)?)?;
    m.add_function(wrap_pyfunction!(percentile_clip, m)?)?;
    m.add_function(wrap_pyfunction!(kl_divergences, m)?)?;
    m.add_function(wrap_pyfunction!(kl_search, m)?)?;
    Ok(())
}
