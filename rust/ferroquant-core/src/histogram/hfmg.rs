//! HFMG clip search on a histogram (spec §4.2, §4.3): AMCT's candidate truncations, the L2 loss of re-binning
//! each candidate into `2^bits` destination bins, the global argmin (first on ties).
//!
//! Each candidate's loss is summed sequentially over the source bins in f64 by one thread (candidates run in
//! parallel), so the result is the same whatever the thread count, and the NumPy twin (which sums in the same
//! order) chooses the same candidate. Symmetric output uses the §0 127/128 rule through `qparams::from_range`
//! (AMCT's C++ divides by `127 + eps` / `128 + eps`; the difference is below one ulp of the scale's meaning).

use rayon::prelude::*;

use super::{trunc_small, Histogram};
use crate::error::{QuantError, Result};
use crate::qparams::{from_range, QParams};
use crate::scheme::{Scheme, FLT_EPSILON};

/// `STEP_DIVISOR`: each candidate trims at least `total / STEP_DIVISOR` counts.
pub const STEP_DIVISOR: u64 = 100_000;
/// `MIN_BIN_RATIO`: candidates keep more than `nbins / MIN_BIN_RATIO` bins.
pub const MIN_BIN_RATIO: usize = 4;
/// Below this many (candidate x bin) terms the losses are computed on the calling thread.
const PAR_WORK: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipSearch {
    /// Index of the chosen candidate in `candidates()`.
    pub index: usize,
    /// First and last kept bin.
    pub left: usize,
    pub right: usize,
    pub clip_min: f32,
    pub clip_max: f32,
    pub qparams: QParams,
    /// The loss of the returned bounds.
    pub loss: f64,
    /// Whether the refinement moved the bounds away from AMCT's winner (candidate `index`).
    pub refined: bool,
}

/// The candidate truncations `(l, r)` of spec §4.2, in the order AMCT records them. When the rule yields none
/// (only for nbins = 2), the full range `(0, nbins-1)` is the one candidate.
pub fn candidates(counts: &[u64]) -> Vec<(usize, usize)> {
    let n = counts.len();
    if n == 0 {
        return vec![];
    }
    let total = counts.iter().fold(0u64, |a, &c| a.saturating_add(c));
    let step = total.div_ceil(STEP_DIVISOR).max(1);
    let min_bins = n.div_ceil(MIN_BIN_RATIO);
    let (mut l, mut r) = (0usize, n - 1);
    let mut out = Vec::with_capacity(n);
    while r - l > min_bins {
        let (mut tl, mut tr) = (l, r);
        let (mut ls, mut rs) = (0u64, 0u64);
        while tl < tr && ls < step {
            ls = ls.saturating_add(counts[tl]);
            tl += 1;
        }
        while tl < tr && rs < step {
            rs = rs.saturating_add(counts[tr]);
            tr -= 1;
        }
        if r - tr >= tl - l {
            r = tr;
        } else {
            l = tl;
        }
        out.push((l, r));
    }
    if out.is_empty() {
        out.push((0, n - 1));
    }
    out
}

#[inline(always)]
fn norm(rho: f64, u: f64, v: f64) -> f64 {
    rho * (v * v * v - u * u * u) / 3.0
}

/// Densities `count_k / w` of the source bins.
pub fn densities(counts: &[u64], w: f64) -> Vec<f64> {
    counts.iter().map(|&c| c as f64 / w).collect()
}

/// L2 loss of candidate `(l, r)` (spec §4.3): densities `rho = count / w`, bin width `w`, `dst = 2^bits`
/// destination bins.
pub fn loss(rho: &[f64], w: f64, l: usize, r: usize, dst: usize) -> f64 {
    let dw = w * (r - l + 1) as f64 / dst as f64;
    if dw.is_nan() || dw < FLT_EPSILON as f64 {
        return 0.0;
    }
    let last = (dst - 1) as f64;
    let half = dw / 2.0;
    let mid_norm = dw * dw * dw / 12.0;
    // Bins left of l lie wholly below 0, so they clamp to destination bin 0; bins right of r start at or past
    // dst * dw, so they clamp to the last one. Their terms are computed exactly as in the general case (same
    // operations, same order of summation), without the divisions that only found those clamped indices.
    let (c_first, c_last) = (half, (last + 0.5) * dw);
    let mut total = 0.0f64;
    for (k, &rho) in rho.iter().enumerate() {
        if rho == 0.0 {
            continue;
        }
        let beg = (k as f64 - l as f64) * w;
        let end = beg + w;
        if k < l {
            total += norm(rho, beg - c_first, end - c_first);
            continue;
        }
        if k > r {
            total += norm(rho, beg - c_last, end - c_last);
            continue;
        }
        let d0 = trunc_small((beg / dw).max(0.0).min(last)) as usize;
        let d1 = trunc_small((end / dw).max(0.0).min(last)) as usize;
        let c0 = (d0 as f64 + 0.5) * dw;
        total += if d0 == d1 {
            norm(rho, beg - c0, end - c0)
        } else {
            let c1 = (d1 as f64 + 0.5) * dw;
            let mid = (d1 - d0 - 1) as f64;
            norm(rho, beg - c0, half) + mid * rho * mid_norm + norm(rho, -half, end - c1)
        };
    }
    total
}

