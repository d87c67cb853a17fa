//! Versions and intents: the engine's in-memory MVCC state. Every key with recent history has
//! a [`VersionChain`]: its committed versions, oldest first, and the open transaction (if any)
//! holding its write intent. [`State`] gathers the chains of every keyspace, the catalog's own
//! chains, and the bookkeeping that ties open transactions to collections.
//!
//! Invariants:
//! - a chain's versions have strictly increasing commit timestamps (`install` asserts it);
//! - at most one transaction holds a key's intent, and only that transaction (or the commit it
//!   became) gives it back: `release_intents` and `VersionChain::install` assert the owner;
//! - a key with a chain reads only from the chain; without one, from the base store;
//! - a chain keeps its newest version at or before the newest installed commit's reader
//!   horizon, so a checkpoint cutting at the newest installed commit finds every key's version
//!   there (`checkpoint.rs`).
//!
//! Lock order: everything here lives under `Inner::state`; see the engine's lock order
//! (`engine.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bson::{Bson, Document};

use super::catalog::CollectionInfo;
use super::{CollId, DocKey, StoredDoc, TxnId, split_ns};
use crate::base::BaseStore;
use crate::{StorageError, Timestamp};

/// One document write of an open transaction. Inserts and updates are told apart only so the
/// log reads naturally; the engine treats both as a new version.
#[derive(Clone)]
pub(super) enum DocWrite {
    Insert(StoredDoc),
    Update(StoredDoc),
    /// Keeps the deleted document's `_id`, for the log.
    Delete(Bson),
}

impl DocWrite {
    pub(super) fn doc(&self) -> Option<&StoredDoc> {
        match self {
            DocWrite::Insert(d) | DocWrite::Update(d) => Some(d),
            DocWrite::Delete(_) => None,
        }
    }
}

/// Sets the version of `ts` in a chain being replayed. One record may write an index entry
/// twice (one document leaves a unique key, another takes it), or a catalog entry twice
/// (created, then indexed): the last write of the record wins, as it did live.
pub(super) fn set_recovered<T>(chain: &mut VersionChain<T>, ts: Timestamp, value: Option<T>) {
    match chain.versions.last_mut() {
        Some((last, v)) if *last == ts => *v = value,
        _ => chain.install_recovered(ts, value),
    }
}

/// Every committed version of one key, oldest first, plus the open transaction (if any) that
/// holds the write intent on it. `None` as a value is a deletion (a tombstone).
pub(super) struct VersionChain<T> {
    pub(super) versions: Vec<(Timestamp, Option<T>)>,
    pub(super) intent: Option<TxnId>,
}

impl<T> VersionChain<T> {
    pub(super) fn new() -> Self {
        VersionChain {
            versions: Vec::new(),
            intent: None,
        }
    }

    pub(super) fn visible_at(&self, read_ts: Timestamp) -> Option<&T> {
        self.versions
            .iter()
            .rev()
            .find(|(ts, _)| *ts <= read_ts)
            .and_then(|(_, v)| v.as_ref())
    }

    pub(super) fn newest_ts(&self) -> Option<Timestamp> {
        self.versions.last().map(|(ts, _)| *ts)
    }

    /// First writer wins: a key another transaction holds, or one committed after our snapshot,
    /// is a conflict now rather than at commit, as in MongoDB.
    pub(super) fn claim(&mut self, txn: TxnId, read_ts: Timestamp) -> Result<(), StorageError> {
        match self.intent {
            Some(owner) if owner == txn => return Ok(()),
            Some(_) => return Err(StorageError::WriteConflict),
            None => {}
        }
        if self.newest_ts().is_some_and(|ts| ts > read_ts) {
            return Err(StorageError::WriteConflict);
        }
        self.intent = Some(txn);
        Ok(())
    }

    pub(super) fn install(&mut self, txn: TxnId, ts: Timestamp, value: Option<T>) {
        assert_eq!(self.intent, Some(txn), "commit without the write intent");
        assert!(self.newest_ts().is_none_or(|newest| newest < ts));
        self.versions.push((ts, value));
        self.intent = None;
    }

    /// Gives back the intent `txn` took on this key (a write it then abandoned). Only the
    /// owner gives an intent back: a document or index key a transaction wrote is held by it
    /// until it ends (a catalog key may not be: shared creations hold none).
    pub(super) fn release(&mut self, txn: TxnId) {
        debug_assert!(
            self.intent.is_none_or(|owner| owner == txn),
            "an intent is released only by its owner"
        );
        if self.intent == Some(txn) {
            self.intent = None;
        }
    }

    /// Replays a committed version from the log: no intent is involved.
    pub(super) fn install_recovered(&mut self, ts: Timestamp, value: Option<T>) {
        assert!(self.intent.is_none());
        assert!(self.newest_ts().is_none_or(|newest| newest < ts));
        self.versions.push((ts, value));
    }

