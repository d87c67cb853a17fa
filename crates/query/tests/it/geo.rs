//! Geospatial filters and their index bounds: what `$geoWithin`, `$geoIntersects`, `$near` and
//! `$nearSphere` match, the errors of malformed operands, `$geoNear` in a pipeline, and that the
//! cell ranges a geo index is scanned over always reach every matching document's keys.

use std::ops::Bound;

use bson::{Bson, Document, RawDocumentBuf, doc};
use mangrove_query::{Filter, Pipeline, compile_index, index_bounds};

fn raw(d: &Document) -> RawDocumentBuf {
    RawDocumentBuf::try_from(d).unwrap()
}

fn filter(d: Document) -> Filter {
    Filter::parse(&raw(&d)).unwrap()
}

fn point(x: f64, y: f64) -> Bson {
    Bson::Document(doc! { "type": "Point", "coordinates": [x, y] })
}

fn square(x0: f64, y0: f64, x1: f64, y1: f64) -> Bson {
    Bson::Document(
        doc! { "type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]] },
    )
}

#[test]
fn within_and_intersects_match_shapes() {
    let within =
        filter(doc! { "loc": { "$geoWithin": { "$geometry": square(0.0, 0.0, 10.0, 10.0) } } });
    assert!(within.matches(&raw(&doc! { "loc": point(5.0, 5.0) })));
    assert!(within.matches(&raw(&doc! { "loc": [5.0, 5.0] })));
    assert!(within.matches(&raw(&doc! { "loc": square(1.0, 1.0, 2.0, 2.0) })));
    assert!(!within.matches(&raw(&doc! { "loc": square(9.0, 9.0, 11.0, 11.0) })));
    assert!(!within.matches(&raw(&doc! { "loc": point(11.0, 5.0) })));
    assert!(!within.matches(&raw(&doc! { "other": 1 })));
    // A value that is no shape does not match (and is no error).
    assert!(!within.matches(&raw(&doc! { "loc": "x" })));
    let crosses =
        filter(doc! { "loc": { "$geoIntersects": { "$geometry": square(9.0, 9.0, 11.0, 11.0) } } });
    assert!(crosses.matches(&raw(&doc! { "loc": square(0.0, 0.0, 10.0, 10.0) })));
    let line =
        Bson::Document(doc! { "type": "LineString", "coordinates": [[0.0, 9.5], [20.0, 9.5]] });
    assert!(crosses.matches(&raw(&doc! { "loc": line })));
    // Nested paths through arrays of subdocuments, as any filter.
    let nested = filter(doc! { "a.loc": { "$geoWithin": { "$box": [[0, 0], [1, 1]] } } });
    assert!(nested.matches(&raw(
        &doc! { "a": [{ "loc": [5, 5] }, { "loc": [0.5, 0.5] }] }
    )));
}

#[test]
fn legacy_shapes_and_sphere_caps() {
    let center = filter(doc! { "p": { "$geoWithin": { "$center": [[0, 0], 5] } } });
    assert!(center.matches(&raw(&doc! { "p": [3, 4] })));
    assert!(!center.matches(&raw(&doc! { "p": [3, 4.1] })));
    let polygon = filter(doc! { "p": { "$geoWithin": { "$polygon": [[0, 0], [4, 0], [0, 4]] } } });
    assert!(polygon.matches(&raw(&doc! { "p": [1, 1] })));
    assert!(!polygon.matches(&raw(&doc! { "p": [3, 3] })));
    // 1 degree of the equator is about 111.3 km on mongod's 6378.1 km sphere.
    let cap = |km: f64| {
        filter(
            doc! { "p": { "$geoWithin": { "$centerSphere": [[0, 0], km * 1000.0 / 6_378_100.0] } } },
        )
    };
    assert!(cap(111.4).matches(&raw(&doc! { "p": point(1.0, 0.0) })));
    assert!(!cap(111.2).matches(&raw(&doc! { "p": point(1.0, 0.0) })));
}

#[test]
fn near_limits_filter_by_distance() {
    let near = filter(
        doc! { "p": { "$near": { "$geometry": point(0.0, 0.0), "$maxDistance": 200_000, "$minDistance": 100_000 } } },
    );
    assert!(near.matches(&raw(&doc! { "p": point(1.5, 0.0) })));
    assert!(!near.matches(&raw(&doc! { "p": point(0.5, 0.0) })));
    assert!(!near.matches(&raw(&doc! { "p": point(2.5, 0.0) })));
    let (path, n) = near.near().unwrap();
    assert_eq!(path, "p");
    assert!(n.meters && n.sphere);
    let legacy = filter(doc! { "p": { "$near": [0, 0], "$maxDistance": 2 } });
    assert!(legacy.matches(&raw(&doc! { "p": [1, 1] })));
    assert!(!legacy.matches(&raw(&doc! { "p": [2, 2] })));
    assert!(!legacy.near().unwrap().1.sphere);
}

#[test]
fn malformed_operands_are_bad_values() {
    for bad in [
        doc! { "p": { "$geoWithin": { "$geometry": point(0.0, 0.0) } } },
        doc! { "p": { "$geoWithin": { "$nope": 1 } } },
        doc! { "p": { "$geoWithin": { "$center": [[0, 0], -1] } } },
        doc! { "p": { "$geoWithin": { "$polygon": [[0, 0], [1, 1]] } } },
        doc! { "p": { "$geoIntersects": { "$geometry": { "type": "Point", "coordinates": [0, 100] } } } },
        doc! { "p": { "$near": { "$geometry": point(0.0, 0.0), "$maxDistance": -1 } } },
        doc! { "p": { "$near": "here" } },
        doc! { "$or": [{ "p": { "$near": [0, 0] } }, { "q": 1 }] },
        doc! { "p": { "$near": [0, 0] }, "q": { "$near": [0, 0] } },
        doc! { "a": { "$elemMatch": { "p": { "$near": [0, 0] } } } },
    ] {
        let err = Filter::parse(&raw(&bad)).unwrap_err();
        assert_eq!(err.code, 2, "{bad}");
    }
}

/// The cell ranges of a 2dsphere or 2d index for a geo filter reach a key of every document
/// the filter matches (the planner's superset rule), over many random shapes and regions.
#[test]
fn geo_bounds_reach_every_match() {
    let sphere =
        compile_index(&doc! { "v": 2, "key": { "loc": "2dsphere" }, "name": "s" }).unwrap();
    let mut seed = 12345u64;
    let mut rnd = move |lo: f64, hi: f64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        lo + (hi - lo) * ((seed >> 11) as f64 / (1u64 << 53) as f64)
    };
    let mut docs = Vec::new();
    for i in 0..400 {
        let (x, y) = (rnd(-30.0, 30.0), rnd(-30.0, 30.0));
        let loc = match i % 4 {
            0 | 1 => point(x, y),
            2 => square(x, y, x + rnd(0.01, 8.0), y + rnd(0.01, 8.0)),
            _ => Bson::Document(
                doc! { "type": "LineString", "coordinates": [[x, y], [x + rnd(-9.0, 9.0), y + rnd(-9.0, 9.0)]] },
            ),
        };
        docs.push(raw(&doc! { "_id": i, "loc": loc }));
    }
    let mut queries = Vec::new();
    for _ in 0..40 {
        let (x, y, w) = (rnd(-30.0, 30.0), rnd(-30.0, 30.0), rnd(0.05, 10.0));
        queries.push(doc! { "loc": { "$geoWithin": { "$geometry": square(x, y, x + w, y + w) } } });
        queries.push(
            doc! { "loc": { "$geoIntersects": { "$geometry": square(x, y, x + w, y + w) } } },
        );
        queries.push(doc! { "loc": { "$geoWithin": { "$centerSphere": [[x, y], w / 57.3] } } });
        queries.push(doc! { "loc": { "$near": { "$geometry": point(x, y), "$maxDistance": w * 111_000.0 } } });
    }
    let mut matched = 0;
    for q in &queries {
        let f = filter(q.clone());
        let bounds = index_bounds(&f, &raw(q), &sphere, false, true)
            .expect("a geo index bounds a geo filter");
        for d in &docs {
            if !f.matches(d) {
                continue;
            }
            matched += 1;
            let keys = sphere.keys(d).unwrap();
            let inside = keys
                .iter()
                .any(|k| bounds.intervals.iter().any(|iv| contains(iv, k)));
            assert!(
                inside,
                "{q} misses {:?}",
                Document::try_from(d.as_ref()).unwrap()
            );
        }
    }
    assert!(matched > 100, "{matched}");
}

