//! Candidate losses of the IFMR search (spec §3.3): the mean squared error of fake-quantizing the data with
//! one candidate clip range and scale. For one element `v` and candidate `(lo, hi, s)`, all in f32,
//! `e = round_half_even(clip(v, lo, hi) / s) * s - v`. The raw data's loss is in `sorted` (one sort, then
//! sums over the runs of equal levels); this file has the candidate, the element error and the histogram's
//! loss.

use crate::error::Result;

/// 1.5 * 2^23: `(t + MAGIC) - MAGIC` rounds half to even for |t| < 2^22 (see affine.rs). Here
/// `|t| <= 2^bits` by construction of every candidate, so the trick is exact.
const MAGIC: f32 = 12_582_912.0;

/// One candidate: the clip range `[lo, hi]` and the (guarded) scale of its grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cand {
    pub lo: f32,
    pub hi: f32,
    pub scale: f32,
}

/// Something that can score candidates: the raw data or a histogram of it.
pub trait Loss: Sync {
    /// Mean squared error of each candidate, in order.
    fn losses(&self, cands: &[Cand]) -> Result<Vec<f64>>;
}

/// The level of one element, `round_half_even(clip(v, lo, hi) / s)` (f32; `v` is finite).
#[inline(always)]
pub fn level(v: f32, c: &Cand) -> f32 {
    let t = if v > c.lo { v } else { c.lo };
    let t = if t < c.hi { t } else { c.hi };
    (t / c.scale + MAGIC) - MAGIC
}

/// Quantize-dequantize error of one element (f32 throughout; `v` is finite).
#[inline(always)]
pub fn err(v: f32, c: &Cand) -> f32 {
    level(v, c) * c.scale - v
}

/// A histogram as a loss: bin `k` stands for `counts[k]` values at its centre
/// `f32(lo + (k + 0.5) * (hi - lo) / nbins)` (computed in f64). Bins are added in order, each as
/// `counts[k] as f64 * e^2`; the loss is that sum over the total count.
pub struct HistLoss {
    pub centres: Vec<f32>,
    pub counts: Vec<f64>,
    pub total: f64,
}

impl HistLoss {
    pub fn new(counts: &[u64], lo: f32, hi: f32) -> Self {
        let nb = counts.len() as f64;
        let (l, h) = (lo as f64, hi as f64);
        let centres = (0..counts.len()).map(|k| (l + (k as f64 + 0.5) * (h - l) / nb) as f32).collect();
        let total = counts.iter().map(|&c| c as f64).sum();
        Self { centres, counts: counts.iter().map(|&c| c as f64).collect(), total }
    }

    fn loss(&self, c: &Cand) -> f64 {
        let mut sum = 0f64;
        for (&v, &n) in self.centres.iter().zip(&self.counts) {
            let e = err(v, c) as f64;
            sum += n * (e * e);
        }
        sum / self.total.max(1.0)
    }
}

impl Loss for HistLoss {
    fn losses(&self, cands: &[Cand]) -> Result<Vec<f64>> {
        use rayon::prelude::*;
        Ok(if cands.len() * self.centres.len() < crate::par::PAR_THRESHOLD {
            cands.iter().map(|c| self.loss(c)).collect()
        } else {
            cands.par_iter().map(|c| self.loss(c)).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn err_rounds_half_to_even_and_clips() {
        let c = Cand { lo: -10.0, hi: 3.0, scale: 1.0 };
        assert_eq!(err(0.5, &c), -0.5);
        assert_eq!(err(1.5, &c), 0.5);
        assert_eq!(err(2.5, &c), -0.5);
        assert_eq!(err(7.0, &c), -4.0);
        assert_eq!(err(-12.0, &c), 2.0);
    }

    #[test]
    fn histogram_loss_weights_centres() {
        let h = HistLoss::new(&[1, 0, 3], 0.0, 3.0);
        assert_eq!(h.centres, vec![0.5, 1.5, 2.5]);
        let c = Cand { lo: 0.0, hi: 3.0, scale: 1.0 };
        assert_eq!(h.losses(&[c]).unwrap()[0], (0.25 + 3.0 * 0.25) / 4.0);
    }
}
