//! HFMG search: the prefix-sum ranking (`hfmg::search`) against the direct summation it replaced
//! (`hfmg::search_direct`, the algorithm before), on the same 4096-bin histograms in the same run,
//! interleaved; the best of several repeats of each (the machines are shared, so minima are the stable
//! statistic). Both return the same candidate, bounds and loss (checked here too).
//!
//!     cargo run --release -p ferroquant-core --example bench_hfmg [-- repeats]

use std::time::Instant;

use ferroquant_core::histogram::{hfmg, Histogram};
use ferroquant_core::stop::NEVER;

struct Lcg(u64);

impl Lcg {
    /// Uniform in (0, 1).
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.next(), self.next());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn data(kind: &str, n: usize) -> Vec<f32> {
    let mut g = Lcg(7);
    (0..n)
        .map(|_| match kind {
            "gaussian" => g.normal() as f32,
            "laplace" => {
                let u = g.next() - 0.5;
                (-u.signum() * (1.0 - 2.0 * u.abs()).ln()) as f32
            }
            "uniform" => (2.0 * g.next() - 1.0) as f32,
            // ReLU of a Student-t with 3 degrees of freedom: a heavy right tail
            _ => {
                let z = g.normal();
                let chi: f64 = (0..3).map(|_| g.normal().powi(2)).sum();
                (z / (chi / 3.0).sqrt()).max(0.0) as f32
            }
        })
        .collect()
}

fn best_of(repeats: usize, mut f: impl FnMut()) -> f64 {
    (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let repeats: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    println!("threads {}, 4M samples per histogram, 4096 bins, 8 bits; best of {repeats}", rayon::current_num_threads());
    println!("| histogram | candidates | refine | direct ms | prefix sums ms | speed-up |");
    println!("|---|---|---|---|---|---|");
    for kind in ["gaussian", "laplace", "uniform", "relu_t"] {
        let h = Histogram::build(&data(kind, 4_000_000), 4096, false).expect("histogram");
        let cands = hfmg::candidates(h.counts()).len();
        for refine in [false, true] {
            let s = hfmg::search(&h, 8, false, refine, &NEVER).expect("search");
            let d = hfmg::search_direct(&h, 8, refine);
            assert_eq!((s.index, s.left, s.right, s.loss, s.refined), d, "{kind}: results differ");
            let (mut td, mut tf) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..repeats {
                td = td.min(best_of(1, || { std::hint::black_box(hfmg::search_direct(&h, 8, refine)); }));
                tf = tf.min(best_of(1, || { let _ = std::hint::black_box(hfmg::search(&h, 8, false, refine, &NEVER)); }));
            }
            println!("| {kind} | {cands} | {refine} | {:.2} | {:.3} | {:.1}x |", td * 1e3, tf * 1e3, td / tf);
        }
    }
}
