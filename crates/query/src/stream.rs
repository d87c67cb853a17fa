//! Running a pipeline: documents stream through the stages one at a time, pulled from the end.
//!
//! Each stage has a [`State`]; [`pull`] asks the last stage for its next document, which asks
//! the stage before it, down to the input queue the caller fills. A pull answers a document,
//! [`Step::NeedInput`] (the queue is empty but more may come: the caller feeds and pulls again)
//! or [`Step::End`]. So the caller can feed documents as it reads them and stop reading when
//! the pipeline ends early (a `$limit`), and a cursor can keep a [`Runner`] between `getMore`s.
//!
//! Invariants:
//! - Streaming stages (`$match $project $addFields $set $unset $replaceRoot $skip $limit
//!   $unwind $lookup $graphLookup $unionWith $redact`, `$documents`) hold at most the document they are
//!   working on (an `$unwind` the one it is unwinding; a `$lookup` its foreign collection and
//!   index).
//! - Blocking stages (`$sort`, `$group`, `$bucket`, `$facet`, `$sample`, `$count`, `$densify`,
//!   and `$bucketAuto`, `$setWindowFields`, which hold their input as [`Held`]) absorb their
//!   whole input before answering, and hold only their own state, each bounded by
//!   `Limits::stage_bytes` (`Limits::group_bytes` for groups; 292, or, for all of them but
//!   `$facet` and `$count`, with a spill store, a run written to disk and the memory freed):
//!   the documents a `$sort` or `$sample` keeps (a `$sort` followed by `$limit n` keeps only
//!   the best n; `$sample` is the top n by a random key), the groups, the facets' results, a
//!   counter. `$densify` sorts its input, then streams. A blocking stage whose documents are
//!   the results refuses one too large to return before serializing it.
//! - Every document a [`Runner`] answers is at most `MAX_RESULT_DOCUMENT_BYTES` (10334), and a
//!   result collected whole ([`run_with`], [`run_all`]) at most `Limits::stage_bytes` (292).
//! - Expressions evaluate under the pipeline's `Limits` (`limits::with_limits` around each pull).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bson::raw::RawBsonRef;
use bson::{Bson, Document, RawDocumentBuf};

use crate::densify::{DensifyStream, Span};
use crate::doc_ops::{add_fields, nested, raw_err, replace_root, set_path, to_raw};
use crate::expr::random_unit;
use crate::group::{Grouper, Groups, SpillTo};
use crate::limits::{self, Limits};
use crate::lookup::{Graph, Joined, Reading, graph_lookup_one, lookup_one};
pub(crate) use crate::run_ctx::{Ctx, ForeignSource};
use crate::spill::{SortMerge, SpillStore, Spilled, StageStore};
use crate::stage::{Pipeline, Sink, Stage, Unwind};
use crate::window_spill::{Entries, WindowStream};
use crate::{QueryError, SortSpec};

/// What a pull answers.
#[derive(Debug)]
pub enum Step {
    /// The next result document.
    Doc(RawDocumentBuf),
    /// The input is exhausted for now: feed more (or end it) and pull again.
    NeedInput,
    /// No more results.
    End,
}

/// The documents fed to a pipeline and not yet pulled.
#[derive(Default)]
pub(crate) struct Input {
    queue: VecDeque<RawDocumentBuf>,
    ended: bool,
}

impl Input {
    fn ended_with(docs: Vec<RawDocumentBuf>) -> Input {
        Input {
            queue: docs.into(),
            ended: true,
        }
    }

    fn next(&mut self) -> Step {
        match self.queue.pop_front() {
            Some(d) => Step::Doc(d),
            None if self.ended => Step::End,
            None => Step::NeedInput,
        }
    }
}

/// A stage's state between pulls.
pub(crate) enum State {
    /// Stateless streaming stages.
    Plain,
    /// `$skip`: documents still to drop.
    Skip(usize),
    /// `$limit`: documents still to pass.
    Limit(usize),
    Count(u64),
    Sort(Box<Sorter>),
    Group(Box<Grouper>),
    Unwind(Option<Box<Unwinding>>),
    Lookup(Option<Box<Reading<Joined>>>),
    GraphLookup(Option<Box<Reading<Graph>>>),
    Facet(Box<Facets>),
    Sample(Box<Sampler>),
    UnionWith(Option<Box<Union>>),
    /// `$bucketAuto`, `$setWindowFields`: the whole input (with a key), held.
    Hold(Box<Held>),
    /// `$densify`: its input in its sort, and the span of its values.
    Densify(Box<(Sorter, Span)>),
    /// `$densify`'s sorted input, being densified as it is answered.
    Densified(Box<DensifyStream>),
    /// A blocking stage's documents, being answered.
    Emit(VecDeque<RawDocumentBuf>),
    /// A `$sort` that spilled: its runs and remainder, being merged.
    Merge(Box<SortMerge>),
    /// `$sample`'s kept documents, being answered.
    Drain(Box<Drain>),
    /// A `$setWindowFields` that spilled: its sorted input, answered a partition at a time.
    Windows(Box<WindowStream>),
    /// A `$group`'s or `$bucket`'s groups, being answered.
    EmitGroups(Box<Groups>),
    /// Everything answered.
    Done,
}

/// The fresh states of `stages`.
pub(crate) fn fresh_states(stages: &[Stage]) -> Vec<State> {
    stages
        .iter()
        .enumerate()
        .map(|(i, stage)| match stage {
            Stage::Skip(n) => State::Skip(*n),
            Stage::Limit(n) => State::Limit(*n),
            Stage::Count(_) => State::Count(0),
            Stage::Sort(_) => {
                // `$sort` then `$limit n` needs only the best n documents (mongod's top-k sort).
                let keep = match stages.get(i + 1) {
                    Some(Stage::Limit(n)) => Some(*n),
                    _ => None,
                };
                State::Sort(Box::new(Sorter::new(keep)))
            }
            Stage::Group(_) | Stage::Bucket(_) => State::Group(Box::default()),
            Stage::Unwind(_) => State::Unwind(None),
            Stage::Lookup(_) => State::Lookup(None),
            Stage::GraphLookup(_) => State::GraphLookup(None),
            Stage::Facet(facets) => State::Facet(Box::new(Facets::new(facets))),
            Stage::Sample(n) => State::Sample(Box::new(Sampler::new(*n))),
            Stage::Documents(_) => State::Plain,
            Stage::UnionWith(..) => State::UnionWith(None),
            Stage::BucketAuto(_) | Stage::Window(_) => State::Hold(Box::default()),
            Stage::Densify(_) => {
                let sorter = Sorter::for_stage(None, "$densify");
                State::Densify(Box::new((sorter, None)))
            }
            _ => State::Plain,
        })
        .collect()
}

