//! The engine: one in-memory multi-version state over the base store, and the handle
//! ([`Engine`]) that owns it and its two background threads (the log writer and the
//! checkpointer). This file holds only what every room shares: the handle, its options, its
//! start and stop, and the one lock order. Each concern has its own room:
//!
//! | file             | concern                                                              |
//! |------------------|----------------------------------------------------------------------|
//! | `versions.rs`    | version chains and write intents: the MVCC state (`State`)           |
//! | `catalog.rs`     | collections and indexes as the catalog records them; entry layout    |
//! | `snapshot.rs`    | snapshots and the reader registry (the oldest reader bounds pruning) |
//! | `ranges.rs`      | key ranges, and merging an overlay over a scan                       |
//! | `read_view.rs`   | [`ReadView`]: one read interface for snapshots and transactions      |
//! | `txn.rs`         | [`Txn`]: its reads, its end (commit, abort)                          |
//! | `txn_catalog.rs` | collection DDL in a transaction (create, create "if absent", drop)   |
//! | `txn_write.rs`   | document writes: intents claimed, memory reserved                    |
//! | `txn_index.rs`   | index maintenance and index DDL inside a transaction                 |
//! | `commit.rs`      | the commit pipeline: queue, log writer thread, install, tickets      |
//! | `recovery.rs`    | opening a data directory: base store, then the log                   |
//! | `replay.rs`      | applying one logged transaction to the state during recovery         |
//! | `checkpoint.rs`  | folding versions into the base store; the checkpointer thread        |
//! | `history.rs`     | reading committed records back from the log; log retention           |
//! | `tail.rs`        | the log's newest durable records, handed to caught-up readers        |
//! | `verify.rs`      | `mangrove verify`'s index check                                      |
//! | `backup.rs`      | online backups; pins on the log a running backup still copies        |
//!
//! # Lock order
//!
//! Every lock in the storage crate, outermost first. A thread holding one may take only locks
//! further down this list; every other file refers here instead of repeating it.
//!
//! 1. `Inner::checkpointing` — held through a whole checkpoint (one at a time).
//! 2. `Inner::writer`, `Inner::checkpointer` (join handles) — held only while joining the
//!    thread at shutdown, and the joined threads never take them.
//! 3. `Inner::queue` (the commit queue, with its condvars `queue_ready` and `queue_space`) —
//!    never held across file I/O, and never held together with `state` (the writer drops it
//!    before installing; committers drop `state` before queueing).
//! 4. `Inner::state` (`RwLock<State>`) — the versions. Held (read) by snapshot reads while they
//!    call into the base store, so redb's own locks come after it.
//! 5. `Inner::readers` (the reader registry) — taken under `state` so that registering a reader
//!    and pruning cannot interleave.
//! 6. Leaves, taken with none of the above held, or only as the last one:
//!    `Inner::checkpoint_signal` (with `checkpoint_wake`); `ControlHandle::current`
//!    (`txlog/writer.rs`, held across the control file's write); the `progress` watch channel's
//!    own lock (`send_modify` only after `queue` and `state` are released); redb's locks inside
//!    the base store (`base.rs`); `HistoryPins::pins` (`backup.rs`); `Inner::history_tail`
//!    (the shared tail's ring, `tail.rs`), taken by change-stream readers and by the log
//!    writer (with neither `queue` nor `state` held), with a tail record's `memos` lock after
//!    it.
//!
//! Poisoned locks are recovered (`lock_mutex`, `read_state`): a panic in a storage thread is
//! not survived anyway (see [`crate::panic_policy`]), so recovering only lets the surviving
//! threads fail cleanly instead of panicking again.
//!
//! Invariants of the whole engine are in the crate's documentation (`lib.rs`); each room states
//! its own at its top.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bson::RawDocumentBuf;
use mangrove_bson::PartialFilters;
use tokio::sync::watch;

use crate::base::BaseVerifyReport;
use crate::txlog::{ControlHandle, LogWriter};
use crate::{StorageError, Timestamp};

mod backup;
mod catalog;
mod checkpoint;
mod commit;
mod history;
mod natural;
mod natural_scan;
mod ranges;
mod read_view;
mod recovery;
mod replay;
mod snapshot;
mod tail;
mod txn;
mod txn_catalog;
mod txn_index;
mod txn_write;
mod verify;
mod versions;

pub use backup::{BackupPhase, BackupReport};
pub use catalog::{COLLATED_ID_OPTION, CollectionInfo, IndexInfo, UUID_OPTION, uuid_of};
pub use checkpoint::CheckpointReport;
use commit::{CommitQueue, LogCounters, LogProgress};
pub use commit::{CommitTicket, LogStats};
pub use history::{HistoryReader, HistoryTruncationStats, HistoryWindow};
pub use read_view::ReadView;
pub use recovery::RecoveryReport;
pub use snapshot::Snapshot;
pub use tail::{TAIL_IDLE, TAIL_RECORDS, TailRecord};
pub use txn::{TransactionLimits, Txn};
pub use verify::IndexVerifyReport;
use versions::State;

/// A stored document. Shared, immutable bytes: a snapshot hands out clones of the `Arc`, never
/// copies of the document.
pub type StoredDoc = Arc<RawDocumentBuf>;

/// The order-preserving encoding of a document's `_id`, made by the caller (the query crate owns
/// BSON ordering). Equal `_id`s (say int 1 and double 1.0) must encode to equal keys.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocKey(pub Vec<u8>);

pub type TxnId = u64;

