//! How a flat, C-ordered buffer splits into channels along one axis: `[outer, channels, inner]`.

use crate::error::{QuantError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLayout {
    pub outer: usize,
    pub channels: usize,
    pub inner: usize,
}

impl ChannelLayout {
    /// One channel covering the whole buffer.
    pub fn per_tensor(len: usize) -> Self {
        Self { outer: 1, channels: 1, inner: len }
    }

    /// Channels along `axis` of `shape` (negative axes count from the end, as in NumPy).
    pub fn along(shape: &[usize], axis: isize) -> Result<Self> {
        let ndim = shape.len();
        let a = if axis < 0 { axis + ndim as isize } else { axis };
        if ndim == 0 || a < 0 || a as usize >= ndim {
            return Err(QuantError::InvalidAxis { axis, ndim });
        }
        let a = a as usize;
        Ok(Self {
            outer: shape[..a].iter().product(),
            channels: shape[a],
            inner: shape[a + 1..].iter().product(),
        })
    }

    pub fn len(&self) -> usize {
        self.outer * self.channels * self.inner
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Channel of the element at flat index `i`.
    #[inline]
    pub fn channel_of(&self, i: usize) -> usize {
        (i / self.inner.max(1)) % self.channels.max(1)
    }

    /// Call `f(offset, run_len, channel)` for each maximal run of one channel inside `[start, start+len)`;
    /// offsets are relative to `start`.
    #[inline]
    pub fn for_each_run(&self, start: usize, len: usize, mut f: impl FnMut(usize, usize, usize)) {
        if self.channels <= 1 {
            if len > 0 {
                f(0, len, 0);
            }
            return;
        }
        let inner = self.inner.max(1);
        let mut pos = start;
        let end = start + len;
        while pos < end {
            let row = pos / inner;
            let row_end = ((row + 1) * inner).min(end);
            f(pos - start, row_end - pos, row % self.channels);
            pos = row_end;
        }
    }

    pub fn check_len(&self, what: &'static str, got: usize) -> Result<()> {
        if got == self.len() {
            Ok(())
        } else {
            Err(QuantError::ShapeMismatch { what, expected: self.len(), got })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn along_axis() {
        let l = ChannelLayout::along(&[2, 3, 4], 1).unwrap();
        assert_eq!((l.outer, l.channels, l.inner), (2, 3, 4));
        let l = ChannelLayout::along(&[2, 3, 4], -1).unwrap();
        assert_eq!((l.outer, l.channels, l.inner), (6, 4, 1));
        assert!(ChannelLayout::along(&[2, 3], 2).is_err());
        assert!(ChannelLayout::along(&[2, 3], -3).is_err());
    }

    #[test]
    fn runs_cover_every_index_once() {
        let l = ChannelLayout::along(&[2, 3, 4], 1).unwrap();
        let mut seen = vec![usize::MAX; 24];
        l.for_each_run(5, 13, |off, n, c| {
            for i in off..off + n {
                seen[5 + i] = c;
            }
        });
        for (i, &c) in seen.iter().enumerate().take(18).skip(5) {
            assert_eq!(c, l.channel_of(i));
        }
    }
}
