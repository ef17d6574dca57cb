//! IFMR, Input Feature Map Reconstruction (spec §3): activation clip range from percentiles, refined by a
//! search over candidate clips that minimizes the quantize-dequantize MSE.
//!
//! - `init`: the percentile initialisation, exact (§3.2) or from a histogram (§3.5).
//! - `loss`: the candidate and its error; candidate losses on a histogram.
//! - `runs`: candidate losses on the raw data, exact, from per-interval sums of one pass per batch of candidates.
//! - `search`: the 1-D window (AMCT), its extension (decision 10), the lower-bound search for negative-only
//!   data (§3.5) and the opt-in 2-D search (§3.3).

pub mod init;
pub mod loss;
pub mod search;
pub mod runs;

use crate::error::{QuantError, Result};
use crate::qparams::{from_range, QParams};
use crate::scheme::Scheme;
use crate::stop::Stop;

pub use init::{histogram_init, percentile_init, store_nonzero};
pub use loss::{Cand, HistLoss, Loss};
pub use runs::RunLoss;
pub use search::{Bound, Space};

/// More candidates than this is a configuration mistake (AMCT's docs warn that it looks like a hang).
pub const MAX_CANDIDATES: usize = 100_000;

/// IFMR options (spec §3.4). `Default` is AMCT's configuration default (with an offset, 8 bits) with the
/// window extension on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IfmrOptions {
    pub bits: u32,
    pub symmetric: bool,
    pub max_percentile: f64,
    pub min_percentile: f64,
    pub search_start: f64,
    pub search_end: f64,
    pub search_step: f64,
    /// Step past the window edges while the loss falls (decision 10); false is AMCT exactly.
    pub search_extend: bool,
    /// Search both bounds on a grid (asymmetric only); `search_extend` does not apply.
    pub search_2d: bool,
}

impl Default for IfmrOptions {
    fn default() -> Self {
        Self {
            bits: 8,
            symmetric: false,
            max_percentile: 0.999999,
            min_percentile: 0.999999,
            search_start: 0.7,
            search_end: 1.3,
            search_step: 0.01,
            search_extend: true,
            search_2d: false,
        }
    }
}

fn bad(name: &'static str, reason: String) -> QuantError {
    QuantError::InvalidParameter { name, reason }
}

impl IfmrOptions {
    /// Candidates in the window: `floor((end - start) / step + 1e-6) + 1` (61 for the defaults).
    pub fn count(&self) -> usize {
        ((self.search_end - self.search_start) / self.search_step + 1e-6).floor() as usize + 1
    }

    /// Check every option against §3.4; returns the scheme.
    pub fn validate(&self) -> Result<Scheme> {
        let scheme = Scheme::new(self.bits, self.symmetric)?;
        for (name, p) in [("max_percentile", self.max_percentile), ("min_percentile", self.min_percentile)] {
            if !(p > 0.5 && p <= 1.0) {
                return Err(bad(name, format!("must be in (0.5, 1], got {p}")));
            }
        }
        let (start, end, step) = (self.search_start, self.search_end, self.search_step);
        if !(start.is_finite() && start > 0.0) {
            return Err(bad("search_start", format!("must be finite and > 0, got {start}")));
        }
        if !(end.is_finite() && end > start) {
            return Err(bad("search_end", format!("must be finite and > search_start ({start}), got {end}")));
        }
        if !(step > 0.0 && step <= (end - start) * (1.0 + 1e-9)) {
            return Err(bad("search_step", format!("must be in (0, search_end - search_start], got {step}")));
        }
        let n = self.count();
        let total = if self.search_2d { n.saturating_mul(n) } else { n };
        if total > MAX_CANDIDATES {
            return Err(bad("search_step", format!("gives {total} candidates, more than {MAX_CANDIDATES}")));
        }
        if self.search_2d && self.symmetric {
            return Err(bad("search_2d", "the 2-D search needs an offset (symmetric=false)".into()));
        }
        Ok(scheme)
    }
}

/// What IFMR returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IfmrResult {
    pub scale: f32,
    pub zero_point: i32,
    /// `s * (qmax - o)` and `s * (qmin - o)`: the range the grid covers (used to initialise ULQ).
    pub clip_max: f32,
    pub clip_min: f32,
    /// The percentile bounds the search started from.
    pub max_init: f32,
    pub min_init: f32,
    /// Which bound was searched.
    pub bound: Bound,
    /// Best ratio and its index `i` (`r = start + i * step`) of the searched bound (the upper one in 2-D);
    /// the index is negative or past the window when the extension moved it.
    pub ratio: f64,
    pub index: i64,
    /// 2-D only: ratio and index of the lower bound.
    pub ratio_min: Option<f64>,
    pub index_min: Option<i64>,
    /// Steps the best candidate lies past the window edge: negative below `start`, positive above `end`.
    pub extension: i64,
    /// Candidate losses computed.
    pub candidates: usize,
    /// Mean squared error of the best candidate.
    pub loss: f64,
}

