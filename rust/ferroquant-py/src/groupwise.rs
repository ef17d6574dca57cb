//! Bindings of `core::groupwise`: group-wise round to nearest and its dequantization. Results are
//! `GroupQuant` objects (`codes` `[K, N]` uint8, `scales` `[G, N]` float32, `zero_points` `[G, N]` uint8).

use ferroquant_core::groupwise::{self, ClipSearch, GroupQuant, GroupSpec, MatShape};
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::errors::{raise, run};

/// The Python `GroupSpec` (or any object with these attributes), read once at the boundary.
#[derive(FromPyObject)]
pub struct SpecArg {
    bits: u32,
    group_size: usize,
    symmetric: bool,
    scale_f16: bool,
}

impl SpecArg {
    pub fn spec(&self) -> Result<GroupSpec, ferroquant_core::QuantError> {
        GroupSpec::new(self.bits, self.group_size, self.symmetric, self.scale_f16)
    }
}

/// The Python `ClipSearch` (`n_grid`, `max_shrink`, `refine`), read once at the boundary.
#[derive(FromPyObject)]
pub struct ClipArg {
    n_grid: usize,
    max_shrink: f64,
    refine: bool,
}

impl ClipArg {
    pub fn search(&self) -> ClipSearch {
        ClipSearch { n_grid: self.n_grid, max_shrink: self.max_shrink, refine: self.refine }
    }
}

/// A group-quantized `[K, N]` weight.
#[pyclass(frozen, get_all, name = "GroupQuant", module = "ferroquant._native")]
pub struct PyGroupQuant {
    pub codes: Py<PyArray2<u8>>,
    pub scales: Py<PyArray2<f32>>,
    pub zero_points: Py<PyArray2<u8>>,
}

/// A `[rows, cols]` array owning `v`.
pub fn arr2<T: numpy::Element>(py: Python<'_>, v: Vec<T>, rows: usize, cols: usize) -> PyResult<Bound<'_, PyArray2<T>>> {
    PyArray1::from_vec(py, v).reshape([rows, cols])
}

/// The Python object of a core result for a `[k, n]` weight with `groups` groups.
pub fn quant_object(py: Python<'_>, q: GroupQuant, s: MatShape, groups: usize) -> PyResult<PyGroupQuant> {
    let codes = arr2(py, q.codes, s.k, s.n)?;
    let scales = arr2(py, q.scales, groups, s.n)?;
    let zero_points = arr2(py, q.zero_points, groups, s.n)?;
    Ok(PyGroupQuant { codes: codes.unbind(), scales: scales.unbind(), zero_points: zero_points.unbind() })
}

/// The contiguous slice of a 2-D array and its shape as `(rows, cols)`.
pub fn slice2<'a, T: numpy::Element>(py: Python<'_>, a: &'a PyReadonlyArray2<'_, T>, what: &str)
    -> PyResult<(&'a [T], usize, usize)> {
    let s = a.as_slice().map_err(|_| raise(py, "LayoutError", format!("{what} must be C-contiguous")))?;
    Ok((s, a.shape()[0], a.shape()[1]))
}

/// Round-to-nearest group-wise quantization of `w` `[K, N]` (groups along K) as `spec` says, with the MSE
/// clip search when `clip` is given.
#[pyfunction]
#[pyo3(signature = (w, spec, clip=None))]
fn quantize_groupwise<'py>(
    py: Python<'py>,
    w: PyReadonlyArray2<'py, f32>,
    spec: SpecArg,
    clip: Option<ClipArg>,
) -> PyResult<PyGroupQuant> {
    let (ws, k, n) = slice2(py, &w, "w")?;
    let s = MatShape { k, n };
    let clip = clip.map(|c| c.search());
    let (q, groups) = run(py, || {
        let spec = spec.spec()?;
        Ok((groupwise::quantize_groupwise(ws, s, &spec, clip.as_ref())?, spec.groups(k)))
    })?;
    quant_object(py, q, s, groups)
}

/// `(codes - zero_points) * scales` as float32 `[K, N]`.
#[pyfunction]
fn dequantize_groupwise<'py>(
    py: Python<'py>,
    codes: PyReadonlyArray2<'py, u8>,
    scales: PyReadonlyArray2<'py, f32>,
    zero_points: PyReadonlyArray2<'py, u8>,
    group_size: usize,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let (c, k, n) = slice2(py, &codes, "codes")?;
    let (sc, _, _) = slice2(py, &scales, "scales")?;
    let (zp, _, _) = slice2(py, &zero_points, "zero_points")?;
    let q = GroupQuant { codes: c.to_vec(), scales: sc.to_vec(), zero_points: zp.to_vec() };
    let out = run(py, || groupwise::dequantize_groupwise(&q, MatShape { k, n }, group_size))?;
    arr2(py, out, k, n)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGroupQuant>()?;
    m.add_function(wrap_pyfunction!(quantize_groupwise, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize_groupwise, m)?)?;
    Ok(())
}
