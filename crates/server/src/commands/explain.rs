//! `explain` of find, count, distinct, findAndModify, update, delete and aggregate (its leading
//! `$match`): the access path the planner chooses, in MongoDB's stage names, and at
//! `executionStats` verbosity or above what walking it examined.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use bson::raw::{RawBsonRef, RawDocument};
use bson::{Document, RawDocumentBuf, doc};
use mangrove_query::{Filter, SortSpec, StageStats, with_collation};
use mangrove_storage::{CollectionInfo, Snapshot};

use crate::Shared;
use crate::access::{
    Access, Examined, Hint, choose, for_each_match, min_max_access, parse_hint, plan_stage,
    sort_fields,
};
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;

use super::Reply;
use super::args::internal;

/// What `explain` needs of the command it explains.
struct Explained<'a> {
    coll: &'a str,
    filter: Option<&'a RawDocument>,
    sort: Option<&'a RawDocument>,
    skip: u64,
    limit: Option<u64>,
    hint: Option<RawBsonRef<'a>>,
    projection: bool,
    /// find's `min` / `max`: bounds on the hinted index instead of the planner's choice.
    min: Option<&'a RawDocument>,
    max: Option<&'a RawDocument>,
}

/// A document-valued field of the explained command.
fn doc_field<'a>(cmd: &'a RawDocument, f: &str) -> Option<&'a RawDocument> {
    match cmd.get(f).ok().flatten() {
        Some(RawBsonRef::Document(d)) => Some(d),
        _ => None,
    }
}

/// A positive count of the explained command (`skip`, `limit`), negative ones as their size.
fn num(cmd: &RawDocument, f: &str) -> Option<u64> {
    cmd.get(f)
        .ok()
        .flatten()
        .and_then(crate::request::as_i64)
        .map(i64::unsigned_abs)
        .filter(|n| *n > 0)
}

/// The first statement of an update's or delete's statement list.
fn first_stmt<'a>(cmd: &'a RawDocument, list: &str) -> Option<&'a RawDocument> {
    match cmd.get(list).ok().flatten() {
        Some(RawBsonRef::Array(a)) => match a.into_iter().next() {
            Some(Ok(RawBsonRef::Document(d))) => Some(d),
            _ => None,
        },
        _ => None,
    }
}

/// The `$match` an aggregate's pipeline starts with, if it does.
fn leading_match(cmd: &RawDocument) -> Option<&RawDocument> {
    match cmd.get("pipeline").ok().flatten() {
        Some(RawBsonRef::Array(stages)) => match stages.into_iter().next() {
            Some(Ok(RawBsonRef::Document(stage))) => doc_field(stage, "$match"),
            _ => None,
        },
        _ => None,
    }
}

fn explained<'a>(cmd: &'a RawDocument) -> CommandResult<(&'a str, Explained<'a>)> {
    let (name, value) = cmd
        .iter()
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| CommandError::bad_value("explain needs a command to explain"))?;
    let name = name.as_str();
    let RawBsonRef::String(coll) = value else {
        return Err(CommandError::bad_value(format!(
            "explain of '{name}' needs a collection name"
        )));
    };
    let mut e = Explained {
        coll,
        filter: None,
        sort: None,
        skip: 0,
        limit: None,
        hint: cmd.get("hint").ok().flatten(),
        projection: false,
        min: None,
        max: None,
    };
    match name {
        "find" => {
            e.filter = doc_field(cmd, "filter");
            e.sort = doc_field(cmd, "sort").filter(|s| !s.is_empty());
            e.skip = num(cmd, "skip").unwrap_or(0);
            e.limit = num(cmd, "limit");
            e.projection = doc_field(cmd, "projection").is_some_and(|p| !p.is_empty());
            e.min = doc_field(cmd, "min").filter(|m| !m.is_empty());
            e.max = doc_field(cmd, "max").filter(|m| !m.is_empty());
        }
        "count" | "distinct" => {
            e.filter = doc_field(cmd, "query");
            e.skip = num(cmd, "skip").unwrap_or(0);
            e.limit = num(cmd, "limit");
        }
        "findAndModify" | "findandmodify" => {
            e.filter = doc_field(cmd, "query");
            e.sort = doc_field(cmd, "sort").filter(|s| !s.is_empty());
            e.limit = Some(1);
        }
        "delete" | "update" => {
            let list = if name == "delete" {
                "deletes"
            } else {
                "updates"
            };
            let stmt = first_stmt(cmd, list);
            e.filter = stmt.and_then(|s| doc_field(s, "q"));
            e.hint = stmt.and_then(|s| s.get("hint").ok().flatten());
        }
        "aggregate" => e.filter = leading_match(cmd),
        other => {
            return Err(CommandError::new(
                code::COMMAND_NOT_SUPPORTED,
                format!("explain of '{other}' is not supported by Mangrove"),
            ));
        }
    }
    Ok((name, e))
}

