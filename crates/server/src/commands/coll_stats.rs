//! A collection's statistics: the `collStats` command and the `$collStats` aggregation stage
//! (`storageStats`, `count`), in mongod 7.0's shapes, for collections, capped collections and
//! `local.oplog.rs` (whose size and cap are the log's: mongosh's `db.getReplicationInfo()`
//! reads them from here).
//!
//! Mangrove keeps no running totals per collection, so a collection's statistics are counted
//! when asked, by one walk of the collection and of each index in one snapshot (bounded by the
//! command's `maxTimeMS`, like any scan). Sizes are BSON bytes of documents and the bytes of
//! index keys; the engine stores them in shared files, so `storageSize` equals `size` and
//! `freeStorageSize` is 0.

use std::ops::{Bound, ControlFlow};
use std::time::SystemTime;

use bson::raw::{RawArrayBuf, RawBsonRef, RawDocument};
use bson::{Document, doc};
use mangrove_query::Pipeline;
use mangrove_storage::{CollectionInfo, Snapshot};

use crate::Shared;
use crate::access::{check_deadline, deadline_of, with_deadline};
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;

use super::Reply;
use super::args::cursor_batch_size;
use super::args::internal;
use super::oplog_find::OPLOG_NS;
use super::reply::pipeline_cursor;

/// Index entries read per call into the engine while summing an index's size.
const INDEX_CHUNK: usize = 4096;

/// `collStats` (deprecated in mongod 6.2 but still answered, and used by older tools).
pub(super) fn coll_stats(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&["scale", "verbose"])?;
    let name = req.collection()?;
    let ns = req.ns(name);
    let scale = scale_of(req.get("scale"))?;
    let deadline = deadline_of(req.opt_i64("maxTimeMS")?);
    let mut stats = with_deadline(deadline, || storage_stats(shared, &ns, scale))?;
    stats.insert("ok", 1.0);
    Ok(stats.into())
}

/// `dataSize`: the documents of a full namespace and their BSON bytes, all of them, or those
/// whose `keyPattern` field lies in `[min, max)` (mongod's chunk-size question).
pub(super) fn data_size(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&["keyPattern", "min", "max", "estimate"])?;
    let Some(RawBsonRef::String(ns)) = req.command_value() else {
        return Err(CommandError::type_mismatch(
            "dataSize takes a full namespace string",
        ));
    };
    let started = std::time::Instant::now();
    let filter = range_filter(req)?;
    let deadline = deadline_of(req.opt_i64("maxTimeMS")?);
    let snapshot = shared.engine.snapshot();
    let (mut count, mut size) = (0i64, 0i64);
    if let Some(coll) = snapshot.collection(ns) {
        with_deadline(deadline, || -> CommandResult<()> {
            let mut failed = None;
            snapshot.scan(&coll, None, |_, doc| {
                if filter.as_ref().is_none_or(|f| f.matches(doc)) {
                    count += 1;
                    size += doc.as_bytes().len() as i64;
                }
                if let Err(e) = check_deadline() {
                    failed = Some(e);
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            })?;
            failed.map_or(Ok(()), Err)
        })?;
    }
    Ok(doc! {
        "size": size,
        "numObjects": count,
        "millis": started.elapsed().as_millis() as i64,
        "ok": 1.0,
    }
    .into())
}

