//! The aggregation pipeline: stages parsed from a command's `pipeline` array and run over the
//! documents the server reads. `$out`/`$merge` end a pipeline as a [`Sink`] the server writes,
//! and `$lookup`, `$graphLookup` and `$unionWith` read other collections through a callback
//! ([`Pipeline::run_with`]), so the crate stays pure. Expressions live in `expr.rs`.
//!
//! Stages: `$match $sort $skip $limit $project $addFields/$set $unset $replaceRoot/$replaceWith
//! $count $group $bucket $sortByCount $unwind $lookup $graphLookup $unionWith $facet $sample
//! $documents`, then `$out`/`$merge`. Anything else is refused with mongod's error (40324).
//!
//! Stages that hold many documents at once (`$group`, `$sort`, `$facet`, `$lookup`,
//! `$unwind`, `$bucket`) are bounded by a per-stage memory limit; there is no spilling to disk.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use bson::raw::{RawArray, RawBsonRef, RawDocument};
use bson::{Bson, Document, RawDocumentBuf};

use crate::compare::as_num;
pub use crate::expr::with_let;
use crate::expr::{Expr, cmp_bson, random_unit, sum_values, with_bound, with_vars};
use crate::path::{distinct_values, split_path, walk};
use crate::{Filter, Projection, QueryError, SortSpec, encode_key};

/// The memory one stage may hold before the pipeline fails, as mongod's default for
/// `internalQueryMaxBlockingSortMemoryUsageBytes` and `$group`.
pub const DEFAULT_MEMORY_LIMIT: usize = 100 * 1024 * 1024;

/// `$lookup` and `$facet` pipelines nest at most this deep, as mongod's
/// `internalMaxSubPipelineViewDepth`.
const MAX_SUBPIPELINE_DEPTH: usize = 20;

enum Acc {
    Sum(Expr),
    Avg(Expr),
    Min(Expr),
    Max(Expr),
    First(Expr),
    Last(Expr),
    Push(Expr),
    AddToSet(Expr),
    Count,
    MergeObjects(Expr),
    StdDev(Expr, bool),
    /// `$firstN`, `$lastN`, `$minN`, `$maxN`: (kind, input, n).
    TopN(NKind, Expr, Expr),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum NKind {
    First,
    Last,
    Min,
    Max,
}

enum AccState {
    Sum(Bson),
    Avg {
        total: f64,
        n: u64,
        decimal: bool,
    },
    Pick(Option<Bson>),
    Array(Vec<Bson>),
    /// `$addToSet`: the values and their order-preserving keys, so membership is a hash probe
    /// and equal numbers of different types count once.
    Set(Vec<Bson>, std::collections::HashSet<Vec<u8>>),
    /// The `$firstN`-family's values and `n` (fixed by the group's first document).
    Bounded(Vec<Bson>, usize),
    Merge(Document),
    /// Welford's running (count, mean, sum of squared deviations).
    StdDev(u64, f64, f64),
}

struct Group {
    id: Expr,
    accs: Vec<(String, Acc)>,
}

struct Unwind {
    path: Vec<String>,
    index: Option<Vec<String>>,
    preserve: bool,
}

struct Lookup {
    from: String,
    as_path: Vec<String>,
    /// `localField` and `foreignField`, for the equality form (alone or with a pipeline).
    equality: Option<(String, Vec<String>)>,
    lets: Vec<(String, Expr)>,
    pipeline: Option<Pipeline>,
}

struct Bucket {
    group_by: Expr,
    boundaries: Vec<Bson>,
    default: Option<Bson>,
    accs: Vec<(String, Acc)>,
}

enum Stage {
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

struct GraphLookup {
    from: String,
    start_with: Expr,
    connect_from: String,
    connect_to: Vec<String>,
    as_path: Vec<String>,
    max_depth: Option<u64>,
    depth_field: Option<Vec<String>>,
    restrict: Option<Filter>,
}

pub struct Pipeline {
    stages: Vec<Stage>,
    sink: Option<Sink>,
    memory_limit: usize,
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

fn raw_err(e: impl std::fmt::Display) -> QueryError {
    QueryError::bad_value(e.to_string())
}

fn memory_error(stage: &str, limit: usize) -> QueryError {
    QueryError::new(
        292,
        "QueryExceededMemoryLimitNoDiskUseAllowed",
        format!(
            "{stage} exceeded the per-stage memory limit of {limit} bytes; add a $match or $limit earlier in the pipeline to reduce its input (spilling to disk with allowDiskUse is not implemented)"
        ),
    )
}

/// A rough size of a value in memory, for the stage memory limits.
fn approx_size(v: &Bson) -> usize {
    match v {
        Bson::String(s) | Bson::Symbol(s) | Bson::JavaScriptCode(s) => 16 + s.len(),
        Bson::Array(a) => 16 + a.iter().map(approx_size).sum::<usize>(),
        Bson::Document(d) => {
            16 + d
                .iter()
                .map(|(k, v)| k.len() + approx_size(v))
                .sum::<usize>()
        }
        Bson::Binary(b) => 16 + b.bytes.len(),
        _ => 16,
    }
}

impl Pipeline {
    pub fn parse(pipeline: &RawArray) -> Result<Pipeline, QueryError> {
        Self::parse_at(pipeline, 0)
    }

