//! Group-wise weight-only quantization (the LLM layout: int4/int8 codes, one scale and zero point per group of
//! input rows), round to nearest with per-group min/max and an optional MSE clip search.
//!
//! Layout: the weight is `[K, N]` row-major, as ONNX MatMul's `B` (K = input / reduction dimension, N =
//! outputs; a Gemm with `transB=1` holds the transpose). Groups run along K: group `g` covers rows
//! `g*group_size .. min((g+1)*group_size, K)` of every column, so the last group is shorter when the group size
//! does not divide K. Scales and zero points are `[G, N]` with `G = ceil(K / group_size)`, which is the
//! shape of an opset-21 blocked `DequantizeLinear` on `B` with `axis=0, block_size=group_size`;
//! onnxruntime's `MatMulNBits` wants them transposed, `[N, G]`.
//!
//! Codes are unsigned, `0 ..= 2^b - 1`, with an unsigned zero point per group (as `MatMulNBits`: uint4 codes
//! 0..15): `w ~ (code - zero_point) * scale`. Symmetric groups use zero point `2^(b-1)` (8 for 4 bits) and the
//! house 127/128 rule (spec §0), so the extreme value maps exactly to the top or bottom code; asymmetric
//! groups widen the range to include 0 (spec §0) and get an integer zero point. The signed codes of ONNX
//! `int4` are `code - 2^(b-1)`.

use half::f16;
use multiversion::multiversion;
use rayon::prelude::*;

use crate::error::{QuantError, Result};
use crate::kernels::{any_non_finite, MAGIC};
use crate::scheme::FLT_EPSILON;

pub const MIN_GROUP_BITS: u32 = 2;
pub const MAX_GROUP_BITS: u32 = 8;
/// Columns per parallel task; fixed, so results do not depend on the thread count.
pub const COL_TILE: usize = 256;

/// How a weight is quantized group-wise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSpec {
    pub bits: u32,
    pub group_size: usize,
    pub symmetric: bool,
    /// Round each scale to float16 before the codes are computed, so a float16 deployment matches.
    pub scale_f16: bool,
}

impl GroupSpec {
    pub fn new(bits: u32, group_size: usize, symmetric: bool, scale_f16: bool) -> Result<Self> {
        if !(MIN_GROUP_BITS..=MAX_GROUP_BITS).contains(&bits) {
            return Err(QuantError::InvalidBits { bits, min: MIN_GROUP_BITS, max: MAX_GROUP_BITS });
        }
        if group_size == 0 {
            return Err(QuantError::InvalidParameter { name: "group_size", reason: "must be >= 1, got 0".into() });
        }
        Ok(Self { bits, group_size, symmetric, scale_f16 })
    }

    /// The top code, `2^b - 1`.
    pub fn qmax(&self) -> u32 {
        (1u32 << self.bits) - 1
    }

    /// The symmetric zero point, `2^(b-1)`.
    pub fn mid(&self) -> u32 {
        1u32 << (self.bits - 1)
    }

    /// Number of groups along `k` rows.
    pub fn groups(&self, k: usize) -> usize {
        k.div_ceil(self.group_size)
    }

    /// Rows of group `g` (the last one may be shorter).
    pub fn rows(&self, g: usize, k: usize) -> std::ops::Range<usize> {
        g * self.group_size..((g + 1) * self.group_size).min(k)
    }
}

/// A `[K, N]` weight's dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatShape {
    pub k: usize,
    pub n: usize,
}

impl MatShape {
    /// Check that a buffer holds `k * n` values and that neither dimension is zero.
    pub fn check(&self, what: &'static str, len: usize) -> Result<()> {
        if self.k == 0 || self.n == 0 {
            return Err(QuantError::EmptyInput { what });
        }
        if len != self.k * self.n {
            return Err(QuantError::ShapeMismatch { what, expected: self.k * self.n, got: len });
        }
        Ok(())
    }
}

