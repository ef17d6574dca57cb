use super::*;
use crate::stop::NEVER;

fn amct() -> IfmrOptions {
    IfmrOptions { search_extend: false, ..IfmrOptions::default() }
}

/// Deterministic pseudo-random values in [0, 1).
fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32) / (1u64 << 24) as f32
        })
        .collect()
}

/// ReLU'd heavy-tailed data: Pareto(alpha = 3) tails like Student-t with 3 degrees of freedom, half zeroed.
fn heavy(n: usize) -> Vec<f32> {
    let u = uniform(n, 7);
    u.iter()
        .enumerate()
        .map(|(i, &v)| if i % 2 == 0 { 0.0 } else { (v + 1e-7).powf(-1.0 / 3.0) - 1.0 })
        .collect()
}

#[test]
fn default_window_has_61_candidates() {
    assert_eq!(IfmrOptions::default().count(), 61);
    let r = ifmr(&[0.5, -1.0, 2.0], 0, &amct(), &NEVER).unwrap();
    assert_eq!(r.candidates, 61);
    assert_eq!(r.extension, 0);
}

#[test]
fn all_zero_gives_scale_one() {
    let r = ifmr(&[0.0; 100], 0, &amct(), &NEVER).unwrap();
    assert_eq!((r.scale, r.zero_point, r.index), (1.0, -128, 0));
    let sym = IfmrOptions { symmetric: true, ..amct() };
    let r = ifmr(&[0.0; 100], 0, &sym, &NEVER).unwrap();
    assert_eq!((r.scale, r.zero_point), (1.0, 0));
}

#[test]
fn constant_is_reproduced() {
    let r = ifmr(&[3.0; 1000], 0, &amct(), &NEVER).unwrap();
    assert_eq!(r.zero_point, -128);
    let back = ((3.0f32 / r.scale).round_ties_even()) * r.scale;
    assert!((back - 3.0).abs() < 1e-5, "{back}");
    assert!((r.ratio - 1.0).abs() < 1e-9);
}

#[test]
fn negative_only_searches_the_lower_bound() {
    let x: Vec<f32> = heavy(20_000).iter().map(|v| -v).collect();
    let r = ifmr(&x, 0, &IfmrOptions::default(), &NEVER).unwrap();
    assert_eq!(r.bound, Bound::Min);
    assert_eq!(r.zero_point, 127);
    assert!(r.ratio < 1.0);
    let fixed = search_from(&RunLoss { x: &x, zeros: 0, stop: &NEVER }, 0.0, r.min_init, &IfmrOptions { search_start: 1.0, search_end: 1.01, search_step: 0.01, search_extend: false, ..amct() }).unwrap();
    assert!(r.loss < fixed.loss);
}

#[test]
fn extension_beats_the_window_on_heavy_tails() {
    // 4 bits, a bulk in [0, 1) and a few outliers at 10: the best clip is far below 0.7 x max.
    let mut x = uniform(100_000, 5);
    x[..5].iter_mut().for_each(|v| *v = 10.0);
    let a = ifmr(&x, 0, &IfmrOptions { bits: 4, ..amct() }, &NEVER).unwrap();
    assert_eq!(a.index, 0);
    let e = ifmr(&x, 0, &IfmrOptions { bits: 4, ..IfmrOptions::default() }, &NEVER).unwrap();
    assert!(e.extension < 0, "{e:?}");
    assert!(e.ratio < 0.7 && e.loss < a.loss);
    assert!(e.candidates > 61);
}

#[test]
fn two_d_is_no_worse_than_one_d() {
    let u = uniform(5_000, 3);
    let x: Vec<f32> = u.iter().map(|&v| (v - 0.3).powi(3) * 10.0).collect();
    let one = ifmr(&x, 0, &amct(), &NEVER).unwrap();
    let o2 = IfmrOptions { search_2d: true, search_step: 0.05, ..amct() };
    let two = ifmr(&x, 0, &o2, &NEVER).unwrap();
    assert_eq!(two.candidates, 13 * 13);
    assert!(two.ratio_min.is_some());
    let one_coarse = ifmr(&x, 0, &IfmrOptions { search_step: 0.05, ..amct() }, &NEVER).unwrap();
    assert!(two.loss <= one_coarse.loss);
    assert!(one.loss > 0.0);
}

