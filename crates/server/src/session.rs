//! Logical sessions and their multi-document transactions, with MongoDB's state machine: one
//! transaction at a time per session, `txnNumber` only growing, and the error codes and labels
//! drivers use to decide what to retry.
//!
//! A session's transaction belongs to the session, not to a connection: any connection may run
//! its next statement, and closing a connection does not abort it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bson::raw::{RawBsonRef, RawDocument};
use mangrove_storage::Txn;

use crate::error::{CommandError, CommandResult, code};
use crate::request::{Request, type_name};
use crate::retryable::RetryableWrite;

/// The transaction fields of one statement.
pub(crate) struct TxnArgs {
    pub txn_number: i64,
    pub start: bool,
}

/// `Some` when the command is a statement of a multi-document transaction (`autocommit:
/// false`), after checking the fields go together as mongod requires.
pub(crate) fn txn_args(req: &Request<'_>) -> CommandResult<Option<TxnArgs>> {
    let autocommit = match req.get("autocommit") {
        None => {
            if req.get("startTransaction").is_some() {
                return Err(CommandError::new(
                    code::INVALID_OPTIONS,
                    "'startTransaction' field requires 'autocommit' field to also be specified",
                ));
            }
            return Ok(None);
        }
        Some(RawBsonRef::Boolean(b)) => b,
        Some(v) => {
            return Err(CommandError::type_mismatch(format!(
                "BSON field 'autocommit' is the wrong type '{}', expected type 'bool'",
                type_name(v.element_type())
            )));
        }
    };
    if autocommit {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "Specifying autocommit=true is not allowed.",
        ));
    }
    if req.get("lsid").is_none() {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "Transaction numbers are only allowed on a session: 'autocommit' requires 'lsid'",
        ));
    }
    let Some(txn_number) = req.txn_number()? else {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "'autocommit' field requires a transaction number to also be specified",
        ));
    };
    let start = match req.get("startTransaction") {
        None => false,
        Some(RawBsonRef::Boolean(true)) => true,
        Some(_) => {
            return Err(CommandError::new(
                code::INVALID_OPTIONS,
                "'startTransaction' may only be specified as true",
            ));
        }
    };
    Ok(Some(TxnArgs { txn_number, start }))
}

pub(crate) enum TxnState {
    /// No transaction has run under the current `txnNumber`.
    Idle,
    Active(Box<ActiveTxn>),
    Committed,
    Aborted,
}

pub(crate) struct ActiveTxn {
    pub txn: Txn,
    pub started: Instant,
}

pub(crate) struct Session {
    /// The newest transaction number this session has seen.
    pub txn_number: Option<i64>,
    pub state: TxnState,
    pub last_used: Instant,
    /// The statements the newest retryable write ran, if `txn_number` is a retryable write.
    pub retryable: Option<Arc<RetryableWrite>>,
    /// Whether `config.transactions` was consulted for this session since the server started.
    pub record_loaded: bool,
    /// A snapshot session's first read snapshot, held so its later reads at the reported
    /// `atClusterTime` still find the history; with when it was taken.
    pub snapshot_pin: Option<(mangrove_storage::Snapshot, Instant)>,
}

impl Session {
    /// Aborts an open transaction: its intents go back and nothing of it was ever visible.
    pub fn abort(&mut self) {
        if let TxnState::Active(active) = std::mem::replace(&mut self.state, TxnState::Aborted) {
            active.txn.abort();
        }
    }
}

/// Sessions that have run a transaction, by `lsid`. Bounded: past `max` a new session is
/// refused until others end.
pub(crate) struct Sessions {
    map: Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<Session>>>>,
    max: usize,
}

fn lsid_key(lsid: &RawDocument) -> Vec<u8> {
    lsid.as_bytes().to_vec()
}

impl Sessions {
    pub fn new(max: usize) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            max,
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Arc<tokio::sync::Mutex<Session>>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get_or_create(
        &self,
        lsid: &RawDocument,
    ) -> CommandResult<Arc<tokio::sync::Mutex<Session>>> {
        let mut map = self.lock();
        if let Some(s) = map.get(&lsid_key(lsid)) {
            return Ok(s.clone());
        }
        if map.len() >= self.max {
            return Err(CommandError::new(
                code::TOO_MANY_LOGICAL_SESSIONS,
                format!(
                    "Unable to add session into the cache because the number of active sessions is too high ({}); end sessions or raise --max-sessions",
                    self.max
                ),
            ));
        }
        let session = Arc::new(tokio::sync::Mutex::new(Session {
            txn_number: None,
            state: TxnState::Idle,
            last_used: Instant::now(),
            retryable: None,
            record_loaded: false,
            snapshot_pin: None,
        }));
        map.insert(lsid_key(lsid), session.clone());
        Ok(session)
    }