/// `explain` of find, count, distinct, findAndModify, update, delete and aggregate (its leading
/// `$match`): the plan chosen, in MongoDB's stage names, and at `executionStats` verbosity or
/// above what running it examined.
pub(super) fn explain(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&["verbosity"])?;
    let Some(RawBsonRef::Document(cmd)) = req.command_value() else {
        return Err(CommandError::type_mismatch(
            "explain takes the command to explain as an object",
        ));
    };
    let verbosity = req.opt_str("verbosity")?.unwrap_or("allPlansExecution");
    explain_command(shared, req.db, cmd, verbosity)
}

/// What running the chosen plan found, at `executionStats` verbosity and above.
#[derive(Default)]
struct Execution {
    examined: Examined,
    returned: u64,
}

fn check_verbosity(verbosity: &str) -> CommandResult<()> {
    if !matches!(
        verbosity,
        "queryPlanner" | "executionStats" | "allPlansExecution"
    ) {
        return Err(CommandError::bad_value(format!(
            "verbosity string must be one of {{'queryPlanner', 'executionStats', 'allPlansExecution'}}, got '{verbosity}'"
        )));
    }
    Ok(())
}

/// The command table's `aggregate`: with `explain: true` (and not a `$changeStream`,
/// `$collStats` or `$indexStats` pipeline, which answer for themselves), the explanation at
/// `queryPlanner`, as mongod; otherwise the aggregate itself.
pub(super) async fn aggregate_or_explain(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&mangrove_storage::Txn>,
    at: Option<Snapshot>,
) -> CommandResult<Reply> {
    let special = super::change_stream::is_change_stream(req)?
        || super::coll_stats::is_coll_stats(req)?
        || super::index_stats::is_index_stats(req)?;
    if !special && req.opt_bool("explain")?.unwrap_or(false) {
        super::aggregate::check_explained(shared, req)?;
        return explain_command(shared, req.db, req.body, "queryPlanner");
    }
    super::aggregate::aggregate(shared, req, txn, at).await
}

pub(super) fn explain_command(
    shared: &Shared,
    db: &str,
    cmd: &RawDocument,
    verbosity: &str,
) -> CommandResult<Reply> {
    check_verbosity(verbosity)?;
    let (name, e) = explained(cmd)?;
    let ns = format!("{db}.{}", e.coll);
    let empty = RawDocumentBuf::new();
    let raw_filter = e.filter.unwrap_or(&empty);
    let filter = Filter::parse(raw_filter)?;
    let natural = e.sort.map(super::find::natural_sort).transpose()?.flatten();
    let sort = match natural {
        Some(_) => None,
        None => e.sort.map(SortSpec::parse).transpose()?,
    };
    let snapshot = shared.engine.snapshot();
    let coll = snapshot.collection(&ns);
    crate::text_access::bind(coll.as_ref(), &filter)?;
    let mut hint = parse_hint(e.hint, coll.as_ref())?;
    if let Some(reverse) = natural {
        hint = Hint::Natural { reverse };
    }
    // The explained command's collation chooses among indexes as it would when run.
    let collation = super::args::collation_for(doc_field(cmd, "collation"), coll.as_ref())?;
    // Only a find's sort may spill (`allowDiskUse`); a findAndModify's keeps one document.
    let sort_run = match name {
        "find" => {
            let req = Request::new("find", db, cmd, &[]);
            super::find::explained_sort_store(shared, &req, collation.is_some())?
                .map(|store| (shared, store))
        }
        _ => None,
    };
    let reply = with_collation(collation.as_ref(), || {
        let run = Planned {
            coll: coll.as_ref(),
            filter: &filter,
            raw_filter,
            hint: &hint,
            sort_run,
        };
        explain_planned(
            &snapshot,
            run,
            (&e, &ns, natural, sort.is_some()),
            verbosity,
            cmd,
        )
    })?;
    if name != "aggregate" || verbosity == "queryPlanner" {
        return Ok(reply.into());
    }
    Ok(match super::aggregate::explain_run(shared, db, cmd)? {
        Some((stats, micros)) => with_stages(reply, &stats, micros, cmd).into(),
        None => reply.into(),
    })
}

