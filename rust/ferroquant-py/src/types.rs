//! The typed values of `ferroquant/ops/types.py` at the boundary: results are built by keyword (`build!`),
//! arguments read by attribute (`HistArg`, `OptionsArg`). The classes are defined once, in Python; each call
//! site looks its class up once.

use ferroquant_core::histogram::Histogram;
use ferroquant_core::ifmr::IfmrOptions;
use numpy::PyReadonlyArray1;
use pyo3::prelude::*;

use crate::errors::run;

/// `ferroquant.ops.types.<Class>(key=value, ...)`.
macro_rules! build {
    ($py:expr, $class:literal { $($key:ident : $value:expr),* $(,)? }) => {{
        static CLASS: pyo3::sync::PyOnceLock<pyo3::Py<pyo3::types::PyType>> = pyo3::sync::PyOnceLock::new();
        let kw = pyo3::types::PyDict::new($py);
        $( kw.set_item(stringify!($key), $value)?; )*
        CLASS.import($py, "ferroquant.ops.types", $class)?.call((), Some(&kw))
    }};
}
pub(crate) use build;

/// A `Histogram` (counts as contiguous uint64: the dataclass converts them).
#[derive(FromPyObject)]
pub struct HistArg<'py> {
    #[pyo3(attribute)]
    counts: PyReadonlyArray1<'py, u64>,
    #[pyo3(attribute)]
    lo: f32,
    #[pyo3(attribute)]
    hi: f32,
}

impl HistArg<'_> {
    pub fn counts(&self, py: Python<'_>) -> PyResult<Vec<u64>> {
        Ok(self
            .counts
            .as_slice()
            .map_err(|_| crate::errors::raise(py, "LayoutError", "counts must be C-contiguous".into()))?
            .to_vec())
    }

    pub fn lo(&self) -> f32 {
        self.lo
    }

    pub fn hi(&self) -> f32 {
        self.hi
    }

    /// The core histogram (checks nbins, the range and the total).
    pub fn histogram(&self, py: Python<'_>) -> PyResult<Histogram> {
        let c = self.counts(py)?;
        let (lo, hi) = (self.lo, self.hi);
        run(py, || Histogram::from_parts(c, lo, hi))
    }
}

/// Build a `Histogram` from a core one.
pub fn histogram<'py>(py: Python<'py>, h: Histogram) -> PyResult<Bound<'py, PyAny>> {
    let (lo, hi) = (h.lo(), h.hi());
    build!(py, "Histogram" { counts: numpy::PyArray1::from_vec(py, h.into_counts()), lo: lo, hi: hi })
}

/// An `IfmrOptions`, read field by field into the core's options.
#[derive(FromPyObject)]
pub struct OptionsArg {
    #[pyo3(attribute)]
    bits: u32,
    #[pyo3(attribute)]
    symmetric: bool,
    #[pyo3(attribute)]
    max_percentile: f64,
    #[pyo3(attribute)]
    min_percentile: f64,
    #[pyo3(attribute)]
    search_start: f64,
    #[pyo3(attribute)]
    search_end: f64,
    #[pyo3(attribute)]
    search_step: f64,
    #[pyo3(attribute)]
    search_extend: bool,
    #[pyo3(attribute)]
    search_2d: bool,
}

impl From<OptionsArg> for IfmrOptions {
    fn from(o: OptionsArg) -> Self {
        IfmrOptions {
            bits: o.bits,
            symmetric: o.symmetric,
            max_percentile: o.max_percentile,
            min_percentile: o.min_percentile,
            search_start: o.search_start,
            search_end: o.search_end,
            search_step: o.search_step,
            search_extend: o.search_extend,
            search_2d: o.search_2d,
        }
    }
}
