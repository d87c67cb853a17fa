//! The geospatial filter operators: `$geoWithin` (and its old name `$within`),
//! `$geoIntersects`, `$near` and `$nearSphere` (with the legacy form's sibling
//! `$maxDistance`/`$minDistance`). The geometry is `mangrove-geo`'s; this file only turns its
//! reasons into BadValue errors and finds a `$near` for the server, which must order results
//! by distance and refuses the query without a geo index (as mongod).
//!
//! Invariant: a geo predicate (`Pred::Geo` in `filter.rs`) tests the whole value at its path (a legacy pair is an array,
//! not two values), never its elements one by one.

use std::sync::Arc;

use bson::{RawBsonRef, RawDocument};
use mangrove_geo::{GeoOp, Near};

use crate::error::QueryError;

/// `$geoWithin`/`$within`/`$geoIntersects` with its operand.
pub(crate) fn parse(name: &str, value: RawBsonRef<'_>) -> Result<Arc<GeoOp>, QueryError> {
    GeoOp::parse(name, value)
        .map(Arc::new)
        .map_err(QueryError::bad_value)
}

/// A `$near`/`$nearSphere` among the operators of `d`, with its siblings; `None` when `d` has
/// neither. Other operators beside it are refused, as mongod refuses them.
pub(crate) fn parse_near(d: &RawDocument) -> Result<Option<Arc<GeoOp>>, QueryError> {
    let mut near = None;
    let mut max = None;
    let mut min = None;
    for (key, value) in d.iter().map_while(Result::ok) {
        match key.as_str() {
            "$near" => near = Some((false, value)),
            "$nearSphere" => near = Some((true, value)),
            "$maxDistance" => max = Some(value),
            "$minDistance" => min = Some(value),
            _ => {}
        }
    }
    let Some((spherical, value)) = near else {
        return Ok(None);
    };
    let near = Near::parse(spherical, value, max, min).map_err(QueryError::bad_value)?;
    Ok(Some(Arc::new(GeoOp::Near(near))))
}

/// The distance (in `near`'s units) from `near` to the nearest shape at `path` in `doc`, and
/// that shape's value (what `includeLocs` shows).
pub fn near_distance<'a>(
    near: &Near,
    path: &str,
    doc: &'a RawDocument,
) -> Option<(f64, RawBsonRef<'a>)> {
    let parts = crate::path::split_path(path);
    let mut best: Option<(f64, RawBsonRef<'a>)> = None;
    crate::path::walk(doc, &parts, false, &mut |v| {
        if let Some(v) = v
            && let Some(d) = near.distance(v)
            && best.is_none_or(|(b, _)| d < b)
        {
            best = Some((d, v));
        }
        false
    });
    best
}
