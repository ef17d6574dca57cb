//! Bindings of `core::hessian` and `core::gptq`: the streaming Hessian sum (updated in place in a NumPy
//! float64 buffer the Python accumulator owns) and GPTQ.

use ferroquant_core::groupwise::{GroupSpec, MatShape};
use ferroquant_core::gptq as core_gptq;
use ferroquant_core::hessian;
use numpy::{PyArray1, PyReadonlyArray2, PyReadwriteArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::errors::{raise, run};
use crate::groupwise::{quant_object, slice2, PyGroupQuant};

/// `h += xᵀx` in place (`h` `[K, K]` float64, `x` `[rows, K]` float32); returns the number of rows.
#[pyfunction]
fn hessian_update<'py>(py: Python<'py>, mut h: PyReadwriteArray2<'py, f64>, x: PyReadonlyArray2<'py, f32>) -> PyResult<usize> {
    let (xs, _, k) = slice2(py, &x, "x")?;
    let shape = h.shape().to_vec();
    if shape != [k, k] {
        return Err(raise(py, "ShapeError", format!("hessian must be [{k}, {k}] for rows of {k} values, got {shape:?}")));
    }
    let hs = h.as_slice_mut().map_err(|_| raise(py, "LayoutError", "hessian must be C-contiguous".into()))?;
    run(py, || hessian::hessian_update(hs, xs, k))
}

/// What GPTQ returns.
#[pyclass(frozen, get_all, name = "GptqOutput", module = "ferroquant._native")]
pub struct PyGptqOutput {
    pub quant: Py<PyGroupQuant>,
    pub perm: Py<PyArray1<i64>>,
    pub dead: Py<PyArray1<i64>>,
    pub damp: f64,
}

/// GPTQ of `w` `[K, N]` with its Hessian `h` `[K, K]`.
#[pyfunction(name = "gptq")]
#[pyo3(signature = (w, h, bits=4, group_size=128, symmetric=true, scale_f16=false, percdamp=0.01, block_size=128,
    act_order=false))]
#[allow(clippy::too_many_arguments)]
fn gptq_py<'py>(
    py: Python<'py>,
    w: PyReadonlyArray2<'py, f32>,
    h: PyReadonlyArray2<'py, f64>,
    bits: u32,
    group_size: usize,
    symmetric: bool,
    scale_f16: bool,
    percdamp: f64,
    block_size: usize,
    act_order: bool,
) -> PyResult<PyGptqOutput> {
    let (ws, k, n) = slice2(py, &w, "w")?;
    let (hs, hr, hc) = slice2(py, &h, "hessian")?;
    if (hr, hc) != (k, k) {
        return Err(raise(py, "ShapeError", format!("hessian must be [{k}, {k}] for a weight with {k} rows, got [{hr}, {hc}]")));
    }
    let s = MatShape { k, n };
    let (r, groups) = run(py, || {
        let spec = GroupSpec::new(bits, group_size, symmetric, scale_f16)?;
        let o = core_gptq::GptqOptions { spec, percdamp, block_size, act_order };
        Ok((core_gptq::gptq(ws, s, hs, &o)?, spec.groups(k)))
    })?;
    let idx = |v: Vec<usize>| PyArray1::from_vec(py, v.into_iter().map(|i| i as i64).collect()).unbind();
    Ok(PyGptqOutput {
        quant: Py::new(py, quant_object(py, r.quant, s, groups)?)?,
        perm: idx(r.perm),
        dead: idx(r.dead),
        damp: r.damp,
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGptqOutput>()?;
    m.add_function(wrap_pyfunction!(hessian_update, m)?)?;
    m.add_function(wrap_pyfunction!(gptq_py, m)?)?;
    Ok(())
}
