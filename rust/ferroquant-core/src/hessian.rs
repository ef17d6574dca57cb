//! The GPTQ Hessian, `H = 2/n · Σ XᵀX` over calibration rows (`X` is `[rows, K]`, one row per token or
//! sample of the layer input), accumulated in float64 with bounded memory: the caller keeps the `[K, K]` sum
//! and adds batch after batch; [`hessian_update`] adds `XᵀX` for one batch. The `2/n` factor is applied once,
//! at the end (by the caller), not per batch.
//!
//! Work: rows are converted to f64 in fixed chunks of [`ROW_CHUNK`]; for each chunk, fixed strips of
//! [`STRIP`] rows of `H` take their lower-triangular part in parallel, each strip one sequential product.
//! Every element is therefore summed in the same order whatever the thread count; the upper triangle is
//! mirrored from the lower one at the end of each call.

use rayon::prelude::*;

use crate::error::{QuantError, Result};
use crate::linalg::{gemm_add, view_cm, view_cm_mut};
use crate::par::first_non_finite;

/// Rows converted to f64 at a time (bounds the scratch memory at `ROW_CHUNK * K` f64).
pub const ROW_CHUNK: usize = 512;
/// Rows of `H` per parallel task.
pub const STRIP: usize = 256;

/// `h += xᵀx` for `x` `[rows, k]` (float32, row-major) and `h` `[k, k]` (float64, row-major, symmetric).
/// Only the lower triangle of `h` is read; both triangles are written. Returns the number of rows added.
pub fn hessian_update(h: &mut [f64], x: &[f32], k: usize) -> Result<usize> {
    if k == 0 || x.is_empty() {
        return Err(QuantError::EmptyInput { what: "calibration activations" });
    }
    if !x.len().is_multiple_of(k) {
        return Err(QuantError::ShapeMismatch { what: "activation length, a multiple of K =", expected: k, got: x.len() });
    }
    if h.len() != k * k {
        return Err(QuantError::ShapeMismatch { what: "hessian [K, K]", expected: k * k, got: h.len() });
    }
    if let Some((index, value)) = first_non_finite(x) {
        return Err(QuantError::NonFinite { index, value });
    }
    accumulate(h, x, k, STRIP, ROW_CHUNK);
    mirror_lower(h, k);
    Ok(x.len() / k)
}

/// The lower triangle of `h += xᵀx`, with strips of `strip` rows and chunks of `row_chunk` rows.
fn accumulate(h: &mut [f64], x: &[f32], k: usize, strip: usize, row_chunk: usize) {
    let rows = x.len() / k;
    let r0 = row_chunk.min(rows);
    // the chunk twice in f64: row-major (= Xᵀ column-major, the left operand) and column-major (the right one)
    let (mut xa, mut xb) = (vec![0f64; r0 * k], vec![0f64; r0 * k]);
    for chunk in x.chunks(row_chunk * k) {
        let r = chunk.len() / k;
        xa[..chunk.len()].par_iter_mut().zip(chunk.par_iter()).for_each(|(d, &s)| *d = s as f64);
        xb[..chunk.len()].par_chunks_mut(r).enumerate().for_each(|(j, col)| {
            col.iter_mut().enumerate().for_each(|(t, d)| *d = chunk[t * k + j] as f64);
        });
        let (xa, xb) = (&xa[..chunk.len()], &xb[..chunk.len()]);
        h.par_chunks_mut(strip * k).enumerate().for_each(|(t, rows_t)| {
            // rows j0..j0+m of H, columns 0..j0+m: H[j, i] for i <= j. Stored column-major (stride k) it is
            // the block Xᵀ[0..j0+m] · X[:, j0..j0+m] (rows i, columns j).
            let (j0, m) = (t * strip, rows_t.len() / k);
            let dst = view_cm_mut(rows_t, j0 + m, m, k);
            let lhs = view_cm(xa, j0 + m, r, k);
            let rhs = view_cm(&xb[j0 * r..], r, m, r);
            gemm_add(dst, lhs, rhs, 1.0);
        });
    }
}

/// Copy the lower triangle of a row-major `[k, k]` matrix onto its upper triangle (in 64 x 64 tiles, so both
/// sides stay in cache).
pub fn mirror_lower(h: &mut [f64], k: usize) {
    const T: usize = 64;
    for bi in (0..k).step_by(T) {
        for bj in (0..=bi).step_by(T) {
            for i in bi..(bi + T).min(k) {
                for j in bj..(bj + T).min(i) {
                    h[j * k + i] = h[i * k + j];
                }
            }
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
