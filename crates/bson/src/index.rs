//! Secondary index definitions and index keys.
//!
//! An index entry's key is the concatenation of the order-preserving encodings
//! ([`crate::encode_key`]) of the document's values for each indexed field, each inverted
//! byte-for-byte for a descending field. The encodings are prefix-free, so concatenation
//! orders entries as MongoDB orders compound keys, and inverting a prefix-free encoding reverses
//! its order. A missing field indexes as `null`; an array indexes each element (multikey), and an
//! empty array as `undefined`, as in MongoDB.
//!
//! A partial index's `partialFilterExpression` is in the query language, which lives above this
//! crate: whoever compiles a specification passes a [`CompilePartial`] that turns the expression
//! into a [`PartialFilter`] (the query crate's `compile_partial`). The storage engine gets one
//! through its options, so it derives keys without knowing the language.

use std::fmt;
use std::ops::{Bound, Deref};
use std::sync::Arc;

use bson::{Bson, Document, RawBsonRef, RawDocument};

use crate::collation::Collation;
use crate::encode_key;
use crate::error::CodedError;
use crate::hashed::hash_value;
use crate::key::encode_key_collated;
use crate::path::split_path;

/// One contiguous range of an index's entry keys.
pub type KeyInterval = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The compiled predicate of a partial index: whether a document has entries in it.
#[derive(Clone)]
pub struct PartialFilter(Arc<dyn Fn(&RawDocument) -> bool + Send + Sync>);

impl PartialFilter {
    pub fn new(matches: impl Fn(&RawDocument) -> bool + Send + Sync + 'static) -> Self {
        PartialFilter(Arc::new(matches))
    }

    pub fn matches(&self, doc: &RawDocument) -> bool {
        (self.0)(doc)
    }
}

impl fmt::Debug for PartialFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PartialFilter")
    }
}

/// Compiles a `partialFilterExpression`; its errors are reported as the specification's.
pub type CompilePartial = dyn Fn(&Document) -> Result<PartialFilter, CodedError> + Send + Sync;

/// A shareable [`CompilePartial`], for holders that outlive one call (the engine's options).
/// The default refuses partial indexes ([`no_partial_filters`]).
#[derive(Clone)]
pub struct PartialFilters(Arc<CompilePartial>);

impl PartialFilters {
    pub fn new(
        compile: impl Fn(&Document) -> Result<PartialFilter, CodedError> + Send + Sync + 'static,
    ) -> Self {
        PartialFilters(Arc::new(compile))
    }
}

impl Deref for PartialFilters {
    type Target = CompilePartial;

    fn deref(&self) -> &CompilePartial {
        &*self.0
    }
}

impl Default for PartialFilters {
    fn default() -> Self {
        PartialFilters::new(no_partial_filters)
    }
}

impl fmt::Debug for PartialFilters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PartialFilters")
    }
}

/// The [`CompilePartial`] of a process without the query language: refuses partial indexes.
pub fn no_partial_filters(_: &Document) -> Result<PartialFilter, CodedError> {
    Err(cannot_create(
        "partial indexes are not available here: no compiler for partialFilterExpression was given",
    ))
}

/// Index entries one document may produce: bounds the cartesian product of a compound multikey
/// index and the work one write can cause.
pub const MAX_KEYS_PER_DOCUMENT: usize = 10_000;

/// The fields an index specification may have (MongoDB's, minus the kinds Mangrove lacks).
const SPEC_FIELDS: &[&str] = &[
    "key",
    "name",
    "v",
    "unique",
    "sparse",
    "partialFilterExpression",
    "expireAfterSeconds",
    "background",
    "hidden",
    "collation",
    "ns",
    "storageEngine",
    // Text indexes' (index_text.rs).
    "weights",
    "default_language",
    "language_override",
    "textIndexVersion",
    "2dsphereIndexVersion",
    "min",
    "max",
    "bits",
];

fn cannot_create(message: impl Into<String>) -> CodedError {
    CodedError::new(67, "CannotCreateIndex", message)
}

fn bad_spec_option(message: impl Into<String>) -> CodedError {
    CodedError::new(197, "InvalidIndexSpecificationOption", message)
}

