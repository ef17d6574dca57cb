//! Per-channel activation statistics over the last axis of a batch `[rows, C]`: min, max (hence abs-max) and
//! the f64 sum of `|x|` with the row count (hence mean `|x|`). Streaming and mergeable: a batch's statistics
//! are folded into running ones, and two running statistics merge the same way. SmoothQuant-style balancing
//! and AWQ read them.
//!
//! Rows are split into fixed chunks; chunk partials combine in chunk order, so the sums do not depend on the
//! thread count.

use multiversion::multiversion;
use rayon::prelude::*;

use crate::error::{QuantError, Result};

/// One chunk's `(min, max, abs_sum)`.
type Partial = (Vec<f32>, Vec<f32>, Vec<f64>);

/// Elements per parallel chunk (rounded to whole rows).
pub const CHUNK_ELEMS: usize = 1 << 15;

/// Running per-channel statistics of `channels` channels.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelStats {
    pub min: Vec<f32>,
    pub max: Vec<f32>,
    pub abs_sum: Vec<f64>,
    pub count: u64,
}

impl ChannelStats {
    /// No data yet: `min = +inf`, `max = -inf`, sums 0.
    pub fn new(channels: usize) -> Self {
        Self {
            min: vec![f32::INFINITY; channels],
            max: vec![f32::NEG_INFINITY; channels],
            abs_sum: vec![0.0; channels],
            count: 0,
        }
    }
}

/// Borrowed running statistics (the binding hands over NumPy buffers).
pub struct StatsMut<'a> {
    pub min: &'a mut [f32],
    pub max: &'a mut [f32],
    pub abs_sum: &'a mut [f64],
}

impl StatsMut<'_> {
    fn channels(&self) -> Result<usize> {
        let c = self.min.len();
        for (what, len) in [("max", self.max.len()), ("abs_sum", self.abs_sum.len())] {
            if len != c {
                return Err(QuantError::ShapeMismatch { what, expected: c, got: len });
            }
        }
        if c == 0 {
            return Err(QuantError::EmptyInput { what: "channel statistics with no channel" });
        }
        Ok(c)
    }

    /// Fold another set of statistics (min of mins, max of maxes, sum of sums).
    pub fn merge(&mut self, min: &[f32], max: &[f32], abs_sum: &[f64]) -> Result<()> {
        let c = self.channels()?;
        for (what, len) in [("min", min.len()), ("max", max.len()), ("abs_sum", abs_sum.len())] {
            if len != c {
                return Err(QuantError::ShapeMismatch { what, expected: c, got: len });
            }
        }
        fold(self.min, self.max, self.abs_sum, min, max, abs_sum);
        Ok(())
    }
}

fn fold(min: &mut [f32], max: &mut [f32], sum: &mut [f64], pmin: &[f32], pmax: &[f32], psum: &[f64]) {
    for j in 0..min.len() {
        min[j] = if pmin[j] < min[j] { pmin[j] } else { min[j] };
        max[j] = if pmax[j] > max[j] { pmax[j] } else { max[j] };
        sum[j] += psum[j];
    }
}

#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma", "x86_64+sse4.1"))]
fn rows_stats(x: &[f32], c: usize, min: &mut [f32], max: &mut [f32], sum: &mut [f64]) -> Option<usize> {
    for (r, row) in x.chunks(c).enumerate() {
        if let Some(j) = row.iter().position(|v| !v.is_finite()) {
            return Some(r * c + j);
        }
        for j in 0..c {
            let v = row[j];
            min[j] = if v < min[j] { v } else { min[j] };
            max[j] = if v > max[j] { v } else { max[j] };
            sum[j] += v.abs() as f64;
        }
    }
    None
}

/// Fold the batch `x` `[rows, C]` (C = the statistics' channel count) into `stats`; returns the row count.
/// NaN/Inf are an error naming the flat index; `stats` is then left unchanged.
pub fn channel_stats_update(stats: &mut StatsMut<'_>, x: &[f32]) -> Result<usize> {
    let c = stats.channels()?;
    if x.is_empty() {
        return Err(QuantError::EmptyInput { what: "activation batch" });
    }
    if !x.len().is_multiple_of(c) {
        return Err(QuantError::ShapeMismatch { what: "activation length, a multiple of C =", expected: c, got: x.len() });
    }
    let chunk = (CHUNK_ELEMS / c).max(1) * c;
    let parts: Vec<std::result::Result<Partial, usize>> = x
        .par_chunks(chunk)
        .enumerate()
        .map(|(i, xc)| {
            let mut p = ChannelStats::new(c);
            match rows_stats(xc, c, &mut p.min, &mut p.max, &mut p.abs_sum) {
                Some(at) => Err(i * chunk + at),
                None => Ok((p.min, p.max, p.abs_sum)),
            }
        })
        .collect();
    let mut acc = ChannelStats::new(c);
    acc.abs_sum.copy_from_slice(stats.abs_sum);
    for p in parts {
        match p {
            Err(index) => return Err(QuantError::NonFinite { index, value: x[index] }),
            Ok((pmin, pmax, psum)) => fold(&mut acc.min, &mut acc.max, &mut acc.abs_sum, &pmin, &pmax, &psum),
        }
    }
    for j in 0..c {
        stats.min[j] = stats.min[j].min(acc.min[j]);
        stats.max[j] = stats.max[j].max(acc.max[j]);
    }
    stats.abs_sum.copy_from_slice(&acc.abs_sum);
    Ok(x.len() / c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_equals_one_batch_and_nan_leaves_state() {
        let c = 7;
        let x: Vec<f32> = (0..c * 20000).map(|i| ((i * 31 % 1001) as f32 - 500.0) / 50.0).collect();
        let mut a = ChannelStats::new(c);
        let mut m = StatsMut { min: &mut a.min, max: &mut a.max, abs_sum: &mut a.abs_sum };
        assert_eq!(channel_stats_update(&mut m, &x).unwrap(), 20000);
        let mut b = ChannelStats::new(c);
        let mut mb = StatsMut { min: &mut b.min, max: &mut b.max, abs_sum: &mut b.abs_sum };
        channel_stats_update(&mut mb, &x[..c * 5000]).unwrap();
        let mut d = ChannelStats::new(c);
        let mut md = StatsMut { min: &mut d.min, max: &mut d.max, abs_sum: &mut d.abs_sum };
        channel_stats_update(&mut md, &x[c * 5000..]).unwrap();
        mb.merge(&d.min, &d.max, &d.abs_sum).unwrap();
        assert_eq!((&b.min, &b.max), (&a.min, &a.max));
        for j in 0..c {
            assert!((b.abs_sum[j] - a.abs_sum[j]).abs() < 1e-9 * a.abs_sum[j]);
        }
        let before = a.clone();
        let mut y = x.clone();
        y[c * 19000 + 3] = f32::NAN;
        let mut m = StatsMut { min: &mut a.min, max: &mut a.max, abs_sum: &mut a.abs_sum };
        assert!(matches!(channel_stats_update(&mut m, &y), Err(QuantError::NonFinite { index, .. }) if index == c * 19000 + 3));
        assert_eq!(a, before);
    }
}
