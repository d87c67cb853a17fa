use std::cmp::Ordering;

use crate::common::raw;
use bson::{Bson, Document, doc};
use mangrove_query::{Projection, QueryError, SortSpec};

fn project(spec: Document, d: Document) -> Document {
    let p = Projection::parse(&raw(&spec)).unwrap_or_else(|e| panic!("projection {spec}: {e}"));
    let out = p.apply(&raw(&d)).unwrap();
    Document::try_from(out).unwrap()
}

fn proj_err(spec: Document) -> QueryError {
    Projection::parse(&raw(&spec)).unwrap_err()
}

#[test]
fn inclusion() {
    let d = doc! {"_id": 1, "a": 1, "b": 2, "c": 3};
    assert_eq!(project(doc! {"a": 1}, d.clone()), doc! {"_id": 1, "a": 1});
    assert_eq!(
        project(doc! {"c": true, "a": 1}, d.clone()),
        doc! {"_id": 1, "a": 1, "c": 3}
    );
    assert_eq!(project(doc! {"a": 1, "_id": 0}, d.clone()), doc! {"a": 1});
    assert_eq!(project(doc! {"_id": 1}, d.clone()), doc! {"_id": 1});
    assert_eq!(project(doc! {}, d.clone()), d);
    assert_eq!(project(doc! {"zz": 1}, doc! {"_id": 1}), doc! {"_id": 1});
}

#[test]
fn exclusion() {
    let d = doc! {"_id": 1, "a": 1, "b": 2};
    assert_eq!(project(doc! {"a": 0}, d.clone()), doc! {"_id": 1, "b": 2});
    assert_eq!(project(doc! {"_id": 0}, d.clone()), doc! {"a": 1, "b": 2});
    assert_eq!(project(doc! {"_id": 0, "a": false}, d), doc! {"b": 2});
}

#[test]
fn dotted_paths() {
    let d = doc! {"_id": 1, "a": {"b": 1, "c": 2}, "x": [{"b": 1, "c": 2}, 5, {"c": 3}]};
    assert_eq!(
        project(doc! {"a.b": 1, "_id": 0}, d.clone()),
        doc! {"a": {"b": 1}}
    );
    assert_eq!(
        project(doc! {"a": {"b": 1}, "_id": 0}, d.clone()),
        doc! {"a": {"b": 1}}
    );
    assert_eq!(
        project(doc! {"x.b": 1, "_id": 0}, d.clone()),
        doc! {"x": [{"b": 1}, {}]}
    );
    assert_eq!(
        project(doc! {"a.b": 0, "x.c": 0}, d),
        doc! {"_id": 1, "a": {"c": 2}, "x": [{"b": 1}, 5, {}]}
    );
}

#[test]
fn mixing_errors() {
    let e = proj_err(doc! {"a": 1, "b": 0});
    assert_eq!(e.code, 31254);
    assert_eq!(
        e.message,
        "Cannot do exclusion on field b in inclusion projection"
    );
    let e = proj_err(doc! {"a": 0, "b": 1});
    assert_eq!(e.code, 31253);
    assert_eq!(
        e.message,
        "Cannot do inclusion on field b in exclusion projection"
    );
    assert_eq!(proj_err(doc! {"a": 1, "a.b": 1}).code, 31250);
    assert_eq!(proj_err(doc! {"a.b": 1, "a": 1}).code, 31250);
    // _id may be excluded from an inclusion and included in an exclusion.
    Projection::parse(&raw(&doc! {"a": 1, "_id": 0})).unwrap();
    Projection::parse(&raw(&doc! {"a": 0, "_id": 1})).unwrap();
    assert_eq!(proj_err(doc! {"a.$": 0}).code, 2);
}

