//! Learned rounding (AdaRound: Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization",
//! ICML 2020; AIMET `adaround`): for each weight, rounding down or up on its fixed grid (scale and zero point
//! unchanged) is learned so that the layer's output on calibration data stays close to the float output.
//!
//! The layer is given as a weight `[rows, p]` (one row per output channel, the `p` inputs it reads) and the
//! Gram matrix of its input patches per group, `G = Σ x xᵀ / n` (`[groups, p, p]`, float64; rows `o` belong to
//! group `o / (rows / groups)`). The reconstruction error of output channel `o` is then `s² eᵀ G e` with `e`
//! the rounding error in code units (`w / s + z - code`), so channels are independent and the data enter only
//! through `G`: every iteration is full-batch and deterministic.
//!
//! Per free weight (one whose two neighbouring codes both lie in `[qmin, qmax]`) the code is
//! `floor(w / s + z) + h(v)`, `h(v) = clip(sigmoid(v)(ζ - γ) + γ, 0, 1)` with `ζ = 1.1`, `γ = -0.1`, and `v`
//! starts where `h(v)` equals the fractional part (the float weight; the error is computed as
//! `(frac - f₀) - (h(v) - h(v₀))`, with `f₀` the clamped fraction `v₀` encodes, so it is exactly zero where `v`
//! has not moved: rounding residues of `h(v₀) ≈ f₀` would otherwise be gradients that Adam, which divides by
//! their size, turns into steps of up to `lr` during the warm start). Adam minimizes, per channel,
//! `eᵀ Ĝ e + λ Σ (1 - |2h - 1|^β)` with `Ĝ = G / (tr G / p)` (the loss in code units, so `λ` means the same
//! for every layer); the regularizer is off for the first `warm_start` share of the iterations, then `β`
//! anneals from `beta_start` to `beta_end` along a cosine (AIMET's schedule). The code is rounded up where
//! `v >= 0` (`h >= 0.5`) at the end. Weights outside the grid keep their clamped code; a group whose inputs
//! are all zero keeps round-to-nearest.
//!
//! Work: fixed chunks of [`CHUNK_ROWS`] channels of one group run in parallel, each a sequential product
//! `E Ĝ` per iteration; losses are summed per chunk and then in chunk order: the result does not depend on
//! the thread count.

use rayon::prelude::*;

use crate::error::{QuantError, Result};
use crate::linalg::{gemm_add, view_cm, view_cm_mut};
use crate::par::first_non_finite;
use crate::stop::Stop;

/// Output channels per parallel task.
pub const CHUNK_ROWS: usize = 16;
/// The stretch of the rectified sigmoid.
pub const ZETA: f64 = 1.1;
pub const GAMMA: f64 = -0.1;
/// How far inside `(0, 1)` a starting fraction is clamped (so that `v₀` is finite).
const V_INIT_MARGIN: f64 = 1e-6;
const ADAM_B1: f64 = 0.9;
const ADAM_B2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaRoundOptions {
    /// Adam steps.
    pub iterations: usize,
    /// `λ`, the weight of the rounding regularizer (per weight, against the loss in code units).
    pub reg_weight: f64,
    pub beta_start: f64,
    pub beta_end: f64,
    /// Share of the iterations without the regularizer, in `[0, 1)`.
    pub warm_start: f64,
    /// Adam's learning rate on `v`.
    pub lr: f64,
}

impl Default for AdaRoundOptions {
    fn default() -> Self {
        Self { iterations: 500, reg_weight: 1.0, beta_start: 20.0, beta_end: 2.0, warm_start: 0.2, lr: 0.05 }
    }
}

/// The learned codes (row-major like the weight), and the reconstruction errors `Σ_o s_o² eᵀ G e` (with `G` as
/// given) of round-to-nearest and of the learned codes.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaRoundResult {
    pub codes: Vec<i32>,
    /// `v` at the end (0 for weights that had no choice): the margin of each decision.
    pub v: Vec<f64>,
    pub loss_nearest: f64,
    pub loss: f64,
}

/// The problem, checked.
pub struct Layer<'a> {
    pub w: &'a [f32],
    pub rows: usize,
    pub scale: &'a [f32],
    pub zero_point: &'a [i32],
    pub gram: &'a [f64],
    pub groups: usize,
    pub qmin: i32,
    pub qmax: i32,
}

