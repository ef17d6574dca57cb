//! The initial clip range of IFMR from percentiles (spec §3.2), exactly or from a histogram (§3.5).

use rayon::prelude::*;

use crate::error::{QuantError, Result};
use crate::kernels::EXP_MASK;
use crate::par::{PAR_THRESHOLD, CHUNK};
use crate::qparams::min_max;
use crate::scheme::FLT_EPSILON;

/// `k` of a percentile over `n` values: 1 when `|p - 1| < FLT_EPSILON`, else `n - floor(p * n)` (in f64),
/// at least 1 and at most `n`.
pub fn rank(p: f64, n: usize) -> usize {
    let k = if (p - 1.0).abs() < FLT_EPSILON as f64 { 1 } else { n - ((p * n as f64).floor() as usize).min(n) };
    k.clamp(1, n.max(1))
}

/// Up to this many order statistics per chunk are kept in one pass instead of selected from a copy.
const STREAM_K: usize = 64;
/// Values per chunk of the order statistics. Each chunk keeps its own few extremes from scratch, and a block
/// that holds a value entering them is compared value by value: about `k ln(chunk / k)` blocks per chunk, 40%
/// of a 32K-value chunk's blocks at k = 30 (the 0.999999 percentile of 30M values), 2% of a 1M-value one's.
const STAT_CHUNK: usize = 1 << 20;

/// The `k` largest values of `chunk` (`largest`) or its `k` smallest, in one pass. A value `v` is taken as
/// `u = sign * v` (negation reverses `total_cmp` exactly) and enters the kept few, ascending, when it comes after
/// the first of them; once they are full, a block of values whose largest `u` is below that first one (by value,
/// which `total_cmp` agrees with except between -0 and 0, where the check lets both through) is skipped whole.
fn kept(chunk: &[f32], k: usize, largest: bool) -> Vec<f32> {
    let sign = if largest { 1.0f32 } else { -1.0 };
    let mut few: Vec<f32> = Vec::with_capacity(k + 1);
    for block in chunk.chunks(64) {
        if few.len() == k && !block.iter().fold(false, |hit, &v| hit | (sign * v >= few[0])) {
            continue;
        }
        for &v in block {
            let u = sign * v;
            if few.len() < k || u.total_cmp(&few[0]).is_gt() {
                let at = few.partition_point(|f| f.total_cmp(&u).is_le());
                few.insert(at, u);
                if few.len() > k {
                    few.remove(0);
                }
            }
        }
    }
    few.into_iter().map(|u| sign * u).collect()
}

/// The `k_max`-th largest and the `k_min`-th smallest value of `chunk`, as the two ends of a copy that
/// holds at least those values: the bottom `k_min` and the top `k_max` (the whole chunk when they overlap). A
/// side with `k = 0` is not wanted and costs nothing.
fn extremes(chunk: &[f32], k_max: usize, k_min: usize) -> Vec<f32> {
    let n = chunk.len();
    if k_max + k_min >= n {
        return chunk.to_vec();
    }
    if k_max + k_min <= STREAM_K {
        let mut out = if k_min > 0 { kept(chunk, k_min, false) } else { Vec::new() };
        if k_max > 0 {
            out.extend(kept(chunk, k_max, true));
        }
        return out;
    }
    let mut v = chunk.to_vec();
    if k_min > 0 {
        v.select_nth_unstable_by(k_min - 1, f32::total_cmp);
    }
    let rest = &mut v[k_min..];
    let m = rest.len();
    if k_max > 0 {
        rest.select_nth_unstable_by(m - k_max, f32::total_cmp);
    }
    let mut out = v[..k_min].to_vec();
    out.extend_from_slice(&v[n - k_max..]);
    out
}

