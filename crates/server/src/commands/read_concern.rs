//! `readConcern` outside transactions: which snapshot a read uses and what it waits for.
//!
//! On one node every level reads committed data; they differ in what they wait for:
//! - `local`, `available`: the latest commit, no waiting;
//! - `majority`, `linearizable`: only commits that are durable (a majority of one node is the
//!   node's disk), so the read first waits for the latest commit's fdatasync;
//! - `snapshot`: one point in time, chosen by the server (reported as `atClusterTime`) or by
//!   the client (`atClusterTime`); a snapshot session pins its first read's snapshot so its
//!   later reads can come back to it.
//! - `afterClusterTime` waits until that time is visible (durable for `majority`).

use std::time::{Duration, Instant};

use bson::raw::RawBsonRef;
use mangrove_storage::{Snapshot, Timestamp};

use crate::Shared;
use crate::error::{CommandError, CommandResult, code};
use crate::request::{Request, type_name};
use crate::session::Session;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Local,
    Available,
    Majority,
    Linearizable,
    Snapshot,
}

#[derive(Debug)]
pub(crate) struct ReadConcern {
    pub level: Level,
    pub after_cluster_time: Option<Timestamp>,
    pub at_cluster_time: Option<Timestamp>,
}

/// How long a snapshot session may keep history pinned: mongod's
/// `minSnapshotHistoryWindowInSeconds` default. Past it, reads at the pinned time fail with
/// SnapshotTooOld instead of holding old versions in memory forever.
pub(crate) const SNAPSHOT_HISTORY_WINDOW: Duration = Duration::from_secs(300);

/// Longest wait for `afterClusterTime` or durability when the command sets no `maxTimeMS`.
const MAX_READ_WAIT: Duration = Duration::from_secs(60);

pub(crate) fn parse(req: &Request<'_>) -> CommandResult<Option<ReadConcern>> {
    let Some(rc) = req.opt_doc("readConcern")? else {
        return Ok(None);
    };
    let mut level = Level::Local;
    let mut after = None;
    let mut at = None;
    for item in rc.iter() {
        let (key, value) = item.map_err(|e| CommandError::new(22, e.to_string()))?;
        match (key.as_str(), value) {
            ("level", RawBsonRef::String(l)) => {
                level = match l {
                    "local" => Level::Local,
                    "available" => Level::Available,
                    "majority" => Level::Majority,
                    "linearizable" => Level::Linearizable,
                    "snapshot" => Level::Snapshot,
                    other => {
                        return Err(CommandError::bad_value(format!(
                            "Invalid readConcern level '{other}': expected local, available, majority, linearizable or snapshot"
                        )));
                    }
                }
            }
            ("afterClusterTime", RawBsonRef::Timestamp(ts)) => {
                after = Some(Timestamp::from_bson(ts))
            }
            ("atClusterTime", RawBsonRef::Timestamp(ts)) => at = Some(Timestamp::from_bson(ts)),
            ("afterOpTime" | "provenance", _) => {}
            (field @ ("level" | "afterClusterTime" | "atClusterTime"), v) => {
                return Err(CommandError::type_mismatch(format!(
                    "BSON field 'readConcern.{field}' is the wrong type '{}'",
                    type_name(v.element_type())
                )));
            }
            (other, _) => {
                return Err(CommandError::new(
                    code::UNKNOWN_FIELD,
                    format!("BSON field 'readConcern.{other}' is an unknown field."),
                ));
            }
        }
    }
    if at.is_some() && level != Level::Snapshot {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "atClusterTime is only used with readConcern level snapshot",
        ));
    }
    if at.is_some() && after.is_some() {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "Specifying a timestamp for readConcern snapshot in a causally consistent session is not allowed",
        ));
    }
    Ok(Some(ReadConcern {
        level,
        after_cluster_time: after,
        at_cluster_time: at,
    }))
}

