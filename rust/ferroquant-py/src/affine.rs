//! Bindings of `core::affine` and `core::arq`: quantize, dequantize, fake-quant, ARQ.

use ferroquant_core::affine::{self, ChannelGrids, Code};
use ferroquant_core::QuantError;
use ferroquant_core::{arq as core_arq, Scheme};
use numpy::{Element, PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArray1, PyReadonlyArrayDyn};
use pyo3::prelude::*;

use crate::arrays::{layout, run_into, shape_of, slice, zeros};
use crate::errors::run;
use crate::types::build;

/// Integer codes as they come from Python.
#[derive(FromPyObject)]
enum Codes<'py> {
    I8(PyReadonlyArrayDyn<'py, i8>),
    I16(PyReadonlyArrayDyn<'py, i16>),
    I32(PyReadonlyArrayDyn<'py, i32>),
}

/// The grid arguments of quantize, dequantize and fake_quant, as they come from Python.
struct GridArgs<'a> {
    scale: &'a [f32],
    zero_point: &'a [i32],
    bits: u32,
    axis: Option<isize>,
}

impl GridArgs<'_> {
    /// `f` on the checked channel grids for an array of `shape`.
    fn apply<R>(&self, shape: &[usize], f: impl FnOnce(&ChannelGrids<'_>) -> Result<R, QuantError>) -> Result<R, QuantError>
    {
        let scheme = Scheme::new(self.bits, true)?;
        let l = layout(shape, self.axis)?;
        f(&ChannelGrids::new(&l, self.scale, self.zero_point, &scheme)?)
    }
}

fn quantize_into<'py, T: Code + Element>(
    py: Python<'py>,
    xs: &[f32],
    shape: &[usize],
    g: &GridArgs<'_>,
) -> PyResult<Bound<'py, PyAny>> {
    Ok(run_into::<T, _>(py, shape, |os| g.apply(shape, |gr| affine::quantize(xs, gr, os)))?.0.into_any())
}

/// Integer codes of `x`: int8 for bits <= 8, int16 above.
#[pyfunction]
#[pyo3(signature = (x, scale, zero_point, bits=8, axis=None))]
fn quantize<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    scale: PyReadonlyArray1<'py, f32>,
    zero_point: PyReadonlyArray1<'py, i32>,
    bits: u32,
    axis: Option<isize>,
) -> PyResult<Bound<'py, PyAny>> {
    let (xs, shape) = (slice(py, &x, "x")?, shape_of(&x));
    let g = GridArgs { scale: scale.as_slice()?, zero_point: zero_point.as_slice()?, bits, axis };
    if bits <= 8 {
        quantize_into::<i8>(py, xs, &shape, &g)
    } else {
        quantize_into::<i16>(py, xs, &shape, &g)
    }
}

fn dequantize_from<'py, T: Code + Element>(
    py: Python<'py>,
    q: &PyReadonlyArrayDyn<'py, T>,
    g: &GridArgs<'_>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let (qs, shape) = (slice(py, q, "q")?, shape_of(q));
    Ok(run_into(py, &shape, |os| g.apply(&shape, |gr| affine::dequantize(qs, gr, os)))?.0)
}

/// `(q - zero_point) * scale` as float32.
#[pyfunction]
#[pyo3(signature = (q, scale, zero_point, bits=8, axis=None))]
fn dequantize<'py>(
    py: Python<'py>,
    q: Codes<'py>,
    scale: PyReadonlyArray1<'py, f32>,
    zero_point: PyReadonlyArray1<'py, i32>,
    bits: u32,
    axis: Option<isize>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let g = GridArgs { scale: scale.as_slice()?, zero_point: zero_point.as_slice()?, bits, axis };
    match &q {
        Codes::I8(a) => dequantize_from(py, a, &g),
        Codes::I16(a) => dequantize_from(py, a, &g),
        Codes::I32(a) => dequantize_from(py, a, &g),
    }
}

/// Quantize then dequantize, float32 out.
#[pyfunction]
#[pyo3(signature = (x, scale, zero_point, bits=8, axis=None))]
fn fake_quant<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    scale: PyReadonlyArray1<'py, f32>,
    zero_point: PyReadonlyArray1<'py, i32>,
    bits: u32,
    axis: Option<isize>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let (xs, shape) = (slice(py, &x, "x")?, shape_of(&x));
    let g = GridArgs { scale: scale.as_slice()?, zero_point: zero_point.as_slice()?, bits, axis };
    Ok(run_into(py, &shape, |os| g.apply(&shape, |gr| affine::fake_quant(xs, gr, os)))?.0)
}

fn arq_into<'py, T: Code + Element>(
    py: Python<'py>,
    ws: &[f32],
    shape: &[usize],
    scheme: Scheme,
    axis: Option<isize>,
) -> PyResult<Bound<'py, PyAny>> {
    let codes = zeros::<T>(py, shape);
    let fake = zeros::<f32>(py, shape);
    let qp = {
        let (mut cw, mut fw) = (codes.readwrite(), fake.readwrite());
        let (cs, fs) = (cw.as_slice_mut()?, fw.as_slice_mut()?);
        run(py, || core_arq::arq(ws, &layout(shape, axis)?, &scheme, cs, fs))?
    };
    let (s, z): (Vec<f32>, Vec<i32>) = qp.iter().map(|p| (p.scale, p.zero_point)).unzip();
    build!(py, "ArqResult" {
        scale: PyArray1::from_vec(py, s), zero_point: PyArray1::from_vec(py, z), codes: codes, fake: fake,
        axis: axis, bits: scheme.bits,
    })
}

/// ARQ: `ArqResult` (scale, zero_point, codes, fake-quantized weights); per channel along `axis`, per tensor
/// if None.
#[pyfunction(name = "arq")]
#[pyo3(signature = (w, axis=Some(0), bits=8, symmetric=true), text_signature = "(w, axis=0, bits=8, symmetric=True)")]
fn arq_py<'py>(
    py: Python<'py>,
    w: PyReadonlyArrayDyn<'py, f32>,
    axis: Option<isize>,
    bits: u32,
    symmetric: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let (ws, shape) = (slice(py, &w, "w")?, shape_of(&w));
    let scheme = run(py, || Scheme::new(bits, symmetric))?;
    if bits <= 8 {
        arq_into::<i8>(py, ws, &shape, scheme, axis)
    } else {
        arq_into::<i16>(py, ws, &shape, scheme, axis)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(fake_quant, m)?)?;
    m.add_function(wrap_pyfunction!(arq_py, m)?)?;
    Ok(())
}
