//! Every memory and size limit of query evaluation, in one place, with the errors they raise.
//!
//! Invariants:
//! - A string an expression builds is shorter than [`MAX_STRING_BYTES`]; the length is checked
//!   before the string is allocated (16493, as mongod's `RCString::create`).
//! - A document a pipeline returns is at most [`MAX_RESULT_DOCUMENT_BYTES`] (mongod's
//!   `BSONObjMaxInternalSize`); a larger one fails with BSONObjectTooLarge (10334) instead of
//!   reaching a reply a driver would reject.
//! - One blocking stage holds at most [`Limits::stage_bytes`] ([`Limits::group_bytes`] for
//!   `$group`/`$bucket`; `$sort` and the groups spill past it when disk use is allowed, see
//!   `spill.rs`), one `$push`/`$addToSet` at most
//!   [`Limits::push_bytes`]/[`Limits::add_to_set_bytes`], one `$range` at most
//!   [`Limits::range_bytes`], and one expression evaluation at most [`Limits::expression_bytes`]
//!   of values at once (see `memory.rs`). Sizes are what the values occupy in *this* process's
//!   memory (`memory::mem_size`), which is larger than mongod's estimates for the same values,
//!   so the same byte limits admit somewhat smaller inputs than mongod does.
//!
//! The `Limits` in force are thread-local, set by [`with_limits`] around a pipeline's or a
//! command's evaluation (as `collation.rs` does for collations), so expressions deep inside a
//! filter need no extra argument; outside it the defaults apply.

use std::cell::Cell;

use crate::error::QueryError;

/// mongod's `BSONObjMaxUserSize`: the largest document a user may store, and the bound of a
/// string value (strings are built only below it).
pub const MAX_BSON_OBJECT_BYTES: usize = 16 * 1024 * 1024;

/// A string built by an expression must be shorter than this (mongod: 16 MB).
pub const MAX_STRING_BYTES: usize = MAX_BSON_OBJECT_BYTES;

/// mongod's `BSONObjMaxInternalSize` (16 MiB + 16 KiB): the largest document an aggregation may
/// return. A batch holds at most 16 MiB plus one document, so a reply stays under 33 MB,
/// well inside `maxMessageSizeBytes` (48,000,000).
pub const MAX_RESULT_DOCUMENT_BYTES: usize = MAX_BSON_OBJECT_BYTES + 16 * 1024;

/// The memory one blocking stage may hold: mongod's default for
/// `internalQueryMaxBlockingSortMemoryUsageBytes` and `internalDocumentSourceGroupMaxMemoryBytes`.
pub const DEFAULT_MEMORY_LIMIT: usize = 100 * 1024 * 1024;

/// Nesting beyond this is refused when a value is built (mongod's `maxBSONDepth`, as Mangrove
/// reports it), so that no deeply nested value can exhaust the stack when it is measured,
/// serialized or dropped.
pub const MAX_VALUE_DEPTH: usize = 100;

/// `$lookup`, `$facet` and `$unionWith` pipelines nest at most this deep, as mongod's
/// `internalMaxSubPipelineViewDepth`.
pub(crate) const MAX_SUBPIPELINE_DEPTH: usize = 20;

/// Expressions nested deeper are refused when parsed rather than risking the stack.
pub(crate) const MAX_EXPRESSION_DEPTH: usize = 150;

/// The configurable limits, named after the mongod parameters they stand for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Per blocking stage other than `$group` (`$sort`, `$facet`, `$sample`, the documents one
    /// `$lookup` joins to one input, a result computed at once):
    /// `internalQueryMaxBlockingSortMemoryUsageBytes`.
    pub stage_bytes: usize,
    /// One `$group` or `$bucket` stage's groups: `internalDocumentSourceGroupMaxMemoryBytes`.
    pub group_bytes: usize,
    /// One `$push` accumulator: `internalQueryMaxPushBytes`.
    pub push_bytes: usize,
    /// One `$addToSet` accumulator: `internalQueryMaxAddToSetBytes`.
    pub add_to_set_bytes: usize,
    /// One `$range`: `internalQueryMaxRangeBytes`.
    pub range_bytes: usize,
    /// Values one expression evaluation holds at once (its operands, the array a `$map` is
    /// building, a `$reduce`'s accumulator, bound variables). mongod 7.0 has no such bound.
    pub expression_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            stage_bytes: DEFAULT_MEMORY_LIMIT,
            group_bytes: DEFAULT_MEMORY_LIMIT,
            push_bytes: DEFAULT_MEMORY_LIMIT,
            add_to_set_bytes: DEFAULT_MEMORY_LIMIT,
            range_bytes: DEFAULT_MEMORY_LIMIT,
            expression_bytes: DEFAULT_MEMORY_LIMIT,
        }
    }
}

