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
