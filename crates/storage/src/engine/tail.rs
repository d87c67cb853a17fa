//! The shared tail: the log's newest durable records, decoded already, for every reader that
//! is caught up (change streams waiting for commits), instead of each reading the log again.
//!
//! A stream at the tail used to read the record each commit appended with its own
//! [`HistoryReader`](super::history::HistoryReader) (a seek, a read, the CRC and the decoding
//! of the whole record), so ten streams paid for ten reads of the same bytes; then one shared
//! reader read them once. Now nobody reads them: the committing transaction already holds its
//! record's ops in memory (the same `Arc`ed documents the versions hold), so the log writer
//! hands each durable batch's records to a bounded ring, and a stream whose position is inside
//! the ring takes `Arc`s from it. A stream behind the ring (slow, or catching up) reads from
//! disk with its own reader: the ring never waits for anyone and holds nothing back.
//! A reader of the ring may also attach to a record what it derives from it (a change stream
//! its events for one shape of stream: [`TailRecord::remember`]), so that streams watching the
//! same way shape each record once.
//!
//! The ring runs only while someone reads it: the first [`Engine::read_tail`] turns it on
//! (from then on commits keep their ops for it, see [`HistoryTail::wanted`]), and the writer
//! turns it off when nobody has read it for [`TAIL_IDLE`]. Without change streams the commit
//! path does no more than check one flag.
//!
//! Invariants:
//! - Only durable records enter the ring: the writer hands a batch over after the fdatasync
//!   covering it returned, and before it announces the batch durable (so a reader woken by the
//!   new durable timestamp finds the records in the ring). A reader of the ring never sees a
//!   write that a crash could take back.
//! - The ring holds every record after `from` up to its newest, in timestamp order, without a
//!   gap: a reader positioned at or after `from` gets exactly the records it would have read
//!   from the log. A commit that did not keep its ops (queued before the ring was wanted)
//!   starts the ring over after it. A reader before `from` gets `None` and reads its own.
//! - A handed-over record equals what decoding its bytes in the log gives (the encoding is
//!   lossless; `tests/history.rs` compares the two for every kind of op).
//! - Memory is bounded: at most [`TAIL_RECORDS`] records, and [`TAIL_BYTES`] of records (their
//!   length in the log) plus remembered derivations; a derivation that does not fit is
//!   returned but not kept. What a reader took out it holds only until it has shaped it (one
//!   read batch).
//!
//! Lock order: `Inner::history_tail` (the ring) is a leaf with respect to every other engine
//! lock (see `engine.rs`): the writer takes it with neither `queue` nor `state` held, and
//! [`TailRecord::remember`] takes the record's own `memos` lock after it. Records evicted are
//! dropped after the ring's lock is released (by the writer, after it announced the batch).

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Engine, lock_mutex};
use crate::Timestamp;
use crate::txlog::LogRecord;

/// The ring's bounds: how many records and how many bytes (records' lengths in the log plus
/// what readers remembered about them). About 25 ms of the busiest log measured (10,000
/// commits/s), several times what streams that gather for 4 ms fall behind; one further
/// behind reads from disk. Not more: every record the ring holds keeps its transaction's ops
/// alive and is freed cold, by the writer, when the ring lets it go (1,024 cost about 1.5 %
/// of throughput with ten streams against 256, `docs/benchmarks.md`, stops 30 and 31; 4,096
/// about 2 µs more per commit).
pub const TAIL_RECORDS: usize = 256;
pub const TAIL_BYTES: usize = 8 * 1024 * 1024;
/// Unread this long, the ring stops: commits stop keeping their ops, and its records go.
pub const TAIL_IDLE: Duration = Duration::from_secs(2);
/// Derivations kept per record: the distinct shapes of stream worth sharing.
const MAX_MEMOS: usize = 4;

