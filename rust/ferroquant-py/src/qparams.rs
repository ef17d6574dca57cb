//! Bindings of `core::qparams`.

use ferroquant_core::{qparams, QuantError, Scheme};
use numpy::{PyArray1, PyReadonlyArrayDyn};
use pyo3::prelude::*;

use crate::arrays::{layout, shape_of, slice};
use crate::errors::run;
use crate::types::build;

/// Guarded `QParams` for the range [lo, hi] (lo > hi is an error).
#[pyfunction]
#[pyo3(signature = (lo, hi, bits=8, symmetric=true))]
fn qparams_from_range(py: Python<'_>, lo: f32, hi: f32, bits: u32, symmetric: bool) -> PyResult<Bound<'_, PyAny>> {
    let p = run(py, || {
        let s = Scheme::new(bits, symmetric)?;
        if lo > hi {
            return Err(QuantError::InvalidParameter { name: "range", reason: format!("lo {lo} > hi {hi}") });
        }
        qparams::from_range(lo, hi, &s, 0)
    })?;
    build!(py, "QParams" { scale: p.scale, zero_point: p.zero_point })
}

type Pair<'py, A, B> = (Bound<'py, PyArray1<A>>, Bound<'py, PyArray1<B>>);

/// Per-channel (min, max) along `axis` (None: one pair for the whole array).
#[pyfunction]
#[pyo3(signature = (x, axis=None))]
fn min_max<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    axis: Option<isize>,
) -> PyResult<Pair<'py, f32, f32>> {
    let xs = slice(py, &x, "x")?;
    let shape = shape_of(&x);
    let (lo, hi) = run(py, || qparams::min_max_per_channel(xs, &layout(&shape, axis)?))?;
    Ok((PyArray1::from_vec(py, lo), PyArray1::from_vec(py, hi)))
}

/// Guarded per-channel qparams from the data's min/max along `axis` (None: per tensor).
#[pyfunction]
#[pyo3(signature = (x, axis=None, bits=8, symmetric=true))]
fn qparams_from_data<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    axis: Option<isize>,
    bits: u32,
    symmetric: bool,
) -> PyResult<Pair<'py, f32, i32>> {
    let xs = slice(py, &x, "x")?;
    let shape = shape_of(&x);
    let qp = run(py, || qparams::from_data(xs, &layout(&shape, axis)?, &Scheme::new(bits, symmetric)?))?;
    let (s, z): (Vec<f32>, Vec<i32>) = qp.iter().map(|p| (p.scale, p.zero_point)).unzip();
    Ok((PyArray1::from_vec(py, s), PyArray1::from_vec(py, z)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(qparams_from_range, m)?)?;
    m.add_function(wrap_pyfunction!(min_max, m)?)?;
    m.add_function(wrap_pyfunction!(qparams_from_data, m)?)?;
    Ok(())
}
