//! The streaming histogram of HFMG (spec §4.1, decisions 7 and 8): fixed `nbins`, exact `u64` counts, a range
//! that is always the min and max of everything seen, and the count-preserving re-binning that lets batches
//! and partial histograms combine in any order.
//!
//! Bin positions are computed in f64, so ranges near the float32 limits (`hi - lo` overflows f32) work:
//! `pos(v) = (v - lo) * (nbins / (hi - lo))`, and the bin is `min(max(pos, 0), nbins - 1)` truncated (equal to
//! the floor of the clamped position). Multiplying by `nbins / (hi - lo)` instead of dividing by the width is a
//! ferroquant choice (one multiply per element); the NumPy twin uses the same formula, so counts are identical.
//! Bin `k` covers `[lo + k*w, lo + k*w + w)` with `w = (hi - lo) / nbins`. When `w < FLT_EPSILON` (constant
//! data) every count goes to bin `nbins / 2`.

pub mod baselines;
pub mod hfmg;

use crate::error::{QuantError, Result};
use crate::kernels::min_max_run;
use multiversion::multiversion;
use crate::par::{map_chunks, PAR_THRESHOLD};
use rayon::prelude::*;
use crate::scheme::FLT_EPSILON;

/// Largest accepted bin count (2^20); spec §4.4 uses 1024..8192.
pub const MAX_BINS: usize = 1 << 20;
/// Elements per chunk when histogramming a batch: 256 KB, so the counting sweep after a chunk's min/max finds it
/// in the core's L2 cache. Counts go to one counter per worker (integer sums: the same whatever the split).
const HIST_CHUNK: usize = 1 << 16;
/// Batches (of the size being added) a histogram holds before a batch is counted in one pass (see
/// [`Histogram::observe`]). In `ferroquant.quantize`, two passes made MobileNetV2's observes of 4 batches 5-10%
/// faster and PP-OCRv6 det's of 3 4% faster; on 20 batches of one Gaussian, where few batches widen the range,
/// one pass was 22% faster than two (bench_calibration's stream), and this threshold keeps that speed.
const SETTLED_BATCHES: u64 = 4;

#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    lo: f32,
    hi: f32,
    counts: Vec<u64>,
    total: u64,
}

/// The grid `[lo, hi]` split into `n` bins, with the f64 constants of the bin formula.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grid {
    pub lo: f64,
    pub width: f64,
    inv: f64,
    last: f64,
    pub n: usize,
}

impl Grid {
    pub fn new(lo: f32, hi: f32, n: usize) -> Self {
        let (l, h) = (lo as f64, hi as f64);
        let span = h - l;
        Self { lo: l, width: span / n as f64, inv: n as f64 / span, last: (n - 1) as f64, n }
    }

    /// True when the bins are narrower than `FLT_EPSILON`: everything goes to the middle bin.
    pub fn is_constant(&self) -> bool {
        self.width.is_nan() || self.width < FLT_EPSILON as f64
    }

    /// Bin of position `v` (f64), clamped into `[0, n-1]`.
    #[inline(always)]
    pub fn bin(&self, v: f64) -> usize {
        // Comparisons rather than f64::max/min (no NaN reaches here): they compile to plain maxsd/minsd.
        let p = (v - self.lo) * self.inv;
        let p = if p > 0.0 { p } else { 0.0 };
        (if p < self.last { p } else { self.last }) as usize
    }

    /// The bin [`count`] puts finite value `v` in: the middle bin on a constant grid, else [`bin`](Self::bin).
    pub fn slot(&self, v: f32) -> usize {
        if self.is_constant() {
            self.n / 2
        } else {
            self.bin(v as f64)
        }
    }

    /// Lower edge of bin `k`.
    #[inline]
    pub fn edge(&self, k: usize) -> f64 {
        self.lo + k as f64 * self.width
    }
}

