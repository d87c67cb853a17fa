//! Index bounds: which ranges of an index's entries can hold the documents a filter matches.
//!
//! The one rule the planner must keep is that the bounds are a *superset* of the matches: the
//! server fetches every document the bounds reach and applies the whole filter to it. So a
//! condition the planner does not understand only makes the bounds wider, never wrong. Only
//! conditions of the filter's top-level conjunction narrow the bounds; `$or`, `$nor`, `$expr` and
//! negations are left to the filter. Several range conditions on one field are intersected only
//! while the index is not multikey: on an array, each may be satisfied by a different element.

use std::ops::Bound;

use bson::{Bson, Document, RawBson, RawBsonRef, RawDocument};
use mangrove_bson::KeyInterval;

use crate::compare::type_bracket;
use crate::filter::{CmpOp, Filter, Node, Pred};
use crate::index::{IndexField, IndexSpec};

/// The most intervals an equality prefix may expand to (`$in` lists multiply on compound
/// indexes); beyond it the remaining fields are left unbounded.
const MAX_INTERVALS: usize = 1024;

/// The ranges of one index a query must scan.
#[derive(Debug, Clone)]
pub struct IndexBounds {
    /// Disjoint, in ascending key order.
    pub intervals: Vec<KeyInterval>,
    /// MongoDB's `indexBounds` for `explain`: each field's ranges as strings.
    pub display: Document,
    /// Higher is more selective: two per equality field, one for a range.
    pub score: usize,
    /// How many leading fields the bounds pin to a single value: a sort may start after them
    /// (or on them) and still be served by the index's order.
    pub eq_prefix: usize,
}

impl IndexBounds {
    /// Whether scanning these bounds yields documents in `sort` order (`(path, descending)`
    /// pairs): `Some(false)` walking forward, `Some(true)` walking backward. The sort must be a
    /// run of the index's fields, all in the index's directions or all against them, with every
    /// field before the run pinned to one value. Only for an index that is not multikey, where
    /// each document has one key.
    pub fn sort_direction(
        &self,
        spec: &IndexSpec,
        sort: &[(String, bool)],
        multikey: bool,
    ) -> Option<bool> {
        if multikey || sort.is_empty() {
            return None;
        }
        [false, true].into_iter().find(|&reverse| {
            (0..=self.eq_prefix).any(|start| {
                spec.fields
                    .get(start..start + sort.len())
                    .is_some_and(|fields| {
                        fields.iter().zip(sort).all(|(f, (path, desc))| {
                            f.kind.is_ordered()
                                && f.path == *path
                                && (f.descending != *desc) == reverse
                        })
                    })
            })
        })
    }
}

/// A field's condition in value space.
enum FieldBound {
    /// A geo field's cell-number ranges, inclusive (`geo_plan.rs`).
    Cells(Vec<(u64, u64)>),
    Points(Vec<RawBson>),
    Range {
        bracket: u8,
        lo: Option<(RawBson, bool)>,
        hi: Option<(RawBson, bool)>,
    },
}

/// One end of a component's range in byte space: the bytes and whether values equal to them
/// are included.
type End = (Vec<u8>, bool);

fn tag_byte(bracket: u8, descending: bool) -> u8 {
    let tag = bracket + 0x10;
    if descending { !tag } else { tag }
}

impl FieldBound {
    /// The component's ranges in byte space, ascending.
    fn byte_ranges(&self, field: &IndexField) -> Vec<(End, End)> {
        let descending = field.descending;
        match self {
            FieldBound::Cells(ranges) => ranges
                .iter()
                .map(|&(lo, hi)| {
                    let (lo, hi) = crate::geo_plan::range_bytes(lo, hi);
                    ((lo, true), (hi, true))
                })
                .collect(),
            FieldBound::Points(values) => {
                let mut keys: Vec<Vec<u8>> = values
                    .iter()
                    .map(|v| {
                        let mut key = Vec::new();
                        field.encode(v.as_raw_bson_ref(), &mut key);
                        key
                    })
                    .collect();
                keys.sort_unstable();
                keys.dedup();
                keys.into_iter()
                    .map(|k| ((k.clone(), true), (k, true)))
                    .collect()
            }
            FieldBound::Range { bracket, lo, hi } => {
                let start = (vec![tag_byte(*bracket, descending)], true);
                let end = (vec![tag_byte(*bracket, descending) + 1], false);
                // Through the field, so an index's collation keys the bounds as its entries.
                let val = |(v, incl): &(RawBson, bool)| {
                    let mut key = Vec::new();
                    field.encode(v.as_raw_bson_ref(), &mut key);
                    (key, *incl)
                };
                let (byte_lo, byte_hi) = if descending {
                    (hi.as_ref().map(val), lo.as_ref().map(val))
                } else {
                    (lo.as_ref().map(val), hi.as_ref().map(val))
                };
                vec![(byte_lo.unwrap_or(start), byte_hi.unwrap_or(end))]
            }
        }
    }

