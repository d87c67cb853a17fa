use crate::common;
use bson::{Bson, Document, doc};
use mangrove_query::{QueryError, Update};

fn upd(u: Document) -> Update {
    Update::parse(&Bson::Document(u.clone())).unwrap_or_else(|e| panic!("update {u} failed: {e}"))
}

fn apply(u: Document, d: Document) -> Document {
    upd(u)
        .apply(&d, false)
        .unwrap_or_else(|e| panic!("apply failed: {e}"))
}

fn apply_err(u: Document, d: Document) -> QueryError {
    match upd(u).apply(&d, false) {
        Ok(r) => panic!("expected error, got {r}"),
        Err(e) => e,
    }
}

fn parse_err(u: Document) -> QueryError {
    match Update::parse(&Bson::Document(u)) {
        Ok(_) => panic!("expected parse error"),
        Err(e) => e,
    }
}

#[test]
fn set_and_unset() {
    assert_eq!(
        apply(doc! {"$set": {"a": 2}}, doc! {"_id": 1, "a": 1}),
        doc! {"_id": 1, "a": 2}
    );
    assert_eq!(
        apply(doc! {"$set": {"b": 2}}, doc! {"_id": 1, "a": 1}),
        doc! {"_id": 1, "a": 1, "b": 2}
    );
    assert_eq!(
        apply(doc! {"$set": {"a.b.c": 1}}, doc! {"_id": 1}),
        doc! {"_id": 1, "a": {"b": {"c": 1}}}
    );
    assert_eq!(
        apply(doc! {"$set": {"a.2": 5}}, doc! {"_id": 1, "a": [1]}),
        doc! {"_id": 1, "a": [1, Bson::Null, 5]}
    );
    assert_eq!(
        apply(
            doc! {"$set": {"a.1.b": 5}},
            doc! {"_id": 1, "a": [{"b": 1}, {"b": 2}]}
        ),
        doc! {"_id": 1, "a": [{"b": 1}, {"b": 5}]}
    );
    assert_eq!(
        apply(doc! {"$unset": {"a": ""}}, doc! {"_id": 1, "a": 1, "b": 2}),
        doc! {"_id": 1, "b": 2}
    );
    assert_eq!(
        apply(doc! {"$unset": {"x.y": 1}}, doc! {"_id": 1}),
        doc! {"_id": 1}
    );
    assert_eq!(
        apply(doc! {"$unset": {"a.0": 1}}, doc! {"_id": 1, "a": [1, 2]}),
        doc! {"_id": 1, "a": [Bson::Null, 2]}
    );
    // New fields are added in field-name order.
    assert_eq!(
        apply(doc! {"$set": {"b": 1, "a": 1}}, doc! {"_id": 1}),
        doc! {"_id": 1, "a": 1, "b": 1}
    );
    let e = apply_err(doc! {"$set": {"a.b": 1}}, doc! {"_id": 1, "a": 5});
    assert_eq!((e.code, e.code_name), (28, "PathNotViable"));
    let e = apply_err(doc! {"$set": {"a.x": 1}}, doc! {"_id": 1, "a": [1]});
    assert_eq!(e.code, 28);
}