/// `nbins` must be a power of two in `[2, MAX_BINS]`.
pub fn check_nbins(nbins: usize) -> Result<()> {
    if (2..=MAX_BINS).contains(&nbins) && nbins.is_power_of_two() {
        Ok(())
    } else {
        Err(QuantError::InvalidParameter {
            name: "nbins",
            reason: format!("must be a power of two in [2, {MAX_BINS}], got {nbins}"),
        })
    }
}

/// `a + b` for counts, an error when the total overflows u64.
fn plus(a: u64, b: u64) -> Result<u64> {
    a.checked_add(b).ok_or_else(|| QuantError::InvalidParameter { name: "counts", reason: "total count overflows u64".into() })
}

fn sum_counts(counts: &[u64]) -> Result<u64> {
    counts.iter().try_fold(0u64, |a, &c| plus(a, c))
}

/// `(min, max)` of the batch; `None` when it holds no (finite) value. Without `drop_nonfinite` the first NaN or
/// Inf is an error.
pub fn batch_range(x: &[f32], drop_nonfinite: bool) -> Result<Option<(f32, f32)>> {
    let parts = map_chunks(x, HIST_CHUNK, |start, c| {
        let (l, h, non_finite) = min_max_run(c);
        if !non_finite {
            return (l, h, None);
        }
        if !drop_nonfinite {
            let i = c.iter().position(|v| !v.is_finite()).unwrap_or(0);
            return (l, h, Some((start + i, c[i])));
        }
        let (mut l, mut h) = (f32::INFINITY, f32::NEG_INFINITY);
        for &v in c.iter().filter(|v| v.is_finite()) {
            l = l.min(v);
            h = h.max(v);
        }
        (l, h, None)
    });
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for (l, h, bad) in parts {
        if let Some((index, value)) = bad {
            return Err(QuantError::NonFinite { index, value });
        }
        lo = lo.min(l);
        hi = hi.max(h);
    }
    Ok(if lo <= hi { Some((lo, hi)) } else { None })
}

/// Bin indices of a block (exactly `Grid::bin`): `floor((v - lo) * inv)` clamped to `[0, last]`, written so
/// the loop vectorizes (also IFMR's threshold cells).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2+fma", "x86_64+sse4.1"))]
pub(crate) fn bins_block(c: &[f32], lo: f64, inv: f64, last: f64, out: &mut [u32]) {
    for (o, &v) in out.iter_mut().zip(c) {
        let p = (v as f64 - lo) * inv;
        let p = if p > 0.0 { p } else { 0.0 };
        let p = if p < last { p } else { last };
        *o = trunc_small(p);
    }
}

/// `p as u32` for `p` in `[0, 2^31)`: floor, then read the integer out of the mantissa of `floor + 2^52`.
/// The same value as the cast, without its saturation checks, which keep the loop from vectorizing (4x here).
#[inline(always)]
pub(crate) fn trunc_small(p: f64) -> u32 {
    (p.floor() + 4_503_599_627_370_496.0).to_bits() as u32
}

/// Interleaved sub-histograms break the store-to-load chain when neighbours fall in the same bin (four:
/// `Counter::add` splits them into four slices).
const SUB: usize = 4;
const _: () = assert!(SUB == 4);
const BLOCK: usize = 256;

/// One worker's counts on a grid: u32 sub-histograms, added into the u64 counts before they could wrap and at
/// the end. Kept across the chunks a worker takes, so a chunk costs no allocation and no merge (the counts are
/// integers: how the batch was split cannot change them).
struct Counter<'g> {
    g: &'g Grid,
    sub: Vec<u32>,
    /// Values in `sub` since it was last added into `counts`.
    held: u64,
    counts: Vec<u64>,
}

impl<'g> Counter<'g> {
    fn new(g: &'g Grid) -> Self {
        Self { g, sub: Vec::new(), held: 0, counts: vec![0u64; g.n] }
    }

