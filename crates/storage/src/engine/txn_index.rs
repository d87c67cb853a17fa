//! A transaction's index work: keeping secondary indexes in step with its document writes,
//! building and dropping indexes (index DDL), and reading indexes with its own entries merged
//! in.
//!
//! Invariants:
//! - every index entry is written in the same transaction as the document it indexes, so every
//!   snapshot sees indexes that agree with its documents;
//! - all entries of a write are claimed and unique keys checked before any is recorded, so a
//!   refused write leaves nothing behind;
//! - an index build holds the collection's catalog intent, and no other transaction writes the
//!   collection meanwhile (`claim_catalog_for_indexes`).
//!
//! Lock order: `Inner::state` (write) alone, never across the build's scan (which takes it for
//! reading); see the engine's lock order (`engine.rs`).

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use mangrove_bson::KeyInterval;

use super::catalog::{
    CollectionInfo, INDEX_ENTRY_OVERHEAD, IndexInfo, MULTIKEY_MARKER, collect_entries,
    compile_index, entry_target, entry_value, multikey_marker, multikey_value,
};
use super::ranges::{as_ref_bound, empty_range, index_range, merge_overlay, own_range};
use super::txn::Txn;
use super::versions::{State, VersionChain};
use super::{CollId, DocKey, StoredDoc};
use crate::StorageError;
use crate::txlog::LogOp;

/// One entry a write plans: (position of its index in the collection's indexes, entry key,
/// value or `None` to remove it, the index key it encodes).
type PlannedEntry = (usize, DocKey, Option<StoredDoc>, Vec<u8>);

impl Txn {
    /// Updates every index of `coll` for the document under `key` going from `old` to `new`:
    /// all entries are claimed and unique keys checked before any is recorded, so a refused
    /// write leaves nothing behind.
    pub(super) fn write_index_entries(
        &mut self,
        coll: &CollectionInfo,
        key: &DocKey,
        old: Option<&StoredDoc>,
        new: Option<&StoredDoc>,
    ) -> Result<(), StorageError> {
        if coll.indexes.is_empty() {
            return Ok(());
        }
        let planned = self.plan_index_entries(coll, key, old, new)?;
        self.claim_planned(coll, key, new, &planned)?;
        self.record_planned(coll, planned);
        Ok(())
    }

    /// The entries every index of `coll` gains and loses when the document under `key` goes
    /// from `old` to `new`.
    fn plan_index_entries(
        &self,
        coll: &CollectionInfo,
        key: &DocKey,
        old: Option<&StoredDoc>,
        new: Option<&StoredDoc>,
    ) -> Result<Vec<PlannedEntry>, StorageError> {
        let mut planned: Vec<PlannedEntry> = Vec::new();
        for (pos, index) in coll.indexes.iter().enumerate() {
            let keys_of = |d: Option<&StoredDoc>| match d {
                Some(d) => index.key.keys(d).map_err(StorageError::Index),
                None => Ok(Vec::new()),
            };
            // (Only the new document can make the index multikey; the flag is never cleared.)
            let old_keys = keys_of(old)?;
            let (new_keys, multikey) = match new {
                Some(d) => index
                    .key
                    .keys_and_multikey(d)
                    .map_err(StorageError::Index)?,
                None => (Vec::new(), false),
            };
            if multikey && !self.index_multikey(index)? {
                planned.push((pos, multikey_marker(), Some(multikey_value()), Vec::new()));
            }
            for k in old_keys
                .iter()
                .filter(|k| new_keys.binary_search(k).is_err())
            {
                planned.push((pos, index.entry_key(k, key), None, k.clone()));
            }
            for k in new_keys
                .iter()
                .filter(|k| old_keys.binary_search(k).is_err())
            {
                planned.push((
                    pos,
                    index.entry_key(k, key),
                    Some(entry_value(key)),
                    k.clone(),
                ));
            }
        }
        Ok(planned)
    }

    /// Claims every planned entry and checks unique keys; on refusal gives back what it
    /// claimed, so nothing is left behind.
    fn claim_planned(
        &mut self,
        coll: &CollectionInfo,
        key: &DocKey,
        new: Option<&StoredDoc>,
        planned: &[PlannedEntry],
    ) -> Result<(), StorageError> {
        let mut claimed: Vec<(CollId, DocKey)> = Vec::new();
        let mut outcome = Ok(());
        for (pos, entry, value, index_key) in planned {
            let index = &coll.indexes[*pos];
            if !self.index_writes.contains_key(&(index.id, entry.clone())) {
                if let Err(e) = self.claim_key(index.id, entry) {
                    outcome = Err(e);
                    break;
                }
                claimed.push((index.id, entry.clone()));
            }
            if value.is_none() || !index.key.unique || entry.0 == MULTIKEY_MARKER {
                continue;
            }
            if let Err(e) = self.check_unique(coll, index, key, entry, new, index_key) {
                outcome = Err(e);
                break;
            }
        }
        if let Err(e) = outcome {
            for (id, entry) in &claimed {
                self.unclaim(*id, entry);
            }
            return Err(e);
        }
        Ok(())
    }

