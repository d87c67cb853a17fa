//! Pipeline parsing and the stages added for sessions and write stages: `$addFields`/`$set`,
//! and `$out`/`$merge` as sinks that only the last stage may be.

use bson::{doc, rawdoc};
use mangrove_query::{Pipeline, Sink, WhenMatched, WhenNotMatched};

fn parse(stages: bson::Document) -> Result<Pipeline, mangrove_query::QueryError> {
    let raw = bson::RawDocumentBuf::try_from(&stages).unwrap();
    let arr = raw.get_array("p").unwrap();
    Pipeline::parse(arr)
}

#[test]
fn add_fields_sets_constants_paths_and_dotted_targets() {
    let p = parse(doc! { "p": [ { "$addFields": { "k": "v", "copy": "$a.b", "x.y": 1 } }, { "$set": { "n": 2 } } ] }).unwrap();
    let out = p
        .run(vec![rawdoc! { "_id": 1, "a": { "b": 7 }, "x": { "z": 0 } }])
        .unwrap();
    let d = bson::Document::try_from(out[0].as_ref()).unwrap();
    assert_eq!(
        d,
        doc! { "_id": 1, "a": { "b": 7 }, "x": { "z": 0, "y": 1 }, "k": "v", "copy": 7, "n": 2 }
    );
    // A missing path adds nothing.
    let out = p.run(vec![rawdoc! { "_id": 2 }]).unwrap();
    let d = bson::Document::try_from(out[0].as_ref()).unwrap();
    assert!(d.get("copy").is_none(), "{d}");
}

#[test]
fn out_and_merge_are_sinks_and_must_come_last() {
    let p = parse(doc! { "p": [ { "$match": {} }, { "$out": "dst" } ] }).unwrap();
    assert_eq!(
        p.sink(),
        Some(&Sink::Out {
            db: None,
            coll: "dst".into()
        })
    );
    let p = parse(doc! { "p": [ { "$merge": { "into": { "db": "o", "coll": "c" }, "whenMatched": "replace", "whenNotMatched": "discard" } } ] }).unwrap();
    assert_eq!(
        p.sink(),
        Some(&Sink::Merge {
            db: Some("o".into()),
            coll: "c".into(),
            when_matched: WhenMatched::Replace,
            when_not_matched: WhenNotMatched::Discard
        })
    );
    let err = parse(doc! { "p": [ { "$out": "dst" }, { "$match": {} } ] })
        .err()
        .unwrap();
    assert_eq!(err.code, 40601);
    let err = parse(doc! { "p": [ { "$merge": { "into": "c", "on": "sku" } } ] })
        .err()
        .unwrap();
    assert_eq!(err.code, 51183, "joining on a field needs a unique index");
    assert!(
        parse(doc! { "p": [ { "$merge": { "into": "c", "whenMatched": "bogus" } } ] }).is_err()
    );
}

#[test]
fn pipeline_updates_reshape_one_document_and_keep_its_id() {
    use bson::Bson;
    use mangrove_query::Update;
    let apply = |stages: Bson, doc: bson::Document| {
        Update::parse(&stages).and_then(|u| u.apply(&doc, false))
    };
    let doc = doc! { "_id": 1, "x": 1, "t": { "u": 2 } };
    // $replaceRoot drops _id from its output; the update puts it back, first.
    let out = apply(
        Bson::Array(vec![
            Bson::Document(doc! { "$replaceRoot": { "newRoot": "$t" } }),
            Bson::Document(doc! { "$set": { "foo": 1 } }),
        ]),
        doc.clone(),
    )
    .unwrap();
    assert_eq!(out, doc! { "_id": 1, "u": 2, "foo": 1 });
    // $setField sets names a plain $set could not.
    let out = apply(
        Bson::Array(vec![Bson::Document(doc! { "$replaceWith": { "$setField": { "field": { "$literal": "a.$b" }, "value": 7, "input": "$$ROOT" } } })]),
        doc.clone(),
    )
    .unwrap();
    assert_eq!(out.get_i32("a.$b").unwrap(), 7);
    let out = apply(
        Bson::Array(vec![Bson::Document(doc! { "$unset": ["x", "t.u"] })]),
        doc.clone(),
    )
    .unwrap();
    assert_eq!(out, doc! { "_id": 1, "t": {} });
    // _id cannot change, and only reshaping stages are allowed.
    let err = apply(
        Bson::Array(vec![Bson::Document(doc! { "$set": { "_id": 2 } })]),
        doc.clone(),
    )
    .unwrap_err();
    assert_eq!(err.code, 66);
    assert!(Update::parse(&Bson::Array(vec![Bson::Document(doc! { "$match": {} })])).is_err());
}

#[test]
fn expr_filters_and_let_variables() {
    use mangrove_query::{Filter, with_let};
    let f = |spec: bson::Document| Filter::parse(&bson::RawDocumentBuf::try_from(&spec).unwrap());
    let doc = rawdoc! { "_id": 1, "a": 5, "b": 7 };
    assert!(
        f(doc! { "$expr": { "$lt": ["$a", "$b"] } })
            .unwrap()
            .matches(&doc)
    );
    assert!(
        !f(doc! { "$expr": { "$gt": ["$a", "$b"] } })
            .unwrap()
            .matches(&doc)
    );
    // Missing is less than every value, null included.
    assert!(
        f(doc! { "$expr": { "$lt": ["$nope", null] } })
            .unwrap()
            .matches(&doc)
    );
    assert!(f(doc! { "$expr": { "$and": [ { "$eq": ["$a", 5] }, { "$not": [ { "$eq": ["$b", 5] } ] } ] } }).unwrap().matches(&doc));
    assert!(
        !f(doc! { "$expr": { "$or": [false, 0, "$nope"] } })
            .unwrap()
            .matches(&doc)
    );
    // An undefined variable is an error at parse time.
    assert_eq!(
        f(doc! { "$expr": { "$eq": ["$_id", "$$id"] } })
            .unwrap_err()
            .code,
        17276
    );
    let lets = rawdoc! { "id": 1, "r": { "$rand": {} }, "lit": { "$literal": "$x" } };
    let filter = with_let(Some(&lets), || {
        f(doc! { "$expr": { "$eq": ["$_id", "$$id"] } })
    })
    .unwrap();
    assert!(filter.matches(&doc));
    assert!(!filter.matches(&rawdoc! { "_id": 2 }));
    let p = with_let(Some(&lets), || {
        let raw = bson::RawDocumentBuf::try_from(
            &doc! { "p": [ { "$project": { "_id": 0, "r": "$$r", "lit": "$$lit" } } ] },
        )
        .unwrap();
        mangrove_query::Pipeline::parse(raw.get_array("p").unwrap())
    })
    .unwrap();
    let out = bson::Document::try_from(p.run(vec![doc.clone()]).unwrap()[0].as_ref()).unwrap();
    let r = out.get_f64("r").unwrap();
    assert!((0.0..1.0).contains(&r), "{out}");
    assert_eq!(out.get_str("lit").unwrap(), "$x");
    // The scope ends with the closure.
    assert_eq!(
        f(doc! { "$expr": { "$eq": ["$_id", "$$id"] } })
            .unwrap_err()
            .code,
        17276
    );
    assert_eq!(
        with_let(Some(&rawdoc! { "Bad": 1 }), || f(doc! {}))
            .unwrap_err()
            .code,
        16867
    );
}
