//! `$text` in the query language: parsing and placement, binding to a text index, matching,
//! `$meta: "textScore"` in projections, sorts and pipelines, and the index bounds.

use bson::{Bson, Document, RawDocumentBuf, doc, rawdoc};
use mangrove_query::{
    Filter, Pipeline, Projection, SortSpec, TextIndex, compile_index, normalize_index, text_bounds,
};

fn raw(d: Document) -> RawDocumentBuf {
    RawDocumentBuf::try_from(&d).unwrap()
}

fn raw_ok(d: Document) -> RawDocumentBuf {
    raw(d)
}

fn index(key: Document, options: Document) -> (mangrove_query::IndexSpec, TextIndex) {
    let mut spec = doc! { "key": key, "name": "t" };
    spec.extend(options);
    let normalized = normalize_index(&raw(spec)).unwrap();
    let compiled = compile_index(&normalized).unwrap();
    let text = (*compiled.text.clone().unwrap()).clone();
    (compiled, text)
}

fn bound(filter: Document, text: &TextIndex) -> Filter {
    let f = Filter::parse(&raw(filter)).unwrap();
    f.bind_text(text).unwrap();
    f
}

fn docs() -> Vec<RawDocumentBuf> {
    vec![
        raw(doc! { "_id": 1, "title": "Coffee", "body": "coffee shop coffee" }),
        raw(doc! { "_id": 2, "title": "Tea", "body": "green tea and coffee" }),
        raw(doc! { "_id": 3, "body": "nothing to see" }),
    ]
}

#[test]
fn unbound_text_matches_nothing_and_binding_makes_it_match() {
    let (_, text) = index(doc! { "title": "text", "body": "text" }, doc! {});
    let f = Filter::parse(&raw(doc! { "$text": { "$search": "coffee" } })).unwrap();
    assert!(f.text_search().is_some());
    assert!(f.text_match().is_none());
    assert!(!f.matches(&docs()[0]));
    let f = bound(doc! { "$text": { "$search": "coffee" } }, &text);
    let hits: Vec<bool> = docs().iter().map(|d| f.matches(d)).collect();
    assert_eq!(hits, [true, true, false]);
    let f = bound(
        doc! { "$text": { "$search": "coffee -green" }, "_id": { "$gt": 0 } },
        &text,
    );
    let hits: Vec<bool> = docs().iter().map(|d| f.matches(d)).collect();
    assert_eq!(hits, [true, false, false]);
}

#[test]
fn placement_rules_and_argument_errors() {
    let err = |d: Document| Filter::parse(&raw(d)).unwrap_err();
    assert_eq!(
        err(doc! { "$nor": [{ "$text": { "$search": "a" } }] }).code,
        2
    );
    let twice = doc! { "$and": [{ "$text": { "$search": "a" } }, { "$text": { "$search": "b" } }] };
    assert_eq!(err(twice).code, 2);
    let elem = doc! { "a": { "$elemMatch": { "$text": { "$search": "a" } } } };
    assert_eq!(err(elem).code, 2);
    assert_eq!(err(doc! { "$text": { "$search": 1 } }).code, 2);
    assert_eq!(
        err(doc! { "$text": { "$search": "a", "$caseSensitive": "yes" } }).code,
        14
    );
    assert_eq!(
        err(doc! { "$text": { "$search": "a", "$language": "xx" } }).code,
        2
    );
    assert!(Filter::parse(&raw(doc! { "$or": [{ "$text": { "$search": "a" } }] })).is_ok());
    let pipeline = raw_ok(doc! { "p": [
        { "$match": {} }, { "$match": { "$text": { "$search": "a" } } },
    ] });
    let stages = pipeline.get_array("p").unwrap();
    assert_eq!(Pipeline::parse(stages).err().unwrap().code, 17313);
}

#[test]
fn text_or_with_other_clauses_is_refused_when_bound() {
    let (_, text) = index(doc! { "body": "text" }, doc! {});
    let f = Filter::parse(&raw(doc! {
        "$or": [{ "$text": { "$search": "a" } }, { "x": 1 }],
    }))
    .unwrap();
    assert_eq!(f.bind_text(&text).unwrap_err().code, 291);
}

