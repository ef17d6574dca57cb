//! The one error type of the core. Each variant carries the data a user needs to fix the input; the binding
//! crate maps each variant to its own Python exception class with one exhaustive `match`.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum QuantError {
    #[error("input contains a non-finite value ({value}) at flat index {index}")]
    NonFinite { index: usize, value: f32 },

    #[error("input is empty: {what}")]
    EmptyInput { what: &'static str },

    #[error("bits must be in [{min}, {max}], got {bits}")]
    InvalidBits { bits: u32, min: u32, max: u32 },

    #[error("axis {axis} is out of range for an array with {ndim} dimensions")]
    InvalidAxis { axis: isize, ndim: usize },

    #[error("shape mismatch for {what}: expected {expected}, got {got}")]
    ShapeMismatch { what: &'static str, expected: usize, got: usize },

    #[error("invalid scale {value} at index {index}: {reason}")]
    InvalidScale { index: usize, value: f32, reason: &'static str },

    #[error("invalid zero point {value} at index {index}: outside [{qmin}, {qmax}]")]
    InvalidZeroPoint { index: usize, value: i32, qmin: i32, qmax: i32 },

    #[error("invalid parameter {name}: {reason}")]
    InvalidParameter { name: &'static str, reason: String },

    /// A stop was requested (`stop::Stop`) while the kernel ran: the caller was interrupted.
    #[error("interrupted")]
    Interrupted,
}

pub type Result<T> = std::result::Result<T, QuantError>;