/// An aggregate's explain as mongod 7.0 gives one when stages run after the query: `stages`,
/// first the `$cursor` (the query's plan and what it examined), then each stage with what it
/// returned and its time. A stage that may spill (`$sort`, `$group`, ...) says whether and how
/// much it did; a `$lookup` or `$graphLookup` what reading its foreign collection examined, in
/// how many collection scans, through which indexes.
///
/// Times are cumulative, as mongod's estimates are: a stage's includes the stages before it.
/// The stages are timed inside the pipeline; the rest of the run (reading the input) is the
/// `$cursor`'s, so the last stage's time is the whole run's.
fn with_stages(reply: Document, stats: &[StageStats], micros: i64, cmd: &RawDocument) -> Document {
    let mut reply = reply;
    let mut cursor = doc! { "queryPlanner": reply.remove("queryPlanner").unwrap_or_default() };
    let exec = reply.remove("executionStats").unwrap_or_default();
    let returned = exec.as_document().and_then(|e| e.get_i64("nReturned").ok());
    cursor.insert("executionStats", exec);
    let in_stages = stats.last().and_then(|s| s.micros).unwrap_or(0) as i64;
    let cursor_micros = (micros - in_stages).max(0);
    let mut stages = vec![bson::Bson::Document(doc! {
        "$cursor": cursor,
        "nReturned": returned.unwrap_or(0),
        "executionTimeMillisEstimate": cursor_micros / 1000,
    })];
    let specs = stage_specs(cmd, stats.len());
    for (i, s) in stats.iter().enumerate() {
        let mut d = specs.get(i).cloned().unwrap_or_else(|| doc! { s.name: {} });
        stage_counters(&mut d, s);
        d.insert("nReturned", s.returned as i64);
        let cumulative = cursor_micros + s.micros.map_or(in_stages, |m| m as i64);
        d.insert("executionTimeMillisEstimate", cumulative.min(micros) / 1000);
        stages.push(d.into());
    }
    let mut out = doc! { "explainVersion": "1", "stages": stages };
    out.extend(reply.into_iter().filter(|(k, _)| k != "explainVersion"));
    out
}

/// A stage's own counters, under mongod 7.0's names: what a `$sort` sorted, what a `$group`
/// answered, what a blocking stage spilled, what a join read.
fn stage_counters(d: &mut Document, s: &StageStats) {
    let bytes = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    match s.name {
        "$sort" => {
            d.insert("totalDataSizeSortedBytesEstimate", bytes(s.input_bytes));
        }
        "$group" => {
            d.insert("totalOutputDataSizeBytes", bytes(s.returned_bytes));
        }
        _ => {}
    }
    if let Some(spill) = &s.spill {
        d.insert("usedDisk", spill.used_disk);
        d.insert("spills", bytes(spill.spills));
        d.insert("spilledRecords", bytes(spill.records));
        if s.name == "$group" {
            // mongod's `$group` names the file's size so; its estimate is of the bytes before
            // compression, and Mangrove does not compress spills.
            d.insert("spillFileSizeBytes", bytes(spill.bytes));
            d.insert("numBytesSpilledEstimate", bytes(spill.bytes));
        } else {
            d.insert("spilledDataStorageSize", bytes(spill.bytes));
        }
    }
    if let Some(join) = &s.join {
        // mongod's `$lookup` statistics: what reading the foreign collection examined.
        d.insert("totalDocsExamined", join.docs_examined as i64);
        d.insert("totalKeysExamined", join.keys_examined as i64);
        d.insert("collectionScans", join.collection_scans as i64);
        d.insert("indexesUsed", join.indexes_used.clone());
    }
}