fn invalid(name: &'static str, reason: String) -> QuantError {
    QuantError::InvalidParameter { name, reason }
}

impl Layer<'_> {
    fn p(&self) -> usize {
        self.w.len() / self.rows.max(1)
    }

    fn check(&self) -> Result<()> {
        if self.rows == 0 || self.w.is_empty() {
            return Err(QuantError::EmptyInput { what: "weight" });
        }
        if !self.w.len().is_multiple_of(self.rows) {
            return Err(QuantError::ShapeMismatch { what: "weight length, a multiple of rows =", expected: self.rows, got: self.w.len() });
        }
        if self.groups == 0 || !self.rows.is_multiple_of(self.groups) {
            return Err(invalid("groups", format!("{} does not divide the {} output channels", self.groups, self.rows)));
        }
        let p = self.p();
        for (what, n, want) in [("scale", self.scale.len(), self.rows), ("zero_point", self.zero_point.len(), self.rows)] {
            if n != want {
                return Err(QuantError::ShapeMismatch { what, expected: want, got: n });
            }
        }
        if self.gram.len() != self.groups * p * p {
            return Err(QuantError::ShapeMismatch { what: "gram [groups, p, p]", expected: self.groups * p * p, got: self.gram.len() });
        }
        if let Some((index, value)) = first_non_finite(self.w) {
            return Err(QuantError::NonFinite { index, value });
        }
        if let Some(index) = self.gram.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::NonFinite { index, value: self.gram[index] as f32 });
        }
        if let Some(index) = self.scale.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(QuantError::InvalidScale { index, value: self.scale[index], reason: "must be finite and > 0" });
        }
        if self.qmin >= self.qmax {
            return Err(invalid("qmin", format!("{} must be below qmax {}", self.qmin, self.qmax)));
        }
        if let Some(index) = self.zero_point.iter().position(|z| *z < self.qmin || *z > self.qmax) {
            let value = self.zero_point[index];
            return Err(QuantError::InvalidZeroPoint { index, value, qmin: self.qmin, qmax: self.qmax });
        }
        Ok(())
    }
}

fn check_options(o: &AdaRoundOptions) -> Result<()> {
    let pos = |v: f64| v.is_finite() && v > 0.0;
    if !(o.reg_weight.is_finite() && o.reg_weight >= 0.0) {
        return Err(invalid("reg_weight", format!("must be finite and >= 0, got {}", o.reg_weight)));
    }
    if !(pos(o.beta_start) && pos(o.beta_end)) {
        return Err(invalid("beta_start", format!("beta_start and beta_end must be > 0, got {} and {}", o.beta_start, o.beta_end)));
    }
    if !(o.warm_start.is_finite() && (0.0..1.0).contains(&o.warm_start)) {
        return Err(invalid("warm_start", format!("must be in [0, 1), got {}", o.warm_start)));
    }
    if !pos(o.lr) {
        return Err(invalid("lr", format!("must be finite and > 0, got {}", o.lr)));
    }
    Ok(())
}

