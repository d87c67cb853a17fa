//! Secondary indexes: `createIndexes`, `listIndexes`, `dropIndexes`, `explain`, and the TTL
//! monitor that deletes expired documents.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bson::raw::{RawBsonRef, RawDocument};
use bson::{Document, RawDocumentBuf, doc};
use mangrove_query::{Filter, SortSpec, expired_bounds, normalize_index};
use mangrove_storage::{CollectionInfo, Txn};

use crate::Shared;
use crate::access::{
    Access, Examined, IndexWalk, choose, for_each_match, parse_hint, plan_stage, sort_fields,
};
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;

use super::Reply;
use super::catalog::{internal, validate_collection_name, wait_for_transactions};
use super::write_path::{WriteOptions, retry_conflicts, run_write};

/// MongoDB's limit of indexes per collection, `_id` included.
const MAX_INDEXES: usize = 64;

fn id_index_spec() -> Document {
    doc! { "v": 2, "key": { "_id": 1 }, "name": "_id_" }
}

fn is_id_index(spec: &Document) -> bool {
    spec.get_document("key")
        .is_ok_and(|k| k.len() == 1 && k.contains_key("_id"))
        && spec.len() <= 3
}

/// The specification without `v`, for comparing a requested index with an existing one.
fn without_version(spec: &Document) -> Document {
    let mut d = spec.clone();
    d.remove("v");
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
                let ttl_fixed = crate::params::check_expire_after_seconds(d)?;
                specs.push(normalize_index(ttl_fixed.as_deref().unwrap_or(d))?);
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
    let opts = WriteOptions::from_request(req)?;
    let in_txn = txn.is_some();
    if !in_txn {
        wait_for_transactions(shared, req, &ns, &|used| used == ns).await?;
    }
    let (created_coll, before, after) = run_write(shared, &opts, txn, |txn: &mut Txn| {
        let mut created = false;
        let mut current = match txn.collection(&ns) {
            Some(c) => {
                if in_txn && !txn.creates(&ns) {
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
                txn.create_collection(&ns, Document::new())?
            }
        };
        super::views::refuse_write(&current)?;
        let before = current.indexes.len() + 1;
        for spec in &specs {
            if is_id_index(spec) {
                continue;
            }
            let name = spec.get_str("name").unwrap_or_default();
            let pattern = spec.get_document("key").map_err(internal)?;
            if let Some(existing) = current.index(name) {
                if without_version(&existing.spec) == without_version(spec) {
                    continue;
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
            })
            {
                return Err(CommandError::new(
                    85,
                    format!(
                        "Index already exists with a different name: {}",
                        existing.key.name
                    ),
                ));
            }
            if current.indexes.len() + 1 >= MAX_INDEXES {
                return Err(CommandError::new(
                    67,
                    format!("add index fails, too many indexes for {ns} key:{pattern}"),
                ));
            }
            current = txn.create_index(&ns, spec.clone())?;
        }
        Ok((created, before, current.indexes.len() + 1))
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
        Some(t) => super::crud::collection_in_txn(shared, t, &ns),
        None => shared.engine.snapshot().collection(&ns),
    };
    let Some(coll) = coll else {
        return Err(CommandError::new(
            code::NAMESPACE_NOT_FOUND,
            format!("ns does not exist: {ns}"),
        ));
    };
    let mut docs = Vec::with_capacity(coll.indexes.len() + 1);
    for spec in std::iter::once(id_index_spec()).chain(coll.indexes.iter().map(|i| i.spec.clone()))
    {
        docs.push(RawDocumentBuf::try_from(&spec).map_err(internal)?);
    }
    let batch_size = super::catalog::cursor_batch_size(req)?;
    super::crud::pipeline_cursor(shared, ns, docs, batch_size, None)
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
        let was = coll.indexes.len() + 1;
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
        RawBsonRef::String("*") => Ok(coll.indexes.iter().map(|i| i.key.name.clone()).collect()),
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

/// What `explain` needs of the command it explains.
struct Explained<'a> {
    coll: &'a str,
    filter: Option<&'a RawDocument>,
    sort: Option<&'a RawDocument>,
    skip: u64,
    limit: Option<u64>,
    hint: Option<RawBsonRef<'a>>,
    projection: bool,
}

fn explained<'a>(cmd: &'a RawDocument) -> CommandResult<(&'a str, Explained<'a>)> {
    let (name, value) = cmd
        .iter()
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| CommandError::bad_value("explain needs a command to explain"))?;
    let name = name.as_str();
    let RawBsonRef::String(coll) = value else {
        return Err(CommandError::bad_value(format!(
            "explain of '{name}' needs a collection name"
        )));
    };
    let doc_field = |f: &str| match cmd.get(f).ok().flatten() {
        Some(RawBsonRef::Document(d)) => Some(d),
        _ => None,
    };
    let num = |f: &str| -> Option<u64> {
        cmd.get(f)
            .ok()
            .flatten()
            .and_then(crate::request::as_i64)
            .map(i64::unsigned_abs)
            .filter(|n| *n > 0)
    };
    let first_stmt = |list: &str| -> Option<&'a RawDocument> {
        match cmd.get(list).ok().flatten() {
            Some(RawBsonRef::Array(a)) => match a.into_iter().next() {
                Some(Ok(RawBsonRef::Document(d))) => Some(d),
                _ => None,
            },
            _ => None,
        }
    };
    let mut e = Explained {
        coll,
        filter: None,
        sort: None,
        skip: 0,
        limit: None,
        hint: cmd.get("hint").ok().flatten(),
        projection: false,
    };
    match name {
        "find" => {
            e.filter = doc_field("filter");
            e.sort = doc_field("sort").filter(|s| !s.is_empty());
            e.skip = num("skip").unwrap_or(0);
            e.limit = num("limit");
            e.projection = doc_field("projection").is_some_and(|p| !p.is_empty());
        }
        "count" | "distinct" => {
            e.filter = doc_field("query");
            e.skip = num("skip").unwrap_or(0);
            e.limit = num("limit");
        }
        "findAndModify" | "findandmodify" => {
            e.filter = doc_field("query");
            e.sort = doc_field("sort").filter(|s| !s.is_empty());
            e.limit = Some(1);
        }
        "delete" | "update" => {
            let list = if name == "delete" {
                "deletes"
            } else {
                "updates"
            };
            let stmt = first_stmt(list);
            e.filter = stmt.and_then(|s| match s.get("q").ok().flatten() {
                Some(RawBsonRef::Document(q)) => Some(q),
                _ => None,
            });
            e.hint = stmt.and_then(|s| s.get("hint").ok().flatten());
        }
        "aggregate" => {
            e.filter = match cmd.get("pipeline").ok().flatten() {
                Some(RawBsonRef::Array(stages)) => match stages.into_iter().next() {
                    Some(Ok(RawBsonRef::Document(stage))) => {
                        match stage.get("$match").ok().flatten() {
                            Some(RawBsonRef::Document(m)) => Some(m),
                            _ => None,
                        }
                    }
                    _ => None,
                },
                _ => None,
            };
        }
        other => {
            return Err(CommandError::new(
                code::COMMAND_NOT_SUPPORTED,
                format!("explain of '{other}' is not supported by Mangrove"),
            ));
        }
    }
    Ok((name, e))
}

