//! `$near`, `$nearSphere` and `$geoNear`: a geo index walked outward in rings. Each ring is
//! the covering of a wider circle around the center minus the cell ranges already read; the
//! documents it reaches go through the whole filter into a queue ordered by distance, and those
//! no farther than the ring's radius are final (nothing unread can be nearer), so they are
//! handed out before the next ring is read. A query with a limit reads only the rings it needs.
//!
//! Invariant: every index entry in a ring's ranges is read once across rings and every document
//! fetched once (`seen`); the coverings are supersets, so the order is exact. A walk can stop
//! after any match and go on later (`NearState`), so a reader takes only what it needs. Work per ring is
//! bounded by the coverings' cell budget; the rings end once they hold the whole frame or pass
//! `$maxDistance`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};
use std::ops::{Bound, ControlFlow};
use std::sync::Arc;

use bson::{RawBsonRef, doc};
use mangrove_geo::cover::{merge, scan_ranges, subtract};
use mangrove_query::{Filter, Frame, KeyInterval, Near, encode_key, near_distance, near_frame};
use mangrove_storage::{CollectionInfo, DocKey, IndexInfo, ReadView, StoredDoc};

use crate::error::{CommandError, CommandResult, code};

/// Index entries and documents a walk read (added to the query's `Examined` by the caller).
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub keys: u64,
    pub docs: u64,
}

/// What one nearness walk reads and how: the caller's read deadline check included.
pub struct NearWalk<'a> {
    pub view: &'a dyn ReadView,
    pub coll: &'a CollectionInfo,
    pub index: &'a Arc<IndexInfo>,
    pub plan: &'a NearPlan,
    pub filter: &'a Filter,
    pub deadline: &'a dyn Fn() -> CommandResult<()>,
}

/// A nearness query's plan: the center and limits, the indexed path, the index's frame.
#[derive(Debug, Clone)]
pub struct NearPlan {
    pub near: Near,
    pub path: String,
    pub frame: Frame,
    pub level: u8,
}

/// How many times wider each ring's radius is than the last.
const RING_GROWTH: f64 = 4.0;
/// Index entries read per call into the engine.
const CHUNK: usize = 512;

/// The plan for a filter's `$near`/`$nearSphere`, if it has one: the hinted geo index or the
/// first that can answer it; mongod's NoQueryExecutionPlans when none can.
pub fn near_access(
    coll: &CollectionInfo,
    filter: &Filter,
    hinted: Option<&Arc<IndexInfo>>,
) -> CommandResult<Option<(Arc<IndexInfo>, NearPlan)>> {
    let Some((path, near)) = filter.near() else {
        return Ok(None);
    };
    let usable = |i: &Arc<IndexInfo>| near_frame(i.key.fields.first(), path, near);
    let found = hinted
        .into_iter()
        .chain(coll.indexes.iter())
        .find_map(|i| usable(i).map(|f| (i.clone(), f)));
    let Some((index, (frame, level))) = found else {
        return Err(no_index());
    };
    let plan = NearPlan {
        near: near.clone(),
        path: path.to_string(),
        frame,
        level,
    };
    Ok(Some((index, plan)))
}

/// mongod's error for a `$near` without a geo index that can answer it.
pub fn no_index() -> CommandError {
    CommandError::new(
        code::NO_QUERY_EXECUTION_PLANS,
        "error processing query: planner returned error :: caused by :: unable to find index for $geoNear query",
    )
}

/// One fetched match waiting in the queue, nearest first.
struct Queued {
    distance: f64,
    seq: u64,
    key: DocKey,
    doc: StoredDoc,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    /// Reversed, so the max-heap pops the nearest (then the first read).
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .distance
            .total_cmp(&self.distance)
            .then(other.seq.cmp(&self.seq))
    }
}

