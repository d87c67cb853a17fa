//! `$text` on the server's side: binding a query's `$text` to the collection's text index
//! (IndexNotFound 27 without one), giving projections and sorts that ask for `$meta:
//! "textScore"` the matcher that scores (40218 when the query has no `$text`), the access path
//! (the text index's intervals, one per term, walked with the ordinary `IndexWalk`, which
//! fetches each document once; the whole filter, `$text` included, is checked on it), and
//! `explain`'s TEXT_MATCH / FETCH / TEXT_OR / IXSCAN shape.

use std::sync::Arc;

use bson::{Bson, Document, doc};
use mangrove_query::{Filter, IndexBounds, Projection, SortSpec, TextMatch, text_bounds};
use mangrove_storage::{CollectionInfo, IndexInfo};
use mangrove_text::{TextQuery, TextSearch};

use crate::error::{CommandError, CommandResult};

fn no_index() -> CommandError {
    CommandError::new(27, "text index required for $text query")
}

/// Binds the filter's `$text`, if it has one, to the collection's text index.
pub fn bind(
    coll: Option<&CollectionInfo>,
    filter: &Filter,
) -> CommandResult<Option<Arc<TextMatch>>> {
    if filter.text_search().is_none() || coll.is_none() {
        return Ok(None);
    }
    let index = coll
        .and_then(|c| c.indexes.iter().find_map(|i| i.key.text.clone()))
        .ok_or_else(no_index)?;
    Ok(Some(filter.bind_text(&index)?))
}

/// [`bind`], then the matcher handed to a projection and a sort that score; `$meta:
/// "textScore"` without `$text` is refused.
pub fn bind_find(
    coll: Option<&CollectionInfo>,
    ns: &str,
    filter: &Filter,
    projection: Option<&mut Projection>,
    sort: Option<&mut SortSpec>,
) -> CommandResult<()> {
    if coll.is_none() {
        // No collection: no text index either (mongod: 27, "no such collection"); a score
        // without `$text` answers an empty result.
        if filter.text_search().is_some() {
            return Err(CommandError::new(
                27,
                format!("text index required for $text query (no such collection '{ns}')"),
            ));
        }
        return Ok(());
    }
    let matcher = bind(coll, filter)?;
    let wants = projection.as_ref().is_some_and(|p| p.needs_text_score())
        || sort.as_ref().is_some_and(|s| s.needs_text_score());
    let Some(matcher) = matcher else {
        if wants {
            return Err(mangrove_query::no_score().into());
        }
        return Ok(());
    };
    if let Some(p) = projection {
        p.bind_text(matcher.clone());
    }
    if let Some(s) = sort {
        s.bind_text(matcher);
    }
    Ok(())
}

/// Binds a pipeline's leading `$match` `$text`, if it has one, to the collection's text index.
pub fn bind_pipeline(
    coll: &CollectionInfo,
    pipeline: &mut mangrove_query::Pipeline,
) -> CommandResult<()> {
    if pipeline.text_search().is_none() {
        return Ok(());
    }
    let index = coll
        .indexes
        .iter()
        .find_map(|i| i.key.text.clone())
        .ok_or_else(no_index)?;
    pipeline.bind_text(&index)?;
    Ok(())
}

/// The access path of a bound `$text` query: its text index and the term intervals.
pub fn access(
    coll: &CollectionInfo,
    filter: &Filter,
) -> CommandResult<Option<(Arc<IndexInfo>, IndexBounds)>> {
    // Binds the filter if no one did (count, distinct, update, delete, findAndModify).
    if bind(Some(coll), filter)?.is_none() {
        return Ok(None);
    }
    let index = coll
        .indexes
        .iter()
        .find(|i| i.key.text.is_some())
        .ok_or_else(no_index)?;
    let bounds = text_bounds(&index.key, filter)?;
    Ok(Some((index.clone(), bounds)))
}

/// The `$text` arguments of a filter document (top level or in a top-level `$and`/`$or`).
fn text_args(filter: &Document) -> Option<&Document> {
    if let Ok(t) = filter.get_document("$text") {
        return Some(t);
    }
    ["$and", "$or"].iter().find_map(|op| {
        filter.get_array(op).ok()?.iter().find_map(|c| match c {
            Bson::Document(d) => text_args(d),
            _ => None,
        })
    })
}

/// `explain`'s stages for a text index walk, as mongod shows them.
pub fn stage(
    index: &mangrove_query::IndexSpec,
    bounds: &IndexBounds,
    filter_doc: &Document,
) -> Document {
    let text = index.text.as_ref();
    let parsed = text_args(filter_doc)
        .and_then(|args| TextSearch::from_document(args).ok())
        .zip(text)
        .and_then(|(s, t)| TextQuery::parse(&s, t.default_language).ok())
        .map(|q| q.explain())
        .unwrap_or_default();
    let terms = bounds
        .display
        .get_array("_fts")
        .cloned()
        .unwrap_or_default();
    let ixscans: Vec<Bson> = terms
        .iter()
        .map(|term| {
            Bson::Document(doc! {
                "stage": "IXSCAN",
                "keyPattern": index.key_pattern.clone(),
                "indexName": index.name.clone(),
                "isMultiKey": true,
                "isUnique": false,
                "isSparse": false,
                "isPartial": index.partial.is_some(),
                "indexVersion": 2,
                "direction": "backward",
                "indexBounds": { "_fts": [term.clone()], "_ftsx": ["[inf.0, -inf.0]"] },
            })
        })
        .collect();
    let or = doc! { "stage": "TEXT_OR", "inputStages": ixscans };
    doc! {
        "stage": "TEXT_MATCH",
        "indexPrefix": {},
        "indexName": index.name.clone(),
        "parsedTextQuery": parsed,
        "textIndexVersion": 3,
        "inputStage": { "stage": "FETCH", "inputStage": or },
    }
}
