//! Distances: great-circle on the sphere (radians; meters through mongod's earth radius) and
//! Euclidean on the plane, from a point to a shape.
//!
//! Invariant: pure arithmetic; a point inside a shape is at distance 0.

use geo::{Closest, ClosestPoint, Coord, Euclidean, Geometry, Intersects, Point};

/// The earth radius mongod converts radians to meters with (`kRadiusOfEarthInMeters`).
pub const EARTH_RADIUS_M: f64 = 6_378_100.0;

/// The great-circle angle between two longitude/latitude points, in radians (haversine).
pub fn sphere_radians(a: Coord<f64>, b: Coord<f64>) -> f64 {
    let (la1, la2) = (a.y.to_radians(), b.y.to_radians());
    let dlat = la2 - la1;
    let dlon = (b.x - a.x).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * h.sqrt().min(1.0).asin()
}

/// The straight-line distance on the plane.
pub fn plane(a: Coord<f64>, b: Coord<f64>) -> f64 {
    (a.x - b.x).hypot(a.y - b.y)
}

/// From `from` to the nearest point of `geom`: radians on the sphere, or plane units. For a
/// shape that is not a point the nearest point is found on the longitude/latitude plane (as
/// the shapes' edges are), then measured on the sphere.
pub fn to_shape(from: Coord<f64>, geom: &Geometry<f64>, sphere: bool) -> f64 {
    let measure = |c: Coord<f64>| {
        if sphere {
            sphere_radians(from, c)
        } else {
            plane(from, c)
        }
    };
    if let Geometry::Point(p) = geom {
        return measure(p.0);
    }
    let p = Point(from);
    if geom.intersects(&p) {
        return 0.0;
    }
    let _ = Euclidean;
    match geom.closest_point(&p) {
        Closest::Intersection(_) => 0.0,
        Closest::SinglePoint(c) => measure(c.0),
        Closest::Indeterminate => f64::INFINITY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_city_distances() {
        // Paris to London, about 343.5 km by great circle (6371 km mean radius); mongod's
        // 6378.1 km radius makes it about 0.11 % longer.
        let paris = Coord {
            x: 2.3522,
            y: 48.8566,
        };
        let london = Coord {
            x: -0.1276,
            y: 51.5072,
        };
        let m = sphere_radians(paris, london) * EARTH_RADIUS_M;
        assert!((m - 344_000.0).abs() < 1_500.0, "{m}");
        // New York to Los Angeles, about 3,936 km (mean radius).
        let ny = Coord {
            x: -74.006,
            y: 40.7128,
        };
        let la = Coord {
            x: -118.2437,
            y: 34.0522,
        };
        let km = sphere_radians(ny, la) * 6_371.0;
        assert!((km - 3_936.0).abs() < 5.0, "{km}");
        // A quarter of the equator.
        let q = sphere_radians(Coord { x: 0.0, y: 0.0 }, Coord { x: 90.0, y: 0.0 });
        assert!((q - std::f64::consts::FRAC_PI_2).abs() < 1e-12);
        assert_eq!(
            plane(Coord { x: 0.0, y: 0.0 }, Coord { x: 3.0, y: 4.0 }),
            5.0
        );
    }

    #[test]
    fn distance_to_a_polygon_is_zero_inside() {
        let poly: Geometry<f64> = geo::Polygon::new(
            geo::LineString::from(vec![
                (0.0, 0.0),
                (1.0, 0.0),
                (1.0, 1.0),
                (0.0, 1.0),
                (0.0, 0.0),
            ]),
            vec![],
        )
        .into();
        assert_eq!(to_shape(Coord { x: 0.5, y: 0.5 }, &poly, true), 0.0);
        let d = to_shape(Coord { x: 3.0, y: 0.5 }, &poly, false);
        assert!((d - 2.0).abs() < 1e-12);
    }
}
