//! MongoDB's total order over BSON values.

use std::cmp::Ordering;

use bson::{Decimal128, RawArray, RawBsonRef, RawDocument};

/// Rank of a value's type in MongoDB's cross-type order. Values of different ranks never compare
/// equal and never satisfy range operators against each other; numeric types (and string/symbol)
/// share a rank so that they compare by value.
pub fn type_bracket(v: RawBsonRef<'_>) -> u8 {
    match v {
        RawBsonRef::MinKey => 0,
        RawBsonRef::Undefined => 2,
        RawBsonRef::Null => 5,
        RawBsonRef::Double(_)
        | RawBsonRef::Int32(_)
        | RawBsonRef::Int64(_)
        | RawBsonRef::Decimal128(_) => 10,
        RawBsonRef::String(_) | RawBsonRef::Symbol(_) => 15,
        RawBsonRef::Document(_) => 20,
        RawBsonRef::Array(_) => 25,
        RawBsonRef::Binary(_) => 30,
        RawBsonRef::ObjectId(_) => 35,
        RawBsonRef::Boolean(_) => 40,
        RawBsonRef::DateTime(_) => 45,
        RawBsonRef::Timestamp(_) => 47,
        RawBsonRef::RegularExpression(_) => 50,
        RawBsonRef::DbPointer(_) => 55,
        RawBsonRef::JavaScriptCode(_) => 60,
        RawBsonRef::JavaScriptCodeWithScope(_) => 65,
        RawBsonRef::MaxKey => 127,
    }
}

/// A numeric value reduced to the two representations that can be compared exactly with each
/// other. Decimal128 is approximated by the nearest double (see `decimal_to_f64`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Num {
    Int(i64),
    Dbl(f64),
}

pub(crate) fn as_num(v: RawBsonRef<'_>) -> Option<Num> {
    match v {
        RawBsonRef::Int32(i) => Some(Num::Int(i64::from(i))),
        RawBsonRef::Int64(i) => Some(Num::Int(i)),
        RawBsonRef::Double(d) => Some(Num::Dbl(d)),
        RawBsonRef::Decimal128(d) => Some(Num::Dbl(decimal_to_f64(d))),
        _ => None,
    }
}

impl Num {
    pub(crate) fn is_nan(self) -> bool {
        matches!(self, Num::Dbl(d) if d.is_nan())
    }

    pub(crate) fn to_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Dbl(d) => d,
        }
    }
}

/// Nearest double to a Decimal128. Decimal128 has 34 significant digits, so distinct decimals
/// can collapse to one double; that imprecision is shared by comparison and key encoding, which
/// keeps the two consistent with each other.
pub(crate) fn decimal_to_f64(d: Decimal128) -> f64 {
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

pub(crate) fn cmp_num(a: Num, b: Num) -> Ordering {
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

/// MongoDB's total order of BSON values; see the crate docs for the type order.
pub fn compare_values(a: RawBsonRef<'_>, b: RawBsonRef<'_>) -> Ordering {
    compare_at(a, b, 0)
}

/// Containers nested deeper than this compare as equal (and `encode_key` stops descending at the
/// same depth), so hostile documents cannot exhaust the stack. MongoDB rejects documents nested
/// beyond 100 levels anyway.
pub(crate) const MAX_DEPTH: usize = 150;

fn compare_at(a: RawBsonRef<'_>, b: RawBsonRef<'_>, depth: usize) -> Ordering {
    let (ba, bb) = (type_bracket(a), type_bracket(b));
    if ba != bb {
        return ba.cmp(&bb);
    }
    match (a, b) {
        (
            RawBsonRef::String(x) | RawBsonRef::Symbol(x),
            RawBsonRef::String(y) | RawBsonRef::Symbol(y),
        ) => crate::collation::compare_strings(x, y)
            .unwrap_or_else(|| x.as_bytes().cmp(y.as_bytes())),
        (RawBsonRef::Document(x), RawBsonRef::Document(y)) => compare_documents(x, y, depth + 1),
        (RawBsonRef::Array(x), RawBsonRef::Array(y)) => compare_arrays(x, y, depth + 1),
        (RawBsonRef::Binary(x), RawBsonRef::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then_with(|| u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(y.bytes)),
        (RawBsonRef::ObjectId(x), RawBsonRef::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (RawBsonRef::Boolean(x), RawBsonRef::Boolean(y)) => x.cmp(&y),
        (RawBsonRef::DateTime(x), RawBsonRef::DateTime(y)) => {
            x.timestamp_millis().cmp(&y.timestamp_millis())
        }
        (RawBsonRef::Timestamp(x), RawBsonRef::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (RawBsonRef::RegularExpression(x), RawBsonRef::RegularExpression(y)) => x
            .pattern
            .as_str()
            .as_bytes()
            .cmp(y.pattern.as_str().as_bytes())
            .then_with(|| {
                x.options
                    .as_str()
                    .as_bytes()
                    .cmp(y.options.as_str().as_bytes())
            }),
        // bson keeps DBPointer's parts private; its Debug text holds both parts, and the type is
        // deprecated, so a stable if arbitrary order is good enough.
        (RawBsonRef::DbPointer(x), RawBsonRef::DbPointer(y)) => {
            format!("{x:?}").cmp(&format!("{y:?}"))
        }
        (RawBsonRef::JavaScriptCode(x), RawBsonRef::JavaScriptCode(y)) => {
            x.as_bytes().cmp(y.as_bytes())
        }
        (RawBsonRef::JavaScriptCodeWithScope(x), RawBsonRef::JavaScriptCodeWithScope(y)) => x
            .code
            .as_bytes()
            .cmp(y.code.as_bytes())
            .then_with(|| compare_documents(x.scope, y.scope, depth + 1)),
        _ => match (as_num(a), as_num(b)) {
            (Some(x), Some(y)) => cmp_num(x, y),
            // MinKey, MaxKey, Null, Undefined: all values of the type are equal.
            _ => Ordering::Equal,
        },
    }
}

/// Field by field: type rank, then name, then value; a prefix sorts first. Malformed trailing
/// bytes end the iteration so that corrupt input still yields a consistent order.
pub(crate) fn compare_documents(x: &RawDocument, y: &RawDocument, depth: usize) -> Ordering {
    if depth > MAX_DEPTH {
        return Ordering::Equal;
    }
    let mut ix = x.iter();
    let mut iy = y.iter();
    loop {
        match (
            ix.next().and_then(Result::ok),
            iy.next().and_then(Result::ok),
        ) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((kx, vx)), Some((ky, vy))) => {
                let o = type_bracket(vx)
                    .cmp(&type_bracket(vy))
                    .then_with(|| kx.as_str().as_bytes().cmp(ky.as_str().as_bytes()))
                    .then_with(|| compare_at(vx, vy, depth));
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

pub(crate) fn compare_arrays(x: &RawArray, y: &RawArray, depth: usize) -> Ordering {
    if depth > MAX_DEPTH {
        return Ordering::Equal;
    }
    let mut ix = x.into_iter();
    let mut iy = y.into_iter();
    loop {
        match (
            ix.next().and_then(Result::ok),
            iy.next().and_then(Result::ok),
        ) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(vx), Some(vy)) => {
                let o = compare_at(vx, vy, depth);
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

pub(crate) fn values_equal(a: RawBsonRef<'_>, b: RawBsonRef<'_>) -> bool {
    compare_values(a, b) == Ordering::Equal
}