    /// Ends a session, aborting its open transaction.
    pub async fn end(&self, lsid: &RawDocument) {
        let removed = self.lock().remove(&lsid_key(lsid));
        if let Some(session) = removed {
            session.lock().await.abort();
        }
    }

    /// Ends every session (killAllSessions).
    pub async fn end_all(&self) {
        let all: Vec<_> = self.lock().drain().map(|(_, s)| s).collect();
        for session in all {
            session.lock().await.abort();
        }
    }

    /// Aborts transactions open longer than `limit` (`transactionLifetimeLimitSeconds`);
    /// their next statement gets NoSuchTransaction. Sessions in use right now are skipped and
    /// looked at on the next round.
    pub fn reap_expired(&self, limit: std::time::Duration) -> usize {
        let sessions: Vec<_> = self.lock().values().cloned().collect();
        let mut aborted = 0;
        for session in sessions {
            let Ok(mut s) = session.try_lock() else {
                continue;
            };
            if let TxnState::Active(active) = &s.state
                && active.started.elapsed() > limit
            {
                tracing::info!(
                    txn_number = s.txn_number,
                    open_secs = active.started.elapsed().as_secs(),
                    limit_secs = limit.as_secs(),
                    "aborting transaction: it exceeded transactionLifetimeLimitSeconds"
                );
                s.abort();
                aborted += 1;
            }
        }
        aborted
    }

    pub fn open_transactions(&self) -> usize {
        self.lock()
            .values()
            .filter(|s| {
                s.try_lock()
                    .map(|s| matches!(s.state, TxnState::Active(_)))
                    .unwrap_or(true)
            })
            .count()
    }
}

/// Commands a transaction may run; anything else is OperationNotSupportedInTransaction.
pub(crate) fn allowed_in_transaction(name: &str) -> bool {
    matches!(
        name,
        "find"
            | "insert"
            | "update"
            | "delete"
            | "findAndModify"
            | "aggregate"
            | "distinct"
            | "create"
            | "findandmodify"
            | "getMore"
            | "killCursors"
            | "commitTransaction"
            | "abortTransaction"
    )
}

pub(crate) fn no_such_transaction(message: String) -> CommandError {
    transient(CommandError::new(code::NO_SUCH_TRANSACTION, message))
}

/// Errors after which the whole transaction may succeed if retried from the start.
pub(crate) fn transient(mut e: CommandError) -> CommandError {
    if matches!(
        e.code,
        code::WRITE_CONFLICT | code::NO_SUCH_TRANSACTION | code::LOCK_TIMEOUT
    ) && !e.labels.contains(&"TransientTransactionError")
    {
        e.labels.push("TransientTransactionError");
    }
    e
}

/// Brings the session to the statement's `txnNumber`, starting a transaction if asked, or says
/// why the statement cannot run.
pub(crate) fn begin_or_continue(
    session: &mut Session,
    args: &TxnArgs,
    begin: impl FnOnce() -> CommandResult<Txn>,
) -> CommandResult<()> {
    let n = args.txn_number;
    match session.txn_number {
        Some(current) if n < current => {
            let verb = if args.start { "start" } else { "continue" };
            return Err(CommandError::new(
                code::TRANSACTION_TOO_OLD,
                format!(
                    "Cannot {verb} transaction {n} on session because a newer transaction with txnNumber {current} has already started on this session."
                ),
            ));
        }
        Some(current) if n == current => {
            if args.start {
                return Err(CommandError::new(
                    code::CONFLICTING_OPERATION_IN_PROGRESS,
                    format!("Transaction {n} has already been started on this session"),
                ));
            }
            return Ok(());
        }
        _ => {}
    }
    if !args.start {
        return Err(no_such_transaction(format!(
            "Given transaction number {n} does not match any in-progress transactions. The active transaction number is {}",
            session.txn_number.unwrap_or(-1)
        )));
    }
    // A newer transaction number aborts whatever the session had open.
    session.abort();
    let txn = begin()?;
    session.txn_number = Some(n);
    session.state = TxnState::Active(Box::new(ActiveTxn {
        txn,
        started: Instant::now(),
    }));
    Ok(())
}
