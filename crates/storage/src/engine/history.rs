//! History: the committed transactions still in the log, read back in commit order for
//! change streams and `local.oplog.rs`, and how long the log keeps them (mongod's oplog size
//! and minimum retention).
//!
//! Nothing is stored twice: the history *is* the transaction log. A checkpoint makes a segment
//! unnecessary for recovery, but retention keeps it for readers until the log outgrows
//! `history_size_bytes` and the segment is older than `history_min_retention`
//! (`txlog::remove_covered_segments`).
//!
//! Invariants:
//! - A [`HistoryReader`] never returns a record with a timestamp after the durable timestamp it
//!   read at the start of the batch: a change event is never seen that a crash could undo.
//! - Records come back exactly once, in strictly increasing timestamp order; a reader that
//!   cannot prove it has every record after its position (a segment it needs was removed)
//!   fails with [`StorageError::HistoryLost`] instead of skipping.
//! - Damage in a record before the durable end, or a segment whose records end before its
//!   successor says they do, is an error naming the file and offset, never an end of history.
//!
//! Lock order: a reader takes no engine lock (it reads files and the `progress` channel, a
//! leaf). Retention is atomics. See the engine's lock order (`engine.rs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::commit::LogProgress;
use super::{Engine, wall_clock_ms};
use crate::txlog::reader::{SegmentCursor, Step};
use crate::txlog::{self, LogRecord, Retention};
use crate::{StorageError, Timestamp};

/// What the log holds now, for `serverStatus` and for deciding whether a resume is possible.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryWindow {
    /// The oldest commit whose record is still readable (`None`: no records).
    pub oldest: Option<Timestamp>,
    pub oldest_wall_ms: Option<i64>,
    /// The newest durable commit.
    pub newest: Timestamp,
    pub newest_wall_ms: Option<i64>,
    /// Bytes of log segments on disk.
    pub retained_bytes: u64,
    pub size_limit_bytes: u64,
    pub min_retention: Duration,
}

/// mongod's `serverStatus.oplogTruncation` counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryTruncationStats {
    /// Time spent deciding what to remove (listing and weighing segments).
    pub processing_micros: u64,
    /// Time spent removing segments.
    pub truncating_micros: u64,
    /// Segments removed.
    pub truncate_count: u64,
}

/// Retention settings (changeable at runtime) and truncation counters. Atomics: read by the
/// checkpointer, written by `replSetResizeOplog`, with no lock.
pub(super) struct HistoryRetention {
    size_limit_bytes: AtomicU64,
    min_retention_ms: AtomicU64,
    processing_micros: AtomicU64,
    truncating_micros: AtomicU64,
    truncate_count: AtomicU64,
}

impl HistoryRetention {
    pub(super) fn new(size_limit_bytes: u64, min_retention: Duration) -> HistoryRetention {
        HistoryRetention {
            size_limit_bytes: AtomicU64::new(size_limit_bytes),
            min_retention_ms: AtomicU64::new(min_retention.as_millis() as u64),
            processing_micros: AtomicU64::new(0),
            truncating_micros: AtomicU64::new(0),
            truncate_count: AtomicU64::new(0),
        }
    }

    fn min_retention(&self) -> Duration {
        Duration::from_millis(self.min_retention_ms.load(Ordering::Relaxed))
    }
}

/// Reads committed, durable records after a position, segment by segment (see the module
/// comment for its guarantees). `Send + 'static`: a server cursor keeps it across getMores.
pub struct HistoryReader {
    dir: PathBuf,
    progress: watch::Receiver<LogProgress>,
    cursor: Option<SegmentCursor>,
    /// Records at or before this are skipped unread (the resume point).
    after: Timestamp,
    position: Timestamp,
}

// A server cursor keeps a reader across getMores, on any thread.
const _: fn() = || {
    fn send_static<T: Send + 'static>() {}
    send_static::<HistoryReader>();
};

/// History is lost at `requested` (a reader's resume point or position).
fn lost(requested: Timestamp, dir: &Path) -> StorageError {
    StorageError::HistoryLost {
        requested,
        oldest: oldest_record(dir).ok().flatten().map(|(ts, _)| ts),
    }
}