#[test]
fn symmetric_uses_128_for_negative_dominant() {
    let r = ifmr(&[-4.0, 1.0], 0, &IfmrOptions { symmetric: true, ..amct() }, &NEVER).unwrap();
    assert_eq!(r.zero_point, 0);
    assert_eq!(r.scale, (r.ratio * 4.0) as f32 / 128.0);
}

#[test]
fn options_are_validated() {
    let d = IfmrOptions::default();
    let name = |o: IfmrOptions| match ifmr(&[1.0], 0, &o, &NEVER) {
        Err(QuantError::InvalidParameter { name, .. }) => name,
        other => panic!("{other:?}"),
    };
    assert_eq!(name(IfmrOptions { max_percentile: 0.5, ..d }), "max_percentile");
    assert_eq!(name(IfmrOptions { min_percentile: f64::NAN, ..d }), "min_percentile");
    assert_eq!(name(IfmrOptions { search_start: 0.0, ..d }), "search_start");
    assert_eq!(name(IfmrOptions { search_end: 0.7, ..d }), "search_end");
    assert_eq!(name(IfmrOptions { search_step: 0.7, ..d }), "search_step");
    assert_eq!(name(IfmrOptions { search_step: 1e-9, ..d }), "search_step");
    assert_eq!(name(IfmrOptions { search_2d: true, symmetric: true, ..d }), "search_2d");
    assert!(matches!(ifmr(&[1.0], 0, &IfmrOptions { bits: 1, ..d }, &NEVER), Err(QuantError::InvalidBits { .. })));
    assert!(matches!(ifmr(&[], 0, &d, &NEVER), Err(QuantError::EmptyInput { .. })));
    assert!(matches!(ifmr(&[f32::NAN], 0, &d, &NEVER), Err(QuantError::NonFinite { .. })));
}

#[test]
fn histogram_mode_runs_without_data() {
    let x = heavy(50_000);
    let hi = x.iter().cloned().fold(0.0, f32::max);
    let mut counts = vec![0u64; 128];
    for &v in &x {
        counts[((v / hi * 128.0) as usize).min(127)] += 1;
    }
    let r = ifmr_histogram(&counts, 0.0, hi, None, &IfmrOptions::default(), &NEVER).unwrap();
    assert!(r.scale > 0.0 && r.max_init <= hi);
    let d = ifmr_histogram(&counts, 0.0, hi, Some(&x), &IfmrOptions::default(), &NEVER).unwrap();
    assert_eq!(d.max_init, r.max_init);
}

#[test]
fn zeros_left_out_give_the_same_result() {
    // A ReLU output: a third zeros, the rest spread; with and without the zeros stored.
    let full: Vec<f32> = (0..300_000).map(|i| if i % 3 == 0 { 0.0 } else { ((i * 7919) % 10007) as f32 * 1e-3 }).collect();
    let nz: Vec<f32> = full.iter().copied().filter(|&v| v != 0.0).collect();
    for o in [amct(), IfmrOptions::default(), IfmrOptions { symmetric: true, ..amct() }] {
        let a = ifmr(&full, 0, &o, &NEVER).unwrap();
        let b = ifmr(&nz, full.len() - nz.len(), &o, &NEVER).unwrap();
        assert_eq!((a.scale, a.zero_point, a.clip_min, a.clip_max, a.index), (b.scale, b.zero_point, b.clip_min, b.clip_max, b.index));
        // The zeros fall in an interval whose sums are taken about its reference value: the same loss up to
        // f64 rounding.
        assert!((a.loss - b.loss).abs() <= 1e-10 * a.loss, "{} vs {}", a.loss, b.loss);
    }
    let all_zero = ifmr(&[], 50, &amct(), &NEVER).unwrap();
    let stored = ifmr(&[0.0; 50], 0, &amct(), &NEVER).unwrap();
    assert_eq!((all_zero.scale, all_zero.zero_point), (stored.scale, stored.zero_point));
    assert!(ifmr(&[], 0, &amct(), &NEVER).is_err());
}
