//! AWQ (Lin et al., "AWQ: Activation-aware Weight Quantization"; reference mit-han-lab/llm-awq
//! `quantize/auto_scale.py` and `auto_clip.py`, AutoAWQ) for one `[K, N]` weight (layout in `groupwise`) and
//! calibration rows `X` `[R, K]` of its input.
//!
//! 1. Scale search: `m_j = mean_t |X_tj|` (f64, summed row by row). For `alpha = i / n_grid`, `i = 0 ..
//!    n_grid` (llm-awq's grid: 0, 0.05, ..., 0.95 for 20 points), `s_j = max(m_j^alpha, 1e-4)`, normalized
//!    by `sqrt(max s · min s)`, then rounded to f32. The loss is the layer's output error
//!    `mean((X W - (X/s) Q(W·s))²)` with `Q` the group-wise round to nearest (no clip), evaluated as
//!    `X (W - Q(W·s)/s)` in f64; the first minimum wins.
//! 2. Clip search on `W·s` with input `X/s`: for every group and output column, the ratio of
//!    `groupwise::ClipSearch` minimizing that group's output error `Σ_t (Σ_{k in g} x_tk δ_kn)²` =
//!    `δᵀ G_g δ` with `G_g` the group's block of `(X/s)ᵀ(X/s)`.
//!
//! Deployment: `(X/s) · dequant(codes)`; `1/s` is folded into the op producing `X` or applied as a Mul.
//! Parallel over fixed column tiles; deterministic whatever the thread count.

use rayon::prelude::*;

use crate::error::{QuantError, Result};
use crate::groupwise::{
    assemble, col_tiles, column_min_max, search_clip, tasks, tile_params, ClipSearch, GroupParams, GroupQuant,
    GroupSpec, MatShape,
};
use crate::linalg::{gemm_add, view, view_mut};
use crate::par::first_non_finite;

