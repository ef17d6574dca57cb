//! Candidate losses of the IFMR search (spec §3.3): the mean squared error of fake-quantizing the data with
//! one candidate clip range and scale.
//!
//! For one element `v` and candidate `(lo, hi, s)`, all in f32,
//! `e = round_half_even(clip(v, lo, hi) / s) * s - v`; the squared error `(e as f64)^2` (exact) is
//! accumulated in f64. The summation order is fixed so that any thread count gives the same bits and the
//! NumPy twin can reproduce it:
//! - the data is split into chunks of `par::CHUNK` elements;
//! - inside a chunk, element `j` goes to lane `j % LANES`, and each lane adds its elements in order;
//! - a chunk's sum is the lanes combined by the pairwise tree of [`combine_lanes`];
//! - the total is the chunk sums added in chunk order, and the loss is `total / N`.
//!
//! One pass over the data evaluates a whole batch of candidates: each L1-sized block is visited once per
//! candidate while it is in cache.

use multiversion::multiversion;

use crate::error::Result;
use crate::par::{map_chunks, CHUNK};
use crate::stop::Stop;

/// Accumulator lanes per candidate (a multiple of the SIMD width, so the lanes vectorize).
pub const LANES: usize = 16;
/// Elements per cache block; a multiple of `LANES`, so block boundaries do not change the lane of an element.
const BLOCK: usize = 2048;
/// Candidates evaluated in one pass over the data.
const BATCH: usize = 64;
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

/// Quantize-dequantize error of one element (f32 throughout; `v` is finite).
#[inline(always)]
pub fn err(v: f32, c: &Cand) -> f32 {
    let t = if v > c.lo { v } else { c.lo };
    let t = if t < c.hi { t } else { c.hi };
    let r = (t / c.scale + MAGIC) - MAGIC;
    r * c.scale - v
}

/// The fixed pairwise combination of one candidate's lanes.
pub fn combine_lanes(a: &[f64; LANES]) -> f64 {
    let mut w = *a;
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for k in 0..n {
            w[k] = w[2 * k] + w[2 * k + 1];
        }
    }
    w[0]
}

#[inline(always)]
fn accumulate(g: &[f32], c: &Cand, acc: &mut [f64; LANES]) {
    for (a, &v) in acc.iter_mut().zip(g) {
        let e = err(v, c) as f64;
        *a += e * e;
    }
}

/// Per-candidate sums of squared errors over one chunk. Compiled for several instruction sets with run-time
/// dispatch; every version performs the same IEEE operations (no multiply-add fusion without fast-math), so they
/// give the same bits and only the vector width differs (AVX-512 fits the f32 -> f64 widening of 16 lanes).
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx2+fma", "x86_64+avx2+fma"))]
fn chunk_sums(chunk: &[f32], cands: &[Cand]) -> Vec<f64> {
    chunk_sums_body(chunk, cands)
}

/// The portable body that every dispatched version inlines.
#[inline(always)]
fn chunk_sums_body(chunk: &[f32], cands: &[Cand]) -> Vec<f64> {
    let mut acc = vec![[0f64; LANES]; cands.len()];
    for block in chunk.chunks(BLOCK) {
        for (c, a) in cands.iter().zip(acc.iter_mut()) {
            let mut groups = block.chunks_exact(LANES);
            for g in &mut groups {
                accumulate(g, c, a);
            }
            // Only the last block of the last chunk has a tail; its element k sits in lane k.
            accumulate(groups.remainder(), c, a);
        }
    }
    acc.iter().map(combine_lanes).collect()
}

/// The raw data as a loss: exact, one pass per batch of candidates; `stop` is checked before each pass.
/// `zeros` more values of 0 belong to the data without being stored: every candidate's range holds 0, where
/// the error is 0, so they count only in the mean's divisor.
pub struct DataLoss<'a> {
    pub x: &'a [f32],
    pub zeros: usize,
    pub stop: &'a Stop,
}

impl Loss for DataLoss<'_> {
    fn losses(&self, cands: &[Cand]) -> Result<Vec<f64>> {
        let n = (self.x.len() + self.zeros).max(1) as f64;
        let mut out = Vec::with_capacity(cands.len());
        for batch in cands.chunks(BATCH) {
            self.stop.check()?;
            let parts = map_chunks(self.x, CHUNK, |_, chunk| chunk_sums(chunk, batch));
            let mut total = vec![0f64; batch.len()];
            for p in &parts {
                for (t, v) in total.iter_mut().zip(p) {
                    *t += v;
                }
            }
            out.extend(total.iter().map(|t| t / n));
        }
        Ok(out)
    }
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

    fn naive(x: &[f32], c: &Cand) -> f64 {
        x.iter().map(|&v| (err(v, c) as f64).powi(2)).sum::<f64>() / x.len() as f64
    }

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
    fn data_loss_matches_naive_and_is_chunk_stable() {
        let x: Vec<f32> = (0..100_003).map(|i| ((i * 7919) % 1000) as f32 / 97.0 - 3.0).collect();
        let cands: Vec<Cand> =
            (0..70).map(|i| Cand { lo: -3.0, hi: 4.0 + i as f32 * 0.05, scale: 0.03 + i as f32 * 1e-4 }).collect();
        let l = DataLoss { x: &x, zeros: 0, stop: &crate::stop::NEVER }.losses(&cands).unwrap();
        assert_eq!(l.len(), 70);
        for (v, c) in l.iter().zip(&cands) {
            assert!((v - naive(&x, c)).abs() <= 1e-12 * v.max(1e-30), "{v} vs {}", naive(&x, c));
        }
        let one = DataLoss { x: &x, zeros: 0, stop: &crate::stop::NEVER }.losses(&cands[5..6]).unwrap();
        assert_eq!(one[0], l[5]);
    }

    #[test]
    fn dispatch_gives_the_portable_bits() {
        let x: Vec<f32> = (0..(CHUNK + 77)).map(|i| ((i * 31) % 977) as f32 * 0.013 - 4.0).collect();
        let cands: Vec<Cand> = (0..9).map(|i| Cand { lo: -4.0, hi: 2.0 + i as f32 * 0.3, scale: 0.027 }).collect();
        for c in x.chunks(CHUNK) {
            assert_eq!(chunk_sums(c, &cands), chunk_sums_body(c, &cands));
        }
    }

    #[test]
    fn lanes_combine_pairwise() {
        let a: [f64; LANES] = std::array::from_fn(|i| i as f64);
        assert_eq!(combine_lanes(&a), 120.0);
    }

    #[test]
    fn histogram_loss_weights_centres() {
        let h = HistLoss::new(&[1, 0, 3], 0.0, 3.0);
        assert_eq!(h.centres, vec![0.5, 1.5, 2.5]);
        let c = Cand { lo: 0.0, hi: 3.0, scale: 1.0 };
        assert_eq!(h.losses(&[c]).unwrap()[0], (0.25 + 3.0 * 0.25) / 4.0);
    }
}
