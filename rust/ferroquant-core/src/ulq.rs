//! QAT kernels (spec §5): ULQ for activations (learned `clip_min`/`clip_max`), its straight-through backward,
//! and the LSQ backward of learned per-channel weight scales (AMCT's "ULQ for weights").
//!
//! The forward passes are `affine::fake_quant` with the qparams of §0; only the backward passes are new here.
//! Reductions run over fixed chunks with f64 partial sums combined in chunk order, so the gradients do not
//! depend on the thread count (decision 9).

use multiversion::multiversion;

use crate::affine::{fake_quant, ChannelGrids};
use crate::error::{QuantError, Result};
use crate::kernels::{any_non_finite, MAGIC};
use crate::layout::ChannelLayout;
use crate::par::{map_chunks, zip_chunks_mut, CHUNK};
use crate::qparams::{from_range, QParams};
use crate::scheme::{Scheme, FLT_EPSILON};

/// Gradients of a ULQ step for the two learned clips.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipGrads {
    pub clip_max: f64,
    pub clip_min: f64,
}

/// Qparams of the clip range `[clip_min, clip_max]` (spec §5.1 step 3: `calculate_scale_offset`, i.e. §0).
pub fn ulq_qparams(clip_min: f32, clip_max: f32, scheme: &Scheme) -> Result<QParams> {
    from_range(clip_min, clip_max, scheme, 0)
}

/// ULQ forward: fake-quantize `x` into `out` with the qparams of `[clip_min, clip_max]`; returns them.
pub fn ulq_fake_quant(x: &[f32], clip_min: f32, clip_max: f32, scheme: &Scheme, out: &mut [f32]) -> Result<QParams> {
    let p = ulq_qparams(clip_min, clip_max, scheme)?;
    let layout = ChannelLayout::per_tensor(x.len());
    fake_quant(x, &ChannelGrids::new(&layout, &[p.scale], &[p.zero_point], scheme)?, out)?;
    Ok(p)
}

fn check_same_len(x: &[f32], g: &[f32]) -> Result<()> {
    if x.len() != g.len() {
        return Err(QuantError::ShapeMismatch { what: "grad (same shape as x)", expected: x.len(), got: g.len() });
    }
    Ok(())
}

fn first_bad(start: usize, a: &[f32], b: &[f32]) -> Option<(usize, f32)> {
    if !any_non_finite(a) && !any_non_finite(b) {
        return None;
    }
    let i = a.iter().zip(b).position(|(u, v)| !u.is_finite() || !v.is_finite())?;
    Some((start + i, if a[i].is_finite() { b[i] } else { a[i] }))
}

/// The constants of one ULQ backward run.
#[derive(Clone, Copy)]
struct UlqGrid {
    scale: f32,
    up: f32,
    lo: f32,
    t_up: f32,
    t_lo: f32,
    inv_n: f32,
}

/// One chunk: writes `g * inside` into `gx` and returns `(Σ g·(e + up), Σ g·(lo − e))` in f64.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "x86_64+sse4.1"))]
fn ulq_backward_run(u: &UlqGrid, x: &[f32], g: &[f32], gx: &mut [f32]) -> (f64, f64) {
    let (mut gmax, mut gmin) = (0f64, 0f64);
    for ((&v, &gv), o) in x.iter().zip(g).zip(gx.iter_mut()) {
        let is_up = v > u.up;
        let is_lo = v < u.lo;
        let t = if is_up {
            u.t_up
        } else if is_lo {
            u.t_lo
        } else {
            v / u.scale
        };
        // |t| is below 2^22 here: inside the grid, or one of the two clip ratios checked by the caller.
        let e = ((t + MAGIC) - MAGIC - t) * u.inv_n;
        let up = if is_up { 1f32 } else { 0f32 };
        let lo = if is_lo { 1f32 } else { 0f32 };
        *o = if is_up || is_lo { 0.0 } else { gv };
        gmax += f64::from(gv * (e + up));
        gmin += f64::from(gv * (lo - e));
    }
    (gmax, gmin)
}