/// How an indexed field's values become key components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `1` or `-1`: the value itself, in order (see [`IndexField::descending`]).
    Ordered,
    /// `"hashed"`: a 64-bit hash of the value ([`crate::hashed::hash_value`]); serves equality
    /// only, and refuses arrays.
    Hashed,
    /// `"text"` (stored as `_fts: "text", _ftsx: 1`): a term and its score per key, derived
    /// by `mangrove-text` (see `index_text.rs`); serves `$text` only.
    Text,
    /// `"2dsphere"`: the cells covering the value on the sphere (`geo_index.rs`).
    Sphere2d,
    /// `"2d"`: the cell of a legacy pair on the index's plane (`geo_index.rs`).
    Flat2d(crate::geo_index::Plane),
}

impl KeyKind {
    /// Whether the index's order on this field is the values' order, so ranges and sorts can
    /// use it.
    pub fn is_ordered(self) -> bool {
        self == KeyKind::Ordered
    }

    /// Whether the field's components are geo cells.
    pub fn is_geo(self) -> bool {
        matches!(self, KeyKind::Sphere2d | KeyKind::Flat2d(_))
    }

    pub fn is_flat_2d(self) -> bool {
        matches!(self, KeyKind::Flat2d(_))
    }

    /// The geo index kind of a geo field.
    pub fn geo(self) -> Option<crate::geo_index::GeoKind> {
        match self {
            KeyKind::Sphere2d => Some(crate::geo_index::GeoKind::Sphere),
            KeyKind::Flat2d(plane) => Some(crate::geo_index::GeoKind::Flat(plane)),
            _ => None,
        }
    }
}

/// One indexed field.
#[derive(Debug, Clone)]
pub struct IndexField {
    pub path: String,
    parts: Vec<String>,
    pub descending: bool,
    pub kind: KeyKind,
    /// The index's collation: strings are keyed by its sort keys.
    pub collation: Option<Arc<Collation>>,
}

impl IndexField {
    /// Appends `value`'s key component for this field: the value (inverted when descending), or
    /// its hash.
    pub fn encode(&self, value: RawBsonRef<'_>, key: &mut Vec<u8>) {
        let start = key.len();
        match self.kind {
            KeyKind::Ordered => match &self.collation {
                Some(c) => encode_key_collated(value, c, key),
                None => encode_key(value, key),
            },
            KeyKind::Text | KeyKind::Sphere2d | KeyKind::Flat2d(_) => encode_key(value, key),
            KeyKind::Hashed => encode_key(RawBsonRef::Int64(hash_value(value)), key),
        }
        if self.descending {
            for b in &mut key[start..] {
                *b = !*b;
            }
        }
    }
}

/// A compiled index definition: what to index and how.
#[derive(Debug, Clone)]
pub struct IndexSpec {
    pub name: String,
    pub fields: Vec<IndexField>,
    pub unique: bool,
    pub sparse: bool,
    pub partial: Option<PartialFilter>,
    /// The raw `partialFilterExpression`, for the planner's implication check.
    pub partial_raw: Option<Document>,
    pub expire_after_seconds: Option<i64>,
    pub key_pattern: Document,
    /// Strings are keyed (and the index serves queries) under this collation.
    pub collation: Option<Arc<Collation>>,
    /// A text index's fields, weights and languages (`index_text.rs`).
    pub text: Option<Arc<mangrove_text::TextIndex>>,
}

#[path = "index_text.rs"]
mod text;

pub use text::term_prefix;

fn key_of(out: &Document) -> Document {
    out.get_document("key").cloned().unwrap_or_default()
}

/// The `key` of a specification being normalized.
fn spec_key(spec: &Document) -> Result<Document, CodedError> {
    match spec.get("key") {
        Some(Bson::Document(k)) => Ok(k.clone()),
        Some(_) => Err(CodedError::type_mismatch(
            "The 'key' field must be an object",
        )),
        None => Err(CodedError::failed_to_parse(format!(
            "The 'key' field is a required property of an index specification: {spec}"
        ))),
    }
}

