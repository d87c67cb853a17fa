//! The index keys of a stored value: the numbers of the cells covering its shapes, for a
//! `2dsphere` index (longitude/latitude, validated GeoJSON or legacy pairs) or a `2d` index
//! (legacy pairs on the plane of its `min`/`max` square, `bits` levels).
//!
//! Invariant: an error is a reason (and, for `2d`, mongod's code) for the caller to report as
//! the write's error; at most [`crate::cover::INDEX_CELLS`] cells per shape.

use bson::RawBsonRef;
use geo::Coord;

use crate::cell::{Frame, MAX_LEVEL, SPHERE};
use crate::cover::{INDEX_CELLS, cover_shape};
use crate::shape::{Form, legacy_point, parse_stored, shapes_of};

/// The cells of a value in a `2dsphere` index; empty for null. Errors with the reason mongod's
/// "Can't extract geo keys" gives.
pub fn sphere_keys(v: RawBsonRef<'_>) -> Result<Vec<u64>, String> {
    let mut out = Vec::new();
    for s in parse_stored(v)? {
        out.extend(
            cover_shape(&SPHERE, &s.geom, INDEX_CELLS, MAX_LEVEL)
                .into_iter()
                .map(|c| c.0),
        );
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The cells of a value in a `2d` index over `frame` with `bits` levels: legacy pairs only
/// (an array of them for several locations); empty for null. Errors with mongod's code.
pub fn flat_keys(v: RawBsonRef<'_>, frame: &Frame, bits: u8) -> Result<Vec<u64>, (i32, String)> {
    if matches!(v, RawBsonRef::Null | RawBsonRef::Undefined) {
        return Ok(Vec::new());
    }
    let points: Vec<Coord<f64>> = match legacy_point(v) {
        Some(c) => vec![c],
        None => {
            let shapes = shapes_of(v, true);
            if shapes.is_empty() || shapes.iter().any(|s| s.form != Form::Legacy) {
                return Err((
                    16804,
                    "geo values must be 'legacy coordinate pairs' for 2d indexes".into(),
                ));
            }
            shapes.iter().filter_map(|s| s.point()).collect()
        }
    };
    let mut out = Vec::new();
    for p in points {
        let inside = |x: f64, lo: f64, hi: f64| x >= lo && x < hi;
        if !inside(p.x, frame.min.x, frame.max.x) || !inside(p.y, frame.min.y, frame.max.y) {
            return Err((
                13027,
                format!(
                    "point not in interval of [ {}, {} )",
                    frame.min.x, frame.max.x
                ),
            ));
        }
        out.push(frame.cell_at(p, bits).0);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use bson::rawdoc;

    use super::*;

    fn keys_of(doc: bson::RawDocumentBuf) -> Result<Vec<u64>, String> {
        sphere_keys(doc.get("loc").unwrap().unwrap())
    }

    #[test]
    fn valid_shapes_have_keys() {
        let ok = [
            rawdoc! { "loc": { "type": "Point", "coordinates": [2.35, 48.85] } },
            rawdoc! { "loc": [2.35, 48.85] },
            rawdoc! { "loc": { "lng": 2.35, "lat": 48.85 } },
            rawdoc! { "loc": { "type": "LineString", "coordinates": [[0, 0], [1, 1]] } },
            rawdoc! { "loc": { "type": "Polygon", "coordinates": [
                [[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]],
                [[1, 1], [2, 1], [2, 2], [1, 1]],
            ] } },
            rawdoc! { "loc": { "type": "MultiPoint", "coordinates": [[0, 0], [10, 10]] } },
            rawdoc! { "loc": { "type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]]] } },
            rawdoc! { "loc": { "type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 0]]]] } },
            rawdoc! { "loc": { "type": "GeometryCollection", "geometries": [
                { "type": "Point", "coordinates": [1, 2] },
                { "type": "LineString", "coordinates": [[0, 0], [1, 1]] },
            ] } },
        ];
        for d in ok {
            let keys = keys_of(d.clone()).unwrap_or_else(|e| panic!("{d:?}: {e}"));
            assert!(!keys.is_empty() && keys.len() <= 2 * INDEX_CELLS, "{d:?}");
        }
        assert!(keys_of(rawdoc! { "loc": null }).unwrap().is_empty());
    }

    #[test]
    fn malformed_shapes_are_refused_with_mongods_reasons() {
        let bad = [
            (
                rawdoc! { "loc": { "type": "Point", "coordinates": [200, 0] } },
                "longitude/latitude is out of bounds",
            ),
            (
                rawdoc! { "loc": { "type": "Point", "coordinates": ["a", 0] } },
                "Point must only contain numeric elements",
            ),
            (
                rawdoc! { "loc": { "type": "Point" } },
                "coordinates must be an array",
            ),
            (
                rawdoc! { "loc": { "type": "Blob", "coordinates": [] } },
                "unknown GeoJSON type",
            ),
            (
                rawdoc! { "loc": { "type": "LineString", "coordinates": [[0, 0]] } },
                "at least 2 vertices",
            ),
            (
                rawdoc! { "loc": { "type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]] } },
                "Loop is not closed",
            ),
            (
                rawdoc! { "loc": { "type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]] } },
                "at least 3 different vertices",
            ),
            (
                rawdoc! { "loc": { "type": "Polygon", "coordinates": [[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]] } },
                "Edges",
            ),
            (
                rawdoc! { "loc": { "type": "Polygon", "coordinates": [
                    [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]],
                    [[5, 5], [6, 5], [6, 6], [5, 5]],
                ] } },
                "Secondary loops not contained",
            ),
            (
                rawdoc! { "loc": "here" },
                "geo element must be an array or object",
            ),
            (
                rawdoc! { "loc": [1, "a"] },
                "Point must only contain numeric elements",
            ),
        ];
        for (d, why) in bad {
            let err = keys_of(d.clone()).unwrap_err();
            assert!(err.contains(why), "{d:?}: {err}");
        }
    }

    #[test]
    fn hostile_values_are_refused_not_panicked_on() {
        let mut deep = bson::Bson::Array(vec![1.into(), 2.into()]);
        for _ in 0..2_000 {
            deep = bson::Bson::Array(vec![deep]);
        }
        let d = bson::RawDocumentBuf::try_from(&bson::doc! { "loc": deep }).unwrap();
        assert!(keys_of(d).is_err());
        assert!(keys_of(rawdoc! { "loc": [f64::NAN, 0.0] }).is_err());
        assert!(keys_of(rawdoc! { "loc": [f64::INFINITY, 0.0] }).is_err());
        let ring: Vec<bson::Bson> = (0..=crate::shape::MAX_VERTICES)
            .map(|i| {
                let a = i as f64 / crate::shape::MAX_VERTICES as f64 * std::f64::consts::TAU;
                bson::Bson::Array(vec![a.cos().into(), a.sin().into()])
            })
            .collect();
        let big = bson::doc! { "loc": { "type": "Polygon", "coordinates": [ring] } };
        let err = keys_of(bson::RawDocumentBuf::try_from(&big).unwrap()).unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }

    #[test]
    fn flat_keys_check_the_frame() {
        let frame = Frame::square(-180.0, 180.0);
        assert_eq!(flat_keys(RawBsonRef::Null, &frame, 26).unwrap().len(), 0);
        let doc =
            rawdoc! { "a": [1, 2], "b": [200, 0], "c": { "type": "Point", "coordinates": [1, 2] } };
        assert_eq!(
            flat_keys(doc.get("a").unwrap().unwrap(), &frame, 26)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            flat_keys(doc.get("b").unwrap().unwrap(), &frame, 26)
                .unwrap_err()
                .0,
            13027
        );
        assert_eq!(
            flat_keys(doc.get("c").unwrap().unwrap(), &frame, 26)
                .unwrap_err()
                .0,
            16804
        );
    }
}
