//! `$near`, `$nearSphere` and `$geoNear`'s `near`: the center, the geometry distances are
//! measured in, the distance limits, and the widening rings of cells a search reads.
//!
//! Units, as mongod: a GeoJSON point measures in meters on the sphere; a legacy pair with
//! `$nearSphere` (or `spherical: true`) in radians; a legacy pair with `$near` on the plane of a
//! `2d` index, in its units.
//!
//! Invariant: pure; knows nothing of indexes beyond the frame of cells it is asked to cover.

use bson::{RawBsonRef, RawDocument};
use geo::{Coord, Rect};

use crate::cell::{Cell, Frame};
use crate::cover::{QUERY_CELLS, cap_boxes, cover_rects};
use crate::distance::{EARTH_RADIUS_M, to_shape};
use crate::shape::{check_lng_lat, legacy_point, parse_geojson, shapes_of};

/// A nearness query.
#[derive(Debug, Clone, PartialEq)]
pub struct Near {
    pub center: Coord<f64>,
    /// Distances on the sphere (else on the plane).
    pub sphere: bool,
    /// The center was GeoJSON: distances in meters.
    pub meters: bool,
    pub min: f64,
    pub max: f64,
}

fn limit(v: Option<RawBsonRef<'_>>, name: &str) -> Result<Option<f64>, String> {
    let Some(v) = v else { return Ok(None) };
    let n = match v {
        RawBsonRef::Double(d) => d,
        RawBsonRef::Int32(i) => i as f64,
        RawBsonRef::Int64(i) => i as f64,
        _ => return Err(format!("{name} must be a number")),
    };
    if n.is_nan() || n < 0.0 {
        return Err(format!("{name} must be non-negative"));
    }
    Ok(Some(n))
}

impl Near {
    /// `$near`/`$nearSphere` (`spherical` for the latter) with its operand and the sibling
    /// `$maxDistance`/`$minDistance` of the legacy form.
    pub fn parse(
        spherical: bool,
        v: RawBsonRef<'_>,
        max: Option<RawBsonRef<'_>>,
        min: Option<RawBsonRef<'_>>,
    ) -> Result<Near, String> {
        if let RawBsonRef::Document(d) = v
            && let Ok(Some(g)) = d.get("$geometry")
        {
            return Near::geojson(g, d);
        }
        let center = legacy_point(v).ok_or("near must be a point: [x, y] or {$geometry: ...}")?;
        if spherical {
            check_lng_lat(center)?;
        }
        Ok(Near {
            center,
            sphere: spherical,
            meters: false,
            min: limit(min, "$minDistance")?.unwrap_or(0.0),
            max: limit(max, "$maxDistance")?.unwrap_or(f64::INFINITY),
        })
    }

    fn geojson(g: RawBsonRef<'_>, d: &RawDocument) -> Result<Near, String> {
        let center = match g {
            RawBsonRef::Document(gd) => match parse_geojson(gd)? {
                geo::Geometry::Point(p) => p.0,
                _ => return Err("$near requires a point, given a different GeoJSON type".into()),
            },
            _ => legacy_point(g).ok_or("$geometry must be a GeoJSON point")?,
        };
        check_lng_lat(center)?;
        let get = |k: &str| d.get(k).ok().flatten();
        Ok(Near {
            center,
            sphere: true,
            meters: true,
            min: limit(get("$minDistance"), "$minDistance")?.unwrap_or(0.0),
            max: limit(get("$maxDistance"), "$maxDistance")?.unwrap_or(f64::INFINITY),
        })
    }

    /// `$geoNear`'s `near` (a GeoJSON point or a legacy pair) with `spherical`.
    pub fn for_stage(
        v: RawBsonRef<'_>,
        spherical: bool,
        min: Option<f64>,
        max: Option<f64>,
    ) -> Result<Near, String> {
        let (center, meters) = match v {
            RawBsonRef::Document(d) if d.get("type").ok().flatten().is_some() => match parse_geojson(d)? {
                geo::Geometry::Point(p) => (p.0, true),
                _ => return Err("$geoNear 'near' must be a point".into()),
            },
            _ => (legacy_point(v).ok_or("$geoNear requires near argument to be a GeoJSON object or a legacy coordinate pair")?, false),
        };
        if meters || spherical {
            check_lng_lat(center)?;
        }
        Ok(Near {
            center,
            sphere: meters || spherical,
            meters,
            min: min.unwrap_or(0.0),
            max: max.unwrap_or(f64::INFINITY),
        })
    }

    /// The distance in this query's units from the center to a stored value (its nearest
    /// shape), or `None` when the value holds no shape.
    pub fn distance(&self, v: RawBsonRef<'_>) -> Option<f64> {
        shapes_of(v, !self.sphere)
            .iter()
            .map(|s| self.units(to_shape(self.center, &s.geom, self.sphere)))
            .min_by(f64::total_cmp)
    }

    /// A raw distance (radians or plane units) in this query's units.
    pub fn units(&self, raw: f64) -> f64 {
        if self.meters {
            raw * EARTH_RADIUS_M
        } else {
            raw
        }
    }

    /// Whether a distance is within `$minDistance`..=`$maxDistance`.
    pub fn admits(&self, d: f64) -> bool {
        d >= self.min && d <= self.max
    }

    /// `max` as a raw radius (radians on the sphere, plane units otherwise).
    pub fn max_radius(&self) -> f64 {
        self.raw(self.max)
    }

    /// A distance in this query's units as a raw radius.
    pub fn raw(&self, d: f64) -> f64 {
        if self.meters { d / EARTH_RADIUS_M } else { d }
    }

    /// The cells covering everything within `radius` (raw) of the center.
    pub fn cells(&self, frame: &Frame, radius: f64, max_level: u8) -> Vec<Cell> {
        let boxes = if !radius.is_finite() {
            vec![Rect::new(frame.min, frame.max)]
        } else if self.sphere {
            cap_boxes(self.center, radius)
        } else {
            let c = self.center;
            vec![Rect::new(
                Coord {
                    x: c.x - radius,
                    y: c.y - radius,
                },
                Coord {
                    x: c.x + radius,
                    y: c.y + radius,
                },
            )]
        };
        cover_rects(frame, &boxes, QUERY_CELLS, max_level)
    }
}
