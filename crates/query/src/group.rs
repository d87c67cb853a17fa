//! `$group` and `$bucket`: accumulator parsing, and the state of a grouping stage as
//! documents stream through it.
//!
//! Invariants:
//! - A [`Grouper`] holds only the groups: one entry per distinct `_id` (looked up by the
//!   order-preserving key of the `_id`, so equal numbers of different types share a group, as in
//!   MongoDB), each with its accumulators' states; never the input documents.
//! - `used` is the bytes the groups occupy (`memory::mem_size` of ids and accumulated values,
//!   plus fixed per-group and per-state costs), kept exact as states grow *and* shrink (a `$last`
//!   replacing its value, `$lastN` dropping one), so a long stream over few groups never
//!   overcounts.
//! - `$push`/`$addToSet` check their own limit (146, `internalQueryMaxPushBytes` /
//!   `internalQueryMaxAddToSetBytes`) before adding a value; the whole stage checks
//!   `Limits::group_bytes` after each document. Past it, it reports 146 if one
//!   `$push`/`$addToSet` holds more than half of the limit (spilling could not split it); else,
//!   with a spill store (`allowDiskUse`, which defaults to true as in mongod 7.0), the groups
//!   are written as a run ordered by key and cleared (`group_spill.rs`), and without one it
//!   fails with 292 (QueryExceededMemoryLimitNoDiskUseAllowed).
//! - Once spilled, the groups come out merged in key order (`$bucket`: boundary order, the
//!   default last); unspilled, in first-seen order (`$bucket`: boundary order).

use std::collections::{HashMap, HashSet};
use std::mem::size_of;

use bson::raw::{RawBsonRef, RawDocument};
use bson::{Bson, Document, RawDocumentBuf};

use crate::QueryError;
pub(crate) use crate::accumulator::{Acc, AccState, NKind};
use crate::compare::as_num;
use crate::doc_ops::{key_of, raw_err, to_raw};
use crate::expr::quantile as percentile;
use crate::expr::{Expr, cmp_bson, sum_values};
use crate::group_spill::{self, Entry, GroupMerge};
use crate::js_acc::{self, JsState};
use crate::limits::{self, Limits};
use crate::memory::{self, mem_size};
use crate::spill::{SpillStore, Spilled};
use crate::top_n::{self, Ranked};

pub(crate) struct Group {
    pub(crate) id: Expr,
    pub(crate) accs: Vec<(String, Acc)>,
}

pub(crate) struct Bucket {
    group_by: Expr,
    boundaries: Vec<Bson>,
    default: Option<Bson>,
    pub(crate) accs: Vec<(String, Acc)>,
}

impl Bucket {
    /// The `_id` of the bucket `doc` falls in.
    pub(crate) fn bucket_of(&self, doc: &RawDocument) -> Result<Bson, QueryError> {
        let v = self.group_by.eval(doc)?.unwrap_or(Bson::Null);
        let slot = self
            .boundaries
            .windows(2)
            .find(|w| cmp_bson(&v, &w[0]).is_ge() && cmp_bson(&v, &w[1]).is_lt());
        match (slot, &self.default) {
            (Some(w), _) => Ok(w[0].clone()),
            (None, Some(d)) => Ok(d.clone()),
            (None, None) => Err(QueryError::location(
                40066,
                "$switch could not find a matching branch for an input, and no default was specified.",
            )),
        }
    }

    /// Buckets come out in boundary order with the default bucket last.
    fn rank(&self, id: &Bson) -> usize {
        self.boundaries
            .iter()
            .position(|x| cmp_bson(x, id).is_eq())
            .unwrap_or(usize::MAX)
    }
}

pub(crate) fn parse_accumulators(
    spec: &RawDocument,
    skip: &[&str],
) -> Result<Vec<(String, Acc)>, QueryError> {
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
        accs.push((k.as_str().to_string(), parse_accumulator(op.as_str(), arg)?));
    }
    Ok(accs)
}