/// ULQ backward (spec §5.1, STE): with `s, o` the qparams of the clips, `up = x > s·(qmax − o)`,
/// `lo = x < s·(qmin − o)`, `t = clip_max/s | clip_min/s | x/s`, `e = (round(t) − t)/n` with `n = 2^b − 1`:
/// writes `∂L/∂x = g·(¬up ∧ ¬lo)` into `grad_x` and returns `∂L/∂clip_max = Σ g·(e + up)`,
/// `∂L/∂clip_min = Σ g·(lo − e)` (f64 sums over fixed chunks, combined in order).
pub fn ulq_backward(
    x: &[f32],
    grad: &[f32],
    clip_min: f32,
    clip_max: f32,
    scheme: &Scheme,
    grad_x: &mut [f32],
) -> Result<ClipGrads> {
    check_same_len(x, grad)?;
    if grad_x.len() != x.len() {
        return Err(QuantError::ShapeMismatch { what: "grad_x (same shape as x)", expected: x.len(), got: grad_x.len() });
    }
    let p = ulq_qparams(clip_min, clip_max, scheme)?;
    let (s, o) = (p.scale, p.zero_point as f32);
    let t_up = clip_max / s;
    let t_lo = clip_min / s;
    if !(t_up.abs() < 4_194_304.0 && t_lo.abs() < 4_194_304.0) {
        return Err(QuantError::InvalidParameter {
            name: "clip_min/clip_max",
            reason: format!("clips [{clip_min}, {clip_max}] are more than 2^22 steps of scale {s} from zero"),
        });
    }
    let u = UlqGrid {
        scale: s,
        up: s * (scheme.qmax() as f32 - o),
        lo: s * (scheme.qmin() as f32 - o),
        t_up,
        t_lo,
        inv_n: 1.0 / scheme.levels() as f32,
    };
    // Work on pairs (x, g) through an index-free zip: chunk x and grad_x together, grad by the same offsets.
    let parts = zip_chunks_mut(x, grad_x, CHUNK, |start, xc, oc| {
        let gc = &grad[start..start + xc.len()];
        let bad = first_bad(start, xc, gc);
        (ulq_backward_run(&u, xc, gc, oc), bad)
    });
    let mut out = ClipGrads { clip_max: 0.0, clip_min: 0.0 };
    for ((a, b), bad) in parts {
        if let Some((index, value)) = bad {
            return Err(QuantError::NonFinite { index, value });
        }
        out.clip_max += a;
        out.clip_min += b;
    }
    Ok(out)
}

/// One run of one channel: `Σ g·∂ŵ/∂s` with `∂ŵ/∂s = round(w/s) − w/s` inside, `qmin` below, `qmax` above.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "x86_64+sse4.1"))]
fn lsq_backward_run(scale: f32, qmin: f32, qmax: f32, w: &[f32], g: &[f32]) -> f64 {
    let mut acc = 0f64;
    for (&v, &gv) in w.iter().zip(g) {
        let t = v / scale;
        let d = if t < qmin {
            qmin
        } else if t > qmax {
            qmax
        } else {
            ((t + MAGIC) - MAGIC) - t
        };
        acc += f64::from(gv * d);
    }
    acc
}

