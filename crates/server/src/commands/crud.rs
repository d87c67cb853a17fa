//! Reads and writes of documents: insert, find, getMore, killCursors, update, delete, count.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use bson::raw::{RawArrayBuf, RawBsonRef, RawDocument, cstr};
use bson::{Bson, Document, RawDocumentBuf, doc};
use mangrove_query::{Filter, Projection, SortSpec, Update, with_collation, with_let};
use mangrove_storage::{
    CollectionInfo, CommitTicket, DocKey, ReadView, Snapshot, StorageError, StoredDoc, Txn,
};

use crate::access::{
    Access, Examined, Hint, IndexWalk, choose, deadline_of, for_each_match, parse_hint,
    sort_fields, with_deadline,
};
use crate::cursor::{BatchDoc, Cursor, IndexScanState, ScanState, Source};
use crate::error::{CommandError, CommandResult, code};
use crate::request::{Request, as_bool, as_i64, type_name};
use crate::retryable::RetryableWrite;
use crate::{Counters, Shared};

use super::Reply;
use super::catalog::{internal, parse_collation, validate_collection_name};
use super::write_path::{WriteOptions, retry_conflicts, run_write};
use super::write_path::{acknowledge, commit_write, max_time_expired};

/// A write command may carry at most this many statements, as mongod's `maxWriteBatchSize`.
const MAX_WRITE_BATCH: usize = 100_000;
/// mongod's default first batch when the client gives no batchSize.
pub(super) const DEFAULT_FIRST_BATCH: u64 = 101;

// ---------------------------------------------------------------------------------------------
// Shared helpers

pub(super) fn validate_db_name(db: &str) -> CommandResult<()> {
    let bad = db.is_empty()
        || db.len() >= 64
        || db.chars().any(|c| {
            matches!(
                c,
                '/' | '\\' | '.' | ' ' | '"' | '$' | '*' | '<' | '>' | ':' | '|' | '?' | '\0'
            )
        });
    if bad {
        return Err(CommandError::new(
            code::INVALID_NAMESPACE,
            format!("Invalid database name: '{db}'"),
        ));
    }
    Ok(())
}

pub(super) use crate::access::key_of;

pub(super) fn id_of(doc: &RawDocument) -> Option<RawBsonRef<'_>> {
    doc.get("_id").ok().flatten()
}

/// The collection a statement of a transaction names. A collection created after the
/// transaction's snapshot (implicitly, by this or another transaction) is used too: creation is
/// committed on its own so that concurrent transactions never conflict on it, and the
/// transaction still reads only its snapshot's documents plus its own writes.
pub(super) fn collection_in_txn(shared: &Shared, txn: &Txn, ns: &str) -> Option<CollectionInfo> {
    txn.collection(ns)
        .or_else(|| shared.engine.snapshot().collection(ns))
}

/// The collection a write statement names, as its transaction (if any) or the latest commit
/// sees it.
fn collection_for_write(shared: &Shared, txn: Option<&Txn>, ns: &str) -> Option<CollectionInfo> {
    match txn {
        Some(t) => collection_in_txn(shared, t, ns),
        None => shared.engine.snapshot().collection(ns),
    }
}

/// Creates the collection a write goes to if it does not exist, as MongoDB does implicitly.
pub(super) async fn implicit_collection(
    shared: &Shared,
    ns: &str,
    opts: &WriteOptions,
) -> CommandResult<CollectionInfo> {
    if let Some(info) = shared.engine.snapshot().collection(ns) {
        return Ok(info);
    }
    retry_conflicts(shared, opts, |txn| {
        Ok(txn.ensure_collection(ns, Document::new())?.0)
    })
    .await
}

/// `{cursor: {<batch_field>: [...], id, ns}, ok: 1}`, built raw so documents are copied once.
pub(super) fn cursor_reply(
    ns: &str,
    id: i64,
    batch_field: &str,
    batch: &[BatchDoc],
) -> RawDocumentBuf {
    let mut docs = RawArrayBuf::new();
    for d in batch {
        docs.push(d.as_raw());
    }
    let mut cursor = RawDocumentBuf::new();
    if batch_field == "firstBatch" {
        cursor.append(cstr!("firstBatch"), docs);
    } else {
        cursor.append(cstr!("nextBatch"), docs);
    }
    cursor.append(cstr!("id"), id);
    cursor.append(cstr!("ns"), ns);
    let mut reply = RawDocumentBuf::new();
    reply.append(cstr!("cursor"), cursor);
    reply.append(cstr!("ok"), 1.0);
    reply
}

fn finish_write(
    mut reply: Document,
    write_errors: Vec<Document>,
    wc_error: Option<Document>,
) -> Reply {
    if !write_errors.is_empty() {
        reply.insert("writeErrors", write_errors);
    }
    if let Some(wce) = wc_error {
        reply.insert("writeConcernError", wce);
    }
    reply.insert("ok", 1.0);
    reply.into()
}

fn batch_size_check(n: usize) -> CommandResult<()> {
    if n == 0 || n > MAX_WRITE_BATCH {
        return Err(CommandError::new(
            16,
            format!(
                "Write batch sizes must be between 1 and {MAX_WRITE_BATCH}. Got {n} operations."
            ),
        ));
    }
    Ok(())
}

fn check_id(id: RawBsonRef<'_>) -> CommandResult<()> {
    let bad = match id {
        RawBsonRef::Array(_) => Some("array"),
        RawBsonRef::RegularExpression(_) => Some("regex"),
        RawBsonRef::Undefined => Some("undefined"),
        _ => None,
    };
    if let Some(t) = bad {
        return Err(CommandError::new(53, format!("can't use an {t} for _id")));
    }
    // An _id document must be storable as a value, so no operator-looking field names in it.
    if let RawBsonRef::Document(d) = id
        && let Some(Ok((k, _))) = d
            .iter()
            .find(|f| f.as_ref().is_ok_and(|(k, _)| k.as_str().starts_with('$')))
    {
        return Err(CommandError::new(
            52,
            format!(
                "_id fields may not contain '$'-prefixed fields: {} is not valid for storage.",
                k.as_str()
            ),
        ));
    }
    Ok(())
}

pub(super) fn too_large(size: usize, max: usize) -> CommandError {
    CommandError::new(
        code::BSON_OBJECT_TOO_LARGE,
        format!("object to insert too large. size in bytes: {size}, max size: {max}"),
    )
}

/// The document as stored: `_id` first (generated if absent), within the size limit.
fn prepare_insert(doc: &RawDocument, max_bson: usize) -> CommandResult<(DocKey, RawDocumentBuf)> {
    let mut position = None;
    for (i, item) in doc.iter().enumerate() {
        let (key, value) = item.map_err(|e| CommandError::new(22, format!("invalid BSON: {e}")))?;
        if key.as_str() == "_id" {
            check_id(value)?;
            position = Some(i);
            break;
        }
    }
    let stored = if position == Some(0) {
        RawDocumentBuf::from_bytes(doc.as_bytes().to_vec()).map_err(internal)?
    } else {
        // Rebuild with `_id` first, as mongod stores it.
        let mut out = RawDocumentBuf::new();
        match id_of(doc) {
            Some(id) => out.append(cstr!("_id"), id),
            None => out.append(cstr!("_id"), ObjectId::new()),
        }
        for item in doc.iter() {
            let (key, value) = item.map_err(internal)?;
            if key.as_str() != "_id" {
                out.append(key, value);
            }
        }
        out
    };
    if stored.as_bytes().len() > max_bson {
        return Err(too_large(stored.as_bytes().len(), max_bson));
    }
    let key = key_of(id_of(&stored).ok_or_else(|| internal("stored document lost its _id"))?);
    Ok((key, stored))
}

