//! A text index's specification: normalizing what `createIndexes` was given into mongod's
//! stored form (`key: {..., _fts: "text", _ftsx: 1, ...}`, `weights`, `default_language`,
//! `language_override`, `textIndexVersion`), with mongod's error for each invalid option, and
//! [`TextIndex`], the compiled form that says which fields are text, with what weight and in
//! which language. Knows nothing of index keys or their encoding.

use std::collections::BTreeMap;

use bson::{Bson, Document};

use crate::error::TextError;
use crate::language::Language;

/// The version this crate implements (mongod 7.0's default).
pub const TEXT_INDEX_VERSION: i32 = 3;
/// Weights must be below this (mongod's `MAX_WORD_WEIGHT`).
pub const MAX_WORD_WEIGHT: i64 = 100_000;
pub const WILDCARD: &str = "$**";

/// A compiled text index.
#[derive(Debug, Clone, PartialEq)]
pub struct TextIndex {
    /// Dotted path → weight; the wildcard indexes every string, at weight 1 unless listed.
    pub weights: BTreeMap<String, f64>,
    pub wildcard: bool,
    pub default_language: Language,
    pub language_override: String,
    /// Ordinary key fields before and after the text part, in key-pattern order.
    pub prefix: Vec<String>,
    pub suffix: Vec<String>,
}

/// Whether a key pattern (as given, or normalized) describes a text index.
pub fn is_text_key_pattern(key: &Document) -> bool {
    key.iter()
        .any(|(k, v)| k == "_fts" || matches!(v, Bson::String(s) if s == "text"))
}

/// mongod's `numberInt()` of a numeric option: whole part, saturated; non-numbers are 0.
fn number_int(v: &Bson) -> i64 {
    match v {
        Bson::Int32(n) => i64::from(*n),
        Bson::Int64(n) => (*n).clamp(i64::from(i32::MIN), i64::from(i32::MAX)),
        Bson::Double(d) if d.is_nan() => 0,
        Bson::Double(d) => d.trunc().clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i64,
        Bson::Decimal128(d) => d.to_string().parse::<f64>().map_or(0, |f| f.trunc() as i64),
        _ => 0,
    }
}

fn reserved(name: &str) -> Result<(), TextError> {
    if name == "_fts" || name == "_ftsx" {
        return Err(TextError::cannot_create(
            "text index with reserved fields _fts/_ftsx not allowed",
        ));
    }
    Ok(())
}

/// The normalized key pattern and the text fields it named (weight 1 each).
fn normalize_key(key: &Document) -> Result<(Document, BTreeMap<String, i64>), TextError> {
    let mut out = Document::new();
    let mut fields = BTreeMap::new();
    let mut added = false;
    for (name, value) in key {
        match (name.as_str(), value) {
            ("_fts", v) => {
                if v.as_str() != Some("text") {
                    return Err(TextError::cannot_create("expecting _fts:\"text\""));
                }
                added = true;
                out.insert("_fts", "text");
            }
            ("_ftsx", v) => {
                if number_int(v) != 1 {
                    return Err(TextError::cannot_create("expecting _ftsx:1"));
                }
                out.insert("_ftsx", 1i32);
            }
            (_, Bson::String(s)) if s == "text" => {
                if !added {
                    out.insert("_fts", "text");
                    out.insert("_ftsx", 1i32);
                    added = true;
                }
                fields.insert(name.clone(), 1);
            }
            (_, v) => {
                if !matches!(number_int(v), 1 | -1) {
                    return Err(TextError::cannot_create(
                        "expected value 1 or -1 for non-text key in compound index",
                    ));
                }
                out.insert(name.clone(), v.clone());
            }
        }
    }
    check_layout(key)?;
    Ok((out, fields))
}

/// Ordinary fields, then the text fields (or `_fts`, `_ftsx`), then ordinary fields.
fn check_layout(key: &Document) -> Result<(), TextError> {
    let is_text = |(k, v): &(&String, &Bson)| matches!(v, Bson::String(_)) || *k == "_fts";
    let items: Vec<(&String, &Bson)> = key.iter().collect();
    let Some(start) = items.iter().position(is_text) else {
        return Err(TextError::cannot_create(
            "expected additional fields in text index key pattern",
        ));
    };
    for (k, _) in &items[..start] {
        reserved(k)?;
    }
    let mut rest = start;
    if items[start].0 == "_fts" {
        if items.get(start + 1).map(|(k, _)| k.as_str()) != Some("_ftsx") {
            return Err(TextError::cannot_create("expected _ftsx after _fts"));
        }
        rest += 2;
    } else {
        while rest < items.len() && matches!(items[rest].1, Bson::String(_)) {
            reserved(items[rest].0)?;
            rest += 1;
        }
    }
    for (k, v) in &items[rest..] {
        if matches!(v, Bson::String(_)) {
            return Err(TextError::cannot_create(
                "'text' fields in index must all be adjacent",
            ));
        }
        reserved(k)?;
    }
    Ok(())
}

