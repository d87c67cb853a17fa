//! `getMore` and `killCursors`: continuing and ending the cursors other commands opened.

use bson::doc;
use bson::raw::RawBsonRef;
use std::time::Instant;

use crate::access::with_deadline;

use crate::cursor::{Cursor, Source, TxnOwner};
use crate::error::{CommandError, CommandResult, code};
use crate::request::{Request, type_name};
use crate::{Counters, Shared};

use super::Reply;
use super::args::{internal, non_negative};
use super::change_stream;
use super::reply::cursor_reply;

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
        (
            Some(TxnOwner {
                txn_number: created,
                ..
            }),
            None,
        ) => Err(CommandError::new(
            50740,
            format!(
                "Cannot run getMore on cursor {id}, which was created in transaction {created}, without a txnNumber"
            ),
        )),
        (
            Some(TxnOwner {
                lsid,
                txn_number: created,
            }),
            Some(n),
        ) => {
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

/// The cursor id a `getMore` names.
fn cursor_id(req: &Request<'_>) -> CommandResult<i64> {
    match req.command_value() {
        Some(RawBsonRef::Int64(id)) => Ok(id),
        Some(v) => Err(CommandError::type_mismatch(format!(
            "BSON field 'getMore.getMore' is the wrong type '{}', expected type 'long'",
            type_name(v.element_type())
        ))),
        None => Err(CommandError::failed_to_parse(
            "getMore requires a cursor id",
        )),
    }
}

/// The error `failGetMoreAfterCursorCheckout` makes this `getMore` fail with, if it is set.
fn fail_point(shared: &Shared, id: i64) -> Option<CommandError> {
    if !shared.config.enable_test_commands {
        return None;
    }
    let mut e = shared.failpoints.get_more_error()?;
    // As in mongod, the cursor was checked out and is killed with the failed getMore; a change
    // stream's error says whether the driver may resume.
    if let Some(cursor) = shared.cursors.take(id) {
        shared.cursors.give_up(id);
        if matches!(cursor.source, Source::History(_)) {
            change_stream::label_error(&mut e);
        }
    }
    Some(e)
}

/// MaxTimeMSExpired when the cursor's leftover `maxTimeMS` is spent (or the test fail point
/// says it is).
fn leftover_time_expired(shared: &Shared, cursor: &Cursor) -> Option<CommandError> {
    let left = cursor.time_left?;
    if shared.config.enable_test_commands
        && let Some(e) = shared.failpoints.max_time_always_times_out()
    {
        return Some(e);
    }
    left.is_zero().then(|| {
        CommandError::new(
            code::MAX_TIME_MS_EXPIRED,
            "operation exceeded time limit: the cursor's maxTimeMS is spent",
        )
    })
}

pub(super) async fn get_more(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&[
        "collection",
        "batchSize",
        "maxTimeMS",
        "term",
        "lastKnownCommittedOpTime",
    ])?;
    Counters::bump(&shared.counters.getmore, 1);
    let id = cursor_id(req)?;
    if let Some(e) = fail_point(shared, id) {
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
    let Some(cursor) = shared.cursors.take(id) else {
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
    if matches!(cursor.source, Source::History(_)) {
        return change_stream::get_more(shared, req, id, cursor, batch_size).await;
    }
    if cursor.tail().is_some() {
        return super::tailable::get_more(shared, req, id, cursor, batch_size).await;
    }
    next_plain_batch(shared, &ns, id, cursor, batch_size)
}

/// The next batch of a cursor that neither tails nor streams changes, within what is left of
/// its `maxTimeMS`; the cursor goes back to the table unless it is exhausted or failed.
fn next_plain_batch(
    shared: &Shared,
    ns: &str,
    id: i64,
    mut cursor: Cursor,
    batch_size: Option<u64>,
) -> CommandResult<Reply> {
    let started = Instant::now();
    let answer = match leftover_time_expired(shared, &cursor) {
        Some(e) => Err(e),
        None => with_deadline(cursor.time_left.map(|t| started + t), || {
            cursor.next_batch(batch_size)
        }),
    };
    let (batch, exhausted) = match answer {
        Ok(answer) => answer,
        Err(e) => {
            shared.cursors.give_up(id);
            return Err(e);
        }
    };
    cursor.time_left = cursor
        .time_left
        .map(|t| t.saturating_sub(started.elapsed()));
    let reply_id = if exhausted {
        shared.cursors.give_up(id);
        0
    } else {
        shared.cursors.put_back(id, cursor);
        id
    };
    Ok(Reply::Raw(cursor_reply(ns, reply_id, "nextBatch", &batch)))
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
