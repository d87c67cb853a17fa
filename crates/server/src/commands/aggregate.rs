//! `aggregate`: a pipeline over a collection (or a view, or `$documents`), answered through a
//! cursor.
//!
//! Invariants:
//! - The input streams into the pipeline's `Runner` a chunk at a time (`pipeline_input.rs`);
//!   nothing holds the whole input, so an aggregate over more data than any memory limit works
//!   as long as its blocking stages' state fits (`$match` + `$group` counts any collection).
//! - Outside transactions, without a collation and without `$out`/`$merge`, the result is
//!   lazy: the cursor keeps the runner and the reader (pinning its snapshot) and each batch is
//!   computed when asked for, so a result larger than memory can be read through `getMore`.
//!   A transaction's cursor must not need the transaction later, a collation is thread-local
//!   to the command, and a sink writes everything in one transaction, so those results are
//!   computed at once, bounded by the per-stage limit (292).
//! - A view is its source collection through the views' pipelines followed by the reader's:
//!   one pipeline, streaming like any other (it uses no index).
//! - Collections a `$lookup`, `$graphLookup` or `$unionWith` names are read through the same
//!   snapshot or transaction as the input, when a stage asks (`foreign.rs`); views they name are
//!   computed when the command starts.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use bson::raw::{RawArrayBuf, RawBsonRef, RawDocument};
use bson::{Bson, Document, RawDocumentBuf, doc};
use mangrove_query::{Filter, Limits, Pipeline, Runner, StageStats, with_collation, with_let};
use mangrove_storage::{CollectionInfo, DocKey, ReadView, Snapshot, StoredDoc, Txn};

use crate::access::{Access, choose, deadline_of, parse_hint, with_deadline};
use crate::cursor::{Cursor, Source};
use crate::error::{CommandError, CommandResult, code};
use crate::foreign::{Foreign, ForeignViews};
use crate::pipeline_input::{InputReader, PipelineSource, next_result};
use crate::request::Request;
use crate::validation::DocValidator;
use crate::{Counters, Shared};

use super::Reply;
use super::args::{collation_for, cursor_batch_size, disk_use, internal};
use super::collections::{collection_in_txn, implicit_collection};
use super::names::{validate_collection_name, validate_db_name};
use super::reply::{DEFAULT_FIRST_BATCH, cursor_reply, pipeline_cursor, txn_owner};
use super::stored::{doc_key, id_of, too_large, with_id_first};
use super::write_path::{WriteOptions, retry_conflicts};

/// What the pipeline reads: a collection along an access path, or nothing.
struct Input {
    coll: CollectionInfo,
    access: Access,
    filter: Filter,
}

const AGGREGATE_FIELDS: &[&str] = &[
    "pipeline",
    "cursor",
    "explain",
    "allowDiskUse",
    "bypassDocumentValidation",
    "collation",
    "hint",
    "let",
    "maxTimeMS",
    "readConcern",
];

