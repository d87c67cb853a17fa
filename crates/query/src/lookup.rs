//! `$lookup` and `$graphLookup`: joining each input document with a foreign collection.
//!
//! Invariants:
//! - The foreign collection is read once per run (the server hands it over whole, from the same
//!   snapshot or transaction as the input); the hash index over its join keys is built on the
//!   first input document and kept for the rest of the stream.
//! - Each input document is joined on its own: the documents joined to one input (and, for a
//!   sub-pipeline, its intermediate results) are bounded by `Limits::stage_bytes` (292), as
//!   mongod bounds one `$lookup` result; nothing accumulates across input documents.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bson::raw::{RawBsonRef, RawDocument};
use bson::{Bson, Document, RawDocumentBuf};

use crate::aggregate::{Pipeline, Stage, key_of, raw_err, set_path, to_raw};
use crate::compare::as_num;
use crate::expr::{Expr, with_bound, with_vars};
use crate::path::{distinct_values, split_path, walk};
use crate::stream::{Ctx, run_all};
use crate::{Filter, QueryError};

pub(crate) struct Lookup {
    pub(crate) from: String,
    as_path: Vec<String>,
    /// `localField` and `foreignField`, for the equality form (alone or with a pipeline).
    equality: Option<(String, Vec<String>)>,
    lets: Vec<(String, Expr)>,
    pub(crate) pipeline: Option<Pipeline>,
}

pub(crate) struct GraphLookup {
    pub(crate) from: String,
    start_with: Expr,
    connect_from: String,
    connect_to: Vec<String>,
    as_path: Vec<String>,
    max_depth: Option<u64>,
    depth_field: Option<Vec<String>>,
    restrict: Option<Filter>,
}

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

/// A `$lookup`'s foreign collection and, for the equality form, its index.
pub(crate) struct Joined {
    foreign: Arc<Vec<RawDocumentBuf>>,
    index: Option<KeyIndex>,
}

impl Joined {
    pub(crate) fn open(l: &Lookup, ctx: &Ctx<'_>) -> Result<Joined, QueryError> {
        let foreign = ctx.collection(&l.from)?;
        // The equality form matches like `{foreignField: {$in: localValues}}`: an array on either
        // side matches through its elements, and a missing (or empty-array) local value matches
        // null, i.e. foreign documents whose field is null or missing. A hash of the foreign
        // keys makes that one pass over each side.
        let index = match &l.equality {
            Some((foreign_field, _)) => Some(index_by(&foreign, &split_path(foreign_field), None)?),
            None => None,
        };
        Ok(Joined { foreign, index })
    }

    /// Positions of the foreign documents the equality form joins to `doc`; `None` for all.
    fn hits(&self, l: &Lookup, doc: &RawDocument) -> Option<Vec<usize>> {
        let ((_, local), index) = (l.equality.as_ref()?, self.index.as_ref()?);
        let mut values: Vec<RawBsonRef<'_>> = distinct_values(doc, &local.join("."));
        if values.is_empty() {
            values.push(RawBsonRef::Null);
        }
        let mut hits: Vec<usize> = values
            .into_iter()
            .filter_map(|v| index.get(&key_of(v)))
            .flatten()
            .copied()
            .collect();
        hits.sort_unstable();
        hits.dedup();
        Some(hits)
    }

    /// The candidates that pass `filter` (a sub-pipeline's leading $match, applied before
    /// copying, so a selective join does not copy the whole collection for every input).
    fn pick(
        &self,
        hits: &Option<Vec<usize>>,
        filter: Option<&Filter>,
        ctx: &Ctx<'_>,
    ) -> Result<Vec<RawDocumentBuf>, QueryError> {
        let mut picked = Vec::new();
        let mut used = 0usize;
        let mut consider = |d: &RawDocumentBuf| -> Result<(), QueryError> {
            if filter.map_or(Ok(true), |f| f.matches_checked(d))? {
                used += d.as_bytes().len();
                ctx.check("$lookup", used)?;
                picked.push(d.clone());
            }
            Ok(())
        };
        match hits {
            Some(hits) => hits.iter().try_for_each(|&i| consider(&self.foreign[i])),
            None => self.foreign.iter().try_for_each(&mut consider),
        }?;
        Ok(picked)
    }
}

/// `doc` with the foreign documents it joins set at the `as` path.
pub(crate) fn lookup_one(
    l: &Lookup,
    joined: &Joined,
    doc: &RawDocument,
    ctx: &Ctx<'_>,
) -> Result<RawDocumentBuf, QueryError> {
    let hits = joined.hits(l, doc);
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
                run_all(rest, joined.pick(&hits, first, ctx)?, ctx, "$lookup")
            })?
        }
        None => joined.pick(&hits, None, ctx)?,
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

