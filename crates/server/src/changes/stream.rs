//! A cursor over the log's durable history: a reader, what it shows (change events for a
//! stream's scope and options, through the stages after `$changeStream`; or oplog entries
//! through a `find` filter), and what is shaped but not yet returned.
//!
//! Invariants:
//! - Only durable commits are read (`HistoryReader` stops at the durable end, and the shared
//!   tail takes only records whose fdatasync returned), so a stream never shows a write that a
//!   crash could take back.
//! - `after` only moves forward, to the newest record whose events are all in `pending` or
//!   returned; the post-batch resume token is a high-water mark there once `pending` is empty,
//!   else the last event returned: resuming from either shows every later event exactly once.
//! - Memory is bounded per stream by one read batch ([`READ_RECORDS`], [`READ_BYTES`]) and
//!   its events, plus the engine's one shared tail (bounded there: `engine/tail.rs`); a
//!   stream that falls behind the tail reads from disk with its own reader and holds nothing
//!   back: not the writer, not the checkpointer, not the other streams (the log's retention
//!   decides what history exists).
//! - A stream at the tail reads the same records, in the same order, as its own reader would:
//!   the tail serves only positions it holds every durable record after, and its records are
//!   those the log holds (`engine/tail.rs`).
//! - The events shaped once and shared through the tail depend only on the record and the
//!   stream's [`ShapeKey`] (streams with expanded events, which show each stream's own view of
//!   collection UUIDs, shape their own).
//! - Streams without stages or expanded events that stand at the same place share batches
//!   (`board.rs`): a batch taken from the board is exactly what the stream would have read
//!   and shaped itself from there, and moves its `after` to the batch's end.
//! - Catching up, the log is read off the async threads (`spawn_blocking`); at the tail inline
//!   (page-cache reads of a few records). No lock is held across an await: a cursor is taken
//!   out of the cursor table while a `getMore` runs.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mangrove_query::Pipeline;
use mangrove_storage::txlog::{LogOp, LogRecord};
use mangrove_storage::{Engine, HistoryReader, StoredDoc, TailRecord, Timestamp, uuid_of};

use mangrove_query::{Filter, Projection};

use super::board::{BatchBoard, ShapeKey, SharedBatch, write_elements};
use super::event::{Event, MAX_EVENT_BYTES, kept_token, record_events, split_event, too_large};
use super::oplog::record_entries;
use super::spec::{Scope, Start, StreamSpec};
use super::token::{ResumeToken, TokenKind};
use crate::batch::{BatchDoc, MAX_BATCH_BYTES};
use crate::error::{CommandError, CommandResult, code};

/// Records per read of the log, and about how many bytes.
const READ_RECORDS: usize = 256;
const READ_BYTES: usize = 4 * 1024 * 1024;
/// Longest a batch keeps reading history whose events the stream filters out, when it has
/// nothing to return yet: long enough to skip far, short enough to answer (an empty batch
/// with a newer resume token is progress too).
const MAX_SCAN: Duration = Duration::from_millis(500);

/// An event ready to return (after the stream's stages).
struct Ready {
    token: ResumeToken,
    doc: StoredDoc,
}

/// One record's events for one [`ShapeKey`], as the shared tail remembers them.
struct Shaped {
    key: ShapeKey,
    events: Vec<Event>,
}

/// What an event costs to remember besides its document: its token and bookkeeping.
const EVENT_OVERHEAD: usize = 64;

/// What a history cursor shows.
pub enum Shape {
    /// A change stream's events, through the stages after `$changeStream`.
    Events {
        spec: StreamSpec,
        stages: Option<Pipeline>,
        /// `$changeStreamSplitLargeEvent`: events over 16 MiB come in fragments.
        split: bool,
    },
    /// `local.oplog.rs` entries that match a `find` filter; a tailable cursor waits at the end,
    /// any other ends there.
    Oplog {
        filter: Filter,
        projection: Option<Projection>,
        tailable: bool,
        await_data: bool,
    },
}

