//! A session's durable record in `config.transactions`: where it lives, restoring a session
//! from it after a restart, and writing "transaction n committed" into a committing transaction.

use std::sync::Arc;

use bson::raw::{RawBsonRef, RawDocument};
use bson::{Document, RawDocumentBuf, doc};
use mangrove_storage::{CollectionInfo, DocKey, Txn};

use crate::Shared;
use crate::access::key_of;
use crate::error::{CommandError, CommandResult};
use crate::retryable::{self, RetryableWrite};
use crate::session::{Session, TxnState};

use super::super::collections::implicit_collection;
use super::super::write_path::WriteOptions;

/// Where a session's durable record lives in `config.transactions`.
pub(super) struct SessionRecord {
    pub coll: CollectionInfo,
    pub key: DocKey,
    pub lsid: Document,
}

/// Where the session's record lives. Computed only when a record is read or written: the first
/// use of a session since the server started, a new retryable write, a commit with writes.
pub(super) async fn session_record(
    shared: &Shared,
    lsid: &RawDocument,
) -> CommandResult<SessionRecord> {
    let opts = WriteOptions::from_request_defaults();
    Ok(SessionRecord {
        coll: implicit_collection(shared, retryable::SESSIONS_NS, &opts).await?,
        key: key_of(RawBsonRef::Document(lsid)),
        lsid: Document::try_from(lsid)
            .map_err(|e| CommandError::bad_value(format!("lsid: {e}")))?,
    })
}

/// The first time a session is used since the server started, restores its state from its
/// `config.transactions` record: the last retryable write and its statements, or the last
/// committed transaction (so a commit retried across a restart still answers "committed"
/// instead of inviting the driver to run the transaction again). Returns the record's location
/// when it had to compute it.
pub(super) async fn restore_session(
    shared: &Shared,
    session: &mut Session,
    lsid: &RawDocument,
) -> CommandResult<Option<SessionRecord>> {
    if session.record_loaded {
        return Ok(None);
    }
    let record = session_record(shared, lsid).await?;
    session.record_loaded = true;
    if let Some(stored) = shared.engine.snapshot().get(&record.coll, &record.key)? {
        let fields = Document::try_from(stored.as_ref() as &RawDocument).ok();
        let stored_n = fields.as_ref().and_then(|d| d.get_i64("txnNum").ok());
        let committed_txn = fields
            .as_ref()
            .is_some_and(|d| d.get_str("state").ok() == Some("committed"));
        if let Some(stored_n) = stored_n
            && session.txn_number.is_none_or(|cur| stored_n > cur)
        {
            session.txn_number = Some(stored_n);
            if committed_txn {
                session.state = TxnState::Committed;
            } else {
                session.retryable = Some(Arc::new(RetryableWrite::new(
                    record.lsid.clone(),
                    record.key.clone(),
                    stored_n,
                    record.coll.clone(),
                    Some(&stored),
                )));
            }
        }
    }
    Ok(Some(record))
}

/// Writes "transaction `n` committed" into the committing transaction itself, so the outcome is
/// exactly as durable as the transaction.
pub(super) fn record_commit(txn: &mut Txn, record: &SessionRecord, n: i64) -> CommandResult<()> {
    let doc = doc! {
        "_id": record.lsid.clone(),
        "txnNum": n,
        "state": "committed",
        "lastWriteDate": bson::DateTime::now(),
    };
    let raw =
        Arc::new(RawDocumentBuf::try_from(&doc).map_err(|e| CommandError::new(1, e.to_string()))?);
    if txn.get(&record.coll, &record.key)?.is_some() {
        txn.replace(&record.coll, record.key.clone(), raw)?;
    } else {
        txn.insert(&record.coll, record.key.clone(), raw)?;
    }
    Ok(())
}
