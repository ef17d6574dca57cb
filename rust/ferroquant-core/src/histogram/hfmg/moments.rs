//! The HFMG loss of a candidate from prefix sums (spec §4.3), in O(2^bits) instead of O(nbins).
//!
//! The loss is `w^2 * U` with `U` in units of source bins: the in-bin density model of `hfmg::loss` (uniform
//! mass `c_k` over `[k, k+1)`) integrated against the squared distance to the centre of the destination bin
//! each point falls in. Source bins are grouped by destination bin:
//!
//! - bins left of `l` (right of `r`) all go to the first (last) destination bin: with the exact integer
//!   moments `M_p = sum c_k t^p` of the tail about its inner end (`t = l-1-k`, or `k-r-1`),
//!   `sum c_k ((t + e)^2 + 1/12) = M2 + 2e M1 + e^2 M0 + M0/12`, `e = 1/2 + N/(2 dst)`;
//! - bins wholly inside destination bin `j`: the same with the moments about the bin `a` holding the centre,
//!   `T2 + 2d T1 + d^2 T0 + T0/12`, `|d| <= 1/2`, from prefix sums of `c`, `c k`, `c k^2`;
//! - a bin cut by destination boundaries: each piece `c ((v - g)^3 - (u - g)^3) / 3` directly.
//!
//! Per destination bin `j` the sum is `group + (left piece + right piece) / 3` (the cubes summed before the
//! division; `1/3` and `1/12` are multiplications by the f64 constants), added to the tails in `j` order.
//!
//! Every boundary, centre and offset is an exact rational with denominator `2 dst` (a power of two), so the
//! only roundings are the conversions of exact integers to f64 and a few well-conditioned operations: the
//! result is within a few ulps of the exact loss. The integer moments are exact: u128 prefix sums, and the
//! per-group differences in wrapping u64 when every group's moments fit (`total * (nbins/dst + 1)^2 < 2^62`,
//! the common case), else in u128. The NumPy twin (`reference/hfmg.py`) does the same operations in the same
//! order and gets the same bits.

use super::degenerate;

/// Wrapping integer arithmetic of the group moments: u64 (when every value is below 2^63) or u128.
trait Word: Copy + PartialEq {
    fn lo(p: &Prefix) -> [Self; 3];
    fn of(v: usize) -> Self;
    fn sub(self, o: Self) -> Self;
    fn add(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn unsigned(self) -> f64;
    fn signed(self) -> f64;
}

impl Word for u64 {
    #[inline(always)]
    fn lo(p: &Prefix) -> [Self; 3] {
        p.lo
    }
    #[inline(always)]
    fn of(v: usize) -> Self {
        v as u64
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self.wrapping_sub(o)
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self.wrapping_add(o)
    }
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        self.wrapping_mul(o)
    }
    /// The narrow path guarantees values below 2^63: the signed conversion is the same and cheaper.
    #[inline(always)]
    fn unsigned(self) -> f64 {
        self as i64 as f64
    }
    #[inline(always)]
    fn signed(self) -> f64 {
        self as i64 as f64
    }
}

impl Word for u128 {
    fn lo(p: &Prefix) -> [Self; 3] {
        p.exact()
    }
    fn of(v: usize) -> Self {
        v as u128
    }
    fn sub(self, o: Self) -> Self {
        self.wrapping_sub(o)
    }
    fn add(self, o: Self) -> Self {
        self.wrapping_add(o)
    }
    fn mul(self, o: Self) -> Self {
        self.wrapping_mul(o)
    }
    fn unsigned(self) -> f64 {
        self as f64
    }
    fn signed(self) -> f64 {
        self as i128 as f64
    }
}

/// One prefix entry, `(sum c_i, sum c_i i, sum c_i i^2)` over bins `i < k`: the low 64 bits, and the high
/// bits of the two moments (the count never exceeds 64 bits).
#[derive(Debug, Clone, Copy, Default)]
struct Prefix {
    lo: [u64; 3],
    hi: [u64; 2],
}

impl Prefix {
    fn exact(&self) -> [u128; 3] {
        let [a, b, c] = self.lo;
        let [bh, ch] = self.hi;
        [a as u128, (bh as u128) << 64 | b as u128, (ch as u128) << 64 | c as u128]
    }
}

const THIRD: f64 = 1.0 / 3.0;
const TWELFTH: f64 = 1.0 / 12.0;

