//! Secondary indexes: `createIndexes`, `listIndexes`, `dropIndexes`, and the TTL
//! monitor that deletes expired documents.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bson::raw::RawBsonRef;
use bson::{Document, RawDocumentBuf, doc};
use mangrove_query::{Filter, expired_bounds, normalize_index};
use mangrove_storage::{CollectionInfo, Txn};

use crate::Shared;
use crate::access::{Examined, IndexWalk};
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;

use super::Reply;
use super::args::{cursor_batch_size, internal};
use super::catalog::wait_for_transactions;
use super::names::validate_collection_name;
use super::write_path::{WriteOptions, retry_conflicts, run_write};

/// MongoDB's limit of indexes per collection, `_id` included.
const MAX_INDEXES: usize = 64;

/// The `_id` index as `listIndexes` shows it for `coll`: clustered under its name for a
/// clustered collection, none for a time-series one.
pub(super) fn id_index_of(coll: &CollectionInfo) -> Option<Document> {
    if crate::timeseries::is_timeseries(coll) {
        return None;
    }
    Some(
        crate::timeseries::clustered_id_index(coll)
            .unwrap_or_else(|| super::args::id_index_spec(coll)),
    )
}

fn is_id_index(spec: &Document) -> bool {
    spec.get_document("key")
        .is_ok_and(|k| k.len() == 1 && k.contains_key("_id"))
        && without_version(spec).len() <= 2
}

/// For comparing a requested index with an existing one: what makes two specifications the same index: not the version, nor `background`, which
/// mongod keeps but ignores.
fn without_version(spec: &Document) -> Document {
    let mut d = spec.clone();
    d.remove("v");
    d.remove("background");
    d
}

/// `createIndexes`. Outside a transaction it first waits for open transactions that use the
/// collection, as MongoDB's index builds wait for their locks; the build itself is one
/// transaction, retried if a concurrent write gets in first. Inside a transaction it may only
/// index a collection the transaction creates (MongoDB's rule).
pub(super) async fn create_indexes(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&mut Txn>,
) -> CommandResult<Reply> {
    req.check_fields(&["indexes", "commitQuorum", "ignoreUnknownIndexOptions"])?;
    let name = req.collection()?;
    validate_collection_name(req.db, name)?;
    let ns = req.ns(name);
    let specs = parse_specs(req)?;
    let opts = WriteOptions::from_request(req)?;
    let in_txn = txn.is_some();
    if !in_txn {
        wait_for_transactions(shared, req, &ns, &|used| used == ns).await?;
    }
    let (created_coll, before, after) = run_write(shared, &opts, txn, |txn: &mut Txn| {
        build_indexes(txn, &ns, &specs, in_txn)
    })
    .await?;
    let mut reply = doc! {
        "numIndexesBefore": before as i32,
        "numIndexesAfter": after as i32,
        "createdCollectionAutomatically": created_coll,
    };
    if before == after && !created_coll {
        reply.insert("note", "all indexes already exist");
    }
    if let Some(wce) = opts.wc_error() {
        reply.insert("writeConcernError", wce);
    }
    reply.insert("ok", 1.0);
    Ok(reply.into())
}

/// `indexes`: at least one index specification, each checked and normalized, with whether it
/// gave its own `collation` (the simple one included).
fn parse_specs(req: &Request<'_>) -> CommandResult<Vec<(Document, bool)>> {
    let Some(list) = req.opt_array("indexes")? else {
        return Err(CommandError::new(
            code::MISSING_FIELD,
            "BSON field 'createIndexes.indexes' is missing but a required field",
        ));
    };
    let mut specs = Vec::new();
    for item in list {
        match item.map_err(internal)? {
            RawBsonRef::Document(d) => {
                if let Ok(Some(RawBsonRef::String(name))) = d.get("name")
                    && crate::timeseries::is_internal_index(name)
                {
                    return Err(CommandError::new(
                        code::CANNOT_CREATE_INDEX,
                        format!("The index name '{name}' is reserved for Mangrove's own use"),
                    ));
                }
                let ttl_fixed = crate::params::check_expire_after_seconds(d)?;
                let spec = normalize_index(ttl_fixed.as_deref().unwrap_or(d))?;
                specs.push((spec, d.get("collation").ok().flatten().is_some()));
            }
            _ => {
                return Err(CommandError::type_mismatch(
                    "The elements of 'indexes' must be objects",
                ));
            }
        }
    }
    if specs.is_empty() {
        return Err(CommandError::bad_value("Must specify at least one index."));
    }
    Ok(specs)
}

