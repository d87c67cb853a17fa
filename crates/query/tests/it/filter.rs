use crate::common;
use crate::common::{filter, filter_err, matches, raw, re};
use bson::{Binary, Bson, Decimal128, doc, oid::ObjectId, spec::BinarySubtype};

#[test]
fn implicit_equality() {
    assert!(matches(doc! {"a": 1}, doc! {"a": 1}));
    assert!(matches(doc! {"a": 1}, doc! {"a": 1.0}));
    assert!(matches(doc! {"a": 1}, doc! {"a": 1_i64}));
    assert!(!matches(doc! {"a": 1}, doc! {"a": "1"}));
    assert!(!matches(doc! {"a": 1}, doc! {"b": 1}));
    assert!(matches(doc! {}, doc! {"b": 1}));
    assert!(matches(doc! {"a": 1, "b": 2}, doc! {"a": 1, "b": 2}));
    assert!(!matches(doc! {"a": 1, "b": 3}, doc! {"a": 1, "b": 2}));
}

#[test]
fn equality_with_arrays() {
    // Any element matches.
    assert!(matches(doc! {"a": 2}, doc! {"a": [1, 2, 3]}));
    // Whole-array equality, order-sensitive.
    assert!(matches(doc! {"a": [1, 2]}, doc! {"a": [1, 2]}));
    assert!(!matches(doc! {"a": [2, 1]}, doc! {"a": [1, 2]}));
    // Array nested in array.
    assert!(matches(doc! {"a": [1, 2]}, doc! {"a": [[1, 2], 3]}));
    assert!(!matches(doc! {"a": 1}, doc! {"a": [[1, 2], 3]}));
    assert!(!matches(doc! {"a": 5}, doc! {"a": []}));
}

#[test]
fn equality_with_documents_is_exact() {
    assert!(matches(
        doc! {"a": {"b": 1, "c": 2}},
        doc! {"a": {"b": 1, "c": 2}}
    ));
    assert!(!matches(
        doc! {"a": {"b": 1, "c": 2}},
        doc! {"a": {"c": 2, "b": 1}}
    ));
    assert!(!matches(doc! {"a": {"b": 1}}, doc! {"a": {"b": 1, "c": 2}}));
    assert!(matches(
        doc! {"a": {"b": 1}},
        doc! {"a": [{"b": 1}, {"b": 2}]}
    ));
}

#[test]
fn null_matches_missing_and_null() {
    assert!(matches(doc! {"a": Bson::Null}, doc! {"a": Bson::Null}));
    assert!(matches(doc! {"a": Bson::Null}, doc! {"b": 1}));
    assert!(!matches(doc! {"a": Bson::Null}, doc! {"a": 0}));
    assert!(matches(doc! {"a": Bson::Null}, doc! {"a": [1, Bson::Null]}));
    assert!(!matches(doc! {"a": Bson::Null}, doc! {"a": [1, 2]}));
    assert!(matches(doc! {"a.b": Bson::Null}, doc! {"a": 1}));
    assert!(matches(
        doc! {"a.b": Bson::Null},
        doc! {"a": [{"b": 1}, {"c": 1}]}
    ));
    assert!(!matches(doc! {"a.b": Bson::Null}, doc! {"a": [{"b": 1}]}));
    assert!(matches(doc! {"a": {"$eq": Bson::Null}}, doc! {}));
    assert!(!matches(doc! {"a": {"$ne": Bson::Null}}, doc! {}));
    assert!(matches(doc! {"a": {"$ne": Bson::Null}}, doc! {"a": 1}));
    assert!(matches(doc! {"a": {"$gte": Bson::Null}}, doc! {}));
    assert!(matches(
        doc! {"a": {"$lte": Bson::Null}},
        doc! {"a": Bson::Null}
    ));
    assert!(!matches(doc! {"a": {"$gt": Bson::Null}}, doc! {"a": 1}));
    assert!(!matches(doc! {"a": {"$lt": Bson::Null}}, doc! {}));
    assert!(matches(doc! {"a": {"$in": [Bson::Null]}}, doc! {}));
    assert!(!matches(doc! {"a": {"$nin": [Bson::Null, 5]}}, doc! {}));
}