/// The command's stage documents after a leading `$match` (which the `$cursor` shows), when
/// they are the stages that ran one for one; else none, and stages show by name (a view's
/// stages run first, `$fill` runs as two stages).
fn stage_specs(cmd: &RawDocument, ran: usize) -> Vec<Document> {
    let Some(RawBsonRef::Array(stages)) = cmd.get("pipeline").ok().flatten() else {
        return Vec::new();
    };
    let mut specs: Vec<Document> = stages
        .into_iter()
        .filter_map(|s| match s {
            Ok(RawBsonRef::Document(d)) => Document::try_from(d).ok(),
            _ => None,
        })
        .collect();
    if specs.first().is_some_and(|s| s.contains_key("$match")) {
        specs.remove(0);
    }
    if specs.len() != ran {
        return Vec::new();
    }
    specs
}

/// What [`explain_command`] has resolved for the plan.
struct Planned<'a> {
    coll: Option<&'a mangrove_storage::CollectionInfo>,
    filter: &'a Filter,
    raw_filter: &'a RawDocument,
    hint: &'a Hint,
    /// A find's blocking sort is run as the find would run it (`allowDiskUse` from the
    /// command), for the `SORT` stage's spill statistics.
    sort_run: Option<(&'a Shared, Option<Arc<dyn mangrove_query::SpillStore>>)>,
}

