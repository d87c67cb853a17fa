//! Server-side cursors: what `find` could not return in its first batch, kept for `getMore`.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mangrove_query::{Filter, KeyInterval, Projection};
use mangrove_storage::{CollectionInfo, DocKey, Snapshot, StoredDoc};
use tracing::info;

use crate::Shared;
use crate::access::{Examined, IndexWalk};
use crate::error::{CommandError, CommandResult, code};
use crate::pipeline_input::PipelineSource;

pub use crate::batch::{BatchDoc, MAX_BATCH_BYTES};

pub struct ScanState {
    pub snapshot: Snapshot,
    pub coll: CollectionInfo,
    /// A range of `_id` order to walk, or the whole collection.
    pub range: Option<KeyInterval>,
    /// Walk the range backward (a descending `_id` sort).
    pub reverse: bool,
    /// The last key returned: the walk resumes past it.
    pub after: Option<DocKey>,
    pub filter: Filter,
    pub skip: u64,
    /// A tailable cursor over a capped collection: it outlives the end of the collection, and
    /// each `getMore` walks on from `after` in a new snapshot (`commands/tailable.rs`).
    pub tail: Option<Tail>,
}

/// What a tailable cursor was asked for.
#[derive(Clone, Copy, Debug)]
pub struct Tail {
    /// `awaitData`: a `getMore` that finds nothing new waits for commits (up to its
    /// `maxTimeMS`).
    pub await_data: bool,
}

/// A filtered walk along a secondary index's bounds.
pub struct IndexScanState {
    pub snapshot: Snapshot,
    pub coll: CollectionInfo,
    pub walk: IndexWalk,
    pub filter: Filter,
    pub skip: u64,
    /// Fetched and matching, not yet returned.
    pub pending: VecDeque<StoredDoc>,
}

/// Where a cursor's remaining documents come from.
pub enum Source {
    /// A filtered walk over a collection in `_id` order, resumed after the last key returned.
    Scan(Box<ScanState>),
    Index(Box<IndexScanState>),
    /// Results already computed (a sort, a listing).
    Buffered(VecDeque<BatchDoc>),
    /// An aggregation's results, computed batch by batch.
    Pipeline(Box<PipelineSource>),
    /// A change stream or an oplog cursor: the log read as it becomes durable (`getMore` waits for
    /// them, so it is continued by `commands/change_stream.rs`, never by [`Cursor::next_batch`]).
    History(Box<crate::changes::HistoryCursor>),
}

pub struct Cursor {
    pub ns: String,
    pub source: Source,
    pub projection: Option<Projection>,
    /// Documents still allowed by the query's `limit`, if it has one.
    pub remaining: Option<u64>,
    pub last_used: Instant,
    /// The transaction that opened it: only that transaction's own statements may continue
    /// it, as in mongod.
    pub txn: Option<TxnOwner>,
}

/// A multi-document transaction, as a cursor it opened remembers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnOwner {
    /// The session's `lsid`, as the request's raw bytes.
    pub lsid: Vec<u8>,
    pub txn_number: i64,
}

impl Cursor {
    /// What the cursor tails, if it is a tailable cursor.
    pub fn tail(&self) -> Option<Tail> {
        match &self.source {
            Source::Scan(scan) => scan.tail,
            _ => None,
        }
    }

    /// Takes up to `max_docs` documents (and at most about [`MAX_BATCH_BYTES`]); returns them and
    /// whether the cursor is exhausted.
    pub fn next_batch(&mut self, max_docs: Option<u64>) -> CommandResult<(Vec<BatchDoc>, bool)> {
        let mut want = max_docs.unwrap_or(u64::MAX);
        if let Some(rem) = self.remaining {
            want = want.min(rem);
        }
        let mut out: Vec<BatchDoc> = Vec::new();
        let mut exhausted = false;
        if want > 0 {
            exhausted = match &mut self.source {
                Source::Scan(scan) => next_scanned(scan, want, &mut out)?,
                Source::Index(scan) => next_indexed(scan, want, &mut out)?,
                Source::Buffered(docs) => next_buffered(docs, want, &mut out),
                Source::Pipeline(p) => p.fill(want, &mut out)?,
                Source::History(_) => {
                    return Err(CommandError::new(
                        code::INTERNAL_ERROR,
                        "a change stream cursor is continued by its own getMore",
                    ));
                }
            };
        }
        if let Some(rem) = &mut self.remaining {
            *rem -= out.len() as u64;
            if *rem == 0 {
                exhausted = true;
            }
        }
        if let Some(projection) = &self.projection {
            for doc in &mut out {
                let projected = projection.apply(doc.as_raw())?;
                *doc = BatchDoc::Owned(projected);
            }
        }
        self.last_used = Instant::now();
        Ok((out, exhausted))
    }
}