/// One accumulator, `{op: arg}`.
fn parse_accumulator(op: &str, arg: RawBsonRef<'_>) -> Result<Acc, QueryError> {
    let unary = || {
        if let RawBsonRef::Array(_) = arg {
            return Err(QueryError::location(
                40237,
                format!("The {op} accumulator is a unary operator"),
            ));
        }
        Expr::parse(arg)
    };
    Ok(match op {
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
        "$firstN" | "$lastN" | "$minN" | "$maxN" => parse_top_n(op, arg)?,
        op if top_n::is_top_bottom(op) => Acc::TopBottom(Box::new(top_n::parse(op, arg)?)),
        "$accumulator" | "$_internalJsReduce" => Acc::Js(Box::new(js_acc::parse(op, arg)?)),
        "$median" | "$percentile" => Acc::Quantile(Box::new(percentile::parse(op, arg, 7429703)?)),
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
    })
}

/// `$firstN`, `$lastN`, `$minN`, `$maxN`: `{input, n}`.
fn parse_top_n(op: &str, arg: RawBsonRef<'_>) -> Result<Acc, QueryError> {
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
            .ok_or_else(|| QueryError::location(code, format!("{op} requires an '{name}' field")))
            .and_then(Expr::parse)
    };
    let kind = match op {
        "$firstN" => NKind::First,
        "$lastN" => NKind::Last,
        "$minN" => NKind::Min,
        _ => NKind::Max,
    };
    Ok(Acc::TopN(
        kind,
        part("input", 5787907)?,
        part("n", 5787906)?,
    ))
}

pub(crate) fn parse_group(spec: &RawDocument) -> Result<Group, QueryError> {
    let id =
        spec.get("_id").ok().flatten().ok_or_else(|| {
            QueryError::location(15955, "a group specification must include an _id")
        })?;
    Ok(Group {
        id: Expr::parse(id)?,
        accs: parse_accumulators(spec, &["_id"])?,
    })
}

/// `$bucket` boundaries: all of one type, strictly ascending.
fn check_boundaries(boundaries: &[Bson]) -> Result<(), QueryError> {
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
    Ok(())
}

fn parse_boundaries(v: RawBsonRef<'_>) -> Result<Vec<Bson>, QueryError> {
    let RawBsonRef::Array(a) = v else {
        return Err(QueryError::location(
            40200,
            "The $bucket 'boundaries' field must be an array",
        ));
    };
    a.into_iter()
        .map(|b| {
            b.map_err(raw_err)
                .and_then(|b| Bson::try_from(b).map_err(raw_err))
        })
        .collect()
}