    fn display(&self) -> Vec<Bson> {
        let show = |v: &RawBson| {
            Bson::try_from(v.clone())
                .map(|b| b.to_string())
                .unwrap_or_default()
        };
        match self {
            FieldBound::Cells(ranges) => crate::geo_plan::display(ranges),
            FieldBound::Points(values) => values
                .iter()
                .map(|v| Bson::String(format!("[{}, {}]", show(v), show(v))))
                .collect(),
            FieldBound::Range { bracket, lo, hi } => {
                let number = *bracket == type_bracket(RawBsonRef::Int32(0));
                let lo_s = match lo {
                    Some((v, incl)) => format!("{}{}", if *incl { "[" } else { "(" }, show(v)),
                    None if number => "[-inf.0".to_string(),
                    None => "[MinKey".to_string(),
                };
                let hi_s = match hi {
                    Some((v, incl)) => format!("{}{}", show(v), if *incl { "]" } else { ")" }),
                    None if number => "inf.0]".to_string(),
                    None => "MaxKey]".to_string(),
                };
                vec![Bson::String(format!("{lo_s}, {hi_s}"))]
            }
        }
    }

    fn excludes_null(&self) -> bool {
        match self {
            FieldBound::Cells(_) => true,
            FieldBound::Points(values) => values
                .iter()
                .all(|v| !matches!(v, RawBson::Null | RawBson::Undefined)),
            FieldBound::Range { bracket, .. } => *bracket != type_bracket(RawBsonRef::Null),
        }
    }

    fn is_points(&self) -> bool {
        matches!(self, FieldBound::Points(_))
    }
}

/// The conditions of the filter's top-level conjunction, by path.
fn conjuncts<'a>(node: &'a Node, out: &mut Vec<(&'a str, &'a Pred)>) {
    match node {
        Node::And(children) => {
            for c in children {
                conjuncts(c, out);
            }
        }
        Node::Field { path, pred, .. } => out.push((path.as_str(), pred)),
        _ => {}
    }
}

fn usable_scalar(v: &RawBson) -> bool {
    match v {
        RawBson::Array(_)
        | RawBson::RegularExpression(_)
        | RawBson::MinKey
        | RawBson::MaxKey
        | RawBson::Undefined => false,
        RawBson::Double(d) => !d.is_nan(),
        _ => true,
    }
}

fn bound_for(pred: &Pred) -> Option<FieldBound> {
    match pred {
        Pred::Eq(RawBson::Null) => {
            Some(FieldBound::Points(vec![RawBson::Null, RawBson::Undefined]))
        }
        Pred::Eq(v) if usable_scalar(v) => Some(FieldBound::Points(vec![v.clone()])),
        Pred::In {
            values,
            regexes,
            has_null,
        } if regexes.is_empty() && values.iter().all(usable_scalar) => {
            let mut points = values.clone();
            if *has_null {
                points.push(RawBson::Null);
                points.push(RawBson::Undefined);
            }
            Some(FieldBound::Points(points))
        }
        Pred::Cmp(op, v) if usable_scalar(v) => {
            let bracket = type_bracket(v.as_raw_bson_ref());
            let (lo, hi) = match op {
                CmpOp::Gt => (Some((v.clone(), false)), None),
                CmpOp::Gte => (Some((v.clone(), true)), None),
                CmpOp::Lt => (None, Some((v.clone(), false))),
                CmpOp::Lte => (None, Some((v.clone(), true))),
            };
            Some(FieldBound::Range { bracket, lo, hi })
        }
        _ => None,
    }
}

