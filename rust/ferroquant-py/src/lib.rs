//! `ferroquant._native`: thin bindings over ferroquant-core. Each function borrows its arrays, releases the
//! GIL, calls the core inside the configured thread pool, and maps errors. No math lives here.

use pyo3::prelude::*;

mod adaround;
mod affine;
mod arrays;
mod awq;
mod errors;
mod gptq;
mod groupwise;
mod histogram;
mod ifmr;
mod metrics;
mod nuq;
mod pool;
mod qparams;
mod types;
mod ulq;
#[cfg(feature = "debug-panic")]
mod debug;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    pool::register(m)?;
    qparams::register(m)?;
    affine::register(m)?;
    nuq::register(m)?;
    histogram::register(m)?;
    ifmr::register(m)?;
    metrics::register(m)?;
    ulq::register(m)?;
    groupwise::register(m)?;
    gptq::register(m)?;
    awq::register(m)?;
    adaround::register(m)?;
    #[cfg(feature = "debug-panic")]
    debug::register(m)?;
    Ok(())
}