/// The oldest record still in the log: its timestamp and wall clock.
fn oldest_record(dir: &Path) -> Result<Option<(Timestamp, i64)>, StorageError> {
    for path in txlog::list_segments(dir)? {
        if let Some(mut cursor) = SegmentCursor::open(&path)?
            && let Some(first) = cursor.first_record_prefix()?
        {
            return Ok(Some(first));
        }
    }
    Ok(None)
}

fn corrupt(cursor: &SegmentCursor, detail: String) -> StorageError {
    StorageError::Corrupt {
        segment: cursor.path.clone(),
        offset: cursor.offset,
        detail,
    }
}

/// What to do at the end of a segment's readable records.
enum AtEnd {
    /// Read on (a record appeared, or the next segment is open now).
    Continue,
    /// Caught up with what is written.
    Stop,
}

impl HistoryReader {
    /// Positions a reader on the segment holding the first record after `after`.
    fn start(&mut self) -> Result<(), StorageError> {
        // A segment listed can be removed before it is opened: list again (the checkpointer
        // removes a few at a time, so a couple of tries settle it).
        for _ in 0..8 {
            let segments = txlog::list_segments(&self.dir)?;
            let Some(oldest_path) = segments.first() else {
                return Ok(());
            };
            let Some(oldest) = SegmentCursor::open(oldest_path)? else {
                continue;
            };
            // Every record up to its predecessor's last one may be gone.
            if let Some(p) = oldest.header.prev
                && self.after < p.last_ts
            {
                return Err(lost(self.after, &self.dir));
            }
            // Names are first timestamps: the last segment named at or before after + 1 holds
            // the first record after `after`, or it is in the one after it.
            let start = segments
                .iter()
                .rposition(|p| txlog::name_ts(p).0 <= self.after.0.saturating_add(1))
                .unwrap_or(0);
            let cursor = match start {
                0 => Some(oldest),
                i => SegmentCursor::open(&segments[i])?,
            };
            if let Some(mut cursor) = cursor {
                cursor.skip_through(self.after)?;
                self.cursor = Some(cursor);
                return Ok(());
            }
        }
        Err(lost(self.after, &self.dir))
    }

    /// ts of the last record returned (initially the `after` it was opened with).
    pub fn position(&self) -> Timestamp {
        self.position
    }

    /// The next records: at least one if any is durable and unread, at most `max_records` and
    /// about `max_bytes`; empty when caught up with the durable end as of this call. Blocking
    /// file I/O.
    pub fn next_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogRecord>, StorageError> {
        let sized = self.next_batch_sized(max_records, max_bytes)?;
        Ok(sized.into_iter().map(|(record, _)| record).collect())
    }

