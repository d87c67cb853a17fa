//! The operations running now, by number (mongod's `opid`): what `$currentOp` and `currentOp`
//! list and what `killOp` interrupts.
//!
//! Invariants:
//! - Every command is registered for exactly as long as `commands::run` runs it: the guard
//!   [`Registered`] takes it out when dropped, whatever way the command ends.
//! - Killing only sets the operation's flag ([`OpStats::killed`]); the operation itself stops
//!   at its next interruption check (`access::check_deadline`, the JavaScript interrupt
//!   handler), fails with Interrupted (11601), and unwinds as any failed command does: a
//!   statement of a transaction aborts it, a cursor not yet handed out is dropped.
//! - Registering costs one lock of a map and a copy of the command when it is small (a large
//!   one is kept as mongod's `$truncated` summary, so an insert of 16 MiB is not copied).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bson::{Bson, Document, RawDocument, RawDocumentBuf, doc};

use crate::op_stats::OpStats;

/// A command larger than this is listed as a `$truncated` summary (mongod: 1 KiB).
const MAX_SHOWN_BYTES: usize = 1024;

/// One running operation, as `$currentOp` shows it.
pub(crate) struct Running {
    pub opid: i32,
    pub started: Instant,
    pub connection: i64,
    pub client: SocketAddr,
    pub app_name: Option<std::sync::Arc<str>>,
    /// `user@db` under `--auth`: a user may kill its own operations without `killop`.
    pub owner: Option<Arc<str>>,
    /// mongod's `op`: `query`, `getmore`, `insert`, `update`, `remove` or `command`.
    pub op: &'static str,
    pub ns: String,
    /// Kept raw (a copy of at most 1 KiB) and decoded only when listed.
    pub command: RawDocumentBuf,
    pub lsid: Option<RawDocumentBuf>,
    pub txn_number: Option<i64>,
    /// The operation's counters and its kill flag (read by its interruption checks).
    pub stats: Arc<OpStats>,
}

impl Running {
    /// `killOp` was asked for it and it has not stopped yet (mongod's `killPending`).
    pub fn kill_pending(&self) -> bool {
        self.stats.killed.load(Ordering::Relaxed)
    }
}

/// The registry: operations by opid.
#[derive(Default)]
pub(crate) struct Ops {
    next: AtomicU32,
    running: Mutex<HashMap<i32, Arc<Running>>>,
}

/// Takes its operation out of the registry when dropped.
pub(crate) struct Registered<'a> {
    ops: &'a Ops,
    opid: i32,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.ops.lock().remove(&self.opid);
    }
}

impl Ops {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Arc<Running>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh opid: positive, as mongod's (an unsigned 32-bit count shown as an int).
    pub fn next_opid(&self) -> i32 {
        (self.next.fetch_add(1, Ordering::Relaxed) % i32::MAX as u32) as i32 + 1
    }

    /// Lists `op` until the guard is dropped.
    pub fn register(&self, op: Running) -> Registered<'_> {
        let opid = op.opid;
        self.lock().insert(opid, Arc::new(op));
        Registered { ops: self, opid }
    }

    /// Every operation running now, oldest first.
    pub fn list(&self) -> Vec<Arc<Running>> {
        let mut all: Vec<_> = self.lock().values().cloned().collect();
        all.sort_by_key(|r| r.started);
        all
    }

    /// The operation numbered `opid`, if it is running.
    pub fn get(&self, opid: i32) -> Option<Arc<Running>> {
        self.lock().get(&opid).cloned()
    }
}