pub struct HistoryCursor {
    shape: Shape,
    /// Collection UUIDs: the catalog's when the cursor opened, then as the history read since
    /// creates collections (so an event shows the UUID its collection had then).
    uuids: HashMap<String, bson::Uuid>,
    /// This cursor's own reader, for history behind the shared tail: `None` until needed
    /// (or while a read runs on the blocking pool, or while the shared tail serves it).
    reader: Option<HistoryReader>,
    /// Every record at or before this has its events in `ready` or returned.
    after: Timestamp,
    /// Resuming inside a record: its events up to this token's index were seen already, and
    /// the record must exist (else the token does not name an event of this history).
    resume_inside: Option<ResumeToken>,
    ready: VecDeque<Ready>,
    last_returned: Option<ResumeToken>,
    /// The last read reached the durable end: the next one reads just-written bytes.
    tailing: bool,
    /// When the last non-empty batch was answered (see `gather`).
    last_answer: Option<Instant>,
    /// Resuming from a fragment of a split event: the fragments up to it were returned.
    resume_fragment: Option<ResumeToken>,
    /// An invalidate was queued (or filtered out by the stages): nothing after it is read, and
    /// the stream ends once `ready` is returned.
    invalidated: bool,
    /// A plain (not tailable) oplog read reached the durable end.
    caught_up: bool,
    /// Counts a change stream as open while it lives (`mangrove_change_streams_open`).
    watching: Option<crate::metrics::Watching>,
    /// The clock and commit rate cursors gather on, and where change streams share batches
    /// (`board.rs`).
    board: Arc<BatchBoard>,
    /// What this change stream's events depend on besides the record (computed once; none
    /// for oplog cursors and streams showing expanded events).
    key: Option<ShapeKey>,
}

/// One batch for the client: its own documents, or a batch shared with other streams.
pub struct Batch {
    pub docs: Vec<BatchDoc>,
    pub shared: Option<Arc<SharedBatch>>,
    /// Another stream read and encoded it (it came from the board).
    pub taken: bool,
    pub post_batch_token: ResumeToken,
    pub ended: bool,
}

impl Batch {
    /// How many documents (events) it returns.
    pub fn count(&self) -> usize {
        self.shared.as_ref().map_or(self.docs.len(), |b| b.count)
    }

    /// The documents as array elements (`"0": {...}, "1": {...}`) and how many bytes they are.
    pub fn write_elements(&self, out: &mut Vec<u8>) {
        match &self.shared {
            Some(shared) => out.extend_from_slice(&shared.elements),
            None => write_elements(out, &self.docs),
        }
    }

    /// Its documents, each on its own (a shared batch's elements parsed back).
    pub fn documents(&self) -> Vec<BatchDoc> {
        let Some(shared) = &self.shared else {
            return self
                .docs
                .iter()
                .map(|d| BatchDoc::Owned(d.as_raw().to_owned()))
                .collect();
        };
        let mut array = Vec::with_capacity(shared.elements.len() + 5);
        array.extend_from_slice(&((shared.elements.len() + 5) as i32).to_le_bytes());
        array.extend_from_slice(&shared.elements);
        array.push(0);
        let Ok(array) = bson::RawDocumentBuf::from_bytes(array) else {
            return Vec::new();
        };
        array
            .iter()
            .filter_map(|e| match e {
                Ok((_, bson::raw::RawBsonRef::Document(d))) => Some(BatchDoc::Owned(d.to_owned())),
                _ => None,
            })
            .collect()
    }

    /// About how many bytes its elements take.
    pub fn elements_len(&self) -> usize {
        match &self.shared {
            Some(shared) => shared.elements.len(),
            None => {
                let docs: usize = self.docs.iter().map(|d| d.as_raw().as_bytes().len()).sum();
                docs + 16 * self.docs.len()
            }
        }
    }
}

impl HistoryCursor {
    /// A cursor over oplog entries of commits after `after`.
    pub async fn oplog(
        engine: &Engine,
        board: &Arc<BatchBoard>,
        after: Timestamp,
        shape: Shape,
    ) -> CommandResult<HistoryCursor> {
        debug_assert!(matches!(shape, Shape::Oplog { .. }));
        let reader = open_history(engine, after).await?;
        let uuids = catalog_uuids(engine, None);
        Ok(HistoryCursor::new(
            shape,
            uuids,
            reader,
            after,
            board.clone(),
        ))
    }