/// Whether the query's top-level conditions include every top-level condition of a partial
/// index's filter, so every document the query matches is in the index. Syntactic and
/// conservative: `{a: {$gt: 5}}` does not imply `{a: {$gt: 1}}` here.
fn implies(query: &RawDocument, partial: &Document) -> bool {
    let mut have: Vec<(String, Bson)> = Vec::new();
    let add = |d: &Document, have: &mut Vec<(String, Bson)>| {
        for (k, v) in d {
            have.push((k.clone(), v.clone()));
        }
    };
    let Ok(query) = Document::try_from(query) else {
        return false;
    };
    add(&query, &mut have);
    if let Ok(and) = query.get_array("$and") {
        for clause in and {
            if let Bson::Document(d) = clause {
                add(d, &mut have);
            }
        }
    }
    partial
        .iter()
        .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
}

/// Whether every top-level condition of a partial index's filter is implied by one of the
/// query's conditions on the same path, comparing the values each allows: `{b: 1}` or
/// `{b: {$gte: 2}}` imply `{b: {$gt: 0}}`, any condition that excludes null implies
/// `{$exists: true}`. Conditions it cannot bound (regexes, `$type`, `$or`...) imply nothing.
fn implies_by_bounds(query: &[(&str, &Pred)], partial: &Document) -> bool {
    let Ok(raw) = bson::RawDocumentBuf::try_from(partial) else {
        return false;
    };
    let Ok(partial) = Filter::parse(&raw) else {
        return false;
    };
    let mut wanted = Vec::new();
    conjuncts(partial.root(), &mut wanted);
    !wanted.is_empty()
        && wanted.iter().all(|(path, want)| {
            query
                .iter()
                .filter(|(p, _)| p == path)
                .any(|(_, have)| pred_implies(have, want))
        })
}

fn pred_implies(have: &Pred, want: &Pred) -> bool {
    let Some(have) = bound_for(have) else {
        return false;
    };
    match want {
        Pred::Exists(true) => have.excludes_null(),
        want => bound_for(want).is_some_and(|want| bound_within(&have, &want)),
    }
}

/// Whether every value `inner` allows is allowed by `outer`.
fn bound_within(inner: &FieldBound, outer: &FieldBound) -> bool {
    let same = |a: &RawBson, b: &RawBson| {
        crate::compare_values(a.as_raw_bson_ref(), b.as_raw_bson_ref()).is_eq()
    };
    match (inner, outer) {
        (FieldBound::Points(have), FieldBound::Points(want)) => {
            have.iter().all(|h| want.iter().any(|w| same(h, w)))
        }
        (FieldBound::Points(have), FieldBound::Range { bracket, lo, hi }) => have.iter().all(|h| {
            type_bracket(h.as_raw_bson_ref()) == *bracket
                && above(lo.as_ref(), Some(&(h.clone(), true)))
                && below(hi.as_ref(), Some(&(h.clone(), true)))
        }),
        (
            FieldBound::Range { bracket, lo, hi },
            FieldBound::Range {
                bracket: outer_bracket,
                lo: outer_lo,
                hi: outer_hi,
            },
        ) => {
            bracket == outer_bracket
                && above(outer_lo.as_ref(), lo.as_ref())
                && below(outer_hi.as_ref(), hi.as_ref())
        }
        (FieldBound::Range { .. }, FieldBound::Points(_)) => false,
        (FieldBound::Cells(_), _) | (_, FieldBound::Cells(_)) => false,
    }
}

/// Whether the lower end `have` is at or above the lower end `limit` (`None`: unbounded).
fn above(limit: Option<&(RawBson, bool)>, have: Option<&(RawBson, bool)>) -> bool {
    match (limit, have) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some((l, l_incl)), Some((h, h_incl))) => {
            match crate::compare_values(h.as_raw_bson_ref(), l.as_raw_bson_ref()) {
                std::cmp::Ordering::Greater => true,
                std::cmp::Ordering::Equal => *l_incl || !*h_incl,
                std::cmp::Ordering::Less => false,
            }
        }
    }
}

/// Whether the upper end `have` is at or below the upper end `limit` (`None`: unbounded).
fn below(limit: Option<&(RawBson, bool)>, have: Option<&(RawBson, bool)>) -> bool {
    match (limit, have) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some((l, l_incl)), Some((h, h_incl))) => {
            match crate::compare_values(h.as_raw_bson_ref(), l.as_raw_bson_ref()) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Equal => *l_incl || !*h_incl,
                std::cmp::Ordering::Greater => false,
            }
        }
    }
}

