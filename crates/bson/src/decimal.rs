//! Exact Decimal128 addition and multiplication for `$inc` and `$mul`.
//!
//! The `bson` crate stores and prints Decimal128 but does no arithmetic, and going through
//! doubles turns `0.1 + 0.2` into `0.30000000000000004`: wrong for the money amounts Decimal128
//! exists for. Values are taken apart from their canonical text form into a sign, an integer
//! coefficient and a decimal exponent, combined exactly, and rounded (half to even) to the 34
//! significant digits of IEEE 754 decimal128, as MongoDB does. Sums and products whose exact
//! coefficient would not fit 128 bits before rounding (operands of more than about 19 digits
//! each, or exponents far apart) return `None`, and the caller falls back to doubles.

use std::str::FromStr;

use bson::{Bson, Decimal128};

/// Digits of precision of IEEE 754 decimal128.
const PRECISION: u32 = 34;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Dec {
    negative: bool,
    coefficient: u128,
    exponent: i32,
}

fn parse(text: &str) -> Option<Dec> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exp) = match rest.find(['E', 'e']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i32>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut coefficient: u128 = 0;
    for c in int.chars().chain(frac.chars()) {
        let d = c.to_digit(10)?;
        coefficient = coefficient.checked_mul(10)?.checked_add(u128::from(d))?;
    }
    let exponent = exp.checked_sub(i32::try_from(frac.len()).ok()?)?;
    Some(Dec {
        negative,
        coefficient,
        exponent,
    })
}

/// A number as an exact decimal: integers exactly, doubles by their shortest round-trip text
/// (what a user typed), decimals by their own digits. NaN and infinities are not handled here.
fn of(v: &Bson) -> Option<Dec> {
    match v {
        Bson::Int32(i) => parse(&i.to_string()),
        Bson::Int64(i) => parse(&i.to_string()),
        Bson::Double(d) if d.is_finite() => parse(&format!("{d:e}")),
        Bson::Decimal128(d) => parse(&d.to_string()),
        _ => None,
    }
}

fn pow10(n: u32) -> Option<u128> {
    10u128.checked_pow(n)
}

fn digits(mut n: u128) -> u32 {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Rounds to [`PRECISION`] digits, half to even.
fn round(mut d: Dec) -> Dec {
    let n = digits(d.coefficient);
    if n <= PRECISION {
        return d;
    }
    let drop = n - PRECISION;
    let div = pow10(drop).expect("at most 39 digits");
    let (q, r) = (d.coefficient / div, d.coefficient % div);
    let half = div / 2;
    let up = r > half || (r == half && q % 2 == 1);
    d.coefficient = q + u128::from(up);
    d.exponent += drop as i32;
    // Rounding 999...9 up adds a digit.
    if digits(d.coefficient) > PRECISION {
        d.coefficient /= 10;
        d.exponent += 1;
    }
    d
}

fn to_bson(d: Dec) -> Option<Bson> {
    let d = round(d);
    let sign = if d.negative { "-" } else { "" };
    Decimal128::from_str(&format!("{sign}{}E{}", d.coefficient, d.exponent))
        .ok()
        .map(Bson::Decimal128)
}

fn add(a: Dec, b: Dec) -> Option<Dec> {
    let exponent = a.exponent.min(b.exponent);
    let scale = |d: Dec| -> Option<u128> {
        let shift = u32::try_from(d.exponent - exponent).ok()?;
        d.coefficient.checked_mul(pow10(shift)?)
    };
    let (x, y) = (scale(a)?, scale(b)?);
    let (negative, coefficient) = match (a.negative, b.negative) {
        (s, t) if s == t => (s, x.checked_add(y)?),
        (s, _) if x >= y => (s, x - y),
        (_, t) => (t, y - x),
    };
    Some(Dec {
        negative: negative && coefficient != 0,
        coefficient,
        exponent,
    })
}

fn mul(a: Dec, b: Dec) -> Option<Dec> {
    Some(Dec {
        negative: a.negative != b.negative,
        coefficient: a.coefficient.checked_mul(b.coefficient)?,
        exponent: a.exponent.checked_add(b.exponent)?,
    })
}

/// `cur + arg` (or `cur * arg`) as an exact Decimal128, when one of them is a Decimal128 and
/// the exact result fits; `None` sends the caller to its double arithmetic.
pub fn arith(cur: &Bson, arg: &Bson, add_op: bool) -> Option<Bson> {
    let (a, b) = (of(cur)?, of(arg)?);
    let r = if add_op { add(a, b)? } else { mul(a, b)? };
    to_bson(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Bson {
        Bson::Decimal128(Decimal128::from_str(s).unwrap())
    }

    fn text(b: Option<Bson>) -> String {
        match b {
            Some(Bson::Decimal128(d)) => d.to_string(),
            other => panic!("not a decimal: {other:?}"),
        }
    }

    #[test]
    fn sums_and_products_are_exact() {
        assert_eq!(text(arith(&dec("0.1"), &dec("0.2"), true)), "0.3");
        assert_eq!(text(arith(&dec("19.99"), &Bson::Int32(3), false)), "59.97");
        assert_eq!(text(arith(&dec("1.00"), &dec("-1.00"), true)), "0.00");
        assert_eq!(text(arith(&dec("-5"), &Bson::Int64(2), true)), "-3");
        assert_eq!(text(arith(&dec("1E+3"), &dec("1E-3"), true)), "1000.001");
        assert_eq!(text(arith(&dec("0.1"), &Bson::Double(0.2), true)), "0.3");
    }

    #[test]
    fn results_round_half_even_to_34_digits() {
        let ones = "1".repeat(34);
        // 34 ones + 0.5 rounds to even (…1 is odd → up to …2).
        let r = text(arith(&dec(&ones), &dec("0.5"), true));
        assert_eq!(r, format!("{}2", "1".repeat(33)));
        let r = text(arith(&dec(&"9".repeat(34)), &dec("1"), true));
        assert_eq!(r, "1.000000000000000000000000000000000E+34");
    }

    #[test]
    fn too_wide_falls_back() {
        assert!(arith(&dec("1E+100"), &dec("1E-100"), true).is_none());
        assert!(arith(&dec(&"9".repeat(30)), &dec(&"9".repeat(30)), false).is_none());
        assert!(arith(&dec("NaN"), &dec("1"), true).is_none());
    }
}