pub(crate) fn parse_lookup(spec: &RawDocument, depth: usize) -> Result<Lookup, QueryError> {
    let mut from = None;
    let mut as_field = None;
    let mut local = None;
    let mut foreign = None;
    let mut lets_spec = None;
    let mut pipeline_spec = None;
    for item in spec {
        let (k, v) = item.map_err(raw_err)?;
        match (k.as_str(), v) {
            ("from", RawBsonRef::String(f)) if !f.is_empty() => from = Some(f.to_string()),
            ("from", RawBsonRef::Document(d)) => {
                return Err(QueryError::failed_to_parse(format!(
                    "$lookup from another database is not supported: {d:?}"
                )));
            }
            ("as", RawBsonRef::String(a)) => as_field = Some(a.to_string()),
            ("localField", RawBsonRef::String(l)) => local = Some(l.to_string()),
            ("foreignField", RawBsonRef::String(f)) => foreign = Some(f.to_string()),
            ("let", RawBsonRef::Document(d)) => lets_spec = Some(d),
            ("pipeline", RawBsonRef::Array(p)) => pipeline_spec = Some(p),
            ("from" | "as" | "localField" | "foreignField" | "let" | "pipeline", _) => {
                return Err(QueryError::failed_to_parse(format!(
                    "$lookup argument '{}' has the wrong type",
                    k.as_str()
                )));
            }
            (other, _) => {
                return Err(QueryError::failed_to_parse(format!(
                    "unknown argument to $lookup: {other}"
                )));
            }
        }
    }
    let from =
        from.ok_or_else(|| QueryError::failed_to_parse("must specify 'from' field for a $lookup"))?;
    let as_field = as_field
        .ok_or_else(|| QueryError::failed_to_parse("must specify 'as' field for a $lookup"))?;
    if as_field.is_empty() || as_field.starts_with('$') {
        return Err(QueryError::location(
            16410,
            format!("FieldPath field names may not start with '$': '{as_field}'"),
        ));
    }
    let equality = match (local, foreign) {
        (Some(l), Some(f)) => Some((f, split_path(&l))),
        (None, None) => None,
        _ => {
            return Err(QueryError::failed_to_parse(
                "$lookup requires both or neither of 'localField' and 'foreignField' to be specified",
            ));
        }
    };
    if equality.is_none() && pipeline_spec.is_none() {
        return Err(QueryError::failed_to_parse(
            "$lookup requires either 'pipeline' or both 'localField' and 'foreignField' to be specified",
        ));
    }
    if lets_spec.is_some() && pipeline_spec.is_none() {
        return Err(QueryError::failed_to_parse(
            "$lookup with 'let' must also specify 'pipeline'",
        ));
    }
    let mut lets = Vec::new();
    if let Some(d) = lets_spec {
        for item in d {
            let (k, v) = item.map_err(raw_err)?;
            crate::expr::check_var_name(k.as_str())?;
            lets.push((k.as_str().to_string(), Expr::parse(v)?));
        }
    }
    let names: Vec<String> = lets.iter().map(|(n, _)| n.clone()).collect();
    let pipeline = match pipeline_spec {
        Some(p) => Some(with_bound(&names, || Pipeline::parse_at(p, depth + 1))?),
        None => None,
    };
    Ok(Lookup {
        from,
        as_path: split_path(&as_field),
        equality,
        lets,
        pipeline,
    })
}

pub(crate) fn parse_graph_lookup(spec: &RawDocument) -> Result<GraphLookup, QueryError> {
    let mut from = None;
    let mut start_with = None;
    let mut connect_from = None;
    let mut connect_to = None;
    let mut as_field = None;
    let mut max_depth = None;
    let mut depth_field = None;
    let mut restrict = None;
    let field_name = |name: &str, v: RawBsonRef<'_>| -> Result<String, QueryError> {
        match v {
            RawBsonRef::String(s) if !s.is_empty() && !s.starts_with('$') => Ok(s.to_string()),
            _ => Err(QueryError::location(
                40103,
                format!("expected a non-empty string without a leading '$' for '{name}'"),
            )),
        }
    };
    for item in spec {
        let (k, v) = item.map_err(raw_err)?;
        match k.as_str() {
            "from" => from = Some(field_name("from", v)?),
            "startWith" => start_with = Some(Expr::parse(v)?),
            "connectFromField" => connect_from = Some(field_name("connectFromField", v)?),
            "connectToField" => connect_to = Some(split_path(&field_name("connectToField", v)?)),
            "as" => as_field = Some(split_path(&field_name("as", v)?)),
            "depthField" => depth_field = Some(split_path(&field_name("depthField", v)?)),
            "maxDepth" => match as_num(v).map(|n| n.to_f64()) {
                Some(n) if n >= 0.0 && n.fract() == 0.0 => max_depth = Some(n as u64),
                _ => {
                    return Err(QueryError::location(
                        40101,
                        "maxDepth requires a nonnegative argument",
                    ));
                }
            },
            "restrictSearchWithMatch" => match v {
                RawBsonRef::Document(d) => restrict = Some(Filter::parse(d)?),
                _ => {
                    return Err(QueryError::location(
                        40185,
                        "restrictSearchWithMatch must be an object",
                    ));
                }
            },
            other => {
                return Err(QueryError::location(
                    40104,
                    format!("Unknown argument to $graphLookup: {other}"),
                ));
            }
        }
    }
    match (from, start_with, connect_from, connect_to, as_field) {
        (Some(from), Some(start_with), Some(connect_from), Some(connect_to), Some(as_path)) => {
            Ok(GraphLookup {
                from,
                start_with,
                connect_from,
                connect_to,
                as_path,
                max_depth,
                depth_field,
                restrict,
            })
        }
        _ => Err(QueryError::location(
            40105,
            "from, as, startWith, connectFromField, and connectToField must all be specified.",
        )),
    }
}

