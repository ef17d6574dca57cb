//! Dense linear algebra on row-major f64 buffers, through `faer`: the products and the factorization GPTQ,
//! AWQ and the Hessian need. Products run sequentially inside fixed tiles (the callers parallelize over the
//! tiles), so a result never depends on the thread count.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch, LltRegularization};
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_inverse::{invert_lower_triangular, invert_upper_triangular};
use faer::{Accum, MatMut, MatRef, Par};

/// A row-major `[rows, cols]` view of `a` with row stride `stride`.
pub fn view(a: &[f64], rows: usize, cols: usize, stride: usize) -> MatRef<'_, f64> {
    MatRef::from_row_major_slice_with_stride(a, rows, cols, stride)
}

/// A mutable row-major `[rows, cols]` view of `a` with row stride `stride`. (Built as the transpose of a
/// column-major view: faer 0.24.4's `MatMut::from_row_major_slice_with_stride_mut` checks row-major bounds but
/// builds a column-major view, so products through it write out of bounds when `rows > cols`.)
pub fn view_mut(a: &mut [f64], rows: usize, cols: usize, stride: usize) -> MatMut<'_, f64> {
    MatMut::from_column_major_slice_with_stride_mut(a, cols, rows, stride).transpose_mut()
}

/// A column-major `[rows, cols]` view of `a` with column stride `stride`.
pub fn view_cm(a: &[f64], rows: usize, cols: usize, stride: usize) -> MatRef<'_, f64> {
    MatRef::from_column_major_slice_with_stride(a, rows, cols, stride)
}

/// A mutable column-major `[rows, cols]` view of `a` with column stride `stride`.
pub fn view_cm_mut(a: &mut [f64], rows: usize, cols: usize, stride: usize) -> MatMut<'_, f64> {
    MatMut::from_column_major_slice_with_stride_mut(a, rows, cols, stride)
}

/// `dst += alpha * lhs * rhs`, sequential (one task's share of the work). faer is fastest with every operand
/// column-major; a row-major right-hand side costs it about 3x.
pub fn gemm_add(dst: MatMut<'_, f64>, lhs: MatRef<'_, f64>, rhs: MatRef<'_, f64>, alpha: f64) {
    matmul(dst, Accum::Add, lhs, rhs, alpha, Par::Seq);
}

/// The parallelism faer may use for one large factorization: the threads of the current rayon pool.
pub fn par() -> Par {
    let n = rayon::current_num_threads();
    if n <= 1 {
        Par::Seq
    } else {
        Par::rayon(n)
    }
}

/// The upper-triangular `M` (row-major) with `M Mᵀ = H` for a symmetric positive definite `[k, k]` matrix `h`
/// (row-major, symmetric): the Cholesky factor of `H` taken from the last input backwards (with `P` the
/// reversal permutation and `P H P = L Lᵀ`, `M = P L P`); with `invert`, `U = M⁻¹ = P L⁻¹ P` instead (one more
/// triangular inverse), the upper `U` with `UᵀU = H⁻¹` that GPTQ's reference computes as
/// `cholesky(cholesky_inverse(cholesky(H)), upper=True)`. Returns the failing pivot (in `h`'s order) when `h`
/// is not positive definite. Works in `h`'s buffer (no other `k²` allocation without `invert`).
pub fn reverse_cholesky_upper(mut a: Vec<f64>, k: usize, invert: bool, par: Par)
    -> std::result::Result<Vec<f64>, usize> {
    // P H P, row-major, is `h` read backwards; symmetric, so it is also its column-major buffer.
    a.reverse();
    let mut buf = MemBuffer::new(cholesky_in_place_scratch::<f64>(k, par, Default::default()));
    cholesky_in_place(view_cm_mut(&mut a, k, k, k), LltRegularization::default(), par, MemStack::new(&mut buf),
        Default::default())
    .map_err(|e| match e {
        faer::linalg::cholesky::llt::factor::LltError::NonPositivePivot { index } => k - 1 - index,
    })?;
    if invert {
        let mut inv = vec![0f64; k * k];
        invert_lower_triangular(view_cm_mut(&mut inv, k, k, k), view_cm(&a, k, k, k), par);
        a = inv;
    }
    // `a` holds L (or L⁻¹) column-major, lower (the strict upper triangle may be stale): L[r, c] = a[c k + r],
    // so M[i, j] = L[k-1-i, k-1-j] = a[k² - 1 - (j k + i)]: `a` backwards is M column-major. Transposed in
    // place, in tiles, with the strict lower triangle zeroed.
    a.reverse();
    const T: usize = 64;
    for i0 in (0..k).step_by(T) {
        for j0 in (i0..k).step_by(T) {
            for j in j0..(j0 + T).min(k) {
                for i in i0..(i0 + T).min(j) {
                    a[i * k + j] = a[j * k + i];
                    a[j * k + i] = 0.0;
                }
            }
        }
    }
    Ok(a)
}