#[test]
fn inc_and_mul() {
    assert_eq!(
        apply(doc! {"$inc": {"a": 2}}, doc! {"_id": 1, "a": 1}),
        doc! {"_id": 1, "a": 3}
    );
    assert_eq!(
        apply(doc! {"$inc": {"a": 2}}, doc! {"_id": 1}),
        doc! {"_id": 1, "a": 2}
    );
    assert_eq!(
        apply(doc! {"$inc": {"a": 1.5}}, doc! {"_id": 1, "a": 1}),
        doc! {"_id": 1, "a": 2.5}
    );
    assert_eq!(
        apply(doc! {"$inc": {"a": 1_i64}}, doc! {"_id": 1, "a": 1}),
        doc! {"_id": 1, "a": 2_i64}
    );
    assert_eq!(
        apply(doc! {"$inc": {"a": 1}}, doc! {"_id": 1, "a": i32::MAX}),
        doc! {"_id": 1, "a": i64::from(i32::MAX) + 1}
    );
    let e = apply_err(doc! {"$inc": {"a": 1}}, doc! {"_id": 1, "a": i64::MAX});
    assert_eq!(e.code, 2);
    let e = apply_err(doc! {"$inc": {"a": 1}}, doc! {"_id": 1, "a": "x"});
    assert_eq!((e.code, e.code_name), (14, "TypeMismatch"));
    assert_eq!(parse_err(doc! {"$inc": {"a": "x"}}).code, 14);
    assert_eq!(
        apply(doc! {"$mul": {"a": 3}}, doc! {"_id": 1, "a": 2}),
        doc! {"_id": 1, "a": 6}
    );
    assert_eq!(
        apply(doc! {"$mul": {"a": 3}}, doc! {"_id": 1}),
        doc! {"_id": 1, "a": 0}
    );
    assert_eq!(
        apply(doc! {"$mul": {"a": 2.0}}, doc! {"_id": 1}),
        doc! {"_id": 1, "a": 0.0}
    );
    assert_eq!(parse_err(doc! {"$mul": {"a": "x"}}).code, 14);
}

#[test]
fn min_max() {
    assert_eq!(
        apply(doc! {"$min": {"a": 1}}, doc! {"_id": 1, "a": 5}),
        doc! {"_id": 1, "a": 1}
    );
    assert_eq!(
        apply(doc! {"$min": {"a": 9}}, doc! {"_id": 1, "a": 5}),
        doc! {"_id": 1, "a": 5}
    );
    assert_eq!(
        apply(doc! {"$max": {"a": 9}}, doc! {"_id": 1, "a": 5}),
        doc! {"_id": 1, "a": 9}
    );
    assert_eq!(
        apply(doc! {"$max": {"a": 9}}, doc! {"_id": 1}),
        doc! {"_id": 1, "a": 9}
    );
    // Cross-type: any string is greater than any number.
    assert_eq!(
        apply(doc! {"$max": {"a": "x"}}, doc! {"_id": 1, "a": 5}),
        doc! {"_id": 1, "a": "x"}
    );
    assert_eq!(
        apply(doc! {"$min": {"a": Bson::Null}}, doc! {"_id": 1, "a": 5}),
        doc! {"_id": 1, "a": Bson::Null}
    );
}

#[test]
fn rename() {
    assert_eq!(
        apply(
            doc! {"$rename": {"a": "b"}},
            doc! {"_id": 1, "a": 1, "c": 2}
        ),
        doc! {"_id": 1, "c": 2, "b": 1}
    );
    assert_eq!(
        apply(
            doc! {"$rename": {"a.x": "b.y"}},
            doc! {"_id": 1, "a": {"x": 1}}
        ),
        doc! {"_id": 1, "a": {}, "b": {"y": 1}}
    );
    assert_eq!(
        apply(doc! {"$rename": {"z": "b"}}, doc! {"_id": 1, "a": 1}),
        doc! {"_id": 1, "a": 1}
    );
    assert_eq!(parse_err(doc! {"$rename": {"a": "a"}}).code, 2);
    assert_eq!(parse_err(doc! {"$rename": {"a": 1}}).code, 2);
    assert_eq!(parse_err(doc! {"$rename": {"a": "a.b"}}).code, 40);
    assert_eq!(
        apply_err(doc! {"$rename": {"a.0": "b"}}, doc! {"_id": 1, "a": [1]}).code,
        2
    );
    assert_eq!(
        apply_err(doc! {"$rename": {"a": "_id"}}, doc! {"_id": 1, "a": 2}).code,
        66
    );
}

