use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bson::raw::{RawBinaryRef, cstr};
use bson::{Bson, RawDocument, RawDocumentBuf};
use mangrove_bson::{IndexSpec, KeyInterval, PartialFilters};
use tokio::sync::watch;

use crate::base::{BaseStore, BaseVerifyReport};
use crate::txlog::{self, CommitMeta, ControlHandle, LogOp, LogWriter};
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

/// One document write of an open transaction. Inserts and updates are told apart only so the
/// log reads naturally; the engine treats both as a new version.
#[derive(Clone)]
enum DocWrite {
    Insert(StoredDoc),
    Update(StoredDoc),
    /// Keeps the deleted document's `_id`, for the log.
    Delete(Bson),
}

impl DocWrite {
    fn doc(&self) -> Option<&StoredDoc> {
        match self {
            DocWrite::Insert(d) | DocWrite::Update(d) => Some(d),
            DocWrite::Delete(_) => None,
        }
    }
}

/// One collection as the catalog records it at some timestamp.
#[derive(Clone, Debug)]
pub struct CollectionInfo {
    pub db: String,
    pub name: String,
    pub options: bson::Document,
    /// Secondary indexes (the `_id` index is the collection's own key order).
    pub indexes: Vec<Arc<IndexInfo>>,
    id: CollId,
}

impl CollectionInfo {
    pub fn ns(&self) -> String {
        format!("{}.{}", self.db, self.name)
    }

    /// The keyspaces this collection owns: its documents and each index's entries.
    fn keyspaces(&self) -> impl Iterator<Item = CollId> + '_ {
        std::iter::once(self.id).chain(self.indexes.iter().map(|i| i.id))
    }

    fn same_indexes(&self, other: &CollectionInfo) -> bool {
        self.indexes.len() == other.indexes.len()
            && self
                .indexes
                .iter()
                .zip(&other.indexes)
                .all(|(a, b)| a.id == b.id)
    }

    pub fn index(&self, name: &str) -> Option<&Arc<IndexInfo>> {
        self.indexes.iter().find(|i| i.key.name == name)
    }
}

/// A secondary index. Its entries live in their own keyspace, versioned like documents and
/// written in the same commit as the documents they index, so every snapshot sees indexes that
/// agree with its documents.
///
/// An entry's key is the index key (see [`IndexSpec::keys`]), followed by the document's key
/// unless the index is unique (then the key alone is the entry, so two documents with one key
/// contend for one entry: DuplicateKey, or WriteConflict while both are uncommitted). Its value
/// is `{r: <document key>}`.
#[derive(Clone, Debug)]
pub struct IndexInfo {
    /// The normalized specification, as `listIndexes` reports it.
    pub spec: bson::Document,
    pub key: Arc<IndexSpec>,
    id: CollId,
}

impl IndexInfo {
    fn entry_key(&self, index_key: &[u8], doc: &DocKey) -> DocKey {
        let mut k = Vec::with_capacity(index_key.len() + doc.0.len());
        k.extend_from_slice(index_key);
        if !self.key.unique {
            k.extend_from_slice(&doc.0);
        }
        DocKey(k)
    }
}

/// What an index entry costs in memory beyond its key: chain, value document, map node.
const INDEX_ENTRY_OVERHEAD: u64 = 128;

/// What a document write costs in memory beyond its document and key: the write map's node,
/// the version chain and its intent, the log op it becomes.
const WRITE_OVERHEAD: u64 = 160;

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
fn write_cost(key: &DocKey, doc: Option<&StoredDoc>) -> u64 {
    2 * key.0.len() as u64 + doc.map_or(0, |d| d.as_bytes().len() as u64) + WRITE_OVERHEAD
}

/// The key, in an index's keyspace, of the marker saying some document made the index multikey.
/// Entry keys start with a type tag (at most 0xEF, inverted or not), so it sorts after every
/// entry, and its value has no `r`, so scans skip it. Versioned like entries and never removed
/// (as MongoDB's multikey flag), so a snapshot knows whether its view of the index is multikey.
const MULTIKEY_MARKER: &[u8] = &[0xFF];

fn multikey_marker() -> DocKey {
    DocKey(MULTIKEY_MARKER.to_vec())
}

fn multikey_value() -> StoredDoc {
    let mut d = RawDocumentBuf::new();
    d.append(cstr!("multikey"), true);
    Arc::new(d)
}

fn entry_value(doc: &DocKey) -> StoredDoc {
    let mut d = RawDocumentBuf::new();
    d.append(
        cstr!("r"),
        RawBinaryRef {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: &doc.0,
        },
    );
    Arc::new(d)
}

/// The document an index entry points at.
fn entry_target(value: &RawDocument) -> Option<DocKey> {
    value.get_binary("r").ok().map(|b| DocKey(b.bytes.to_vec()))
}

fn compile_index(
    spec: bson::Document,
    id: CollId,
    partial: &PartialFilters,
) -> Result<Arc<IndexInfo>, StorageError> {
    let key = IndexSpec::compile(&spec, &**partial).map_err(StorageError::Index)?;
    Ok(Arc::new(IndexInfo {
        spec,
        key: Arc::new(key),
        id,
    }))
}