pub(crate) fn parse_bucket(spec: &RawDocument) -> Result<Bucket, QueryError> {
    let mut group_by = None;
    let mut boundaries = None;
    let mut default = None;
    let mut accs = None;
    for item in spec {
        let (k, v) = item.map_err(raw_err)?;
        match k.as_str() {
            "groupBy" => group_by = Some(Expr::parse(v)?),
            "boundaries" => boundaries = Some(parse_boundaries(v)?),
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
    check_boundaries(&boundaries)?;
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

/// A fixed estimate of one group's cost besides its id and values: the index entry (key
/// vector, slot) and the group's vector of states.
const GROUP_OVERHEAD: usize = 2 * size_of::<Vec<u8>>() + 4 * size_of::<usize>();

fn fresh(acc: &Acc) -> AccState {
    match acc {
        Acc::Sum(_) | Acc::Count => AccState::Sum(Bson::Int32(0)),
        Acc::Avg(_) => AccState::Avg {
            total: 0.0,
            n: 0,
            decimal: false,
        },
        Acc::Min(_) | Acc::Max(_) | Acc::First(_) | Acc::Last(_) => AccState::Pick(None),
        Acc::Push(_) => AccState::Array(Vec::new(), 0),
        Acc::AddToSet(_) => AccState::Set(Vec::new(), HashSet::new(), 0),
        Acc::TopN(..) => AccState::Bounded(Vec::new(), 0),
        Acc::MergeObjects(_) => AccState::Merge(Document::new()),
        Acc::StdDev(..) => AccState::StdDev(0, 0.0, 0.0),
        Acc::TopBottom(_) => AccState::Ranked(Ranked::default()),
        Acc::Quantile(_) => AccState::Samples(Vec::new()),
        Acc::Js(_) => AccState::Js(JsState::default()),
    }
}

/// The change in bytes an accumulator's state went through.
type Delta = isize;

fn grew(bytes: usize) -> Delta {
    isize::try_from(bytes).unwrap_or(isize::MAX)
}

/// Folds one document into an accumulator; returns how many bytes its state grew (or shrank).
fn accumulate(
    acc: &Acc,
    state: &mut AccState,
    doc: &RawDocument,
    first_doc: bool,
    limits: &Limits,
) -> Result<Delta, QueryError> {
    match (acc, state) {
        (Acc::Count, AccState::Sum(total)) => *total = sum_values(total, &Bson::Int32(1)),
        (Acc::Sum(e), AccState::Sum(total)) => {
            if let Some(v) = e.eval(doc)? {
                *total = sum_values(total, &v);
            }
        }
        (Acc::Avg(e), AccState::Avg { total, n, decimal }) => {
            if let Some(v) = e.eval(doc)?
                && let Some(x) = percentile::number(&v)
            {
                *total += x;
                *n += 1;
                *decimal |= matches!(v, Bson::Decimal128(_));
            }
        }
        (Acc::StdDev(e, _), AccState::StdDev(n, mean, m2)) => {
            if let Some(x) = e.eval(doc)?.as_ref().and_then(percentile::number) {
                *n += 1;
                let delta = x - *mean;
                *mean += delta / *n as f64;
                *m2 += delta * (x - *mean);
            }
        }
        (Acc::Min(e) | Acc::Max(e), AccState::Pick(current)) => {
            return pick_extreme(matches!(acc, Acc::Min(_)), e, current, doc);
        }
        (Acc::First(e), AccState::Pick(current)) if first_doc => {
            return replace(current, e.eval(doc)?.unwrap_or(Bson::Null));
        }
        (Acc::Last(e), AccState::Pick(current)) => {
            return replace(current, e.eval(doc)?.unwrap_or(Bson::Null));
        }
        (Acc::Push(e), AccState::Array(items, bytes)) => {
            return push(e.eval(doc)?, items, bytes, limits.push_bytes);
        }
        (Acc::AddToSet(e), AccState::Set(items, seen, bytes)) => {
            return add_to_set(e.eval(doc)?, items, seen, bytes, limits.add_to_set_bytes);
        }
        (Acc::TopN(kind, input, n_expr), AccState::Bounded(items, n)) => {
            if first_doc {
                *n = top_n_count(n_expr, doc)?;
            }
            return top_n(*kind, e_or_null(input.eval(doc)?, *kind), items, *n);
        }
        (Acc::MergeObjects(e), AccState::Merge(target)) => return merge_into(e, target, doc),
        (Acc::TopBottom(spec), AccState::Ranked(ranked)) => {
            if first_doc {
                ranked.n = top_n::validate_n(spec.n.eval(doc)?)?;
            }
            return ranked.add(spec, doc);
        }
        (Acc::Js(js), AccState::Js(state)) => return js.accumulate(state, doc, first_doc),
        (Acc::Quantile(q), AccState::Samples(samples)) => {
            if let Some(x) = percentile::sample(q, doc)? {
                samples.push(x);
                return Ok(grew(size_of::<f64>()));
            }
        }
        _ => {}
    }
    Ok(0)
}

/// `$min`/`$max`: keeps `v` if it is better than the current value; null and missing never are.
fn pick_extreme(
    min: bool,
    e: &Expr,
    current: &mut Option<Bson>,
    doc: &RawDocument,
) -> Result<Delta, QueryError> {
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
            if min { ord.is_lt() } else { ord.is_gt() }
        }
    };
    if better {
        return replace(current, v);
    }
    Ok(0)
}

fn replace(current: &mut Option<Bson>, v: Bson) -> Result<Delta, QueryError> {
    let new = mem_size(&v)?;
    let old = match current.replace(v) {
        Some(old) => mem_size(&old)?,
        None => 0,
    };
    Ok(grew(new) - grew(old))
}

fn push(
    v: Option<Bson>,
    items: &mut Vec<Bson>,
    bytes: &mut usize,
    limit: usize,
) -> Result<Delta, QueryError> {
    let Some(v) = v else {
        return Ok(0);
    };
    let size = mem_size(&v)?;
    if bytes.saturating_add(size) > limit {
        return Err(limits::accumulator_exceeded("$push", limit));
    }
    *bytes += size;
    items.push(v);
    Ok(grew(size))
}

fn add_to_set(
    v: Option<Bson>,
    items: &mut Vec<Bson>,
    seen: &mut HashSet<Vec<u8>>,
    bytes: &mut usize,
    limit: usize,
) -> Result<Delta, QueryError> {
    let Some(v) = v else {
        return Ok(0);
    };
    let key = match bson::RawBson::try_from(v.clone()) {
        Ok(raw) => key_of(raw.as_raw_bson_ref()),
        Err(_) => return Ok(0),
    };
    if seen.contains(&key) {
        return Ok(0);
    }
    let size = mem_size(&v)? + key.len() + size_of::<Vec<u8>>();
    if bytes.saturating_add(size) > limit {
        return Err(limits::accumulator_exceeded("$addToSet", limit));
    }
    *bytes += size;
    seen.insert(key);
    items.push(v);
    Ok(grew(size))
}

/// The `n` of a `$firstN`-family accumulator, from the group's first document.
fn top_n_count(n_expr: &Expr, doc: &RawDocument) -> Result<usize, QueryError> {
    let Some(v) = n_expr.eval(doc)? else {
        return Err(QueryError::location(
            5787902,
            "Value for 'n' must be a positive integral number; found missing",
        ));
    };
    match as_num(
        bson::RawBson::try_from(v.clone())
            .map_err(raw_err)?
            .as_raw_bson_ref(),
    ) {
        Some(x) if x.to_f64() >= 1.0 && x.to_f64().fract() == 0.0 => {
            Ok(x.to_f64().min(1e9) as usize)
        }
        _ => Err(QueryError::location(
            5787908,
            format!("Value for 'n' must be a positive integral number; found {v}"),
        )),
    }
}

fn top_n(
    kind: NKind,
    v: Option<Bson>,
    items: &mut Vec<Bson>,
    n: usize,
) -> Result<Delta, QueryError> {
    let Some(v) = v else {
        return Ok(0);
    };
    let size = grew(mem_size(&v)?);
    let dropped = match kind {
        NKind::First => {
            if items.len() >= n {
                return Ok(0);
            }
            items.push(v);
            Vec::new()
        }
        NKind::Last => {
            items.push(v);
            if items.len() > n {
                vec![items.remove(0)]
            } else {
                Vec::new()
            }
        }
        NKind::Min | NKind::Max => {
            // Kept sorted best-first; a value worse than the n-th is dropped.
            let better = |a: &Bson, b: &Bson| {
                let ord = cmp_bson(a, b);
                if kind == NKind::Min {
                    ord.is_lt()
                } else {
                    ord.is_gt()
                }
            };
            let at = items
                .iter()
                .position(|x| better(&v, x))
                .unwrap_or(items.len());
            if at >= n {
                return Ok(0);
            }
            items.insert(at, v);
            items.split_off(n.min(items.len()))
        }
    };
    let mut freed = 0;
    for d in &dropped {
        freed += grew(mem_size(d)?);
    }
    Ok(size - freed)
}

fn merge_into(e: &Expr, target: &mut Document, doc: &RawDocument) -> Result<Delta, QueryError> {
    match e.eval(doc)? {
        None | Some(Bson::Null) | Some(Bson::Undefined) => Ok(0),
        Some(Bson::Document(d)) => {
            let mut delta = 0;
            for (k, v) in d {
                let size = grew(memory::field_size(&k, &v)?);
                delta += match target.insert(k.clone(), v) {
                    Some(old) => size - grew(memory::field_size(&k, &old)?),
                    None => size,
                };
            }
            Ok(delta)
        }
        Some(other) => Err(QueryError::location(
            40400,
            format!(
                "$mergeObjects requires object inputs, but input {} is of type {}",
                other,
                crate::update::type_name(&other)
            ),
        )),
    }
}

/// `$firstN`/`$lastN` keep missing and null values (as null); `$minN`/`$maxN` skip them.
fn e_or_null(v: Option<Bson>, kind: NKind) -> Option<Bson> {
    match kind {
        NKind::First | NKind::Last => Some(v.unwrap_or(Bson::Null)),
        NKind::Min | NKind::Max => v.filter(|v| !matches!(v, Bson::Null | Bson::Undefined)),
    }
}

fn finish(acc: &Acc, state: AccState) -> Result<Bson, QueryError> {
    Ok(match state {
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
        AccState::Array(items, _) | AccState::Set(items, _, _) | AccState::Bounded(items, _) => {
            Bson::Array(items)
        }
        AccState::Merge(d) => Bson::Document(d),
        AccState::Ranked(r) => match acc {
            Acc::TopBottom(spec) => r.finish(spec),
            _ => Bson::Null,
        },
        AccState::Samples(mut samples) => match acc {
            Acc::Quantile(q) => percentile::result(&q.ps, q.median, &mut samples),
            _ => Bson::Null,
        },
        AccState::Js(state) => match acc {
            Acc::Js(js) => js.finish(state)?,
            _ => Bson::Null,
        },
    })
}

/// The groups of one `$group` or `$bucket` stage while its input streams through.
#[derive(Default)]
pub(crate) struct Grouper {
    index: HashMap<Vec<u8>, usize>,
    /// In first-seen order.
    groups: Vec<(Bson, Vec<AccState>)>,
    used: usize,
    /// The runs written so far, when the groups outgrew the limit and could spill.
    spilled: Option<Spilled>,
}

/// Where a grouping stage may spill, and the `$bucket` whose order its groups keep.
#[derive(Clone, Copy)]
pub(crate) struct SpillTo<'a> {
    pub(crate) store: Option<&'a dyn SpillStore>,
    pub(crate) bucket: Option<&'a Bucket>,
}

