//! `find`: parse the query, choose an access path, and answer the first batch, leaving the
//! rest in a cursor (streamed from the snapshot, or computed at once when it must be).

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::time::Instant;

use bson::RawDocumentBuf;
use bson::raw::RawDocument;
use mangrove_query::{Filter, Projection, SortSpec, with_collation, with_let};
use mangrove_storage::{CollectionInfo, DocKey, ReadView, Snapshot, StoredDoc, Txn};

use crate::access::{
    Access, Examined, Hint, IndexWalk, choose, deadline_of, for_each_match, min_max_access,
    parse_hint, sort_fields, with_deadline,
};
use crate::cursor::{BatchDoc, Cursor, IndexScanState, ScanState, Shape, Source, Tail};
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;
use crate::{Counters, Shared};

use super::Reply;
use super::args::{collation_for, disk_use, non_negative};
use super::collections::read_target;
use super::names::validate_db_name;
use super::reply::{cursor_reply, first_batch, txn_owner};

const FIND_FIELDS: &[&str] = &[
    "filter",
    "sort",
    "projection",
    "hint",
    "skip",
    "limit",
    "batchSize",
    "singleBatch",
    "maxTimeMS",
    "readConcern",
    "max",
    "min",
    "returnKey",
    "showRecordId",
    "tailable",
    "oplogReplay",
    "noCursorTimeout",
    "awaitData",
    "allowPartialResults",
    "collation",
    "allowDiskUse",
    "let",
    "readOnce",
    "term",
];

/// `min` / `max` (an empty document is no bound, as in mongod).
fn index_bound<'r>(req: &Request<'r>, field: &str) -> CommandResult<Option<&'r RawDocument>> {
    Ok(req.opt_doc(field)?.filter(|d| !d.is_empty()))
}

/// `Some(reverse)` for a sort on `$natural` alone; an error for `$natural` beside other fields.
pub(super) fn natural_sort(spec: &RawDocument) -> CommandResult<Option<bool>> {
    let Some(direction) = spec.get("$natural").ok().flatten() else {
        return Ok(None);
    };
    if spec.iter().count() != 1 {
        return Err(CommandError::bad_value(
            "$natural sort cannot be combined with other sort fields",
        ));
    }
    match crate::request::as_i64(direction) {
        Some(1) => Ok(Some(false)),
        Some(-1) => Ok(Some(true)),
        _ => Err(CommandError::new(
            15975,
            "$sort key ordering must be 1 (for ascending) or -1 (for descending)",
        )),
    }
}

/// `find`, or the oplog's own find on `local.oplog.rs` (which reads the log, off the async
/// threads, and may wait for commits).
pub(super) async fn find_or_oplog(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&Txn>,
    at: Option<Snapshot>,
) -> CommandResult<Reply> {
    if super::oplog_find::is_oplog(req) && txn.is_none() {
        return super::oplog_find::find(shared, req).await;
    }
    if req.db == "local"
        && matches!(
            req.command_value(),
            Some(bson::raw::RawBsonRef::String("system.replset"))
        )
    {
        return replset_find(shared, req);
    }
    find(shared, req, txn, at)
}

/// `local.system.replset`: the set's configuration document (`repl_set.rs`), which tools read
/// when `replSetGetConfig` is not at hand.
fn replset_find(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    let config = super::repl_set::config_document(shared);
    let raw = RawDocumentBuf::try_from(&config).map_err(super::args::internal)?;
    let matches = match req.opt_doc("filter")? {
        Some(f) => Filter::parse(f)?.matches(&raw),
        None => true,
    };
    let batch: Vec<BatchDoc> = matches
        .then_some(BatchDoc::Owned(raw))
        .into_iter()
        .collect();
    Ok(Reply::Raw(cursor_reply(
        "local.system.replset",
        0,
        "firstBatch",
        &batch,
    )))
}