/// `keyPattern` with `min` and `max` as a filter on its one field (`None`: no bounds).
fn range_filter(req: &Request<'_>) -> CommandResult<Option<mangrove_query::Filter>> {
    let (pattern, min, max) = (
        req.opt_doc("keyPattern")?,
        req.opt_doc("min")?,
        req.opt_doc("max")?,
    );
    let (Some(pattern), Some(min), Some(max)) = (pattern, min, max) else {
        if pattern.is_some() || min.is_some() || max.is_some() {
            return Err(CommandError::bad_value(
                "dataSize needs keyPattern, min and max together, or none of them",
            ));
        }
        return Ok(None);
    };
    let field = match pattern
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(internal)?[..]
    {
        [(field, _)] => field.as_str().to_string(),
        _ => {
            return Err(CommandError::bad_value(
                "dataSize's keyPattern must have one field in Mangrove",
            ));
        }
    };
    let bound = |d: &RawDocument| -> CommandResult<bson::Bson> {
        let v = d.get(&field).map_err(internal)?.ok_or_else(|| {
            CommandError::bad_value(format!(
                "min and max must give the keyPattern field '{field}'"
            ))
        })?;
        v.try_into().map_err(internal)
    };
    let spec = doc! { field.as_str(): { "$gte": bound(min)?, "$lt": bound(max)? } };
    let raw = bson::RawDocumentBuf::try_from(&spec).map_err(internal)?;
    Ok(Some(mangrove_query::Filter::parse(&raw)?))
}

/// `dbStats`: the database's collections, views, documents and sizes, summed over
/// [`collection_stats`] of each collection, all in one snapshot.
pub(super) fn db_stats(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&["scale", "freeStorage"])?;
    let scale = scale_of(req.get("scale"))?;
    let deadline = deadline_of(req.opt_i64("maxTimeMS")?);
    let snapshot = shared.engine.snapshot();
    let (mut collections, mut views, mut objects, mut data, mut indexes, mut index_bytes) =
        (0i64, 0i64, 0i64, 0i64, 0i64, 0i64);
    for coll in snapshot.list_collections(req.db) {
        if super::views::is_view(&coll) {
            views += 1;
            continue;
        }
        let stats = with_deadline(deadline, || {
            collection_stats(&snapshot, &coll, &coll.ns(), 1)
        })?;
        collections += 1;
        objects += stats.get_i64("count").unwrap_or(0);
        data += stats.get_i64("size").unwrap_or(0);
        indexes += i64::from(stats.get_i32("nindexes").unwrap_or(0));
        index_bytes += stats.get_i64("totalIndexSize").unwrap_or(0);
    }
    Ok(doc! {
        "db": req.db,
        "collections": collections,
        "views": views,
        "objects": objects,
        "avgObjSize": if objects > 0 { data as f64 / objects as f64 } else { 0.0 },
        "dataSize": data / scale,
        "storageSize": data / scale,
        "indexes": indexes,
        "indexSize": index_bytes / scale,
        "totalSize": (data + index_bytes) / scale,
        "scaleFactor": scale,
        "ok": 1.0,
    }
    .into())
}

/// Whether `aggregate`'s pipeline starts with `$collStats`.
pub(super) fn is_coll_stats(req: &Request<'_>) -> CommandResult<bool> {
    Ok(first_stage(req)?.is_some_and(|(name, _)| name == "$collStats"))
}

pub(super) fn first_stage<'r>(
    req: &Request<'r>,
) -> CommandResult<Option<(&'r str, RawBsonRef<'r>)>> {
    let Some(stages) = req.opt_array("pipeline")? else {
        return Ok(None);
    };
    let Some(Ok(RawBsonRef::Document(first))) = stages.into_iter().next() else {
        return Ok(None);
    };
    Ok(first
        .iter()
        .next()
        .and_then(Result::ok)
        .map(|(k, v)| (k.as_str(), v)))
}

/// `aggregate` whose first stage is `$collStats`: one document, through the stages after it.
pub(super) fn aggregate(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    let name = match req.command_value() {
        Some(RawBsonRef::String(name)) => name,
        _ => {
            return Err(CommandError::new(
                code::INVALID_NAMESPACE,
                "$collStats must be run against a collection, not {aggregate: 1}",
            ));
        }
    };
    let ns = req.ns(name);
    let Some((_, RawBsonRef::Document(spec))) = first_stage(req)? else {
        return Err(CommandError::failed_to_parse(
            "$collStats must be specified as an object",
        ));
    };
    let mut rest = RawArrayBuf::new();
    let stages = req.opt_array("pipeline")?.into_iter().flatten().skip(1);
    for stage in stages {
        let stage = stage.map_err(internal)?;
        if let RawBsonRef::Document(d) = stage
            && d.get("$collStats").ok().flatten().is_some()
        {
            return Err(CommandError::new(
                40602,
                "$collStats is only valid as the first stage in a pipeline",
            ));
        }
        rest.push(stage);
    }
    let pipeline = Pipeline::parse(&rest)?;
    let deadline = deadline_of(req.opt_i64("maxTimeMS")?);
    let stats = with_deadline(deadline, || stage_output(shared, &ns, spec))?;
    let raw = bson::RawDocumentBuf::try_from(&stats).map_err(internal)?;
    let output = pipeline.run_from_start(vec![raw])?;
    pipeline_cursor(shared, ns, output, cursor_batch_size(req)?, None)
}

