//! The raw data as an IFMR loss (spec §3.3), exact, in one pass over the data per batch of candidates.
//!
//! For a candidate `c = (lo, hi, s)` the level of `v` is `q(v) = round_half_even(clip(v, lo, hi) / s)`
//! ([`level`], f32), non-decreasing in `v`, from `q(lo)` to `q(hi)`. Its *thresholds* are, for each level
//! `r` in `q(lo)+1 ..= q(hi)`, the smallest finite f32 whose level is at least `r` (found by galloping from the
//! level's midpoint over the ordered bit patterns, then halving, so a value is at level `r` or above exactly
//! when it is at or above the threshold).
//! The thresholds of a batch of candidates, sorted and without repeats, cut the real line into intervals;
//! interval `j` holds the values with `j` thresholds at or below them. One pass over the data adds up, per
//! interval, the count, the sum and the sum of squares of its values (f64, in order, within fixed chunks of
//! `PASS_CHUNK` values; the chunks' sums added in chunk order), taken about the interval's reference value
//! `ref_j` (0 for the interval that holds 0, else the threshold below it; the first threshold for interval 0):
//! `n_j`, `D1_j = sum(v - ref_j)` and `D2_j = sum((v - ref_j)^2)`, so nothing large cancels. A candidate's
//! levels are runs of consecutive intervals; the values of interval `j`, at level `r`, dequantize to
//! `cv = f32(r * s)` and their squared error is `max(n_j * d * d - 2 * d * D1_j + D2_j, 0)` with
//! `d = cv - ref_j` (f64, in that order). The loss is those terms added in four sums by interval index
//! (`j % 4`, each in interval order), then `(s0 + s1) + (s2 + s3)`, over the count of all values (`zeros`
//! more, not stored, at level 0 with no error). The result is the loss of quantizing every value (`err` of `loss.rs`, its error taken in f64) up to f64 rounding, at the cost of locating each value
//! among the thresholds once per batch instead of quantizing it once per candidate.

use rayon::prelude::*;

use crate::error::Result;
use crate::histogram::bins_block;
use crate::par::map_chunks;
use crate::stop::Stop;

use super::loss::{level, Cand, Loss};

/// Values per chunk of a pass (the per-interval sums of a chunk are added in chunk order).
pub const PASS_CHUNK: usize = 1 << 20;
/// Partial sums of a candidate's per-interval terms: term `j` goes to sum `j % LANES`, and the loss is
/// `(s0 + s1) + (s2 + s3)` over the count.
const LANES: usize = 4;
const _: () = assert!(LANES == 4);
/// Thresholds of one batch of candidates, at most (one candidate may exceed it alone).
pub const MAX_THRESHOLDS: usize = 1 << 14;
/// Cells of the table that narrows a value's search to the thresholds of its cell: about two per threshold,
/// at most this many.
const MAX_CELLS: usize = 1 << 15;
/// Thresholds of one cell compared without branches.
const PAD: usize = 4;