/// One inclusive range of cell numbers as an interval of the index's entries (the cell is the
/// first component; later fields may follow).
fn interval(lo: u64, hi: u64) -> KeyInterval {
    let enc = |n: u64| {
        let mut out = Vec::new();
        encode_key(RawBsonRef::Int64(n as i64), &mut out);
        out
    };
    let mut upper = enc(hi);
    upper.push(0xFF);
    (Bound::Included(enc(lo)), Bound::Excluded(upper))
}

/// A walk's state across rings, kept between calls so a reader can take matches a chunk at a
/// time (a `$geoNear` pipeline's input).
pub struct NearState {
    done: Vec<(u64, u64)>,
    seen: HashSet<DocKey>,
    queue: BinaryHeap<Queued>,
    seq: u64,
    /// The next ring's radius (raw units).
    radius: f64,
    /// Queued matches no farther than this (query units) are final.
    limit: f64,
    /// The last ring has been read.
    finished: bool,
}

impl NearState {
    pub fn new(plan: &NearPlan) -> NearState {
        NearState {
            done: Vec::new(),
            seen: HashSet::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            radius: first_radius(plan).min(plan.near.max_radius()),
            limit: f64::NEG_INFINITY,
            finished: false,
        }
    }

    /// Every match has been handed out.
    pub fn exhausted(&self) -> bool {
        self.finished && self.queue.is_empty()
    }