/// `M2 + 2e M1 + e^2 M0 + M0/12` of exact moments (also the group formula, with `e = d`).
#[inline(always)]
fn quadratic(m0: f64, m1: f64, m2: f64, e: f64) -> f64 {
    ((m2 + (2.0 * e) * m1) + (e * e) * m0) + m0 * TWELFTH
}

/// `3 c ((v - g)^3 - (u - g)^3) / 3` for the piece of a source bin between a destination bin's edge (its cube
/// `edge3`, the upper edge when `upper`) and the source edge at `t` ticks from the centre (`inv` = the tick,
/// a power of two).
#[inline(always)]
fn piece3(c: f64, t: i64, inv: f64, edge3: f64, upper: bool) -> f64 {
    let x = t as f64 * inv;
    let x3 = x * x * x;
    c * if upper { edge3 - x3 } else { x3 - edge3 }
}

/// Prefix sums of one histogram for the losses of one bit width.
pub struct FastLoss {
    /// The counts as f64 (`c as f64`, for the cut bins).
    cf: Vec<f64>,
    /// `next[k]`: the first bin at or after `k` with a count (`nbins` when none).
    next: Vec<usize>,
    /// Prefix sums over bins `i < k`, exact.
    p: Vec<Prefix>,
    w: f64,
    bits: u32,
    narrow: bool,
}

impl FastLoss {
    /// `None` when `2^bits >= nbins`: a candidate then costs no more by direct summation (`hfmg::loss`).
    pub fn new(counts: &[u64], w: f64, bits: u32) -> Option<Self> {
        let n = counts.len();
        if (1usize << bits) >= n {
            return None;
        }
        let mut p = Vec::with_capacity(n + 1);
        let mut acc = [0u128; 3];
        let split = |a: [u128; 3]| Prefix { lo: a.map(|v| v as u64), hi: [(a[1] >> 64) as u64, (a[2] >> 64) as u64] };
        p.push(split(acc));
        for (k, &c) in counts.iter().enumerate() {
            let (c, k) = (c as u128, k as u128);
            acc = [acc[0] + c, acc[1] + c * k, acc[2] + c * k * k];
            p.push(split(acc));
        }
        let span = (n as u128).div_ceil(1u128 << bits) + 1;
        let narrow = acc[0].saturating_mul(span * span) < (1u128 << 62);
        let mut next = vec![n; n + 1];
        for k in (0..n).rev() {
            next[k] = if counts[k] > 0 { k } else { next[k + 1] };
        }
        Some(Self { cf: counts.iter().map(|&c| c as f64).collect(), next, p, w, bits, narrow })
    }

    /// Whether the group moments run in u64 (true) or u128.
    pub fn narrow(&self) -> bool {
        self.narrow
    }

    /// The loss of keeping bins `l..=r` (equal to `hfmg::loss` within a few ulps).
    pub fn loss(&self, l: usize, r: usize) -> f64 {
        if degenerate(self.w, l, r, 1usize << self.bits) {
            return 0.0;
        }
        let u = if self.narrow { self.unitless::<u64>(l, r) } else { self.unitless::<u128>(l, r) };
        u * (self.w * self.w)
    }

    /// A lower bound of `loss(l, r)`, bit for bit below it: the loss of the clipped tails alone. `loss` adds
    /// non-negative terms (group moments about a centre plus `M0/12`, cube differences of ordered edges) to
    /// these same tails, and float addition of non-negative terms never decreases a sum.
    pub fn floor(&self, l: usize, r: usize) -> f64 {
        if degenerate(self.w, l, r, 1usize << self.bits) {
            return 0.0;
        }
        self.tails(l, r) * (self.w * self.w)
    }

