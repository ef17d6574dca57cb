//! The innermost element loops, written so the compiler vectorizes them (compare-select instead of
//! `f32::min`, lane arrays for reductions, integer ORs for the finiteness test) and compiled for several
//! instruction sets with run-time dispatch (`multiversion`): the wheel stays portable, AVX2/AVX-512 machines
//! get their wide registers.

use multiversion::multiversion;

use crate::error::{QuantError, Result};
use crate::scheme::Scheme;

/// An integer type that holds codes: i8 for bits <= 8, i16 up to 16 bits, i32 for anything.
pub trait Code: Copy + Send + Sync + Default {
    const BITS: u32;
    fn from_f32(v: f32) -> Self;
    /// Wrapping conversion of a value known to be in range.
    fn from_i32(v: i32) -> Self;
    fn to_f32(self) -> f32;
}

macro_rules! impl_code {
    ($t:ty) => {
        impl Code for $t {
            const BITS: u32 = <$t>::BITS;
            #[inline(always)]
            fn from_f32(v: f32) -> Self {
                v as $t
            }
            #[inline(always)]
            fn from_i32(v: i32) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f32(self) -> f32 {
                self as f32
            }
        }
    };
}
impl_code!(i8);
impl_code!(i16);
impl_code!(i32);

const LANES: usize = 16;
/// The exponent bits of an f32: all ones for NaN and +/-Inf.
pub(crate) const EXP_MASK: u32 = 0x7f80_0000;

/// Does `x` hold NaN or +/-Inf? (An all-ones exponent; integer OR so it vectorizes.)
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "x86_64+sse4.1"))]
pub fn any_non_finite(x: &[f32]) -> bool {
    x.iter().fold(0u32, |a, v| a | (((v.to_bits() & EXP_MASK) == EXP_MASK) as u32)) != 0
}

/// `(min, max, any_non_finite)` of a run, in one pass (`(+inf, -inf, false)` when empty).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "x86_64+sse4.1"))]
pub fn min_max_run(x: &[f32]) -> (f32, f32, bool) {
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let mut bad = [0u32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..LANES {
            let v = c[j];
            lo[j] = if v < lo[j] { v } else { lo[j] };
            hi[j] = if v > hi[j] { v } else { hi[j] };
            bad[j] |= ((v.to_bits() & EXP_MASK) == EXP_MASK) as u32;
        }
    }
    for (j, &v) in rest.iter().enumerate() {
        lo[j] = if v < lo[j] { v } else { lo[j] };
        hi[j] = if v > hi[j] { v } else { hi[j] };
        bad[j] |= ((v.to_bits() & EXP_MASK) == EXP_MASK) as u32;
    }
    let l = lo.iter().fold(f32::INFINITY, |a, &b| if b < a { b } else { a });
    let h = hi.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    (l, h, bad.iter().any(|&b| b != 0))
}

/// 1.5 * 2^23: adding then subtracting it rounds any |v| < 2^22 to the nearest integer, halves to even, in
/// the default IEEE mode; unlike `f32::round_ties_even` it vectorizes on every x86-64.
pub const MAGIC: f32 = 12_582_912.0;
const MAGIC_BITS: i32 = 0x4B40_0000;

/// The per-channel constants of the quantize loop.
#[derive(Debug, Clone, Copy)]
pub struct Grid {
    pub scale: f32,
    pub zp: f32,
    /// `x / scale` is clamped to `[lo, hi]` before rounding; the bounds lie one step outside the code range,
    /// so the final clamp gives the same code and the rounding input stays below 2^22.
    pub lo: f32,
    pub hi: f32,
    pub qmin: f32,
    pub qmax: f32,
}

impl Grid {
    /// The grids of `(scales[i], zero_points[i])` pairs (equal lengths) on `scheme`'s code range; a scale that
    /// is not finite and > 0, or a zero point outside the range, is an error naming its index.
    pub fn checked(scales: &[f32], zero_points: &[i32], scheme: &Scheme) -> Result<Vec<Grid>> {
        let (qmin, qmax) = (scheme.qmin(), scheme.qmax());
        scales
            .iter()
            .zip(zero_points)
            .enumerate()
            .map(|(i, (&s, &z))| {
                if !(s.is_finite() && s > 0.0) {
                    return Err(QuantError::InvalidScale { index: i, value: s, reason: "must be finite and > 0" });
                }
                if z < qmin || z > qmax {
                    return Err(QuantError::InvalidZeroPoint { index: i, value: z, qmin, qmax });
                }
                let (lo, hi) = ((qmin - z - 1) as f32, (qmax - z + 1) as f32);
                Ok(Grid { scale: s, zp: z as f32, lo, hi, qmin: qmin as f32, qmax: qmax as f32 })
            })
            .collect()
    }

    /// The code of `x` as an exact integer-valued f32.
    #[inline(always)]
    pub fn code(&self, x: f32) -> f32 {
        let t = x / self.scale;
        let t = if t < self.lo { self.lo } else { t };
        let t = if t > self.hi { self.hi } else { t };
        let r = (t + MAGIC) - MAGIC;
        let q = r + self.zp;
        let q = if q < self.qmin { self.qmin } else { q };
        if q > self.qmax {
            self.qmax
        } else {
            q
        }
    }

    /// The code of `x` as an integer: the integer-valued f32 plus MAGIC holds it in its low mantissa bits,
    /// which avoids the saturating float-to-int cast that does not vectorize.
    #[inline(always)]
    pub fn code_i32(&self, x: f32) -> i32 {
        (self.code(x) + MAGIC).to_bits() as i32 - MAGIC_BITS
    }
}

/// Codes of a run of one channel.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "x86_64+sse4.1"))]
pub fn quantize_run<T: Code>(g: &Grid, x: &[f32], out: &mut [T]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = T::from_i32(g.code_i32(v));
    }
}

/// Fake-quantized values of a run of one channel.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "x86_64+sse4.1"))]
pub fn fake_quant_run(g: &Grid, x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (g.code(v) - g.zp) * g.scale;
    }
}

/// Dequantized values of a run of one channel.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "x86_64+sse4.1"))]
pub fn dequantize_run<T: Code>(g: &Grid, q: &[T], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(q) {
        *o = (v.to_f32() - g.zp) * g.scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finite_and_min_max() {
        let mut x: Vec<f32> = (0..1000).map(|i| i as f32 - 500.0).collect();
        assert!(!any_non_finite(&x));
        assert_eq!(min_max_run(&x), (-500.0, 499.0, false));
        let g = Grid { scale: 0.5, zp: 3.0, lo: -132.0, hi: 125.0, qmin: -128.0, qmax: 127.0 };
        for v in [-1e9f32, -70.25, -0.25, 0.25, 0.75, 10.0, 1e9] {
            assert_eq!(g.code_i32(v), g.code(v) as i32);
        }
        x[999] = f32::NAN;
        assert!(any_non_finite(&x));
        x[999] = f32::NEG_INFINITY;
        assert!(any_non_finite(&x));
        assert_eq!(min_max_run(&[]), (f32::INFINITY, f32::NEG_INFINITY, false));
        assert!(min_max_run(&x).2);
    }
}