/// `β` at iteration `t`, or None while the regularizer is off.
pub fn beta_at(t: usize, o: &AdaRoundOptions) -> Option<f64> {
    let warm = o.warm_start * o.iterations as f64;
    if (t as f64) < warm {
        return None;
    }
    let rel = (t as f64 - warm) / (o.iterations as f64 - warm);
    Some(o.beta_end + 0.5 * (o.beta_start - o.beta_end) * (1.0 + (rel * std::f64::consts::PI).cos()))
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// `h(v)` and `dh/dv`.
fn rectified(v: f64) -> (f64, f64) {
    let s = sigmoid(v);
    let h = s * (ZETA - GAMMA) + GAMMA;
    if h <= 0.0 {
        (0.0, 0.0)
    } else if h >= 1.0 {
        (1.0, 0.0)
    } else {
        (h, s * (1.0 - s) * (ZETA - GAMMA))
    }
}

/// One weight on its grid: `q = w / s + z` (the division in f32), the code below it, whether it may go up,
/// and the round-to-nearest code.
struct Grid {
    q: Vec<f64>,
    base: Vec<f64>,
    free: Vec<bool>,
    nearest: Vec<i32>,
}

fn grid(w: &[f32], s: f32, z: i32, qmin: i32, qmax: i32) -> Grid {
    let n = w.len();
    let mut g = Grid { q: Vec::with_capacity(n), base: Vec::with_capacity(n), free: Vec::with_capacity(n), nearest: Vec::with_capacity(n) };
    for &x in w {
        let r = x / s;
        let q = r as f64 + z as f64;
        let lo = r.floor() as f64 + z as f64;
        let free = lo >= qmin as f64 && lo < qmax as f64;
        g.q.push(q);
        g.base.push(if free { lo } else { lo.clamp(qmin as f64, qmax as f64) });
        g.free.push(free);
        g.nearest.push((r.round_ties_even() as f64 + z as f64).clamp(qmin as f64, qmax as f64) as i32);
    }
    g
}

/// `v` whose `h(v)` is the fractional part `f` (clamped inside `(0, 1)` so that `v` is finite).
fn v_init(f: f64) -> f64 {
    let f = f.clamp(V_INIT_MARGIN, 1.0 - V_INIT_MARGIN);
    -((ZETA - GAMMA) / (f - GAMMA) - 1.0).ln()
}

/// `s_o² eᵀ G e` for each channel of one chunk, for codes `c` (row-major `[m, p]`).
fn recon(gram: &[f64], p: usize, q: &[f64], c: &[f64], s: &[f32]) -> Vec<f64> {
    s.iter()
        .enumerate()
        .map(|(o, so)| {
            let e: Vec<f64> = (0..p).map(|i| q[o * p + i] - c[o * p + i]).collect();
            let mut acc = 0.0;
            for i in 0..p {
                let row = &gram[i * p..(i + 1) * p];
                acc += e[i] * row.iter().zip(&e).map(|(g, x)| g * x).sum::<f64>();
            }
            (*so as f64) * (*so as f64) * acc
        })
        .collect()
}

struct Chunk {
    codes: Vec<i32>,
    v: Vec<f64>,
    loss_nearest: f64,
    loss: f64,
}

/// Adam on `v` for `m` channels sharing the normalized Gram `gn`; returns the final `v` (row-major).
fn optimize(gn: &[f64], p: usize, m: usize, g: &Grid, o: &AdaRoundOptions, stop: &Stop) -> Result<Vec<f64>> {
    let n = m * p;
    let mut v: Vec<f64> = (0..n).map(|i| if g.free[i] { v_init(g.q[i] - g.base[i]) } else { 0.0 }).collect();
    // per weight, the error at the start: `frac - f₀` (zero unless the fraction was clamped), and `h(v₀)`
    let start: Vec<(f64, f64)> = (0..n)
        .map(|k| {
            let frac = g.q[k] - g.base[k];
            match g.free[k] {
                true => (frac - frac.clamp(V_INIT_MARGIN, 1.0 - V_INIT_MARGIN), rectified(v[k]).0),
                false => (frac, 0.0),
            }
        })
        .collect();
    let (mut m1, mut m2) = (vec![0f64; n], vec![0f64; n]);
    // column-major [m, p] buffers: element (r, i) at i * m + r
    let (mut e, mut r) = (vec![0f64; n], vec![0f64; n]);
    let mut dh = vec![0f64; n];
    let mut hv = vec![0f64; n];
    for t in 0..o.iterations {
        if t % 64 == 0 {
            stop.check()?;
        }
        for k in 0..n {
            let (row, i) = (k / p, k % p);
            let (h, d) = if g.free[k] { rectified(v[k]) } else { (0.0, 0.0) };
            hv[k] = h;
            dh[k] = d;
            e[i * m + row] = start[k].0 - (h - start[k].1);
        }
        r.iter_mut().for_each(|x| *x = 0.0);
        gemm_add(view_cm_mut(&mut r, m, p, m), view_cm(&e, m, p, m), view_cm(gn, p, p, p), 1.0);
        let beta = beta_at(t, o);
        let (c1, c2) = (1.0 - ADAM_B1.powi(t as i32 + 1), 1.0 - ADAM_B2.powi(t as i32 + 1));
        for k in 0..n {
            if !g.free[k] {
                continue;
            }
            let (row, i) = (k / p, k % p);
            let mut grad_h = -2.0 * r[i * m + row];
            if let Some(b) = beta {
                let a = 2.0 * hv[k] - 1.0;
                grad_h -= 2.0 * o.reg_weight * b * a.abs().powf(b - 1.0) * a.signum();
            }
            let grad = grad_h * dh[k];
            m1[k] = ADAM_B1 * m1[k] + (1.0 - ADAM_B1) * grad;
            m2[k] = ADAM_B2 * m2[k] + (1.0 - ADAM_B2) * grad * grad;
            v[k] -= o.lr * (m1[k] / c1) / ((m2[k] / c2).sqrt() + ADAM_EPS);
        }
    }
    Ok(v)
}

fn run_chunk(l: &Layer, o: &AdaRoundOptions, rows: std::ops::Range<usize>, stop: &Stop) -> Result<Chunk> {
    let (p, per) = (l.p(), l.rows / l.groups);
    let gram = &l.gram[(rows.start / per) * p * p..][..p * p];
    let (m, n) = (rows.len(), rows.len() * p);
    let mut g = Grid { q: vec![], base: vec![], free: vec![], nearest: vec![] };
    for row in rows.clone() {
        let one = grid(&l.w[row * p..(row + 1) * p], l.scale[row], l.zero_point[row], l.qmin, l.qmax);
        g.q.extend(one.q);
        g.base.extend(one.base);
        g.free.extend(one.free);
        g.nearest.extend(one.nearest);
    }
    let s = &l.scale[rows.clone()];
    let nearest: Vec<f64> = g.nearest.iter().map(|&c| c as f64).collect();
    let per_nearest = recon(gram, p, &g.q, &nearest, s);
    let loss_nearest: f64 = per_nearest.iter().sum();
    let trace: f64 = (0..p).map(|i| gram[i * p + i]).sum();
    if trace <= 0.0 || o.iterations == 0 {
        return Ok(Chunk { codes: g.nearest, v: vec![0.0; n], loss_nearest, loss: loss_nearest });
    }
    let gn: Vec<f64> = gram.iter().map(|x| x * p as f64 / trace).collect();
    let v = optimize(&gn, p, m, &g, o, stop)?;
    let mut codes: Vec<f64> = (0..n).map(|k| g.base[k] + if g.free[k] && v[k] >= 0.0 { 1.0 } else { 0.0 }).collect();
    let mut per = recon(gram, p, &g.q, &codes, s);
    for r in 0..m {
        if per[r] > per_nearest[r] {
            // a channel the learned codes reconstruct worse than nearest rounding keeps nearest rounding
            codes[r * p..(r + 1) * p].copy_from_slice(&nearest[r * p..(r + 1) * p]);
            per[r] = per_nearest[r];
        }
    }
    let loss = per.iter().sum();
    Ok(Chunk { codes: codes.iter().map(|&c| c as i32).collect(), v, loss_nearest, loss })
}

/// Learned rounding of one layer (see the module documentation).
pub fn adaround(l: &Layer, o: &AdaRoundOptions, stop: &Stop) -> Result<AdaRoundResult> {
    l.check()?;
    check_options(o)?;
    let per = l.rows / l.groups;
    let tasks: Vec<std::ops::Range<usize>> = (0..l.groups)
        .flat_map(|g| (0..per).step_by(CHUNK_ROWS).map(move |a| g * per + a..g * per + (a + CHUNK_ROWS).min(per)))
        .collect();
    let chunks = tasks.into_par_iter().map(|rows| run_chunk(l, o, rows, stop)).collect::<Result<Vec<_>>>()?;
    let mut out = AdaRoundResult { codes: Vec::with_capacity(l.w.len()), v: Vec::with_capacity(l.w.len()), loss_nearest: 0.0, loss: 0.0 };
    for c in chunks {
        out.codes.extend(c.codes);
        out.v.extend(c.v);
        out.loss_nearest += c.loss_nearest;
        out.loss += c.loss;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stop::NEVER;

    /// A small layer whose inputs are correlated, so rounding each weight to nearest is not the best choice.
    fn problem(rows: usize, p: usize, groups: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f64>) {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut rnd = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        };
        let w: Vec<f32> = (0..rows * p).map(|_| rnd() as f32).collect();
        let scale: Vec<f32> = (0..rows).map(|o| w[o * p..(o + 1) * p].iter().fold(0f32, |a, x| a.max(x.abs())) / 7.0).collect();
        let mut gram = vec![0f64; groups * p * p];
        for g in 0..groups {
            let xs: Vec<Vec<f64>> = (0..4 * p).map(|_| {
                let common = rnd();
                (0..p).map(|_| common + 0.3 * rnd()).collect()
            }).collect();
            for x in &xs {
                for i in 0..p {
                    for j in 0..p {
                        gram[g * p * p + i * p + j] += x[i] * x[j] / xs.len() as f64;
                    }
                }
            }
        }
        (w, scale, gram)
    }

    fn layer<'a>(w: &'a [f32], rows: usize, s: &'a [f32], z: &'a [i32], gram: &'a [f64], groups: usize) -> Layer<'a> {
        Layer { w, rows, scale: s, zero_point: z, gram, groups, qmin: -8, qmax: 7 }
    }

    #[test]
    fn learned_rounding_beats_nearest_and_stays_on_the_grid() {
        let (rows, p, groups) = (6, 12, 2);
        let (w, s, gram) = problem(rows, p, groups, 3);
        let z = vec![0; rows];
        let r = adaround(&layer(&w, rows, &s, &z, &gram, groups), &AdaRoundOptions::default(), &NEVER).unwrap();
        assert!(r.loss < 0.7 * r.loss_nearest, "{} vs {}", r.loss, r.loss_nearest);
        for (k, c) in r.codes.iter().enumerate() {
            let q = w[k] / s[k / p];
            assert!(*c == q.floor() as i32 || *c == q.floor() as i32 + 1, "code {c} for {q}");
            assert!((-8..=7).contains(c));
        }
    }

    #[test]
    fn same_result_on_one_thread_and_many() {
        let (rows, p) = (40, 9);
        let (w, s, gram) = problem(rows, p, 1, 5);
        let z = vec![0; rows];
        let l = layer(&w, rows, &s, &z, &gram, 1);
        let o = AdaRoundOptions { iterations: 100, ..Default::default() };
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| adaround(&l, &o, &NEVER)).unwrap();
        let many = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap().install(|| adaround(&l, &o, &NEVER)).unwrap();
        assert_eq!(one, many);
    }

    #[test]
    fn no_iterations_or_no_signal_is_round_to_nearest() {
        let (rows, p) = (3, 5);
        let (w, s, _) = problem(rows, p, 1, 7);
        let z = vec![0; rows];
        let zero = vec![0f64; p * p];
        let r = adaround(&layer(&w, rows, &s, &z, &zero, 1), &AdaRoundOptions::default(), &NEVER).unwrap();
        let nearest: Vec<i32> = w.iter().enumerate().map(|(k, x)| (x / s[k / p]).round_ties_even() as i32).collect();
        assert_eq!(r.codes, nearest);
        assert_eq!(r.loss, 0.0);
    }

    #[test]
    fn bad_input_is_an_error() {
        let (w, s, gram) = problem(2, 3, 1, 1);
        let z = vec![0; 2];
        let o = AdaRoundOptions::default();
        assert!(matches!(adaround(&layer(&w, 2, &s, &z, &gram[..8], 1), &o, &NEVER), Err(QuantError::ShapeMismatch { .. })));
        assert!(matches!(adaround(&layer(&w, 2, &s, &z, &gram, 3), &o, &NEVER), Err(QuantError::InvalidParameter { .. })));
        let bad_s = vec![0.0, 1.0];
        assert!(matches!(adaround(&layer(&w, 2, &bad_s, &z, &gram, 1), &o, &NEVER), Err(QuantError::InvalidScale { .. })));
        let mut nan = w.clone();
        nan[4] = f32::NAN;
        assert!(matches!(adaround(&layer(&nan, 2, &s, &z, &gram, 1), &o, &NEVER), Err(QuantError::NonFinite { index: 4, .. })));
        let bad = AdaRoundOptions { warm_start: 1.0, ..o };
        assert!(matches!(adaround(&layer(&w, 2, &s, &z, &gram, 1), &bad, &NEVER), Err(QuantError::InvalidParameter { .. })));
        assert!(matches!(adaround(&layer(&[], 0, &[], &[], &[], 1), &o, &NEVER), Err(QuantError::EmptyInput { .. })));
    }
}