/// `at` is the snapshot a `snapshot` read concern chose; otherwise the read sees the latest
/// commit (or its transaction).
pub(super) fn find(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&Txn>,
    at: Option<Snapshot>,
) -> CommandResult<Reply> {
    let (snapshot, coll) = read_target(shared, req, txn, at)?;
    let collation = collation_for(req.opt_doc("collation")?, coll.as_ref())?;
    let deadline = deadline_of(req.opt_i64("maxTimeMS")?);
    let found = Found { snapshot, coll };
    with_deadline(deadline, || {
        with_collation(collation.as_ref(), || {
            find_with(shared, req, txn, found, collation.is_some())
        })
    })
}

/// The snapshot a find reads and the collection it found there (or in its transaction).
struct Found {
    snapshot: Snapshot,
    coll: Option<CollectionInfo>,
}

/// A find request's query and paging, parsed.
struct FindQuery<'r> {
    raw_filter: &'r RawDocument,
    /// A `$natural` sort (`Some(reverse)`): the collection's own order, either way.
    natural: Option<bool>,
    tail: Option<Tail>,
    filter: Filter,
    sort: Option<SortSpec>,
    projection: Option<Projection>,
    skip: u64,
    limit: Option<u64>,
    batch_size: Option<u64>,
    single_batch: bool,
    /// `min` / `max`: bounds on the hinted index (`access::min_max_access`).
    min: Option<&'r RawDocument>,
    max: Option<&'r RawDocument>,
    return_key: bool,
    show_record_id: bool,
    /// The `sort` as given, and where a blocking sort may spill (`allowDiskUse`) when it can
    /// continue lazily: without a collation, text score or `returnKey`/`showRecordId`.
    raw_sort: Option<&'r RawDocument>,
    spill: Option<std::sync::Arc<dyn mangrove_query::SpillStore>>,
}

impl FindQuery<'_> {
    /// Binds `$text` to the collection's text index, for the filter, projection and sort.
    fn bind_text(&mut self, coll: Option<&CollectionInfo>, ns: &str) -> CommandResult<()> {
        let (projection, sort) = (self.projection.as_mut(), self.sort.as_mut());
        crate::text_access::bind_find(coll, ns, &self.filter, projection, sort)
    }
}

/// The request's filter, sort, projection and paging, in the order mongod checks them.
fn parse_query<'r>(req: &Request<'r>, empty: &'r RawDocument) -> CommandResult<FindQuery<'r>> {
    let raw_filter = req.opt_doc("filter")?.unwrap_or(empty);
    let filter = with_let(req.opt_doc("let")?, || {
        Filter::parse(raw_filter).map_err(CommandError::from)
    })?;
    let sort_spec = req.opt_doc("sort")?;
    let natural = sort_spec.map(natural_sort).transpose()?.flatten();
    let sort = match sort_spec {
        Some(spec) if !spec.is_empty() && natural.is_none() => Some(SortSpec::parse(spec)?),
        _ => None,
    };
    let projection = match req.opt_doc("projection")? {
        Some(spec) if !spec.is_empty() => Some(Projection::parse(spec)?.with_filter(&filter)),
        _ => None,
    };
    let skip = non_negative(req, "skip")?.unwrap_or(0);
    let limit = non_negative(req, "limit")?.filter(|&l| l > 0);
    let batch_size = non_negative(req, "batchSize")?;
    let single_batch = req.opt_bool("singleBatch")?.unwrap_or(false);
    Ok(FindQuery {
        raw_filter,
        natural,
        tail: None,
        filter,
        sort,
        projection,
        skip,
        limit,
        batch_size,
        single_batch,
        min: index_bound(req, "min")?,
        max: index_bound(req, "max")?,
        return_key: req.opt_bool("returnKey")?.unwrap_or(false),
        show_record_id: req.opt_bool("showRecordId")?.unwrap_or(false),
        raw_sort: sort_spec,
        spill: None,
    })
}

