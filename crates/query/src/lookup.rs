//! `$lookup` and `$graphLookup`: joining each input document with a foreign collection.
//!
//! Invariants:
//! - A `$lookup` reads its foreign collection (through the server's `ForeignSource`, from the
//!   same snapshot or transaction as the input) either once per run, whole, with a hash index
//!   over its join keys built on the first input document and kept for the rest of the stream
//!   (when it fits in the per-stage limit and no index answers `foreignField`), or again for
//!   each input document (through that index, or by a scan when it is too large to hold). Both
//!   ways join exactly the same documents.
//! - `$graphLookup` likewise holds its foreign collection in memory, hashed by
//!   `connectToField`, or asks once per round of its search (through the index when there is
//!   one). Both ways reach the same documents, each once, at the depth first reached.
//! - Each input document is joined on its own: the documents joined to one input (and, for a
//!   sub-pipeline, its intermediate results) are bounded by `Limits::stage_bytes` (292), as
//!   mongod bounds one `$lookup` result; nothing accumulates across input documents.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bson::raw::{RawBsonRef, RawDocument};
use bson::{Bson, Document, RawDocumentBuf};

use crate::doc_ops::{key_of, raw_err, set_path, to_raw};
use crate::expr::with_vars;
use crate::path::{distinct_values, split_path, walk};
use crate::run_ctx::{Ctx, ForeignRead, JoinStats};
use crate::stage::{GraphLookup, Lookup, Stage};
use crate::{Filter, QueryError};

/// Runs stages over documents: how a `$lookup` runs its sub-pipeline.
pub(crate) type SubRunner<'a> =
    dyn Fn(&[Stage], Vec<RawDocumentBuf>) -> Result<Vec<RawDocumentBuf>, QueryError> + 'a;

/// Foreign documents by join key: positions in the foreign collection.
type KeyIndex = HashMap<Vec<u8>, Vec<usize>>;

/// Indexes `docs` by the keys of the values at `path` (with a query's array semantics).
fn index_by(
    docs: &[RawDocumentBuf],
    path: &[String],
    restrict: Option<&Filter>,
) -> Result<KeyIndex, QueryError> {
    let mut index: KeyIndex = HashMap::new();
    for (i, d) in docs.iter().enumerate() {
        if let Some(f) = restrict
            && !f.matches_checked(d)?
        {
            continue;
        }
        let mut keys = Vec::new();
        walk(d, path, true, &mut |v| {
            keys.push(key_of(v.unwrap_or(RawBsonRef::Null)));
            false
        });
        keys.sort();
        keys.dedup();
        for k in keys {
            index.entry(k).or_default().push(i);
        }
    }
    Ok(index)
}

/// How a `$lookup` reads its foreign collection, chosen on its first input document.
pub(crate) enum Joined {
    /// The whole collection in memory (and, for the equality form, a hash of its join keys):
    /// one read for the whole run, when it fits in the per-stage limit (a hash join).
    InMemory {
        foreign: Arc<Vec<RawDocumentBuf>>,
        index: Option<KeyIndex>,
    },
    /// Asked again for each input document: through an index on `foreignField` when there is
    /// one (an indexed loop join), else by a scan (mongod's nested-loop join, for a collection
    /// too large to hold). Memory is then one input document's matches.
    PerDocument,
}

/// A join's state over a run: how it reads its foreign collection ([`Joined`] for `$lookup`,
/// [`Graph`] for `$graphLookup`), and what it read.
pub(crate) struct Reading<T> {
    how: T,
    pub(crate) stats: JoinStats,
}

impl<T> Reading<T> {
    /// `open` chooses how to read, counting what choosing read.
    pub(crate) fn open(
        open: impl FnOnce(&mut JoinStats) -> Result<T, QueryError>,
    ) -> Result<Reading<T>, QueryError> {
        let mut stats = JoinStats::default();
        let how = open(&mut stats)?;
        Ok(Reading { how, stats })
    }
}

/// The foreign collection `from`, held whole for the run when no index answers `field` and it
/// fits in the per-stage limit (counted as one collection scan); `None` to ask per document or
/// round instead.
fn held_whole(
    from: &str,
    field: Option<&str>,
    ctx: &Ctx<'_>,
    stats: &mut JoinStats,
) -> Result<Option<Arc<Vec<RawDocumentBuf>>>, QueryError> {
    if field.is_some_and(|f| ctx.foreign.indexed(from, f)) {
        return Ok(None);
    }
    let foreign = ctx.foreign.whole(from, ctx.limits.stage_bytes)?;
    if let Some(docs) = &foreign {
        stats.add(ForeignRead {
            docs: docs.len() as u64,
            ..ForeignRead::default()
        });
    }
    Ok(foreign)
}

