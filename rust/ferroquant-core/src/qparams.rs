//! Scale and zero point from a range (spec §0): the symmetric 127/128 rule, the asymmetric rule with the range
//! widened to include zero, and AMCT's scale guard.

use crate::error::{QuantError, Result};
use crate::kernels::min_max_run;
use crate::layout::ChannelLayout;
use crate::par::{map_chunks, CHUNK};
use crate::scheme::{Scheme, FLT_EPSILON};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: i32,
}

/// Scale and zero point for the range `[lo, hi]`, guarded. `index` names the channel in errors.
pub fn from_range(lo: f32, hi: f32, scheme: &Scheme, index: usize) -> Result<QParams> {
    if !lo.is_finite() {
        return Err(QuantError::NonFinite { index, value: lo });
    }
    if !hi.is_finite() {
        return Err(QuantError::NonFinite { index, value: hi });
    }
    let (scale, zero_point) = if scheme.symmetric {
        // The signed bound of larger magnitude; positive wins a tie.
        let a = if hi.abs() >= lo.abs() { hi } else { lo };
        let s = if a > 0.0 { a / scheme.qmax() as f32 } else { a.abs() / (-scheme.qmin()) as f32 };
        (s, 0)
    } else {
        let big = hi.max(0.0);
        let small = lo.min(0.0);
        let s = (big - small) / scheme.levels() as f32;
        let o = if s > 0.0 && s.is_finite() {
            (scheme.qmin() as f32 - round_ties_even(small / s)).clamp(scheme.qmin() as f32, scheme.qmax() as f32)
                as i32
        } else {
            scheme.qmin()
        };
        (s, o)
    };
    guard(scale, zero_point, scheme, index)
}

/// AMCT's `ProcessScale`: a scale below `FLT_EPSILON` becomes 1 (offset `qmin` with an offset); a scale that
/// is not finite, or whose reciprocal is below `FLT_EPSILON`, is an error.
pub fn guard(scale: f32, zero_point: i32, scheme: &Scheme, index: usize) -> Result<QParams> {
    if !scale.is_finite() {
        return Err(QuantError::InvalidScale { index, value: scale, reason: "not finite (range too wide)" });
    }
    if scale < FLT_EPSILON {
        let zp = if scheme.symmetric { 0 } else { scheme.qmin() };
        return Ok(QParams { scale: 1.0, zero_point: zp });
    }
    if 1.0 / scale < FLT_EPSILON {
        return Err(QuantError::InvalidScale {
            index,
            value: scale,
            reason: "1/scale is below FLT_EPSILON (values too large to quantize)",
        });
    }
    Ok(QParams { scale, zero_point })
}

/// Round half to even for any finite f32 (exact for every magnitude).
#[inline]
pub fn round_ties_even(v: f32) -> f32 {
    v.round_ties_even()
}

/// `(min, max)` over `x`, or the first non-finite value as an error.
pub fn min_max(x: &[f32]) -> Result<(f32, f32)> {
    let layout = ChannelLayout::per_tensor(x.len());
    let (lo, hi) = min_max_per_channel(x, &layout)?;
    Ok((lo[0], hi[0]))
}

/// Per-channel `(min, max)` vectors, or the first non-finite value as an error. Empty input is an error.
pub fn min_max_per_channel(x: &[f32], layout: &ChannelLayout) -> Result<(Vec<f32>, Vec<f32>)> {
    layout.check_len("input", x.len())?;
    if x.is_empty() {
        return Err(QuantError::EmptyInput { what: "cannot take min/max of an empty array" });
    }
    let c = layout.channels;
    let partials = map_chunks(x, CHUNK, |start, chunk| {
        let mut lo = vec![f32::INFINITY; c];
        let mut hi = vec![f32::NEG_INFINITY; c];
        let mut bad = None;
        layout.for_each_run(start, chunk.len(), |off, n, ch| {
            let run = &chunk[off..off + n];
            let (l, h, non_finite) = min_max_run(run);
            if bad.is_none() && non_finite {
                let i = run.iter().position(|v| !v.is_finite()).unwrap_or(0);
                bad = Some((start + off + i, run[i]));
            }
            lo[ch] = if l < lo[ch] { l } else { lo[ch] };
            hi[ch] = if h > hi[ch] { h } else { hi[ch] };
        });
        (lo, hi, bad)
    });
    let mut lo = vec![f32::INFINITY; c];
    let mut hi = vec![f32::NEG_INFINITY; c];
    for (pl, ph, bad) in partials {
        if let Some((index, value)) = bad {
            return Err(QuantError::NonFinite { index, value });
        }
        for k in 0..c {
            lo[k] = if pl[k] < lo[k] { pl[k] } else { lo[k] };
            hi[k] = if ph[k] > hi[k] { ph[k] } else { hi[k] };
        }
    }
    Ok((lo, hi))
}

/// Guarded qparams for each channel of `x`.
pub fn from_data(x: &[f32], layout: &ChannelLayout, scheme: &Scheme) -> Result<Vec<QParams>> {
    let (lo, hi) = min_max_per_channel(x, layout)?;
    lo.iter().zip(&hi).enumerate().map(|(i, (&l, &h))| from_range(l, h, scheme, i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym8() -> Scheme {
        Scheme::new(8, true).unwrap()
    }

    #[test]
    fn symmetric_127_128_rule() {
        let p = from_range(-1.0, 2.54, &sym8(), 0).unwrap();
        assert_eq!(p.scale, 2.54f32 / 127.0);
        let p = from_range(-2.56, 1.0, &sym8(), 0).unwrap();
        assert_eq!(p.scale, 2.56f32 / 128.0);
        assert_eq!(p.zero_point, 0);
    }

    #[test]
    fn asymmetric_includes_zero() {
        let s = Scheme::new(8, false).unwrap();
        let p = from_range(1.0, 2.55, &s, 0).unwrap();
        assert_eq!(p.scale, 2.55f32 / 255.0);
        assert_eq!(p.zero_point, -128);
        let p = from_range(-2.55, -1.0, &s, 0).unwrap();
        assert_eq!(p.zero_point, 127);
    }

    #[test]
    fn guard_handles_zero_and_huge() {
        let p = from_range(0.0, 0.0, &sym8(), 0).unwrap();
        assert_eq!((p.scale, p.zero_point), (1.0, 0));
        let p = from_range(0.0, 0.0, &Scheme::new(8, false).unwrap(), 0).unwrap();
        assert_eq!((p.scale, p.zero_point), (1.0, -128));
        assert!(matches!(from_range(-3e38, 3e38, &Scheme::new(8, false).unwrap(), 2),
            Err(QuantError::InvalidScale { index: 2, .. })));
        assert!(from_range(0.0, 1e10, &sym8(), 0).is_err());
        assert!(from_range(0.0, f32::NAN, &sym8(), 0).is_err());
    }

    #[test]
    fn min_max_reports_first_nan() {
        let mut x = vec![1.0f32; 200_000];
        x[150_000] = f32::NAN;
        x[199_999] = f32::INFINITY;
        assert!(matches!(min_max(&x), Err(QuantError::NonFinite { index: 150_000, .. })));
    }
}