#[test]
fn dotted_paths() {
    let d = doc! {"a": {"b": {"c": 5}}};
    assert!(matches(doc! {"a.b.c": 5}, d.clone()));
    assert!(!matches(doc! {"a.b.c": 6}, d.clone()));
    assert!(matches(doc! {"a.b": {"c": 5}}, d));
    // Through arrays of documents.
    let d = doc! {"a": [{"b": 1}, {"b": 2}]};
    assert!(matches(doc! {"a.b": 2}, d.clone()));
    assert!(!matches(doc! {"a.b": 3}, d.clone()));
    // Numeric components index arrays.
    assert!(matches(doc! {"a.1.b": 2}, d.clone()));
    assert!(!matches(doc! {"a.0.b": 2}, d.clone()));
    assert!(matches(doc! {"a.0": 10}, doc! {"a": [10, 20]}));
    assert!(!matches(doc! {"a.1": 10}, doc! {"a": [10, 20]}));
    // A numeric component is also a field name in embedded documents.
    assert!(matches(doc! {"a.0": 7}, doc! {"a": {"0": 7}}));
    assert!(matches(doc! {"a.0": 7}, doc! {"a": [{"0": 7}]}));
    // Arrays of arrays of documents are not traversed by field names.
    assert!(!matches(doc! {"a.b": 1}, doc! {"a": [[{"b": 1}]]}));
    // Leaf array inside array of docs.
    assert!(matches(doc! {"a.b": 3}, doc! {"a": [{"b": [1, 3]}]}));
    // Scalar mid-path.
    assert!(!matches(doc! {"a.b": 1}, doc! {"a": 1}));
}

#[test]
fn comparisons_stay_in_type_bracket() {
    assert!(matches(doc! {"a": {"$gt": 5}}, doc! {"a": 6}));
    assert!(matches(doc! {"a": {"$gt": 5}}, doc! {"a": 5.5}));
    assert!(!matches(doc! {"a": {"$gt": 5}}, doc! {"a": "6"}));
    assert!(!matches(doc! {"a": {"$gt": 5}}, doc! {"a": Bson::Null}));
    assert!(!matches(doc! {"a": {"$lt": 5}}, doc! {"a": Bson::Null}));
    assert!(!matches(doc! {"a": {"$lt": 5}}, doc! {}));
    assert!(matches(doc! {"a": {"$gte": 5}}, doc! {"a": 5_i64}));
    assert!(matches(doc! {"a": {"$lte": 5}}, doc! {"a": 5.0}));
    assert!(!matches(doc! {"a": {"$lt": 5}}, doc! {"a": 5}));
    assert!(matches(doc! {"a": {"$gt": "abc"}}, doc! {"a": "abd"}));
    assert!(!matches(doc! {"a": {"$gt": "abc"}}, doc! {"a": 1}));
    assert!(matches(doc! {"a": {"$gt": 5}}, doc! {"a": [1, 10]}));
    assert!(!matches(doc! {"a": {"$gt": 5}}, doc! {"a": [1, 2]}));
    // Range conditions are evaluated independently per element.
    assert!(matches(
        doc! {"a": {"$gt": 5, "$lt": 3}},
        doc! {"a": [1, 10]}
    ));
    let big = 9_007_199_254_740_993_i64;
    assert!(matches(
        doc! {"a": {"$gt": 9_007_199_254_740_992.0}},
        doc! {"a": big}
    ));
    assert!(!matches(
        doc! {"a": big},
        doc! {"a": 9_007_199_254_740_992.0}
    ));
    let later = bson::DateTime::from_millis(2000);
    assert!(matches(
        doc! {"a": {"$gt": bson::DateTime::from_millis(1000)}},
        doc! {"a": later}
    ));
    assert!(!matches(doc! {"a": {"$gt": 1000}}, doc! {"a": later}));
}

