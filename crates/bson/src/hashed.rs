//! The hash behind `"hashed"` index keys.
//!
//! mongod hashes an element with MD5 over: a 32-bit seed (0), the element's *canonical* type
//! (all numbers share one, as do strings and symbols), and then either the number as a 64-bit
//! integer, or the value's BSON bytes, or, for documents and arrays, each child the same way
//! preceded by its field name. The first eight bytes of the digest, little-endian, are the key.
//! Following it means equal values (`1`, `1.0`, `NumberLong(1)`) hash equally, as equality
//! requires, and the hashes match what mongod's `convertShardKeyToHashed` reports.
//!
//! Invariant: a pure function of the value; nesting deeper than [`MAX_DEPTH`] hashes the rest
//! as a unit rather than recursing without bound.

use bson::{RawBsonRef, RawDocumentBuf};
use md5::{Digest, Md5};

use crate::numbers;

const MAX_DEPTH: usize = 200;

/// The hashed-index key of `value`.
pub fn hash_value(value: RawBsonRef<'_>) -> i64 {
    hash_with_seed(value, 0)
}

/// [`hash_value`] with another seed (mongod's `_hashBSONElement` takes one).
pub fn hash_with_seed(value: RawBsonRef<'_>, seed: i32) -> i64 {
    let mut md5 = Md5::new();
    md5.update(seed.to_le_bytes());
    hash_element(&mut md5, None, value, 0);
    let digest = md5.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_le_bytes(first)
}

fn hash_element(md5: &mut Md5, name: Option<&str>, value: RawBsonRef<'_>, depth: usize) {
    md5.update(canonical_type(value).to_le_bytes());
    if let Some(name) = name {
        md5.update(name.as_bytes());
        md5.update([0]);
    }
    match value {
        RawBsonRef::Document(d) if depth < MAX_DEPTH => hash_children(md5, d, depth),
        RawBsonRef::Array(a) if depth < MAX_DEPTH => {
            // An array's bytes are a document whose names are "0", "1", ...
            match bson::RawDocument::from_bytes(a.as_bytes()) {
                Ok(d) => hash_children(md5, d, depth),
                Err(_) => md5.update(a.as_bytes()),
            }
        }
        RawBsonRef::JavaScriptCodeWithScope(c) if depth < MAX_DEPTH => {
            md5.update(c.code.as_bytes());
            md5.update([0]);
            hash_children(md5, c.scope, depth);
        }
        RawBsonRef::Int32(_)
        | RawBsonRef::Int64(_)
        | RawBsonRef::Double(_)
        | RawBsonRef::Decimal128(_) => {
            md5.update(safe_number_long(value).to_le_bytes());
        }
        other => md5.update(value_bytes(other)),
    }
}

/// Each child with its name, then the end-of-object marker (its canonical type and nothing
/// else), so `{a: {}}` and `{a: {}, b: 1}`'s prefixes differ.
fn hash_children(md5: &mut Md5, doc: &bson::RawDocument, depth: usize) {
    for (k, v) in doc.into_iter().map_while(Result::ok) {
        hash_element(md5, Some(k.as_str()), v, depth + 1);
    }
    md5.update(END_OF_OBJECT.to_le_bytes());
}

/// The canonical type of the end-of-object marker (as `undefined`'s); it has no name bytes.
const END_OF_OBJECT: i32 = 0;

