//! [`Txn`], a write transaction: what it holds, how it reads (its snapshot plus its own
//! writes), its memory limits, and how it ends (commit hands it to the pipeline in
//! `commit.rs`; abort or drop gives its intents back). Its writes are in `txn_write.rs`, its
//! index work in `txn_index.rs`, its collection DDL in `txn_catalog.rs`.
//!
//! Invariants:
//! - an open transaction holds the intent on every key in its write maps, and nobody else does;
//! - `bytes` is what its writes hold, and is counted in `Inner::open_txn_bytes` until the
//!   transaction ends (given back at commit or release, exactly once);
//! - after `commit` queued it, the intents belong to the queued commit: `release` does nothing;
//! - its record holds one op per document written (the net effect), in the order of each
//!   document's first write, with creations, option and index changes before them, drops
//!   after them, and annotations last (`log_ops`).
//!
//! Lock order: `Inner::state` (write) alone, never while queueing (`Inner::queue`); see the
//! engine's lock order (`engine.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::{Bound, ControlFlow};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use mangrove_bson::KeyInterval;

use super::catalog::CollectionInfo;
use super::commit::{CommitTicket, PendingCommit, Rejection};
use super::ranges::{as_ref_bound, empty_range, index_range, merge_overlay, own_range};
use super::snapshot::Snapshot;
use super::tail::HandedRecord;
use super::versions::{DocWrite, release_intents};
use super::{CollId, DocKey, Engine, StoredDoc, TxnId, split_ns};
use crate::txlog::{self, CommitMeta, LogOp, LogRecord};
use crate::{StorageError, Timestamp};
use bson::Document;

/// What a document write costs in memory beyond its document and key: the write map's node,
/// the version chain and its intent, the log op it becomes.
pub(super) const WRITE_OVERHEAD: u64 = 160;

/// The memory one open transaction may hold, and all of them together, as fractions of the
/// engine's `cache_bytes`: a quarter each, and a half together. Writes past either fail at
/// once with TransactionTooLargeForCache rather than growing memory until commit.
pub struct TransactionLimits;

impl TransactionLimits {
    pub fn per_transaction(cache_bytes: usize) -> u64 {
        cache_bytes as u64 / 4
    }

    pub fn all_transactions(cache_bytes: usize) -> u64 {
        cache_bytes as u64 / 2
    }
}

/// What one document write holds in memory while its transaction is open.
pub(super) fn write_cost(key: &DocKey, doc: Option<&StoredDoc>) -> u64 {
    2 * key.0.len() as u64 + doc.map_or(0, |d| d.as_bytes().len() as u64) + WRITE_OVERHEAD
}

impl Engine {
    /// Starts a write transaction reading from a fresh snapshot.
    pub fn begin(&self) -> Txn {
        Txn {
            id: self.inner.next_txn_id.fetch_add(1, Ordering::Relaxed),
            snapshot: self.snapshot(),
            docs: BTreeMap::new(),
            index_writes: BTreeMap::new(),
            catalog: BTreeMap::new(),
            shared_creates: BTreeSet::new(),
            created: BTreeSet::new(),
            index_ops: Vec::new(),
            origins: HashMap::new(),
            options_set: BTreeSet::new(),
            annotations: Vec::new(),
            seen_infos: HashMap::new(),
            namespaces: HashMap::new(),
            meta: CommitMeta::default(),
            open: true,
            bytes: 0,
        }
    }
}

