//! A transaction's document writes: insert, update (by operators or a pipeline), replace,
//! delete. Each takes the key's write intent first (first writer wins: a conflict fails at
//! once), reserves the memory the write will hold, updates the indexes (`txn_index.rs`), and
//! on failure gives back what it took. The first successful write of a key also records its
//! [`WriteOrigin`] (statement order, the snapshot's version), for the log op.
//!
//! Invariants:
//! - a key is in `Txn::origins` exactly when it is in `Txn::docs` (both written together on
//!   success, neither on failure);
//! - a refused write leaves nothing behind: an intent it took is given back (`unclaim`), and
//!   its reservation too (`settle_write`);
//! - a transaction writes a collection only with the index set its snapshot sees, and only while
//!   no index build of it is in progress (`claim_doc`);
//! - an intent is given back only by the transaction that holds it (asserted in `unclaim`).
//!
//! Lock order: `Inner::state` (write) alone, for each claim; see the engine's lock order
//! (`engine.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bson::Bson;

use super::catalog::CollectionInfo;
use super::txn::{TransactionLimits, Txn, WriteOrigin, write_cost};
use super::versions::{DocWrite, VersionChain};
use super::{CollId, DocKey, Engine, StoredDoc};
use crate::StorageError;

impl Txn {
    /// Inserts a document under `key`; DuplicateKey if one is visible (or a unique index has
    /// its key), WriteConflict if another transaction holds or recently committed the key.
    pub fn insert(
        &mut self,
        coll: &CollectionInfo,
        key: DocKey,
        doc: StoredDoc,
    ) -> Result<(), StorageError> {
        self.check_open()?;
        // A key is derived from how the collection keys its documents (by `_id`, or by
        // insertion number when capped). If that changed (`convertToCapped`) after the caller
        // looked the collection up, in a version this transaction sees, the key is of the old
        // kind: a conflict, so the caller looks again, never a document under the wrong key.
        let current = self.current_info(coll);
        if current.options.get("capped") != coll.options.get("capped") {
            return Err(StorageError::WriteConflict);
        }
        let cost = self.reserve_write(coll, &key, Some(&doc))?;
        let result = self.insert_unaccounted(&current, key, doc);
        self.settle_write(cost, result.is_ok());
        result
    }

    /// [`Txn::insert`] once `coll` is the collection as this transaction sees it now
    /// ([`Txn::current_info`]).
    fn insert_unaccounted(
        &mut self,
        coll: &CollectionInfo,
        key: DocKey,
        doc: StoredDoc,
    ) -> Result<(), StorageError> {
        let already_held = self.docs.contains_key(&(coll.id, key.clone()));
        let pre = self.claim_doc(coll, &key)?;
        let checked = match self.get(coll, &key) {
            Ok(Some(_)) => {
                let id = doc
                    .get("_id")
                    .ok()
                    .flatten()
                    .and_then(|v| bson::Bson::try_from(v).ok())
                    .unwrap_or(bson::Bson::Null);
                Err(StorageError::duplicate_id(
                    coll.ns(),
                    id,
                    coll.id_collation_spec(),
                ))
            }
            Ok(None) => self.write_index_entries(coll, &key, None, Some(&doc)),
            Err(e) => Err(e),
        };
        if let Err(e) = checked {
            if !already_held {
                self.unclaim(coll.id, &key);
            }
            return Err(e);
        }
        // Nothing is visible under the key here, so this is an insert, unless this
        // transaction deleted a document that existed before it: to everyone else, that
        // replaces it.
        let k = (coll.id, key);
        let existed = self.origins.get(&k).is_some_and(|o| o.pre.is_some());
        let write = match self.docs.get(&k) {
            Some(DocWrite::Delete(_)) if existed => DocWrite::Update(doc),
            _ => DocWrite::Insert(doc),
        };
        let (_, key) = k;
        self.record_write(coll, key, write, pre, true);
        Ok(())
    }

    /// Replaces the visible document under `key` with `doc` (a replacement update,
    /// findAndModify with a replacement, `$merge`): logged without an update description.
    pub fn replace(
        &mut self,
        coll: &CollectionInfo,
        key: DocKey,
        doc: StoredDoc,
    ) -> Result<(), StorageError> {
        self.check_open()?;
        let cost = self.reserve_write(coll, &key, Some(&doc))?;
        let result = self.replace_unaccounted(coll, key, doc, true);
        self.settle_write(cost, result.is_ok());
        result
    }

    /// Writes `doc`, the visible document under `key` changed by update operators or a
    /// pipeline: logged with its update description (computed at commit), unless some other
    /// write of this transaction replaced the document.
    pub fn update(
        &mut self,
        coll: &CollectionInfo,
        key: DocKey,
        doc: StoredDoc,
    ) -> Result<(), StorageError> {
        self.check_open()?;
        let cost = self.reserve_write(coll, &key, Some(&doc))?;
        let result = self.replace_unaccounted(coll, key, doc, false);
        self.settle_write(cost, result.is_ok());
        result
    }

