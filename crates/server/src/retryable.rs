//! Retryable writes: a write sent with `lsid` + `txnNumber` outside a transaction runs at most
//! once, however often the driver retries it.
//!
//! Each statement of such a write (a document of an `insert`, an entry of `update`/`delete`, or
//! the one `findAndModify`) is identified by its index, as mongod numbers `stmtId`s. When a
//! commit carries statements, it also rewrites the session's document in
//! `config.transactions` (`{_id: lsid, txnNum, lastWriteDate, stmts: [{s, r}]}`) with their
//! results, in the same transaction. So the record of what ran is in the same log record as
//! the writes: it is exactly as durable as they are, survives restarts through the ordinary
//! checkpoint and replay, and can never disagree with the data. A retry skips the statements
//! recorded for its `txnNumber` and answers with their recorded results.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bson::{Bson, DateTime, Document, RawDocumentBuf, doc};
use mangrove_storage::{CollectionInfo, DocKey, Txn};

use crate::error::{CommandError, CommandResult};

/// Where session records live, as in mongod.
pub(crate) const SESSIONS_NS: &str = "config.transactions";

/// The statements of one `txnNumber` of one session that have committed, plus those of the
/// commit being prepared.
pub(crate) struct RetryableWrite {
    lsid: Document,
    key: DocKey,
    pub txn_number: i64,
    coll: CollectionInfo,
    executed: Mutex<BTreeMap<i32, Bson>>,
    pending: Mutex<Vec<(i32, Bson)>>,
    /// Set by the `onPrimaryTransactionalWrite` fail point: drop the connection after the
    /// command, so the client must retry.
    pub close_connection: AtomicBool,
}

/// Statements answered from a session's record since the process started (mongod's
/// `transactions.retriedStatementsCount`). Process-wide: one server runs per process.
static RETRIED_STATEMENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many retried statements were answered from a session's record.
pub(crate) fn retried_statements() -> u64 {
    RETRIED_STATEMENTS.load(std::sync::atomic::Ordering::Relaxed)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RetryableWrite {
    /// A record for `txn_number`, continuing `stored` (the session's persisted document) if it
    /// is for the same number.
    pub fn new(
        lsid: Document,
        key: DocKey,
        txn_number: i64,
        coll: CollectionInfo,
        stored: Option<&RawDocumentBuf>,
    ) -> RetryableWrite {
        let mut executed = BTreeMap::new();
        if let Some(stored) = stored
            && let Ok(stored) = Document::try_from(stored.as_ref())
            && stored.get_i64("txnNum").ok() == Some(txn_number)
            && let Ok(stmts) = stored.get_array("stmts")
        {
            for stmt in stmts {
                if let Some(stmt) = stmt.as_document()
                    && let Ok(s) = stmt.get_i32("s")
                    && let Some(r) = stmt.get("r")
                {
                    executed.insert(s, r.clone());
                }
            }
        }
        RetryableWrite {
            lsid,
            key,
            txn_number,
            coll,
            executed: Mutex::new(executed),
            pending: Mutex::new(Vec::new()),
            close_connection: AtomicBool::new(false),
        }
    }

    /// The recorded result of statement `stmt`, if it already ran (the retry is then answered
    /// with it, and counted for the metrics).
    pub fn recorded(&self, stmt: usize) -> Option<Bson> {
        let found = lock(&self.executed).get(&(stmt as i32)).cloned();
        if found.is_some() {
            RETRIED_STATEMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        found
    }

    /// Notes that statement `stmt` ran in the transaction about to commit.
    pub fn note(&self, stmt: usize, result: Bson) {
        lock(&self.pending).push((stmt as i32, result));
    }

    pub fn has_pending(&self) -> bool {
        !lock(&self.pending).is_empty()
    }

    /// Writes the session document, with the pending statements, into `txn`.
    pub fn stamp(&self, txn: &mut Txn) -> CommandResult<()> {
        let pending = lock(&self.pending);
        if pending.is_empty() {
            return Ok(());
        }
        let executed = lock(&self.executed);
        let mut all: BTreeMap<i32, &Bson> = executed.iter().map(|(s, r)| (*s, r)).collect();
        for (s, r) in pending.iter() {
            all.insert(*s, r);
        }
        let stmts: Vec<Bson> = all
            .into_iter()
            .map(|(s, r)| Bson::Document(doc! { "s": s, "r": r.clone() }))
            .collect();
        let record = doc! {
            "_id": self.lsid.clone(),
            "txnNum": self.txn_number,
            "lastWriteDate": DateTime::now(),
            "stmts": stmts,
        };
        let raw = RawDocumentBuf::try_from(&record)
            .map_err(|e| CommandError::new(1, format!("cannot encode session record: {e}")))?;
        let doc = std::sync::Arc::new(raw);
        if txn.get(&self.coll, &self.key)?.is_some() {
            txn.replace(&self.coll, self.key.clone(), doc)?;
        } else {
            txn.insert(&self.coll, self.key.clone(), doc)?;
        }
        Ok(())
    }

    /// The commit carrying the pending statements succeeded.
    pub fn settle(&self) {
        let pending = std::mem::take(&mut *lock(&self.pending));
        lock(&self.executed).extend(pending);
    }

    /// The transaction carrying the pending statements was abandoned.
    pub fn discard(&self) {
        lock(&self.pending).clear();
    }

    pub fn take_close_request(&self) -> bool {
        self.close_connection.swap(false, Ordering::Relaxed)
    }
}