    /// A cursor that has read nothing yet.
    fn new(
        shape: Shape,
        uuids: HashMap<String, bson::Uuid>,
        reader: HistoryReader,
        after: Timestamp,
        board: Arc<BatchBoard>,
    ) -> HistoryCursor {
        let key = match &shape {
            Shape::Events { spec, .. } => ShapeKey::of(spec),
            Shape::Oplog { .. } => None,
        };
        HistoryCursor {
            shape,
            uuids,
            reader: Some(reader),
            after,
            resume_inside: None,
            ready: VecDeque::new(),
            last_returned: None,
            resume_fragment: None,
            last_answer: None,
            tailing: false,
            invalidated: false,
            caught_up: false,
            watching: None,
            board,
            key,
        }
    }

    /// Counts this cursor as an open change stream until it is dropped.
    pub fn count_as_open(&mut self, watching: crate::metrics::Watching) {
        self.watching = Some(watching);
    }

    /// Whether this is a change stream (not an oplog cursor), counted by the metrics.
    pub fn is_counted(&self) -> bool {
        self.watching.is_some()
    }

    /// Opens a change stream where `spec` says; a start older than the retained history fails
    /// with ChangeStreamHistoryLost (286), a token whose event is not in history with
    /// ChangeStreamFatalError (280).
    pub async fn change_stream(
        engine: &Engine,
        board: Arc<BatchBoard>,
        spec: StreamSpec,
        stages: Option<Pipeline>,
        split: bool,
    ) -> CommandResult<HistoryCursor> {
        let (after, resume_inside) = match spec.start {
            Start::Now => (engine.last_commit(), None),
            Start::Resume(t) | Start::After(t) => match t.kind {
                TokenKind::Event => (Timestamp(t.ts.0.saturating_sub(1)), Some(t)),
                TokenKind::HighWaterMark | TokenKind::Invalidate => (t.ts, None),
            },
            Start::AtTime(ts) => (Timestamp(ts.0.saturating_sub(1)), None),
        };
        let reader = open_history(engine, after).await?;
        let uuids = catalog_uuids(engine, Some(&spec.scope));
        let shape = Shape::Events {
            spec,
            stages,
            split,
        };
        let mut stream = HistoryCursor::new(shape, uuids, reader, after, board);
        stream.resume_inside = resume_inside;
        if stream.resume_inside.is_some() {
            // The token's record is read now, so that a token naming no event fails the
            // aggregate itself, as in mongod.
            let records = stream.read(engine, None).await?;
            stream.absorb(engine, records, true)?;
            if stream.resume_inside.is_some() {
                return Err(token_not_found());
            }
        }
        Ok(stream)
    }

    /// Whether a `getMore` waits for commits when there is nothing to return (a change
    /// stream, or a tailable `awaitData` oplog cursor).
    pub fn awaits(&self) -> bool {
        match self.shape {
            Shape::Events { .. } => true,
            Shape::Oplog {
                tailable,
                await_data,
                ..
            } => tailable && await_data,
        }
    }