    /// DuplicateKey if the unique `entry` this write adds already points at another document.
    fn check_unique(
        &self,
        coll: &CollectionInfo,
        index: &IndexInfo,
        key: &DocKey,
        entry: &DocKey,
        new: Option<&StoredDoc>,
        index_key: &[u8],
    ) -> Result<(), StorageError> {
        let current = match self.index_writes.get(&(index.id, entry.clone())) {
            Some(own) => Ok(own.clone()),
            None => self.snapshot.get_in(index.id, entry),
        };
        match current {
            Ok(Some(existing)) if entry_target(&existing).as_ref() != Some(key) => {
                let doc = new.expect("an added entry comes from the new document");
                Err(StorageError::DuplicateKey {
                    ns: coll.ns(),
                    index: index.key.name.clone(),
                    key_pattern: Box::new(index.key.key_pattern.clone()),
                    key_value: Box::new(index.key.key_value(doc, index_key)),
                    collation: index_collation(index),
                })
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Records claimed entries and counts the memory they hold.
    fn record_planned(&mut self, coll: &CollectionInfo, planned: Vec<PlannedEntry>) {
        let mut added = 0;
        for (pos, entry, value, _) in planned {
            let cost = entry.0.len() as u64 + INDEX_ENTRY_OVERHEAD;
            if self
                .index_writes
                .insert((coll.indexes[pos].id, entry), value)
                .is_none()
            {
                added += cost;
            }
        }
        // Counted after the fact (a document's entries are few); the next write checks.
        self.bytes += added;
        self.engine()
            .inner
            .open_txn_bytes
            .fetch_add(added, Ordering::Relaxed);
    }

    /// Adds a secondary index to `ns` (a normalized specification, see
    /// [`IndexSpec::normalize`]) and builds it from the documents this transaction sees.
    /// WriteConflict while another transaction writes the collection, or has written it since
    /// this transaction's snapshot: the caller retries with a new transaction.
    pub fn create_index(
        &mut self,
        ns: &str,
        spec: bson::Document,
    ) -> Result<CollectionInfo, StorageError> {
        let coll = self.explicit_collection(ns, "index")?;
        let engine = self.snapshot.engine.clone();
        let id = self.reserve_index_keyspace(ns, &coll)?;
        let index = compile_index(spec.clone(), id, &engine.inner.options.partial_filters)?;
        let entries = match self.index_build_entries(&coll, &index)? {
            Ok(entries) => entries,
            Err(e) => {
                // The catalog intent stays until the transaction ends.
                engine.write_state().collections.remove(&id);
                return Err(e);
            }
        };
        {
            // A new keyspace: nobody else can hold these keys, so claim them wholesale.
            let mut state = engine.write_state();
            let keyspace = state.collections.get_mut(&id).expect("created above");
            for entry in entries.keys() {
                let mut chain = VersionChain::new();
                chain.intent = Some(self.id);
                keyspace.insert(entry.clone(), chain);
            }
        }
        for (entry, value) in entries {
            self.index_writes.insert((id, entry), Some(value));
        }
        let mut info = coll.clone();
        info.indexes.push(index);
        self.catalog
            .insert(ns.to_string(), Some(Arc::new(info.clone())));
        self.index_ops.push(LogOp::CreateIndex {
            ns: ns.to_string(),
            spec,
        });
        Ok(info)
    }

    /// Takes the catalog intent for an index build of `coll` and a new keyspace for its
    /// entries.
    fn reserve_index_keyspace(
        &mut self,
        ns: &str,
        coll: &CollectionInfo,
    ) -> Result<CollId, StorageError> {
        let engine = self.snapshot.engine.clone();
        let mut state = engine.write_state();
        self.claim_catalog_for_indexes(&mut state, coll)?;
        // Recorded at once, so that the intent is released with the transaction even if
        // the build fails.
        self.catalog
            .entry(ns.to_string())
            .or_insert_with(|| Some(Arc::new(coll.clone())));
        Ok(state.new_keyspace())
    }

    /// The entries of a new index over the documents this transaction sees. The outer error is
    /// a failed read; the inner one a refused build (a document that cannot be indexed, or a
    /// duplicate key of a unique index).
    #[allow(clippy::type_complexity)]
    fn index_build_entries(
        &self,
        coll: &CollectionInfo,
        index: &IndexInfo,
    ) -> Result<Result<BTreeMap<DocKey, StoredDoc>, StorageError>, StorageError> {
        let mut entries: BTreeMap<DocKey, StoredDoc> = BTreeMap::new();
        let mut failed = None;
        self.scan(coll, None, |key, doc| {
            let keys = match index.key.keys_and_multikey(doc) {
                Ok((keys, multikey)) => {
                    if multikey {
                        entries.insert(multikey_marker(), multikey_value());
                    }
                    keys
                }
                Err(e) => {
                    failed = Some(StorageError::Index(e));
                    return ControlFlow::Break(());
                }
            };
            for k in keys {
                let entry = index.entry_key(&k, key);
                if let Some(existing) = entries.get(&entry)
                    && entry_target(existing).as_ref() != Some(key)
                {
                    failed = Some(StorageError::DuplicateKey {
                        ns: coll.ns(),
                        index: index.key.name.clone(),
                        key_pattern: Box::new(index.key.key_pattern.clone()),
                        key_value: Box::new(index.key.key_value(doc, &k)),
                        collation: index_collation(index),
                    });
                    return ControlFlow::Break(());
                }
                entries.insert(entry, entry_value(key));
            }
            ControlFlow::Continue(())
        })?;
        Ok(match failed {
            Some(e) => Err(e),
            None => Ok(entries),
        })
    }

    /// Removes the secondary index `name` of `ns`; its entries go once no snapshot needs them.
    pub fn drop_index(&mut self, ns: &str, name: &str) -> Result<CollectionInfo, StorageError> {
        self.check_open()?;
        let coll = self
            .collection(ns)
            .ok_or_else(|| StorageError::NamespaceNotFound(ns.to_string()))?;
        if self
            .index_ops
            .iter()
            .any(|op| matches!(op, LogOp::CreateIndex { ns: n, .. } if n == ns))
        {
            return Err(StorageError::Encoding(format!(
                "cannot drop an index of {ns} in the transaction that created one"
            )));
        }
        let mut info = coll.clone();
        let pos = info
            .indexes
            .iter()
            .position(|i| i.key.name == name)
            .ok_or_else(|| StorageError::Encoding(format!("index not found with name [{name}]")))?;
        {
            let engine = self.snapshot.engine.clone();
            let mut state = engine.write_state();
            self.claim_catalog_for_indexes(&mut state, &coll)?;
        }
        info.indexes.remove(pos);
        self.catalog
            .insert(ns.to_string(), Some(Arc::new(info.clone())));
        self.index_ops.push(LogOp::DropIndex {
            ns: ns.to_string(),
            name: name.to_string(),
        });
        Ok(info)
    }

    /// Takes the catalog intent of a collection whose index set changes. Any other transaction
    /// writing its documents, or a document commit newer than our snapshot, is a conflict:
    /// their writes would bypass the changed index set.
    pub(super) fn claim_catalog_for_indexes(
        &self,
        state: &mut State,
        coll: &CollectionInfo,
    ) -> Result<(), StorageError> {
        let ns = coll.ns();
        if self.created.contains(&ns) {
            return Ok(()); // ours alone: the create holds the intent
        }
        let read_ts = self.read_ts();
        if state
            .writers
            .get(&coll.id)
            .is_some_and(|w| w.iter().any(|t| *t != self.id))
            || state
                .last_write
                .get(&coll.id)
                .is_some_and(|ts| *ts > read_ts)
        {
            return Err(StorageError::WriteConflict);
        }
        state
            .catalog
            .get_mut(&ns)
            .ok_or_else(|| StorageError::NamespaceNotFound(ns.clone()))?
            .claim(self.id, read_ts)
    }

    /// Whether some document this transaction sees made `index` multikey.
    pub fn index_multikey(&self, index: &IndexInfo) -> Result<bool, StorageError> {
        match self.index_writes.get(&(index.id, multikey_marker())) {
            Some(own) => Ok(own.is_some()),
            None => self.snapshot.index_multikey(index),
        }
    }

    /// Like [`Snapshot::index_scan`], with this transaction's own index writes merged in.
    pub fn index_scan(
        &self,
        index: &IndexInfo,
        interval: &KeyInterval,
        resume: Option<&DocKey>,
        max: usize,
        reverse: bool,
    ) -> Result<Vec<(DocKey, DocKey)>, StorageError> {
        let (lower, upper) = index_range(interval, resume, reverse);
        if empty_range(as_ref_bound(&lower), as_ref_bound(&upper)) {
            return Ok(Vec::new());
        }
        let own = own_range(&self.index_writes, index.id, &lower, &upper, reverse)
            .map(|(key, value)| (key, value.as_ref()));
        let mut out = Vec::new();
        merge_overlay(
            own,
            |emit| {
                self.snapshot.scan_in(
                    index.id,
                    as_ref_bound(&lower),
                    as_ref_bound(&upper),
                    reverse,
                    emit,
                )
            },
            reverse,
            &mut collect_entries(&mut out, max),
        )?;
        Ok(out)
    }
}

/// The collation a unique index's keys are encoded under, as its specification shows it (named
/// in a duplicate key error).
fn index_collation(index: &IndexInfo) -> Option<Box<bson::Document>> {
    index
        .key
        .collation
        .as_ref()
        .map(|c| Box::new(c.index_spec()))
}