/// How a run's stages are pulled.
#[derive(Clone, Copy)]
pub(crate) struct Pulling<'s> {
    /// The last stage's documents are the pipeline's results, so a blocking stage can refuse
    /// one too large to return before serializing it.
    pub(crate) results: bool,
    /// A runner's own stages: what each did (see [`StageRun`]). A sub-pipeline's stages are
    /// counted in their enclosing stage and spill through its view of the store.
    pub(crate) stages: Option<&'s [StageRun]>,
    /// Whether to time each of those stages (an `explain` at `executionStats`).
    pub(crate) timed: bool,
}

/// One of a runner's stages as it runs, for `explain`: the documents it answered, their bytes,
/// the time spent pulling them (when timed) and, under `allowDiskUse`, its own view of the
/// spill store, which counts what it spilled.
#[derive(Default)]
pub(crate) struct StageRun {
    returned: AtomicU64,
    returned_bytes: AtomicU64,
    /// Nanoseconds spent answering, its upstream stages included (mongod's estimates are
    /// cumulative the same way).
    nanos: AtomicU64,
    spill: Option<StageStore>,
}

/// What one stage of a [`Runner`] did, as `explain` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageStats {
    /// The stage's name as run (`$fill`, for one, runs as `$setWindowFields` and `$addFields`).
    pub name: &'static str,
    /// The documents it answered.
    pub returned: u64,
    /// Their bytes (mongod's `totalOutputDataSizeBytes` of a `$group`).
    pub returned_bytes: u64,
    /// The bytes of the documents it was given (mongod's `totalDataSizeSortedBytesEstimate` of
    /// a `$sort`): what the stage before it answered, or the runner's input.
    pub input_bytes: u64,
    /// Microseconds spent answering, the stages before it included; `None` unless the runner
    /// was timed ([`Runner::time_stages`]).
    pub micros: Option<u64>,
    /// What it spilled to disk; `None` for a stage that never spills.
    pub spill: Option<crate::SpillStats>,
    /// What a `$lookup` or `$graphLookup` read of its foreign collection; `None` for other
    /// stages.
    pub join: Option<crate::run_ctx::JoinStats>,
}

