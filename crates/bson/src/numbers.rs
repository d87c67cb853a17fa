//! Numbers of every BSON type reduced to what compares exactly: an int64 or a double. Shared by
//! value order, key encoding and collation options, so it depends on nothing else in the crate.

use std::cmp::Ordering;

use bson::{Decimal128, RawBsonRef};

/// A numeric value reduced to the two representations that can be compared exactly with each
/// other. Decimal128 is approximated by the nearest double (see `decimal_to_f64`).
#[derive(Debug, Clone, Copy)]
pub enum Num {
    Int(i64),
    Dbl(f64),
}

pub fn as_num(v: RawBsonRef<'_>) -> Option<Num> {
    match v {
        RawBsonRef::Int32(i) => Some(Num::Int(i64::from(i))),
        RawBsonRef::Int64(i) => Some(Num::Int(i)),
        RawBsonRef::Double(d) => Some(Num::Dbl(d)),
        RawBsonRef::Decimal128(d) => Some(Num::Dbl(decimal_to_f64(d))),
        _ => None,
    }
}

impl Num {
    pub fn is_nan(self) -> bool {
        matches!(self, Num::Dbl(d) if d.is_nan())
    }

    pub fn to_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Dbl(d) => d,
        }
    }
}

/// Nearest double to a Decimal128. Decimal128 has 34 significant digits, so distinct decimals
/// can collapse to one double; that imprecision is shared by comparison and key encoding, which
/// keeps the two consistent with each other.
pub fn decimal_to_f64(d: Decimal128) -> f64 {
    let bits = u128::from_le_bytes(d.bytes());
    let negative = bits >> 127 == 1;
    let sign = if negative { -1.0 } else { 1.0 };
    if (bits >> 125) & 0b11 == 0b11 {
        return match (bits >> 122) & 0b1_1111 {
            0b1_1110 => sign * f64::INFINITY,
            0b1_1111 => f64::NAN,
            // The spec defines this encoding's (too large) coefficient as zero.
            _ => sign * 0.0,
        };
    }
    let exponent = ((bits >> 113) & 0x3fff) as i32 - 6176;
    let coefficient = bits & ((1u128 << 113) - 1);
    if coefficient > 9_999_999_999_999_999_999_999_999_999_999_999 {
        return sign * 0.0;
    }
    // Going through text gives a correctly rounded result without hand-written bignum code.
    let magnitude = format!("{coefficient}e{exponent}")
        .parse::<f64>()
        .unwrap_or(0.0);
    sign * magnitude
}

pub fn cmp_num(a: Num, b: Num) -> Ordering {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        (Num::Dbl(x), Num::Dbl(y)) => cmp_f64(x, y),
        (Num::Int(x), Num::Dbl(y)) => cmp_i64_f64(x, y),
        (Num::Dbl(x), Num::Int(y)) => cmp_i64_f64(y, x).reverse(),
    }
}

fn cmp_f64(x: f64, y: f64) -> Ordering {
    match (x.is_nan(), y.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        // Neither is NaN, so partial_cmp is total here; -0.0 == 0.0 as MongoDB wants.
        (false, false) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
    }
}

/// Exact comparison: converting the integer to a double would round above 2^53.
fn cmp_i64_f64(i: i64, f: f64) -> Ordering {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f.is_nan() {
        return Ordering::Greater;
    }
    if f >= TWO_63 {
        return Ordering::Less;
    }
    if f < -TWO_63 {
        return Ordering::Greater;
    }
    let t = f.trunc();
    match i.cmp(&(t as i64)) {
        Ordering::Equal => {
            let frac = f - t;
            if frac > 0.0 {
                Ordering::Less
            } else if frac < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        o => o,
    }
}
