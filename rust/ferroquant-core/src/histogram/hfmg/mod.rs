//! HFMG clip search on a histogram (spec §4.2, §4.3): AMCT's candidate truncations, the L2 loss of re-binning
//! each candidate into `2^bits` destination bins, the global argmin (first on ties).
//!
//! The candidates are ranked by their loss from prefix sums (`moments`, O(2^bits) per candidate instead of
//! O(nbins)); two candidates whose losses lie within `tie_tol` of each other (far more than the two
//! computations can differ) are ranked by the direct summation (`loss`, summed sequentially over the source
//! bins in f64), so every choice, and the loss reported, is the one the direct search makes. Each loss is
//! computed by one thread (candidates run in parallel), so the result is the same whatever the thread count,
//! and the NumPy twin (same operations, same order) makes the same choices. Symmetric output uses the §0
//! 127/128 rule through `qparams::from_range` (AMCT's C++ divides by `127 + eps` / `128 + eps`; the
//! difference is below one ulp of the scale's meaning).

mod direct;
mod moments;
mod rank;

use super::{trunc_small, Histogram};
use crate::error::{QuantError, Result};
use crate::qparams::{from_range, QParams};
use crate::scheme::{Scheme, FLT_EPSILON};
use crate::stop::Stop;

pub use direct::search_direct;
pub use moments::FastLoss;
use rank::Ranker;

/// `STEP_DIVISOR`: each candidate trims at least `total / STEP_DIVISOR` counts.
pub const STEP_DIVISOR: u64 = 100_000;
/// `MIN_BIN_RATIO`: candidates keep more than `nbins / MIN_BIN_RATIO` bins.
pub const MIN_BIN_RATIO: usize = 4;

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

/// Whether candidate `(l, r)` is degenerate: its destination bins are narrower than `FLT_EPSILON` (or NaN), where
/// `loss` is 0 by definition (spec §4.3: constant data). The refinement never moves to one (a zero there is no
/// quantization error: on 2^20 bins it chose a one-bin clip of uniform data).
pub fn degenerate(w: f64, l: usize, r: usize, dst: usize) -> bool {
    let dw = w * (r - l + 1) as f64 / dst as f64;
    dw.is_nan() || dw < FLT_EPSILON as f64
}

/// Densities `count_k / w` of the source bins.
pub fn densities(counts: &[u64], w: f64) -> Vec<f64> {
    counts.iter().map(|&c| c as f64 / w).collect()
}

/// L2 loss of candidate `(l, r)` by direct summation over the source bins (spec §4.3): densities `rho = count / w`, bin width `w`, `dst = 2^bits`
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

/// The loss of every candidate, in candidate order (from prefix sums: within a few ulps of `loss`).
pub fn losses(h: &Histogram, cands: &[(usize, usize)], bits: u32, stop: &Stop) -> Result<Vec<f64>> {
    crate::scheme::check_bits(bits)?;
    let rk = Ranker::new(h, bits, stop);
    Ok(rk.score(cands)?.iter().map(|s| s.fast).collect())
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

/// Stride of the coarse pass of a refinement scan.
pub const REFINE_STRIDE: usize = 16;

/// One refinement scan of a bound over `[lo, hi]` (both searches, `Ranker::scan` and the direct one): with `at`
/// None, every `REFINE_STRIDE`-th value and `hi`, then every value within a stride of the best of those; else
/// the values within a stride of `at`. `pick` ranks a list of the values whose candidate is not degenerate
/// (`keep`) and returns the best value with its score; `None` when no value is kept.
pub(crate) fn coarse_then_fine<T, E>(
    (lo, hi): (usize, usize),
    at: Option<usize>,
    keep: impl Fn(usize) -> bool,
    mut pick: impl FnMut(&[usize]) -> std::result::Result<(usize, T), E>,
) -> std::result::Result<Option<T>, E> {
    let mut ranked = |vals: Vec<usize>| -> std::result::Result<Option<(usize, T)>, E> {
        let vals: Vec<usize> = vals.into_iter().filter(|&b| keep(b)).collect();
        if vals.is_empty() {
            return Ok(None);
        }
        pick(&vals).map(Some)
    };
    let at = match at {
        Some(at) => at,
        None => {
            let mut coarse: Vec<usize> = (lo..=hi).step_by(REFINE_STRIDE).collect();
            if coarse.last() != Some(&hi) {
                coarse.push(hi);
            }
            match ranked(coarse)? {
                Some((b, _)) => b,
                None => return Ok(None),
            }
        }
    };
    let fine = (at.saturating_sub(REFINE_STRIDE - 1).max(lo)..=(at + REFINE_STRIDE - 1).min(hi)).collect();
    Ok(ranked(fine)?.map(|(_, s)| s))
}
/// Rounds of coordinate refinement (each scans the upper bound, then the lower one).
pub const REFINE_ROUNDS: usize = 4;

/// HFMG: the candidate with the smallest loss, its clip range and qparams; with `refined`, ferroquant's
/// refinement of that winner (`Ranker::refine`). `stop` interrupts the search between chunks of candidates.
pub fn search(h: &Histogram, bits: u32, symmetric: bool, refined: bool, stop: &Stop) -> Result<ClipSearch> {
    let scheme = Scheme::new(bits, symmetric)?;
    if h.total() == 0 {
        return Err(QuantError::EmptyInput { what: "histogram holds no counts" });
    }
    let cands = candidates(h.counts());
    let rk = Ranker::new(h, bits, stop);
    let (index, mut best) = rk.argmin_of(&cands)?.ok_or(QuantError::EmptyInput { what: "no HFMG candidate" })?;
    let mut moved = false;
    if refined {
        (best, moved) = rk.refine(best)?;
    }
    let (left, right) = best.pair;
    let loss = rk.exact(&mut best);
    let (clip_min, clip_max) = (edge_f32(h, left), edge_f32(h, right + 1));
    // from_range widens the asymmetric range to include 0 (clip_max >= 0, clip_min <= 0) and applies the
    // 127/128 rule to the larger-magnitude bound when symmetric.
    let qparams = from_range(clip_min, clip_max, &scheme, 0)?;
    Ok(ClipSearch { index, left, right, clip_min, clip_max, qparams, loss, refined: moved })
}

/// One search request of `search_many`.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub hist: &'a Histogram,
    pub bits: u32,
    pub symmetric: bool,
    pub refine: bool,
}

/// `search` of many histograms at once, in parallel across them (and within each); the results, in request
/// order, are those of one `search` call each whatever the thread count.
pub fn search_many(reqs: &[Request<'_>], stop: &Stop) -> Vec<Result<ClipSearch>> {
    use rayon::prelude::*;
    reqs.par_iter().map(|q| search(q.hist, q.bits, q.symmetric, q.refine, stop)).collect()
}

#[cfg(test)]
mod tests;