#[test]
fn nan_comparisons() {
    assert!(matches(doc! {"a": f64::NAN}, doc! {"a": f64::NAN}));
    assert!(matches(
        doc! {"a": {"$gte": f64::NAN}},
        doc! {"a": f64::NAN}
    ));
    assert!(!matches(doc! {"a": {"$gt": f64::NAN}}, doc! {"a": 1}));
    assert!(!matches(doc! {"a": {"$lt": 5}}, doc! {"a": f64::NAN}));
    assert!(!matches(
        doc! {"a": {"$gte": f64::NEG_INFINITY}},
        doc! {"a": f64::NAN}
    ));
}

#[test]
fn minkey_maxkey_bounds() {
    assert!(matches(doc! {"a": {"$gt": Bson::MinKey}}, doc! {"a": "x"}));
    assert!(matches(doc! {"a": {"$lt": Bson::MaxKey}}, doc! {"a": 1}));
    assert!(!matches(doc! {"a": {"$gt": Bson::MaxKey}}, doc! {"a": 1}));
}

#[test]
fn in_and_nin() {
    assert!(matches(doc! {"a": {"$in": [1, 2]}}, doc! {"a": 2.0}));
    assert!(matches(doc! {"a": {"$in": [1, 2]}}, doc! {"a": [5, 1]}));
    assert!(!matches(doc! {"a": {"$in": []}}, doc! {"a": 1}));
    assert!(matches(doc! {"a": {"$nin": []}}, doc! {"a": 1}));
    assert!(matches(
        doc! {"a": {"$in": [re("^ab", "")]}},
        doc! {"a": "abc"}
    ));
    assert!(matches(doc! {"a": {"$nin": [1, 2]}}, doc! {"a": 3}));
    assert!(matches(doc! {"a": {"$nin": [1, 2]}}, doc! {}));
    assert!(!matches(doc! {"a": {"$nin": [1, 2]}}, doc! {"a": [3, 2]}));
    assert!(matches(doc! {"a": {"$in": [[1, 2]]}}, doc! {"a": [1, 2]}));
    assert_eq!(filter_err(doc! {"a": {"$in": 1}}).code, 2);
    assert_eq!(filter_err(doc! {"a": {"$in": [{"$gt": 1}]}}).code, 2);
}

#[test]
fn ne_on_arrays() {
    assert!(!matches(doc! {"a": {"$ne": 1}}, doc! {"a": [1, 2]}));
    assert!(matches(doc! {"a": {"$ne": 3}}, doc! {"a": [1, 2]}));
    assert!(matches(doc! {"a": {"$ne": 3}}, doc! {}));
}

#[test]
fn logical_operators() {
    let d = doc! {"a": 1, "b": 2};
    assert!(matches(doc! {"$and": [{"a": 1}, {"b": 2}]}, d.clone()));
    assert!(!matches(doc! {"$and": [{"a": 1}, {"b": 3}]}, d.clone()));
    assert!(matches(doc! {"$or": [{"a": 5}, {"b": 2}]}, d.clone()));
    assert!(!matches(doc! {"$or": [{"a": 5}, {"b": 5}]}, d.clone()));
    assert!(matches(doc! {"$nor": [{"a": 5}, {"b": 5}]}, d.clone()));
    assert!(!matches(doc! {"$nor": [{"a": 1}]}, d.clone()));
    assert!(matches(doc! {"a": {"$not": {"$gt": 5}}}, d.clone()));
    assert!(matches(doc! {"c": {"$not": {"$gt": 5}}}, d.clone()));
    assert!(!matches(doc! {"a": {"$not": {"$lt": 5}}}, d.clone()));
    assert!(matches(
        doc! {"$and": [{"$or": [{"a": 1}, {"a": 2}]}, {"$nor": [{"b": 3}]}]},
        d
    ));
    for bad in [
        doc! {"$and": []},
        doc! {"$or": 1},
        doc! {"$nor": [1]},
        doc! {"a": {"$not": 1}},
        doc! {"a": {"$not": {}}},
    ] {
        assert_eq!(filter_err(bad).code, 2);
    }
}