/// `aggregate` on a collection or view, or `{aggregate: 1}` with a pipeline that starts with
/// `$documents`.
pub(super) async fn aggregate(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&Txn>,
    at: Option<Snapshot>,
) -> CommandResult<Reply> {
    if super::change_stream::is_change_stream(req)? {
        return super::change_stream::open(shared, req, txn).await;
    }
    if super::coll_stats::is_coll_stats(req)? {
        return super::coll_stats::aggregate(shared, req);
    }
    super::search_indexes::check_aggregate(req)?;
    if super::index_stats::is_index_stats(req)? {
        return super::index_stats::aggregate(shared, req, txn);
    }
    req.check_fields(AGGREGATE_FIELDS)?;
    Counters::bump(&shared.counters.query, 1);
    if let Some(reply) = list_sessions_aggregate(shared, req, txn).await? {
        return Ok(reply);
    }
    // `{aggregate: 1}` has no input collection; only a pipeline that makes its own input
    // (`$documents`) can run there.
    let collectionless = !matches!(req.command_value(), Some(RawBsonRef::String(_)));
    validate_db_name(req.db)?;
    let ns = if collectionless {
        format!("{}.$cmd.aggregate", req.db)
    } else {
        req.ns(req.collection()?)
    };
    let Some(pipeline) = parse_pipeline(req)? else {
        return Err(internal("explain: true is answered by explain.rs"));
    };
    if collectionless && !pipeline.starts_with_documents() {
        return Err(CommandError::new(
            code::COMMAND_NOT_SUPPORTED,
            "aggregate without a collection ({aggregate: 1}) needs a pipeline starting with $documents",
        ));
    }
    check_sink(req, &pipeline, txn)?;
    // The write options are checked before any work, as for other writes.
    let write_opts = match pipeline.sink() {
        Some(_) => Some(WriteOptions::from_request(req)?),
        None => None,
    };
    let snapshot = at.unwrap_or_else(|| shared.engine.snapshot());
    let target = Target::of(shared, txn, &snapshot, &ns, collectionless);
    let collation = collation_for(req.opt_doc("collation")?, target.coll.as_ref())?;
    let deadline = deadline_of(req.opt_i64("maxTimeMS")?);
    let pipeline = pipeline.with_limits(query_limits(shared));
    let (runner, input, views) = with_deadline(deadline, || {
        with_collation(collation.as_ref(), || {
            prepare(shared, req, txn, &snapshot, target, pipeline)
        })
    })?;
    if txn.is_none() && collation.is_none() && write_opts.is_none() {
        return with_deadline(deadline, || {
            lazy_cursor(shared, req, ns, runner, (input, views), snapshot)
        });
    }
    let output = with_deadline(deadline, || {
        with_collation(collation.as_ref(), || {
            with_foreign(shared, req, txn, &snapshot, &views, |view, foreign| {
                run_at_once(runner, input, view, foreign)
            })
        })
    })?;
    drop(snapshot);
    reply_at_once(shared, req, txn, ns, output, write_opts).await
}

/// The whole result of the request's pipeline over its collection, computed at once and kept
/// (mapReduce's inline and reduce outputs), outside any transaction.
pub(super) fn collect(
    shared: &Shared,
    req: &Request<'_>,
    at: Option<Snapshot>,
) -> CommandResult<Vec<RawDocumentBuf>> {
    let Some(pipeline) = parse_pipeline(req)? else {
        return Err(CommandError::bad_value("explain is not supported here"));
    };
    let ns = req.ns(req.collection()?);
    let snapshot = at.unwrap_or_else(|| shared.engine.snapshot());
    let target = Target::of(shared, None, &snapshot, &ns, false);
    let collation = collation_for(req.opt_doc("collation")?, target.coll.as_ref())?;
    let deadline = deadline_of(req.opt_i64("maxTimeMS")?);
    let pipeline = pipeline.with_limits(query_limits(shared));
    with_deadline(deadline, || {
        with_collation(collation.as_ref(), || {
            let (runner, input, views) = prepare(shared, req, None, &snapshot, target, pipeline)?;
            with_foreign(shared, req, None, &snapshot, &views, |view, foreign| {
                run_at_once(runner, input, view, foreign).map(|(docs, _)| docs)
            })
        })
    })
}