/// A write transaction: reads see its snapshot plus its own writes; writes become visible to
/// others only at [`Txn::commit`], all at one timestamp. Dropping an open transaction aborts it.
pub struct Txn {
    pub(super) id: TxnId,
    pub(super) snapshot: Snapshot,
    pub(super) docs: BTreeMap<(CollId, DocKey), DocWrite>,
    /// Index entries this transaction writes (`None` removes one).
    pub(super) index_writes: BTreeMap<(CollId, DocKey), Option<StoredDoc>>,
    pub(super) catalog: BTreeMap<String, Option<Arc<CollectionInfo>>>,
    /// Namespaces of `catalog` this transaction creates "if absent".
    pub(super) shared_creates: BTreeSet<String>,
    /// Namespaces of `catalog` this transaction creates (explicitly or "if absent").
    pub(super) created: BTreeSet<String>,
    /// Index creations and drops, in order, for the log.
    pub(super) index_ops: Vec<LogOp>,
    /// How each key of `docs` was first written, for its log op.
    pub(super) origins: HashMap<(CollId, DocKey), WriteOrigin>,
    /// Existing collections whose options this transaction changes (collMod).
    pub(super) options_set: BTreeSet<String>,
    /// `LogOp::Command` annotations, in order.
    pub(super) annotations: Vec<LogOp>,
    /// Each written collection as this transaction's snapshot sees it. Writes go by this, not
    /// by the `CollectionInfo` the caller passes, which may be older: a caller that read it
    /// before an index build and retries after a conflict must maintain the new index.
    pub(super) seen_infos: HashMap<CollId, Arc<CollectionInfo>>,
    /// The namespace of every collection written, for the log record.
    pub(super) namespaces: HashMap<CollId, String>,
    pub(super) meta: CommitMeta,
    pub(super) open: bool,
    /// Memory the writes hold (see [`write_cost`]), counted against the transaction limits.
    pub(super) bytes: u64,
}

/// How a transaction first wrote a document, for the document's log op.
pub(super) struct WriteOrigin {
    /// The order of the first write among the transaction's documents (statement order).
    pub(super) seq: usize,
    /// The document as the transaction's snapshot sees it (`None`: absent), taken when the
    /// write claimed the key: the pre-image, and the base of the update description.
    pub(super) pre: Option<StoredDoc>,
    /// Whether some write of the transaction replaced the document whole (a replacement, or a
    /// re-insert after a delete): then the log has no update description for it.
    pub(super) replaced: bool,
}

impl Txn {
    pub fn id(&self) -> TxnId {
        self.id
    }

    pub fn read_ts(&self) -> Timestamp {
        self.snapshot.read_ts
    }

    /// Records who commits this transaction, for the log.
    pub fn set_meta(&mut self, meta: CommitMeta) {
        self.meta = meta;
    }

    /// Adds an annotation to the record: `o` names the command the transaction's writes
    /// implement (`{renameCollection: ..}`, `{dropDatabase: 1}`, `{collMod: ..}`), for change
    /// streams. Logged after the writes as [`LogOp::Command`]; replay ignores it. A
    /// transaction without writes logs nothing, annotations included.
    pub fn annotate(&mut self, ns: &str, o: Document) {
        debug_assert!(!ns.is_empty(), "an annotation names its namespace");
        self.annotations.push(LogOp::Command {
            ns: ns.to_string(),
            o,
        });
    }

    /// Whether this transaction creates `ns` explicitly (not "if absent").
    pub fn creates(&self, ns: &str) -> bool {
        self.created.contains(ns) && !self.shared_creates.contains(ns)
    }