/// The `name` of a specification being normalized.
fn spec_name(spec: &Document) -> Result<String, CodedError> {
    let name = match spec.get("name") {
        Some(Bson::String(n)) if !n.is_empty() => n.clone(),
        Some(Bson::String(_)) => return Err(cannot_create("index name cannot be empty")),
        Some(_) => {
            return Err(CodedError::type_mismatch(
                "The 'name' field must be a string",
            ));
        }
        None => {
            return Err(CodedError::failed_to_parse(format!(
                "The 'name' field is a required property of an index specification: {spec}"
            )));
        }
    };
    if name.contains('\0') {
        return Err(cannot_create("index name cannot contain NUL bytes"));
    }
    Ok(name)
}

/// Copies one option of a specification into its normalized form `out`: flags only when on,
/// `expireAfterSeconds` as an int32; options without effect are dropped.
fn normalize_option(field: &str, value: &Bson, out: &mut Document) -> Result<(), CodedError> {
    match field {
        "unique" | "sparse" | "hidden" => {
            let on = match value {
                Bson::Boolean(b) => *b,
                Bson::Int32(n) => *n != 0,
                Bson::Int64(n) => *n != 0,
                Bson::Double(n) => *n != 0.0,
                _ => {
                    return Err(CodedError::type_mismatch(format!(
                        "The field '{field}' must be a boolean"
                    )));
                }
            };
            if on {
                out.insert(field, true);
            }
        }
        "partialFilterExpression" => {
            if !matches!(value, Bson::Document(_)) {
                return Err(CodedError::type_mismatch(
                    "The field 'partialFilterExpression' must be an object",
                ));
            }
            out.insert(field, value.clone());
        }
        "expireAfterSeconds" => {
            out.insert(field, expire_after_seconds(value)?);
        }
        // Without effect (every build is a background build) but kept, as mongod keeps it, so
        // that `listIndexes` shows what was asked.
        "background" => match value {
            Bson::Boolean(_) | Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) => {
                out.insert(field, value.clone());
            }
            _ => {
                return Err(CodedError::type_mismatch(
                    "The field 'background' must be a boolean",
                ));
            }
        },
        // key, name, v, ns, storageEngine, collation: taken or dropped by the caller.
        _ => {}
    }
    Ok(())
}

/// The `_id` index takes no options besides its name, version and collation (mongod: a
/// `unique: true` there is refused, not accepted as a second `_id` index).
fn refuse_id_index_options(spec: &Document, key: &Document) -> Result<(), CodedError> {
    let is_id = key.len() == 1
        && key.get("_id").is_some_and(|d| {
            matches!(d, Bson::Int32(1) | Bson::Int64(1)) || d == &Bson::Double(1.0)
        });
    if !is_id {
        return Ok(());
    }
    match spec.keys().find(|f| {
        !matches!(
            f.as_str(),
            "key" | "name" | "v" | "collation" | "ns" | "background"
        )
    }) {
        Some(field) => Err(bad_spec_option(format!(
            "The field '{field}' is not valid for an _id index specification. Specification: {spec}"
        ))),
        None => Ok(()),
    }
}

fn expire_after_seconds(value: &Bson) -> Result<i32, CodedError> {
    let secs = match value {
        Bson::Int32(n) => *n as f64,
        Bson::Int64(n) => *n as f64,
        Bson::Double(n) => *n,
        _ => {
            return Err(CodedError::type_mismatch(
                "TTL index 'expireAfterSeconds' option must be numeric",
            ));
        }
    };
    if !(0.0..=i32::MAX as f64).contains(&secs) || secs.is_nan() {
        return Err(CodedError::new(
            2,
            "BadValue",
            format!(
                "TTL index 'expireAfterSeconds' option must be within an acceptable range, try a lower number: {secs}"
            ),
        ));
    }
    Ok(secs as i32)
}

