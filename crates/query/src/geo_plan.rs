//! Index bounds on a geo field: the cell-number ranges covering a geo operator's region
//! (`mangrove-geo`'s coverings), each cell's descendants as a range and its ancestors as single
//! numbers, so the scan reaches every indexed shape that may touch the region.
//!
//! Invariant: the ranges are a superset (the fetched documents go through the whole filter);
//! only a geo operator bounds a geo field, and a geo operator bounds only a geo field.

use bson::{Bson, RawBsonRef};
use mangrove_bson::index::KeyKind;
use mangrove_geo::{MAX_LEVEL, SPHERE};

use crate::encode_key;
use crate::filter::Pred;
use crate::index::IndexField;

/// Ranges shown in `explain` before the rest are summarized.
const SHOWN_RANGES: usize = 50;

/// The inclusive cell-number ranges a geo predicate bounds `field` to; `None` when the field
/// is not geo, the predicate not geo, or the index cannot answer it (a flat `$near` on a
/// `2dsphere` index).
pub(crate) fn cell_ranges(field: &IndexField, pred: &Pred) -> Option<Vec<(u64, u64)>> {
    let Pred::Geo(op) = pred else { return None };
    match field.kind {
        KeyKind::Sphere2d => op.ranges(&SPHERE, MAX_LEVEL),
        KeyKind::Flat2d(plane) => op.ranges(&plane.frame(), plane.bits),
        _ => None,
    }
}

/// One range's ends as key components (int64 cell numbers, never descending).
pub(crate) fn range_bytes(lo: u64, hi: u64) -> (Vec<u8>, Vec<u8>) {
    let enc = |n: u64| {
        let mut out = Vec::new();
        encode_key(RawBsonRef::Int64(n as i64), &mut out);
        out
    };
    (enc(lo), enc(hi))
}

/// `explain`'s `indexBounds` for a geo field, as mongod shows cell ranges.
pub(crate) fn display(ranges: &[(u64, u64)]) -> Vec<Bson> {
    let mut out: Vec<Bson> = ranges
        .iter()
        .take(SHOWN_RANGES)
        .map(|(lo, hi)| Bson::String(format!("[{lo}, {hi}]")))
        .collect();
    if ranges.len() > SHOWN_RANGES {
        out.push(Bson::String(format!(
            "... {} more",
            ranges.len() - SHOWN_RANGES
        )));
    }
    out
}

/// The frame and finest level of a geo index whose first field is `field`, if it can answer
/// `near` on `path`: a 2dsphere index for spherical queries, a 2d index for flat ones and for
/// legacy `$nearSphere` (radians).
pub fn near_frame(
    field: Option<&IndexField>,
    path: &str,
    near: &mangrove_geo::Near,
) -> Option<(mangrove_geo::Frame, u8)> {
    let field = field.filter(|f| f.path == path)?;
    match field.kind {
        KeyKind::Sphere2d if near.sphere => Some((SPHERE, MAX_LEVEL)),
        KeyKind::Flat2d(plane) if !near.meters => Some((plane.frame(), plane.bits)),
        _ => None,
    }
}

/// Whether an index has a geo field (what `$geoNear` looks for).
pub fn geo_field(spec: &crate::index::IndexSpec) -> Option<&IndexField> {
    spec.fields.iter().find(|f| f.kind.is_geo())
}