/// The one document `$collStats` gives for `spec`: `storageStats` and `count` come from one
/// walk of the collection (a count does not depend on the scale).
fn stage_output(shared: &Shared, ns: &str, spec: &RawDocument) -> CommandResult<Document> {
    let mut wanted: Vec<(&str, i64)> = Vec::new();
    for item in spec.iter() {
        let (key, value) = item.map_err(internal)?;
        let RawBsonRef::Document(options) = value else {
            return Err(CommandError::failed_to_parse(format!(
                "$collStats.{} must be an object",
                key.as_str()
            )));
        };
        match key.as_str() {
            "storageStats" => {
                wanted.push((
                    "storageStats",
                    scale_of(options.get("scale").ok().flatten())?,
                ));
            }
            "count" => wanted.push(("count", 1)),
            "latencyStats" | "queryExecStats" => {
                return Err(CommandError::new(
                    code::COMMAND_NOT_SUPPORTED,
                    format!(
                        "$collStats.{} is not supported by Mangrove (it keeps no per-collection latency or query counters); storageStats and count are",
                        key.as_str()
                    ),
                ));
            }
            other => {
                return Err(CommandError::new(
                    code::UNKNOWN_FIELD,
                    format!("BSON field '$collStats.{other}' is an unknown field."),
                ));
            }
        }
    }
    let mut out = doc! {
        "ns": ns,
        "host": shared.advertised.clone(),
        "localTime": bson::DateTime::from_system_time(SystemTime::now()),
    };
    if wanted.is_empty() {
        return Ok(out);
    }
    let scale = wanted
        .iter()
        .find(|(k, _)| *k == "storageStats")
        .map_or(1, |(_, s)| *s);
    let stats = storage_stats(shared, ns, scale)?;
    for (key, _) in wanted {
        if key == "count" {
            let count = stats.get("count").cloned().unwrap_or(bson::Bson::Int64(0));
            out.insert("count", count);
        } else {
            out.insert("storageStats", stats.clone());
        }
    }
    Ok(out)
}

/// `scale`: a positive number (1 by default), as mongod checks it.
fn scale_of(v: Option<RawBsonRef<'_>>) -> CommandResult<i64> {
    let Some(v) = v else {
        return Ok(1);
    };
    match crate::request::as_i64(v) {
        Some(n) if n >= 1 => Ok(n),
        Some(_) => Err(CommandError::bad_value("scale has to be >= 1")),
        None => Err(CommandError::type_mismatch("scale has to be a number")),
    }
}

/// mongod's `storageStats` of `ns`, sizes divided by `scale`.
fn storage_stats(shared: &Shared, ns: &str, scale: i64) -> CommandResult<Document> {
    if ns == OPLOG_NS {
        return oplog_stats(shared, scale);
    }
    let snapshot = shared.engine.snapshot();
    let Some(coll) = snapshot.collection(ns) else {
        return Err(CommandError::new(
            code::NAMESPACE_NOT_FOUND,
            format!("Collection [{ns}] not found."),
        ));
    };
    super::views::refuse_view(&coll, None)?;
    collection_stats(&snapshot, &coll, ns, scale)
}

