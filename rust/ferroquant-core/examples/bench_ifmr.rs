//! Exact IFMR on stored samples: the whole search (`ifmr::ifmr`: percentiles, then the candidates' losses from
//! per-interval sums), and the percentiles alone, in nanoseconds per stored value; the best of several rounds.
//! Without arguments the data is synthetic (a ReLU of a Student-t, heavy right tail); with arguments, each is a
//! file of little-endian float32 samples named `<anything>_<zeros>.bin` (the zeros a calibrator counted beside
//! them), for example dumped from `IFMRCalibrator._samples()`.
//!
//!     cargo run --release -p ferroquant-core --example bench_ifmr [-- files...]

use std::time::Instant;

use ferroquant_core::ifmr::{ifmr, percentile_init, IfmrOptions};
use ferroquant_core::stop::NEVER;

fn synthetic(n: usize) -> Vec<f32> {
    let mut s = 7u64;
    let mut next = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .filter_map(|_| {
            // Student-t with 3 degrees of freedom: a normal over the root of a chi-square / 3
            let z = (-2.0 * next().ln()).sqrt() * (2.0 * std::f64::consts::PI * next()).cos();
            let c: f64 = (0..3).map(|_| (-2.0 * next().ln()).sqrt() * (2.0 * std::f64::consts::PI * next()).cos()).map(|g| g * g).sum();
            let t = z / (c / 3.0).sqrt();
            (t > 0.0).then_some(t as f32)
        })
        .collect()
}

fn load(path: &str) -> (Vec<f32>, usize) {
    let bytes = std::fs::read(path).expect("readable file");
    let zeros = path.trim_end_matches(".bin").rsplit('_').next().and_then(|z| z.parse().ok()).unwrap_or(0);
    (bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(), zeros)
}

fn best<F: FnMut()>(rounds: usize, mut f: F) -> f64 {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sets: Vec<(String, Vec<f32>, usize)> = if args.is_empty() {
        vec![("relu(t3), synthetic".into(), synthetic(4_000_000), 2_000_000)]
    } else {
        args.iter().map(|p| {
            let (x, z) = load(p);
            (p.clone(), x, z)
        }).collect()
    };
    let o = IfmrOptions::default();
    println!("{:<40} {:>12} {:>14} {:>16} {:>8}", "data", "values", "ifmr ns/value", "percentiles ns/v", "index");
    for (name, x, zeros) in &sets {
        let mut r = None;
        let whole = best(3, || r = Some(ifmr(x, *zeros, &o, &NEVER).expect("ifmr")));
        let pct = best(3, || {
            percentile_init(x, *zeros, o.max_percentile, o.min_percentile).expect("percentiles");
        });
        let n = x.len() as f64;
        let r = r.expect("one round");
        println!("{:<40} {:>12} {:>14.3} {:>16.3} {:>8} {:e}", name, x.len(), whole / n * 1e9, pct / n * 1e9, r.index, r.loss);
    }
}
