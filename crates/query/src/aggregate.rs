//! The aggregation pipeline: stages parsed from a command's `pipeline` array. `$out`/`$merge`
//! end a pipeline as a [`Sink`] the server writes, and `$lookup`, `$graphLookup` and
//! `$unionWith` get other collections from the caller, so the crate stays pure. Running the
//! stages is `stream.rs` (documents stream through; only blocking stages hold memory), groups
//! are `group.rs`, joins `lookup.rs`, expressions `expr.rs`, limits `limits.rs`.
//!
//! Stages: `$match $sort $skip $limit $project $addFields/$set $unset $replaceRoot/$replaceWith
//! $count $group $bucket $sortByCount $unwind $lookup $graphLookup $unionWith $facet $sample
//! $documents`, then `$out`/`$merge`. Anything else is refused with mongod's error (40324).

use bson::raw::{RawArray, RawBsonRef, RawDocument};
use bson::{Bson, Document, RawDocumentBuf};

use crate::compare::as_num;
use crate::expr::Expr;
pub use crate::expr::with_let;
use crate::group::{Acc, Bucket, Group, parse_bucket, parse_group};
use crate::limits::{Limits, MAX_SUBPIPELINE_DEPTH};
use crate::lookup::{GraphLookup, Lookup, parse_graph_lookup, parse_lookup};
use crate::path::split_path;
use crate::stream::{self, Runner};
use crate::{Filter, Projection, QueryError, SortSpec, encode_key};

pub(crate) struct Unwind {
    pub(crate) path: Vec<String>,
    pub(crate) index: Option<Vec<String>>,
    pub(crate) preserve: bool,
}

pub(crate) enum Stage {
    Match(Filter),
    Sort(SortSpec),
    Skip(usize),
    Limit(usize),
    Project(Projection),
    /// `$addFields` and its alias `$set`: (dotted path, expression) pairs.
    AddFields(Vec<(Vec<String>, Expr)>),
    /// `$replaceRoot: {newRoot}` and `$replaceWith`.
    ReplaceRoot(Expr),
    /// `$unset`: paths to remove, as an exclusion projection.
    Unset(Projection),
    Count(String),
    Group(Group),
    Unwind(Unwind),
    Lookup(Box<Lookup>),
    Facet(Vec<(String, Pipeline)>),
    Sample(usize),
    /// `$documents`: the pipeline's input, replacing whatever the server read.
    Documents(Expr),
    Bucket(Box<Bucket>),
    /// `$unionWith`: the input followed by another collection's documents through a pipeline.
    UnionWith(String, Option<Pipeline>),
    GraphLookup(Box<GraphLookup>),
}

pub struct Pipeline {
    pub(crate) stages: Vec<Stage>,
    sink: Option<Sink>,
    pub(crate) limits: Limits,
}