/// Continues a filtered `_id`-order walk: up to `want` matching documents into `out`; whether
/// the walk is exhausted.
fn next_scanned(scan: &mut ScanState, want: u64, out: &mut Vec<BatchDoc>) -> CommandResult<bool> {
    let ScanState {
        snapshot,
        coll,
        range,
        reverse,
        after,
        filter,
        skip,
        tail: _,
    } = scan;
    let mut bytes = 0usize;
    let mut finished = true;
    let mut last: Option<DocKey> = None;
    let mut failed: Option<CommandError> = None;
    let mut visited = 0u64;
    let mut visit = |key: &DocKey, doc: &StoredDoc| {
        visited += 1;
        if visited.is_multiple_of(256)
            && let Err(e) = crate::access::check_deadline()
        {
            failed = Some(e);
            return ControlFlow::Break(());
        }
        match filter.try_matches(doc) {
            Ok(true) => {}
            Ok(false) => return ControlFlow::Continue(()),
            Err(e) => {
                failed = Some(e.into());
                return ControlFlow::Break(());
            }
        }
        if *skip > 0 {
            *skip -= 1;
            return ControlFlow::Continue(());
        }
        if !out.is_empty() && bytes + doc.as_bytes().len() > MAX_BATCH_BYTES {
            finished = false;
            return ControlFlow::Break(());
        }
        bytes += doc.as_bytes().len();
        out.push(BatchDoc::Stored(doc.clone()));
        last = Some(key.clone());
        if out.len() as u64 >= want {
            finished = false;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    };
    match range {
        Some(r) => snapshot.scan_range(coll, r, after.as_ref(), *reverse, &mut visit)?,
        None => snapshot.scan(coll, after.as_ref(), &mut visit)?,
    }
    if let Some(e) = failed {
        return Err(e);
    }
    if last.is_some() {
        *after = last;
    }
    Ok(finished)
}

/// Continues a walk along a secondary index: up to `want` matching documents into `out`;
/// whether the walk is exhausted.
fn next_indexed(
    scan: &mut IndexScanState,
    want: u64,
    out: &mut Vec<BatchDoc>,
) -> CommandResult<bool> {
    let mut examined = Examined::default();
    let mut bytes = 0usize;
    loop {
        if let Some(doc) = scan.pending.front() {
            let len = doc.as_bytes().len();
            if out.len() as u64 >= want || (!out.is_empty() && bytes + len > MAX_BATCH_BYTES) {
                return Ok(false);
            }
            bytes += len;
            out.extend(scan.pending.pop_front().map(BatchDoc::Stored));
            continue;
        }
        let Some((_, doc)) = scan
            .walk
            .next_doc(&scan.snapshot, &scan.coll, &mut examined)?
        else {
            return Ok(true);
        };
        if !scan.filter.try_matches(&doc)? {
            continue;
        }
        if scan.skip > 0 {
            scan.skip -= 1;
            continue;
        }
        scan.pending.push_back(doc);
    }
}

/// Takes up to `want` computed documents into `out`; whether none are left.
fn next_buffered(docs: &mut VecDeque<BatchDoc>, want: u64, out: &mut Vec<BatchDoc>) -> bool {
    let mut bytes = 0usize;
    while let Some(doc) = docs.front() {
        let len = doc.as_raw().as_bytes().len();
        if out.len() as u64 >= want || (!out.is_empty() && bytes + len > MAX_BATCH_BYTES) {
            break;
        }
        bytes += len;
        out.extend(docs.pop_front());
    }
    docs.is_empty()
}

/// Open cursors by id. A cursor is taken out while a `getMore` works on it, so concurrent
/// `getMore`s on one cursor cannot interleave.
pub struct CursorManager {
    cursors: Mutex<HashMap<i64, Cursor>>,
    max_cursors: usize,
    ids: RandomState,
    counter: std::sync::atomic::AtomicU64,
}

impl CursorManager {
    pub fn new(max_cursors: usize) -> Self {
        CursorManager {
            cursors: Mutex::new(HashMap::new()),
            max_cursors,
            ids: RandomState::new(),
            counter: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Cursor>> {
        self.cursors.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a cursor and returns its id: positive, non-zero and hard to guess, as mongod's.
    pub fn insert(&self, cursor: Cursor) -> CommandResult<i64> {
        let mut cursors = self.lock();
        if cursors.len() >= self.max_cursors {
            return Err(CommandError::new(
                code::ILLEGAL_OPERATION,
                format!(
                    "too many open cursors ({}); close cursors or raise --max-cursors",
                    self.max_cursors
                ),
            ));
        }
        loop {
            let n = self
                .counter
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id = (self.ids.hash_one(n) >> 1) as i64;
            if id != 0 && !cursors.contains_key(&id) {
                cursors.insert(id, cursor);
                return Ok(id);
            }
        }
    }

    pub fn take(&self, id: i64) -> Option<Cursor> {
        self.lock().remove(&id)
    }

    pub fn put_back(&self, id: i64, cursor: Cursor) {
        self.lock().insert(id, cursor);
    }

    pub fn kill(&self, id: i64) -> bool {
        self.lock().remove(&id).is_some()
    }

    pub fn contains(&self, id: i64) -> bool {
        self.lock().contains_key(&id)
    }

    pub fn open_count(&self) -> usize {
        self.lock().len()
    }

    fn reap(&self, timeout: Duration) -> usize {
        let now = Instant::now();
        let mut cursors = self.lock();
        let before = cursors.len();
        cursors.retain(|_, c| now.duration_since(c.last_used) < timeout);
        before - cursors.len()
    }
}

/// Kills cursors idle longer than the configured timeout (10 minutes by default, as mongod's
/// `cursorTimeoutMillis`), releasing the snapshots they pin.
pub async fn reap_idle(shared: Arc<Shared>) {
    let timeout = shared.config.cursor_timeout;
    let period = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        tokio::time::sleep(period).await;
        let reaped = shared.cursors.reap(timeout);
        if reaped > 0 {
            info!(
                reaped,
                timeout_secs = timeout.as_secs(),
                "killed idle cursors"
            );
        }
    }
}
