//! A logical session's transactions and retryable writes: the session state machine, in one
//! place. The states are [`TxnState`] (in `session.rs`, with the session they belong to); a
//! session also keeps the newest `txnNumber` it has seen, which only grows.
//!
//! ```text
//! from          event (txnNumber n; current = the session's newest)       to
//! any           n < current                                              (TransactionTooOld)
//! any           startTransaction, n > current (an Active one aborts)      Active(n)
//! Active(n)     startTransaction again with n                            (ConflictingOperationInProgress)
//! Active(n)     statement n succeeds                                      Active(n)
//! Active(n)     statement n fails, or replies with writeErrors            Aborted
//! Active(n)     commitTransaction n                                       Committed (Aborted if the commit fails)
//! Active(n)     abortTransaction n, session ended or killed,
//!               transactionLifetimeLimitSeconds, newer n                  Aborted
//! Committed     commitTransaction n (a retry)                             Committed, same reply
//! Committed     statement or abortTransaction n                          (TransactionCommitted)
//! Aborted/Idle  statement, commit or abort n                             (NoSuchTransaction)
//! any           retryable write, n > current                             Idle, a new RetryableWrite(n)
//! Idle          retryable write n again                                   its recorded statements answer
//! first use     since the server started                                 restored from config.transactions
//! ```
//!
//! - `state.rs`: session checkout, and starting or continuing a transaction.
//! - `commit.rs`: commit and abort.
//! - `retryable.rs`: retryable writes (`txnNumber` without `autocommit`).
//! - `record.rs`: the session's durable record in `config.transactions`.
//!
//! The session's lock is held for the whole command, so one session runs one command at a time.

mod commit;
mod record;
mod retryable;
mod state;

use std::sync::atomic::Ordering;

use crate::Shared;
use crate::error::{CommandError, CommandResult, code};
use crate::request::{Request, TxnArgs};
use crate::session::{Session, TxnState};

use super::Reply;
use super::handshake::Client;
use super::table::{Call, Command, InTxn};

pub(super) use retryable::retryable_write;
pub(super) use state::checkout;

/// Runs a statement of a multi-document transaction, or commits or aborts one.
pub(super) async fn in_transaction(
    shared: &Shared,
    client: &mut Client,
    req: &Request<'_>,
    cmd: &Command,
    args: TxnArgs,
) -> CommandResult<Reply> {
    let lsid = req
        .statement_lsid()?
        .ok_or_else(|| CommandError::new(code::INVALID_OPTIONS, "a transaction needs an lsid"))?;
    let mut session = checkout(shared, lsid, req.owner.as_deref()).await?;
    check_statement(req, cmd, &args)?;
    record::restore_session(shared, &mut session, lsid).await?;
    // The log record's session metadata is built once, when the transaction begins.
    state::begin_or_continue(&mut session, &args, &shared.sessions.open, lsid, || {
        let mut txn = shared.engine.begin();
        let mut meta = req.commit_meta()?;
        meta.in_transaction = true;
        txn.set_meta(meta);
        Ok(txn)
    })?;
    let n = args.txn_number;
    match cmd.in_txn {
        InTxn::Commit => commit::commit(shared, &mut session, req, lsid, n).await,
        InTxn::Abort => commit::abort(&mut session, n),
        InTxn::Statement | InTxn::Refused => {
            statement(shared, client, &mut session, req, cmd, n).await
        }
    }
}

/// What a transaction refuses before touching its state: commands it cannot run, a write
/// concern on a statement, a read concern after the first statement.
fn check_statement(req: &Request<'_>, cmd: &Command, args: &TxnArgs) -> CommandResult<()> {
    if cmd.in_txn == InTxn::Refused {
        return Err(CommandError::new(
            code::OPERATION_NOT_SUPPORTED_IN_TRANSACTION,
            format!("Cannot run '{}' in a multi-document transaction.", req.name),
        ));
    }
    let finishing = matches!(cmd.in_txn, InTxn::Commit | InTxn::Abort);
    if req.get("writeConcern").is_some() && !finishing {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "Cannot set write concern after starting a transaction.",
        ));
    }
    if req.get("readConcern").is_some() && !args.start {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "Only the first command in a transaction may specify a readConcern",
        ));
    }
    Ok(())
}

/// Runs one statement in the session's open transaction `n`.
async fn statement(
    shared: &Shared,
    client: &mut Client,
    session: &mut Session,
    req: &Request<'_>,
    cmd: &Command,
    n: i64,
) -> CommandResult<Reply> {
    let active = match &mut session.state {
        TxnState::Active(active) => active,
        TxnState::Committed => {
            return Err(CommandError::new(
                code::TRANSACTION_COMMITTED,
                format!("Transaction {n} has been committed."),
            ));
        }
        TxnState::Aborted | TxnState::Idle => {
            return Err(state::no_such_transaction(format!(
                "Transaction {n} has been aborted."
            )));
        }
    };
    active
        .touched
        .statement_started(req.collection().ok().map(|coll| req.ns(coll)));
    let call = Call {
        txn: Some(&mut active.txn),
        ..Call::plain(shared, client, req)
    };
    let result = cmd.handler.call(call).await;
    if let TxnState::Active(active) = &session.state {
        active.touched.statement_finished();
    }
    settle_statement(shared, session, req, result)
}

/// Any failed statement aborts the transaction, as in mongod.
fn settle_statement(
    shared: &Shared,
    session: &mut Session,
    req: &Request<'_>,
    result: CommandResult<Reply>,
) -> CommandResult<Reply> {
    match result {
        Ok(Reply::Doc(reply)) if reply.contains_key("writeErrors") => {
            session.abort(&format!("a write error in '{}'", req.name));
            Ok(Reply::Doc(reply))
        }
        Ok(reply) => Ok(reply),
        Err(e) => {
            if e.code == code::WRITE_CONFLICT {
                shared
                    .sessions
                    .open
                    .stats
                    .write_conflicts
                    .fetch_add(1, Ordering::Relaxed);
            }
            session.abort(&format!(
                "'{}' failed: {} ({})",
                req.name, e.code_name, e.message
            ));
            // Labels (TransientTransactionError) are added in `run`, as for every error.
            Err(e)
        }
    }
}