    /// Whether committing writes nothing: an annotation alone is a record (a `collMod` that
    /// changes nothing is still an event for change streams, as in mongod's oplog).
    pub fn is_read_only(&self) -> bool {
        self.docs.is_empty()
            && self.catalog.is_empty()
            && self.index_writes.is_empty()
            && self.annotations.is_empty()
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

    pub fn get(
        &self,
        coll: &CollectionInfo,
        key: &DocKey,
    ) -> Result<Option<StoredDoc>, StorageError> {
        match self.docs.get(&(coll.id, key.clone())) {
            Some(own) => Ok(own.doc().cloned()),
            None => self.snapshot.get(coll, key),
        }
    }

    /// Like [`Snapshot::scan`], with this transaction's own writes merged in key order.
    pub fn scan(
        &self,
        coll: &CollectionInfo,
        after: Option<&DocKey>,
        mut visit: impl FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        let lower = match after {
            Some(k) => Bound::Excluded((coll.id, k.clone())),
            None => Bound::Included((coll.id, DocKey(Vec::new()))),
        };
        let own = self
            .docs
            .range((lower, Bound::Unbounded))
            .take_while(|((id, _), _)| *id == coll.id)
            .map(|((_, key), write)| (key, write.doc()));
        merge_overlay(
            own,
            |emit| self.snapshot.scan(coll, after, emit),
            false,
            &mut visit,
        )
    }

    /// Like [`Snapshot::scan_range`], with this transaction's own writes merged in.
    pub fn scan_range(
        &self,
        coll: &CollectionInfo,
        interval: &KeyInterval,
        resume: Option<&DocKey>,
        reverse: bool,
        mut visit: impl FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        let (lower, upper) = index_range(interval, resume, reverse);
        if empty_range(as_ref_bound(&lower), as_ref_bound(&upper)) {
            return Ok(());
        }
        let own = own_range(&self.docs, coll.id, &lower, &upper, reverse)
            .map(|(key, write)| (key, write.doc()));
        merge_overlay(
            own,
            |emit| {
                self.snapshot.scan_in(
                    coll.id,
                    as_ref_bound(&lower),
                    as_ref_bound(&upper),
                    reverse,
                    emit,
                )
            },
            reverse,
            &mut visit,
        )
    }

    pub(super) fn check_open(&self) -> Result<(), StorageError> {
        if self.open {
            Ok(())
        } else {
            Err(StorageError::TxnClosed)
        }
    }

    /// Hands the transaction to the log writer and returns at once: the writes become visible
    /// at one new timestamp once written to the log, and durable after its fdatasync; wait on
    /// the ticket for either. A read-only transaction commits at its read timestamp.
    pub fn commit(mut self) -> Result<CommitTicket, StorageError> {
        self.check_open()?;
        if self.is_read_only() {
            // Failed writes may still have registered it as a writer of some collection.
            self.release();
            return Ok(CommitTicket {
                ts: self.read_ts(),
                progress: None,
                rejected: None,
            });
        }
        let ops = self.log_ops();
        let prepared = txlog::encode_record(&self.meta, &ops)
            .and_then(|record| Ok((record, self.natural_changes()?)));
        let (record, natural) = match prepared {
            Ok(r) => r,
            Err(e) => {
                self.release();
                return Err(e);
            }
        };
        let engine = self.snapshot.engine.clone();
        let rejected = Rejection::default();
        let handed = self.handed_record(&engine, ops, record.len());
        let pending = PendingCommit {
            ts: Timestamp::ZERO,
            txn: self.id,
            docs: std::mem::take(&mut self.docs),
            index_writes: std::mem::take(&mut self.index_writes),
            catalog: std::mem::take(&mut self.catalog),
            shared_creates: std::mem::take(&mut self.shared_creates),
            natural,
            handed,
            rejected: rejected.clone(),
        };
        let progress = engine.inner.progress.subscribe();
        // From here the writes are the commit queue's (bounded by its own budget), then the
        // engine's (bounded by checkpoints).
        self.give_back(self.bytes);
        // The transaction reads nothing more; releasing its snapshot before the writer installs
        // the commit lets that install prune what only this snapshot kept alive.
        self.snapshot.release();
        match engine.enqueue(record, pending) {
            Ok(ts) => {
                // The intents now belong to the queued commit; the writer installs them.
                self.open = false;
                Ok(CommitTicket {
                    ts,
                    progress: Some(progress),
                    rejected: Some(rejected),
                })
            }
            Err(refused) => {
                let (e, pending) = *refused;
                // Take the writes back so that `release` (on drop) gives their intents back.
                self.docs = pending.docs;
                self.index_writes = pending.index_writes;
                self.catalog = pending.catalog;
                self.shared_creates = pending.shared_creates;
                Err(e)
            }
        }
    }

    /// While change streams read the shared tail, the log writer hands them the record as
    /// built here instead of their reading it back from the log (see `tail.rs`).
    fn handed_record(
        &mut self,
        engine: &Engine,
        ops: Vec<LogOp>,
        len: usize,
    ) -> Option<HandedRecord> {
        let wanted = engine.inner.history_tail.wanted.load(Ordering::Relaxed);
        wanted.then(|| HandedRecord {
            record: LogRecord {
                ts: Timestamp::ZERO,
                wall_ms: 0,
                meta: std::mem::take(&mut self.meta),
                ops,
            },
            len,
        })
    }

    /// The transaction's writes in the order replay must apply them: creations, option and
    /// index changes, documents (in the order of their first write), drops, then annotations.
    /// Runs at commit, before the transaction is queued and under no lock: update
    /// descriptions are computed here.
    pub(super) fn log_ops(&self) -> Vec<LogOp> {
        let mut ops = Vec::with_capacity(self.docs.len() + self.catalog.len());
        for (ns, info) in &self.catalog {
            if let Some(info) = info
                && self.created.contains(ns)
            {
                ops.push(LogOp::CreateCollection {
                    ns: ns.clone(),
                    options: (*info.options).clone(),
                });
            }
        }
        for ns in &self.options_set {
            if let Some(Some(info)) = self.catalog.get(ns) {
                ops.push(LogOp::SetCollectionOptions {
                    ns: ns.clone(),
                    options: (*info.options).clone(),
                });
            }
        }
        ops.extend(self.index_ops.iter().cloned());
        ops.extend(self.doc_ops());
        for (ns, info) in &self.catalog {
            if info.is_none() {
                ops.push(LogOp::DropCollection { ns: ns.clone() });
            }
        }
        ops.extend(self.annotations.iter().cloned());
        ops
    }

    /// One op per written document, in the order of each document's first write.
    fn doc_ops(&self) -> Vec<LogOp> {
        let mut pre_images: HashMap<CollId, bool> = HashMap::new();
        let mut ops: Vec<(usize, LogOp)> = Vec::with_capacity(self.docs.len());
        for (k, write) in &self.docs {
            let (coll_id, key) = k;
            let ns = self.namespaces.get(coll_id).cloned().unwrap_or_default();
            let origin = self.origins.get(k);
            debug_assert!(origin.is_some(), "every written key has an origin");
            let with_pre = *pre_images
                .entry(*coll_id)
                .or_insert_with(|| self.records_pre_images(*coll_id, &ns));
            let pre = || origin.and_then(|o| o.pre.clone()).filter(|_| with_pre);
            let key = key.0.clone();
            let op = match write {
                DocWrite::Insert(d) => LogOp::Insert {
                    ns,
                    key,
                    doc: d.clone(),
                },
                DocWrite::Update(d) => LogOp::Update {
                    ns,
                    key,
                    doc: d.clone(),
                    diff: origin.and_then(|o| update_diff(o, d)),
                    pre: pre(),
                },
                DocWrite::Delete(id) => LogOp::Delete {
                    ns,
                    key,
                    id: id.clone(),
                    pre: pre(),
                },
            };
            ops.push((origin.map_or(usize::MAX, |o| o.seq), op));
        }
        ops.sort_by_key(|(seq, _)| *seq);
        ops.into_iter().map(|(_, op)| op).collect()
    }

    /// Whether the collection `id` (named `ns`) has `changeStreamPreAndPostImages: {enabled:
    /// true}`, as this transaction sees it.
    fn records_pre_images(&self, id: CollId, ns: &str) -> bool {
        let info = match self.catalog.get(ns) {
            Some(Some(own)) if own.id == id => Some(own),
            _ => self.seen_infos.get(&id),
        };
        info.is_some_and(|info| info.records_pre_images())
    }

    /// Releases every intent; nothing of this transaction was ever visible to others.
    pub fn abort(mut self) {
        self.release();
    }

    pub(super) fn release(&mut self) {
        self.give_back(self.bytes);
        if !self.open {
            return;
        }
        self.open = false;
        let engine = self.snapshot.engine.clone();
        let mut state = engine.write_state();
        release_intents(
            &mut state,
            self.id,
            self.docs.keys().chain(self.index_writes.keys()),
            &self.catalog,
        );
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        self.release();
    }
}

/// The update description of an update by operators or a pipeline, from the document before
/// the transaction to `post`; `None` for a replaced document (or, defensively, one that did not
/// exist before: then there is nothing to describe the change from).
fn update_diff(origin: &WriteOrigin, post: &StoredDoc) -> Option<StoredDoc> {
    if origin.replaced {
        return None;
    }
    let pre = origin.pre.as_ref()?;
    Some(Arc::new(mangrove_bson::update_description_raw(pre, post)))
}
