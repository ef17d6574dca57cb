use super::*;
use crate::stop::NEVER;

#[test]
fn candidates_follow_the_rule() {
    let counts = vec![1u64; 16];
    let c = candidates(&counts);
    // Uniform mass: equal widths on both sides, and a tie trims the right.
    assert_eq!(c, (4..15).rev().map(|r| (0, r)).collect::<Vec<_>>());
    assert_eq!(candidates(&[5, 5]), vec![(0, 1)]);
    // The left walk takes the bin that reaches `step`; then the sparser left side is trimmed.
    let mut sparse = vec![0u64; 16];
    sparse[3] = 10;
    sparse[15] = 1;
    assert_eq!(candidates(&sparse), vec![(4, 15), (15, 15)]);
}

#[test]
fn loss_zero_for_exact_fit_and_positive_otherwise() {
    // 4 bins into 4 destination bins: each source bin is one destination bin, loss = sum rho*w^3/12.
    let rho = densities(&[2u64, 0, 0, 2], 1.0);
    let l = loss(&rho, 1.0, 0, 3, 4);
    assert!((l - 4.0 / 12.0).abs() < 1e-12);
    assert!(loss(&rho, 1.0, 1, 2, 4) > l);
    assert_eq!(loss(&rho, 1e-12, 0, 3, 4), 0.0);
}

#[test]
fn search_on_gaussian_like_clips_outliers() {
    let mut counts = vec![0u64; 256];
    for (k, c) in counts.iter_mut().enumerate() {
        let t = (k as f64 - 128.0) / 16.0;
        *c = (1000.0 * (-t * t / 2.0).exp()) as u64;
    }
    counts[0] = 1;
    counts[255] = 1;
    let h = Histogram::from_parts(counts, -8.0, 8.0).unwrap();
    let s = search(&h, 4, false, false, &NEVER).unwrap();
    // A one-count bin at the far left always wins the tie-break of the trimming rule, so only the right
    // tail is trimmed (AMCT behaves the same).
    assert!(s.clip_max < 8.0 && s.left == 0);
    assert!(s.clip_min <= 0.0 && s.clip_max >= 0.0);
    // The refinement also trims the lone left outlier, and only ever lowers the loss.
    let r = search(&h, 4, false, true, &NEVER).unwrap();
    assert!(r.refined && r.left > 0 && r.loss < s.loss && r.index == s.index);
    let sym = search(&h, 8, true, true, &NEVER).unwrap();
    assert_eq!(sym.qparams.zero_point, 0);
    assert!(search(&h, 1, true, true, &NEVER).is_err());
    let empty = Histogram::with_range(0.0, 1.0, 8).unwrap();
    assert!(matches!(search(&empty, 8, true, true, &NEVER), Err(QuantError::EmptyInput { .. })));
}

#[test]
fn constant_histogram() {
    let h = Histogram::build(&[3.0; 5], 64, false).unwrap();
    let s = search(&h, 8, false, true, &NEVER).unwrap();
    assert_eq!(s.index, 0);
    assert_eq!(s.loss, 0.0);
    assert!(!s.refined);
}

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Histograms of many shapes: dense bells, heavy tails, sparse spikes, one bin, big counts.
fn corpus() -> Vec<(Vec<u64>, f32, f32)> {
    let mut rng = Lcg(3);
    let mut out = vec![];
    for n in [16usize, 64, 256, 1024, 4096] {
        let bell: Vec<u64> = (0..n).map(|k| {
            let t = (k as f64 - n as f64 * 0.4) / (n as f64 / 9.0);
            (5000.0 * (-t * t / 2.0).exp()) as u64
        }).collect();
        out.push((bell, -3.0, 5.0));
        let tail: Vec<u64> = (0..n).map(|k| (1e6 / (1.0 + k as f64).powi(3)) as u64).collect();
        out.push((tail, 0.0, 40.0));
        let mut sparse = vec![0u64; n];
        for _ in 0..5 {
            sparse[(rng.next() as usize) % n] += 1 + rng.next() % 1000;
        }
        out.push((sparse, -1.0, 1.0));
        let mut one = vec![0u64; n];
        one[(rng.next() as usize) % n] = 77;
        out.push((one, -2.0, 2.0));
        let mut spikes = vec![0u64; n];
        (spikes[1], spikes[n - 2]) = (1 << 40, 3);
        out.push((spikes, -1e-3, 2e-3));
        let noisy: Vec<u64> = (0..n).map(|_| rng.next() % 50).collect();
        out.push((noisy, -7.0, 0.5));
        let huge: Vec<u64> = (0..n).map(|k| (u64::MAX / (4 * n as u64)) / (1 + k as u64 % 7)).collect();
        out.push((huge, -1.0, 1.0));
    }
    out
}