/// One group's grid: `code = clamp(round_half_even(x / scale) + zero_point, 0, qmax)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupParams {
    pub scale: f32,
    pub zero_point: u8,
}

impl GroupParams {
    /// The code of `x` as an integer-valued f32 (`x / scale` in f32, as the house rule asks).
    #[inline(always)]
    pub fn code(&self, x: f32, qmax: f32) -> f32 {
        code_fast(x, self.scale, self.zero_point as f32, qmax) as f32
    }

    /// The code of an f64 value (GPTQ's updated weights): `x / scale` in f64.
    #[inline(always)]
    pub fn code_f64(&self, x: f64, qmax: f64) -> f64 {
        let q = (x / self.scale as f64).round_ties_even() + self.zero_point as f64;
        q.clamp(0.0, qmax)
    }

    /// The value a code stands for, `(code - zero_point) * scale` in f32.
    #[inline(always)]
    pub fn dequant(&self, code: f32) -> f32 {
        (code - self.zero_point as f32) * self.scale
    }
}

/// The grid of one group with range `[lo, hi]`: the 127/128 rule (symmetric) or the range widened to include 0
/// (asymmetric), the scale rounded to float16 when asked, then AMCT's guard (a scale below `FLT_EPSILON`
/// becomes 1; a non-finite scale or one whose reciprocal is below `FLT_EPSILON` is an error). `index` (the
/// flat index into the `[G, N]` scales) names the group in errors.
pub fn group_qparams(lo: f32, hi: f32, spec: &GroupSpec, index: usize) -> Result<GroupParams> {
    let (mid, qmax) = (spec.mid() as f32, spec.qmax() as f32);
    let small = lo.min(0.0);
    let mut s = if spec.symmetric {
        let a = if hi.abs() >= lo.abs() { hi } else { lo };
        if a > 0.0 {
            a / (mid - 1.0)
        } else {
            a.abs() / mid
        }
    } else {
        (hi.max(0.0) - small) / qmax
    };
    if spec.scale_f16 {
        s = f16::from_f32(s).to_f32();
    }
    if !s.is_finite() {
        let reason = if spec.scale_f16 { "not representable in float16" } else { "not finite (range too wide)" };
        return Err(QuantError::InvalidScale { index, value: s, reason });
    }
    if s < FLT_EPSILON {
        return Ok(GroupParams { scale: 1.0, zero_point: if spec.symmetric { spec.mid() as u8 } else { 0 } });
    }
    if 1.0 / s < FLT_EPSILON {
        return Err(QuantError::InvalidScale { index, value: s, reason: "1/scale is below FLT_EPSILON" });
    }
    let zp = if spec.symmetric { mid } else { (-(small / s).round_ties_even()).clamp(0.0, qmax) };
    Ok(GroupParams { scale: s, zero_point: zp as u8 })
}

/// The MSE clip search: candidate ranges `[r*lo, r*hi]` for `r = 1 - i/n_grid`, `i = 0 .. n` with
/// `n = floor(max_shrink * n_grid)` (at least 1), as llm-awq's `auto_clip` (`n_grid=20, max_shrink=0.5`:
/// 1.0, 0.95, ..., 0.55). Both bounds shrink by the same ratio; the first minimum wins. With `refine` (and a
/// zero point: asymmetric groups), the upper bound's ratio is then scanned over the same grid with the lower
/// one kept, then the lower one's with the upper kept, each keeping only strict improvements per column
/// (`refine = false`: llm-awq's search exactly). See [`search_clip`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipSearch {
    pub n_grid: usize,
    pub max_shrink: f64,
    pub refine: bool,
}

impl Default for ClipSearch {
    fn default() -> Self {
        Self { n_grid: 20, max_shrink: 0.5, refine: true }
    }
}

