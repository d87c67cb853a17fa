//! Index definitions as the query language sees them. Key derivation lives in `mangrove-bson`
//! (so the storage engine needs no query language); what it needs from the language, the
//! predicate of a partial index, is compiled here.

use bson::{Document, RawDocument, RawDocumentBuf};
pub use mangrove_bson::index::{
    IndexField, IndexSpec, MAX_KEYS_PER_DOCUMENT, PartialFilter, PartialFilters,
};

use crate::error::QueryError;
use crate::filter::Filter;

/// Compiles a partial index's `partialFilterExpression` into the predicate index key
/// derivation applies (the [`mangrove_bson::CompilePartial`] of this language).
pub fn compile_partial(expr: &Document) -> Result<PartialFilter, QueryError> {
    let raw = RawDocumentBuf::try_from(expr)
        .map_err(|e| QueryError::bad_value(format!("partialFilterExpression: {e}")))?;
    let filter = Filter::parse(&raw)?;
    Ok(PartialFilter::new(move |doc| filter.matches(doc)))
}

/// [`compile_partial`], shareable: for the storage engine's options.
pub fn partial_filters() -> PartialFilters {
    PartialFilters::new(compile_partial)
}

/// [`IndexSpec::normalize`] with this language's partial filters.
pub fn normalize_index(raw: &RawDocument) -> Result<Document, QueryError> {
    IndexSpec::normalize(raw, &compile_partial)
}

/// [`IndexSpec::compile`] with this language's partial filters.
pub fn compile_index(spec: &Document) -> Result<IndexSpec, QueryError> {
    IndexSpec::compile(spec, &compile_partial)
}
