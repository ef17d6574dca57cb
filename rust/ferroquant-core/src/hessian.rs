//! The GPTQ Hessian, `H = 2/n · Σ XᵀX` over calibration rows (`X` is `[rows, K]`, one row per token or
//! sample of the layer input), accumulated in float64 with bounded memory: the caller keeps the `[K, K]` sum
//! and adds batch after batch; [`hessian_update`] adds `XᵀX` for one batch. The `2/n` factor is applied once,
//! at the end (by the caller), not per batch.
//!
//! Work: rows are converted to f64 in fixed chunks of [`ROW_CHUNK`]; for each chunk, fixed strips of
//! [`STRIP`] rows of `H` take their upper-triangular part in parallel, each strip one sequential product.
//! Every element is therefore summed in the same order whatever the thread count; the lower triangle is
//! mirrored from the upper one at the end of each call.

use rayon::prelude::*;

use crate::error::{QuantError, Result};
use crate::linalg::{gemm_add, view, view_mut};
use crate::par::first_non_finite;

/// Rows converted to f64 at a time (bounds the scratch memory at `ROW_CHUNK * K` f64).
pub const ROW_CHUNK: usize = 512;
/// Rows of `H` per parallel task.
pub const STRIP: usize = 64;

/// `h += xᵀx` for `x` `[rows, k]` (float32, row-major) and `h` `[k, k]` (float64, row-major, symmetric).
/// Only the upper triangle of `h` is read; both triangles are written. Returns the number of rows added.
pub fn hessian_update(h: &mut [f64], x: &[f32], k: usize) -> Result<usize> {
    if k == 0 || x.is_empty() {
        return Err(QuantError::EmptyInput { what: "calibration activations" });
    }
    if x.len() % k != 0 {
        return Err(QuantError::ShapeMismatch { what: "activation length, a multiple of K =", expected: k, got: x.len() });
    }
    if h.len() != k * k {
        return Err(QuantError::ShapeMismatch { what: "hessian [K, K]", expected: k * k, got: h.len() });
    }
    if let Some((index, value)) = first_non_finite(x) {
        return Err(QuantError::NonFinite { index, value });
    }
    let rows = x.len() / k;
    let mut xc = vec![0f64; ROW_CHUNK.min(rows) * k];
    for chunk in x.chunks(ROW_CHUNK * k) {
        let r = chunk.len() / k;
        xc[..chunk.len()].par_chunks_mut(k).zip(chunk.par_chunks(k)).for_each(|(d, s)| {
            d.iter_mut().zip(s).for_each(|(d, &s)| *d = s as f64);
        });
        let xr = &xc[..chunk.len()];
        h.par_chunks_mut(STRIP * k).enumerate().for_each(|(t, strip)| {
            let i0 = t * STRIP;
            let m = strip.len() / k;
            // strip rows i0..i0+m, columns i0..k: += X[:, i0..i0+m]ᵀ X[:, i0..k]
            let dst = view_mut(&mut strip[i0..], m, k - i0, k);
            let lhs = view(&xr[i0..], r, m, k).transpose();
            let rhs = view(&xr[i0..], r, k - i0, k);
            gemm_add(dst, lhs, rhs, 1.0);
        });
    }
    mirror_upper(h, k);
    Ok(rows)
}

/// Copy the upper triangle of a row-major `[k, k]` matrix onto its lower triangle.
pub fn mirror_upper(h: &mut [f64], k: usize) {
    for i in 1..k {
        let (upper, lower) = h.split_at_mut(i * k);
        for (j, v) in lower[..i].iter_mut().enumerate() {
            *v = upper[j * k + i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_sum_in_two_batches() {
        let (rows, k) = (1100, 70);
        let x: Vec<f32> = (0..rows * k).map(|i| (((i * 2654435761) % 1000) as f32 - 500.0) / 250.0).collect();
        let mut h = vec![0f64; k * k];
        assert_eq!(hessian_update(&mut h, &x[..600 * k], k).unwrap(), 600);
        hessian_update(&mut h, &x[600 * k..], k).unwrap();
        for i in 0..k {
            for j in 0..k {
                let want: f64 = (0..rows).map(|r| x[r * k + i] as f64 * x[r * k + j] as f64).sum();
                assert!((h[i * k + j] - want).abs() <= 1e-9 * want.abs().max(1.0), "{i} {j}");
                assert_eq!(h[i * k + j], h[j * k + i]);
            }
        }
    }

    #[test]
    fn rejects_nan_and_bad_shapes() {
        let mut h = vec![0f64; 4];
        assert!(matches!(hessian_update(&mut h, &[1.0, f32::NAN], 2), Err(QuantError::NonFinite { index: 1, .. })));
        assert!(matches!(hessian_update(&mut h, &[1.0, 2.0, 3.0], 2), Err(QuantError::ShapeMismatch { .. })));
        assert!(matches!(hessian_update(&mut h, &[1.0; 3], 3), Err(QuantError::ShapeMismatch { .. })));
        assert_eq!(h, vec![0.0; 4]);
    }
}