/// The clip search of one block of columns with ranges `[lo, hi]` (group `g`, columns from `col0` of `n`):
/// `loss(p)` is the per-column loss of params `p`. The joint shrink over `ratios`, then with `refine` and
/// asymmetric groups the two coordinate scans of [`ClipSearch`]. The params of the least loss per column.
#[allow(clippy::too_many_arguments)]
pub fn search_clip(lo: &[f32], hi: &[f32], ratios: &[f32], refine: bool, spec: &GroupSpec, g: usize, n: usize,
    col0: usize, mut loss: impl FnMut(&[GroupParams]) -> Result<Vec<f64>>) -> Result<Vec<GroupParams>> {
    let nc = lo.len();
    let params = |rl: &[f32], rh: &[f32]| -> Result<Vec<GroupParams>> {
        (0..nc).map(|c| group_qparams(rl[c] * lo[c], rh[c] * hi[c], spec, g * n + col0 + c)).collect()
    };
    let (mut rl, mut rh) = (vec![1f32; nc], vec![1f32; nc]);
    let mut best: Option<(Vec<GroupParams>, Vec<f64>)> = None;
    // stage 0: both bounds by one ratio; 1: the upper bound's ratio; 2: the lower bound's
    let stages = if refine && !spec.symmetric { 3 } else { 1 };
    for stage in 0..stages {
        for &r in ratios {
            let same = vec![r; nc];
            let p = match stage {
                0 => params(&same, &same)?,
                1 => params(&rl, &same)?,
                _ => params(&same, &rh)?,
            };
            let l = loss(&p)?;
            let Some((bp, bl)) = best.as_mut() else {
                (rl, rh) = (same.clone(), same);
                best = Some((p, l));
                continue;
            };
            for c in 0..nc {
                if l[c] < bl[c] {
                    (bp[c], bl[c]) = (p[c], l[c]);
                    match stage {
                        0 => (rl[c], rh[c]) = (r, r),
                        1 => rh[c] = r,
                        _ => rl[c] = r,
                    }
                }
            }
        }
    }
    Ok(best.map(|b| b.0).unwrap_or_default())
}

impl ClipSearch {
    pub fn ratios(&self) -> Result<Vec<f32>> {
        if self.n_grid == 0 || !(0.0..1.0).contains(&self.max_shrink) {
            return Err(QuantError::InvalidParameter {
                name: "clip search",
                reason: format!("need n_grid >= 1 and 0 <= max_shrink < 1, got {} and {}", self.n_grid,
                    self.max_shrink),
            });
        }
        let n = ((self.max_shrink * self.n_grid as f64 + 1e-9).floor() as usize).max(1);
        Ok((0..n).map(|i| (1.0 - i as f64 / self.n_grid as f64) as f32).collect())
    }
}

/// A group-quantized `[K, N]` weight.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupQuant {
    /// `[K, N]` codes in `0 ..= 2^b - 1`.
    pub codes: Vec<u8>,
    /// `[G, N]` scales (float16-exact values when `scale_f16`).
    pub scales: Vec<f32>,
    /// `[G, N]` zero points.
    pub zero_points: Vec<u8>,
}

/// Per-column `(min, max)` over rows `rows` of the columns `cols` of a row-major `[_, n]` buffer.
pub fn column_min_max(w: &[f32], n: usize, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>)
    -> (Vec<f32>, Vec<f32>) {
    let nc = cols.len();
    let (mut lo, mut hi) = (vec![f32::INFINITY; nc], vec![f32::NEG_INFINITY; nc]);
    let whole = nc - nc % LANES;
    for c0 in (0..whole).step_by(LANES) {
        let (l, h) = min_max_strip(w, n, rows.clone(), cols.start + c0);
        lo[c0..c0 + LANES].copy_from_slice(&l);
        hi[c0..c0 + LANES].copy_from_slice(&h);
    }
    for c in whole..nc {
        for r in rows.clone() {
            let v = w[r * n + cols.start + c];
            lo[c] = if v < lo[c] { v } else { lo[c] };
            hi[c] = if v > hi[c] { v } else { hi[c] };
        }
    }
    (lo, hi)
}