/// Chooses the plan, runs it at `executionStats` verbosity and above, and builds the reply.
fn explain_planned(
    snapshot: &mangrove_storage::Snapshot,
    p: Planned<'_>,
    (e, ns, natural, sorting): (&Explained<'_>, &str, Option<bool>, bool),
    verbosity: &str,
    cmd: &RawDocument,
) -> CommandResult<Document> {
    let (coll, filter, raw_filter, hint) = (p.coll, p.filter, p.raw_filter, p.hint);
    let filter_doc = Document::try_from(raw_filter).map_err(internal)?;
    let started = Instant::now();
    let mut run = Execution::default();
    let (plan, access) = match &coll {
        None => (doc! { "stage": "EOF" }, None),
        Some(coll) => {
            let sort_by = sort_fields(e.sort).filter(|_| natural.is_none());
            let access = if e.min.is_some() || e.max.is_some() {
                min_max_access(snapshot, hint, e.min, e.max, sort_by.as_deref())?
            } else {
                choose(snapshot, coll, filter, raw_filter, hint, sort_by.as_deref())?
            };
            (plan_stage(&access, &filter_doc), Some(access))
        }
    };
    // A `$natural` sort is the collection scan's own order.
    let sorted = natural.is_some() || access.as_ref().is_some_and(Access::sorted);
    let mut sort_stats = None;
    if let (Some(coll), Some(access)) = (&coll, &access)
        && verbosity != "queryPlanner"
    {
        run = execute(snapshot, coll, access, filter, e, sorting)?;
        if let (Some((shared, store)), Some(raw), false) = (p.sort_run, e.sort, sorted) {
            let how = (access.clone(), filter.clone());
            let sort = (raw, e.skip, e.limit);
            sort_stats = Some((
                super::find::sort_explained(shared, snapshot, coll, how, sort, store)?,
                shared.params.query.sort_bytes(),
            ));
        }
    }
    let micros = started.elapsed().as_micros() as i64;
    let plan = wrap_plan(plan, e, sorted)?;
    let mut reply = doc! {
        "explainVersion": "1",
        "queryPlanner": query_planner(ns, filter_doc, plan.clone()),
    };
    if verbosity != "queryPlanner" {
        let mut stats = execution_stats(plan, &run, micros);
        if let (Some((sort, limit)), Ok(stages)) =
            (&sort_stats, stats.get_document_mut("executionStages"))
        {
            sort_counters(stages, sort, *limit);
        }
        reply.insert("executionStats", stats);
    }
    reply.insert("command", Document::try_from(cmd).map_err(internal)?);
    reply.insert(
        "serverInfo",
        doc! { "host": "localhost", "version": super::diag::COMPAT_VERSION, "gitVersion": "mangrove" },
    );
    reply.insert("ok", 1.0);
    Ok(reply)
}

/// Adds what a find's blocking sort did to its `SORT` stage (under the `SKIP` or projection
/// stages that wrap it), under mongod 7.0's names.
fn sort_counters(stage: &mut Document, sort: &StageStats, mem_limit: usize) {
    if !stage.get_str("stage").is_ok_and(|s| s == "SORT") {
        if let Ok(input) = stage.get_document_mut("inputStage") {
            sort_counters(input, sort, mem_limit);
        }
        return;
    }
    let bytes = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let spill = sort.spill.unwrap_or_default();
    stage.insert("memLimit", bytes(mem_limit as u64));
    stage.insert("totalDataSizeSorted", bytes(sort.input_bytes));
    stage.insert("usedDisk", spill.used_disk);
    stage.insert("spills", bytes(spill.spills));
    stage.insert("spilledDataStorageSize", bytes(spill.bytes));
}

/// `queryPlanner`: the parsed query and the winning (only) plan.
fn query_planner(ns: &str, filter_doc: Document, plan: Document) -> Document {
    doc! {
        "namespace": ns,
        "indexFilterSet": false,
        "parsedQuery": filter_doc,
        "maxIndexedOrSolutionsReached": false,
        "maxIndexedAndSolutionsReached": false,
        "maxScansToExplodeReached": false,
        "winningPlan": plan,
        "rejectedPlans": [],
    }
}

/// Walks the plan as the command would, counting what it examines and returns; stops early
/// when a limit allows it (not under a sort the access path does not give).
fn execute(
    snapshot: &Snapshot,
    coll: &CollectionInfo,
    access: &Access,
    filter: &Filter,
    e: &Explained<'_>,
    has_sort: bool,
) -> CommandResult<Execution> {
    let wanted = if has_sort && !access.sorted() {
        None
    } else {
        e.limit.map(|l| l + e.skip)
    };
    let mut run = Execution::default();
    let mut seen = 0u64;
    for_each_match(
        snapshot,
        coll,
        access,
        filter,
        &mut run.examined,
        &mut |_, _| {
            seen += 1;
            if wanted.is_some_and(|w| seen >= w) {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        },
    )?;
    run.returned = seen.saturating_sub(e.skip);
    if let Some(l) = e.limit {
        run.returned = run.returned.min(l);
    }
    Ok(run)
}

/// The access path's stages under the command's own: SORT (when the path does not give the
/// order) or LIMIT, SKIP, PROJECTION_DEFAULT.
fn wrap_plan(mut plan: Document, e: &Explained<'_>, sorted: bool) -> CommandResult<Document> {
    if let Some(s) = e.sort.filter(|_| !sorted) {
        let mut sort_stage =
            doc! { "stage": "SORT", "sortPattern": Document::try_from(s).map_err(internal)? };
        if let Some(l) = e.limit {
            sort_stage.insert("limitAmount", l as i64);
        }
        sort_stage.insert("inputStage", plan);
        plan = sort_stage;
    } else if let Some(l) = e.limit {
        plan = doc! { "stage": "LIMIT", "limitAmount": l as i64, "inputStage": plan };
    }
    if e.skip > 0 {
        plan = doc! { "stage": "SKIP", "skipAmount": e.skip as i64, "inputStage": plan };
    }
    if e.projection {
        plan = doc! { "stage": "PROJECTION_DEFAULT", "inputStage": plan };
    }
    Ok(plan)
}

/// `executionStats`: the plan's stages with their counters, and the totals.
fn execution_stats(plan: Document, run: &Execution, micros: i64) -> Document {
    let elapsed = micros / 1000;
    let mut stages = plan;
    annotate(&mut stages, run.returned, &run.examined, elapsed);
    doc! {
        "executionSuccess": true,
        "nReturned": run.returned as i64,
        "executionTimeMillis": elapsed,
        // Mangrove's addition: sub-millisecond plans otherwise all read 0.
        "executionTimeMicros": micros,
        "totalKeysExamined": run.examined.keys as i64,
        "totalDocsExamined": run.examined.docs as i64,
        "executionStages": stages,
        "allPlansExecution": [],
    }
}

/// Adds execution counters to each stage of a plan, as `executionStats` shows them.
fn annotate(stage: &mut Document, returned: u64, examined: &Examined, millis: i64) {
    stage.insert("nReturned", returned as i64);
    stage.insert("executionTimeMillisEstimate", millis);
    match stage.get_str("stage").unwrap_or_default() {
        "IXSCAN" => {
            stage.insert("keysExamined", examined.keys as i64);
        }
        "FETCH" | "COLLSCAN" => {
            stage.insert("docsExamined", examined.docs as i64);
        }
        "IDHACK" => {
            stage.insert("keysExamined", examined.keys as i64);
            stage.insert("docsExamined", examined.docs as i64);
        }
        _ => {}
    }
    if let Ok(input) = stage.get_document_mut("inputStage") {
        annotate(input, returned, examined, millis);
    }
}
