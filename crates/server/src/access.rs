//! Access paths: how a read reaches the documents its filter may match. An `_id` point lookup,
//! ranges of the collection's own `_id` order, a range scan of a secondary index (then fetching
//! each document), forward or backward, or a scan of the whole collection. Whatever the path, every document it yields is checked against the whole filter,
//! so the planner may only make the candidate set smaller, never wrong.

use std::collections::{HashSet, VecDeque};
use std::ops::ControlFlow;
use std::sync::Arc;

use bson::raw::{RawBsonRef, RawDocument};
use bson::{Bson, Document, doc};
use mangrove_query::{Filter, IndexBounds, KeyInterval, index_bounds};
use mangrove_storage::{CollectionInfo, DocKey, IndexInfo, ReadView, StoredDoc};

use crate::error::{CommandError, CommandResult};
use crate::op_stats::Plan;

thread_local! {
    /// The `maxTimeMS` deadline of the read running on this thread (see [`with_deadline`]).
    static DEADLINE: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with a read deadline (a command's `maxTimeMS`): scans and index walks inside it
/// stop with MaxTimeMSExpired once it passes. Reads are synchronous, so a thread-local
/// reaches every loop without threading a parameter through each one.
pub fn with_deadline<T>(deadline: Option<std::time::Instant>, f: impl FnOnce() -> T) -> T {
    let previous = DEADLINE.with(|d| d.replace(deadline));
    struct Restore(Option<std::time::Instant>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEADLINE.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(previous);
    // JavaScript run by the read ($where, $function) is interrupted at the same deadline.
    let run = || mangrove_js::with_deadline(deadline, f);
    // JavaScript may run for long (seconds, `sleep`): the read then gives its worker's place
    // to another thread, so the runtime goes on serving I/O (a `killOp` of it among others),
    // which an idle runtime would not while one task blocks its only awake worker.
    if crate::op_stats::runs_javascript() && on_multi_thread_runtime() {
        tokio::task::block_in_place(run)
    } else {
        run()
    }
}

/// A long synchronous read holds its worker thread, and on an otherwise idle runtime the
/// other workers sleep and nobody polls the sockets: a `killOp`, or any client, would wait for
/// the read to end. Spawning two empty tasks from this worker puts one in its run queue, where
/// the scheduler wakes a sleeping worker to steal it; that worker then parks on the I/O driver
/// and serves the sockets meanwhile. Done once per read, when it turns out long.
fn wake_another_worker() {
    if on_multi_thread_runtime() {
        tokio::spawn(async {});
        tokio::spawn(async {});
    }
}

fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// What is left of the running read's `maxTimeMS`, for a cursor to carry into its `getMore`s
/// (mongod's leftover time).
pub fn time_left() -> Option<std::time::Duration> {
    DEADLINE
        .with(std::cell::Cell::get)
        .map(|d| d.saturating_duration_since(std::time::Instant::now()))
}

/// A command's `maxTimeMS` as a deadline from now (none for 0 or absent).
pub fn deadline_of(max_time_ms: Option<i64>) -> Option<std::time::Instant> {
    match max_time_ms {
        Some(ms) if ms > 0 => {
            std::time::Instant::now().checked_add(std::time::Duration::from_millis(ms as u64))
        }
        _ => None,
    }
}

/// MaxTimeMSExpired once the running read's deadline has passed. Cheap enough to call every
/// few hundred documents.
///
/// A command that `killOp` interrupted fails here too, with Interrupted (11601).
pub fn check_deadline() -> CommandResult<()> {
    if crate::op_stats::killed() {
        return Err(interrupted());
    }
    if crate::op_stats::became_long() {
        wake_another_worker();
    }
    match DEADLINE.with(std::cell::Cell::get) {
        Some(d) if std::time::Instant::now() >= d => Err(CommandError::new(
            crate::error::code::MAX_TIME_MS_EXPIRED,
            "Executor error during find command :: caused by :: operation exceeded time limit",
        )),
        _ => Ok(()),
    }
}

/// mongod's error for an operation `killOp` interrupted.
pub fn interrupted() -> CommandError {
    CommandError::new(crate::error::code::INTERRUPTED, "operation was interrupted")
}

/// Documents visited between deadline checks.
const DEADLINE_EVERY: u64 = 256;

/// Index entries read per call into the engine: bounds the memory of one step and how long
/// the engine's lock is held.
const INDEX_CHUNK: usize = 512;

/// The binary primary key of an `_id`: the order-preserving encoding, strings by their bytes.
/// The key of the internal collections (users, roles, sessions), which have no collation; a
/// user collection's documents are keyed by [`doc_key`].
pub fn key_of(id: RawBsonRef<'_>) -> DocKey {
    let mut bytes = Vec::with_capacity(16);
    mangrove_query::encode_key(id, &mut bytes);
    DocKey(bytes)
}

/// Marks, among a collection's options, that its `_id` keys are encoded under its default
/// collation, as mongod's `_id` index is. Collections created before Mangrove did so lack it
/// and keep their binary keys, so existing data directories read back unchanged. Set by
/// `create`, kept by `collMod` and renames like the UUID, never shown (`shown_options`). The
/// engine reads it only to name the collation in a duplicate `_id` error.
pub use mangrove_storage::COLLATED_ID_OPTION;

/// Whether `coll`'s `_id` keys are encoded under its default collation.
pub fn ids_collated(coll: &CollectionInfo) -> bool {
    coll.id_collation_spec().is_some()
}

/// The collation `coll`'s `_id` keys are encoded under; `None`: binary.
pub fn id_collation(coll: &CollectionInfo) -> Option<mangrove_query::Collation> {
    if !ids_collated(coll) {
        return None;
    }
    let spec = coll.options.get_document("collation").ok()?;
    let raw = bson::RawDocumentBuf::try_from(spec).ok()?;
    // Stored by `create` after it parsed it, so it parses again.
    mangrove_query::Collation::parse(&raw).ok().flatten()
}

/// A document's primary key in `coll`: the encoding of its `_id`, strings (nested ones too) by
/// their sort key under the collection's `_id` collation (see [`COLLATED_ID_OPTION`]), so `_id`
/// values that collation equates are one key, as in mongod's `_id` index.
pub fn doc_key(coll: &CollectionInfo, id: RawBsonRef<'_>) -> DocKey {
    match id_collation(coll) {
        Some(collation) => {
            let mut bytes = Vec::with_capacity(16);
            mangrove_query::encode_key_collated(id, &collation, &mut bytes);
            DocKey(bytes)
        }
        None => key_of(id),
    }
}

/// The options of `coll` as the user gave them: without the UUID and the `_id` marker.
pub fn shown_options(coll: &CollectionInfo) -> Document {
    let mut options = coll.user_options();
    options.remove(COLLATED_ID_OPTION);
    options
}

/// The chosen way to reach a filter's candidates.
#[derive(Clone)]
pub enum Access {
    /// The whole collection in `$natural` (insertion) order ([`walk_natural`]).
    Collection,
    /// The whole collection in reverse `$natural` order (`$natural: -1`).
    CollectionBackward,
    IdPoint(DocKey),
    /// Ranges (or several points) of the collection's own `_id` order.
    IdRange {
        bounds: Arc<IndexBounds>,
        sorted: bool,
        /// Walk the ranges backward (a descending sort on `_id`).
        reverse: bool,
    },
    Index {
        index: Arc<IndexInfo>,
        bounds: Arc<IndexBounds>,
        multikey: bool,
        /// The walk yields documents in the query's sort order: no blocking sort needed.
        sorted: bool,
        /// Walk the entries backward (a sort against the index's direction).
        reverse: bool,
    },
    /// A geo index walked outward from a `$near` center (`geo_near.rs`), nearest first.
    Near {
        index: Arc<IndexInfo>,
        plan: Arc<crate::geo_near::NearPlan>,
    },
}

impl Access {
    /// The access path as the profiler and slow-query log name it.
    pub fn plan(&self) -> Plan {
        match self {
            Access::Collection | Access::CollectionBackward => Plan::CollectionScan,
            Access::IdPoint(_) => Plan::IdPoint,
            Access::IdRange { .. } => Plan::IdRange,
            Access::Index { index, .. } | Access::Near { index, .. } => Plan::Index(index.clone()),
        }
    }

    pub fn sorted(&self) -> bool {
        matches!(
            self,
            Access::Index { sorted: true, .. } | Access::IdRange { sorted: true, .. }
        )
    }

    /// The collection in `$natural` order, either way.
    pub fn natural(reverse: bool) -> Access {
        if reverse {
            Access::CollectionBackward
        } else {
            Access::Collection
        }
    }
}

/// The `_id` index as an index specification, to compute bounds on the primary key order
/// (a document's key is exactly what a unique ascending index on `_id` would hold).
fn id_spec() -> &'static mangrove_query::IndexSpec {
    static SPEC: std::sync::OnceLock<mangrove_query::IndexSpec> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| {
        mangrove_query::compile_index(
            &bson::doc! { "v": 2, "key": { "_id": 1 }, "name": "_id_", "unique": true },
        )
        .expect("the _id index specification is valid")
    })
}

/// A sort specification as `(path, descending)` pairs, or `None` for one an index cannot serve
/// (`$meta`).
pub fn sort_fields(spec: Option<&RawDocument>) -> Option<Vec<(String, bool)>> {
    let spec = spec?;
    let mut out = Vec::new();
    for item in spec.iter() {
        let (k, v) = item.ok()?;
        let n = crate::request::as_i64(v)?;
        out.push((k.as_str().to_owned(), n < 0));
    }
    (!out.is_empty()).then_some(out)
}

/// What a plan looked at: MongoDB's `totalKeysExamined` and `totalDocsExamined`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Examined {
    pub keys: u64,
    pub docs: u64,
}

