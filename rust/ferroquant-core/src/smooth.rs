//! SmoothQuant-style outlier balancing for one `[K, N]` weight (layout in `groupwise`): per input channel
//! `s_j = max(a_j^alpha / max(w_j, 1e-5)^(1 - alpha), 1e-5)` with `a_j` the activations' abs-max and `w_j` the
//! abs-max of weight row `j` (SmoothQuant's `smooth_ln_fcs`), the activations divided by `s`, the weight rows
//! multiplied by it. The balancing search picks `alpha` from a grid by the layer's output error on
//! calibration rows `X` `[R, K]` after int8 fake-quantization of both sides:
//! `mean((X W - FQ_a(X/s) FQ_w(s W))²)` in f64, with
//! - activations per tensor, symmetric, range `max_j(a_j / s_j)` (scale `range / qmax`, as a static
//!   calibration from the abs-max statistics would give);
//! - weights per output column, symmetric, the 127/128 rule of spec §0, at their own bit width (`w_bits`: 7
//!   where the deployment's CPU kernels take 7-bit weights, so the search weighs the error they will have).
//!
//! The first minimum wins. Parallel over fixed column tiles; deterministic whatever the thread count.

use rayon::prelude::*;

use crate::error::{QuantError, Result};
use crate::groupwise::col_tiles;
use crate::linalg::{gemm_add, view, view_mut};
use crate::par::first_non_finite;
use crate::qparams::from_range;
use crate::scheme::Scheme;

/// SmoothQuant's floor on a scale and on a weight row's abs-max.
pub const MIN_SMOOTH: f64 = 1e-5;

#[derive(Debug, Clone, PartialEq)]
pub struct SmoothResult {
    /// `[K]`: divide the activations by them, multiply the weight rows.
    pub scales: Vec<f32>,
    pub alpha: f64,
    pub alphas: Vec<f64>,
    pub losses: Vec<f64>,
    /// The same error without balancing (`s = 1`), for comparison.
    pub loss_unbalanced: f64,
}

/// The scales for one alpha from the activations' and the weight rows' abs-max.
pub fn smooth_scales(act_absmax: &[f32], w_absmax: &[f32], alpha: f64) -> Vec<f32> {
    act_absmax
        .iter()
        .zip(w_absmax)
        .map(|(&a, &w)| {
            let v = (a as f64).powf(alpha) / (w as f64).max(MIN_SMOOTH).powf(1.0 - alpha);
            v.max(MIN_SMOOTH) as f32
        })
        .collect()
}

/// Abs-max of each row of `w` `[k, n]`.
pub fn row_absmax(w: &[f32], n: usize) -> Vec<f32> {
    w.chunks(n).map(|r| r.iter().fold(0f32, |m, v| if v.abs() > m { v.abs() } else { m })).collect()
}

fn check(act: &[f32], w: &[f32], k: usize, n: usize, x: &[f32], alphas: &[f64]) -> Result<()> {
    if k == 0 || n == 0 || x.is_empty() || alphas.is_empty() {
        return Err(QuantError::EmptyInput { what: "smooth search needs channels, outputs, rows and alphas" });
    }
    if act.len() != k {
        return Err(QuantError::ShapeMismatch { what: "activation abs-max [K]", expected: k, got: act.len() });
    }
    if w.len() != k * n {
        return Err(QuantError::ShapeMismatch { what: "weight [K, N]", expected: k * n, got: w.len() });
    }
    if !x.len().is_multiple_of(k) {
        return Err(QuantError::ShapeMismatch { what: "activation length, a multiple of K =", expected: k, got: x.len() });
    }
    if let Some(i) = act.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
        return Err(QuantError::InvalidParameter { name: "act_absmax", reason: format!("entry {i} is {}", act[i]) });
    }
    if let Some(a) = alphas.iter().find(|a| !(0.0..=1.0).contains(*a)) {
        return Err(QuantError::InvalidParameter { name: "alphas", reason: format!("must lie in [0, 1], got {a}") });
    }
    for t in [w, x] {
        if let Some((index, value)) = first_non_finite(t) {
            return Err(QuantError::NonFinite { index, value });
        }
    }
    Ok(())
}

/// Symmetric per-tensor fake-quantization of `x / s` (rows of length `k`) with scale `step`, as f64.
fn fq_acts(x: &[f32], k: usize, s: &[f32], step: f32, sch: &Scheme) -> Vec<f64> {
    let (qmin, qmax) = (sch.qmin() as f32, sch.qmax() as f32);
    let mut out = vec![0f64; x.len()];
    out.par_chunks_mut(k).zip(x.par_chunks(k)).for_each(|(o, r)| {
        for ((o, &v), &sj) in o.iter_mut().zip(r).zip(s) {
            *o = (((v / sj) / step).round_ties_even().clamp(qmin, qmax) * step) as f64;
        }
    });
    out
}