pub fn losses(h: &Histogram, cands: &[(usize, usize)], bits: u32) -> Result<Vec<f64>> {
    crate::scheme::check_bits(bits)?;
    let w = h.grid().width;
    Ok(eval_pairs(&densities(h.counts(), w), w, 1usize << bits, cands))
}

/// Index of the smallest value, first on ties (NaN never wins).
pub fn argmin_first(v: &[f64]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &x) in v.iter().enumerate() {
        let better = match best {
            None => true,
            Some(b) => x < v[b],
        };
        if better && !x.is_nan() {
            best = Some(i);
        }
    }
    best
}

/// `lo + k*w` in f64, as f32 clamped into the histogram's range (so it stays finite).
pub(crate) fn edge_f32(h: &Histogram, k: usize) -> f32 {
    let g = h.grid();
    (g.edge(k) as f32).max(h.lo()).min(h.hi())
}

/// HFMG: the candidate with the smallest loss, its clip range and qparams.
/// Stride of the coarse pass of a refinement scan.
pub const REFINE_STRIDE: usize = 16;
/// Rounds of coordinate refinement (each scans the upper bound, then the lower one).
pub const REFINE_ROUNDS: usize = 4;

fn eval_pairs(rho: &[f64], w: f64, dst: usize, pairs: &[(usize, usize)]) -> Vec<f64> {
    let f = |&(l, r): &(usize, usize)| loss(rho, w, l, r, dst);
    if pairs.len() * rho.len() < PAR_WORK {
        pairs.iter().map(f).collect()
    } else {
        pairs.par_iter().map(f).collect()
    }
}

/// Best value of one bound in `[lo, hi]` (the other fixed; `pair` builds the candidate), first minimum. A
/// wide scan takes every `REFINE_STRIDE`-th value and `hi`, then every value within a stride of that winner;
/// a local scan only the values within a stride of `at`.
fn scan(
    rho: &[f64],
    w: f64,
    dst: usize,
    (lo, hi): (usize, usize),
    wide: Option<usize>,
    pair: impl Fn(usize) -> (usize, usize),
) -> (usize, f64) {
    let pick = |vals: &[usize]| {
        let pairs: Vec<(usize, usize)> = vals.iter().map(|&b| pair(b)).collect();
        let ls = eval_pairs(rho, w, dst, &pairs);
        let i = argmin_first(&ls).unwrap_or(0);
        (vals[i], ls[i])
    };
    let at = match wide {
        Some(at) => at,
        None => {
            let mut coarse: Vec<usize> = (lo..=hi).step_by(REFINE_STRIDE).collect();
            if coarse.last() != Some(&hi) {
                coarse.push(hi);
            }
            pick(&coarse).0
        }
    };
    let fine: Vec<usize> = (at.saturating_sub(REFINE_STRIDE - 1).max(lo)..=(at + REFINE_STRIDE - 1).min(hi)).collect();
    pick(&fine)
}

/// ferroquant's HFMG refinement (on by default; `refine = false` is AMCT exactly). AMCT's candidates walk in
/// steps of 1/100000 of the mass and never narrower than a quarter of the bins, so on heavy-tailed data the
/// path is a handful of coarse candidates (two on ReLU'd Student-t) and the best clip is not among them.
/// Starting from AMCT's winner, alternately re-choose the upper bound with the lower fixed and the lower with
/// the upper fixed (the first round over every bin, coarse then fine; later rounds within a stride of the
/// current bound), keeping a move only when the same L2 loss strictly falls. Returns the bounds, their loss
/// and whether they moved.
pub fn refine(rho: &[f64], w: f64, dst: usize, l0: usize, r0: usize, loss0: f64) -> (usize, usize, f64, bool) {
    let n = rho.len();
    let (mut l, mut r, mut best) = (l0, r0, loss0);
    for round in 0..REFINE_ROUNDS {
        let mut moved = false;
        let (rr, lr) = scan(rho, w, dst, (l, n - 1), (round > 0).then_some(r), |b| (l, b));
        if lr < best {
            (r, best, moved) = (rr, lr, true);
        }
        let (ll, ll_loss) = scan(rho, w, dst, (0, r), (round > 0).then_some(l), |b| (b, r));
        if ll_loss < best {
            (l, best, moved) = (ll, ll_loss, true);
        }
        if !moved {
            break;
        }
    }
    (l, r, best, (l, r) != (l0, r0))
}

