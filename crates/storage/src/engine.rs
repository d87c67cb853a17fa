use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, ControlFlow};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bson::RawDocumentBuf;

use crate::{StorageError, Timestamp};

/// A stored document. Shared, immutable bytes: a snapshot hands out clones of the `Arc`, never
/// copies of the document.
pub type StoredDoc = Arc<RawDocumentBuf>;

/// The order-preserving encoding of a document's `_id`, made by the caller (the query crate owns
/// BSON ordering). Equal `_id`s (say int 1 and double 1.0) must encode to equal keys.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocKey(pub Vec<u8>);

pub type TxnId = u64;
type CollId = u64;

/// One collection as the catalog records it at some timestamp.
#[derive(Clone, Debug)]
pub struct CollectionInfo {
    pub db: String,
    pub name: String,
    pub options: bson::Document,
    id: CollId,
}

impl CollectionInfo {
    pub fn ns(&self) -> String {
        format!("{}.{}", self.db, self.name)
    }
}

/// Every committed version of one key, oldest first, plus the open transaction (if any) that
/// holds the write intent on it. `None` as a value is a deletion (a tombstone).
struct VersionChain<T> {
    versions: Vec<(Timestamp, Option<T>)>,
    intent: Option<TxnId>,
}

impl<T> VersionChain<T> {
    fn new() -> Self {
        VersionChain {
            versions: Vec::new(),
            intent: None,
        }
    }

    fn visible_at(&self, read_ts: Timestamp) -> Option<&T> {
        self.versions
            .iter()
            .rev()
            .find(|(ts, _)| *ts <= read_ts)
            .and_then(|(_, v)| v.as_ref())
    }

    fn newest_ts(&self) -> Option<Timestamp> {
        self.versions.last().map(|(ts, _)| *ts)
    }

    /// First writer wins: a key another transaction holds, or one committed after our snapshot,
    /// is a conflict now rather than at commit, as in MongoDB.
    fn claim(&mut self, txn: TxnId, read_ts: Timestamp) -> Result<(), StorageError> {
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

    fn install(&mut self, txn: TxnId, ts: Timestamp, value: Option<T>) {
        assert_eq!(self.intent, Some(txn), "commit without the write intent");
        assert!(self.newest_ts().is_none_or(|newest| newest < ts));
        self.versions.push((ts, value));
        self.intent = None;
    }

    /// Drops versions no snapshot can see any more: everything older than the newest version at
    /// or before `oldest_reader`.
    fn prune(&mut self, oldest_reader: Timestamp) {
        let keep_from = self
            .versions
            .iter()
            .rposition(|(ts, _)| *ts <= oldest_reader)
            .unwrap_or(0);
        self.versions.drain(..keep_from);
        if self.versions.len() == 1
            && self.versions[0].1.is_none()
            && self.versions[0].0 <= oldest_reader
        {
            self.versions.clear();
        }
    }

    fn is_empty(&self) -> bool {
        self.versions.is_empty() && self.intent.is_none()
    }
}

#[derive(Default)]
struct State {
    /// Keyed by "db.collection".
    catalog: BTreeMap<String, VersionChain<Arc<CollectionInfo>>>,
    collections: HashMap<CollId, BTreeMap<DocKey, VersionChain<StoredDoc>>>,
    /// Collections dropped at a timestamp; their data goes once no snapshot predates the drop.
    dropped: Vec<(Timestamp, CollId)>,
    last_commit: Timestamp,
    next_coll_id: CollId,
}

struct Inner {
    state: RwLock<State>,
    /// Read timestamps of live snapshots, with a count each; the minimum bounds version pruning.
    readers: Mutex<BTreeMap<Timestamp, usize>>,
    next_txn_id: AtomicU64,
}

/// The engine handle. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Default for Engine {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl Engine {
    pub fn in_memory() -> Engine {
        Engine {
            inner: Arc::new(Inner {
                // Start the clock at the wall clock, so even an empty database reports a real
                // `operationTime` and `$clusterTime`.
                state: RwLock::new(State {
                    last_commit: Timestamp::ZERO.next_after(),
                    ..State::default()
                }),
                readers: Mutex::new(BTreeMap::new()),
                next_txn_id: AtomicU64::new(1),
            }),
        }
    }

    /// The newest commit timestamp: what a fresh snapshot would see, and the server's
    /// `operationTime` for reads.
    pub fn last_commit(&self) -> Timestamp {
        self.read_state().last_commit
    }

    /// A read view of everything committed so far.
    pub fn snapshot(&self) -> Snapshot {
        // Registering under the state lock means no commit can prune between our reading
        // `last_commit` and the registration.
        let state = self.read_state();
        let read_ts = state.last_commit;
        *lock(&self.inner.readers).entry(read_ts).or_insert(0) += 1;
        drop(state);
        Snapshot {
            engine: self.clone(),
            read_ts,
        }
    }

