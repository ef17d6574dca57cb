//! Cooperative interruption of long kernels. The binding crate requests a stop when Python receives a signal
//! (Ctrl-C) during a native call; long loops check the token between chunks of work and return
//! `QuantError::Interrupted`, so a KeyboardInterrupt comes back within a chunk's time.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{QuantError, Result};

#[derive(Debug, Default)]
pub struct Stop(AtomicBool);

/// A token that is never stopped, for callers that do not interrupt.
pub static NEVER: Stop = Stop::new();

impl Stop {
    pub const fn new() -> Self {
        Self(AtomicBool::new(false))
    }

    pub fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// `Err(Interrupted)` once a stop was requested.
    pub fn check(&self) -> Result<()> {
        if self.requested() {
            Err(QuantError::Interrupted)
        } else {
            Ok(())
        }
    }
}