/// Sets the version of `ts` in a chain being replayed. One record may write an index entry
/// twice (one document leaves a unique key, another takes it), or a catalog entry twice
/// (created, then indexed): the last write of the record wins, as it did live.
fn set_recovered<T>(chain: &mut VersionChain<T>, ts: Timestamp, value: Option<T>) {
    match chain.versions.last_mut() {
        Some((last, v)) if *last == ts => *v = value,
        _ => chain.install_recovered(ts, value),
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

    /// Replays a committed version from the log: no intent is involved.
    fn install_recovered(&mut self, ts: Timestamp, value: Option<T>) {
        assert!(self.intent.is_none());
        assert!(self.newest_ts().is_none_or(|newest| newest < ts));
        self.versions.push((ts, value));
    }

    /// Drops versions no snapshot can see any more: everything older than the newest version at
    /// or before `oldest_reader`.
    /// A lone tombstone goes too once no reader predates it and the base store (as of
    /// `checkpoint`) no longer holds the document: only then does the missing chain mean the
    /// same as the tombstone.
    fn prune(&mut self, oldest_reader: Timestamp, checkpoint: Timestamp) {
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
    /// Collections dropped since the last checkpoint, whose documents the base store still has.
    base_drops: Vec<(Timestamp, CollId)>,
    last_commit: Timestamp,
    next_coll_id: CollId,
    /// Everything committed at or before this is in the base store. A key with no chain in
    /// memory reads from there; a key with a chain reads only from the chain.
    checkpoint_ts: Timestamp,
    base: Option<Arc<BaseStore>>,
    /// Collections that open transactions create "if absent": one reserved id per namespace,
    /// shared by every such transaction, and which of them hold it.
    shared_creates: HashMap<String, SharedCreate>,
    /// Open transactions holding document intents in a collection. An index build (a catalog
    /// write) waits until none does, and writers refuse to start while one is building, so no
    /// document write can miss an index.
    writers: HashMap<CollId, BTreeSet<TxnId>>,
    /// The newest commit that wrote documents of each collection: an index build whose
    /// snapshot predates it would miss that write.
    last_write: HashMap<CollId, Timestamp>,
}

/// A namespace several open transactions may create at once without conflicting: they all
/// write into one collection id, and the first to commit makes it visible (the others' commits
/// find it there). Explicit creates and drops of the namespace conflict with it meanwhile.
struct SharedCreate {
    info: Arc<CollectionInfo>,
    holders: BTreeSet<TxnId>,
}

/// Where an engine keeps its files, and its limits.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// `None` keeps everything in memory (tests); otherwise the log lives in `<dir>/log`.
    pub data_dir: Option<PathBuf>,
    /// A new log segment starts once the current one reaches this size.
    pub segment_bytes: u64,
    /// Committed-but-unwritten log bytes above which committers wait: bounds the queue.
    pub max_pending_log_bytes: usize,
    /// Memory for data. A quarter is the base store's page cache and a quarter bounds the
    /// versions kept in memory between checkpoints (a checkpoint starts when they exceed it);
    /// the rest is headroom for what a checkpoint holds while it writes.
    pub cache_bytes: usize,
    /// A checkpoint starts after this much log since the last one, bounding recovery time.
    pub checkpoint_log_bytes: u64,
    /// ... or after this long, whichever comes first.
    pub checkpoint_interval: Duration,
    /// Log segments the last checkpoint covers that are kept anyway (0: removed at once).
    pub retain_log_segments: usize,
    /// Replays the log and serves reads, but writes nothing: no commits, no checkpoints, no
    /// truncation of a torn tail. For `mangrove verify`.
    pub read_only: bool,
    /// At damage in the log that recovery cannot explain as a torn write, cut the log there
    /// (moving the rest aside) instead of refusing to start: the operator's explicit choice to
    /// lose the transactions after the damage.
    pub truncate_damaged_log: bool,
    /// Compiles partial indexes' `partialFilterExpression`s (the query language is not the
    /// engine's: the server passes the query crate's). The default refuses partial indexes.
    pub partial_filters: PartialFilters,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            data_dir: None,
            segment_bytes: 64 * 1024 * 1024,
            max_pending_log_bytes: 64 * 1024 * 1024,
            cache_bytes: 512 * 1024 * 1024,
            checkpoint_log_bytes: 256 * 1024 * 1024,
            checkpoint_interval: Duration::from_secs(60),
            retain_log_segments: 0,
            read_only: false,
            truncate_damaged_log: false,
            partial_filters: PartialFilters::default(),
        }
    }
}

#[derive(Default)]
struct CheckpointSignal {
    requested: bool,
    shutdown: bool,
}