    fn parse_at(pipeline: &RawArray, depth: usize) -> Result<Pipeline, QueryError> {
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
            memory_limit: DEFAULT_MEMORY_LIMIT,
        })
    }

    /// Sets the per-stage memory limit (bytes) for `$group`, `$sort`, `$facet`, `$lookup`,
    /// `$unwind` and `$bucket`.
    pub fn with_memory_limit(mut self, bytes: usize) -> Pipeline {
        self.memory_limit = bytes;
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

    /// Runs the stages over `docs` (already filtered by [`Pipeline::leading_match`]);
    /// `foreign` returns the documents of a collection a `$lookup` names, and is called at
    /// most once per collection.
    pub fn run_with(
        &self,
        docs: Vec<RawDocumentBuf>,
        foreign: &dyn Fn(&str) -> Result<Vec<RawDocumentBuf>, QueryError>,
    ) -> Result<Vec<RawDocumentBuf>, QueryError> {
        let ctx = Ctx {
            foreign,
            cache: RefCell::new(HashMap::new()),
            limit: self.memory_limit,
        };
        let skip_first = usize::from(self.leading_match().is_some());
        run_stages(&self.stages[skip_first..], docs, &ctx)
    }
}

struct Ctx<'a> {
    foreign: &'a dyn Fn(&str) -> Result<Vec<RawDocumentBuf>, QueryError>,
    cache: RefCell<HashMap<String, Rc<Vec<RawDocumentBuf>>>>,
    limit: usize,
}

impl Ctx<'_> {
    fn collection(&self, name: &str) -> Result<Rc<Vec<RawDocumentBuf>>, QueryError> {
        if let Some(docs) = self.cache.borrow().get(name) {
            return Ok(docs.clone());
        }
        let docs = Rc::new((self.foreign)(name)?);
        self.cache
            .borrow_mut()
            .insert(name.to_string(), docs.clone());
        Ok(docs)
    }

    fn check(&self, stage: &str, used: usize) -> Result<(), QueryError> {
        if used > self.limit {
            return Err(memory_error(stage, self.limit));
        }
        Ok(())
    }
}

