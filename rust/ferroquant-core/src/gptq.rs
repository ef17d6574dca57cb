//! GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers";
//! reference code IST-DASLab/gptq `gptq.py::fasterquant`, AutoGPTQ `quantization/gptq.py`), in float64, for a
//! `[K, N]` weight (see `groupwise` for the layout) and its `[K, K]` Hessian `H = 2/n · Σ XᵀX`.
//!
//! Steps, as the reference: dead inputs (`H_ii == 0`) get `H_ii = 1` and a zero weight row; with `act_order`
//! the inputs are processed by descending `H_ii` (stable, so ties keep index order); `percdamp · mean(diag H)`
//! is added to the diagonal; `U` = upper Cholesky factor of `H⁻¹`; inputs are then quantized one at a time,
//! each error `(w - q) / U_ii` spread over the inputs not yet quantized, lazily: at once inside a block of
//! `block_size` inputs, as one product for the rest when the block ends.
//!
//! Without `act_order` the kernel reaches the same result without `U`: with `M = U⁻¹` (upper, `M Mᵀ = H`, one
//! Cholesky factorization, `linalg::reverse_cholesky_upper`), the reference's updates sum to `w̃_j = w_j +
//! Σ_{i<j} (M_ij / M_jj) (w_i - q_i)` (`w` the original weights, `q` the dequantized codes; from `w - q = Uᵀ
//! e`), so the updates spread `w_i - q_i` with the coefficients `M_ij / M_jj`, in the same lazy blocks. Partial
//! sums differ, though: at a group's first input `m` the reference's weights are `w_G + U_GGᵀ a_G` with `a_q =
//! Σ_{i<m} M_iq (w_i - q_i)` (from `M U = I` by blocks), and `U_GG = M_GG⁻¹` because the group is contiguous
//! in processing order. That saves the `K³/3` flops of the triangular inverse (of the `~K³/3 + N K²` left).
//! With `act_order` a group's members are scattered in processing order, and the kernel spreads the
//! reference's errors with `U`.
//!
//! Groups stay contiguous in the original input order (what `MatMulNBits` and blocked `DequantizeLinear` can
//! deploy, without `g_idx`). A group's scale and zero point are fixed when its first input is reached (in
//! processing order), from the min/max of the group's weights updated by every input quantized so far
//! (including updates still pending for inputs beyond the current block; the reference reads its stale copy
//! there when the group size is not a multiple of the block size).
//!
//! Parallel over fixed chunks of output columns (each column is independent given `U`): deterministic whatever
//! the thread count.

use multiversion::multiversion;
use rayon::prelude::*;

use crate::error::{QuantError, Result};
use crate::groupwise::{group_qparams, GroupParams, GroupQuant, GroupSpec, MatShape};
use crate::linalg::{gemm_add, invert_upper, par, reverse_cholesky_upper, view, view_cm, view_cm_mut};
use crate::par::first_non_finite;

/// Output columns per parallel task.
pub const COL_CHUNK: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqOptions {
    pub spec: GroupSpec,
    /// Dampening, as a fraction of the mean of `diag(H)` (reference default 0.01).
    pub percdamp: f64,
    /// Inputs per lazy block (reference default 128).
    pub block_size: usize,
    /// Process inputs by descending `H_ii`.
    pub act_order: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GptqResult {
    pub quant: GroupQuant,
    /// Processing order: `perm[i]` is the input quantized `i`-th (the identity without `act_order`).
    pub perm: Vec<usize>,
    /// Inputs with `H_ii == 0` (their weights are quantized as zero).
    pub dead: Vec<usize>,
    /// The value added to the diagonal.
    pub damp: f64,
}

/// What every chunk of columns shares.
struct Plan<'a> {
    w: &'a [f32],
    s: MatShape,
    spec: GroupSpec,
    block: usize,
    perm: Vec<usize>,
    pos: Vec<usize>,
    is_dead: Vec<bool>,
    /// `start[i]`: the group whose first input (in processing order) is input `perm[i]`.
    start: Vec<Option<usize>>,
    spread: Spread,
}