#[test]
fn slice_and_elem_match() {
    let d = doc! {"_id": 1, "a": [1, 2, 3, 4], "b": 1};
    assert_eq!(
        project(doc! {"a": {"$slice": 2}}, d.clone()),
        doc! {"_id": 1, "a": [1, 2], "b": 1}
    );
    assert_eq!(
        project(doc! {"a": {"$slice": -1}}, d.clone()),
        doc! {"_id": 1, "a": [4], "b": 1}
    );
    assert_eq!(
        project(doc! {"a": {"$slice": [1, 2]}}, d.clone()),
        doc! {"_id": 1, "a": [2, 3], "b": 1}
    );
    assert_eq!(
        project(doc! {"a": {"$slice": [-3, 1]}}, d.clone()),
        doc! {"_id": 1, "a": [2], "b": 1}
    );
    assert_eq!(
        project(doc! {"a": {"$slice": 1}, "b": 1}, d.clone()),
        doc! {"_id": 1, "a": [1], "b": 1}
    );
    assert_eq!(proj_err(doc! {"a": {"$slice": [1, 0]}}).code, 2);
    let d = doc! {"_id": 1, "s": [{"x": 1}, {"x": 2}, {"x": 2, "y": 1}]};
    assert_eq!(
        project(doc! {"s": {"$elemMatch": {"x": 2}}}, d.clone()),
        doc! {"_id": 1, "s": [{"x": 2}]}
    );
    assert_eq!(
        project(doc! {"s": {"$elemMatch": {"x": 9}}}, d),
        doc! {"_id": 1}
    );
    // Alone, $elemMatch is an inclusion (other fields go) and $slice an exclusion (they stay).
    let wide = doc! {"_id": 1, "other": 5, "s": [{"x": 1}, {"x": 2}]};
    assert_eq!(
        project(doc! {"s": {"$elemMatch": {"x": 2}}}, wide.clone()),
        doc! {"_id": 1, "s": [{"x": 2}]}
    );
    assert_eq!(
        project(doc! {"s": {"$slice": 1}}, wide),
        doc! {"_id": 1, "other": 5, "s": [{"x": 1}]}
    );
}

#[test]
fn literal_fields() {
    assert_eq!(
        project(doc! {"a": 1, "n": "lit"}, doc! {"_id": 1, "a": 2, "n": 5}),
        doc! {"_id": 1, "a": 2, "n": "lit"}
    );
}

fn sort(spec: Document) -> SortSpec {
    SortSpec::parse(&raw(&spec)).unwrap()
}

fn cmp(spec: Document, a: Document, b: Document) -> Ordering {
    sort(spec).compare(&raw(&a), &raw(&b))
}

#[test]
fn sort_basic() {
    assert_eq!(
        cmp(doc! {"a": 1}, doc! {"a": 1}, doc! {"a": 2}),
        Ordering::Less
    );
    assert_eq!(
        cmp(doc! {"a": -1}, doc! {"a": 1}, doc! {"a": 2}),
        Ordering::Greater
    );
    assert_eq!(
        cmp(doc! {"a": 1.0}, doc! {"a": 1}, doc! {"a": 1.0}),
        Ordering::Equal
    );
    assert_eq!(
        cmp(doc! {"a": -1_i64}, doc! {"a": "x"}, doc! {"a": 1}),
        Ordering::Less
    );
    assert_eq!(
        cmp(
            doc! {"a": 1, "b": -1},
            doc! {"a": 1, "b": 1},
            doc! {"a": 1, "b": 2}
        ),
        Ordering::Greater
    );
    // Missing sorts as null, before numbers.
    assert_eq!(cmp(doc! {"a": 1}, doc! {}, doc! {"a": 0}), Ordering::Less);
    assert_eq!(
        cmp(doc! {"a": 1}, doc! {}, doc! {"a": Bson::Null}),
        Ordering::Equal
    );
    assert_eq!(
        cmp(doc! {"a.b": 1}, doc! {"a": {"b": 2}}, doc! {"a": {"b": 1}}),
        Ordering::Greater
    );
}

#[test]
fn sort_arrays() {
    // Ascending uses the smallest element, descending the largest.
    assert_eq!(
        cmp(doc! {"a": 1}, doc! {"a": [5, 1]}, doc! {"a": 2}),
        Ordering::Less
    );
    assert_eq!(
        cmp(doc! {"a": -1}, doc! {"a": [5, 1]}, doc! {"a": 2}),
        Ordering::Less
    );
    assert_eq!(
        cmp(
            doc! {"a.b": 1},
            doc! {"a": [{"b": 3}, {"b": 0}]},
            doc! {"a": {"b": 1}}
        ),
        Ordering::Less
    );
    // An empty array sorts before null.
    assert_eq!(cmp(doc! {"a": 1}, doc! {"a": []}, doc! {}), Ordering::Less);
}

