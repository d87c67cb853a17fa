//! Document shaping shared by the pipeline's stages: setting a dotted path, `$addFields`'
//! evaluation, `$replaceRoot`, reading a nested value, a value's hash key, and the conversions
//! between owned and raw documents. Pure helpers; nothing here knows about stages.

use bson::raw::{RawBsonRef, RawDocument};
use bson::{Bson, Document, RawDocumentBuf};

use crate::expr::Expr;
use crate::{QueryError, encode_key};

pub(crate) fn raw_err(e: impl std::fmt::Display) -> QueryError {
    QueryError::bad_value(e.to_string())
}

/// Sets (or, for a missing value, removes) `path` in `doc`, creating intermediate documents.
pub(crate) fn set_path(doc: &mut Document, path: &[String], value: Option<Bson>) {
    set_in(doc, path, &value);
}

/// An array met mid-path gets the field set in each of its document elements, as `$addFields`
/// does with `"a.b"` when `a` is an array of documents.
fn set_in(target: &mut Document, path: &[String], value: &Option<Bson>) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        match value {
            Some(v) => {
                target.insert(first.clone(), v.clone());
            }
            None => {
                target.remove(first);
            }
        }
        return;
    }
    match target.get_mut(first) {
        Some(Bson::Document(d)) => set_in(d, rest, value),
        Some(Bson::Array(items)) => {
            for item in items {
                if let Bson::Document(d) = item {
                    set_in(d, rest, value);
                }
            }
        }
        _ if value.is_none() => {}
        _ => {
            let mut d = Document::new();
            set_in(&mut d, rest, value);
            target.insert(first.clone(), d);
        }
    }
}

/// Sets each path to its expression's value (computed on the input document); a missing
/// value (`$$REMOVE`, an absent field) leaves the path absent.
pub(crate) fn add_fields(
    doc: &RawDocument,
    fields: &[(Vec<String>, Expr)],
) -> Result<RawDocumentBuf, QueryError> {
    let mut out = Document::try_from(doc).map_err(raw_err)?;
    // New values are charged as they are set, so many large ones cannot add up to a document
    // beyond what one evaluation may hold.
    let mut held = crate::memory::Held::new("$addFields");
    for (path, expr) in fields {
        let value = expr.eval(doc)?;
        held.keep_opt(&value)?;
        set_path(&mut out, path, value);
    }
    to_raw(&out)
}

pub(crate) fn to_raw(d: &Document) -> Result<RawDocumentBuf, QueryError> {
    RawDocumentBuf::try_from(d).map_err(raw_err)
}

/// The value at a dotted path through embedded documents only (arrays end the path), as
/// `$unwind` reads it.
pub(crate) fn nested<'a>(doc: &'a RawDocument, path: &[String]) -> Option<RawBsonRef<'a>> {
    let (first, rest) = path.split_first()?;
    let v = doc.get(first).ok()??;
    if rest.is_empty() {
        return Some(v);
    }
    match v {
        RawBsonRef::Document(d) => nested(d, rest),
        _ => None,
    }
}

pub(crate) fn key_of(v: RawBsonRef<'_>) -> Vec<u8> {
    let mut key = Vec::new();
    encode_key(v, &mut key);
    key
}

/// `$replaceRoot`/`$replaceWith`: the document `new_root` evaluates to.
pub(crate) fn replace_root(
    new_root: &Expr,
    doc: &RawDocument,
) -> Result<RawDocumentBuf, QueryError> {
    match new_root.eval(doc)? {
        Some(Bson::Document(root)) => to_raw(&root),
        other => Err(QueryError::location(
            40228,
            format!(
                "'newRoot' expression must evaluate to an object, but resulting value was: {}",
                other.map_or("MISSING".to_string(), |v| v.to_string())
            ),
        )),
    }
}
