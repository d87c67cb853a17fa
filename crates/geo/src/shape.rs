//! Shapes: GeoJSON objects and legacy coordinate pairs read from BSON, validated as mongod
//! validates what it indexes (the reasons are mongod's wording where known; the caller adds
//! "Can't extract geo keys" and the document).
//!
//! Invariant: knows BSON values and geometry only, nothing of indexes, filters or commands.
//! Work is bounded: at most [`MAX_VERTICES`] positions per value, edge-crossing checks only on
//! rings of at most [`MAX_CHECKED_EDGES`] edges, nesting at most [`MAX_DEPTH`].

use bson::{RawArray, RawBsonRef, RawDocument};
use geo::{
    Coord, Geometry, GeometryCollection, Intersects, Line, LineString, MultiLineString, MultiPoint,
    MultiPolygon, Point, Polygon,
};

/// Positions one value may hold: bounds the work of validating and covering it.
pub const MAX_VERTICES: usize = 100_000;
/// Rings with more edges are not checked for crossing edges (the check is quadratic).
pub const MAX_CHECKED_EDGES: usize = 2_000;
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
    Some(Coord { x, y })
}

/// Whether `c` is a valid longitude/latitude.
pub fn check_lng_lat(c: Coord<f64>) -> Result<(), String> {
    if (-180.0..=180.0).contains(&c.x) && (-90.0..=90.0).contains(&c.y) {
        Ok(())
    } else {
        Err(format!(
            "longitude/latitude is out of bounds, lng: {} lat: {}",
            c.x, c.y
        ))
    }
}

/// A stored field's value as the shapes a `2dsphere` index keys: a GeoJSON object, a legacy
/// pair, or an array of those. `Ok(empty)` for null (no keys).
pub fn parse_stored(v: RawBsonRef<'_>) -> Result<Vec<Shape>, String> {
    match v {
        RawBsonRef::Null | RawBsonRef::Undefined => Ok(Vec::new()),
        RawBsonRef::Document(d) if d.get("type").ok().flatten().is_some() => {
            let geom = parse_geojson(d)?;
            Ok(vec![Shape {
                geom,
                form: Form::GeoJson,
            }])
        }
        RawBsonRef::Array(a) if !starts_with_number(a) => {
            let mut out = Vec::new();
            for e in a.into_iter().map_while(Result::ok) {
                out.extend(parse_stored(e)?);
            }
            Ok(out)
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

/// A ring's positions: closed, at least three distinct vertices, no two edges crossing.
pub(crate) fn check_ring(ring: &LineString<f64>) -> Result<(), String> {
    let pts = &ring.0;
    if pts.len() < 4 {
        return Err("Loop must have at least 3 different vertices".into());
    }
    if pts.first() != pts.last() {
        return Err("Loop is not closed, first vertex does not equal last vertex".into());
    }
    let mut distinct: Vec<Coord<f64>> = pts[..pts.len() - 1].to_vec();
    distinct.dedup();
    if distinct.len() < 3 {
        return Err("Loop must have at least 3 different vertices".into());
    }
    let edges: Vec<Line<f64>> = ring.lines().filter(|l| l.start != l.end).collect();
    if edges.len() <= MAX_CHECKED_EDGES {
        for (a, ea) in edges.iter().enumerate() {
            for (b, eb) in edges.iter().enumerate().skip(a + 2) {
                let adjacent = a == 0 && b == edges.len() - 1;
                if !adjacent && ea.intersects(eb) {
                    return Err(format!("Loop is not valid: Edges {a} and {b} cross"));
                }
            }
        }
    }
    Ok(())
}

/// A polygon from its rings: the first is the shell, the others holes inside it.
pub(crate) fn polygon(mut rings: Vec<LineString<f64>>) -> Result<Polygon<f64>, String> {
    if rings.is_empty() {
        return Err("Polygon has no loops.".into());
    }
    for r in &rings {
        check_ring(r)?;
    }
    let shell = rings.remove(0);
    let outer = Polygon::new(shell.clone(), Vec::new());
    for hole in &rings {
        if !hole.0.iter().all(|c| outer.intersects(&Point(*c))) {
            return Err(
                "Secondary loops not contained by first exterior loop - secondary loops must be holes"
                    .into(),
            );
        }
    }
    Ok(Polygon::new(shell, rings))
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

pub(crate) fn multi_point(points: Vec<Coord<f64>>) -> Geometry<f64> {
    Geometry::MultiPoint(MultiPoint(points.into_iter().map(Point).collect()))
}

pub(crate) fn multi_line(lines: Vec<LineString<f64>>) -> Geometry<f64> {
    Geometry::MultiLineString(MultiLineString(lines))
}

pub(crate) fn multi_polygon(polys: Vec<Polygon<f64>>) -> Geometry<f64> {
    Geometry::MultiPolygon(MultiPolygon(polys))
}