#[test]
fn sort_errors() {
    assert_eq!(
        SortSpec::parse(&raw(&doc! {"a": 2})).unwrap_err().code,
        15975
    );
    assert_eq!(
        SortSpec::parse(&raw(&doc! {"a": "x"})).unwrap_err().code,
        15974
    );
    // `$meta: "textScore"` sorts (by the score of a bound `$text`); other `$meta` are refused.
    assert!(SortSpec::parse(&raw(&doc! {"a": {"$meta": "textScore"}})).is_ok());
    assert_eq!(
        SortSpec::parse(&raw(&doc! {"a": {"$meta": "indexKey"}}))
            .unwrap_err()
            .code,
        2
    );
    assert!(sort(doc! {}).is_empty());
}

#[test]
fn find_projection_expressions() {
    let d = doc! { "_id": 1, "a": { "b": 5 }, "n": 2, "arr": [1, 2, 3, 4], "items": [ { "k": 1 }, { "k": 2 } ] };
    assert_eq!(
        project(
            doc! { "x": "$a.b", "y": { "$literal": 1 }, "s": { "$add": ["$n", 10] } },
            d.clone()
        ),
        doc! { "_id": 1, "x": 5, "y": 1, "s": 12 }
    );
    // A missing path adds nothing; plain strings stay literals.
    assert_eq!(
        project(doc! { "_id": 0, "m": "$nope", "lit": "plain" }, d.clone()),
        doc! { "lit": "plain" }
    );
    // Nested computed fields see the whole document.
    assert_eq!(
        project(doc! { "_id": 0, "o": { "copy": "$n" } }, d.clone()),
        doc! { "o": { "copy": 2 } }
    );
    // $slice and $elemMatch keep their projection meaning next to expressions.
    assert_eq!(
        project(
            doc! { "arr": { "$slice": 2 }, "items": { "$elemMatch": { "k": 2 } }, "t": { "$size": "$arr" } },
            d.clone()
        ),
        doc! { "_id": 1, "arr": [1, 2], "items": [ { "k": 2 } ], "t": 4 }
    );
    assert_eq!(proj_err(doc! { "x": { "$bogus": 1 } }).code, 168);
    assert_eq!(proj_err(doc! { "a": 0, "x": "$n" }).code, 31253);
    let p = Projection::parse(&raw(&doc! { "x": { "$divide": [1, 0] } })).unwrap();
    assert_eq!(p.apply(&raw(&d)).unwrap_err().code, 2);
}

#[test]
fn positional_projection_returns_the_matched_element() {
    use mangrove_query::Filter;
    let d = doc! {"_id": 1, "grades": [70, 85, 92], "name": "x", "items": [{"k": "a"}, {"k": "b"}]};
    let run = |filter: Document, spec: Document| -> Result<Document, QueryError> {
        let f = Filter::parse(&raw(&filter)).unwrap();
        let p = Projection::parse(&raw(&spec))?.with_filter(&f);
        p.apply(&raw(&d))
            .map(|out| Document::try_from(out).unwrap())
    };
    assert_eq!(
        run(doc! {"grades": {"$gte": 80}}, doc! {"grades.$": 1}).unwrap(),
        doc! {"_id": 1, "grades": [85]}
    );
    assert_eq!(
        run(doc! {"items.k": "b"}, doc! {"items.$": 1, "name": 1}).unwrap(),
        doc! {"_id": 1, "name": "x", "items": [{"k": "b"}]}
    );
    // No condition on the array: MongoDB's error, not a silent whole array.
    assert_eq!(
        run(doc! {"name": "x"}, doc! {"grades.$": 1})
            .unwrap_err()
            .code,
        51246
    );
    assert_eq!(proj_err(doc! {"grades.$": 1, "items.$": 1}).code, 31276);
    assert_eq!(proj_err(doc! {"$": 1}).code, 2);
}