/// LSQ backward of learned symmetric per-channel weight scales (spec §5.2, offset 0): returns, per channel
/// `c` of `layout`, `g_c · Σ grad·∂ŵ/∂s` with the LSQ gradient scale `g_c = 1/sqrt(N_c·qmax)`. The weight's
/// own gradient is the incoming one unchanged (straight through, no mask), so it is not computed here.
pub fn lsq_backward(w: &[f32], grad: &[f32], layout: &ChannelLayout, scales: &[f32], scheme: &Scheme) -> Result<Vec<f32>> {
    check_same_len(w, grad)?;
    layout.check_len("w", w.len())?;
    let c = layout.channels;
    if scales.len() != c {
        return Err(QuantError::ShapeMismatch { what: "scale (one per channel)", expected: c, got: scales.len() });
    }
    if let Some((i, &s)) = scales.iter().enumerate().find(|(_, s)| !(s.is_finite() && **s >= FLT_EPSILON)) {
        return Err(QuantError::InvalidScale { index: i, value: s, reason: "must be finite and >= FLT_EPSILON" });
    }
    let (qmin, qmax) = (scheme.qmin() as f32, scheme.qmax() as f32);
    let parts = map_chunks(w, CHUNK, |start, wc| {
        let gc = &grad[start..start + wc.len()];
        let mut acc = vec![0f64; c];
        layout.for_each_run(start, wc.len(), |off, n, ch| {
            acc[ch] += lsq_backward_run(scales[ch], qmin, qmax, &wc[off..off + n], &gc[off..off + n]);
        });
        (acc, first_bad(start, wc, gc))
    });
    let mut sums = vec![0f64; c];
    for (acc, bad) in parts {
        if let Some((index, value)) = bad {
            return Err(QuantError::NonFinite { index, value });
        }
        for (s, a) in sums.iter_mut().zip(acc) {
            *s += a;
        }
    }
    let per_channel = (layout.outer * layout.inner) as f64;
    let gscale = 1.0 / (per_channel * f64::from(qmax)).sqrt();
    Ok(sums.iter().map(|&v| (v * gscale) as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulq_forward_matches_affine() {
        let s = Scheme::new(8, false).unwrap();
        let x = [-1.0f32, -0.2, 0.0, 0.3, 0.9, 2.0];
        let mut out = [0f32; 6];
        let p = ulq_fake_quant(&x, -0.5, 1.0, &s, &mut out).unwrap();
        assert_eq!(p, from_range(-0.5, 1.0, &s, 0).unwrap());
        assert!((out[0] - p.scale * (-128 - p.zero_point) as f32).abs() < 1e-6);
        assert!((out[5] - p.scale * (127 - p.zero_point) as f32).abs() < 1e-6);
    }

    #[test]
    fn ulq_backward_masks_and_sums() {
        let s = Scheme::new(8, false).unwrap();
        let x = [-3.0f32, 0.1, 0.5, 5.0];
        let g = [1.0f32, 1.0, 1.0, 2.0];
        let mut gx = [9f32; 4];
        let r = ulq_backward(&x, &g, -1.0, 1.0, &s, &mut gx).unwrap();
        assert_eq!(gx, [0.0, 1.0, 1.0, 0.0]);
        // Up contributes 2·(1 + e_up), lo contributes 1·(1 − e_lo); inside terms are small.
        assert!((r.clip_max - 2.0).abs() < 0.05, "{r:?}");
        assert!((r.clip_min - 1.0).abs() < 0.05, "{r:?}");
    }

    #[test]
    fn lsq_backward_clamped_and_inside() {
        let s = Scheme::new(4, true).unwrap();
        let l = ChannelLayout::along(&[2, 2], 0).unwrap();
        let w = [100.0f32, -100.0, 0.25, 0.0];
        let g = [1.0f32, 1.0, 1.0, 1.0];
        let r = lsq_backward(&w, &g, &l, &[1.0, 1.0], &s).unwrap();
        let gs = 1.0 / (2.0f64 * 7.0).sqrt();
        assert!((f64::from(r[0]) - (7.0 - 8.0) * gs).abs() < 1e-6);
        assert!((f64::from(r[1]) - (-0.25) * gs).abs() < 1e-6);
        assert!(lsq_backward(&w, &g, &l, &[0.0, 1.0], &s).is_err());
        assert!(lsq_backward(&w, &g[..3], &l, &[1.0, 1.0], &s).is_err());
    }

    #[test]
    fn deterministic_across_chunking() {
        let n = 300_000;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect();
        let g: Vec<f32> = (0..n).map(|i| ((i * 31) % 17) as f32 / 17.0 - 0.5).collect();
        let s = Scheme::new(8, false).unwrap();
        let mut a = vec![0f32; n];
        let mut b = vec![0f32; n];
        let r1 = ulq_backward(&x, &g, -1.5, 1.5, &s, &mut a).unwrap();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let r2 = pool.install(|| ulq_backward(&x, &g, -1.5, 1.5, &s, &mut b)).unwrap();
        assert_eq!(r1, r2);
        assert_eq!(a, b);
    }
}
