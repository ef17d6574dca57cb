//! Bindings of `core::ulq`: the ULQ forward/backward and the LSQ weight-scale backward used by the torch
//! autograd functions (which hand in tensors' memory through `Tensor.numpy()`, without copies).

use ferroquant_core::{ulq, Scheme};
use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArrayDyn};
use pyo3::prelude::*;

use crate::arrays::{layout, run_into, shape_of, slice};
use crate::errors::run;
use crate::types::build;

/// ULQ forward: `UlqForward` (fake-quantized x, scale, zero_point) for the clip range [clip_min, clip_max].
#[pyfunction]
#[pyo3(signature = (x, clip_min, clip_max, bits=8, symmetric=false))]
fn ulq_fake_quant<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    clip_min: f32,
    clip_max: f32,
    bits: u32,
    symmetric: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let (xs, shape) = (slice(py, &x, "x")?, shape_of(&x));
    let (out, p) =
        run_into(py, &shape, |os| ulq::ulq_fake_quant(xs, clip_min, clip_max, &Scheme::new(bits, symmetric)?, os))?;
    build!(py, "UlqForward" { fake: out, scale: p.scale, zero_point: p.zero_point })
}

/// ULQ backward: `UlqBackward` (grad_x, grad_clip_max, grad_clip_min).
#[pyfunction]
#[pyo3(signature = (x, grad, clip_min, clip_max, bits=8, symmetric=false))]
fn ulq_backward<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    grad: PyReadonlyArrayDyn<'py, f32>,
    clip_min: f32,
    clip_max: f32,
    bits: u32,
    symmetric: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let (xs, shape) = (slice(py, &x, "x")?, shape_of(&x));
    let gs = slice(py, &grad, "grad")?;
    let (out, r) =
        run_into(py, &shape, |os| ulq::ulq_backward(xs, gs, clip_min, clip_max, &Scheme::new(bits, symmetric)?, os))?;
    build!(py, "UlqBackward" { grad_x: out, grad_clip_max: r.clip_max, grad_clip_min: r.clip_min })
}

/// LSQ backward of per-channel weight scales along `axis` (per tensor if None), gradient scale included.
#[pyfunction]
#[pyo3(signature = (w, grad, scale, bits=8, axis=Some(0)), text_signature = "(w, grad, scale, bits=8, axis=0)")]
fn lsq_backward<'py>(
    py: Python<'py>,
    w: PyReadonlyArrayDyn<'py, f32>,
    grad: PyReadonlyArrayDyn<'py, f32>,
    scale: PyReadonlyArray1<'py, f32>,
    bits: u32,
    axis: Option<isize>,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let (ws, shape) = (slice(py, &w, "w")?, shape_of(&w));
    let gs = slice(py, &grad, "grad")?;
    let ss = scale.as_slice()?;
    let r = run(py, || ulq::lsq_backward(ws, gs, &layout(&shape, axis)?, ss, &Scheme::new(bits, true)?))?;
    Ok(PyArray1::from_vec(py, r))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(ulq_fake_quant, m)?)?;
    m.add_function(wrap_pyfunction!(ulq_backward, m)?)?;
    m.add_function(wrap_pyfunction!(lsq_backward, m)?)?;
    Ok(())
}