/// `find` with its collation set; a collated query is answered at once (its cursor could not
/// keep the collation for `getMore`).
fn find_with(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&Txn>,
    found: Found,
    collated: bool,
) -> CommandResult<Reply> {
    req.check_fields(FIND_FIELDS)?;
    Counters::bump(&shared.counters.query, 1);
    let name = req.collection()?;
    validate_db_name(req.db)?;
    let ns = req.ns(name);
    let empty = RawDocumentBuf::new();
    let mut query = parse_query(req, &empty)?;
    query.spill = spill_store(shared, req, &query, collated)?;

    let Found { snapshot, coll } = found;
    let mut hint = parse_hint(req.get("hint"), coll.as_ref())?;
    query.tail = super::tailable::tail_request(req, coll.as_ref(), query.natural)?;
    if let Some(reverse) = query.natural.or(query.tail.map(|_| false)) {
        // A `$natural` sort, or a tailable cursor, walks the collection itself.
        hint = Hint::Natural { reverse };
    }
    query.bind_text(coll.as_ref(), &ns)?;
    let Some(coll) = coll else {
        return Ok(Reply::Raw(cursor_reply(&ns, 0, "firstBatch", &[])));
    };
    let view: &dyn ReadView = match txn {
        Some(txn) => txn,
        None => &snapshot,
    };
    let mut cursor = Cursor {
        ns,
        source: Source::Buffered(VecDeque::new()),
        projection: None,
        remaining: None,
        last_used: Instant::now(),
        txn: txn_owner(req, txn),
        time_left: crate::access::time_left(),
    };
    let (batch_size, single_batch) = (query.batch_size, query.single_batch);
    cursor.projection = query.projection.take();
    if super::views::is_view(&coll) {
        refuse_on_view(&query)?;
        cursor.source = Source::Buffered(view_matches(shared, view, &coll, &query)?);
    } else {
        let sort_by = sort_fields(req.opt_doc("sort")?).filter(|_| query.natural.is_none());
        let access = access_of(view, &coll, &query, &hint, sort_by.as_deref())?;
        let shape = shape_of(&query, &access, &coll, &mut cursor.projection);
        let in_memory = must_collect(&access, &query, txn.is_some() || collated);
        cursor.remaining = query.limit.filter(|_| !in_memory);
        let read = Read {
            shared,
            txn,
            snapshot,
            coll,
        };
        cursor.source = read.source(access, query, shape, in_memory)?;
    }
    if cursor.tail().is_some() {
        return super::tailable::first_batch(shared, cursor, batch_size);
    }
    first_batch(shared, cursor, batch_size, single_batch)
}

/// Where the query's blocking sort may spill: `allowDiskUse` allows it, and the cursor can go
/// on merging without the command (no collation) and without index keys or text scores.
fn spill_store(
    shared: &Shared,
    req: &Request<'_>,
    q: &FindQuery<'_>,
    collated: bool,
) -> CommandResult<Option<std::sync::Arc<dyn mangrove_query::SpillStore>>> {
    let spillable = !collated
        && !q.return_key
        && !q.show_record_id
        && q.sort.as_ref().is_some_and(|s| !s.needs_text_score());
    Ok(disk_use(shared, req)?.filter(|_| spillable))
}

/// How an explained find's blocking sort runs for its statistics: `None` when it is not run
/// (it sorts by text score, or returns index keys or record ids, which only the find's own
/// path gives), else where it may spill, as [`spill_store`] decides for the find.
pub(super) fn explained_sort_store(
    shared: &Shared,
    req: &Request<'_>,
    collated: bool,
) -> CommandResult<Option<Option<std::sync::Arc<dyn mangrove_query::SpillStore>>>> {
    let empty = RawDocumentBuf::new();
    let query = parse_query(req, &empty)?;
    let runnable = !query.return_key
        && !query.show_record_id
        && query.sort.as_ref().is_some_and(|s| !s.needs_text_score());
    if !runnable {
        return Ok(None);
    }
    Ok(Some(spill_store(shared, req, &query, collated)?))
}