const LANES: usize = 16;

/// `(min, max)` of `LANES` columns from `c0` over `rows`, accumulated in registers.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "x86_64+sse4.1"))]
fn min_max_strip(w: &[f32], n: usize, rows: std::ops::Range<usize>, c0: usize) -> ([f32; LANES], [f32; LANES]) {
    let (mut lo, mut hi) = ([f32::INFINITY; LANES], [f32::NEG_INFINITY; LANES]);
    for r in rows {
        let seg: &[f32; LANES] = w[r * n + c0..r * n + c0 + LANES].try_into().unwrap_or(&[0.0; LANES]);
        for j in 0..LANES {
            let v = seg[j];
            lo[j] = if v < lo[j] { v } else { lo[j] };
            hi[j] = if v > hi[j] { v } else { hi[j] };
        }
    }
    (lo, hi)
}

/// Add the squared errors of one row quantized with per-column params to `loss` (f64, row by row).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "x86_64+sse4.1"))]
fn sq_err_row(row: &[f32], p: &[GroupParams], qmax: f32, loss: &mut [f64]) {
    for ((&x, p), l) in row.iter().zip(p).zip(loss.iter_mut()) {
        let d = x as f64 - p.dequant(p.code(x, qmax)) as f64;
        *l += d * d;
    }
}

/// `clamp(round_half_even(x / s) + z, 0, qmax)` as an integer, written to vectorize on any x86-64: `x / s` is
/// clamped to `[-2^22, 2^22]` first (the final clamp gives the same code), rounded by adding and subtracting
/// `1.5 * 2^23` (halves to even in the default IEEE mode), clamped with selects, and read back as an integer
/// from the mantissa of `q + 1.5 * 2^23` (the saturating float-to-int cast does not vectorize).
#[inline(always)]
pub fn code_fast(x: f32, s: f32, z: f32, qmax: f32) -> i32 {
    const LIM: f32 = 4_194_304.0;
    const MAGIC_BITS: i32 = 0x4B40_0000;
    let t = x / s;
    let t = if t < -LIM { -LIM } else { t };
    let t = if t > LIM { LIM } else { t };
    let q = ((t + MAGIC) - MAGIC) + z;
    let q = if q < 0.0 { 0.0 } else { q };
    let q = if q > qmax { qmax } else { q };
    (q + MAGIC).to_bits() as i32 - MAGIC_BITS
}

/// Codes of one row with per-column scales and zero points (as f32).
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "x86_64+sse4.1"))]
fn code_row(row: &[f32], scale: &[f32], zp: &[f32], qmax: f32, out: &mut [u8]) {
    let n = row.len().min(scale.len()).min(zp.len()).min(out.len());
    let (row, scale, zp, out) = (&row[..n], &scale[..n], &zp[..n], &mut out[..n]);
    for j in 0..n {
        out[j] = code_fast(row[j], scale[j], zp[j], qmax) as u8;
    }
}

/// Params for columns `cols` (starting at column `col0` of `n`) of group `g` whose ranges `[lo, hi]` are
/// shrunk by the ratio `r`.
pub fn shrunk_params(lo: &[f32], hi: &[f32], r: f32, spec: &GroupSpec, g: usize, n: usize, col0: usize)
    -> Result<Vec<GroupParams>> {
    lo.iter().zip(hi).enumerate().map(|(c, (&l, &h))| group_qparams(r * l, r * h, spec, g * n + col0 + c)).collect()
}