    /// Count `c`: its finite values with `DROP`, else all of them (already known finite).
    fn add<const DROP: bool>(&mut self, c: &[f32]) {
        let g = self.g;
        if g.is_constant() {
            let n = if DROP { c.iter().filter(|v| v.is_finite()).count() } else { c.len() };
            self.counts[g.n / 2] += n as u64;
            return;
        }
        if DROP {
            for &v in c.iter().filter(|v| v.is_finite()) {
                self.counts[g.bin(v as f64)] += 1;
            }
            return;
        }
        if self.sub.is_empty() {
            self.sub = vec![0u32; SUB * g.n];
        }
        if self.held + c.len() as u64 > u32::MAX as u64 {
            self.flush();
        }
        self.held += c.len() as u64;
        let (n, sub) = (g.n, &mut self.sub);
        // One slice per sub-histogram, indexed by a bin masked to n - 1 (n is a power of two and every bin is
        // below n already): the index provably fits, so the counting loop has no bounds branch.
        let (s0, rest) = sub.split_at_mut(n);
        let (s1, rest) = rest.split_at_mut(n);
        let (s2, s3) = rest.split_at_mut(n);
        let (s1, s2, s3) = (&mut s1[..n], &mut s2[..n], &mut s3[..n]);
        let mask = n - 1;
        let mut idx = [0u32; BLOCK];
        for blk in c.chunks(BLOCK) {
            let ix = &mut idx[..blk.len()];
            bins_block(blk, g.lo, g.inv, g.last, ix);
            let mut quads = ix.chunks_exact(SUB);
            for q in &mut quads {
                s0[q[0] as usize & mask] += 1;
                s1[q[1] as usize & mask] += 1;
                s2[q[2] as usize & mask] += 1;
                s3[q[3] as usize & mask] += 1;
            }
            for &b in quads.remainder() {
                s0[b as usize & mask] += 1;
            }
        }
    }

    fn flush(&mut self) {
        let n = self.g.n;
        for k in 0..SUB.min(self.sub.len() / n.max(1)) {
            for (d, v) in self.counts.iter_mut().zip(&mut self.sub[k * n..(k + 1) * n]) {
                *d += *v as u64;
                *v = 0;
            }
        }
        self.held = 0;
    }

    fn finish(mut self) -> Vec<u64> {
        self.flush();
        self.counts
    }
}

fn add_counts(mut a: Vec<u64>, b: Vec<u64>) -> Vec<u64> {
    a.iter_mut().zip(&b).for_each(|(d, v)| *d += v);
    a
}

/// The counts of `x` on grid `g`, chunk by chunk (in parallel when large).
fn count<const DROP: bool>(x: &[f32], g: &Grid) -> Vec<u64> {
    let chunk = HIST_CHUNK.max(4 * g.n);
    if x.len() < PAR_THRESHOLD {
        let mut c = Counter::new(g);
        x.chunks(chunk).for_each(|ch| c.add::<DROP>(ch));
        return c.finish();
    }
    x.par_chunks(chunk)
        .fold(|| Counter::new(g), |mut c, ch| {
            c.add::<DROP>(ch);
            c
        })
        .map(Counter::finish)
        .reduce(|| vec![0u64; g.n], add_counts)
}

/// What one pass over a later batch found: its counts on the current grid, or, when the batch widens the
/// range, only its `(min, max)`.
enum InRange {
    Counts(Vec<u64>),
    Widens(f32, f32),
}

/// One worker's share of [`range_and_counts`]: the min/max of its chunks, the first non-finite value it met,
/// and its counts.
struct Scan<'g> {
    lo: f32,
    hi: f32,
    bad: Option<(usize, f32)>,
    counter: Counter<'g>,
}