    /// Hands out the matches nearest first until `visit` breaks (a later call goes on from
    /// there) or none are left.
    pub fn run(
        &mut self,
        walk: &NearWalk<'_>,
        examined: &mut Counts,
        visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> CommandResult<()> {
        let plan = walk.plan;
        let (max, whole) = (plan.near.max_radius(), whole_radius(plan));
        loop {
            if self.flush(visit).is_break() || self.finished {
                return Ok(());
            }
            let last = self.radius >= max || self.radius >= whole;
            let reach = if last && max >= whole {
                f64::INFINITY
            } else {
                self.radius
            };
            self.read_ring(walk, reach, examined)?;
            self.limit = if last {
                f64::INFINITY
            } else {
                plan.near.units(self.radius)
            };
            self.finished = last;
            self.radius = (self.radius * RING_GROWTH).min(max.max(self.radius));
        }
    }

    /// Reads the entries of the ranges not read yet within `radius` (raw units) and queues
    /// the matching documents.
    fn read_ring(
        &mut self,
        walk: &NearWalk<'_>,
        radius: f64,
        examined: &mut Counts,
    ) -> CommandResult<()> {
        let plan = walk.plan;
        let cells = plan.near.cells(&plan.frame, radius, plan.level);
        let ranges = scan_ranges(&cells);
        let fresh = subtract(&ranges, &self.done);
        let mut all = std::mem::take(&mut self.done);
        all.extend(ranges);
        self.done = merge(all);
        for (lo, hi) in fresh {
            let iv = interval(lo, hi);
            let mut after: Option<DocKey> = None;
            loop {
                let entries =
                    walk.view
                        .index_scan(walk.index, &iv, after.as_ref(), CHUNK, false)?;
                let Some((last, _)) = entries.last() else {
                    break;
                };
                after = Some(last.clone());
                for (_, target) in entries {
                    self.fetch(walk, target, examined)?;
                }
            }
        }
        Ok(())
    }

    fn fetch(
        &mut self,
        walk: &NearWalk<'_>,
        target: DocKey,
        examined: &mut Counts,
    ) -> CommandResult<()> {
        examined.keys += 1;
        if examined.keys.is_multiple_of(256) {
            (walk.deadline)()?;
        }
        if !self.seen.insert(target.clone()) {
            return Ok(());
        }
        examined.docs += 1;
        let Some(doc) = walk.view.get(walk.coll, &target)? else {
            return Ok(());
        };
        if !walk.filter.try_matches(&doc)? {
            return Ok(());
        }
        let near = &walk.plan.near;
        match near_distance(near, &walk.plan.path, &doc) {
            Some((distance, _)) if near.admits(distance) => {
                self.seq += 1;
                self.queue.push(Queued {
                    distance,
                    seq: self.seq,
                    key: target,
                    doc,
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// Hands out the queued documents no farther than the current limit, nearest first.
    fn flush(
        &mut self,
        visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        while self.queue.peek().is_some_and(|q| q.distance <= self.limit) {
            if let Some(q) = self.queue.pop() {
                visit(&q.key, &q.doc)?;
            }
        }
        ControlFlow::Continue(())
    }
}

/// The first ring's radius (raw units): about 100 m on the sphere, 1/65536 of a 2d plane.
fn first_radius(plan: &NearPlan) -> f64 {
    if plan.near.sphere {
        100.0 / mangrove_geo::distance::EARTH_RADIUS_M
    } else {
        (plan.frame.max.x - plan.frame.min.x) / 65_536.0
    }
}

/// The radius (raw) past which one ring holds the whole frame.
fn whole_radius(plan: &NearPlan) -> f64 {
    if plan.near.sphere {
        std::f64::consts::PI
    } else {
        let f = &plan.frame;
        2.0 * (f.max.x - f.min.x).hypot(f.max.y - f.min.y)
    }
}

/// Visits the filter's matches nearest first, until `visit` breaks.
pub fn walk_near(
    walk: &NearWalk<'_>,
    examined: &mut Counts,
    visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
) -> CommandResult<()> {
    NearState::new(walk.plan).run(walk, examined, visit)
}

/// `explain`'s stage for a nearness walk, as mongod names it.
pub fn plan_stage(index: &IndexInfo, plan: &NearPlan) -> bson::Document {
    let stage = if plan.frame == mangrove_geo::SPHERE {
        "GEO_NEAR_2DSPHERE"
    } else {
        "GEO_NEAR_2D"
    };
    doc! {
        "stage": stage,
        "keyPattern": index.key.key_pattern.clone(),
        "indexName": index.key.name.clone(),
        "indexVersion": 2,
    }
}

/// The input of a pipeline that starts with `$geoNear`: its `key` (or the collection's one geo
/// index: a 2d index first, else the only 2dsphere index), the walk's plan, and the stage's
/// query as the reader's filter. mongod's IndexNotFound (27) when no index fits.
pub fn geo_near_input(
    coll: &CollectionInfo,
    pipeline: &mut mangrove_query::Pipeline,
) -> CommandResult<Option<(Arc<IndexInfo>, NearPlan, Filter)>> {
    let Some((near, key, query)) = pipeline.leading_geo_near() else {
        return Ok(None);
    };
    let (near, key) = (near.clone(), key.map(str::to_string));
    let filter = Filter::parse(query)?;
    let geo = |i: &&Arc<IndexInfo>| mangrove_query::geo_field(&i.key).map(|f| f.path.clone());
    let candidates: Vec<(&Arc<IndexInfo>, String)> = coll
        .indexes
        .iter()
        .filter_map(|i| geo(&i).map(|p| (i, p)))
        .filter(|(_, p)| key.as_ref().is_none_or(|k| k == p))
        .collect();
    let flat = candidates
        .iter()
        .find(|(i, _)| i.key.fields[0].kind.is_flat_2d());
    let chosen = match (flat, candidates.len()) {
        (Some(c), _) => c,
        (None, 0) => {
            return Err(index_not_found(
                "$geoNear requires a 2d or 2dsphere index, but none were found".into(),
            ));
        }
        (None, 1) => &candidates[0],
        (None, _) => {
            return Err(index_not_found(format!(
                "There is more than one 2dsphere index on {}; unsure which to use for $geoNear",
                coll.ns()
            )));
        }
    };
    let (index, path) = (chosen.0.clone(), chosen.1.clone());
    let Some((frame, level)) = near_frame(index.key.fields.first(), &path, &near) else {
        return Err(no_index());
    };
    pipeline.resolve_geo_near(&path);
    let plan = NearPlan {
        near,
        path,
        frame,
        level,
    };
    Ok(Some((index, plan, filter)))
}

fn index_not_found(message: String) -> CommandError {
    CommandError::new(code::INDEX_NOT_FOUND, message)
}
