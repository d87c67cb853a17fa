//! Cursor replies: the `{cursor: {firstBatch|nextBatch, id, ns}}` shape, a first batch that
//! leaves the rest in a cursor for `getMore`, and the transaction such a cursor belongs to.

use std::time::Instant;

use bson::RawDocumentBuf;
use bson::raw::{RawArrayBuf, cstr};
use mangrove_storage::Txn;

use crate::Shared;
use crate::cursor::{BatchDoc, Cursor, Source, TxnOwner};
use crate::error::CommandResult;
use crate::request::Request;

use super::Reply;

/// mongod's default first batch when the client gives no batchSize.
pub(super) const DEFAULT_FIRST_BATCH: u64 = 101;

/// `{cursor: {<batch_field>: [...], id, ns}, ok: 1}`, built raw so documents are copied once.
pub(super) fn cursor_reply(
    ns: &str,
    id: i64,
    batch_field: &str,
    batch: &[BatchDoc],
) -> RawDocumentBuf {
    cursor_reply_with_token(ns, id, batch_field, batch, None)
}

/// [`cursor_reply`] with a `postBatchResumeToken` after the batch (change streams, the oplog).
pub(super) fn cursor_reply_with_token(
    ns: &str,
    id: i64,
    batch_field: &str,
    batch: &[BatchDoc],
    post_batch_token: Option<RawDocumentBuf>,
) -> RawDocumentBuf {
    let mut docs = RawArrayBuf::new();
    for d in batch {
        docs.push(d.as_raw());
    }
    let mut cursor = RawDocumentBuf::new();
    if batch_field == "firstBatch" {
        cursor.append(cstr!("firstBatch"), docs);
    } else {
        cursor.append(cstr!("nextBatch"), docs);
    }
    if let Some(token) = post_batch_token {
        cursor.append(cstr!("postBatchResumeToken"), token);
    }
    cursor.append(cstr!("id"), id);
    cursor.append(cstr!("ns"), ns);
    let mut reply = RawDocumentBuf::new();
    reply.append(cstr!("cursor"), cursor);
    reply.append(cstr!("ok"), 1.0);
    reply
}

/// The first batch of a pipeline's output; the rest stays in a cursor for `getMore`.
pub(super) fn pipeline_cursor(
    shared: &Shared,
    ns: String,
    output: Vec<RawDocumentBuf>,
    batch_size: Option<u64>,
    txn: Option<TxnOwner>,
) -> CommandResult<Reply> {
    let cursor = Cursor {
        ns,
        source: Source::Buffered(output.into_iter().map(BatchDoc::Owned).collect()),
        projection: None,
        remaining: None,
        last_used: Instant::now(),
        txn,
        time_left: None,
    };
    first_batch(shared, cursor, batch_size, false)
}

/// The reply with `cursor`'s first batch (`batch_size`, or mongod's default); the cursor is kept
/// for `getMore` unless that batch exhausted it or the client asked for a single batch.
pub(super) fn first_batch(
    shared: &Shared,
    mut cursor: Cursor,
    batch_size: Option<u64>,
    single_batch: bool,
) -> CommandResult<Reply> {
    let ns = cursor.ns.clone();
    let (batch, exhausted) = cursor.next_batch(Some(batch_size.unwrap_or(DEFAULT_FIRST_BATCH)))?;
    let id = if exhausted || single_batch {
        0
    } else {
        shared.cursors.insert(cursor)?
    };
    Ok(Reply::Raw(cursor_reply(&ns, id, "firstBatch", &batch)))
}

/// The transaction a cursor opened by this request belongs to.
pub(super) fn txn_owner(req: &Request<'_>, txn: Option<&Txn>) -> Option<TxnOwner> {
    txn?;
    let lsid = req.lsid().ok()??;
    Some(TxnOwner {
        lsid: lsid.as_bytes().to_vec(),
        txn_number: req.txn_number().ok()??,
    })
}
