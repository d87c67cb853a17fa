//! Checking out a session for one command, and bringing it to a statement's `txnNumber`:
//! starting a transaction, or continuing the open one.

use std::sync::Arc;
use std::time::Instant;

use bson::raw::RawDocument;
use mangrove_storage::Txn;
use tokio::sync::OwnedMutexGuard;

use crate::Shared;
use crate::error::{CommandError, CommandResult, code};
use crate::request::TxnArgs;
use crate::session::{ActiveTxn, OpenTransactions, Session, Touched, TxnState};

/// The session `lsid` names (created if new), locked for one command and marked used now.
pub(in crate::commands) async fn checkout(
    shared: &Shared,
    lsid: &RawDocument,
    owner: Option<&str>,
) -> CommandResult<OwnedMutexGuard<Session>> {
    let handle = shared.sessions.get_or_create(lsid, owner)?;
    let mut session = handle.lock_owned().await;
    session.last_used = Instant::now();
    Ok(session)
}

/// NoSuchTransaction; `commands::run` labels it TransientTransactionError, as mongod does.
pub(super) fn no_such_transaction(message: String) -> CommandError {
    CommandError::new(code::NO_SUCH_TRANSACTION, message)
}

/// Brings the session to the statement's `txnNumber`, starting a transaction if asked, or says
/// why the statement cannot run.
pub(super) fn begin_or_continue(
    session: &mut Session,
    args: &TxnArgs,
    open: &Arc<OpenTransactions>,
    lsid: &RawDocument,
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
    session.abort("a newer transaction started on the session");
    let txn = begin()?;
    open.stats
        .started
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    session.txn_number = Some(n);
    session.state = TxnState::Active(Box::new(ActiveTxn {
        txn,
        started: Instant::now(),
        touched: Touched::new(open, bson::Document::try_from(lsid).unwrap_or_default(), n),
    }));
    Ok(())
}
