//! The bottom of `$text` in the query language, imported by filters, expressions,
//! projections, sorts and the pipeline runner: the `$text` filter node's data ([`TextNode`]:
//! its checked arguments, and the matcher once the server bound it to the collection's text
//! index), and `$meta: "textScore"`.
//!
//! How the score reaches projections and sorts: a document's score is a function of the
//! document, the index's weights and languages, and the query (mongod reads the same number
//! back from the index keys it scanned). Once the server has bound the query to its index
//! (`text.rs`), a find projection and sort hold the [`TextMatch`] and score the document they
//! are given; in a pipeline, the runner sets the leading `$match`'s matcher around each pull
//! ([`with_scorer`]), and `$meta` reads it from that thread-local, so expressions need no
//! extra argument. Imports nothing of the language above `error.rs`.

use std::cell::RefCell;
use std::sync::Arc;

use bson::{Bson, Document, RawBsonRef, RawDocument};
use mangrove_text::{TextError, TextMatch, TextSearch};

use crate::error::QueryError;

/// A `$text` node: its arguments, and the matcher once bound to the collection's index (set
/// once, through a shared reference, so that whichever access path reads the filter first
/// binds it for every later use of the same filter).
#[derive(Debug, Clone)]
pub(crate) struct TextNode {
    pub search: TextSearch,
    pub bound: std::sync::OnceLock<Arc<TextMatch>>,
}

pub(crate) fn from_text_error(e: TextError) -> QueryError {
    QueryError::location(e.code, e.message)
}

impl TextNode {
    /// `{$text: {...}}`'s argument, checked.
    pub(crate) fn parse(value: RawBsonRef<'_>) -> Result<TextNode, QueryError> {
        let RawBsonRef::Document(d) = value else {
            return Err(QueryError::bad_value("$text expects an object"));
        };
        let spec = Document::try_from(d).map_err(|e| QueryError::bad_value(e.to_string()))?;
        let search = TextSearch::from_document(&spec).map_err(from_text_error)?;
        Ok(TextNode {
            search,
            bound: std::sync::OnceLock::new(),
        })
    }

    /// Whether `doc` matches; an unbound node matches nothing.
    pub(crate) fn matches(&self, doc: &RawDocument) -> bool {
        self.bound
            .get()
            .is_some_and(|m| m.matches(doc).unwrap_or(false))
    }
}

thread_local! {
    static SCORER: RefCell<Option<Arc<TextMatch>>> = const { RefCell::new(None) };
}

/// Runs `f` with `scorer` answering `$meta: "textScore"`.
pub fn with_scorer<T>(scorer: Option<&Arc<TextMatch>>, f: impl FnOnce() -> T) -> T {
    let previous = SCORER.with(|s| s.replace(scorer.cloned()));
    let out = f();
    SCORER.with(|s| *s.borrow_mut() = previous);
    out
}

/// The score of `doc` under the scorer [`with_scorer`] set.
pub(crate) fn current_score(doc: &RawDocument) -> Result<Option<Bson>, QueryError> {
    SCORER.with(|s| match s.borrow().as_ref() {
        Some(m) => m
            .score(doc)
            .map(|v| Some(Bson::Double(v)))
            .map_err(from_text_error),
        None => Err(no_score()),
    })
}

/// mongod's error for `$meta: "textScore"` without `$text`.
pub fn no_score() -> QueryError {
    QueryError::location(
        40218,
        "query requires text score metadata, but it is not available",
    )
}

/// `{$meta: <arg>}`: only `"textScore"` is known here.
pub(crate) fn parse_meta(arg: RawBsonRef<'_>) -> Result<(), QueryError> {
    match arg {
        RawBsonRef::String("textScore") => Ok(()),
        RawBsonRef::String(other) => Err(QueryError::bad_value(format!(
            "$meta: \"{other}\" is not supported by Mangrove; only \"textScore\" is"
        ))),
        _ => Err(QueryError::location(
            17307,
            "$meta only supports string arguments",
        )),
    }
}

/// Whether a specification has a `$meta` anywhere (a projection or stage asking for scores).
pub(crate) fn mentions_meta(spec: &RawDocument) -> bool {
    fn value(v: RawBsonRef<'_>, depth: usize) -> bool {
        match v {
            RawBsonRef::Document(d) => doc(d, depth + 1),
            RawBsonRef::Array(a) if depth < 200 => a
                .into_iter()
                .map_while(Result::ok)
                .any(|v| value(v, depth + 1)),
            _ => false,
        }
    }
    fn doc(d: &RawDocument, depth: usize) -> bool {
        depth < 200
            && d.iter()
                .map_while(Result::ok)
                .any(|(k, v)| k.as_str() == "$meta" || value(v, depth))
    }
    doc(spec, 0)
}