/// Where a pipeline's output goes when its last stage is `$out` or `$merge`. Writing is the
/// server's job; the pipeline only says where and how.
#[derive(Debug, Clone, PartialEq)]
pub enum Sink {
    /// Replace the target collection's contents with the output.
    Out { db: Option<String>, coll: String },
    /// Merge the output into the target, matching on `_id`.
    Merge {
        db: Option<String>,
        coll: String,
        when_matched: WhenMatched,
        when_not_matched: WhenNotMatched,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenMatched {
    Replace,
    KeepExisting,
    Merge,
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenNotMatched {
    Insert,
    Discard,
    Fail,
}

/// `"coll"` or `{db, coll}`.
fn sink_target(spec: RawBsonRef<'_>, stage: &str) -> Result<(Option<String>, String), QueryError> {
    match spec {
        RawBsonRef::String(c) if !c.is_empty() => Ok((None, c.to_string())),
        RawBsonRef::Document(d) => {
            let db = d.get_str("db").ok().map(str::to_string);
            match d.get_str("coll") {
                Ok(c) if !c.is_empty() => Ok((db, c.to_string())),
                _ => Err(QueryError::failed_to_parse(format!(
                    "{stage} needs a target collection name"
                ))),
            }
        }
        _ => Err(QueryError::failed_to_parse(format!(
            "{stage} takes a collection name or {{db, coll}}"
        ))),
    }
}

fn parse_merge(spec: RawBsonRef<'_>) -> Result<Sink, QueryError> {
    let d = match spec {
        RawBsonRef::String(_) => {
            let (db, coll) = sink_target(spec, "$merge")?;
            return Ok(Sink::Merge {
                db,
                coll,
                when_matched: WhenMatched::Merge,
                when_not_matched: WhenNotMatched::Insert,
            });
        }
        RawBsonRef::Document(d) => d,
        _ => {
            return Err(QueryError::failed_to_parse(
                "$merge takes a document or a collection name",
            ));
        }
    };
    let into = d
        .get("into")
        .ok()
        .flatten()
        .ok_or_else(|| QueryError::failed_to_parse("$merge needs 'into'"))?;
    let (db, coll) = sink_target(into, "$merge")?;
    let mut when_matched = WhenMatched::Merge;
    let mut when_not_matched = WhenNotMatched::Insert;
    for item in d {
        let (k, v) = item.map_err(|e| QueryError::bad_value(e.to_string()))?;
        match (k.as_str(), v) {
            ("into", _) => {}
            ("on", RawBsonRef::String("_id")) => {}
            ("on", RawBsonRef::Array(a))
                if a.into_iter().flatten().all(|f| f.as_str() == Some("_id")) => {}
            ("on", _) => {
                return Err(QueryError::location(
                    51183,
                    "Cannot find index to verify that join fields will be unique: $merge on fields other than _id needs a unique index, which Mangrove does not have yet",
                ));
            }
            ("whenMatched", RawBsonRef::String(m)) => {
                when_matched = match m {
                    "replace" => WhenMatched::Replace,
                    "keepExisting" => WhenMatched::KeepExisting,
                    "merge" => WhenMatched::Merge,
                    "fail" => WhenMatched::Fail,
                    other => {
                        return Err(QueryError::bad_value(format!(
                            "Enumeration value '{other}' for field 'whenMatched' is not a valid value."
                        )));
                    }
                }
            }
            ("whenMatched", RawBsonRef::Array(_)) => {
                return Err(QueryError::new(
                    115,
                    "CommandNotSupported",
                    "$merge with a whenMatched pipeline is not supported by Mangrove yet",
                ));
            }
            ("whenNotMatched", RawBsonRef::String(m)) => {
                when_not_matched = match m {
                    "insert" => WhenNotMatched::Insert,
                    "discard" => WhenNotMatched::Discard,
                    "fail" => WhenNotMatched::Fail,
                    other => {
                        return Err(QueryError::bad_value(format!(
                            "Enumeration value '{other}' for field 'whenNotMatched' is not a valid value."
                        )));
                    }
                }
            }
            ("let", _) => {
                return Err(QueryError::new(
                    115,
                    "CommandNotSupported",
                    "$merge with 'let' is not supported by Mangrove yet",
                ));
            }
            (other, _) => {
                return Err(QueryError::location(
                    40415,
                    format!("BSON field '$merge.{other}' is an unknown field."),
                ));
            }
        }
    }
    Ok(Sink::Merge {
        db,
        coll,
        when_matched,
        when_not_matched,
    })
}

fn stage_number(v: RawBsonRef<'_>, stage: &str) -> Result<usize, QueryError> {
    match as_num(v).map(|n| n.to_f64()) {
        Some(n) if n >= 0.0 && n.fract() == 0.0 => Ok(n as usize),
        _ => Err(QueryError::location(
            15956,
            format!("invalid argument to {stage} stage: expected a non-negative integer"),
        )),
    }
}

pub(crate) fn raw_err(e: impl std::fmt::Display) -> QueryError {
    QueryError::bad_value(e.to_string())
}

impl Pipeline {
    pub fn parse(pipeline: &RawArray) -> Result<Pipeline, QueryError> {
        Self::parse_at(pipeline, 0)
    }

    pub(crate) fn parse_at(pipeline: &RawArray, depth: usize) -> Result<Pipeline, QueryError> {
        if depth > MAX_SUBPIPELINE_DEPTH {
            return Err(QueryError::new(
                5054701,
                "MaxSubPipelineDepthExceeded",
                format!(
                    "Maximum number of nested sub-pipelines exceeded. Limit is {MAX_SUBPIPELINE_DEPTH}"
                ),
            ));
        }
        let mut stages = Vec::new();
        let mut sink = None;
        for item in pipeline {
            if sink.is_some() {
                return Err(QueryError::location(
                    40601,
                    "$out and $merge can only be the final stage in the pipeline",
                ));
            }
            let stage = match item.map_err(raw_err)? {
                RawBsonRef::Document(d) => d,
                _ => {
                    return Err(QueryError::type_mismatch(
                        "Each element of the 'pipeline' array must be an object",
                    ));
                }
            };
            let mut fields = stage.iter();
            let (name, spec) = match (fields.next(), fields.next()) {
                (Some(Ok(first)), None) => first,
                _ => {
                    return Err(QueryError::location(
                        40323,
                        "A pipeline stage specification object must contain exactly one field.",
                    ));
                }
            };
            let doc_spec = || match spec {
                RawBsonRef::Document(d) => Ok(d),
                _ => Err(QueryError::failed_to_parse(format!(
                    "the {} stage specification must be an object",
                    name.as_str()
                ))),
            };
            let parsed = match name.as_str() {
                "$match" => Stage::Match(Filter::parse(doc_spec()?)?),
                "$sort" => Stage::Sort(SortSpec::parse(doc_spec()?)?),
                "$skip" => Stage::Skip(stage_number(spec, "$skip")?),
                "$limit" => match stage_number(spec, "$limit")? {
                    0 => return Err(QueryError::location(15958, "the limit must be positive")),
                    n => Stage::Limit(n),
                },
                "$project" => Stage::Project(Projection::parse(doc_spec()?)?),
                "$replaceRoot" => {
                    let new_root = doc_spec()?.get("newRoot").ok().flatten().ok_or_else(|| {
                        QueryError::location(
                            40231,
                            "no newRoot specified for the $replaceRoot stage",
                        )
                    })?;
                    Stage::ReplaceRoot(Expr::parse(new_root)?)
                }
                "$replaceWith" => Stage::ReplaceRoot(Expr::parse(spec)?),
                "$unset" => {
                    let names: Vec<&str> = match spec {
                        RawBsonRef::String(f) => vec![f],
                        RawBsonRef::Array(a) => a
                            .into_iter()
                            .map(|f| match f {
                                Ok(RawBsonRef::String(f)) => Ok(f),
                                _ => Err(QueryError::location(31120, "$unset specification must be a string or an array containing only string values")),
                            })
                            .collect::<Result<_, _>>()?,
                        _ => {
                            return Err(QueryError::location(31002, "$unset specification must be a string or an array"));
                        }
                    };
                    let mut exclusion = bson::RawDocumentBuf::new();
                    for n in names {
                        exclusion.append(bson::raw::CString::try_from(n).map_err(raw_err)?, 0i32);
                    }
                    Stage::Unset(Projection::parse(&exclusion)?)
                }
                "$addFields" | "$set" => {
                    let mut fields = Vec::new();
                    add_field_specs(doc_spec()?, &[], &mut fields, 0)?;
                    Stage::AddFields(fields)
                }
                "$count" => match spec {
                    RawBsonRef::String(s)
                        if !s.is_empty() && !s.starts_with('$') && !s.contains('.') =>
                    {
                        Stage::Count(s.to_string())
                    }
                    _ => {
                        return Err(QueryError::location(
                            40156,
                            "the count field must be a non-empty string without '$' or '.'",
                        ));
                    }
                },
                "$group" => Stage::Group(parse_group(doc_spec()?)?),
                "$sortByCount" => {
                    let by = match spec {
                        RawBsonRef::String(s) if s.starts_with('$') => Expr::parse(spec)?,
                        RawBsonRef::Document(d)
                            if d.iter().next().is_some_and(|f| {
                                f.is_ok_and(|(k, _)| k.as_str().starts_with('$'))
                            }) =>
                        {
                            Expr::parse(spec)?
                        }
                        _ => {
                            return Err(QueryError::location(
                                40148,
                                "the sortByCount field must be defined as a $-prefixed path or an expression object",
                            ));
                        }
                    };
                    stages.push(Stage::Group(Group {
                        id: by,
                        accs: vec![("count".into(), Acc::Sum(Expr::Const(Bson::Int32(1))))],
                    }));
                    Stage::Sort(SortSpec::parse(&bson::rawdoc! { "count": -1 })?)
                }
                "$unwind" => Stage::Unwind(parse_unwind(spec)?),
                "$lookup" => Stage::Lookup(Box::new(parse_lookup(doc_spec()?, depth)?)),
                "$facet" => Stage::Facet(parse_facet(doc_spec()?, depth)?),
                "$sample" => {
                    let size = doc_spec()?.get("size").ok().flatten().ok_or_else(|| {
                        QueryError::location(28749, "$sample stage must specify a size")
                    })?;
                    match as_num(size).map(|n| n.to_f64()) {
                        Some(n) if n >= 0.0 => Stage::Sample(n as usize),
                        Some(_) => {
                            return Err(QueryError::location(
                                28747,
                                "size argument to $sample must not be negative",
                            ));
                        }
                        None => {
                            return Err(QueryError::location(
                                28746,
                                "size argument to $sample must be a number",
                            ));
                        }
                    }
                }
                "$documents" => {
                    if !stages.is_empty() {
                        return Err(QueryError::location(
                            40602,
                            "$documents is only valid as the first stage in a pipeline",
                        ));
                    }
                    Stage::Documents(Expr::parse(spec)?)
                }
                "$bucket" => Stage::Bucket(Box::new(parse_bucket(doc_spec()?)?)),
                "$unionWith" => parse_union_with(spec, depth)?,
                "$graphLookup" => Stage::GraphLookup(Box::new(parse_graph_lookup(doc_spec()?)?)),
                "$out" | "$merge" if depth > 0 => {
                    return Err(QueryError::location(
                        51047,
                        format!(
                            "{} is not allowed within a $lookup or $facet sub-pipeline",
                            name.as_str()
                        ),
                    ));
                }
                "$out" => {
                    let (db, coll) = sink_target(spec, "$out")?;
                    sink = Some(Sink::Out { db, coll });
                    continue;
                }
                "$merge" => {
                    sink = Some(parse_merge(spec)?);
                    continue;
                }
                other => {
                    return Err(QueryError::location(
                        40324,
                        format!("Unrecognized pipeline stage name: '{other}'"),
                    ));
                }
            };
            stages.push(parsed);
        }
        Ok(Pipeline {
            stages,
            sink,
            limits: Limits::default(),
        })
    }

    /// Sets the per-stage memory limit (bytes) of blocking stages, `$group` included, and of a
    /// result computed at once ([`Pipeline::run`]).
    pub fn with_memory_limit(mut self, bytes: usize) -> Pipeline {
        self.limits.stage_bytes = bytes;
        self.limits.group_bytes = bytes;
        self
    }

    /// Sets every memory limit the pipeline runs under.
    pub fn with_limits(mut self, limits: Limits) -> Pipeline {
        self.limits = limits;
        self
    }

    /// This pipeline's stages after `earlier`'s (a view's pipeline before the reader's), with
    /// this pipeline's sink and limits.
    pub fn preceded_by(mut self, mut earlier: Pipeline) -> Pipeline {
        earlier.stages.append(&mut self.stages);
        self.stages = earlier.stages;
        self
    }

    /// Whether every stage may appear in a pipeline-style update (which reshapes one document).
    pub fn is_update_pipeline(&self) -> bool {
        self.sink.is_none()
            && self.stages.iter().all(|s| {
                matches!(
                    s,
                    Stage::AddFields(_)
                        | Stage::Project(_)
                        | Stage::Unset(_)
                        | Stage::ReplaceRoot(_)
                )
            })
    }

    /// The `$out` or `$merge` that ends the pipeline, if any.
    pub fn sink(&self) -> Option<&Sink> {
        self.sink.as_ref()
    }

    /// The filter of a leading `$match`, so the caller can apply it while reading.
    pub fn leading_match(&self) -> Option<&Filter> {
        match self.stages.first() {
            Some(Stage::Match(f)) => Some(f),
            _ => None,
        }
    }

    /// Whether the pipeline starts with `$documents`, so it needs no collection input.
    pub fn starts_with_documents(&self) -> bool {
        matches!(self.stages.first(), Some(Stage::Documents(_)))
    }

    /// Every collection a `$lookup` reads, at any depth (inside `$facet` and inner `$lookup`
    /// pipelines too), each once, in first-mentioned order.
    pub fn foreign_collections(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_foreign(&mut out);
        out
    }

    fn collect_foreign(&self, out: &mut Vec<String>) {
        for stage in &self.stages {
            match stage {
                Stage::Lookup(l) => {
                    if !out.contains(&l.from) {
                        out.push(l.from.clone());
                    }
                    if let Some(p) = &l.pipeline {
                        p.collect_foreign(out);
                    }
                }
                Stage::Facet(facets) => {
                    for (_, p) in facets {
                        p.collect_foreign(out);
                    }
                }
                Stage::GraphLookup(g) if !out.contains(&g.from) => out.push(g.from.clone()),
                Stage::UnionWith(coll, p) => {
                    if !out.contains(coll) {
                        out.push(coll.clone());
                    }
                    if let Some(p) = p {
                        p.collect_foreign(out);
                    }
                }
                _ => {}
            }
        }
    }

    /// Runs the stages over `docs`, which have already passed [`Pipeline::leading_match`].
    /// A `$lookup` fails here; use [`Pipeline::run_with`] to supply foreign collections.
    pub fn run(&self, docs: Vec<RawDocumentBuf>) -> Result<Vec<RawDocumentBuf>, QueryError> {
        self.run_with(docs, &|name| {
            Err(QueryError::bad_value(format!(
                "$lookup from '{name}' is not available in this context"
            )))
        })
    }

    /// Runs the stages over `docs` (already filtered by [`Pipeline::leading_match`]) and
    /// returns the whole result, which may hold at most the per-stage memory limit;
    /// `foreign` returns the documents of a collection a `$lookup` names, and is called at
    /// most once per collection.
    pub fn run_with(
        &self,
        docs: Vec<RawDocumentBuf>,
        foreign: &dyn Fn(&str) -> Result<Vec<RawDocumentBuf>, QueryError>,
    ) -> Result<Vec<RawDocumentBuf>, QueryError> {
        stream::run_with(self, docs, foreign)
    }

    /// A [`Runner`] the caller feeds with input documents (already filtered by
    /// [`Pipeline::leading_match`]) and pulls results from, one at a time. `foreign` holds
    /// every collection [`Pipeline::foreign_collections`] names.
    pub fn into_runner(
        self,
        foreign: std::collections::HashMap<String, Vec<RawDocumentBuf>>,
    ) -> Runner {
        Runner::new(self, foreign)
    }
}

/// Sets (or, for a missing value, removes) `path` in `doc`, creating intermediate documents.
pub(crate) fn set_path(doc: &mut Document, path: &[String], value: Option<Bson>) {
    set_in(doc, path, &value);
}

/// An array met mid-path gets the field set in each of its document elements, as `$addFields`
/// does with `"a.b"` when `a` is an array of documents.
fn set_in(target: &mut Document, path: &[String], value: &Option<Bson>) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        match value {
            Some(v) => {
                target.insert(first.clone(), v.clone());
            }
            None => {
                target.remove(first);
            }
        }
        return;
    }
    match target.get_mut(first) {
        Some(Bson::Document(d)) => set_in(d, rest, value),
        Some(Bson::Array(items)) => {
            for item in items {
                if let Bson::Document(d) = item {
                    set_in(d, rest, value);
                }
            }
        }
        _ if value.is_none() => {}
        _ => {
            let mut d = Document::new();
            set_in(&mut d, rest, value);
            target.insert(first.clone(), d);
        }
    }
}

/// `$addFields` specs: a nested object without operators names sub-fields (`{a: {b: 1}}` is
/// `{"a.b": 1}`, merging into an existing `a`), as in mongod.
fn add_field_specs(
    spec: &RawDocument,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, Expr)>,
    depth: usize,
) -> Result<(), QueryError> {
    if depth > 100 {
        return Err(QueryError::bad_value(
            "$addFields specification is nested too deeply",
        ));
    }
    for item in spec {
        let (k, v) = item.map_err(raw_err)?;
        if k.as_str().is_empty() || k.as_str().starts_with('$') {
            return Err(QueryError::location(
                16410,
                format!(
                    "FieldPath field names may not start with '$': '{}'",
                    k.as_str()
                ),
            ));
        }
        let mut path = prefix.to_vec();
        path.extend(split_path(k.as_str()));
        match v {
            RawBsonRef::Document(d)
                if !d.is_empty()
                    && !d
                        .iter()
                        .next()
                        .is_some_and(|f| f.is_ok_and(|(k, _)| k.as_str().starts_with('$'))) =>
            {
                add_field_specs(d, &path, out, depth + 1)?;
            }
            _ => out.push((path, Expr::parse(v)?)),
        }
    }
    Ok(())
}