/// One `path: direction` (or `path: "kind"`) of a key pattern.
fn compile_field(path: &str, dir: &Bson) -> Result<IndexField, CodedError> {
    let (descending, kind) = match dir {
        Bson::Int32(n) if *n != 0 => (*n < 0, KeyKind::Ordered),
        Bson::Int64(n) if *n != 0 => (*n < 0, KeyKind::Ordered),
        Bson::Double(n) if *n != 0.0 && !n.is_nan() => (*n < 0.0, KeyKind::Ordered),
        Bson::Decimal128(_) => (false, KeyKind::Ordered),
        Bson::String(kind) if kind == "hashed" => (false, KeyKind::Hashed),
        Bson::String(kind) if kind == "text" => (false, KeyKind::Text),
        Bson::String(kind) if kind == "2dsphere" => (false, KeyKind::Sphere2d),
        Bson::String(kind) if kind == "2d" => (false, KeyKind::Flat2d(Default::default())),
        Bson::String(kind) => {
            return Err(cannot_create(format!(
                "Index type '{kind}' on field '{path}' is not supported by Mangrove; ascending (1), descending (-1) and \"hashed\" keys are"
            )));
        }
        other => {
            return Err(cannot_create(format!(
                "Values in the index key pattern can't be 0 or non-numbers: {path}: {other}"
            )));
        }
    };
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(cannot_create(format!(
            "Index keys cannot be an empty field: '{path}'"
        )));
    }
    if path.split('.').any(|p| p.starts_with('$')) {
        return Err(cannot_create(format!(
            "Index key contains an illegal field name: '{path}'"
        )));
    }
    Ok(IndexField {
        path: path.to_string(),
        parts: split_path(path),
        descending,
        kind,
        collation: None,
    })
}

/// An index's `collation`: `None` for none or the simple one, which mongod does not store.
fn index_collation(spec: Option<&Bson>) -> Result<Option<Collation>, CodedError> {
    match spec {
        None => Ok(None),
        Some(Bson::Document(d)) => {
            let raw = bson::RawDocumentBuf::try_from(d)
                .map_err(|e| CodedError::bad_value(format!("invalid collation: {e}")))?;
            Collation::parse(&raw)
        }
        Some(_) => Err(CodedError::type_mismatch(
            "The field 'collation' must be an object",
        )),
    }
}

/// mongod's limits on `"hashed"` fields: one per index, never unique (equal hashes of unequal
/// values would be refused as duplicates).
fn check_hashed(fields: &[IndexField], key: &Document, unique: bool) -> Result<(), CodedError> {
    let hashed = fields.iter().filter(|f| f.kind == KeyKind::Hashed).count();
    if hashed > 1 {
        return Err(CodedError::location(
            31303,
            format!(
                "A maximum of one index field is allowed to be hashed but found {hashed} for 'key' {key}"
            ),
        ));
    }
    if hashed == 1 && unique {
        return Err(CodedError::location(
            16764,
            "Currently hashed indexes cannot guarantee uniqueness. Use a regular index.",
        ));
    }
    Ok(())
}

impl IndexSpec {
    /// Validates one element of `createIndexes.indexes` and returns it in the form
    /// `listIndexes` reports (`v: 2` first, then `key`, `name`, and the options given).
    /// `partial` compiles a `partialFilterExpression`, to check it.
    pub fn normalize(raw: &RawDocument, partial: &CompilePartial) -> Result<Document, CodedError> {
        let spec = Document::try_from(raw)
            .map_err(|e| CodedError::bad_value(format!("invalid index specification: {e}")))?;
        for (field, _) in &spec {
            if !SPEC_FIELDS.contains(&field.as_str()) {
                return Err(bad_spec_option(format!(
                    "The field '{field}' is not valid for an index specification. Specification: {spec}"
                )));
            }
        }
        let key = spec_key(&spec)?;
        let name = spec_name(&spec)?;
        refuse_id_index_options(&spec, &key)?;
        let collation = index_collation(spec.get("collation"))?;
        let mut out = Document::new();
        out.insert("v", 2i32);
        let key_copy = key.clone();
        out.insert("key", key);
        out.insert("name", name);
        if let Some(c) = collation {
            out.insert("collation", c.index_spec());
        }
        for (field, value) in &spec {
            normalize_option(field, value, &mut out)?;
        }
        text::normalize(&spec, &key_of(&out), &mut out)?;
        crate::geo_index::normalize(&spec, &key_copy, &mut out)?;
        // Compiling checks the key pattern and the options together.
        IndexSpec::compile(&out, partial)?;
        Ok(out)
    }