/// How input `i`'s error spreads over the inputs after it (processing order): `w̃_j += x[i k + j] · err_i`.
struct Spread {
    /// Row-major `[K, K]`, zero on and below the diagonal.
    x: Vec<f64>,
    /// `Some(U_ii)`: the reference's form, `err_i = (w̃_i - q_i) / U_ii` and `x = -U`. `None`: `err_i = w_i -
    /// q_i` against the original weights and `x_ij = M_ij / M_jj`.
    u_diag: Option<Vec<f64>>,
    /// Without `u_diag`: per group, `M_qq` of its members and `U_GG = M_GG⁻¹` (column-major).
    groups: Vec<(Vec<f64>, Vec<f64>)>,
}

impl Spread {
    fn new(hp: Vec<f64>, k: usize, spec: &GroupSpec, act_order: bool, perm: &[usize]) -> Result<Self> {
        let mut x = reverse_cholesky_upper(hp, k, act_order, par()).map_err(|p| QuantError::InvalidParameter {
            name: "hessian",
            reason: format!("not positive definite after dampening (pivot at input {}); raise percdamp", perm[p]),
        })?;
        let diag: Vec<f64> = (0..k).map(|j| x[j * k + j]).collect();
        let groups = if act_order {
            Vec::new()
        } else {
            (0..spec.groups(k))
                .map(|g| {
                    let r = spec.rows(g, k);
                    let len = r.len();
                    let mut mg = vec![0f64; len * len];
                    for a in 0..len {
                        let row = (r.start + a) * k;
                        mg[a * len + a..(a + 1) * len].copy_from_slice(&x[row + r.start + a..row + r.end]);
                    }
                    let inv = invert_upper(&mg, len);
                    (diag[r].to_vec(), (0..len * len).map(|t| inv[(t % len) * len + t / len]).collect())
                })
                .collect()
        };
        x.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
            row[..=i].iter_mut().for_each(|v| *v = 0.0);
            if act_order {
                row[i + 1..].iter_mut().for_each(|v| *v = -*v);
            } else {
                row[i + 1..].iter_mut().zip(&diag[i + 1..]).for_each(|(v, d)| *v /= d);
            }
        });
        Ok(Spread { x, u_diag: act_order.then_some(diag), groups })
    }
}

fn check(w: &[f32], s: MatShape, h: &[f64], o: &GptqOptions) -> Result<()> {
    s.check("weight", w.len())?;
    if h.len() != s.k * s.k {
        return Err(QuantError::ShapeMismatch { what: "hessian [K, K]", expected: s.k * s.k, got: h.len() });
    }
    if let Some((index, value)) = first_non_finite(w) {
        return Err(QuantError::NonFinite { index, value });
    }
    if let Some(index) = h.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite { index, value: h[index] as f32 });
    }
    if let Some(i) = (0..s.k).find(|&i| h[i * s.k + i] < 0.0) {
        return Err(QuantError::InvalidParameter {
            name: "hessian",
            reason: format!("diagonal entry {i} is negative ({}): not a Gram matrix", h[i * s.k + i]),
        });
    }
    if !(o.percdamp.is_finite() && o.percdamp >= 0.0) {
        return Err(QuantError::InvalidParameter { name: "percdamp", reason: format!("must be >= 0, got {}", o.percdamp) });
    }
    if o.block_size == 0 {
        return Err(QuantError::InvalidParameter { name: "block_size", reason: "must be >= 1, got 0".into() });
    }
    Ok(())
}