impl Grouper {
    /// Folds `doc` into the group `id`; fails once the groups outgrow the stage's limit.
    pub(crate) fn add(
        &mut self,
        accs: &[(String, Acc)],
        id: Bson,
        doc: &RawDocument,
        stage: &str,
        limits: &Limits,
        spill: SpillTo<'_>,
    ) -> Result<(), QueryError> {
        let key = match bson::RawBson::try_from(id.clone()) {
            Ok(raw) => key_of(raw.as_raw_bson_ref()),
            Err(_) => Vec::new(),
        };
        let (slot, first_doc) = match self.index.get(&key) {
            Some(&i) => (i, false),
            None => {
                self.used += key.len()
                    + mem_size(&id)?
                    + GROUP_OVERHEAD
                    + accs.len() * size_of::<AccState>();
                self.groups
                    .push((id, accs.iter().map(|(_, a)| fresh(a)).collect()));
                self.index.insert(key, self.groups.len() - 1);
                (self.groups.len() - 1, true)
            }
        };
        for ((_, acc), state) in accs.iter().zip(self.groups[slot].1.iter_mut()) {
            let delta = accumulate(acc, state, doc, first_doc, limits)?;
            self.used = self.used.saturating_add_signed(delta);
        }
        if self.used > limits.group_bytes {
            if let Some(e) = self.one_too_large(slot, limits) {
                return Err(e);
            }
            let Some(store) = spill.store else {
                return Err(limits::stage_exceeded(stage, limits.group_bytes));
            };
            group_spill::check_spillable(accs, stage, limits.group_bytes)?;
            return self.spill(store, spill.bucket);
        }
        Ok(())
    }