fn contains(iv: &(Bound<Vec<u8>>, Bound<Vec<u8>>), k: &[u8]) -> bool {
    let lo = match &iv.0 {
        Bound::Included(l) => k >= l.as_slice(),
        Bound::Excluded(l) => k > l.as_slice(),
        Bound::Unbounded => true,
    };
    let hi = match &iv.1 {
        Bound::Included(h) => k <= h.as_slice(),
        Bound::Excluded(h) => k < h.as_slice(),
        Bound::Unbounded => true,
    };
    lo && hi
}

#[test]
fn geo_near_stage_annotates_and_must_come_first() {
    let stages = doc! { "p": [
        { "$geoNear": { "near": point(0.0, 0.0), "distanceField": "d", "key": "loc", "includeLocs": "at", "maxDistance": 150_000 } },
    ] };
    let p = Pipeline::parse(raw(&stages).get_array("p").unwrap()).unwrap();
    let out = p
        .run(vec![
            raw(&doc! { "_id": 1, "loc": point(1.0, 0.0) }),
            raw(&doc! { "_id": 2, "loc": point(2.0, 0.0) }),
        ])
        .unwrap();
    assert_eq!(out.len(), 1);
    let d = out[0].get_f64("d").unwrap();
    assert!((d - 111_319.0).abs() < 200.0, "{d}");
    assert!(out[0].get_document("at").is_ok());
    let late =
        doc! { "p": [{ "$match": {} }, { "$geoNear": { "near": [0, 0], "distanceField": "d" } }] };
    let err = Pipeline::parse(raw(&late).get_array("p").unwrap())
        .err()
        .unwrap();
    assert_eq!(err.code, 40602);
    let no_field = doc! { "p": [{ "$geoNear": { "near": [0, 0] } }] };
    assert!(Pipeline::parse(raw(&no_field).get_array("p").unwrap()).is_err());
}