/// A durable, decoded record, shared by the readers at the tail.
pub struct TailRecord {
    pub record: LogRecord,
    /// Its length in the log (what the ring's byte bound counts); 0 for a detached record.
    len: usize,
    /// In the ring: memos may be added (changed only under the ring's lock).
    in_ring: AtomicBool,
    /// Bytes of `memos`, counted in the ring's bytes (changed only under the ring's lock).
    memo_bytes: AtomicUsize,
    memos: Mutex<Vec<Arc<dyn Any + Send + Sync>>>,
}

impl TailRecord {
    /// A record a reader read itself: nothing is remembered for it.
    pub fn detached(record: LogRecord) -> TailRecord {
        TailRecord::new(record, 0)
    }

    fn new(record: LogRecord, len: usize) -> TailRecord {
        TailRecord {
            record,
            len,
            in_ring: AtomicBool::new(false),
            memo_bytes: AtomicUsize::new(0),
            memos: Mutex::new(Vec::new()),
        }
    }

    /// Whether this record is in the ring (what [`remember`](Self::remember) keeps is shared).
    pub fn shared(&self) -> bool {
        self.in_ring.load(Ordering::Relaxed)
    }

    /// A derivation of type `T` remembered for this record that `wanted` accepts.
    pub fn memo<T: Any + Send + Sync>(&self, wanted: impl Fn(&T) -> bool) -> Option<Arc<T>> {
        let memos = lock_mutex(&self.memos);
        memos
            .iter()
            .filter_map(|m| m.clone().downcast::<T>().ok())
            .find(|m| wanted(m))
    }

    /// Remembers `value` (about `bytes` large) for the other readers of this record, if the
    /// record is in the ring, has fewer than [`MAX_MEMOS`] and `bytes` fits the ring's bound;
    /// the ring's oldest records make room for it, as for a new record. Returns it either way.
    pub fn remember<T: Any + Send + Sync>(
        &self,
        engine: &Engine,
        value: T,
        bytes: usize,
    ) -> Arc<T> {
        let value = Arc::new(value);
        if !self.shared() || bytes > TAIL_BYTES / 2 {
            return value;
        }
        let mut ring = lock_mutex(&engine.inner.history_tail.ring);
        let mut memos = lock_mutex(&self.memos);
        // Checked again under the ring's lock: eviction clears it there.
        let evicted = if self.shared() && memos.len() < MAX_MEMOS {
            memos.push(value.clone());
            self.memo_bytes.fetch_add(bytes, Ordering::Relaxed);
            ring.bytes += bytes;
            drop(memos);
            ring.shrink()
        } else {
            Vec::new()
        };
        drop(ring);
        drop(evicted);
        value
    }
}

/// A commit's record as its transaction built it, kept for the ring (see [`Engine::feed_tail`]).
pub(super) struct HandedRecord {
    /// `ts` and `wall_ms` are set when the commit is sealed.
    pub(super) record: LogRecord,
    /// Its length in the log.
    pub(super) len: usize,
}

/// The ring (see the module comment) and whether commits should keep their records for it.
#[derive(Default)]
pub(super) struct HistoryTail {
    /// Mirrors `Ring::running`, read by committers without the lock: a commit keeps its
    /// record's ops only while this is set. Stale reads only cost a restart of the ring.
    pub(super) wanted: AtomicBool,
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    running: bool,
    /// Every durable record after this and up to the newest in `records` is in `records`;
    /// `None` until the writer first hands records over after the ring started.
    from: Option<Timestamp>,
    records: VecDeque<Arc<TailRecord>>,
    bytes: usize,
    last_read: Option<Instant>,
}

impl Ring {
    fn end(&self) -> Option<Timestamp> {
        self.records.back().map(|r| r.record.ts).or(self.from)
    }

    /// Starts over after `from`, with no records; returns what it held.
    fn restart(&mut self, from: Option<Timestamp>) -> Vec<Arc<TailRecord>> {
        let evicted = self.evict(self.records.len());
        self.from = from;
        evicted
    }

