//! `find`: parse the query, choose an access path, and answer the first batch, leaving the
//! rest in a cursor (streamed from the snapshot, or computed at once when it must be).

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::time::Instant;

use bson::RawDocumentBuf;
use mangrove_query::{Filter, Projection, SortSpec, with_collation, with_let};
use mangrove_storage::{CollectionInfo, ReadView, Snapshot, StoredDoc, Txn};

use crate::access::{
    Access, Examined, IndexWalk, choose, deadline_of, for_each_match, parse_hint, sort_fields,
    with_deadline,
};
use crate::cursor::{BatchDoc, Cursor, IndexScanState, ScanState, Source};
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;
use crate::{Counters, Shared};

use super::Reply;
use super::args::{non_negative, parse_collation};
use super::collections::collection_in_txn;
use super::names::validate_db_name;
use super::reply::{DEFAULT_FIRST_BATCH, cursor_reply, txn_owner};

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
