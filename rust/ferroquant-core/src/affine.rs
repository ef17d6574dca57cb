//! Quantize, dequantize and fake-quant (spec §0), per tensor or per channel along any axis.
//!
//! `q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax)`, `x_hat = (q - zero_point) * scale`.
//! `x / scale` is computed in f32 (not `x * (1/scale)`), so the NumPy twin gives the same bits.

use crate::error::{QuantError, Result};
use crate::kernels::{any_non_finite, dequantize_run, fake_quant_run, quantize_run, Grid};
use crate::layout::ChannelLayout;
use crate::par::{zip_chunks_mut, CHUNK};
use crate::scheme::Scheme;

pub use crate::kernels::Code;

/// One checked (scale, zero point) grid per channel of a layout: scales finite and > 0, zero points within the
/// scheme's range. Built once, read by [`quantize`], [`fake_quant`] and [`dequantize`].
pub struct ChannelGrids<'a> {
    layout: &'a ChannelLayout,
    scheme: Scheme,
    grids: Vec<Grid>,
}

impl<'a> ChannelGrids<'a> {
    pub fn new(layout: &'a ChannelLayout, scales: &[f32], zero_points: &[i32], scheme: &Scheme) -> Result<Self> {
        let c = layout.channels;
        let lens = [("scale (one per channel)", scales.len()), ("zero_point (one per channel)", zero_points.len())];
        for (what, got) in lens {
            if got != c {
                return Err(QuantError::ShapeMismatch { what, expected: c, got });
            }
        }
        let grids = Grid::checked(scales, zero_points, scheme)?;
        Ok(Self { layout, scheme: *scheme, grids })
    }
}

fn check_codes_fit<T: Code>(scheme: &Scheme) -> Result<()> {
    if scheme.bits > T::BITS {
        return Err(QuantError::InvalidParameter {
            name: "bits",
            reason: format!("{} bits do not fit the {}-bit output type", scheme.bits, T::BITS),
        });
    }
    Ok(())
}

/// Run `body(grid, x_run, out_run)` over every channel run, fixed chunks in parallel; returns the first
/// non-finite input as an error.
fn for_runs<U: Send>(
    x: &[f32],
    out: &mut [U],
    g: &ChannelGrids<'_>,
    body: impl Fn(&Grid, &[f32], &mut [U]) + Sync + Send,
) -> Result<()> {
    let (layout, grids) = (g.layout, &g.grids);
    layout.check_len("input", x.len())?;
    layout.check_len("output", out.len())?;
    let bad = zip_chunks_mut(x, out, CHUNK, |start, xc, oc| {
        layout.for_each_run(start, xc.len(), |off, n, ch| {
            body(&grids[ch], &xc[off..off + n], &mut oc[off..off + n]);
        });
        if !any_non_finite(xc) {
            None
        } else {
            xc.iter().position(|v| !v.is_finite()).map(|i| (start + i, xc[i]))
        }
    });
    match bad.into_iter().flatten().next() {
        Some((index, value)) => Err(QuantError::NonFinite { index, value }),
        None => Ok(()),
    }
}

/// Quantize `x` into `out` on the channel grids.
pub fn quantize<T: Code>(x: &[f32], g: &ChannelGrids<'_>, out: &mut [T]) -> Result<()> {
    check_codes_fit::<T>(&g.scheme)?;
    for_runs(x, out, g, |g, xr, or| quantize_run(g, xr, or))
}

/// Quantize then dequantize: the float the deployed integer stands for.
pub fn fake_quant(x: &[f32], g: &ChannelGrids<'_>, out: &mut [f32]) -> Result<()> {
    for_runs(x, out, g, fake_quant_run)
}