/// The inverse of the upper-triangular row-major `[k, k]` matrix `m` (read on and above the diagonal), sequential.
pub fn invert_upper(m: &[f64], k: usize) -> Vec<f64> {
    let mut inv = vec![0f64; k * k];
    invert_upper_triangular(view_mut(&mut inv, k, k, k), view(m, k, k, k), Par::Seq);
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_cholesky_matches_definition() {
        let k = 5;
        let b: Vec<f64> = (0..k * k).map(|i| ((i * 37 % 17) as f64 - 8.0) / 7.0).collect();
        let mut h = vec![0f64; k * k];
        for i in 0..k {
            for j in 0..k {
                h[i * k + j] = (0..k).map(|t| b[t * k + i] * b[t * k + j]).sum::<f64>() + if i == j { 0.5 } else { 0.0 };
            }
        }
        let m = reverse_cholesky_upper(h.clone(), k, false, Par::Seq).unwrap();
        // M Mᵀ = H, M upper with a positive diagonal
        for i in 0..k {
            for j in 0..k {
                let v: f64 = (0..k).map(|t| m[i * k + t] * m[j * k + t]).sum();
                assert!((v - h[i * k + j]).abs() < 1e-9, "{i} {j} {v}");
            }
            assert!(m[i * k + i] > 0.0);
            for j in 0..i {
                assert_eq!(m[i * k + j], 0.0);
            }
        }
        // U = M⁻¹: M U = I
        let u = reverse_cholesky_upper(h.clone(), k, true, Par::Seq).unwrap();
        for i in 0..k {
            for j in 0..k {
                let v: f64 = (0..k).map(|t| m[i * k + t] * u[t * k + j]).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9, "{i} {j} {v}");
            }
        }
        let inv = invert_upper(&m, k);
        assert!(inv.iter().zip(&u).all(|(a, b)| (a - b).abs() < 1e-9));
        let bad = vec![1.0, 2.0, 2.0, 1.0];
        assert_eq!(reverse_cholesky_upper(bad, 2, false, Par::Seq), Err(0));
    }

    #[test]
    fn products_through_strided_views() {
        for &(m, kk, n) in &[(64usize, 600usize, 70usize), (5, 5, 7), (7, 3, 5), (70, 7, 64)] {
            let ls = m.max(n) + 3;
            let x: Vec<f64> = (0..kk * ls).map(|i| ((i * 7919) % 13) as f64 - 6.0).collect();
            let stride = n + 2;
            let mut d = vec![0.5f64; m * stride];
            gemm_add(view_mut(&mut d, m, n, stride), view(&x, kk, m, ls).transpose(), view(&x, kk, n, ls), 2.0);
            for i in 0..m {
                for j in 0..stride {
                    let want = if j < n { 0.5 + 2.0 * (0..kk).map(|t| x[t * ls + i] * x[t * ls + j]).sum::<f64>() } else { 0.5 };
                    assert_eq!(d[i * stride + j], want, "{m}x{kk}x{n} at {i},{j}");
                }
            }
        }
    }

    #[test]
    fn reverse_cholesky_does_not_depend_on_the_thread_count() {
        let k = 1100;
        let b: Vec<f64> = (0..k * k).map(|i| (((i * 2654435761usize) % 1000) as f64 - 500.0) / 300.0).collect();
        let mut h = vec![0f64; k * k];
        gemm_add(view_mut(&mut h, k, k, k), view(&b, k, k, k).transpose(), view(&b, k, k, k), 1.0);
        (0..k).for_each(|i| h[i * k + i] += 1.0);
        for invert in [false, true] {
            let one = reverse_cholesky_upper(h.clone(), k, invert, Par::Seq).unwrap();
            for t in [2usize, 3, 4] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
                let u = pool.install(|| reverse_cholesky_upper(h.clone(), k, invert, par()).unwrap());
                assert!(u.iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()), "{t} threads, invert {invert}");
            }
        }
    }
}
