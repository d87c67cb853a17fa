//! The commit pipeline: commits queue here in timestamp order, one writer thread writes each
//! batch with one write (visible) and one fdatasync (durable), and tickets tell committers
//! which of the two their commit reached.
//!
//! Invariants:
//! - Timestamps are handed out and records queued under the queue lock, so queue order is
//!   timestamp order is log order is install order.
//! - Nothing is installed (visible) before its record is written; no ticket reports durable
//!   before the fdatasync covering it returned.
//! - Every queued commit ends in exactly one of: installed, or rejected. A rejected commit's
//!   intents are released and its ticket's cell holds the error *before* any later commit can
//!   install, so a waiter never mistakes a later watermark for its own success.
//! - A write that fails before the batch became visible (full disk, permissions) makes the log
//!   *unavailable*: not sticky, commits are refused at once with one clear error while the
//!   writer probes the log every [`LOG_RETRY_INTERVAL`], and resume when a probe succeeds. A
//!   failed fdatasync is sticky (*failed*): the batch is already visible and the page cache
//!   can no longer be trusted, so only a restart (which replays what is really on disk) is safe.
//!   A storage thread that panicked fails the log the same way (see `panic_policy.rs`), so no
//!   committer waits for a writer that is gone.
//!
//! - Within a batch, timestamps strictly increase (asserted by the writer before it writes).
//!
//! Install (making a written batch visible, pruning what it made unreachable) lives here too:
//! it is the writer's step between the write and the fdatasync. After the fdatasync, and before
//! the batch is announced durable, the writer hands its records to the shared tail while
//! change streams read it (`tail.rs`).
//!
//! Lock order: `queue` and `state` are never held together; `queue` is never held across file
//! I/O; the `progress` channel is updated with neither held. See the engine's lock order
//! (`engine.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

use super::catalog::{CollectionInfo, INDEX_ENTRY_OVERHEAD};
use super::natural::{self, NaturalChange};
use super::tail::HandedRecord;
use super::versions::{DocWrite, State, VersionChain, release_intents};
use super::{CollId, DocKey, Engine, StoredDoc, TxnId, lock_mutex, wall_clock_ms};
use crate::histogram::{Histogram, HistogramSnapshot};
use crate::txlog::{self, LogWriter};
use crate::{StorageError, Timestamp};

/// How often the writer tries the log again while it is unavailable.
const LOG_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// How far the log writer has come: commits up to `visible` are installed (readable), up to
/// `durable` are on disk. `failed` is sticky: after a failed fdatasync no commit succeeds.
/// `rejections` only changes to wake waiters whose commit was rejected (see [`CommitTicket`]).
#[derive(Clone, Debug)]
pub(super) struct LogProgress {
    pub(super) visible: Timestamp,
    pub(super) durable: Timestamp,
    /// The wall clock of the commit at `durable`, once one was written since start.
    pub(super) durable_wall_ms: Option<i64>,
    pub(super) failed: Option<Arc<str>>,
    pub(super) rejections: u64,
}

impl LogProgress {
    pub(super) fn at(ts: Timestamp) -> LogProgress {
        LogProgress {
            visible: ts,
            durable: ts,
            durable_wall_ms: None,
            failed: None,
            rejections: 0,
        }
    }
}

/// Where a rejected commit's error goes: set once by the writer, read by the commit's ticket.
pub(super) type Rejection = Arc<OnceLock<StorageError>>;

/// What one natural-order change holds in memory: two entries (position and owner), each a
/// chain, a small value and a key.
const NATURAL_CHANGE_COST: u64 = 2 * INDEX_ENTRY_OVERHEAD + 48;

