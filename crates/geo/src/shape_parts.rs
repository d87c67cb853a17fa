//! The `coordinates` of each GeoJSON type, read into geometry and validated.
//!
//! Invariant: every position passes [`check_lng_lat`]; at most `budget` positions are read
//! (the caller's [`MAX_VERTICES`]), so a huge value fails early instead of being converted
//! whole; rings are closed, have three distinct vertices, no crossing edges (checked on rings
//! of at most [`MAX_CHECKED_EDGES`] edges: the check is quadratic), and holes lie in the shell.
//! Depends on nothing else of this crate.

use bson::{RawArray, RawBsonRef};
use geo::{
    Coord, Geometry, Intersects, Line, LineString, MultiLineString, MultiPoint, MultiPolygon,
    Point, Polygon,
};

fn elements(a: &RawArray) -> impl Iterator<Item = RawBsonRef<'_>> {
    a.into_iter().map_while(Result::ok)
}

fn array<'a>(v: RawBsonRef<'a>, what: &str) -> Result<&'a RawArray, String> {
    match v {
        RawBsonRef::Array(a) => Ok(a),
        _ => Err(format!("{what} must be an array")),
    }
}

/// One position `[lng, lat, ...]`.
fn position(v: RawBsonRef<'_>, budget: &mut usize) -> Result<Coord<f64>, String> {
    if *budget == 0 {
        return Err(format!(
            "GeoJSON object has more than {} vertices",
            MAX_VERTICES
        ));
    }
    *budget -= 1;
    let a = array(v, "Point")?;
    let nums: Vec<f64> = elements(a)
        .map(|e| match e {
            RawBsonRef::Double(d) => Some(d),
            RawBsonRef::Int32(i) => Some(i as f64),
            RawBsonRef::Int64(i) => Some(i as f64),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or("Point must only contain numeric elements")?;
    if nums.len() < 2 {
        return Err("Point must contain at least two numeric elements".into());
    }
    let c = Coord {
        x: nums[0],
        y: nums[1],
    };
    check_lng_lat(c)?;
    Ok(c)
}

fn positions(a: &RawArray, budget: &mut usize) -> Result<Vec<Coord<f64>>, String> {
    elements(a).map(|v| position(v, budget)).collect()
}

fn line(a: &RawArray, budget: &mut usize) -> Result<LineString<f64>, String> {
    let pts = positions(a, budget)?;
    let mut distinct = pts.clone();
    distinct.dedup();
    if distinct.len() < 2 {
        return Err("GeoJSON LineString must have at least 2 vertices".into());
    }
    Ok(LineString(pts))
}

fn rings(a: &RawArray, budget: &mut usize) -> Result<geo::Polygon<f64>, String> {
    let rings = elements(a)
        .map(|r| {
            let r = array(r, "Polygon coordinates")?;
            Ok(LineString(positions(r, budget)?))
        })
        .collect::<Result<Vec<_>, String>>()?;
    polygon(rings)
}

/// The geometry of GeoJSON type `kind` with these `coordinates`.
pub(crate) fn by_type(
    kind: &str,
    coords: &RawArray,
    budget: &mut usize,
) -> Result<Geometry<f64>, String> {
    let each = |budget: &mut usize, what: &str| -> Result<Vec<&RawArray>, String> {
        let _ = budget;
        elements(coords).map(|v| array(v, what)).collect()
    };
    Ok(match kind {
        "Point" => Geometry::Point(Point(position(RawBsonRef::Array(coords), budget)?)),
        "LineString" => Geometry::LineString(line(coords, budget)?),
        "Polygon" => Geometry::Polygon(rings(coords, budget)?),
        "MultiPoint" => {
            let pts = positions(coords, budget)?;
            if pts.is_empty() {
                return Err("MultiPoint coordinates must have at least 1 element".into());
            }
            multi_point(pts)
        }
        "MultiLineString" => {
            let parts = each(budget, "MultiLineString coordinates")?;
            let lines = parts
                .into_iter()
                .map(|a| line(a, budget))
                .collect::<Result<Vec<_>, _>>()?;
            if lines.is_empty() {
                return Err("MultiLineString coordinates must have at least 1 element".into());
            }
            multi_line(lines)
        }
        "MultiPolygon" => {
            let parts = each(budget, "MultiPolygon coordinates")?;
            let polys = parts
                .into_iter()
                .map(|a| rings(a, budget))
                .collect::<Result<Vec<_>, _>>()?;
            if polys.is_empty() {
                return Err("MultiPolygon coordinates must have at least 1 element".into());
            }
            multi_polygon(polys)
        }
        other => return Err(format!("unknown GeoJSON type: {other}")),
    })
}

/// Positions one value may hold: bounds the work of validating and covering it.
pub const MAX_VERTICES: usize = 100_000;
/// Rings with more edges are not checked for crossing edges (the check is quadratic).
pub const MAX_CHECKED_EDGES: usize = 2_000;
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

pub(crate) fn multi_point(points: Vec<Coord<f64>>) -> Geometry<f64> {
    Geometry::MultiPoint(MultiPoint(points.into_iter().map(Point).collect()))
}

pub(crate) fn multi_line(lines: Vec<LineString<f64>>) -> Geometry<f64> {
    Geometry::MultiLineString(MultiLineString(lines))
}

pub(crate) fn multi_polygon(polys: Vec<Polygon<f64>>) -> Geometry<f64> {
    Geometry::MultiPolygon(MultiPolygon(polys))
}