/// Creates the collection if needed and the indexes it does not have yet; returns whether the
/// collection was created and the index counts before and after.
fn build_indexes(
    txn: &mut Txn,
    ns: &str,
    specs: &[(Document, bool)],
    in_txn: bool,
) -> CommandResult<(bool, usize, usize)> {
    let mut created = false;
    let mut current = match txn.collection(ns) {
        Some(c) => {
            if in_txn && !txn.creates(ns) {
                return Err(CommandError::new(
                    code::OPERATION_NOT_SUPPORTED_IN_TRANSACTION,
                    format!(
                        "Cannot create new indexes on existing collection {ns} in a multi-document transaction."
                    ),
                ));
            }
            c
        }
        None => {
            created = true;
            txn.create_collection(ns, Document::new())?
        }
    };
    super::views::refuse_write(&current)?;
    let before = crate::capped::index_count(&current);
    for (spec, own_collation) in specs {
        let spec = &with_default_collation(spec, *own_collation, &current);
        if is_id_index(spec) || !is_new_index(&current, ns, spec)? {
            continue;
        }
        if crate::capped::is_capped(&current) && spec.contains_key("expireAfterSeconds") {
            return Err(CommandError::new(
                67,
                format!("Cannot create TTL index on a capped collection: {ns}"),
            ));
        }
        current = txn.create_index(ns, spec.clone())?;
    }
    Ok((created, before, crate::capped::index_count(&current)))
}

/// `spec` with the collection's default collation when it gave none, as mongod builds it; text
/// and `2d` indexes key no strings by collation and take none.
fn with_default_collation(spec: &Document, own_collation: bool, coll: &CollectionInfo) -> Document {
    let default = super::args::default_collation(coll);
    let keys = spec.get_document("key").ok();
    let collates = keys.is_some_and(|k| {
        k.values()
            .all(|v| !matches!(v, bson::Bson::String(s) if s == "text" || s == "2d"))
    });
    match default {
        Some(collation) if !own_collation && collates && !spec.contains_key("collation") => {
            let mut out = Document::new();
            for (field, value) in spec {
                out.insert(field.clone(), value.clone());
                if field == "name" {
                    out.insert("collation", collation.clone());
                }
            }
            out
        }
        _ => spec.clone(),
    }
}

/// Whether `spec` asks for an index the collection lacks: false when the same index exists;
/// an error when it clashes with an existing one (same name, or same key pattern with an
/// overlapping partial filter) or the collection has as many indexes as it may.
fn is_new_index(current: &CollectionInfo, ns: &str, spec: &Document) -> CommandResult<bool> {
    let name = spec.get_str("name").unwrap_or_default();
    let pattern = spec.get_document("key").map_err(internal)?;
    if let Some(existing) = current.index(name) {
        if without_version(&existing.spec) == without_version(spec) {
            return Ok(false);
        }
        return Err(CommandError::new(
            86,
            format!(
                "An existing index has the same name as the requested index. When index names are not specified, they are auto generated and can cause conflicts. Please refer to our documentation. Requested index: {spec}, existing index: {}",
                existing.spec
            ),
        ));
    }
    // One key pattern may have several indexes only if their partial filters differ.
    let partial = spec.get_document("partialFilterExpression").ok();
    if let Some(existing) = current.indexes.iter().find(|i| {
        &i.key.key_pattern == pattern
            && (partial.is_none()
                || i.key.partial_raw.is_none()
                || i.key.partial_raw.as_ref() == partial)
    }) {
        return Err(CommandError::new(
            85,
            format!(
                "Index already exists with a different name: {}",
                existing.key.name
            ),
        ));
    }
    // One text index per collection (mongod's IndexCatalog check).
    if pattern.contains_key("_fts")
        && let Some(existing) = current.indexes.iter().find(|i| i.key.text.is_some())
    {
        return Err(CommandError::new(
            67,
            format!(
                "only one text index per collection allowed, found existing text index \"{}\"",
                existing.key.name
            ),
        ));
    }
    if crate::capped::index_count(current) >= MAX_INDEXES {
        return Err(CommandError::new(
            67,
            format!("add index fails, too many indexes for {ns} key:{pattern}"),
        ));
    }
    Ok(true)
}