    /// Starts a write transaction reading from a fresh snapshot.
    pub fn begin(&self) -> Txn {
        Txn {
            id: self.inner.next_txn_id.fetch_add(1, Ordering::Relaxed),
            snapshot: self.snapshot(),
            docs: BTreeMap::new(),
            catalog: BTreeMap::new(),
            open: true,
        }
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock would already have aborted the process's invariants;
        // the data itself is only changed in `commit`, which does not panic between steps.
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The oldest read timestamp still in use, not counting one registration at `committing`:
    /// the snapshot of the transaction now committing, which never reads again.
    fn oldest_reader_besides(&self, committing: Timestamp) -> Option<Timestamp> {
        lock(&self.inner.readers)
            .iter()
            .find(|(ts, count)| !(**ts == committing && **count == 1))
            .map(|(ts, _)| *ts)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn split_ns(ns: &str) -> (&str, &str) {
    ns.split_once('.').unwrap_or((ns, ""))
}

/// A consistent read view at one commit timestamp. Keeps the versions it can see alive until it
/// is dropped, so hold it no longer than a cursor or transaction needs it.
pub struct Snapshot {
    engine: Engine,
    read_ts: Timestamp,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let mut readers = lock(&self.engine.inner.readers);
        if let Some(count) = readers.get_mut(&self.read_ts) {
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

    pub fn get(&self, coll: &CollectionInfo, key: &DocKey) -> Option<StoredDoc> {
        let state = self.engine.read_state();
        state
            .collections
            .get(&coll.id)
            .and_then(|docs| docs.get(key))
            .and_then(|chain| chain.visible_at(self.read_ts))
            .cloned()
    }

    /// Visits documents in key order, starting after `after`, until `visit` breaks. The engine's
    /// lock is held meanwhile, so `visit` must not call back into the engine.
    pub fn scan(
        &self,
        coll: &CollectionInfo,
        after: Option<&DocKey>,
        mut visit: impl FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) {
        let state = self.engine.read_state();
        let Some(docs) = state.collections.get(&coll.id) else {
            return;
        };
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        for (key, chain) in docs.range((lower, Bound::Unbounded)) {
            if let Some(doc) = chain.visible_at(self.read_ts)
                && visit(key, doc).is_break()
            {
                return;
            }
        }
    }

    pub fn count(&self, coll: &CollectionInfo) -> u64 {
        let mut n = 0;
        self.scan(coll, None, |_, _| {
            n += 1;
            ControlFlow::Continue(())
        });
        n
    }
}

/// A write transaction: reads see its snapshot plus its own writes; writes become visible to
/// others only at [`Txn::commit`], all at one timestamp. Dropping an open transaction aborts it.
pub struct Txn {
    id: TxnId,
    snapshot: Snapshot,
    docs: BTreeMap<(CollId, DocKey), Option<StoredDoc>>,
    catalog: BTreeMap<String, Option<Arc<CollectionInfo>>>,
    open: bool,
}

impl Txn {
    pub fn id(&self) -> TxnId {
        self.id
    }

    pub fn read_ts(&self) -> Timestamp {
        self.snapshot.read_ts
    }

    pub fn is_read_only(&self) -> bool {
        self.docs.is_empty() && self.catalog.is_empty()
    }

    pub fn collection(&self, ns: &str) -> Option<CollectionInfo> {
        match self.catalog.get(ns) {
            Some(own) => own.as_ref().map(|info| (**info).clone()),
            None => self.snapshot.collection(ns),
        }
    }

    pub fn list_collections(&self, db: &str) -> Vec<CollectionInfo> {
        let mut by_name: BTreeMap<String, CollectionInfo> = self
            .snapshot
            .list_collections(db)
            .into_iter()
            .map(|c| (c.ns(), c))
            .collect();
        for (ns, own) in &self.catalog {
            if split_ns(ns).0 == db {
                match own {
                    Some(info) => by_name.insert(ns.clone(), (**info).clone()),
                    None => by_name.remove(ns),
                };
            }
        }
        by_name.into_values().collect()
    }

    pub fn get(&self, coll: &CollectionInfo, key: &DocKey) -> Option<StoredDoc> {
        match self.docs.get(&(coll.id, key.clone())) {
            Some(own) => own.clone(),
            None => self.snapshot.get(coll, key),
        }
    }

    /// Like [`Snapshot::scan`], with this transaction's own writes merged in key order.
    pub fn scan(
        &self,
        coll: &CollectionInfo,
        after: Option<&DocKey>,
        mut visit: impl FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) {
        let lower = match after {
            Some(k) => Bound::Excluded((coll.id, k.clone())),
            None => Bound::Included((coll.id, DocKey(Vec::new()))),
        };
        let mut own = self
            .docs
            .range((lower, Bound::Unbounded))
            .take_while(|((id, _), _)| *id == coll.id)
            .map(|((_, k), v)| (k, v))
            .peekable();
        let mut stopped = false;
        self.snapshot.scan(coll, after, |key, doc| {
            // Emit our own writes that sort before this committed key first.
            while let Some((own_key, own_doc)) = own.next_if(|(k, _)| *k < key) {
                if let Some(d) = own_doc
                    && visit(own_key, d).is_break()
                {
                    stopped = true;
                    return ControlFlow::Break(());
                }
            }
            let flow = match own.next_if(|(k, _)| *k == key) {
                Some((_, Some(mine))) => visit(key, mine),
                Some((_, None)) => ControlFlow::Continue(()),
                None => visit(key, doc),
            };
            if flow.is_break() {
                stopped = true;
            }
            flow
        });
        if stopped {
            return;
        }
        for (key, doc) in own {
            if let Some(d) = doc
                && visit(key, d).is_break()
            {
                return;
            }
        }
    }

    /// Creates the collection unless it exists; returns whether it did create it.
    pub fn ensure_collection(
        &mut self,
        ns: &str,
        options: bson::Document,
    ) -> Result<(CollectionInfo, bool), StorageError> {
        if let Some(info) = self.collection(ns) {
            return Ok((info, false));
        }
        let info = self.create_collection(ns, options)?;
        Ok((info, true))
    }

    pub fn create_collection(
        &mut self,
        ns: &str,
        options: bson::Document,
    ) -> Result<CollectionInfo, StorageError> {
        self.check_open()?;
        if self.collection(ns).is_some() {
            return Err(StorageError::NamespaceExists(ns.to_string()));
        }
        let engine = self.snapshot.engine.clone();
        let mut state = engine.write_state();
        let read_ts = self.read_ts();
        let chain = state
            .catalog
            .entry(ns.to_string())
            .or_insert_with(VersionChain::new);
        chain.claim(self.id, read_ts)?;
        let id = state.next_coll_id;
        state.next_coll_id += 1;
        let (db, name) = split_ns(ns);
        let info = Arc::new(CollectionInfo {
            db: db.to_string(),
            name: name.to_string(),
            options,
            id,
        });
        state.collections.insert(id, BTreeMap::new());
        self.catalog.insert(ns.to_string(), Some(info.clone()));
        Ok((*info).clone())
    }

    pub fn drop_collection(&mut self, ns: &str) -> Result<(), StorageError> {
        self.check_open()?;
        if self.collection(ns).is_none() {
            return Err(StorageError::NamespaceNotFound(ns.to_string()));
        }
        let engine = self.snapshot.engine.clone();
        let mut state = engine.write_state();
        let read_ts = self.read_ts();
        state
            .catalog
            .entry(ns.to_string())
            .or_insert_with(VersionChain::new)
            .claim(self.id, read_ts)?;
        self.catalog.insert(ns.to_string(), None);
        Ok(())
    }

    /// Inserts a document under `key`; DuplicateKey if one is visible, WriteConflict if another
    /// transaction holds or recently committed the key.
    pub fn insert(
        &mut self,
        coll: &CollectionInfo,
        key: DocKey,
        doc: StoredDoc,
    ) -> Result<(), StorageError> {
        self.check_open()?;
        let already_held = self.docs.contains_key(&(coll.id, key.clone()));
        self.claim_doc(coll, &key)?;
        if self.get(coll, &key).is_some() {
            if !already_held {
                self.unclaim_doc(coll, &key);
            }
            let id = doc
                .get("_id")
                .ok()
                .flatten()
                .and_then(|v| bson::Bson::try_from(v).ok())
                .unwrap_or(bson::Bson::Null);
            return Err(StorageError::DuplicateKey {
                ns: coll.ns(),
                id: Box::new(id),
            });
        }
        self.docs.insert((coll.id, key), Some(doc));
        Ok(())
    }

    /// Replaces the visible document under `key`.
    pub fn replace(
        &mut self,
        coll: &CollectionInfo,
        key: DocKey,
        doc: StoredDoc,
    ) -> Result<(), StorageError> {
        self.check_open()?;
        self.claim_doc(coll, &key)?;
        self.docs.insert((coll.id, key), Some(doc));
        Ok(())
    }

    pub fn delete(&mut self, coll: &CollectionInfo, key: DocKey) -> Result<(), StorageError> {
        self.check_open()?;
        self.claim_doc(coll, &key)?;
        self.docs.insert((coll.id, key), None);
        Ok(())
    }

    fn claim_doc(&mut self, coll: &CollectionInfo, key: &DocKey) -> Result<(), StorageError> {
        if self.docs.contains_key(&(coll.id, key.clone())) {
            return Ok(()); // we already hold the intent
        }
        let engine = self.snapshot.engine.clone();
        let mut state = engine.write_state();
        let read_ts = self.read_ts();
        let docs = state
            .collections
            .get_mut(&coll.id)
            .ok_or_else(|| StorageError::NamespaceNotFound(coll.ns()))?;
        docs.entry(key.clone())
            .or_insert_with(VersionChain::new)
            .claim(self.id, read_ts)
    }

    /// Gives back an intent taken by a write that then failed, so it is not held unrecorded.
    fn unclaim_doc(&mut self, coll: &CollectionInfo, key: &DocKey) {
        let engine = self.snapshot.engine.clone();
        let mut state = engine.write_state();
        if let Some(chains) = state.collections.get_mut(&coll.id)
            && let Some(chain) = chains.get_mut(key)
        {
            if chain.intent == Some(self.id) {
                chain.intent = None;
            }
            if chain.is_empty() {
                chains.remove(key);
            }
        }
    }

    fn check_open(&self) -> Result<(), StorageError> {
        if self.open {
            Ok(())
        } else {
            Err(StorageError::TxnClosed)
        }
    }

    /// Makes every write visible at one new timestamp, which it returns. A read-only transaction
    /// commits at its read timestamp and changes nothing.
    pub fn commit(mut self) -> Result<Timestamp, StorageError> {
        self.check_open()?;
        self.open = false;
        if self.is_read_only() {
            return Ok(self.read_ts());
        }
        let engine = self.snapshot.engine.clone();
        let mut state = engine.write_state();
        let ts = state.last_commit.next_after();
        let docs = std::mem::take(&mut self.docs);
        let catalog = std::mem::take(&mut self.catalog);
        for (ns, info) in catalog {
            let chain = state
                .catalog
                .get_mut(&ns)
                .expect("a catalog write holds an intent, so its chain exists");
            if info.is_none()
                && let Some(old) = chain.visible_at(self.snapshot.read_ts)
            {
                let old_id = old.id;
                state.dropped.push((ts, old_id));
            }
            let chain = state.catalog.get_mut(&ns).expect("checked above");
            chain.install(self.id, ts, info);
        }
        for ((coll_id, key), doc) in &docs {
            let chain = state
                .collections
                .get_mut(coll_id)
                .and_then(|d| d.get_mut(key))
                .expect("a document write holds an intent, so its chain exists");
            chain.install(self.id, ts, doc.clone());
        }
        state.last_commit = ts;
        // Prune what this commit made unreachable, bounded by the oldest live reader.
        let oldest = engine
            .oldest_reader_besides(self.snapshot.read_ts)
            .map_or(ts, |r| r.min(ts));
        for (coll_id, key) in docs.keys() {
            if let Some(chains) = state.collections.get_mut(coll_id)
                && let Some(chain) = chains.get_mut(key)
            {
                chain.prune(oldest);
                if chain.is_empty() {
                    chains.remove(key);
                }
            }
        }
        let State {
            dropped,
            collections,
            ..
        } = &mut *state;
        dropped.retain(|(drop_ts, id)| {
            let reclaim = *drop_ts <= oldest;
            if reclaim {
                collections.remove(id);
            }
            !reclaim
        });
        Ok(ts)
    }

    /// Releases every intent; nothing of this transaction was ever visible to others.
    pub fn abort(mut self) {
        self.release();
    }

    fn release(&mut self) {
        if !self.open {
            return;
        }
        self.open = false;
        let engine = self.snapshot.engine.clone();
        let mut state = engine.write_state();
        for (coll_id, key) in self.docs.keys() {
            if let Some(chains) = state.collections.get_mut(coll_id)
                && let Some(chain) = chains.get_mut(key)
            {
                if chain.intent == Some(self.id) {
                    chain.intent = None;
                }
                if chain.is_empty() {
                    chains.remove(key);
                }
            }
        }
        for (ns, info) in &self.catalog {
            if let Some(chain) = state.catalog.get_mut(ns) {
                if chain.intent == Some(self.id) {
                    chain.intent = None;
                }
                if chain.is_empty() {
                    state.catalog.remove(ns);
                }
            }
            // A collection created by this transaction never became visible: free its map.
            if let Some(info) = info
                && state
                    .catalog
                    .get(ns)
                    .and_then(|c| c.visible_at(Timestamp(u64::MAX)))
                    .is_none_or(|visible| visible.id != info.id)
            {
                state.collections.remove(&info.id);
            }
        }
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests;
