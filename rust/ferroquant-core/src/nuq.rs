//! NUQ (spec §2, decision 3): keep `num_steps` of the 256 int8 levels.
//!
//! 1. ARQ (symmetric) gives a scale per channel and codes `q = round(x/s)` in [-128, 127].
//! 2. Per code k: count `h[k]` and the sum of `t = x/s`. Sums are kept in fixed point (`t * 2^24`, floored,
//!    as i64) so they are exact and independent of summation order: the NumPy twin gets the same bits.
//! 3. The exact 1-D k-means dynamic program over the present codes picks `num_steps` contiguous segments,
//!    each represented by the integer nearest its weighted mean (0 for the segment holding code 0 when some
//!    weight is exactly zero). The objective `sum (t - level)^2` drops its constant `sum t^2` term.
//! 4. `num_of_iteration` rounds re-fit each channel's scale by least squares with the levels fixed
//!    (`s* = sum x*l / sum l^2`), recompute the codes and rerun the DP. The round with the lowest weight MSE
//!    is returned, so more rounds never make the result worse.

use rayon::prelude::*;

use crate::affine::{quantize, ChannelGrids, Code};
use crate::error::{QuantError, Result};
use crate::layout::ChannelLayout;
use crate::par::PAR_THRESHOLD;
use crate::qparams::from_data;
use crate::scheme::{Scheme, FLT_EPSILON};

pub const GRID: usize = 256;
const QMIN: i32 = -128;
/// Fixed-point resolution of the per-code sums of `x/s`.
pub const FIXED_ONE: f64 = 16_777_216.0; // 2^24
/// Range `x/s` is clamped to before it enters the per-code sums.
pub const T_LO: f32 = -129.0;
pub const T_HI: f32 = 128.0;

#[derive(Debug, Clone, PartialEq)]
pub struct NuqResult {
    /// The integer levels kept, ascending (fewer than `num_steps` when fewer distinct codes exist).
    pub levels: Vec<i32>,
    /// One scale per channel.
    pub scales: Vec<f32>,
    /// Mean squared error of the fake-quantized weights.
    pub mse: f64,
    /// Rounds of scale re-fitting that produced the result (0 = DP on the ARQ scales).
    pub iteration: usize,
}

/// Per-channel statistics of the codes: counts and fixed-point sums of `x/s` per code.
struct Stats {
    cnt: Vec<[u64; GRID]>,
    sum: Vec<[i64; GRID]>,
    zero_present: bool,
}

impl Stats {
    fn totals(&self) -> ([u64; GRID], [i64; GRID]) {
        let mut h = [0u64; GRID];
        let mut s = [0i64; GRID];
        for (c, t) in self.cnt.iter().zip(&self.sum) {
            for k in 0..GRID {
                h[k] += c[k];
                s[k] += t[k];
            }
        }
        (h, s)
    }
}

/// Visit every element of channel `c` in memory order.
fn for_channel(x: &[f32], layout: &ChannelLayout, c: usize, mut f: impl FnMut(f32)) {
    let (ch, inner) = (layout.channels, layout.inner);
    for o in 0..layout.outer {
        let start = (o * ch + c) * inner;
        x[start..start + inner].iter().for_each(|&v| f(v));
    }
}

fn map_channels<R: Send>(layout: &ChannelLayout, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    if layout.len() < PAR_THRESHOLD || layout.channels == 1 {
        (0..layout.channels).map(f).collect()
    } else {
        (0..layout.channels).into_par_iter().map(f).collect()
    }
}

fn code_stats(x: &[f32], layout: &ChannelLayout, scales: &[f32]) -> Stats {
    let per: Vec<([u64; GRID], [i64; GRID], bool)> = map_channels(layout, |c| {
        let s = scales[c];
        let (mut cnt, mut sum, mut zero) = ([0u64; GRID], [0i64; GRID], false);
        for_channel(x, layout, c, |v| {
            // Clamped so the fixed-point sums cannot overflow; clamped codes land in -128 / 127 anyway.
            let t = (v / s).clamp(T_LO, T_HI);
            let k = (t.round_ties_even().clamp(-128.0, 127.0) as i32 - QMIN) as usize;
            cnt[k] += 1;
            sum[k] += (t as f64 * FIXED_ONE).floor() as i64;
            zero |= v == 0.0;
        });
        (cnt, sum, zero)
    });
    let zero_present = per.iter().any(|p| p.2);
    let (cnt, sum) = per.into_iter().map(|p| (p.0, p.1)).unzip();
    Stats { cnt, sum, zero_present }
}

