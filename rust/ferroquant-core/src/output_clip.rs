//! Output-aware clip search (issue 15, item 3): how much error each candidate quantization grid of an
//! activation tensor causes in the *output* of a layer that reads it, rather than in the tensor itself.
//!
//! The layer is given by its weight `[c_out, p]` (one row per output channel, the `p` inputs of its patch, as
//! AdaRound reads it) and `n` sampled input patches `[n, groups, p]` (rows `o` of the weight read group
//! `o / (c_out / groups)`). For each candidate grid `(scale_k, zero_point_k)` (per tensor, signed `bits`
//! codes), with `e = x - FQ_k(x)` the fake-quantization error of a patch (spec §0: round half to even of
//! `x / scale` in f32, plus the zero point, clamped), the error is
//!
//! `L_k = Σ_r ω_r Σ_o (w_o · e_r)² / Σ_r ω_r`,
//!
//! the (weighted) mean squared output error `||W x - W FQ_k(x)||²` per patch (the bias cancels; the weight is
//! the float one). The row weights `ω` (finite, >= 0, not all 0) let a stratified sample stand for the data:
//! patches that hold the largest values kept for sure (weight 1), the rest drawn at random (weight: how many
//! each stands for). Sums are in f64: per candidate, the products `E Wᵀ` of each group run sequentially (faer) and are
//! reduced in a fixed order, candidates in parallel; the result does not depend on the thread count.

use rayon::prelude::*;

use crate::error::{QuantError, Result};
use crate::kernels::Grid;
use crate::linalg::{gemm_add, view, view_mut};
use crate::par::first_non_finite;
use crate::scheme::Scheme;
use crate::stop::Stop;

/// The sampled patches and the weight of one layer, checked by [`output_clip_errors`].
pub struct Patches<'a> {
    /// `[n, groups, p]`.
    pub x: &'a [f32],
    pub n: usize,
    pub groups: usize,
    pub p: usize,
    /// `[c_out, p]`.
    pub w: &'a [f32],
    pub c_out: usize,
    /// `[n]`: how much each patch counts.
    pub weights: &'a [f64],
}

fn check(l: &Patches<'_>, scales: &[f32], zero_points: &[i32], sch: &Scheme) -> Result<Vec<Grid>> {
    if l.n == 0 || l.p == 0 || l.c_out == 0 || l.groups == 0 || scales.is_empty() {
        return Err(QuantError::EmptyInput { what: "output clip search needs patches, inputs, outputs and candidates" });
    }
    if l.x.len() != l.n * l.groups * l.p {
        return Err(QuantError::ShapeMismatch { what: "patches [n, groups, p]", expected: l.n * l.groups * l.p, got: l.x.len() });
    }
    if l.w.len() != l.c_out * l.p {
        return Err(QuantError::ShapeMismatch { what: "weight [c_out, p]", expected: l.c_out * l.p, got: l.w.len() });
    }
    if !l.c_out.is_multiple_of(l.groups) {
        return Err(QuantError::ShapeMismatch { what: "output channels, a multiple of groups =", expected: l.groups, got: l.c_out });
    }
    if l.weights.len() != l.n {
        return Err(QuantError::ShapeMismatch { what: "row weights [n]", expected: l.n, got: l.weights.len() });
    }
    if let Some(i) = l.weights.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
        return Err(QuantError::InvalidParameter { name: "weights", reason: format!("entry {i} is {} (must be finite and >= 0)", l.weights[i]) });
    }
    if l.weights.iter().sum::<f64>() <= 0.0 {
        return Err(QuantError::InvalidParameter { name: "weights", reason: "all row weights are 0".into() });
    }
    if zero_points.len() != scales.len() {
        return Err(QuantError::ShapeMismatch { what: "zero_points (one per candidate)", expected: scales.len(), got: zero_points.len() });
    }
    for t in [l.x, l.w] {
        if let Some((index, value)) = first_non_finite(t) {
            return Err(QuantError::NonFinite { index, value });
        }
    }
    Grid::checked(scales, zero_points, sch)
}

/// The weight of each group as f64 `[p, c_out / groups]` (transposed: what `E Wᵀ` multiplies with).
fn weight_groups(l: &Patches<'_>) -> Vec<Vec<f64>> {
    let per = l.c_out / l.groups;
    (0..l.groups)
        .map(|g| {
            let mut wt = vec![0f64; l.p * per];
            for o in 0..per {
                for (j, &v) in l.w[(g * per + o) * l.p..(g * per + o + 1) * l.p].iter().enumerate() {
                    wt[j * per + o] = v as f64;
                }
            }
            wt
        })
        .collect()
}

/// `L` for one grid (see the module doc).
fn error_of(l: &Patches<'_>, wt: &[Vec<f64>], grid: &Grid) -> f64 {
    let (n, p, per) = (l.n, l.p, l.c_out / l.groups);
    let mut e = vec![0f64; n * p];
    let mut y = vec![0f64; n * per];
    let mut total = 0f64;
    for (g, wg) in wt.iter().enumerate() {
        for r in 0..n {
            let xr = &l.x[(r * l.groups + g) * p..(r * l.groups + g + 1) * p];
            for (ei, &v) in e[r * p..(r + 1) * p].iter_mut().zip(xr) {
                *ei = (v - (grid.code(v) - grid.zp) * grid.scale) as f64;
            }
        }
        if per == 1 {
            total += e
                .chunks(p)
                .zip(l.weights)
                .map(|(er, &om)| om * er.iter().zip(wg).map(|(a, b)| a * b).sum::<f64>().powi(2))
                .sum::<f64>();
            continue;
        }
        y.iter_mut().for_each(|v| *v = 0.0);
        gemm_add(view_mut(&mut y, n, per, per), view(&e, n, p, p), view(wg, p, per, per), 1.0);
        total += y.chunks(per).zip(l.weights).map(|(yr, &om)| om * yr.iter().fold(0f64, |acc, v| acc + v * v)).sum::<f64>();
    }
    total / l.weights.iter().sum::<f64>()
}