/// A commit waiting for the log writer.
pub(super) struct PendingCommit {
    pub(super) ts: Timestamp,
    pub(super) txn: TxnId,
    pub(super) docs: BTreeMap<(CollId, DocKey), DocWrite>,
    /// Index entries written (`None` removes one); derived from `docs`, so not in the record.
    pub(super) index_writes: BTreeMap<(CollId, DocKey), Option<StoredDoc>>,
    pub(super) catalog: BTreeMap<String, Option<Arc<CollectionInfo>>>,
    /// Namespaces in `catalog` created "if absent" (see [`Txn::create_collection_shared`]).
    pub(super) shared_creates: BTreeSet<String>,
    /// Natural-order changes, in log order; positions are handed out at install.
    pub(super) natural: Vec<NaturalChange>,
    /// Its record as the transaction built it, for the shared tail while change streams read
    /// it (`tail.rs`).
    pub(super) handed: Option<HandedRecord>,
    pub(super) rejected: Rejection,
}

/// Why the log cannot be written now, and how much room the failed batch needed (what the
/// writer's probe asks for).
struct Unavailable {
    error: StorageError,
    needed: u64,
}

#[derive(Default)]
pub(super) struct CommitQueue {
    /// Sealed log records, in timestamp order, not yet written.
    bytes: Vec<u8>,
    commits: Vec<PendingCommit>,
    /// The newest timestamp handed out; the next commit's is later.
    pub(super) last_ts: Timestamp,
    /// Sticky: an fdatasync failed.
    failed: Option<Arc<str>>,
    /// Not sticky: the last write failed before anything became visible.
    unavailable: Option<Unavailable>,
    pub(super) shutdown: bool,
    /// The writer sleeps on `queue_ready`: only then does a commit need to wake it (a
    /// condvar notify is a syscall even with nobody waiting, once per commit).
    writer_waiting: bool,
}

impl CommitQueue {
    pub(super) fn starting_at(last_ts: Timestamp) -> CommitQueue {
        CommitQueue {
            last_ts,
            ..CommitQueue::default()
        }
    }
}

/// The wall clock sealed into the last record of a batch (see `txlog::seal_record`): walks the
/// records' length prefixes, one step per commit.
fn last_wall_ms(batch: &[u8]) -> Option<i64> {
    let mut at = 0usize;
    let mut last = None;
    while let Some(len) = batch.get(at..at + 4) {
        last = Some(at);
        at += 8 + u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    }
    let wall = batch.get(last? + 16..last? + 24)?;
    Some(i64::from_le_bytes(wall.try_into().ok()?))
}

/// Counters of the log writer, for benchmarks and `serverStatus`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    pub commits: u64,
    /// Group-commit rounds: one write and one fdatasync each.
    pub batches: u64,
    pub bytes: u64,
    /// Each round's fdatasync, in microseconds.
    pub sync_micros: HistogramSnapshot,
    /// Commits per round.
    pub batch_commits: HistogramSnapshot,
}

/// fdatasync latency buckets, microseconds (50 µs to 1 s).
static SYNC_MICROS: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000,
];
/// Commits-per-round buckets.
static BATCH_COMMITS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];
/// Checkpoint duration buckets, microseconds (1 ms to 60 s).
static CHECKPOINT_MICROS: [u64; 13] = [
    1_000, 5_000, 10_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 30_000_000, 60_000_000,
];

pub(super) struct LogCounters {
    pub(super) commits: AtomicU64,
    pub(super) batches: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) sync_micros: Histogram,
    pub(super) batch_commits: Histogram,
    /// Each checkpoint that wrote something, by its duration (`checkpoint.rs` records it).
    pub(super) checkpoint_micros: Histogram,
}

impl Default for LogCounters {
    fn default() -> Self {
        LogCounters {
            commits: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            sync_micros: Histogram::new(&SYNC_MICROS),
            batch_commits: Histogram::new(&BATCH_COMMITS),
            checkpoint_micros: Histogram::new(&CHECKPOINT_MICROS),
        }
    }
}

