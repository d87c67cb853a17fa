//! Batches that change streams at the log's tail share: one stream reads a span of records,
//! shapes its events and writes them as a reply's array elements; every other stream that
//! watches the same way and stands at the same place takes that batch instead of doing the same
//! work again.
//!
//! Ten streams on a busy log each used to take every record from the shared tail, clone its
//! events, queue them and copy each into its own reply: work per event per stream (0.8–1.2 µs
//! per commit for each stream after the first, docs/benchmarks.md, stop 30). A shared batch
//! costs a follower one lookup and one copy of the elements into its reply (stop 31).
//!
//! Streams meet at the same place because they read on a common clock: a stream that gathers
//! commits wakes on the board's ticks (multiples of a power-of-two-millisecond period since
//! the board's epoch, chosen from one commit rate for all streams), and a stream that reads on
//! its own stops where the newest shared batch ended, so that from its next batch on it stands
//! where the others do.
//!
//! Invariants:
//! - A shared batch holds every event of the records after `after` up to `end`, in order,
//!   for streams with its [`ShapeKey`], no stages after `$changeStream`, and no splitting:
//!   what such a stream would have returned reading those records itself (events depend only
//!   on the record and the key: `stream.rs`).
//! - Only durable records are in it (it is made from what a stream read).
//! - Memory is bounded: at most [`BOARD_BATCHES`] batches of at most [`MAX_SHARED_BYTES`]
//!   each; a larger batch is returned to its stream but not shared.
//!
//! Lock order: the board's two locks (its batches, its rate) are leaves, never held together;
//! nothing is awaited or locked while either is held.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mangrove_storage::Timestamp;

use super::spec::{BeforeChange, FullDocument, Scope, StreamSpec};
use super::token::ResumeToken;
use crate::batch::BatchDoc;

/// Batches kept: enough for a few shapes of stream over a few ticks.
pub const BOARD_BATCHES: usize = 16;
/// The largest batch shared (its elements' bytes): a tick's events on a busy log are tens of
/// kilobytes; larger batches are streams catching up, which rarely stand at the same place.
pub const MAX_SHARED_BYTES: usize = 1024 * 1024;

/// What a record's change events depend on besides the record itself, when the stream does not
/// show expanded events (those carry each stream's own view of collection UUIDs): streams with
/// equal keys shape each record once (through the shared tail's memos), and share batches.
#[derive(PartialEq, Clone)]
pub struct ShapeKey {
    scope: Scope,
    full_document: FullDocument,
    before_change: BeforeChange,
}

impl ShapeKey {
    pub fn of(spec: &StreamSpec) -> Option<ShapeKey> {
        (!spec.show_expanded).then(|| ShapeKey {
            scope: spec.scope.clone(),
            full_document: spec.full_document,
            before_change: spec.before_change,
        })
    }
}

/// The events of the records after `after` up to `end`, written as array elements.
pub struct SharedBatch {
    pub key: ShapeKey,
    pub after: Timestamp,
    pub end: Timestamp,
    /// How many events, and the last one's token.
    pub count: usize,
    pub last_token: Option<ResumeToken>,
    /// `"0": {event}, "1": {event}, ...` as they go between an array's length and its end.
    pub elements: Vec<u8>,
}

/// A shared batch is sent as its elements' bytes (`reply::Segmented`).
impl AsRef<[u8]> for SharedBatch {
    fn as_ref(&self) -> &[u8] {
        &self.elements
    }
}

pub struct BatchBoard {
    /// Ticks are counted from here.
    epoch: Instant,
    /// The longest a stream gathers commits (`--change-stream-max-gather-ms`).
    max_gather: Duration,
    recent: Mutex<VecDeque<Arc<SharedBatch>>>,
    rate: Mutex<CommitRate>,
}

/// The log's commit rate as streams see it, one for all of them: streams that each estimated
/// their own would choose periods apart near a boundary, and part on different clocks.
#[derive(Default)]
struct CommitRate {
    /// The last sample: when, and the log's commit count then.
    at: Option<(Instant, u64)>,
    per_second: f64,
}