/// `L_k` for every candidate grid `(scales[k], zero_points[k])` of `bits` signed codes (symmetric or not is
/// only in the grids given). A stop request interrupts between candidates.
pub fn output_clip_errors(l: &Patches<'_>, scales: &[f32], zero_points: &[i32], bits: u32, stop: &Stop)
    -> Result<Vec<f64>> {
    let sch = Scheme::new(bits, false)?;
    let grids = check(l, scales, zero_points, &sch)?;
    let wt = weight_groups(l);
    grids
        .par_iter()
        .map(|g| {
            if stop.requested() {
                return Err(QuantError::Interrupted);
            }
            Ok(error_of(l, &wt, g))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(n: usize, groups: usize, p: usize, c_out: usize) -> (Vec<f32>, Vec<f32>) {
        let x = (0..n * groups * p).map(|i| (((i * 2654435761usize) % 2001) as f32 / 400.0 - 1.0).max(0.0)).collect();
        let w = (0..c_out * p).map(|i| ((i * 40503usize) % 997) as f32 / 997.0 - 0.5).collect();
        (x, w)
    }

    #[test]
    fn matches_the_definition_and_does_not_depend_on_threads() {
        let (n, groups, p, c_out) = (37, 2, 5, 6);
        let (x, w) = layer(n, groups, p, c_out);
        let om: Vec<f64> = (0..n).map(|r| 1.0 + (r % 3) as f64).collect();
        let l = Patches { x: &x, n, groups, p, w: &w, c_out, weights: &om };
        let scales = [0.01f32, 0.02, 0.05];
        let zps = [-128, -100, 0];
        let got = output_clip_errors(&l, &scales, &zps, 8, &crate::stop::NEVER).unwrap();
        for (k, (&s, &z)) in scales.iter().zip(&zps).enumerate() {
            let fq = |v: f32| ((v / s).round_ties_even() + z as f32).clamp(-128.0, 127.0) - z as f32;
            let mut want = 0f64;
            for r in 0..n {
                for o in 0..c_out {
                    let g = o / (c_out / groups);
                    let xr = &x[(r * groups + g) * p..(r * groups + g + 1) * p];
                    let d: f64 = (0..p).map(|j| w[o * p + j] as f64 * (xr[j] - fq(xr[j]) * s) as f64).sum();
                    want += om[r] * d * d;
                }
            }
            want /= om.iter().sum::<f64>();
            assert!((got[k] - want).abs() <= 1e-12 * want.max(1.0), "{k}: {} vs {want}", got[k]);
        }
        for t in [1usize, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
            let again = pool.install(|| output_clip_errors(&l, &scales, &zps, 8, &crate::stop::NEVER).unwrap());
            assert!(again.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let (x, w) = layer(4, 1, 3, 2);
        let ones = [1.0f64; 4];
        let l = Patches { x: &x, n: 4, groups: 1, p: 3, w: &w, c_out: 2, weights: &ones };
        let never = &crate::stop::NEVER;
        assert!(matches!(output_clip_errors(&l, &[], &[], 8, never), Err(QuantError::EmptyInput { .. })));
        assert!(matches!(output_clip_errors(&l, &[0.0], &[0], 8, never), Err(QuantError::InvalidScale { .. })));
        assert!(matches!(output_clip_errors(&l, &[0.1], &[300], 8, never), Err(QuantError::InvalidZeroPoint { .. })));
        assert!(matches!(output_clip_errors(&l, &[0.1], &[0, 1], 8, never), Err(QuantError::ShapeMismatch { .. })));
        let short = Patches { x: &x[..11], ..l };
        assert!(matches!(output_clip_errors(&short, &[0.1], &[0], 8, never), Err(QuantError::ShapeMismatch { .. })));
        let mut bad = x.clone();
        bad[5] = f32::NAN;
        let l2 = Patches { x: &bad, ..l };
        assert!(matches!(output_clip_errors(&l2, &[0.1], &[0], 8, never), Err(QuantError::NonFinite { index: 5, .. })));
        let l3 = Patches { x: &x, n: 4, groups: 3, p: 1, w: &w[..4], c_out: 4, weights: &ones };
        assert!(matches!(output_clip_errors(&l3, &[0.1], &[0], 8, never), Err(QuantError::ShapeMismatch { .. })));
        let zeros = [0.0f64; 4];
        let l4 = Patches { weights: &zeros, ..l };
        assert!(matches!(output_clip_errors(&l4, &[0.1], &[0], 8, never), Err(QuantError::InvalidParameter { .. })));
        let neg = [1.0, -1.0, 1.0, 1.0];
        let l5 = Patches { weights: &neg, ..l };
        assert!(matches!(output_clip_errors(&l5, &[0.1], &[0], 8, never), Err(QuantError::InvalidParameter { .. })));
    }
}