/// A query's `hint`.
pub enum Hint {
    None,
    /// `{$natural: 1}` or `{$natural: -1}` (reverse); also a `$natural` sort.
    Natural {
        reverse: bool,
    },
    Id,
    Index(Arc<IndexInfo>),
}

fn bad_hint() -> CommandError {
    CommandError::bad_value(
        "error processing query: planner returned error :: caused by :: hint provided does not correspond to an existing index",
    )
}

/// Resolves a `hint` (an index name or key pattern, or `{$natural: 1}`) against the
/// collection's indexes. A hint naming no index is an error, as in MongoDB; on a collection that
/// does not exist there is nothing to hint at, and nothing to find.
pub fn parse_hint(
    hint: Option<RawBsonRef<'_>>,
    coll: Option<&CollectionInfo>,
) -> CommandResult<Hint> {
    let Some(hint) = hint else {
        return Ok(Hint::None);
    };
    // A capped collection's `_id` index is a real index (see `capped.rs`).
    let id_hint = || match coll.and_then(crate::capped::id_index) {
        Some(index) => Hint::Index(index.clone()),
        None => Hint::Id,
    };
    let by_name = |name: &str| -> CommandResult<Hint> {
        if name == "_id_" {
            return Ok(id_hint());
        }
        match coll {
            None => Ok(Hint::None),
            Some(c) => c
                .index(name)
                .filter(|i| !is_hidden(i))
                .cloned()
                .map(Hint::Index)
                .ok_or_else(bad_hint),
        }
    };
    match hint {
        RawBsonRef::String(name) => by_name(name),
        RawBsonRef::Document(spec) if spec.is_empty() => Ok(Hint::None),
        RawBsonRef::Document(spec) => {
            if let Some(direction) = spec.get("$natural").ok().flatten() {
                let reverse = crate::request::as_i64(direction).is_some_and(|n| n < 0);
                return Ok(Hint::Natural { reverse });
            }
            let pattern = Document::try_from(spec).map_err(|_| bad_hint())?;
            let is_id = pattern.len() == 1
                && pattern.get("_id").is_some_and(|v| {
                    matches!(v, Bson::Int32(1) | Bson::Int64(1) | Bson::Double(_))
                });
            if is_id {
                return Ok(id_hint());
            }
            match coll {
                None => Ok(Hint::None),
                Some(c) => c
                    .indexes
                    .iter()
                    .find(|i| same_pattern(&i.key.key_pattern, &pattern) && !is_hidden(i))
                    .cloned()
                    .map(Hint::Index)
                    .ok_or_else(bad_hint),
            }
        }
        _ => Err(CommandError::bad_value(
            "hint must be a string (an index name) or an object (a key pattern)",
        )),
    }
}