struct Inner {
    stats: LogCounters,
    /// Log bytes written when the last checkpoint began.
    checkpoint_log_bytes: AtomicU64,
    /// Estimated memory of index entries installed since start (they are not logged), and its
    /// value when the last checkpoint began.
    derived_bytes: AtomicU64,
    checkpoint_derived_bytes: AtomicU64,
    checkpoint_signal: Mutex<CheckpointSignal>,
    checkpoint_wake: Condvar,
    /// Held by a running checkpoint.
    checkpointing: Mutex<()>,
    checkpointer: Mutex<Option<std::thread::JoinHandle<()>>>,
    state: RwLock<State>,
    /// Read timestamps of live snapshots, with a count each; the minimum bounds version pruning.
    readers: Mutex<BTreeMap<Timestamp, usize>>,
    next_txn_id: AtomicU64,
    /// Memory all open transactions' writes hold together (see [`TransactionLimits`]).
    open_txn_bytes: AtomicU64,
    queue: Mutex<CommitQueue>,
    /// Wakes the writer when commits arrive.
    queue_ready: Condvar,
    /// Wakes committers waiting for room in the queue.
    queue_space: Condvar,
    progress: watch::Sender<LogProgress>,
    options: EngineOptions,
    /// The log writer thread; it hands the log back when it stops, for a clean shutdown's
    /// last word in the control file.
    writer: Mutex<Option<std::thread::JoinHandle<Option<LogWriter>>>>,
    /// The log's control file (none for an in-memory or read-only engine).
    control: Option<Arc<ControlHandle>>,
    /// Held open for the engine's lifetime: the data directory's exclusive lock.
    _lock: Option<File>,
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

fn wall_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Engine {
    /// An engine with no files, for tests: commits go through the same queue and writer.
    pub fn in_memory() -> Engine {
        let state = State {
            // Start the clock at the wall clock, so even an empty database reports a real
            // `operationTime` and `$clusterTime`.
            last_commit: Timestamp::ZERO.next_after(),
            // No base store: a key without a chain is simply absent, as if all were checkpointed.
            checkpoint_ts: Timestamp(u64::MAX),
            ..State::default()
        };
        Self::start(state, None, None, None, EngineOptions::default())
    }

    fn start(
        state: State,
        log: Option<LogWriter>,
        control: Option<Arc<ControlHandle>>,
        lock: Option<File>,
        options: EngineOptions,
    ) -> Engine {
        let last = state.last_commit;
        let (progress, _) = watch::channel(LogProgress::at(last));
        let inner = Arc::new(Inner {
            stats: LogCounters::default(),
            checkpoint_log_bytes: AtomicU64::new(0),
            derived_bytes: AtomicU64::new(0),
            checkpoint_derived_bytes: AtomicU64::new(0),
            checkpoint_signal: Mutex::new(CheckpointSignal::default()),
            checkpoint_wake: Condvar::new(),
            checkpointing: Mutex::new(()),
            checkpointer: Mutex::new(None),
            state: RwLock::new(state),
            readers: Mutex::new(BTreeMap::new()),
            next_txn_id: AtomicU64::new(1),
            open_txn_bytes: AtomicU64::new(0),
            queue: Mutex::new(CommitQueue::starting_at(last)),
            queue_ready: Condvar::new(),
            queue_space: Condvar::new(),
            progress,
            options,
            writer: Mutex::new(None),
            control,
            _lock: lock,
        });
        let engine = Engine { inner };
        let for_writer = engine.clone();
        let handle = std::thread::Builder::new()
            .name("mangrove-log-writer".into())
            .spawn(move || for_writer.write_log(log))
            .expect("cannot spawn the log writer thread");
        *lock_mutex(&engine.inner.writer) = Some(handle);
        if engine.read_state().base.is_some() && !engine.inner.options.read_only {
            let for_checkpointer = engine.clone();
            let handle = std::thread::Builder::new()
                .name("mangrove-checkpointer".into())
                .spawn(move || for_checkpointer.run_checkpointer())
                .expect("cannot spawn the checkpointer thread");
            *lock_mutex(&engine.inner.checkpointer) = Some(handle);
        }
        engine
    }

    /// Stops the log writer after it has written everything queued, records the log's exact
    /// end, then takes a last checkpoint so the next start has little to replay. Commits after
    /// this fail.
    pub fn close(&self) {
        let log = self.stop_threads();
        if self.inner.options.read_only {
            return;
        }
        let failed = self.inner.progress.borrow().failed.is_some();
        if let Some(mut log) = log
            && !failed
            && let Err(e) = log.record_clean_end()
        {
            tracing::warn!(error = %e, "cannot record the log's end in its control file");
        }
        if let Err(e) = self.checkpoint() {
            tracing::warn!(error = %e, "final checkpoint failed; the next start replays the log");
        }
    }

    /// Stops like [`Engine::close`] but leaves the state a crash would: no final checkpoint,
    /// so the next open replays the log. For tests of recovery.
    #[doc(hidden)]
    pub fn close_without_checkpoint(&self) {
        self.stop_threads();
    }

    fn stop_threads(&self) -> Option<LogWriter> {
        lock_mutex(&self.inner.queue).shutdown = true;
        self.inner.queue_ready.notify_all();
        self.inner.queue_space.notify_all();
        let log = lock_mutex(&self.inner.writer)
            .take()
            .and_then(|handle| handle.join().ok().flatten());
        lock_mutex(&self.inner.checkpoint_signal).shutdown = true;
        self.inner.checkpoint_wake.notify_all();
        if let Some(handle) = lock_mutex(&self.inner.checkpointer).take() {
            let _ = handle.join();
        }
        log
    }

    /// The newest commit timestamp: what a fresh snapshot would see, and the server's
    /// `operationTime` for reads.
    pub fn last_commit(&self) -> Timestamp {
        self.read_state().last_commit
    }

    /// The memory budget the engine was opened with (`--cache-size`).
    pub fn cache_bytes(&self) -> usize {
        self.inner.options.cache_bytes
    }

    pub fn log_stats(&self) -> LogStats {
        let s = &self.inner.stats;
        LogStats {
            commits: s.commits.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
        }
    }

    /// The newest commit known to be on disk.
    pub fn last_durable(&self) -> Timestamp {
        self.inner.progress.borrow().durable
    }

    /// Checks every value of the base store (checksums, key order): `mangrove verify`. `None`
    /// for an engine without one.
    pub fn verify_base_store(&self) -> Result<Option<BaseVerifyReport>, StorageError> {
        let base = self.read_state().base.clone();
        base.map(|b| b.verify()).transpose()
    }

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

    /// A ticket that resolves once everything committed up to `ts` is visible or durable: for
    /// reads that must wait for a cluster time (`afterClusterTime`, `majority`).
    pub fn ticket_for(&self, ts: Timestamp) -> CommitTicket {
        CommitTicket {
            ts,
            progress: Some(self.inner.progress.subscribe()),
            rejected: None,
        }
    }

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
            seen_infos: HashMap::new(),
            namespaces: HashMap::new(),
            meta: CommitMeta::default(),
            open: true,
            bytes: 0,
        }
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock would already have aborted the process's invariants;
        // the data itself is only changed by the log writer, which does not panic between steps.
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn oldest_reader(&self) -> Option<Timestamp> {
        lock_mutex(&self.inner.readers).keys().next().copied()
    }
}

/// Merges an authoritative `overlay` (keys in order, each with its document or `None` where it
/// hides one) over the documents `drive` delivers in key order, visiting what is visible until
/// `visit` breaks. Both a snapshot (memory over the base store) and a transaction (its own
/// writes over its snapshot) read this way.
fn merge_overlay<'a>(
    overlay: impl Iterator<Item = (&'a DocKey, Option<&'a StoredDoc>)>,
    drive: impl FnOnce(
        &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError>,
    reverse: bool,
    visit: &mut impl FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
) -> Result<(), StorageError> {
    let mut overlay = overlay.peekable();
    let mut stopped = false;
    // Both sides come in the same order, ascending or (reverse) descending.
    let before = |own: &DocKey, key: &DocKey| if reverse { own > key } else { own < key };
    drive(&mut |key, doc| {
        while let Some((own_key, own_doc)) = overlay.next_if(|(k, _)| before(k, key)) {
            if let Some(d) = own_doc
                && visit(own_key, d).is_break()
            {
                stopped = true;
                return ControlFlow::Break(());
            }
        }
        let flow = match overlay.next_if(|(k, _)| *k == key) {
            Some((own_key, Some(own_doc))) => visit(own_key, own_doc),
            Some((_, None)) => ControlFlow::Continue(()),
            None => visit(key, doc),
        };
        stopped = flow.is_break();
        flow
    })?;
    if !stopped {
        for (key, doc) in overlay {
            if let Some(d) = doc
                && visit(key, d).is_break()
            {
                break;
            }
        }
    }
    Ok(())
}