/// A `$graphLookup`'s foreign collection, indexed by `connectToField`.
pub(crate) struct Graph {
    foreign: Arc<Vec<RawDocumentBuf>>,
    index: KeyIndex,
}

impl Graph {
    pub(crate) fn open(g: &GraphLookup, ctx: &Ctx<'_>) -> Result<Graph, QueryError> {
        let foreign = ctx.collection(&g.from)?;
        let index = index_by(&foreign, &g.connect_to, g.restrict.as_ref())?;
        Ok(Graph { foreign, index })
    }
}

/// Adds the keys of `v` (of each element, for an array) to the frontier.
fn push_keys(v: &Bson, frontier: &mut Vec<Vec<u8>>) {
    let items = match v {
        Bson::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    for item in items {
        if let Ok(raw) = bson::RawBson::try_from(item) {
            frontier.push(key_of(raw.as_raw_bson_ref()));
        }
    }
}

/// Breadth-first search over the foreign collection: each round matches `connectToField`
/// against the values found so far (with a query's array semantics) and follows the matches'
/// `connectFromField`; a document is reported once, at the depth it was first reached.
fn search(
    g: &GraphLookup,
    graph: &Graph,
    doc: &RawDocument,
    ctx: &Ctx<'_>,
) -> Result<Vec<(usize, i64)>, QueryError> {
    let mut frontier: Vec<Vec<u8>> = Vec::new();
    if let Some(start) = g.start_with.eval(doc)? {
        push_keys(&start, &mut frontier);
    }
    let mut seen_keys: HashSet<Vec<u8>> = HashSet::new();
    let mut found: Vec<(usize, i64)> = Vec::new();
    let mut reached: HashSet<usize> = HashSet::new();
    let mut used = 0usize;
    let mut depth = 0i64;
    while !frontier.is_empty() && g.max_depth.is_none_or(|m| depth as u64 <= m) {
        let mut next = Vec::new();
        for key in frontier.drain(..) {
            if !seen_keys.insert(key.clone()) {
                continue;
            }
            for &i in graph.index.get(&key).map_or(&[][..], Vec::as_slice) {
                if !reached.insert(i) {
                    continue;
                }
                found.push((i, depth));
                used += graph.foreign[i].as_bytes().len();
                ctx.check("$graphLookup", used)?;
                for v in distinct_values(&graph.foreign[i], &g.connect_from) {
                    if let Ok(b) = Bson::try_from(v) {
                        push_keys(&b, &mut next);
                    }
                }
            }
        }
        frontier = next;
        depth += 1;
    }
    Ok(found)
}

/// `doc` with the documents its search reached set at the `as` path.
pub(crate) fn graph_lookup_one(
    g: &GraphLookup,
    graph: &Graph,
    doc: &RawDocument,
    ctx: &Ctx<'_>,
) -> Result<RawDocumentBuf, QueryError> {
    let found = search(g, graph, doc, ctx)?;
    let mut items = Vec::with_capacity(found.len());
    for (i, at) in found {
        let mut d = Document::try_from(graph.foreign[i].as_ref()).map_err(raw_err)?;
        if let Some(field) = &g.depth_field {
            set_path(&mut d, field, Some(Bson::Int64(at)));
        }
        items.push(Bson::Document(d));
    }
    let mut d = Document::try_from(doc).map_err(raw_err)?;
    set_path(&mut d, &g.as_path, Some(Bson::Array(items)));
    to_raw(&d)
}