/// Key patterns match field by field, with numerically equal directions (1 and 1.0).
fn same_pattern(a: &Document, b: &Document) -> bool {
    let dir = |v: &Bson| match v {
        Bson::Int32(n) => (*n as f64).signum(),
        Bson::Int64(n) => (*n as f64).signum(),
        Bson::Double(n) => n.signum(),
        _ => 0.0,
    };
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|((ka, va), (kb, vb))| ka == kb && dir(va) == dir(vb))
}

/// Picks the access path: a hint decides; else an `_id` equality is a point lookup; else the
/// index with the most selective bounds (equality fields count double); else a collection scan.
pub fn choose(
    view: &dyn ReadView,
    coll: &CollectionInfo,
    filter: &Filter,
    raw: &RawDocument,
    hint: &Hint,
    sort: Option<&[(String, bool)]>,
) -> CommandResult<Access> {
    let access = choose_access(view, coll, filter, raw, hint, sort)?;
    crate::op_stats::note_plan(|| access.plan());
    Ok(access)
}

/// [`choose`] without noting the plan as the command's: for reads besides the command's own
/// (the collections its joins read).
pub(crate) fn choose_access(
    view: &dyn ReadView,
    coll: &CollectionInfo,
    filter: &Filter,
    raw: &RawDocument,
    hint: &Hint,
    sort: Option<&[(String, bool)]>,
) -> CommandResult<Access> {
    let sort = sort.unwrap_or(&[]);
    // `$text` is answered by the text index, whatever the hint (text_access.rs).
    if let Some((index, bounds)) = crate::text_access::access(coll, filter)? {
        return Ok(Access::Index {
            index,
            bounds: Arc::new(bounds),
            multikey: false,
            sorted: false,
            reverse: false,
        });
    }
    // `$near` needs a geo index: nothing else orders by distance.
    let hinted_index = match hint {
        Hint::Index(i) => Some(i),
        _ => None,
    };
    if let Some((index, plan)) = crate::geo_near::near_access(coll, filter, hinted_index)? {
        let plan = Arc::new(plan);
        return Ok(Access::Near { index, plan });
    }
    if let Some(access) = hinted(view, coll, filter, raw, hint, sort)? {
        return Ok(access);
    }
    // `_id` keys are binary: under a collation that equates "a" and "A" they would miss
    // matches; an index serves only under its own collation (see `serves_collation`). An
    // `_id` holding no string is keyed alike under every collation.
    // The collection's keys serve a point lookup under the collation they were encoded with
    // (binary for most collections), like the `_id` index in mongod.
    let keyed_by_id = !crate::capped::keyed_by_insertion(coll);
    if keyed_by_id
        && let Some(id) = filter.id_equality()
        && (!holds_string(id.as_raw_bson_ref()) || id_keys_serve(coll))
    {
        return Ok(Access::IdPoint(doc_key(coll, id.as_raw_bson_ref())));
    }
    if mangrove_query::collation_active() {
        return Ok(match best_index(view, coll, filter, raw, sort)? {
            Some((index, bounds, multikey)) => index_access(index, bounds, multikey, sort),
            None => sort_order_access(view, coll, filter, raw, sort)?,
        });
    }
    // `_id` ranges and `$in` lists walk the collection's own key order (binary keys only: the
    // bounds are binary; a capped collection's key order is insertion order).
    let id_bounds = index_bounds(filter, raw, id_spec(), false, false)
        .filter(|_| keyed_by_id && !ids_collated(coll));
    let best = best_index(view, coll, filter, raw, sort)?;
    if let Some(bounds) = id_bounds
        && best
            .as_ref()
            .is_none_or(|(_, b, _)| bounds.score >= b.score)
    {
        return Ok(id_access(bounds, sort));
    }
    if let Some((index, bounds, multikey)) = best {
        return Ok(index_access(index, bounds, multikey, sort));
    }
    sort_order_access(view, coll, filter, raw, sort)
}

