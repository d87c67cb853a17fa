//! The shared tail: the log's newest durable records, read, checked and decoded once for every
//! reader that is caught up (change streams and tailable oplog cursors waiting for commits),
//! instead of once per reader.
//!
//! A stream at the tail used to read the record each commit appended with its own
//! [`HistoryReader`] (a seek, a read, the CRC and the decoding of the whole record), so ten
//! streams paid for ten reads of the same bytes. Here one reader, adopted from the first
//! stream that asks, fills a bounded ring of decoded records; a stream whose position is inside
//! the ring takes `Arc`s from it. A stream behind the ring (slow, or catching up) reads from
//! disk with its own reader, as before: the ring never waits for anyone and holds nothing back.
//! A reader of the ring may also attach to a record what it derives from it (a change stream
//! its events for one shape of stream: [`TailRecord::remember`]), so that streams watching the
//! same way shape each record once.
//!
//! Invariants:
//! - Only durable records enter the ring: it is filled by a [`HistoryReader`], which stops at
//!   the durable end. So a reader of the ring never sees a write that a crash could take back.
//! - The ring holds every durable record after `from` up to its newest, in timestamp order,
//!   without a gap: a reader positioned at or after `from` gets exactly the records it would have
//!   read itself. A reader before `from` gets `None` and reads its own.
//! - Memory is bounded: at most [`TAIL_RECORDS`] records, and [`TAIL_BYTES`] of records (their
//!   length in the log) plus remembered derivations; a derivation that does not fit is
//!   returned but not kept. What a reader took out it holds only until it has shaped it (one
//!   read batch).
//! - The commit path never touches the ring: it is filled by the readers, on their threads,
//!   when one of them asks for records past its end. Its reader's file descriptor, like any
//!   idle change stream's, keeps at most one removed segment's space until the ring moves on.
//!
//! Lock order: `Inner::history_tail` (the ring) is a leaf with respect to every other engine
//! lock (see `engine.rs`); while holding it the ring's reader borrows the `progress` channel and
//! reads files, and [`TailRecord::remember`] takes the record's own `memos` lock after it.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::history::HistoryReader;
use super::{Engine, lock_mutex};
use crate::txlog::LogRecord;
use crate::{StorageError, Timestamp};

/// The ring's bounds: how many records and how many bytes (records' lengths in the log plus
/// what readers remembered about them). Enough for a few hundred milliseconds of a busy log,
/// so that a stream whose client paused briefly stays on the ring.
pub const TAIL_RECORDS: usize = 4096;
pub const TAIL_BYTES: usize = 8 * 1024 * 1024;
/// How much one refill reads at most (under the ring's lock).
const REFILL_RECORDS: usize = 256;
const REFILL_BYTES: usize = 1024 * 1024;
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
        if self.shared() && memos.len() < MAX_MEMOS {
            memos.push(value.clone());
            self.memo_bytes.fetch_add(bytes, Ordering::Relaxed);
            ring.bytes += bytes;
            drop(memos);
            ring.shrink();
        }
        value
    }
}

/// The ring (see the module comment). Lives in the engine; empty until a reader asks.
#[derive(Default)]
pub(super) struct HistoryTail {
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    /// Positioned after the newest record in `records` (or at `from` when there is none).
    reader: Option<HistoryReader>,
    /// Every durable record after this and up to the newest in `records` is in `records`.
    from: Timestamp,
    records: VecDeque<Arc<TailRecord>>,
    bytes: usize,
}

impl Ring {
    fn end(&self) -> Timestamp {
        self.records.back().map_or(self.from, |r| r.record.ts)
    }

    /// Starts over at `reader`'s position, with no records.
    fn restart(&mut self, reader: HistoryReader) {
        while self.evict_one() {}
        self.from = reader.position();
        self.reader = Some(reader);
    }

    fn evict_one(&mut self) -> bool {
        let Some(old) = self.records.pop_front() else {
            return false;
        };
        old.in_ring.store(false, Ordering::Relaxed);
        self.bytes -= old.len + old.memo_bytes.load(Ordering::Relaxed);
        self.from = old.record.ts;
        true
    }

    /// Reads the next durable records into the ring, evicting the oldest to stay in bounds.
    fn refill(&mut self) -> Result<(), StorageError> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(());
        };
        let read = match reader.next_batch_sized(REFILL_RECORDS, REFILL_BYTES) {
            Ok(read) => read,
            Err(e) => {
                // Whoever asks next starts the ring over with a reader of their own, and the
                // callers read their own history meanwhile: an error is theirs to meet at their
                // own position (the ring's may be older than any of them).
                self.reader = None;
                while self.evict_one() {}
                return Err(e);
            }
        };
        for (record, len) in read {
            let record = TailRecord::new(record, len);
            record.in_ring.store(true, Ordering::Relaxed);
            self.bytes += len;
            self.records.push_back(Arc::new(record));
        }
        self.shrink();
        Ok(())
    }

    /// Evicts the oldest records until the ring is within its bounds (the newest stays, so
    /// that a record larger than the bound still reaches its readers once).
    fn shrink(&mut self) {
        while self.records.len() > TAIL_RECORDS
            || (self.bytes > TAIL_BYTES && self.records.len() > 1)
        {
            self.evict_one();
        }
    }

    /// Up to `max` records after `after` (which is at or after `from`).
    fn after(&self, after: Timestamp, max: usize) -> Vec<Arc<TailRecord>> {
        let start = self.records.partition_point(|r| r.record.ts <= after);
        self.records.range(start..).take(max).cloned().collect()
    }
}

impl Engine {
    /// Up to `max` durable records after `after` from the shared tail, or `None` if `after` is
    /// before what the tail holds (the caller reads its own history). `donor`, a reader the
    /// caller holds, is taken when it is positioned at `after` and the tail needs a reader
    /// there (it has none, or it is further behind than one refill reaches). Reads files when
    /// the tail must be refilled: call where blocking briefly is acceptable.
    pub fn read_tail(
        &self,
        after: Timestamp,
        max: usize,
        donor: &mut Option<HistoryReader>,
    ) -> Result<Option<Vec<Arc<TailRecord>>>, StorageError> {
        let mut ring = lock_mutex(&self.inner.history_tail.ring);
        let mut adopt = |ring: &mut Ring| match donor.take_if(|d| d.position() == after) {
            Some(reader) => {
                ring.restart(reader);
                true
            }
            None => false,
        };
        if ring.reader.is_none() && !adopt(&mut ring) {
            return Ok(None);
        }
        if after < ring.from {
            return Ok(None);
        }
        if after >= ring.end() {
            let mut refilled = ring.refill();
            // Still behind the caller: the tail was idle, and catching it up is this caller's
            // reader's job, already done.
            if refilled.is_ok() && after > ring.end() {
                if !adopt(&mut ring) {
                    return Ok(None);
                }
                refilled = ring.refill();
            }
            if refilled.is_err() {
                return Ok(None);
            }
        }
        Ok(Some(ring.after(after, max)))
    }
}