impl Engine {
    /// Queues a sealed commit; the writer makes it visible and durable in timestamp order. On
    /// refusal the commit comes back, so the caller can release its intents.
    pub(super) fn enqueue(
        &self,
        mut record: Vec<u8>,
        mut pending: PendingCommit,
    ) -> Result<Timestamp, Box<(StorageError, PendingCommit)>> {
        if self.inner.options.read_only {
            return Err(Box::new((
                StorageError::LogFailed("the engine was opened read-only".into()),
                pending,
            )));
        }
        let mut queue = lock_mutex(&self.inner.queue);
        // Bounded queue: wait for the writer to drain, unless the queue is empty (one oversized
        // record must still get through).
        while !queue.bytes.is_empty()
            && queue.bytes.len() + record.len() > self.inner.options.max_pending_log_bytes
            && queue.failed.is_none()
            && queue.unavailable.is_none()
            && !queue.shutdown
        {
            queue = self
                .inner
                .queue_space
                .wait(queue)
                .unwrap_or_else(|e| e.into_inner());
        }
        if let Some(error) = refusal(&queue) {
            return Err(Box::new((error, pending)));
        }
        let ts = queue.last_ts.next_after();
        debug_assert!(ts > queue.last_ts, "commit timestamps strictly increase");
        let wall_ms = wall_clock_ms();
        txlog::seal_record(&mut record, ts, wall_ms);
        if let Some(handed) = &mut pending.handed {
            (handed.record.ts, handed.record.wall_ms) = (ts, wall_ms);
        }
        queue.last_ts = ts;
        queue.bytes.extend_from_slice(&record);
        pending.ts = ts;
        queue.commits.push(pending);
        let wake = queue.writer_waiting;
        drop(queue);
        if wake {
            self.inner.queue_ready.notify_one();
        }
        Ok(ts)
    }

    /// The log writer thread: group commit. Each round takes every queued commit, writes them
    /// with one write, installs them (now visible), then makes them durable with one fdatasync.
    pub(super) fn write_log(self, mut log: Option<LogWriter>) -> Option<LogWriter> {
        while let Some((bytes, mut commits)) = self.next_batch(&mut log) {
            // Queue order is timestamp order is log order (see the module comment).
            assert!(
                commits.windows(2).all(|w| w[0].ts < w[1].ts),
                "a batch's commit timestamps strictly increase"
            );
            let first_ts = commits[0].ts;
            let last_ts = commits[commits.len() - 1].ts;
            if let Some(log) = &mut log
                && let Err(e) = log.append(&bytes, first_ts, last_ts)
            {
                self.log_unavailable(e, bytes.len() as u64, commits);
                continue;
            }
            self.count_batch(&commits, bytes.len() as u64);
            let handed = self.take_handed(&mut commits);
            self.install(commits);
            self.inner.progress.send_modify(|p| p.visible = last_ts);
            let wall_ms = last_wall_ms(&bytes);
            let syncing = std::time::Instant::now();
            let synced = log.as_mut().map_or(Ok(()), LogWriter::sync);
            let micros = syncing.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
            self.inner.stats.sync_micros.record(micros);
            match synced {
                Ok(()) => {
                    // Before the announcement, so that a stream it wakes finds them there.
                    let evicted = self.feed_tail(handed);
                    self.inner.progress.send_modify(|p| {
                        p.durable = last_ts;
                        p.durable_wall_ms = wall_ms;
                    });
                    drop(evicted);
                }
                // The batch is visible but may not be on disk: fail its durable waiters and
                // every later commit (after a failed fsync the page cache cannot be trusted).
                Err(e) => self.fail_log(&e.to_string()),
            }
        }
        log
    }

    /// The batch's records for the shared tail, if it runs (see `tail.rs`).
    fn take_handed(&self, commits: &mut [PendingCommit]) -> Vec<(Timestamp, Option<HandedRecord>)> {
        if !self.inner.history_tail.wanted.load(Ordering::Relaxed) {
            return Vec::new();
        }
        commits
            .iter_mut()
            .map(|c| (c.ts, c.handed.take()))
            .collect()
    }

