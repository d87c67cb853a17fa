//! The regions of `$geoWithin` and `$geoIntersects` (`$geometry`, `$box`, `$polygon`,
//! `$center`, `$centerSphere`), whether a stored value matches them, and the cell ranges an
//! index scan reads for them.
//!
//! Invariant: matching never fails: a stored value that is not a valid shape does not match
//! (as mongod's matcher). Regions are validated when parsed; the reasons are mongod's where
//! known and become BadValue errors in the query crate.

use bson::{RawBsonRef, RawDocument};
use geo::{Coord, CoordsIter, Geometry, Intersects, LineString, Polygon, Rect};

use crate::cell::{Cell, Frame, MAX_LEVEL, SPHERE};
use crate::cover::{QUERY_CELLS, cap_boxes, cover_rects, cover_shape, scan_ranges};
use crate::distance::{plane, sphere_radians};
use crate::near::Near;
use crate::shape::{Shape, covers, legacy_point, parse_geojson, shapes_of};

/// A `$geoWithin` region.
#[derive(Debug, Clone)]
pub enum Region {
    /// `$geometry`: a GeoJSON Polygon or MultiPolygon.
    Geometry(Geometry<f64>),
    /// `$box`, `$polygon`: flat shapes.
    Flat(Geometry<f64>),
    /// `$center`: a disc on the plane.
    Center(Coord<f64>, f64),
    /// `$centerSphere`: a spherical cap, radius in radians.
    CenterSphere(Coord<f64>, f64),
}

/// A parsed geospatial query operator.
#[derive(Debug, Clone)]
pub enum GeoOp {
    Within(Region),
    Intersects(Geometry<f64>),
    Near(Near),
}

fn num(v: RawBsonRef<'_>) -> Option<f64> {
    match v {
        RawBsonRef::Double(d) => Some(d),
        RawBsonRef::Int32(i) => Some(i as f64),
        RawBsonRef::Int64(i) => Some(i as f64),
        _ => None,
    }
}

fn geometry_of(v: RawBsonRef<'_>) -> Result<Geometry<f64>, String> {
    match v {
        RawBsonRef::Document(d) => {
            if d.get("crs").ok().flatten().is_some() {
                return Err("custom CRS (big polygons) are not supported by Mangrove".into());
            }
            parse_geojson(d)
        }
        _ => Err("$geometry must be an object".into()),
    }
}

fn points(v: RawBsonRef<'_>, what: &str) -> Result<Vec<Coord<f64>>, String> {
    let RawBsonRef::Array(a) = v else {
        return Err(format!("{what} must be an array"));
    };
    a.into_iter()
        .map_while(Result::ok)
        .map(|p| legacy_point(p).ok_or_else(|| format!("{what} needs points")))
        .collect()
}

/// `[[x, y], r]` of `$center` and `$centerSphere`.
fn circle(v: RawBsonRef<'_>, what: &str) -> Result<(Coord<f64>, f64), String> {
    let RawBsonRef::Array(a) = v else {
        return Err(format!("{what} must be an array"));
    };
    let parts: Vec<RawBsonRef<'_>> = a.into_iter().map_while(Result::ok).collect();
    let (Some(c), Some(r)) = (parts.first().and_then(|p| legacy_point(*p)), parts.get(1)) else {
        return Err(format!("{what} needs a center point and a radius"));
    };
    match num(*r) {
        Some(r) if r >= 0.0 => Ok((c, r)),
        _ => Err("radius must be a non-negative number".into()),
    }
}