/// Whether a key of `d`'s values at `path` (with a query's array semantics) is `wanted`: the
/// in-memory joins' match, kept exactly when asking per document or round.
fn keys_meet(d: &RawDocument, path: &[String], wanted: &HashSet<Vec<u8>>) -> bool {
    let mut meet = false;
    walk(d, path, true, &mut |v| {
        meet = wanted.contains(&key_of(v.unwrap_or(RawBsonRef::Null)));
        meet
    });
    meet
}

impl Joined {
    pub(crate) fn open(
        l: &Lookup,
        ctx: &Ctx<'_>,
        stats: &mut JoinStats,
    ) -> Result<Joined, QueryError> {
        let field = l.equality.as_ref().map(|(f, _)| f.as_str());
        let Some(foreign) = held_whole(&l.from, field, ctx, stats)? else {
            return Ok(Joined::PerDocument);
        };
        // The equality form matches like `{foreignField: {$in: localValues}}`: an array on either
        // side matches through its elements, and a missing (or empty-array) local value matches
        // null, i.e. foreign documents whose field is null or missing. A hash of the foreign
        // keys makes that one pass over each side.
        let index = match &l.equality {
            Some((foreign_field, _)) => Some(index_by(&foreign, &split_path(foreign_field), None)?),
            None => None,
        };
        Ok(Joined::InMemory { foreign, index })
    }

    /// The foreign documents joined to `doc` that pass `filter` (a sub-pipeline's leading
    /// `$match`, applied before copying, so a selective join does not copy the whole
    /// collection for every input), bounded by the per-stage limit.
    fn candidates(
        &self,
        l: &Lookup,
        doc: &RawDocument,
        filter: Option<&Filter>,
        ctx: &Ctx<'_>,
        stats: &mut JoinStats,
    ) -> Result<Vec<RawDocumentBuf>, QueryError> {
        let mut picked = Vec::new();
        let mut used = 0usize;
        let mut consider = |d: &RawDocument| -> Result<(), QueryError> {
            if filter.map_or(Ok(true), |f| f.matches_checked(d))? {
                used += d.as_bytes().len();
                ctx.check("$lookup", used)?;
                picked.push(d.to_owned());
            }
            Ok(())
        };
        match self {
            Joined::InMemory { foreign, index } => match (index, &l.equality) {
                (Some(index), Some((_, local))) => hits(index, local, doc)
                    .iter()
                    .try_for_each(|&i| consider(&foreign[i])),
                _ => foreign.iter().try_for_each(|d| consider(d)),
            },
            Joined::PerDocument => {
                each_joined(l, doc, ctx, &mut consider).map(|read| stats.add(read))
            }
        }?;
        Ok(picked)
    }
}

/// The local values of `doc` a `$lookup`'s equality form matches: a missing (or empty-array)
/// field matches null.
fn local_values<'a>(local: &[String], doc: &'a RawDocument) -> Vec<RawBsonRef<'a>> {
    let mut values: Vec<RawBsonRef<'_>> = distinct_values(doc, &local.join("."));
    if values.is_empty() {
        values.push(RawBsonRef::Null);
    }
    values
}

/// Positions of the foreign documents the equality form joins to `doc`.
fn hits(index: &KeyIndex, local: &[String], doc: &RawDocument) -> Vec<usize> {
    let mut hits: Vec<usize> = local_values(local, doc)
        .into_iter()
        .filter_map(|v| index.get(&key_of(v)))
        .flatten()
        .copied()
        .collect();
    hits.sort_unstable();
    hits.dedup();
    hits
}

/// Hands `visit` each foreign document joined to `doc`, asking the collection for them. The
/// equality form asks for `{foreignField: {$in: localValues}}` (which an index answers) and
/// keeps exactly those whose keys the in-memory join would match, so both ways join alike.
fn each_joined(
    l: &Lookup,
    doc: &RawDocument,
    ctx: &Ctx<'_>,
    visit: &mut dyn FnMut(&RawDocument) -> Result<(), QueryError>,
) -> Result<ForeignRead, QueryError> {
    let Some((foreign_field, local)) = &l.equality else {
        return ctx
            .foreign
            .each_match(&l.from, &RawDocumentBuf::new(), visit);
    };
    let values = local_values(local, doc);
    let wanted: HashSet<Vec<u8>> = values.iter().map(|v| key_of(*v)).collect();
    let path = split_path(foreign_field);
    let query = in_query(foreign_field, &values)?;
    ctx.foreign.each_match(&l.from, &query, &mut |d| {
        if keys_meet(d, &path, &wanted) {
            visit(d)
        } else {
            Ok(())
        }
    })
}