pub fn search(h: &Histogram, bits: u32, symmetric: bool, refined: bool) -> Result<ClipSearch> {
    let scheme = Scheme::new(bits, symmetric)?;
    if h.total() == 0 {
        return Err(QuantError::EmptyInput { what: "histogram holds no counts" });
    }
    let cands = candidates(h.counts());
    let w = h.grid().width;
    let rho = densities(h.counts(), w);
    let ls = eval_pairs(&rho, w, 1usize << bits, &cands);
    let index = argmin_first(&ls).ok_or(QuantError::EmptyInput { what: "no HFMG candidate" })?;
    let (mut left, mut right) = cands[index];
    let mut loss_best = ls[index];
    let mut moved = false;
    if refined {
        (left, right, loss_best, moved) = refine(&rho, w, 1usize << bits, left, right, loss_best);
    }
    let (clip_min, clip_max) = (edge_f32(h, left), edge_f32(h, right + 1));
    // from_range widens the asymmetric range to include 0 (clip_max >= 0, clip_min <= 0) and applies the
    // 127/128 rule to the larger-magnitude bound when symmetric.
    let qparams = from_range(clip_min, clip_max, &scheme, 0)?;
    Ok(ClipSearch { index, left, right, clip_min, clip_max, qparams, loss: loss_best, refined: moved })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_the_rule() {
        let counts = vec![1u64; 16];
        let c = candidates(&counts);
        // Uniform mass: equal widths on both sides, and a tie trims the right.
        assert_eq!(c, (4..15).rev().map(|r| (0, r)).collect::<Vec<_>>());
        assert_eq!(candidates(&[5, 5]), vec![(0, 1)]);
        // The left walk takes the bin that reaches `step`; then the sparser left side is trimmed.
        let mut sparse = vec![0u64; 16];
        sparse[3] = 10;
        sparse[15] = 1;
        assert_eq!(candidates(&sparse), vec![(4, 15), (15, 15)]);
    }

    #[test]
    fn loss_zero_for_exact_fit_and_positive_otherwise() {
        // 4 bins into 4 destination bins: each source bin is one destination bin, loss = sum rho*w^3/12.
        let rho = densities(&[2u64, 0, 0, 2], 1.0);
        let l = loss(&rho, 1.0, 0, 3, 4);
        assert!((l - 4.0 / 12.0).abs() < 1e-12);
        assert!(loss(&rho, 1.0, 1, 2, 4) > l);
        assert_eq!(loss(&rho, 1e-12, 0, 3, 4), 0.0);
    }

    #[test]
    fn search_on_gaussian_like_clips_outliers() {
        let mut counts = vec![0u64; 256];
        for (k, c) in counts.iter_mut().enumerate() {
            let t = (k as f64 - 128.0) / 16.0;
            *c = (1000.0 * (-t * t / 2.0).exp()) as u64;
        }
        counts[0] = 1;
        counts[255] = 1;
        let h = Histogram::from_parts(counts, -8.0, 8.0).unwrap();
        let s = search(&h, 4, false, false).unwrap();
        // A one-count bin at the far left always wins the tie-break of the trimming rule, so only the right
        // tail is trimmed (AMCT behaves the same).
        assert!(s.clip_max < 8.0 && s.left == 0);
        assert!(s.clip_min <= 0.0 && s.clip_max >= 0.0);
        // The refinement also trims the lone left outlier, and only ever lowers the loss.
        let r = search(&h, 4, false, true).unwrap();
        assert!(r.refined && r.left > 0 && r.loss < s.loss && r.index == s.index);
        let sym = search(&h, 8, true, true).unwrap();
        assert_eq!(sym.qparams.zero_point, 0);
        assert!(search(&h, 1, true, true).is_err());
        let empty = Histogram::with_range(0.0, 1.0, 8).unwrap();
        assert!(matches!(search(&empty, 8, true, true), Err(QuantError::EmptyInput { .. })));
    }

    #[test]
    fn constant_histogram() {
        let h = Histogram::build(&[3.0; 5], 64, false).unwrap();
        let s = search(&h, 8, false, true).unwrap();
        assert_eq!(s.index, 0);
        assert_eq!(s.loss, 0.0);
        assert!(!s.refined);
    }
}