/// Scores by mongod's formula (see mangrove-text's score.rs): title weight 10.
#[test]
fn projection_and_sort_score_the_document() {
    let (_, text) = index(
        doc! { "title": "text", "body": "text" },
        doc! { "weights": { "title": 10 } },
    );
    let f = bound(doc! { "$text": { "$search": "coffee" } }, &text);
    let m = f.text_match().unwrap();
    let mut p = Projection::parse(&raw(doc! { "_id": 1, "s": { "$meta": "textScore" } })).unwrap();
    assert!(p.needs_text_score());
    p.bind_text(m.clone());
    let out = bson::Document::try_from(p.apply(&docs()[0]).unwrap()).unwrap();
    assert_eq!(out, doc! { "_id": 1, "s": 11.25 });
    let mut s = SortSpec::parse(&raw(doc! { "s": { "$meta": "textScore" } })).unwrap();
    assert!(s.needs_text_score());
    s.bind_text(m);
    let mut all = docs();
    all.reverse();
    s.sort_items(&mut all, |d| d);
    let ids: Vec<Bson> = all
        .iter()
        .map(|d| d.get("_id").unwrap().unwrap().try_into().unwrap())
        .collect();
    assert_eq!(ids, [Bson::Int32(1), Bson::Int32(2), Bson::Int32(3)]);
    // Without a bound matcher a projection cannot score: mongod's 40218.
    let unbound = Projection::parse(&raw(doc! { "s": { "$meta": "textScore" } })).unwrap();
    assert_eq!(unbound.apply(&docs()[0]).unwrap_err().code, 40218);
    assert!(Projection::parse(&raw(doc! { "s": { "$meta": "indexKey" } })).is_err());
}

#[test]
fn a_pipeline_scores_with_its_leading_match() {
    let (_, text) = index(
        doc! { "title": "text", "body": "text" },
        doc! { "weights": { "title": 10 } },
    );
    let spec = raw_ok(doc! { "p": [
        { "$match": { "$text": { "$search": "coffee" } } },
        { "$sort": { "s": { "$meta": "textScore" } } },
        { "$project": { "_id": 1, "s": { "$meta": "textScore" } } },
    ] });
    let mut pipeline = Pipeline::parse(spec.get_array("p").unwrap()).unwrap();
    assert!(pipeline.text_search().is_some());
    pipeline.bind_text(&text).unwrap();
    let mut input = docs();
    input.reverse();
    let out = pipeline.run_from_start(input).unwrap();
    let out: Vec<Document> = out
        .iter()
        .map(|d| Document::try_from(d.as_ref()).unwrap())
        .collect();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0], doc! { "_id": 1, "s": 11.25 });
    assert_eq!(out[1].get_i32("_id").unwrap(), 2);
    assert!((out[1].get_f64("s").unwrap() - (0.5 / 3.0 + 0.5)).abs() < 1e-9);
}

#[test]
fn bounds_are_one_interval_per_term_after_the_prefix() {
    let (spec, text) = index(doc! { "cat": 1, "body": "text" }, doc! {});
    let f = bound(
        doc! { "cat": "x", "$text": { "$search": "coffee shops \"tea\"" } },
        &text,
    );
    let b = text_bounds(&spec, &f).unwrap();
    assert_eq!(b.intervals.len(), 3); // coffe, shop, tea
    let key = &spec
        .keys(&rawdoc! { "cat": "x", "body": "the coffee" })
        .unwrap()[0];
    let inside = |i: &mangrove_query::KeyInterval| {
        use std::ops::Bound::*;
        let lo = match &i.0 {
            Included(l) => key >= l,
            _ => true,
        };
        let hi = match &i.1 {
            Excluded(h) => key < h,
            Unbounded => true,
            _ => false,
        };
        lo && hi
    };
    assert_eq!(b.intervals.iter().filter(|i| inside(i)).count(), 1);
    let other = &spec
        .keys(&rawdoc! { "cat": "y", "body": "coffee" })
        .unwrap()[0];
    assert!(b.intervals.iter().all(|i| match &i.0 {
        std::ops::Bound::Included(l) => !other.starts_with(l),
        _ => true,
    }));
    let no_prefix = bound(doc! { "$text": { "$search": "coffee" } }, &text);
    assert_eq!(text_bounds(&spec, &no_prefix).unwrap_err().code, 291);
}