/// Quantize `w` `[K, N]` with GPTQ given its Hessian `h` `[K, K]` (row-major, symmetric).
pub fn gptq(w: &[f32], s: MatShape, h: &[f64], o: &GptqOptions) -> Result<GptqResult> {
    check(w, s, h, o)?;
    let k = s.k;
    let mut hh = h.to_vec();
    let dead: Vec<usize> = (0..k).filter(|&i| hh[i * k + i] == 0.0).collect();
    let mut is_dead = vec![false; k];
    for &i in &dead {
        hh[i * k + i] = 1.0;
        is_dead[i] = true;
    }
    let mut perm: Vec<usize> = (0..k).collect();
    if o.act_order {
        perm.sort_by(|&a, &b| hh[b * k + b].total_cmp(&hh[a * k + a]));
    }
    let mut hp = match o.act_order {
        true => {
            let hh = &hh;
            perm.iter().flat_map(|&r| perm.iter().map(move |&c| hh[r * k + c])).collect()
        }
        false => hh,
    };
    let damp = o.percdamp * (0..k).fold(0f64, |a, i| a + hp[i * k + i]) / k as f64;
    for i in 0..k {
        hp[i * k + i] += damp;
    }
    let spread = Spread::new(hp, k, &o.spec, o.act_order, &perm)?;
    let mut pos = vec![0usize; k];
    for (i, &r) in perm.iter().enumerate() {
        pos[r] = i;
    }
    let mut start = vec![None; k];
    for g in 0..o.spec.groups(k) {
        if let Some(first) = o.spec.rows(g, k).map(|r| pos[r]).min() {
            start[first] = Some(g);
        }
    }
    let plan = Plan { w, s, spec: o.spec, block: o.block_size, perm, pos, is_dead, start, spread };
    let chunks: Vec<std::ops::Range<usize>> =
        (0..s.n.div_ceil(COL_CHUNK)).map(|c| c * COL_CHUNK..((c + 1) * COL_CHUNK).min(s.n)).collect();
    let parts: Vec<(Vec<u8>, Vec<GroupParams>)> =
        chunks.par_iter().map(|cols| run_chunk(&plan, cols.clone())).collect::<Result<_>>()?;
    Ok(GptqResult { quant: assemble(&plan, &chunks, &parts), perm: plan.perm, dead, damp })
}

/// Scatter the chunks' codes (in processing order) and params back to `[K, N]` and `[G, N]`.
fn assemble(p: &Plan, chunks: &[std::ops::Range<usize>], parts: &[(Vec<u8>, Vec<GroupParams>)]) -> GroupQuant {
    let (k, n, groups) = (p.s.k, p.s.n, p.spec.groups(p.s.k));
    let mut q = GroupQuant { codes: vec![0; k * n], scales: vec![0.0; groups * n], zero_points: vec![0; groups * n] };
    for (cols, (codes, params)) in chunks.iter().zip(parts) {
        let nc = cols.len();
        for i in 0..k {
            let r = p.perm[i];
            q.codes[r * n + cols.start..r * n + cols.end].copy_from_slice(&codes[i * nc..(i + 1) * nc]);
        }
        for g in 0..groups {
            for c in 0..nc {
                q.scales[g * n + cols.start + c] = params[g * nc + c].scale;
                q.zero_points[g * n + cols.start + c] = params[g * nc + c].zero_point;
            }
        }
    }
    q
}

/// GPTQ on the output columns `cols`: returns their codes `[K, nc]` in processing order and params `[G, nc]`.
/// The columns' weights live column-major (`wc[c*K + i]`, so the trailing product has every operand
/// column-major, which faer runs fastest); the current block is copied row-major for the per-input work.
fn run_chunk(p: &Plan, cols: std::ops::Range<usize>) -> Result<(Vec<u8>, Vec<GroupParams>)> {
    let (k, n, nc) = (p.s.k, p.s.n, cols.len());
    let mut wc = vec![0f64; k * nc];
    for (i, &r) in p.perm.iter().enumerate() {
        if !p.is_dead[r] {
            for (c, &v) in p.w[r * n + cols.start..r * n + cols.end].iter().enumerate() {
                wc[c * k + i] = v as f64;
            }
        }
    }
    let mut codes = vec![0u8; k * nc];
    let mut params = vec![GroupParams { scale: 1.0, zero_point: 0 }; p.spec.groups(k) * nc];
    let b = p.block.min(k);
    let (mut w1, mut err, mut err_cm) = (vec![0f64; b * nc], vec![0f64; b * nc], vec![0f64; b * nc]);
    let mut orig = vec![0f64; nc];
    let qmax = p.spec.qmax() as f64;
    let mut i1 = 0;
    while i1 < k {
        let (i2, bs) = ((i1 + p.block).min(k), (i1 + p.block).min(k) - i1);
        for a in 0..bs {
            for c in 0..nc {
                w1[a * nc + c] = wc[c * k + i1 + a];
            }
        }
        for i in i1..i2 {
            if let Some(g) = p.start[i] {
                group_start(p, g, (i1, i, i2), (&wc, &w1, &err), nc, cols.start, &mut params[g * nc..(g + 1) * nc])?;
            }
            let r = p.perm[i];
            if p.is_dead[r] {
                orig.fill(0.0);
            } else {
                orig.iter_mut().zip(&p.w[r * n + cols.start..r * n + cols.end]).for_each(|(o, &v)| *o = v as f64);
            }
            let (head, tail) = w1.split_at_mut((i - i1 + 1) * nc);
            let e = &mut err[(i - i1) * nc..(i - i1 + 1) * nc];
            let g = r / p.spec.group_size;
            let cur = &head[(i - i1) * nc..];
            let (base, d) = match &p.spread.u_diag {
                Some(u) => (cur, u[i]),
                None => (&orig[..], 1.0),
            };
            quantize_row(cur, base, &params[g * nc..(g + 1) * nc], qmax, d, &mut codes[i * nc..(i + 1) * nc], e);
            for (j, row) in (i + 1..i2).zip(tail.chunks_mut(nc)) {
                axpy(p.spread.x[i * k + j], e, row);
            }
        }
        if i2 < k {
            for a in 0..bs {
                for c in 0..nc {
                    err_cm[c * bs + a] = err[a * nc + c];
                }
            }
            let x = view(&p.spread.x[i1 * k + i2..], bs, k - i2, k).transpose();
            gemm_add(view_cm_mut(&mut wc[i2..], k - i2, nc, k), x, view_cm(&err_cm, bs, nc, bs), 1.0);
        }
        i1 = i2;
    }
    Ok((codes, params))
}