/// One pass over `x` (chunk by chunk, so each chunk is read from memory once): its counts on grid `g` when all
/// of it lies in `[lo, hi]` (`g`'s range), else its `(min, max)`; or the first non-finite value. Once a chunk
/// is seen to widen the range, the chunks that come after it only take their min/max: their counts would be
/// thrown away (about half the later batches of a CNN widen some tensor's range).
fn range_and_counts<'g>(x: &[f32], g: &'g Grid, lo: f32, hi: f32) -> Result<InRange> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let chunk = HIST_CHUNK.max(4 * g.n);
    let widens = AtomicBool::new(false);
    let step = |mut s: Scan<'g>, (i, c): (usize, &[f32])| -> Scan<'g> {
        let (l, h, non_finite) = min_max_run(c);
        if non_finite {
            let at = c.iter().position(|v| !v.is_finite()).unwrap_or(0);
            if s.bad.is_none_or(|(j, _)| i * chunk + at < j) {
                s.bad = Some((i * chunk + at, c[at]));
            }
            return s;
        }
        (s.lo, s.hi) = (s.lo.min(l), s.hi.max(h));
        if l < lo || h > hi {
            widens.store(true, Ordering::Relaxed);
        }
        if !widens.load(Ordering::Relaxed) {
            s.counter.add::<false>(c);
        }
        s
    };
    let fresh = || Scan { lo: f32::INFINITY, hi: f32::NEG_INFINITY, bad: None, counter: Counter::new(g) };
    let join = |a: (f32, f32, Option<(usize, f32)>, Vec<u64>), b: (f32, f32, Option<(usize, f32)>, Vec<u64>)| {
        let bad = match (a.2, b.2) {
            (Some(x), Some(y)) => Some(if y.0 < x.0 { y } else { x }),
            (x, y) => x.or(y),
        };
        (a.0.min(b.0), a.1.max(b.1), bad, add_counts(a.3, b.3))
    };
    let done = |s: Scan<'g>| (s.lo, s.hi, s.bad, s.counter.finish());
    let (bmin, bmax, bad, counts) = if x.len() < PAR_THRESHOLD {
        done(x.chunks(chunk).enumerate().fold(fresh(), step))
    } else {
        x.par_chunks(chunk)
            .enumerate()
            .fold(fresh, step)
            .map(done)
            .reduce(|| (f32::INFINITY, f32::NEG_INFINITY, None, vec![0u64; g.n]), join)
    };
    if let Some((index, value)) = bad {
        return Err(QuantError::NonFinite { index, value });
    }
    Ok(if !widens.load(Ordering::Relaxed) && bmin >= lo && bmax <= hi {
        InRange::Counts(counts)
    } else {
        InRange::Widens(bmin, bmax)
    })
}

/// The range of a batch with `zeros` more values of 0 beside it.
fn with_zeros(range: Option<(f32, f32)>, zeros: u64) -> Option<(f32, f32)> {
    if zeros == 0 {
        return range;
    }
    Some(range.map_or((0.0, 0.0), |(l, h)| (l.min(0.0), h.max(0.0))))
}

/// Add `zeros` values of 0 into `dst` on grid `g`, in the bin where [`count`] puts a 0; returns how many.
fn add_zeros(zeros: u64, g: &Grid, dst: &mut [u64]) -> Result<u64> {
    if zeros > 0 {
        let k = g.slot(0.0);
        dst[k] = plus(dst[k], zeros)?;
    }
    Ok(zeros)
}

fn add_batch(x: &[f32], g: &Grid, drop_nonfinite: bool, dst: &mut [u64]) -> u64 {
    let counts = if drop_nonfinite { count::<true>(x, g) } else { count::<false>(x, g) };
    let mut added = 0u64;
    for (d, c) in dst.iter_mut().zip(&counts) {
        *d += c;
        added += c;
    }
    added
}