/// `explain` of find, count, distinct, findAndModify, update, delete and aggregate (its leading
/// `$match`): the plan chosen, in MongoDB's stage names, and at `executionStats` verbosity or
/// above what running it examined.
pub(super) fn explain(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&["verbosity"])?;
    let Some(RawBsonRef::Document(cmd)) = req.command_value() else {
        return Err(CommandError::type_mismatch(
            "explain takes the command to explain as an object",
        ));
    };
    let verbosity = req.opt_str("verbosity")?.unwrap_or("allPlansExecution");
    explain_command(shared, req.db, cmd, verbosity)
}

pub(super) fn explain_command(
    shared: &Shared,
    db: &str,
    cmd: &RawDocument,
    verbosity: &str,
) -> CommandResult<Reply> {
    if !matches!(
        verbosity,
        "queryPlanner" | "executionStats" | "allPlansExecution"
    ) {
        return Err(CommandError::bad_value(format!(
            "verbosity string must be one of {{'queryPlanner', 'executionStats', 'allPlansExecution'}}, got '{verbosity}'"
        )));
    }
    let (_, e) = explained(cmd)?;
    let ns = format!("{db}.{}", e.coll);
    let empty = RawDocumentBuf::new();
    let raw_filter = e.filter.unwrap_or(&empty);
    let filter = Filter::parse(raw_filter)?;
    let filter_doc = Document::try_from(raw_filter).map_err(internal)?;
    let sort = e.sort.map(SortSpec::parse).transpose()?;
    let snapshot = shared.engine.snapshot();
    let coll = snapshot.collection(&ns);
    let hint = parse_hint(e.hint, coll.as_ref())?;
    let started = Instant::now();
    let mut examined = Examined::default();
    let mut returned = 0u64;
    let (mut plan, access) = match &coll {
        None => (doc! { "stage": "EOF" }, None),
        Some(coll) => {
            let access = choose(
                &snapshot,
                coll,
                &filter,
                raw_filter,
                &hint,
                sort_fields(e.sort).as_deref(),
            )?;
            (plan_stage(&access, &filter_doc), Some(access))
        }
    };
    if let (Some(coll), Some(access)) = (&coll, &access)
        && verbosity != "queryPlanner"
    {
        let wanted = match &sort {
            Some(_) if !access.sorted() => None,
            _ => e.limit.map(|l| l + e.skip),
        };
        let mut seen = 0u64;
        for_each_match(
            &snapshot,
            coll,
            access,
            &filter,
            &mut examined,
            &mut |_, _| {
                seen += 1;
                if wanted.is_some_and(|w| seen >= w) {
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            },
        )?;
        returned = seen.saturating_sub(e.skip);
        if let Some(l) = e.limit {
            returned = returned.min(l);
        }
    }
    let micros = started.elapsed().as_micros() as i64;
    let elapsed = micros / 1000;
    let sorted = access.as_ref().is_some_and(Access::sorted);
    if let Some(s) = e.sort.filter(|_| !sorted) {
        let mut sort_stage =
            doc! { "stage": "SORT", "sortPattern": Document::try_from(s).map_err(internal)? };
        if let Some(l) = e.limit {
            sort_stage.insert("limitAmount", l as i64);
        }
        sort_stage.insert("inputStage", plan);
        plan = sort_stage;
    } else if let Some(l) = e.limit {
        plan = doc! { "stage": "LIMIT", "limitAmount": l as i64, "inputStage": plan };
    }
    if e.skip > 0 {
        plan = doc! { "stage": "SKIP", "skipAmount": e.skip as i64, "inputStage": plan };
    }
    if e.projection {
        plan = doc! { "stage": "PROJECTION_DEFAULT", "inputStage": plan };
    }
    let mut reply = doc! {
        "explainVersion": "1",
        "queryPlanner": {
            "namespace": &ns,
            "indexFilterSet": false,
            "parsedQuery": filter_doc,
            "maxIndexedOrSolutionsReached": false,
            "maxIndexedAndSolutionsReached": false,
            "maxScansToExplodeReached": false,
            "winningPlan": plan.clone(),
            "rejectedPlans": [],
        },
    };
    if verbosity != "queryPlanner" {
        let mut stages = plan;
        annotate(&mut stages, returned, &examined, elapsed);
        reply.insert(
            "executionStats",
            doc! {
                "executionSuccess": true,
                "nReturned": returned as i64,
                "executionTimeMillis": elapsed,
                // Mangrove's addition: sub-millisecond plans otherwise all read 0.
                "executionTimeMicros": micros,
                "totalKeysExamined": examined.keys as i64,
                "totalDocsExamined": examined.docs as i64,
                "executionStages": stages,
                "allPlansExecution": [],
            },
        );
    }
    reply.insert("command", Document::try_from(cmd).map_err(internal)?);
    reply.insert(
        "serverInfo",
        doc! { "host": "localhost", "version": super::diag::COMPAT_VERSION, "gitVersion": "mangrove" },
    );
    reply.insert("ok", 1.0);
    Ok(reply.into())
}

/// Adds execution counters to each stage of a plan, as `executionStats` shows them.
fn annotate(stage: &mut Document, returned: u64, examined: &Examined, millis: i64) {
    stage.insert("nReturned", returned as i64);
    stage.insert("executionTimeMillisEstimate", millis);
    match stage.get_str("stage").unwrap_or_default() {
        "IXSCAN" => {
            stage.insert("keysExamined", examined.keys as i64);
        }
        "FETCH" | "COLLSCAN" => {
            stage.insert("docsExamined", examined.docs as i64);
        }
        "IDHACK" => {
            stage.insert("keysExamined", examined.keys as i64);
            stage.insert("docsExamined", examined.docs as i64);
        }
        _ => {}
    }
    if let Ok(input) = stage.get_document_mut("inputStage") {
        annotate(input, returned, examined, millis);
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