/// llm-awq's lower bound on a scale before normalization.
pub const MIN_SCALE: f64 = 1e-4;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AwqOptions {
    pub spec: GroupSpec,
    /// Points of the alpha grid, `alpha = i / n_grid` for `i < n_grid` (llm-awq: 20).
    pub n_grid: usize,
    /// The clip search after the scales (`None`: plain min/max of `W·s`).
    pub clip: Option<ClipSearch>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AwqResult {
    /// `[K]` per-input-channel scales: the weight rows were multiplied by them, the input must be divided.
    pub scales: Vec<f32>,
    pub alpha: f64,
    /// The alpha grid and the output error (mean square) at each point.
    pub alphas: Vec<f64>,
    pub losses: Vec<f64>,
    /// The group-quantized `W·s`.
    pub quant: GroupQuant,
}

/// Mean `|x|` per channel of `x` `[R, K]`, summed row by row in f64.
pub fn mean_abs(x: &[f32], k: usize) -> Vec<f64> {
    let mut sum = vec![0f64; k];
    for row in x.chunks(k) {
        sum.iter_mut().zip(row).for_each(|(s, &v)| *s += v.abs() as f64);
    }
    let r = (x.len() / k) as f64;
    sum.iter().map(|s| s / r).collect()
}

/// The normalized scales for one alpha.
pub fn scales_for(m: &[f64], alpha: f64) -> Vec<f32> {
    let s: Vec<f64> = m.iter().map(|&v| v.powf(alpha).max(MIN_SCALE)).collect();
    let (lo, hi) = s.iter().fold((f64::INFINITY, 0f64), |(l, h), &v| (l.min(v), h.max(v)));
    let norm = (hi * lo).sqrt();
    s.iter().map(|&v| (v / norm) as f32).collect()
}

fn check(w: &[f32], s: MatShape, x: &[f32], o: &AwqOptions) -> Result<()> {
    s.check("weight", w.len())?;
    if x.is_empty() {
        return Err(QuantError::EmptyInput { what: "calibration activations" });
    }
    if !x.len().is_multiple_of(s.k) {
        return Err(QuantError::ShapeMismatch { what: "activation length, a multiple of K =", expected: s.k, got: x.len() });
    }
    if o.n_grid == 0 {
        return Err(QuantError::InvalidParameter { name: "n_grid", reason: "must be >= 1, got 0".into() });
    }
    if let Some((index, value)) = first_non_finite(w) {
        return Err(QuantError::NonFinite { index, value });
    }
    Ok(())
}

/// AWQ for `w` `[K, N]` with calibration rows `x` `[R, K]`. `x` must be finite (callers check it first so
/// the error can name the activations).
pub fn awq(w: &[f32], s: MatShape, x: &[f32], o: &AwqOptions) -> Result<AwqResult> {
    check(w, s, x, o)?;
    if let Some((index, value)) = first_non_finite(x) {
        return Err(QuantError::NonFinite { index, value });
    }
    let rows = x.len() / s.k;
    let m = mean_abs(x, s.k);
    let x64: Vec<f64> = x.par_iter().map(|&v| v as f64).collect();
    let alphas: Vec<f64> = (0..o.n_grid).map(|i| i as f64 / o.n_grid as f64).collect();
    let mut losses = Vec::with_capacity(alphas.len());
    for &a in &alphas {
        let sc = scales_for(&m, a);
        losses.push(output_error(w, s, &x64, rows, &sc, &o.spec)? / (rows * s.n) as f64);
    }
    let best = (0..losses.len()).fold(0, |b, i| if losses[i] < losses[b] { i } else { b });
    let scales = scales_for(&m, alphas[best]);
    let ws = scaled(w, s, &scales);
    let quant = match &o.clip {
        None => {
            let params: Vec<Vec<GroupParams>> = tasks(s, &o.spec)
                .into_par_iter()
                .map(|(g, cols)| tile_params(&ws, s, &o.spec, g, cols, None))
                .collect::<Result<_>>()?;
            assemble(&ws, s, &o.spec, &params)
        }
        Some(c) => clip_search(&ws, s, &x64, rows, &scales, &o.spec, c)?,
    };
    Ok(AwqResult { scales, alpha: alphas[best], alphas, losses, quant })
}

/// `w · s` (row `k` times `s_k`), f32.
fn scaled(w: &[f32], s: MatShape, sc: &[f32]) -> Vec<f32> {
    let mut ws = w.to_vec();
    ws.par_chunks_mut(s.n).zip(sc.par_iter()).for_each(|(row, &f)| row.iter_mut().for_each(|v| *v *= f));
    ws
}

/// `‖X (W - Q(W·s)/s)‖²` (f64), summed per fixed column tile, tiles in order.
fn output_error(w: &[f32], s: MatShape, x64: &[f64], rows: usize, sc: &[f32], spec: &GroupSpec) -> Result<f64> {
    let ws = scaled(w, s, sc);
    let parts: Vec<f64> = col_tiles(s.n)
        .par_iter()
        .map(|cols| -> Result<f64> {
            let nc = cols.len();
            let mut dw = vec![0f64; s.k * nc];
            for g in 0..spec.groups(s.k) {
                let p = tile_params(&ws, s, spec, g, cols.clone(), None)?;
                for k in spec.rows(g, s.k) {
                    for (c, p) in p.iter().enumerate() {
                        let v = ws[k * s.n + cols.start + c];
                        let eff = p.dequant(p.code(v, spec.qmax() as f32)) / sc[k];
                        dw[k * nc + c] = w[k * s.n + cols.start + c] as f64 - eff as f64;
                    }
                }
            }
            let mut y = vec![0f64; rows * nc];
            gemm_add(view_mut(&mut y, rows, nc, nc), view(x64, rows, s.k, s.k), view(&dw, s.k, nc, nc), 1.0);
            Ok(y.iter().fold(0f64, |a, v| a + v * v))
        })
        .collect::<Result<_>>()?;
    Ok(parts.iter().sum())
}

/// The clip search of step 2 on `ws = W·s` with input `X/s`.
fn clip_search(ws: &[f32], s: MatShape, x64: &[f64], rows: usize, sc: &[f32], spec: &GroupSpec, c: &ClipSearch)
    -> Result<GroupQuant> {
    let ratios = c.ratios()?;
    let grams: Vec<Vec<f64>> = (0..spec.groups(s.k))
        .into_par_iter()
        .map(|g| {
            let r = spec.rows(g, s.k);
            let xg: Vec<f64> = (0..rows)
                .flat_map(|t| r.clone().map(move |k| (t, k)))
                .map(|(t, k)| x64[t * s.k + k] / sc[k] as f64)
                .collect();
            let len = r.len();
            let mut gg = vec![0f64; len * len];
            gemm_add(view_mut(&mut gg, len, len, len), view(&xg, rows, len, len).transpose(), view(&xg, rows, len, len), 1.0);
            gg
        })
        .collect();
    let params: Vec<Vec<GroupParams>> = tasks(s, spec)
        .into_par_iter()
        .map(|(g, cols)| group_clip(ws, s, spec, g, cols, (&ratios, c.refine), &grams[g]))
        .collect::<Result<_>>()?;
    Ok(assemble(ws, s, spec, &params))
}

/// Per column of `cols`, the clip of group `g` (the search `(ratios, refine)` of `ClipSearch`) with the least
/// `δᵀ G δ`.
fn group_clip(ws: &[f32], s: MatShape, spec: &GroupSpec, g: usize, cols: std::ops::Range<usize>,
    (ratios, refine): (&[f32], bool), gram: &[f64]) -> Result<Vec<GroupParams>> {
    let rows = spec.rows(g, s.k);
    let (len, nc, qmax) = (rows.len(), cols.len(), spec.qmax() as f32);
    let (lo, hi) = column_min_max(ws, s.n, rows.clone(), cols.clone());
    let (mut d, mut gd) = (vec![0f64; len * nc], vec![0f64; len * nc]);
    search_clip(&lo, &hi, ratios, refine, spec, g, s.n, cols.start, |p| {
        for (a, k) in rows.clone().enumerate() {
            for (c, p) in p.iter().enumerate() {
                let v = ws[k * s.n + cols.start + c];
                d[a * nc + c] = v as f64 - p.dequant(p.code(v, qmax)) as f64;
            }
        }
        gd.iter_mut().for_each(|v| *v = 0.0);
        gemm_add(view_mut(&mut gd, len, nc, nc), view(gram, len, len, len), view(&d, len, nc, nc), 1.0);
        let mut loss = vec![0f64; nc];
        for a in 0..len {
            for c in 0..nc {
                loss[c] += d[a * nc + c] * gd[a * nc + c];
            }
        }
        Ok(loss)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_are_normalized_and_alpha_zero_is_rtn() {
        let sc = scales_for(&[0.0, 1.0, 4.0], 0.5);
        let mx = sc.iter().cloned().fold(0f32, f32::max) as f64;
        let mn = sc.iter().cloned().fold(f32::INFINITY, f32::min) as f64;
        assert!((mx * mn - 1.0).abs() < 1e-6);
        assert!(scales_for(&[0.0, 3.0], 0.0).iter().all(|&v| v == 1.0));
        let (k, n, rows) = (8, 3, 5);
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 7) as f32 - 3.0) / 3.0).collect();
        let x: Vec<f32> = (0..rows * k).map(|i| ((i * 3 % 11) as f32 - 5.0) / 2.0).collect();
        let spec = GroupSpec::new(4, 4, false, false).unwrap();
        let r = awq(&w, MatShape { k, n }, &x, &AwqOptions { spec, n_grid: 1, clip: None }).unwrap();
        assert_eq!(r.alpha, 0.0);
        assert_eq!(r.quant, crate::groupwise::quantize_groupwise(&w, MatShape { k, n }, &spec, None).unwrap());
    }
}
