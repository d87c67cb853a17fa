//! Snapshots and the reader registry: who can see what. A [`Snapshot`] reads the newest version
//! at or before its read timestamp, memory over the base store. Every live snapshot is counted
//! in `Inner::readers`; the oldest of them bounds what commits and checkpoints may prune.
//!
//! Invariants:
//! - a snapshot never observes a version committed after its read timestamp;
//! - a reader is registered under the state lock, so no commit can prune between reading
//!   `last_commit` and the registration; it leaves the registry exactly once (`release`).
//!
//! Lock order: `Inner::state` (read) before `Inner::readers`; see the engine's lock order
//! (`engine.rs`).

use std::ops::{Bound, ControlFlow};

use mangrove_bson::KeyInterval;

use super::catalog::{CollectionInfo, IndexInfo, collect_entries, multikey_marker};
use super::ranges::{as_ref_bound, empty_range, index_range, merge_overlay};
use super::versions::State;
use super::{CollId, DocKey, Engine, StoredDoc, lock_mutex, split_ns};
use crate::{StorageError, Timestamp};

impl Engine {
    /// A read view of everything committed so far.
    pub fn snapshot(&self) -> Snapshot {
        // Registering under the state lock means no commit can prune between our reading
        // `last_commit` and the registration.
        let state = self.read_state();
        let read_ts = state.last_commit;
        *lock_mutex(&self.inner.readers).entry(read_ts).or_insert(0) += 1;
        drop(state);
        Snapshot {
            engine: self.clone(),
            read_ts,
            released: false,
        }
    }

    /// A read view at an earlier timestamp `ts` (a client's `atClusterTime`). Old versions are
    /// kept only while a reader at or before them is live, so this succeeds only if some
    /// snapshot at or before `ts` is still held (the server holds one per snapshot session);
    /// otherwise the history is gone and the answer is SnapshotTooOld.
    pub fn snapshot_at(&self, ts: Timestamp) -> Result<Snapshot, StorageError> {
        let state = self.read_state();
        if ts > state.last_commit {
            return Err(StorageError::SnapshotUnavailable {
                requested: ts,
                latest: state.last_commit,
            });
        }
        let mut readers = lock_mutex(&self.inner.readers);
        let held = ts == state.last_commit || readers.keys().next().is_some_and(|r| *r <= ts);
        if !held {
            return Err(StorageError::SnapshotTooOld { requested: ts });
        }
        *readers.entry(ts).or_insert(0) += 1;
        drop(readers);
        drop(state);
        Ok(Snapshot {
            engine: self.clone(),
            read_ts: ts,
            released: false,
        })
    }

    pub(super) fn oldest_reader(&self) -> Option<Timestamp> {
        lock_mutex(&self.inner.readers).keys().next().copied()
    }
}

/// A consistent read view at one commit timestamp. Keeps the versions it can see alive until it
/// is dropped, so hold it no longer than a cursor or transaction needs it.
pub struct Snapshot {
    pub(super) engine: Engine,
    pub(super) read_ts: Timestamp,
    /// Already taken out of the live readers (by a committing transaction).
    pub(super) released: bool,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.release();
    }
}

impl Snapshot {
    /// Stops counting as a reader: versions only this snapshot needed may be pruned.
    pub(super) fn release(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let mut readers = lock_mutex(&self.engine.inner.readers);
        let registered = readers.get_mut(&self.read_ts);
        debug_assert!(registered.is_some(), "a live snapshot is registered");
        if let Some(count) = registered {
            *count -= 1;
            if *count == 0 {
                readers.remove(&self.read_ts);
            }
        }
    }
}

impl Snapshot {
    pub fn read_ts(&self) -> Timestamp {
        self.read_ts
    }

    pub fn collection(&self, ns: &str) -> Option<CollectionInfo> {
        let state = self.engine.read_state();
        state
            .catalog
            .get(ns)
            .and_then(|chain| chain.visible_at(self.read_ts))
            .map(|info| (**info).clone())
    }

    pub fn list_collections(&self, db: &str) -> Vec<CollectionInfo> {
        let state = self.engine.read_state();
        let prefix = format!("{db}.");
        state
            .catalog
            .range(prefix.clone()..)
            .take_while(|(ns, _)| ns.starts_with(&prefix))
            .filter_map(|(_, chain)| chain.visible_at(self.read_ts))
            .map(|info| (**info).clone())
            .collect()
    }

    /// Every database that has at least one collection, in name order.
    pub fn list_databases(&self) -> Vec<String> {
        let state = self.engine.read_state();
        let mut dbs: Vec<String> = Vec::new();
        for (ns, chain) in &state.catalog {
            if chain.visible_at(self.read_ts).is_some() {
                let db = split_ns(ns).0;
                if dbs.last().map(String::as_str) != Some(db) {
                    dbs.push(db.to_string());
                }
            }
        }
        dbs
    }

    /// The document under `key` as of this snapshot. A chain in memory is authoritative;
    /// without one, the base store has the answer.
    pub fn get(
        &self,
        coll: &CollectionInfo,
        key: &DocKey,
    ) -> Result<Option<StoredDoc>, StorageError> {
        self.get_in(coll.id, key)
    }

