//! MongoDB's total order over BSON values. Strings compare under the thread's active
//! collation (see [`crate::collation`]); numbers of every type compare by value (see
//! [`crate::numbers`], re-exported here for the query crate's `compare::` paths).

use std::cmp::Ordering;

use bson::{RawArray, RawBsonRef, RawDocument};

pub use crate::numbers::{Num, as_num, cmp_num, decimal_to_f64};

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

/// MongoDB's total order of BSON values; see the crate docs for the type order.
pub fn compare_values(a: RawBsonRef<'_>, b: RawBsonRef<'_>) -> Ordering {
    compare_at(a, b, 0)
}

/// Containers nested deeper than this compare as equal (and `encode_key` stops descending at the
/// same depth), so hostile documents cannot exhaust the stack. MongoDB rejects documents nested
/// beyond 100 levels anyway.
pub const MAX_DEPTH: usize = 150;

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
fn compare_documents(x: &RawDocument, y: &RawDocument, depth: usize) -> Ordering {
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

fn compare_arrays(x: &RawArray, y: &RawArray, depth: usize) -> Ordering {
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

pub fn values_equal(a: RawBsonRef<'_>, b: RawBsonRef<'_>) -> bool {
    compare_values(a, b) == Ordering::Equal
}
