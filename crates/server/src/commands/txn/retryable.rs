//! Retryable writes, the session side: a write with `lsid` + `txnNumber` and no `autocommit`
//! brings its session to that number, and its statements that already ran are answered from
//! the record (see [`crate::retryable`]) instead of running again.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bson::raw::RawDocument;

use crate::Shared;
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;
use crate::retryable::RetryableWrite;
use crate::session::{Session, TxnState};

use super::super::Reply;
use super::super::handshake::Client;
use super::super::table::{Call, Command};
use super::record::{SessionRecord, restore_session, session_record};
use super::state::checkout;

/// A write with `lsid` and `txnNumber` outside a transaction: statements this `txnNumber`
/// already ran are answered from the session's record instead of running again.
pub(in crate::commands) async fn retryable_write(
    shared: &Shared,
    client: &mut Client,
    req: &Request<'_>,
    cmd: &Command,
) -> CommandResult<Reply> {
    let Some(n) = req.txn_number()? else {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "a retryable write needs a txnNumber",
        ));
    };
    let Some(lsid) = req.lsid()? else {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "Transaction number requires a session ID to also be specified",
        ));
    };
    let mut session = checkout(shared, lsid, req.owner.as_deref()).await?;
    let retry = begin_retryable_write(shared, &mut session, lsid, n).await?;
    let call = Call {
        retry: Some(retry.clone()),
        ..Call::plain(shared, client, req)
    };
    let result = cmd.handler.call(call).await;
    if retry.take_close_request() {
        req.close_connection.store(true, Ordering::Relaxed);
    }
    result
}

/// Brings the session to retryable write `n`: the record of what `n` already ran (from memory,
/// or from `config.transactions` after a restart), or a fresh one for a newer `n`.
async fn begin_retryable_write(
    shared: &Shared,
    session: &mut Session,
    lsid: &RawDocument,
    n: i64,
) -> CommandResult<Arc<RetryableWrite>> {
    let restored = restore_session(shared, session, lsid).await?;
    match session.txn_number {
        Some(current) if n < current => Err(CommandError::new(
            code::TRANSACTION_TOO_OLD,
            format!(
                "Retryable write with txnNumber {n} is prohibited on session because a newer retryable write with txnNumber {current} has already started on this session."
            ),
        )),
        Some(current) if n == current => match &session.retryable {
            Some(r) if r.txn_number == n => Ok(r.clone()),
            _ => Err(CommandError::new(
                code::INCOMPLETE_TRANSACTION_HISTORY,
                format!(
                    "Cannot run a retryable write with txnNumber {n}: the session used that number for a multi-document transaction"
                ),
            )),
        },
        _ => {
            // A newer number ends whatever the session was doing, as a newer transaction would.
            session.abort("a retryable write with a newer txnNumber arrived on the session");
            session.state = TxnState::Idle;
            session.txn_number = Some(n);
            let SessionRecord { coll, key, lsid } = match restored {
                Some(record) => record,
                None => session_record(shared, lsid).await?,
            };
            let record = Arc::new(RetryableWrite::new(lsid, key, n, coll, None));
            session.retryable = Some(record.clone());
            Ok(record)
        }
    }
}