/// How long a stream at the log's tail lets commits gather after its last answer before it
/// reads again, by the log's commit rate ([`BatchBoard::gather_time`]): none up to
/// [`GATHER_FROM_RATE`] commits/s, so that a stream at a moderate rate answers each commit at
/// once, rising to the board's `max_gather` ([`DEFAULT_MAX_GATHER`] unless configured) at
/// [`GATHER_FULL_RATE`] and above.
///
/// Measured (docs/benchmarks.md): with 4 ms from 3,000 to 8,000 commits/s (stop 28) the
/// transfer workload ran at 0.83–0.87 of its no-stream throughput with ten streams, instead of
/// 0.68–0.82 with 1 ms from 1,500 to 4,000. With 8 ms (stop 32), pinned, through the driver's
/// `watch()`, 0.922–0.993 instead of 0.856–0.883 (alternated runs), for a p99 from commit to
/// event at full speed of about 7 ms instead of 4 ms. At 1,000 commits/s (the latency goal's
/// rate) nothing gathers either way.
pub const DEFAULT_MAX_GATHER: Duration = Duration::from_millis(8);
const GATHER_FROM_RATE: f64 = 3000.0;
const GATHER_FULL_RATE: f64 = 8000.0;

/// The shortest time a rate is sampled over: a group commit makes many commits durable at
/// once, which over a shorter time says little about the rate.
const RATE_WINDOW: Duration = Duration::from_millis(20);

impl Default for BatchBoard {
    fn default() -> BatchBoard {
        BatchBoard::new(DEFAULT_MAX_GATHER)
    }
}

impl BatchBoard {
    /// A board whose streams gather commits for at most `max_gather`.
    pub fn new(max_gather: Duration) -> BatchBoard {
        BatchBoard {
            epoch: Instant::now(),
            max_gather,
            recent: Mutex::new(VecDeque::with_capacity(BOARD_BATCHES)),
            rate: Mutex::new(CommitRate::default()),
        }
    }

    /// The batch for streams with `key` that starts right after `after`, if one was shared.
    pub fn find(&self, key: &ShapeKey, after: Timestamp) -> Option<Arc<SharedBatch>> {
        let recent = self.lock();
        recent
            .iter()
            .rev()
            .find(|b| b.after == after && b.key == *key)
            .cloned()
    }

    /// Where the newest batch for `key` ends, if it ends after `after`: a stream reading on its
    /// own stops there, to stand where the other streams stand.
    pub fn meeting_point(&self, key: &ShapeKey, after: Timestamp) -> Option<Timestamp> {
        let recent = self.lock();
        recent
            .iter()
            .rev()
            .find(|b| b.key == *key)
            .map(|b| b.end)
            .filter(|end| *end > after)
    }

    /// Shares `batch` (if it is small enough) and returns it.
    pub fn publish(&self, batch: SharedBatch) -> Arc<SharedBatch> {
        debug_assert!(batch.end > batch.after, "a shared batch spans records");
        let batch = Arc::new(batch);
        if batch.elements.len() <= MAX_SHARED_BYTES {
            let mut recent = self.lock();
            if recent.len() == BOARD_BATCHES {
                recent.pop_front();
            }
            recent.push_back(batch.clone());
        }
        batch
    }

    /// How long a stream at the tail gathers commits, given the log's commit count now: none
    /// up to [`GATHER_FROM_RATE`] commits/s, then in proportion up to `max_gather` at
    /// [`GATHER_FULL_RATE`].
    pub fn gather_time(&self, commits: u64) -> Duration {
        self.gather_at_rate(self.commit_rate(commits))
    }

    fn gather_at_rate(&self, rate: f64) -> Duration {
        let share = (rate - GATHER_FROM_RATE) / (GATHER_FULL_RATE - GATHER_FROM_RATE);
        self.max_gather.mul_f64(share.clamp(0.0, 1.0))
    }

    /// The commit rate (commits/s) given the log's commit count now, smoothed over the last
    /// few [`RATE_WINDOW`]s.
    fn commit_rate(&self, commits: u64) -> f64 {
        let now = Instant::now();
        let mut rate = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        match rate.at {
            Some((at, count)) if now.duration_since(at) < RATE_WINDOW => {
                debug_assert!(commits >= count, "the commit count only grows");
            }
            Some((at, count)) => {
                let seconds = now.duration_since(at).as_secs_f64();
                let sample = commits.saturating_sub(count) as f64 / seconds;
                rate.per_second = 0.5 * rate.per_second + 0.5 * sample;
                rate.at = Some((now, commits));
            }
            None => rate.at = Some((now, commits)),
        }
        rate.per_second
    }

