//! Feeding an aggregation pipeline from a collection, and the cursor that keeps it running.
//!
//! Invariants:
//! - The input is read in chunks of at most [`CHUNK_BYTES`] (and [`CHUNK_DOCS`]), each read
//!   resuming after the last key of the one before; the engine's lock is held only while a
//!   chunk's matches are collected, never while pipeline stages run, so a heavy pipeline does
//!   not hold up commits.
//! - A pipeline never holds its whole input: memory is one chunk, the blocking stages' state
//!   (bounded per stage by the query crate) and the batch being answered.
//! - A [`PipelineSource`] cursor computes only the documents its batches return: its `Runner`
//!   and reader (with the snapshot the reader pinned) wait between `getMore`s, as a find
//!   cursor's scan does.

use std::ops::ControlFlow;

use bson::RawDocumentBuf;
use mangrove_query::{Filter, ForeignSource, KeyInterval, NoForeign, Runner, Step};
use mangrove_storage::{CollectionInfo, DocKey, ReadView, Snapshot, StoredDoc};

use crate::access::{Access, Examined, IndexWalk, check_deadline};
use crate::batch::{BatchDoc, MAX_BATCH_BYTES};
use crate::error::CommandResult;
use crate::foreign::{Foreign, ForeignViews};

/// Bytes of input documents read per chunk.
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Documents read per chunk.
pub const CHUNK_DOCS: usize = 1024;

/// Documents visited between deadline checks.
const DEADLINE_EVERY: u64 = 256;

/// Where the reader is along its access path.
enum Position {
    /// `_id` order: the interval being walked, or (`None`) the whole collection in `$natural`
    /// order, and the last key (or natural position) returned in it.
    Keys {
        intervals: Vec<Option<KeyInterval>>,
        at: usize,
        after: Option<DocKey>,
        reverse: bool,
    },
    Index(Box<IndexWalk>),
    Point(Option<DocKey>),
    /// A `$geoNear` walk (`geo_near.rs`), nearest first, resumed chunk by chunk.
    Near(Box<NearInput>),
}

/// A `$geoNear` input: the geo index, the walk's plan and where it is.
struct NearInput {
    index: std::sync::Arc<mangrove_storage::IndexInfo>,
    plan: std::sync::Arc<crate::geo_near::NearPlan>,
    state: crate::geo_near::NearState,
}

/// Reads the documents matching a filter along an access path, a chunk at a time.
pub struct InputReader {
    filter: Filter,
    position: Position,
    visited: u64,
}

impl InputReader {
    pub fn new(access: Access, filter: Filter) -> InputReader {
        let position = match access {
            Access::Near { index, plan } => Position::Near(Box::new(NearInput {
                state: crate::geo_near::NearState::new(&plan),
                index,
                plan,
            })),
            Access::Collection => Position::Keys {
                intervals: vec![None],
                at: 0,
                after: None,
                reverse: false,
            },
            Access::CollectionBackward => Position::Keys {
                intervals: vec![None],
                at: 0,
                after: None,
                reverse: true,
            },
            Access::IdPoint(key) => Position::Point(Some(key)),
            Access::IdRange {
                bounds, reverse, ..
            } => {
                let mut intervals: Vec<Option<KeyInterval>> =
                    bounds.intervals.iter().cloned().map(Some).collect();
                if reverse {
                    intervals.reverse();
                }
                Position::Keys {
                    intervals,
                    at: 0,
                    after: None,
                    reverse,
                }
            }
            Access::Index {
                index,
                bounds,
                reverse,
                ..
            } => Position::Index(Box::new(IndexWalk::new(index, &bounds, reverse))),
        };
        InputReader {
            filter,
            position,
            visited: 0,
        }
    }

    /// The next chunk of matching documents; empty once the input is exhausted.
    pub fn next_chunk(
        &mut self,
        view: &dyn ReadView,
        coll: &CollectionInfo,
    ) -> CommandResult<Vec<StoredDoc>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let visited_before = self.visited;
        let mut examined = Examined::default();
        while out.is_empty() && !self.exhausted() {
            match &mut self.position {
                Position::Keys { .. } => self.keys_chunk(view, coll, &mut out, &mut bytes)?,
                Position::Index(walk) => {
                    while bytes < CHUNK_BYTES && out.len() < CHUNK_DOCS {
                        let Some((_, doc)) = walk.next_doc(view, coll, &mut examined)? else {
                            self.position = Position::Point(None);
                            break;
                        };
                        if self.filter.try_matches(&doc)? {
                            bytes += doc.as_bytes().len();
                            out.push(doc);
                        }
                    }
                }
                Position::Near(near) => {
                    let NearInput { index, plan, state } = &mut **near;
                    let walk = crate::geo_near::NearWalk {
                        view,
                        coll,
                        index,
                        plan,
                        filter: &self.filter,
                        deadline: &check_deadline,
                    };
                    let mut counts = crate::geo_near::Counts::default();
                    let read = state.run(&walk, &mut counts, &mut |_, d| {
                        bytes += d.as_bytes().len();
                        out.push(d.clone());
                        if bytes >= CHUNK_BYTES || out.len() >= CHUNK_DOCS {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    });
                    examined.keys += counts.keys;
                    examined.docs += counts.docs;
                    read?;
                }
                Position::Point(key) => {
                    if let Some(key) = key.take()
                        && let Some(doc) = view.get(coll, &key)?
                    {
                        examined.keys += 1;
                        examined.docs += 1;
                        if self.filter.try_matches(&doc)? {
                            out.push(doc);
                        }
                    }
                }
            }
        }
        let scanned = self.visited.saturating_sub(visited_before);
        crate::op_stats::note_examined(examined.keys, examined.docs + scanned);
        Ok(out)
    }