/// Sets each path to its expression's value (computed on the input document); a missing
/// value (`$$REMOVE`, an absent field) leaves the path absent.
pub(crate) fn add_fields(
    doc: &RawDocument,
    fields: &[(Vec<String>, Expr)],
) -> Result<RawDocumentBuf, QueryError> {
    let mut out = Document::try_from(doc).map_err(raw_err)?;
    // New values are charged as they are set, so many large ones cannot add up to a document
    // beyond what one evaluation may hold.
    let mut held = crate::memory::Held::new("$addFields");
    for (path, expr) in fields {
        let value = expr.eval(doc)?;
        held.keep_opt(&value)?;
        set_path(&mut out, path, value);
    }
    to_raw(&out)
}

pub(crate) fn to_raw(d: &Document) -> Result<RawDocumentBuf, QueryError> {
    RawDocumentBuf::try_from(d).map_err(raw_err)
}

fn parse_unwind(spec: RawBsonRef<'_>) -> Result<Unwind, QueryError> {
    let (path, index, preserve) = match spec {
        RawBsonRef::String(p) => (p, None, false),
        RawBsonRef::Document(d) => {
            let mut path = None;
            let mut index = None;
            let mut preserve = false;
            for item in d {
                let (k, v) = item.map_err(raw_err)?;
                match (k.as_str(), v) {
                    ("path", RawBsonRef::String(p)) => path = Some(p),
                    ("path", _) => {
                        return Err(QueryError::location(
                            28808,
                            "expected a string as the path for $unwind stage",
                        ));
                    }
                    ("includeArrayIndex", RawBsonRef::String(i)) => {
                        if i.is_empty() || i.starts_with('$') {
                            return Err(QueryError::location(
                                28822,
                                format!(
                                    "includeArrayIndex option to $unwind stage should not be prefixed with a '$': {i}"
                                ),
                            ));
                        }
                        index = Some(i);
                    }
                    ("includeArrayIndex", _) => {
                        return Err(QueryError::location(
                            28810,
                            "expected a non-empty string for the includeArrayIndex option to $unwind stage",
                        ));
                    }
                    ("preserveNullAndEmptyArrays", RawBsonRef::Boolean(b)) => preserve = b,
                    ("preserveNullAndEmptyArrays", _) => {
                        return Err(QueryError::location(
                            28809,
                            "expected a boolean for the preserveNullAndEmptyArrays option to $unwind stage",
                        ));
                    }
                    (other, _) => {
                        return Err(QueryError::location(
                            28811,
                            format!("unrecognized option to $unwind stage: {other}"),
                        ));
                    }
                }
            }
            let path = path
                .ok_or_else(|| QueryError::location(28812, "no path specified to $unwind stage"))?;
            (path, index, preserve)
        }
        other => {
            return Err(QueryError::location(
                15981,
                format!(
                    "expected either a string or an object as specification for $unwind stage, got {}",
                    crate::update::type_name(&Bson::try_from(other).unwrap_or(Bson::Null))
                ),
            ));
        }
    };
    let Some(field) = path.strip_prefix('$').filter(|f| !f.is_empty()) else {
        return Err(QueryError::location(
            28818,
            format!("path option to $unwind stage should be prefixed with a '$': {path}"),
        ));
    };
    Ok(Unwind {
        path: split_path(field),
        index: index.map(split_path),
        preserve,
    })
}