    /// Drops versions no snapshot can see any more: everything older than the newest version at
    /// or before `oldest_reader`.
    /// A lone tombstone goes too once no reader predates it and the base store (as of
    /// `checkpoint`) no longer holds the document: only then does the missing chain mean the
    /// same as the tombstone.
    pub(super) fn prune(&mut self, oldest_reader: Timestamp, checkpoint: Timestamp) {
        let keep_from = self
            .versions
            .iter()
            .rposition(|(ts, _)| *ts <= oldest_reader)
            .unwrap_or(0);
        self.versions.drain(..keep_from);
        if self.versions.len() == 1
            && self.versions[0].1.is_none()
            && self.versions[0].0 <= oldest_reader
            && self.versions[0].0 <= checkpoint
        {
            self.versions.clear();
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.intent.is_none()
    }
}

#[derive(Default)]
pub(super) struct State {
    /// Keyed by "db.collection".
    pub(super) catalog: BTreeMap<String, VersionChain<Arc<CollectionInfo>>>,
    pub(super) collections: HashMap<CollId, BTreeMap<DocKey, VersionChain<StoredDoc>>>,
    /// Collections dropped at a timestamp; their data goes once no snapshot predates the drop.
    pub(super) dropped: Vec<(Timestamp, CollId)>,
    /// Collections dropped since the last checkpoint, whose documents the base store still has.
    pub(super) base_drops: Vec<(Timestamp, CollId)>,
    pub(super) last_commit: Timestamp,
    pub(super) next_coll_id: CollId,
    /// Everything committed at or before this is in the base store. A key with no chain in
    /// memory reads from there; a key with a chain reads only from the chain.
    pub(super) checkpoint_ts: Timestamp,
    pub(super) base: Option<Arc<BaseStore>>,
    /// Collections that open transactions create "if absent": one reserved id per namespace,
    /// shared by every such transaction, and which of them hold it.
    pub(super) shared_creates: HashMap<String, SharedCreate>,
    /// Open transactions holding document intents in a collection. An index build (a catalog
    /// write) waits until none does, and writers refuse to start while one is building, so no
    /// document write can miss an index.
    pub(super) writers: HashMap<CollId, BTreeSet<TxnId>>,
    /// The newest commit that wrote documents of each collection: an index build whose
    /// snapshot predates it would miss that write.
    pub(super) last_write: HashMap<CollId, Timestamp>,
    /// Each collection's newest natural position and whether its natural order still equals
    /// its `_id` order (`natural.rs`); a collection missing here has no position yet, in memory
    /// or in the base store.
    pub(super) natural: HashMap<CollId, NaturalTail>,
}

impl State {
    /// A fresh, empty keyspace (a collection's documents or one index's entries) and its id.
    pub(super) fn new_keyspace(&mut self) -> CollId {
        let id = self.next_coll_id;
        self.next_coll_id += 1;
        self.collections.insert(id, BTreeMap::new());
        id
    }

    /// A new collection `ns` with no indexes, in a fresh keyspace.
    pub(super) fn new_collection(&mut self, ns: &str, options: Document) -> Arc<CollectionInfo> {
        let (db, name) = split_ns(ns);
        Arc::new(CollectionInfo {
            db: db.to_string(),
            name: name.to_string(),
            options: Arc::new(options),
            indexes: Vec::new(),
            id: self.new_keyspace(),
        })
    }
}

/// A namespace several open transactions may create at once without conflicting: they all
/// write into one collection id, and the first to commit makes it visible (the others' commits
/// find it there). Explicit creates and drops of the namespace conflict with it meanwhile.
pub(super) struct SharedCreate {
    pub(super) info: Arc<CollectionInfo>,
    pub(super) holders: BTreeSet<TxnId>,
}

/// Gives back intents a transaction took, and drops chains and collections that only existed
/// for it.
pub(super) fn release_intents<'a>(
    state: &mut State,
    txn: TxnId,
    doc_keys: impl Iterator<Item = &'a (CollId, DocKey)>,
    catalog: &BTreeMap<String, Option<Arc<CollectionInfo>>>,
) {
    // A shared creation whose last holder leaves without it having become visible goes away.
    let mut unshared = Vec::new();
    for (ns, shared) in state.shared_creates.iter_mut() {
        if catalog.contains_key(ns) && shared.holders.remove(&txn) && shared.holders.is_empty() {
            unshared.push(ns.clone());
        }
    }
    for ns in unshared {
        state.shared_creates.remove(&ns);
    }
    state.writers.retain(|_, w| {
        w.remove(&txn);
        !w.is_empty()
    });
    for (coll_id, key) in doc_keys {
        if let Some(chains) = state.collections.get_mut(coll_id)
            && let Some(chain) = chains.get_mut(key)
        {
            chain.release(txn);
            if chain.is_empty() {
                chains.remove(key);
            }
        }
    }
    for (ns, info) in catalog {
        if let Some(chain) = state.catalog.get_mut(ns) {
            if chain.intent == Some(txn) {
                chain.intent = None;
            }
            if chain.is_empty() {
                state.catalog.remove(ns);
            }
        }
        // A collection or index created by this transaction never became visible: free its
        // keyspace (unless other transactions still share the creation).
        if let Some(info) = info
            && !state.shared_creates.contains_key(ns)
        {
            let visible: Vec<CollId> = state
                .catalog
                .get(ns)
                .and_then(|c| c.visible_at(Timestamp(u64::MAX)))
                .map(|c| c.keyspaces().collect())
                .unwrap_or_default();
            for id in info.keyspaces() {
                if !visible.contains(&id) {
                    state.collections.remove(&id);
                }
            }
        }
    }
}

/// Where a collection's natural order ends: the next position, the key of the newest
/// positioned document (never smaller than any live document's key while the collection is in
/// `_id` order), and whether the disorder marker is written.
#[derive(Default)]
pub(super) struct NaturalTail {
    pub(super) next: u64,
    pub(super) last_key: Option<DocKey>,
    pub(super) disordered: bool,
}