/// The next document out of the last of `stages`.
pub(crate) fn pull(
    stages: &[Stage],
    states: &mut [State],
    input: &mut Input,
    ctx: &Ctx<'_>,
    how: Pulling<'_>,
) -> Result<Step, QueryError> {
    let (Some((stage, up_stages)), Some((state, up_states))) =
        (stages.split_last(), states.split_last_mut())
    else {
        return Ok(input.next());
    };
    let up_how = Pulling {
        results: false,
        ..how
    };
    let mut upstream = || pull(up_stages, up_states, input, ctx, up_how);
    let max = how.results.then_some(limits::MAX_RESULT_DOCUMENT_BYTES);
    let run = how.stages.and_then(|s| s.get(up_stages.len()));
    let own;
    let ctx = match run.and_then(|r| r.spill.as_ref()) {
        Some(store) => {
            own = Ctx {
                foreign: ctx.foreign,
                limits: ctx.limits,
                spill: Some(store),
            };
            &own
        }
        None => ctx,
    };
    let started = (how.timed && run.is_some()).then(std::time::Instant::now);
    let step = step(stage, state, &mut upstream, ctx, max)?;
    if let Some(run) = run {
        if let Some(started) = started {
            let nanos = started.elapsed().as_nanos();
            run.nanos
                .fetch_add(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        if let Step::Doc(d) = &step {
            run.returned.fetch_add(1, Ordering::Relaxed);
            run.returned_bytes
                .fetch_add(d.as_bytes().len() as u64, Ordering::Relaxed);
        }
    }
    Ok(step)
}

type Upstream<'u> = dyn FnMut() -> Result<Step, QueryError> + 'u;

/// The next document from `up`, or the non-document step to pass on.
macro_rules! next_doc {
    ($up:expr) => {
        match $up()? {
            Step::Doc(d) => d,
            other => return Ok(other),
        }
    };
}

/// `max`: the largest document the stage may answer, when its answers are results.
fn step(
    stage: &Stage,
    state: &mut State,
    up: &mut Upstream<'_>,
    ctx: &Ctx<'_>,
    max: Option<usize>,
) -> Result<Step, QueryError> {
    if let Some(answer) = answer(stage, state, ctx, max)? {
        return Ok(answer);
    }
    match stage {
        Stage::Match(f) => loop {
            let d = next_doc!(up);
            if f.matches_checked(&d)? {
                return Ok(Step::Doc(d));
            }
        },
        Stage::Project(p) | Stage::Unset(p) => Ok(Step::Doc(p.apply(&next_doc!(up))?)),
        Stage::GeoNear(g) => loop {
            if let Some(d) = g.annotate(&next_doc!(up))? {
                return Ok(Step::Doc(d));
            }
        },
        Stage::AddFields(fields) => Ok(Step::Doc(add_fields(&next_doc!(up), fields)?)),
        Stage::ReplaceRoot(e) => Ok(Step::Doc(replace_root(e, &next_doc!(up))?)),
        Stage::Skip(_) | Stage::Limit(_) => skip_or_limit(state, up),
        Stage::Documents(e) => documents(e, state),
        Stage::Unwind(u) => unwind(u, state, up),
        Stage::Lookup(l) => {
            let d = next_doc!(up);
            let State::Lookup(joined) = state else {
                return Ok(Step::End);
            };
            let joined = match joined {
                Some(j) => j,
                None => joined.insert(Box::new(Reading::open(|s| Joined::open(l, ctx, s))?)),
            };
            let run_sub = |stages: &[Stage], docs| run_all(stages, docs, ctx, "$lookup");
            Ok(Step::Doc(lookup_one(l, joined, &d, ctx, &run_sub)?))
        }
        Stage::GraphLookup(g) => {
            let d = next_doc!(up);
            let State::GraphLookup(graph) = state else {
                return Ok(Step::End);
            };
            let graph = match graph {
                Some(g) => g,
                None => graph.insert(Box::new(Reading::open(|s| Graph::open(g, ctx, s))?)),
            };
            Ok(Step::Doc(graph_lookup_one(g, graph, &d, ctx)?))
        }
        Stage::UnionWith(coll, p) => union_with(coll, p.as_ref(), state, up, ctx),
        Stage::Redact(e) => loop {
            if let Some(d) = crate::redact::redact(e, next_doc!(up))? {
                return Ok(Step::Doc(d));
            }
        },
        _ => blocking(stage, state, up, ctx, max),
    }
}

/// A blocking stage's next answer once it has absorbed its input; `None` before.
fn answer(
    stage: &Stage,
    state: &mut State,
    ctx: &Ctx<'_>,
    max: Option<usize>,
) -> Result<Option<Step>, QueryError> {
    let step = match state {
        State::Emit(docs) => docs.pop_front().map_or(Step::End, Step::Doc),
        State::Merge(merge) => match stage {
            Stage::Sort(spec) => merge.next(spec)?.map_or(Step::End, Step::Doc),
            _ => Step::End,
        },
        State::EmitGroups(groups) => next_group(stage, groups, max, &ctx.limits)?,
        State::Densified(out) => match stage {
            Stage::Densify(d) => out.next(d)?.map_or(Step::End, Step::Doc),
            _ => Step::End,
        },
        State::Drain(drain) => drain
            .entries
            .next()
            .transpose()?
            .map_or(Step::End, |e| Step::Doc(e.1)),
        State::Windows(windows) => match stage {
            Stage::Window(w) => windows.next(w, &ctx.limits)?.map_or(Step::End, Step::Doc),
            _ => Step::End,
        },
        State::Done => Step::End,
        _ => return Ok(None),
    };
    if matches!(step, Step::End) {
        // A merge's spill file goes now rather than with the cursor.
        *state = State::Done;
    }
    Ok(Some(step))
}

fn skip_or_limit(state: &mut State, up: &mut Upstream<'_>) -> Result<Step, QueryError> {
    match state {
        State::Skip(left) => loop {
            let d = next_doc!(up);
            if *left == 0 {
                return Ok(Step::Doc(d));
            }
            *left -= 1;
        },
        // A finished `$limit` asks nothing more of its input, so the caller can stop reading.
        State::Limit(0) => Ok(Step::End),
        State::Limit(left) => {
            let d = next_doc!(up);
            *left -= 1;
            Ok(Step::Doc(d))
        }
        _ => Ok(Step::End),
    }
}

/// `$documents`: its own documents, replacing any input.
fn documents(e: &crate::expr::Expr, state: &mut State) -> Result<Step, QueryError> {
    let invalid = || {
        QueryError::location(
            5858203,
            "error during $documents stage: an array of objects is expected",
        )
    };
    let empty = RawDocumentBuf::new();
    let Some(Bson::Array(items)) = e.eval(&empty)? else {
        return Err(invalid());
    };
    let mut docs = VecDeque::with_capacity(items.len());
    for v in items {
        match v {
            Bson::Document(d) => docs.push_back(to_raw(&d)?),
            _ => return Err(invalid()),
        }
    }
    let first = docs.pop_front();
    *state = State::Emit(docs);
    Ok(first.map_or(Step::End, Step::Doc))
}

/// A blocking stage: absorb the whole input, then answer from the result.
fn blocking(
    stage: &Stage,
    state: &mut State,
    up: &mut Upstream<'_>,
    ctx: &Ctx<'_>,
    max: Option<usize>,
) -> Result<Step, QueryError> {
    loop {
        match up()? {
            Step::Doc(d) => absorb(stage, state, d, ctx)?,
            Step::NeedInput => return Ok(Step::NeedInput),
            Step::End => break,
        }
    }
    let taken = std::mem::replace(state, State::Done);
    *state = match (stage, taken) {
        (Stage::Count(field), State::Count(n)) => State::Emit(count_result(field, n)?),
        (Stage::Sort(spec), State::Sort(sorter)) => sorter.finish(spec, &ctx.limits)?,
        (Stage::Group(g), State::Group(grouper)) => {
            State::EmitGroups(Box::new(grouper.finish(&g.accs, None, &ctx.limits)?))
        }
        (Stage::Bucket(b), State::Group(grouper)) => {
            State::EmitGroups(Box::new(grouper.finish(&b.accs, Some(b), &ctx.limits)?))
        }
        (Stage::Facet(facets), State::Facet(f)) => State::Emit(f.finish(facets, ctx, max)?.into()),
        (Stage::Sample(_), State::Sample(s)) => State::Drain(s.finish(&ctx.limits)?),
        (Stage::Densify(_), State::Densify(input)) => {
            let (sorter, span) = *input;
            let entries = sorted_entries(sorter, by_key(), &ctx.limits)?;
            State::Densified(Box::new(DensifyStream::new(entries, span)))
        }
        (Stage::Window(_), State::Hold(held)) if held.sorted.is_some() => {
            let (sorter, _, order) = held.sorted.expect("checked");
            let entries = sorted_entries(*sorter, order, &ctx.limits)?;
            State::Windows(Box::new(WindowStream::new(entries)))
        }
        (_, State::Hold(held)) => State::Emit(finish_held(stage, *held, ctx)?.into()),
        _ => State::Done,
    };
    step(stage, state, up, ctx, max)
}

fn absorb(
    stage: &Stage,
    state: &mut State,
    d: RawDocumentBuf,
    ctx: &Ctx<'_>,
) -> Result<(), QueryError> {
    let limits = &ctx.limits;
    match (stage, state) {
        (Stage::Count(_), State::Count(n)) => *n += 1,
        (Stage::Sort(spec), State::Sort(sorter)) => sorter.add(d, spec, ctx)?,
        (Stage::Group(g), State::Group(grouper)) => {
            let id = g.id.eval(&d)?.unwrap_or(Bson::Null);
            let spill = SpillTo {
                store: ctx.spill,
                bucket: None,
            };
            grouper.add(&g.accs, id, &d, "$group", limits, spill)?;
        }
        (Stage::Bucket(b), State::Group(grouper)) => {
            let id = b.bucket_of(&d)?;
            let spill = SpillTo {
                store: ctx.spill,
                bucket: Some(b),
            };
            grouper.add(&b.accs, id, &d, "$bucket", limits, spill)?;
        }
        (Stage::Facet(facets), State::Facet(f)) => f.add(facets, d, ctx)?,
        (Stage::Sample(_), State::Sample(s)) => s.add(d, ctx)?,
        (Stage::Densify(spec), State::Densify(input)) => {
            let (sorter, span) = &mut **input;
            let key = spec.sort_key(&d, span)?;
            sorter.add(wrap_keyed(&key, &d)?, &by_key(), ctx)?;
        }
        (_, State::Hold(held)) => held.add(stage, d, ctx)?,
        _ => {}
    }
    Ok(())
}

fn next_group(
    stage: &Stage,
    groups: &mut Groups,
    max: Option<usize>,
    limits: &Limits,
) -> Result<Step, QueryError> {
    let accs = match stage {
        Stage::Group(g) => &g.accs,
        Stage::Bucket(b) => &b.accs,
        _ => return Ok(Step::End),
    };
    Ok(groups.next(accs, max, limits)?.map_or(Step::End, Step::Doc))
}

/// The input of a stage that needs all of it at once, with each document's key (`$bucketAuto`'s
/// `groupBy` value; null for the others) and the bytes held.
#[derive(Default)]
pub(crate) struct Held {
    docs: Vec<(Bson, RawDocumentBuf)>,
    bytes: usize,
    /// `$bucketAuto` or `$setWindowFields` past its memory limit under `allowDiskUse`: every
    /// (key, document) so far, wrapped as `{k: {v: key}, d: document}`, in the spilling sort
    /// (by `k`, then for a window by its `sortBy` under `d`), their number, and that order.
    sorted: Option<(Box<Sorter>, usize, SortSpec)>,
}

/// The order of a stage's wrapped input: by the wrapped key (`$bucketAuto`'s `groupBy` value,
/// `$sample`'s random key, `$densify`'s partition and value). Wrapping the key in a
/// document makes `$sort` compare it as one value (an array as a whole, as `cmp_bson` does),
/// not by its smallest element.
fn by_key() -> SortSpec {
    SortSpec::parse(&bson::rawdoc! { "k": 1 }).expect("a constant sort specification")
}

/// The order `$setWindowFields` reads a spilled input in: by partition, then by `sortBy`.
/// `None` for a `sortBy` on `{$meta: ...}`, which cannot be re-expressed on the wrapper.
fn window_order(w: &crate::window::Window) -> Option<SortSpec> {
    let mut spec = bson::RawDocumentBuf::new();
    spec.append(bson::cstr!("k"), 1);
    if let Some(s) = &w.sort {
        if s.has_meta() {
            return None;
        }
        for (parts, descending) in s.fields() {
            let path = format!("d.{}", parts.join("."));
            let key: &bson::raw::CStr = path.as_str().try_into().ok()?;
            spec.append(key, if descending { -1 } else { 1 });
        }
    }
    SortSpec::parse(&spec).ok()
}

/// The key a held document is sorted by when its stage spills: `$bucketAuto`'s `groupBy`
/// value, `$setWindowFields`' partition value.
fn sort_key(stage: &Stage, d: &RawDocumentBuf) -> Result<Bson, QueryError> {
    Ok(match stage {
        Stage::BucketAuto(b) => b.key(d)?,
        Stage::Window(w) => match &w.partition {
            Some(p) => p.eval(d)?.unwrap_or(Bson::Null),
            None => Bson::Null,
        },
        _ => Bson::Null,
    })
}

fn wrap_keyed(key: &Bson, d: &RawDocumentBuf) -> Result<RawDocumentBuf, QueryError> {
    let key = bson::RawBson::try_from(key.clone()).map_err(raw_err)?;
    Ok(bson::rawdoc! { "k": { "v": key }, "d": d.clone() })
}

fn unwrap_keyed(w: RawDocumentBuf) -> Result<(Bson, RawDocumentBuf), QueryError> {
    let k = w.get_document("k").map_err(raw_err)?;
    let key = match k.get("v").map_err(raw_err)? {
        Some(v) => Bson::try_from(v).map_err(raw_err)?,
        None => Bson::Null,
    };
    Ok((key, w.get_document("d").map_err(raw_err)?.to_owned()))
}

impl Held {
    fn add(&mut self, stage: &Stage, d: RawDocumentBuf, ctx: &Ctx<'_>) -> Result<(), QueryError> {
        if let Some((sorter, count, order)) = &mut self.sorted {
            *count += 1;
            return sorter.add(wrap_keyed(&sort_key(stage, &d)?, &d)?, order, ctx);
        }
        // In memory a window computes its partitions itself (`window::run`).
        let key = match stage {
            Stage::BucketAuto(b) => b.key(&d)?,
            _ => Bson::Null,
        };
        self.bytes += d.as_bytes().len() + crate::memory::mem_size(&key)?;
        self.docs.push((key, d));
        let spill = ctx.should_spill(self.bytes).is_some();
        match stage {
            Stage::Window(w) => match window_order(w).filter(|_| spill) {
                Some(order) => self.start_sorting(stage, order, ctx),
                None => crate::window::check_memory(self.bytes, &ctx.limits),
            },
            _ if spill => self.start_sorting(stage, by_key(), ctx),
            _ => ctx.check("$bucketAuto", self.bytes),
        }
    }

    /// Moves what is held into the spilling sort, which writes runs from now on.
    fn start_sorting(
        &mut self,
        stage: &Stage,
        order: SortSpec,
        ctx: &Ctx<'_>,
    ) -> Result<(), QueryError> {
        let mut sorter = Box::new(Sorter::new(None));
        let count = self.docs.len();
        for (key, d) in std::mem::take(&mut self.docs) {
            let key = match stage {
                Stage::Window(_) => sort_key(stage, &d)?,
                _ => key,
            };
            sorter.add(wrap_keyed(&key, &d)?, &order, ctx)?;
        }
        self.bytes = 0;
        self.sorted = Some((sorter, count, order));
        Ok(())
    }
}

/// The held input's spilling sort, read back in its order as (key, document) pairs.
fn sorted_entries(sorter: Sorter, order: SortSpec, limits: &Limits) -> Result<Entries, QueryError> {
    let mut state = sorter.finish(&order, limits)?;
    Ok(Box::new(std::iter::from_fn(move || match &mut state {
        State::Emit(q) => q.pop_front().map(unwrap_keyed),
        State::Merge(m) => m.next(&order).transpose().map(|r| r.and_then(unwrap_keyed)),
        _ => None,
    })))
}

/// `$bucketAuto` over input that went through the spilling sort: walked in key order as the
/// runs are merged.
fn finish_sorted_buckets(
    b: &crate::bucket_auto::BucketAuto,
    sorter: Sorter,
    count: usize,
    order: SortSpec,
    ctx: &Ctx<'_>,
) -> Result<Vec<RawDocumentBuf>, QueryError> {
    let entries = sorted_entries(sorter, order, &ctx.limits)?;
    b.finish_sorted(entries, count, &ctx.limits)
}

fn finish_held(
    stage: &Stage,
    held: Held,
    ctx: &Ctx<'_>,
) -> Result<Vec<RawDocumentBuf>, QueryError> {
    match stage {
        Stage::BucketAuto(b) => match held.sorted {
            Some((sorter, count, order)) => finish_sorted_buckets(b, *sorter, count, order, ctx),
            None => b.finish(held.docs, &ctx.limits),
        },
        Stage::Window(w) => {
            let docs = held.docs.into_iter().map(|(_, d)| d).collect();
            crate::window::run(w, docs, &ctx.limits)
        }
        _ => Ok(Vec::new()),
    }
}

/// `$count`: one document with the number of inputs, or none for no input.
fn count_result(field: &str, n: u64) -> Result<VecDeque<RawDocumentBuf>, QueryError> {
    if n == 0 {
        return Ok(VecDeque::new());
    }
    let mut out = Document::new();
    match i32::try_from(n) {
        Ok(small) => out.insert(field, small),
        Err(_) => out.insert(field, n as i64),
    };
    Ok(VecDeque::from([to_raw(&out)?]))
}

/// A `$sort`'s documents, with their bytes; only the best `keep` when a `$limit` follows.
/// Past the stage limit, with a spill store, the documents so far go to disk as a sorted run.
pub(crate) struct Sorter {
    docs: Vec<RawDocumentBuf>,
    bytes: usize,
    keep: Option<usize>,
    spilled: Option<Spilled>,
    /// The stage named when the sort fails at its limit (`$sample` and `$densify` sort too).
    stage: &'static str,
}

impl Sorter {
    fn new(keep: Option<usize>) -> Sorter {
        Sorter::for_stage(keep, "$sort")
    }

    fn for_stage(keep: Option<usize>, stage: &'static str) -> Sorter {
        Sorter {
            docs: Vec::new(),
            bytes: 0,
            keep,
            spilled: None,
            stage,
        }
    }

    fn add(&mut self, d: RawDocumentBuf, spec: &SortSpec, ctx: &Ctx<'_>) -> Result<(), QueryError> {
        self.bytes += d.as_bytes().len();
        self.docs.push(d);
        if let Some(k) = self.keep {
            let beyond = self.docs.len().saturating_sub(k);
            // Past the limit the best k may still fit: prune before spilling or failing, but
            // only once a quarter of k more has come, so pruning stays amortized O(1) a document.
            let over = self.bytes > ctx.limits.stage_bytes && beyond >= (k / 4).max(1);
            if beyond >= k.max(64) || over {
                // Sorting stably and truncating keeps exactly the first k of a full stable sort.
                spec.sort_items(&mut self.docs, |d| d);
                self.docs.truncate(k);
                self.bytes = self.docs.iter().map(|d| d.as_bytes().len()).sum();
            }
        }
        match ctx.should_spill(self.bytes) {
            Some(store) => self.spill(spec, store),
            None => ctx.check(self.stage, self.bytes),
        }
    }

    /// Writes the documents so far, sorted (the best `keep` of them), as a run, and frees them.
    fn spill(&mut self, spec: &SortSpec, store: &dyn SpillStore) -> Result<(), QueryError> {
        let spilled = match &mut self.spilled {
            Some(s) => s,
            None => self.spilled.insert(Spilled::open(store)?),
        };
        let mut docs = std::mem::take(&mut self.docs);
        spec.sort_items(&mut docs, |d| d);
        if let Some(k) = self.keep {
            docs.truncate(k);
        }
        self.bytes = 0;
        spilled.write(docs)
    }

    /// The documents in order: at once, or merged from the runs as they are pulled.
    fn finish(mut self, spec: &SortSpec, limits: &Limits) -> Result<State, QueryError> {
        spec.sort_items(&mut self.docs, |d| d);
        if let Some(k) = self.keep {
            self.docs.truncate(k);
        }
        Ok(match self.spilled {
            None => State::Emit(self.docs.into()),
            Some(spilled) => {
                let merge = SortMerge::new(spilled, self.docs, self.keep, limits.stage_bytes)?;
                State::Merge(Box::new(merge))
            }
        })
    }
}

/// `$sample`, as mongod runs it: every document gets a random key and the `n` with the smallest
/// keys are kept (a uniform sample without replacement), answered in key order, so in random
/// order. The keeping is the top-n `$sort` on the key, which spills like any `$sort`.
pub(crate) struct Sampler(Sorter);

impl Sampler {
    fn new(n: usize) -> Sampler {
        Sampler(Sorter::for_stage(Some(n), "$sample"))
    }

    fn add(&mut self, d: RawDocumentBuf, ctx: &Ctx<'_>) -> Result<(), QueryError> {
        let key = Bson::Double(random_unit());
        self.0.add(wrap_keyed(&key, &d)?, &by_key(), ctx)
    }

    /// The kept documents, read back (from memory or merged from the runs) without their keys.
    fn finish(self, limits: &Limits) -> Result<Box<Drain>, QueryError> {
        let entries = sorted_entries(self.0, by_key(), limits)?;
        Ok(Box::new(Drain { entries }))
    }
}

/// A stage's sorted documents being answered.
pub(crate) struct Drain {
    entries: Entries,
}

/// A sub-pipeline's run: its states and its input.
pub(crate) struct Run {
    states: Vec<State>,
    input: Input,
    ended: bool,
    /// Its documents are the pipeline's results (not a sub-pipeline's).
    results: bool,
}

impl Run {
    fn new(stages: &[Stage], input: Input) -> Run {
        Run {
            states: fresh_states(stages),
            input,
            ended: false,
            results: false,
        }
    }

    fn next(&mut self, stages: &[Stage], ctx: &Ctx<'_>) -> Result<Step, QueryError> {
        if self.ended {
            return Ok(Step::End);
        }
        let how = Pulling {
            results: self.results,
            stages: None,
            timed: false,
        };
        let step = pull(stages, &mut self.states, &mut self.input, ctx, how)?;
        self.ended = matches!(step, Step::End);
        Ok(step)
    }
}

/// `$facet`: each sub-pipeline fed every input document, its results kept.
pub(crate) struct Facets {
    runs: Vec<(Run, Vec<RawDocumentBuf>)>,
    used: usize,
}

impl Facets {
    fn new(facets: &[(String, Pipeline)]) -> Facets {
        Facets {
            runs: facets
                .iter()
                .map(|(_, p)| (Run::new(&p.stages, Input::default()), Vec::new()))
                .collect(),
            used: 0,
        }
    }

    fn add(
        &mut self,
        facets: &[(String, Pipeline)],
        d: RawDocumentBuf,
        ctx: &Ctx<'_>,
    ) -> Result<(), QueryError> {
        for ((_, p), (run, out)) in facets.iter().zip(self.runs.iter_mut()) {
            if !run.ended {
                run.input.queue.push_back(d.clone());
            }
            drain_facet(&p.stages, run, out, &mut self.used, ctx)?;
        }
        Ok(())
    }

    fn finish(
        mut self,
        facets: &[(String, Pipeline)],
        ctx: &Ctx<'_>,
        max: Option<usize>,
    ) -> Result<Vec<RawDocumentBuf>, QueryError> {
        let mut out = Document::new();
        for ((name, p), (mut run, mut docs)) in facets.iter().zip(self.runs.drain(..)) {
            run.input.ended = true;
            drain_facet(&p.stages, &mut run, &mut docs, &mut self.used, ctx)?;
            let items = docs
                .iter()
                .map(|d| Document::try_from(d.as_ref()).map(Bson::Document))
                .collect::<Result<Vec<_>, _>>()
                .map_err(raw_err)?;
            out.insert(name.clone(), items);
        }
        if let Some(max) = max {
            crate::memory::check_document(&out, max)?;
        }
        Ok(vec![to_raw(&out)?])
    }
}

fn drain_facet(
    stages: &[Stage],
    run: &mut Run,
    out: &mut Vec<RawDocumentBuf>,
    used: &mut usize,
    ctx: &Ctx<'_>,
) -> Result<(), QueryError> {
    while let Step::Doc(d) = run.next(stages, ctx)? {
        *used += d.as_bytes().len();
        ctx.check("$facet", *used)?;
        out.push(d);
    }
    Ok(())
}

/// Bytes of the other collection a `$unionWith` reads at a time (at most the per-stage limit).
const UNION_CHUNK_BYTES: usize = 4 << 20;

/// A `$unionWith`'s other collection, read a chunk at a time through its pipeline.
pub(crate) struct Union {
    run: Run,
    /// Where the next chunk resumes.
    resume: Option<Vec<u8>>,
}

/// `$unionWith`: the input, then the other collection through its pipeline, read in chunks so
/// that only the pipeline's blocking stages hold memory.
fn union_with(
    coll: &str,
    p: Option<&Pipeline>,
    state: &mut State,
    up: &mut Upstream<'_>,
    ctx: &Ctx<'_>,
) -> Result<Step, QueryError> {
    let State::UnionWith(theirs) = state else {
        return Ok(Step::End);
    };
    if theirs.is_none() {
        match up()? {
            Step::End => {}
            other => return Ok(other),
        }
    }
    let stages = p.map_or(&[][..], |p| &p.stages[..]);
    let union = theirs.get_or_insert_with(|| {
        Box::new(Union {
            run: Run::new(stages, Input::default()),
            resume: None,
        })
    });
    loop {
        match union.run.next(stages, ctx)? {
            Step::NeedInput if !union.run.input.ended => {
                let after = union.resume.as_deref();
                let max = UNION_CHUNK_BYTES.min(ctx.limits.stage_bytes);
                let (docs, resume) = ctx.foreign.next_chunk(coll, after, max)?;
                union.run.input.queue.extend(docs);
                union.run.input.ended = resume.is_none();
                union.resume = resume;
            }
            Step::NeedInput => return Ok(Step::End),
            step => return Ok(step),
        }
    }
}

/// An `$unwind` in the middle of a document's array.
pub(crate) struct Unwinding {
    base: Document,
    items: std::vec::IntoIter<Bson>,
    at: i64,
}

fn unwind(u: &Unwind, state: &mut State, up: &mut Upstream<'_>) -> Result<Step, QueryError> {
    let State::Unwind(current) = state else {
        return Ok(Step::End);
    };
    loop {
        if let Some(cur) = current {
            if let Some(item) = cur.items.next() {
                let mut d = cur.base.clone();
                set_path(&mut d, &u.path, Some(item));
                with_index(u, &mut d, Some(cur.at));
                cur.at += 1;
                return Ok(Step::Doc(to_raw(&d)?));
            }
            *current = None;
        }
        let doc = next_doc!(up);
        match nested(&doc, &u.path) {
            Some(RawBsonRef::Array(items)) => {
                let items = items
                    .into_iter()
                    .map(|i| {
                        i.map_err(raw_err)
                            .and_then(|i| Bson::try_from(i).map_err(raw_err))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let base = Document::try_from(doc.as_ref()).map_err(raw_err)?;
                if items.is_empty() {
                    if u.preserve {
                        let mut d = base;
                        set_path(&mut d, &u.path, None);
                        with_index(u, &mut d, None);
                        return Ok(Step::Doc(to_raw(&d)?));
                    }
                    continue;
                }
                *current = Some(Box::new(Unwinding {
                    base,
                    items: items.into_iter(),
                    at: 0,
                }));
            }
            None | Some(RawBsonRef::Null) | Some(RawBsonRef::Undefined) if !u.preserve => {}
            // Null and missing (preserved), and a scalar, which unwinds to itself as a
            // one-element array would.
            _ => return Ok(Step::Doc(indexed_as_is(u, doc)?)),
        }
    }
}

fn with_index(u: &Unwind, d: &mut Document, i: Option<i64>) {
    if let Some(index) = &u.index {
        set_path(d, index, Some(i.map_or(Bson::Null, Bson::Int64)));
    }
}

/// `doc` unchanged, but for a null `includeArrayIndex`.
fn indexed_as_is(u: &Unwind, doc: RawDocumentBuf) -> Result<RawDocumentBuf, QueryError> {
    if u.index.is_none() {
        return Ok(doc);
    }
    let mut d = Document::try_from(doc.as_ref()).map_err(raw_err)?;
    with_index(u, &mut d, None);
    to_raw(&d)
}

/// Runs `stages` over `docs` to the end and returns the result, bounded by the per-stage
/// limit (a sub-pipeline's result, or a whole pipeline's computed at once).
pub(crate) fn run_all(
    stages: &[Stage],
    docs: Vec<RawDocumentBuf>,
    ctx: &Ctx<'_>,
    what: &str,
) -> Result<Vec<RawDocumentBuf>, QueryError> {
    let mut run = Run::new(stages, Input::ended_with(docs));
    let mut out = Vec::new();
    let mut used = 0usize;
    while let Step::Doc(d) = run.next(stages, ctx)? {
        used += d.as_bytes().len();
        ctx.check(what, used)?;
        out.push(d);
    }
    Ok(out)
}

/// Foreign collections from a callback, each asked for once and kept whole.
struct Callback<'a> {
    fetch: &'a dyn Fn(&str) -> Result<Vec<RawDocumentBuf>, QueryError>,
    cache: std::cell::RefCell<HashMap<String, Arc<Vec<RawDocumentBuf>>>>,
}

impl Callback<'_> {
    fn fetched(&self, name: &str) -> Result<Arc<Vec<RawDocumentBuf>>, QueryError> {
        if let Some(docs) = self.cache.borrow().get(name) {
            return Ok(docs.clone());
        }
        let docs = Arc::new((self.fetch)(name)?);
        self.cache
            .borrow_mut()
            .insert(name.to_string(), docs.clone());
        Ok(docs)
    }
}

impl ForeignSource for Callback<'_> {
    // The callback's collections are already in memory: their size was bounded where read.
    fn whole(&self, name: &str, _: usize) -> Result<Option<Arc<Vec<RawDocumentBuf>>>, QueryError> {
        self.fetched(name).map(Some)
    }

    fn each_match(
        &self,
        name: &str,
        filter: &bson::RawDocument,
        visit: &mut dyn FnMut(&bson::RawDocument) -> Result<(), QueryError>,
    ) -> Result<crate::run_ctx::ForeignRead, QueryError> {
        crate::run_ctx::each_match_in(&self.fetched(name)?, filter, visit)
    }

    fn indexed(&self, _: &str, _: &str) -> bool {
        false
    }

    /// The callback's collection all at once.
    fn next_chunk(
        &self,
        name: &str,
        after: Option<&[u8]>,
        _: usize,
    ) -> Result<crate::run_ctx::Chunk, QueryError> {
        match after {
            None => Ok((self.fetched(name)?.as_ref().clone(), None)),
            Some(_) => Ok((Vec::new(), None)),
        }
    }
}

/// [`Pipeline::run_with`]: the whole result at once.
pub(crate) fn run_with(
    p: &Pipeline,
    docs: Vec<RawDocumentBuf>,
    fetch: &dyn Fn(&str) -> Result<Vec<RawDocumentBuf>, QueryError>,
) -> Result<Vec<RawDocumentBuf>, QueryError> {
    let foreign = Callback {
        fetch,
        cache: Default::default(),
    };
    let ctx = Ctx {
        foreign: &foreign,
        limits: p.limits,
        spill: None,
    };
    let skip = usize::from(p.leading_match().is_some());
    let stages = &p.stages[skip..];
    let mut run = Run::new(stages, Input::ended_with(docs));
    run.results = true;
    let mut out = Vec::new();
    let mut used = 0usize;
    let scorer = p.leading_match().and_then(|f| f.text_match());
    crate::text_meta::with_scorer(scorer.as_ref(), || {
        limits::with_limits(p.limits, || {
            while let Step::Doc(d) = run.next(stages, &ctx)? {
                used += d.as_bytes().len();
                ctx.check("the pipeline's result", used)?;
                out.push(d);
            }
            Ok::<_, QueryError>(())
        })
    })?;
    for d in &out {
        limits::check_result(d)?;
    }
    Ok(out)
}

/// A pipeline with its state, fed by the caller and pulled one result at a time; it owns
/// everything, so a cursor can keep it between `getMore`s.
pub struct Runner {
    pipeline: Pipeline,
    /// 1 when the pipeline starts with a `$match` the caller applies while reading.
    skip: usize,
    states: Vec<State>,
    input: Input,
    ended: bool,
    /// What each stage did so far, and where it spills (`allowDiskUse`).
    runs: Vec<StageRun>,
    /// Bytes of the input documents fed so far.
    fed_bytes: u64,
    /// Whether each stage's time is measured (see [`Runner::time_stages`]).
    timed: bool,
}

impl Runner {
    pub(crate) fn new(pipeline: Pipeline) -> Runner {
        let skip = usize::from(pipeline.leading_match().is_some());
        let states = fresh_states(&pipeline.stages[skip..]);
        let stages = states.len();
        Runner {
            pipeline,
            skip,
            states,
            input: Input::default(),
            ended: false,
            runs: std::iter::repeat_with(StageRun::default)
                .take(stages)
                .collect(),
            fed_bytes: 0,
            timed: false,
        }
    }

    /// Measures the time each stage spends answering, for `explain` at `executionStats`. Off
    /// otherwise: reading the clock twice per document and stage costs more than some stages.
    pub fn time_stages(&mut self) {
        self.timed = true;
    }

    /// Lets blocking stages spill to `store` past their memory limits (`allowDiskUse`).
    pub fn allow_disk_use(&mut self, store: Arc<dyn SpillStore>) {
        for run in &mut self.runs {
            run.spill = Some(StageStore::new(store.clone()));
        }
    }

    /// Whether a stage has spilled to disk so far (mongod's `usedDisk`).
    pub fn used_disk(&self) -> bool {
        self.runs
            .iter()
            .any(|r| r.spill.as_ref().is_some_and(StageStore::used))
    }

    /// What each stage has done so far, for `explain`: the stages after a leading `$match`,
    /// which the caller applies while reading ([`Runner::applies_leading_match`]).
    pub fn stage_stats(&self) -> Vec<StageStats> {
        let stages = &self.pipeline.stages[self.skip..];
        let mut input_bytes = self.fed_bytes;
        let mut out = Vec::with_capacity(stages.len());
        for ((stage, run), state) in stages.iter().zip(&self.runs).zip(&self.states) {
            let returned_bytes = run.returned_bytes.load(Ordering::Relaxed);
            out.push(StageStats {
                name: stage.name(),
                returned: run.returned.load(Ordering::Relaxed),
                returned_bytes,
                input_bytes,
                micros: self.timed.then(|| run.nanos.load(Ordering::Relaxed) / 1000),
                spill: stage.may_spill().then(|| {
                    run.spill
                        .as_ref()
                        .map(StageStore::stats)
                        .unwrap_or_default()
                }),
                join: join_stats(state),
            });
            input_bytes = returned_bytes;
        }
        out
    }

    /// Whether the pipeline's leading `$match` is the caller's to apply (not a stage here).
    pub fn applies_leading_match(&self) -> bool {
        self.skip == 1
    }

    /// Adds an input document (one that passed the leading `$match`).
    pub fn feed(&mut self, doc: RawDocumentBuf) {
        if !self.ended {
            self.fed_bytes += doc.as_bytes().len() as u64;
            self.input.queue.push_back(doc);
        }
    }

    /// No more input will come.
    pub fn end_input(&mut self) {
        self.input.ended = true;
    }

    /// Whether the input has been ended.
    pub fn input_ended(&self) -> bool {
        self.input.ended
    }

    /// The next result; [`Step::NeedInput`] asks for more input (or [`Runner::end_input`]).
    /// Once it answered [`Step::End`], further input is ignored. `foreign` reads the
    /// collections the joins name, from the same snapshot (or transaction) on every step.
    pub fn step(&mut self, foreign: &dyn ForeignSource) -> Result<Step, QueryError> {
        if self.ended {
            return Ok(Step::End);
        }
        // Each stage gets its own view of the store (see `pull`).
        let ctx = Ctx {
            foreign,
            limits: self.pipeline.limits,
            spill: None,
        };
        let stages = &self.pipeline.stages[self.skip..];
        let top = Pulling {
            results: true,
            stages: Some(&self.runs[..]),
            timed: self.timed,
        };
        let scorer = self.pipeline.leading_match().and_then(|f| f.text_match());
        let step = crate::text_meta::with_scorer(scorer.as_ref(), || {
            limits::with_limits(self.pipeline.limits, || {
                pull(stages, &mut self.states, &mut self.input, &ctx, top)
            })
        });
        let step = step?;
        match &step {
            Step::Doc(d) => limits::check_result(d)?,
            Step::End => {
                self.ended = true;
                self.input.queue.clear();
            }
            Step::NeedInput => {}
        }
        Ok(step)
    }

    /// The `$out` or `$merge` that ends the pipeline, if any.
    pub fn sink(&self) -> Option<&Sink> {
        self.pipeline.sink()
    }

    /// The limits the pipeline runs under.
    pub fn limits(&self) -> Limits {
        self.pipeline.limits
    }
}

/// What a `$lookup` or `$graphLookup` read of its foreign collection; `None` for other stages.
fn join_stats(state: &State) -> Option<crate::run_ctx::JoinStats> {
    match state {
        State::Lookup(j) => Some(j.as_ref().map(|j| j.stats.clone()).unwrap_or_default()),
        State::GraphLookup(g) => Some(g.as_ref().map(|g| g.stats.clone()).unwrap_or_default()),
        _ => None,
    }
}
