//! The `coordinates` of each GeoJSON type, read into geometry and validated.
//!
//! Invariant: every position passes [`check_lng_lat`]; at most `budget` positions are read
//! (the caller's [`crate::shape::MAX_VERTICES`]), so a huge value fails early instead of being
//! converted whole.

use bson::{RawArray, RawBsonRef};
use geo::{Coord, Geometry, LineString, Point};

use crate::shape::{check_lng_lat, multi_line, multi_point, multi_polygon, polygon};

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
            crate::shape::MAX_VERTICES
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