    /// Up to `max_docs` events (and about [`MAX_BATCH_BYTES`]). With nothing to return, waits
    /// until `wait_until` for new commits (`None`: answers at once).
    pub async fn next_batch(
        &mut self,
        engine: &Engine,
        max_docs: u64,
        wait_until: Option<Instant>,
    ) -> CommandResult<Batch> {
        let started = Instant::now();
        let mut docs = Vec::new();
        let mut bytes = 0usize;
        let mut gathered = false;
        // While the batch is every event of the records after `shared_from` (none pending from
        // an earlier batch, none cut), it may come from the board, or go on it.
        let mut shared_from = self.can_share().then_some(self.after);
        loop {
            self.take_ready(max_docs, &mut docs, &mut bytes);
            if self.invalidated || docs.len() as u64 >= max_docs || !self.ready.is_empty() {
                break;
            }
            let mut read_nothing = false;
            if engine.last_durable() > self.after {
                if !gathered && docs.is_empty() {
                    gathered = true;
                    self.gather(engine, wait_until).await;
                }
                if shared_from.is_some() && docs.is_empty() {
                    shared_from = Some(self.after);
                    let before = self.after;
                    if let Some(batch) = self.take_shared(max_docs) {
                        return Ok(batch);
                    }
                    if self.after != before {
                        // An empty shared batch: this stream moved past records it would
                        // have shown nothing of.
                        continue;
                    }
                }
                let stop_at = shared_from.and_then(|_| self.meeting_point());
                let records = self.read(engine, stop_at).await?;
                read_nothing = records.is_empty();
                if !read_nothing {
                    // A stream limited by a batch size may not fill a whole batch to share,
                    // so it leaves its shaped events for the streams in the same position.
                    let remember = shared_from.is_none() || max_docs != u64::MAX;
                    self.absorb(engine, records, remember)?;
                    if docs.is_empty() && started.elapsed() > MAX_SCAN {
                        break;
                    }
                    continue;
                }
            }
            if self.caught_up_now() || !docs.is_empty() {
                break;
            }
            if !self
                .wait_for_commits(engine, wait_until, read_nothing)
                .await
            {
                break;
            }
        }
        Ok(self.answer(docs, shared_from))
    }

    /// A plain (not tailable) oplog read ends when it has caught up with the durable end.
    fn caught_up_now(&mut self) -> bool {
        if let Shape::Oplog {
            tailable: false, ..
        } = self.shape
        {
            self.caught_up = true;
        }
        self.caught_up
    }

    /// Waits for a commit after `after` until `wait_until`; false once that time has passed.
    async fn wait_for_commits(
        &self,
        engine: &Engine,
        wait_until: Option<Instant>,
        read_nothing: bool,
    ) -> bool {
        let now = Instant::now();
        match wait_until {
            // The durable end moved but its record was not readable yet (it is written before
            // it is durable, so this is a race, not a state): look again shortly.
            Some(until) if until > now && read_nothing => {
                tokio::time::sleep(Duration::from_millis(1).min(until - now)).await;
                true
            }
            Some(until) if until > now => {
                engine.wait_durable_after(self.after, until - now).await;
                true
            }
            _ => false,
        }
    }

    /// The batch of `docs` (read by this stream), shared on the board when they are every
    /// event of the records after `shared_from`.
    fn answer(&mut self, docs: Vec<BatchDoc>, shared_from: Option<Timestamp>) -> Batch {
        if !docs.is_empty() {
            self.last_answer = Some(Instant::now());
        }
        // Only batches read at the tail are shared: a stream catching up is alone where it
        // is, and its batches would push the tail's out of the board.
        let whole = self.ready.is_empty() && !self.invalidated && self.tailing;
        let shared = match (shared_from, &self.key) {
            (Some(from), Some(key)) if whole && self.after > from => {
                let mut elements = Vec::new();
                write_elements(&mut elements, &docs);
                Some(self.board.publish(SharedBatch {
                    key: key.clone(),
                    after: from,
                    end: self.after,
                    count: docs.len(),
                    last_token: self.last_returned,
                    elements,
                }))
            }
            _ => None,
        };
        Batch {
            docs: if shared.is_some() { Vec::new() } else { docs },
            shared,
            taken: false,
            post_batch_token: self.post_batch_token(),
            ended: self.ended(),
        }
    }

    /// Whether this stream's batches may be shared: a change stream with a [`ShapeKey`] (no
    /// expanded events) that runs no stages, splits no events, and has nothing pending or
    /// resumed inside a record.
    fn can_share(&self) -> bool {
        let plain = matches!(
            self.shape,
            Shape::Events {
                stages: None,
                split: false,
                ..
            }
        );
        plain
            && self.key.is_some()
            && self.ready.is_empty()
            && self.resume_inside.is_none()
            && self.resume_fragment.is_none()
            && !self.invalidated
    }

