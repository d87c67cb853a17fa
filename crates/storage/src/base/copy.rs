//! A consistent copy of the base store taken while the checkpointer keeps writing it, for
//! online backups, and the check of such a copy.
//!
//! The copy is logical: every entry of one redb read transaction is written into a new redb
//! file. A read transaction sees exactly one committed checkpoint (redb keeps the pages it
//! reads alive until it ends), so the copy holds that checkpoint and nothing of a later one,
//! however long it takes, and no checkpoint waits for it.
//!
//! Invariants:
//! - Every value is checked against its checksum (documents and catalog entries) or its
//!   record's checksum (the checkpoint record) as it is read: a damaged source fails the copy
//!   with the file and key, and damage is never copied as data.
//! - The copy is written under `<name>.tmp` and renamed only once durable, so a file with the
//!   final name is whole.
//! - Memory stays bounded: entries go to the new file in write transactions of at most
//!   [`COPY_BATCH_BYTES`]; only the last one is made durable, and it also writes the
//!   checkpoint record, so a copy cut short has no checkpoint record and fails to load.
//!
//! Lock order: redb's own locks only (see the engine's lock order, `engine.rs`). The engine
//! opens the read transaction under its `checkpointing` lock, so that it can pin the log the
//! copy needs before any later checkpoint can remove it.

use std::path::Path;

use redb::{Durability, ReadOnlyDatabase, ReadableDatabase, ReadableTable};

use super::{
    CATALOG, DOCS, FORMAT, META, corruption, decode_catalog_entry, decode_doc_value, err, guarded,
    hex, read_meta, write_meta,
};
use crate::{StorageError, Timestamp};

/// Entries written per redb write transaction of a copy.
const COPY_BATCH_BYTES: u64 = 32 * 1024 * 1024;

/// One checkpoint of the base store, held by an open read transaction.
pub(crate) struct BaseSnapshot {
    txn: redb::ReadTransaction,
    path: std::path::PathBuf,
    pub checkpoint: Timestamp,
    next_coll_id: u64,
}

/// What a copy or a check of one read.
#[derive(Clone, Copy, Debug, Default)]
pub struct BaseCopyReport {
    /// Documents and index entries.
    pub values: u64,
    pub catalog_entries: u64,
    /// Keys and values together.
    pub bytes: u64,
}

/// What [`walk`] calls for each entry: (the entry is a document or index entry, key, value).
type Visit<'a> = dyn FnMut(bool, &[u8], &[u8]) -> Result<(), StorageError> + 'a;

/// Visits every document and index entry, then every catalog entry, of a read transaction,
/// each checked; `visit(table is docs, key, value)`.
fn walk(
    txn: &redb::ReadTransaction,
    path: &Path,
    report: &mut BaseCopyReport,
    visit: &mut Visit<'_>,
) -> Result<(), StorageError> {
    let docs = txn.open_table(DOCS).map_err(|e| err("docs table", e))?;
    for entry in docs.iter().map_err(|e| err("scan", e))? {
        let (k, v) = entry.map_err(|e| err("scan", e))?;
        decode_doc_value(k.value(), v.value()).map_err(|detail| {
            corruption(path, format!("value of key {}: {detail}", hex(k.value())))
        })?;
        report.values += 1;
        report.bytes += (k.value().len() + v.value().len()) as u64;
        visit(true, k.value(), v.value())?;
    }
    let catalog = txn
        .open_table(CATALOG)
        .map_err(|e| err("catalog table", e))?;
    for entry in catalog.iter().map_err(|e| err("catalog", e))? {
        let (ns, v) = entry.map_err(|e| err("catalog", e))?;
        decode_catalog_entry(ns.value(), v.value()).map_err(|detail| {
            corruption(path, format!("catalog entry {:?}: {detail}", ns.value()))
        })?;
        report.catalog_entries += 1;
        report.bytes += (ns.value().len() + v.value().len()) as u64;
        visit(false, ns.value().as_bytes(), v.value())?;
    }
    Ok(())
}