    /// [`next_batch`](Self::next_batch), with each record's length in the log (what the shared
    /// tail's memory bound counts).
    pub(super) fn next_batch_sized(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(LogRecord, usize)>, StorageError> {
        let max_records = max_records.max(1);
        let durable = self.progress.borrow().durable;
        let mut out = Vec::new();
        if self.position >= durable {
            if let Some(cursor) = self.cursor.as_mut() {
                cursor.park();
            }
            return Ok(out);
        }
        if self.cursor.is_none() {
            self.start()?;
        }
        let Some(cursor) = self.cursor.as_mut() else {
            return Ok(out);
        };
        // Bytes buffered by the previous batch may be zeros the writer has overwritten since.
        cursor.refresh()?;
        let mut bytes = 0usize;
        while out.len() < max_records && bytes < max_bytes && self.position < durable {
            let cursor = self.cursor.as_mut().expect("positioned above");
            let step = cursor.peek()?;
            match step {
                Step::Record { record, .. } if record.ts > durable => break,
                Step::Record { record, len } => {
                    if record.ts <= self.position.max(cursor.last_ts) {
                        let detail = "record timestamp does not increase".to_string();
                        return Err(corrupt(cursor, detail));
                    }
                    cursor.consume(len, record.ts);
                    self.position = record.ts;
                    bytes += len as usize;
                    out.push((record, len as usize));
                }
                step => match self.at_end(step, durable)? {
                    AtEnd::Continue => {}
                    AtEnd::Stop => break,
                },
            }
        }
        debug_assert!(out.iter().all(|(r, _)| r.ts <= durable));
        if let Some(cursor) = self.cursor.as_mut() {
            cursor.park();
        }
        Ok(out)
    }

    /// At zeros, the end of the file, or bytes that are no record: reads again (the writer may
    /// have been in the middle of a write), then moves to the next segment, stops, or reports
    /// damage (see the module comment).
    fn at_end(&mut self, first: Step, durable: Timestamp) -> Result<AtEnd, StorageError> {
        let cursor = self.cursor.as_mut().expect("positioned");
        // Listed before the re-read: a segment is created only after the one before it is
        // complete, so if a next segment exists now, the re-read sees this one whole.
        let next = txlog::list_segments(&self.dir)?
            .into_iter()
            .find(|p| txlog::name_ts(p) > cursor.name_ts);
        cursor.refresh()?;
        let step = match first {
            Step::End | Step::Bad { .. } => cursor.peek()?,
            Step::Record { .. } => return Ok(AtEnd::Continue),
        };
        match step {
            Step::Record { .. } => Ok(AtEnd::Continue),
            Step::Bad { detail, ts } => {
                let durable_record = ts.is_some_and(|ts| ts > self.position && ts <= durable);
                if next.is_some() || durable_record {
                    let detail = format!("{detail}, before the durable end of the log");
                    return Err(corrupt(cursor, detail));
                }
                Ok(AtEnd::Stop)
            }
            Step::End => match next {
                Some(next) => self.move_to(&next),
                None => Ok(AtEnd::Stop),
            },
        }
    }

    /// Moves to the segment after the current one, checking that its header names the current
    /// one as its predecessor and agrees on where its records ended.
    fn move_to(&mut self, next_path: &Path) -> Result<AtEnd, StorageError> {
        let cursor = self.cursor.as_ref().expect("positioned");
        let Some(next) = SegmentCursor::open(next_path)? else {
            return Err(lost(self.position, &self.dir));
        };
        match next.header.prev {
            // A v1 segment names nothing: nothing to check.
            None if next.header.version < 2 => {}
            None => {
                let detail = format!(
                    "{} names no predecessor but follows this segment",
                    next_path.display()
                );
                return Err(corrupt(cursor, detail));
            }
            // The segment after this one was removed: its records are gone.
            Some(p) if p.first_ts > cursor.name_ts => return Err(lost(self.position, &self.dir)),
            Some(p) if p.first_ts < cursor.name_ts || p.end != cursor.offset => {
                let detail = format!(
                    "the records end here, but {} says this segment was sealed at offset {} (last commit {:?}): the records between are damaged or lost",
                    next_path.display(),
                    p.end,
                    p.last_ts
                );
                return Err(corrupt(cursor, detail));
            }
            Some(p) if p.last_ts != cursor.last_ts => {
                let detail = format!(
                    "the last record here is {:?}, but {} says it was {:?}",
                    cursor.last_ts,
                    next_path.display(),
                    p.last_ts
                );
                return Err(corrupt(cursor, detail));
            }
            Some(_) => {}
        }
        self.cursor = Some(next);
        Ok(AtEnd::Continue)
    }
}

impl Engine {
    fn history_dir(&self) -> Option<PathBuf> {
        self.inner.options.data_dir.as_ref().map(|d| d.join("log"))
    }

    /// What the log holds now: its oldest and newest commits and its size against the limit.
    pub fn history_window(&self) -> Result<HistoryWindow, StorageError> {
        let progress = self.inner.progress.borrow().clone();
        let retention = &self.inner.history;
        let mut window = HistoryWindow {
            oldest: None,
            oldest_wall_ms: None,
            newest: progress.durable,
            newest_wall_ms: progress.durable_wall_ms,
            retained_bytes: 0,
            size_limit_bytes: retention.size_limit_bytes.load(Ordering::Relaxed),
            min_retention: retention.min_retention(),
        };
        let Some(dir) = self.history_dir() else {
            return Ok(window);
        };
        for path in txlog::list_segments(&dir)? {
            // A segment removed since the listing simply no longer counts.
            window.retained_bytes += std::fs::metadata(&path).map_or(0, |m| m.len());
        }
        if let Some((ts, wall)) = oldest_record(&dir)?
            && ts <= progress.durable
        {
            window.oldest = Some(ts);
            window.oldest_wall_ms = Some(wall);
        }
        if window.newest_wall_ms.is_none() && window.oldest.is_some() {
            // Not written since start: the commit clock's seconds are wall-clock seconds.
            window.newest_wall_ms = Some(i64::from(progress.durable.seconds()) * 1000);
        }
        Ok(window)
    }

