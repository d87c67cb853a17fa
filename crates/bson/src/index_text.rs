//! Text indexes' part of index definitions (a child module of `index.rs`): normalizing a text
//! key pattern and its options through `mangrove-text`, compiling them, and deriving a
//! document's text keys. A text index's key is its prefix fields' values, then one term and
//! that term's score (mongod's `_fts` and `_ftsx` components: a string and a double, in the
//! ordinary key encoding), then its suffix fields' values; one key per distinct term of the
//! document. Prefix and suffix fields must not be arrays (mongod's 16675). The keys are
//! ordinary index keys, so transactions, snapshots and replay treat them like any other.

use std::sync::Arc;

use bson::{Bson, Document, RawBsonRef, RawDocument};
use mangrove_text::{TextError, TextIndex, is_text_key_pattern, normalize_text_spec};

use super::{IndexField, IndexSpec, KeyKind, MAX_KEYS_PER_DOCUMENT, Values, field_values};
use crate::error::CodedError;

/// The options only text indexes take.
pub(super) const TEXT_OPTIONS: &[&str] = &[
    "weights",
    "default_language",
    "language_override",
    "textIndexVersion",
];

pub(super) fn coded(e: TextError) -> CodedError {
    CodedError::location(e.code, e.message)
}

/// For a text key pattern, replaces `out`'s key with the normalized one and appends the text
/// options; refuses text options on any other index (mongod's 67).
pub(super) fn normalize(
    spec: &Document,
    key: &Document,
    out: &mut Document,
) -> Result<(), CodedError> {
    if !is_text_key_pattern(key) {
        if let Some(option) = TEXT_OPTIONS.iter().find(|o| spec.contains_key(**o)) {
            return Err(CodedError::location(
                67,
                format!("the '{option}' option is only valid for text indexes"),
            ));
        }
        return Ok(());
    }
    let (key, options) = normalize_text_spec(spec, key).map_err(coded)?;
    out.insert("key", key);
    out.extend(options);
    Ok(())
}

/// The compiled text part of a normalized specification, if it is a text index; marks the
/// `_ftsx` field (the score) as part of the text component.
pub(super) fn compile(
    spec: &Document,
    fields: &mut [IndexField],
) -> Result<Option<Arc<TextIndex>>, CodedError> {
    if !fields.iter().any(|f| f.kind == KeyKind::Text) {
        return Ok(None);
    }
    for f in fields.iter_mut().filter(|f| f.path == "_ftsx") {
        f.kind = KeyKind::Text;
        f.descending = false;
    }
    TextIndex::from_spec(spec)
        .map(Arc::new)
        .map(Some)
        .map_err(coded)
}

fn single<'a>(doc: &'a RawDocument, field: &IndexField) -> Result<RawBsonRef<'a>, CodedError> {
    match field_values(doc, &field.parts) {
        Values::Missing => Ok(RawBsonRef::Null),
        Values::One(v) => Ok(v),
        Values::Many(_) => Err(CodedError::location(
            16675,
            format!(
                "cannot have a multi-key as a prefix to a text index: {}",
                field.path
            ),
        )),
    }
}