/// The bounds of `spec` for `filter` (whose raw form is `raw`), or `None` when the index cannot
/// help: no condition on its first field, or a sparse or partial index that may lack matching
/// documents. A hinted index is always usable (scanned whole if need be), as in MongoDB.
pub fn index_bounds(
    filter: &Filter,
    raw: &RawDocument,
    spec: &IndexSpec,
    hinted: bool,
    multikey: bool,
) -> Option<IndexBounds> {
    // A text index answers `$text` only (`text::text_bounds`).
    if spec.text.is_some() {
        return None;
    }
    let mut conds = Vec::new();
    conjuncts(filter.root(), &mut conds);
    let per_field = field_bounds(&conds, spec, multikey);
    // A geo index holds only documents with a geo value: without a geo condition it may lack
    // matches.
    let geo_unbounded = spec
        .fields
        .iter()
        .zip(&per_field)
        .any(|(f, b)| f.kind.is_geo() && b.is_none());
    if !hinted && geo_unbounded {
        return None;
    }
    if !hinted {
        let first = per_field.first().and_then(Option::as_ref)?;
        if spec.sparse && !first.excludes_null() {
            return None;
        }
        if let Some(p) = &spec.partial_raw
            && !implies(raw, p)
            && !implies_by_bounds(&conds, p)
        {
            return None;
        }
    }
    let prefixes = Prefixes::of(spec, &per_field);
    let mut intervals = prefixes.intervals();
    intervals.sort_by(|a, b| lower_key(&a.0).cmp(lower_key(&b.0)));
    Some(IndexBounds {
        intervals,
        display: prefixes.display,
        score: prefixes.score,
        eq_prefix: prefixes.eq_prefix,
    })
}

/// Each indexed field's best condition among the conjuncts, if any.
fn field_bounds(
    conds: &[(&str, &Pred)],
    spec: &IndexSpec,
    multikey: bool,
) -> Vec<Option<FieldBound>> {
    let mut per_field: Vec<Option<FieldBound>> = Vec::with_capacity(spec.fields.len());
    for field in &spec.fields {
        // Equality beats a range: it is narrower, and one condition's bounds are enough.
        let mut best: Option<FieldBound> = None;
        for (path, pred) in conds {
            if *path != field.path {
                continue;
            }
            // A geo field is bounded by a geo operator only, and by the first one.
            if field.kind.is_geo() {
                if best.is_none() {
                    best = crate::geo_plan::cell_ranges(field, pred).map(FieldBound::Cells);
                }
                continue;
            }
            let Some(b) = bound_for(pred) else {
                continue;
            };
            // A hashed field's order is the hashes', so only equality can use it.
            if !field.kind.is_ordered() && !b.is_points() {
                continue;
            }
            best = match best {
                None => Some(b),
                Some(cur) if cur.is_points() => Some(cur),
                Some(_) if b.is_points() => Some(b),
                Some(cur) if multikey => Some(cur),
                Some(cur) => Some(intersect(cur, b)),
            };
        }
        per_field.push(best);
    }
    per_field
}

/// The key prefixes the equality fields pin, and the ranges of the field after them.
struct Prefixes {
    /// One per combination of the equality fields' values (one empty prefix if none).
    keys: Vec<Vec<u8>>,
    /// The byte ranges of the first range field, if the equality fields end at one.
    tail: Option<Vec<(End, End)>>,
    score: usize,
    eq_prefix: usize,
    display: Document,
}

impl Prefixes {
    /// Equality fields extend the prefixes; the first range (or a field with no condition)
    /// ends them.
    fn of(spec: &IndexSpec, per_field: &[Option<FieldBound>]) -> Prefixes {
        let mut out = Prefixes {
            keys: vec![Vec::new()],
            tail: None,
            score: 0,
            eq_prefix: 0,
            display: Document::new(),
        };
        let mut bounded = true;
        for (field, bound) in spec.fields.iter().zip(per_field) {
            let shown = match bound {
                Some(b) if bounded => b.display(),
                _ => vec![Bson::String("[MinKey, MaxKey]".into())],
            };
            out.display.insert(field.path.clone(), shown);
            if !bounded {
                continue;
            }
            match bound {
                Some(b @ FieldBound::Points(values))
                    if out.keys.len() * values.len().max(1) <= MAX_INTERVALS =>
                {
                    out.extend(b.byte_ranges(field));
                }
                Some(b @ (FieldBound::Range { .. } | FieldBound::Cells(_))) => {
                    out.tail = Some(b.byte_ranges(field));
                    out.score += 1;
                    bounded = false;
                }
                _ => {
                    bounded = false;
                }
            }
        }
        out
    }

