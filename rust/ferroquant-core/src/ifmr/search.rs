//! The IFMR candidate searches (spec §3.3, §3.5, decisions 2 and 10): the 1-D window over one clip bound,
//! its extension past the window edges, and the opt-in 2-D grid over both bounds.

use crate::error::Result;
use crate::qparams::guard;
use crate::scheme::Scheme;

use super::loss::{Cand, Loss};
use super::IfmrOptions;

/// Extension limits, as ratios of the percentile bound (decision 10).
pub const EXTEND_MIN_RATIO: f64 = 0.01;
pub const EXTEND_MAX_RATIO: f64 = 2.0;
/// Extension candidates evaluated per pass over the data (a pass costs about the same for 1 or 64 candidates,
/// see `runs`). The walk stops at the first candidate whose loss does not fall; the others of its batch count
/// as evaluated, so the pick does not depend on this number.
pub const EXTEND_BATCH: usize = 64;
const RATIO_TOL: f64 = 1e-9;

/// Which clip bound a search moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The upper clip `c = r * max0`, lower clip fixed at `min0` (AMCT, asymmetric).
    Max,
    /// The lower clip `m = r * min0`, upper clip fixed at 0 (negative-only data with an offset, §3.5).
    Min,
    /// Symmetric: `[-c, c]` with `c = r * |A|`.
    Symmetric,
    /// Both bounds on the grid `r_j * min0` x `r_i * max0` (opt-in 2-D search, asymmetric).
    Both,
}

/// The search space: the percentile bounds and how a ratio becomes a candidate.
#[derive(Debug, Clone, Copy)]
pub struct Space {
    pub bound: Bound,
    pub max0: f32,
    pub min0: f32,
    pub scheme: Scheme,
}

/// The best candidate found, with its position in the window (negative or past the end when extended).
#[derive(Debug, Clone, Copy)]
pub struct Pick {
    pub cand: Cand,
    pub index: i64,
    pub index_min: i64,
    pub loss: f64,
    pub evaluated: usize,
}

/// `r_i = start + i * step` in f64.
pub fn ratio(o: &IfmrOptions, i: i64) -> f64 {
    o.search_start + i as f64 * o.search_step
}

/// `f32(r * bound)`, one rounding.
fn scaled(r: f64, bound: f32) -> f32 {
    (r * bound as f64) as f32
}

impl Space {
    /// Guarded candidate scale: below FLT_EPSILON it becomes 1; non-finite or too large is an error.
    fn scale(&self, s: f32) -> Result<f32> {
        Ok(guard(s, 0, &self.scheme, 0)?.scale)
    }

    /// The signed percentile bound of larger magnitude (positive on a tie) and its level count `L`.
    pub fn symmetric_bound(&self) -> (f32, f32) {
        let a = if self.max0.abs() >= self.min0.abs() { self.max0 } else { self.min0 };
        let l = if a > 0.0 { self.scheme.qmax() } else { -self.scheme.qmin() };
        (a, l as f32)
    }

    /// The candidate for ratio `r` (1-D bounds).
    pub fn cand(&self, r: f64) -> Result<Cand> {
        let levels = self.scheme.levels() as f32;
        match self.bound {
            Bound::Max | Bound::Both => {
                let hi = scaled(r, self.max0);
                Ok(Cand { lo: self.min0, hi, scale: self.scale((hi - self.min0) / levels)? })
            }
            Bound::Min => {
                let lo = scaled(r, self.min0);
                Ok(Cand { lo, hi: 0.0, scale: self.scale((0.0 - lo) / levels)? })
            }
            Bound::Symmetric => {
                let (a, l) = self.symmetric_bound();
                let c = scaled(r, a.abs());
                Ok(Cand { lo: -c, hi: c, scale: self.scale(c / l)? })
            }
        }
    }

    /// The 2-D candidate for ratios `r_min` (lower clip) and `r_max` (upper clip).
    pub fn cand_2d(&self, r_min: f64, r_max: f64) -> Result<Cand> {
        let (lo, hi) = (scaled(r_min, self.min0), scaled(r_max, self.max0));
        Ok(Cand { lo, hi, scale: self.scale((hi - lo) / self.scheme.levels() as f32)? })
    }
}

/// Index of the first minimum.
fn argmin(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &l) in v.iter().enumerate() {
        if l < v[best] {
            best = i;
        }
    }
    best
}

/// The 1-D window search, extended past its edges when `search_extend` is set.
pub fn search_1d(loss: &dyn Loss, space: &Space, o: &IfmrOptions) -> Result<Pick> {
    let n = o.count();
    let cands = (0..n as i64).map(|i| space.cand(ratio(o, i))).collect::<Result<Vec<_>>>()?;
    let losses = loss.losses(&cands)?;
    let best = argmin(&losses);
    let mut pick = Pick { cand: cands[best], index: best as i64, index_min: 0, loss: losses[best], evaluated: n };
    if o.search_extend {
        let last = n as i64 - 1;
        let moved = pick.index == 0 && walk(loss, space, o, &mut pick, -1)?;
        if !moved && pick.index == last {
            walk(loss, space, o, &mut pick, 1)?;
        }
    }
    Ok(pick)
}

/// Step from the pick in direction `dir` while the loss falls, within the extension limits; candidates
/// whose scale fails the guard end the walk. Returns whether the pick moved.
fn walk(loss: &dyn Loss, space: &Space, o: &IfmrOptions, pick: &mut Pick, dir: i64) -> Result<bool> {
    let mut moved = false;
    loop {
        let (mut idx, mut cands) = (Vec::new(), Vec::new());
        let mut i = pick.index + dir;
        while cands.len() < EXTEND_BATCH {
            let r = ratio(o, i);
            if !(EXTEND_MIN_RATIO - RATIO_TOL..=EXTEND_MAX_RATIO + RATIO_TOL).contains(&r) {
                break;
            }
            match space.cand(r) {
                Ok(c) => cands.push(c),
                Err(_) => break,
            }
            idx.push(i);
            i += dir;
        }
        if cands.is_empty() {
            return Ok(moved);
        }
        let losses = loss.losses(&cands)?;
        pick.evaluated += cands.len();
        for ((&l, &c), &k) in losses.iter().zip(&cands).zip(&idx) {
            if l < pick.loss {
                (pick.loss, pick.cand, pick.index) = (l, c, k);
                moved = true;
            } else {
                return Ok(moved);
            }
        }
    }
}

/// The 2-D grid: lower ratios `r_j` (rows) times upper ratios `r_i` (columns); the first minimum in
/// row-major order wins. `index` is the upper ratio's index, `index_min` the lower's.
pub fn search_2d(loss: &dyn Loss, space: &Space, o: &IfmrOptions) -> Result<Pick> {
    let n = o.count() as i64;
    let mut cands = Vec::with_capacity((n * n) as usize);
    for j in 0..n {
        for i in 0..n {
            cands.push(space.cand_2d(ratio(o, j), ratio(o, i))?);
        }
    }
    let losses = loss.losses(&cands)?;
    let best = argmin(&losses);
    let (j, i) = (best as i64 / n, best as i64 % n);
    Ok(Pick { cand: cands[best], index: i, index_min: j, loss: losses[best], evaluated: cands.len() })
}