    /// Waits for the next batch to write. While the log is unavailable there is none (commits
    /// are refused): the writer probes the log instead until it can be written. `None` once
    /// the engine shuts down.
    fn next_batch(&self, log: &mut Option<LogWriter>) -> Option<(Vec<u8>, Vec<PendingCommit>)> {
        let mut queue = lock_mutex(&self.inner.queue);
        loop {
            if !queue.commits.is_empty() {
                let batch = (
                    std::mem::take(&mut queue.bytes),
                    std::mem::take(&mut queue.commits),
                );
                drop(queue);
                self.inner.queue_space.notify_all();
                return Some(batch);
            }
            if queue.shutdown {
                return None;
            }
            let Some(unavailable) = &queue.unavailable else {
                queue.writer_waiting = true;
                queue = self
                    .inner
                    .queue_ready
                    .wait(queue)
                    .unwrap_or_else(|e| e.into_inner());
                queue.writer_waiting = false;
                continue;
            };
            let needed = unavailable.needed;
            queue = self
                .inner
                .queue_ready
                .wait_timeout(queue, LOG_RETRY_INTERVAL)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
            if queue.shutdown {
                return None;
            }
            let next_ts = queue.last_ts.next_after();
            drop(queue);
            let probed = log
                .as_mut()
                .map_or(Ok(()), |l| l.make_room(needed, next_ts));
            queue = lock_mutex(&self.inner.queue);
            if probed.is_ok() {
                queue.unavailable = None;
                tracing::info!("the transaction log can be written again; accepting writes");
            }
        }
    }

    /// Counts a written batch, and asks for a checkpoint when the log or the memory it stands
    /// for has grown past its budget.
    fn count_batch(&self, commits: &[PendingCommit], bytes: u64) {
        let stats = &self.inner.stats;
        stats
            .commits
            .fetch_add(commits.len() as u64, Ordering::Relaxed);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.batch_commits.record(commits.len() as u64);
        let total = stats.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        // Index entries are in memory but not in the log: count them towards memory.
        let derived: u64 = commits
            .iter()
            .flat_map(|c| c.index_writes.keys())
            .map(|(_, k)| k.0.len() as u64 + INDEX_ENTRY_OVERHEAD)
            .sum::<u64>()
            + commits
                .iter()
                .map(|c| c.natural.len() as u64 * NATURAL_CHANGE_COST)
                .sum::<u64>();
        let derived_total = self
            .inner
            .derived_bytes
            .fetch_add(derived, Ordering::Relaxed)
            + derived;
        // Log growth bounds recovery time, and versions waiting in memory (the log's plus the
        // index entries derived from it) bound memory: either one past its budget asks for a
        // checkpoint.
        let options = &self.inner.options;
        let log_growth = total - self.inner.checkpoint_log_bytes.load(Ordering::Relaxed);
        let memory_growth = log_growth + derived_total
            - self.inner.checkpoint_derived_bytes.load(Ordering::Relaxed);
        if log_growth >= options.checkpoint_log_bytes
            || memory_growth >= options.cache_bytes as u64 / 4
        {
            self.request_checkpoint();
        }
    }

    /// A write failed before the batch became visible: reject it and everything queued after
    /// it, and refuse commits until the writer's probe succeeds. Logged once per episode.
    fn log_unavailable(&self, cause: StorageError, needed: u64, batch: Vec<PendingCommit>) {
        let error = cause.into_log_unavailable(self.log_dir());
        tracing::error!(error = %error, "the transaction log cannot be written; refusing writes until it can");
        let rejected = {
            let mut queue = lock_mutex(&self.inner.queue);
            queue.unavailable = Some(Unavailable {
                error: error.clone(),
                needed,
            });
            queue.bytes.clear();
            let mut rejected = batch;
            rejected.append(&mut queue.commits);
            rejected
        };
        self.reject(rejected, &error);
    }