    /// Compiles a normalized specification (as stored in the catalog); `partial` compiles its
    /// `partialFilterExpression`, if it has one.
    pub fn compile(spec: &Document, partial: &CompilePartial) -> Result<IndexSpec, CodedError> {
        let key_pattern = spec
            .get_document("key")
            .map_err(|_| cannot_create("index specification without a key pattern"))?
            .clone();
        if key_pattern.is_empty() {
            return Err(cannot_create("Index keys cannot be empty."));
        }
        if key_pattern.len() > 32 {
            return Err(cannot_create(
                "Index key pattern has more than 32 fields, the maximum",
            ));
        }
        let collation = index_collation(spec.get("collation"))?.map(Arc::new);
        let mut fields = key_pattern
            .iter()
            .map(|(path, dir)| compile_field(path, dir))
            .collect::<Result<Vec<_>, _>>()?;
        for field in &mut fields {
            field.collation = collation.clone();
        }
        let text = text::compile(spec, &mut fields)?;
        let flat: Vec<bool> = fields.iter().map(|f| f.kind.is_flat_2d()).collect();
        let plane = crate::geo_index::configure(&flat, spec)?;
        for f in fields.iter_mut().filter(|f| f.kind.is_flat_2d()) {
            f.kind = KeyKind::Flat2d(plane);
        }
        let flag = |name: &str| spec.get_bool(name).unwrap_or(false);
        check_hashed(&fields, &key_pattern, flag("unique"))?;
        let partial_raw = spec.get_document("partialFilterExpression").ok().cloned();
        let partial = partial_raw.as_ref().map(partial).transpose()?;
        let expire_after_seconds = spec.get_i32("expireAfterSeconds").ok().map(i64::from);
        if expire_after_seconds.is_some() && fields.len() != 1 {
            return Err(cannot_create(
                "TTL indexes are single-field indexes, compound indexes do not support TTL",
            ));
        }
        let name = spec.get_str("name").unwrap_or_default().to_string();
        let is_id = fields.len() == 1 && fields[0].path == "_id";
        if is_id && collation.is_some() {
            return Err(bad_spec_option(
                "The _id index cannot have a collation: Mangrove keeps documents in binary _id order",
            ));
        }
        // A clustered collection's expiry is the server's own TTL index on `_id`, named with a
        // leading `$ts_` (which `createIndexes` refuses in a user's index name).
        let internal_ttl = name.starts_with("$ts_") && !flag("sparse") && partial.is_none();
        if is_id
            && !internal_ttl
            && (flag("sparse") || partial.is_some() || expire_after_seconds.is_some())
        {
            return Err(bad_spec_option(
                "The _id index cannot be sparse, partial or TTL",
            ));
        }
        Ok(IndexSpec {
            name,
            fields,
            unique: flag("unique"),
            sparse: flag("sparse"),
            partial,
            partial_raw,
            expire_after_seconds,
            key_pattern,
            collation,
            text,
        })
    }

    /// Whether `doc` has an entry at all (sparse and partial indexes leave some out).
    fn covers(&self, doc: &RawDocument) -> bool {
        if let Some(p) = &self.partial
            && !p.matches(doc)
        {
            return false;
        }
        if self.sparse {
            return self
                .fields
                .iter()
                .any(|f| !matches!(field_values(doc, &f.parts), Values::Missing));
        }
        true
    }

    /// The document's index keys, sorted and without duplicates; empty when the index leaves
    /// the document out. Errors when two indexed fields are arrays (MongoDB cannot index
    /// parallel arrays) or the keys would exceed [`MAX_KEYS_PER_DOCUMENT`].
    pub fn keys(&self, doc: &RawDocument) -> Result<Vec<Vec<u8>>, CodedError> {
        Ok(self.keys_and_multikey(doc)?.0)
    }

    /// [`IndexSpec::keys`], and whether an indexed field is an array in this document (which
    /// makes the index multikey: its range conditions on one field can no longer be combined).
    pub fn keys_and_multikey(&self, doc: &RawDocument) -> Result<(Vec<Vec<u8>>, bool), CodedError> {
        let mut out = Vec::new();
        let multikey = self.for_each_key(doc, &mut |key, _| out.push(key))?;
        out.sort_unstable();
        out.dedup();
        Ok((out, multikey))
    }