/// Order-preserving map of a finite f32 to u32 (negative values reversed, below the positive ones).
#[inline(always)]
pub fn key(v: f32) -> u32 {
    let b = v.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

#[inline(always)]
fn unkey(k: u32) -> f32 {
    f32::from_bits(if k >> 31 == 1 { k & 0x7fff_ffff } else { !k })
}

/// The candidate's thresholds (keys), in level order: for `r` in `q(lo)+1 ..= q(hi)`, the smallest finite
/// f32 with `q >= r`.
pub fn thresholds(c: &Cand) -> Vec<u32> {
    let (r0, r1) = (level(c.lo, c), level(c.hi, c));
    let mut out = Vec::with_capacity((r1 - r0).max(0.0) as usize);
    let mut r = r0 + 1.0;
    while r <= r1 {
        out.push(first_at_level(c, r));
        r += 1.0;
    }
    out
}

/// The smallest finite f32 (as a key) whose level is at least `r`, for `q(f32::MIN) < r <= q(f32::MAX)`:
/// bracketed by galloping from the level's midpoint `(r - 0.5) * s`, then halved. `q` is non-decreasing in the
/// key, so the answer is the one a halving over every key gives, in a few steps instead of 32.
fn first_at_level(c: &Cand, r: f32) -> u32 {
    let (kmin, kmax) = (key(f32::MIN), key(f32::MAX));
    let up = |k: u32| level(unkey(k), c) >= r;
    let mid = (r - 0.5) * c.scale;
    let g = if mid.is_finite() { key(mid) } else { key(0.0) }.clamp(kmin, kmax);
    // Invariant: !up(a) and up(b) (q(f32::MIN) < r <= q(f32::MAX) bounds the galloping).
    let (mut a, mut b) = (g, g);
    let mut step = 1u32;
    if up(g) {
        loop {
            a = g.saturating_sub(step).max(kmin);
            if !up(a) {
                break;
            }
            b = a;
            step = step.saturating_mul(2);
        }
    } else {
        loop {
            b = g.saturating_add(step).min(kmax);
            if up(b) {
                break;
            }
            a = b;
            step = step.saturating_mul(2);
        }
    }
    while b - a > 1 {
        let m = a + (b - a) / 2;
        if up(m) {
            b = m;
        } else {
            a = m;
        }
    }
    b
}

/// Sorted thresholds without repeats (as values), with a table of equal cells over their range: a value is
/// compared only with the thresholds of its cell. The cell of `v` is `floor((v - lo) * inv)` clamped to the
/// table, the same function for values and thresholds, and monotone: the thresholds of earlier cells are below
/// `v`, those of later cells above it, so the count is exact whatever the rounding of the cell.
struct Locator {
    /// The thresholds, then `PAD` infinities.
    t: Vec<f32>,
    len: usize,
    lo: f64,
    inv: f64,
    /// `table[j]`: how many thresholds lie in the cells before `j` (the last entry is all of them).
    table: Vec<u32>,
    /// The index of the interval that holds 0 (0 when there are no thresholds: the one interval).
    zero: usize,
}

impl Locator {
    fn new(keys: &[u32]) -> Self {
        let mut t: Vec<f32> = keys.iter().map(|&k| unkey(k)).collect();
        let (lo, hi) = (t.first().map_or(0.0, |&v| v as f64), t.last().map_or(0.0, |&v| v as f64));
        let cells = MAX_CELLS.min((2 * t.len()).max(1).next_power_of_two());
        let real = t.len();
        let inv = if hi > lo { cells as f64 / (hi - lo) } else { 0.0 };
        t.extend([f32::INFINITY; PAD]);
        let zero = t.partition_point(|&v| v <= 0.0);
        let mut loc = Self { t, len: real, lo, inv, table: vec![0; cells + 1], zero };
        for &v in &loc.t[..real] {
            let c = loc.cell(v);
            loc.table[c + 1] += 1;
        }
        for j in 1..loc.table.len() {
            loc.table[j] += loc.table[j - 1];
        }
        loc
    }

    /// The last cell.
    fn last(&self) -> f64 {
        (self.table.len() - 2) as f64
    }

    /// The cell of `v` (the kernel the pass runs on blocks).
    fn cell(&self, v: f32) -> usize {
        let mut c = [0u32];
        bins_block(&[v], self.lo, self.inv, self.last(), &mut c);
        c[0] as usize
    }

    /// How many thresholds are at or below `v`, in cell `c`. A cell's few thresholds are compared without
    /// branches (`t` ends with `PAD` infinities, so the compares never read past it).
    #[inline(always)]
    fn index_in(&self, v: f32, c: usize) -> usize {
        let (a, b) = (self.table[c] as usize, self.table[c + 1] as usize);
        if b - a <= PAD {
            let w = &self.t[a..a + PAD];
            return a + w.iter().map(|&t| usize::from(t <= v)).sum::<usize>().min(b - a);
        }
        a + self.t[a..b].partition_point(|&t| t <= v)
    }

    /// The reference value of interval `j`: 0 for the interval that holds 0 (zeros then add exactly nothing),
    /// else the threshold below it (the first threshold for interval 0). Read from `t` beside the thresholds
    /// the value was just compared with, so the pass touches no other table.
    #[inline(always)]
    fn reference(&self, j: usize) -> f64 {
        if j == self.zero {
            0.0
        } else {
            self.t[j.max(1) - 1] as f64
        }
    }
}

/// Per interval: the count and the sums of `v - ref` and of its square, `ref` the interval's reference value.
type Sums = Vec<[f64; 3]>;

/// The reference value of each interval (see [`Locator::reference`]).
fn references(loc: &Locator) -> Vec<f64> {
    (0..=loc.len).map(|j| loc.reference(j)).collect()
}

/// Values located together: their cells (vectorized), then their intervals and offsets from the intervals'
/// references, then the sums, so each loop is short and the values of a block proceed independently.
const BLOCK: usize = 256;

/// One pass: the per-interval sums of `x` over the intervals that `loc`'s thresholds cut.
fn pass(x: &[f32], loc: &Locator) -> Sums {
    let m = loc.len + 1;
    let parts = map_chunks(x, PASS_CHUNK, |_, chunk| {
        let mut s = vec![[0f64; 3]; m];
        let (mut cells, mut js, mut ws) = ([0u32; BLOCK], [0u32; BLOCK], [0f64; BLOCK]);
        for blk in chunk.chunks(BLOCK) {
            let n = blk.len();
            bins_block(blk, loc.lo, loc.inv, loc.last(), &mut cells[..n]);
            for (((&v, &c), j), w) in blk.iter().zip(&cells[..n]).zip(&mut js[..n]).zip(&mut ws[..n]) {
                let i = loc.index_in(v, c as usize);
                *j = i as u32;
                *w = v as f64 - loc.reference(i);
            }
            for (&j, &w) in js[..n].iter().zip(&ws[..n]) {
                let e = &mut s[j as usize];
                e[0] += 1.0;
                e[1] += w;
                e[2] += w * w;
            }
        }
        s
    });
    let mut it = parts.into_iter();
    let mut total = it.next().unwrap_or_else(|| vec![[0f64; 3]; m]);
    for p in it {
        for (a, b) in total.iter_mut().zip(&p) {
            for k in 0..3 {
                a[k] += b[k];
            }
        }
    }
    total
}

/// The raw data (finite) as a loss, `zeros` more values of 0 beside it; `stop` is checked before each pass.
pub struct RunLoss<'a> {
    pub x: &'a [f32],
    pub zeros: usize,
    pub stop: &'a Stop,
}