    /// An fdatasync failed, or a storage thread panicked: from now on no commit succeeds (see
    /// the module comment).
    pub(super) fn fail_log(&self, reason: &str) {
        tracing::error!(
            error = reason,
            "the transaction log failed; the server must be restarted to accept writes"
        );
        let reason: Arc<str> = Arc::from(reason);
        let later = {
            let mut queue = lock_mutex(&self.inner.queue);
            queue.failed = Some(reason.clone());
            queue.bytes.clear();
            std::mem::take(&mut queue.commits)
        };
        self.reject(later, &StorageError::LogFailed(reason.to_string()));
        self.inner.progress.send_modify(|p| p.failed = Some(reason));
    }

    /// Commits that never reached the log never become visible: give their intents back, then
    /// tell their tickets why.
    fn reject(&self, commits: Vec<PendingCommit>, error: &StorageError) {
        let mut state = self.write_state();
        for commit in &commits {
            release_intents(
                &mut state,
                commit.txn,
                commit.docs.keys().chain(commit.index_writes.keys()),
                &commit.catalog,
            );
        }
        drop(state);
        for commit in &commits {
            let _ = commit.rejected.set(error.clone());
        }
        self.inner.queue_space.notify_all();
        self.inner.progress.send_modify(|p| p.rejections += 1);
    }

    fn log_dir(&self) -> std::path::PathBuf {
        self.inner
            .options
            .data_dir
            .as_ref()
            .map(|d| d.join("log"))
            .unwrap_or_default()
    }

    /// Makes written commits visible, in timestamp order, and prunes what they made
    /// unreachable.
    pub(super) fn install(&self, commits: Vec<PendingCommit>) {
        let mut state = self.write_state();
        if crate::panic_policy::log_writer_panic_armed() {
            // The test hook of the panic policy: an assertion firing mid-install.
            panic!("fail point logWriterPanic: the log writer panics while installing a batch");
        }
        for commit in commits {
            let ts = commit.ts;
            assert!(ts > state.last_commit, "commits install in timestamp order");
            install_catalog(&mut state, &commit);
            install_writes(&mut state, &commit);
            // Every collection it registered in, including ones where its writes then failed.
            state.writers.retain(|_, w| {
                w.remove(&commit.txn);
                !w.is_empty()
            });
            state.last_commit = ts;
            self.inner.last_commit.store(ts.0, Ordering::Release);
            // Prune what this commit made unreachable, bounded by the oldest live reader.
            let oldest = self.oldest_reader().map_or(ts, |r| r.min(ts));
            prune_after(&mut state, &commit, oldest);
            natural::install(&mut state, ts, &commit.natural, oldest);
        }
    }
}

fn install_catalog(state: &mut State, commit: &PendingCommit) {
    let ts = commit.ts;
    for (ns, info) in &commit.catalog {
        if commit.shared_creates.contains(ns) {
            install_shared_create(state, commit.txn, ts, ns, info.clone());
            continue;
        }
        let chain = state
            .catalog
            .get_mut(ns)
            .expect("a catalog write holds an intent, so its chain exists");
        // Keyspaces the old version owned and the new one does not (a dropped collection's,
        // or a dropped index's) go once no snapshot can see them.
        let gone: Vec<CollId> = match chain.visible_at(ts) {
            Some(old) => old
                .keyspaces()
                .filter(|id| {
                    info.as_ref()
                        .is_none_or(|new| !new.keyspaces().any(|n| n == *id))
                })
                .collect(),
            None => Vec::new(),
        };
        chain.install(commit.txn, ts, info.clone());
        for id in gone {
            state.dropped.push((ts, id));
            state.base_drops.push((ts, id));
        }
    }
}

fn install_writes(state: &mut State, commit: &PendingCommit) {
    let ts = commit.ts;
    for ((coll_id, key), write) in &commit.docs {
        let chain = state
            .collections
            .get_mut(coll_id)
            .and_then(|d| d.get_mut(key))
            .expect("a document write holds an intent, so its chain exists");
        chain.install(commit.txn, ts, write.doc().cloned());
    }
    for ((id, key), value) in &commit.index_writes {
        let chain = state
            .collections
            .get_mut(id)
            .and_then(|d| d.get_mut(key))
            .expect("an index write holds an intent, so its chain exists");
        chain.install(commit.txn, ts, value.clone());
    }
    let mut written: Vec<CollId> = commit.docs.keys().map(|(id, _)| *id).collect();
    written.dedup();
    for id in written {
        state.last_write.insert(id, ts);
    }
}