/// Applies one logged transaction to the state during recovery. Index entries are not in the
/// log: they are derived again from the documents, exactly as the live commit derived them.
fn replay(
    state: &mut State,
    ts: Timestamp,
    ops: &[LogOp],
    partial: &PartialFilters,
) -> Result<(), String> {
    for op in ops {
        match op {
            LogOp::CreateCollection { ns, options } => {
                // Shared ("if absent") creations by concurrent transactions each log the
                // create; only the first made it. An explicit create of an existing
                // collection is refused before it reaches the log, so this is the only case.
                if state
                    .catalog
                    .get(ns)
                    .is_some_and(|c| matches!(c.versions.last(), Some((_, Some(_)))))
                {
                    continue;
                }
                let id = state.next_coll_id;
                state.next_coll_id += 1;
                let (db, name) = split_ns(ns);
                let info = Arc::new(CollectionInfo {
                    db: db.to_string(),
                    name: name.to_string(),
                    options: options.clone(),
                    indexes: Vec::new(),
                    id,
                });
                state.collections.insert(id, BTreeMap::new());
                set_recovered(
                    state
                        .catalog
                        .entry(ns.clone())
                        .or_insert_with(VersionChain::new),
                    ts,
                    Some(info),
                );
            }
            LogOp::DropCollection { ns } => {
                let checkpoint = state.checkpoint_ts;
                let chain = state
                    .catalog
                    .get_mut(ns)
                    .ok_or_else(|| format!("drop of unknown collection {ns}"))?;
                let old = chain.visible_at(ts).cloned();
                chain.install_recovered(ts, None);
                // Nothing reads old versions during recovery: keep only the tombstone.
                chain.prune(ts, checkpoint);
                if let Some(old) = old {
                    for id in old.keyspaces() {
                        state.collections.remove(&id);
                        state.base_drops.push((ts, id));
                    }
                }
            }
            LogOp::CreateIndex { ns, spec } => {
                let info = current_info(state, ns, ts)?;
                let id = state.next_coll_id;
                state.next_coll_id += 1;
                let index = compile_index(spec.clone(), id, partial).map_err(|e| e.to_string())?;
                state.collections.insert(id, BTreeMap::new());
                let mut entries = BTreeMap::new();
                for (key, doc) in latest_docs(state, info.id)? {
                    let (keys, multikey) = index
                        .key
                        .keys_and_multikey(&doc)
                        .map_err(|e| e.to_string())?;
                    for k in keys {
                        entries.insert(index.entry_key(&k, &key), entry_value(&key));
                    }
                    if multikey {
                        entries.insert(multikey_marker(), multikey_value());
                    }
                }
                let keyspace = state.collections.get_mut(&id).expect("inserted above");
                for (entry, value) in entries {
                    let mut chain = VersionChain::new();
                    chain.install_recovered(ts, Some(value));
                    keyspace.insert(entry, chain);
                }
                let mut new_info = (*info).clone();
                new_info.indexes.push(index);
                let chain = state.catalog.get_mut(ns).expect("current_info found it");
                set_recovered(chain, ts, Some(Arc::new(new_info)));
            }
            LogOp::DropIndex { ns, name } => {
                let info = current_info(state, ns, ts)?;
                let mut new_info = (*info).clone();
                let pos = new_info
                    .indexes
                    .iter()
                    .position(|i| i.key.name == *name)
                    .ok_or_else(|| format!("drop of unknown index {name} on {ns}"))?;
                let removed = new_info.indexes.remove(pos);
                state.collections.remove(&removed.id);
                state.base_drops.push((ts, removed.id));
                let chain = state.catalog.get_mut(ns).expect("current_info found it");
                set_recovered(chain, ts, Some(Arc::new(new_info)));
            }
            LogOp::Insert { ns, key, doc } | LogOp::Update { ns, key, doc } => {
                replay_doc(state, ns, ts, DocKey(key.clone()), Some(doc))?;
            }
            LogOp::Delete { ns, key, .. } => {
                replay_doc(state, ns, ts, DocKey(key.clone()), None)?;
            }
        }
    }
    Ok(())
}

fn current_info(state: &State, ns: &str, ts: Timestamp) -> Result<Arc<CollectionInfo>, String> {
    state
        .catalog
        .get(ns)
        .and_then(|c| c.visible_at(ts))
        .cloned()
        .ok_or_else(|| format!("index change on unknown collection {ns}"))
}