    /// A batch another stream shared from where this one stands, taken as this stream's own:
    /// its position moves to the batch's end. An empty one only moves the position.
    fn take_shared(&mut self, max_docs: u64) -> Option<Batch> {
        let shared = self.board.find(self.key.as_ref()?, self.after)?;
        if shared.count as u64 > max_docs {
            return None;
        }
        debug_assert!(self.ready.is_empty() && shared.end > self.after);
        self.after = shared.end;
        self.reader = None;
        self.tailing = true;
        if shared.count == 0 {
            return None;
        }
        self.last_returned = shared.last_token;
        self.last_answer = Some(Instant::now());
        Some(Batch {
            docs: Vec::new(),
            shared: Some(shared),
            taken: true,
            post_batch_token: self.post_batch_token(),
            ended: false,
        })
    }

    /// Where the other streams with this one's key stand, if ahead of it.
    fn meeting_point(&self) -> Option<Timestamp> {
        self.board.meeting_point(self.key.as_ref()?, self.after)
    }

    /// A stream at the log's tail (an awaiting `getMore`) on a busy log reads no sooner than
    /// [`BatchBoard::gather_time`] after its last answer, so that one `getMore` carries the commits of that
    /// time instead of each commit costing every stream a round trip: the per-stream cost is
    /// per batch, not per commit. Catching up (not at the tail), on a first batch, or on a log
    /// slower than 3,000 commits/s (three times the latency goal's 1,000 commits/s), it
    /// reads at once.
    async fn gather(&self, engine: &Engine, wait_until: Option<Instant>) {
        let (Some(until), Some(last), true) = (wait_until, self.last_answer, self.tailing) else {
            return;
        };
        // On the board's clock and rate, so that streams gathering alike read the same records
        // and share one batch: at least half the period after the last answer.
        let period = self.board.gather_time(engine.commits_logged());
        let at = self.board.tick(last + period / 2, period).min(until);
        if at > Instant::now() {
            tokio::time::sleep_until(at.into()).await;
        }
    }

    /// The stream has nothing more to give: its invalidate was returned, or a plain oplog read
    /// reached the end.
    fn ended(&self) -> bool {
        self.ready.is_empty() && (self.invalidated || self.caught_up)
    }

    fn take_ready(&mut self, max_docs: u64, docs: &mut Vec<BatchDoc>, bytes: &mut usize) {
        while (docs.len() as u64) < max_docs {
            let Some(next) = self.ready.front() else {
                break;
            };
            let len = next.doc.as_bytes().len();
            if !docs.is_empty() && *bytes + len > MAX_BATCH_BYTES {
                break;
            }
            let Some(next) = self.ready.pop_front() else {
                break;
            };
            *bytes += len;
            self.last_returned = Some(next.token);
            docs.push(BatchDoc::Stored(next.doc));
        }
    }

    /// Where a new stream resumes to see exactly what this one has not returned.
    pub fn post_batch_token(&self) -> ResumeToken {
        match (
            self.ready.is_empty(),
            self.last_returned,
            self.resume_inside,
        ) {
            (true, _, _) => ResumeToken::high_water_mark(self.after),
            (false, Some(t), _) => t,
            (false, None, Some(t)) => t,
            (false, None, None) => ResumeToken::high_water_mark(Timestamp(self.after.0 - 1)),
        }
    }

    /// The next records of durable history: from the shared tail when this cursor's position
    /// is in it (handed over by the log writer, decoded once for every stream there), else
    /// with its own reader. A cursor served by the tail drops its reader (its file and the
    /// segment it holds on to); it opens another if it falls behind the tail.
    /// From the shared tail it reads no further than `stop_at` (where streams that share
    /// batches meet: `board.rs`).
    async fn read(
        &mut self,
        engine: &Engine,
        stop_at: Option<Timestamp>,
    ) -> CommandResult<Vec<Arc<TailRecord>>> {
        if let Some(mut records) = engine.read_tail(self.after, READ_RECORDS) {
            self.reader = None;
            self.tailing = true;
            if let Some(stop_at) = stop_at {
                records.truncate(records.partition_point(|r| r.record.ts <= stop_at));
            }
            return Ok(records);
        }
        let records = self.read_own(engine).await?;
        Ok(records
            .into_iter()
            .map(|r| Arc::new(TailRecord::detached(r)))
            .collect())
    }