/// The access path: the hinted index bounded by `min` / `max` when given, else the planner's.
fn access_of(
    view: &dyn ReadView,
    coll: &CollectionInfo,
    query: &FindQuery<'_>,
    hint: &Hint,
    sort_by: Option<&[(String, bool)]>,
) -> CommandResult<Access> {
    if query.min.is_some() || query.max.is_some() {
        return min_max_access(view, hint, query.min, query.max, sort_by);
    }
    choose(view, coll, &query.filter, query.raw_filter, hint, sort_by)
}

/// mongod runs a find on a view as an aggregation, which has no index keys or record ids to
/// show and no index to bound; Mangrove refuses these options there rather than ignore them.
fn refuse_on_view(query: &FindQuery<'_>) -> CommandResult<()> {
    let asked = [
        ("min", query.min.is_some()),
        ("max", query.max.is_some()),
        ("returnKey", query.return_key),
        ("showRecordId", query.show_record_id),
    ];
    match asked.iter().find(|(_, on)| *on) {
        Some((name, _)) => Err(CommandError::bad_value(format!(
            "find option '{name}' is not supported on a view"
        ))),
        None => Ok(()),
    }
}

/// The results' shape for `returnKey` / `showRecordId`, if either is asked; it takes over the
/// cursor's projection (see [`Shape`]).
fn shape_of(
    query: &FindQuery<'_>,
    access: &Access,
    coll: &CollectionInfo,
    projection: &mut Option<Projection>,
) -> Option<Shape> {
    if !query.return_key && !query.show_record_id {
        return None;
    }
    let projection = projection.take();
    Some(Shape {
        return_key: query.return_key.then(|| access.clone()),
        // With `returnKey` the documents are the keys alone, `$recordId` too left out (the
        // drivers' command-monitoring spec test expects exactly the keys).
        record_id: (query.show_record_id && !query.return_key)
            .then(|| crate::capped::keyed_by_insertion(coll)),
        // `returnKey` ignores the projection.
        projection: projection.filter(|_| !query.return_key),
    })
}

/// Whether the cursor's documents are all computed now rather than streamed (a point lookup
/// needs neither): when the access path does not give the sort's order, for a range of several
/// `_id` intervals, and when `at_once` says so: in a transaction (the cursor must need no live
/// transaction later) or under a collation (the cursor could not keep it for `getMore`).
fn must_collect(access: &Access, query: &FindQuery<'_>, at_once: bool) -> bool {
    !matches!(access, Access::IdPoint(_))
        && ((query.sort.is_some() && !access.sorted())
            || at_once
            || matches!(access, Access::Near { .. })
            || matches!(access, Access::IdRange { bounds, .. } if bounds.intervals.len() != 1))
}

/// A view's documents exist only as its pipeline's output: filter, sort and page them.
fn view_matches(
    shared: &Shared,
    view: &dyn ReadView,
    coll: &CollectionInfo,
    query: &FindQuery<'_>,
) -> CommandResult<VecDeque<BatchDoc>> {
    let mut docs = Vec::new();
    for d in super::views::view_docs(shared, view, coll)? {
        if query.filter.try_matches(&d)? {
            docs.push(d);
        }
    }
    if let Some(sort) = &query.sort {
        sort.sort_items(&mut docs, |d| d);
    }
    Ok(docs
        .into_iter()
        .skip(query.skip as usize)
        .take(query.limit.map_or(usize::MAX, |l| l as usize))
        .map(BatchDoc::Owned)
        .collect())
}

/// What a collection read works with: the reader's transaction (if any), the snapshot a
/// streamed cursor keeps, and the collection.
struct Read<'a> {
    shared: &'a Shared,
    txn: Option<&'a Txn>,
    snapshot: Snapshot,
    coll: CollectionInfo,
}