/// Emits one key per distinct term of `doc`: prefix values, term, score, suffix values.
pub(super) fn for_each_key(
    spec: &IndexSpec,
    text: &TextIndex,
    doc: &RawDocument,
    emit: &mut dyn FnMut(Vec<u8>, &[Bson]),
) -> Result<bool, CodedError> {
    let scores = text.term_scores(doc).map_err(coded)?;
    if scores.len() > MAX_KEYS_PER_DOCUMENT {
        return Err(CodedError::location(
            17280,
            format!(
                "document would produce {} keys in text index {}, more than {MAX_KEYS_PER_DOCUMENT}",
                scores.len(),
                spec.name
            ),
        ));
    }
    let mut fixed = Vec::with_capacity(spec.fields.len());
    for f in spec.fields.iter().filter(|f| f.kind != KeyKind::Text) {
        fixed.push((f, single(doc, f)?));
    }
    let text_at = spec
        .fields
        .iter()
        .position(|f| f.kind == KeyKind::Text)
        .unwrap_or(0);
    let (before, after) = fixed.split_at(text_at.min(fixed.len()));
    for (term, score) in &scores {
        let mut key = Vec::new();
        let mut values = Vec::with_capacity(spec.fields.len());
        for (f, v) in before {
            f.encode(*v, &mut key);
            values.push(Bson::try_from(*v).unwrap_or(Bson::Null));
        }
        crate::encode_key(RawBsonRef::String(term), &mut key);
        crate::encode_key(RawBsonRef::Double(*score), &mut key);
        values.push(Bson::String(term.clone()));
        values.push(Bson::Double(*score));
        for (f, v) in after {
            f.encode(*v, &mut key);
            values.push(Bson::try_from(*v).unwrap_or(Bson::Null));
        }
        emit(key, &values);
    }
    // Terms are one component, never an array of the document: not multikey.
    Ok(false)
}

/// The first key component a term's entries share: the prefix values (as [`IndexSpec`]
/// encodes them) then the term; every entry of the term starts with it.
pub fn term_prefix(spec: &IndexSpec, prefix_values: &[RawBsonRef<'_>], term: &str) -> Vec<u8> {
    let mut key = Vec::new();
    for (f, v) in spec
        .fields
        .iter()
        .take_while(|f| f.kind != KeyKind::Text)
        .zip(prefix_values)
    {
        f.encode(*v, &mut key);
    }
    crate::encode_key(RawBsonRef::String(term), &mut key);
    key
}

#[cfg(test)]
mod tests {
    use bson::{doc, rawdoc};

    use super::*;
    use crate::index::no_partial_filters;

    fn compiled(raw: &RawDocument) -> Result<IndexSpec, CodedError> {
        let normalized = IndexSpec::normalize(raw, &no_partial_filters)?;
        IndexSpec::compile(&normalized, &no_partial_filters)
    }

    #[test]
    fn text_specs_normalize_and_derive_term_keys() {
        let raw = rawdoc! { "key": { "a": 1, "body": "text", "b": -1 }, "name": "t" };
        let normalized = IndexSpec::normalize(&raw, &no_partial_filters).unwrap();
        assert_eq!(
            normalized.get_document("key").unwrap(),
            &doc! { "a": 1, "_fts": "text", "_ftsx": 1, "b": -1 }
        );
        assert_eq!(normalized.get_i32("textIndexVersion").unwrap(), 3);
        let spec = compiled(&raw).unwrap();
        let d = rawdoc! { "a": 5, "body": "coffee shop coffee", "b": 1 };
        let keys = spec.keys(&d).unwrap();
        assert_eq!(keys.len(), 2);
        let prefix = term_prefix(&spec, &[RawBsonRef::Int32(5)], "coffe");
        assert_eq!(keys.iter().filter(|k| k.starts_with(&prefix)).count(), 1);
        let value = spec.key_value(&d, &keys[0]);
        assert_eq!(value.get_str("_fts").unwrap(), "coffe");
        assert_eq!(value.get_f64("_ftsx").unwrap(), 1.25);
        let multikey = spec
            .keys(&rawdoc! { "a": [1, 2], "body": "x" })
            .unwrap_err();
        assert_eq!(multikey.code, 16675);
    }

    #[test]
    fn text_options_only_on_text_indexes() {
        let raw = rawdoc! { "key": { "a": 1 }, "name": "a", "weights": { "a": 1 } };
        assert_eq!(compiled(&raw).unwrap_err().code, 67);
        let bad = rawdoc! { "key": { "a": "text" }, "name": "a", "default_language": "xx" };
        assert_eq!(compiled(&bad).unwrap_err().code, 67);
    }
}