    /// The next records with this cursor's own reader, opened at `after` if it has none there
    /// (it was dropped while the shared tail served this cursor). A cursor at the log's tail
    /// reads what was just written, from the page cache, on this thread (a hand-off to the
    /// blocking pool would cost more than the read); one catching up reads off the async
    /// threads.
    async fn read_own(&mut self, engine: &Engine) -> CommandResult<Vec<LogRecord>> {
        if self
            .reader
            .as_ref()
            .is_none_or(|r| r.position() != self.after)
        {
            self.reader = None;
            self.reader = Some(open_history(engine, self.after).await?);
            self.tailing = false;
        }
        if self.tailing
            && let Some(reader) = self.reader.as_mut()
        {
            let records = reader.next_batch(READ_RECORDS, READ_BYTES)?;
            self.tailing = records.len() < READ_RECORDS;
            return Ok(records);
        }
        let Some(mut reader) = self.reader.take() else {
            return Err(CommandError::new(
                code::INTERNAL_ERROR,
                "a change stream read while another was running",
            ));
        };
        let (reader, records) = tokio::task::spawn_blocking(move || {
            let records = reader.next_batch(READ_RECORDS, READ_BYTES);
            (reader, records)
        })
        .await
        .map_err(|e| CommandError::new(code::INTERNAL_ERROR, format!("history read: {e}")))?;
        self.reader = Some(reader);
        let records = records?;
        self.tailing = records.len() < READ_RECORDS;
        Ok(records)
    }