impl super::BaseStore {
    /// Opens a read transaction: the checkpoint the store holds now, kept until it is dropped.
    pub(crate) fn snapshot(&self) -> Result<BaseSnapshot, StorageError> {
        self.guard("snapshot", || -> Result<BaseSnapshot, StorageError> {
            let txn = self.db.begin_read().map_err(|e| err("begin", e))?;
            let (checkpoint, next_coll_id) = read_meta(&txn, &self.path)?;
            Ok(BaseSnapshot {
                txn,
                path: self.path.clone(),
                checkpoint: Timestamp(checkpoint),
                next_coll_id,
            })
        })?
    }
}

/// The part of a copy not yet written: a write transaction's worth of entries.
#[derive(Default)]
struct Batch {
    docs: Vec<(Vec<u8>, Vec<u8>)>,
    catalog: Vec<(String, Vec<u8>)>,
    bytes: u64,
}

impl Batch {
    fn write(&mut self, db: &redb::Database, last: Option<(u64, u64)>) -> Result<(), StorageError> {
        let mut txn = db.begin_write().map_err(|e| err("begin", e))?;
        if last.is_none() {
            txn.set_durability(Durability::None)
                .map_err(|e| err("durability", e))?;
        }
        {
            let mut docs = txn.open_table(DOCS).map_err(|e| err("docs table", e))?;
            for (k, v) in self.docs.drain(..) {
                docs.insert(k.as_slice(), v.as_slice())
                    .map_err(|e| err("put", e))?;
            }
            let mut catalog = txn
                .open_table(CATALOG)
                .map_err(|e| err("catalog table", e))?;
            for (ns, v) in self.catalog.drain(..) {
                catalog
                    .insert(ns.as_str(), v.as_slice())
                    .map_err(|e| err("catalog", e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| err("meta table", e))?;
            if let Some((checkpoint, next)) = last {
                write_meta(&mut meta, checkpoint, next, FORMAT)?;
            }
        }
        self.bytes = 0;
        txn.commit().map_err(|e| err("commit", e))
    }
}

impl BaseSnapshot {
    /// Copies this checkpoint into a new redb file at `dest` (which must not exist), checking
    /// every value on the way. `progress(bytes)` after each batch.
    pub(crate) fn copy_to(
        &self,
        dest: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<BaseCopyReport, StorageError> {
        let tmp = dest.with_extension("redb.tmp");
        let _ = std::fs::remove_file(&tmp);
        let out = redb::Database::create(&tmp)
            .map_err(|e| err(&format!("cannot create {}", tmp.display()), e))?;
        let mut report = BaseCopyReport::default();
        let mut batch = Batch::default();
        let mut copied = 0u64;
        guarded(&self.path, "copy", || {
            walk(&self.txn, &self.path, &mut report, &mut |is_doc, k, v| {
                batch.bytes += (k.len() + v.len()) as u64;
                copied += (k.len() + v.len()) as u64;
                if is_doc {
                    batch.docs.push((k.to_vec(), v.to_vec()));
                } else {
                    let ns = String::from_utf8_lossy(k).into_owned();
                    batch.catalog.push((ns, v.to_vec()));
                }
                if batch.bytes >= COPY_BATCH_BYTES {
                    batch.write(&out, None)?;
                    progress(copied);
                }
                Ok(())
            })
        })??;
        batch.write(&out, Some((self.checkpoint.0, self.next_coll_id)))?;
        drop(out);
        progress(report.bytes);
        std::fs::rename(&tmp, dest)
            .map_err(|e| StorageError::io(format!("cannot rename {}", tmp.display()), e))?;
        Ok(report)
    }
}

/// Checks a copied base store without writing to it: its checkpoint record and every value.
/// Returns the checkpoint it holds.
pub fn verify_base_file(path: &Path) -> Result<(Timestamp, BaseCopyReport), StorageError> {
    guarded(path, "verify", || {
        let db = ReadOnlyDatabase::open(path)
            .map_err(|e| corruption(path, format!("cannot open it as a base store: {e}")))?;
        let txn = db.begin_read().map_err(|e| err("begin", e))?;
        let (checkpoint, _) = read_meta(&txn, path)?;
        let mut report = BaseCopyReport::default();
        walk(&txn, path, &mut report, &mut |_, _, _| Ok(()))?;
        Ok((Timestamp(checkpoint), report))
    })?
}