/// An index walk over `bounds`, in the direction that gives `sort` if it can.
fn index_access(
    index: &Arc<IndexInfo>,
    bounds: IndexBounds,
    multikey: bool,
    sort: &[(String, bool)],
) -> Access {
    let direction = bounds.sort_direction(&index.key, sort, multikey);
    Access::Index {
        index: index.clone(),
        bounds: Arc::new(bounds),
        multikey,
        sorted: direction.is_some(),
        reverse: direction == Some(true),
    }
}

/// A walk of the collection's `_id` order over `bounds`, in the direction that gives `sort` if
/// it can.
fn id_access(bounds: IndexBounds, sort: &[(String, bool)]) -> Access {
    let direction = bounds.sort_direction(id_spec(), sort, false);
    Access::IdRange {
        bounds: Arc::new(bounds),
        sorted: direction.is_some(),
        reverse: direction == Some(true),
    }
}

/// The access path a hint decides, if there is a hint.
fn hinted(
    view: &dyn ReadView,
    coll: &CollectionInfo,
    filter: &Filter,
    raw: &RawDocument,
    hint: &Hint,
    sort: &[(String, bool)],
) -> CommandResult<Option<Access>> {
    Ok(Some(match hint {
        Hint::Natural { reverse } => Access::natural(*reverse),
        Hint::Id if !id_keys_serve(coll) => Access::Collection,
        Hint::Id => match filter.id_equality() {
            Some(id) => Access::IdPoint(doc_key(coll, id.as_raw_bson_ref())),
            None => Access::Collection,
        },
        // A hinted index of another collation cannot bound the query; the scan answers it.
        Hint::Index(index) if !serves_collation(index) => Access::Collection,
        Hint::Index(index) => {
            let multikey = view.index_multikey(index)?;
            match index_bounds(filter, raw, &index.key, true, multikey) {
                Some(bounds) => index_access(index, bounds, multikey, sort),
                None => Access::Collection,
            }
        }
        Hint::None => return Ok(None),
    }))
}

/// Whether `coll`'s keys equate strings as the running command does: both binary, or both
/// under the same collation.
fn id_keys_serve(coll: &CollectionInfo) -> bool {
    id_collation(coll) == mangrove_query::active_collation()
}

/// Whether `v` is or contains a string (symbols too), which a collation may equate with another.
fn holds_string(v: RawBsonRef<'_>) -> bool {
    match v {
        RawBsonRef::String(_) | RawBsonRef::Symbol(_) => true,
        RawBsonRef::Document(d) => d.iter().any(|e| e.map_or(true, |(_, v)| holds_string(v))),
        RawBsonRef::Array(a) => a.into_iter().any(|v| v.map_or(true, holds_string)),
        _ => false,
    }
}

/// Whether the planner may choose `index` for the running command: it is not hidden, and it
/// orders and equates strings as the command's collation does.
fn serves_collation(index: &IndexInfo) -> bool {
    !is_hidden(index) && same_collation(index)
}

/// A hidden index (`hidden: true`, set at creation or by `collMod`) is kept up to date but
/// never chosen, nor hinted, as in mongod.
fn is_hidden(index: &IndexInfo) -> bool {
    matches!(index.spec.get("hidden"), Some(Bson::Boolean(true)))
}

/// An index with a collation serves queries under that collation only, and one without, only
/// binary comparisons (mongod also lets a collated index serve non-string bounds; Mangrove does
/// not yet).
fn same_collation(index: &IndexInfo) -> bool {
    index.key.collation.as_deref() == mangrove_query::active_collation().as_ref()
}

/// The secondary index with the most selective bounds for `filter`, with its bounds and
/// multikey flag.
fn best_index<'c>(
    view: &dyn ReadView,
    coll: &'c CollectionInfo,
    filter: &Filter,
    raw: &RawDocument,
    sort: &[(String, bool)],
) -> CommandResult<Option<(&'c Arc<IndexInfo>, IndexBounds, bool)>> {
    let mut best: Option<(&Arc<IndexInfo>, IndexBounds, bool)> = None;
    for index in coll.indexes.iter().filter(|i| serves_collation(i)) {
        // Cheap: most filters give no bounds at all, and then the flag is never read.
        if index_bounds(filter, raw, &index.key, false, true).is_none() {
            continue;
        }
        let multikey = view.index_multikey(index)?;
        let Some(bounds) = index_bounds(filter, raw, &index.key, false, multikey) else {
            continue;
        };
        // Ties go to an index that also gives the sort order, then to the one likely to hold
        // fewer entries: unique, then partial, then sparse.
        let rank = |i: &IndexInfo, b: &IndexBounds, m: bool| {
            (
                b.sort_direction(&i.key, sort, m).is_some(),
                i.key.unique,
                i.key.partial.is_some(),
                i.key.sparse,
            )
        };
        let better = match &best {
            None => true,
            Some((b, bb, bm)) => {
                bounds.score > bb.score
                    || (bounds.score == bb.score
                        && rank(index, &bounds, multikey) > rank(b, bb, *bm))
            }
        };
        if better {
            best = Some((index, bounds, multikey));
        }
    }
    Ok(best)
}