/// `(q - zero_point) * scale` per channel.
/// Codes must lie in the scheme's `[qmin, qmax]`: wider ones (int16/int32 arrays, or a smaller `bits`) are not
/// codes of this grid, and dequantizing them would give values the grid cannot hold (even inf).
fn check_codes<T: Code>(q: &[T], scheme: &Scheme) -> Result<()> {
    let (lo, hi) = (scheme.qmin() as f32, scheme.qmax() as f32);
    let bad = crate::par::map_chunks(q, CHUNK, |start, c| {
        c.iter().position(|v| !(lo..=hi).contains(&v.to_f32())).map(|i| (start + i, c[i].to_f32()))
    });
    match bad.into_iter().flatten().next() {
        None => Ok(()),
        Some((index, v)) => Err(QuantError::InvalidParameter {
            name: "q",
            reason: format!(
                "code {v} at flat index {index} is outside [{}, {}] for {} bits",
                scheme.qmin(),
                scheme.qmax(),
                scheme.bits
            ),
        }),
    }
}

pub fn dequantize<T: Code>(q: &[T], g: &ChannelGrids<'_>, out: &mut [f32]) -> Result<()> {
    let (layout, scheme) = (g.layout, &g.scheme);
    layout.check_len("input", q.len())?;
    layout.check_len("output", out.len())?;
    check_codes(q, scheme)?;
    let g = &g.grids;
    zip_chunks_mut(q, out, CHUNK, |start, qc, oc| {
        layout.for_each_run(start, qc.len(), |off, n, ch| {
            dequantize_run(&g[ch], &qc[off..off + n], &mut oc[off..off + n]);
        });
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The grids built and checked in the same call, as the callers that quantize once do.
    fn quantize<T: Code>(x: &[f32], l: &ChannelLayout, s: &[f32], z: &[i32], sc: &Scheme, out: &mut [T]) -> Result<()>
    {
        super::quantize(x, &ChannelGrids::new(l, s, z, sc)?, out)
    }

    fn fake_quant(x: &[f32], l: &ChannelLayout, s: &[f32], z: &[i32], sc: &Scheme, out: &mut [f32]) -> Result<()> {
        super::fake_quant(x, &ChannelGrids::new(l, s, z, sc)?, out)
    }

    #[test]
    fn ties_round_to_even() {
        let s = Scheme::new(8, true).unwrap();
        let l = ChannelLayout::per_tensor(6);
        let x = [0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5];
        let mut q = [0i8; 6];
        quantize(&x, &l, &[1.0], &[0], &s, &mut q).unwrap();
        assert_eq!(q, [0, 2, 2, 0, -2, -2]);
    }

    #[test]
    fn clamps_and_handles_huge_values() {
        let s = Scheme::new(8, false).unwrap();
        let l = ChannelLayout::per_tensor(4);
        let x = [1e30f32, -1e30, 3.0e38, 0.0];
        let mut q = [0i8; 4];
        quantize(&x, &l, &[1e-3], &[-5], &s, &mut q).unwrap();
        assert_eq!(q, [127, -128, 127, -5]);
    }

    #[test]
    fn per_channel_axis1() {
        let s = Scheme::new(8, true).unwrap();
        let l = ChannelLayout::along(&[2, 2, 2], 1).unwrap();
        let x = [1.0f32, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0];
        let mut out = [0f32; 8];
        fake_quant(&x, &l, &[1.0, 0.5], &[0, 0], &s, &mut out).unwrap();
        assert_eq!(out, x);
        let mut q = [0i8; 8];
        quantize(&x, &l, &[1.0, 0.5], &[0, 0], &s, &mut q).unwrap();
        assert_eq!(q, [1, 2, 2, 4, 1, 2, 2, 4]);
    }

    #[test]
    fn errors() {
        let s = Scheme::new(8, true).unwrap();
        let l = ChannelLayout::per_tensor(2);
        let mut q = [0i8; 2];
        assert!(matches!(
            quantize(&[1.0, f32::NAN], &l, &[1.0], &[0], &s, &mut q),
            Err(QuantError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(quantize(&[1.0, 2.0], &l, &[0.0], &[0], &s, &mut q), Err(QuantError::InvalidScale { .. })));
        assert!(matches!(quantize(&[1.0, 2.0], &l, &[1.0], &[300], &s, &mut q), Err(QuantError::InvalidZeroPoint { .. })));
        let s16 = Scheme::new(16, true).unwrap();
        assert!(quantize(&[1.0, 2.0], &l, &[1.0], &[0], &s16, &mut q).is_err());
    }
}