impl Read<'_> {
    /// The cursor's source along `access`: a point lookup, every match computed now
    /// (`in_memory`), or a scan of an index or of the collection streamed from the snapshot.
    fn source(
        self,
        access: Access,
        q: FindQuery<'_>,
        shape: Option<Shape>,
        in_memory: bool,
    ) -> CommandResult<Source> {
        let Read {
            shared,
            txn,
            snapshot,
            coll,
        } = self;
        let view: &dyn ReadView = match txn {
            Some(txn) => txn,
            None => &snapshot,
        };
        if let Access::IdPoint(key) = &access {
            // A point lookup: at most one document can match.
            let found = view
                .get(&coll, key)?
                .filter(|d| q.filter.matches(d) && q.skip == 0);
            let docs = found.into_iter().map(|d| (key.clone(), d)).collect();
            return Ok(Source::Buffered(shape_all(shape.as_ref(), docs)?));
        }
        if in_memory {
            let sort = q.sort.as_ref().filter(|_| !access.sorted());
            if let (Some(_), Some(store), Some(raw)) = (sort, &q.spill, q.raw_sort) {
                let limits = shared.params.query.limits();
                let runner = sort_runner(raw, q.skip, q.limit, limits, Some(store.clone()))?;
                return spilling_sort(runner, view, &coll, access, q.filter);
            }
            let docs = collect_matches(
                shared, view, &coll, &access, &q.filter, sort, q.skip, q.limit,
            )?;
            return Ok(Source::Buffered(shape_all(shape.as_ref(), docs)?));
        }
        if let Access::Index {
            index,
            bounds,
            reverse,
            ..
        } = access
        {
            return Ok(Source::Index(Box::new(IndexScanState {
                snapshot,
                coll,
                walk: IndexWalk::new(index, &bounds, reverse),
                filter: q.filter,
                skip: q.skip,
                shape,
                pending: VecDeque::new(),
            })));
        }
        let (range, reverse) = scan_range(&access);
        Ok(Source::Scan(Box::new(ScanState {
            snapshot,
            coll,
            range,
            reverse,
            after: None,
            filter: q.filter,
            skip: q.skip,
            shape,
            tail: q.tail,
        })))
    }
}

/// The key range and direction a collection scan walks for `access`.
fn scan_range(access: &Access) -> (Option<mangrove_query::KeyInterval>, bool) {
    match access {
        Access::IdRange {
            bounds, reverse, ..
        } => (bounds.intervals.first().cloned(), *reverse),
        Access::CollectionBackward => (None, true),
        _ => (None, false),
    }
}

/// Computed results, shaped (`returnKey`, `showRecordId`) if asked.
fn shape_all(
    shape: Option<&Shape>,
    docs: Vec<(DocKey, StoredDoc)>,
) -> CommandResult<VecDeque<BatchDoc>> {
    docs.into_iter()
        .map(|(key, doc)| match shape {
            Some(s) => s.apply(&key, &doc),
            None => Ok(BatchDoc::Stored(doc)),
        })
        .collect()
}