/// Re-bin `src` (range `[lo, hi]`) onto grid `g` and add it into `dst`, preserving the total exactly
/// (spec §4.1). A source range within `FLT_EPSILON` of the grid's range is added bin by bin.
fn rebin_into(src: &[u64], lo: f32, hi: f32, g: &Grid, hi_new: f32, dst: &mut [u64]) {
    let eps = FLT_EPSILON as f64;
    if (lo as f64 - g.lo).abs() <= eps && (hi as f64 - hi_new as f64).abs() <= eps {
        dst.iter_mut().zip(src).for_each(|(d, &c)| *d += c);
        return;
    }
    if g.is_constant() {
        dst[g.n / 2] += src.iter().sum::<u64>();
        return;
    }
    let old = Grid::new(lo, hi, src.len());
    for (k, &c) in src.iter().enumerate().filter(|(_, &c)| c > 0) {
        let a = old.edge(k);
        let i = g.bin(a);
        let j = g.bin(a + old.width);
        if i == j {
            dst[i] += c;
        } else {
            let e = g.edge(i + 1);
            let frac = (e - a) / old.width;
            let ci = ((c as f64 * frac).floor() as u64).min(c);
            dst[i] += ci;
            dst[j] += c - ci;
        }
    }
}

impl Histogram {
    /// A histogram from saved state (for example from Python). Checks `nbins`, the range and the total.
    pub fn from_parts(counts: Vec<u64>, lo: f32, hi: f32) -> Result<Self> {
        check_nbins(counts.len())?;
        for v in [lo, hi] {
            if !v.is_finite() {
                return Err(QuantError::NonFinite { index: 0, value: v });
            }
        }
        if lo > hi {
            return Err(QuantError::InvalidParameter { name: "range", reason: format!("lo {lo} > hi {hi}") });
        }
        let total = sum_counts(&counts)?;
        Ok(Self { lo, hi, counts, total })
    }

    /// An empty histogram over a fixed range `[lo, hi]`.
    pub fn with_range(lo: f32, hi: f32, nbins: usize) -> Result<Self> {
        check_nbins(nbins)?;
        Self::from_parts(vec![0; nbins], lo, hi)
    }

    /// The histogram of a first batch over its own `[min, max]`.
    pub fn build(x: &[f32], nbins: usize, drop_nonfinite: bool) -> Result<Self> {
        Self::build_with_zeros(x, 0, nbins, drop_nonfinite)
    }

    /// [`build`](Self::build) of `x` with `zeros` more values of 0 beside it (what an exact-IFMR calibrator
    /// holds: its non-zero samples and a count of zeros), without the array of zeros.
    pub fn build_with_zeros(x: &[f32], zeros: u64, nbins: usize, drop_nonfinite: bool) -> Result<Self> {
        check_nbins(nbins)?;
        let Some((lo, hi)) = with_zeros(batch_range(x, drop_nonfinite)?, zeros) else {
            return Err(QuantError::EmptyInput { what: "no finite value to build a histogram from" });
        };
        let g = Grid::new(lo, hi, nbins);
        let mut counts = vec![0u64; nbins];
        let added = add_batch(x, &g, drop_nonfinite, &mut counts);
        let total = plus(added, add_zeros(zeros, &g, &mut counts)?)?;
        Ok(Self { lo, hi, counts, total })
    }

