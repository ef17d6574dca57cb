//! Agreement between a reference tensor and a test tensor (SQNR, cosine): the four sums they need, in f64.
//!
//! Summation order is fixed (chunks of `par::CHUNK` in order; inside a chunk, element `j` goes to lane
//! `j % LANES`, lanes added in order), so any thread count gives the same bits.

use multiversion::multiversion;

use crate::error::{QuantError, Result};
use crate::par::{map_chunks, CHUNK};

const LANES: usize = 8;

/// `sum r^2`, `sum t^2`, `sum r*t`, `sum (r-t)^2` and `max |r-t|`, accumulated in f64.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sums {
    pub ref_sq: f64,
    pub test_sq: f64,
    pub dot: f64,
    pub diff_sq: f64,
    pub max_abs_diff: f64,
}

impl Sums {
    fn add(&mut self, o: &Sums) {
        self.ref_sq += o.ref_sq;
        self.test_sq += o.test_sq;
        self.dot += o.dot;
        self.diff_sq += o.diff_sq;
        self.max_abs_diff = if o.max_abs_diff > self.max_abs_diff { o.max_abs_diff } else { self.max_abs_diff };
    }

    /// `10 log10(sum r^2 / sum (r-t)^2)`; +inf when the two agree exactly.
    pub fn sqnr_db(&self) -> f64 {
        if self.diff_sq == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (self.ref_sq / self.diff_sq).log10()
        }
    }

    /// Cosine similarity; NaN when either side is all zeros.
    pub fn cosine(&self) -> f64 {
        let den = (self.ref_sq * self.test_sq).sqrt();
        if den == 0.0 {
            f64::NAN
        } else {
            (self.dot / den).clamp(-1.0, 1.0)
        }
    }
}

#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq+avx2+fma", "x86_64+avx2+fma"))]
fn chunk_sums(r: &[f32], t: &[f32]) -> Sums {
    let (mut a, mut b, mut c, mut d, mut m) = ([0f64; LANES], [0f64; LANES], [0f64; LANES], [0f64; LANES], [0f64; LANES]);
    let mut rc = r.chunks_exact(LANES);
    let mut tc = t.chunks_exact(LANES);
    for (x, y) in (&mut rc).zip(&mut tc) {
        for k in 0..LANES {
            let (p, q) = (x[k] as f64, y[k] as f64);
            let e = p - q;
            a[k] += p * p;
            b[k] += q * q;
            c[k] += p * q;
            d[k] += e * e;
            let ae = e.abs();
            m[k] = if ae > m[k] { ae } else { m[k] };
        }
    }
    for (k, (&x, &y)) in rc.remainder().iter().zip(tc.remainder()).enumerate() {
        let (p, q) = (x as f64, y as f64);
        let e = p - q;
        a[k] += p * p;
        b[k] += q * q;
        c[k] += p * q;
        d[k] += e * e;
        m[k] = if e.abs() > m[k] { e.abs() } else { m[k] };
    }
    let sum = |v: &[f64; LANES]| v.iter().sum::<f64>();
    let max = m.iter().fold(0f64, |acc, &v| if v > acc { v } else { acc });
    Sums { ref_sq: sum(&a), test_sq: sum(&b), dot: sum(&c), diff_sq: sum(&d), max_abs_diff: max }
}

/// The sums comparing `test` with `reference` (same length, all finite).
pub fn compare(reference: &[f32], test: &[f32]) -> Result<Sums> {
    if reference.len() != test.len() {
        return Err(QuantError::ShapeMismatch { what: "test (same size as reference)", expected: reference.len(), got: test.len() });
    }
    if reference.is_empty() {
        return Err(QuantError::EmptyInput { what: "nothing to compare" });
    }
    for x in [reference, test] {
        if let Some((index, value)) = crate::par::first_non_finite(x) {
            return Err(QuantError::NonFinite { index, value });
        }
    }
    let parts = map_chunks(reference, CHUNK, |start, rc| chunk_sums(rc, &test[start..start + rc.len()]));
    let mut total = Sums::default();
    for p in &parts {
        total.add(p);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqnr_and_cosine() {
        let r: Vec<f32> = (0..100_003).map(|i| ((i % 97) as f32 - 48.0) * 0.1).collect();
        let t: Vec<f32> = r.iter().map(|v| v + 0.01).collect();
        let s = compare(&r, &t).unwrap();
        assert!((s.diff_sq - 100_003.0 * 1e-4).abs() < 1e-3);
        assert!(s.sqnr_db() > 40.0 && s.cosine() > 0.9999);
        assert_eq!(compare(&r, &r).unwrap().sqnr_db(), f64::INFINITY);
        assert!(compare(&r, &t[1..]).is_err());
        assert!(compare(&[f32::NAN], &[1.0]).is_err());
        assert!(compare(&[], &[]).is_err());
    }
}
