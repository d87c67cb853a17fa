//! `mangrove verify`'s look at indexes: every index entry checked against the documents, both
//! ways, in a snapshot; and natural order (`natural.rs`), each document with one position.
//!
//! Index entries are derived, never logged (see the engine's invariants), so a disagreement
//! between an index and its documents can only come from damage or a bug; either way the
//! report names the collection, the index and the key, and nothing is repaired.
//!
//! Both walks go in batches of [`BATCH`] keys: the snapshot's scans hold the engine lock while
//! they visit, and the checks read the engine again, so they run between batches.
//!
//! Lock order: `state` (read) per batch and per check, never nested. See the engine's lock
//! order (`engine.rs`).

use std::ops::{Bound, ControlFlow};

use super::catalog::{CollectionInfo, IndexInfo, MULTIKEY_MARKER, entry_target};
use super::snapshot::Snapshot;
use super::{DocKey, StoredDoc};
use crate::StorageError;

const BATCH: usize = 1_000;

/// What [`Snapshot::verify_indexes`] found.
#[derive(Debug, Default)]
pub struct IndexVerifyReport {
    pub collections: u64,
    pub documents: u64,
    pub entries: u64,
    pub problems: Vec<String>,
}

impl Snapshot {
    /// Checks that every document's derived entries exist and point at it, and that every
    /// entry points at a document that derives it. Damage met on the way (a checksum) is an
    /// error; disagreements are the report's problems.
    pub fn verify_indexes(&self) -> Result<IndexVerifyReport, StorageError> {
        let mut report = IndexVerifyReport::default();
        for db in self.list_databases() {
            for coll in self.list_collections(&db) {
                report.collections += 1;
                self.check_documents(&coll, &mut report)?;
                self.check_natural(&coll, &mut report)?;
                for index in &coll.indexes {
                    self.check_entries(&coll, index, &mut report)?;
                }
            }
        }
        Ok(report)
    }

    /// [`Snapshot::verify_indexes`] for one collection; also the entries each index holds, in
    /// the collection's index order (`validate`'s `keysPerIndex`).
    pub fn verify_collection(
        &self,
        coll: &CollectionInfo,
    ) -> Result<(IndexVerifyReport, Vec<u64>), StorageError> {
        let mut report = IndexVerifyReport {
            collections: 1,
            ..Default::default()
        };
        self.check_documents(coll, &mut report)?;
        self.check_natural(coll, &mut report)?;
        let mut per_index = Vec::with_capacity(coll.indexes.len());
        for index in &coll.indexes {
            let before = report.entries;
            self.check_entries(coll, index, &mut report)?;
            per_index.push(report.entries - before);
        }
        Ok((report, per_index))
    }

    /// Every document's entries, in every index of the collection.
    fn check_documents(
        &self,
        coll: &CollectionInfo,
        report: &mut IndexVerifyReport,
    ) -> Result<(), StorageError> {
        let mut after: Option<DocKey> = None;
        loop {
            let batch = self.batch_of(coll.id, after.as_ref())?;
            for (key, doc) in &batch {
                report.documents += 1;
                for index in &coll.indexes {
                    self.check_document(coll, index, key, doc, report)?;
                }
            }
            match batch.last() {
                Some((key, _)) if batch.len() == BATCH => after = Some(key.clone()),
                _ => return Ok(()),
            }
        }
    }

    fn check_document(
        &self,
        coll: &CollectionInfo,
        index: &IndexInfo,
        key: &DocKey,
        doc: &StoredDoc,
        report: &mut IndexVerifyReport,
    ) -> Result<(), StorageError> {
        let keys = match index.key.keys(doc) {
            Ok(keys) => keys,
            Err(e) => {
                report.problems.push(format!(
                    "{}: document {} cannot be indexed by {}: {e}",
                    coll.ns(),
                    hex(&key.0),
                    index.key.name
                ));
                return Ok(());
            }
        };
        for index_key in keys {
            let entry = index.entry_key(&index_key, key);
            let problem = match self.get_in(index.id, &entry)? {
                None => "has no entry",
                Some(value) if entry_target(&value).as_ref() != Some(key) => {
                    "has an entry pointing at another document"
                }
                Some(_) => continue,
            };
            report.problems.push(format!(
                "{}: index {}: document {} {problem} for key {}",
                coll.ns(),
                index.key.name,
                hex(&key.0),
                hex(&index_key)
            ));
        }
        Ok(())
    }

    /// Every entry of one index points at a document that derives it.
    fn check_entries(
        &self,
        coll: &CollectionInfo,
        index: &IndexInfo,
        report: &mut IndexVerifyReport,
    ) -> Result<(), StorageError> {
        let mut after: Option<DocKey> = None;
        loop {
            let batch = self.batch_of(index.id, after.as_ref())?;
            for (entry, value) in &batch {
                if entry.0 == MULTIKEY_MARKER {
                    continue;
                }
                report.entries += 1;
                if let Some(problem) = self.entry_problem(index, coll, entry, value)? {
                    report.problems.push(format!(
                        "{}: index {}: entry {} {problem}",
                        coll.ns(),
                        index.key.name,
                        hex(&entry.0)
                    ));
                }
            }
            match batch.last() {
                Some((key, _)) if batch.len() == BATCH => after = Some(key.clone()),
                _ => return Ok(()),
            }
        }
    }

    fn entry_problem(
        &self,
        index: &IndexInfo,
        coll: &CollectionInfo,
        entry: &DocKey,
        value: &StoredDoc,
    ) -> Result<Option<&'static str>, StorageError> {
        let Some(target) = entry_target(value) else {
            return Ok(Some("has no document key"));
        };
        let Some(doc) = self.get_in(coll.id, &target)? else {
            return Ok(Some("points at a missing document"));
        };
        let derived = index
            .key
            .keys(&doc)
            .unwrap_or_default()
            .iter()
            .any(|k| index.entry_key(k, &target) == *entry);
        Ok((!derived).then_some("is not derived from the document it points at"))
    }

    /// Up to [`BATCH`] keys of a keyspace after `after`, with their values.
    fn batch_of(
        &self,
        id: u64,
        after: Option<&DocKey>,
    ) -> Result<Vec<(DocKey, StoredDoc)>, StorageError> {
        let mut batch = Vec::with_capacity(BATCH);
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.scan_in(id, lower, Bound::Unbounded, false, |key, doc| {
            batch.push((key.clone(), doc.clone()));
            if batch.len() == BATCH {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        Ok(batch)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