    pub(super) fn get_in(
        &self,
        id: CollId,
        key: &DocKey,
    ) -> Result<Option<StoredDoc>, StorageError> {
        let state = self.engine.read_state();
        self.get_in_state(&state, id, key)
    }

    /// [`Snapshot::get_in`] under a lock the caller holds.
    pub(super) fn get_in_state(
        &self,
        state: &State,
        id: CollId,
        key: &DocKey,
    ) -> Result<Option<StoredDoc>, StorageError> {
        if let Some(chain) = state.collections.get(&id).and_then(|docs| docs.get(key)) {
            return Ok(chain.visible_at(self.read_ts).cloned());
        }
        // The engine lock stays held: no writer can create this key's chain, and so no
        // checkpoint can replace its base value, while we read it.
        let Some(base) = &state.base else {
            return Ok(None);
        };
        let found = base.get(id, key)?;
        debug_assert!(found.as_ref().is_none_or(|(ts, _)| *ts <= self.read_ts));
        Ok(found
            .filter(|(ts, _)| *ts <= self.read_ts)
            .map(|(_, doc)| doc))
    }

    /// Visits documents in key order, starting after `after`, until `visit` breaks: versions in
    /// memory merged over the base store. The engine's lock is held meanwhile, so `visit` must
    /// not call back into the engine.
    pub fn scan(
        &self,
        coll: &CollectionInfo,
        after: Option<&DocKey>,
        visit: impl FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.scan_in(coll.id, lower, Bound::Unbounded, false, visit)
    }

    /// Visits the documents whose keys lie in `interval`, in key order (descending if
    /// `reverse`), resuming past `resume`, until `visit` breaks: a range of the collection's
    /// `_id` order.
    pub fn scan_range(
        &self,
        coll: &CollectionInfo,
        interval: &KeyInterval,
        resume: Option<&DocKey>,
        reverse: bool,
        visit: impl FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        let (lower, upper) = index_range(interval, resume, reverse);
        self.scan_in(
            coll.id,
            as_ref_bound(&lower),
            as_ref_bound(&upper),
            reverse,
            visit,
        )
    }

    pub(super) fn scan_in(
        &self,
        id: CollId,
        lower: Bound<&DocKey>,
        upper: Bound<&DocKey>,
        reverse: bool,
        visit: impl FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        let state = self.engine.read_state();
        self.scan_in_state(&state, id, lower, upper, reverse, visit)
    }

    /// [`Snapshot::scan_in`] under a lock the caller holds.
    pub(super) fn scan_in_state(
        &self,
        state: &State,
        id: CollId,
        lower: Bound<&DocKey>,
        upper: Bound<&DocKey>,
        reverse: bool,
        mut visit: impl FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        if empty_range(lower, upper) {
            // BTreeMap::range panics on an inverted range.
            return Ok(());
        }
        let read_ts = self.read_ts;
        let memory: Box<dyn Iterator<Item = (&DocKey, Option<&StoredDoc>)>> =
            match state.collections.get(&id) {
                Some(docs) => {
                    let range = docs
                        .range((lower, upper))
                        .map(|(key, chain)| (key, chain.visible_at(read_ts)));
                    if reverse {
                        Box::new(range.rev())
                    } else {
                        Box::new(range)
                    }
                }
                None => Box::new(std::iter::empty()),
            };
        merge_overlay(
            memory,
            |emit| match &state.base {
                Some(base) => base.scan(id, lower, upper, reverse, |key, ts, doc| {
                    if ts <= read_ts {
                        emit(&key, &doc)
                    } else {
                        ControlFlow::Continue(())
                    }
                }),
                None => Ok(()),
            },
            reverse,
            &mut visit,
        )
    }

    /// Whether some document this snapshot sees made `index` multikey.
    pub fn index_multikey(&self, index: &IndexInfo) -> Result<bool, StorageError> {
        Ok(self.get_in(index.id, &multikey_marker())?.is_some())
    }

    /// Up to `max` entries of `index` within `interval`, in key order (descending if
    /// `reverse`), past the entry `resume`: each entry's key and the key of the document it
    /// points at.
    pub fn index_scan(
        &self,
        index: &IndexInfo,
        interval: &KeyInterval,
        resume: Option<&DocKey>,
        max: usize,
        reverse: bool,
    ) -> Result<Vec<(DocKey, DocKey)>, StorageError> {
        let (lower, upper) = index_range(interval, resume, reverse);
        let mut out = Vec::new();
        self.scan_in(
            index.id,
            as_ref_bound(&lower),
            as_ref_bound(&upper),
            reverse,
            collect_entries(&mut out, max),
        )?;
        Ok(out)
    }

    pub fn count(&self, coll: &CollectionInfo) -> Result<u64, StorageError> {
        let mut n = 0;
        self.scan(coll, None, |_, _| {
            n += 1;
            ControlFlow::Continue(())
        })?;
        Ok(n)
    }
}
