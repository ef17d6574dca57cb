//! Bindings of `core::histogram` (streaming histogram, HFMG, baselines). The histogram state travels as plain
//! values `(counts: uint64[nbins], lo, hi)` so Python calibrators can save, load and merge it.

use ferroquant_core::histogram::{baselines, hfmg, Histogram};
use ferroquant_core::QuantError;
use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArrayDyn};
use pyo3::prelude::*;

use crate::arrays::slice;
use crate::errors::run;

type Counts<'py> = Bound<'py, PyArray1<u64>>;
type State<'py> = (Counts<'py>, f32, f32);
type Bounds<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>);

fn counts_vec(py: Python<'_>, c: &PyReadonlyArray1<'_, u64>) -> PyResult<Vec<u64>> {
    Ok(c.as_slice().map_err(|_| crate::errors::raise(py, "LayoutError", "counts must be C-contiguous".into()))?.to_vec())
}

fn state<'py>(py: Python<'py>, h: Histogram) -> State<'py> {
    let (lo, hi) = (h.lo(), h.hi());
    (PyArray1::from_vec(py, h.into_counts()), lo, hi)
}

fn hist(py: Python<'_>, counts: &PyReadonlyArray1<'_, u64>, lo: f32, hi: f32) -> PyResult<Histogram> {
    let c = counts_vec(py, counts)?;
    run(py, || Histogram::from_parts(c, lo, hi))
}

/// Add batch `x` to the histogram `(counts, lo, hi)`; with `counts` None, build one from `x` over its own range
/// with `nbins` bins (4096 when None). Returns the new `(counts, lo, hi)`.
#[pyfunction]
#[pyo3(signature = (counts, lo, hi, x, nbins=None, drop_nonfinite=false))]
fn histogram_observe<'py>(
    py: Python<'py>,
    counts: Option<PyReadonlyArray1<'py, u64>>,
    lo: f32,
    hi: f32,
    x: PyReadonlyArrayDyn<'py, f32>,
    nbins: Option<usize>,
    drop_nonfinite: bool,
) -> PyResult<State<'py>> {
    let xs = slice(py, &x, "x")?;
    let prev = counts.map(|c| counts_vec(py, &c)).transpose()?;
    let h = run(py, || match prev {
        None => Histogram::build(xs, nbins.unwrap_or(4096), drop_nonfinite),
        Some(c) => {
            if let Some(n) = nbins.filter(|&n| n != c.len()) {
                return Err(QuantError::ShapeMismatch { what: "counts (nbins)", expected: n, got: c.len() });
            }
            let mut h = Histogram::from_parts(c, lo, hi)?;
            h.observe(xs, drop_nonfinite)?;
            Ok(h)
        }
    })?;
    Ok(state(py, h))
}

/// Merge two histograms with the count-preserving re-binning; returns `(counts, lo, hi)`.
#[pyfunction]
fn histogram_merge<'py>(
    py: Python<'py>,
    counts1: PyReadonlyArray1<'py, u64>,
    lo1: f32,
    hi1: f32,
    counts2: PyReadonlyArray1<'py, u64>,
    lo2: f32,
    hi2: f32,
) -> PyResult<State<'py>> {
    let (mut a, b) = (hist(py, &counts1, lo1, hi1)?, hist(py, &counts2, lo2, hi2)?);
    run(py, || a.merge(&b))?;
    Ok(state(py, a))
}

/// HFMG candidate truncations `(left, right)` as two int64 arrays.
#[pyfunction]
fn hfmg_candidates<'py>(
    py: Python<'py>,
    counts: PyReadonlyArray1<'py, u64>,
) -> PyResult<Bounds<'py>> {
    let c = counts_vec(py, &counts)?;
    let cands = run(py, || Ok(hfmg::candidates(&c)))?;
    let (l, r): (Vec<i64>, Vec<i64>) = cands.iter().map(|&(l, r)| (l as i64, r as i64)).unzip();
    Ok((PyArray1::from_vec(py, l), PyArray1::from_vec(py, r)))
}