#[test]
fn exists() {
    assert!(matches(
        doc! {"a": {"$exists": true}},
        doc! {"a": Bson::Null}
    ));
    assert!(!matches(doc! {"a": {"$exists": true}}, doc! {"b": 1}));
    assert!(matches(doc! {"a": {"$exists": false}}, doc! {"b": 1}));
    assert!(matches(doc! {"a": {"$exists": 1}}, doc! {"a": 0}));
    assert!(matches(
        doc! {"a.b": {"$exists": true}},
        doc! {"a": [{"c": 1}, {"b": 1}]}
    ));
    assert!(!matches(
        doc! {"a.b": {"$exists": true}},
        doc! {"a": [{"c": 1}]}
    ));
    assert!(matches(doc! {"a.1": {"$exists": true}}, doc! {"a": [1, 2]}));
    assert!(!matches(
        doc! {"a.2": {"$exists": true}},
        doc! {"a": [1, 2]}
    ));
}

#[test]
fn unknown_operators() {
    let e = filter_err(doc! {"a": {"$foo": 1}});
    assert_eq!(
        (e.code, e.code_name, e.message.as_str()),
        (2, "BadValue", "unknown operator: $foo")
    );
    let e = filter_err(doc! {"$foo": 1});
    assert_eq!(e.code, 2);
    assert!(e.message.starts_with("unknown top level operator: $foo"));
    // A document whose first key is not an operator is a literal.
    assert!(matches(
        doc! {"a": {"b": {"$gt": 1}}},
        doc! {"a": {"b": {"$gt": 1}}}
    ));
    // $comment is ignored.
    assert!(matches(doc! {"a": 1, "$comment": "hi"}, doc! {"a": 1}));
}

#[test]
fn regex() {
    assert!(matches(doc! {"a": re("^ab", "")}, doc! {"a": "abc"}));
    assert!(!matches(doc! {"a": re("^AB", "")}, doc! {"a": "abc"}));
    assert!(matches(doc! {"a": re("^AB", "i")}, doc! {"a": "abc"}));
    assert!(matches(
        doc! {"a": {"$regex": "^AB", "$options": "i"}},
        doc! {"a": "abc"}
    ));
    assert!(matches(
        doc! {"a": {"$regex": re("b$", "")}},
        doc! {"a": ["x", "ab"]}
    ));
    assert!(matches(
        doc! {"a": {"$regex": "^b", "$options": "m"}},
        doc! {"a": "a\nb"}
    ));
    assert!(!matches(doc! {"a": {"$regex": "^b"}}, doc! {"a": "a\nb"}));
    assert!(matches(
        doc! {"a": {"$regex": "a.b", "$options": "s"}},
        doc! {"a": "a\nb"}
    ));
    assert!(matches(
        doc! {"a": {"$regex": "a b # comment", "$options": "x"}},
        doc! {"a": "ab"}
    ));
    assert!(!matches(doc! {"a": re("1", "")}, doc! {"a": 1}));
    // A regex value in the document is matched by an identical regex.
    assert!(matches(doc! {"a": re("x", "i")}, doc! {"a": re("x", "i")}));
    assert!(matches(
        doc! {"a": {"$not": re("^a", "")}},
        doc! {"a": "bc"}
    ));
    assert!(matches(doc! {"a": {"$not": re("^a", "")}}, doc! {}));
    assert_eq!(filter_err(doc! {"a": {"$regex": "("}}).code, 51091);
    assert_eq!(filter_err(doc! {"a": {"$options": "i"}}).code, 2);
    assert_eq!(filter_err(doc! {"a": {"$regex": 1}}).code, 2);
    assert_eq!(
        filter_err(doc! {"a": {"$regex": "a", "$options": "z"}}).code,
        51108
    );
}