#[test]
fn set_on_insert_and_current_date() {
    let u = upd(doc! {"$set": {"a": 1}, "$setOnInsert": {"b": 2}});
    assert_eq!(
        u.apply(&doc! {"_id": 1}, false).unwrap(),
        doc! {"_id": 1, "a": 1}
    );
    assert_eq!(
        u.apply(&doc! {"_id": 1}, true).unwrap(),
        doc! {"_id": 1, "a": 1, "b": 2}
    );
    let out = apply(
        doc! {"$currentDate": {"d": true, "t": {"$type": "timestamp"}}},
        doc! {"_id": 1},
    );
    assert!(matches!(out.get("d"), Some(Bson::DateTime(_))));
    assert!(matches!(out.get("t"), Some(Bson::Timestamp(_))));
    assert_eq!(
        parse_err(doc! {"$currentDate": {"d": {"$type": "x"}}}).code,
        2
    );
    assert_eq!(parse_err(doc! {"$currentDate": {"d": 1}}).code, 2);
}

#[test]
fn push() {
    assert_eq!(
        apply(doc! {"$push": {"a": 3}}, doc! {"_id": 1, "a": [1]}),
        doc! {"_id": 1, "a": [1, 3]}
    );
    assert_eq!(
        apply(doc! {"$push": {"a": 3}}, doc! {"_id": 1}),
        doc! {"_id": 1, "a": [3]}
    );
    assert_eq!(
        apply(doc! {"$push": {"a": [3]}}, doc! {"_id": 1}),
        doc! {"_id": 1, "a": [[3]]}
    );
    assert_eq!(
        apply(
            doc! {"$push": {"a": {"$each": [3, 4]}}},
            doc! {"_id": 1, "a": [1]}
        ),
        doc! {"_id": 1, "a": [1, 3, 4]}
    );
    assert_eq!(
        apply(
            doc! {"$push": {"a": {"$each": [3, 4], "$position": 0}}},
            doc! {"_id": 1, "a": [1]}
        ),
        doc! {"_id": 1, "a": [3, 4, 1]}
    );
    assert_eq!(
        apply(
            doc! {"$push": {"a": {"$each": [9], "$position": -1}}},
            doc! {"_id": 1, "a": [1, 2]}
        ),
        doc! {"_id": 1, "a": [1, 9, 2]}
    );
    assert_eq!(
        apply(
            doc! {"$push": {"a": {"$each": [5, 0], "$sort": 1, "$slice": 3}}},
            doc! {"_id": 1, "a": [3, 1]}
        ),
        doc! {"_id": 1, "a": [0, 1, 3]}
    );
    assert_eq!(
        apply(
            doc! {"$push": {"a": {"$each": [], "$slice": -1}}},
            doc! {"_id": 1, "a": [3, 1]}
        ),
        doc! {"_id": 1, "a": [1]}
    );
    assert_eq!(
        apply(
            doc! {"$push": {"a": {"$each": [{"s": 2}], "$sort": {"s": -1}}}},
            doc! {"_id": 1, "a": [{"s": 1}, {"s": 3}]}
        ),
        doc! {"_id": 1, "a": [{"s": 3}, {"s": 2}, {"s": 1}]}
    );
    assert_eq!(
        apply_err(doc! {"$push": {"a": 1}}, doc! {"_id": 1, "a": 1}).code,
        2
    );
    assert_eq!(parse_err(doc! {"$push": {"a": {"$each": 1}}}).code, 2);
    assert_eq!(
        parse_err(doc! {"$push": {"a": {"$each": [1], "$slice": "x"}}}).code,
        2
    );
    assert_eq!(
        parse_err(doc! {"$push": {"a": {"$each": [1], "$sort": 2}}}).code,
        2
    );
    assert_eq!(
        parse_err(doc! {"$push": {"a": {"$each": [1], "$bogus": 2}}}).code,
        2
    );
}