    pub(super) fn replace_unaccounted(
        &mut self,
        coll: &CollectionInfo,
        key: DocKey,
        doc: StoredDoc,
        replaces: bool,
    ) -> Result<(), StorageError> {
        let coll = &*self.current_info(coll);
        let already_held = self.docs.contains_key(&(coll.id, key.clone()));
        let pre = self.claim_doc(coll, &key)?;
        if !coll.indexes.is_empty() {
            let indexed = self
                .get(coll, &key)
                .and_then(|old| self.write_index_entries(coll, &key, old.as_ref(), Some(&doc)));
            if let Err(e) = indexed {
                if !already_held {
                    self.unclaim(coll.id, &key);
                }
                return Err(e);
            }
        }
        // A document that did not exist before this transaction is, to others, inserted: an
        // update of one it inserted, or a write of a key nobody had (natural order and the log
        // both depend on telling the two apart).
        let existed = match &pre {
            Some(snapshot_version) => snapshot_version.is_some(),
            None => self
                .origins
                .get(&(coll.id, key.clone()))
                .is_some_and(|o| o.pre.is_some()),
        };
        let write = if existed {
            DocWrite::Update(doc)
        } else {
            DocWrite::Insert(doc)
        };
        self.record_write(coll, key, write, pre, replaces);
        Ok(())
    }

    /// Records a successful write of `key`: the write itself, and on the key's first write
    /// its origin (statement order and the snapshot's version, `pre`, which `claim_doc`
    /// returned); `replaces` marks the document as replaced for the rest of the transaction.
    fn record_write(
        &mut self,
        coll: &CollectionInfo,
        key: DocKey,
        write: DocWrite,
        pre: Option<Option<StoredDoc>>,
        replaces: bool,
    ) {
        let k = (coll.id, key);
        match pre {
            Some(pre) => {
                let seq = self.origins.len();
                let origin = WriteOrigin {
                    seq,
                    pre,
                    replaced: replaces,
                };
                let earlier = self.origins.insert(k.clone(), origin);
                debug_assert!(earlier.is_none(), "a first write of a key is first once");
                self.namespaces.insert(coll.id, coll.ns());
            }
            None if replaces => {
                if let Some(origin) = self.origins.get_mut(&k) {
                    origin.replaced = true;
                }
            }
            None => {}
        }
        debug_assert!(
            self.origins.contains_key(&k),
            "every written key has an origin"
        );
        self.docs.insert(k, write);
    }

    pub fn delete(&mut self, coll: &CollectionInfo, key: DocKey) -> Result<(), StorageError> {
        self.check_open()?;
        let cost = self.reserve_write(coll, &key, None)?;
        let result = self.delete_unaccounted(coll, key);
        self.settle_write(cost, result.is_ok());
        result
    }

    pub(super) fn delete_unaccounted(
        &mut self,
        coll: &CollectionInfo,
        key: DocKey,
    ) -> Result<(), StorageError> {
        let coll = &*self.current_info(coll);
        let old = self.get(coll, &key)?;
        let id = old
            .as_ref()
            .and_then(|d| {
                d.get("_id")
                    .ok()
                    .flatten()
                    .and_then(|v| Bson::try_from(v).ok())
            })
            .unwrap_or(Bson::Null);
        let already_held = self.docs.contains_key(&(coll.id, key.clone()));
        let pre = self.claim_doc(coll, &key)?;
        if let Err(e) = self.write_index_entries(coll, &key, old.as_ref(), None) {
            if !already_held {
                self.unclaim(coll.id, &key);
            }
            return Err(e);
        }
        self.record_write(coll, key, DocWrite::Delete(id), pre, false);
        Ok(())
    }

    /// `coll` as this transaction sees it (its own catalog writes, else its snapshot).
    pub(super) fn current_info(&mut self, coll: &CollectionInfo) -> Arc<CollectionInfo> {
        let ns = coll.ns();
        if let Some(Some(own)) = self.catalog.get(&ns)
            && own.id == coll.id
        {
            return own.clone();
        }
        if let Some(seen) = self.seen_infos.get(&coll.id) {
            return seen.clone();
        }
        let seen = {
            let state = self.snapshot.engine.read_state();
            state
                .catalog
                .get(&ns)
                .and_then(|chain| chain.visible_at(self.snapshot.read_ts))
                .filter(|info| info.id == coll.id)
                .cloned()
        };
        let info = seen.unwrap_or_else(|| Arc::new(coll.clone()));
        self.seen_infos.insert(coll.id, info.clone());
        info
    }