/// The exact DP. `h`, `s`: counts and fixed-point sums per grid code. Returns the level of every grid code
/// (`None` for absent codes) and the sorted distinct levels.
pub fn select_levels(h: &[u64; GRID], s: &[i64; GRID], k: usize, keep_zero: bool) -> (Vec<Option<i32>>, Vec<i32>) {
    let present: Vec<usize> = (0..GRID).filter(|&i| h[i] > 0).collect();
    let p = present.len();
    let mut map = vec![None; GRID];
    if p == 0 {
        return (map, vec![]);
    }
    if p <= k {
        for &i in &present {
            map[i] = Some(i as i32 + QMIN);
        }
        return (map, present.iter().map(|&i| i as i32 + QMIN).collect());
    }
    // Prefix sums over the present codes (exact integers).
    let mut pw = vec![0u64; p + 1];
    let mut ps = vec![0i64; p + 1];
    for (j, &i) in present.iter().enumerate() {
        pw[j + 1] = pw[j] + h[i];
        ps[j + 1] = ps[j] + s[i];
    }
    let zero_at = if keep_zero { present.iter().position(|&i| i as i32 + QMIN == 0) } else { None };
    // level and cost of the segment of present points a..=b
    let seg = |a: usize, b: usize| -> (i32, f64) {
        let n = (pw[b + 1] - pw[a]) as f64;
        let sm = (ps[b + 1] - ps[a]) as f64 / FIXED_ONE;
        let lvl = match zero_at {
            Some(z) if a <= z && z <= b => 0.0,
            _ => (sm / n).round_ties_even().clamp(-128.0, 127.0),
        };
        (lvl as i32, lvl * lvl * n - 2.0 * lvl * sm)
    };
    // d[j][i]: best cost of covering points 0..=i with j+1 segments; arg[j][i]: start of the last segment.
    let mut d = vec![vec![f64::INFINITY; p]; k];
    let mut arg = vec![vec![0usize; p]; k];
    for (i, slot) in d[0].iter_mut().enumerate() {
        *slot = seg(0, i).1;
    }
    for j in 1..k {
        for i in j..p {
            let (mut best, mut best_m) = (f64::INFINITY, j);
            for m in j..=i {
                let c = d[j - 1][m - 1] + seg(m, i).1;
                if c < best {
                    best = c;
                    best_m = m;
                }
            }
            d[j][i] = best;
            arg[j][i] = best_m;
        }
    }
    let mut levels = Vec::with_capacity(k);
    let mut end = p - 1;
    for j in (0..k).rev() {
        let start = if j == 0 { 0 } else { arg[j][end] };
        let lvl = seg(start, end).0;
        for &i in &present[start..=end] {
            map[i] = Some(lvl);
        }
        levels.push(lvl);
        if j == 0 {
            break;
        }
        end = start - 1;
    }
    levels.reverse();
    levels.dedup();
    (map, levels)
}

/// Level table for every grid code: absent codes go to the nearest kept level (lower one on a tie).
fn full_table(map: &[Option<i32>], levels: &[i32]) -> [i32; GRID] {
    let mut t = [0i32; GRID];
    for (i, slot) in t.iter_mut().enumerate() {
        *slot = match map[i] {
            Some(l) => l,
            None => {
                let code = i as i32 + QMIN;
                *levels.iter().min_by_key(|&&l| ((l - code).abs(), l)).unwrap_or(&0)
            }
        };
    }
    t
}

struct Round {
    scales: Vec<f32>,
    table: [i32; GRID],
    levels: Vec<i32>,
    mse: f64,
    refit: Vec<f32>,
}

fn run_round(w: &[f32], layout: &ChannelLayout, scales: Vec<f32>, k: usize) -> Round {
    let st = code_stats(w, layout, &scales);
    let (h, s) = st.totals();
    let (map, levels) = select_levels(&h, &s, k, st.zero_present);
    let table = full_table(&map, &levels);
    // Per channel: squared error and the least-squares scale with the levels fixed.
    let per: Vec<(f64, f32)> = map_channels(layout, |c| {
        let sc = scales[c];
        let (mut err, mut xl, mut ll) = (0f64, 0f64, 0f64);
        for_channel(w, layout, c, |v| {
            let k = ((v / sc).round_ties_even().clamp(-128.0, 127.0) as i32 - QMIN) as usize;
            let l = table[k] as f64;
            let d = v as f64 - l * sc as f64;
            err += d * d;
            xl += v as f64 * l;
            ll += l * l;
        });
        let refit = if ll > 0.0 { (xl / ll) as f32 } else { sc };
        let refit = if refit.is_finite() && refit >= FLT_EPSILON { refit } else { sc };
        (err, refit)
    });
    let mse = per.iter().map(|p| p.0).sum::<f64>() / layout.len() as f64;
    Round { scales, table, levels, mse, refit: per.iter().map(|p| p.1).collect() }
}