/// `{field: {$in: values}}`, or everything when a value cannot be an `$in` operand as itself
/// (a regular expression would match by pattern; undefined is refused).
fn in_query(field: &str, values: &[RawBsonRef<'_>]) -> Result<RawDocumentBuf, QueryError> {
    let mut query = RawDocumentBuf::new();
    let literal =
        |v: &RawBsonRef<'_>| !matches!(v, RawBsonRef::RegularExpression(_) | RawBsonRef::Undefined);
    if values.iter().all(literal) {
        let mut list = bson::raw::RawArrayBuf::new();
        for v in values {
            list.push(bson::RawBson::from(*v));
        }
        let mut op = RawDocumentBuf::new();
        op.append(bson::raw::cstr!("$in"), list);
        let field = <&bson::raw::CStr>::try_from(field).map_err(|_| {
            QueryError::bad_value(format!("field name contains a NUL byte: {field:?}"))
        })?;
        query.append(field, op);
    }
    Ok(query)
}

/// `doc` with the foreign documents it joins set at the `as` path.
/// `run_sub` runs a sub-pipeline's stages over the joined documents (the caller's runner, so
/// joining does not depend on how stages run).
pub(crate) fn lookup_one(
    l: &Lookup,
    joining: &mut Reading<Joined>,
    doc: &RawDocument,
    ctx: &Ctx<'_>,
    run_sub: &SubRunner<'_>,
) -> Result<RawDocumentBuf, QueryError> {
    let Reading { how, stats } = joining;
    let matched = match &l.pipeline {
        Some(p) => {
            let mut vars = Vec::with_capacity(l.lets.len());
            for (name, e) in &l.lets {
                vars.push((name.clone(), e.eval(doc)?.unwrap_or(Bson::Null)));
            }
            with_vars(vars, || {
                let (first, rest) = match p.stages.first() {
                    Some(Stage::Match(f)) => (Some(f), &p.stages[1..]),
                    _ => (None, &p.stages[..]),
                };
                run_sub(rest, how.candidates(l, doc, first, ctx, stats)?)
            })?
        }
        None => how.candidates(l, doc, None, ctx, stats)?,
    };
    let items = matched
        .iter()
        .map(|d| Document::try_from(d.as_ref()).map(Bson::Document))
        .collect::<Result<Vec<_>, _>>()
        .map_err(raw_err)?;
    let mut d = Document::try_from(doc).map_err(raw_err)?;
    set_path(&mut d, &l.as_path, Some(Bson::Array(items)));
    to_raw(&d)
}

/// How a `$graphLookup` reads its foreign collection, chosen on its first input document.
pub(crate) enum Graph {
    /// The whole collection in memory, hashed by `connectToField` (when it fits in the
    /// per-stage limit and no index answers `connectToField`).
    InMemory {
        foreign: Arc<Vec<RawDocumentBuf>>,
        index: KeyIndex,
    },
    /// One query per round of the search, `{connectToField: {$in: frontier}}`, through the
    /// index when there is one (as mongod searches).
    PerRound,
}

impl Graph {
    pub(crate) fn open(
        g: &GraphLookup,
        ctx: &Ctx<'_>,
        stats: &mut JoinStats,
    ) -> Result<Graph, QueryError> {
        let field = g.connect_to.join(".");
        let Some(foreign) = held_whole(&g.from, Some(&field), ctx, stats)? else {
            return Ok(Graph::PerRound);
        };
        let index = index_by(&foreign, &g.connect_to, g.restrict.as_ref())?;
        Ok(Graph::InMemory { foreign, index })
    }
}

/// Adds the values of `v` (each element, for an array) to the frontier, with their keys.
fn push_values(v: RawBsonRef<'_>, frontier: &mut Vec<(Vec<u8>, bson::RawBson)>) {
    match v {
        RawBsonRef::Array(items) => {
            for item in items.into_iter().flatten() {
                frontier.push((key_of(item), item.into()));
            }
        }
        other => frontier.push((key_of(other), other.into())),
    }
}

/// Where a search stands: what it found, at which depth, and what it may still hold.
struct Search<'c> {
    found: Vec<(RawDocumentBuf, i64)>,
    /// The documents found, by their `_id`'s key (a document is reported once).
    reached: HashSet<Vec<u8>>,
    used: usize,
    ctx: &'c Ctx<'c>,
}