/// `listIndexes`: `_id_` first, then the secondary indexes in creation order.
pub(super) fn list_indexes(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&Txn>,
) -> CommandResult<Reply> {
    req.check_fields(&["cursor", "includeIndexBuildInfo", "includeBuildUUIDs"])?;
    let name = req.collection()?;
    let ns = req.ns(name);
    let coll = match txn {
        Some(t) => super::collections::collection_in_txn(shared, t, &ns),
        None => shared.engine.snapshot().collection(&ns),
    };
    let Some(coll) = coll else {
        return Err(CommandError::new(
            code::NAMESPACE_NOT_FOUND,
            format!("ns does not exist: {ns}"),
        ));
    };
    let mut docs = Vec::with_capacity(coll.indexes.len() + 1);
    let secondary = crate::capped::secondary_indexes(&coll).map(|i| i.spec.clone());
    for spec in id_index_of(&coll).into_iter().chain(secondary) {
        docs.push(RawDocumentBuf::try_from(&spec).map_err(internal)?);
    }
    let batch_size = cursor_batch_size(req)?;
    super::reply::pipeline_cursor(shared, ns, docs, batch_size, None)
}

/// `dropIndexes`: by name, key pattern, a list of names, or `"*"` (all but `_id_`).
pub(super) async fn drop_indexes(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&["index"])?;
    let name = req.collection()?;
    let ns = req.ns(name);
    let which = req.get("index").ok_or_else(|| {
        CommandError::new(
            code::MISSING_FIELD,
            "BSON field 'dropIndexes.index' is missing but a required field",
        )
    })?;
    let which = bson::RawBson::from(which);
    let opts = WriteOptions::from_request(req)?;
    wait_for_transactions(shared, req, &ns, &|used| used == ns).await?;
    let was = retry_conflicts(shared, &opts, |txn: &mut Txn| {
        let coll = txn.collection(&ns).ok_or_else(|| {
            CommandError::new(code::NAMESPACE_NOT_FOUND, format!("ns not found {ns}"))
        })?;
        let was = crate::capped::index_count(&coll);
        for name in index_names(&coll, which.as_raw_bson_ref())? {
            txn.drop_index(&ns, &name)?;
        }
        Ok(was)
    })
    .await?;
    let mut reply = doc! { "nIndexesWas": was as i32 };
    if let Some(wce) = opts.wc_error() {
        reply.insert("writeConcernError", wce);
    }
    reply.insert("ok", 1.0);
    Ok(reply.into())
}

fn index_names(coll: &CollectionInfo, which: RawBsonRef<'_>) -> CommandResult<Vec<String>> {
    let cannot_drop_id = || CommandError::new(code::INVALID_OPTIONS, "cannot drop _id index");
    let by_name = |name: &str| -> CommandResult<String> {
        if name == "_id_" {
            return Err(cannot_drop_id());
        }
        coll.index(name)
            .map(|i| i.key.name.clone())
            .ok_or_else(|| CommandError::new(27, format!("index not found with name [{name}]")))
    };
    match which {
        RawBsonRef::String("*") => Ok(crate::capped::secondary_indexes(coll)
            .map(|i| i.key.name.clone())
            .collect()),
        RawBsonRef::String(name) => Ok(vec![by_name(name)?]),
        RawBsonRef::Array(names) => names
            .into_iter()
            .map(|n| match n {
                Ok(RawBsonRef::String(name)) => by_name(name),
                _ => Err(CommandError::type_mismatch(
                    "dropIndexes 'index' array must hold index names",
                )),
            })
            .collect(),
        RawBsonRef::Document(pattern) => {
            let pattern = Document::try_from(pattern).map_err(internal)?;
            if pattern.len() == 1 && pattern.contains_key("_id") {
                return Err(cannot_drop_id());
            }
            coll.indexes
                .iter()
                .find(|i| i.key.key_pattern == pattern)
                .map(|i| vec![i.key.name.clone()])
                .ok_or_else(|| {
                    CommandError::new(27, format!("can't find index with key: {pattern}"))
                })
        }
        _ => Err(CommandError::type_mismatch(
            "dropIndexes 'index' must be a name, a key pattern or an array of names",
        )),
    }
}