/// When no index narrows the filter: one that gives the sort order still saves the blocking
/// sort (and with a limit, most of the scan), else a collection scan.
fn sort_order_access(
    view: &dyn ReadView,
    coll: &CollectionInfo,
    filter: &Filter,
    raw: &RawDocument,
    sort: &[(String, bool)],
) -> CommandResult<Access> {
    // Sparse and partial indexes may lack documents.
    for index in coll.indexes.iter().filter(|i| serves_collation(i)) {
        let geo = index.key.fields.iter().any(|f| f.kind.is_geo());
        if index.key.sparse || index.key.partial.is_some() || geo || sort.is_empty() {
            continue;
        }
        let multikey = view.index_multikey(index)?;
        if let Some(bounds) = index_bounds(filter, raw, &index.key, true, multikey)
            && bounds.sort_direction(&index.key, sort, multikey).is_some()
        {
            return Ok(index_access(index, bounds, multikey, sort));
        }
    }
    // The collection itself is in `_id` order, either way (a capped one: insertion order).
    if !crate::capped::keyed_by_insertion(coll)
        && !mangrove_query::collation_active()
        && !ids_collated(coll)
        && let Some(bounds) = index_bounds(filter, raw, id_spec(), true, false)
        && bounds.sort_direction(id_spec(), sort, false).is_some()
    {
        return Ok(id_access(bounds, sort));
    }
    Ok(Access::Collection)
}

/// A resumable walk over an index's intervals that fetches each document once, only when it is
/// asked for: a query with a small limit reads few entries and documents.
pub struct IndexWalk {
    pub index: Arc<IndexInfo>,
    intervals: Vec<KeyInterval>,
    /// Backward: intervals from last to first, each from its top.
    reverse: bool,
    pos: usize,
    after: Option<DocKey>,
    /// Entries read from the engine, not yet consumed: (entry key, document key).
    pending: VecDeque<(DocKey, DocKey)>,
    /// Entries read per call into the engine; grows as the walk goes on.
    chunk: usize,
    /// Documents already produced: a multikey index has several entries per document.
    seen: HashSet<DocKey>,
}

impl IndexWalk {
    pub fn new(index: Arc<IndexInfo>, bounds: &IndexBounds, reverse: bool) -> IndexWalk {
        let mut intervals = bounds.intervals.clone();
        if reverse {
            intervals.reverse();
        }
        IndexWalk {
            index,
            intervals,
            reverse,
            pos: 0,
            after: None,
            pending: VecDeque::new(),
            chunk: 16,
            seen: HashSet::new(),
        }
    }

    /// The next document the index reaches (not yet filtered), or `None` at the end.
    pub fn next_doc(
        &mut self,
        view: &dyn ReadView,
        coll: &CollectionInfo,
        examined: &mut Examined,
    ) -> CommandResult<Option<(DocKey, StoredDoc)>> {
        loop {
            while let Some((_, target)) = self.pending.pop_front() {
                examined.keys += 1;
                if examined.keys.is_multiple_of(DEADLINE_EVERY) {
                    check_deadline()?;
                }
                if !self.seen.insert(target.clone()) {
                    continue;
                }
                examined.docs += 1;
                // An entry always has its document in the same snapshot; tolerate a missing
                // one rather than fail the read.
                if let Some(doc) = view.get(coll, &target)? {
                    return Ok(Some((target, doc)));
                }
            }
            if self.pos >= self.intervals.len() {
                return Ok(None);
            }
            let entries = view.index_scan(
                &self.index,
                &self.intervals[self.pos],
                self.after.as_ref(),
                self.chunk,
                self.reverse,
            )?;
            self.chunk = (self.chunk * 4).min(INDEX_CHUNK);
            match entries.last() {
                Some((last, _)) => self.after = Some(last.clone()),
                None => {
                    self.pos += 1;
                    self.after = None;
                }
            }
            self.pending.extend(entries);
        }
    }
}

/// Visits every document matching `filter` along `access`, until `visit` breaks. Collection
/// scans visit under the engine's read lock, so `visit` must not call into the engine.
pub fn for_each_match(
    view: &dyn ReadView,
    coll: &CollectionInfo,
    access: &Access,
    filter: &Filter,
    examined: &mut Examined,
    visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
) -> CommandResult<()> {
    let before = *examined;
    let result = visit_matches(view, coll, access, filter, examined, visit);
    crate::op_stats::note_examined(examined.keys - before.keys, examined.docs - before.docs);
    result
}

/// [`for_each_match`] for a caller whose answer does not depend on the order of the documents
/// (a count; distinct values, which it sorts): a collection scan walks the collection's key
/// order, reading each document once, where `$natural` order may look each one up
/// ([`walk_natural`]).
pub fn for_each_match_any_order(
    view: &dyn ReadView,
    coll: &CollectionInfo,
    access: &Access,
    filter: &Filter,
    examined: &mut Examined,
    visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
) -> CommandResult<()> {
    if !matches!(access, Access::Collection | Access::CollectionBackward) {
        return for_each_match(view, coll, access, filter, examined, visit);
    }
    let before = examined.docs;
    let result = scan_all(view, coll, None, filter, examined, visit);
    crate::op_stats::note_examined(0, examined.docs - before);
    result
}