/// `(max0, min0)` of §3.2 for `x` and `zeros` more values of 0: `max0` is the `k_max`-th largest value,
/// `min0` the `k_min`-th smallest (the min side is counted from the bottom: `min_percentile=0.999999` trims 1e-6
/// of the mass below), `k` from the count of all values, then `max0 = max(max0, 0)`, `min0 = min(min0, 0)`.
/// Non-finite data is an error.
pub fn percentile_init(x: &[f32], zeros: usize, max_percentile: f64, min_percentile: f64) -> Result<(f32, f32)> {
    let n = x.len() + zeros;
    let (k_max, k_min) = (rank(max_percentile, n), rank(min_percentile, n));
    if zeros == 0 {
        let (max0, min0) = order_stats(x, k_max, k_min)?;
        return Ok((max0.max(0.0), min0.min(0.0)));
    }
    if x.is_empty() {
        return Ok((0.0, 0.0));
    }
    // With zeros beside `x`: the k-th largest of all is the k-th largest of `x` while that is positive
    // (k <= the positive count), else 0 or below, which the clamp makes 0; the same on the min side.
    let (lo, hi, pos, neg) = range_and_signs(x)?;
    let (k_hi, k_lo) = (if k_max <= pos { k_max } else { 1 }, if k_min <= neg { k_min } else { 1 });
    let (max0, min0) = order_stats_in(x, (lo, hi), k_hi, k_lo);
    Ok((if k_max <= pos { max0 } else { 0.0 }, if k_min <= neg { min0 } else { 0.0 }))
}

/// `(min, max, how many > 0, how many < 0)` of `x` (not empty) in one pass over it (each chunk read once
/// from memory); non-finite data is an error naming the first such value.
fn range_and_signs(x: &[f32]) -> Result<(f32, f32, usize, usize)> {
    let parts = crate::par::map_chunks(x, CHUNK, |start, c| {
        let (l, h, bad) = crate::kernels::min_max_run(c);
        let bad = bad.then(|| c.iter().position(|v| !v.is_finite()).map(|i| (start + i, c[i]))).flatten();
        let (p, n) = c.iter().fold((0usize, 0usize), |(p, n), &v| (p + usize::from(v > 0.0), n + usize::from(v < 0.0)));
        (l, h, p, n, bad)
    });
    let (mut lo, mut hi, mut pos, mut neg) = (f32::INFINITY, f32::NEG_INFINITY, 0, 0);
    for (l, h, p, n, bad) in parts {
        if let Some((index, value)) = bad {
            return Err(QuantError::NonFinite { index, value });
        }
        (lo, hi, pos, neg) = (lo.min(l), hi.max(h), pos + p, neg + n);
    }
    Ok((lo, hi, pos, neg))
}

/// The `k_max`-th largest and the `k_min`-th smallest value of `x` (`1 <= k <= x.len()`); non-finite data is
/// an error.
fn order_stats(x: &[f32], k_max: usize, k_min: usize) -> Result<(f32, f32)> {
    Ok(order_stats_in(x, min_max(x)?, k_max, k_min))
}

/// [`order_stats`] of finite `x` whose `(min, max)` is `range`.
fn order_stats_in(x: &[f32], (lo, hi): (f32, f32), k_max: usize, k_min: usize) -> (f32, f32) {
    let n = x.len();
    if k_max == 1 && k_min == 1 {
        (hi, lo)
    } else {
        // Each fixed chunk keeps only its own candidates for the two order statistics; the k-th values of
        // the union are the k-th values of the data. Values, not positions, so the chunking cannot matter. A
        // side with k = 1 is the range's end, known already: its chunks keep nothing (one pass fewer over the
        // data, as on a ReLU's output, whose 1st smallest is its minimum).
        let (want_max, want_min) = (if k_max > 1 { k_max } else { 0 }, if k_min > 1 { k_min } else { 0 });
        let keep = |c: &[f32]| extremes(c, want_max.min(c.len()), want_min.min(c.len()));
        let parts: Vec<Vec<f32>> = if n < PAR_THRESHOLD || k_max + k_min > CHUNK / 4 {
            vec![x.to_vec()]
        } else {
            x.par_chunks(STAT_CHUNK).map(keep).collect()
        };
        let mut all: Vec<f32> = parts.concat();
        let m = all.len();
        let mx = if k_max == 1 { hi } else { *all.select_nth_unstable_by(m - k_max, f32::total_cmp).1 };
        let mn = if k_min == 1 { lo } else { *all.select_nth_unstable_by(k_min - 1, f32::total_cmp).1 };
        (mx, mn)
    }
}

