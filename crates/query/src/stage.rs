//! The parsed aggregation pipeline: its stages as data. Parsing is `stage_parse.rs`, running
//! `stream.rs`; this file holds the shapes both agree on, and the questions the server asks
//! of a pipeline before running it (its sink, a leading `$match`, the collections it reads).
//!
//! Invariants:
//! - A [`Sink`] (`$out`/`$merge`) is never a stage: it ends the pipeline and only the top level
//!   has one (sub-pipelines refuse it at parse time, 51047).
//! - A sub-pipeline (`$lookup`, `$facet`, `$unionWith`) is at most `MAX_SUBPIPELINE_DEPTH` deep.

use crate::expr::Expr;
use crate::group::{Bucket, Group};
use crate::limits::Limits;
use crate::{Filter, Projection, SortSpec};

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
    BucketAuto(Box<crate::bucket_auto::BucketAuto>),
    /// `$setWindowFields` (and `$fill`'s method outputs).
    Window(Box<crate::window::Window>),
    Densify(Box<crate::densify::Densify>),
    /// `$redact`: an expression answering `$$DESCEND`, `$$PRUNE` or `$$KEEP` per level.
    Redact(Expr),
    /// `$geoNear` (first stage only): the reader orders by distance, the stage annotates.
    GeoNear(Box<crate::geo_stage::GeoNear>),
}

impl Stage {
    /// The stage's name as it runs (an alias under its main name: `$set` as `$addFields`).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Stage::Match(_) => "$match",
            Stage::Sort(_) => "$sort",
            Stage::Skip(_) => "$skip",
            Stage::Limit(_) => "$limit",
            Stage::Project(_) => "$project",
            Stage::AddFields(_) => "$addFields",
            Stage::ReplaceRoot(_) => "$replaceRoot",
            Stage::Unset(_) => "$unset",
            Stage::Count(_) => "$count",
            Stage::Group(_) => "$group",
            Stage::Unwind(_) => "$unwind",
            Stage::Lookup(_) => "$lookup",
            Stage::Facet(_) => "$facet",
            Stage::Sample(_) => "$sample",
            Stage::Documents(_) => "$documents",
            Stage::Bucket(_) => "$bucket",
            Stage::UnionWith(..) => "$unionWith",
            Stage::GraphLookup(_) => "$graphLookup",
            Stage::BucketAuto(_) => "$bucketAuto",
            Stage::Window(_) => "$setWindowFields",
            Stage::Densify(_) => "$densify",
            Stage::Redact(_) => "$redact",
            Stage::GeoNear(_) => "$geoNear",
        }
    }

    /// Whether the stage spills under `allowDiskUse` (so `explain` reports its `usedDisk`).
    pub(crate) fn may_spill(&self) -> bool {
        matches!(
            self,
            Stage::Sort(_)
                | Stage::Group(_)
                | Stage::Bucket(_)
                | Stage::BucketAuto(_)
                | Stage::Window(_)
                | Stage::Sample(_)
                | Stage::Densify(_)
        )
    }
}

pub struct Pipeline {
    pub(crate) stages: Vec<Stage>,
    pub(crate) sink: Option<Sink>,
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

pub(crate) struct Lookup {
    pub(crate) from: String,
    pub(crate) as_path: Vec<String>,
    /// `localField` and `foreignField`, for the equality form (alone or with a pipeline).
    pub(crate) equality: Option<(String, Vec<String>)>,
    pub(crate) lets: Vec<(String, Expr)>,
    pub(crate) pipeline: Option<Pipeline>,
}

pub(crate) struct GraphLookup {
    pub(crate) from: String,
    pub(crate) start_with: Expr,
    pub(crate) connect_from: String,
    pub(crate) connect_to: Vec<String>,
    pub(crate) as_path: Vec<String>,
    pub(crate) max_depth: Option<u64>,
    pub(crate) depth_field: Option<Vec<String>>,
    pub(crate) restrict: Option<Filter>,
}

impl Pipeline {
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

    /// A leading `$geoNear`'s center and limits, `key` and raw `query`, for the server to walk
    /// a geo index nearest first.
    pub fn leading_geo_near(
        &self,
    ) -> Option<(&mangrove_geo::Near, Option<&str>, &bson::RawDocument)> {
        match self.stages.first() {
            Some(Stage::GeoNear(g)) => Some((&g.near, g.key.as_deref(), &g.raw_query)),
            _ => None,
        }
    }

    /// Sets a leading `$geoNear`'s geo field (the server resolves it from the collection's
    /// geo index when the stage names no `key`).
    pub fn resolve_geo_near(&mut self, key: &str) {
        if let Some(Stage::GeoNear(g)) = self.stages.first_mut() {
            g.key = Some(key.to_string());
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
}