    /// The groups, ordered by key (`$bucket`: by boundary, the default last), for a run or
    /// the merge; the grouper is left empty.
    fn take_ordered(&mut self, bucket: Option<&Bucket>) -> Vec<Entry> {
        let mut keyed: Vec<Entry> = Vec::with_capacity(self.groups.len());
        let mut slots: Vec<(usize, Vec<u8>)> = self.index.drain().map(|(k, i)| (i, k)).collect();
        slots.sort_unstable_by_key(|(i, _)| *i);
        for ((id, states), (_, key)) in self.groups.drain(..).zip(slots) {
            let order = match bucket {
                Some(b) => [&(b.rank(&id) as u64).to_be_bytes()[..], &key].concat(),
                None => key,
            };
            keyed.push((order, id, states));
        }
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.used = 0;
        keyed
    }

    /// Writes the groups so far as a run, ordered by key, and frees them.
    fn spill(&mut self, store: &dyn SpillStore, bucket: Option<&Bucket>) -> Result<(), QueryError> {
        let groups = self.take_ordered(bucket);
        let spilled = match &mut self.spilled {
            Some(s) => s,
            None => self.spilled.insert(Spilled::open(store)?),
        };
        let mut records = groups
            .into_iter()
            .map(|(key, id, states)| group_spill::encode(&key, &id, states));
        let run = spilled.file.write_run(&mut records)?;
        spilled.runs.push(run);
        Ok(())
    }

