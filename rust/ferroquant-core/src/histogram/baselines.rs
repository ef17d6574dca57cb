//! Peer calibrators on the same histogram, for comparison with HFMG: min/max, percentile (onnxruntime's
//! `compute_percentile`) and KL / entropy (TensorRT's method as in onnxruntime's `get_entropy_threshold` and
//! MXNet's `_get_optimal_threshold`).
//!
//! Choices (the NumPy twin follows them):
//! - **|x| histogram.** The two-sided histogram is folded around 0 onto bins of the same width `w` starting at
//!   0 (`[j*w, (j+1)*w)`, at most `nbins` of them); a bin straddling 0 is split with the count-preserving
//!   floor rule of §4.1, and each folded interval is re-binned with the same rule. All-positive data keeps its
//!   own grid (`|x| = x`), all-negative data its reversed grid.
//! - **Percentile.** Cumulative counts are exact integers; the bin where the cumulative count first reaches
//!   `q * total` is kept whole (its upper edge is the clip; onnxruntime takes the lower edge), so
//!   `q = 1` gives the min/max range (`q` is a fraction, like IFMR's percentiles). Symmetric: one threshold
//!   `t` on |x|; two-sided: `(1-q)/2` of the mass cut from each side.
//! - **KL.** Candidates `i = nq..=n` over the |x| bins, reference `P` = the first `i` bins with the outliers
//!   added to the last one, `Q` = the first `i` bins merged into `nq` bins and spread back over the non-zero
//!   bins of `P`, both smoothed with `eps = 1e-4` (in f64), `KL(P||Q)` summed in order; argmin first on ties.
//! - Symmetric thresholds `t` give the clip `[max(-t, lo), min(t, hi)]` (no range beyond the data).

use rayon::prelude::*;

use super::hfmg::argmin_first;
use super::Histogram;
use crate::error::{QuantError, Result};
use crate::qparams::{from_range, QParams};
use crate::scheme::Scheme;
use crate::stop::Stop;

/// Smoothing of empty bins in the KL search (MXNet / onnxruntime `smooth_distribution`).
pub const KL_EPS: f64 = 1e-4;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clip {
    pub clip_min: f32,
    pub clip_max: f32,
    pub qparams: QParams,
    /// KL divergence of the chosen threshold (NaN for methods without a loss).
    pub loss: f64,
}

/// A histogram of |x|: bin `j` covers `[start + j*width, start + (j+1)*width)`.
#[derive(Debug, Clone, PartialEq)]
pub struct AbsHistogram {
    pub start: f64,
    pub width: f64,
    pub counts: Vec<u64>,
}

fn nonempty(h: &Histogram) -> Result<()> {
    if h.total() == 0 {
        return Err(QuantError::EmptyInput { what: "histogram holds no counts" });
    }
    Ok(())
}

fn clip(lo: f32, hi: f32, h: &Histogram, scheme: &Scheme, loss: f64) -> Result<Clip> {
    let (clip_min, clip_max) = (lo.max(h.lo()).min(h.hi()), hi.max(h.lo()).min(h.hi()));
    Ok(Clip { clip_min, clip_max, qparams: from_range(clip_min, clip_max, scheme, 0)?, loss })
}

/// Min/max of the histogram's range to qparams.
pub fn minmax(h: &Histogram, bits: u32, symmetric: bool) -> Result<Clip> {
    clip(h.lo(), h.hi(), h, &Scheme::new(bits, symmetric)?, f64::NAN)
}

/// Add `c` counts spread uniformly over `[u, v)` (width at most `width`) to the grid `j*width`.
fn add_interval(counts: &mut [u64], width: f64, u: f64, v: f64, c: u64) {
    let last = (counts.len() - 1) as f64;
    let i = (u / width).max(0.0).min(last) as usize;
    let j = (v / width).max(0.0).min(last) as usize;
    if i == j || v <= u {
        counts[i] += c;
    } else {
        let e = (i + 1) as f64 * width;
        let ci = ((c as f64 * ((e - u) / (v - u))).floor() as u64).min(c);
        counts[i] += ci;
        counts[j] += c - ci;
    }
}

