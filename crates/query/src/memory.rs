//! What values occupy in memory, and the bound on what one expression evaluation holds.
//!
//! An evaluation *holds* a value when it keeps it while computing more: an operator's evaluated
//! operands, the elements a `$map`, `$filter` or array literal has built so far, a `$reduce`'s
//! accumulator, a `$let`'s variables. It charges each such value to a [`Held`] guard, and an
//! operator that is about to build a large value (`$concat`, `$concatArrays`, `$range`,
//! `$split`, `$replaceAll` ...) first asks [`reserve`] whether the result fits beside what is
//! held. So the values alive in one evaluation stay within `Limits::expression_bytes`, however
//! small the pipeline that asks for more.
//!
//! Invariants:
//! - `HELD` is the sum of the live `Held` guards on this thread: a guard adds before it checks
//!   and subtracts exactly what it added when dropped, so an error (which drops the guards on
//!   its way out) leaves it balanced, and it is 0 between evaluations.
//! - [`mem_size`] measures at most [`MAX_VALUE_DEPTH`] levels deep and refuses deeper values
//!   (Overflow, 15). Every composite value an expression builds is charged (hence measured)
//!   before it can be nested into another, so no value deeper than the limit is ever built, and
//!   nothing recursive (measuring, serializing, dropping) can exhaust the stack.
//! - Sizes count this process's representation: a `Bson` inline (`size_of::<Bson>()`), plus the
//!   heap it owns; a document field also costs its map entry.

use std::cell::Cell;
use std::mem::size_of;

use bson::{Bson, Document};

use crate::error::QueryError;
use crate::limits::{self, MAX_VALUE_DEPTH};

/// One `Bson` value inline (in a `Vec`, a map entry, a variable).
pub(crate) const VALUE: usize = size_of::<Bson>();

/// One document field besides its value: the map's (hash, key, value) bucket and index slot.
const ENTRY: usize = size_of::<String>() + 2 * size_of::<usize>();

const ADVICE: &str = "work on smaller arrays or strings (e.g. $slice or $filter them first)";

thread_local! {
    static HELD: Cell<usize> = const { Cell::new(0) };
}

/// The bytes `v` occupies: inline plus owned heap.
pub(crate) fn mem_size(v: &Bson) -> Result<usize, QueryError> {
    measure(v, 0)
}

/// A field `key: v` of a document, entry included.
pub(crate) fn field_size(key: &str, v: &Bson) -> Result<usize, QueryError> {
    Ok(ENTRY + key.len() + mem_size(v)?)
}

fn measure(v: &Bson, depth: usize) -> Result<usize, QueryError> {
    if depth > MAX_VALUE_DEPTH {
        return Err(limits::too_deep());
    }
    let heap = match v {
        Bson::String(s) | Bson::Symbol(s) | Bson::JavaScriptCode(s) => s.len(),
        Bson::Array(items) => {
            let mut total = 0usize;
            for item in items {
                total = total.saturating_add(measure(item, depth + 1)?);
            }
            total
        }
        Bson::Document(d) => fields(d, depth)?,
        Bson::Binary(b) => b.bytes.len(),
        Bson::RegularExpression(r) => r.pattern.as_str().len() + r.options.as_str().len(),
        Bson::JavaScriptCodeWithScope(c) => c.code.len() + fields(&c.scope, depth)?,
        _ => 0,
    };
    Ok(VALUE.saturating_add(heap))
}

fn fields(d: &Document, depth: usize) -> Result<usize, QueryError> {
    let mut total = 0usize;
    for (k, v) in d {
        total = total.saturating_add(ENTRY + k.len() + measure(v, depth + 1)?);
    }
    Ok(total)
}

/// The bytes `doc` takes as BSON, computed without serializing it. Values reach at most
/// [`MAX_VALUE_DEPTH`] levels (see the module comment), so the recursion is bounded.
pub(crate) fn bson_len(doc: &Document) -> usize {
    let fields: usize = doc
        .iter()
        .map(|(k, v)| 2 + k.len() + value_len(v))
        .fold(0, usize::saturating_add);
    5usize.saturating_add(fields)
}