    /// The clipped tails: bins left of `l` in the first destination bin, right of `r` in the last, whose centres
    /// lie `e = (dst + N) / (2 dst)` source bins inside the kept range's ends (`N = r - l + 1`).
    fn tails(&self, l: usize, r: usize) -> f64 {
        let dst = 1u64 << self.bits;
        let e = (dst + (r - l + 1) as u64) as f64 * (1.0 / (2 * dst) as f64);
        let mut left = 0.0;
        if l > 0 {
            let [s0, s1, s2] = self.p[l].exact();
            let a = (l - 1) as u128;
            let m1 = a.wrapping_mul(s0).wrapping_sub(s1);
            let m2 = s2.wrapping_sub(a.wrapping_mul(s1.wrapping_sub(m1)));
            left = quadratic(s0 as f64, m1 as f64, m2 as f64, e);
        }
        let mut right = 0.0;
        let n = self.cf.len();
        if r + 1 < n {
            let (hi, lo) = (self.p[n].exact(), self.p[r + 1].exact());
            let (s0, s1, s2) = (hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]);
            let b = (r + 1) as u128;
            let m1 = s1.wrapping_sub(b.wrapping_mul(s0));
            let m2 = s2.wrapping_sub(b.wrapping_mul(s1.wrapping_add(m1)));
            right = quadratic(s0 as f64, m1 as f64, m2 as f64, e);
        }
        left + right
    }

    /// Bins `ka..=kb`, all in one destination bin whose centre is `d` source bins left of bin `a`'s midpoint.
    #[inline(always)]
    fn group<W: Word>(&self, ka: usize, kb: usize, a: usize, d: f64) -> f64 {
        let (hi, lo) = (W::lo(&self.p[kb + 1]), W::lo(&self.p[ka]));
        // No test for an empty group (its terms are 0.0 anyway): on sparse histograms (combs of pixel values)
        // the branch would mispredict and cost more than the arithmetic.
        let r0 = hi[0].sub(lo[0]);
        let r1 = hi[1].sub(lo[1]);
        let r2 = hi[2].sub(lo[2]);
        let aw = W::of(a);
        let t1 = r1.sub(aw.mul(r0));
        let t2 = r2.sub(aw.mul(r1.add(t1)));
        quadratic(r0.unsigned(), t1.signed(), t2.unsigned(), d)
    }

    /// `U`: the loss in units of `w^2`. Positions run in ticks of `1 / (2 dst)` source bins from `l`:
    /// destination boundary `j` is at `2 j N`, its centre at `(2j + 1) N`, source edge `t` at `2 dst t`; every
    /// destination bin spans `[-N, N]` ticks around its centre. Destination bins without counts add exactly
    /// 0.0: runs of them are skipped (`next`: the first bin with a count at or after a bin).
    fn unitless<W: Word>(&self, l: usize, r: usize) -> f64 {
        let bits = self.bits;
        let dst = 1u64 << bits;
        let mask = dst - 1;
        let di = 2 * dst as i64;
        let inv = 1.0 / di as f64;
        let nk = (r - l + 1) as u64;
        let mut total = self.tails(l, r);
        let (lo_edge, hi_edge) = (-(nk as i64) as f64 * inv, nk as f64 * inv);
        let (lo3, hi3) = (lo_edge * lo_edge * lo_edge, hi_edge * hi_edge * hi_edge);
        let mut j = 0u64;
        while j < dst {
            let b_lo = j * nk;
            let b_hi = b_lo + nk;
            let (q_lo, rem_lo) = (b_lo >> bits, b_lo & mask);
            let (q_hi, rem_hi) = (b_hi >> bits, b_hi & mask);
            let last = (l + q_hi as usize).min(r);
            let first = self.next[l + q_lo as usize];
            if first > last {
                // no count in this destination bin: jump to the one holding the next count (or the end)
                j = if first > r { dst } else { (((first - l) as u64) << bits) / nk }.max(j + 1);
                continue;
            }
            let ctr = (b_lo + b_hi) as i64;
            let (mut lp, mut g, mut rp) = (0.0, 0.0, 0.0);
            if q_hi == q_lo {
                lp = self.cf[l + q_lo as usize] * (hi3 - lo3);
            } else {
                if rem_lo != 0 {
                    lp = piece3(self.cf[l + q_lo as usize], (q_lo as i64 + 1) * di - ctr, inv, lo3, false);
                }
                let ta = q_lo + u64::from(rem_lo != 0);
                if ta < q_hi {
                    let a = ctr >> (bits + 1);
                    let off = (a * di + dst as i64 - ctr) as f64 * inv;
                    g = self.group::<W>(l + ta as usize, l + q_hi as usize - 1, l + a as usize, off);
                }
                if rem_hi != 0 {
                    rp = piece3(self.cf[l + q_hi as usize], q_hi as i64 * di - ctr, inv, hi3, true);
                }
            }
            total += g + (lp + rp) * THIRD;
            j += 1;
        }
        total
    }
}