/// The |x| histogram of `h` (see the module notes). A constant histogram (`w < FLT_EPSILON`) is not folded:
/// its callers use the min/max range instead.
pub fn fold_abs(h: &Histogram) -> AbsHistogram {
    let g = h.grid();
    let n = h.nbins();
    if h.lo() >= 0.0 {
        return AbsHistogram { start: g.lo, width: g.width, counts: h.counts().to_vec() };
    }
    if h.hi() <= 0.0 {
        let counts = h.counts().iter().rev().copied().collect();
        return AbsHistogram { start: -(h.hi() as f64), width: g.width, counts };
    }
    let mut counts = vec![0u64; n];
    for (k, &c) in h.counts().iter().enumerate().filter(|(_, &c)| c > 0) {
        let a = g.edge(k);
        let b = a + g.width;
        if a >= 0.0 {
            add_interval(&mut counts, g.width, a, b, c);
        } else if b <= 0.0 {
            add_interval(&mut counts, g.width, -b, -a, c);
        } else {
            let cn = ((c as f64 * (-a / g.width)).floor() as u64).min(c);
            add_interval(&mut counts, g.width, 0.0, -a, cn);
            add_interval(&mut counts, g.width, 0.0, b, c - cn);
        }
    }
    AbsHistogram { start: 0.0, width: g.width, counts }
}

/// Smallest `j` whose cumulative count reaches `target` (the last bin when none does).
fn first_reaching(counts: &[u64], target: f64) -> usize {
    let mut cum = 0u64;
    for (j, &c) in counts.iter().enumerate() {
        cum += c;
        if cum as f64 >= target {
            return j;
        }
    }
    counts.len() - 1
}

/// Clip at the `percentile` (a fraction in (0, 1]) of the histogram mass, on |x| when `symmetric`, else
/// cutting both tails.
pub fn percentile(h: &Histogram, percentile: f64, bits: u32, symmetric: bool) -> Result<Clip> {
    let scheme = Scheme::new(bits, symmetric)?;
    if !(percentile > 0.0 && percentile <= 1.0) {
        return Err(QuantError::InvalidParameter {
            name: "percentile",
            reason: format!("must be a fraction in (0, 1], got {percentile}"),
        });
    }
    nonempty(h)?;
    if h.grid().is_constant() {
        return minmax(h, bits, symmetric);
    }
    let total = h.total() as f64;
    if symmetric {
        let a = fold_abs(h);
        let j = first_reaching(&a.counts, percentile * total);
        let t = (a.start + (j + 1) as f64 * a.width) as f32;
        return clip(-t, t, h, &scheme, f64::NAN);
    }
    let cut = (1.0 - percentile) / 2.0;
    let left = first_reaching(h.counts(), cut * total);
    let right = first_reaching(h.counts(), (1.0 - cut) * total);
    let g = h.grid();
    clip(g.edge(left) as f32, g.edge(right + 1) as f32, h, &scheme, f64::NAN)
}

/// MXNet's `_smooth_distribution` in f64: zeros become `eps`, the rest lose `eps * zeros / nonzeros`.
/// `None` when the result would not be a positive distribution.
fn smooth(p: &mut [f64]) -> Option<()> {
    let zeros = p.iter().filter(|&&v| v == 0.0).count();
    let nonzeros = p.len() - zeros;
    if nonzeros == 0 {
        return None;
    }
    let eps1 = KL_EPS * zeros as f64 / nonzeros as f64;
    if eps1 >= 1.0 {
        return None;
    }
    for v in p.iter_mut() {
        *v = if *v == 0.0 { KL_EPS } else { *v - eps1 };
        if *v <= 0.0 {
            return None;
        }
    }
    Some(())
}

/// `KL(P||Q)` of candidate `i` (bins `0..i` of the |x| histogram, `nq` quantized bins); infinite when a
/// distribution cannot be smoothed. `outliers` = counts at and beyond bin `i`.
pub fn kl_candidate(counts: &[u64], i: usize, nq: usize, outliers: u64) -> f64 {
    let sliced = &counts[..i];
    let mut p: Vec<f64> = sliced.iter().map(|&c| c as f64).collect();
    p[i - 1] = (sliced[i - 1] + outliers) as f64;
    let merged = i / nq;
    let mut q = vec![0.0f64; i];
    for b in 0..nq {
        let s = b * merged;
        let e = if b == nq - 1 { i } else { s + merged };
        let mass: u64 = sliced[s..e].iter().sum();
        let norm = p[s..e].iter().filter(|&&v| v != 0.0).count();
        if norm > 0 {
            let v = mass as f64 / norm as f64;
            for k in s..e {
                q[k] = if p[k] != 0.0 { v } else { 0.0 };
            }
        }
    }
    if smooth(&mut p).is_none() || smooth(&mut q).is_none() {
        return f64::INFINITY;
    }
    let sp: f64 = p.iter().fold(0.0, |a, &v| a + v);
    let sq: f64 = q.iter().fold(0.0, |a, &v| a + v);
    let mut kl = 0.0f64;
    for (&a, &b) in p.iter().zip(&q) {
        let (pk, qk) = (a / sp, b / sq);
        kl += pk * (pk / qk).ln();
    }
    kl
}