    /// The field values behind one of the document's keys, as `{field: value, ...}` (a hashed
    /// field's hash, as the key holds it): what a DuplicateKey error reports as `keyValue` and
    /// `returnKey` returns.
    pub fn key_value(&self, doc: &RawDocument, key: &[u8]) -> Document {
        let mut found = None;
        let _ = self.for_each_key(doc, &mut |k, values| {
            if found.is_none() && k == key {
                found = Some(values.to_vec());
            }
        });
        let values = found.unwrap_or_default();
        let mut out = Document::new();
        for (field, value) in self.fields.iter().zip(values) {
            out.insert(field.path.clone(), value);
        }
        out
    }

    /// The key this index would hold for `values` (one per field, in the key pattern's order),
    /// as the bound of a range: what `find`'s `min` and `max` name. Encoded exactly as
    /// [`IndexSpec::keys`] encodes a document's key, so the bound orders against entries.
    pub fn encode_values(&self, values: &[RawBsonRef<'_>]) -> Vec<u8> {
        let mut key = Vec::new();
        for (field, value) in self.fields.iter().zip(values) {
            field.encode(*value, &mut key);
        }
        key
    }

    /// A hashed field cannot hold an array (mongod's 16766).
    fn refuse_hashed_arrays(&self, per_field: &[Values<'_>]) -> Result<(), CodedError> {
        let hashed_array = self
            .fields
            .iter()
            .zip(per_field)
            .find(|(f, v)| f.kind == KeyKind::Hashed && matches!(v, Values::Many(_)));
        match hashed_array {
            Some((field, _)) => Err(CodedError::location(
                16766,
                format!(
                    "Error: hashed indexes do not currently support array values. Found array at path: {}",
                    field.path
                ),
            )),
            None => Ok(()),
        }
    }

    /// Each field's values (a geo field's cells); `None` when a geo index leaves the document
    /// out (no geo value at all: 2dsphere is sparse on its geo fields).
    fn values_of<'a>(&self, doc: &'a RawDocument) -> Result<Option<Vec<Values<'a>>>, CodedError> {
        let per_field: Vec<Values<'_>> = self
            .fields
            .iter()
            .map(|f| field_or_cells(doc, f))
            .collect::<Result<_, _>>()?;
        let geo = || {
            self.fields
                .iter()
                .zip(&per_field)
                .filter(|(f, _)| f.kind.is_geo())
        };
        if geo().next().is_some() && geo().all(|(_, v)| matches!(v, Values::Missing)) {
            return Ok(None);
        }
        Ok(Some(per_field))
    }