#[test]
fn type_operator() {
    assert!(matches(doc! {"a": {"$type": "string"}}, doc! {"a": "x"}));
    assert!(matches(doc! {"a": {"$type": 2}}, doc! {"a": "x"}));
    assert!(matches(doc! {"a": {"$type": "number"}}, doc! {"a": 1_i64}));
    assert!(matches(doc! {"a": {"$type": "number"}}, doc! {"a": 1.5}));
    assert!(!matches(doc! {"a": {"$type": "number"}}, doc! {"a": "1"}));
    assert!(matches(
        doc! {"a": {"$type": ["string", "int"]}},
        doc! {"a": 1}
    ));
    assert!(matches(doc! {"a": {"$type": "array"}}, doc! {"a": []}));
    assert!(matches(doc! {"a": {"$type": "int"}}, doc! {"a": ["x", 1]}));
    assert!(matches(
        doc! {"a": {"$type": "null"}},
        doc! {"a": Bson::Null}
    ));
    assert!(!matches(doc! {"a": {"$type": "null"}}, doc! {}));
    assert!(matches(
        doc! {"a": {"$type": "objectId"}},
        doc! {"a": ObjectId::new()}
    ));
    assert!(matches(doc! {"a": {"$type": -1}}, doc! {"a": Bson::MinKey}));
    assert_eq!(filter_err(doc! {"a": {"$type": "foo"}}).code, 2);
    assert_eq!(filter_err(doc! {"a": {"$type": 100}}).code, 2);
}

#[test]
fn size() {
    assert!(matches(doc! {"a": {"$size": 2}}, doc! {"a": [1, 2]}));
    assert!(matches(doc! {"a": {"$size": 0}}, doc! {"a": []}));
    assert!(!matches(doc! {"a": {"$size": 1}}, doc! {"a": 1}));
    assert!(!matches(doc! {"a": {"$size": 2}}, doc! {"a": [[1, 2]]}));
    assert!(matches(doc! {"a": {"$size": 2.0}}, doc! {"a": [1, 2]}));
    assert!(matches(
        doc! {"a.b": {"$size": 1}},
        doc! {"a": [{"b": [1]}]}
    ));
    assert_eq!(filter_err(doc! {"a": {"$size": "2"}}).code, 2);
    assert_eq!(filter_err(doc! {"a": {"$size": 2.5}}).code, 2);
    assert_eq!(filter_err(doc! {"a": {"$size": -1}}).code, 2);
}

#[test]
fn all() {
    assert!(matches(doc! {"a": {"$all": [1, 2]}}, doc! {"a": [2, 3, 1]}));
    assert!(!matches(
        doc! {"a": {"$all": [1, 4]}},
        doc! {"a": [2, 3, 1]}
    ));
    assert!(!matches(doc! {"a": {"$all": []}}, doc! {"a": [1]}));
    assert!(matches(doc! {"a": {"$all": [1]}}, doc! {"a": 1}));
    assert!(matches(
        doc! {"a": {"$all": [[1, 2]]}},
        doc! {"a": [[1, 2], 3]}
    ));
    assert!(matches(
        doc! {"a": {"$all": [{"$elemMatch": {"b": 1}}, {"$elemMatch": {"b": 2}}]}},
        doc! {"a": [{"b": 1}, {"b": 2}]}
    ));
    assert_eq!(filter_err(doc! {"a": {"$all": 1}}).code, 2);
}

#[test]
fn elem_match() {
    let d = doc! {"a": [{"b": 1, "c": 2}, {"b": 2, "c": 1}]};
    assert!(matches(
        doc! {"a": {"$elemMatch": {"b": 1, "c": 2}}},
        d.clone()
    ));
    assert!(!matches(
        doc! {"a": {"$elemMatch": {"b": 1, "c": 1}}},
        d.clone()
    ));
    // Without $elemMatch the conditions may be satisfied by different elements.
    assert!(matches(doc! {"a.b": 1, "a.c": 1}, d));
    assert!(matches(
        doc! {"a": {"$elemMatch": {"$gt": 5, "$lt": 8}}},
        doc! {"a": [1, 6, 10]}
    ));
    assert!(!matches(
        doc! {"a": {"$elemMatch": {"$gt": 5, "$lt": 8}}},
        doc! {"a": [1, 10]}
    ));
    assert!(!matches(
        doc! {"a": {"$elemMatch": {"$gt": 5}}},
        doc! {"a": 6}
    ));
    assert!(matches(
        doc! {"a": {"$elemMatch": {"$or": [{"b": 5}, {"c": 5}]}}},
        doc! {"a": [{"c": 5}]}
    ));
    assert_eq!(filter_err(doc! {"a": {"$elemMatch": 1}}).code, 2);
}