    fn exhausted(&self) -> bool {
        match &self.position {
            Position::Keys { intervals, at, .. } => *at >= intervals.len(),
            Position::Index(_) => false,
            Position::Point(key) => key.is_none(),
            Position::Near(near) => near.state.exhausted(),
        }
    }

    /// Up to a chunk from the current `_id` interval, resuming after the last key.
    fn keys_chunk(
        &mut self,
        view: &dyn ReadView,
        coll: &CollectionInfo,
        out: &mut Vec<StoredDoc>,
        bytes: &mut usize,
    ) -> CommandResult<()> {
        let Position::Keys {
            intervals,
            at,
            after,
            reverse,
        } = &mut self.position
        else {
            return Ok(());
        };
        let filter = &self.filter;
        let visited = &mut self.visited;
        let mut failed = None;
        let mut full = false;
        let mut last = None;
        let mut visit = |position: &DocKey, doc: &StoredDoc| {
            *visited += 1;
            if visited.is_multiple_of(DEADLINE_EVERY)
                && let Err(e) = check_deadline()
            {
                failed = Some(e);
                return ControlFlow::Break(());
            }
            match filter.try_matches(doc) {
                Ok(true) => {
                    *bytes += doc.as_bytes().len();
                    out.push(doc.clone());
                }
                Ok(false) => {}
                Err(e) => {
                    failed = Some(e.into());
                    return ControlFlow::Break(());
                }
            }
            last = Some(position.clone());
            if *bytes >= CHUNK_BYTES || out.len() >= CHUNK_DOCS {
                full = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        };
        match &intervals[*at] {
            Some(interval) => {
                view.scan_range(coll, interval, after.as_ref(), *reverse, &mut visit)?
            }
            None => crate::access::walk_natural(
                view,
                coll,
                after.as_ref(),
                *reverse,
                &mut |position, _, doc| visit(position, doc),
            )?,
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if full {
            *after = last;
        } else {
            *at += 1;
            *after = None;
        }
        Ok(())
    }
}

/// Feeds `runner` chunks from `reader` until it answers a document or ends; its joins read
/// through `foreign`.
pub fn next_result(
    runner: &mut Runner,
    mut input: Option<(&mut InputReader, &dyn ReadView, &CollectionInfo)>,
    foreign: &dyn ForeignSource,
) -> CommandResult<Option<RawDocumentBuf>> {
    loop {
        match runner.step(foreign)? {
            Step::Doc(d) => return Ok(Some(d)),
            Step::End => return Ok(None),
            Step::NeedInput => match &mut input {
                Some((reader, view, coll)) if !runner.input_ended() => {
                    let chunk = reader.next_chunk(*view, coll)?;
                    if chunk.is_empty() {
                        runner.end_input();
                    }
                    for doc in chunk {
                        runner.feed((*doc).clone());
                    }
                }
                _ => runner.end_input(),
            },
        }
    }
}

/// A cursor over an aggregation's results, computed batch by batch.
pub struct PipelineSource {
    pub runner: Runner,
    /// The input still to read: its reader and the collection.
    pub input: Option<(InputReader, CollectionInfo)>,
    /// The snapshot the input and the joins read, kept until the results end; `None` for a
    /// pipeline that reads neither (a find's spilling sort, fed before it became a cursor).
    pub snapshot: Option<Snapshot>,
    /// The database the joins' collections are in, and the views they name.
    pub db: String,
    pub views: ForeignViews,
    /// A result that did not fit in the last batch.
    pub pending: Option<RawDocumentBuf>,
}

impl PipelineSource {
    /// Appends up to `want` results (and about [`MAX_BATCH_BYTES`]) to `out`; returns whether
    /// the results are exhausted.
    pub fn fill(&mut self, want: u64, out: &mut Vec<BatchDoc>) -> CommandResult<bool> {
        let mut bytes = 0usize;
        while (out.len() as u64) < want {
            let next = match self.pending.take() {
                Some(d) => Some(d),
                None => self.next()?,
            };
            let Some(doc) = next else {
                return Ok(true);
            };
            let len = doc.as_bytes().len();
            if !out.is_empty() && bytes + len > MAX_BATCH_BYTES {
                self.pending = Some(doc);
                return Ok(false);
            }
            bytes += len;
            out.push(BatchDoc::Owned(doc));
        }
        // One result ahead, so a cursor whose last batch takes everything is reported
        // exhausted now rather than by an empty `getMore`.
        if self.pending.is_none() {
            self.pending = self.next()?;
        }
        Ok(self.pending.is_none())
    }

    fn next(&mut self) -> CommandResult<Option<RawDocumentBuf>> {
        let next = match &self.snapshot {
            Some(snap) => {
                let db = &self.db;
                let resolve = |name: &str| snap.collection(&format!("{db}.{name}"));
                let foreign = Foreign {
                    view: snap,
                    resolve: &resolve,
                    views: &self.views,
                };
                let input = self
                    .input
                    .as_mut()
                    .map(|(r, coll)| (r, snap as &dyn ReadView, &*coll));
                next_result(&mut self.runner, input, &foreign)?
            }
            None => next_result(&mut self.runner, None, &NoForeign)?,
        };
        if next.is_none() {
            self.input = None;
            self.snapshot = None;
        }
        Ok(next)
    }
}
