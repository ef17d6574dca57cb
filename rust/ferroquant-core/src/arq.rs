//! ARQ (spec §1): min/max weight quantization, per channel or per tensor, symmetric (127/128 rule) or with an
//! offset. No search: the "adaptive" part is the symmetric rule alone.

use crate::affine::{fake_quant, quantize, ChannelGrids, Code};
use crate::error::Result;
use crate::layout::ChannelLayout;
use crate::qparams::{from_data, QParams};
use crate::scheme::Scheme;

/// Quantize weights `w` with one (scale, zero point) per channel of `layout` (use
/// `ChannelLayout::per_tensor` for a single one). Writes the integer codes and the fake-quantized weights and
/// returns the qparams.
pub fn arq<T: Code>(
    w: &[f32],
    layout: &ChannelLayout,
    scheme: &Scheme,
    codes: &mut [T],
    fake: &mut [f32],
) -> Result<Vec<QParams>> {
    let qp = from_data(w, layout, scheme)?;
    let (scales, zps): (Vec<f32>, Vec<i32>) = qp.iter().map(|p| (p.scale, p.zero_point)).unzip();
    let grids = ChannelGrids::new(layout, &scales, &zps, scheme)?;
    quantize(w, &grids, codes)?;
    fake_quant(w, &grids, fake)?;
    Ok(qp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_extremes_map_to_127_and_minus_128() {
        let w = [1.0f32, -0.5, 0.25, -2.0, 1.0, 0.5];
        let l = ChannelLayout::along(&[2, 3], 0).unwrap();
        let s = Scheme::new(8, true).unwrap();
        let mut q = [0i8; 6];
        let mut f = [0f32; 6];
        let qp = arq(&w, &l, &s, &mut q, &mut f).unwrap();
        assert_eq!(qp[0].scale, 1.0 / 127.0);
        assert_eq!(qp[1].scale, 2.0 / 128.0);
        assert_eq!(q[0], 127);
        assert_eq!(q[3], -128);
        assert_eq!(f[3], -2.0);
    }

    #[test]
    fn all_zero_channel_gets_scale_one() {
        let w = [0.0f32; 8];
        let l = ChannelLayout::along(&[2, 4], 0).unwrap();
        let s = Scheme::new(4, true).unwrap();
        let (mut q, mut f) = ([0i8; 8], [1f32; 8]);
        let qp = arq(&w, &l, &s, &mut q, &mut f).unwrap();
        assert!(qp.iter().all(|p| p.scale == 1.0 && p.zero_point == 0));
        assert!(q.iter().all(|&c| c == 0) && f.iter().all(|&v| v == 0.0));
    }
}