/// The value at a dotted path through embedded documents only (arrays end the path), as
/// `$unwind` reads it.
pub(crate) fn nested<'a>(doc: &'a RawDocument, path: &[String]) -> Option<RawBsonRef<'a>> {
    let (first, rest) = path.split_first()?;
    let v = doc.get(first).ok()??;
    if rest.is_empty() {
        return Some(v);
    }
    match v {
        RawBsonRef::Document(d) => nested(d, rest),
        _ => None,
    }
}

fn parse_union_with(spec: RawBsonRef<'_>, depth: usize) -> Result<Stage, QueryError> {
    match spec {
        RawBsonRef::String(c) if !c.is_empty() => Ok(Stage::UnionWith(c.to_string(), None)),
        RawBsonRef::Document(d) => {
            let mut coll = None;
            let mut pipeline = None;
            for item in d {
                let (k, v) = item.map_err(raw_err)?;
                match (k.as_str(), v) {
                    ("coll", RawBsonRef::String(c)) if !c.is_empty() => coll = Some(c.to_string()),
                    ("pipeline", RawBsonRef::Array(p)) => {
                        pipeline = Some(Pipeline::parse_at(p, depth + 1)?)
                    }
                    (other, _) => {
                        return Err(QueryError::failed_to_parse(format!(
                            "$unionWith: unexpected or malformed argument '{other}'"
                        )));
                    }
                }
            }
            let coll = coll.ok_or_else(|| {
                QueryError::failed_to_parse("$unionWith requires a 'coll' collection name")
            })?;
            Ok(Stage::UnionWith(coll, pipeline))
        }
        _ => Err(QueryError::failed_to_parse(
            "the $unionWith stage specification must be an object or a string",
        )),
    }
}