/// Params for columns `cols` of group `g` from their min/max, clipped by the search `clip` (its ratios and
/// whether it refines) with the least squared weight error when given.
pub fn tile_params(w: &[f32], s: MatShape, spec: &GroupSpec, g: usize, cols: std::ops::Range<usize>,
    clip: Option<(&[f32], bool)>) -> Result<Vec<GroupParams>> {
    let rows = spec.rows(g, s.k);
    let (lo, hi) = column_min_max(w, s.n, rows.clone(), cols.clone());
    let Some((ratios, refine)) = clip else { return shrunk_params(&lo, &hi, 1.0, spec, g, s.n, cols.start) };
    let qmax = spec.qmax() as f32;
    search_clip(&lo, &hi, ratios, refine, spec, g, s.n, cols.start, |p| {
        let mut loss = vec![0f64; cols.len()];
        for k in rows.clone() {
            sq_err_row(&w[k * s.n + cols.start..k * s.n + cols.end], p, qmax, &mut loss);
        }
        Ok(loss)
    })
}

/// The fixed column tiles of `n` columns.
pub fn col_tiles(n: usize) -> Vec<std::ops::Range<usize>> {
    (0..n.div_ceil(COL_TILE)).map(|t| t * COL_TILE..((t + 1) * COL_TILE).min(n)).collect()
}

/// The fixed `(group, column tile)` tasks of a `[K, N]` weight.
pub fn tasks(s: MatShape, spec: &GroupSpec) -> Vec<(usize, std::ops::Range<usize>)> {
    (0..spec.groups(s.k)).flat_map(|g| col_tiles(s.n).into_iter().map(move |t| (g, t))).collect()
}

/// Round-to-nearest group-wise quantization of a `[K, N]` weight with per-group min/max, or with the MSE clip
/// search when `clip` is given. NaN/Inf are an error naming the first flat index. One pass over the weight:
/// each `(group, column tile)` task checks, measures and codes its block while it is in cache.
pub fn quantize_groupwise(w: &[f32], s: MatShape, spec: &GroupSpec, clip: Option<&ClipSearch>) -> Result<GroupQuant> {
    s.check("weight", w.len())?;
    let ratios = clip.map(|c| c.ratios()).transpose()?;
    let search = ratios.as_deref().zip(clip.map(|c| c.refine));
    let tasks = tasks(s, spec);
    let outs: Vec<Result<(Vec<GroupParams>, Vec<u8>)>> =
        tasks.par_iter().map(|(g, cols)| code_tile(w, s, spec, *g, cols.clone(), search)).collect();
    let outs = first_error(outs)?;
    let groups = spec.groups(s.k);
    let per_group = col_tiles(s.n).len();
    let mut q = GroupQuant { codes: vec![0; s.k * s.n], scales: vec![0.0; groups * s.n], zero_points: vec![0; groups * s.n] };
    q.codes.par_chunks_mut(spec.group_size * s.n).enumerate().for_each(|(g, slab)| {
        for ((_, cols), (_, codes)) in tasks[g * per_group..(g + 1) * per_group].iter().zip(&outs[g * per_group..]) {
            for (a, row) in codes.chunks(cols.len()).enumerate() {
                slab[a * s.n + cols.start..a * s.n + cols.end].copy_from_slice(row);
            }
        }
    });
    for ((g, cols), (p, _)) in tasks.iter().zip(&outs) {
        for (c, p) in cols.clone().zip(p) {
            q.scales[g * s.n + c] = p.scale;
            q.zero_points[g * s.n + c] = p.zero_point;
        }
    }
    Ok(q)
}

/// The tasks' results, or the error to report: the non-finite value with the smallest flat index, else the
/// first error in task order (the same whatever the thread count).
fn first_error<T>(outs: Vec<Result<T>>) -> Result<Vec<T>> {
    let nonfinite = outs.iter().filter_map(|o| match o {
        Err(QuantError::NonFinite { index, value }) => Some((*index, *value)),
        _ => None,
    });
    if let Some((index, value)) = nonfinite.min_by_key(|p| p.0) {
        return Err(QuantError::NonFinite { index, value });
    }
    outs.into_iter().collect()
}

