//! The thread pool native kernels run in. `set_num_threads(n)` swaps in a pool of `n` threads; results do
//! not depend on it (core kernels split work into fixed chunks).

use std::sync::{Arc, Mutex, OnceLock};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use rayon::{ThreadPool, ThreadPoolBuilder};

fn slot() -> &'static Mutex<Option<Arc<ThreadPool>>> {
    static POOL: OnceLock<Mutex<Option<Arc<ThreadPool>>>> = OnceLock::new();
    POOL.get_or_init(|| Mutex::new(None))
}

fn current() -> Option<Arc<ThreadPool>> {
    slot().lock().map(|g| g.clone()).unwrap_or(None)
}

/// Run `f` in the configured pool (rayon's global pool when none was set).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match current() {
        Some(p) => p.install(f),
        None => f(),
    }
}

/// Use `n` threads for native kernels (0 = one per core, rayon's default).
#[pyfunction]
fn set_num_threads(n: usize) -> PyResult<()> {
    let pool = if n == 0 {
        None
    } else {
        Some(Arc::new(
            ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| PyValueError::new_err(format!("cannot start {n} threads: {e}")))?,
        ))
    };
    let mut g = slot().lock().map_err(|_| PyValueError::new_err("thread pool lock poisoned"))?;
    *g = pool;
    Ok(())
}

/// Number of threads native kernels use now.
#[pyfunction]
fn get_num_threads() -> usize {
    match current() {
        Some(p) => p.current_num_threads(),
        None => rayon::current_num_threads(),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    Ok(())
}