    /// The first tick at or after `not_before` on the clock streams gathering for about
    /// `period` share: its period is the largest power of two milliseconds not over `period`
    /// (streams estimate their rates apart, so their periods differ a little). A period under
    /// a millisecond (the timer's resolution) has no ticks: `not_before` itself.
    pub fn tick(&self, not_before: Instant, period: Duration) -> Instant {
        let period_ms = period.as_millis() as u64;
        if period_ms == 0 {
            return not_before;
        }
        let period_us = 1000 << (63 - period_ms.leading_zeros());
        let since = not_before.saturating_duration_since(self.epoch).as_micros() as u64;
        let ticks = since.div_ceil(period_us);
        self.epoch + Duration::from_micros(ticks * period_us)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<SharedBatch>>> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `docs` as array elements: `"0": {...}, "1": {...}`.
pub fn write_elements(out: &mut Vec<u8>, docs: &[BatchDoc]) {
    let mut index = [0u8; 20];
    for (i, doc) in docs.iter().enumerate() {
        out.push(0x03);
        out.extend_from_slice(itoa(i, &mut index));
        out.push(0);
        out.extend_from_slice(doc.as_raw().as_bytes());
    }
}

/// `n` in decimal (an array index key), without allocating.
fn itoa(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::spec;

    fn key(coll: &str) -> ShapeKey {
        let spec = spec::parse(
            bson::RawBsonRef::Document(&bson::rawdoc! {}),
            "db",
            Some(coll),
        )
        .expect("an empty $changeStream parses");
        ShapeKey::of(&spec).expect("not expanded")
    }

    fn batch(key: ShapeKey, after: u64, end: u64, bytes: usize) -> SharedBatch {
        SharedBatch {
            key,
            after: Timestamp(after),
            end: Timestamp(end),
            count: 1,
            last_token: None,
            elements: vec![0; bytes],
        }
    }

    #[test]
    fn a_batch_is_found_by_its_shape_and_start() {
        let board = BatchBoard::default();
        board.publish(batch(key("a"), 10, 20, 100));
        assert!(board.find(&key("a"), Timestamp(10)).is_some());
        assert!(board.find(&key("a"), Timestamp(11)).is_none());
        assert!(board.find(&key("b"), Timestamp(10)).is_none());
        assert_eq!(
            board.meeting_point(&key("a"), Timestamp(15)),
            Some(Timestamp(20))
        );
        assert_eq!(board.meeting_point(&key("a"), Timestamp(20)), None);
        assert_eq!(board.meeting_point(&key("b"), Timestamp(5)), None);
    }

    #[test]
    fn the_board_keeps_a_bounded_number_of_small_batches() {
        let board = BatchBoard::default();
        for i in 0..(BOARD_BATCHES as u64 + 5) {
            board.publish(batch(key("a"), i, i + 1, 10));
        }
        assert!(
            board.find(&key("a"), Timestamp(0)).is_none(),
            "the oldest went"
        );
        let newest = BOARD_BATCHES as u64 + 4;
        assert!(board.find(&key("a"), Timestamp(newest)).is_some());
        let large = board.publish(batch(key("a"), 100, 101, MAX_SHARED_BYTES + 1));
        assert_eq!(large.end, Timestamp(101), "returned to its stream");
        assert!(
            board.find(&key("a"), Timestamp(100)).is_none(),
            "but not kept"
        );
    }

    #[test]
    fn streams_gather_only_on_a_busy_log_and_no_longer_than_configured() {
        let board = BatchBoard::default();
        assert_eq!(board.gather_at_rate(0.0), Duration::ZERO);
        assert_eq!(
            board.gather_at_rate(1000.0),
            Duration::ZERO,
            "the latency goal's rate"
        );
        assert_eq!(board.gather_at_rate(GATHER_FROM_RATE), Duration::ZERO);
        let halfway = (GATHER_FROM_RATE + GATHER_FULL_RATE) / 2.0;
        assert_eq!(board.gather_at_rate(halfway), DEFAULT_MAX_GATHER / 2);
        assert_eq!(board.gather_at_rate(50_000.0), DEFAULT_MAX_GATHER);
        let eager = BatchBoard::new(Duration::ZERO);
        assert_eq!(eager.gather_at_rate(50_000.0), Duration::ZERO);
        let patient = BatchBoard::new(Duration::from_millis(20));
        assert_eq!(patient.gather_at_rate(50_000.0), Duration::from_millis(20));
    }

    #[test]
    fn ticks_fall_on_multiples_of_the_period() {
        let board = BatchBoard::default();
        let period = Duration::from_millis(4);
        let at = board.tick(board.epoch + Duration::from_micros(4100), period);
        assert_eq!(at, board.epoch + Duration::from_millis(8));
        let slower = Duration::from_micros(3700);
        let at = board.tick(board.epoch + Duration::from_micros(4100), slower);
        assert_eq!(
            at,
            board.epoch + Duration::from_millis(6),
            "on the 2 ms clock"
        );
        let on = board.epoch + Duration::from_millis(12);
        assert_eq!(board.tick(on, period), on);
        let soon = board.epoch + Duration::from_micros(300);
        assert_eq!(board.tick(soon, Duration::from_micros(500)), soon);
    }
}