fn visit_matches(
    view: &dyn ReadView,
    coll: &CollectionInfo,
    access: &Access,
    filter: &Filter,
    examined: &mut Examined,
    visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
) -> CommandResult<()> {
    match access {
        Access::IdPoint(key) => {
            examined.keys += 1;
            if let Some(doc) = view.get(coll, key)? {
                examined.docs += 1;
                if filter.try_matches(&doc)? {
                    let _ = visit(key, &doc);
                }
            }
        }
        Access::Collection => scan_all(view, coll, Some(false), filter, examined, visit)?,
        Access::CollectionBackward => scan_all(view, coll, Some(true), filter, examined, visit)?,
        Access::IdRange {
            bounds, reverse, ..
        } => {
            let intervals: Box<dyn Iterator<Item = &KeyInterval>> = if *reverse {
                Box::new(bounds.intervals.iter().rev())
            } else {
                Box::new(bounds.intervals.iter())
            };
            for interval in intervals {
                let mut failed = None;
                let mut stopped = false;
                view.scan_range(coll, interval, None, *reverse, &mut |key, doc| {
                    examined.keys += 1;
                    examined.docs += 1;
                    let flow = scan_step(examined.docs, filter, key, doc, visit, &mut failed);
                    stopped = flow.is_break();
                    flow
                })?;
                if let Some(e) = failed {
                    return Err(e);
                }
                if stopped {
                    return Ok(());
                }
            }
        }
        Access::Index {
            index,
            bounds,
            reverse,
            ..
        } => {
            let mut walk = IndexWalk::new(index.clone(), bounds, *reverse);
            while let Some((key, doc)) = walk.next_doc(view, coll, examined)? {
                if filter.try_matches(&doc)? && visit(&key, &doc).is_break() {
                    return Ok(());
                }
            }
        }
        Access::Near { index, plan } => {
            walk_near(view, coll, index, plan, filter, examined, visit)?
        }
    }
    Ok(())
}

/// A `$near` walk (`geo_near.rs`), nearest first, counted into `examined`.
fn walk_near(
    view: &dyn ReadView,
    coll: &CollectionInfo,
    index: &Arc<IndexInfo>,
    plan: &crate::geo_near::NearPlan,
    filter: &Filter,
    examined: &mut Examined,
    visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
) -> CommandResult<()> {
    let walk = crate::geo_near::NearWalk {
        view,
        coll,
        index,
        plan,
        filter,
        deadline: &check_deadline,
    };
    let mut counts = crate::geo_near::Counts::default();
    let result = crate::geo_near::walk_near(&walk, &mut counts, visit);
    examined.keys += counts.keys;
    examined.docs += counts.docs;
    result
}

/// Whether a collection's own key order is its natural order: a capped or time-series
/// collection keys its documents by insertion number, a clustered one is ordered by its cluster
/// key (as mongod's).
/// Any other collection keeps its natural order beside its documents (the storage engine's
/// `scan_natural`).
pub fn keyed_in_natural_order(coll: &CollectionInfo) -> bool {
    crate::capped::keyed_by_insertion(coll) || coll.options.contains_key("clusteredIndex")
}

/// Walks the whole collection in `$natural` order (backward if `reverse`), past the position
/// `resume` that an earlier walk gave: `visit` gets each document's position (what to resume
/// after), its key and the document.
pub fn walk_natural(
    view: &dyn ReadView,
    coll: &CollectionInfo,
    resume: Option<&DocKey>,
    reverse: bool,
    visit: &mut dyn FnMut(&DocKey, &DocKey, &StoredDoc) -> ControlFlow<()>,
) -> Result<(), mangrove_storage::StorageError> {
    if keyed_in_natural_order(coll) {
        let all = (std::ops::Bound::Unbounded, std::ops::Bound::Unbounded);
        view.scan_range(coll, &all, resume, reverse, &mut |key, doc| {
            visit(key, key, doc)
        })
    } else {
        view.scan_natural(coll, resume, reverse, visit)
    }
}