#[test]
fn mod_operator() {
    assert!(matches(doc! {"a": {"$mod": [4, 0]}}, doc! {"a": 8}));
    assert!(matches(doc! {"a": {"$mod": [4, 1]}}, doc! {"a": 9.7}));
    assert!(matches(doc! {"a": {"$mod": [4, -1]}}, doc! {"a": -5}));
    assert!(!matches(doc! {"a": {"$mod": [4, 0]}}, doc! {"a": "8"}));
    assert!(matches(doc! {"a": {"$mod": [-1, 0]}}, doc! {"a": i64::MIN}));
    for bad in [
        doc! {"a": {"$mod": 4}},
        doc! {"a": {"$mod": [4]}},
        doc! {"a": {"$mod": [4, 1, 2]}},
        doc! {"a": {"$mod": [0, 1]}},
        doc! {"a": {"$mod": ["x", 1]}},
        doc! {"a": {"$mod": [f64::NAN, 1]}},
    ] {
        assert_eq!(filter_err(bad).code, 2);
    }
}

#[test]
fn bitwise() {
    // 54 = 0b110110
    let d = doc! {"a": 54};
    assert!(matches(doc! {"a": {"$bitsAllSet": [1, 2]}}, d.clone()));
    assert!(!matches(doc! {"a": {"$bitsAllSet": [0, 1]}}, d.clone()));
    assert!(matches(doc! {"a": {"$bitsAllSet": 6}}, d.clone()));
    assert!(matches(doc! {"a": {"$bitsAllClear": [0, 3]}}, d.clone()));
    assert!(matches(doc! {"a": {"$bitsAnySet": [0, 1]}}, d.clone()));
    assert!(!matches(doc! {"a": {"$bitsAnySet": [0, 3]}}, d.clone()));
    assert!(matches(doc! {"a": {"$bitsAnyClear": [0, 1]}}, d.clone()));
    let bin = Binary {
        subtype: BinarySubtype::Generic,
        bytes: vec![0b0000_0110],
    };
    assert!(matches(doc! {"a": {"$bitsAllSet": bin}}, d));
    assert!(matches(
        doc! {"a": {"$bitsAllSet": [63, 100]}},
        doc! {"a": -1}
    ));
    assert!(!matches(doc! {"a": {"$bitsAllSet": [1]}}, doc! {"a": 2.5}));
    assert!(!matches(doc! {"a": {"$bitsAllSet": [1]}}, doc! {"a": "x"}));
    assert_eq!(filter_err(doc! {"a": {"$bitsAllSet": -1}}).code, 2);
    assert_eq!(filter_err(doc! {"a": {"$bitsAllSet": [-1]}}).code, 2);
    assert_eq!(filter_err(doc! {"a": {"$bitsAllSet": "x"}}).code, 2);
}

#[test]
fn id_equality() {
    assert_eq!(
        filter(doc! {"_id": 5}).id_equality(),
        Some(bson::RawBson::Int32(5))
    );
    assert_eq!(
        filter(doc! {"_id": {"$eq": "x"}}).id_equality(),
        Some(bson::RawBson::String("x".into()))
    );
    assert_eq!(
        filter(doc! {"$and": [{"a": 1}, {"_id": 7}]}).id_equality(),
        Some(bson::RawBson::Int32(7))
    );
    assert_eq!(
        filter(doc! {"_id": 5, "a": {"$gt": 1}}).id_equality(),
        Some(bson::RawBson::Int32(5))
    );
    assert_eq!(filter(doc! {"_id": {"$gt": 5}}).id_equality(), None);
    assert_eq!(
        filter(doc! {"$or": [{"_id": 1}, {"_id": 2}]}).id_equality(),
        None
    );
    assert_eq!(filter(doc! {"_id": re("x", "")}).id_equality(), None);
    assert_eq!(filter(doc! {"_id": {"$in": [1]}}).id_equality(), None);
    assert_eq!(filter(doc! {"a": 1}).id_equality(), None);
}