#[test]
fn add_to_set() {
    assert_eq!(
        apply(doc! {"$addToSet": {"a": 2}}, doc! {"_id": 1, "a": [1, 2]}),
        doc! {"_id": 1, "a": [1, 2]}
    );
    assert_eq!(
        apply(doc! {"$addToSet": {"a": 2.0}}, doc! {"_id": 1, "a": [1, 2]}),
        doc! {"_id": 1, "a": [1, 2]}
    );
    assert_eq!(
        apply(doc! {"$addToSet": {"a": 3}}, doc! {"_id": 1, "a": [1, 2]}),
        doc! {"_id": 1, "a": [1, 2, 3]}
    );
    assert_eq!(
        apply(
            doc! {"$addToSet": {"a": {"$each": [3, 3, 1, 4]}}},
            doc! {"_id": 1, "a": [1]}
        ),
        doc! {"_id": 1, "a": [1, 3, 4]}
    );
    assert_eq!(
        apply(doc! {"$addToSet": {"a": 1}}, doc! {"_id": 1}),
        doc! {"_id": 1, "a": [1]}
    );
    assert_eq!(
        apply_err(doc! {"$addToSet": {"a": 1}}, doc! {"_id": 1, "a": 5}).code,
        2
    );
}

#[test]
fn pop_pull_pull_all() {
    assert_eq!(
        apply(doc! {"$pop": {"a": 1}}, doc! {"_id": 1, "a": [1, 2, 3]}),
        doc! {"_id": 1, "a": [1, 2]}
    );
    assert_eq!(
        apply(doc! {"$pop": {"a": -1}}, doc! {"_id": 1, "a": [1, 2, 3]}),
        doc! {"_id": 1, "a": [2, 3]}
    );
    assert_eq!(
        apply(doc! {"$pop": {"a": 1}}, doc! {"_id": 1}),
        doc! {"_id": 1}
    );
    assert_eq!(parse_err(doc! {"$pop": {"a": 2}}).code, 9);
    assert_eq!(
        apply_err(doc! {"$pop": {"a": 1}}, doc! {"_id": 1, "a": 1}).code,
        14
    );
    assert_eq!(
        apply(
            doc! {"$pull": {"a": 2}},
            doc! {"_id": 1, "a": [1, 2, 2.0, 3]}
        ),
        doc! {"_id": 1, "a": [1, 3]}
    );
    assert_eq!(
        apply(
            doc! {"$pull": {"a": {"$gte": 2}}},
            doc! {"_id": 1, "a": [1, 2, 3]}
        ),
        doc! {"_id": 1, "a": [1]}
    );
    assert_eq!(
        apply(
            doc! {"$pull": {"a": {"b": 1}}},
            doc! {"_id": 1, "a": [{"b": 1, "c": 1}, {"b": 2}, 1]}
        ),
        doc! {"_id": 1, "a": [{"b": 2}, 1]}
    );
    assert_eq!(
        apply(
            doc! {"$pull": {"a": {"$in": ["x", "y"]}}},
            doc! {"_id": 1, "a": ["x", "z"]}
        ),
        doc! {"_id": 1, "a": ["z"]}
    );
    assert_eq!(
        apply_err(doc! {"$pull": {"a": 1}}, doc! {"_id": 1, "a": 1}).code,
        2
    );
    assert_eq!(
        apply(
            doc! {"$pullAll": {"a": [1, 3]}},
            doc! {"_id": 1, "a": [1, 2, 3, 1]}
        ),
        doc! {"_id": 1, "a": [2]}
    );
    assert_eq!(parse_err(doc! {"$pullAll": {"a": 1}}).code, 2);
}

#[test]
fn bit() {
    assert_eq!(
        apply(doc! {"$bit": {"a": {"and": 6}}}, doc! {"_id": 1, "a": 3}),
        doc! {"_id": 1, "a": 2}
    );
    assert_eq!(
        apply(doc! {"$bit": {"a": {"or": 4}}}, doc! {"_id": 1, "a": 3}),
        doc! {"_id": 1, "a": 7}
    );
    assert_eq!(
        apply(
            doc! {"$bit": {"a": {"xor": 1_i64}}},
            doc! {"_id": 1, "a": 3}
        ),
        doc! {"_id": 1, "a": 2_i64}
    );
}