/// NUQ of `w` with `num_steps` levels and `num_of_iteration` refit rounds. Writes int8 codes (the kept levels)
/// and the fake-quantized weights.
pub fn nuq(
    w: &[f32],
    layout: &ChannelLayout,
    num_steps: usize,
    num_of_iteration: usize,
    codes: &mut [i8],
    fake: &mut [f32],
) -> Result<NuqResult> {
    if !(2..=GRID).contains(&num_steps) {
        return Err(QuantError::InvalidParameter { name: "num_steps", reason: format!("must be in [2, 256], got {num_steps}") });
    }
    if num_of_iteration > 5 {
        return Err(QuantError::InvalidParameter {
            name: "num_of_iteration",
            reason: format!("must be in [0, 5], got {num_of_iteration}"),
        });
    }
    layout.check_len("codes", codes.len())?;
    layout.check_len("fake", fake.len())?;
    let scheme = Scheme::new(8, true)?;
    let scales: Vec<f32> = from_data(w, layout, &scheme)?.iter().map(|p| p.scale).collect();
    let mut best = run_round(w, layout, scales, num_steps);
    let mut best_iter = 0;
    let mut cur_refit = best.refit.clone();
    for it in 1..=num_of_iteration {
        let r = run_round(w, layout, cur_refit, num_steps);
        cur_refit = r.refit.clone();
        if r.mse < best.mse {
            best = r;
            best_iter = it;
        }
    }
    let zps = vec![0i32; layout.channels];
    quantize(w, &ChannelGrids::new(layout, &best.scales, &zps, &scheme)?, codes)?;
    let table = best.table;
    let scales = &best.scales;
    layout.for_each_run(0, codes.len(), |off, n, ch| {
        let s = scales[ch];
        for i in off..off + n {
            let l = table[(codes[i] as i32 - QMIN) as usize];
            codes[i] = i8::from_f32(l as f32);
            fake[i] = l as f32 * s;
        }
    });
    Ok(NuqResult { levels: best.levels, scales: best.scales, mse: best.mse, iteration: best_iter })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize) -> Vec<f32> {
        let mut s = 12345u64;
        (0..n)
            .map(|_| {
                let mut acc = 0.0;
                for _ in 0..4 {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    acc += (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                }
                acc
            })
            .collect()
    }

    #[test]
    fn keeps_at_most_k_levels_and_beats_fewer() {
        let w = lcg(20_000);
        let l = ChannelLayout::per_tensor(w.len());
        let (mut q, mut f) = (vec![0i8; w.len()], vec![0f32; w.len()]);
        let r16 = nuq(&w, &l, 16, 1, &mut q, &mut f).unwrap();
        let mut distinct: Vec<i8> = q.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() <= 16);
        let r32 = nuq(&w, &l, 32, 1, &mut q, &mut f).unwrap();
        assert!(r32.mse < r16.mse);
        assert_eq!(r32.levels.len(), 32);
    }

    #[test]
    fn zero_is_kept() {
        let mut w = lcg(5000);
        w[17] = 0.0;
        let l = ChannelLayout::per_tensor(w.len());
        let (mut q, mut f) = (vec![0i8; w.len()], vec![0f32; w.len()]);
        let r = nuq(&w, &l, 4, 0, &mut q, &mut f).unwrap();
        assert!(r.levels.contains(&0));
        assert_eq!(f[17], 0.0);
    }

    #[test]
    fn bad_parameters() {
        let l = ChannelLayout::per_tensor(2);
        let (mut q, mut f) = ([0i8; 2], [0f32; 2]);
        assert!(nuq(&[1.0, 2.0], &l, 1, 0, &mut q, &mut f).is_err());
        assert!(nuq(&[1.0, 2.0], &l, 16, 6, &mut q, &mut f).is_err());
        assert!(nuq(&[1.0, f32::NAN], &l, 16, 0, &mut q, &mut f).is_err());
    }
}