    /// A reader of the committed and durable records with a timestamp after `after`, in commit
    /// order. [`StorageError::HistoryLost`] if some of them may already be removed.
    pub fn read_history(&self, after: Timestamp) -> Result<HistoryReader, StorageError> {
        let Some(dir) = self.history_dir() else {
            return Err(StorageError::NoHistory);
        };
        let mut reader = HistoryReader {
            dir,
            progress: self.inner.progress.subscribe(),
            cursor: None,
            after,
            position: after,
        };
        reader.start()?;
        if let Some(cursor) = reader.cursor.as_mut() {
            cursor.park();
        }
        Ok(reader)
    }

    /// Waits until the durable timestamp is after `after`, or `timeout` passes; returns the
    /// durable timestamp then. Holds no lock while waiting. Needs a tokio runtime with timers.
    pub async fn wait_durable_after(&self, after: Timestamp, timeout: Duration) -> Timestamp {
        let mut rx = self.inner.progress.subscribe();
        // A failed log never becomes durable again: waiting out the timeout is the answer.
        let _ = tokio::time::timeout(timeout, rx.wait_for(|p| p.durable > after)).await;
        rx.borrow().durable
    }

    /// Changes retention at runtime (`replSetResizeOplog`; the caller validates). Takes effect
    /// at the next checkpoint, which this asks for.
    pub fn set_history_retention(&self, size_limit_bytes: u64, min_retention: Duration) {
        let retention = &self.inner.history;
        retention
            .size_limit_bytes
            .store(size_limit_bytes, Ordering::Relaxed);
        retention
            .min_retention_ms
            .store(min_retention.as_millis() as u64, Ordering::Relaxed);
        self.request_checkpoint();
    }

    /// mongod's `oplogTruncation` counters.
    pub fn history_truncation_stats(&self) -> HistoryTruncationStats {
        let r = &self.inner.history;
        HistoryTruncationStats {
            processing_micros: r.processing_micros.load(Ordering::Relaxed),
            truncating_micros: r.truncating_micros.load(Ordering::Relaxed),
            truncate_count: r.truncate_count.load(Ordering::Relaxed),
        }
    }

    /// Removes the log segments `checkpoint` covers that retention no longer keeps. Runs with
    /// `checkpointing` held (one remover at a time), after the control file records the
    /// checkpoint. Returns how many were removed.
    pub(super) fn trim_history(&self, checkpoint: Timestamp) -> Result<usize, StorageError> {
        debug_assert!(self.inner.checkpointing.try_lock().is_err());
        let Some(dir) = self.history_dir() else {
            return Ok(0);
        };
        // A running backup still copies the log after its pin.
        let checkpoint = self.inner.history_pins.bound(checkpoint);
        if !self.archive_sealed_segments(&dir) {
            return Ok(0);
        }
        let r = &self.inner.history;
        let retention = Retention {
            keep_segments: self.inner.options.retain_log_segments,
            size_limit_bytes: r.size_limit_bytes.load(Ordering::Relaxed),
            min_retention: r.min_retention(),
            now_ms: wall_clock_ms(),
        };
        let started = Instant::now();
        let removal = txlog::remove_covered_segments(&dir, checkpoint, &retention)?;
        let micros = |d: Duration| d.as_micros() as u64;
        r.processing_micros.fetch_add(
            micros(started.elapsed().saturating_sub(removal.removing)),
            Ordering::Relaxed,
        );
        if removal.removed > 0 {
            r.truncating_micros
                .fetch_add(micros(removal.removing), Ordering::Relaxed);
            r.truncate_count
                .fetch_add(removal.removed as u64, Ordering::Relaxed);
        }
        Ok(removal.removed)
    }

    /// Copies the sealed segments not archived yet into `--log-archive-dir`. `false` if that
    /// failed: then no segment may be removed, since the archive would have a hole.
    fn archive_sealed_segments(&self, dir: &Path) -> bool {
        let Some(archive) = &self.inner.options.log_archive_dir else {
            return true;
        };
        match txlog::archive_sealed(dir, archive) {
            Ok(0) => true,
            Ok(n) => {
                tracing::info!(segments = n, archive = %archive.display(), "log segments archived");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, archive = %archive.display(), "cannot archive the log; no log segment is removed until it can be (free space in the archive, or fix its permissions)");
                false
            }
        }
    }
}