/// Fails with 10334 when `doc` would serialize to more than `max` bytes, without serializing it.
pub(crate) fn check_document(doc: &bson::Document, max: usize) -> Result<(), QueryError> {
    let size = bson_len(doc);
    if size <= max {
        return Ok(());
    }
    let first = match doc.iter().next() {
        Some((k, bson::Bson::String(s))) => format!("{k}: \"{}...\"", crate::limits::clip(s, 40)),
        Some((k, v)) => format!("{k}: {}", crate::limits::clip(&v.to_string(), 60)),
        None => String::new(),
    };
    Err(crate::limits::object_too_large(size, &first))
}

fn value_len(v: &Bson) -> usize {
    match v {
        Bson::Double(_) | Bson::Int64(_) | Bson::DateTime(_) | Bson::Timestamp(_) => 8,
        Bson::Int32(_) => 4,
        Bson::Decimal128(_) => 16,
        Bson::ObjectId(_) => 12,
        Bson::Boolean(_) => 1,
        Bson::Null | Bson::Undefined | Bson::MinKey | Bson::MaxKey => 0,
        Bson::String(s) | Bson::Symbol(s) | Bson::JavaScriptCode(s) => 5 + s.len(),
        Bson::Document(d) => bson_len(d),
        Bson::Array(items) => {
            let elements: usize = items
                .iter()
                .enumerate()
                .map(|(i, item)| 2 + decimal_digits(i) + value_len(item))
                .fold(0, usize::saturating_add);
            5usize.saturating_add(elements)
        }
        Bson::Binary(b) => 5 + b.bytes.len(),
        Bson::RegularExpression(r) => 2 + r.pattern.as_str().len() + r.options.as_str().len(),
        Bson::JavaScriptCodeWithScope(c) => 4 + 5 + c.code.len() + bson_len(&c.scope),
        Bson::DbPointer(_) => serialized_len(v),
    }
}

/// A (small, rare) value's length, by serializing it alone.
fn serialized_len(v: &Bson) -> usize {
    let mut doc = bson::RawDocumentBuf::new();
    match bson::RawBson::try_from(v.clone()) {
        Ok(raw) => {
            doc.append(bson::raw::cstr!(""), raw);
            // Less the document's length and terminator, the type byte and the empty key's NUL.
            doc.as_bytes().len() - 7
        }
        Err(_) => 0,
    }
}

