//! The auto-commit write path: a write's options (write concern, `maxTimeMS` patience,
//! retryable-write record), its commit, the retry of write conflicts, and the wait for the
//! acknowledgement the write concern asks for. Statements of a transaction bypass it: their
//! transaction commits them.
//!
//! Invariants: a write is acknowledged only after its ticket reports what the concern asks for
//! (visible, or durable: its fdatasync returned); a retryable write's record commits in the same
//! transaction as the statements it records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::raw::RawBsonRef;
use bson::{Document, doc};
use mangrove_storage::{CollectionInfo, CommitMeta, CommitTicket, Txn};

use crate::Shared;
use crate::error::{CommandError, CommandResult, code};
use crate::request::{Request, as_bool, as_i64, type_name};
use crate::retryable::RetryableWrite;

/// How long an auto-commit write keeps retrying write conflicts before giving up. Conflicts
/// between auto-commit writes are brief, since each holds its intents only while it runs.
pub(super) const CONFLICT_RETRY_LIMIT: Duration = Duration::from_secs(60);

/// How long a write waits before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ack {
    /// Visible to readers (written to the log, not yet synced): `w: 0` and `w: 1, j: false`.
    Visible,
    /// On disk: `j: true`, `w: "majority"`, and MongoDB's default write concern (majority).
    Durable,
}

/// What every write of one command shares: how to acknowledge it, and who commits it (for the
/// transaction log).
pub(super) struct WriteOptions {
    pub ack: Ack,
    pub meta: CommitMeta,
    /// The `writeConcernError` to attach to the reply, if the concern cannot be satisfied.
    wc_error: Option<Document>,
    /// `writeConcern.wtimeout`: how long a durable acknowledgement may wait.
    pub wtimeout: Option<Duration>,
    /// The durable wait ran past `wtimeout` (the write itself applied).
    timed_out: std::sync::atomic::AtomicBool,
    /// How long the write may keep waiting out conflicts: `maxTimeMS`, capped by
    /// [`CONFLICT_RETRY_LIMIT`].
    pub patience: Duration,
    /// Set for a retryable write: its statements are recorded in the commits that run them.
    pub retry: Option<Arc<RetryableWrite>>,
    /// `maxTimeMS` as a deadline for the JavaScript (`$where`) a statement's filter runs.
    pub js_deadline: Option<std::time::Instant>,
}

impl WriteOptions {
    pub fn from_request(req: &Request<'_>) -> CommandResult<WriteOptions> {
        let (ack, wc_error, wtimeout) = write_concern(req)?;
        let patience = match req.opt_i64("maxTimeMS")? {
            Some(ms) if ms < 0 => {
                return Err(CommandError::bad_value(format!(
                    "{ms} value for maxTimeMS is out of range"
                )));
            }
            Some(ms) if ms > 0 => Duration::from_millis(ms as u64).min(CONFLICT_RETRY_LIMIT),
            _ => CONFLICT_RETRY_LIMIT,
        };
        Ok(WriteOptions {
            ack,
            meta: req.commit_meta()?,
            wc_error,
            wtimeout,
            timed_out: Default::default(),
            patience,
            retry: None,
            js_deadline: crate::access::deadline_of(req.opt_i64("maxTimeMS")?),
        })
    }

    /// Durable, no deadline beyond the usual: for the server's own bookkeeping writes.
    pub fn from_request_defaults() -> WriteOptions {
        WriteOptions {
            ack: Ack::Durable,
            meta: CommitMeta::default(),
            wc_error: None,
            wtimeout: None,
            timed_out: Default::default(),
            patience: CONFLICT_RETRY_LIMIT,
            retry: None,
            js_deadline: None,
        }
    }
}

impl WriteOptions {
    /// `reply` with the `writeConcernError` it carries, if any, before its `ok` (mongod's order):
    /// a DDL command succeeds even when its concern cannot be satisfied, and says so.
    pub fn finish_reply(&self, mut reply: Document) -> Document {
        if let Some(wce) = self.wc_error() {
            let ok = reply.remove("ok");
            reply.insert("writeConcernError", wce);
            if let Some(ok) = ok {
                reply.insert("ok", ok);
            }
        }
        reply
    }

    /// The `writeConcernError` the reply carries: the concern could not be satisfied, or
    /// `wtimeout` ran out before the write was durable.
    pub fn wc_error(&self) -> Option<Document> {
        self.wc_error.clone().or_else(|| {
            self.timed_out
                .load(std::sync::atomic::Ordering::Relaxed)
                .then(|| {
                    doc! {
                        "code": 64,
                        "codeName": "WriteConcernTimeout",
                        "errmsg": "waiting for replication timed out",
                        "errInfo": { "wtimeout": true, "writeConcern": { "provenance": "clientSupplied" } },
                    }
                })
        })
    }
}