/// An explained aggregate's pipeline run to its end outside any transaction, its results
/// dropped: what each stage did and how long the run took (µs), for `explain` at
/// `executionStats`. `None` when no stage runs after the reader (the pipeline is its leading
/// `$match`, shown as the query alone, as mongod does) or when it ends in `$out`/`$merge`,
/// which an explain must not write.
pub(super) fn explain_run(
    shared: &Shared,
    db: &str,
    cmd: &RawDocument,
) -> CommandResult<Option<(Vec<StageStats>, i64)>> {
    let req = Request::new("aggregate", db, cmd, &[]);
    let Some(pipeline) = req.opt_array("pipeline")? else {
        return Ok(None);
    };
    let pipeline = with_let(req.opt_doc("let")?, || Pipeline::parse(pipeline))?;
    if pipeline.sink().is_some() {
        return Ok(None);
    }
    let collectionless = !matches!(req.command_value(), Some(RawBsonRef::String(_)));
    let ns = match collectionless {
        true => format!("{db}.$cmd.aggregate"),
        false => req.ns(req.collection()?),
    };
    let started = Instant::now();
    let snapshot = shared.engine.snapshot();
    let target = Target::of(shared, None, &snapshot, &ns, collectionless);
    let collation = collation_for(req.opt_doc("collation")?, target.coll.as_ref())?;
    let deadline = deadline_of(req.opt_i64("maxTimeMS")?);
    let pipeline = pipeline.with_limits(query_limits(shared));
    let stats = with_deadline(deadline, || {
        with_collation(collation.as_ref(), || {
            let (mut runner, input, views) =
                prepare(shared, &req, None, &snapshot, target, pipeline)?;
            runner.time_stages();
            let mut reader = input.map(|i| (InputReader::new(i.access, i.filter), i.coll));
            with_foreign(shared, &req, None, &snapshot, &views, |view, foreign| {
                loop {
                    let feed = reader.as_mut().map(|(r, c)| (r, view, &*c));
                    if next_result(&mut runner, feed, foreign)?.is_none() {
                        break;
                    }
                }
                Ok::<_, CommandError>(runner.stage_stats())
            })
        })
    })?;
    let micros = started.elapsed().as_micros() as i64;
    Ok((!stats.is_empty()).then_some((stats, micros)))
}

/// Writes a result computed at once to its sink, or answers it through a buffered cursor.
async fn reply_at_once(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&Txn>,
    ns: String,
    (docs, sink): (Vec<RawDocumentBuf>, Option<mangrove_query::Sink>),
    write_opts: Option<WriteOptions>,
) -> CommandResult<Reply> {
    if let (Some(sink), Some(opts)) = (&sink, write_opts) {
        write_sink(shared, req, sink, docs, &opts).await?;
        let mut reply = doc! { "cursor": { "firstBatch": [], "id": 0i64, "ns": &ns }, "ok": 1.0 };
        if let Some(wce) = opts.wc_error() {
            reply.insert("writeConcernError", wce);
        }
        return Ok(reply.into());
    }
    let batch_size = cursor_batch_size(req)?;
    pipeline_cursor(shared, ns, docs, batch_size, txn_owner(req, txn))
}

/// The checks an `aggregate` with `explain: true` passes before it is explained, as any
/// aggregate does, and its count among the queries.
pub(super) fn check_explained(shared: &Shared, req: &Request<'_>) -> CommandResult<()> {
    req.check_fields(AGGREGATE_FIELDS)?;
    Counters::bump(&shared.counters.query, 1);
    validate_db_name(req.db)?;
    parse_pipeline(req).map(|_| ())
}

/// The request's pipeline, or `None` for `explain: true`.
fn parse_pipeline(req: &Request<'_>) -> CommandResult<Option<Pipeline>> {
    let pipeline = match req.opt_array("pipeline")? {
        Some(p) => with_let(req.opt_doc("let")?, || Pipeline::parse(p))?,
        None => {
            return Err(CommandError::new(
                code::MISSING_FIELD,
                "BSON field 'aggregate.pipeline' is missing but a required field",
            ));
        }
    };
    if req.opt_bool("explain")?.unwrap_or(false) {
        return Ok(None);
    }
    if req.get("cursor").is_none() {
        return Err(CommandError::failed_to_parse(
            "The 'cursor' option is required, except for aggregate with the explain argument",
        ));
    }
    Ok(Some(pipeline))
}

