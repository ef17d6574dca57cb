//! The integer grid: bit width, signed range and symmetric or affine (with offset) mapping.

use crate::error::{QuantError, Result};

pub const MIN_BITS: u32 = 2;
pub const MAX_BITS: u32 = 16;
/// `FLT_EPSILON`, the threshold of AMCT's scale guard (`util::ProcessScale`).
pub const FLT_EPSILON: f32 = f32::EPSILON;

/// A quantization scheme. AMCT always uses signed integers, even with an offset (spec §0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    pub bits: u32,
    pub symmetric: bool,
}

impl Scheme {
    pub fn new(bits: u32, symmetric: bool) -> Result<Self> {
        check_bits(bits)?;
        Ok(Self { bits, symmetric })
    }

    pub fn qmin(&self) -> i32 {
        -(1i32 << (self.bits - 1))
    }

    pub fn qmax(&self) -> i32 {
        (1i32 << (self.bits - 1)) - 1
    }

    /// Number of steps between qmin and qmax, `2^b - 1`.
    pub fn levels(&self) -> u32 {
        (1u32 << self.bits) - 1
    }
}

pub fn check_bits(bits: u32) -> Result<()> {
    if (MIN_BITS..=MAX_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(QuantError::InvalidBits { bits, min: MIN_BITS, max: MAX_BITS })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let s = Scheme::new(8, true).unwrap();
        assert_eq!((s.qmin(), s.qmax(), s.levels()), (-128, 127, 255));
        let s = Scheme::new(16, false).unwrap();
        assert_eq!((s.qmin(), s.qmax()), (-32768, 32767));
        assert!(Scheme::new(1, true).is_err());
        assert!(Scheme::new(17, true).is_err());
    }
}