/// For each 8-bit keep mask, the positions of the kept values in order, then the others (any order).
const PACK: [[u8; 8]; 256] = {
    let mut t = [[0u8; 8]; 256];
    let mut m = 0;
    while m < 256 {
        let (mut k, mut i) = (0, 0);
        while i < 8 {
            if m >> i & 1 == 1 {
                t[m][k] = i as u8;
                k += 1;
            }
            i += 1;
        }
        let mut i = 0;
        while i < 8 {
            if m >> i & 1 == 0 {
                t[m][k] = i as u8;
                k += 1;
            }
            i += 1;
        }
        m += 1;
    }
    t
};

/// Copy the non-zero values of `x` into the front of `out`, in order; returns how many were written and how
/// many zeros (of either sign) were left out. A non-finite value is an error (nothing is written then), as is an
/// `out` too short for the non-zero values.
pub fn store_nonzero(x: &[f32], out: &mut [f32]) -> Result<(usize, usize)> {
    let counts = crate::par::map_chunks(x, CHUNK, |start, c| {
        // One vectorized sweep for the count and for whether any value is not finite (exponent all ones);
        // the scalar search for the first such value only when there is one.
        let (n, bad) = c.iter().fold((0usize, false), |(n, bad), &v| {
            (n + usize::from(v != 0.0), bad | (v.to_bits() & EXP_MASK == EXP_MASK))
        });
        let bad = if bad { c.iter().position(|v| !v.is_finite()).map(|i| (start + i, c[i])) } else { None };
        (n, bad)
    });
    if let Some((index, value)) = counts.iter().find_map(|&(_, bad)| bad) {
        return Err(QuantError::NonFinite { index, value });
    }
    let written: usize = counts.iter().map(|&(k, _)| k).sum();
    if written > out.len() {
        return Err(QuantError::ShapeMismatch { what: "sample buffer (room for the non-zero values)", expected: written, got: out.len() });
    }
    let mut rest = &mut out[..written];
    let mut jobs = Vec::with_capacity(counts.len());
    for (c, &(k, _)) in x.chunks(CHUNK).zip(&counts) {
        let (dst, tail) = rest.split_at_mut(k);
        jobs.push((c, dst));
        rest = tail;
    }
    // Branch-free compaction through a scratch block on the stack: which values are zero is data, and a branch
    // on it is mispredicted half the time on a ReLU's output (ten times slower). Eight values at a time: their
    // keep mask picks, from a table, the order that puts the kept ones first; all eight are written and the
    // position moves by the count kept, so the position waits on one add per eight values (value by value, it
    // waited on each compare: 2.5-3 ns per value on one thread, see bench_ptq_time).
    let copy = |(c, dst): (&[f32], &mut [f32])| {
        let mut tmp = [0f32; 1024 + 8];
        let mut at = 0;
        for block in c.chunks(1024) {
            let mut j = 0;
            let mut groups = block.chunks_exact(8);
            for g in &mut groups {
                let m = g.iter().enumerate().fold(0usize, |m, (i, &v)| m | (usize::from(v != 0.0) << i));
                let order = &PACK[m];
                for (t, &i) in tmp[j..j + 8].iter_mut().zip(order) {
                    *t = g[i as usize];
                }
                j += m.count_ones() as usize;
            }
            for &v in groups.remainder() {
                tmp[j] = v;
                j += usize::from(v != 0.0);
            }
            dst[at..at + j].copy_from_slice(&tmp[..j]);
            at += j;
        }
    };
    if x.len() < PAR_THRESHOLD {
        jobs.into_iter().for_each(copy);
    } else {
        jobs.into_par_iter().for_each(copy);
    }
    Ok((written, x.len() - written))
}