/// The command as `$currentOp` shows it: whole when small, else mongod's `$truncated` summary
/// (which keeps the `comment`, so an operation can still be found by it).
pub(crate) fn shown_command(body: &RawDocument) -> RawDocumentBuf {
    let len = body.as_bytes().len();
    if len <= MAX_SHOWN_BYTES {
        return body.to_owned();
    }
    let name = body
        .iter()
        .next()
        .and_then(Result::ok)
        .map_or("", |(k, _)| k.as_str());
    let mut d = doc! { "$truncated": format!("{{ {name}: ... }} ({len} bytes)") };
    if let Ok(Some(comment)) = body.get("comment")
        && let Ok(comment) = Bson::try_from(comment)
    {
        d.insert("comment", comment);
    }
    RawDocumentBuf::try_from(&d).unwrap_or_default()
}

/// A raw document decoded for listing (an empty one if it does not decode).
fn decoded(raw: &RawDocument) -> Document {
    Document::try_from(raw).unwrap_or_default()
}

/// A registered operation as `$currentOp` shows it; `transaction` is the open transaction's
/// description when the operation is one of its statements.
pub(crate) fn describe(host: &str, op: &Running, transaction: Option<Document>) -> Document {
    let micros = op.started.elapsed().as_micros() as i64;
    let mut d = doc! {
        "type": "op",
        "host": host,
        "desc": format!("conn{}", op.connection),
        "connectionId": op.connection,
        "client": op.client.to_string(),
    };
    if let Some(app) = &op.app_name {
        d.insert("appName", &**app);
    }
    d.insert("active", true);
    d.insert(
        "currentOpTime",
        bson::DateTime::now()
            .try_to_rfc3339_string()
            .unwrap_or_default(),
    );
    d.insert("opid", op.opid);
    if let Some(lsid) = &op.lsid {
        d.insert("lsid", decoded(lsid));
    }
    if let Some(t) = transaction {
        d.insert("transaction", t);
    }
    d.insert("secs_running", micros / 1_000_000);
    d.insert("microsecs_running", micros);
    d.insert("op", op.op);
    d.insert("ns", op.ns.as_str());
    d.insert("command", decoded(&op.command));
    if let Some(plan) = op.stats.plan.get() {
        d.insert("planSummary", plan.summary());
    }
    d.insert("numYields", 0);
    d.insert("locks", Document::new());
    d.insert("waitingForLock", false);
    if op.kill_pending() {
        d.insert("killPending", true);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(ops: &Ops) -> Running {
        Running {
            opid: ops.next_opid(),
            started: Instant::now(),
            connection: 7,
            client: "127.0.0.1:5000".parse().unwrap(),
            app_name: Some("app".into()),
            owner: None,
            op: "query",
            ns: "d.c".into(),
            command: bson::rawdoc! { "find": "c", "comment": "x" },
            lsid: None,
            txn_number: None,
            stats: Arc::default(),
        }
    }

    #[test]
    fn registered_while_the_guard_lives_and_killed_shows_pending() {
        let ops = Ops::default();
        let running = op(&ops);
        let opid = running.opid;
        assert!(opid > 0);
        let guard = ops.register(running);
        let listed = ops.get(opid).expect("listed");
        let shown = describe("h:1", &listed, None);
        assert_eq!(shown.get_i32("opid").unwrap(), opid);
        assert_eq!(shown.get_str("desc").unwrap(), "conn7");
        assert!(!shown.contains_key("killPending"));
        listed.stats.kill();
        assert!(
            describe("h:1", &listed, None)
                .get_bool("killPending")
                .unwrap()
        );
        drop(guard);
        assert!(ops.get(opid).is_none() && ops.list().is_empty());
    }

    #[test]
    fn a_large_command_is_shown_truncated_with_its_comment() {
        let big = bson::rawdoc! { "insert": "c", "pad": "x".repeat(4096), "comment": "mine" };
        let shown = decoded(&shown_command(&big));
        assert!(
            shown
                .get_str("$truncated")
                .unwrap()
                .starts_with("{ insert: ... }")
        );
        assert_eq!(shown.get_str("comment").unwrap(), "mine");
        let small = bson::rawdoc! { "find": "c" };
        assert_eq!(decoded(&shown_command(&small)), doc! { "find": "c" });
    }
}