type CollId = u64;

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
    /// Log segments the last checkpoint covers that are kept anyway, whatever retention says.
    pub retain_log_segments: usize,
    /// History retention (mongod's oplog size): segments the last checkpoint covers are
    /// removed, oldest first, only while all segments together are larger than this ...
    pub history_size_bytes: u64,
    /// ... and only once their newest record is at least this old (mongod's
    /// `oplogMinRetentionHours`; zero: size alone decides).
    pub history_min_retention: Duration,
    /// Where sealed log segments are copied before retention removes them, for point-in-time
    /// restore (`--log-archive-dir`). `None`: no archive.
    pub log_archive_dir: Option<PathBuf>,
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
            // mongod's default oplog is 5% of the disk, at least 990 MB: the minimum, so a
            // small machine is not surprised by the log's size.
            history_size_bytes: 1024 * 1024 * 1024,
            history_min_retention: Duration::ZERO,
            log_archive_dir: None,
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
    /// `State::last_commit`, stored when a commit installs (under the state's lock), so that
    /// every reply's `operationTime` reads it without taking that lock.
    last_commit: AtomicU64,
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
    /// History retention, changeable at runtime, and its counters.
    history: history::HistoryRetention,
    /// The log's newest durable records, decoded once for the readers at the tail.
    history_tail: tail::HistoryTail,
    /// Log that running backups still have to copy: kept whatever retention says.
    history_pins: backup::HistoryPins,
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
            last_commit: AtomicU64::new(last.0),
            readers: Mutex::new(BTreeMap::new()),
            next_txn_id: AtomicU64::new(1),
            open_txn_bytes: AtomicU64::new(0),
            queue: Mutex::new(CommitQueue::starting_at(last)),
            queue_ready: Condvar::new(),
            queue_space: Condvar::new(),
            progress,
            history: history::HistoryRetention::new(
                options.history_size_bytes,
                options.history_min_retention,
            ),
            history_tail: tail::HistoryTail::default(),
            history_pins: backup::HistoryPins::default(),
            options,
            writer: Mutex::new(None),
            control,
            _lock: lock,
        });
        let engine = Engine { inner };
        let for_writer = engine.clone();
        let handle = std::thread::Builder::new()
            .name("mangrove-log-writer".into())
            .spawn(move || {
                let engine = for_writer.clone();
                engine.fail_on_panic("log writer", move || for_writer.write_log(log))
            })
            .expect("cannot spawn the log writer thread");
        *lock_mutex(&engine.inner.writer) = Some(handle);
        if engine.read_state().base.is_some() && !engine.inner.options.read_only {
            let for_checkpointer = engine.clone();
            let handle = std::thread::Builder::new()
                .name("mangrove-checkpointer".into())
                .spawn(move || {
                    let engine = for_checkpointer.clone();
                    engine
                        .fail_on_panic("checkpointer", move || for_checkpointer.run_checkpointer())
                })
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
        // Stored after the commit installed, before the state's lock is released: a snapshot
        // taken after this returns waits for that lock, so it sees this commit.
        Timestamp(self.inner.last_commit.load(Ordering::Acquire))
    }

    /// The memory budget the engine was opened with (`--cache-size`).
    pub fn cache_bytes(&self) -> usize {
        self.inner.options.cache_bytes
    }

    /// Bytes of committed versions held in memory since the last checkpoint (their log
    /// records and the index entries derived from them): what a checkpoint would fold into the
    /// base store, and what `cache_bytes` bounds.
    pub fn versions_bytes(&self) -> u64 {
        let log = self.inner.stats.bytes.load(Ordering::Relaxed);
        let derived = self.inner.derived_bytes.load(Ordering::Relaxed);
        let base_log = self.inner.checkpoint_log_bytes.load(Ordering::Relaxed);
        let base_derived = self.inner.checkpoint_derived_bytes.load(Ordering::Relaxed);
        (log + derived).saturating_sub(base_log + base_derived)
    }

    /// Commits written to the log since the engine opened (a counter, for rates).
    pub fn commits_logged(&self) -> u64 {
        self.inner.stats.commits.load(Ordering::Relaxed)
    }

    pub fn log_stats(&self) -> LogStats {
        let s = &self.inner.stats;
        LogStats {
            commits: s.commits.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            sync_micros: s.sync_micros.snapshot(),
            batch_commits: s.batch_commits.snapshot(),
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

    /// Runs a background thread's body. If it panics, the log fails first (as after a failed
    /// fdatasync), so that no committer waits for a thread that is gone, and then the panic
    /// goes on (see [`crate::panic_policy`]; the server's hook has already stopped the process
    /// by then). Plain `catch_unwind`: the hook must see this panic as uncaught.
    fn fail_on_panic<T>(&self, thread: &str, body: impl FnOnce() -> T) -> T {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            Ok(value) => value,
            Err(panic) => {
                let message = crate::panic_policy::panic_message(&*panic);
                self.fail_log(&format!("the {thread} thread panicked: {message}"));
                std::panic::resume_unwind(panic)
            }
        }
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        // A lock poisoned by a panic is recovered: the server has stopped by then (see
        // `panic_policy`), and an embedded engine has failed its log, so this only lets the
        // remaining readers finish instead of panicking again.
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn lock_mutex<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn split_ns(ns: &str) -> (&str, &str) {
    ns.split_once('.').unwrap_or((ns, ""))
}

#[cfg(test)]
mod checkpoint_tests;
#[cfg(test)]
mod tests;
