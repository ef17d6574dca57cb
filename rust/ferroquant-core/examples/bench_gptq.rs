//! GPTQ's steps timed apart on a 4096 x 4096 layer: the factorization (`reverse_cholesky_upper`, without and with
//! the triangular inverse that `act_order` needs) and the whole `gptq` call, with and without `act_order`.
//!
//!     cargo run --release -p ferroquant-core --example bench_gptq [-- k]

use std::time::Instant;

use ferroquant_core::gptq::{gptq, GptqOptions};
use ferroquant_core::groupwise::{GroupSpec, MatShape};
use ferroquant_core::linalg::{par, reverse_cholesky_upper};

fn main() {
    let k: usize = std::env::args().nth(1).map(|a| a.parse().unwrap()).unwrap_or(4096);
    let mut seed = 1u64;
    let mut next = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
    };
    let rows = 2 * k;
    let x: Vec<f64> = (0..rows * k).map(|_| next()).collect();
    let mut h = vec![0f64; k * k];
    for r in x.chunks(k) {
        for i in 0..k {
            let a = r[i];
            for j in 0..k {
                h[i * k + j] += a * r[j];
            }
        }
    }
    for i in 0..k {
        h[i * k + i] += 0.01 * rows as f64 / 12.0;
    }
    let w: Vec<f32> = (0..k * k).map(|_| next() as f32).collect();
    for round in 0..2 {
        for invert in [false, true] {
            let t = Instant::now();
            let m = reverse_cholesky_upper(h.clone(), k, invert, par()).unwrap();
            println!("round {round}: factor{} {:.3} s ({})", if invert { " + inverse" } else { "" }, t.elapsed().as_secs_f64(), m[1]);
        }
        for act_order in [false, true] {
            let o = GptqOptions { spec: GroupSpec::new(4, 128, false, false).unwrap(), percdamp: 0.01, block_size: 128, act_order };
            let t = Instant::now();
            let r = gptq(&w, MatShape { k, n: k }, &h, &o).unwrap();
            println!("round {round}: gptq act_order={act_order} {:.3} s ({})", t.elapsed().as_secs_f64(), r.quant.codes[7]);
        }
    }
}