fn run_stages(
    stages: &[Stage],
    docs: Vec<RawDocumentBuf>,
    ctx: &Ctx<'_>,
) -> Result<Vec<RawDocumentBuf>, QueryError> {
    let mut docs = docs;
    for stage in stages {
        docs = match stage {
            Stage::Match(f) => {
                let mut out = Vec::with_capacity(docs.len());
                for d in docs {
                    if f.matches_checked(&d)? {
                        out.push(d);
                    }
                }
                out
            }
            Stage::Sort(s) => {
                ctx.check("$sort", docs.iter().map(|d| d.as_bytes().len()).sum())?;
                docs.sort_by(|a, b| s.compare(a, b));
                docs
            }
            Stage::Skip(n) => docs.into_iter().skip(*n).collect(),
            Stage::Limit(n) => docs.into_iter().take(*n).collect(),
            Stage::Project(p) | Stage::Unset(p) => {
                docs.iter().map(|d| p.apply(d)).collect::<Result<_, _>>()?
            }
            Stage::AddFields(fields) => docs
                .iter()
                .map(|d| add_fields(d, fields))
                .collect::<Result<_, _>>()?,
            Stage::ReplaceRoot(e) => docs
                .iter()
                .map(|d| match e.eval(d)? {
                    Some(Bson::Document(root)) => to_raw(&root),
                    other => Err(QueryError::location(
                        40228,
                        format!(
                            "'newRoot' expression must evaluate to an object, but resulting value was: {}",
                            other.map_or("MISSING".to_string(), |v| v.to_string())
                        ),
                    )),
                })
                .collect::<Result<_, _>>()?,
            Stage::Count(field) => {
                if docs.is_empty() {
                    Vec::new()
                } else {
                    let mut out = Document::new();
                    out.insert(field.clone(), docs.len() as i32);
                    vec![to_raw(&out)?]
                }
            }
            Stage::Group(g) => run_group(&g.accs, &docs, ctx, "$group", |d| {
                Ok(g.id.eval(d)?.unwrap_or(Bson::Null))
            })?,
            Stage::Bucket(b) => run_bucket(b, &docs, ctx)?,
            Stage::Unwind(u) => run_unwind(u, docs, ctx)?,
            Stage::Lookup(l) => run_lookup(l, docs, ctx)?,
            Stage::Facet(facets) => {
                let mut out = Document::new();
                let mut used = 0;
                for (name, p) in facets {
                    let result = run_stages(&p.stages, docs.clone(), ctx)?;
                    used += result.iter().map(|d| d.as_bytes().len()).sum::<usize>();
                    ctx.check("$facet", used)?;
                    let items = result
                        .iter()
                        .map(|d| Document::try_from(d.as_ref()).map(Bson::Document))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(raw_err)?;
                    out.insert(name.clone(), items);
                }
                vec![to_raw(&out)?]
            }
            Stage::Sample(n) => {
                // A partial Fisher-Yates shuffle: the first n slots end up a uniform sample.
                let mut docs = docs;
                let take = (*n).min(docs.len());
                for i in 0..take {
                    let j = i + ((random_unit() * (docs.len() - i) as f64) as usize)
                        .min(docs.len() - i - 1);
                    docs.swap(i, j);
                }
                docs.truncate(take);
                docs
            }
            Stage::GraphLookup(g) => run_graph_lookup(g, docs, ctx)?,
            Stage::UnionWith(coll, p) => {
                let theirs = ctx.collection(coll)?.as_ref().clone();
                let theirs = match p {
                    Some(p) => run_stages(&p.stages, theirs, ctx)?,
                    None => theirs,
                };
                docs.extend(theirs);
                docs
            }
            Stage::Documents(e) => {
                let empty = RawDocumentBuf::new();
                let invalid = || {
                    QueryError::location(
                        5858203,
                        "error during $documents stage: an array of objects is expected",
                    )
                };
                match e.eval(&empty)? {
                    Some(Bson::Array(items)) => items
                        .into_iter()
                        .map(|v| match v {
                            Bson::Document(d) => to_raw(&d),
                            _ => Err(invalid()),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(invalid()),
                }
            }
        };
    }
    Ok(docs)
}

/// Sets (or, for a missing value, removes) `path` in `doc`, creating intermediate documents.
fn set_path(doc: &mut Document, path: &[String], value: Option<Bson>) {
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
fn add_fields(
    doc: &RawDocument,
    fields: &[(Vec<String>, Expr)],
) -> Result<RawDocumentBuf, QueryError> {
    let mut out = Document::try_from(doc).map_err(raw_err)?;
    for (path, expr) in fields {
        let value = expr.eval(doc)?;
        set_path(&mut out, path, value);
    }
    to_raw(&out)
}

fn to_raw(d: &Document) -> Result<RawDocumentBuf, QueryError> {
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
fn nested<'a>(doc: &'a RawDocument, path: &[String]) -> Option<RawBsonRef<'a>> {
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

fn run_unwind(
    u: &Unwind,
    docs: Vec<RawDocumentBuf>,
    ctx: &Ctx<'_>,
) -> Result<Vec<RawDocumentBuf>, QueryError> {
    let mut out = Vec::new();
    let mut used = 0usize;
    for doc in docs {
        let with_index = |d: &mut Document, i: Option<i64>| {
            if let Some(index) = &u.index {
                set_path(d, index, Some(i.map_or(Bson::Null, Bson::Int64)));
            }
        };
        match nested(&doc, &u.path) {
            Some(RawBsonRef::Array(items)) => {
                let base = Document::try_from(doc.as_ref()).map_err(raw_err)?;
                let mut any = false;
                for (i, item) in items.into_iter().enumerate() {
                    any = true;
                    let item = Bson::try_from(item.map_err(raw_err)?).map_err(raw_err)?;
                    let mut d = base.clone();
                    set_path(&mut d, &u.path, Some(item));
                    with_index(&mut d, Some(i as i64));
                    let raw = to_raw(&d)?;
                    used += raw.as_bytes().len();
                    ctx.check("$unwind", used)?;
                    out.push(raw);
                }
                if !any && u.preserve {
                    let mut d = base;
                    set_path(&mut d, &u.path, None);
                    with_index(&mut d, None);
                    out.push(to_raw(&d)?);
                }
            }
            None | Some(RawBsonRef::Null) | Some(RawBsonRef::Undefined) => {
                if u.preserve {
                    if u.index.is_some() {
                        let mut d = Document::try_from(doc.as_ref()).map_err(raw_err)?;
                        with_index(&mut d, None);
                        out.push(to_raw(&d)?);
                    } else {
                        out.push(doc);
                    }
                }
            }
            // A scalar unwinds to itself, as a one-element array would.
            Some(_) => {
                if u.index.is_some() {
                    let mut d = Document::try_from(doc.as_ref()).map_err(raw_err)?;
                    with_index(&mut d, None);
                    out.push(to_raw(&d)?);
                } else {
                    out.push(doc);
                }
            }
        }
    }
    Ok(out)
}

fn parse_lookup(spec: &RawDocument, depth: usize) -> Result<Lookup, QueryError> {
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

fn key_of(v: RawBsonRef<'_>) -> Vec<u8> {
    let mut key = Vec::new();
    encode_key(v, &mut key);
    key
}

fn run_lookup(
    l: &Lookup,
    docs: Vec<RawDocumentBuf>,
    ctx: &Ctx<'_>,
) -> Result<Vec<RawDocumentBuf>, QueryError> {
    let foreign = ctx.collection(&l.from)?;
    // The equality form matches like `{foreignField: {$in: localValues}}`: an array on either
    // side matches through its elements, and a missing (or empty-array) local value matches
    // null, i.e. foreign documents whose field is null or missing. A hash of the foreign keys
    // makes that one pass over each side.
    let index = match &l.equality {
        Some((foreign_field, _)) => {
            let parts = split_path(foreign_field);
            let mut index: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
            for (i, d) in foreign.iter().enumerate() {
                let mut keys = Vec::new();
                walk(d, &parts, true, &mut |v| {
                    keys.push(key_of(v.unwrap_or(RawBsonRef::Null)));
                    false
                });
                keys.sort();
                keys.dedup();
                for k in keys {
                    index.entry(k).or_default().push(i);
                }
            }
            Some(index)
        }
        None => None,
    };
    let mut out = Vec::with_capacity(docs.len());
    let mut used = 0usize;
    for doc in docs {
        let hits: Option<Vec<usize>> = match (&l.equality, &index) {
            (Some((_, local)), Some(index)) => {
                let local = local.join(".");
                let mut values: Vec<RawBsonRef<'_>> = distinct_values(&doc, &local);
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
            _ => None,
        };
        // The sub-pipeline's leading $match is applied before copying foreign documents, so a
        // selective join does not copy the whole collection for every input document.
        let pick = |filter: Option<&Filter>| -> Result<Vec<RawDocumentBuf>, QueryError> {
            let mut picked = Vec::new();
            let mut consider = |d: &RawDocumentBuf| -> Result<(), QueryError> {
                if filter.map_or(Ok(true), |f| f.matches_checked(d))? {
                    picked.push(d.clone());
                }
                Ok(())
            };
            match &hits {
                Some(hits) => {
                    for &i in hits {
                        consider(&foreign[i])?;
                    }
                }
                None => {
                    for d in foreign.iter() {
                        consider(d)?;
                    }
                }
            }
            Ok(picked)
        };
        let joined = match &l.pipeline {
            Some(p) => {
                let mut vars = Vec::with_capacity(l.lets.len());
                for (name, e) in &l.lets {
                    vars.push((name.clone(), e.eval(&doc)?.unwrap_or(Bson::Null)));
                }
                with_vars(vars, || {
                    let (first, rest) = match p.stages.first() {
                        Some(Stage::Match(f)) => (Some(f), &p.stages[1..]),
                        _ => (None, &p.stages[..]),
                    };
                    run_stages(rest, pick(first)?, ctx)
                })?
            }
            None => pick(None)?,
        };
        used += joined.iter().map(|d| d.as_bytes().len()).sum::<usize>();
        ctx.check("$lookup", used)?;
        let items = joined
            .iter()
            .map(|d| Document::try_from(d.as_ref()).map(Bson::Document))
            .collect::<Result<Vec<_>, _>>()
            .map_err(raw_err)?;
        let mut d = Document::try_from(doc.as_ref()).map_err(raw_err)?;
        set_path(&mut d, &l.as_path, Some(Bson::Array(items)));
        out.push(to_raw(&d)?);
    }
    Ok(out)
}

fn parse_graph_lookup(spec: &RawDocument) -> Result<GraphLookup, QueryError> {
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

/// Breadth-first search over the foreign collection: each round matches `connectToField`
/// against the values found so far (with a query's array semantics) and follows the matches'
/// `connectFromField`; a document is reported once, at the depth it was first reached.
fn run_graph_lookup(
    g: &GraphLookup,
    docs: Vec<RawDocumentBuf>,
    ctx: &Ctx<'_>,
) -> Result<Vec<RawDocumentBuf>, QueryError> {
    let foreign = ctx.collection(&g.from)?;
    let mut index: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
    for (i, d) in foreign.iter().enumerate() {
        if let Some(f) = &g.restrict
            && !f.matches_checked(d)?
        {
            continue;
        }
        let mut keys = Vec::new();
        walk(d, &g.connect_to, true, &mut |v| {
            keys.push(key_of(v.unwrap_or(RawBsonRef::Null)));
            false
        });
        keys.sort();
        keys.dedup();
        for k in keys {
            index.entry(k).or_default().push(i);
        }
    }
    let mut out = Vec::with_capacity(docs.len());
    let mut used = 0usize;
    for doc in docs {
        let mut frontier: Vec<Vec<u8>> = Vec::new();
        let push_values = |v: &Bson, frontier: &mut Vec<Vec<u8>>| {
            let items = match v {
                Bson::Array(items) => items.clone(),
                other => vec![other.clone()],
            };
            for item in items {
                if let Ok(raw) = bson::RawBson::try_from(item) {
                    frontier.push(key_of(raw.as_raw_bson_ref()));
                }
            }
        };
        if let Some(start) = g.start_with.eval(&doc)? {
            push_values(&start, &mut frontier);
        }
        let mut seen_keys: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
        let mut found: Vec<(usize, i64)> = Vec::new();
        let mut reached: std::collections::HashSet<usize> = std::collections::HashSet::new();
        let mut depth = 0i64;
        while !frontier.is_empty() && g.max_depth.is_none_or(|m| depth as u64 <= m) {
            let mut next = Vec::new();
            for key in frontier.drain(..) {
                if !seen_keys.insert(key.clone()) {
                    continue;
                }
                for &i in index.get(&key).map_or(&[][..], Vec::as_slice) {
                    if !reached.insert(i) {
                        continue;
                    }
                    found.push((i, depth));
                    used += foreign[i].as_bytes().len();
                    ctx.check("$graphLookup", used)?;
                    for v in distinct_values(&foreign[i], &g.connect_from) {
                        if let Ok(b) = Bson::try_from(v) {
                            push_values(&b, &mut next);
                        }
                    }
                }
            }
            frontier = next;
            depth += 1;
        }
        let mut items = Vec::with_capacity(found.len());
        for (i, at) in found {
            let mut d = Document::try_from(foreign[i].as_ref()).map_err(raw_err)?;
            if let Some(field) = &g.depth_field {
                set_path(&mut d, field, Some(Bson::Int64(at)));
            }
            items.push(Bson::Document(d));
        }
        let mut d = Document::try_from(doc.as_ref()).map_err(raw_err)?;
        set_path(&mut d, &g.as_path, Some(Bson::Array(items)));
        out.push(to_raw(&d)?);
    }
    Ok(out)
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

fn parse_accumulators(spec: &RawDocument, skip: &[&str]) -> Result<Vec<(String, Acc)>, QueryError> {
    let mut accs = Vec::new();
    for item in spec {
        let (k, v) = item.map_err(raw_err)?;
        if skip.contains(&k.as_str()) {
            continue;
        }
        if k.as_str().contains('.') {
            return Err(QueryError::location(
                40235,
                format!("The field name '{}' cannot contain '.'", k.as_str()),
            ));
        }
        let RawBsonRef::Document(acc) = v else {
            return Err(QueryError::location(
                40234,
                format!("The field '{}' must be an accumulator object", k.as_str()),
            ));
        };
        let mut fields = acc.iter();
        let (op, arg) = match (fields.next(), fields.next()) {
            (Some(Ok(pair)), None) => pair,
            _ => {
                return Err(QueryError::location(
                    40238,
                    format!("The field '{}' must specify one accumulator", k.as_str()),
                ));
            }
        };
        let unary = || {
            if let RawBsonRef::Array(_) = arg {
                return Err(QueryError::location(
                    40237,
                    format!("The {} accumulator is a unary operator", op.as_str()),
                ));
            }
            Expr::parse(arg)
        };
        let acc = match op.as_str() {
            "$sum" => Acc::Sum(unary()?),
            "$avg" => Acc::Avg(unary()?),
            "$min" => Acc::Min(unary()?),
            "$max" => Acc::Max(unary()?),
            "$first" => Acc::First(unary()?),
            "$last" => Acc::Last(unary()?),
            "$push" => Acc::Push(unary()?),
            "$addToSet" => Acc::AddToSet(unary()?),
            "$mergeObjects" => Acc::MergeObjects(unary()?),
            "$stdDevPop" => Acc::StdDev(unary()?, false),
            "$stdDevSamp" => Acc::StdDev(unary()?, true),
            "$firstN" | "$lastN" | "$minN" | "$maxN" => {
                let RawBsonRef::Document(spec) = arg else {
                    return Err(QueryError::location(
                        5787801,
                        format!(
                            "specification must be an object; found {:?}",
                            arg.element_type()
                        ),
                    ));
                };
                let part = |name: &str, code: i32| {
                    spec.get(name)
                        .ok()
                        .flatten()
                        .ok_or_else(|| {
                            QueryError::location(
                                code,
                                format!("{} requires an '{name}' field", op.as_str()),
                            )
                        })
                        .and_then(Expr::parse)
                };
                let kind = match op.as_str() {
                    "$firstN" => NKind::First,
                    "$lastN" => NKind::Last,
                    "$minN" => NKind::Min,
                    _ => NKind::Max,
                };
                Acc::TopN(kind, part("input", 5787907)?, part("n", 5787906)?)
            }
            "$count" => match arg {
                RawBsonRef::Document(d) if d.is_empty() => Acc::Count,
                _ => {
                    return Err(QueryError::location(
                        5424000,
                        "$count takes no arguments, i.e. $count:{}",
                    ));
                }
            },
            other => {
                return Err(QueryError::location(
                    15952,
                    format!("unknown group operator '{other}'"),
                ));
            }
        };
        accs.push((k.as_str().to_string(), acc));
    }
    Ok(accs)
}

fn parse_group(spec: &RawDocument) -> Result<Group, QueryError> {
    let id =
        spec.get("_id").ok().flatten().ok_or_else(|| {
            QueryError::location(15955, "a group specification must include an _id")
        })?;
    Ok(Group {
        id: Expr::parse(id)?,
        accs: parse_accumulators(spec, &["_id"])?,
    })
}

fn parse_bucket(spec: &RawDocument) -> Result<Bucket, QueryError> {
    let mut group_by = None;
    let mut boundaries = None;
    let mut default = None;
    let mut accs = None;
    for item in spec {
        let (k, v) = item.map_err(raw_err)?;
        match k.as_str() {
            "groupBy" => group_by = Some(Expr::parse(v)?),
            "boundaries" => match v {
                RawBsonRef::Array(a) => {
                    boundaries = Some(
                        a.into_iter()
                            .map(|b| {
                                b.map_err(raw_err)
                                    .and_then(|b| Bson::try_from(b).map_err(raw_err))
                            })
                            .collect::<Result<Vec<_>, _>>()?,
                    )
                }
                _ => {
                    return Err(QueryError::location(
                        40200,
                        "The $bucket 'boundaries' field must be an array",
                    ));
                }
            },
            "default" => default = Some(Bson::try_from(v).map_err(raw_err)?),
            "output" => match v {
                RawBsonRef::Document(d) => accs = Some(parse_accumulators(d, &[])?),
                _ => {
                    return Err(QueryError::location(
                        40196,
                        "The $bucket 'output' field must be an object",
                    ));
                }
            },
            other => {
                return Err(QueryError::location(
                    40197,
                    format!("Unrecognized option to $bucket: {other}."),
                ));
            }
        }
    }
    let (Some(group_by), Some(boundaries)) = (group_by, boundaries) else {
        return Err(QueryError::location(
            40198,
            "$bucket requires 'groupBy' and 'boundaries' to be specified.",
        ));
    };
    if boundaries.len() < 2 {
        return Err(QueryError::location(
            40192,
            "The $bucket 'boundaries' field must have at least 2 values",
        ));
    }
    for pair in boundaries.windows(2) {
        let bracket = |b: &Bson| {
            bson::RawBson::try_from(b.clone())
                .map(|r| crate::compare::type_bracket(r.as_raw_bson_ref()))
                .unwrap_or(0)
        };
        if bracket(&pair[0]) != bracket(&pair[1]) {
            return Err(QueryError::location(
                40193,
                "All values in the the 'boundaries' option to $bucket must have the same type",
            ));
        }
        if !cmp_bson(&pair[0], &pair[1]).is_lt() {
            return Err(QueryError::location(
                40194,
                "The 'boundaries' option to $bucket must be sorted in ascending order",
            ));
        }
    }
    if let Some(d) = &default
        && cmp_bson(d, &boundaries[0]).is_ge()
        && cmp_bson(d, &boundaries[boundaries.len() - 1]).is_lt()
    {
        return Err(QueryError::location(
            40199,
            "The $bucket 'default' field must be less than the lowest boundary or greater than or equal to the highest boundary.",
        ));
    }
    let accs =
        accs.unwrap_or_else(|| vec![("count".into(), Acc::Sum(Expr::Const(Bson::Int32(1))))]);
    Ok(Bucket {
        group_by,
        boundaries,
        default,
        accs,
    })
}

fn run_bucket(
    b: &Bucket,
    docs: &[RawDocumentBuf],
    ctx: &Ctx<'_>,
) -> Result<Vec<RawDocumentBuf>, QueryError> {
    let mut out = run_group(&b.accs, docs, ctx, "$bucket", |d| {
        let v = b.group_by.eval(d)?.unwrap_or(Bson::Null);
        let slot = b
            .boundaries
            .windows(2)
            .find(|w| cmp_bson(&v, &w[0]).is_ge() && cmp_bson(&v, &w[1]).is_lt());
        match (slot, &b.default) {
            (Some(w), _) => Ok(w[0].clone()),
            (None, Some(d)) => Ok(d.clone()),
            (None, None) => Err(QueryError::location(
                40066,
                "$switch could not find a matching branch for an input, and no default was specified.",
            )),
        }
    })?;
    // Buckets come out in boundary order with the default bucket last.
    let rank = |d: &RawDocumentBuf| -> usize {
        let id = d
            .get("_id")
            .ok()
            .flatten()
            .and_then(|v| Bson::try_from(v).ok())
            .unwrap_or(Bson::Null);
        b.boundaries
            .iter()
            .position(|x| cmp_bson(x, &id).is_eq())
            .unwrap_or(usize::MAX)
    };
    out.sort_by_key(rank);
    Ok(out)
}

fn fresh(acc: &Acc) -> AccState {
    match acc {
        Acc::Sum(_) | Acc::Count => AccState::Sum(Bson::Int32(0)),
        Acc::Avg(_) => AccState::Avg {
            total: 0.0,
            n: 0,
            decimal: false,
        },
        Acc::Min(_) | Acc::Max(_) | Acc::First(_) | Acc::Last(_) => AccState::Pick(None),
        Acc::Push(_) => AccState::Array(Vec::new()),
        Acc::AddToSet(_) => AccState::Set(Vec::new(), std::collections::HashSet::new()),
        Acc::TopN(..) => AccState::Bounded(Vec::new(), 0),
        Acc::MergeObjects(_) => AccState::Merge(Document::new()),
        Acc::StdDev(..) => AccState::StdDev(0, 0.0, 0.0),
    }
}

fn numeric(v: &Bson) -> Option<f64> {
    match v {
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(d) => Some(*d),
        Bson::Decimal128(d) => Some(crate::compare::decimal_to_f64(*d)),
        _ => None,
    }
}

/// Folds one document into an accumulator; returns the bytes it added to the group's state.
fn accumulate(
    acc: &Acc,
    state: &mut AccState,
    doc: &RawDocument,
    first_doc: bool,
) -> Result<usize, QueryError> {
    match (acc, state) {
        (Acc::Count, AccState::Sum(total)) => *total = sum_values(total, &Bson::Int32(1)),
        (Acc::Sum(e), AccState::Sum(total)) => {
            if let Some(v) = e.eval(doc)? {
                *total = sum_values(total, &v);
            }
        }
        (Acc::Avg(e), AccState::Avg { total, n, decimal }) => {
            if let Some(v) = e.eval(doc)?
                && let Some(x) = numeric(&v)
            {
                *total += x;
                *n += 1;
                *decimal |= matches!(v, Bson::Decimal128(_));
            }
        }
        (Acc::StdDev(e, _), AccState::StdDev(n, mean, m2)) => {
            if let Some(x) = e.eval(doc)?.as_ref().and_then(numeric) {
                *n += 1;
                let delta = x - *mean;
                *mean += delta / *n as f64;
                *m2 += delta * (x - *mean);
            }
        }
        (Acc::Min(e) | Acc::Max(e), AccState::Pick(current)) => {
            let Some(v) = e
                .eval(doc)?
                .filter(|v| !matches!(v, Bson::Null | Bson::Undefined))
            else {
                return Ok(0);
            };
            let better = match current {
                None => true,
                Some(c) => {
                    let ord = cmp_bson(&v, c);
                    if matches!(acc, Acc::Min(_)) {
                        ord.is_lt()
                    } else {
                        ord.is_gt()
                    }
                }
            };
            if better {
                let size = approx_size(&v);
                *current = Some(v);
                return Ok(size);
            }
        }
        (Acc::First(e), AccState::Pick(current)) if first_doc => {
            let v = e.eval(doc)?.unwrap_or(Bson::Null);
            let size = approx_size(&v);
            *current = Some(v);
            return Ok(size);
        }
        (Acc::Last(e), AccState::Pick(current)) => {
            let v = e.eval(doc)?.unwrap_or(Bson::Null);
            let size = approx_size(&v);
            *current = Some(v);
            return Ok(size);
        }
        (Acc::Push(e), AccState::Array(items)) => {
            let Some(v) = e.eval(doc)? else {
                return Ok(0);
            };
            let size = approx_size(&v);
            items.push(v);
            return Ok(size);
        }
        (Acc::AddToSet(e), AccState::Set(items, seen)) => {
            let Some(v) = e.eval(doc)? else {
                return Ok(0);
            };
            let key = match bson::RawBson::try_from(v.clone()) {
                Ok(raw) => key_of(raw.as_raw_bson_ref()),
                Err(_) => return Ok(0),
            };
            if !seen.insert(key) {
                return Ok(0);
            }
            let size = approx_size(&v);
            items.push(v);
            return Ok(size);
        }
        (Acc::TopN(kind, input, n_expr), AccState::Bounded(items, n)) => {
            if first_doc {
                *n = match n_expr.eval(doc)? {
                    Some(v) => match as_num(
                        bson::RawBson::try_from(v.clone())
                            .map_err(raw_err)?
                            .as_raw_bson_ref(),
                    ) {
                        Some(x) if x.to_f64() >= 1.0 && x.to_f64().fract() == 0.0 => {
                            x.to_f64().min(1e9) as usize
                        }
                        _ => {
                            return Err(QueryError::location(
                                5787908,
                                format!(
                                    "Value for 'n' must be a positive integral number; found {v}"
                                ),
                            ));
                        }
                    },
                    None => {
                        return Err(QueryError::location(
                            5787902,
                            "Value for 'n' must be a positive integral number; found missing",
                        ));
                    }
                };
            }
            let v = e_or_null(input.eval(doc)?, *kind);
            let Some(v) = v else {
                return Ok(0);
            };
            let size = approx_size(&v);
            match kind {
                NKind::First => {
                    if items.len() >= *n {
                        return Ok(0);
                    }
                    items.push(v);
                }
                NKind::Last => {
                    items.push(v);
                    if items.len() > *n {
                        items.remove(0);
                    }
                }
                NKind::Min | NKind::Max => {
                    // Kept sorted best-first; a value worse than the n-th is dropped.
                    let better = |a: &Bson, b: &Bson| {
                        let ord = cmp_bson(a, b);
                        if *kind == NKind::Min {
                            ord.is_lt()
                        } else {
                            ord.is_gt()
                        }
                    };
                    let at = items
                        .iter()
                        .position(|x| better(&v, x))
                        .unwrap_or(items.len());
                    if at >= *n {
                        return Ok(0);
                    }
                    items.insert(at, v);
                    items.truncate(*n);
                }
            }
            return Ok(size);
        }
        (Acc::MergeObjects(e), AccState::Merge(target)) => match e.eval(doc)? {
            None | Some(Bson::Null) | Some(Bson::Undefined) => {}
            Some(Bson::Document(d)) => {
                let size = approx_size(&Bson::Document(d.clone()));
                for (k, v) in d {
                    target.insert(k, v);
                }
                return Ok(size);
            }
            Some(other) => {
                return Err(QueryError::location(
                    40400,
                    format!(
                        "$mergeObjects requires object inputs, but input {} is of type {}",
                        other,
                        crate::update::type_name(&other)
                    ),
                ));
            }
        },
        _ => {}
    }
    Ok(0)
}

/// `$firstN`/`$lastN` keep missing and null values (as null); `$minN`/`$maxN` skip them.
fn e_or_null(v: Option<Bson>, kind: NKind) -> Option<Bson> {
    match kind {
        NKind::First | NKind::Last => Some(v.unwrap_or(Bson::Null)),
        NKind::Min | NKind::Max => v.filter(|v| !matches!(v, Bson::Null | Bson::Undefined)),
    }
}

fn finish(acc: &Acc, state: AccState) -> Bson {
    match state {
        AccState::Sum(total) => total,
        AccState::Avg { total, n, decimal } => {
            if n == 0 {
                Bson::Null
            } else if decimal {
                crate::expr::decimal(total / n as f64)
            } else {
                Bson::Double(total / n as f64)
            }
        }
        AccState::StdDev(n, _, m2) => {
            let sample = matches!(acc, Acc::StdDev(_, true));
            let denom = if sample { n.saturating_sub(1) } else { n };
            if denom == 0 {
                Bson::Null
            } else {
                Bson::Double((m2 / denom as f64).sqrt())
            }
        }
        AccState::Pick(v) => v.unwrap_or(Bson::Null),
        AccState::Array(items) | AccState::Set(items, _) | AccState::Bounded(items, _) => {
            Bson::Array(items)
        }
        AccState::Merge(d) => Bson::Document(d),
    }
}

fn run_group(
    accs: &[(String, Acc)],
    docs: &[RawDocumentBuf],
    ctx: &Ctx<'_>,
    stage: &str,
    id_of: impl Fn(&RawDocument) -> Result<Bson, QueryError>,
) -> Result<Vec<RawDocumentBuf>, QueryError> {
    // Groups in first-seen order, looked up by the order-preserving key of their _id so that
    // equal values of different numeric types share a group, as in MongoDB.
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut groups: Vec<(Bson, Vec<AccState>)> = Vec::new();
    let mut used = 0usize;
    for doc in docs {
        let id = id_of(doc)?;
        let key = match bson::RawBson::try_from(id.clone()) {
            Ok(raw) => key_of(raw.as_raw_bson_ref()),
            Err(_) => Vec::new(),
        };
        let (slot, first_doc) = match index.get(&key) {
            Some(&i) => (i, false),
            None => {
                used += key.len() + approx_size(&id) + 32 * accs.len();
                groups.push((id, accs.iter().map(|(_, a)| fresh(a)).collect()));
                index.insert(key, groups.len() - 1);
                (groups.len() - 1, true)
            }
        };
        for ((_, acc), state) in accs.iter().zip(groups[slot].1.iter_mut()) {
            used += accumulate(acc, state, doc, first_doc)?;
        }
        ctx.check(stage, used)?;
    }
    groups
        .into_iter()
        .map(|(id, states)| {
            let mut out = Document::new();
            out.insert("_id", id);
            for ((name, acc), state) in accs.iter().zip(states) {
                out.insert(name.clone(), finish(acc, state));
            }
            to_raw(&out)
        })
        .collect()
}