/// Commands that may read at `snapshot` level outside a transaction, as in mongod 7.0.
fn snapshot_capable(command: &str) -> bool {
    super::lookup(command).is_some_and(|c| c.snapshot)
}

/// Waits for what the read concern needs, and returns the snapshot a `snapshot` read uses.
pub(crate) async fn prepare(
    shared: &Shared,
    req: &Request<'_>,
    session: Option<&mut Session>,
) -> CommandResult<Option<Snapshot>> {
    // A cursor reads with the concern of the command that opened it; drivers repeat a snapshot
    // session's concern on its getMore and killCursors, which mongod accepts and ignores.
    if matches!(req.name, "getMore" | "killCursors") {
        return Ok(None);
    }
    let Some(rc) = parse(req)? else {
        return Ok(None);
    };
    if rc.level == Level::Snapshot && !snapshot_capable(req.name) {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            format!(
                "Command {} does not support readConcern level snapshot outside a multi-document transaction; only find, aggregate and distinct do",
                req.name
            ),
        ));
    }
    wait_for_cluster_time(shared, req, &rc).await?;
    if rc.level != Level::Snapshot {
        return Ok(None);
    }
    let snapshot = match rc.at_cluster_time {
        Some(at) => shared.engine.snapshot_at(at)?,
        None => shared.engine.snapshot(),
    };
    if let Some(session) = session {
        pin_snapshot(shared, session, &rc, &snapshot)?;
    }
    Ok(Some(snapshot))
}

/// Waits until the commit the read concern asks for (its `afterClusterTime`, or for
/// `majority`/`linearizable` the latest commit, durable) is visible or durable, within
/// `maxTimeMS` and at most [`MAX_READ_WAIT`].
async fn wait_for_cluster_time(
    shared: &Shared,
    req: &Request<'_>,
    rc: &ReadConcern,
) -> CommandResult<()> {
    let deadline = Instant::now()
        + match req.opt_i64("maxTimeMS")? {
            Some(ms) if ms > 0 => Duration::from_millis(ms as u64).min(MAX_READ_WAIT),
            _ => MAX_READ_WAIT,
        };
    let durable = matches!(rc.level, Level::Majority | Level::Linearizable);
    let target = match (rc.after_cluster_time, durable) {
        (Some(after), _) => Some(after),
        (None, true) => Some(shared.engine.last_commit()),
        (None, false) => None,
    };
    if let Some(target) = target {
        if target > shared.engine.last_commit() && !durable {
            // A time this node has not reached: only a client that made one up can ask it.
            return Err(CommandError::new(
                code::INVALID_OPTIONS,
                format!(
                    "readConcern afterClusterTime {target:?} is newer than the latest operation time {:?}",
                    shared.engine.last_commit()
                ),
            ));
        }
        let mut ticket = shared.engine.ticket_for(target);
        let wait = async {
            if durable {
                ticket.durable().await.map(|_| ())
            } else {
                ticket.visible().await.map(|_| ())
            }
        };
        match tokio::time::timeout_at(deadline.into(), wait).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(CommandError::new(
                    code::MAX_TIME_MS_EXPIRED,
                    "operation exceeded time limit waiting for the read concern's cluster time",
                ));
            }
        }
    }
    Ok(())
}

/// Pins the first snapshot of a snapshot session so that its later reads at the
/// `atClusterTime` we report can still be served.
fn pin_snapshot(
    shared: &Shared,
    session: &mut Session,
    rc: &ReadConcern,
    snapshot: &Snapshot,
) -> CommandResult<()> {
    let expired = session
        .snapshot_pin
        .as_ref()
        .is_some_and(|(_, since)| since.elapsed() > SNAPSHOT_HISTORY_WINDOW);
    if expired {
        session.snapshot_pin = None;
    }
    if rc.at_cluster_time.is_none() && session.snapshot_pin.is_none() {
        session.snapshot_pin = Some((
            shared.engine.snapshot_at(snapshot.read_ts())?,
            Instant::now(),
        ));
    }
    Ok(())
}
