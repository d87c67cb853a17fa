//! The `$indexStats` aggregation stage: each index of a collection with how often queries used
//! it (`accesses.ops`, since `accesses.since`), as mongod 7.0 reports it, so that operators can
//! find indexes nothing uses. The counts are kept by `index_usage.rs`.

use bson::raw::{RawArrayBuf, RawBsonRef, RawDocumentBuf};
use bson::{Bson, DateTime, Document, doc};
use mangrove_query::Pipeline;
use mangrove_storage::Txn;

use crate::Shared;
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;

use super::Reply;
use super::args::{cursor_batch_size, internal};
use super::coll_stats::first_stage;
use super::reply::pipeline_cursor;

const STAGE: &str = "$indexStats";

/// Whether `aggregate`'s pipeline starts with `$indexStats`.
pub(super) fn is_index_stats(req: &Request<'_>) -> CommandResult<bool> {
    Ok(first_stage(req)?.is_some_and(|(name, _)| name == STAGE))
}

/// `aggregate` whose first stage is `$indexStats`: one document per index, through the stages
/// after it.
pub(super) fn aggregate(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&Txn>,
) -> CommandResult<Reply> {
    if txn.is_some() {
        return Err(CommandError::new(
            code::OPERATION_NOT_SUPPORTED_IN_TRANSACTION,
            "Operation not permitted in transaction :: caused by :: $indexStats is not allowed in a transaction",
        ));
    }
    let Some(RawBsonRef::String(name)) = req.command_value() else {
        return Err(CommandError::new(
            code::INVALID_NAMESPACE,
            "$indexStats must be run against a collection, not {aggregate: 1}",
        ));
    };
    let ns = req.ns(name);
    match first_stage(req)? {
        Some((_, RawBsonRef::Document(spec))) if spec.is_empty() => {}
        _ => {
            return Err(CommandError::new(
                28803,
                "The $indexStats stage specification must be an empty object",
            ));
        }
    }
    let pipeline = rest_of_pipeline(req)?;
    let output = pipeline.run_from_start(index_documents(shared, &ns)?)?;
    pipeline_cursor(shared, ns, output, cursor_batch_size(req)?, None)
}

/// The stages after `$indexStats`, which may not appear again.
fn rest_of_pipeline(req: &Request<'_>) -> CommandResult<Pipeline> {
    let mut rest = RawArrayBuf::new();
    for stage in req.opt_array("pipeline")?.into_iter().flatten().skip(1) {
        let stage = stage.map_err(internal)?;
        if let RawBsonRef::Document(d) = stage
            && d.get(STAGE).ok().flatten().is_some()
        {
            return Err(CommandError::new(
                40602,
                "$indexStats is only valid as the first stage in a pipeline",
            ));
        }
        rest.push(stage);
    }
    Ok(Pipeline::parse(&rest)?)
}

/// One document per index of `ns` (none for a missing collection, as mongod).
fn index_documents(shared: &Shared, ns: &str) -> CommandResult<Vec<RawDocumentBuf>> {
    let Some(coll) = shared.engine.snapshot().collection(ns) else {
        return Ok(Vec::new());
    };
    super::views::refuse_view(&coll, None)?;
    let usage = &shared.index_usage;
    let db_coll = (coll.db.as_str(), coll.name.as_str());
    let mut out = Vec::with_capacity(coll.indexes.len() + 1);
    if let Some(id_index) = super::indexes::id_index_of(&coll) {
        let (ops, since) = usage.of(db_coll, None);
        out.push(index_document(shared, id_index, ops, since));
    }
    for index in crate::capped::secondary_indexes(&coll) {
        let (ops, since) = usage.of(db_coll, Some(index));
        out.push(index_document(shared, index.spec.clone(), ops, since));
    }
    out.into_iter()
        .map(|d| RawDocumentBuf::try_from(&d).map_err(internal))
        .collect()
}

fn index_document(
    shared: &Shared,
    spec: Document,
    ops: u64,
    since: std::time::SystemTime,
) -> Document {
    doc! {
        "name": spec.get("name").cloned().unwrap_or(Bson::Null),
        "key": spec.get("key").cloned().unwrap_or(Bson::Null),
        "host": shared.advertised.clone(),
        "accesses": {
            "ops": i64::try_from(ops).unwrap_or(i64::MAX),
            "since": DateTime::from_system_time(since),
        },
        "spec": spec,
    }
}