    /// Takes the intent on a document's key. On the key's first write in this transaction,
    /// returns `Some(the version this transaction's snapshot sees)`, read under the lock the
    /// claim takes anyway; `None` when the transaction already holds the key.
    pub(super) fn claim_doc(
        &mut self,
        coll: &CollectionInfo,
        key: &DocKey,
    ) -> Result<Option<Option<StoredDoc>>, StorageError> {
        if self.docs.contains_key(&(coll.id, key.clone())) {
            return Ok(None); // we already hold the intent
        }
        {
            let engine = self.snapshot.engine.clone();
            let mut state = engine.write_state();
            // Writing with a stale set of indexes would leave the new ones without this
            // document: an index build (a catalog intent) in progress, or one committed since
            // this transaction's snapshot, is a conflict.
            if let Some(chain) = state.catalog.get(&coll.ns()) {
                match chain.intent {
                    Some(owner) if owner == self.id => {}
                    Some(_) => return Err(StorageError::WriteConflict),
                    None => {
                        if let Some(Some(latest)) = chain.versions.last().map(|(_, v)| v)
                            && latest.id == coll.id
                            && !latest.same_indexes(coll)
                        {
                            return Err(StorageError::WriteConflict);
                        }
                    }
                }
            }
            state.writers.entry(coll.id).or_default().insert(self.id);
        }
        self.claim_key(coll.id, key).map(Some)
    }

    /// Takes the write intent on one key of a keyspace (documents or index entries); returns
    /// the key's version at this transaction's snapshot.
    pub(super) fn claim_key(
        &self,
        id: CollId,
        key: &DocKey,
    ) -> Result<Option<StoredDoc>, StorageError> {
        let engine = self.snapshot.engine.clone();
        let mut state = engine.write_state();
        let read_ts = self.read_ts();
        let base = state.base.clone();
        let docs = state
            .collections
            .get_mut(&id)
            .ok_or_else(|| StorageError::NamespaceNotFound(format!("keyspace {id}")))?;
        if !docs.contains_key(key) {
            // The first version of this key in memory: start the chain with the base store's
            // version, so snapshots older than this write keep seeing it once the chain (which
            // is authoritative) exists.
            let mut chain = VersionChain::new();
            if let Some(base) = &base
                && let Some((ts, doc)) = base.get(id, key)?
            {
                chain.install_recovered(ts, Some(doc));
            }
            docs.insert(key.clone(), chain);
        }
        let chain = docs.get_mut(key).expect("inserted above");
        chain.claim(self.id, read_ts)?;
        Ok(chain.visible_at(read_ts).cloned())
    }

    /// Gives back an intent taken by a write that then failed, so it is not held unrecorded.
    pub(super) fn unclaim(&mut self, id: CollId, key: &DocKey) {
        let engine = self.snapshot.engine.clone();
        let mut state = engine.write_state();
        if let Some(chains) = state.collections.get_mut(&id)
            && let Some(chain) = chains.get_mut(key)
        {
            chain.release(self.id);
            if chain.is_empty() {
                chains.remove(key);
            }
        }
    }

    /// Memory this transaction's writes hold, as the limits count it.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(super) fn engine(&self) -> &Engine {
        &self.snapshot.engine
    }

    /// Reserves what a write of `doc` (or a delete) under `key` will hold, failing at once if
    /// the transaction, or all open ones together, would pass their limit. Returns (reserved,
    /// what the key's earlier write in this transaction held), for [`Txn::settle_write`].
    pub(super) fn reserve_write(
        &mut self,
        coll: &CollectionInfo,
        key: &DocKey,
        doc: Option<&StoredDoc>,
    ) -> Result<(u64, u64), StorageError> {
        let cost = write_cost(key, doc);
        let replaced = self
            .docs
            .get(&(coll.id, key.clone()))
            .map_or(0, |w| write_cost(key, w.doc()));
        let cache = self.engine().inner.options.cache_bytes;
        let limit = TransactionLimits::per_transaction(cache);
        if self.bytes + cost > limit {
            return Err(StorageError::TransactionTooLargeForCache {
                bytes: self.bytes + cost,
                limit,
                all: false,
            });
        }
        let open = &self.engine().inner.open_txn_bytes;
        let all = open.fetch_add(cost, Ordering::Relaxed) + cost;
        let all_limit = TransactionLimits::all_transactions(cache);
        if all > all_limit {
            open.fetch_sub(cost, Ordering::Relaxed);
            return Err(StorageError::TransactionTooLargeForCache {
                bytes: all,
                limit: all_limit,
                all: true,
            });
        }
        self.bytes += cost;
        Ok((cost, replaced))
    }

    /// After a write: what a replaced earlier write held is given back, or on failure what was
    /// reserved for this one.
    pub(super) fn settle_write(&mut self, (reserved, replaced): (u64, u64), ok: bool) {
        self.give_back(if ok { replaced } else { reserved });
    }

    pub(super) fn give_back(&mut self, bytes: u64) {
        debug_assert!(bytes <= self.bytes, "gives back only what it holds");
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        self.engine()
            .inner
            .open_txn_bytes
            .fetch_sub(bytes, Ordering::Relaxed);
    }
}