    /// Appends an equality field's points to every prefix.
    fn extend(&mut self, ranges: Vec<(End, End)>) {
        let mut next = Vec::with_capacity(self.keys.len() * ranges.len());
        for p in &self.keys {
            for ((k, _), _) in &ranges {
                let mut key = p.clone();
                key.extend_from_slice(k);
                next.push(key);
            }
        }
        self.keys = next;
        self.score += 2;
        if ranges.len() == 1 && 2 * self.eq_prefix + 2 == self.score {
            self.eq_prefix += 1;
        }
    }

    /// The key intervals: each prefix, followed by each of the tail's ranges if there is one.
    fn intervals(&self) -> Vec<KeyInterval> {
        let mut intervals = Vec::new();
        for p in &self.keys {
            match &self.tail {
                Some(ranges) => {
                    for ((lo, lo_incl), (hi, hi_incl)) in ranges {
                        let mut lower = p.clone();
                        lower.extend_from_slice(lo);
                        if !lo_incl {
                            lower.push(0xFF);
                        }
                        let mut upper = p.clone();
                        upper.extend_from_slice(hi);
                        if *hi_incl {
                            upper.push(0xFF);
                        }
                        intervals.push((Bound::Included(lower), Bound::Excluded(upper)));
                    }
                }
                None if p.is_empty() => intervals.push((Bound::Unbounded, Bound::Unbounded)),
                None => {
                    let mut upper = p.clone();
                    upper.push(0xFF);
                    intervals.push((Bound::Included(p.clone()), Bound::Excluded(upper)));
                }
            }
        }
        intervals
    }
}

/// Both ranges at once (for a field that is never an array). Ranges in different type brackets
/// cannot both hold: the result is an empty set of points.
fn intersect(a: FieldBound, b: FieldBound) -> FieldBound {
    let (
        FieldBound::Range {
            bracket: ba,
            lo: lo_a,
            hi: hi_a,
        },
        FieldBound::Range {
            bracket: bb,
            lo: lo_b,
            hi: hi_b,
        },
    ) = (a, b)
    else {
        unreachable!("points are never intersected");
    };
    if ba != bb {
        return FieldBound::Points(Vec::new());
    }
    let cmp =
        |x: &RawBson, y: &RawBson| crate::compare_values(x.as_raw_bson_ref(), y.as_raw_bson_ref());
    let lo = match (lo_a, lo_b) {
        (Some(x), Some(y)) => Some(match cmp(&x.0, &y.0) {
            std::cmp::Ordering::Greater => x,
            std::cmp::Ordering::Less => y,
            std::cmp::Ordering::Equal => (x.0, x.1 && y.1),
        }),
        (x, y) => x.or(y),
    };
    let hi = match (hi_a, hi_b) {
        (Some(x), Some(y)) => Some(match cmp(&x.0, &y.0) {
            std::cmp::Ordering::Less => x,
            std::cmp::Ordering::Greater => y,
            std::cmp::Ordering::Equal => (x.0, x.1 && y.1),
        }),
        (x, y) => x.or(y),
    };
    if let (Some((l, li)), Some((h, hi_incl))) = (&lo, &hi) {
        let order = cmp(l, h);
        if order.is_gt() || (order.is_eq() && !(*li && *hi_incl)) {
            return FieldBound::Points(Vec::new());
        }
    }
    FieldBound::Range {
        bracket: ba,
        lo,
        hi,
    }
}

fn lower_key(b: &Bound<Vec<u8>>) -> &[u8] {
    match b {
        Bound::Included(k) | Bound::Excluded(k) => k,
        Bound::Unbounded => &[],
    }
}

/// Bounds for a TTL pass: every entry whose date is before `cutoff_ms`, on a single-field
/// ascending or descending index.
pub fn expired_bounds(spec: &IndexSpec, cutoff_ms: i64) -> Option<KeyInterval> {
    let field = spec.fields.first()?;
    let bound = FieldBound::Range {
        bracket: type_bracket(RawBsonRef::DateTime(bson::DateTime::from_millis(0))),
        lo: None,
        hi: Some((
            RawBson::DateTime(bson::DateTime::from_millis(cutoff_ms)),
            false,
        )),
    };
    let ((lo, lo_incl), (hi, hi_incl)) = bound.byte_ranges(field).pop()?;
    let mut lower = lo;
    if !lo_incl {
        lower.push(0xFF);
    }
    let mut upper = hi;
    if hi_incl {
        upper.push(0xFF);
    }
    Some((Bound::Included(lower), Bound::Excluded(upper)))
}