/// Signed histogram counts (NumPy's int64) as u64; a negative count is an error.
pub fn counts_from_i64(counts: &[i64]) -> Result<Vec<u64>> {
    counts
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            u64::try_from(c).map_err(|_| QuantError::InvalidParameter {
                name: "counts",
                reason: format!("histogram count {c} at bin {i} is negative"),
            })
        })
        .collect()
}

/// Checks of a histogram `(counts, lo, hi)`; returns the total count.
pub fn check_histogram(counts: &[u64], lo: f32, hi: f32) -> Result<u64> {
    if counts.is_empty() {
        return Err(QuantError::EmptyInput { what: "histogram has no bins" });
    }
    for (i, v) in [lo, hi].into_iter().enumerate() {
        if !v.is_finite() {
            return Err(QuantError::NonFinite { index: i, value: v });
        }
    }
    if hi < lo {
        return Err(QuantError::InvalidParameter {
            name: "hi",
            reason: format!("histogram range [{lo}, {hi}] has hi < lo"),
        });
    }
    let total = counts.iter().try_fold(0u64, |a, &c| a.checked_add(c)).ok_or(QuantError::InvalidParameter {
        name: "counts",
        reason: "histogram counts overflow u64".into(),
    })?;
    if total == 0 {
        return Err(QuantError::EmptyInput { what: "histogram counts sum to zero" });
    }
    Ok(total)
}