#[test]
fn replacement() {
    let u = upd(doc! {"b": 2});
    assert!(u.is_replacement());
    assert_eq!(
        u.apply(&doc! {"_id": 1, "a": 1}, false).unwrap(),
        doc! {"_id": 1, "b": 2}
    );
    let u = upd(doc! {"b": 2, "_id": 1});
    assert_eq!(
        u.apply(&doc! {"_id": 1, "a": 1}, false).unwrap(),
        doc! {"_id": 1, "b": 2}
    );
    let e = upd(doc! {"_id": 2})
        .apply(&doc! {"_id": 1}, false)
        .unwrap_err();
    assert_eq!((e.code, e.code_name), (66, "ImmutableField"));
    let u = upd(doc! {});
    assert_eq!(
        u.apply(&doc! {"_id": 1, "a": 1}, false).unwrap(),
        doc! {"_id": 1}
    );
    assert_eq!(parse_err(doc! {"a": 1, "$set": {"b": 1}}).code, 52);
}

#[test]
fn immutable_id() {
    assert_eq!(
        apply_err(doc! {"$set": {"_id": 2}}, doc! {"_id": 1}).code,
        66
    );
    assert_eq!(
        apply_err(doc! {"$unset": {"_id": 1}}, doc! {"_id": 1}).code,
        66
    );
    assert_eq!(
        apply_err(doc! {"$set": {"_id.x": 2}}, doc! {"_id": {"x": 1}}).code,
        66
    );
    // Setting _id to its current value is fine.
    assert_eq!(
        apply(doc! {"$set": {"_id": 1, "a": 1}}, doc! {"_id": 1}),
        doc! {"_id": 1, "a": 1}
    );
    // An upsert may set _id; it is moved to the front.
    let out = upd(doc! {"$set": {"a": 1, "_id": 5}})
        .apply(&doc! {"b": 1}, true)
        .unwrap();
    assert_eq!(out, doc! {"_id": 5, "b": 1, "a": 1});
}

#[test]
fn parse_errors() {
    let e = parse_err(doc! {"$foo": {"a": 1}});
    assert_eq!((e.code, e.code_name), (9, "FailedToParse"));
    assert!(e.message.starts_with("Unknown modifier: $foo"));
    assert_eq!(parse_err(doc! {"$set": {"a": 1}, "b": 1}).code, 9);
    assert_eq!(parse_err(doc! {"$set": 1}).code, 9);
    let e = parse_err(doc! {"$set": {"a": 1}, "$inc": {"a": 1}});
    assert_eq!((e.code, e.code_name), (40, "ConflictingUpdateOperators"));
    assert_eq!(parse_err(doc! {"$set": {"a.b": 1, "a": 1}}).code, 40);
    assert_eq!(
        parse_err(doc! {"$set": {"a.b": 1}, "$unset": {"a.b.c": 1}}).code,
        40
    );
    assert_eq!(parse_err(doc! {"$set": {"a..b": 1}}).code, 56);
    assert_eq!(parse_err(doc! {"$set": {"": 1}}).code, 56);
    // Sibling paths sharing a prefix do not conflict.
    upd(doc! {"$set": {"a.b": 1, "a.c": 1, "ab": 1}});
    // Empty operator documents are allowed (MongoDB 5.0+).
    assert_eq!(apply(doc! {"$set": {}}, doc! {"_id": 1}), doc! {"_id": 1});
    let e = Update::parse(&Bson::Array(vec![])).unwrap_err();
    assert_eq!(e.code, 2);
    assert_eq!(Update::parse(&Bson::Int32(1)).unwrap_err().code, 9);
}

