//! Read-only views (`create` with `viewOn` and `pipeline`), as in MongoDB: not materialized, a
//! view's documents are its source's documents through its pipeline, computed on each read from
//! the reader's own snapshot or transaction. Writes to a view are refused.

use bson::raw::{RawArrayBuf, RawBsonRef};
use bson::{Bson, Document, RawDocumentBuf};
use mangrove_query::Pipeline;
use mangrove_storage::{CollectionInfo, ReadView};

use crate::Shared;
use crate::error::{CommandError, CommandResult, code};

use super::args::internal;

/// Views on views on ...: MongoDB's limit on the depth of view definitions.
const MAX_VIEW_DEPTH: usize = 20;

pub(super) fn is_view(coll: &CollectionInfo) -> bool {
    coll.options.contains_key("viewOn")
}

/// CommandNotSupportedOnView (166) for a command that needs a collection of its own, with
/// mongod's message for it (`why`, or "Namespace <ns> is a view, not a collection").
pub(super) fn refuse_view(coll: &CollectionInfo, why: Option<String>) -> CommandResult<()> {
    if !is_view(coll) {
        return Ok(());
    }
    let message =
        why.unwrap_or_else(|| format!("Namespace {} is a view, not a collection", coll.ns()));
    Err(CommandError::new(
        code::COMMAND_NOT_SUPPORTED_ON_VIEW,
        message,
    ))
}

/// A view over another view must have that view's default collation, as in mongod
/// (OptionNotSupportedOnView, 167); a view over a collection may have any.
pub(super) fn check_source_collation(
    view: &dyn ReadView,
    db: &str,
    options: &Document,
) -> CommandResult<()> {
    let Ok(source) = options.get_str("viewOn") else {
        return Ok(());
    };
    let Some(source) = view.collection(&format!("{db}.{source}")) else {
        return Ok(());
    };
    let (ours, theirs) = (
        options.get_document("collation").ok(),
        super::args::default_collation(&source),
    );
    if is_view(&source) && ours != theirs {
        return Err(CommandError::new(
            167,
            format!(
                "View {db}.{} has a different default collation than the view it reads, {}; views on views must share their collation",
                options.get_str("viewOn").unwrap_or_default(),
                source.ns()
            ),
        ));
    }
    Ok(())
}

/// CommandNotSupportedOnView (166), for writes and index builds aimed at a view.
pub(super) fn refuse_write(coll: &CollectionInfo) -> CommandResult<()> {
    if is_view(coll) {
        return Err(CommandError::new(
            166,
            format!("Namespace {} is a view, not a collection", coll.ns()),
        ));
    }
    Ok(())
}

/// Checks a `create` request's `viewOn`/`pipeline` and returns the options to store.
pub(super) fn view_options(
    view_on: RawBsonRef<'_>,
    pipeline: Option<RawBsonRef<'_>>,
) -> CommandResult<Document> {
    let RawBsonRef::String(source) = view_on else {
        return Err(CommandError::type_mismatch("'viewOn' must be a string"));
    };
    if source.is_empty() {
        return Err(CommandError::bad_value("'viewOn' cannot be empty"));
    }
    let stages = match pipeline {
        None => RawArrayBuf::new(),
        Some(RawBsonRef::Array(a)) => a.to_owned(),
        Some(_) => return Err(CommandError::type_mismatch("'pipeline' must be an array")),
    };
    let parsed = Pipeline::parse(&stages)?;
    if parsed.sink().is_some() {
        return Err(CommandError::new(
            167,
            "$out and $merge cannot be used in a view definition",
        ));
    }
    let stages: Vec<Bson> = stages
        .into_iter()
        .map(|s| {
            s.map_err(internal)
                .and_then(|s| Bson::try_from(s).map_err(internal))
        })
        .collect::<CommandResult<_>>()?;
    Ok(bson::doc! { "viewOn": source, "pipeline": stages })
}

/// The documents of the view `coll` (in the database `db`) as `view` sees its sources.
pub(super) fn view_docs(
    shared: &Shared,
    view: &dyn ReadView,
    coll: &CollectionInfo,
) -> CommandResult<Vec<RawDocumentBuf>> {
    view_docs_at(shared, view, coll, 0)
}

