//! Numbers as text, for the records: a list of f64 written as Python's `json.dumps` writes it (each value by
//! `float.__repr__`: the shortest digits that read back to the same double, fixed notation for decimal exponents
//! from -4 to 15, else `d.ddde-05` / `de+16`), at a tenth of the cost of `repr` per value.

use std::fmt::Write;

use crate::error::{QuantError, Result};

/// Append `v` (finite) as Python's `repr(float)` writes it.
pub fn push_repr(v: f64, out: &mut String, scratch: &mut String) {
    if v == 0.0 {
        out.push_str(if v.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    if v < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` writes the shortest digits that round-trip (the closest of them), as Python's repr does:
    // `d.ddd` then `e` and the exponent.
    scratch.clear();
    let _ = write!(scratch, "{:e}", v.abs());
    let (mant, exp) = scratch.split_once('e').unwrap_or((scratch.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut digits = [0u8; 24];
    let mut n = 0usize;
    for b in mant.bytes().filter(u8::is_ascii_digit).take(digits.len()) {
        digits[n] = b;
        n += 1;
    }
    if let Some(even) = even_neighbour(v.abs(), &digits[..n], exp) {
        digits[..n].copy_from_slice(&even[..n]); // n digits: a carry into an (n + 1)-th is never taken
    }
    let digits = std::str::from_utf8(&digits[..n]).unwrap_or("0");
    // `decpt`: the value is 0.d1d2... x 10^decpt. Python writes fixed notation for -4 < decpt <= 16.
    let decpt = exp + 1;
    if -4 < decpt && decpt <= 16 {
        let (d, n) = (decpt as isize, n as isize);
        if d <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-d) as usize));
            out.push_str(digits);
        } else if d >= n {
            out.push_str(digits);
            out.extend(std::iter::repeat_n('0', (d - n) as usize));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..d as usize]);
            out.push('.');
            out.push_str(&digits[d as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        let _ = write!(out, "e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
}

/// When `v` (finite, > 0) lies exactly halfway between the shortest decimal `digits` x 10^(exp - n + 1) (n
/// digits, the last odd) and its neighbour one unit away in the last digit, and that neighbour also reads back
/// as `v`, the neighbour's digits: Python's repr (David Gay's dtoa) takes the even last digit in that tie,
/// Rust's formatter the digits above (`2^46 + 0.125` is `...664.12` there, `...664.13` here). The tie is
/// tested exactly, in integers: `v = m 2^e` against `(2x +- 1) 10^q / 2`.
fn even_neighbour(v: f64, digits: &[u8], exp: i32) -> Option<[u8; 24]> {
    let n = digits.len();
    if n == 0 || n > 19 || (digits[n - 1] - b'0').is_multiple_of(2) {
        return None;
    }
    let x: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let q = exp - n as i32 + 1; // the decimal exponent of the last digit
    // v = odd * 2^twos exactly
    let bits = v.to_bits();
    let (raw_e, frac) = ((bits >> 52) as i32 & 0x7ff, bits & ((1u64 << 52) - 1));
    let (m, e) = if raw_e == 0 { (frac, -1074) } else { (frac | (1u64 << 52), raw_e - 1075) };
    let tz = m.trailing_zeros() as i32;
    let (odd, twos) = ((m >> tz) as u128, e + tz);
    // halfway points (2x - 1) and (2x + 1), times 10^q / 2 = 5^q 2^(q - 1): equal to v when the odd parts and
    // the powers of two agree (for q < 0, 5^-q moves to v's side)
    let fives = |k: u32| 5u128.checked_pow(k);
    for (mid, neighbour) in [(2 * x as u128 - 1, x - 1), (2 * x as u128 + 1, x + 1)] {
        let tie = if q >= 0 {
            fives(q as u32).and_then(|f| mid.checked_mul(f)) == Some(odd) && twos == q - 1
        } else {
            fives((-q) as u32).and_then(|f| odd.checked_mul(f)) == Some(mid) && twos == q - 1
        };
        if !tie {
            continue;
        }
        let text = format!("{neighbour}");
        if text.len() != n {
            return None; // 10^n: the shorter form would have been the shortest
        }
        let back: f64 = format!("{text}e{q}").parse().ok()?;
        if back != v {
            return None;
        }
        let mut out = [0u8; 24];
        out[..n].copy_from_slice(text.as_bytes());
        return Some(out);
    }
    None
}

/// `json.dumps(list_of_floats)`: `[a, b, c]` with each value as `repr` writes it. Non-finite values are an error
/// (JSON has no NaN or Infinity), naming the first.
pub fn json_floats(x: &[f64]) -> Result<String> {
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite { index: i, value: x[i] as f32 });
    }
    let mut out = String::with_capacity(2 + 24 * x.len());
    let mut scratch = String::with_capacity(32);
    out.push('[');
    for (i, &v) in x.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_repr(v, &mut out, &mut scratch);
    }
    out.push(']');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr(v: f64) -> String {
        let (mut out, mut s) = (String::new(), String::new());
        push_repr(v, &mut out, &mut s);
        out
    }

    #[test]
    fn writes_what_python_repr_writes() {
        // Python 3.11: repr of each value.
        let cases: [(f64, &str); 16] = [
            (0.0, "0.0"), (-0.0, "-0.0"), (1.0, "1.0"), (-2.5, "-2.5"), (0.1, "0.1"), (1e-4, "0.0001"),
            (1e-5, "1e-05"), (1.5e-5, "1.5e-05"), (123456.0, "123456.0"), (1e15, "1000000000000000.0"),
            (1e16, "1e+16"), (1.2345e17, "1.2345e+17"), (1e100, "1e+100"), (5e-324, "5e-324"),
            (0.0012345678918766975, "0.0012345678918766975"), (f32::MAX as f64, "3.4028234663852886e+38"),
        ];
        for (v, want) in cases {
            assert_eq!(repr(v), want, "{v:e}");
        }
    }

    #[test]
    fn halfway_values_take_the_even_last_digit() {
        // Python 3.11: repr of each (exactly halfway between two shortest decimals).
        let cases: [(f64, &str); 4] = [
            (70368744177664.125, "70368744177664.12"), (70368744246530.625, "70368744246530.62"),
            (-(140737488355328.25), "-140737488355328.25"), (4503599627370496.5, "4503599627370496.0"),
        ];
        for (v, want) in cases {
            assert_eq!(repr(v), want, "{v:e}");
        }
    }

    #[test]
    fn lists_and_non_finite() {
        assert_eq!(json_floats(&[]).unwrap(), "[]");
        assert_eq!(json_floats(&[1.0, 0.5, 1e-7]).unwrap(), "[1.0, 0.5, 1e-07]");
        assert!(matches!(json_floats(&[1.0, f64::NAN]), Err(QuantError::NonFinite { index: 1, .. })));
    }
}