    fn evict(&mut self, n: usize) -> Vec<Arc<TailRecord>> {
        let evicted: Vec<Arc<TailRecord>> = self.records.drain(..n).collect();
        for old in &evicted {
            old.in_ring.store(false, Ordering::Relaxed);
            self.bytes -= old.len + old.memo_bytes.load(Ordering::Relaxed);
            self.from = Some(old.record.ts);
        }
        evicted
    }

    fn push(&mut self, handed: HandedRecord) {
        debug_assert!(self.end().is_none_or(|end| end < handed.record.ts));
        let record = TailRecord::new(handed.record, handed.len);
        record.in_ring.store(true, Ordering::Relaxed);
        self.bytes += handed.len;
        self.records.push_back(Arc::new(record));
    }

    /// Evicts the oldest records until the ring is within its bounds (the newest stays, so
    /// that a record larger than the bound still reaches its readers once).
    fn shrink(&mut self) -> Vec<Arc<TailRecord>> {
        let mut n = 0;
        let mut bytes = self.bytes;
        while self.records.len() - n > TAIL_RECORDS
            || (bytes > TAIL_BYTES && self.records.len() - n > 1)
        {
            let old = &self.records[n];
            bytes -= old.len + old.memo_bytes.load(Ordering::Relaxed);
            n += 1;
        }
        self.evict(n)
    }

    /// Up to `max` records after `after` (which is at or after `from`).
    fn after(&self, after: Timestamp, max: usize) -> Vec<Arc<TailRecord>> {
        let start = self.records.partition_point(|r| r.record.ts <= after);
        self.records.range(start..).take(max).cloned().collect()
    }
}

impl Engine {
    /// Up to `max` durable records after `after` from the shared tail, or `None` if the tail
    /// does not hold the records right after `after` (it is before the tail's start, or the
    /// tail is not running yet: this call starts it). Takes no file I/O: the caller reads its
    /// own history on `None`.
    pub fn read_tail(&self, after: Timestamp, max: usize) -> Option<Vec<Arc<TailRecord>>> {
        let tail = &self.inner.history_tail;
        let mut ring = lock_mutex(&tail.ring);
        ring.last_read = Some(Instant::now());
        if !ring.running {
            ring.running = true;
            tail.wanted.store(true, Ordering::Relaxed);
            return None;
        }
        let (from, end) = (ring.from?, ring.end()?);
        if after < from || after > end {
            return None;
        }
        Some(ring.after(after, max))
    }

    /// The writer hands over a durable batch: each commit's timestamp and its record, if it
    /// kept one. Called after the batch's fdatasync and before the batch is announced durable,
    /// so the durable timestamp is still the last commit written before the batch. Returns the
    /// records the ring let go, for the writer to drop after the announcement: freeing them
    /// (cold by now) need not delay the batch's committers.
    #[must_use = "drop the evicted records after announcing the batch"]
    pub(super) fn feed_tail(
        &self,
        batch: Vec<(Timestamp, Option<HandedRecord>)>,
    ) -> Vec<Arc<TailRecord>> {
        let tail = &self.inner.history_tail;
        if !tail.wanted.load(Ordering::Relaxed) {
            return Vec::new();
        }
        // Only the writer moves it, and it has not yet for this batch.
        let mut prev = self.inner.progress.borrow().durable;
        let mut ring = lock_mutex(&tail.ring);
        let mut evicted = Vec::new();
        if ring.last_read.is_none_or(|t| t.elapsed() > TAIL_IDLE) {
            ring.running = false;
            tail.wanted.store(false, Ordering::Relaxed);
            evicted = ring.restart(None);
        } else {
            for (ts, handed) in batch {
                debug_assert!(ts > prev, "a batch's commits follow the last one written");
                match handed {
                    Some(handed) => {
                        debug_assert_eq!(handed.record.ts, ts);
                        if ring.end() != Some(prev) {
                            evicted.append(&mut ring.restart(Some(prev)));
                        }
                        ring.push(handed);
                    }
                    None => evicted.append(&mut ring.restart(Some(ts))),
                }
                prev = ts;
            }
            evicted.append(&mut ring.shrink());
        }
        evicted
    }
}