/// `$out` and `$merge` are refused in transactions and under linearizable reads.
fn check_sink(req: &Request<'_>, pipeline: &Pipeline, txn: Option<&Txn>) -> CommandResult<()> {
    if pipeline.sink().is_none() {
        return Ok(());
    }
    if txn.is_some() {
        return Err(CommandError::new(
            code::OPERATION_NOT_SUPPORTED_IN_TRANSACTION,
            "$out and $merge cannot be used in a transaction",
        ));
    }
    if let Some(rc) = req.opt_doc("readConcern")?
        && rc.get_str("level").ok() == Some("linearizable")
    {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "$out and $merge cannot be used with readConcern level linearizable",
        ));
    }
    Ok(())
}

/// The memory limits pipelines run under.
fn query_limits(shared: &Shared) -> Limits {
    shared.params.query.limits()
}

/// The namespace a pipeline reads and its collection, looked up once by the caller (its default
/// collation chose the collation the pipeline runs under).
struct Target<'a> {
    ns: &'a str,
    coll: Option<CollectionInfo>,
    /// `{aggregate: 1}`: no collection at all.
    collectionless: bool,
}

impl<'a> Target<'a> {
    /// A transaction also sees collections created after its snapshot, as other statements do.
    fn of(
        shared: &Shared,
        txn: Option<&Txn>,
        snapshot: &Snapshot,
        ns: &'a str,
        collectionless: bool,
    ) -> Target<'a> {
        let coll = match txn {
            Some(txn) => collection_in_txn(shared, txn, ns),
            None => snapshot.collection(ns),
        };
        Target {
            ns,
            coll,
            collectionless,
        }
    }
}

/// Resolves the input (through views) and computes the views the joins name: the runner, ready
/// to be fed, what feeds it, and those views.
fn prepare(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&Txn>,
    snapshot: &Snapshot,
    Target {
        ns,
        coll,
        collectionless,
    }: Target<'_>,
    pipeline: Pipeline,
) -> CommandResult<(Runner, Option<Input>, ForeignViews)> {
    let view: &dyn ReadView = match txn {
        Some(txn) => txn,
        None => snapshot,
    };
    // A transaction also sees collections created after its snapshot, as other statements do.
    let collection = |ns: &str| match txn {
        Some(txn) => collection_in_txn(shared, txn, ns),
        None => snapshot.collection(ns),
    };
    let (pipeline, input) = if collectionless || pipeline.starts_with_documents() {
        (pipeline, None)
    } else if ns == "local.system.replset" {
        // The set's configuration, as `find` serves it there (`repl_set.rs`).
        let config = bson::Bson::Document(super::repl_set::config_document(shared));
        let stages = RawDocumentBuf::try_from(&doc! { "p": [{ "$documents": [config] }] })
            .map_err(internal)?;
        let stages = stages.get_array("p").map_err(internal)?;
        let source = Pipeline::parse(stages)?;
        (pipeline.preceded_by(source), None)
    } else {
        plan_input(req, view, coll, pipeline)?
    };
    // A view a join names is computed now, whole (as a view read is bounded); collections are
    // read when a stage asks (`foreign.rs`).
    let mut views = ForeignViews::default();
    for name in pipeline.foreign_collections() {
        if let Some(coll) = collection(&req.ns(&name))
            && super::views::is_view(&coll)
        {
            let docs = super::views::view_docs(shared, view, &coll)?;
            views.0.insert(name, Arc::new(docs));
        }
    }
    let mut runner = pipeline.into_runner();
    if let Some(store) = disk_use(shared, req)? {
        runner.allow_disk_use(store);
    }
    Ok((runner, input, views))
}