/// The balancing search. `act_absmax` `[K]`, `w` `[K, N]`, `x` `[R, K]`; `bits` for the activations, `w_bits`
/// for the weights.
pub fn smooth_search(act_absmax: &[f32], w: &[f32], n: usize, x: &[f32], alphas: &[f64], bits: u32, w_bits: u32)
    -> Result<SmoothResult> {
    let k = act_absmax.len();
    check(act_absmax, w, k, n, x, alphas)?;
    let sch = Scheme::new(bits, true)?;
    let wsch = Scheme::new(w_bits, true)?;
    let rows = x.len() / k;
    let x64: Vec<f64> = x.par_iter().map(|&v| v as f64).collect();
    let w_absmax = row_absmax(w, n);
    let tiles = col_tiles(n);
    let yref: Vec<Vec<f64>> = tiles
        .par_iter()
        .map(|cols| {
            let wt: Vec<f64> = (0..k).flat_map(|j| w[j * n + cols.start..j * n + cols.end].iter().map(|&v| v as f64)).collect();
            let mut y = vec![0f64; rows * cols.len()];
            gemm_add(view_mut(&mut y, rows, cols.len(), cols.len()), view(&x64, rows, k, k), view(&wt, k, cols.len(), cols.len()), 1.0);
            y
        })
        .collect();
    let loss = |s: &[f32]| -> Result<f64> {
        let range = act_absmax.iter().zip(s).fold(0f32, |m, (&v, &sj)| m.max(v / sj));
        let step = from_range(-range, range, &sch, 0)?.scale;
        let xq = fq_acts(x, k, s, step, &sch);
        let parts: Vec<f64> = tiles
            .par_iter()
            .zip(&yref)
            .map(|(cols, y0)| -> Result<f64> {
                let nc = cols.len();
                let wq = fq_weight_tile(w, n, s, cols.clone(), &wsch)?;
                let mut y = y0.clone();
                gemm_add(view_mut(&mut y, rows, nc, nc), view(&xq, rows, k, k), view(&wq, k, nc, nc), -1.0);
                Ok(y.iter().fold(0f64, |acc, v| acc + v * v))
            })
            .collect::<Result<_>>()?;
        Ok(parts.iter().sum::<f64>() / (rows * n) as f64)
    };
    let losses: Vec<f64> = alphas.iter().map(|&a| loss(&smooth_scales(act_absmax, &w_absmax, a))).collect::<Result<_>>()?;
    let best = (0..losses.len()).fold(0, |b, i| if losses[i] < losses[b] { i } else { b });
    Ok(SmoothResult {
        scales: smooth_scales(act_absmax, &w_absmax, alphas[best]),
        alpha: alphas[best],
        alphas: alphas.to_vec(),
        losses,
        loss_unbalanced: loss(&vec![1f32; k])?,
    })
}

/// Columns `cols` of `s·W` fake-quantized per column (127/128 rule), `[K, nc]` f64.
fn fq_weight_tile(w: &[f32], n: usize, s: &[f32], cols: std::ops::Range<usize>, sch: &Scheme) -> Result<Vec<f64>> {
    let (k, nc) = (s.len(), cols.len());
    let mut ws = vec![0f32; k * nc];
    for j in 0..k {
        for (c, &v) in w[j * n + cols.start..j * n + cols.end].iter().enumerate() {
            ws[j * nc + c] = v * s[j];
        }
    }
    let (qmin, qmax) = (sch.qmin() as f32, sch.qmax() as f32);
    let mut out = vec![0f64; k * nc];
    for c in 0..nc {
        let (lo, hi) = (0..k).fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), j| (l.min(ws[j * nc + c]), h.max(ws[j * nc + c])));
        let step = from_range(lo, hi, sch, cols.start + c)?.scale;
        for j in 0..k {
            out[j * nc + c] = ((ws[j * nc + c] / step).round_ties_even().clamp(qmin, qmax) * step) as f64;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balancing_beats_no_balancing_on_an_outlier_channel() {
        let (k, n, rows) = (16, 8, 64);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| {
                let v = ((i * 2654435761usize) % 2001) as f32 / 1000.0 - 1.0;
                if i % k == 3 { v * 60.0 } else { v }
            })
            .collect();
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 40503usize) % 997) as f32 / 997.0 - 0.5).collect();
        let mut act = vec![0f32; k];
        for r in x.chunks(k) {
            act.iter_mut().zip(r).for_each(|(a, v)| *a = a.max(v.abs()));
        }
        let alphas: Vec<f64> = (0..=10).map(|i| i as f64 / 10.0).collect();
        let r = smooth_search(&act, &w, n, &x, &alphas, 8, 8).unwrap();
        assert!(r.alpha > 0.0);
        assert!(r.losses.iter().cloned().fold(f64::INFINITY, f64::min) < r.loss_unbalanced);
        assert!(smooth_search(&act, &w, n, &x, &[1.5], 8, 8).is_err());
        // coarser weights: the unbalanced and the best balanced errors grow
        let r7 = smooth_search(&act, &w, n, &x, &alphas, 8, 7).unwrap();
        let best = |r: &SmoothResult| r.losses.iter().cloned().fold(f64::INFINITY, f64::min);
        assert!(best(&r7) > best(&r) && r7.loss_unbalanced > r.loss_unbalanced);
    }
}