/// Puts `_id` first, taking it from `fallback` when the document has none.
pub(super) fn with_id_first(doc: Document, fallback: Option<&Bson>) -> Document {
    let id = doc
        .get("_id")
        .cloned()
        .or_else(|| fallback.cloned())
        .unwrap_or_else(|| Bson::ObjectId(ObjectId::new()));
    let mut out = Document::new();
    out.insert("_id", id);
    for (k, v) in doc {
        if k != "_id" {
            out.insert(k, v);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// insert

pub(super) async fn insert(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&mut Txn>,
    retry: Option<Arc<RetryableWrite>>,
) -> CommandResult<Reply> {
    req.check_fields(&["documents", "ordered", "bypassDocumentValidation"])?;
    let name = req.collection()?;
    validate_collection_name(req.db, name)?;
    let mut opts = WriteOptions::from_request(req)?;
    opts.retry = retry;
    let ordered = req.opt_bool("ordered")?.unwrap_or(true);
    let docs = req.batch("documents")?;
    batch_size_check(docs.len())?;
    let ns = req.ns(name);
    let max_bson = shared.config.max_bson_size;
    if let Some(txn) = txn {
        let coll = txn.create_collection_shared(&ns, Document::new())?;
        super::views::refuse_write(&coll)?;
        return insert_in_txn(shared, txn, &coll, &docs);
    }
    let coll = implicit_collection(shared, &ns, &opts).await?;
    super::views::refuse_write(&coll)?;

    let mut inserted = 0usize;
    let mut write_errors = Vec::new();
    let mut next = 0usize;
    let started = Instant::now();
    // Commits become visible and durable in order, so waiting on the last covers them all.
    let mut last_ticket: Option<CommitTicket> = None;
    let chunk = super::multi_write::chunk_bytes(&shared.engine);
    // One transaction carries the batch; a write conflict commits what is done, waits, and
    // resumes at the conflicting document.
    'batch: while next < docs.len() {
        let mut txn = shared.engine.begin();
        txn.set_meta(opts.meta.clone());
        while next < docs.len() {
            // A retried statement that already ran counts as inserted and is not run again.
            if let Some(retry) = &opts.retry
                && retry.recorded(next).is_some()
            {
                inserted += 1;
                next += 1;
                continue;
            }
            let result = prepare_insert(docs[next], max_bson).and_then(|(key, stored)| {
                txn.insert(&coll, key, Arc::new(stored))
                    .map_err(CommandError::from)
            });
            match result {
                Ok(()) => {
                    inserted += 1;
                    if let Some(retry) = &opts.retry {
                        retry.note(next, Bson::Int32(1));
                    }
                    // A large batch commits in pieces, bounding the memory one commit holds
                    // (an insert batch was never atomic in MongoDB either).
                    if txn.bytes() >= chunk && next + 1 < docs.len() {
                        next += 1;
                        // The next piece's snapshot must see this one (its retryable-write
                        // record is rewritten by the next commit).
                        let mut ticket = commit_write(shared, &opts, txn)?;
                        ticket.visible().await.map_err(CommandError::from)?;
                        last_ticket = Some(ticket);
                        continue 'batch;
                    }
                }
                Err(e) if e.code == code::WRITE_CONFLICT && started.elapsed() < opts.patience => {
                    last_ticket = Some(commit_write(shared, &opts, txn)?);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue 'batch;
                }
                Err(e) => {
                    let e = if e.code == code::WRITE_CONFLICT {
                        max_time_expired(&opts)
                    } else {
                        e
                    };
                    write_errors.push(e.to_write_error(next));
                    if ordered {
                        last_ticket = Some(commit_write(shared, &opts, txn)?);
                        break 'batch;
                    }
                }
            }
            next += 1;
        }
        last_ticket = Some(commit_write(shared, &opts, txn)?);
    }
    if let Some(ticket) = last_ticket {
        acknowledge(ticket, &opts).await?;
    }
    Counters::bump(&shared.counters.insert, inserted as u64);
    Ok(finish_write(
        doc! { "n": inserted as i32 },
        write_errors,
        opts.wc_error(),
    ))
}

/// Inserts into the session's transaction. The first failure ends the statement: a conflict as
/// the command's error (the transaction is then aborted and the client retries it whole), any
/// other as a write error, as mongod reports them.
fn insert_in_txn(
    shared: &Shared,
    txn: &mut Txn,
    coll: &CollectionInfo,
    docs: &[&RawDocument],
) -> CommandResult<Reply> {
    let mut inserted = 0usize;
    let mut write_errors = Vec::new();
    for (index, doc) in docs.iter().enumerate() {
        let result = prepare_insert(doc, shared.config.max_bson_size)
            .and_then(|(key, stored)| Ok(txn.insert(coll, key, Arc::new(stored))?));
        match result {
            Ok(()) => inserted += 1,
            Err(e) if e.code == code::WRITE_CONFLICT => return Err(e),
            Err(e) => {
                write_errors.push(e.to_write_error(index));
                break;
            }
        }
    }
    Counters::bump(&shared.counters.insert, inserted as u64);
    Ok(finish_write(
        doc! { "n": inserted as i32 },
        write_errors,
        None,
    ))
}

// ---------------------------------------------------------------------------------------------
// find, getMore, killCursors

const FIND_FIELDS: &[&str] = &[
    "filter",
    "sort",
    "projection",
    "hint",
    "skip",
    "limit",
    "batchSize",
    "singleBatch",
    "maxTimeMS",
    "readConcern",
    "max",
    "min",
    "returnKey",
    "showRecordId",
    "tailable",
    "oplogReplay",
    "noCursorTimeout",
    "awaitData",
    "allowPartialResults",
    "collation",
    "allowDiskUse",
    "let",
    "readOnce",
    "term",
];

fn non_negative(req: &Request<'_>, field: &str) -> CommandResult<Option<u64>> {
    match req.opt_i64(field)? {
        None => Ok(None),
        Some(n) if n >= 0 => Ok(Some(n as u64)),
        Some(n) => Err(CommandError::new(
            51024,
            format!("BSON field '{field}' value must be >= 0, actual value '{n}'"),
        )),
    }
}

fn unsupported_find_options(req: &Request<'_>) -> CommandResult<()> {
    for field in ["max", "min"] {
        if req.get(field).is_some() {
            return Err(CommandError::bad_value(format!(
                "find option '{field}' is not supported by Mangrove"
            )));
        }
    }
    for field in ["returnKey", "showRecordId", "tailable", "awaitData"] {
        if req.opt_bool(field)?.unwrap_or(false) {
            let msg = if field == "tailable" || field == "awaitData" {
                "error processing query: tailable cursor requested on non capped collection"
                    .to_string()
            } else {
                format!("find option '{field}' is not supported by Mangrove")
            };
            return Err(CommandError::bad_value(msg));
        }
    }
    Ok(())
}

/// `at` is the snapshot a `snapshot` read concern chose; otherwise the read sees the latest
/// commit (or its transaction).
pub(super) fn find(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&Txn>,
    at: Option<Snapshot>,
) -> CommandResult<Reply> {
    let collation = parse_collation(req.opt_doc("collation")?)?;
    let deadline = deadline_of(req.opt_i64("maxTimeMS")?);
    with_deadline(deadline, || {
        with_collation(collation.as_ref(), || {
            find_with(shared, req, txn, at, collation.is_some())
        })
    })
}

/// `find` with its collation set; a collated query is answered at once (its cursor could not
/// keep the collation for `getMore`).
fn find_with(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&Txn>,
    at: Option<Snapshot>,
    collated: bool,
) -> CommandResult<Reply> {
    req.check_fields(FIND_FIELDS)?;
    Counters::bump(&shared.counters.query, 1);
    let name = req.collection()?;
    validate_db_name(req.db)?;
    let ns = req.ns(name);
    let empty = RawDocumentBuf::new();
    let raw_filter = req.opt_doc("filter")?.unwrap_or(&empty);
    let filter = with_let(req.opt_doc("let")?, || {
        Filter::parse(raw_filter).map_err(CommandError::from)
    })?;
    let sort = match req.opt_doc("sort")? {
        Some(spec) if !spec.is_empty() => Some(SortSpec::parse(spec)?),
        _ => None,
    };
    let projection = match req.opt_doc("projection")? {
        Some(spec) if !spec.is_empty() => Some(Projection::parse(spec)?.with_filter(&filter)),
        _ => None,
    };
    let skip = non_negative(req, "skip")?.unwrap_or(0);
    let limit = non_negative(req, "limit")?.filter(|&l| l > 0);
    let batch_size = non_negative(req, "batchSize")?;
    let single_batch = req.opt_bool("singleBatch")?.unwrap_or(false);
    unsupported_find_options(req)?;

    let snapshot = at.unwrap_or_else(|| shared.engine.snapshot());
    let coll = match txn {
        Some(txn) => collection_in_txn(shared, txn, &ns),
        None => snapshot.collection(&ns),
    };
    let hint = parse_hint(req.get("hint"), coll.as_ref())?;
    let Some(coll) = coll else {
        return Ok(Reply::Raw(cursor_reply(&ns, 0, "firstBatch", &[])));
    };
    let view: &dyn ReadView = match txn {
        Some(txn) => txn,
        None => &snapshot,
    };
    if super::views::is_view(&coll) {
        // A view's documents exist only as its pipeline's output: filter, sort and page them.
        let mut docs = Vec::new();
        for d in super::views::view_docs(shared, view, &coll)? {
            if filter.try_matches(&d)? {
                docs.push(d);
            }
        }
        if let Some(sort) = &sort {
            docs.sort_by(|a, b| sort.compare(a, b));
        }
        let docs: VecDeque<BatchDoc> = docs
            .into_iter()
            .skip(skip as usize)
            .take(limit.map_or(usize::MAX, |l| l as usize))
            .map(BatchDoc::Owned)
            .collect();
        let mut cursor = Cursor {
            ns: ns.clone(),
            source: Source::Buffered(docs),
            projection,
            remaining: None,
            last_used: Instant::now(),
            txn: txn_owner(req, txn),
        };
        let (batch, exhausted) =
            cursor.next_batch(Some(batch_size.unwrap_or(DEFAULT_FIRST_BATCH)))?;
        let id = if exhausted || single_batch {
            0
        } else {
            shared.cursors.insert(cursor)?
        };
        return Ok(Reply::Raw(cursor_reply(&ns, id, "firstBatch", &batch)));
    }
    let sort_by = sort_fields(req.opt_doc("sort")?);
    let access = choose(view, &coll, &filter, raw_filter, &hint, sort_by.as_deref())?;

    let mut cursor = Cursor {
        ns: ns.clone(),
        source: Source::Buffered(VecDeque::new()),
        projection,
        remaining: limit,
        last_used: Instant::now(),
        txn: None,
    };
    cursor.txn = txn_owner(req, txn);
    let view: &dyn ReadView = match txn {
        Some(txn) => txn,
        None => &snapshot,
    };
    if let Access::IdPoint(key) = &access {
        // A point lookup: at most one document can match.
        let found = view
            .get(&coll, key)?
            .filter(|d| filter.matches(d) && skip == 0);
        cursor.source = Source::Buffered(found.into_iter().map(BatchDoc::Stored).collect());
    } else if (sort.is_some() && !access.sorted())
        || txn.is_some()
        || collated
        || matches!(&access, Access::IdRange { bounds, .. } if bounds.intervals.len() != 1)
    {
        // A transaction's cursor is computed now, from the transaction's view, so it needs no
        // live transaction later.
        let sort = sort.as_ref().filter(|_| !access.sorted());
        let docs = collect_matches(shared, view, &coll, &access, &filter, sort, skip, limit)?;
        cursor.source = Source::Buffered(docs.into_iter().map(BatchDoc::Stored).collect());
        cursor.remaining = None;
    } else if let Access::Index {
        index,
        bounds,
        reverse,
        ..
    } = access
    {
        cursor.source = Source::Index(Box::new(IndexScanState {
            snapshot,
            coll,
            walk: IndexWalk::new(index, &bounds, reverse),
            filter,
            skip,
            pending: VecDeque::new(),
        }));
    } else {
        let (range, reverse) = match &access {
            Access::IdRange {
                bounds, reverse, ..
            } => (bounds.intervals.first().cloned(), *reverse),
            _ => (None, false),
        };
        cursor.source = Source::Scan(Box::new(ScanState {
            snapshot,
            coll,
            range,
            reverse,
            after: None,
            filter,
            skip,
        }));
    }
    let first = batch_size.unwrap_or(DEFAULT_FIRST_BATCH);
    let (batch, exhausted) = cursor.next_batch(Some(first))?;
    let id = if exhausted || single_batch {
        0
    } else {
        shared.cursors.insert(cursor)?
    };
    Ok(Reply::Raw(cursor_reply(&ns, id, "firstBatch", &batch)))
}

/// Every match in memory (sorted, if asked), bounded like mongod's 100 MB blocking-sort limit.
#[allow(clippy::too_many_arguments)]
fn collect_matches(
    shared: &Shared,
    view: &dyn ReadView,
    coll: &CollectionInfo,
    access: &Access,
    filter: &Filter,
    sort: Option<&SortSpec>,
    skip: u64,
    limit: Option<u64>,
) -> CommandResult<Vec<StoredDoc>> {
    let max = shared.params.query.sort_bytes();
    let mut docs = Vec::new();
    let mut bytes = 0usize;
    let mut over = false;
    // Without a sort, a limit can stop the walk early.
    let enough = match (sort, limit) {
        (None, Some(l)) => Some(skip.saturating_add(l)),
        _ => None,
    };
    for_each_match(
        view,
        coll,
        access,
        filter,
        &mut Examined::default(),
        &mut |_, d| {
            bytes += d.as_bytes().len();
            if bytes > max {
                over = true;
                return ControlFlow::Break(());
            }
            docs.push(d.clone());
            if enough.is_some_and(|n| docs.len() as u64 >= n) {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        },
    )?;
    if over {
        return Err(CommandError::new(
            code::QUERY_EXCEEDED_MEMORY_LIMIT,
            format!(
                "Executor error during find command :: caused by :: Sort exceeded memory limit of {max} bytes, but did not opt in to external sorting."
            ),
        ));
    }
    if let Some(sort) = sort {
        docs.sort_by(|a, b| sort.compare(a, b));
    }
    let skip = (skip as usize).min(docs.len());
    docs.drain(..skip);
    if let Some(l) = limit {
        docs.truncate(l as usize);
    }
    Ok(docs)
}

/// The first batch of a pipeline's output; the rest stays in a cursor for `getMore`.
pub(super) fn pipeline_cursor(
    shared: &Shared,
    ns: String,
    output: Vec<RawDocumentBuf>,
    batch_size: Option<u64>,
    txn: Option<(Vec<u8>, i64)>,
) -> CommandResult<Reply> {
    let mut cursor = Cursor {
        ns: ns.clone(),
        source: Source::Buffered(output.into_iter().map(BatchDoc::Owned).collect()),
        projection: None,
        remaining: None,
        last_used: Instant::now(),
        txn,
    };
    let (batch, exhausted) = cursor.next_batch(Some(batch_size.unwrap_or(DEFAULT_FIRST_BATCH)))?;
    let id = if exhausted {
        0
    } else {
        shared.cursors.insert(cursor)?
    };
    Ok(Reply::Raw(cursor_reply(&ns, id, "firstBatch", &batch)))
}

/// The transaction a cursor opened by this request belongs to.
pub(super) fn txn_owner(req: &Request<'_>, txn: Option<&Txn>) -> Option<(Vec<u8>, i64)> {
    txn?;
    let lsid = req.lsid().ok()??;
    Some((lsid.as_bytes().to_vec(), req.txn_number().ok()??))
}

/// mongod's rules for continuing a cursor: one opened in a transaction only within that
/// transaction, and one opened outside only outside any transaction.
fn check_cursor_txn(req: &Request<'_>, id: i64, cursor: &Cursor) -> CommandResult<()> {
    let in_txn = req.session.has_autocommit();
    let req_n = if in_txn { req.txn_number()? } else { None };
    match (&cursor.txn, req_n) {
        (None, None) => Ok(()),
        (None, Some(n)) => Err(CommandError::new(
            50739,
            format!(
                "Cannot run getMore on cursor {id}, which was not created in a transaction, in transaction {n}"
            ),
        )),
        (Some((_, created)), None) => Err(CommandError::new(
            50740,
            format!(
                "Cannot run getMore on cursor {id}, which was created in transaction {created}, without a txnNumber"
            ),
        )),
        (Some((lsid, created)), Some(n)) => {
            if *created != n {
                return Err(CommandError::new(
                    50741,
                    format!(
                        "Cannot run getMore on cursor {id}, which was created in transaction {created}, in transaction {n}"
                    ),
                ));
            }
            if req.lsid()?.map(|l| l.as_bytes()) != Some(lsid.as_slice()) {
                return Err(CommandError::new(
                    50738,
                    format!(
                        "Cannot run getMore on cursor {id}, which was created in a different session"
                    ),
                ));
            }
            Ok(())
        }
    }
}

pub(super) fn get_more(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&[
        "collection",
        "batchSize",
        "maxTimeMS",
        "term",
        "lastKnownCommittedOpTime",
    ])?;
    Counters::bump(&shared.counters.getmore, 1);
    let id = match req.command_value() {
        Some(RawBsonRef::Int64(id)) => id,
        Some(v) => {
            return Err(CommandError::type_mismatch(format!(
                "BSON field 'getMore.getMore' is the wrong type '{}', expected type 'long'",
                type_name(v.element_type())
            )));
        }
        None => {
            return Err(CommandError::failed_to_parse(
                "getMore requires a cursor id",
            ));
        }
    };
    if shared.config.enable_test_commands
        && let Some(e) = shared.failpoints.get_more_error()
    {
        // As in mongod, the cursor was checked out and is killed with the failed getMore.
        shared.cursors.kill(id);
        return Err(e);
    }
    let collection = match req.opt_str("collection")? {
        Some(c) => c,
        None => {
            return Err(CommandError::new(
                code::MISSING_FIELD,
                "BSON field 'getMore.collection' is missing but a required field",
            ));
        }
    };
    let ns = req.ns(collection);
    let batch_size = non_negative(req, "batchSize")?.filter(|&n| n > 0);
    let Some(mut cursor) = shared.cursors.take(id) else {
        return Err(CommandError::new(
            code::CURSOR_NOT_FOUND,
            format!("cursor id {id} not found"),
        ));
    };
    if let Err(e) = check_cursor_txn(req, id, &cursor) {
        shared.cursors.put_back(id, cursor);
        return Err(e);
    }
    if cursor.ns != ns {
        let owner = cursor.ns.clone();
        shared.cursors.put_back(id, cursor);
        return Err(CommandError::new(
            code::UNAUTHORIZED,
            format!(
                "Requested getMore on namespace '{ns}', but cursor belongs to a different namespace {owner}"
            ),
        ));
    }
    let (batch, exhausted) = cursor.next_batch(batch_size)?;
    let reply_id = if exhausted {
        0
    } else {
        shared.cursors.put_back(id, cursor);
        id
    };
    Ok(Reply::Raw(cursor_reply(&ns, reply_id, "nextBatch", &batch)))
}

pub(super) fn kill_cursors(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&["cursors"])?;
    req.collection()?;
    let Some(ids) = req.opt_array("cursors")? else {
        return Err(CommandError::new(
            code::MISSING_FIELD,
            "BSON field 'killCursors.cursors' is missing but a required field",
        ));
    };
    let mut killed = Vec::new();
    let mut not_found = Vec::new();
    for item in ids {
        match item.map_err(internal)? {
            RawBsonRef::Int64(id) => {
                if shared.cursors.kill(id) {
                    killed.push(id);
                } else {
                    not_found.push(id);
                }
            }
            other => {
                return Err(CommandError::type_mismatch(format!(
                    "BSON field 'killCursors.cursors' contains an element of type '{}', expected 'long'",
                    type_name(other.element_type())
                )));
            }
        }
    }
    debug_assert!(killed.iter().all(|id| !shared.cursors.contains(*id)));
    Ok(doc! {
        "cursorsKilled": killed,
        "cursorsNotFound": not_found,
        "cursorsAlive": [],
        "cursorsUnknown": [],
        "ok": 1.0,
    }
    .into())
}

// ---------------------------------------------------------------------------------------------
// update, delete, count

/// Documents a write statement targets, read through the transaction so its own writes count.
fn targets(
    txn: &Txn,
    coll: &CollectionInfo,
    filter: &Filter,
    just_one: bool,
) -> CommandResult<Vec<(DocKey, StoredDoc)>> {
    // Partial indexes need the raw filter to prove they cover it; write statements go without.
    let access = choose(txn, coll, filter, &RawDocumentBuf::new(), &Hint::None, None)?;
    let mut out = Vec::new();
    for_each_match(
        txn,
        coll,
        &access,
        filter,
        &mut Examined::default(),
        &mut |key, doc| {
            out.push((key.clone(), doc.clone()));
            if just_one {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        },
    )?;
    Ok(out)
}

fn stmt_fields(
    stmt: &RawDocument,
    command: &str,
    list: &str,
    allowed: &[&str],
) -> CommandResult<()> {
    for item in stmt.iter() {
        let (key, _) = item.map_err(internal)?;
        if !allowed.contains(&key.as_str()) {
            return Err(CommandError::new(
                code::UNKNOWN_FIELD,
                format!(
                    "BSON field '{command}.{list}.{}' is an unknown field.",
                    key.as_str()
                ),
            ));
        }
    }
    Ok(())
}

fn stmt_bool(stmt: &RawDocument, field: &str) -> CommandResult<bool> {
    match stmt.get(field).ok().flatten() {
        None => Ok(false),
        Some(v) => as_bool(v).ok_or_else(|| {
            CommandError::type_mismatch(format!(
                "BSON field '{field}' is the wrong type '{}', expected type 'bool'",
                type_name(v.element_type())
            ))
        }),
    }
}

fn stmt_filter(stmt: &RawDocument, command: &str, list: &str) -> CommandResult<Filter> {
    match stmt.get("q").ok().flatten() {
        Some(RawBsonRef::Document(q)) => Ok(Filter::parse(q)?),
        Some(v) => Err(CommandError::type_mismatch(format!(
            "BSON field '{command}.{list}.q' is the wrong type '{}', expected type 'object'",
            type_name(v.element_type())
        ))),
        None => Err(CommandError::new(
            code::MISSING_FIELD,
            format!("BSON field '{command}.{list}.q' is missing but a required field"),
        )),
    }
}

#[derive(Default)]
struct UpdateOutcome {
    matched: u64,
    modified: u64,
    upserted: Option<Bson>,
}

impl UpdateOutcome {
    /// The statement's result as a retryable write records it.
    fn to_record(&self) -> Bson {
        let mut d = doc! { "n": self.matched as i64, "m": self.modified as i64 };
        if let Some(id) = &self.upserted {
            d.insert("u", id.clone());
        }
        Bson::Document(d)
    }

    fn from_record(record: &Bson) -> UpdateOutcome {
        let d = record.as_document();
        UpdateOutcome {
            matched: d.and_then(|d| d.get_i64("n").ok()).unwrap_or(0) as u64,
            modified: d.and_then(|d| d.get_i64("m").ok()).unwrap_or(0) as u64,
            upserted: d.and_then(|d| d.get("u")).cloned(),
        }
    }
}

/// Applies `update` to one matched document and writes the result if it changed; returns the
/// new document when it did.
fn update_one_doc(
    txn: &mut Txn,
    coll: &CollectionInfo,
    filter: &Filter,
    update: &Update,
    key: DocKey,
    old: &StoredDoc,
    max_bson: usize,
) -> CommandResult<Option<StoredDoc>> {
    let old_doc = Document::try_from(old.as_ref() as &RawDocument).map_err(internal)?;
    let old_id = old_doc.get("_id").cloned();
    // The `$` operator refers to the array element the filter matched in this document.
    let positional = filter.positional_index(old);
    let new_doc = with_id_first(
        update.apply_with_positional(&old_doc, false, positional)?,
        old_id.as_ref(),
    );
    if new_doc == old_doc {
        return Ok(None);
    }
    let new_raw = RawDocumentBuf::try_from(&new_doc).map_err(internal)?;
    if new_raw.as_bytes().len() > max_bson {
        return Err(CommandError::new(
            17419,
            format!("Resulting document after update is larger than {max_bson}"),
        ));
    }
    let new_id = id_of(&new_raw).ok_or_else(|| internal("updated document lost its _id"))?;
    if key_of(new_id) != key {
        return Err(CommandError::new(
            66,
            format!(
                "After applying the update, the (immutable) field '_id' was found to have been altered to _id: {}",
                new_doc
                    .get("_id")
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ),
        ));
    }
    let new = Arc::new(new_raw);
    txn.replace(coll, key, new.clone())?;
    Ok(Some(new))
}

/// Inserts the document an upsert that matched nothing creates; returns it.
fn upsert_doc(
    txn: &mut Txn,
    coll: &CollectionInfo,
    filter: &Filter,
    update: &Update,
    max_bson: usize,
) -> CommandResult<StoredDoc> {
    let seed = filter.equality_seed()?;
    let new_doc = if update.is_replacement() {
        update.apply(&Document::new(), true)?
    } else {
        update.apply(&seed, true)?
    };
    let new_doc = with_id_first(new_doc, seed.get("_id"));
    let raw = RawDocumentBuf::try_from(&new_doc).map_err(internal)?;
    let (key, stored) = prepare_insert(&raw, max_bson)?;
    let stored = Arc::new(stored);
    txn.insert(coll, key, stored.clone())?;
    Ok(stored)
}

fn run_update_stmt(
    txn: &mut Txn,
    coll: &CollectionInfo,
    filter: &Filter,
    update: &Update,
    multi: bool,
    upsert: bool,
    max_bson: usize,
) -> CommandResult<UpdateOutcome> {
    let mut outcome = UpdateOutcome::default();
    for (key, old) in targets(txn, coll, filter, !multi)? {
        outcome.matched += 1;
        if update_one_doc(txn, coll, filter, update, key, &old, max_bson)?.is_some() {
            outcome.modified += 1;
        }
    }
    if outcome.matched == 0 && upsert {
        let inserted = upsert_doc(txn, coll, filter, update, max_bson)?;
        outcome.upserted = id_of(&inserted).and_then(|id| Bson::try_from(id).ok());
    }
    Ok(outcome)
}

/// A `multi: true` update outside a transaction, in bounded commits (see `multi_write.rs`).
async fn multi_update(
    shared: &Shared,
    opts: &WriteOptions,
    coll: &CollectionInfo,
    filter: &Filter,
    update: &Update,
    collation: Option<&mangrove_query::Collation>,
) -> CommandResult<UpdateOutcome> {
    let max_bson = shared.config.max_bson_size;
    let (matched, modified) =
        super::multi_write::run_chunked(shared, opts, coll, filter, collation, |txn, key, old| {
            let changed = update_one_doc(txn, coll, filter, update, key, old, max_bson)?;
            Ok(changed.is_some() as u64)
        })
        .await?;
    Ok(UpdateOutcome {
        matched,
        modified,
        ..UpdateOutcome::default()
    })
}

const UPDATE_STMT_FIELDS: &[&str] = &[
    "q",
    "u",
    "upsert",
    "multi",
    "arrayFilters",
    "collation",
    "hint",
    "c",
    "upsertSupplied",
];

pub(super) async fn update(
    shared: &Shared,
    req: &Request<'_>,
    mut txn: Option<&mut Txn>,
    retry: Option<Arc<RetryableWrite>>,
) -> CommandResult<Reply> {
    req.check_fields(&["updates", "ordered", "bypassDocumentValidation", "let"])?;
    let name = req.collection()?;
    validate_collection_name(req.db, name)?;
    let mut opts = WriteOptions::from_request(req)?;
    opts.retry = retry;
    let ordered = req.opt_bool("ordered")?.unwrap_or(true);
    let stmts = req.batch("updates")?;
    batch_size_check(stmts.len())?;
    let lets = req.opt_doc("let")?;
    // Unknown fields fail the whole command before anything runs, as mongod's IDL parser does
    // (7.0 has no `sort` in update statements; that came in 8.0).
    for stmt in &stmts {
        stmt_fields(stmt, "update", "updates", UPDATE_STMT_FIELDS)?;
    }
    let ns = req.ns(name);
    let max_bson = shared.config.max_bson_size;

    let mut n = 0u64;
    let mut modified = 0u64;
    let mut upserted = Vec::new();
    let mut write_errors = Vec::new();
    let in_txn = txn.is_some();
    for (index, stmt) in stmts.iter().enumerate() {
        let mut txn_here = txn.as_deref_mut();
        Counters::bump(&shared.counters.update, 1);
        let recorded = opts.retry.as_ref().and_then(|r| r.recorded(index));
        let result = async {
            if let Some(recorded) = recorded {
                return Ok(UpdateOutcome::from_record(&recorded));
            }
            let filter = with_let(lets, || stmt_filter(stmt, "update", "updates"))?;
            let u: Bson = match stmt.get("u").ok().flatten() {
                Some(v @ (RawBsonRef::Document(_) | RawBsonRef::Array(_))) => v.try_into().map_err(internal)?,
                Some(v) => {
                    return Err(CommandError::type_mismatch(format!(
                        "BSON field 'update.updates.u' is the wrong type '{}', expected type 'object or array'",
                        type_name(v.element_type())
                    )));
                }
                None => {
                    return Err(CommandError::new(
                        code::MISSING_FIELD,
                        "BSON field 'update.updates.u' is missing but a required field",
                    ));
                }
            };
            let array_filters = match stmt.get("arrayFilters").ok().flatten() {
                None => None,
                Some(RawBsonRef::Array(items)) => {
                    let mut filters = Vec::new();
                    for item in items {
                        match item.map_err(internal)? {
                            RawBsonRef::Document(d) => filters.push(Document::try_from(d).map_err(internal)?),
                            v => {
                                return Err(CommandError::type_mismatch(format!(
                                    "BSON field 'update.updates.arrayFilters' contains an element of type '{}', expected 'object'",
                                    type_name(v.element_type())
                                )));
                            }
                        }
                    }
                    Some(filters)
                }
                Some(v) => {
                    return Err(CommandError::type_mismatch(format!(
                        "BSON field 'update.updates.arrayFilters' is the wrong type '{}', expected type 'array'",
                        type_name(v.element_type())
                    )));
                }
            };
            let update = with_let(lets, || {
                Update::parse_with_array_filters(&u, array_filters.as_deref())
            })?;
            let multi = stmt_bool(stmt, "multi")?;
            let upsert = stmt_bool(stmt, "upsert")?;
            if multi && update.is_replacement() {
                return Err(CommandError::failed_to_parse(
                    "multi update is not supported for replacement-style update",
                ));
            }
            let collation = parse_collation(match stmt.get("collation").ok().flatten() {
                Some(RawBsonRef::Document(c)) => Some(c),
                _ => None,
            })?;
            let coll = if upsert {
                match txn_here.as_deref_mut() {
                    Some(t) => t.create_collection_shared(&ns, Document::new())?,
                    None => implicit_collection(shared, &ns, &opts).await?,
                }
            } else {
                let found = collection_for_write(shared, txn_here.as_deref(), &ns);
                match found {
                    Some(c) => c,
                    None => return Ok(UpdateOutcome::default()),
                }
            };
            super::views::refuse_write(&coll)?;
            if multi && txn_here.is_none() && opts.retry.is_none() {
                let chunked = multi_update(shared, &opts, &coll, &filter, &update, collation.as_ref()).await?;
                if chunked.matched > 0 || !upsert {
                    return Ok(chunked);
                }
            }
            run_write(shared, &opts, txn_here, |txn| {
                let outcome = with_collation(collation.as_ref(), || {
                    run_update_stmt(txn, &coll, &filter, &update, multi, upsert, max_bson)
                })?;
                if let Some(retry) = &opts.retry {
                    retry.note(index, outcome.to_record());
                }
                Ok(outcome)
            })
            .await
        }
        .await;
        match result {
            // In a transaction a conflict fails the statement, not one write of it.
            Err(e) if in_txn && e.code == code::WRITE_CONFLICT => return Err(e),
            Ok(outcome) => {
                n += outcome.matched;
                modified += outcome.modified;
                if let Some(id) = outcome.upserted {
                    n += 1;
                    upserted.push(doc! { "index": index as i32, "_id": id });
                }
            }
            Err(e) => {
                write_errors.push(e.to_write_error(index));
                if ordered {
                    break;
                }
            }
        }
    }
    let mut reply = doc! { "n": n as i32, "nModified": modified as i32 };
    if !upserted.is_empty() {
        reply.insert("upserted", upserted);
    }
    Ok(finish_write(reply, write_errors, opts.wc_error()))
}

/// What findAndModify did, for its `lastErrorObject` and `value`.
struct FamOutcome {
    n: i32,
    updated_existing: Option<bool>,
    upserted: Option<Bson>,
    value: Option<StoredDoc>,
}

fn fam_bool(req: &Request<'_>, field: &str) -> CommandResult<bool> {
    Ok(req.opt_bool(field)?.unwrap_or(false))
}

/// `findAndModify`: update, replace or remove the first matching document (in `sort` order) and
/// return it as it was before or after.
pub(super) async fn find_and_modify(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&mut Txn>,
    retry: Option<Arc<RetryableWrite>>,
) -> CommandResult<Reply> {
    req.check_fields(&[
        "query",
        "sort",
        "remove",
        "update",
        "new",
        "fields",
        "upsert",
        "bypassDocumentValidation",
        "collation",
        "arrayFilters",
        "hint",
        "let",
    ])?;
    let name = req.collection()?;
    validate_collection_name(req.db, name)?;
    let mut opts = WriteOptions::from_request(req)?;
    opts.retry = retry;
    let ns = req.ns(name);
    let empty = RawDocumentBuf::new();
    let lets = req.opt_doc("let")?;
    let filter = with_let(lets, || {
        Filter::parse(req.opt_doc("query")?.unwrap_or(&empty)).map_err(CommandError::from)
    })?;
    let sort = match req.opt_doc("sort")? {
        Some(spec) if !spec.is_empty() => Some(SortSpec::parse(spec)?),
        _ => None,
    };
    let projection = match req.opt_doc("fields")? {
        Some(spec) if !spec.is_empty() => Some(Projection::parse(spec)?.with_filter(&filter)),
        _ => None,
    };
    let (remove, return_new, upsert) = (
        fam_bool(req, "remove")?,
        fam_bool(req, "new")?,
        fam_bool(req, "upsert")?,
    );
    let update = match req.get("update") {
        None => None,
        Some(v @ (RawBsonRef::Document(_) | RawBsonRef::Array(_))) => {
            let u: Bson = v.try_into().map_err(internal)?;
            let filters = match req.opt_array("arrayFilters")? {
                Some(items) => Some(
                    items
                        .into_iter()
                        .map(|f| match f {
                            Ok(RawBsonRef::Document(d)) => Document::try_from(d).map_err(internal),
                            _ => Err(CommandError::type_mismatch(
                                "arrayFilters entries must be objects",
                            )),
                        })
                        .collect::<CommandResult<Vec<_>>>()?,
                ),
                None => None,
            };
            Some(with_let(lets, || {
                Update::parse_with_array_filters(&u, filters.as_deref())
            })?)
        }
        Some(v) => {
            return Err(CommandError::type_mismatch(format!(
                "BSON field 'findAndModify.update' is the wrong type '{}', expected types '[object, array]'",
                type_name(v.element_type())
            )));
        }
    };
    match (&update, remove) {
        (Some(_), true) => {
            return Err(CommandError::failed_to_parse(
                "Cannot specify both an update and remove=true",
            ));
        }
        (None, false) => {
            return Err(CommandError::failed_to_parse(
                "Either an update or remove=true must be specified",
            ));
        }
        _ => {}
    }
    if remove && return_new {
        return Err(CommandError::failed_to_parse(
            "Cannot specify both new=true and remove=true; 'remove' always returns the deleted document",
        ));
    }
    if remove && upsert {
        return Err(CommandError::failed_to_parse(
            "Cannot specify both upsert=true and remove=true ",
        ));
    }
    let collation = parse_collation(req.opt_doc("collation")?)?;
    // A retry of a findAndModify that ran returns what it returned then (pre- or post-image).
    if let Some(recorded) = opts.retry.as_ref().and_then(|r| r.recorded(0))
        && let Some(recorded) = recorded.as_document()
    {
        return Ok(fam_reply(
            recorded.get_document("le").cloned().unwrap_or_default(),
            recorded.get("v").cloned().unwrap_or(Bson::Null),
            opts.wc_error(),
        ));
    }
    let mut txn = txn;
    let coll = if upsert {
        Some(match txn.as_deref_mut() {
            Some(t) => t.create_collection_shared(&ns, Document::new())?,
            None => implicit_collection(shared, &ns, &opts).await?,
        })
    } else {
        collection_for_write(shared, txn.as_deref(), &ns)
    };
    if let Some(c) = &coll {
        super::views::refuse_write(c)?;
    }
    let max_bson = shared.config.max_bson_size;
    let outcome = match coll {
        None => FamOutcome {
            n: 0,
            updated_existing: Some(false),
            upserted: None,
            value: None,
        },
        Some(coll) => {
            run_write(shared, &opts, txn, |t| {
                let target = with_collation(collation.as_ref(), || -> CommandResult<_> {
                    Ok(match &sort {
                        None => targets(t, &coll, &filter, true)?.into_iter().next(),
                        Some(sort) => {
                            let mut best: Option<(DocKey, StoredDoc)> = None;
                            t.scan(&coll, None, |key, doc| {
                                if filter.matches(doc)
                                    && best
                                        .as_ref()
                                        .is_none_or(|(_, b)| sort.compare(doc, b).is_lt())
                                {
                                    best = Some((key.clone(), doc.clone()));
                                }
                                ControlFlow::Continue(())
                            })?;
                            best
                        }
                    })
                })?;
                match (target, &update) {
                    (Some((key, old)), None) => {
                        t.delete(&coll, key)?;
                        FamOutcome {
                            n: 1,
                            updated_existing: None,
                            upserted: None,
                            value: Some(old),
                        }
                    }
                    (Some((key, old)), Some(update)) => {
                        let new = update_one_doc(t, &coll, &filter, update, key, &old, max_bson)?;
                        let value = if return_new {
                            Some(new.unwrap_or(old))
                        } else {
                            Some(old)
                        };
                        FamOutcome {
                            n: 1,
                            updated_existing: Some(true),
                            upserted: None,
                            value,
                        }
                    }
                    (None, Some(update)) if upsert => {
                        let inserted = upsert_doc(t, &coll, &filter, update, max_bson)?;
                        let id = id_of(&inserted).and_then(|id| Bson::try_from(id).ok());
                        FamOutcome {
                            n: 1,
                            updated_existing: Some(false),
                            upserted: id,
                            value: return_new.then_some(inserted),
                        }
                    }
                    (None, _) => FamOutcome {
                        n: 0,
                        updated_existing: update.as_ref().map(|_| false),
                        upserted: None,
                        value: None,
                    },
                }
                .recorded_in(opts.retry.as_deref(), projection.as_ref())
            })
            .await?
        }
    };
    Counters::bump(
        if remove {
            &shared.counters.delete
        } else {
            &shared.counters.update
        },
        1,
    );
    let (last_error, value) = outcome.reply_parts(projection.as_ref())?;
    Ok(fam_reply(last_error, value, opts.wc_error()))
}

fn fam_reply(last_error: Document, value: Bson, wc_error: Option<Document>) -> Reply {
    let mut reply = doc! { "lastErrorObject": last_error, "value": value };
    if let Some(wce) = wc_error {
        reply.insert("writeConcernError", wce);
    }
    reply.insert("ok", 1.0);
    reply.into()
}

impl FamOutcome {
    /// `lastErrorObject` and `value` as the reply gives them.
    fn reply_parts(&self, projection: Option<&Projection>) -> CommandResult<(Document, Bson)> {
        let mut last_error = doc! { "n": self.n };
        if let Some(existing) = self.updated_existing {
            last_error.insert("updatedExisting", existing);
        }
        if let Some(id) = &self.upserted {
            last_error.insert("upserted", id.clone());
        }
        let value = match (&self.value, projection) {
            (None, _) => Bson::Null,
            (Some(doc), Some(p)) => {
                Bson::Document(Document::try_from(p.apply(doc)?).map_err(internal)?)
            }
            (Some(doc), None) => {
                Bson::Document(Document::try_from(doc.as_ref() as &RawDocument).map_err(internal)?)
            }
        };
        Ok((last_error, value))
    }

    /// Notes the reply for a retryable write before the commit, when a retry must get it back.
    fn recorded_in(
        self,
        retry: Option<&RetryableWrite>,
        projection: Option<&Projection>,
    ) -> CommandResult<FamOutcome> {
        if let Some(retry) = retry
            && self.n > 0
        {
            let (le, v) = self.reply_parts(projection)?;
            retry.note(0, Bson::Document(doc! { "le": le, "v": v }));
        }
        Ok(self)
    }
}

pub(super) async fn delete(
    shared: &Shared,
    req: &Request<'_>,
    mut txn: Option<&mut Txn>,
    retry: Option<Arc<RetryableWrite>>,
) -> CommandResult<Reply> {
    req.check_fields(&["deletes", "ordered", "let"])?;
    let name = req.collection()?;
    validate_collection_name(req.db, name)?;
    let mut opts = WriteOptions::from_request(req)?;
    opts.retry = retry;
    let ordered = req.opt_bool("ordered")?.unwrap_or(true);
    let stmts = req.batch("deletes")?;
    batch_size_check(stmts.len())?;
    let lets = req.opt_doc("let")?;
    let ns = req.ns(name);

    let mut n = 0u64;
    let mut write_errors = Vec::new();
    let in_txn = txn.is_some();
    for (index, stmt) in stmts.iter().enumerate() {
        let txn_here = txn.as_deref_mut();
        Counters::bump(&shared.counters.delete, 1);
        let recorded = opts.retry.as_ref().and_then(|r| r.recorded(index));
        let result = async {
            if let Some(recorded) = recorded {
                return Ok(recorded.as_i64().unwrap_or(0) as u64);
            }
            stmt_fields(
                stmt,
                "delete",
                "deletes",
                &["q", "limit", "collation", "hint"],
            )?;
            let filter = with_let(lets, || stmt_filter(stmt, "delete", "deletes"))?;
            let just_one = match stmt.get("limit").ok().flatten() {
                None => {
                    return Err(CommandError::new(
                        code::MISSING_FIELD,
                        "BSON field 'delete.deletes.limit' is missing but a required field",
                    ));
                }
                Some(v) => match as_i64(v) {
                    Some(0) => false,
                    Some(1) => true,
                    _ => {
                        return Err(CommandError::failed_to_parse(format!(
                            "The limit field in delete objects must be 0 or 1. Got {v:?}"
                        )));
                    }
                },
            };
            let collation = parse_collation(match stmt.get("collation").ok().flatten() {
                Some(RawBsonRef::Document(c)) => Some(c),
                _ => None,
            })?;
            let found = collection_for_write(shared, txn_here.as_deref(), &ns);
            let Some(coll) = found else {
                return Ok(0);
            };
            super::views::refuse_write(&coll)?;
            if !just_one && txn_here.is_none() && opts.retry.is_none() {
                let (deleted, _) = super::multi_write::run_chunked(
                    shared,
                    &opts,
                    &coll,
                    &filter,
                    collation.as_ref(),
                    |txn, key, _| {
                        txn.delete(&coll, key).map_err(CommandError::from)?;
                        Ok(1)
                    },
                )
                .await?;
                return Ok(deleted);
            }
            run_write(shared, &opts, txn_here, |txn| {
                let found = with_collation(collation.as_ref(), || {
                    targets(txn, &coll, &filter, just_one)
                })?;
                let count = found.len() as u64;
                for (key, _) in found {
                    txn.delete(&coll, key)
                        .map_err(|e: StorageError| CommandError::from(e))?;
                }
                if let Some(retry) = &opts.retry {
                    retry.note(index, Bson::Int64(count as i64));
                }
                Ok(count)
            })
            .await
        }
        .await;
        match result {
            Err(e) if in_txn && e.code == code::WRITE_CONFLICT => return Err(e),
            Ok(count) => n += count,
            Err(e) => {
                write_errors.push(e.to_write_error(index));
                if ordered {
                    break;
                }
            }
        }
    }
    Ok(finish_write(
        doc! { "n": n as i32 },
        write_errors,
        opts.wc_error(),
    ))
}

/// `distinct`: the distinct values at `key` among matching documents, in BSON order (mongod
/// collects them into an ordered set). Arrays at the key contribute their elements.
pub(super) fn distinct(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&Txn>,
    at: Option<Snapshot>,
) -> CommandResult<Reply> {
    let collation = parse_collation(req.opt_doc("collation")?)?;
    let deadline = deadline_of(req.opt_i64("maxTimeMS")?);
    with_deadline(deadline, || {
        with_collation(collation.as_ref(), || distinct_with(shared, req, txn, at))
    })
}

/// `distinct` with its collation set (values equal under it are one value).
fn distinct_with(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&Txn>,
    at: Option<Snapshot>,
) -> CommandResult<Reply> {
    req.check_fields(&[
        "key",
        "query",
        "collation",
        "hint",
        "readConcern",
        "maxTimeMS",
    ])?;
    Counters::bump(&shared.counters.query, 1);
    let name = req.collection()?;
    validate_db_name(req.db)?;
    let ns = req.ns(name);
    let key = match req.get("key") {
        Some(RawBsonRef::String(k)) => k,
        Some(v) => {
            return Err(CommandError::type_mismatch(format!(
                "BSON field 'distinct.key' is the wrong type '{}', expected type 'string'",
                type_name(v.element_type())
            )));
        }
        None => {
            return Err(CommandError::new(
                code::MISSING_FIELD,
                "BSON field 'distinct.key' is missing but a required field",
            ));
        }
    };
    let empty = RawDocumentBuf::new();
    let raw_filter = req.opt_doc("query")?.unwrap_or(&empty);
    let filter = Filter::parse(raw_filter)?;
    let snapshot = at.unwrap_or_else(|| shared.engine.snapshot());
    let coll = match txn {
        Some(txn) => collection_in_txn(shared, txn, &ns),
        None => snapshot.collection(&ns),
    };
    let mut values: Vec<bson::RawBson> = Vec::new();
    if let Some(coll) = coll {
        let view: &dyn ReadView = match txn {
            Some(txn) => txn,
            None => &snapshot,
        };
        if super::views::is_view(&coll) {
            for d in super::views::view_docs(shared, view, &coll)? {
                if filter.try_matches(&d)? {
                    values.extend(
                        mangrove_query::distinct_values(&d, key)
                            .into_iter()
                            .map(bson::RawBson::from),
                    );
                }
            }
        } else {
            distinct_from_collection(
                shared,
                req,
                view,
                &coll,
                &filter,
                raw_filter,
                key,
                &mut values,
            )?;
        }
    }
    dedup_values(&mut values);
    let mut array = RawArrayBuf::new();
    for v in values {
        array.push(v);
    }
    let mut reply = RawDocumentBuf::new();
    reply.append(cstr!("values"), array);
    reply.append(cstr!("ok"), 1.0);
    Ok(Reply::Raw(reply))
}

/// The values of `key` in the documents of a collection matching `filter`, deduplicated as
/// they accumulate so memory stays near the answer's size (16 MiB at most).
#[allow(clippy::too_many_arguments)]
fn distinct_from_collection(
    shared: &Shared,
    req: &Request<'_>,
    view: &dyn ReadView,
    coll: &CollectionInfo,
    filter: &Filter,
    raw_filter: &RawDocument,
    key: &str,
    values: &mut Vec<bson::RawBson>,
) -> CommandResult<()> {
    {
        let max = shared.config.max_bson_size;
        let mut bytes = 0usize;
        let mut too_big = false;
        let access = choose(
            view,
            coll,
            filter,
            raw_filter,
            &parse_hint(req.get("hint"), Some(coll))?,
            None,
        )?;
        for_each_match(
            view,
            coll,
            &access,
            filter,
            &mut Examined::default(),
            &mut |_, doc| {
                for v in mangrove_query::distinct_values(doc, key) {
                    let v = bson::RawBson::from(v);
                    bytes += raw_size(&v);
                    values.push(v);
                }
                // Sorting and deduplicating as we go keeps memory near the answer's size.
                if bytes > max {
                    dedup_values(values);
                    bytes = values.iter().map(raw_size).sum();
                    if bytes > max {
                        too_big = true;
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            },
        )?;
        if too_big {
            return Err(CommandError::new(
                17217,
                format!("distinct too big, {max} byte cap; use an aggregation with $group instead"),
            ));
        }
    }
    Ok(())
}

fn dedup_values(values: &mut Vec<bson::RawBson>) {
    values.sort_by(|a, b| mangrove_query::compare_values(a.as_raw_bson_ref(), b.as_raw_bson_ref()));
    values.dedup_by(|a, b| {
        mangrove_query::compare_values(a.as_raw_bson_ref(), b.as_raw_bson_ref()).is_eq()
    });
}

/// Roughly what a value adds to the reply: enough to enforce the 16 MiB cap.
fn raw_size(v: &bson::RawBson) -> usize {
    match v.as_raw_bson_ref() {
        RawBsonRef::String(s) => s.len() + 8,
        RawBsonRef::Document(d) => d.as_bytes().len() + 4,
        RawBsonRef::Array(a) => a.as_bytes().len() + 4,
        RawBsonRef::Binary(b) => b.bytes.len() + 9,
        _ => 16,
    }
}

pub(super) fn count(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    let collation = parse_collation(req.opt_doc("collation")?)?;
    let deadline = deadline_of(req.opt_i64("maxTimeMS")?);
    with_deadline(deadline, || {
        with_collation(collation.as_ref(), || count_with(shared, req))
    })
}

fn count_with(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&[
        "query",
        "limit",
        "skip",
        "hint",
        "collation",
        "readConcern",
        "fields",
        "maxTimeMS",
    ])?;
    let name = req.collection()?;
    let ns = req.ns(name);
    let empty = RawDocumentBuf::new();
    let raw_filter = req.opt_doc("query")?.unwrap_or(&empty);
    let filter = Filter::parse(raw_filter)?;
    let mut skip = non_negative(req, "skip")?.unwrap_or(0);
    // `count` takes a negative limit as its absolute value, unlike `find`.
    let limit = req
        .opt_i64("limit")?
        .map(i64::unsigned_abs)
        .filter(|&l| l > 0);
    let snapshot = shared.engine.snapshot();
    let mut n = 0u64;
    if let Some(coll) = snapshot.collection(&ns)
        && super::views::is_view(&coll)
    {
        for d in super::views::view_docs(shared, &snapshot, &coll)? {
            if filter.try_matches(&d)? {
                if skip > 0 {
                    skip -= 1;
                } else {
                    n += 1;
                    if limit.is_some_and(|l| n >= l) {
                        break;
                    }
                }
            }
        }
    } else if let Some(coll) = snapshot.collection(&ns) {
        let hint = parse_hint(req.get("hint"), Some(&coll))?;
        let access = choose(&snapshot, &coll, &filter, raw_filter, &hint, None)?;
        for_each_match(
            &snapshot,
            &coll,
            &access,
            &filter,
            &mut Examined::default(),
            &mut |_, _| {
                if skip > 0 {
                    skip -= 1;
                } else {
                    n += 1;
                    if limit.is_some_and(|l| n >= l) {
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            },
        )?;
    }
    Ok(doc! { "n": n as i64, "ok": 1.0 }.into())
}