/// The `weights` option merged into the text fields' weights, each checked.
fn merge_weights(spec: &Document, mut m: BTreeMap<String, i64>) -> Result<Document, TextError> {
    match spec.get("weights") {
        Some(Bson::Document(w)) => {
            for (field, value) in w {
                if !matches!(
                    value,
                    Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_)
                ) {
                    return Err(TextError::cannot_create(
                        "weight for text index needs numeric type",
                    ));
                }
                m.insert(field.clone(), number_int(value));
            }
        }
        Some(Bson::String(s)) if s == WILDCARD => {
            m.insert(WILDCARD.to_string(), 1);
        }
        Some(_) => {
            return Err(TextError::cannot_create(
                "text index option 'weights' must be an object",
            ));
        }
        None => {}
    }
    if m.is_empty() {
        return Err(TextError::cannot_create(
            "text index option 'weights' must specify fields or the wildcard",
        ));
    }
    let mut out = Document::new();
    for (field, weight) in m {
        check_weight(&field, weight)?;
        out.insert(field, weight as i32);
    }
    Ok(out)
}

fn check_weight(field: &str, weight: i64) -> Result<(), TextError> {
    if weight <= 0 || weight >= MAX_WORD_WEIGHT {
        return Err(TextError::cannot_create(format!(
            "text index weight must be in the exclusive interval (0,{MAX_WORD_WEIGHT}) but found: {weight}"
        )));
    }
    if field == WILDCARD {
        return Ok(());
    }
    if field.is_empty() {
        return Err(TextError::cannot_create(
            "weight cannot be on an empty field",
        ));
    }
    for part in field.split('.') {
        if part.is_empty() {
            return Err(TextError::cannot_create(
                "weight cannot have empty path component",
            ));
        }
        if part.starts_with('$') {
            return Err(TextError::cannot_create(
                "weight cannot have path component with $ prefix",
            ));
        }
    }
    Ok(())
}

fn string_option(spec: &Document, name: &str, default: &str) -> Result<String, TextError> {
    match spec.get(name) {
        None => Ok(default.to_string()),
        Some(Bson::String(s)) => Ok(s.clone()),
        Some(_) if name == "default_language" => Err(TextError::cannot_create(
            "default_language needs a string type",
        )),
        Some(_) => Err(TextError::cannot_create(
            "language_override must be a string",
        )),
    }
}

fn text_index_version(spec: &Document) -> Result<i32, TextError> {
    let Some(v) = spec.get("textIndexVersion") else {
        return Ok(TEXT_INDEX_VERSION);
    };
    if !matches!(
        v,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_)
    ) {
        return Err(TextError::cannot_create(
            "text index option 'textIndexVersion' must be a number",
        ));
    }
    match number_int(v) {
        n @ (2 | 3) => Ok(n as i32),
        n => Err(TextError::cannot_create(format!(
            "bad textIndexVersion: {n}"
        ))),
    }
}

/// Normalizes a text index's `key` and options as mongod stores them. `spec` is the whole
/// specification; the result is the normalized key pattern and the text options, in
/// `listIndexes` order (`weights`, `default_language`, `language_override`,
/// `textIndexVersion`).
pub fn normalize_text_spec(
    spec: &Document,
    key: &Document,
) -> Result<(Document, Document), TextError> {
    let (key, fields) = normalize_key(key)?;
    let weights = merge_weights(spec, fields)?;
    let default_language = string_option(spec, "default_language", "english")?;
    if Language::parse(&default_language).is_none() {
        return Err(TextError::cannot_create("default_language is not valid"));
    }
    let language_override = string_option(spec, "language_override", "language")?;
    if language_override.is_empty()
        || language_override.starts_with('$')
        || language_override.contains('.')
    {
        return Err(TextError::cannot_create("language_override is not valid"));
    }
    let mut options = Document::new();
    options.insert("weights", weights);
    options.insert("default_language", default_language);
    options.insert("language_override", language_override);
    options.insert("textIndexVersion", text_index_version(spec)?);
    Ok((key, options))
}

