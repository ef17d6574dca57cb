//! Ranking HFMG candidates: fast losses from prefix sums, near ties broken by the direct summation, so that
//! every comparison `a < b` has the outcome it has on the direct losses (the search's reference definition).

use rayon::prelude::*;

use super::{coarse_then_fine, degenerate, densities, loss, moments::FastLoss, Histogram, REFINE_ROUNDS};
use crate::error::Result;
use crate::stop::Stop;

/// Below this many loss terms (candidates x terms per candidate) scoring runs on the calling thread.
const PAR_WORK: usize = 1 << 16;
/// Loss terms per chunk of candidates scored between two checks of the stop token.
const CHUNK_WORK: usize = 1 << 17;

/// The relative gap under which two fast losses are compared by their direct losses: far above how much the
/// two computations of one loss differ (a few ulps for the fast one; at most about `2 nbins` ulps for the
/// sequential direct sum of `nbins` positive terms).
pub fn tie_tol(nbins: usize) -> f64 {
    (8 * nbins + 1024) as f64 * f64::EPSILON
}

/// A candidate with its fast loss and, once needed, its direct loss.
#[derive(Debug, Clone, Copy)]
pub struct Score {
    pub pair: (usize, usize),
    pub fast: f64,
    pub exact: Option<f64>,
}

pub struct Ranker<'a> {
    fast: Option<FastLoss>,
    rho: Vec<f64>,
    w: f64,
    dst: usize,
    tol: f64,
    stop: &'a Stop,
}

impl<'a> Ranker<'a> {
    pub fn new(h: &'a Histogram, bits: u32, stop: &'a Stop) -> Self {
        let w = h.grid().width;
        let fast = FastLoss::new(h.counts(), w, bits);
        Self { fast, rho: densities(h.counts(), w), w, dst: 1usize << bits, tol: tie_tol(h.nbins()), stop }
    }

    /// The direct loss of `s` (computed once).
    pub fn exact(&self, s: &mut Score) -> f64 {
        let (l, r) = s.pair;
        *s.exact.get_or_insert_with(|| loss(&self.rho, self.w, l, r, self.dst))
    }

    fn one(&self, pair: (usize, usize)) -> Score {
        match &self.fast {
            Some(f) => Score { pair, fast: f.loss(pair.0, pair.1), exact: None },
            None => {
                let v = loss(&self.rho, self.w, pair.0, pair.1, self.dst);
                Score { pair, fast: v, exact: Some(v) }
            }
        }
    }

    /// Fast losses of `pairs`, in order; in parallel when there is enough work, checking `stop` per chunk.
    pub fn score(&self, pairs: &[(usize, usize)]) -> Result<Vec<Score>> {
        let per = if self.fast.is_some() { self.dst } else { self.rho.len() }.max(1);
        // At most CHUNK_WORK terms between stop checks, and enough chunks to keep every thread busy (each loss
        // is computed whole by one thread, so the chunking never changes a value).
        let spread = pairs.len().div_ceil(4 * rayon::current_num_threads());
        let chunk = (CHUNK_WORK / per).min(spread).max(1);
        let run = |c: &[(usize, usize)]| -> Result<Vec<Score>> {
            self.stop.check()?;
            Ok(c.iter().map(|&p| self.one(p)).collect())
        };
        let parts: Vec<Vec<Score>> = if pairs.len().saturating_mul(per) < PAR_WORK {
            pairs.chunks(chunk).map(run).collect::<Result<_>>()?
        } else {
            pairs.par_chunks(chunk).map(run).collect::<Result<_>>()?
        };
        Ok(parts.concat())
    }

    /// `a < b` on the direct losses, decided by the fast losses when they are clearly apart.
    pub fn less(&self, a: &mut Score, b: &mut Score) -> bool {
        if a.pair == b.pair {
            return false; // the same candidate: the same loss
        }
        if let (Some(x), Some(y)) = (a.exact, b.exact) {
            return x < y;
        }
        let (x, y) = (a.fast, b.fast);
        if x.is_finite() && y.is_finite() && (x - y).abs() > self.tol * x.abs().max(y.abs()) {
            return x < y;
        }
        self.exact(a) < self.exact(b)
    }

    /// The first smallest candidate (`argmin_first` on the direct losses: NaN never wins).
    pub fn argmin(&self, scores: &[Score]) -> Option<(usize, Score)> {
        let mut best: Option<(usize, Score)> = None;
        for (i, &s) in scores.iter().enumerate() {
            let mut x = s;
            let better = match &mut best {
                None => true,
                Some((_, b)) => self.less(&mut x, b),
            };
            if better && !(x.fast.is_nan() && self.exact(&mut x).is_nan()) {
                best = Some((i, x));
            }
        }
        best
    }

    /// A lower bound of the loss of `pair` (its clipped tails; 0 without prefix sums).
    fn floor(&self, pair: (usize, usize)) -> f64 {
        self.fast.as_ref().map_or(0.0, |f| f.floor(pair.0, pair.1))
    }