#[test]
fn all_positional() {
    assert_eq!(
        apply(doc! {"$inc": {"a.$[]": 1}}, doc! {"_id": 1, "a": [1, 2]}),
        doc! {"_id": 1, "a": [2, 3]}
    );
    assert_eq!(
        apply(
            doc! {"$set": {"a.$[].b": 0}},
            doc! {"_id": 1, "a": [{"b": 1}, {"c": 2}]}
        ),
        doc! {"_id": 1, "a": [{"b": 0}, {"c": 2, "b": 0}]}
    );
}

#[test]
fn array_filters() {
    let filters = [doc! {"x": {"$gte": 2}}];
    let u = Update::parse_with_array_filters(
        &Bson::Document(doc! {"$set": {"a.$[x]": 0}}),
        Some(&filters),
    )
    .unwrap();
    assert_eq!(
        u.apply(&doc! {"_id": 1, "a": [1, 2, 3]}, false).unwrap(),
        doc! {"_id": 1, "a": [1, 0, 0]}
    );
    let filters = [doc! {"e.k": "b"}];
    let u = Update::parse_with_array_filters(
        &Bson::Document(doc! {"$inc": {"a.$[e].v": 10}}),
        Some(&filters),
    )
    .unwrap();
    assert_eq!(
        u.apply(
            &doc! {"_id": 1, "a": [{"k": "a", "v": 1}, {"k": "b", "v": 2}]},
            false
        )
        .unwrap(),
        doc! {"_id": 1, "a": [{"k": "a", "v": 1}, {"k": "b", "v": 12}]}
    );
    let e =
        Update::parse_with_array_filters(&Bson::Document(doc! {"$set": {"a.$[y]": 0}}), Some(&[]))
            .unwrap_err();
    assert_eq!(e.code, 2);
    let e = Update::parse_with_array_filters(
        &Bson::Document(doc! {"$set": {"a": 0}}),
        Some(&[doc! {"x": 1}]),
    )
    .unwrap_err();
    assert_eq!(e.code, 9);
    let e = Update::parse_with_array_filters(
        &Bson::Document(doc! {"$set": {"a.$[x]": 0}}),
        Some(&[doc! {"x": 1}, doc! {"x": 2}]),
    )
    .unwrap_err();
    assert_eq!(e.code, 9);
}

#[test]
fn positional_dollar() {
    let u = upd(doc! {"$set": {"a.$.b": 9}});
    let d = doc! {"_id": 1, "a": [{"b": 1}, {"b": 2}]};
    let f = common::filter(doc! {"a.b": 2});
    let idx = f.positional_index(&common::raw(&d));
    assert_eq!(
        u.apply_with_positional(&d, false, idx).unwrap(),
        doc! {"_id": 1, "a": [{"b": 1}, {"b": 9}]}
    );
    assert_eq!(u.apply(&d, false).unwrap_err().code, 2);
}

/// `$exists: true` names the first element that has the path (mongod), `$exists: false` none.
#[test]
fn positional_dollar_after_exists() {
    let u = upd(doc! {"$set": {"a.$.x": 1}});
    let d = doc! {"_id": 1, "a": [{"b": {"c": 1}}, {"b": {"d": 1}}]};
    let f = common::filter(doc! {"a.b.d": {"$exists": true}});
    let idx = f.positional_index(&common::raw(&d));
    assert_eq!(idx, Some(1));
    assert_eq!(
        u.apply_with_positional(&d, false, idx).unwrap(),
        doc! {"_id": 1, "a": [{"b": {"c": 1}}, {"b": {"d": 1}, "x": 1}]}
    );
    let absent = common::filter(doc! {"a.b.e": {"$exists": false}});
    assert_eq!(absent.positional_index(&common::raw(&d)), None);
}

/// Two positional operators in one path are refused when the update is parsed (mongod's
/// message), not reported as a failed match.
#[test]
fn two_positional_operators_in_one_path() {
    let e = Update::parse(&Bson::Document(doc! {"$set": {"x.$.test.$": 1}})).unwrap_err();
    assert_eq!(e.code, 2);
    assert!(e.message.contains("Too many positional"), "{}", e.message);
}