thread_local! {
    static ACTIVE: Cell<Limits> = Cell::new(Limits::default());
}

/// Runs `f` with `limits` in force for every expression it evaluates on this thread.
pub fn with_limits<T>(limits: Limits, f: impl FnOnce() -> T) -> T {
    struct Restore(Limits);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(ACTIVE.with(|a| a.replace(limits)));
    f()
}

/// The limits in force on this thread.
pub fn active() -> Limits {
    ACTIVE.with(Cell::get)
}

/// 16493: a string of `len` bytes would be too long. Checked before building it.
pub(crate) fn check_string(op: &str, len: usize) -> Result<(), QueryError> {
    if len < MAX_STRING_BYTES {
        return Ok(());
    }
    Err(QueryError::location(
        16493,
        format!(
            "Tried to create string longer than {}MB: {op} would build a string of {len} bytes; strings are limited to 16MB, so build shorter ones (e.g. $substrBytes the inputs first)",
            MAX_STRING_BYTES / (1024 * 1024)
        ),
    ))
}

/// ExceededMemoryLimit (146), in mongod's words for the operator `op`.
pub(crate) fn exceeded(op: &str, needed: usize, limit: usize, advice: &str) -> QueryError {
    QueryError::new(
        146,
        "ExceededMemoryLimit",
        format!(
            "{op} would use too much memory ({needed} bytes) and cannot spill to disk. Memory limit: {limit} bytes; {advice}"
        ),
    )
}

/// `$push`/`$addToSet` past their accumulator limit (146), in mongod's words.
pub(crate) fn accumulator_exceeded(op: &str, limit: usize) -> QueryError {
    QueryError::new(
        146,
        "ExceededMemoryLimit",
        format!(
            "{op} used too much memory and cannot spill to disk. Memory limit: {limit} bytes; accumulate fewer or smaller values per group (e.g. $project only the fields needed before the $group)"
        ),
    )
}

/// A blocking stage past the per-stage limit (292): one that cannot spill, or any when disk
/// use is not allowed; the message says what can help.
pub(crate) fn stage_exceeded(stage: &str, limit: usize) -> QueryError {
    let how = match stage {
        "$sort" | "$group" | "$bucket" | "$bucketAuto" | "$sample" | "$densify" => {
            "pass allowDiskUse: true (or set allowDiskUseByDefault) to let it spill to disk, or add a $match or $limit earlier in the pipeline to reduce its input"
        }
        _ => {
            "add a $match or $limit earlier in the pipeline to reduce its input (this stage cannot spill to disk)"
        }
    };
    QueryError::new(
        292,
        "QueryExceededMemoryLimitNoDiskUseAllowed",
        format!("{stage} exceeded the per-stage memory limit of {limit} bytes; {how}"),
    )
}

/// BSONObjectTooLarge (10334) for a result document of `size` bytes, in mongod's words.
pub(crate) fn object_too_large(size: usize, first: &str) -> QueryError {
    QueryError::new(
        10334,
        "BSONObjectTooLarge",
        format!(
            "BSONObj size: {size} (0x{size:X}) is invalid. Size must be between 0 and {MAX_RESULT_DOCUMENT_BYTES}(16MB) First element: {first}; a result document must fit in 16MB: $project fewer or smaller fields, or $unwind large arrays"
        ),
    )
}

/// Overflow (15): a value nested deeper than [`MAX_VALUE_DEPTH`].
pub(crate) fn too_deep() -> QueryError {
    QueryError::new(
        15,
        "Overflow",
        format!(
            "cannot convert document to BSON because it exceeds the limit of {MAX_VALUE_DEPTH} levels of nesting; build flatter values"
        ),
    )
}

/// Fails with 10334 when `doc` is larger than a result document may be.
pub(crate) fn check_result(doc: &bson::RawDocument) -> Result<(), QueryError> {
    let size = doc.as_bytes().len();
    if size <= MAX_RESULT_DOCUMENT_BYTES {
        return Ok(());
    }
    let first = match doc.iter().next() {
        Some(Ok((k, bson::raw::RawBsonRef::String(s)))) => {
            format!("{}: \"{}...\"", k.as_str(), clip(s, 40))
        }
        Some(Ok((k, v))) => match bson::Bson::try_from(v) {
            Ok(b) => format!("{}: {}", k.as_str(), clip(&b.to_string(), 60)),
            Err(_) => k.as_str().to_string(),
        },
        _ => String::new(),
    };
    Err(object_too_large(size, &first))
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub(crate) fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