/// Every document of a keyspace as of the newest version, during recovery: chains in memory
/// over the base store.
fn latest_docs(state: &State, id: CollId) -> Result<Vec<(DocKey, StoredDoc)>, String> {
    let memory = state
        .collections
        .get(&id)
        .into_iter()
        .flat_map(|docs| docs.iter())
        .map(|(key, chain)| (key, chain.versions.last().and_then(|(_, v)| v.as_ref())));
    let mut out = Vec::new();
    merge_overlay(
        memory,
        |emit| match &state.base {
            Some(base) => base.scan(
                id,
                Bound::Unbounded,
                Bound::Unbounded,
                false,
                |key, _, doc| emit(&key, &doc),
            ),
            None => Ok(()),
        },
        false,
        &mut |key, doc| {
            out.push((key.clone(), doc.clone()));
            ControlFlow::Continue(())
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Replays one document write (`None` deletes) and the index entries it changes.
fn replay_doc(
    state: &mut State,
    ns: &str,
    ts: Timestamp,
    key: DocKey,
    doc: Option<&StoredDoc>,
) -> Result<(), String> {
    let checkpoint = state.checkpoint_ts;
    let info =
        current_info(state, ns, ts).map_err(|_| format!("write to unknown collection {ns}"))?;
    let old = if info.indexes.is_empty() {
        None
    } else {
        match state.collections.get(&info.id).and_then(|d| d.get(&key)) {
            Some(chain) => chain.versions.last().and_then(|(_, v)| v.clone()),
            None => match &state.base {
                Some(base) => base
                    .get(info.id, &key)
                    .map_err(|e| e.to_string())?
                    .map(|(_, d)| d),
                None => None,
            },
        }
    };
    for index in &info.indexes {
        let old_keys = match &old {
            Some(d) => index.key.keys(d).map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        let (new_keys, multikey) = match doc {
            Some(d) => index.key.keys_and_multikey(d).map_err(|e| e.to_string())?,
            None => (Vec::new(), false),
        };
        let marked = multikey
            && (state
                .collections
                .get(&index.id)
                .and_then(|k| k.get(&multikey_marker()))
                .is_some_and(|c| c.versions.last().is_some_and(|(_, v)| v.is_some()))
                || match &state.base {
                    Some(base) => base
                        .get(index.id, &multikey_marker())
                        .map_err(|e| e.to_string())?
                        .is_some(),
                    None => false,
                });
        let keyspace = state
            .collections
            .get_mut(&index.id)
            .ok_or_else(|| format!("index {} of {ns} has no entries", index.key.name))?;
        if multikey && !marked {
            let chain = keyspace
                .entry(multikey_marker())
                .or_insert_with(VersionChain::new);
            set_recovered(chain, ts, Some(multikey_value()));
        }
        let changes = old_keys
            .iter()
            .filter(|k| new_keys.binary_search(k).is_err())
            .map(|k| (index.entry_key(k, &key), None))
            .chain(
                new_keys
                    .iter()
                    .filter(|k| old_keys.binary_search(k).is_err())
                    .map(|k| (index.entry_key(k, &key), Some(entry_value(&key)))),
            );
        for (entry, value) in changes {
            let chain = keyspace
                .entry(entry.clone())
                .or_insert_with(VersionChain::new);
            set_recovered(chain, ts, value);
            chain.prune(ts, checkpoint);
            if chain.is_empty() {
                keyspace.remove(&entry);
            }
        }
    }
    let docs = state
        .collections
        .get_mut(&info.id)
        .ok_or_else(|| format!("collection {ns} has no data"))?;
    // A delete's chain is created even if memory has none: the base store may hold the
    // document, and the tombstone must hide it until the next checkpoint.
    let chain = docs.entry(key.clone()).or_insert_with(VersionChain::new);
    chain.install_recovered(ts, doc.cloned());
    chain.prune(ts, checkpoint);
    if chain.is_empty() {
        docs.remove(&key);
    }
    Ok(())
}

fn lock_data_dir(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join("mangrove.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StorageError::io(format!("cannot open lock file {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::Locked {
            dir: dir.to_path_buf(),
            lock: path,
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(StorageError::io(
            format!("cannot lock {}", path.display()),
            e,
        )),
    }
}

/// Makes a shared ("if absent") creation visible, unless another holder's commit already did.
fn install_shared_create(
    state: &mut State,
    txn: TxnId,
    ts: Timestamp,
    ns: &str,
    info: Option<Arc<CollectionInfo>>,
) {
    let info = info.expect("a shared create is a creation");
    let shared = state
        .shared_creates
        .get_mut(ns)
        .expect("a shared creation is registered until its holders finish");
    assert!(
        shared.holders.remove(&txn),
        "commit of a shared create it does not hold"
    );
    assert_eq!(shared.info.id, info.id);
    if shared.holders.is_empty() {
        state.shared_creates.remove(ns);
    }
    let chain = state
        .catalog
        .entry(ns.to_string())
        .or_insert_with(VersionChain::new);
    match chain.versions.last() {
        Some((_, Some(existing))) => {
            assert_eq!(
                existing.id, info.id,
                "explicit creates conflict with shared ones"
            );
        }
        _ => chain.install_recovered(ts, Some(info)),
    }
}

/// Gives back intents a transaction took, and drops chains and collections that only existed
/// for it.
fn release_intents<'a>(
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
            if chain.intent == Some(txn) {
                chain.intent = None;
            }
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

/// An interval narrowed to the keys past `resume` (above it, or below it when `reverse`), as
/// owned bounds over keys.
fn index_range(
    interval: &KeyInterval,
    resume: Option<&DocKey>,
    reverse: bool,
) -> (Bound<DocKey>, Bound<DocKey>) {
    let own = |b: &Bound<Vec<u8>>| match b {
        Bound::Included(k) => Bound::Included(DocKey(k.clone())),
        Bound::Excluded(k) => Bound::Excluded(DocKey(k.clone())),
        Bound::Unbounded => Bound::Unbounded,
    };
    let (mut lower, mut upper) = (own(&interval.0), own(&interval.1));
    if let Some(resume) = resume {
        if reverse {
            // A backward walk resumes below the last key it returned.
            let within = match &upper {
                Bound::Included(u) | Bound::Excluded(u) => resume <= u,
                Bound::Unbounded => true,
            };
            if within {
                upper = Bound::Excluded(resume.clone());
            }
        } else {
            let within = match &lower {
                Bound::Included(l) | Bound::Excluded(l) => resume >= l,
                Bound::Unbounded => true,
            };
            if within {
                lower = Bound::Excluded(resume.clone());
            }
        }
    }
    (lower, upper)
}

/// A transaction's own writes to one keyspace within the bounds, ascending or (reverse)
/// descending: the overlay its reads merge over the snapshot.
fn own_range<'a, V>(
    writes: &'a BTreeMap<(CollId, DocKey), V>,
    id: CollId,
    lower: &Bound<DocKey>,
    upper: &Bound<DocKey>,
    reverse: bool,
) -> Box<dyn Iterator<Item = (&'a DocKey, &'a V)> + 'a> {
    let within = |b: &Bound<DocKey>| match b {
        Bound::Included(k) => Bound::Included((id, k.clone())),
        Bound::Excluded(k) => Bound::Excluded((id, k.clone())),
        Bound::Unbounded => Bound::Unbounded,
    };
    let lower = match lower {
        Bound::Unbounded => Bound::Included((id, DocKey(Vec::new()))),
        b => within(b),
    };
    let upper = match upper {
        Bound::Unbounded => Bound::Excluded((id + 1, DocKey(Vec::new()))),
        b => within(b),
    };
    let range = writes.range((lower, upper)).map(|((_, key), v)| (key, v));
    if reverse {
        Box::new(range.rev())
    } else {
        Box::new(range)
    }
}

fn empty_range(lower: Bound<&DocKey>, upper: Bound<&DocKey>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l > u,
        (Bound::Included(l) | Bound::Excluded(l), Bound::Included(u) | Bound::Excluded(u)) => {
            l >= u
        }
        _ => false,
    }
}

fn as_ref_bound(b: &Bound<DocKey>) -> Bound<&DocKey> {
    match b {
        Bound::Included(k) => Bound::Included(k),
        Bound::Excluded(k) => Bound::Excluded(k),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn lock_mutex<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
    /// Already taken out of the live readers (by a committing transaction).
    released: bool,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.release();
    }
}

impl Snapshot {
    /// Stops counting as a reader: versions only this snapshot needed may be pruned.
    fn release(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let mut readers = lock_mutex(&self.engine.inner.readers);
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

    /// The document under `key` as of this snapshot. A chain in memory is authoritative;
    /// without one, the base store has the answer.
    pub fn get(
        &self,
        coll: &CollectionInfo,
        key: &DocKey,
    ) -> Result<Option<StoredDoc>, StorageError> {
        self.get_in(coll.id, key)
    }

    fn get_in(&self, id: CollId, key: &DocKey) -> Result<Option<StoredDoc>, StorageError> {
        let state = self.engine.read_state();
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

    fn scan_in(
        &self,
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
        let state = self.engine.read_state();
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
            |key, value| {
                if let Some(target) = entry_target(value) {
                    out.push((key.clone(), target));
                }
                if out.len() >= max {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
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

/// A write transaction: reads see its snapshot plus its own writes; writes become visible to
/// others only at [`Txn::commit`], all at one timestamp. Dropping an open transaction aborts it.
pub struct Txn {
    id: TxnId,
    snapshot: Snapshot,
    docs: BTreeMap<(CollId, DocKey), DocWrite>,
    /// Index entries this transaction writes (`None` removes one).
    index_writes: BTreeMap<(CollId, DocKey), Option<StoredDoc>>,
    catalog: BTreeMap<String, Option<Arc<CollectionInfo>>>,
    /// Namespaces of `catalog` this transaction creates "if absent".
    shared_creates: BTreeSet<String>,
    /// Namespaces of `catalog` this transaction creates (explicitly or "if absent").
    created: BTreeSet<String>,
    /// Index creations and drops, in order, for the log.
    index_ops: Vec<LogOp>,
    /// Each written collection as this transaction's snapshot sees it. Writes go by this, not
    /// by the `CollectionInfo` the caller passes, which may be older: a caller that read it
    /// before an index build and retries after a conflict must maintain the new index.
    seen_infos: HashMap<CollId, Arc<CollectionInfo>>,
    /// The namespace of every collection written, for the log record.
    namespaces: HashMap<CollId, String>,
    meta: CommitMeta,
    open: bool,
    /// Memory the writes hold (see [`write_cost`]), counted against the transaction limits.
    bytes: u64,
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

    /// Whether this transaction creates `ns` explicitly (not "if absent").
    pub fn creates(&self, ns: &str) -> bool {
        self.created.contains(ns) && !self.shared_creates.contains(ns)
    }

    pub fn is_read_only(&self) -> bool {
        self.docs.is_empty() && self.catalog.is_empty() && self.index_writes.is_empty()
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
        // One catalog write per namespace per transaction: a drop and a re-create in one record
        // would replay as a create of an existing collection.
        if matches!(self.catalog.get(ns), Some(None)) {
            return Err(StorageError::Encoding(format!(
                "{ns} was dropped in this transaction; create it again in a later one"
            )));
        }
        let engine = self.snapshot.engine.clone();
        let mut state = engine.write_state();
        let read_ts = self.read_ts();
        if state.shared_creates.contains_key(ns) {
            return Err(StorageError::WriteConflict);
        }
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
            indexes: Vec::new(),
            id,
        });
        state.collections.insert(id, BTreeMap::new());
        self.catalog.insert(ns.to_string(), Some(info.clone()));
        self.created.insert(ns.to_string());
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
        if state.shared_creates.contains_key(ns) {
            return Err(StorageError::WriteConflict);
        }
        state
            .catalog
            .entry(ns.to_string())
            .or_insert_with(VersionChain::new)
            .claim(self.id, read_ts)?;
        self.catalog.insert(ns.to_string(), None);
        self.created.remove(ns);
        Ok(())
    }

    /// The collection `ns`, created "if absent" when nobody has it: MongoDB's implicit creation
    /// by a write, without its lock-timeout failures. Any number of open transactions may do
    /// this for one namespace at once; they share one collection id, the creation stays
    /// invisible to others until one of them commits, and none conflicts with another over it.
    /// A collection committed after this transaction's snapshot is returned as it is, so
    /// writes go into it. Only an explicit create or drop in progress is a conflict.
    pub fn create_collection_shared(
        &mut self,
        ns: &str,
        options: bson::Document,
    ) -> Result<CollectionInfo, StorageError> {
        self.check_open()?;
        if let Some(info) = self.collection(ns) {
            return Ok(info);
        }
        let engine = self.snapshot.engine.clone();
        let mut state = engine.write_state();
        let state = &mut *state;
        if let Some(chain) = state.catalog.get(ns) {
            if chain.intent.is_some() {
                return Err(StorageError::WriteConflict);
            }
            match chain.versions.last() {
                Some((_, Some(info))) => return Ok((**info).clone()),
                // Dropped after our snapshot: a real race with DDL.
                Some((ts, None)) if *ts > self.read_ts() => {
                    return Err(StorageError::WriteConflict);
                }
                _ => {}
            }
        }
        let shared = match state.shared_creates.entry(ns.to_string()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let id = state.next_coll_id;
                state.next_coll_id += 1;
                let (db, name) = split_ns(ns);
                state.collections.insert(id, BTreeMap::new());
                e.insert(SharedCreate {
                    info: Arc::new(CollectionInfo {
                        db: db.to_string(),
                        name: name.to_string(),
                        options,
                        indexes: Vec::new(),
                        id,
                    }),
                    holders: BTreeSet::new(),
                })
            }
        };
        shared.holders.insert(self.id);
        let info = shared.info.clone();
        self.catalog.insert(ns.to_string(), Some(info.clone()));
        self.shared_creates.insert(ns.to_string());
        self.created.insert(ns.to_string());
        Ok((*info).clone())
    }

    /// Inserts a document under `key`; DuplicateKey if one is visible (or a unique index has
    /// its key), WriteConflict if another transaction holds or recently committed the key.
    pub fn insert(
        &mut self,
        coll: &CollectionInfo,
        key: DocKey,
        doc: StoredDoc,
    ) -> Result<(), StorageError> {
        self.check_open()?;
        let cost = self.reserve_write(coll, &key, Some(&doc))?;
        let result = self.insert_unaccounted(coll, key, doc);
        self.settle_write(cost, result.is_ok());
        result
    }

    fn insert_unaccounted(
        &mut self,
        coll: &CollectionInfo,
        key: DocKey,
        doc: StoredDoc,
    ) -> Result<(), StorageError> {
        let coll = &*self.current_info(coll);
        let already_held = self.docs.contains_key(&(coll.id, key.clone()));
        self.claim_doc(coll, &key)?;
        let checked = match self.get(coll, &key) {
            Ok(Some(_)) => {
                let id = doc
                    .get("_id")
                    .ok()
                    .flatten()
                    .and_then(|v| bson::Bson::try_from(v).ok())
                    .unwrap_or(bson::Bson::Null);
                Err(StorageError::duplicate_id(coll.ns(), id))
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
        // transaction deleted a document there: to everyone else, that is an update.
        let write = match self.docs.get(&(coll.id, key.clone())) {
            Some(DocWrite::Delete(_)) => DocWrite::Update(doc),
            _ => DocWrite::Insert(doc),
        };
        self.namespaces.insert(coll.id, coll.ns());
        self.docs.insert((coll.id, key), write);
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
        let cost = self.reserve_write(coll, &key, Some(&doc))?;
        let result = self.replace_unaccounted(coll, key, doc);
        self.settle_write(cost, result.is_ok());
        result
    }

    fn replace_unaccounted(
        &mut self,
        coll: &CollectionInfo,
        key: DocKey,
        doc: StoredDoc,
    ) -> Result<(), StorageError> {
        let coll = &*self.current_info(coll);
        let already_held = self.docs.contains_key(&(coll.id, key.clone()));
        self.claim_doc(coll, &key)?;
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
        // An update of a document this transaction inserted is still, to others, an insert.
        let write = match self.docs.get(&(coll.id, key.clone())) {
            Some(DocWrite::Insert(_)) => DocWrite::Insert(doc),
            _ => DocWrite::Update(doc),
        };
        self.namespaces.insert(coll.id, coll.ns());
        self.docs.insert((coll.id, key), write);
        Ok(())
    }

    pub fn delete(&mut self, coll: &CollectionInfo, key: DocKey) -> Result<(), StorageError> {
        self.check_open()?;
        let cost = self.reserve_write(coll, &key, None)?;
        let result = self.delete_unaccounted(coll, key);
        self.settle_write(cost, result.is_ok());
        result
    }

    fn delete_unaccounted(
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
        self.claim_doc(coll, &key)?;
        if let Err(e) = self.write_index_entries(coll, &key, old.as_ref(), None) {
            if !already_held {
                self.unclaim(coll.id, &key);
            }
            return Err(e);
        }
        self.namespaces.insert(coll.id, coll.ns());
        self.docs.insert((coll.id, key), DocWrite::Delete(id));
        Ok(())
    }

    /// `coll` as this transaction sees it (its own catalog writes, else its snapshot).
    fn current_info(&mut self, coll: &CollectionInfo) -> Arc<CollectionInfo> {
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

    /// Updates every index of `coll` for the document under `key` going from `old` to `new`:
    /// all entries are claimed and unique keys checked before any is recorded, so a refused
    /// write leaves nothing behind.
    fn write_index_entries(
        &mut self,
        coll: &CollectionInfo,
        key: &DocKey,
        old: Option<&StoredDoc>,
        new: Option<&StoredDoc>,
    ) -> Result<(), StorageError> {
        if coll.indexes.is_empty() {
            return Ok(());
        }
        let mut planned: Vec<(usize, DocKey, Option<StoredDoc>, Vec<u8>)> = Vec::new();
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
        let mut claimed: Vec<(CollId, DocKey)> = Vec::new();
        let mut outcome = Ok(());
        for (pos, entry, value, index_key) in &planned {
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
            let current = match self.index_writes.get(&(index.id, entry.clone())) {
                Some(own) => Ok(own.clone()),
                None => self.snapshot.get_in(index.id, entry),
            };
            match current {
                Ok(Some(existing)) if entry_target(&existing).as_ref() != Some(key) => {
                    let doc = new.expect("an added entry comes from the new document");
                    outcome = Err(StorageError::DuplicateKey {
                        ns: coll.ns(),
                        index: index.key.name.clone(),
                        key_pattern: Box::new(index.key.key_pattern.clone()),
                        key_value: Box::new(index.key.key_value(doc, index_key)),
                    });
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = outcome {
            for (id, entry) in &claimed {
                self.unclaim(*id, entry);
            }
            return Err(e);
        }
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
        Ok(())
    }

    /// Memory this transaction's writes hold, as the limits count it.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn engine(&self) -> &Engine {
        &self.snapshot.engine
    }

    /// Reserves what a write of `doc` (or a delete) under `key` will hold, failing at once if
    /// the transaction, or all open ones together, would pass their limit. Returns (reserved,
    /// what the key's earlier write in this transaction held), for [`Txn::settle_write`].
    fn reserve_write(
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
    fn settle_write(&mut self, (reserved, replaced): (u64, u64), ok: bool) {
        self.give_back(if ok { replaced } else { reserved });
    }

    fn give_back(&mut self, bytes: u64) {
        debug_assert!(bytes <= self.bytes, "gives back only what it holds");
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        self.engine()
            .inner
            .open_txn_bytes
            .fetch_sub(bytes, Ordering::Relaxed);
    }

    fn claim_doc(&mut self, coll: &CollectionInfo, key: &DocKey) -> Result<(), StorageError> {
        if self.docs.contains_key(&(coll.id, key.clone())) {
            return Ok(()); // we already hold the intent
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
        self.claim_key(coll.id, key)
    }

    /// Takes the write intent on one key of a keyspace (documents or index entries).
    fn claim_key(&self, id: CollId, key: &DocKey) -> Result<(), StorageError> {
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
        chain.claim(self.id, read_ts)
    }

    /// Gives back an intent taken by a write that then failed, so it is not held unrecorded.
    fn unclaim(&mut self, id: CollId, key: &DocKey) {
        let engine = self.snapshot.engine.clone();
        let mut state = engine.write_state();
        if let Some(chains) = state.collections.get_mut(&id)
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

    /// Adds a secondary index to `ns` (a normalized specification, see
    /// [`IndexSpec::normalize`]) and builds it from the documents this transaction sees.
    /// WriteConflict while another transaction writes the collection, or has written it since
    /// this transaction's snapshot: the caller retries with a new transaction.
    pub fn create_index(
        &mut self,
        ns: &str,
        spec: bson::Document,
    ) -> Result<CollectionInfo, StorageError> {
        self.check_open()?;
        let coll = self
            .collection(ns)
            .ok_or_else(|| StorageError::NamespaceNotFound(ns.to_string()))?;
        if self.shared_creates.contains(ns) {
            return Err(StorageError::Encoding(format!(
                "cannot index {ns}: this transaction created it implicitly; create it explicitly first"
            )));
        }
        let engine = self.snapshot.engine.clone();
        let id = {
            let mut state = engine.write_state();
            self.claim_catalog_for_indexes(&mut state, &coll)?;
            // Recorded at once, so that the intent is released with the transaction even if
            // the build fails.
            self.catalog
                .entry(ns.to_string())
                .or_insert_with(|| Some(Arc::new(coll.clone())));
            let id = state.next_coll_id;
            state.next_coll_id += 1;
            state.collections.insert(id, BTreeMap::new());
            id
        };
        let index = compile_index(spec.clone(), id, &engine.inner.options.partial_filters)?;
        let mut entries: BTreeMap<DocKey, StoredDoc> = BTreeMap::new();
        let mut failed = None;
        self.scan(&coll, None, |key, doc| {
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
                    });
                    return ControlFlow::Break(());
                }
                entries.insert(entry, entry_value(key));
            }
            ControlFlow::Continue(())
        })?;
        if let Some(e) = failed {
            // The catalog intent stays until the transaction ends.
            engine.write_state().collections.remove(&id);
            return Err(e);
        }
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
    fn claim_catalog_for_indexes(
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
            &mut |key, value| {
                if let Some(target) = entry_target(value) {
                    out.push((key.clone(), target));
                }
                if out.len() >= max {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )?;
        Ok(out)
    }

    fn check_open(&self) -> Result<(), StorageError> {
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
        let record = match txlog::encode_record(&self.meta, &ops) {
            Ok(r) => r,
            Err(e) => {
                self.release();
                return Err(e);
            }
        };
        let engine = self.snapshot.engine.clone();
        let rejected = Rejection::default();
        let pending = PendingCommit {
            ts: Timestamp::ZERO,
            txn: self.id,
            docs: std::mem::take(&mut self.docs),
            index_writes: std::mem::take(&mut self.index_writes),
            catalog: std::mem::take(&mut self.catalog),
            shared_creates: std::mem::take(&mut self.shared_creates),
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

    /// The transaction's writes in the order replay must apply them: creations, index
    /// changes, documents, then drops.
    fn log_ops(&self) -> Vec<LogOp> {
        let mut ops = Vec::with_capacity(self.docs.len() + self.catalog.len());
        for (ns, info) in &self.catalog {
            if let Some(info) = info
                && self.created.contains(ns)
            {
                ops.push(LogOp::CreateCollection {
                    ns: ns.clone(),
                    options: info.options.clone(),
                });
            }
        }
        ops.extend(self.index_ops.iter().cloned());
        for ((coll_id, key), write) in &self.docs {
            let ns = self.namespaces.get(coll_id).cloned().unwrap_or_default();
            let key = key.0.clone();
            ops.push(match write {
                DocWrite::Insert(d) => LogOp::Insert {
                    ns,
                    key,
                    doc: d.clone(),
                },
                DocWrite::Update(d) => LogOp::Update {
                    ns,
                    key,
                    doc: d.clone(),
                },
                DocWrite::Delete(id) => LogOp::Delete {
                    ns,
                    key,
                    id: id.clone(),
                },
            });
        }
        for (ns, info) in &self.catalog {
            if info.is_none() {
                ops.push(LogOp::DropCollection { ns: ns.clone() });
            }
        }
        ops
    }

    /// Releases every intent; nothing of this transaction was ever visible to others.
    pub fn abort(mut self) {
        self.release();
    }

    fn release(&mut self) {
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

mod checkpoint;
mod commit;
mod recovery;
pub use recovery::RecoveryReport;
mod verify;
pub use checkpoint::CheckpointReport;
use commit::{CommitQueue, LogCounters, LogProgress, PendingCommit, Rejection};
pub use commit::{CommitTicket, LogStats};
pub use verify::IndexVerifyReport;
#[cfg(test)]
mod tests;

/// What a read needs, whether it reads a snapshot or a transaction's view (its snapshot plus
/// its own writes).
pub trait ReadView {
    fn collection(&self, ns: &str) -> Option<CollectionInfo>;
    fn get(&self, coll: &CollectionInfo, key: &DocKey) -> Result<Option<StoredDoc>, StorageError>;
    fn scan(
        &self,
        coll: &CollectionInfo,
        after: Option<&DocKey>,
        visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError>;
    fn index_multikey(&self, index: &IndexInfo) -> Result<bool, StorageError>;
    /// The documents whose keys lie in `interval`, past `resume`, in key order (descending if
    /// `reverse`).
    fn scan_range(
        &self,
        coll: &CollectionInfo,
        interval: &KeyInterval,
        resume: Option<&DocKey>,
        reverse: bool,
        visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError>;
    /// Up to `max` `(entry key, document key)` pairs of `index` in `interval`, past `resume`,
    /// descending if `reverse`.
    fn index_scan(
        &self,
        index: &IndexInfo,
        interval: &KeyInterval,
        resume: Option<&DocKey>,
        max: usize,
        reverse: bool,
    ) -> Result<Vec<(DocKey, DocKey)>, StorageError>;
}

impl ReadView for Snapshot {
    fn collection(&self, ns: &str) -> Option<CollectionInfo> {
        Snapshot::collection(self, ns)
    }

    fn get(&self, coll: &CollectionInfo, key: &DocKey) -> Result<Option<StoredDoc>, StorageError> {
        Snapshot::get(self, coll, key)
    }

    fn scan(
        &self,
        coll: &CollectionInfo,
        after: Option<&DocKey>,
        visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        Snapshot::scan(self, coll, after, visit)
    }

    fn index_scan(
        &self,
        index: &IndexInfo,
        interval: &KeyInterval,
        resume: Option<&DocKey>,
        max: usize,
        reverse: bool,
    ) -> Result<Vec<(DocKey, DocKey)>, StorageError> {
        Snapshot::index_scan(self, index, interval, resume, max, reverse)
    }

    fn index_multikey(&self, index: &IndexInfo) -> Result<bool, StorageError> {
        Snapshot::index_multikey(self, index)
    }

    fn scan_range(
        &self,
        coll: &CollectionInfo,
        interval: &KeyInterval,
        resume: Option<&DocKey>,
        reverse: bool,
        visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        Snapshot::scan_range(self, coll, interval, resume, reverse, visit)
    }
}

impl ReadView for Txn {
    fn collection(&self, ns: &str) -> Option<CollectionInfo> {
        Txn::collection(self, ns)
    }

    fn get(&self, coll: &CollectionInfo, key: &DocKey) -> Result<Option<StoredDoc>, StorageError> {
        Txn::get(self, coll, key)
    }

    fn scan(
        &self,
        coll: &CollectionInfo,
        after: Option<&DocKey>,
        visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        Txn::scan(self, coll, after, visit)
    }

    fn index_scan(
        &self,
        index: &IndexInfo,
        interval: &KeyInterval,
        resume: Option<&DocKey>,
        max: usize,
        reverse: bool,
    ) -> Result<Vec<(DocKey, DocKey)>, StorageError> {
        Txn::index_scan(self, index, interval, resume, max, reverse)
    }

    fn index_multikey(&self, index: &IndexInfo) -> Result<bool, StorageError> {
        Txn::index_multikey(self, index)
    }

    fn scan_range(
        &self,
        coll: &CollectionInfo,
        interval: &KeyInterval,
        resume: Option<&DocKey>,
        reverse: bool,
        visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        Txn::scan_range(self, coll, interval, resume, reverse, visit)
    }
}