/// Every match in memory (sorted, if asked), bounded like mongod's 100 MB blocking-sort limit.
#[allow(clippy::too_many_arguments)]
fn collect_matches(
    shared: &Shared,
    view: &dyn ReadView,
    coll: &CollectionInfo,
    access: &Access,
    filter: &Filter,
    sort: Option<&SortSpec>,
    skip: u64,
    limit: Option<u64>,
) -> CommandResult<Vec<(DocKey, StoredDoc)>> {
    let max = shared.params.query.sort_bytes();
    let mut docs = Vec::new();
    let mut bytes = 0usize;
    let mut over = false;
    // Without a sort, a limit can stop the walk early.
    let enough = match (sort, limit) {
        (None, Some(l)) => Some(skip.saturating_add(l)),
        _ => None,
    };
    for_each_match(
        view,
        coll,
        access,
        filter,
        &mut Examined::default(),
        &mut |key, d| {
            bytes += d.as_bytes().len();
            if bytes > max {
                over = true;
                return ControlFlow::Break(());
            }
            docs.push((key.clone(), d.clone()));
            if enough.is_some_and(|n| docs.len() as u64 >= n) {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        },
    )?;
    if over {
        return Err(CommandError::new(
            code::QUERY_EXCEEDED_MEMORY_LIMIT,
            format!(
                "Executor error during find command :: caused by :: Sort exceeded memory limit of {max} bytes, but did not opt in to external sorting. Pass allowDiskUse: true to let it spill to disk (a find with a collation, returnKey, showRecordId or a textScore sort cannot spill; narrow its filter or add a limit)"
            ),
        ));
    }
    if let Some(sort) = sort {
        sort.sort_items(&mut docs, |d| &d.1);
    }
    let skip = (skip as usize).min(docs.len());
    docs.drain(..skip);
    if let Some(l) = limit {
        docs.truncate(l as usize);
    }
    Ok(docs)
}

/// A blocking sort that may spill (`allowDiskUse`): the pipeline `$sort`, `$limit`, `$skip`.
fn sort_runner(
    sort: &RawDocument,
    skip: u64,
    limit: Option<u64>,
    limits: mangrove_query::Limits,
    store: Option<std::sync::Arc<dyn mangrove_query::SpillStore>>,
) -> CommandResult<mangrove_query::Runner> {
    let mut stages = bson::raw::RawArrayBuf::new();
    stages.push(bson::rawdoc! { "$sort": sort.to_owned() });
    // `$limit` first, so the sort keeps only the best skip + limit (a top-k sort).
    if let Some(l) = limit {
        let keep = i64::try_from(skip.saturating_add(l)).unwrap_or(i64::MAX);
        stages.push(bson::rawdoc! { "$limit": keep });
    }
    if skip > 0 {
        stages.push(bson::rawdoc! { "$skip": i64::try_from(skip).unwrap_or(i64::MAX) });
    }
    let pipeline = mangrove_query::Pipeline::parse(&stages)?.with_limits(limits);
    let mut runner = pipeline.into_runner();
    if let Some(store) = store {
        runner.allow_disk_use(store);
    }
    Ok(runner)
}

/// What an explained find's blocking sort did, run to its end as the find would run it (its
/// results dropped): the `$sort` stage's statistics, for the `SORT` stage's `usedDisk`,
/// `spills` and sizes. Without `allowDiskUse` it fails past the memory limit as the find does.
pub(super) fn sort_explained(
    shared: &Shared,
    view: &dyn ReadView,
    coll: &CollectionInfo,
    (access, filter): (Access, Filter),
    (sort, skip, limit): (&RawDocument, u64, Option<u64>),
    store: Option<std::sync::Arc<dyn mangrove_query::SpillStore>>,
) -> CommandResult<mangrove_query::StageStats> {
    let limits = shared.params.query.limits();
    let mut runner = sort_runner(sort, skip, limit, limits, store)?;
    let mut reader = crate::pipeline_input::InputReader::new(access, filter);
    while crate::pipeline_input::next_result(
        &mut runner,
        Some((&mut reader, view, coll)),
        &mangrove_query::NoForeign,
    )?
    .is_some()
    {}
    let stats = runner.stage_stats();
    debug_assert_eq!(stats.first().map(|s| s.name), Some("$sort"));
    stats
        .into_iter()
        .next()
        .ok_or_else(|| CommandError::new(code::INTERNAL_ERROR, "a sort runner without its $sort"))
}

/// Every match through the sort, which keeps at most its memory limit and spills the rest;
/// the cursor then answers from the sort (merging its runs) batch by batch. The matches are
/// read in chunks, as an aggregate's input, so no engine lock is held while the sort spills.
fn spilling_sort(
    mut runner: mangrove_query::Runner,
    view: &dyn ReadView,
    coll: &CollectionInfo,
    access: Access,
    filter: Filter,
) -> CommandResult<Source> {
    let mut reader = crate::pipeline_input::InputReader::new(access, filter);
    // A sort answers nothing before its input ends: the first result means all was read.
    let first = crate::pipeline_input::next_result(
        &mut runner,
        Some((&mut reader, view, coll)),
        &mangrove_query::NoForeign,
    )?;
    Ok(Source::Pipeline(Box::new(
        crate::pipeline_input::PipelineSource {
            runner,
            input: None,
            snapshot: None,
            db: String::new(),
            views: Default::default(),
            pending: first,
        },
    )))
}