/// Runs `f` with the view the pipeline reads (the transaction's when there is one) and its
/// joins' collections read through it.
fn with_foreign<T>(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&Txn>,
    snapshot: &Snapshot,
    views: &ForeignViews,
    f: impl FnOnce(&dyn ReadView, &Foreign<'_>) -> T,
) -> T {
    let view: &dyn ReadView = match txn {
        Some(txn) => txn,
        None => snapshot,
    };
    let resolve = |name: &str| {
        let ns = req.ns(name);
        match txn {
            Some(txn) => collection_in_txn(shared, txn, &ns),
            None => snapshot.collection(&ns),
        }
    };
    let foreign = Foreign {
        view,
        resolve: &resolve,
        views,
    };
    f(view, &foreign)
}

/// The collection the pipeline reads and how; a view becomes its source collection with the
/// views' pipelines in front of the reader's.
fn plan_input(
    req: &Request<'_>,
    view: &dyn ReadView,
    coll: Option<CollectionInfo>,
    pipeline: Pipeline,
) -> CommandResult<(Pipeline, Option<Input>)> {
    let Some(coll) = coll else {
        return Ok((pipeline, None));
    };
    if super::views::is_view(&coll) {
        let Some((source, stages)) = super::views::resolve(view, &coll)? else {
            return Ok((pipeline, None));
        };
        let pipeline = pipeline.preceded_by(stages);
        let filter = leading_filter(&pipeline)?;
        let input = Input {
            coll: source,
            access: Access::Collection,
            filter,
        };
        return Ok((pipeline, Some(input)));
    }
    let mut pipeline = pipeline;
    crate::text_access::bind_pipeline(&coll, &mut pipeline)?;
    if let Some((index, plan, filter)) = crate::geo_near::geo_near_input(&coll, &mut pipeline)? {
        let access = Access::Near {
            index,
            plan: std::sync::Arc::new(plan),
        };
        return Ok((
            pipeline,
            Some(Input {
                coll,
                access,
                filter,
            }),
        ));
    }
    let filter = leading_filter(&pipeline)?;
    let access = match leading_match_doc(req)? {
        Some(raw) => choose(
            view,
            &coll,
            &filter,
            raw,
            &parse_hint(req.get("hint"), Some(&coll))?,
            None,
        )?,
        None => Access::Collection,
    };
    Ok((
        pipeline,
        Some(Input {
            coll,
            access,
            filter,
        }),
    ))
}

/// The filter the reader applies: the pipeline's leading `$match`, or everything.
fn leading_filter(pipeline: &Pipeline) -> CommandResult<Filter> {
    match pipeline.leading_match() {
        Some(f) => Ok(f.clone()),
        None => Ok(Filter::parse(&RawDocumentBuf::new())?),
    }
}

/// A cursor whose batches are computed as they are asked for.
fn lazy_cursor(
    shared: &Shared,
    req: &Request<'_>,
    ns: String,
    runner: Runner,
    (input, views): (Option<Input>, ForeignViews),
    snapshot: Snapshot,
) -> CommandResult<Reply> {
    let batch_size = cursor_batch_size(req)?;
    let source = PipelineSource {
        runner,
        input: input.map(|i| (InputReader::new(i.access, i.filter), i.coll)),
        snapshot: Some(snapshot),
        db: req.db.to_string(),
        views,
        pending: None,
    };
    let mut cursor = Cursor {
        ns: ns.clone(),
        source: Source::Pipeline(Box::new(source)),
        projection: None,
        remaining: None,
        last_used: Instant::now(),
        txn: None,
        time_left: crate::access::time_left(),
    };
    let (batch, exhausted) = cursor.next_batch(Some(batch_size.unwrap_or(DEFAULT_FIRST_BATCH)))?;
    let id = if exhausted {
        0
    } else {
        shared.cursors.insert(cursor)?
    };
    Ok(Reply::Raw(cursor_reply(&ns, id, "firstBatch", &batch)))
}

/// The whole result now (and the sink it goes to), bounded by the per-stage limit.
fn run_at_once(
    mut runner: Runner,
    input: Option<Input>,
    view: &dyn ReadView,
    foreign: &Foreign<'_>,
) -> CommandResult<(Vec<RawDocumentBuf>, Option<mangrove_query::Sink>)> {
    let max = runner.limits().stage_bytes;
    let mut reader = input.map(|i| (InputReader::new(i.access, i.filter), i.coll));
    let mut out = Vec::new();
    let mut bytes = 0usize;
    loop {
        let feed = reader.as_mut().map(|(r, coll)| (r, view, &*coll));
        let Some(doc) = next_result(&mut runner, feed, foreign)? else {
            break;
        };
        bytes += doc.as_bytes().len();
        if bytes > max {
            return Err(CommandError::new(
                code::QUERY_EXCEEDED_MEMORY_LIMIT,
                format!(
                    "the aggregate's result holds more than {max} bytes, and a result in a transaction, with a collation or for $out/$merge is computed at once; reduce it (e.g. $match, $project or $limit), or run it outside the transaction and without a collation"
                ),
            ));
        }
        out.push(doc);
    }
    Ok((out, runner.sink().cloned()))
}

/// The raw filter of a pipeline's leading `$match`, for choosing an index.
fn leading_match_doc<'a>(req: &Request<'a>) -> CommandResult<Option<&'a RawDocument>> {
    let Some(stages) = req.opt_array("pipeline")? else {
        return Ok(None);
    };
    Ok(match stages.into_iter().next() {
        Some(Ok(RawBsonRef::Document(stage))) => match stage.get("$match").ok().flatten() {
            Some(RawBsonRef::Document(m)) => Some(m),
            _ => None,
        },
        _ => None,
    })
}