#[test]
fn fast_losses_match_direct_losses() {
    for (counts, lo, hi) in corpus() {
        let h = Histogram::from_parts(counts, lo, hi).unwrap();
        let w = h.grid().width;
        let rho = densities(h.counts(), w);
        for bits in [2u32, 4, 8] {
            let Some(f) = FastLoss::new(h.counts(), w, bits) else { continue };
            let n = h.nbins();
            let mut pairs = candidates(h.counts());
            pairs.extend([(0, n - 1), (n / 3, n / 3), (1, n - 2), (n / 5, 4 * n / 5)]);
            for (l, r) in pairs {
                let (a, b) = (f.loss(l, r), loss(&rho, w, l, r, 1 << bits));
                assert!((a - b).abs() <= 1e-12 * b.abs(), "n={n} bits={bits} ({l},{r}): fast {a} direct {b}");
            }
        }
    }
}

#[test]
fn wide_moments_agree_with_narrow_ones() {
    // u64 group moments where they fit, u128 where they do not: the same value either way.
    let mut c = vec![0u64; 512];
    for (k, v) in c.iter_mut().enumerate() {
        *v = 1 + (k as u64 * 7919) % 1000;
    }
    let narrow = FastLoss::new(&c, 0.01, 4).unwrap();
    assert!(narrow.narrow());
    let big: Vec<u64> = c.iter().map(|&v| v << 40).collect();
    let wide = FastLoss::new(&big, 0.01, 4).unwrap();
    assert!(!wide.narrow());
    let scale = (1u64 << 40) as f64;
    for (l, r) in [(0, 511), (10, 300), (100, 101)] {
        let (a, b) = (narrow.loss(l, r) * scale, wide.loss(l, r));
        assert!((a - b).abs() <= 1e-13 * b, "({l},{r}): {a} vs {b}");
    }
}

#[test]
fn fast_search_is_the_direct_search() {
    for (counts, lo, hi) in corpus() {
        let h = Histogram::from_parts(counts, lo, hi).unwrap();
        for bits in [2u32, 4, 8, 16] {
            for refine in [false, true] {
                let s = search(&h, bits, false, refine, &NEVER).unwrap();
                let d = search_direct(&h, bits, refine);
                assert_eq!((s.index, s.left, s.right, s.loss, s.refined), d, "n={} bits={bits}", h.nbins());
            }
        }
    }
}

#[test]
fn stop_interrupts_the_search() {
    let h = Histogram::from_parts((0..4096u64).map(|k| 1 + k % 13).collect(), -1.0, 1.0).unwrap();
    let stop = crate::stop::Stop::new();
    stop.request();
    assert!(matches!(search(&h, 8, false, true, &stop), Err(QuantError::Interrupted)));
    let reqs = [Request { hist: &h, bits: 8, symmetric: false, refine: true }; 3];
    let many = search_many(&reqs, &NEVER);
    let one = search(&h, 8, false, true, &NEVER).unwrap();
    assert!(many.iter().all(|r| r.as_ref().ok() == Some(&one)));
}

#[test]
fn floors_lie_below_losses_and_pruning_keeps_the_winner() {
    // The tails-only bound is at or below every fast loss, bit for bit, and the pruned argmin (candidates in
    // order of their bound, stopped once the bound clears the best loss) is the argmin of all the scores: on
    // AMCT's candidates and on the lists of a refinement scan (one bound fixed, the other over every bin).
    for (counts, lo, hi) in corpus() {
        let h = Histogram::from_parts(counts, lo, hi).unwrap();
        let w = h.grid().width;
        let n = h.nbins();
        for bits in [2u32, 4, 8] {
            let rk = Ranker::new(&h, bits, &NEVER);
            let Some(f) = FastLoss::new(h.counts(), w, bits) else { continue };
            let mut lists = vec![candidates(h.counts())];
            lists.push((0..n).map(|r| (0, r)).collect());
            lists.push((0..n).map(|l| (l, n - 1)).collect());
            lists.push((n / 3..n).map(|r| (n / 3, r)).collect());
            for pairs in lists {
                for &(l, r) in &pairs {
                    assert!(f.floor(l, r) <= f.loss(l, r), "n={n} bits={bits} ({l},{r})");
                }
                let all = rk.argmin(&rk.score(&pairs).unwrap()).map(|(i, s)| (i, s.pair));
                let pruned = rk.argmin_of(&pairs).unwrap().map(|(i, s)| (i, s.pair));
                assert_eq!(pruned, all, "n={n} bits={bits}");
            }
        }
    }
}