/// `storageStats` of one collection as `snapshot` sees it.
fn collection_stats(
    snapshot: &Snapshot,
    coll: &CollectionInfo,
    ns: &str,
    scale: i64,
) -> CommandResult<Document> {
    let (count, size, key_bytes) = document_totals(snapshot, coll)?;
    let index_sizes = index_sizes(snapshot, coll, key_bytes)?;
    let total_index: i64 = index_sizes.values().filter_map(bson::Bson::as_i64).sum();
    let mut stats = doc! {
        "ns": ns,
        "size": size / scale,
        "count": count,
        "avgObjSize": if count > 0 { size / count } else { 0 },
        "numOrphanDocs": 0_i64,
        "storageSize": size / scale,
        "freeStorageSize": 0_i64,
        "capped": crate::capped::is_capped(coll),
    };
    if let Some(limits) = crate::capped::limits(coll) {
        if let Some(max) = limits.max {
            // Below 2^31 (`create` checks it): an int, as mongod reports it.
            stats.insert("max", i32::try_from(max).unwrap_or(i32::MAX));
        }
        stats.insert("maxSize", limits.size as i64 / scale);
    }
    stats.insert("nindexes", crate::capped::index_count(coll) as i32);
    stats.insert("indexBuilds", bson::Bson::Array(Vec::new()));
    stats.insert("totalIndexSize", total_index / scale);
    stats.insert("totalSize", (size + total_index) / scale);
    let scaled: Document = index_sizes
        .into_iter()
        .map(|(k, v)| (k, bson::Bson::Int64(v.as_i64().unwrap_or(0) / scale)))
        .collect();
    stats.insert("indexSizes", scaled);
    stats.insert("scaleFactor", scale);
    Ok(stats)
}

/// Documents, their BSON bytes, and the bytes of their keys (the collection's `_id` index
/// where documents are keyed by `_id`).
fn document_totals(snapshot: &Snapshot, coll: &CollectionInfo) -> CommandResult<(i64, i64, i64)> {
    let (mut count, mut size, mut keys) = (0i64, 0i64, 0i64);
    let mut failed = None;
    snapshot.scan(coll, None, |key, doc| {
        count += 1;
        size += doc.as_bytes().len() as i64;
        keys += key.0.len() as i64;
        if count % 4096 == 0
            && let Err(e) = check_deadline()
        {
            failed = Some(e);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok((count, size, keys)),
    }
}

/// Each index's name and the bytes of its entries (entry key and document key), `_id_` first.
fn index_sizes(
    snapshot: &Snapshot,
    coll: &CollectionInfo,
    primary_key_bytes: i64,
) -> CommandResult<Document> {
    let mut sizes = Document::new();
    if crate::capped::id_index(coll).is_none() {
        sizes.insert("_id_", primary_key_bytes);
    }
    for index in &coll.indexes {
        let all = (Bound::Unbounded, Bound::Unbounded);
        let mut bytes = 0i64;
        let mut after = None;
        loop {
            check_deadline()?;
            let entries = snapshot.index_scan(index, &all, after.as_ref(), INDEX_CHUNK, false)?;
            for (entry, target) in &entries {
                bytes += (entry.0.len() + target.0.len()) as i64;
            }
            match entries.into_iter().last() {
                Some((last, _)) => after = Some(last),
                None => break,
            }
        }
        sizes.insert(index.key.name.clone(), bytes);
    }
    Ok(sizes)
}

/// `local.oplog.rs`: the retained log as a capped collection of the configured history size.
/// No `count`: counting its entries would read the whole retained log.
fn oplog_stats(shared: &Shared, scale: i64) -> CommandResult<Document> {
    let window = shared.engine.history_window()?;
    let size = window.retained_bytes as i64;
    Ok(doc! {
        "ns": OPLOG_NS,
        "size": size / scale,
        "storageSize": size / scale,
        "freeStorageSize": 0_i64,
        "capped": true,
        "maxSize": window.size_limit_bytes as i64 / scale,
        "nindexes": 0,
        "indexBuilds": [],
        "totalIndexSize": 0_i64,
        "totalSize": size / scale,
        "indexSizes": {},
        "scaleFactor": scale,
    })
}