/// `$listLocalSessions` (`{aggregate: 1}`) and `$listSessions` (on `config.system.sessions`):
/// the logical sessions this server knows, as `{_id: lsid, lastUse}`, through the rest of the
/// pipeline, which may end in `$out` or `$merge`. There is one node, so both list the same
/// sessions.
async fn list_sessions_aggregate(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&Txn>,
) -> CommandResult<Option<Reply>> {
    let Some(stages) = req.opt_array("pipeline")? else {
        return Ok(None);
    };
    let mut stages = stages.into_iter();
    let first = match stages.next() {
        Some(Ok(RawBsonRef::Document(d))) => d,
        _ => return Ok(None),
    };
    let Some(Ok((name, spec))) = first.iter().next() else {
        return Ok(None);
    };
    if !matches!(
        name.as_str(),
        "$listLocalSessions" | "$listSessions" | "$currentOp"
    ) {
        return Ok(None);
    }
    let docs = match name.as_str() {
        "$currentOp" => current_op_docs(shared, req, spec)?,
        _ => {
            // `allUsers` lists everyone's sessions without authentication (there is one
            // user); under --auth a user sees only its own.
            let all_users = !shared.config.auth
                && matches!(spec, RawBsonRef::Document(d)
                    if matches!(d.get("allUsers"), Ok(Some(RawBsonRef::Boolean(true)))));
            shared.sessions.list(req.owner.as_deref(), all_users)
        }
    };
    let mut rest = RawArrayBuf::new();
    for stage in stages {
        rest.push(stage.map_err(internal)?);
    }
    let pipeline = Pipeline::parse(&rest)?;
    check_sink(req, &pipeline, txn)?;
    let write_opts = match pipeline.sink() {
        Some(_) => Some(WriteOptions::from_request(req)?),
        None => None,
    };
    let output = pipeline.run_from_start(docs)?;
    let ns = match req.command_value() {
        Some(RawBsonRef::String(coll)) => req.ns(coll),
        _ => format!("{}.$cmd.aggregate", req.db),
    };
    if write_opts.is_some() {
        let sink = pipeline.sink().cloned();
        return reply_at_once(shared, req, txn, ns, (output, sink), write_opts)
            .await
            .map(Some);
    }
    let batch_size = cursor_batch_size(req)?;
    pipeline_cursor(shared, ns, output, batch_size, None).map(Some)
}