    /// `argmin(score(pairs))`, without the losses of the candidates that cannot win: they are scored in order of
    /// their lower bound (`floor`), and once a bound lies clearly above the smallest loss found (by more than
    /// the tie tolerance, four times over), that candidate and every later one are left out. Each of them is
    /// then greater than the winner by a margin `less` decides on the fast losses, and none ties it, so the
    /// winner (first minimum) is the one of the whole list. On a CNN's activation histograms this scores about
    /// 2% of AMCT's candidates (the tails of the narrow ones outweigh the winner's whole loss). Candidates are
    /// scored in batches that double from 8 (in parallel when a batch is large enough): which ones are scored
    /// does not depend on the thread count, and the winner not on the batches.
    pub fn argmin_of(&self, pairs: &[(usize, usize)]) -> Result<Option<(usize, Score)>> {
        if self.fast.is_none() {
            return Ok(self.argmin(&self.score(pairs)?));
        }
        let floors: Vec<f64> = pairs.iter().map(|&p| self.floor(p)).collect();
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        order.sort_by(|&a, &b| floors[a].total_cmp(&floors[b]).then(a.cmp(&b)));
        let margin = 1.0 + 4.0 * self.tol;
        // a NaN or infinite bound (sorted last) never rules a candidate out
        let out = |i: usize, smallest: f64| floors[i].is_finite() && floors[i] > smallest * margin;
        let mut smallest = f64::INFINITY;
        let mut kept: Vec<(usize, Score)> = Vec::new();
        let (mut at, mut batch) = (0, 8);
        while at < order.len() {
            self.stop.check()?;
            let take: Vec<usize> =
                order[at..(at + batch).min(order.len())].iter().copied().take_while(|&i| !out(i, smallest)).collect();
            if take.is_empty() {
                break; // sorted by bound: every later one is as far above
            }
            let scored: Vec<Score> = if take.len() * self.dst >= PAR_WORK {
                take.par_iter().map(|&i| self.one(pairs[i])).collect()
            } else {
                take.iter().map(|&i| self.one(pairs[i])).collect()
            };
            for (&i, s) in take.iter().zip(scored) {
                if s.fast.is_finite() {
                    smallest = smallest.min(s.fast);
                }
                kept.push((i, s));
            }
            at += take.len();
            batch = (2 * batch).min(1024);
        }
        kept.sort_by_key(|&(i, _)| i);
        let scores: Vec<Score> = kept.iter().map(|&(_, s)| s).collect();
        Ok(self.argmin(&scores).map(|(k, s)| (kept[k].0, s)))
    }

    /// Best value of one bound in `[lo, hi]` (the other fixed; `pair` builds the candidate), first minimum. A
    /// wide scan takes every `REFINE_STRIDE`-th value and `hi`, then every value within a stride of that
    /// winner; a local scan only the values within a stride of `at`. Degenerate candidates are left out
    /// (`degenerate`); `None` when no candidate is left.
    fn scan(&self, range: (usize, usize), at: Option<usize>, pair: impl Fn(usize) -> (usize, usize)) -> Result<Option<Score>> {
        let keep = |b: usize| {
            let (l, r) = pair(b);
            !degenerate(self.w, l, r, self.dst)
        };
        coarse_then_fine(range, at, keep, |vals| {
            let pairs: Vec<(usize, usize)> = vals.iter().map(|&b| pair(b)).collect();
            let (i, s) = match self.argmin_of(&pairs)? {
                Some(found) => found,
                None => (0, self.one(pairs[0])), // every loss NaN: the first, as the plain argmin did
            };
            Ok((vals[i], s))
        })
    }

    /// ferroquant's HFMG refinement (on by default; `refine = false` is AMCT exactly). AMCT's candidates walk
    /// in steps of 1/100000 of the mass and never narrower than a quarter of the bins, so on heavy-tailed data
    /// the path is a handful of coarse candidates (two on ReLU'd Student-t) and the best clip is not among
    /// them. Starting from AMCT's winner, alternately re-choose the upper bound with the lower fixed and the
    /// lower with the upper fixed (the first round over every bin, coarse then fine; later rounds within a
    /// stride of the current bound), keeping a move only when the loss strictly falls. Returns the best
    /// candidate and whether it moved.
    pub fn refine(&self, start: Score) -> Result<(Score, bool)> {
        let n = self.rho.len();
        let mut best = start;
        for round in 0..REFINE_ROUNDS {
            let mut moved = false;
            let (l, r) = best.pair;
            if let Some(mut up) = self.scan((l, n - 1), (round > 0).then_some(r), |b| (l, b))? {
                if self.less(&mut up, &mut best) {
                    (best, moved) = (up, true);
                }
            }
            let (l, r) = best.pair;
            if let Some(mut down) = self.scan((0, r), (round > 0).then_some(l), |b| (b, r))? {
                if self.less(&mut down, &mut best) {
                    (best, moved) = (down, true);
                }
            }
            if !moved {
                break;
            }
        }
        Ok((best, best.pair != start.pair))
    }
}