impl TextIndex {
    /// Compiles a normalized specification (its `key`, `weights`, `default_language` and
    /// `language_override`).
    pub fn from_spec(spec: &Document) -> Result<TextIndex, TextError> {
        let invalid = || TextError::cannot_create("found invalid spec for text index");
        let key = spec.get_document("key").map_err(|_| invalid())?;
        let weights_doc = spec.get_document("weights").map_err(|_| invalid())?;
        let mut weights = BTreeMap::new();
        let mut wildcard = false;
        for (field, w) in weights_doc {
            if field == WILDCARD {
                wildcard = true;
            } else {
                weights.insert(field.clone(), number_int(w) as f64);
            }
        }
        let language = spec.get_str("default_language").unwrap_or("english");
        let default_language = Language::parse(language).ok_or_else(invalid)?;
        let language_override = spec.get_str("language_override").unwrap_or("language");
        let (mut prefix, mut suffix, mut passed) = (Vec::new(), Vec::new(), false);
        for (field, _) in key {
            match field.as_str() {
                "_fts" | "_ftsx" => passed = true,
                f if passed => suffix.push(f.to_string()),
                f => prefix.push(f.to_string()),
            }
        }
        Ok(TextIndex {
            weights,
            wildcard,
            default_language,
            language_override: language_override.to_string(),
            prefix,
            suffix,
        })
    }

    /// The weight of the string at `path`, if it is indexed.
    pub fn weight(&self, path: &str) -> Option<f64> {
        match self.weights.get(path) {
            Some(w) => Some(*w),
            None if self.wildcard => Some(1.0),
            None => None,
        }
    }

    /// Whether anything below `path` can be indexed (the walk skips other subdocuments).
    pub(crate) fn may_contain(&self, path: &str) -> bool {
        self.wildcard
            || self.weights.keys().any(|w| {
                w.len() > path.len() && w.starts_with(path) && w.as_bytes()[path.len()] == b'.'
            })
    }
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;

    #[test]
    fn normalizes_as_mongod_stores_it() {
        let spec = doc! { "weights": { "title": 10 } };
        let key = doc! { "a": 1, "content": "text", "title": "text", "b": -1 };
        let (k, o) = normalize_text_spec(&spec, &key).unwrap();
        assert_eq!(k, doc! { "a": 1, "_fts": "text", "_ftsx": 1, "b": -1 });
        assert_eq!(
            o,
            doc! {
                "weights": { "content": 1, "title": 10 }, "default_language": "english",
                "language_override": "language", "textIndexVersion": 3,
            }
        );
        let (k, o) = normalize_text_spec(&doc! {}, &doc! { "$**": "text" }).unwrap();
        assert_eq!(k, doc! { "_fts": "text", "_ftsx": 1 });
        assert_eq!(o.get_document("weights").unwrap(), &doc! { "$**": 1 });
        let index =
            TextIndex::from_spec(&doc! { "key": k, "weights": {"$**": 1, "t": 5} }).unwrap();
        assert_eq!(index.weight("t"), Some(5.0));
        assert_eq!(index.weight("x.y"), Some(1.0));
    }

    #[test]
    fn refuses_what_mongod_refuses() {
        let code =
            |spec: Document, key: Document| normalize_text_spec(&spec, &key).unwrap_err().code;
        assert_eq!(code(doc! {}, doc! { "a": "text", "b": 1, "c": "text" }), 67);
        assert_eq!(code(doc! {}, doc! { "a": "text", "b": 2 }), 67);
        assert_eq!(code(doc! {}, doc! { "_fts": "text" }), 67);
        assert_eq!(
            code(
                doc! { "default_language": "spanglish" },
                doc! { "a": "text" }
            ),
            67
        );
        assert_eq!(
            code(doc! { "language_override": "a.b" }, doc! { "a": "text" }),
            67
        );
        assert_eq!(
            code(doc! { "weights": { "b": 100_000 } }, doc! { "a": "text" }),
            67
        );
        assert_eq!(
            code(doc! { "weights": { "b": 0.5 } }, doc! { "a": "text" }),
            67
        );
        assert_eq!(code(doc! { "weights": "b" }, doc! { "a": "text" }), 67);
        assert_eq!(
            code(doc! { "textIndexVersion": 1 }, doc! { "a": "text" }),
            67
        );
        assert_eq!(
            code(doc! { "weights": {} }, doc! { "_fts": "text", "_ftsx": 1 }),
            67
        );
    }
}