    pub fn lo(&self) -> f32 {
        self.lo
    }
    pub fn hi(&self) -> f32 {
        self.hi
    }
    pub fn nbins(&self) -> usize {
        self.counts.len()
    }
    pub fn total(&self) -> u64 {
        self.total
    }
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }
    pub fn into_counts(self) -> Vec<u64> {
        self.counts
    }
    pub(crate) fn grid(&self) -> Grid {
        Grid::new(self.lo, self.hi, self.nbins())
    }

    /// Add a later batch: widen the range to cover it, re-bin the old counts, histogram the batch on the new
    /// grid. A batch with no (finite) value leaves the histogram unchanged.
    ///
    /// Once the histogram holds [`SETTLED_BATCHES`] batches of this size, a batch is counted on the current
    /// grid in the pass that takes its range, which gives up counting at the first chunk that widens the range
    /// (one read of the batch from memory). Before that, batches often widen some tensor's range (about half
    /// the later batches of MobileNetV2's first four), and the counts made before the widening chunk would be
    /// thrown away: the range is taken first, then the counts (two reads). The counts are the same either way.
    pub fn observe(&mut self, x: &[f32], drop_nonfinite: bool) -> Result<()> {
        self.observe_with_zeros(x, 0, drop_nonfinite)
    }

    /// [`observe`](Self::observe) of a batch made of `x` and `zeros` more values of 0 (the same histogram as
    /// observing the concatenation, without it).
    pub fn observe_with_zeros(&mut self, x: &[f32], zeros: u64, drop_nonfinite: bool) -> Result<()> {
        let mut range = None;
        let current = self.grid();
        let settled = self.total >= SETTLED_BATCHES * x.len() as u64;
        if settled && zeros == 0 && !drop_nonfinite && !current.is_constant() && !x.is_empty() {
            match range_and_counts(x, &current, self.lo, self.hi)? {
                InRange::Counts(counts) => {
                    self.total = plus(self.total, sum_counts(&counts)?)?;
                    self.counts.iter_mut().zip(&counts).for_each(|(d, v)| *d += v);
                    return Ok(());
                }
                InRange::Widens(bmin, bmax) => range = Some((bmin, bmax)),
            }
        }
        let Some((bmin, bmax)) = (match range {
            Some(r) => Some(r),
            None => with_zeros(batch_range(x, drop_nonfinite)?, zeros),
        }) else {
            return Ok(());
        };
        let (lo, hi) = (self.lo.min(bmin), self.hi.max(bmax));
        let g = Grid::new(lo, hi, self.nbins());
        let mut counts = vec![0u64; self.nbins()];
        rebin_into(&self.counts, self.lo, self.hi, &g, hi, &mut counts);
        let added = plus(add_batch(x, &g, drop_nonfinite, &mut counts), add_zeros(zeros, &g, &mut counts)?)?;
        self.total = plus(self.total, added)?;
        (self.lo, self.hi, self.counts) = (lo, hi, counts);
        Ok(())
    }

    /// Merge another histogram: both are re-binned onto the union of the two ranges and added, so the result
    /// does not depend on which side is `self`.
    pub fn merge(&mut self, other: &Histogram) -> Result<()> {
        if other.nbins() != self.nbins() {
            return Err(QuantError::ShapeMismatch { what: "nbins of merged histogram", expected: self.nbins(), got: other.nbins() });
        }
        let total = plus(self.total, other.total)?;
        let (lo, hi) = (self.lo.min(other.lo), self.hi.max(other.hi));
        let g = Grid::new(lo, hi, self.nbins());
        let mut counts = vec![0u64; self.nbins()];
        rebin_into(&self.counts, self.lo, self.hi, &g, hi, &mut counts);
        rebin_into(&other.counts, other.lo, other.hi, &g, hi, &mut counts);
        *self = Self { lo, hi, counts, total };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect()
    }

    #[test]
    fn build_basic_and_edges() {
        let h = Histogram::build(&[0.0, 1.0, 2.0, 3.0, 4.0], 4, false).unwrap();
        assert_eq!(h.counts(), &[1, 1, 1, 2]);
        assert_eq!((h.lo(), h.hi(), h.total()), (0.0, 4.0, 5));
        let h = Histogram::build(&[7.0], 8, false).unwrap();
        assert_eq!(h.counts()[4], 1);
        let h = Histogram::build(&[2.5; 10], 8, false).unwrap();
        assert_eq!(h.counts()[4], 10);
    }

    #[test]
    fn nbins_and_nonfinite_errors() {
        for n in [0, 1, 3, 100, MAX_BINS * 2, usize::MAX] {
            assert!(matches!(Histogram::build(&[1.0], n, false), Err(QuantError::InvalidParameter { .. })));
        }
        let x = [1.0, 2.0, f32::NAN, f32::INFINITY];
        assert!(matches!(Histogram::build(&x, 4, false), Err(QuantError::NonFinite { index: 2, .. })));
        let h = Histogram::build(&x, 4, true).unwrap();
        assert_eq!(h.total(), 2);
        assert!(matches!(Histogram::build(&[f32::NAN], 4, true), Err(QuantError::EmptyInput { .. })));
        assert!(Histogram::build(&[], 4, false).is_err());
    }

    #[test]
    fn huge_range_does_not_overflow() {
        let h = Histogram::build(&[-3e38, 0.0, 3e38, f32::MAX, f32::MIN], 16, false).unwrap();
        assert_eq!(h.counts()[0], 2);
        assert_eq!(h.counts()[15], 2);
        assert_eq!(h.counts()[8], 1);
        assert_eq!(h.total(), 5);
    }

    #[test]
    fn a_batch_that_widens_in_any_chunk_is_counted_as_by_the_general_path() {
        // The one-pass path of a settled histogram (counts on the current grid, given up once a chunk widens
        // the range) against the general one (range first, then counts), which `drop_nonfinite` takes on
        // finite data: equal wherever the widening value lies, with several chunks counted in parallel.
        let n = 5 * HIST_CHUNK + 123;
        let first = lcg(n, 1, 2.0);
        let settled = || {
            let mut h = Histogram::build(&first, 2048, false).unwrap();
            for _ in 1..SETTLED_BATCHES {
                h.observe(&first, false).unwrap();
            }
            h
        };
        for at in [None, Some(0), Some(2 * HIST_CHUNK + 7), Some(n - 1)] {
            let mut x = lcg(n, 2, 1.9);
            if let Some(i) = at {
                x[i] = 3.5;
            }
            let mut fast = settled();
            let mut general = fast.clone();
            fast.observe(&x, false).unwrap();
            general.observe(&x, true).unwrap();
            assert_eq!(fast, general, "widening value at {at:?}");
            assert_eq!(fast.hi() == 3.5, at.is_some());
        }
        // A NaN after the chunk that widens is still found, at its index.
        let mut x = lcg(n, 3, 1.9);
        x[10] = 5.0;
        x[4 * HIST_CHUNK + 1] = f32::NAN;
        for mut h in [settled(), Histogram::build(&first, 2048, false).unwrap()] {
            let before = h.clone();
            assert!(matches!(h.observe(&x, false), Err(QuantError::NonFinite { index, .. }) if index == 4 * HIST_CHUNK + 1));
            assert_eq!(h, before);
        }
    }

    #[test]
    fn counts_and_errors_do_not_depend_on_the_thread_count() {
        // Each worker keeps its own counter over the chunks it takes: integer sums, so the split cannot change
        // them; the reported non-finite value is the first by index, whichever worker met it.
        let n = 37 * HIST_CHUNK + 5;
        let first = lcg(n, 11, 2.0);
        let later = lcg(n, 12, 2.5);
        let mut bad = lcg(n, 13, 1.0);
        bad[30 * HIST_CHUNK + 3] = f32::INFINITY;
        bad[9 * HIST_CHUNK + 1] = f32::NAN;
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| {
                let mut h = Histogram::build(&first, 4096, false).unwrap();
                h.observe(&later, false).unwrap();
                // a young histogram (two passes a batch) and a settled one (one pass)
                let mut settled = h.clone();
                for _ in 2..SETTLED_BATCHES {
                    settled.observe(&later, false).unwrap();
                }
                let mut out = vec![];
                for h in [h, settled] {
                    let mut inside = h.clone();
                    inside.observe(&first, false).unwrap();
                    let err = match h.clone().observe(&bad, false) {
                        Err(QuantError::NonFinite { index, .. }) => index,
                        other => panic!("{other:?}"),
                    };
                    out.push((h, inside, err));
                }
                out
            })
        };
        let one = run(1);
        assert!(one.iter().all(|r| r.2 == 9 * HIST_CHUNK + 1));
        for threads in [2, 3, 8] {
            assert_eq!(run(threads), one, "{threads} threads");
        }
    }

    #[test]
    fn zeros_beside_a_batch_count_as_zeros_in_it() {
        // An IFMR calibrator holds its non-zero samples and a count of zeros: the histogram of both, built or
        // observed, is the histogram of the concatenation, whatever the side of 0 the values are on.
        let cat = |x: &[f32], z: usize| [x, &vec![0.0f32; z][..]].concat();
        let pos: Vec<f32> = lcg(50_000, 3, 8.0).iter().map(|v| v.abs() + 0.25).collect();
        let mixed = lcg(70_001, 4, 6.0);
        let neg: Vec<f32> = pos.iter().map(|v| -v).collect();
        for (x, z) in [(&pos, 12_345usize), (&mixed, 7), (&neg, 1), (&pos, 0), (&vec![], 9), (&vec![2.5f32; 40], 3)] {
            for nb in [2usize, 64, 4096] {
                if !x.is_empty() || z > 0 {
                    let got = Histogram::build_with_zeros(x, z as u64, nb, false).unwrap();
                    assert_eq!(got, Histogram::build(&cat(x, z), nb, false).unwrap(), "build {nb} {z}");
                }
                for (first, young) in [(&mixed[..1000], true), (&pos[..], false)] {
                    let mut h = Histogram::build(first, nb, false).unwrap();
                    if !young {
                        for _ in 0..SETTLED_BATCHES {
                            h.observe(first, false).unwrap();
                        }
                    }
                    let (mut a, mut b) = (h.clone(), h);
                    a.observe_with_zeros(x, z as u64, false).unwrap();
                    b.observe(&cat(x, z), false).unwrap();
                    assert_eq!(a, b, "observe {nb} {z} young {young}");
                }
            }
        }
        assert!(matches!(Histogram::build_with_zeros(&[], 0, 64, false), Err(QuantError::EmptyInput { .. })));
        let mut h = Histogram::build(&pos, 64, false).unwrap();
        assert!(matches!(h.observe_with_zeros(&[1.0, f32::NAN], 3, false), Err(QuantError::NonFinite { index: 1, .. })));
    }

    #[test]
    fn observe_preserves_total_and_fixed_range_is_exact() {
        let x = lcg(300_000, 1, 8.0);
        let mut h = Histogram::build(&x[..1000], 64, false).unwrap();
        for c in x[1000..].chunks(7777) {
            h.observe(c, false).unwrap();
        }
        assert_eq!(h.total(), 300_000);
        assert_eq!(h.counts().iter().sum::<u64>(), 300_000);
        let one = Histogram::build(&x, 64, false).unwrap();
        let mut fixed = Histogram::with_range(one.lo(), one.hi(), 64).unwrap();
        for c in x.chunks(10_000).rev() {
            fixed.observe(c, false).unwrap();
        }
        assert_eq!(fixed, one);
    }

    #[test]
    fn merge_is_symmetric_and_preserves_total() {
        let a = Histogram::build(&lcg(5000, 2, 3.0), 128, false).unwrap();
        let b = Histogram::build(&lcg(7000, 3, 10.0), 128, false).unwrap();
        let (mut ab, mut ba) = (a.clone(), b.clone());
        ab.merge(&b).unwrap();
        ba.merge(&a).unwrap();
        assert_eq!(ab, ba);
        assert_eq!(ab.counts().iter().sum::<u64>(), 12_000);
        let c = Histogram::build(&[1.0; 4], 64, false).unwrap();
        assert!(matches!(ab.clone().merge(&c), Err(QuantError::ShapeMismatch { .. })));
    }

    #[test]
    fn from_parts_validates() {
        assert!(Histogram::from_parts(vec![u64::MAX, 1], 0.0, 1.0).is_err());
        assert!(Histogram::from_parts(vec![1, 1], 1.0, 0.0).is_err());
        assert!(Histogram::from_parts(vec![1, 1], 0.0, f32::NAN).is_err());
        assert!(Histogram::from_parts(vec![1, 1, 1], 0.0, 1.0).is_err());
    }
}
