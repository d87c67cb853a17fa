//! Tailable cursors over capped collections: `find` with `tailable` (and `awaitData`), and the
//! `getMore`s that follow the collection as it grows.
//!
//! Invariants:
//! - A tailable cursor walks the collection's key order, which for a capped collection is
//!   insertion order; its writer makes insertion numbers visible in increasing order
//!   (`capped.rs`), so resuming after the last key returned, in a new snapshot, misses nothing.
//! - A cursor whose last document was deleted (trimmed as the collection wrapped, or deleted)
//!   has lost its place: `CappedPositionLost`, and the cursor is gone, as in mongod. A dropped
//!   collection ends it with `QueryPlanKilled`.
//! - An `awaitData` `getMore` waits at most its `maxTimeMS` (1 s without one) and holds no lock
//!   while it waits: the cursor is out of the cursor table meanwhile.

use std::time::Instant;

use mangrove_storage::CollectionInfo;

use crate::Shared;
use crate::cursor::{Cursor, Source, Tail};
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;

use super::Reply;
use super::reply::{DEFAULT_FIRST_BATCH, cursor_reply};

/// The tailable cursor `find` asks for, checked as mongod checks it; `None` for an ordinary
/// find. `natural` is the query's `$natural` sort, if any.
pub(super) fn tail_request(
    req: &Request<'_>,
    coll: Option<&CollectionInfo>,
    natural: Option<bool>,
) -> CommandResult<Option<Tail>> {
    let tailable = req.opt_bool("tailable")?.unwrap_or(false);
    let await_data = req.opt_bool("awaitData")?.unwrap_or(false);
    if await_data && !tailable {
        return Err(CommandError::failed_to_parse(
            "Cannot set 'awaitData' without also setting 'tailable'",
        ));
    }
    if !tailable {
        return Ok(None);
    }
    if req.opt_bool("singleBatch")?.unwrap_or(false) {
        return Err(CommandError::bad_value(
            "cannot use tailable option with the 'singleBatch' option",
        ));
    }
    if natural == Some(true)
        || (natural.is_none() && req.opt_doc("sort")?.is_some_and(|s| !s.is_empty()))
    {
        return Err(CommandError::bad_value(
            "error processing query: cannot use tailable option with a sort other than {$natural: 1}",
        ));
    }
    if coll.is_some_and(|c| !crate::capped::is_capped(c)) {
        return Err(CommandError::bad_value(
            "error processing query: tailable cursor requested on non capped collection",
        ));
    }
    Ok(Some(Tail { await_data }))
}

/// A tailable cursor's first batch. It stays open at the end of the collection, unless the
/// query found nothing at all (mongod's documented behaviour: the cursor is dead then) or its
/// limit is reached.
pub(super) fn first_batch(
    shared: &Shared,
    mut cursor: Cursor,
    batch_size: Option<u64>,
) -> CommandResult<Reply> {
    let ns = cursor.ns.clone();
    let (batch, _) = cursor.next_batch(Some(batch_size.unwrap_or(DEFAULT_FIRST_BATCH)))?;
    let id = if batch.is_empty() || cursor.remaining == Some(0) {
        0
    } else {
        shared.cursors.insert(cursor)?
    };
    Ok(Reply::Raw(cursor_reply(&ns, id, "firstBatch", &batch)))
}

/// `getMore` on a tailable cursor: what was inserted after its last document, waiting for
/// commits (with `awaitData`) when there is nothing yet.
pub(super) async fn get_more(
    shared: &Shared,
    req: &Request<'_>,
    id: i64,
    mut cursor: Cursor,
    batch_size: Option<u64>,
) -> CommandResult<Reply> {
    let await_data = cursor.tail().is_some_and(|t| t.await_data);
    let wait = super::args::await_time(req)?;
    let until = Instant::now() + wait;
    let ns = cursor.ns.clone();
    let killed = shared.cursors.kill_signal(id);
    loop {
        let step =
            refresh(shared, &mut cursor).and_then(|ts| Ok((ts, cursor.next_batch(batch_size)?)));
        let (read_ts, (batch, _)) = match step {
            Ok(v) => v,
            Err(e) => {
                shared.cursors.give_up(id);
                return Err(e);
            }
        };
        let done = cursor.remaining == Some(0);
        let now = Instant::now();
        if !batch.is_empty() || done || !await_data || now >= until {
            let reply_id = if done {
                shared.cursors.give_up(id);
                0
            } else {
                shared.cursors.put_back(id, cursor);
                id
            };
            return Ok(Reply::Raw(cursor_reply(&ns, reply_id, "nextBatch", &batch)));
        }
        // killCursors meanwhile ends the wait, and the cursor; so does killOp of this getMore
        // (a failed getMore kills its cursor, as in mongod).
        tokio::select! {
            _ = shared.engine.wait_durable_after(read_ts, until - now) => {}
            _ = crate::cursor::until_killed(killed.as_deref()) => {
                shared.cursors.give_up(id);
                return Err(crate::cursor::killed_error(id));
            }
            _ = crate::op_stats::until_killed() => {
                shared.cursors.give_up(id);
                return Err(crate::access::interrupted());
            }
        }
    }
}

/// Moves the cursor's walk to a new snapshot, checking that its collection and its place in
/// it still exist; returns the snapshot's timestamp.
fn refresh(shared: &Shared, cursor: &mut Cursor) -> CommandResult<mangrove_storage::Timestamp> {
    let Source::Scan(scan) = &mut cursor.source else {
        return Err(CommandError::new(
            code::INTERNAL_ERROR,
            "a tailable cursor without a collection walk",
        ));
    };
    let snapshot = shared.engine.snapshot();
    let ns = scan.coll.ns();
    let coll = snapshot
        .collection(&ns)
        .filter(|c| c.uuid() == scan.coll.uuid())
        .ok_or_else(|| {
            CommandError::new(
                code::QUERY_PLAN_KILLED,
                format!("collection dropped: the tailable cursor on {ns} ended"),
            )
        })?;
    if let Some(after) = &scan.after
        && snapshot.get(&coll, after)?.is_none()
    {
        return Err(CommandError::new(
            code::CAPPED_POSITION_LOST,
            format!(
                "CollectionScan died due to position in capped collection being deleted. Last seen record id: RecordId({})",
                crate::capped::number_of_key(after)
            ),
        ));
    }
    let read_ts = snapshot.read_ts();
    scan.snapshot = snapshot;
    scan.coll = coll;
    Ok(read_ts)
}