/// mongod's `canonicalizeBSONType`: the order brackets, as the hash sees them.
fn canonical_type(value: RawBsonRef<'_>) -> i32 {
    match value {
        RawBsonRef::MinKey => -1,
        RawBsonRef::Undefined => 0,
        RawBsonRef::Null => 5,
        RawBsonRef::Int32(_)
        | RawBsonRef::Int64(_)
        | RawBsonRef::Double(_)
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

/// A number as mongod's `safeNumberLong`: truncated toward zero, clamped to the 64-bit range,
/// NaN as 0. Exactly 2^63 becomes the *lowest* value: mongod's hashes were fixed while its
/// conversion did that (SERVER-37183), and hashes may never change.
fn safe_number_long(value: RawBsonRef<'_>) -> i64 {
    match value {
        RawBsonRef::Int32(n) => i64::from(n),
        RawBsonRef::Int64(n) => n,
        other => {
            let f = numbers::as_num(other).map_or(0.0, numbers::Num::to_f64);
            if f.is_nan() {
                0
            } else if f == 9_223_372_036_854_775_808.0 {
                i64::MIN
            } else {
                // `as` saturates at the i64 range, which is the clamping wanted.
                f.trunc() as i64
            }
        }
    }
}

/// The value's bytes as BSON stores them after the element's type and name.
fn value_bytes(value: RawBsonRef<'_>) -> Vec<u8> {
    let mut doc = RawDocumentBuf::new();
    doc.append(bson::cstr!(""), value);
    let bytes = doc.as_bytes();
    // Length (4), type (1), the empty name's NUL (1) ... the document's closing NUL (1).
    debug_assert!(bytes.len() >= 7);
    bytes[6..bytes.len() - 1].to_vec()
}

#[cfg(test)]
mod tests {
    use bson::{Bson, RawBson};

    use super::*;

    fn hash(v: Bson) -> i64 {
        let raw = RawBson::try_from(v).unwrap();
        hash_value(raw.as_raw_bson_ref())
    }

    #[test]
    fn equal_numbers_hash_equally_and_other_values_apart() {
        assert_eq!(hash(Bson::Int32(1)), hash(Bson::Int64(1)));
        assert_eq!(hash(Bson::Int32(1)), hash(Bson::Double(1.0)));
        // Truncation: mongod's hashed index cannot tell 1.5 from 1 either.
        assert_eq!(hash(Bson::Double(1.5)), hash(Bson::Int32(1)));
        assert_ne!(hash(Bson::Int32(1)), hash(Bson::Int32(2)));
        assert_ne!(hash(Bson::Int32(1)), hash(Bson::String("1".into())));
        assert_ne!(hash(Bson::Null), hash(Bson::Undefined));
        let a = Bson::Document(bson::doc! { "x": 1, "y": "z" });
        let b = Bson::Document(bson::doc! { "y": "z", "x": 1 });
        assert_ne!(hash(a.clone()), hash(b));
        assert_eq!(hash(a.clone()), hash(a));
    }

    /// The values mongod's own test of `_hashBSONElement` (seed 1) hard-codes, because hashes
    /// must never change across versions or machines.
    #[test]
    fn hashes_agree_with_mongod() {
        let seeded = |v: Bson| {
            let raw = RawBson::try_from(v).unwrap();
            hash_with_seed(raw.as_raw_bson_ref(), 1)
        };
        let max = 1136124329541638701;
        let lowest = 5744114172487291558;
        let zero = 5574369198691456941;
        assert_eq!(hash(Bson::Int32(42)), -944302157085130861);
        assert_eq!(seeded(Bson::String("hashthis".into())), 6271151123721111923);
        assert_eq!(seeded(Bson::Double(2f64.powi(63))), lowest);
        assert_eq!(seeded(Bson::Double(2f64.powi(63) + 2048.0)), max);
        assert_eq!(seeded(Bson::Double(f64::INFINITY)), max);
        assert_eq!(
            seeded(Bson::Double(2f64.powi(63) - 1024.0)),
            -3954856262017896439
        );
        assert_eq!(seeded(Bson::Double(-(2f64.powi(63)))), lowest);
        assert_eq!(seeded(Bson::Double(f64::NEG_INFINITY)), lowest);
        assert_eq!(seeded(Bson::Int32(0)), zero);
        assert_eq!(seeded(Bson::Int64(0)), zero);
        assert_eq!(seeded(Bson::Double(f64::NAN)), zero);
        assert_eq!(
            seeded(Bson::Document(bson::doc! { "a": 1, "b": 2 })),
            -7076810813311352857
        );
        assert_eq!(
            seeded(Bson::Document(
                bson::doc! { "a": 2f64.powi(63), "b": f64::NAN }
            )),
            1223292051903137684
        );
    }
}