/// Waits for the acknowledgement the write concern asks for. A durable wait longer than
/// `wtimeout` stops waiting and reports WriteConcernTimeout, as mongod does; the write stands.
pub(super) async fn acknowledge(
    mut ticket: CommitTicket,
    opts: &WriteOptions,
) -> CommandResult<()> {
    match (opts.ack, opts.wtimeout) {
        (Ack::Visible, _) => {
            ticket.visible().await?;
        }
        (Ack::Durable, None) => {
            ticket.durable().await?;
        }
        (Ack::Durable, Some(limit)) => {
            ticket.visible().await?;
            match tokio::time::timeout(limit, ticket.durable()).await {
                Ok(result) => {
                    result?;
                }
                Err(_) => opts
                    .timed_out
                    .store(true, std::sync::atomic::Ordering::Relaxed),
            }
        }
    }
    Ok(())
}

/// Runs `op` in an auto-commit transaction and commits it, retrying on write conflicts the way
/// mongod retries them for writes outside transactions.
pub(super) async fn retry_conflicts<T>(
    shared: &Shared,
    opts: &WriteOptions,
    mut op: impl FnMut(&mut Txn) -> CommandResult<T>,
) -> CommandResult<T> {
    let started = Instant::now();
    let mut backoff = Duration::from_micros(200);
    loop {
        let mut txn = shared.engine.begin();
        txn.set_meta(opts.meta.clone());
        match op(&mut txn) {
            Ok(value) => {
                acknowledge(commit_write(shared, opts, txn)?, opts).await?;
                return Ok(value);
            }
            Err(e) if e.code == code::WRITE_CONFLICT => {
                drop(txn);
                if let Some(retry) = &opts.retry {
                    retry.discard();
                }
                if started.elapsed() >= opts.patience {
                    return Err(max_time_expired(opts));
                }
                // killOp ends the retries.
                if crate::op_stats::killed() {
                    return Err(crate::access::interrupted());
                }
                shared.metrics.write_conflict_retried();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Commits an auto-commit transaction. For a retryable write, the statements it ran are
/// recorded in the same commit (see [`crate::retryable`]).
pub(super) fn commit_write(
    shared: &Shared,
    opts: &WriteOptions,
    mut txn: Txn,
) -> CommandResult<CommitTicket> {
    let Some(retry) = &opts.retry else {
        return Ok(txn.commit()?);
    };
    if !retry.has_pending() {
        return Ok(txn.commit()?);
    }
    if let Err(e) = retry.stamp(&mut txn) {
        retry.discard();
        return Err(e);
    }
    let fault = if shared.config.enable_test_commands {
        shared.failpoints.transactional_write()
    } else {
        None
    };
    if let Some(fault) = &fault {
        if fault.close_connection {
            retry
                .close_connection
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(code) = fault.fail_before_commit {
            txn.abort();
            retry.discard();
            return Err(CommandError::new(
                code,
                "Failing write for test due to failpoint onPrimaryTransactionalWrite",
            ));
        }
    }
    match txn.commit() {
        Ok(ticket) => {
            retry.settle();
            Ok(ticket)
        }
        Err(e) => {
            retry.discard();
            Err(e.into())
        }
    }
}

/// A write that waited out its `maxTimeMS` behind another transaction's write intent.
pub(super) fn max_time_expired(opts: &WriteOptions) -> CommandError {
    CommandError::new(
        code::MAX_TIME_MS_EXPIRED,
        format!(
            "operation exceeded time limit: waited {} ms for a document held by another transaction",
            opts.patience.as_millis()
        ),
    )
}

/// Runs a write statement: in the session's transaction if there is one (a conflict there is
/// the transaction's to handle), else in its own auto-commit transaction, retried on conflicts.
pub(super) async fn run_write<T>(
    shared: &Shared,
    opts: &WriteOptions,
    txn: Option<&mut Txn>,
    mut op: impl FnMut(&mut Txn) -> CommandResult<T>,
) -> CommandResult<T> {
    match txn {
        Some(txn) => op(txn),
        None => retry_conflicts(shared, opts, op).await,
    }
}

/// Validates `writeConcern` before the write. Returns how to acknowledge, and the
/// `writeConcernError` to attach after it: a single node can satisfy `w: 1` and `"majority"`,
/// never more.
pub(super) fn write_concern(
    req: &Request<'_>,
) -> CommandResult<(Ack, Option<Document>, Option<Duration>)> {
    let Some(wc) = req.opt_doc("writeConcern")? else {
        return Ok((Ack::Durable, None, None));
    };
    let mut wtimeout = None;
    let mut numeric_w: Option<i64> = None;
    let mut journal: Option<bool> = None;
    let mut error: Option<Document> = None;
    for item in wc.iter() {
        let (key, value) = item
            .map_err(|e| CommandError::new(code::INTERNAL_ERROR, format!("internal error: {e}")))?;
        match key.as_str() {
            "w" => {
                let (n, e) = parse_w(value)?;
                numeric_w = n.or(numeric_w);
                error = e.or(error);
            }
            "j" | "fsync" => match as_bool(value) {
                Some(b) => journal = Some(journal.unwrap_or(false) || b),
                None => {
                    return Err(CommandError::failed_to_parse(format!(
                        "writeConcern.{} must be a boolean, not {}",
                        key.as_str(),
                        type_name(value.element_type())
                    )));
                }
            },
            "wtimeout" | "wTimeout" => match as_i64(value) {
                // 0 means no limit.
                Some(ms) if ms > 0 => wtimeout = Some(Duration::from_millis(ms as u64)),
                Some(_) => {}
                None => {
                    return Err(CommandError::failed_to_parse("wtimeout must be a number"));
                }
            },
            "provenance" | "getLastError" => {}
            other => {
                return Err(CommandError::new(
                    code::UNKNOWN_FIELD,
                    format!("BSON field 'writeConcern.{other}' is an unknown field."),
                ));
            }
        }
    }
    // Only an explicit w: 0 or 1 without j lets a write be acknowledged before its fdatasync.
    let ack = match (numeric_w, journal) {
        (_, Some(true)) => Ack::Durable,
        (Some(0 | 1), _) => Ack::Visible,
        _ => Ack::Durable,
    };
    Ok((ack, error, wtimeout))
}

/// `w`: "majority" (what a single node gives), a tag (unknown here), or a node count of which
/// only 0 and 1 can be satisfied. Returns the count, if numeric, and the `writeConcernError`.
fn parse_w(value: RawBsonRef<'_>) -> CommandResult<(Option<i64>, Option<Document>)> {
    let mut numeric_w = None;
    let mut error = None;
    match value {
        RawBsonRef::String("majority") => {}
        RawBsonRef::String(tag) => {
            error = Some(doc! {
                "code": code::UNKNOWN_REPL_WRITE_CONCERN,
                "codeName": "UnknownReplWriteConcern",
                "errmsg": format!("No write concern mode named '{tag}' found in replica set configuration"),
            });
        }
        v => match as_i64(v) {
            Some(n) if (0..=50).contains(&n) => {
                numeric_w = Some(n);
                if n > 1 {
                    error = Some(doc! {
                        "code": code::UNSATISFIABLE_WRITE_CONCERN,
                        "codeName": "UnsatisfiableWriteConcern",
                        "errmsg": "Not enough data-bearing nodes",
                    });
                }
            }
            Some(n) => {
                return Err(CommandError::failed_to_parse(format!(
                    "w has to be a non-negative number and not greater than 50; found: {n}"
                )));
            }
            None => {
                return Err(CommandError::failed_to_parse(
                    "w has to be a number or a string",
                ));
            }
        },
    }
    Ok((numeric_w, error))
}

/// The code of [`same_keying`]'s error: internal, caught by the statements that check it
/// (their clients never see it, unless the collection changes keying again and again).
pub(super) const REKEYED: i32 = 0x4d47_0001;
/// How many times a statement starts over for [`REKEYED`].
pub(super) const REKEYED_RETRIES: usize = 3;

/// A write prepared its keys for the collection as it looked it up: by `_id`, or by insertion
/// number when capped. If the collection `txn` sees has changed that since
/// (`convertToCapped`), the statement must start over and look it up again, with the capped
/// collection's writer; retrying it in place would conflict until it timed out.
pub(super) fn same_keying(txn: &Txn, coll: &CollectionInfo) -> CommandResult<()> {
    if !keying_changed(txn, coll) {
        return Ok(());
    }
    Err(CommandError::new(
        REKEYED,
        format!(
            "{} became capped while the statement ran; run it again",
            coll.ns()
        ),
    ))
}

/// Whether the collection `txn` sees keys its documents otherwise than `coll`, as the write
/// looked it up, does (it became capped).
pub(super) fn keying_changed(txn: &Txn, coll: &CollectionInfo) -> bool {
    txn.collection(&coll.ns())
        .is_some_and(|now| crate::capped::is_capped(&now) != crate::capped::is_capped(coll))
}