fn decimal_digits(i: usize) -> usize {
    i.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Values an evaluation holds, charged against `Limits::expression_bytes` until dropped.
pub(crate) struct Held {
    op: &'static str,
    bytes: usize,
}

impl Held {
    /// Nothing held yet; `op` names the operator in the error.
    pub(crate) fn new(op: &'static str) -> Held {
        Held { op, bytes: 0 }
    }

    /// Charges `v`; fails (146) when everything held would exceed the limit.
    pub(crate) fn keep(&mut self, v: &Bson) -> Result<(), QueryError> {
        let bytes = mem_size(v)?;
        self.add(bytes)
    }

    /// Charges a value that may be missing.
    pub(crate) fn keep_opt(&mut self, v: &Option<Bson>) -> Result<(), QueryError> {
        match v {
            Some(v) => self.keep(v),
            None => Ok(()),
        }
    }

    pub(crate) fn add(&mut self, bytes: usize) -> Result<(), QueryError> {
        let total = HELD.with(|h| {
            let total = h.get().saturating_add(bytes);
            h.set(total);
            total
        });
        self.bytes += bytes;
        let limit = limits::active().expression_bytes;
        if total > limit {
            return Err(limits::exceeded(self.op, total, limit, ADVICE));
        }
        Ok(())
    }

    /// Stops charging what was kept so far (it has been consumed or dropped).
    pub(crate) fn release(&mut self) {
        HELD.with(|h| h.set(h.get().saturating_sub(self.bytes)));
        self.bytes = 0;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

/// Fails (146) unless a value of `bytes` fits beside what the evaluation holds; called before
/// building it.
pub(crate) fn reserve(op: &str, bytes: usize) -> Result<(), QueryError> {
    let total = HELD.with(|h| h.get()).saturating_add(bytes);
    let limit = limits::active().expression_bytes;
    if total > limit {
        return Err(limits::exceeded(op, total, limit, ADVICE));
    }
    Ok(())
}

/// Checks a string of `len` bytes `op` is about to build: shorter than 16MB (16493), and room
/// beside what is held (146).
pub(crate) fn reserve_string(op: &str, len: usize) -> Result<(), QueryError> {
    limits::check_string(op, len)?;
    reserve(op, VALUE.saturating_add(len))
}

/// The number of elements of `$range: [start, end, step]` (`step` non-zero).
pub(crate) fn range_len(start: i64, end: i64, step: i64) -> usize {
    let (span, stride) = if step > 0 {
        (end - start, step)
    } else {
        (start - end, -step)
    };
    if span <= 0 {
        return 0;
    }
    usize::try_from((span + stride - 1) / stride).unwrap_or(usize::MAX)
}

/// Checks a `$range` of `len` elements before building it: within `internalQueryMaxRangeBytes`
/// (146, in mongod's words) and beside what the evaluation holds.
pub(crate) fn reserve_range(len: usize) -> Result<(), QueryError> {
    let needed = len
        .saturating_mul(VALUE)
        .saturating_add(size_of::<Vec<Bson>>());
    let limit = limits::active().range_bytes;
    if needed >= limit {
        return Err(limits::exceeded(
            "$range",
            needed,
            limit,
            "ask for fewer elements (a smaller range or a larger step)",
        ));
    }
    reserve("$range", needed)
}

/// Checks the array `$concatArrays` would build from `arrays` before building it.
pub(crate) fn reserve_concat_arrays(arrays: &[&Vec<Bson>]) -> Result<(), QueryError> {
    let mut total = VALUE;
    for a in arrays {
        for item in a.iter() {
            total = total.saturating_add(mem_size(item)?);
        }
    }
    reserve("$concatArrays", total)
}

/// Checks the array of strings `$split` would build before building it.
pub(crate) fn reserve_split(s: &str, sep: &str) -> Result<(), QueryError> {
    let pieces = s.matches(sep).count().saturating_add(1);
    reserve(
        "$split",
        pieces.saturating_mul(VALUE).saturating_add(s.len()),
    )
}

/// The length of `s` with `find` replaced by `replacement` (once, or everywhere), as `str`'s
/// `replacen`/`replace` would make it, computed without building it.
pub(crate) fn replaced_len(s: &str, find: &str, replacement: &str, all: bool) -> usize {
    let found = if all {
        s.matches(find).count()
    } else {
        usize::from(s.contains(find))
    };
    (s.len() - found * find.len()).saturating_add(found.saturating_mul(replacement.len()))
}

/// The bytes held on this thread right now (for tests).
#[cfg(test)]
pub(crate) fn held_now() -> usize {
    HELD.with(|h| h.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{Limits, with_limits};

    #[test]
    fn sizes_count_the_value_inline_and_its_heap() {
        assert_eq!(mem_size(&Bson::Int32(1)).unwrap(), VALUE);
        assert_eq!(mem_size(&Bson::String("abc".into())).unwrap(), VALUE + 3);
        let arr = Bson::Array(vec![Bson::Int32(1), Bson::String("ab".into())]);
        assert_eq!(mem_size(&arr).unwrap(), 3 * VALUE + 2);
        let doc = Bson::Document(bson::doc! { "k": "ab" });
        assert_eq!(mem_size(&doc).unwrap(), VALUE + ENTRY + 1 + VALUE + 2);
        assert_eq!(field_size("k", &Bson::Null).unwrap(), ENTRY + 1 + VALUE);
    }

    /// `{ptr: DBPointer("db.c", ...)}`, from its bytes (the type has no public constructor).
    fn db_pointer() -> Document {
        let mut body = vec![0x0C];
        body.extend_from_slice(b"ptr\0");
        body.extend_from_slice(&5i32.to_le_bytes());
        body.extend_from_slice(b"db.c\0");
        body.extend_from_slice(&[7u8; 12]);
        let mut bytes = ((body.len() + 5) as i32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        bytes.push(0);
        let raw = bson::RawDocumentBuf::from_bytes(bytes).unwrap();
        Document::try_from(raw.as_ref()).unwrap()
    }

    #[test]
    fn bson_lengths_match_serialization() {
        let oid = bson::oid::ObjectId::new();
        let docs = [
            bson::doc! {},
            bson::doc! { "a": 1, "b": 2.5, "c": "text", "d": null, "e": true, "f": 7i64 },
            bson::doc! { "arr": (0..123).collect::<Vec<i32>>(), "nested": { "x": [[1], { "y": "z" }] } },
            bson::doc! {
                "oid": oid, "at": bson::DateTime::now(), "ts": bson::Timestamp { time: 1, increment: 2 },
                "re": bson::Regex { pattern: "a.*".try_into().unwrap(), options: "i".try_into().unwrap() },
                "bin": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1, 2, 3] },
                "dec": "1.5".parse::<bson::Decimal128>().unwrap(), "min": Bson::MinKey, "max": Bson::MaxKey,
                "code": Bson::JavaScriptCode("f()".into()), "sym": Bson::Symbol("s".into()),
            },
            db_pointer(),
        ];
        for d in docs {
            let raw = bson::RawDocumentBuf::try_from(&d).unwrap();
            assert_eq!(bson_len(&d), raw.as_bytes().len(), "{d}");
        }
    }

    #[test]
    fn values_nested_past_the_limit_are_refused() {
        let mut v = Bson::Int32(0);
        for _ in 0..MAX_VALUE_DEPTH {
            v = Bson::Array(vec![v]);
        }
        assert!(mem_size(&v).is_ok());
        let e = mem_size(&Bson::Array(vec![v])).unwrap_err();
        assert_eq!((e.code, e.code_name), (15, "Overflow"));
    }

    #[test]
    fn held_bytes_balance_even_on_errors() {
        let limits = Limits {
            expression_bytes: 10 * VALUE,
            ..Limits::default()
        };
        with_limits(limits, || {
            let mut outer = Held::new("outer");
            outer.add(4 * VALUE).unwrap();
            {
                let mut inner = Held::new("$inner");
                inner.add(5 * VALUE).unwrap();
                assert_eq!(held_now(), 9 * VALUE);
                assert!(reserve("$x", VALUE).is_ok());
                let e = reserve("$x", 2 * VALUE).unwrap_err();
                assert_eq!((e.code, e.code_name), (146, "ExceededMemoryLimit"));
                let e = inner.add(2 * VALUE).unwrap_err();
                assert!(
                    e.message.starts_with("$inner would use too much memory"),
                    "{}",
                    e.message
                );
            }
            assert_eq!(held_now(), 4 * VALUE);
            outer.release();
            assert_eq!(held_now(), 0);
        });
    }

    #[test]
    fn string_sizes_are_checked_before_building() {
        let e = reserve_string("$concat", crate::limits::MAX_STRING_BYTES).unwrap_err();
        assert_eq!((e.code, e.code_name), (16493, "Location16493"));
        assert!(
            e.message
                .contains("Tried to create string longer than 16MB")
        );
        assert!(reserve_string("$concat", 1000).is_ok());
    }

    #[test]
    fn result_lengths_are_computed_without_building() {
        assert_eq!(range_len(0, 10, 3), 4);
        assert_eq!(range_len(0, 9, 3), 3);
        assert_eq!(range_len(5, 0, -2), 3);
        assert_eq!(range_len(0, 0, 1), 0);
        assert_eq!(range_len(0, 5, -1), 0);
        assert_eq!(
            range_len(i32::MIN as i64, i32::MAX as i64, 1),
            u32::MAX as usize
        );
        for (s, f, r) in [
            ("aXbXc", "X", "yy"),
            ("abc", "", "-"),
            ("aaa", "aa", "b"),
            ("abc", "z", "q"),
        ] {
            assert_eq!(
                replaced_len(s, f, r, true),
                s.replace(f, r).len(),
                "{s} {f} {r}"
            );
            assert_eq!(
                replaced_len(s, f, r, false),
                s.replacen(f, r, 1).len(),
                "{s} {f} {r}"
            );
        }
    }
}
