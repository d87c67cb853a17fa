//! Shapes: GeoJSON objects and legacy coordinate pairs read from BSON, validated as mongod
//! validates what it indexes (the reasons are mongod's wording where known; the caller adds
//! "Can't extract geo keys" and the document).
//!
//! Invariant: knows BSON values and geometry only, nothing of indexes, filters or commands.
//! Work is bounded: at most [`MAX_VERTICES`] positions per value, edge-crossing checks only on
//! rings of at most [`MAX_CHECKED_EDGES`] edges, nesting at most [`MAX_DEPTH`].

use bson::{RawArray, RawBsonRef, RawDocument};
use geo::{Coord, Geometry, GeometryCollection, Intersects, Point};

pub use crate::shape_parts::{MAX_CHECKED_EDGES, MAX_VERTICES, check_lng_lat};

/// Nesting of geometry collections.
const MAX_DEPTH: usize = 16;

/// What a shape was written as: distances and operators treat legacy pairs differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `[x, y]` or `{x: .., y: ..}`.
    Legacy,
    GeoJson,
}

/// One parsed shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub geom: Geometry<f64>,
    pub form: Form,
}

impl Shape {
    pub fn point(&self) -> Option<Coord<f64>> {
        match &self.geom {
            Geometry::Point(p) => Some(p.0),
            _ => None,
        }
    }
}

fn number(v: RawBsonRef<'_>) -> Option<f64> {
    match v {
        RawBsonRef::Double(d) => Some(d),
        RawBsonRef::Int32(i) => Some(i as f64),
        RawBsonRef::Int64(i) => Some(i as f64),
        RawBsonRef::Decimal128(d) => d.to_string().parse().ok(),
        _ => None,
    }
}

/// A legacy pair: the first two elements of an array or the first two fields of a document,
/// both numbers. `None` when the value is not one.
pub fn legacy_point(v: RawBsonRef<'_>) -> Option<Coord<f64>> {
    let mut values: Vec<RawBsonRef<'_>> = match v {
        RawBsonRef::Array(a) => a.into_iter().take(2).map_while(Result::ok).collect(),
        RawBsonRef::Document(d) => d
            .iter()
            .take(2)
            .map_while(Result::ok)
            .map(|(_, v)| v)
            .collect(),
        _ => return None,
    };
    if values.len() != 2 {
        return None;
    }
    let y = number(values.pop()?)?;
    let x = number(values.pop()?)?;
    (x.is_finite() && y.is_finite()).then_some(Coord { x, y })
}

/// A stored field's value as the shapes a `2dsphere` index keys: a GeoJSON object, a legacy
/// pair, or an array of those. `Ok(empty)` for null (no keys).
pub fn parse_stored(v: RawBsonRef<'_>) -> Result<Vec<Shape>, String> {
    match v {
        // Several locations: one level of array, each element one shape.
        RawBsonRef::Array(a) if !starts_with_number(a) => {
            let mut out = Vec::new();
            for e in a.into_iter().map_while(Result::ok) {
                out.extend(stored_one(e)?);
            }
            Ok(out)
        }
        v => stored_one(v),
    }
}

/// One stored shape (none for null).
fn stored_one(v: RawBsonRef<'_>) -> Result<Vec<Shape>, String> {
    match v {
        RawBsonRef::Null | RawBsonRef::Undefined => Ok(Vec::new()),
        RawBsonRef::Document(d) if d.get("type").ok().flatten().is_some() => {
            let geom = parse_geojson(d)?;
            Ok(vec![Shape {
                geom,
                form: Form::GeoJson,
            }])
        }
        RawBsonRef::Document(_) | RawBsonRef::Array(_) => match legacy_point(v) {
            Some(c) => {
                check_lng_lat(c)?;
                Ok(vec![Shape {
                    geom: Geometry::Point(Point(c)),
                    form: Form::Legacy,
                }])
            }
            None => Err("Point must only contain numeric elements".into()),
        },
        _ => Err("geo element must be an array or object".into()),
    }
}

fn starts_with_number(a: &RawArray) -> bool {
    a.into_iter()
        .next()
        .and_then(Result::ok)
        .and_then(number)
        .is_some()
}

/// A GeoJSON object `{type, coordinates}` (or `{type: "GeometryCollection", geometries}`),
/// validated: positions within longitude/latitude bounds, rings closed with at least three
/// distinct vertices and no crossing edges, holes inside the shell.
pub fn parse_geojson(d: &RawDocument) -> Result<Geometry<f64>, String> {
    let mut budget = MAX_VERTICES;
    geojson(d, &mut budget, 0)
}

fn geojson(d: &RawDocument, budget: &mut usize, depth: usize) -> Result<Geometry<f64>, String> {
    let kind = match d.get("type") {
        Ok(Some(RawBsonRef::String(s))) => s,
        _ => return Err("GeoJSON type must be a string".into()),
    };
    if kind == "GeometryCollection" {
        if depth >= MAX_DEPTH {
            return Err("GeometryCollection nested too deeply".into());
        }
        let Ok(Some(RawBsonRef::Array(items))) = d.get("geometries") else {
            return Err("GeometryCollection geometries must be an array".into());
        };
        let mut out = Vec::new();
        for item in items.into_iter().map_while(Result::ok) {
            let RawBsonRef::Document(g) = item else {
                return Err("Element of geometries is not an object".into());
            };
            out.push(geojson(g, budget, depth + 1)?);
        }
        return Ok(Geometry::GeometryCollection(GeometryCollection(out)));
    }
    let Ok(Some(RawBsonRef::Array(coords))) = d.get("coordinates") else {
        return Err(format!("coordinates must be an array: {kind}"));
    };
    crate::shape_parts::by_type(kind, coords, budget)
}

/// Whether `outer` contains (boundary included) every point of `inner`.
pub fn covers(outer: &Geometry<f64>, inner: &Geometry<f64>) -> bool {
    match inner {
        Geometry::Point(p) => outer.intersects(p),
        Geometry::MultiPoint(mp) => mp.0.iter().all(|p| outer.intersects(p)),
        Geometry::GeometryCollection(gc) => gc.0.iter().all(|g| covers(outer, g)),
        _ => geo::Covers::covers(outer, inner),
    }
}

/// The shapes of a stored value an operator looks at; flat operators also take legacy pairs
/// outside longitude/latitude bounds.
pub fn shapes_of(v: RawBsonRef<'_>, flat: bool) -> Vec<Shape> {
    if flat && let Some(c) = legacy_point(v) {
        let geom = Geometry::Point(geo::Point(c));
        return vec![Shape {
            geom,
            form: crate::shape::Form::Legacy,
        }];
    }
    if let RawBsonRef::Array(a) = v
        && flat
        && a.into_iter()
            .next()
            .and_then(Result::ok)
            .is_some_and(|e| legacy_point(e).is_some())
    {
        return a
            .into_iter()
            .map_while(Result::ok)
            .filter_map(legacy_point)
            .map(|c| Shape {
                geom: Geometry::Point(geo::Point(c)),
                form: Form::Legacy,
            })
            .collect();
    }
    parse_stored(v).unwrap_or_default()
}
