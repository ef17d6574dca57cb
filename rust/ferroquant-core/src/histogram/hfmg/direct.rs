//! The direct HFMG search: every candidate's loss by direct summation over the source bins (`loss`), O(nbins)
//! each. It is the definition `search` reproduces (same candidate, same bounds, same loss) and was the
//! implementation until the prefix-sum ranking; kept for the tests and the benchmark (`examples/bench_hfmg.rs`).

use rayon::prelude::*;

use super::{argmin_first, candidates, coarse_then_fine, degenerate, densities, loss, Histogram, REFINE_ROUNDS};

/// Below this many (candidate x bin) terms the losses are computed on the calling thread (as before).
const PAR_WORK: usize = 1 << 16;

fn direct_pick(rho: &[f64], w: f64, dst: usize, pairs: &[(usize, usize)]) -> (usize, f64) {
    let f = |&(l, r): &(usize, usize)| loss(rho, w, l, r, dst);
    let ls: Vec<f64> = if pairs.len() * rho.len() < PAR_WORK {
        pairs.iter().map(f).collect()
    } else {
        pairs.par_iter().map(f).collect()
    };
    let i = argmin_first(&ls).unwrap_or(0);
    (i, ls[i])
}

/// One refinement scan (`Ranker::scan`): `None` when every candidate is degenerate.
fn direct_scan(rho: &[f64], w: f64, dst: usize, range: (usize, usize), at: Option<usize>,
               pair: impl Fn(usize) -> (usize, usize)) -> Option<(usize, f64)> {
    let keep = |b: usize| !degenerate(w, pair(b).0, pair(b).1, dst);
    let found = coarse_then_fine(range, at, keep, |vals| {
        let pairs: Vec<(usize, usize)> = vals.iter().map(|&b| pair(b)).collect();
        let (i, v) = direct_pick(rho, w, dst, &pairs);
        Ok::<_, std::convert::Infallible>((vals[i], (vals[i], v)))
    });
    found.unwrap_or_else(|never| match never {})
}

/// `(candidate index, left, right, loss, moved)` of the direct search.
pub fn search_direct(h: &Histogram, bits: u32, refine: bool) -> (usize, usize, usize, f64, bool) {
    let w = h.grid().width;
    let rho = densities(h.counts(), w);
    let dst = 1usize << bits;
    let cands = candidates(h.counts());
    let (index, loss0) = direct_pick(&rho, w, dst, &cands);
    let (l0, r0) = cands[index];
    let (mut l, mut r, mut best) = (l0, r0, loss0);
    if refine {
        let n = rho.len();
        for round in 0..REFINE_ROUNDS {
            let mut moved = false;
            if let Some((rr, lr)) = direct_scan(&rho, w, dst, (l, n - 1), (round > 0).then_some(r), |b| (l, b)) {
                if lr < best {
                    (r, best, moved) = (rr, lr, true);
                }
            }
            if let Some((ll, lloss)) = direct_scan(&rho, w, dst, (0, r), (round > 0).then_some(l), |b| (b, r)) {
                if lloss < best {
                    (l, best, moved) = (ll, lloss, true);
                }
            }
            if !moved {
                break;
            }
        }
    }
    (index, l, r, best, (l, r) != (l0, r0))
}

