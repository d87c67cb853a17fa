//! Order-preserving binary encoding of BSON values.
//!
//! Invariant: for all a, b: `encode(a).cmp(&encode(b)) == compare_values(a, b)`, and equal values
//! encode identically. Numbers are encoded exactly as (sign, binary exponent, 64-bit fraction),
//! which can hold every int64 and every double, so int64 values beyond 2^53 keep their order
//! against doubles. Decimal128 goes through its nearest double (as in `compare_values`), so
//! decimals that differ only beyond double precision share a key.

use bson::{RawArray, RawBsonRef, RawDocument};

use crate::collation::Collation;
use crate::compare::{MAX_DEPTH, type_bracket};
use crate::numbers::{Num, as_num};

/// Terminates strings and containers; must sort below every tag and every escaped byte.
const END: u8 = 0x00;

pub fn encode_key(value: RawBsonRef<'_>, out: &mut Vec<u8>) {
    out.push(tag(value));
    encode_body(value, out, 0, None);
}

/// [`encode_key`] for an index with a collation: strings and symbols (nested ones too) are
/// encoded by their collation sort key, so keys order and compare equal as the collation
/// compares the strings (`"a"` and `"A"` are one key at strength 2).
pub fn encode_key_collated(value: RawBsonRef<'_>, collation: &Collation, out: &mut Vec<u8>) {
    out.push(tag(value));
    encode_body(value, out, 0, Some(collation));
}

fn tag(value: RawBsonRef<'_>) -> u8 {
    type_bracket(value) + 0x10
}

fn encode_body(value: RawBsonRef<'_>, out: &mut Vec<u8>, depth: usize, coll: Option<&Collation>) {
    match value {
        RawBsonRef::String(s) | RawBsonRef::Symbol(s) if coll.is_some() => {
            encode_bytes(&coll.map(|c| c.sort_key(s)).unwrap_or_default(), out)
        }
        RawBsonRef::String(s) | RawBsonRef::Symbol(s) | RawBsonRef::JavaScriptCode(s) => {
            encode_bytes(s.as_bytes(), out)
        }
        RawBsonRef::Document(d) => encode_document(d, out, depth + 1, coll),
        RawBsonRef::Array(a) => encode_array(a, out, depth + 1, coll),
        RawBsonRef::Binary(b) => {
            out.extend_from_slice(&(b.bytes.len() as u64).to_be_bytes());
            out.push(u8::from(b.subtype));
            out.extend_from_slice(b.bytes);
        }
        RawBsonRef::ObjectId(oid) => out.extend_from_slice(&oid.bytes()),
        RawBsonRef::Boolean(b) => out.push(u8::from(b)),
        RawBsonRef::DateTime(dt) => {
            let flipped = (dt.timestamp_millis() as u64) ^ (1 << 63);
            out.extend_from_slice(&flipped.to_be_bytes());
        }
        RawBsonRef::Timestamp(ts) => {
            out.extend_from_slice(&ts.time.to_be_bytes());
            out.extend_from_slice(&ts.increment.to_be_bytes());
        }
        RawBsonRef::RegularExpression(re) => {
            encode_bytes(re.pattern.as_str().as_bytes(), out);
            encode_bytes(re.options.as_str().as_bytes(), out);
        }
        RawBsonRef::DbPointer(p) => encode_bytes(format!("{p:?}").as_bytes(), out),
        RawBsonRef::JavaScriptCodeWithScope(c) => {
            encode_bytes(c.code.as_bytes(), out);
            encode_document(c.scope, out, depth + 1, coll);
        }
        RawBsonRef::MinKey | RawBsonRef::MaxKey | RawBsonRef::Null | RawBsonRef::Undefined => {}
        RawBsonRef::Double(_)
        | RawBsonRef::Int32(_)
        | RawBsonRef::Int64(_)
        | RawBsonRef::Decimal128(_) => {
            if let Some(n) = as_num(value) {
                encode_number(n, out);
            }
        }
    }
}

/// Escapes 0x00 as 0x00 0xFF and terminates with 0x00 0x01 so that a string sorts before its
/// extensions and the encoding stays prefix-free.
fn encode_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.push(0x00);
    out.push(0x01);
}

fn encode_document(doc: &RawDocument, out: &mut Vec<u8>, depth: usize, coll: Option<&Collation>) {
    if depth > MAX_DEPTH {
        return out.push(END);
    }
    for (k, v) in doc.iter().map_while(Result::ok) {
        out.push(tag(v));
        encode_bytes(k.as_str().as_bytes(), out);
        encode_body(v, out, depth, coll);
    }
    out.push(END);
}

fn encode_array(arr: &RawArray, out: &mut Vec<u8>, depth: usize, coll: Option<&Collation>) {
    if depth > MAX_DEPTH {
        return out.push(END);
    }
    for v in arr.into_iter().map_while(Result::ok) {
        out.push(tag(v));
        encode_body(v, out, depth, coll);
    }
    out.push(END);
}

const NUM_NAN: u8 = 0x01;
const NUM_NEG_INF: u8 = 0x02;
const NUM_NEG: u8 = 0x03;
const NUM_ZERO: u8 = 0x04;
const NUM_POS: u8 = 0x05;
const NUM_POS_INF: u8 = 0x06;

fn encode_number(n: Num, out: &mut Vec<u8>) {
    // Normalised form: |value| = 1.fraction * 2^exponent, fraction left-aligned in a u64.
    let (negative, exponent, fraction): (bool, i32, u64) = match n {
        Num::Int(0) => return out.push(NUM_ZERO),
        Num::Int(i) => {
            let mag = i.unsigned_abs();
            let lz = mag.leading_zeros();
            (i < 0, 63 - lz as i32, mag.checked_shl(lz + 1).unwrap_or(0))
        }
        Num::Dbl(d) => {
            if d.is_nan() {
                return out.push(NUM_NAN);
            }
            if d == 0.0 {
                return out.push(NUM_ZERO);
            }
            if d.is_infinite() {
                return out.push(if d > 0.0 { NUM_POS_INF } else { NUM_NEG_INF });
            }
            let bits = d.to_bits();
            let biased = ((bits >> 52) & 0x7ff) as i32;
            let mantissa = bits & ((1u64 << 52) - 1);
            if biased == 0 {
                let lz = mantissa.leading_zeros();
                let top = 63 - lz as i32;
                (
                    d < 0.0,
                    top - 1074,
                    mantissa.checked_shl(lz + 1).unwrap_or(0),
                )
            } else {
                (d < 0.0, biased - 1023, mantissa << 12)
            }
        }
    };
    let exp_bytes = ((exponent + 2048) as u16).to_be_bytes();
    let frac_bytes = fraction.to_be_bytes();
    if negative {
        out.push(NUM_NEG);
        out.extend(exp_bytes.iter().map(|b| !b));
        out.extend(frac_bytes.iter().map(|b| !b));
    } else {
        out.push(NUM_POS);
        out.extend_from_slice(&exp_bytes);
        out.extend_from_slice(&frac_bytes);
    }
}