/// Largest histogram the KL search takes: its candidates cost O(nbins) each, so the search is O(nbins^2)
/// (about a second at this size on one core).
pub const KL_MAX_BINS: usize = 1 << 13;
/// Candidates per chunk between two checks of the stop token.
const KL_CHUNK: usize = 64;

/// KL divergence of every candidate `i = nq..=n` of the |x| histogram, in order.
pub fn kl_divergences(a: &AbsHistogram, nq: usize, stop: &Stop) -> Result<Vec<f64>> {
    let n = a.counts.len();
    if nq < 2 || nq > n {
        return Err(QuantError::InvalidParameter {
            name: "num_quantized_bins",
            reason: format!("must be in [2, nbins = {n}], got {nq}"),
        });
    }
    if n > KL_MAX_BINS {
        return Err(QuantError::InvalidParameter {
            name: "nbins",
            reason: format!("the KL search takes at most {KL_MAX_BINS} bins (it is quadratic), got {n}"),
        });
    }
    let mut suffix = vec![0u64; n + 1];
    for k in (0..n).rev() {
        suffix[k] = suffix[k + 1] + a.counts[k];
    }
    let f = |i: usize| kl_candidate(&a.counts, i, nq, suffix[i]);
    let idx: Vec<usize> = (nq..=n).collect();
    let parts = idx
        .par_chunks(KL_CHUNK)
        .map(|c| stop.check().map(|_| c.iter().map(|&i| f(i)).collect::<Vec<f64>>()))
        .collect::<Result<Vec<_>>>()?;
    Ok(parts.concat())
}

/// TensorRT's entropy calibration: the |x| threshold with the smallest `KL(P||Q)`.
pub fn kl(h: &Histogram, bits: u32, symmetric: bool, num_quantized_bins: usize, stop: &Stop) -> Result<Clip> {
    let scheme = Scheme::new(bits, symmetric)?;
    nonempty(h)?;
    if h.grid().is_constant() {
        return minmax(h, bits, symmetric);
    }
    let a = fold_abs(h);
    let kls = kl_divergences(&a, num_quantized_bins, stop)?;
    let best = argmin_first(&kls).unwrap_or(kls.len() - 1);
    let t = (a.start + (best + num_quantized_bins) as f64 * a.width) as f32;
    clip(-t, t, h, &scheme, kls[best])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauss(n: usize, lo: f32, hi: f32) -> Histogram {
        let counts = (0..n)
            .map(|k| {
                let t = (k as f64 + 0.5 - n as f64 / 2.0) / (n as f64 / 10.0);
                (10000.0 * (-t * t / 2.0).exp()) as u64
            })
            .collect();
        Histogram::from_parts(counts, lo, hi).unwrap()
    }

    #[test]
    fn fold_preserves_total() {
        let h = gauss(512, -3.0, 5.0);
        let a = fold_abs(&h);
        assert_eq!(a.counts.iter().sum::<u64>(), h.total());
        assert_eq!(a.start, 0.0);
        let neg = Histogram::from_parts(vec![1, 2, 3, 4], -4.0, -2.0).unwrap();
        let a = fold_abs(&neg);
        assert_eq!((a.start, a.counts.clone()), (2.0, vec![4, 3, 2, 1]));
    }

    #[test]
    fn percentile_100_is_minmax() {
        let mut c = gauss(256, -3.0, 5.0).into_counts();
        (c[0], c[255]) = (1, 1);
        let h = Histogram::from_parts(c, -3.0, 5.0).unwrap();
        let p = percentile(&h, 1.0, 8, false).unwrap();
        assert_eq!((p.clip_min, p.clip_max), (-3.0, 5.0));
        let p = percentile(&h, 0.99, 8, true).unwrap();
        assert!(percentile(&h, 99.0, 8, true).is_err());
        assert!(p.clip_max < 5.0 && p.clip_min == -p.clip_max);
        assert!(percentile(&h, 0.0, 8, true).is_err());
        assert!(percentile(&h, f64::NAN, 8, true).is_err());
    }

    #[test]
    fn kl_clips_long_tail() {
        let mut h = gauss(2048, -8.0, 8.0);
        let mut c = h.counts().to_vec();
        c[2047] = 1;
        c[0] = 1;
        h = Histogram::from_parts(c, -8.0, 8.0).unwrap();
        let k = kl(&h, 8, true, 128, &crate::stop::NEVER).unwrap();
        assert!(k.clip_max < 8.0 && k.clip_max > 1.0);
        assert!(k.loss.is_finite());
        assert!(kl(&gauss(64, -1.0, 1.0), 8, true, 128, &crate::stop::NEVER).is_err());
        let m = minmax(&h, 8, false).unwrap();
        assert_eq!((m.clip_min, m.clip_max), (-8.0, 8.0));
    }
}