/// One task of [`quantize_groupwise`]: the block's params and its codes `[rows, nc]`.
fn code_tile(w: &[f32], s: MatShape, spec: &GroupSpec, g: usize, cols: std::ops::Range<usize>,
    clip: Option<(&[f32], bool)>) -> Result<(Vec<GroupParams>, Vec<u8>)> {
    let rows = spec.rows(g, s.k);
    for r in rows.clone() {
        let row = &w[r * s.n + cols.start..r * s.n + cols.end];
        if any_non_finite(row) {
            let c = row.iter().position(|v| !v.is_finite()).unwrap_or(0);
            return Err(QuantError::NonFinite { index: r * s.n + cols.start + c, value: row[c] });
        }
    }
    let p = tile_params(w, s, spec, g, cols.clone(), clip)?;
    let (sc, zp): (Vec<f32>, Vec<f32>) = p.iter().map(|p| (p.scale, p.zero_point as f32)).unzip();
    let nc = cols.len();
    let mut codes = vec![0u8; rows.len() * nc];
    for (a, r) in rows.enumerate() {
        code_row(&w[r * s.n + cols.start..r * s.n + cols.end], &sc, &zp, spec.qmax() as f32, &mut codes[a * nc..(a + 1) * nc]);
    }
    Ok((p, codes))
}

/// Codes, scales and zero points from the per-task params of [`tasks`].
pub fn assemble(w: &[f32], s: MatShape, spec: &GroupSpec, params: &[Vec<GroupParams>]) -> GroupQuant {
    let groups = spec.groups(s.k);
    let mut scales = vec![0f32; groups * s.n];
    let mut zero_points = vec![0u8; groups * s.n];
    for ((g, cols), p) in tasks(s, spec).into_iter().zip(params) {
        for (c, p) in cols.zip(p) {
            scales[g * s.n + c] = p.scale;
            zero_points[g * s.n + c] = p.zero_point;
        }
    }
    let zpf: Vec<f32> = zero_points.iter().map(|&z| z as f32).collect();
    let mut codes = vec![0u8; s.k * s.n];
    let qmax = spec.qmax() as f32;
    codes.par_chunks_mut(s.n).enumerate().for_each(|(k, out)| {
        let g = k / spec.group_size;
        let at = g * s.n..(g + 1) * s.n;
        code_row(&w[k * s.n..(k + 1) * s.n], &scales[at.clone()], &zpf[at], qmax, out);
    });
    GroupQuant { codes, scales, zero_points }
}