/// `depth` counts the views being computed around this one (through `viewOn` and through
/// `$lookup`s of view pipelines), so that a cycle ends in an error, not in a stack overflow.
fn view_docs_at(
    shared: &Shared,
    view: &dyn ReadView,
    coll: &CollectionInfo,
    depth: usize,
) -> CommandResult<Vec<RawDocumentBuf>> {
    let Some((source, pipelines)) = view_chain(view, coll, depth)? else {
        // A view on a missing collection is empty, as in MongoDB.
        return Ok(Vec::new());
    };
    let views = pipelines.len();
    let mut docs = read_collection(shared, view, &source, coll)?;
    for pipeline in pipelines {
        // `run` expects its caller to have applied a leading $match while reading.
        if let Some(first) = pipeline.leading_match() {
            let mut kept = Vec::with_capacity(docs.len());
            for d in docs {
                if first.try_matches(&d)? {
                    kept.push(d);
                }
            }
            docs = kept;
        }
        // A view's $lookup reads from the same snapshot or transaction as the view.
        docs = pipeline.run_with(docs, &|name| {
            read_source(shared, view, &coll.db, name, depth + views)
                .map_err(|e| mangrove_query::QueryError::bad_value(e.message))
        })?;
    }
    Ok(docs)
}

/// The collection under the view `coll` and the views' pipelines as one, innermost first, for
/// reading the view as a stream; `None` when some view in the chain reads a missing
/// collection (the view is then empty, as in MongoDB).
pub(super) fn resolve(
    view: &dyn ReadView,
    coll: &CollectionInfo,
) -> CommandResult<Option<(CollectionInfo, Pipeline)>> {
    let Some((source, pipelines)) = view_chain(view, coll, 0)? else {
        return Ok(None);
    };
    let mut combined = Pipeline::parse(&RawArrayBuf::new())?;
    for pipeline in pipelines {
        combined = pipeline.preceded_by(combined);
    }
    Ok(Some((source, combined)))
}

/// The collection under the view `coll` and each view's pipeline, innermost first; `None`
/// when some view in the chain reads a missing collection. `depth` counts the views already
/// being computed around this one, so that a cycle ends in ViewDepthLimitExceeded (165).
fn view_chain(
    view: &dyn ReadView,
    coll: &CollectionInfo,
    depth: usize,
) -> CommandResult<Option<(CollectionInfo, Vec<Pipeline>)>> {
    let mut chain: Vec<Vec<Bson>> = Vec::new();
    let mut current = coll.clone();
    while is_view(&current) {
        if depth + chain.len() >= MAX_VIEW_DEPTH {
            return Err(CommandError::new(
                165,
                format!(
                    "View depth too deep or view cycle detected; maximum depth is {MAX_VIEW_DEPTH}"
                ),
            ));
        }
        chain.push(
            current
                .options
                .get_array("pipeline")
                .cloned()
                .unwrap_or_default(),
        );
        let source = current.options.get_str("viewOn").map_err(internal)?;
        match view.collection(&format!("{}.{source}", current.db)) {
            Some(next) => current = next,
            None => return Ok(None),
        }
    }
    let mut pipelines = Vec::with_capacity(chain.len());
    for stages in chain.iter().rev() {
        let mut raw = RawArrayBuf::new();
        for s in stages {
            raw.push(bson::RawBson::try_from(s.clone()).map_err(internal)?);
        }
        pipelines.push(Pipeline::parse(&raw)?);
    }
    Ok(Some((current, pipelines)))
}

/// Every document of `db.name`, a collection or a view.
fn read_source(
    shared: &Shared,
    view: &dyn ReadView,
    db: &str,
    name: &str,
    depth: usize,
) -> CommandResult<Vec<RawDocumentBuf>> {
    let Some(coll) = view.collection(&format!("{db}.{name}")) else {
        return Ok(Vec::new());
    };
    if is_view(&coll) {
        return view_docs_at(shared, view, &coll, depth + 1);
    }
    read_collection(shared, view, &coll, &coll)
}

/// A collection's documents in memory, bounded like a blocking sort.
fn read_collection(
    shared: &Shared,
    view: &dyn ReadView,
    coll: &CollectionInfo,
    for_view: &CollectionInfo,
) -> CommandResult<Vec<RawDocumentBuf>> {
    let mut docs = Vec::new();
    let mut bytes = 0usize;
    let max = shared.params.query.sort_bytes();
    let mut over = false;
    view.scan(coll, None, &mut |_, d| {
        bytes += d.as_bytes().len();
        if bytes > max {
            over = true;
            return std::ops::ControlFlow::Break(());
        }
        docs.push((**d).clone());
        std::ops::ControlFlow::Continue(())
    })?;
    if over {
        return Err(CommandError::new(
            code::QUERY_EXCEEDED_MEMORY_LIMIT,
            format!(
                "reading the view {} would hold more than {max} bytes in memory; query its source collection instead",
                for_view.ns()
            ),
        ));
    }
    Ok(docs)
}