impl RunLoss<'_> {
    /// Losses of one batch of candidates with their thresholds.
    fn batch(&self, cands: &[Cand], ths: &[Vec<u32>]) -> Vec<f64> {
        let mut t: Vec<u32> = ths.iter().flatten().copied().collect();
        t.sort_unstable();
        t.dedup();
        let loc = Locator::new(&t);
        let refs = references(&loc);
        let sums = pass(self.x, &loc);
        let count = (self.x.len() + self.zeros).max(1) as f64;
        let loss = |(c, th): (&Cand, &Vec<u32>)| {
            // Interval `j` (its values at or above `t[j - 1]`) is at level `r0 + #{th <= t[j - 1]}` (`th` is a
            // sorted subset of `t`, with repeats where a level holds no float), found by a walk along `th`.
            // The terms go into `LANES` sums by interval index, so the adds do not wait on each other (one sum
            // took 4 cycles an interval: most of a small tensor's search).
            let r0 = level(c.lo, c);
            let mut i = 0;
            let mut cv = (r0 * c.scale) as f64;
            let mut term = |j: usize| {
                if j > 0 && i < th.len() && th[i] <= t[j - 1] {
                    while i < th.len() && th[i] <= t[j - 1] {
                        i += 1;
                    }
                    cv = ((r0 + i as f32) * c.scale) as f64;
                }
                let [n, d1, d2] = sums[j];
                let cj = cv - refs[j];
                // A sum of squares: a negative rounding residue is 0.
                (n * cj * cj - 2.0 * cj * d1 + d2).max(0.0)
            };
            let mut lanes = [0f64; LANES];
            let mut j = 0;
            while j + LANES <= refs.len() {
                for (k, lane) in lanes.iter_mut().enumerate() {
                    *lane += term(j + k);
                }
                j += LANES;
            }
            for (k, lane) in lanes.iter_mut().enumerate().take(refs.len() - j) {
                *lane += term(j + k);
            }
            ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) / count
        };
        cands.par_iter().zip(ths.par_iter()).map(loss).collect()
    }
}