/// `$currentOp` (`{aggregate: 1}` on `admin`): the running operations (this aggregate among
/// them) and the open transactions, idle ones unless `idleSessions: false`, as `currentOp`
/// shows them.
fn current_op_docs(
    shared: &Shared,
    req: &Request<'_>,
    spec: RawBsonRef<'_>,
) -> CommandResult<Vec<RawDocumentBuf>> {
    if req.db != "admin" || !matches!(req.command_value(), Some(RawBsonRef::Int32(1))) {
        return Err(CommandError::new(
            73,
            "$currentOp must be run against the 'admin' database with {aggregate: 1}",
        ));
    }
    let RawBsonRef::Document(options) = spec else {
        return Err(CommandError::failed_to_parse(
            "$currentOp options must be specified in an object",
        ));
    };
    let mut idle_sessions = true;
    for item in options.iter() {
        let (key, value) = item.map_err(internal)?;
        match (key.as_str(), value) {
            ("idleSessions", RawBsonRef::Boolean(b)) => idle_sessions = b,
            (
                "allUsers" | "idleConnections" | "idleCursors" | "localOps" | "truncateOps"
                | "backtrace" | "targetAllNodes",
                RawBsonRef::Boolean(_),
            ) => {}
            (other, _) => {
                return Err(CommandError::failed_to_parse(format!(
                    "Unrecognized option '{other}' in $currentOp stage, or not a boolean"
                )));
            }
        }
    }
    // This aggregate is one of them: it is registered while it runs.
    let mut ops = super::diag::current_ops(shared);
    ops.retain(|op| idle_sessions || op.get_str("type").ok() != Some("idleSession"));
    ops.iter()
        .map(|d| RawDocumentBuf::try_from(d).map_err(internal))
        .collect()
}

/// The documents a sink writes, keyed: each gets an `_id` first if it has none, as inserts
/// do, and must fit in a stored document.
fn sink_docs(
    target: &CollectionInfo,
    output: Vec<RawDocumentBuf>,
    max_bson: usize,
) -> CommandResult<Vec<(DocKey, StoredDoc)>> {
    output
        .into_iter()
        .map(|d| {
            let doc = if id_of(&d).is_some() {
                d
            } else {
                let with_id = with_id_first(
                    Document::try_from(d.as_ref() as &RawDocument).map_err(internal)?,
                    None,
                );
                RawDocumentBuf::try_from(&with_id).map_err(internal)?
            };
            if doc.as_bytes().len() > max_bson {
                return Err(too_large(doc.as_bytes().len(), max_bson));
            }
            let key = doc_key(target, id_of(&doc).ok_or_else(|| internal("no _id"))?);
            Ok((key, Arc::new(doc)))
        })
        .collect()
}

/// Writes an aggregation's output where its `$out` or `$merge` says, in one transaction, so
/// readers see the target before or after, never in between. `$out` replaces the target's
/// documents (keeping the collection, as mongod keeps its indexes and options); `$merge`
/// matches on `_id`.
pub(super) async fn write_sink(
    shared: &Shared,
    req: &Request<'_>,
    sink: &mangrove_query::Sink,
    output: Vec<RawDocumentBuf>,
    opts: &WriteOptions,
) -> CommandResult<()> {
    use mangrove_query::Sink;
    let (db, coll) = match sink {
        Sink::Out { db, coll } | Sink::Merge { db, coll, .. } => {
            (db.as_deref().unwrap_or(req.db), coll)
        }
    };
    validate_collection_name(db, coll)?;
    let target_ns = format!("{db}.{coll}");
    let target = implicit_collection(shared, &target_ns, opts).await?;
    super::views::refuse_write(&target)?;
    let docs = sink_docs(&target, output, shared.config.max_bson_size)?;
    if crate::capped::is_capped(&target) {
        // Its documents are keyed by insertion order and trimmed by their writer; $out and
        // $merge write by `_id`.
        return Err(CommandError::new(
            17152,
            format!("namespace '{target_ns}' is capped so it can't be used for $out or $merge"),
        ));
    }
    // mongod validates what $out and $merge write against the target's validator too.
    let validator = crate::validation::for_write(&target, crate::validation::bypass(req)?)?;
    retry_conflicts(shared, opts, |txn| match sink {
        Sink::Out { .. } => replace_all(txn, (&target, validator.as_ref()), &docs),
        Sink::Merge {
            when_matched,
            when_not_matched,
            ..
        } => merge_docs(
            txn,
            (&target, &target_ns, validator.as_ref()),
            &docs,
            *when_matched,
            *when_not_matched,
        ),
    })
    .await
}