/// The whole collection through `filter` to `visit`: in `$natural` order for `Some(reverse)`,
/// in the collection's key order (one read per document) for `None`, any order will do.
fn scan_all(
    view: &dyn ReadView,
    coll: &CollectionInfo,
    natural: Option<bool>,
    filter: &Filter,
    examined: &mut Examined,
    visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
) -> CommandResult<()> {
    let mut failed = None;
    let mut step = |_: &DocKey, key: &DocKey, doc: &StoredDoc| {
        examined.docs += 1;
        scan_step(examined.docs, filter, key, doc, visit, &mut failed)
    };
    match natural {
        Some(reverse) => walk_natural(view, coll, None, reverse, &mut step)?,
        None => view.scan(coll, None, &mut |key, doc| step(key, key, doc))?,
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One document of a scan: the deadline (every few hundred documents), the filter, then
/// `visit`. An error is kept in `failed` and breaks the scan.
fn scan_step(
    visited: u64,
    filter: &Filter,
    key: &DocKey,
    doc: &StoredDoc,
    visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    failed: &mut Option<CommandError>,
) -> ControlFlow<()> {
    if visited.is_multiple_of(DEADLINE_EVERY)
        && let Err(e) = check_deadline()
    {
        *failed = Some(e);
        return ControlFlow::Break(());
    }
    match filter.try_matches(doc) {
        Ok(true) => visit(key, doc),
        Ok(false) => ControlFlow::Continue(()),
        Err(e) => {
            *failed = Some(e.into());
            ControlFlow::Break(())
        }
    }
}

/// The plan's input stage as `explain` shows it, in MongoDB's stage names.
pub fn plan_stage(access: &Access, filter_doc: &Document) -> Document {
    match access {
        Access::Collection | Access::CollectionBackward => {
            let mut d = doc! { "stage": "COLLSCAN" };
            if !filter_doc.is_empty() {
                d.insert("filter", filter_doc.clone());
            }
            let backward = matches!(access, Access::CollectionBackward);
            d.insert("direction", if backward { "backward" } else { "forward" });
            d
        }
        Access::IdPoint(_) => doc! { "stage": "IDHACK" },
        Access::IdRange {
            bounds, reverse, ..
        } => fetch_ixscan(filter_doc, id_spec(), bounds, false, *reverse),
        Access::Index {
            index,
            bounds,
            multikey,
            reverse,
            ..
        } => match index.key.text.is_some() {
            true => crate::text_access::stage(&index.key, bounds, filter_doc),
            false => fetch_ixscan(filter_doc, &index.key, bounds, *multikey, *reverse),
        },
        Access::Near { index, plan } => crate::geo_near::plan_stage(index, plan),
    }
}

/// FETCH over IXSCAN, as `explain` shows an index walk (the `_id` order included).
fn fetch_ixscan(
    filter_doc: &Document,
    spec: &mangrove_query::IndexSpec,
    bounds: &IndexBounds,
    multikey: bool,
    reverse: bool,
) -> Document {
    let mut fetch = doc! { "stage": "FETCH" };
    if !filter_doc.is_empty() {
        fetch.insert("filter", filter_doc.clone());
    }
    fetch.insert(
        "inputStage",
        doc! {
            "stage": "IXSCAN",
            "keyPattern": spec.key_pattern.clone(),
            "indexName": spec.name.clone(),
            "isMultiKey": multikey,
            "isUnique": spec.unique,
            "isSparse": spec.sparse,
            "isPartial": spec.partial.is_some(),
            "indexVersion": 2,
            "direction": if reverse { "backward" } else { "forward" },
            "indexBounds": bounds.display.clone(),
        },
    );
    fetch
}

/// `find`'s `min` and `max`, as mongod 7.0 takes them: bounds on the hinted index, `min`
/// inclusive and `max` exclusive, both naming exactly the index's fields in order. They become
/// one interval of the index's key encoding (the collection's own `_id` order for the `_id`
/// index); the filter still applies to what the walk reaches.
pub fn min_max_access(
    view: &dyn ReadView,
    hint: &Hint,
    min: Option<&RawDocument>,
    max: Option<&RawDocument>,
    sort: Option<&[(String, bool)]>,
) -> CommandResult<Access> {
    let sort = sort.unwrap_or(&[]);
    let spec = match hint {
        Hint::Index(index) => &index.key,
        Hint::Id => id_spec(),
        Hint::Natural { .. } => {
            return Err(CommandError::bad_value(
                "min and max are incompatible with $natural",
            ));
        }
        Hint::None => {
            return Err(CommandError::new(
                51173,
                "When using min()/max() a hint of which index to use must be provided",
            ));
        }
    };
    let lower = min.map(|m| min_max_key(spec, m)).transpose()?;
    let upper = max.map(|m| min_max_key(spec, m)).transpose()?;
    if let (Some(l), Some(u)) = (&lower, &upper)
        && l >= u
    {
        return Err(CommandError::new(
            51175,
            "The value provided for min() does not come before the value provided for max() in the hint's key pattern",
        ));
    }
    let display = min_max_display(spec, min, max);
    let interval = (
        lower.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Included),
        upper.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
    );
    let bounds = IndexBounds {
        intervals: vec![interval],
        display,
        score: 0,
        eq_prefix: 0,
    };
    let access = match hint {
        // A hinted index of another collation cannot bound the query; the scan answers it.
        Hint::Index(index) if !serves_collation(index) => Access::Collection,
        Hint::Index(index) => {
            let multikey = view.index_multikey(index)?;
            index_access(index, bounds, multikey, sort)
        }
        _ => id_access(bounds, sort),
    };
    // The profiler and slow-query log show the plan, as for a planned read.
    crate::op_stats::note_plan(|| access.plan());
    Ok(access)
}

/// A `min` or `max` document as a key of `spec`: its fields must be the key pattern's, in
/// order (mongod's 51174 otherwise).
fn min_max_key(spec: &mangrove_query::IndexSpec, bound: &RawDocument) -> CommandResult<Vec<u8>> {
    let inconsistent =
        || CommandError::new(51174, "The index chosen is not consistent with min/max");
    let mut values = Vec::new();
    for item in bound.iter() {
        let (name, value) = item.map_err(|_| inconsistent())?;
        values.push((name, value));
    }
    let same_fields = values.len() == spec.fields.len()
        && values
            .iter()
            .zip(&spec.fields)
            .all(|((name, _), field)| name.as_str() == field.path);
    if !same_fields {
        return Err(inconsistent());
    }
    let values: Vec<RawBsonRef<'_>> = values.into_iter().map(|(_, v)| v).collect();
    Ok(spec.encode_values(&values))
}

/// `explain`'s `indexBounds` for a `min`/`max` walk: each field from its `min` value
/// (inclusive) to its `max` value (exclusive), MinKey / MaxKey where a side is absent. Only
/// the first field's range is exact for a compound index; the rest are shown as given.
fn min_max_display(
    spec: &mangrove_query::IndexSpec,
    min: Option<&RawDocument>,
    max: Option<&RawDocument>,
) -> Document {
    let value = |d: Option<&RawDocument>, field: &str, absent: &str| -> String {
        d.and_then(|d| d.get(field).ok().flatten())
            .and_then(|v| Bson::try_from(v).ok())
            .map_or(absent.to_string(), |v| v.to_string())
    };
    let mut out = Document::new();
    for field in &spec.fields {
        let range = format!(
            "[{}, {})",
            value(min, &field.path, "MinKey"),
            value(max, &field.path, "MaxKey")
        );
        out.insert(field.path.clone(), vec![Bson::String(range)]);
    }
    out
}

/// What `returnKey` shows for a document the plan reached along `access`: the index entry's
/// fields and values (for a multikey index, the first of the document's keys, in walk order,
/// that lies in the bounds); `{_id: …}` along the `_id` order; `{}` for a collection scan,
/// which reads no index (as mongod).
pub fn returned_key(access: &Access, doc: &RawDocument) -> Document {
    match access {
        Access::Collection | Access::CollectionBackward | Access::Near { .. } => Document::new(),
        Access::IdPoint(_) | Access::IdRange { .. } => {
            match doc.get("_id").ok().flatten().map(Bson::try_from) {
                Some(Ok(id)) => doc! { "_id": id },
                _ => Document::new(),
            }
        }
        Access::Index {
            index,
            bounds,
            reverse,
            ..
        } => {
            let mut keys = index.key.keys(doc).unwrap_or_default();
            if *reverse {
                keys.reverse();
            }
            let inside = |k: &Vec<u8>| bounds.intervals.iter().any(|i| in_interval(i, k));
            match keys.iter().find(|k| inside(k)).or(keys.first()) {
                Some(key) => index.key.key_value(doc, key),
                None => Document::new(),
            }
        }
    }
}

fn in_interval(interval: &KeyInterval, key: &[u8]) -> bool {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let above = match &interval.0 {
        Included(l) => key >= l.as_slice(),
        Excluded(l) => key > l.as_slice(),
        Unbounded => true,
    };
    let below = match &interval.1 {
        Included(u) => key <= u.as_slice(),
        Excluded(u) => key < u.as_slice(),
        Unbounded => true,
    };
    above && below
}

/// `showRecordId`'s `$recordId` for the document stored under `key`. A capped collection is
/// keyed by insertion number, which is its record id as in mongod. Other collections are keyed
/// by `_id`, so their record id is a stable positive hash of that key (FNV-1a): the same
/// document always shows the same id, but ids do not follow insertion order.
pub fn record_id(capped: bool, key: &DocKey) -> i64 {
    if capped {
        return crate::capped::number_of_key(key) as i64;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in &key.0 {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    ((hash & i64::MAX as u64) as i64).max(1)
}

#[cfg(test)]
mod id_key_tests {
    use super::*;
    use bson::raw::RawDocument;

    fn collation() -> Document {
        doc! { "locale": "en", "strength": 2 }
    }

    /// Creates `ns` with `options` in a fresh in-memory engine and returns its catalog entry.
    fn collection(options: Document) -> CollectionInfo {
        let engine = mangrove_storage::Engine::in_memory();
        let mut txn = engine.begin();
        txn.create_collection("db.c", options).unwrap()
    }

    fn key(coll: &CollectionInfo, id: &Document) -> DocKey {
        let raw = bson::RawDocumentBuf::try_from(id).unwrap();
        let raw: &RawDocument = &raw;
        doc_key(coll, raw.get("_id").unwrap().unwrap())
    }

    #[test]
    fn marked_collections_key_strings_under_their_collation() {
        let coll = collection(doc! { "collation": collation(), COLLATED_ID_OPTION: true });
        assert!(ids_collated(&coll));
        // Equal under strength 2, nested strings included.
        assert_eq!(
            key(&coll, &doc! {"_id": "a"}),
            key(&coll, &doc! {"_id": "A"})
        );
        let nested = |s: &str| doc! {"_id": {"k": [s, 1]}};
        assert_eq!(key(&coll, &nested("x")), key(&coll, &nested("X")));
        assert_ne!(
            key(&coll, &doc! {"_id": "a"}),
            key(&coll, &doc! {"_id": "b"})
        );
        // Values without strings keep their binary key, so either encoding finds them.
        let id = doc! {"_id": 7};
        let raw = bson::RawDocumentBuf::try_from(&id).unwrap();
        assert_eq!(key(&coll, &id), key_of(raw.get("_id").unwrap().unwrap()));
    }

    #[test]
    fn collections_without_the_marker_keep_binary_keys() {
        // As a collection created with a collation before `_id` keys were collated.
        let old = collection(doc! { "collation": collation() });
        assert!(!ids_collated(&old));
        assert_ne!(key(&old, &doc! {"_id": "a"}), key(&old, &doc! {"_id": "A"}));
        let id = doc! {"_id": "a"};
        let raw = bson::RawDocumentBuf::try_from(&id).unwrap();
        assert_eq!(key(&old, &id), key_of(raw.get("_id").unwrap().unwrap()));
        // The marker is never shown.
        let new = collection(doc! { "collation": collation(), COLLATED_ID_OPTION: true });
        assert_eq!(shown_options(&new), doc! { "collation": collation() });
    }
}
