//! Parallel helpers. Work is split into fixed-size chunks whatever the thread count, and partial results are
//! combined in chunk order, so a run on one thread and a run on many give the same bits (spec decision 9).

use rayon::prelude::*;

/// Below this many elements a kernel runs on the calling thread.
pub const PAR_THRESHOLD: usize = 1 << 16;
/// Chunk length for element-wise and reduction work.
pub const CHUNK: usize = 1 << 15;

/// Map fixed chunks of `x` (in parallel when large) and return the per-chunk results in order.
pub fn map_chunks<T, R, F>(x: &[T], chunk: usize, f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(usize, &[T]) -> R + Sync + Send,
{
    let chunk = chunk.max(1);
    if x.len() < PAR_THRESHOLD {
        x.chunks(chunk).enumerate().map(|(i, c)| f(i * chunk, c)).collect()
    } else {
        x.par_chunks(chunk).enumerate().map(|(i, c)| f(i * chunk, c)).collect()
    }
}

/// Zip fixed chunks of an input and an output of the same length (in parallel when large) and return the
/// per-chunk results in order.
pub fn zip_chunks_mut<T, U, R, F>(x: &[T], out: &mut [U], chunk: usize, f: F) -> Vec<R>
where
    T: Sync,
    U: Send,
    R: Send,
    F: Fn(usize, &[T], &mut [U]) -> R + Sync + Send,
{
    let chunk = chunk.max(1);
    if x.len() < PAR_THRESHOLD {
        x.chunks(chunk)
            .zip(out.chunks_mut(chunk))
            .enumerate()
            .map(|(i, (a, b))| f(i * chunk, a, b))
            .collect()
    } else {
        x.par_chunks(chunk)
            .zip(out.par_chunks_mut(chunk))
            .enumerate()
            .map(|(i, (a, b))| f(i * chunk, a, b))
            .collect()
    }
}

/// First non-finite value in `x` as `(index, value)`, scanning in parallel when large.
pub fn first_non_finite(x: &[f32]) -> Option<(usize, f32)> {
    map_chunks(x, CHUNK, |start, c| {
        c.iter().position(|v| !v.is_finite()).map(|i| (start + i, c[i]))
    })
    .into_iter()
    .flatten()
    .next()
}