impl Region {
    /// The operand of `$geoWithin`: `{$geometry | $box | $polygon | $center | $centerSphere}`.
    pub fn parse(d: &RawDocument) -> Result<Region, String> {
        let mut iter = d.iter().map_while(Result::ok);
        let Some((key, v)) = iter.next() else {
            return Err("$geoWithin needs a shape".into());
        };
        Ok(match key.as_str() {
            "$geometry" => match geometry_of(v)? {
                g @ (Geometry::Polygon(_) | Geometry::MultiPolygon(_)) => Region::Geometry(g),
                _ => {
                    return Err(format!(
                        "$geoWithin not supported with provided geometry: {d:?}"
                    ));
                }
            },
            "$box" => {
                let p = points(v, "$box")?;
                if p.len() != 2 {
                    return Err("Point must only contain numeric elements".into());
                }
                Region::Flat(Geometry::Rect(Rect::new(p[0], p[1])))
            }
            "$polygon" => {
                let mut p = points(v, "$polygon")?;
                if p.len() < 3 {
                    return Err("Polygon must have at least 3 points".into());
                }
                p.push(p[0]);
                Region::Flat(Geometry::Polygon(Polygon::new(LineString(p), vec![])))
            }
            "$center" => {
                let (c, r) = circle(v, "$center")?;
                Region::Center(c, r)
            }
            "$centerSphere" => {
                let (c, r) = circle(v, "$centerSphere")?;
                crate::shape::check_lng_lat(c)?;
                Region::CenterSphere(c, r)
            }
            other => return Err(format!("unknown geo specifier: {other}")),
        })
    }

    fn is_flat(&self) -> bool {
        matches!(self, Region::Flat(_) | Region::Center(..))
    }

    fn holds(&self, s: &Shape) -> bool {
        match self {
            Region::Geometry(g) | Region::Flat(g) => covers(g, &s.geom),
            Region::Center(c, r) => s.geom.coords_iter().all(|p| plane(*c, p) <= *r),
            Region::CenterSphere(c, r) => s.geom.coords_iter().all(|p| sphere_radians(*c, p) <= *r),
        }
    }

    /// The rectangles (or shape) a covering of this region must hold.
    fn cells(&self, frame: &Frame, max_level: u8) -> Vec<Cell> {
        match self {
            Region::Geometry(g) | Region::Flat(g) => cover_shape(frame, g, QUERY_CELLS, max_level),
            Region::Center(c, r) => {
                let b = Rect::new(
                    Coord {
                        x: c.x - r,
                        y: c.y - r,
                    },
                    Coord {
                        x: c.x + r,
                        y: c.y + r,
                    },
                );
                cover_rects(frame, &[b], QUERY_CELLS, max_level)
            }
            Region::CenterSphere(c, r) => {
                cover_rects(frame, &cap_boxes(*c, *r), QUERY_CELLS, max_level)
            }
        }
    }
}

impl GeoOp {
    /// `$geoWithin` or `$geoIntersects` with its operand.
    pub fn parse(name: &str, v: RawBsonRef<'_>) -> Result<GeoOp, String> {
        let RawBsonRef::Document(d) = v else {
            return Err(format!("{name} must be an object"));
        };
        match name {
            "$geoWithin" | "$within" => Ok(GeoOp::Within(Region::parse(d)?)),
            _ => match d.get("$geometry") {
                Ok(Some(g)) => Ok(GeoOp::Intersects(geometry_of(g)?)),
                _ => Err("$geoIntersects requires a $geometry".into()),
            },
        }
    }

    /// Whether a stored value (the whole value at the path) matches.
    pub fn matches(&self, v: RawBsonRef<'_>) -> bool {
        match self {
            GeoOp::Within(region) => shapes_of(v, region.is_flat())
                .iter()
                .any(|s| region.holds(s)),
            GeoOp::Intersects(g) => shapes_of(v, false).iter().any(|s| s.geom.intersects(g)),
            GeoOp::Near(n) => n.distance(v).is_some_and(|d| n.admits(d)),
        }
    }

    /// The cell ranges to scan in an index over `frame` (finest level `max_level`); `None`
    /// when such an index cannot answer (a flat `$near` on a `2dsphere` index).
    pub fn ranges(&self, frame: &Frame, max_level: u8) -> Option<Vec<(u64, u64)>> {
        let sphere = *frame == SPHERE;
        let cells = match self {
            GeoOp::Within(r) => r.cells(frame, max_level),
            GeoOp::Intersects(g) => cover_shape(frame, g, QUERY_CELLS, max_level),
            GeoOp::Near(n) => {
                let usable = if sphere { n.sphere } else { !n.meters };
                if !usable {
                    return None;
                }
                n.cells(frame, n.max_radius(), max_level)
            }
        };
        Some(scan_ranges(&cells))
    }
}

/// The finest level of a `2dsphere` index's cells.
pub const SPHERE_LEVEL: u8 = MAX_LEVEL;