/// Drops versions of the commit's keys that no reader at or after `oldest` can see, and the
/// data of collections dropped before it.
fn prune_after(state: &mut State, commit: &PendingCommit, oldest: Timestamp) {
    let checkpoint = state.checkpoint_ts;
    for (coll_id, key) in commit.docs.keys().chain(commit.index_writes.keys()) {
        if let Some(chains) = state.collections.get_mut(coll_id)
            && let Some(chain) = chains.get_mut(key)
        {
            chain.prune(oldest, checkpoint);
            if chain.is_empty() {
                chains.remove(key);
            }
        }
    }
    let State {
        dropped,
        collections,
        last_write,
        ..
    } = state;
    dropped.retain(|(drop_ts, id)| {
        let reclaim = *drop_ts <= oldest;
        if reclaim {
            collections.remove(id);
            last_write.remove(id);
        }
        !reclaim
    });
}

/// Why a commit cannot be queued now, if it cannot.
fn refusal(queue: &CommitQueue) -> Option<StorageError> {
    if let Some(reason) = &queue.failed {
        return Some(StorageError::LogFailed(reason.to_string()));
    }
    if let Some(unavailable) = &queue.unavailable {
        return Some(unavailable.error.clone());
    }
    queue
        .shutdown
        .then(|| StorageError::LogFailed("the engine is shutting down".into()))
}

/// What a commit promised: its timestamp, and a way to wait until it is visible to readers
/// or durable on disk.
#[must_use = "a commit is not acknowledged until its ticket resolves"]
pub struct CommitTicket {
    pub(super) ts: Timestamp,
    pub(super) progress: Option<watch::Receiver<LogProgress>>,
    /// Set if the writer rejected this commit; checked before the watermarks, which later
    /// commits move past a rejected timestamp.
    pub(super) rejected: Option<Rejection>,
}

impl CommitTicket {
    pub fn ts(&self) -> Timestamp {
        self.ts
    }

    async fn wait_for(
        &mut self,
        reached: impl Fn(&LogProgress) -> bool,
    ) -> Result<Timestamp, StorageError> {
        let Some(rx) = &mut self.progress else {
            return Ok(self.ts);
        };
        let rejection = || self.rejected.as_ref().and_then(|r| r.get()).cloned();
        let progress = rx
            .wait_for(|p| reached(p) || p.failed.is_some() || rejection().is_some())
            .await
            .map_err(|_| StorageError::LogFailed("the log writer stopped".into()))?
            .clone();
        if let Some(error) = rejection() {
            return Err(error);
        }
        if reached(&progress) {
            Ok(self.ts)
        } else {
            Err(StorageError::LogFailed(
                progress.failed.as_deref().unwrap_or("unknown").to_string(),
            ))
        }
    }

    /// Resolves once the commit is visible to new snapshots (written to the log, not yet
    /// synced): MongoDB's `w: 1, j: false` acknowledgement.
    pub async fn visible(&mut self) -> Result<Timestamp, StorageError> {
        let ts = self.ts;
        self.wait_for(|p| p.visible >= ts).await
    }

    /// Resolves once the commit is on disk (its fdatasync returned): `j: true` and `w:
    /// "majority"`.
    pub async fn durable(&mut self) -> Result<Timestamp, StorageError> {
        let ts = self.ts;
        self.wait_for(|p| p.durable >= ts && p.visible >= ts).await
    }
}
impl Engine {
    /// The checkpoints that wrote something since the engine opened, by duration in
    /// microseconds (its count is the number of checkpoints).
    pub fn checkpoint_durations(&self) -> HistogramSnapshot {
        self.inner.stats.checkpoint_micros.snapshot()
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