    /// Shapes `records` into events, runs them through the stream's stages, and queues them.
    /// `remember`: whether events shaped here are remembered on the tail's records for other
    /// streams (not by a stream that shares its batches: the others take those instead).
    fn absorb(
        &mut self,
        engine: &Engine,
        records: Vec<Arc<TailRecord>>,
        remember: bool,
    ) -> CommandResult<()> {
        for tail in records {
            let record = &tail.record;
            debug_assert!(record.ts > self.after, "history goes forward");
            self.learn_uuids(record);
            let mut events = self.events_of(engine, &tail, remember)?;
            if let Some(t) = self.resume_inside.take() {
                if record.ts != t.ts {
                    return Err(token_not_found());
                }
                // Resuming from a fragment: the rest of that event's fragments come next.
                if t.fragment > 0 {
                    self.resume_fragment = Some(t);
                    events.retain(|e| e.token.index >= t.index);
                } else {
                    events.retain(|e| e.token.index > t.index);
                }
            }
            self.after = record.ts;
            for event in events {
                self.queue(event)?;
                if self.invalidated {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The events (or oplog entries) a record shows this cursor. Change events of a record in
    /// the shared tail are shaped once per [`ShapeKey`] and remembered there for the other
    /// streams (an error, such as a required image missing, is not remembered).
    fn events_of(
        &self,
        engine: &Engine,
        tail: &TailRecord,
        remember: bool,
    ) -> CommandResult<Vec<Event>> {
        let spec = match &self.shape {
            Shape::Oplog { .. } => return Ok(record_entries(&tail.record, &self.uuids)),
            Shape::Events { spec, .. } => spec,
        };
        let Some(key) = &self.key else {
            return record_events(&tail.record, spec, &self.uuids);
        };
        if let Some(shaped) = tail.memo::<Shaped>(|s| s.key == *key) {
            return Ok(shaped.events.clone());
        }
        let events = record_events(&tail.record, spec, &self.uuids)?;
        if remember && tail.shared() {
            let bytes = events
                .iter()
                .map(|e| e.doc.as_bytes().len() + EVENT_OVERHEAD)
                .sum();
            let events = events.clone();
            let key = key.clone();
            tail.remember(engine, Shaped { key, events }, bytes);
        }
        Ok(events)
    }

    /// The UUIDs of collections a record creates or changes, for its events and later ones.
    fn learn_uuids(&mut self, record: &LogRecord) {
        for op in &record.ops {
            if let LogOp::CreateCollection { ns, options }
            | LogOp::SetCollectionOptions { ns, options } = op
                && let Some(uuid) = uuid_of(options)
            {
                self.uuids.insert(ns.clone(), uuid);
            }
        }
    }

    fn queue(&mut self, event: Event) -> CommandResult<()> {
        // Even if the stages filter it out, nothing after an invalidate is shown.
        self.invalidated |= event.invalidates();
        let stages = match &self.shape {
            Shape::Events { stages, .. } => stages,
            Shape::Oplog {
                filter, projection, ..
            } => {
                if filter.try_matches(&event.doc)? {
                    let doc = match projection {
                        Some(p) => StoredDoc::new(p.apply(&event.doc)?),
                        None => event.doc,
                    };
                    self.ready.push_back(Ready {
                        token: event.token,
                        doc,
                    });
                }
                return Ok(());
            }
        };
        let Some(stages) = stages else {
            return self.ready_event(event.token, event.doc);
        };
        // `run` expects its input to have passed the pipeline's leading `$match`.
        if let Some(leading) = stages.leading_match()
            && !leading.try_matches(&event.doc)?
        {
            return Ok(());
        }
        let outputs = stages.run(vec![(*event.doc).clone()])?;
        for out in outputs {
            if !kept_token(&out, &event) {
                let mut e = CommandError::new(
                    code::CHANGE_STREAM_FATAL_ERROR,
                    "Encountered an event whose _id field, which contains the resume token, was modified by the pipeline. Modifying the _id field of an event makes it impossible to resume the stream from that point. Only transformations that retain the unmodified _id field are allowed.",
                );
                e.labels.push("NonResumableChangeStreamError");
                return Err(e);
            }
            self.ready_event(event.token, StoredDoc::new(out))?;
        }
        Ok(())
    }

    /// Queues a change event, split into fragments if it is too large for one document and the
    /// stream asked for that (`$changeStreamSplitLargeEvent`), else refused (10334).
    fn ready_event(&mut self, token: ResumeToken, doc: StoredDoc) -> CommandResult<()> {
        if doc.as_bytes().len() <= MAX_EVENT_BYTES {
            self.ready.push_back(Ready { token, doc });
            return Ok(());
        }
        let Shape::Events { split: true, .. } = self.shape else {
            return Err(too_large(format!(
                "a change event of {} bytes is over the {MAX_EVENT_BYTES}-byte limit: add $changeStreamSplitLargeEvent as the last stage to receive it in fragments, or $project large fields out",
                doc.as_bytes().len()
            )));
        };
        let seen = self
            .resume_fragment
            .take()
            .filter(|t| t.ts == token.ts && t.index == token.index);
        for (fragment, part) in split_event(token, &doc)? {
            if seen.is_some_and(|t| fragment.fragment <= t.fragment) {
                continue;
            }
            self.ready.push_back(Ready {
                token: fragment,
                doc: StoredDoc::new(part),
            });
        }
        Ok(())
    }
}

/// A history reader from `after`, positioned off the async threads (finding the place may read
/// a segment's record headers).
async fn open_history(engine: &Engine, after: Timestamp) -> CommandResult<HistoryReader> {
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || engine.read_history(after))
        .await
        .map_err(|e| CommandError::new(code::INTERNAL_ERROR, format!("history open: {e}")))?
        .map_err(Into::into)
}

/// The UUIDs of the current catalog's collections in `scope` (all without one).
fn catalog_uuids(engine: &Engine, scope: Option<&Scope>) -> HashMap<String, bson::Uuid> {
    let snapshot = engine.snapshot();
    let mut uuids = HashMap::new();
    for db in snapshot.list_databases() {
        if scope.is_some_and(|s| !s.covers_db(&db)) {
            continue;
        }
        for coll in snapshot.list_collections(&db) {
            if scope.is_some_and(|s| !s.covers(&coll.ns())) {
                continue;
            }
            if let Some(uuid) = coll.uuid() {
                uuids.insert(coll.ns(), uuid);
            }
        }
    }
    uuids
}

fn token_not_found() -> CommandError {
    CommandError::new(
        code::CHANGE_STREAM_FATAL_ERROR,
        "cannot resume stream; the resume token was not found: its event is not in this server's history (was the token issued by another server, or the data directory replaced?)",
    )
}
