//! The collection a statement reads or writes, as its transaction (if any) or the latest commit
//! sees it, and the implicit creation of a write's collection.

use bson::Document;
use mangrove_storage::{CollectionInfo, Txn};

use crate::Shared;
use crate::error::CommandResult;

use super::write_path::{WriteOptions, retry_conflicts};

/// The collection a statement of a transaction names. A collection created after the
/// transaction's snapshot (implicitly, by this or another transaction) is used too: creation is
/// committed on its own so that concurrent transactions never conflict on it, and the
/// transaction still reads only its snapshot's documents plus its own writes.
pub(super) fn collection_in_txn(shared: &Shared, txn: &Txn, ns: &str) -> Option<CollectionInfo> {
    txn.collection(ns)
        .or_else(|| shared.engine.snapshot().collection(ns))
}

/// The snapshot a read command reads (a `snapshot` read concern's, or the latest commit's) and
/// the collection it names, as its transaction (if any) or that snapshot sees it.
pub(super) fn read_target(
    shared: &Shared,
    req: &crate::request::Request<'_>,
    txn: Option<&Txn>,
    at: Option<mangrove_storage::Snapshot>,
) -> crate::error::CommandResult<(mangrove_storage::Snapshot, Option<CollectionInfo>)> {
    let ns = req.ns(req.collection()?);
    let snapshot = at.unwrap_or_else(|| shared.engine.snapshot());
    let coll = match txn {
        Some(txn) => collection_in_txn(shared, txn, &ns),
        None => snapshot.collection(&ns),
    };
    Ok((snapshot, coll))
}

/// The collection a write statement names, as its transaction (if any) or the latest commit
/// sees it.
pub(super) fn collection_for_write(
    shared: &Shared,
    txn: Option<&Txn>,
    ns: &str,
) -> Option<CollectionInfo> {
    match txn {
        Some(t) => collection_in_txn(shared, t, ns),
        None => shared.engine.snapshot().collection(ns),
    }
}

/// Creates the collection a write goes to if it does not exist, as MongoDB does implicitly.
pub(super) async fn implicit_collection(
    shared: &Shared,
    ns: &str,
    opts: &WriteOptions,
) -> CommandResult<CollectionInfo> {
    if let Some(info) = shared.engine.snapshot().collection(ns) {
        return Ok(info);
    }
    retry_conflicts(shared, opts, |txn| {
        Ok(txn.ensure_collection(ns, Document::new())?.0)
    })
    .await
}