/// Fix group `g`'s params at input `i` of the block `[i1, i2)`: min/max of its members' current weights (in the
/// block copy `w1`, or in `wc` plus the block's updates so far, `Σ_{j in [i1, i)} x[j, q] · err_j`), which
/// are the reference's with `U` and are corrected to them with `M` (see the module doc).
fn group_start(p: &Plan, g: usize, (i1, i, i2): (usize, usize, usize), (wc, w1, err): (&[f64], &[f64], &[f64]),
    nc: usize, col0: usize, out: &mut [GroupParams]) -> Result<()> {
    let (k, n, rows) = (p.s.k, p.s.n, p.spec.rows(g, p.s.k));
    let mut st = vec![0f64; rows.len() * nc];
    for (r, cur) in rows.clone().zip(st.chunks_mut(nc)) {
        let q = p.pos[r];
        if q < i2 {
            cur.copy_from_slice(&w1[(q - i1) * nc..(q - i1 + 1) * nc]);
        } else {
            cur.iter_mut().enumerate().for_each(|(c, v)| *v = wc[c * k + q]);
            for j in i1..i {
                axpy(p.spread.x[j * k + q], &err[(j - i1) * nc..(j - i1 + 1) * nc], cur);
            }
        }
    }
    if p.spread.u_diag.is_none() {
        let (mdiag, ugg) = &p.spread.groups[g];
        let len = rows.len();
        let mut orig = vec![0f64; len * nc];
        for (a, r) in rows.clone().enumerate().filter(|&(_, r)| !p.is_dead[r]) {
            let src = &p.w[r * n + col0..r * n + col0 + nc];
            orig[a * nc..(a + 1) * nc].iter_mut().zip(src).for_each(|(o, &v)| *o = v as f64);
        }
        // a_q = M_qq (state_q - w_q); the reference's weights are w_q + Σ_{q' <= q} U_q'q a_q', as one product
        // on the transposes (every operand column-major): origᵀ += aᵀ U_GG
        st.iter_mut().zip(&orig).enumerate().for_each(|(t, (v, &o))| *v = mdiag[t / nc] * (*v - o));
        gemm_add(view_cm_mut(&mut orig, nc, len, nc), view_cm(&st, nc, len, nc), view_cm(ugg, len, len, len), 1.0);
        st = orig;
    }
    let mut lo = vec![f64::INFINITY; nc];
    let mut hi = vec![f64::NEG_INFINITY; nc];
    for cur in st.chunks(nc) {
        for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(cur) {
            *l = if v < *l { v } else { *l };
            *h = if v > *h { v } else { *h };
        }
    }
    for (c, o) in out.iter_mut().enumerate() {
        *o = group_qparams(lo[c] as f32, hi[c] as f32, &p.spec, g * n + col0 + c)?;
    }
    Ok(())
}