impl Search<'_> {
    /// Records `d`, found at `depth`, unless it was found before; its `connectFromField`
    /// values join the next frontier.
    fn reach(
        &mut self,
        g: &GraphLookup,
        d: &RawDocument,
        depth: i64,
        next: &mut Vec<(Vec<u8>, bson::RawBson)>,
    ) -> Result<(), QueryError> {
        let id = key_of(d.get("_id").ok().flatten().unwrap_or(RawBsonRef::Null));
        if !self.reached.insert(id) {
            return Ok(());
        }
        self.used += d.as_bytes().len();
        self.ctx.check("$graphLookup", self.used)?;
        for v in distinct_values(d, &g.connect_from) {
            push_values(v, next);
        }
        self.found.push((d.to_owned(), depth));
        Ok(())
    }
}

/// Breadth-first search over the foreign collection: each round matches `connectToField`
/// against the values found so far (with a query's array semantics) and follows the matches'
/// `connectFromField`; a document is reported once, at the depth it was first reached.
fn search(
    g: &GraphLookup,
    Reading { how: graph, stats }: &mut Reading<Graph>,
    doc: &RawDocument,
    ctx: &Ctx<'_>,
) -> Result<Vec<(RawDocumentBuf, i64)>, QueryError> {
    let mut frontier = Vec::new();
    if let Some(start) = g.start_with.eval(doc)?
        && let Ok(raw) = bson::RawBson::try_from(start)
    {
        push_values(raw.as_raw_bson_ref(), &mut frontier);
    }
    let mut state = Search {
        found: Vec::new(),
        reached: HashSet::new(),
        used: 0,
        ctx,
    };
    let mut seen_keys: HashSet<Vec<u8>> = HashSet::new();
    let mut depth = 0i64;
    while !frontier.is_empty() && g.max_depth.is_none_or(|m| depth as u64 <= m) {
        let mut round = std::mem::take(&mut frontier);
        round.retain(|(key, _)| seen_keys.insert(key.clone()));
        match graph {
            Graph::InMemory { foreign, index } => {
                for (key, _) in &round {
                    for &i in index.get(key).map_or(&[][..], Vec::as_slice) {
                        state.reach(g, &foreign[i], depth, &mut frontier)?;
                    }
                }
            }
            Graph::PerRound if !round.is_empty() => {
                stats.add(search_round(g, &round, depth, &mut state, &mut frontier)?)
            }
            Graph::PerRound => {}
        }
        depth += 1;
    }
    Ok(state.found)
}

/// One round of a [`Graph::PerRound`] search: the documents whose `connectToField` matches a
/// value of `round` (exactly as the in-memory hash matches) and `restrictSearchWithMatch`.
fn search_round(
    g: &GraphLookup,
    round: &[(Vec<u8>, bson::RawBson)],
    depth: i64,
    state: &mut Search<'_>,
    next: &mut Vec<(Vec<u8>, bson::RawBson)>,
) -> Result<ForeignRead, QueryError> {
    let wanted: HashSet<Vec<u8>> = round.iter().map(|(k, _)| k.clone()).collect();
    let values: Vec<RawBsonRef<'_>> = round.iter().map(|(_, v)| v.as_raw_bson_ref()).collect();
    let query = in_query(&g.connect_to.join("."), &values)?;
    let ctx = state.ctx;
    ctx.foreign.each_match(&g.from, &query, &mut |d| {
        if !keys_meet(d, &g.connect_to, &wanted)
            || !g
                .restrict
                .as_ref()
                .map_or(Ok(true), |f| f.matches_checked(d))?
        {
            return Ok(());
        }
        state.reach(g, d, depth, next)
    })
}

/// `doc` with the documents its search reached set at the `as` path.
pub(crate) fn graph_lookup_one(
    g: &GraphLookup,
    graph: &mut Reading<Graph>,
    doc: &RawDocument,
    ctx: &Ctx<'_>,
) -> Result<RawDocumentBuf, QueryError> {
    let found = search(g, graph, doc, ctx)?;
    let mut items = Vec::with_capacity(found.len());
    for (found, at) in found {
        let mut d = Document::try_from(found.as_ref()).map_err(raw_err)?;
        if let Some(field) = &g.depth_field {
            set_path(&mut d, field, Some(Bson::Int64(at)));
        }
        items.push(Bson::Document(d));
    }
    let mut d = Document::try_from(doc).map_err(raw_err)?;
    set_path(&mut d, &g.as_path, Some(Bson::Array(items)));
    to_raw(&d)
}