/// HFMG loss of every candidate, in candidate order (float64).
#[pyfunction]
#[pyo3(signature = (counts, lo, hi, bits=8))]
fn hfmg_losses<'py>(
    py: Python<'py>,
    counts: PyReadonlyArray1<'py, u64>,
    lo: f32,
    hi: f32,
    bits: u32,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let h = hist(py, &counts, lo, hi)?;
    let v = run(py, || hfmg::losses(&h, &hfmg::candidates(h.counts()), bits, &ferroquant_core::stop::NEVER))?;
    Ok(PyArray1::from_vec(py, v))
}

/// HFMG: `(clip_min, clip_max, scale, zero_point, loss, candidate_index, refined)`. `refine=false` is AMCT
/// exactly; by default the winner is refined by coordinate scans of both bounds (`hfmg::refine`).
#[pyfunction]
#[pyo3(signature = (counts, lo, hi, bits=8, symmetric=false, refine=true))]
#[allow(clippy::too_many_arguments)]
fn hfmg_search(
    py: Python<'_>,
    counts: PyReadonlyArray1<'_, u64>,
    lo: f32,
    hi: f32,
    bits: u32,
    symmetric: bool,
    refine: bool,
) -> PyResult<(f32, f32, f32, i32, f64, usize, bool)> {
    let h = hist(py, &counts, lo, hi)?;
    let s = run(py, || hfmg::search(&h, bits, symmetric, refine, &ferroquant_core::stop::NEVER))?;
    Ok((s.clip_min, s.clip_max, s.qparams.scale, s.qparams.zero_point, s.loss, s.index, s.refined))
}

/// Percentile clip: `(clip_min, clip_max, scale, zero_point)`; on |x| when `symmetric`, else two-sided.
#[pyfunction]
#[pyo3(signature = (counts, lo, hi, percentile=99.999, bits=8, symmetric=true))]
fn percentile_clip(
    py: Python<'_>,
    counts: PyReadonlyArray1<'_, u64>,
    lo: f32,
    hi: f32,
    percentile: f64,
    bits: u32,
    symmetric: bool,
) -> PyResult<(f32, f32, f32, i32)> {
    let h = hist(py, &counts, lo, hi)?;
    let c = run(py, || baselines::percentile(&h, percentile, bits, symmetric))?;
    Ok((c.clip_min, c.clip_max, c.qparams.scale, c.qparams.zero_point))
}

/// KL divergence of every entropy candidate `i = nq..=n` of the folded |x| histogram (float64).
#[pyfunction]
#[pyo3(signature = (counts, lo, hi, num_quantized_bins=128))]
fn kl_divergences<'py>(
    py: Python<'py>,
    counts: PyReadonlyArray1<'py, u64>,
    lo: f32,
    hi: f32,
    num_quantized_bins: usize,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let h = hist(py, &counts, lo, hi)?;
    let v = run(py, || baselines::kl_divergences(&baselines::fold_abs(&h), num_quantized_bins))?;
    Ok(PyArray1::from_vec(py, v))
}

/// TensorRT entropy (KL) calibration: `(clip_min, clip_max, scale, zero_point, kl)`.
#[pyfunction]
#[pyo3(signature = (counts, lo, hi, bits=8, symmetric=true, num_quantized_bins=128))]
fn kl_search(
    py: Python<'_>,
    counts: PyReadonlyArray1<'_, u64>,
    lo: f32,
    hi: f32,
    bits: u32,
    symmetric: bool,
    num_quantized_bins: usize,
) -> PyResult<(f32, f32, f32, i32, f64)> {
    let h = hist(py, &counts, lo, hi)?;
    let c = run(py, || baselines::kl(&h, bits, symmetric, num_quantized_bins))?;
    Ok((c.clip_min, c.clip_max, c.qparams.scale, c.qparams.zero_point, c.loss))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(histogram_observe, m)?)?;
    m.add_function(wrap_pyfunction!(histogram_merge, m)?)?;
    m.add_function(wrap_pyfunction!(hfmg_candidates, m)?)?;
    m.add_function(wrap_pyfunction!(hfmg_losses, m)?)?;
    m.add_function(wrap_pyfunction!(hfmg_search, m)?)?;
    m.add_function(wrap_pyfunction!(percentile_clip, m)?)?;
    m.add_function(wrap_pyfunction!(kl_divergences, m)?)?;
    m.add_function(wrap_pyfunction!(kl_search, m)?)?;
    Ok(())
}