#[test]
fn equality_seed() {
    let seed =
        filter(doc! {"a": 1, "b.c": "x", "d": {"$eq": 2}, "e": {"$gt": 1}, "$and": [{"f": 3}]})
            .equality_seed()
            .unwrap();
    assert_eq!(seed, doc! {"a": 1, "b": {"c": "x"}, "d": 2, "f": 3});
    let seed = filter(doc! {"b.c": 1, "b.d": 2}).equality_seed().unwrap();
    assert_eq!(seed, doc! {"b": {"c": 1, "d": 2}});
    let e = filter(doc! {"a": 1, "a.b": 2}).equality_seed().unwrap_err();
    assert_eq!(e.code, 54);
    let e = filter(doc! {"$and": [{"a": 1}, {"a": 2}]})
        .equality_seed()
        .unwrap_err();
    assert_eq!(e.code, 54);
    assert_eq!(
        filter(doc! {"$or": [{"a": 1}]}).equality_seed().unwrap(),
        doc! {}
    );
}

#[test]
fn positional_index() {
    let f = filter(doc! {"a.b": 2});
    assert_eq!(
        f.positional_index(&raw(&doc! {"a": [{"b": 1}, {"b": 2}]})),
        Some(1)
    );
    let f = filter(doc! {"a": {"$gt": 5}});
    assert_eq!(f.positional_index(&raw(&doc! {"a": [1, 7, 9]})), Some(1));
    let f = filter(doc! {"a": {"$elemMatch": {"x": 1, "y": 2}}});
    assert_eq!(
        f.positional_index(&raw(&doc! {"a": [{"x": 1}, {"x": 1, "y": 2}]})),
        Some(1)
    );
    assert_eq!(
        filter(doc! {"a": 1}).positional_index(&raw(&doc! {"a": 1})),
        None
    );
}

#[test]
fn decimal_and_mixed_numbers() {
    let dec: Decimal128 = "2.5".parse().unwrap();
    assert!(matches(doc! {"a": {"$gt": 2}}, doc! {"a": dec}));
    assert!(matches(doc! {"a": 2.5}, doc! {"a": dec}));
    let one: Decimal128 = "1".parse().unwrap();
    assert!(matches(doc! {"a": 1}, doc! {"a": one}));
}

#[test]
fn depth_limit() {
    let mut f = doc! {"a": 1};
    for _ in 0..200 {
        f = doc! {"$and": [f]};
    }
    assert_eq!(filter_err(f).code, 2);
}

#[test]
fn large_in_list() {
    let ids: Vec<Bson> = (0..2000).rev().map(|i| Bson::Int64(i * 2)).collect();
    let f = filter(doc! {"a": {"$in": ids}});
    assert!(f.matches(&raw(&doc! {"a": 400})));
    assert!(f.matches(&raw(&doc! {"a": 3998.0})));
    assert!(!f.matches(&raw(&doc! {"a": 401})));
    assert!(!f.matches(&raw(&doc! {"a": "400"})));
    assert_eq!(
        filter(doc! {"_id": {"$eq": {"$gt": 1}}}).id_equality(),
        None
    );
}

/// DBRef's `$ref`, `$id` and `$db` are field names inside `$elemMatch` and at the top level of a
/// nested query (mongod), not unknown operators.
#[test]
fn dbref_fields_are_field_names() {
    let d = doc! {"refs": [{"$ref": "c", "$id": 5, "$db": "t"}, {"$ref": "c", "$id": 6}]};
    let hit = common::filter(doc! {"refs": {"$elemMatch": {"$ref": "c", "$id": 5}}});
    assert!(hit.matches(&common::raw(&d)));
    let miss = common::filter(doc! {"refs": {"$elemMatch": {"$ref": "c", "$id": 7}}});
    assert!(!miss.matches(&common::raw(&d)));
    let top = common::filter(doc! {"$id": 5});
    assert!(top.matches(&common::raw(&doc! {"$id": 5})));
}