    /// 146 when crossing the stage limit while updating group `slot` is down to one large
    /// `$push`/`$addToSet` (spilling could not split it; see the module comment).
    fn one_too_large(&self, slot: usize, limits: &Limits) -> Option<QueryError> {
        for state in &self.groups[slot].1 {
            match state {
                AccState::Array(_, bytes) if *bytes > limits.group_bytes / 2 => {
                    return Some(limits::accumulator_exceeded("$push", limits.push_bytes));
                }
                AccState::Set(_, _, bytes) if *bytes > limits.group_bytes / 2 => {
                    let limit = limits.add_to_set_bytes;
                    return Some(limits::accumulator_exceeded("$addToSet", limit));
                }
                _ => {}
            }
        }
        None
    }

    /// Orders the groups as `$bucket` returns them.
    fn sort_buckets(&mut self, bucket: &Bucket) {
        self.groups.sort_by_key(|(id, _)| bucket.rank(id));
    }

    /// The groups as result documents, one at a time, in order: first-seen (`$bucket`:
    /// boundary) order from memory, or key order merged from the runs once they spilled.
    pub(crate) fn finish(
        mut self,
        accs: &[(String, Acc)],
        bucket: Option<&Bucket>,
        limits: &Limits,
    ) -> Result<Groups, QueryError> {
        let Some(spilled) = self.spilled.take() else {
            if let Some(b) = bucket {
                self.sort_buckets(b);
            }
            return Ok(Groups::Memory(self.groups.into_iter()));
        };
        let rest = self.take_ordered(bucket);
        let merge = GroupMerge::new(accs, spilled, rest, limits.group_bytes)?;
        Ok(Groups::Merge(Box::new(merge)))
    }
}

/// Finished groups, turned into documents as they are taken.
pub(crate) enum Groups {
    Memory(std::vec::IntoIter<(Bson, Vec<AccState>)>),
    Merge(Box<GroupMerge>),
}

impl Groups {
    /// The next group's document; with `max`, one larger than `max` bytes is refused (10334)
    /// before it is serialized.
    pub(crate) fn next(
        &mut self,
        accs: &[(String, Acc)],
        max: Option<usize>,
        limits: &Limits,
    ) -> Result<Option<RawDocumentBuf>, QueryError> {
        let next = match self {
            Groups::Memory(groups) => groups.next(),
            Groups::Merge(merge) => merge.next(accs, limits)?,
        };
        let Some((id, states)) = next else {
            return Ok(None);
        };
        let mut out = Document::new();
        out.insert("_id", id);
        for ((name, acc), state) in accs.iter().zip(states) {
            out.insert(name.clone(), finish(acc, state)?);
        }
        if let Some(max) = max {
            crate::memory::check_document(&out, max)?;
        }
        to_raw(&out).map(Some)
    }
}
