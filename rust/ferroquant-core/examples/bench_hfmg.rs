//! HFMG search: the prefix-sum ranking (`hfmg::search`) against the direct summation it replaced
//! (`hfmg::search_direct`, the algorithm before), on the same 4096-bin histograms in the same run,
//! interleaved; the best of several rounds of each (every round a batch of calls of about 100 ms), in wall time
//! and in CPU time (summed over the process's threads, from Linux's /proc/self/task/*/schedstat: what other
//! load on a shared machine does not change).
//! Both return the same candidate, bounds and loss (checked here too).
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

/// CPU time of every thread of this process, in seconds (0 where /proc is not there).
fn cpu_s() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum();
    ns as f64 * 1e-9
}

/// Wall and CPU time per call of `k` calls in a row.
fn timed(k: usize, mut f: impl FnMut()) -> (f64, f64) {
    let (t, c) = (Instant::now(), cpu_s());
    for _ in 0..k {
        f();
    }
    (t.elapsed().as_secs_f64() / k as f64, (cpu_s() - c) / k as f64)
}

/// Calls per timed batch so that a batch takes about 100 ms (CPU time advances at scheduler ticks).
fn batch(f: impl FnMut()) -> usize {
    let (wall, _) = timed(1, f);
    ((0.1 / wall.max(1e-6)) as usize).clamp(1, 10_000)
}

fn main() {
    let repeats: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    println!("threads {}, 4M samples per histogram, 4096 bins, 8 bits; per call, best of {repeats} rounds", rayon::current_num_threads());
    println!("| histogram | candidates | refine | direct ms | prefix sums ms | speed-up | direct CPU ms | prefix sums CPU ms | CPU speed-up |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for kind in ["gaussian", "laplace", "uniform", "relu_t"] {
        let h = Histogram::build(&data(kind, 4_000_000), 4096, false).expect("histogram");
        let cands = hfmg::candidates(h.counts()).len();
        for refine in [false, true] {
            let s = hfmg::search(&h, 8, false, refine, &NEVER).expect("search");
            let d = hfmg::search_direct(&h, 8, refine);
            assert_eq!((s.index, s.left, s.right, s.loss, s.refined), d, "{kind}: results differ");
            let direct = || {
                std::hint::black_box(hfmg::search_direct(&h, 8, refine));
            };
            let fast = || {
                let _ = std::hint::black_box(hfmg::search(&h, 8, false, refine, &NEVER));
            };
            let (kd, kf) = (batch(direct), batch(fast));
            let (mut d, mut f) = ((f64::INFINITY, f64::INFINITY), (f64::INFINITY, f64::INFINITY));
            for _ in 0..repeats {
                let t = timed(kd, direct);
                d = (d.0.min(t.0), d.1.min(t.1));
                let t = timed(kf, fast);
                f = (f.0.min(t.0), f.1.min(t.1));
            }
            println!(
                "| {kind} | {cands} | {refine} | {:.2} | {:.3} | {:.1}x | {:.2} | {:.3} | {:.1}x |",
                d.0 * 1e3,
                f.0 * 1e3,
                d.0 / f.0,
                d.1 * 1e3,
                f.1 * 1e3,
                d.1 / f.1
            );
        }
    }
}
