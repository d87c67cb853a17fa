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
use crate::access::{Access, Examined, IndexWalk};
use crate::error::{CommandError, CommandResult, code};
use crate::pipeline_input::PipelineSource;

pub use crate::batch::{BatchDoc, MAX_BATCH_BYTES};

pub struct ScanState {
    pub snapshot: Snapshot,
    pub coll: CollectionInfo,
    /// A range of `_id` order to walk, or the whole collection in `$natural` order.
    pub range: Option<KeyInterval>,
    /// Walk backward (a descending `_id` sort, or `$natural: -1`).
    pub reverse: bool,
    /// The last key (or natural position) returned: the walk resumes past it.
    pub after: Option<DocKey>,
    pub filter: Filter,
    pub skip: u64,
    /// `returnKey` / `showRecordId`, applied where the storage key is still known.
    pub shape: Option<Shape>,
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
    /// `returnKey` / `showRecordId`, applied where the storage key is still known.
    pub shape: Option<Shape>,
    /// Fetched, matching and shaped, not yet returned.
    pub pending: VecDeque<BatchDoc>,
}

/// How `find`'s `returnKey` and `showRecordId` reshape each result. Both need the storage key
/// or the access path, which only the walk knows, so results are shaped as they are produced
/// (never later in [`Cursor::next_batch`]). The projection moves in here when a shape is set:
/// `$recordId` is appended after it, and `returnKey` replaces the document, projection ignored.
#[derive(Clone)]
pub struct Shape {
    /// `returnKey`: the access path whose keys stand in for the documents.
    pub return_key: Option<Access>,
    /// `showRecordId`: `Some(capped)` (a capped collection's keys are insertion numbers).
    pub record_id: Option<bool>,
    pub projection: Option<Projection>,
}

impl Shape {
    /// The result for the document stored under `key`.
    pub fn apply(&self, key: &DocKey, doc: &StoredDoc) -> CommandResult<BatchDoc> {
        let mut out = match &self.return_key {
            Some(access) => {
                let keyed = crate::access::returned_key(access, doc);
                bson::RawDocumentBuf::try_from(&keyed)
                    .map_err(|e| CommandError::new(code::INTERNAL_ERROR, e.to_string()))?
            }
            None => match &self.projection {
                Some(p) => p.apply(doc)?,
                None if self.record_id.is_none() => return Ok(BatchDoc::Stored(doc.clone())),
                None => (**doc).clone(),
            },
        };
        if let Some(capped) = self.record_id {
            out.append(
                bson::cstr!("$recordId"),
                crate::access::record_id(capped, key),
            );
        }
        Ok(BatchDoc::Owned(out))
    }
}