/// `(code - zero_point) * scale` for a `[K, N]` group-quantized weight, as float32.
pub fn dequantize_groupwise(q: &GroupQuant, s: MatShape, group_size: usize) -> Result<Vec<f32>> {
    s.check("codes", q.codes.len())?;
    if group_size == 0 {
        return Err(QuantError::InvalidParameter { name: "group_size", reason: "must be >= 1, got 0".into() });
    }
    let groups = s.k.div_ceil(group_size);
    for (what, len) in [("scales", q.scales.len()), ("zero_points", q.zero_points.len())] {
        if len != groups * s.n {
            return Err(QuantError::ShapeMismatch { what, expected: groups * s.n, got: len });
        }
    }
    let mut out = vec![0f32; s.k * s.n];
    out.par_chunks_mut(s.n).enumerate().for_each(|(k, row)| {
        let g = k / group_size;
        let (sc, zp) = (&q.scales[g * s.n..(g + 1) * s.n], &q.zero_points[g * s.n..(g + 1) * s.n]);
        for (((o, &c), &s), &z) in row.iter_mut().zip(&q.codes[k * s.n..(k + 1) * s.n]).zip(sc).zip(zp) {
            *o = GroupParams { scale: s, zero_point: z }.dequant(c as f32);
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(bits: u32, gs: usize, sym: bool) -> GroupSpec {
        GroupSpec::new(bits, gs, sym, false).unwrap()
    }

    #[test]
    fn symmetric_int4_maps_extremes_exactly() {
        let p = group_qparams(-1.0, 3.5, &spec(4, 8, true), 0).unwrap();
        assert_eq!((p.scale, p.zero_point), (0.5, 8));
        assert_eq!(p.code(3.5, 15.0), 15.0);
        let p = group_qparams(-4.0, 1.0, &spec(4, 8, true), 0).unwrap();
        assert_eq!((p.scale, p.code(-4.0, 15.0)), (0.5, 0.0));
    }

    #[test]
    fn asymmetric_zero_point_and_guard() {
        let p = group_qparams(-1.0, 2.0, &spec(4, 8, false), 0).unwrap();
        assert_eq!((p.scale, p.zero_point), (0.2, 5));
        let z = group_qparams(0.0, 0.0, &spec(4, 8, false), 0).unwrap();
        assert_eq!((z.scale, z.zero_point), (1.0, 0));
        let z = group_qparams(0.0, 0.0, &spec(4, 8, true), 0).unwrap();
        assert_eq!((z.scale, z.zero_point), (1.0, 8));
        let f16 = GroupSpec::new(8, 4, true, true).unwrap();
        assert!(matches!(group_qparams(0.0, 1e7, &f16, 3), Err(QuantError::InvalidScale { index: 3, .. })));
        assert_eq!(group_qparams(0.0, 0.1, &f16, 0).unwrap().scale, f16::from_f32(0.1 / 127.0).to_f32());
    }

    #[test]
    fn ragged_last_group_and_round_trip() {
        let (k, n) = (10, 3);
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let s = MatShape { k, n };
        let sp = spec(8, 4, false);
        let q = quantize_groupwise(&w, s, &sp, None).unwrap();
        assert_eq!(q.scales.len(), 3 * n);
        let d = dequantize_groupwise(&q, s, 4).unwrap();
        for (a, b) in w.iter().zip(&d) {
            assert!((a - b).abs() <= 0.5 * 10.0 / 255.0 + 1e-6);
        }
        let c = quantize_groupwise(&w, s, &sp, Some(&ClipSearch::default())).unwrap();
        assert_eq!(c.codes.len(), k * n);
    }

    #[test]
    fn refining_each_bound_keeps_or_lowers_every_columns_error() {
        // a long upper tail: the joint shrink clips both bounds alike, the refinement can clip only the top
        let (k, n) = (64, 24);
        let w: Vec<f32> = (0..k * n)
            .map(|i| {
                let v = ((i * 2654435761usize) % 1999) as f32 / 999.5 - 1.0;
                if i % 37 == 0 { 6.0 * v.abs() } else { v }
            })
            .collect();
        let (s, sp) = (MatShape { k, n }, spec(4, 32, false));
        let err = |q: &GroupQuant| -> Vec<f64> {
            let d = dequantize_groupwise(q, s, 32).unwrap();
            (0..2 * n).map(|t| (t / n * 32..(t / n + 1) * 32).map(|r| ((w[r * n + t % n] - d[r * n + t % n]) as f64).powi(2)).sum()).collect()
        };
        let run = |refine| quantize_groupwise(&w, s, &sp, Some(&ClipSearch { refine, ..ClipSearch::default() })).unwrap();
        let (joint, refined) = (err(&run(false)), err(&run(true)));
        assert!(joint.iter().zip(&refined).all(|(j, r)| r <= j));
        assert!(refined.iter().sum::<f64>() < joint.iter().sum::<f64>());
    }

    #[test]
    fn errors_name_the_problem() {
        let s = MatShape { k: 2, n: 2 };
        assert!(matches!(quantize_groupwise(&[0.0, 1.0, f32::NAN, 0.0], s, &spec(4, 2, true), None),
            Err(QuantError::NonFinite { index: 2, .. })));
        assert!(matches!(quantize_groupwise(&[0.0; 3], s, &spec(4, 2, true), None), Err(QuantError::ShapeMismatch { .. })));
        assert!(GroupSpec::new(9, 2, true, false).is_err() && GroupSpec::new(4, 0, true, false).is_err());
    }
}
