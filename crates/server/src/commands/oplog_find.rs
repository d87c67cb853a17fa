//! `find` on `local.oplog.rs`: the log's history as oplog entries (`changes/oplog.rs`), in
//! `$natural` (commit) order, from a `ts` bound, with `tailable` + `awaitData` cursors that wait
//! for new commits. Read-only: the oplog is derived from the log, never written.
//!
//! Invariants:
//! - Only durable commits appear (the history reader's rule), so a tailer never copies a
//!   write that a crash could take back.
//! - A `ts` lower bound in the filter starts the read there instead of at the oldest retained
//!   commit (`oplogReplay` is implied, as in mongod 4.4+); the filter still decides.
//! - A reverse `$natural` read (the newest entries first, as `rs.printReplicationInfo()`
//!   asks) scans forward and keeps only the last `limit` entries, so it needs a `limit`.

use std::collections::VecDeque;
use std::time::Instant;

use bson::raw::{RawBsonRef, RawDocument};
use mangrove_query::{Filter, Projection};
use mangrove_storage::Timestamp;

use crate::Shared;
use crate::changes::{Batch, HistoryCursor, Shape};
use crate::cursor::{BatchDoc, Cursor, Source};
use crate::error::{CommandError, CommandResult};
use crate::request::Request;

use super::Reply;
use super::args::non_negative;
use super::change_stream::reply;
use super::reply::DEFAULT_FIRST_BATCH;

pub(super) const OPLOG_NS: &str = "local.oplog.rs";
/// The most entries a reverse `$natural` read returns.
const MAX_REVERSE: u64 = 10_000;

pub(super) fn is_oplog(req: &Request<'_>) -> bool {
    req.db == "local" && matches!(req.command_value(), Some(RawBsonRef::String("oplog.rs")))
}

/// The fields a `find` on the oplog accepts.
const FIND_FIELDS: &[&str] = &[
    "filter",
    "sort",
    "projection",
    "limit",
    "batchSize",
    "singleBatch",
    "maxTimeMS",
    "readConcern",
    "tailable",
    "oplogReplay",
    "awaitData",
    "noCursorTimeout",
    "hint",
];

pub(super) async fn find(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(FIND_FIELDS)?;
    let raw_filter = req.opt_doc("filter")?;
    let filter = match raw_filter {
        Some(f) => Filter::parse(f)?,
        None => Filter::parse(&bson::rawdoc! {})?,
    };
    let projection = req
        .opt_doc("projection")?
        .map(Projection::parse)
        .transpose()?;
    let tailable = req.opt_bool("tailable")?.unwrap_or(false);
    let await_data = req.opt_bool("awaitData")?.unwrap_or(false);
    let limit = non_negative(req, "limit")?.filter(|&n| n > 0);
    let batch_size = non_negative(req, "batchSize")?.unwrap_or(DEFAULT_FIRST_BATCH);
    if await_data && !tailable {
        return Err(CommandError::failed_to_parse(
            "Cannot set 'awaitData' without also setting 'tailable'",
        ));
    }
    let reverse = natural_reverse(req.opt_doc("sort")?)?;
    let after = start_after(shared, raw_filter)?;
    let shape = Shape::Oplog {
        filter,
        projection,
        tailable: tailable && !reverse,
        await_data,
    };
    let board = &shared.change_batches;
    let mut cursor = HistoryCursor::oplog(&shared.engine, board, after, shape).await?;
    if reverse {
        let limit = limit.ok_or_else(|| {
            CommandError::bad_value(format!(
                "a reverse $natural read of {OPLOG_NS} needs a limit (at most {MAX_REVERSE})"
            ))
        })?;
        return newest_first(shared, &mut cursor, limit.min(MAX_REVERSE)).await;
    }
    let first = limit.map_or(batch_size, |l| l.min(batch_size));
    let mut batch = cursor.next_batch(&shared.engine, first, None).await?;
    let remaining = limit.map(|l| l - batch.docs.len() as u64);
    batch.ended |= remaining == Some(0) || req.opt_bool("singleBatch")?.unwrap_or(false);
    let id = if batch.ended {
        0
    } else {
        shared.cursors.insert(Cursor {
            ns: OPLOG_NS.to_string(),
            source: Source::History(Box::new(cursor)),
            projection: None,
            remaining,
            last_used: Instant::now(),
            txn: None,
            time_left: None,
        })?
    };
    Ok(Reply::Raw(reply(OPLOG_NS, id, "firstBatch", &batch)))
}

/// Whether the sort asks for the newest entries first; only `$natural` sorts are allowed.
fn natural_reverse(sort: Option<&RawDocument>) -> CommandResult<bool> {
    let Some(sort) = sort else {
        return Ok(false);
    };
    let mut reverse = false;
    for (key, value) in sort.iter().flatten() {
        let dir = crate::request::as_i64(value);
        match (key.as_str(), dir) {
            ("$natural", Some(-1)) => reverse = true,
            ("$natural", Some(1)) => {}
            _ => {
                return Err(CommandError::bad_value(format!(
                    "{OPLOG_NS} is read in $natural order only ({{$natural: 1}} or {{$natural: -1}})"
                )));
            }
        }
    }
    Ok(reverse)
}

/// The commit the read starts after: just before the filter's `ts` lower bound if it has one,
/// else before the oldest retained commit.
fn start_after(shared: &Shared, filter: Option<&RawDocument>) -> CommandResult<Timestamp> {
    let window = shared.engine.history_window()?;
    let oldest = match window.oldest {
        Some(oldest) => Timestamp(oldest.0 - 1),
        None => return Ok(window.newest),
    };
    let bound = filter
        .and_then(|f| f.get("ts").ok().flatten())
        .and_then(|ts| match ts {
            RawBsonRef::Timestamp(t) => {
                Some(Timestamp(Timestamp::from_bson(t).0.saturating_sub(1)))
            }
            RawBsonRef::Document(d) => {
                match (d.get("$gte").ok().flatten(), d.get("$gt").ok().flatten()) {
                    (Some(RawBsonRef::Timestamp(t)), _) => {
                        Some(Timestamp(Timestamp::from_bson(t).0.saturating_sub(1)))
                    }
                    (_, Some(RawBsonRef::Timestamp(t))) => Some(Timestamp::from_bson(t)),
                    _ => None,
                }
            }
            _ => None,
        });
    Ok(bound.map_or(oldest, |b| b.max(oldest)))
}

/// The last `limit` matching entries, newest first, in one batch.
async fn newest_first(
    shared: &Shared,
    cursor: &mut HistoryCursor,
    limit: u64,
) -> CommandResult<Reply> {
    let mut last: VecDeque<BatchDoc> = VecDeque::new();
    let post_batch_token = loop {
        let batch = cursor.next_batch(&shared.engine, 1024, None).await?;
        for doc in batch.docs {
            if last.len() as u64 == limit {
                last.pop_front();
            }
            last.push_back(doc);
        }
        if batch.ended {
            break batch.post_batch_token;
        }
    };
    let batch = Batch {
        docs: last.into_iter().rev().collect(),
        shared: None,
        taken: false,
        post_batch_token,
        ended: true,
    };
    Ok(Reply::Raw(reply(OPLOG_NS, 0, "firstBatch", &batch)))
}
