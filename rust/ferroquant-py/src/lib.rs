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
mod output_clip;
mod pool;
mod qparams;
mod text;
mod types;
mod ulq;
#[cfg(feature = "debug-panic")]
mod debug;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    let topics: [fn(&Bound<'_, PyModule>) -> PyResult<()>; 14] = [
        pool::register,
        qparams::register,
        affine::register,
        nuq::register,
        histogram::register,
        ifmr::register,
        metrics::register,
        ulq::register,
        groupwise::register,
        gptq::register,
        awq::register,
        adaround::register,
        output_clip::register,
        text::register,
    ];
    for register in topics {
        register(m)?;
    }
    #[cfg(feature = "debug-panic")]
    debug::register(m)?;
    Ok(())
}
