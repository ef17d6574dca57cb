//! Array plumbing: contiguous borrows, layouts from an optional axis, output allocation.

use ferroquant_core::{ChannelLayout, QuantError};
use numpy::{Element, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::errors::raise;

/// The contiguous slice of a read-only array; the Python layer makes arrays contiguous before calling.
pub fn slice<'a, T: Element>(py: Python<'_>, a: &'a PyReadonlyArrayDyn<'_, T>, what: &str) -> PyResult<&'a [T]> {
    a.as_slice().map_err(|_| raise(py, "LayoutError", format!("{what} must be C-contiguous")))
}

/// Channels along `axis`, or the whole array as one channel when `axis` is None.
pub fn layout(shape: &[usize], axis: Option<isize>) -> Result<ChannelLayout, QuantError> {
    match axis {
        None => Ok(ChannelLayout::per_tensor(shape.iter().product())),
        Some(a) => ChannelLayout::along(shape, a),
    }
}

/// A new zero-filled array with `shape`.
pub fn zeros<'py, T: Element>(py: Python<'py>, shape: &[usize]) -> Bound<'py, PyArrayDyn<T>> {
    PyArrayDyn::<T>::zeros(py, shape.to_vec(), false)
}

/// A new array of `shape` that `f` fills in place with the GIL released (`crate::errors::run`); returns it with
/// what `f` returned.
pub fn run_into<'py, T: Element, R: Send>(
    py: Python<'py>,
    shape: &[usize],
    f: impl FnOnce(&mut [T]) -> Result<R, ferroquant_core::QuantError> + Send,
) -> PyResult<(Bound<'py, PyArrayDyn<T>>, R)> {
    let out = zeros::<T>(py, shape);
    let r = {
        let mut w = out.readwrite();
        let os = w.as_slice_mut()?;
        crate::errors::run(py, || f(os))?
    };
    Ok((out, r))
}

pub fn shape_of<T: Element>(a: &PyReadonlyArrayDyn<'_, T>) -> Vec<usize> {
    a.shape().to_vec()
}