impl Loss for RunLoss<'_> {
    fn losses(&self, cands: &[Cand]) -> Result<Vec<f64>> {
        let ths: Vec<Vec<u32>> = cands.par_iter().map(thresholds).collect();
        let mut out = Vec::with_capacity(cands.len());
        let mut start = 0;
        while start < cands.len() {
            let mut end = start + 1;
            let mut held = ths[start].len();
            while end < cands.len() && held + ths[end].len() <= MAX_THRESHOLDS {
                held += ths[end].len();
                end += 1;
            }
            self.stop.check()?;
            out.extend(self.batch(&cands[start..end], &ths[start..end]));
            start = end;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::loss::err;
    use super::*;
    use crate::stop::NEVER;

    /// Every value quantized; the error `f32(r * s) - v` taken in f64 (exact).
    fn direct(x: &[f32], zeros: usize, c: &Cand) -> f64 {
        let e = |v: f32| (level(v, c) * c.scale) as f64 - v as f64;
        x.iter().map(|&v| e(v).powi(2)).sum::<f64>() / (x.len() + zeros) as f64
    }

    #[test]
    fn the_f32_error_rounds_where_the_runs_do_not() {
        // A value far above the clip: `f32(c - v)` rounds, the f64 difference does not.
        let c = Cand { lo: 0.0, hi: 1.0, scale: 0.3 };
        let v = 1000.3f32;
        let exact = (level(v, &c) * c.scale) as f64 - v as f64;
        assert_ne!(err(v, &c) as f64, exact);
        let got = RunLoss { x: &[v], zeros: 0, stop: &NEVER }.losses(&[c]).unwrap()[0];
        assert!((got - exact * exact).abs() <= 1e-12 * got);
    }

    #[test]
    fn keys_keep_the_order_of_finite_values() {
        let v = [f32::MIN, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, f32::MAX];
        for w in v.windows(2) {
            assert!(key(w[0]) < key(w[1]), "{w:?}");
            assert_eq!(unkey(key(w[0])).to_bits(), w[0].to_bits());
        }
    }

    #[test]
    fn thresholds_are_the_first_values_of_each_level() {
        let c = Cand { lo: -1.0, hi: 2.0, scale: 0.1 };
        let th = thresholds(&c);
        assert_eq!(th.len(), 30);
        for (i, &k) in th.iter().enumerate() {
            let v = unkey(k);
            let r = level(c.lo, &c) + 1.0 + i as f32;
            assert!(level(v, &c) >= r && level(unkey(k - 1), &c) < r, "{v}");
        }
    }

    #[test]
    fn galloping_finds_the_first_value_of_each_level_at_any_scale() {
        // Scales from tiny to huge, ranges on both sides of 0 and on one: each threshold is at level r and the
        // float below it is not (the definition, which has one answer).
        for (lo, hi, n) in [(-1.0f32, 2.0f32, 255.0f32), (0.0, 1e-30, 15.0), (-3e30, 1e30, 255.0), (-5.0, 0.0, 7.0), (1e-3, 7.5, 4095.0)] {
            let c = Cand { lo, hi, scale: (hi - lo) / n };
            for (i, &k) in thresholds(&c).iter().enumerate() {
                let r = level(c.lo, &c) + 1.0 + i as f32;
                assert!(level(unkey(k), &c) >= r && level(unkey(k - 1), &c) < r, "{c:?} level {r}");
            }
        }
    }

    #[test]
    fn losses_are_the_element_errors_summed() {
        let x: Vec<f32> = (0..300_001).map(|i| ((i * 7919) % 10_007) as f32 / 997.0 - 2.0).collect();
        let cands: Vec<Cand> =
            (0..70).map(|i| Cand { lo: -2.0, hi: 4.0 + i as f32 * 0.13, scale: 0.02 + i as f32 * 1e-3 }).collect();
        let got = RunLoss { x: &x, zeros: 123, stop: &NEVER }.losses(&cands).unwrap();
        for (g, c) in got.iter().zip(&cands) {
            let d = direct(&x, 123, c);
            assert!((g - d).abs() <= 1e-9 * d, "{g} vs {d}");
        }
        let one = RunLoss { x: &x, zeros: 123, stop: &NEVER }.losses(&cands[5..6]).unwrap();
        assert!((one[0] - got[5]).abs() <= 1e-12 * got[5]);
    }

    #[test]
    fn many_levels_split_into_batches() {
        // 12-bit candidates: 4095 thresholds each, so 17 candidates need two batches.
        let x: Vec<f32> = (0..20_000).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let cands: Vec<Cand> = (0..17).map(|i| Cand { lo: -3.0, hi: 3.0, scale: (6.0 + i as f32 * 0.01) / 4095.0 }).collect();
        let got = RunLoss { x: &x, zeros: 0, stop: &NEVER }.losses(&cands).unwrap();
        for (g, c) in got.iter().zip(&cands) {
            let d = direct(&x, 0, c);
            assert!((g - d).abs() <= 1e-9 * d, "{g} vs {d}");
        }
    }

    #[test]
    fn one_level_and_no_values() {
        let c = Cand { lo: 0.0, hi: 0.0, scale: 1.0 };
        let x = [0.5f32, -2.0, 3.0];
        let got = RunLoss { x: &x, zeros: 1, stop: &NEVER }.losses(&[c]).unwrap();
        assert!((got[0] - direct(&x, 1, &c)).abs() < 1e-12);
        assert_eq!(RunLoss { x: &[], zeros: 4, stop: &NEVER }.losses(&[c]).unwrap(), vec![0.0]);
    }
}