/// A result as it leaves a walk: shaped if asked, else the stored document itself.
fn shaped(shape: Option<&Shape>, key: &DocKey, doc: &StoredDoc) -> CommandResult<BatchDoc> {
    match shape {
        Some(s) => s.apply(key, doc),
        None => Ok(BatchDoc::Stored(doc.clone())),
    }
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
    /// What is left of the opening command's `maxTimeMS`: each `getMore` of a cursor that is
    /// not tailable runs within it and spends it, as mongod's leftover time.
    pub time_left: Option<std::time::Duration>,
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
/// the walk is exhausted. The documents it looked at count as examined (the profiler's).
fn next_scanned(scan: &mut ScanState, want: u64, out: &mut Vec<BatchDoc>) -> CommandResult<bool> {
    let mut visited = 0u64;
    let result = walk_scanned(scan, want, out, &mut visited);
    crate::op_stats::note_examined(0, visited);
    result
}

fn walk_scanned(
    scan: &mut ScanState,
    want: u64,
    out: &mut Vec<BatchDoc>,
    visited: &mut u64,
) -> CommandResult<bool> {
    let ScanState {
        snapshot,
        coll,
        range,
        reverse,
        after,
        filter,
        skip,
        shape,
        tail: _,
    } = scan;
    let mut bytes = 0usize;
    let mut finished = true;
    let mut last: Option<DocKey> = None;
    let mut failed: Option<CommandError> = None;
    let mut visit = |position: &DocKey, key: &DocKey, doc: &StoredDoc| {
        *visited += 1;
        match admit(*visited, filter, skip, doc) {
            Ok(true) => {}
            Ok(false) => return ControlFlow::Continue(()),
            Err(e) => {
                failed = Some(e);
                return ControlFlow::Break(());
            }
        }
        if !out.is_empty() && bytes + doc.as_bytes().len() > MAX_BATCH_BYTES {
            finished = false;
            return ControlFlow::Break(());
        }
        bytes += doc.as_bytes().len();
        match shaped(shape.as_ref(), key, doc) {
            Ok(d) => out.push(d),
            Err(e) => {
                failed = Some(e);
                return ControlFlow::Break(());
            }
        }
        last = Some(position.clone());
        if out.len() as u64 >= want {
            finished = false;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    };
    match range {
        Some(r) => snapshot.scan_range(
            coll,
            r,
            after.as_ref(),
            *reverse,
            &mut |key: &DocKey, doc: &StoredDoc| visit(key, key, doc),
        )?,
        None => crate::access::walk_natural(snapshot, coll, after.as_ref(), *reverse, &mut visit)?,
    }
    if let Some(e) = failed {
        return Err(e);
    }
    if last.is_some() {
        *after = last;
    }
    Ok(finished)
}

/// Whether the `visited`th document of a scan is one to return: it matches and is past the
/// `skip`; every 256 documents the read's deadline is checked too.
fn admit(visited: u64, filter: &Filter, skip: &mut u64, doc: &StoredDoc) -> CommandResult<bool> {
    if visited.is_multiple_of(256) {
        crate::access::check_deadline()?;
    }
    if !filter.try_matches(doc)? {
        return Ok(false);
    }
    if *skip > 0 {
        *skip -= 1;
        return Ok(false);
    }
    Ok(true)
}

/// Continues a walk along a secondary index: up to `want` matching documents into `out`;
/// whether the walk is exhausted.
fn next_indexed(
    scan: &mut IndexScanState,
    want: u64,
    out: &mut Vec<BatchDoc>,
) -> CommandResult<bool> {
    let mut examined = Examined::default();
    let result = walk_indexed(scan, want, out, &mut examined);
    crate::op_stats::note_examined(examined.keys, examined.docs);
    result
}

fn walk_indexed(
    scan: &mut IndexScanState,
    want: u64,
    out: &mut Vec<BatchDoc>,
    examined: &mut Examined,
) -> CommandResult<bool> {
    let mut bytes = 0usize;
    loop {
        if let Some(doc) = scan.pending.front() {
            let len = doc.as_raw().as_bytes().len();
            if out.len() as u64 >= want || (!out.is_empty() && bytes + len > MAX_BATCH_BYTES) {
                return Ok(false);
            }
            bytes += len;
            out.extend(scan.pending.pop_front());
            continue;
        }
        let Some((key, doc)) = scan.walk.next_doc(&scan.snapshot, &scan.coll, examined)? else {
            return Ok(true);
        };
        if !scan.filter.try_matches(&doc)? {
            continue;
        }
        if scan.skip > 0 {
            scan.skip -= 1;
            continue;
        }
        scan.pending
            .push_back(shaped(scan.shape.as_ref(), &key, &doc)?);
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
/// `getMore`s on one cursor cannot interleave; while it is out, `killCursors` marks it
/// ([`Killed`]) and the `getMore` gives it up instead of putting it back (a waiting one wakes).
pub struct CursorManager {
    state: Mutex<Cursors>,
    max_cursors: usize,
    ids: RandomState,
    counter: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Cursors {
    idle: HashMap<i64, Cursor>,
    /// Cursors a `getMore` has taken out, since when, and their kill signal.
    out: HashMap<i64, (Instant, Arc<Killed>)>,
}

/// A taken-out cursor's kill signal.
#[derive(Default)]
pub struct Killed {
    flag: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Killed {
    pub fn is_killed(&self) -> bool {
        self.flag.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once the cursor is killed.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_killed() {
                return;
            }
            notified.await;
        }
    }

    fn kill(&self) {
        self.flag.store(true, std::sync::atomic::Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// Resolves once the taken-out cursor whose signal is `killed` is killed (never for `None`):
/// a waiting `getMore` selects on it.
pub async fn until_killed(killed: Option<&Killed>) {
    match killed {
        Some(k) => k.wait().await,
        None => std::future::pending().await,
    }
}

/// mongod's CursorKilled, for a `getMore` whose cursor `killCursors` killed meanwhile.
pub fn killed_error(id: i64) -> CommandError {
    CommandError::new(code::CURSOR_KILLED, format!("cursor id {id} was killed"))
}

impl CursorManager {
    pub fn new(max_cursors: usize) -> Self {
        CursorManager {
            state: Mutex::new(Cursors::default()),
            max_cursors,
            ids: RandomState::new(),
            counter: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cursors> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a cursor and returns its id: positive, non-zero and hard to guess, as mongod's.
    pub fn insert(&self, cursor: Cursor) -> CommandResult<i64> {
        let mut state = self.lock();
        if state.idle.len() + state.out.len() >= self.max_cursors {
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
            if id != 0 && !state.idle.contains_key(&id) && !state.out.contains_key(&id) {
                state.idle.insert(id, cursor);
                return Ok(id);
            }
        }
    }

    /// Takes the cursor out for a `getMore`; it is put back, given up, or killed meanwhile.
    pub fn take(&self, id: i64) -> Option<Cursor> {
        let mut state = self.lock();
        let cursor = state.idle.remove(&id)?;
        state.out.insert(id, (Instant::now(), Arc::default()));
        Some(cursor)
    }

    /// The kill signal of a taken-out cursor.
    pub fn kill_signal(&self, id: i64) -> Option<Arc<Killed>> {
        self.lock().out.get(&id).map(|(_, k)| k.clone())
    }

    /// Returns a taken-out cursor; one killed while it was out is dropped instead.
    pub fn put_back(&self, id: i64, cursor: Cursor) {
        let mut state = self.lock();
        match state.out.remove(&id) {
            Some((_, killed)) if killed.is_killed() => {}
            _ => {
                state.idle.insert(id, cursor);
            }
        }
    }

    /// A taken-out cursor its `getMore` ended (exhausted, or failed).
    pub fn give_up(&self, id: i64) {
        self.lock().out.remove(&id);
    }

    pub fn kill(&self, id: i64) -> bool {
        let mut state = self.lock();
        if state.idle.remove(&id).is_some() {
            return true;
        }
        match state.out.get(&id) {
            Some((_, killed)) if !killed.is_killed() => {
                killed.kill();
                true
            }
            _ => false,
        }
    }

    pub fn contains(&self, id: i64) -> bool {
        let state = self.lock();
        state.idle.contains_key(&id) || state.out.get(&id).is_some_and(|(_, k)| !k.is_killed())
    }

    pub fn open_count(&self) -> usize {
        let state = self.lock();
        state.idle.len() + state.out.len()
    }

    fn reap(&self, timeout: Duration) -> usize {
        let now = Instant::now();
        let mut state = self.lock();
        let before = state.idle.len();
        state
            .idle
            .retain(|_, c| now.duration_since(c.last_used) < timeout);
        // A taken-out cursor whose getMore failed without giving it up is forgotten too.
        state
            .out
            .retain(|_, (since, _)| now.duration_since(*since) < timeout);
        before - state.idle.len()
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