/// `(max_init, min_init)` from a histogram of `nbins` equal bins over `[lo, hi]` (torch_npu `npu_ifmr`,
/// MindSpore `IFMR`): with `cdf[k] = cumsum(counts)[k] / N` (f64), `max_init = lo + (#bins with cdf <
/// p_max) / nbins * (hi - lo)` and `min_init` the same with `cdf < 1 - p_min`; computed in f64, rounded to
/// f32, then clamped as in §3.2 (`max_init >= 0`, `min_init <= 0`).
pub fn histogram_init(counts: &[u64], lo: f32, hi: f32, max_percentile: f64, min_percentile: f64) -> Result<(f32, f32)> {
    let total = check_histogram(counts, lo, hi)? as f64;
    let below = |p: f64| {
        let mut run = 0u64;
        counts
            .iter()
            .take_while(|&&c| {
                run += c;
                (run as f64) / total < p
            })
            .count()
    };
    let nb = counts.len() as f64;
    let at = |k: usize| (lo as f64 + k as f64 / nb * (hi as f64 - lo as f64)) as f32;
    let max0 = at(below(max_percentile));
    let min0 = at(below(1.0 - min_percentile));
    Ok((max0.max(0.0), min0.min(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_follows_amct() {
        assert_eq!(rank(0.999999, 1000), 1);
        assert_eq!(rank(1.0, 10), 1);
        assert_eq!(rank(0.99, 1000), 10);
        assert_eq!(rank(0.75, 1), 1);
        assert_eq!(rank(0.999999, 5_000_000), 5);
    }

    #[test]
    fn min_is_counted_from_the_bottom() {
        let x: Vec<f32> = (0..1000).map(|i| i as f32 - 500.0).collect();
        // k = 10: the 10th largest of -500..=499 is 490 and the 10th smallest -491 (not the 0.99 quantile).
        let (mx, mn) = percentile_init(&x, 0, 0.99, 0.99).unwrap();
        assert_eq!((mx, mn), (490.0, -491.0));
    }

    #[test]
    fn large_inputs_use_chunk_candidates() {
        let n = 300_000usize;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % n) as f32 - 1000.0).collect();
        let k = rank(0.9999, n) as f32;
        assert!(k > 1.0);
        // The values are a permutation of -1000..=298999.
        let (mx, mn) = percentile_init(&x, 0, 0.9999, 0.9999).unwrap();
        assert_eq!((mx, mn), (298_999.0 - (k - 1.0), -1000.0 + (k - 1.0)));
    }

    #[test]
    fn one_side_at_its_end_is_the_range_end() {
        // Parallel chunks with k = 1 on one side (that side is the range's end, no chunk keeps anything for it)
        // and k > 1 on the other, both ways round, with zeros beside the data too: the same order statistics
        // as a full sort.
        let n = 400_000usize;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919) % n) as f32 * 0.25 - 1000.0).collect();
        let mut sorted = x.clone();
        sorted.sort_by(f32::total_cmp);
        for (pmax, pmin) in [(0.9999, 0.999999), (0.999999, 0.9999), (0.9999, 0.9999)] {
            let (kmax, kmin) = (rank(pmax, n), rank(pmin, n));
            let (mx, mn) = percentile_init(&x, 0, pmax, pmin).unwrap();
            assert_eq!((mx, mn), (sorted[n - kmax].max(0.0), sorted[kmin - 1].min(0.0)), "{pmax} {pmin}");
        }
        let pos: Vec<f32> = x.iter().map(|v| v + 1001.0).collect();
        let zeros = 123_456;
        let (kmax, kmin) = (rank(0.9999, n + zeros), rank(0.999999, n + zeros));
        assert!(kmax > 1 && kmin == 1);
        let (mx, mn) = percentile_init(&pos, zeros, 0.9999, 0.999999).unwrap();
        assert_eq!((mx, mn), (sorted[n - kmax] + 1001.0, 0.0));
    }

    #[test]
    fn clamps_to_include_zero_and_rejects_nan() {
        assert_eq!(percentile_init(&[1.0, 2.0], 0, 0.999999, 0.999999).unwrap(), (2.0, 0.0));
        assert_eq!(percentile_init(&[-1.0, -2.0], 0, 0.999999, 0.999999).unwrap(), (0.0, -2.0));
        assert!(matches!(percentile_init(&[1.0, f32::NAN], 0, 0.9, 0.9), Err(QuantError::NonFinite { index: 1, .. })));
    }

    #[test]
    fn histogram_percentiles() {
        // 4 bins over [-2, 2]; cdf = [0.1, 0.5, 0.9, 1.0].
        let c = [1u64, 4, 4, 1];
        assert_eq!(histogram_init(&c, -2.0, 2.0, 0.95, 0.95).unwrap(), (1.0, -2.0));
        assert_eq!(histogram_init(&c, -2.0, 2.0, 0.85, 0.85).unwrap(), (0.0, -1.0));
        assert!(histogram_init(&[0, 0], 0.0, 1.0, 0.9, 0.9).is_err());
        assert!(histogram_init(&[1], 1.0, 0.0, 0.9, 0.9).is_err());
    }

    #[test]
    fn zeros_left_out_give_the_same_bounds() {
        let full: Vec<f32> = (0..200_000).map(|i| if i % 3 == 0 { 0.0 } else { ((i * 7919) % 4001) as f32 - 1500.0 }).collect();
        let nz: Vec<f32> = full.iter().copied().filter(|&v| v != 0.0).collect();
        let zeros = full.len() - nz.len();
        for p in [1.0, 0.999999, 0.9999, 0.99, 0.6] {
            assert_eq!(percentile_init(&nz, zeros, p, p).unwrap(), percentile_init(&full, 0, p, p).unwrap(), "p={p}");
        }
        // Mostly zeros: the k-th largest is one of them.
        let relu: Vec<f32> = (0..1000).map(|i| if i < 995 { 0.0 } else { i as f32 }).collect();
        let nz: Vec<f32> = relu.iter().copied().filter(|&v| v != 0.0).collect();
        assert_eq!(percentile_init(&nz, 995, 0.99, 0.99).unwrap(), percentile_init(&relu, 0, 0.99, 0.99).unwrap());
        assert_eq!(percentile_init(&[], 7, 0.99, 0.99).unwrap(), (0.0, 0.0));
    }

    #[test]
    fn bounds_match_a_full_sort() {
        // The bounds (range and signs, then each chunk's extremes) against sorting everything, with zeros left
        // out beside the data, on data mostly negative (k beyond the positive count) and mostly
        // positive, and a NaN in a late chunk still found at its index.
        let mut s = 7u64;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        for (n, positive) in [(300_000usize, 0.0005f32), (300_000, 0.9995), (70_001, 0.5)] {
            let x: Vec<f32> = (0..n).map(|_| { let u = next(); let v = next() * 100.0 + 1e-3; if u < positive { v } else { -v } }).collect();
            for zeros in [0usize, 5, 1_000_000] {
                let mut all: Vec<f32> = x.iter().copied().chain(std::iter::repeat(0.0).take(zeros)).collect();
                all.sort_by(f32::total_cmp);
                for p in [1.0, 0.999999, 0.9999, 0.999] {
                    let m = all.len();
                    let (k_max, k_min) = (rank(p, m), rank(p, m));
                    let want = (all[m - k_max].max(0.0), all[k_min - 1].min(0.0));
                    assert_eq!(percentile_init(&x, zeros, p, p).unwrap(), want, "n={n} zeros={zeros} p={p}");
                }
            }
        }
        let mut x: Vec<f32> = (0..300_000).map(|i| i as f32 - 7.0).collect();
        x[250_001] = f32::NAN;
        assert!(matches!(percentile_init(&x, 3, 0.9999, 0.9999), Err(QuantError::NonFinite { index: 250_001, .. })));
    }

    #[test]
    fn store_nonzero_packs_every_keep_pattern() {
        // Every 8-value keep mask, in every alignment to the 1024-value blocks, lengths that end mid-group.
        for len in [0usize, 1, 7, 8, 9, 1023, 1024, 1025, 2048 + 5, 8 * 256 * 3 + 3] {
            let x: Vec<f32> = (0..len)
                .map(|i| {
                    let (m, bit) = ((i / 8 * 37 + i / 1000) % 256, i % 8);
                    if m >> bit & 1 == 1 { i as f32 + 0.5 } else if i % 3 == 0 { -0.0 } else { 0.0 }
                })
                .collect();
            let want: Vec<f32> = x.iter().copied().filter(|&v| v != 0.0).collect();
            let mut out = vec![f32::NAN; len + 1];
            let (w, z) = store_nonzero(&x, &mut out).unwrap();
            assert_eq!((w, z), (want.len(), len - want.len()), "len {len}");
            assert_eq!(&out[..w], &want[..], "len {len}");
            assert!(out[w..].iter().all(|v| v.is_nan()), "len {len}: wrote past the non-zero values");
        }
    }

    #[test]
    fn store_nonzero_keeps_order_and_counts() {
        let x: Vec<f32> = (0..100_001).map(|i| if i % 4 == 1 { -0.0 } else if i % 4 == 2 { 0.0 } else { i as f32 }).collect();
        let mut out = vec![f32::NAN; 60_000];
        let (w, z) = store_nonzero(&x, &mut out).unwrap();
        let want: Vec<f32> = x.iter().copied().filter(|&v| v != 0.0).collect();
        assert_eq!((w, z), (want.len(), x.len() - want.len()));
        assert_eq!(&out[..w], &want[..]);
        assert!(out[w..].iter().all(|v| v.is_nan()));
        let mut small = vec![0f32; 10];
        assert!(matches!(store_nonzero(&x, &mut small), Err(QuantError::ShapeMismatch { .. })));
        let mut bad = x.clone();
        bad[70_000] = f32::INFINITY;
        assert!(matches!(store_nonzero(&bad, &mut out), Err(QuantError::NonFinite { index: 70_000, .. })));
    }
}