impl IfmrResult {
    pub fn extended(&self) -> bool {
        self.extension != 0
    }
}

/// IFMR on the raw data: exact percentiles, then the search (`stop` checked before each pass over the data).
/// `zeros` more values of 0 belong to the data (a calibrator stores only the non-zero values: a ReLU's output
/// is often a third zeros, and a zero adds nothing to any candidate's error); the result is that of the data
/// with the zeros in it.
pub fn ifmr(x: &[f32], zeros: usize, o: &IfmrOptions, stop: &Stop) -> Result<IfmrResult> {
    o.validate()?;
    if x.is_empty() && zeros == 0 {
        return Err(QuantError::EmptyInput { what: "IFMR needs at least one value" });
    }
    let (max0, min0) = percentile_init(x, zeros, o.max_percentile, o.min_percentile)?;
    search_from(&RunLoss { x, zeros, stop }, max0, min0, o)
}

/// One tensor of [`ifmr_many`]: its raw data, the zeros counted beside it and its options.
pub struct Request<'a> {
    pub x: &'a [f32],
    pub zeros: usize,
    pub options: &'a IfmrOptions,
}

/// [`ifmr`] of each request, in parallel across them (and within large ones), in request order: each result
/// is the one `ifmr` gives alone, whatever the thread count.
pub fn ifmr_many(reqs: &[Request<'_>], stop: &Stop) -> Vec<Result<IfmrResult>> {
    use rayon::prelude::*;
    reqs.par_iter().map(|q| ifmr(q.x, q.zeros, q.options, stop)).collect()
}

/// IFMR from a histogram (`counts` over `nbins` equal bins of `[lo, hi]`, §3.5): percentiles from the
/// cumulative counts; candidate losses on the raw data `x` when given, otherwise on the bin centres weighted
/// by their counts (no raw data needed).
pub fn ifmr_histogram(
    counts: &[u64],
    lo: f32,
    hi: f32,
    x: Option<&[f32]>,
    o: &IfmrOptions,
    stop: &Stop,
) -> Result<IfmrResult> {
    o.validate()?;
    let (max0, min0) = histogram_init(counts, lo, hi, o.max_percentile, o.min_percentile)?;
    match x {
        Some(x) => {
            if let Some((index, value)) = crate::par::first_non_finite(x) {
                return Err(QuantError::NonFinite { index, value });
            }
            if x.is_empty() {
                return Err(QuantError::EmptyInput { what: "IFMR needs at least one value" });
            }
            search_from(&RunLoss { x, zeros: 0, stop }, max0, min0, o)
        }
        None => search_from(&HistLoss::new(counts, lo, hi), max0, min0, o),
    }
}

/// The search from given percentile bounds (`max0 >= 0 >= min0`, finite) with any loss.
pub fn search_from(loss: &dyn Loss, max0: f32, min0: f32, o: &IfmrOptions) -> Result<IfmrResult> {
    let scheme = o.validate()?;
    let bound = if o.symmetric {
        Bound::Symmetric
    } else if o.search_2d {
        Bound::Both
    } else if max0 == 0.0 && min0 < 0.0 {
        Bound::Min
    } else {
        Bound::Max
    };
    let space = Space { bound, max0, min0, scheme };
    let pick = if bound == Bound::Both { search::search_2d(loss, &space, o)? } else { search::search_1d(loss, &space, o)? };
    let q = match bound {
        Bound::Symmetric => QParams { scale: pick.cand.scale, zero_point: 0 },
        _ => from_range(pick.cand.lo, pick.cand.hi, &scheme, 0)?,
    };
    let last = o.count() as i64 - 1;
    let extension = if pick.index < 0 { pick.index } else { (pick.index - last).max(0) };
    let both = bound == Bound::Both;
    Ok(IfmrResult {
        scale: q.scale,
        zero_point: q.zero_point,
        clip_max: q.scale * (scheme.qmax() - q.zero_point) as f32,
        clip_min: q.scale * (scheme.qmin() - q.zero_point) as f32,
        max_init: max0,
        min_init: min0,
        bound,
        ratio: search::ratio(o, pick.index),
        index: pick.index,
        ratio_min: both.then(|| search::ratio(o, pick.index_min)),
        index_min: both.then_some(pick.index_min),
        extension,
        candidates: pick.evaluated,
        loss: pick.loss,
    })
}

#[cfg(test)]
mod tests;