    /// Refuses what cannot be indexed (an array in a hashed field, parallel arrays, too many
    /// keys); returns how many keys there are and whether an array makes the index multikey.
    /// A geo field's cells are not an array.
    fn key_count(&self, per_field: &[Values<'_>]) -> Result<(usize, bool), CodedError> {
        let arrays: Vec<&str> = self
            .fields
            .iter()
            .zip(per_field)
            .filter(|(f, v)| !f.kind.is_geo() && matches!(v, Values::Many(_)))
            .map(|(f, _)| f.path.as_str())
            .collect();
        self.refuse_hashed_arrays(per_field)?;
        if arrays.len() > 1 {
            return Err(CodedError::new(
                171,
                "CannotIndexParallelArrays",
                format!(
                    "cannot index parallel arrays [{}] [{}]",
                    arrays[1], arrays[0]
                ),
            ));
        }
        let total: usize = per_field.iter().map(Values::len).product();
        if total > MAX_KEYS_PER_DOCUMENT {
            return Err(CodedError::new(
                17280,
                "KeyTooLong",
                format!(
                    "document would produce {total} keys in index {}, more than {MAX_KEYS_PER_DOCUMENT}",
                    self.name
                ),
            ));
        }
        Ok((total, !arrays.is_empty()))
    }

    /// Emits every key; returns whether the document made the index multikey.
    fn for_each_key(
        &self,
        doc: &RawDocument,
        emit: &mut dyn FnMut(Vec<u8>, &[Bson]),
    ) -> Result<bool, CodedError> {
        if !self.covers(doc) {
            return Ok(false);
        }
        if let Some(text) = &self.text {
            return text::for_each_key(self, text, doc, emit);
        }
        let Some(per_field) = self.values_of(doc)? else {
            return Ok(false);
        };
        let (total, multikey) = self.key_count(&per_field)?;
        // At most one field has several values, so the product is that field's values.
        let mut choice = vec![0usize; per_field.len()];
        for n in 0..total.max(1) {
            let mut rest = n;
            for (i, v) in per_field.iter().enumerate() {
                choice[i] = rest % v.len();
                rest /= v.len();
            }
            let reached = per_field.iter().zip(&choice).any(|(v, &c)| v.get(c).1);
            if self.sparse && !reached {
                continue;
            }
            let mut key = Vec::new();
            let mut values = Vec::with_capacity(per_field.len());
            for ((field, v), &c) in self.fields.iter().zip(&per_field).zip(&choice) {
                let (value, _) = v.get(c);
                field.encode(value, &mut key);
                values.push(match field.kind {
                    KeyKind::Ordered | KeyKind::Text | KeyKind::Sphere2d | KeyKind::Flat2d(_) => {
                        Bson::try_from(value).unwrap_or(Bson::Null)
                    }
                    KeyKind::Hashed => Bson::Int64(hash_value(value)),
                });
            }
            emit(key, &values);
        }
        Ok(multikey)
    }
}

/// What a path yields for indexing. Each value says whether the path reached it (`true`) or
/// stands for a path that ended nowhere inside an array (`null`, or `undefined` for an array
/// with no elements to follow): a sparse index leaves out keys made only of the latter, as
/// MongoDB's key generator does.
enum Values<'a> {
    Missing,
    One(RawBsonRef<'a>),
    /// An array was met: every value reached (never empty).
    Many(Vec<(RawBsonRef<'a>, bool)>),
}

impl<'a> Values<'a> {
    fn len(&self) -> usize {
        match self {
            Values::Missing | Values::One(_) => 1,
            Values::Many(v) => v.len(),
        }
    }

    fn get(&self, i: usize) -> (RawBsonRef<'a>, bool) {
        match self {
            Values::Missing => (RawBsonRef::Null, false),
            Values::One(v) => (*v, true),
            Values::Many(v) => v.get(i).copied().unwrap_or((RawBsonRef::Null, false)),
        }
    }
}

/// A field's values, or a geo field's cells (as int64s, each a value reached).
fn field_or_cells<'a>(doc: &'a RawDocument, field: &IndexField) -> Result<Values<'a>, CodedError> {
    let Some(kind) = field.kind.geo() else {
        return Ok(field_values(doc, &field.parts));
    };
    let cells = crate::geo_index::cells(kind, &field.parts, doc)?;
    Ok(match cells.len() {
        0 => Values::Missing,
        _ => Values::Many(
            cells
                .into_iter()
                .map(|c| (RawBsonRef::Int64(c), true))
                .collect(),
        ),
    })
}

fn field_values<'a>(doc: &'a RawDocument, parts: &[String]) -> Values<'a> {
    let mut out = Vec::new();
    let mut walk = Walk::default();
    collect(RawBsonRef::Document(doc), parts, &mut out, &mut walk, 0);
    if walk.saw_array {
        if out.is_empty() {
            // The path ended at an empty array (the field exists) or passed through one.
            out.push((RawBsonRef::Undefined, walk.ended_at_empty_array));
        }
        return Values::Many(out);
    }
    match out.pop() {
        Some((v, _)) => Values::One(v),
        None => Values::Missing,
    }
}

/// What following a path met besides values.
#[derive(Default)]
struct Walk {
    saw_array: bool,
    ended_at_empty_array: bool,
}