fn parse_facet(spec: &RawDocument, depth: usize) -> Result<Vec<(String, Pipeline)>, QueryError> {
    let mut facets = Vec::new();
    for item in spec {
        let (k, v) = item.map_err(raw_err)?;
        let name = k.as_str();
        if name.is_empty() || name.starts_with('$') || name.contains('.') {
            return Err(QueryError::location(
                40352,
                format!("FieldPath field names may not start with '$' or contain '.': '{name}'"),
            ));
        }
        let RawBsonRef::Array(stages) = v else {
            return Err(QueryError::location(
                40170,
                format!(
                    "arguments to $facet must be arrays, {name} is type {:?}",
                    v.element_type()
                ),
            ));
        };
        for stage in stages {
            if let Ok(RawBsonRef::Document(s)) = stage
                && let Some(Ok((stage_name, _))) = s.iter().next()
                && matches!(
                    stage_name.as_str(),
                    "$facet" | "$out" | "$merge" | "$documents"
                )
            {
                return Err(QueryError::location(
                    40600,
                    format!(
                        "{} is not allowed to be used within a $facet stage",
                        stage_name.as_str()
                    ),
                ));
            }
        }
        facets.push((name.to_string(), Pipeline::parse_at(stages, depth + 1)?));
    }
    if facets.is_empty() {
        return Err(QueryError::location(
            40169,
            "the $facet specification must be a non-empty object",
        ));
    }
    Ok(facets)
}

pub(crate) fn key_of(v: RawBsonRef<'_>) -> Vec<u8> {
    let mut key = Vec::new();
    encode_key(v, &mut key);
    key
}

/// `$replaceRoot`/`$replaceWith`: the document `new_root` evaluates to.
pub(crate) fn replace_root(
    new_root: &Expr,
    doc: &RawDocument,
) -> Result<RawDocumentBuf, QueryError> {
    match new_root.eval(doc)? {
        Some(Bson::Document(root)) => to_raw(&root),
        other => Err(QueryError::location(
            40228,
            format!(
                "'newRoot' expression must evaluate to an object, but resulting value was: {}",
                other.map_or("MISSING".to_string(), |v| v.to_string())
            ),
        )),
    }
}
