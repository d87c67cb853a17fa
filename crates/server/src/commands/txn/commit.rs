//! Ending a transaction: `commitTransaction` (the outcome recorded in the committing
//! transaction itself, then acknowledged as its write concern asks) and `abortTransaction`.

use std::sync::atomic::Ordering;

use bson::doc;
use bson::raw::RawDocument;

use crate::Shared;
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;
use crate::session::{ActiveTxn, Session, TxnState};

use super::super::Reply;
use super::super::write_path::{self, WriteOptions};
use super::record;
use super::state::no_such_transaction;

/// Transactions open at least this long are logged when they commit.
const SLOW_TRANSACTION_MS: u64 = 1_000;

/// `commitTransaction` for transaction `n`: commits the open transaction, or answers a retry
/// with the outcome it already had.
pub(super) async fn commit(
    shared: &Shared,
    session: &mut Session,
    req: &Request<'_>,
    lsid: &RawDocument,
    n: i64,
) -> CommandResult<Reply> {
    let opts = WriteOptions::from_request(req)?;
    match std::mem::replace(&mut session.state, TxnState::Committed) {
        TxnState::Active(active) => commit_active(shared, session, active, lsid, n, &opts).await?,
        // A retried commit returns the original outcome.
        TxnState::Committed => {}
        TxnState::Aborted => {
            session.state = TxnState::Aborted;
            return Err(no_such_transaction(format!(
                "Transaction {n} has been aborted."
            )));
        }
        TxnState::Idle => {
            session.state = TxnState::Idle;
            return Err(no_such_transaction(format!(
                "Transaction {n} does not exist on this session"
            )));
        }
    }
    let mut reply = doc! {};
    if let Some(wce) = opts.wc_error() {
        reply.insert("writeConcernError", wce);
    }
    reply.insert("ok", 1.0);
    Ok(reply.into())
}

/// Commits the open transaction (the session already says Committed) and waits for the write
/// concern. The transaction stays registered as open until this returns.
async fn commit_active(
    shared: &Shared,
    session: &mut Session,
    mut active: Box<ActiveTxn>,
    lsid: &RawDocument,
    n: i64,
    opts: &WriteOptions,
) -> CommandResult<()> {
    let open_ms = active.started.elapsed().as_millis() as u64;
    let recorded = if active.txn.is_read_only() {
        Ok(())
    } else {
        match record::session_record(shared, lsid).await {
            Ok(record) => record::record_commit(&mut active.txn, &record, n),
            Err(e) => Err(e),
        }
    };
    if let Err(e) = recorded {
        commit_failed(shared, session, n, &e.message);
        return Err(e);
    }
    let ticket = match active.txn.commit() {
        Ok(ticket) => ticket,
        Err(e) => {
            commit_failed(shared, session, n, &e.to_string());
            return Err(e.into());
        }
    };
    shared
        .sessions
        .open
        .stats
        .committed
        .fetch_add(1, Ordering::Relaxed);
    if open_ms >= SLOW_TRANSACTION_MS {
        tracing::info!(lsid = %session.lsid, txn_number = n, open_ms, "slow transaction committed");
    }
    if let Err(mut e) = write_path::acknowledge(ticket, opts).await {
        // Queued but not confirmed durable: the outcome is unknown to us too.
        e.labels.push("UnknownTransactionCommitResult");
        return Err(e);
    }
    Ok(())
}

/// A commit that could not be made: the transaction ends aborted (its intents already went back
/// with its dropped `Txn`), counted and logged like every abort.
fn commit_failed(shared: &Shared, session: &mut Session, n: i64, reason: &str) {
    session.state = TxnState::Aborted;
    shared
        .sessions
        .open
        .stats
        .aborted
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(lsid = %session.lsid, txn_number = n, reason, "transaction aborted: its commit failed");
}

/// `abortTransaction` for transaction `n`.
pub(super) fn abort(session: &mut Session, n: i64) -> CommandResult<Reply> {
    match &session.state {
        TxnState::Active(_) => {
            session.abort("abortTransaction");
            Ok(doc! { "ok": 1.0 }.into())
        }
        TxnState::Committed => Err(CommandError::new(
            code::TRANSACTION_COMMITTED,
            format!("Transaction {n} has been committed."),
        )),
        TxnState::Aborted | TxnState::Idle => Err(CommandError::new(
            code::NO_SUCH_TRANSACTION,
            format!("Transaction {n} has been aborted."),
        )),
    }
}