/// Follows `parts` from `value`, fanning out through arrays. A path that ends in an array
/// yields its elements; a path that dies inside an array's element yields `null` for it (not
/// reached), as MongoDB's key generator does.
fn collect<'a>(
    value: RawBsonRef<'a>,
    parts: &[String],
    out: &mut Vec<(RawBsonRef<'a>, bool)>,
    walk: &mut Walk,
    depth: usize,
) {
    if depth > 200 || out.len() > MAX_KEYS_PER_DOCUMENT {
        return;
    }
    let Some((first, rest)) = parts.split_first() else {
        match value {
            RawBsonRef::Array(arr) => {
                walk.saw_array = true;
                let before = out.len();
                out.extend(arr.into_iter().map_while(Result::ok).map(|v| (v, true)));
                walk.ended_at_empty_array |= out.len() == before;
            }
            v => out.push((v, true)),
        }
        return;
    };
    match value {
        RawBsonRef::Document(d) => {
            if let Ok(Some(v)) = d.get(first) {
                collect(v, rest, out, walk, depth + 1);
            }
        }
        RawBsonRef::Array(arr) => {
            walk.saw_array = true;
            for e in arr.into_iter().map_while(Result::ok) {
                match e {
                    RawBsonRef::Document(d) => match d.get(first) {
                        Ok(Some(v)) => collect(v, rest, out, walk, depth + 1),
                        _ => out.push((RawBsonRef::Null, false)),
                    },
                    _ => out.push((RawBsonRef::Null, false)),
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use bson::{doc, rawdoc};

    use super::*;

    #[test]
    fn the_partial_filter_is_compiled_by_the_caller() {
        let spec = doc! {
            "v": 2, "key": { "a": 1 }, "name": "a_1", "partialFilterExpression": { "b": 1 },
        };
        let refused = IndexSpec::compile(&spec, &no_partial_filters).unwrap_err();
        assert_eq!(refused.code, 67);
        let has_b = |_: &Document| {
            Ok(PartialFilter::new(|d: &RawDocument| {
                matches!(d.get("b"), Ok(Some(_)))
            }))
        };
        let index = IndexSpec::compile(&spec, &has_b).unwrap();
        assert!(index.keys(&rawdoc! { "a": 1 }).unwrap().is_empty());
        assert_eq!(index.keys(&rawdoc! { "a": 1, "b": 1 }).unwrap().len(), 1);
        let normalized =
            IndexSpec::normalize(&rawdoc! { "key": { "a": 1 }, "name": "a_1" }, &has_b);
        assert_eq!(
            normalized.unwrap(),
            doc! { "v": 2, "key": { "a": 1 }, "name": "a_1" }
        );
    }

    /// MongoDB's key generator with a sparse index: keys made only of paths that ended nowhere
    /// inside arrays are left out; a path ending at an empty array exists (key `undefined`).
    #[test]
    fn sparse_indexes_leave_out_keys_no_path_reached() {
        let spec = |key: Document| doc! { "v": 2, "key": key, "name": "k", "sparse": true };
        let nested = IndexSpec::compile(&spec(doc! { "a.b": 1 }), &no_partial_filters).unwrap();
        assert!(nested.keys(&rawdoc! { "a": 1 }).unwrap().is_empty());
        assert!(nested.keys(&rawdoc! { "a": [] }).unwrap().is_empty());
        assert!(
            nested
                .keys(&rawdoc! { "a": [{ "c": 1 }] })
                .unwrap()
                .is_empty()
        );
        let one = nested.keys(&rawdoc! { "a": [1, { "b": 1 }] }).unwrap();
        assert_eq!(one, nested.keys(&rawdoc! { "a": { "b": 1 } }).unwrap());
        let top = IndexSpec::compile(&spec(doc! { "a": 1 }), &no_partial_filters).unwrap();
        assert_eq!(top.keys(&rawdoc! { "a": [] }).unwrap().len(), 1);
        // Not sparse: the same documents are indexed under null or undefined.
        let dense = IndexSpec::compile(
            &doc! { "v": 2, "key": { "a.b": 1 }, "name": "k" },
            &no_partial_filters,
        )
        .unwrap();
        assert_eq!(dense.keys(&rawdoc! { "a": [] }).unwrap().len(), 1);
        assert_eq!(
            dense.keys(&rawdoc! { "a": [1, { "b": 1 }] }).unwrap().len(),
            2
        );
    }
}