/// `$out`: the target's documents become the output.
fn replace_all(
    txn: &mut Txn,
    (target, validator): (&CollectionInfo, Option<&DocValidator>),
    docs: &[(DocKey, StoredDoc)],
) -> CommandResult<()> {
    if let Some(validator) = validator {
        for (_, doc) in docs {
            validator.check_insert(doc)?;
        }
    }
    let mut old = Vec::new();
    txn.scan(target, None, |key, _| {
        old.push(key.clone());
        ControlFlow::Continue(())
    })?;
    for key in old {
        txn.delete(target, key)?;
    }
    for (key, doc) in docs {
        txn.insert(target, key.clone(), doc.clone())?;
    }
    Ok(())
}

/// `$merge` on `_id`: each output document replaces, keeps, merges into or fails on the one it
/// matches, and is inserted, discarded or fails when it matches none.
fn merge_docs(
    txn: &mut Txn,
    (target, target_ns, validator): (&CollectionInfo, &str, Option<&DocValidator>),
    docs: &[(DocKey, StoredDoc)],
    when_matched: mangrove_query::WhenMatched,
    when_not_matched: mangrove_query::WhenNotMatched,
) -> CommandResult<()> {
    use mangrove_query::{WhenMatched, WhenNotMatched};
    // Every document written is checked first: an update against the one it replaces (for
    // `moderate`), an insert on its own.
    let check = |old: Option<&RawDocument>, new: &RawDocument| match (validator, old) {
        (None, _) => Ok(()),
        (Some(v), Some(old)) => v.check_update(old, new),
        (Some(v), None) => v.check_insert(new),
    };
    for (key, doc) in docs {
        match (txn.get(target, key)?, when_matched, when_not_matched) {
            (Some(existing), WhenMatched::Replace, _) => {
                check(Some(&existing), doc)?;
                txn.replace(target, key.clone(), doc.clone())?
            }
            (Some(_), WhenMatched::KeepExisting, _) => {}
            (Some(existing), WhenMatched::Merge, _) => {
                let mut merged =
                    Document::try_from(existing.as_ref() as &RawDocument).map_err(internal)?;
                for (k, v) in Document::try_from(doc.as_ref() as &RawDocument).map_err(internal)? {
                    merged.insert(k, v);
                }
                let merged = RawDocumentBuf::try_from(&merged).map_err(internal)?;
                check(Some(&existing), &merged)?;
                txn.replace(target, key.clone(), Arc::new(merged))?;
            }
            (Some(existing), WhenMatched::Fail, _) => {
                let id = id_of(&existing)
                    .and_then(|i| Bson::try_from(i).ok())
                    .unwrap_or(Bson::Null);
                let mut e = CommandError::new(
                    code::DUPLICATE_KEY,
                    format!(
                        "$merge failed: E11000 duplicate key error collection: {target_ns} index: _id_ dup key: {{ _id: {id} }}"
                    ),
                );
                e.info = Some(Box::new(
                    doc! { "keyPattern": { "_id": 1 }, "keyValue": { "_id": id } },
                ));
                return Err(e);
            }
            (None, _, WhenNotMatched::Insert) => {
                check(None, doc)?;
                txn.insert(target, key.clone(), doc.clone())?
            }
            (None, _, WhenNotMatched::Discard) => {}
            (None, _, WhenNotMatched::Fail) => {
                return Err(CommandError::new(
                    13113,
                    "$merge could not find a matching document in the target collection for at least one document in the source collection",
                ));
            }
        }
    }
    Ok(())
}