/// Codes of one input's updated weights `w`, and the errors `(base - dequant) / d` (see `Spread`).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "x86_64+sse4.1"))]
fn quantize_row(w: &[f64], base: &[f64], p: &[GroupParams], qmax: f64, d: f64, codes: &mut [u8], err: &mut [f64]) {
    for ((((&x, &b), p), c), e) in w.iter().zip(base).zip(p).zip(codes.iter_mut()).zip(err.iter_mut()) {
        let q = p.code_f64(x, qmax);
        *c = q as u8;
        *e = (b - (q - p.zero_point as f64) * p.scale as f64) / d;
    }
}

/// `y += a * x`.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "x86_64+sse4.1"))]
fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    fn gram(x: &[f32], k: usize) -> Vec<f64> {
        let mut h = vec![0f64; k * k];
        crate::hessian::hessian_update(&mut h, x, k).unwrap();
        h
    }

    #[test]
    fn identity_hessian_is_rtn() {
        let (k, n) = (8, 5);
        let w = lcg(k * n, 1);
        let mut h = vec![0f64; k * k];
        (0..k).for_each(|i| h[i * k + i] = 1.0);
        let spec = GroupSpec::new(4, 4, false, false).unwrap();
        let o = GptqOptions { spec, percdamp: 0.0, block_size: 3, act_order: false };
        let r = gptq(&w, MatShape { k, n }, &h, &o).unwrap();
        let rtn = crate::groupwise::quantize_groupwise(&w, MatShape { k, n }, &spec, None).unwrap();
        assert_eq!(r.quant, rtn);
    }

    #[test]
    fn factor_and_inverse_forms_agree() {
        // A Hessian whose diagonal descends: act_order keeps the identity order but runs the `U` form, so both
        // forms quantize the same problem (groups that do not divide K or the block).
        let (k, n, rows) = (23, 6, 80);
        let mut x = lcg(rows * k, 4);
        for t in 0..rows {
            for i in 0..k {
                x[t * k + i] *= 1.5f32.powi(-(i as i32));
            }
        }
        let h = gram(&x, k);
        assert!((1..k).all(|i| h[i * k + i] < h[(i - 1) * k + i - 1]));
        let w = lcg(k * n, 5);
        for (bits, gs, block) in [(4, 5, 7), (3, 8, 4), (4, 23, 128), (2, 3, 1)] {
            let spec = GroupSpec::new(bits, gs, false, false).unwrap();
            let run = |a| gptq(&w, MatShape { k, n }, &h, &GptqOptions { spec, percdamp: 0.01, block_size: block, act_order: a }).unwrap();
            let (m, u) = (run(false), run(true));
            assert_eq!(u.perm, (0..k).collect::<Vec<_>>());
            assert_eq!(m.quant.codes, u.quant.codes, "{bits} bits, group {gs}, block {block}");
            assert_eq!(m.quant.zero_points, u.quant.zero_points);
            assert!(m.quant.scales.iter().zip(&u.quant.scales).all(|(a, b)| (a - b).abs() <= 1e-6 * a.abs()));
        }
    }

    #[test]
    fn dead_inputs_and_block_sizes() {
        let (k, n, rows) = (12, 7, 40);
        let mut x = lcg(rows * k, 2);
        (0..rows).for_each(|t| x[t * k + 3] = 0.0);
        let h = gram(&x, k);
        let w = lcg(k * n, 3);
        let spec = GroupSpec::new(3, 5, true, false).unwrap();
        let run = |b, a| gptq(&w, MatShape { k, n }, &h, &GptqOptions { spec, percdamp: 0.01, block_size: b, act_order: a }).unwrap();
        let r = run(128, false);
        assert_eq!(r.dead, vec![3]);
        assert!((0..n).all(|c| r.quant.codes[3 * n + c] == 4));
        for a in [false, true] {
            let base = run(128, a);
            for b in [1, 2, 5, 7] {
                assert_eq!(run(b, a).quant.codes, base.quant.codes, "block {b} act_order {a}");
            }
        }
    }
}