/// The TTL monitor: every `ttlMonitorSleepSecs`, deletes the documents whose TTL-indexed date
/// (the earliest, for an array) is more than `expireAfterSeconds` old, as MongoDB's TTL
/// monitor does. Each collection's expired documents go in batches of one transaction each.
pub(crate) async fn ttl_monitor(shared: Arc<Shared>) {
    // Ticks each second so that a changed `ttlMonitorSleepSecs` takes effect at once.
    let mut last_pass = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let secs = shared
            .params
            .ttl_monitor_sleep_secs
            .load(Ordering::Relaxed)
            .max(1);
        if last_pass.elapsed() < Duration::from_secs(secs)
            || !shared.params.ttl_monitor_enabled.load(Ordering::Relaxed)
        {
            continue;
        }
        last_pass = Instant::now();
        match ttl_pass(&shared).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "TTL monitor removed expired documents"),
            Err(e) => tracing::warn!(error = %e.message, "TTL pass failed; will retry"),
        }
        shared.counters.ttl_passes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Documents deleted per transaction of a TTL pass.
const TTL_BATCH: usize = 1000;

async fn ttl_pass(shared: &Shared) -> CommandResult<u64> {
    let now_ms = bson::DateTime::now().timestamp_millis();
    let snapshot = shared.engine.snapshot();
    let mut work = Vec::new();
    for db in snapshot.list_databases() {
        for coll in snapshot.list_collections(&db) {
            for index in &coll.indexes {
                if let Some(secs) = index.key.expire_after_seconds {
                    work.push((coll.ns(), index.clone(), now_ms.saturating_sub(secs * 1000)));
                }
            }
        }
    }
    drop(snapshot);
    let opts = WriteOptions::from_request_defaults();
    let mut deleted = 0u64;
    for (ns, index, cutoff) in work {
        let Some(bounds) = expired_bounds(&index.key, cutoff) else {
            continue;
        };
        let path = index.key.fields[0].path.clone();
        let raw = RawDocumentBuf::try_from(
            &doc! { path: { "$lt": bson::DateTime::from_millis(cutoff) } },
        )
        .map_err(internal)?;
        let expired = Filter::parse(&raw)?;
        loop {
            let n = retry_conflicts(shared, &opts, |txn: &mut Txn| {
                let Some(coll) = txn.collection(&ns) else {
                    return Ok(0);
                };
                if coll.index(&index.key.name).is_none() {
                    return Ok(0);
                }
                let bounds = mangrove_query::IndexBounds {
                    intervals: vec![bounds.clone()],
                    display: Document::new(),
                    score: 0,
                    eq_prefix: 0,
                };
                let mut walk = IndexWalk::new(index.clone(), &bounds, false);
                let mut victims = Vec::new();
                let mut examined = Examined::default();
                while victims.len() < TTL_BATCH {
                    let Some((key, doc)) = walk.next_doc(&*txn, &coll, &mut examined)? else {
                        break;
                    };
                    if expired.matches(&doc) {
                        victims.push(key);
                    }
                }
                for key in &victims {
                    txn.delete(&coll, key.clone())?;
                }
                Ok(victims.len())
            })
            .await?;
            deleted += n as u64;
            shared
                .counters
                .ttl_deleted
                .fetch_add(n as u64, Ordering::Relaxed);
            if n < TTL_BATCH {
                break;
            }
        }
    }
    Ok(deleted)
}
