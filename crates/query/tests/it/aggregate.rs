//! Pipeline parsing and the stages added for sessions and write stages: `$addFields`/`$set`,
//! and `$out`/`$merge` as sinks that only the last stage may be.

use bson::{Bson, doc, rawdoc};
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

fn docs(items: Vec<bson::Document>) -> Vec<bson::RawDocumentBuf> {
    items
        .iter()
        .map(|d| bson::RawDocumentBuf::try_from(d).unwrap())
        .collect()
}

fn plain(out: Vec<bson::RawDocumentBuf>) -> Vec<bson::Document> {
    out.iter()
        .map(|d| bson::Document::try_from(d.as_ref()).unwrap())
        .collect()
}

fn run_on(stages: bson::Document, input: Vec<bson::Document>) -> Vec<bson::Document> {
    plain(parse(stages).unwrap().run(docs(input)).unwrap())
}

#[test]
fn unwind_string_and_document_forms() {
    let input = vec![
        doc! { "_id": 1, "a": [1, 2] },
        doc! { "_id": 2, "a": [] },
        doc! { "_id": 3, "a": Bson::Null },
        doc! { "_id": 4 },
        doc! { "_id": 5, "a": "x" },
    ];
    assert_eq!(
        run_on(doc! { "p": [ { "$unwind": "$a" } ] }, input.clone()),
        vec![
            doc! { "_id": 1, "a": 1 },
            doc! { "_id": 1, "a": 2 },
            doc! { "_id": 5, "a": "x" }
        ]
    );
    assert_eq!(
        run_on(
            doc! { "p": [ { "$unwind": { "path": "$a", "includeArrayIndex": "i", "preserveNullAndEmptyArrays": true } } ] },
            input
        ),
        vec![
            doc! { "_id": 1, "a": 1, "i": 0i64 },
            doc! { "_id": 1, "a": 2, "i": 1i64 },
            doc! { "_id": 2, "i": Bson::Null },
            doc! { "_id": 3, "a": Bson::Null, "i": Bson::Null },
            doc! { "_id": 4, "i": Bson::Null },
            doc! { "_id": 5, "a": "x", "i": Bson::Null },
        ]
    );
    assert_eq!(
        run_on(
            doc! { "p": [ { "$unwind": "$o.list" } ] },
            vec![doc! { "o": { "list": ["p", "q"] } }]
        ),
        vec![doc! { "o": { "list": "p" } }, doc! { "o": { "list": "q" } }]
    );
    let code = |spec: Bson| {
        parse(doc! { "p": [ { "$unwind": spec } ] })
            .err()
            .unwrap()
            .code
    };
    assert_eq!(code("a".into()), 28818);
    assert_eq!(code(doc! { "path": "$a", "bogus": 1 }.into()), 28811);
    assert_eq!(
        code(doc! { "path": "$a", "includeArrayIndex": "$i" }.into()),
        28822
    );
    assert_eq!(code(doc! { "includeArrayIndex": "i" }.into()), 28812);
    assert_eq!(code(5.into()), 15981);
}

fn lookup_run(
    stages: bson::Document,
    input: Vec<bson::Document>,
    foreign: Vec<bson::Document>,
) -> Vec<bson::Document> {
    let p = parse(stages).unwrap();
    let foreign = docs(foreign);
    let calls = std::cell::Cell::new(0);
    let out = p
        .run_with(docs(input), &|name| {
            calls.set(calls.get() + 1);
            assert_eq!(name, "inv");
            Ok(foreign.clone())
        })
        .unwrap();
    assert!(calls.get() <= 1, "each foreign collection is read once");
    plain(out)
}

#[test]
fn lookup_equality_form_with_array_semantics() {
    let foreign = vec![
        doc! { "_id": 10, "sku": "a" },
        doc! { "_id": 11, "sku": ["b", "c"] },
        doc! { "_id": 12 },
        doc! { "_id": 13, "sku": 1.0 },
    ];
    let out = lookup_run(
        doc! { "p": [ { "$lookup": { "from": "inv", "localField": "item", "foreignField": "sku", "as": "m" } },
        { "$project": { "ids": "$m._id" } } ] },
        vec![
            doc! { "_id": 1, "item": "a" },
            doc! { "_id": 2, "item": ["c", "a"] },
            doc! { "_id": 3 },
            doc! { "_id": 4, "item": 1 },
            doc! { "_id": 5, "item": "zzz" },
        ],
        foreign,
    );
    assert_eq!(
        out,
        vec![
            doc! { "_id": 1, "ids": [10] },
            doc! { "_id": 2, "ids": [10, 11] },
            // Missing local matches foreign documents whose field is missing (or null).
            doc! { "_id": 3, "ids": [12] },
            // 1 and 1.0 are equal, as in a query.
            doc! { "_id": 4, "ids": [13] },
            doc! { "_id": 5, "ids": [] },
        ]
    );
}

#[test]
fn lookup_pipeline_form_with_let_and_combined_form() {
    let foreign = vec![
        doc! { "_id": 10, "sku": "a", "qty": 5 },
        doc! { "_id": 11, "sku": "a", "qty": 50 },
        doc! { "_id": 12, "sku": "b", "qty": 100 },
    ];
    let input = vec![
        doc! { "_id": 1, "item": "a", "min": 10 },
        doc! { "_id": 2, "item": "b", "min": 1 },
    ];
    let out = lookup_run(
        doc! { "p": [ { "$lookup": { "from": "inv", "let": { "it": "$item", "lo": "$min" }, "pipeline": [
            { "$match": { "$expr": { "$and": [ { "$eq": ["$sku", "$$it"] }, { "$gte": ["$qty", "$$lo"] } ] } } },
            { "$project": { "_id": 1 } }
        ], "as": "m" } } ] },
        input.clone(),
        foreign.clone(),
    );
    assert_eq!(
        out[0].get_array("m").unwrap(),
        &vec![Bson::Document(doc! { "_id": 11 })]
    );
    assert_eq!(
        out[1].get_array("m").unwrap(),
        &vec![Bson::Document(doc! { "_id": 12 })]
    );
    let out = lookup_run(
        doc! { "p": [ { "$lookup": { "from": "inv", "localField": "item", "foreignField": "sku", "let": { "lo": "$min" },
        "pipeline": [ { "$match": { "$expr": { "$lt": ["$qty", { "$multiply": ["$$lo", 1] }] } } }, { "$project": { "_id": 1 } } ], "as": "m" } } ] },
        input,
        foreign,
    );
    assert_eq!(
        out[0].get_array("m").unwrap(),
        &vec![Bson::Document(doc! { "_id": 10 })]
    );
    assert_eq!(out[1].get_array("m").unwrap(), &Vec::<Bson>::new());
    // Pipeline variables are unknown outside the $lookup that binds them.
    assert_eq!(
        parse(doc! { "p": [ { "$match": { "$expr": "$$it" } } ] })
            .err()
            .unwrap()
            .code,
        17276
    );
    assert!(
        parse(doc! { "p": [ { "$lookup": { "from": "x", "localField": "a", "as": "m" } } ] })
            .is_err()
    );
    assert!(parse(doc! { "p": [ { "$lookup": { "from": "x", "pipeline": [ { "$out": "y" } ], "as": "m" } } ] }).is_err());
}

#[test]
fn foreign_collections_are_found_at_any_depth() {
    let p = parse(doc! { "p": [
        { "$lookup": { "from": "a", "localField": "x", "foreignField": "y", "as": "m" } },
        { "$facet": { "f": [ { "$lookup": { "from": "b", "pipeline": [
            { "$lookup": { "from": "c", "pipeline": [], "as": "n" } } ], "as": "k" } } ] } },
        { "$lookup": { "from": "a", "pipeline": [], "as": "z" } },
    ] })
    .unwrap();
    assert_eq!(p.foreign_collections(), vec!["a", "b", "c"]);
    assert!(
        parse(doc! { "p": [ { "$match": {} } ] })
            .unwrap()
            .foreign_collections()
            .is_empty()
    );
    // Without a source of foreign documents, a $lookup fails rather than joining nothing.
    let p =
        parse(doc! { "p": [ { "$lookup": { "from": "a", "pipeline": [], "as": "z" } } ] }).unwrap();
    assert!(p.run(docs(vec![doc! {}])).is_err());
}

#[test]
fn facet_sort_by_count_sample_documents() {
    let input = vec![
        doc! { "_id": 1, "t": "x" },
        doc! { "_id": 2, "t": "y" },
        doc! { "_id": 3, "t": "x" },
    ];
    let out = run_on(
        doc! { "p": [ { "$facet": {
            "byT": [ { "$sortByCount": "$t" } ],
            "n": [ { "$count": "c" } ],
        } } ] },
        input.clone(),
    );
    assert_eq!(
        out,
        vec![
            doc! { "byT": [ { "_id": "x", "count": 2 }, { "_id": "y", "count": 1 } ], "n": [ { "c": 3 } ] }
        ]
    );
    assert_eq!(
        parse(doc! { "p": [ { "$facet": { "f": [ { "$facet": { "g": [] } } ] } } ] })
            .err()
            .unwrap()
            .code,
        40600
    );
    assert_eq!(
        parse(doc! { "p": [ { "$sortByCount": "t" } ] })
            .err()
            .unwrap()
            .code,
        40148
    );
    let out = run_on(
        doc! { "p": [ { "$sample": { "size": 2 } } ] },
        input.clone(),
    );
    assert_eq!(out.len(), 2);
    assert_ne!(out[0], out[1]);
    assert!(out.iter().all(|d| input.contains(d)));
    assert_eq!(
        run_on(
            doc! { "p": [ { "$sample": { "size": 10 } } ] },
            input.clone()
        )
        .len(),
        3
    );
    assert_eq!(
        parse(doc! { "p": [ { "$sample": { "size": -1 } } ] })
            .err()
            .unwrap()
            .code,
        28747
    );
    let p = parse(doc! { "p": [ { "$documents": [ { "a": 1 }, { "a": { "$add": [1, 1] } } ] }, { "$match": { "a": 2 } } ] }).unwrap();
    assert!(p.starts_with_documents());
    assert!(p.leading_match().is_none());
    assert_eq!(plain(p.run(Vec::new()).unwrap()), vec![doc! { "a": 2 }]);
    assert!(parse(doc! { "p": [ { "$match": {} }, { "$documents": [] } ] }).is_err());
}

#[test]
fn group_with_expressions_and_accumulators() {
    let input = vec![
        doc! { "k": "a", "v": 1, "o": { "x": 1 } },
        doc! { "k": "A", "v": 2.5, "o": { "y": 2 } },
        doc! { "k": "b", "v": i32::MAX, "o": Bson::Null },
        doc! { "k": "b", "v": 1 },
    ];
    let out = run_on(
        doc! { "p": [ { "$group": {
            "_id": { "$toLower": "$k" },
            "sum": { "$sum": "$v" },
            "avg": { "$avg": "$v" },
            "merged": { "$mergeObjects": "$o" },
            "sd": { "$stdDevPop": "$v" },
            "n": { "$count": {} },
            "doubled": { "$push": { "$multiply": ["$v", 2] } },
        } }, { "$sort": { "_id": 1 } } ] },
        input,
    );
    assert_eq!(out[0].get_str("_id").unwrap(), "a");
    assert_eq!(out[0].get("sum"), Some(&Bson::Double(3.5)));
    assert_eq!(out[0].get("avg"), Some(&Bson::Double(1.75)));
    assert_eq!(
        out[0].get_document("merged").unwrap(),
        &doc! { "x": 1, "y": 2 }
    );
    assert_eq!(out[0].get("sd"), Some(&Bson::Double(0.75)));
    assert_eq!(out[0].get("n"), Some(&Bson::Int32(2)));
    assert_eq!(
        out[0].get("doubled"),
        Some(&Bson::Array(vec![2.into(), 5.0.into()]))
    );
    // int32 overflow in $sum widens to long rather than wrapping.
    assert_eq!(
        out[1].get("sum"),
        Some(&Bson::Int64(i64::from(i32::MAX) + 1))
    );
    assert_eq!(
        parse(doc! { "p": [ { "$group": { "_id": 1, "s": { "$sum": [1, 2] } } } ] })
            .err()
            .unwrap()
            .code,
        40237
    );
    assert_eq!(
        parse(doc! { "p": [ { "$group": { "_id": 1, "s": { "$bogus": 1 } } } ] })
            .err()
            .unwrap()
            .code,
        15952
    );
}

#[test]
fn bucket_groups_by_boundaries() {
    let input = vec![
        doc! { "p": 5 },
        doc! { "p": 15 },
        doc! { "p": 12 },
        doc! { "p": 500 },
        doc! { "q": 1 },
    ];
    let out = run_on(
        doc! { "p": [ { "$bucket": { "groupBy": "$p", "boundaries": [0, 10, 20], "default": "other",
        "output": { "n": { "$sum": 1 }, "ps": { "$push": "$p" } } } } ] },
        input,
    );
    assert_eq!(
        out,
        vec![
            doc! { "_id": 0, "n": 1, "ps": [5] },
            doc! { "_id": 10, "n": 2, "ps": [15, 12] },
            doc! { "_id": "other", "n": 2, "ps": [500] },
        ]
    );
    assert_eq!(
        parse(doc! { "p": [ { "$bucket": { "groupBy": "$p", "boundaries": [10, 0] } } ] })
            .err()
            .unwrap()
            .code,
        40194
    );
}

#[test]
fn blocking_stages_respect_the_memory_limit() {
    let input: Vec<bson::Document> = (0..100)
        .map(|i| doc! { "_id": i, "pad": "x".repeat(1000) })
        .collect();
    for stages in [
        doc! { "p": [ { "$sort": { "_id": -1 } } ] },
        doc! { "p": [ { "$group": { "_id": "$_id", "all": { "$push": "$pad" } } } ] },
        doc! { "p": [ { "$facet": { "f": [ { "$match": {} } ] } } ] },
        doc! { "p": [ { "$addFields": { "a": [1, 2, 3] } }, { "$unwind": "$a" } ] },
    ] {
        let p = parse(stages.clone()).unwrap().with_memory_limit(50_000);
        let err = p.run(docs(input.clone())).unwrap_err();
        assert_eq!(
            (err.code, err.code_name),
            (292, "QueryExceededMemoryLimitNoDiskUseAllowed"),
            "{stages}"
        );
        assert!(err.message.contains("$limit"), "{}", err.message);
        // The default limit is far above this input.
        assert!(parse(stages).unwrap().run(docs(input.clone())).is_ok());
    }
    assert_eq!(mangrove_query::DEFAULT_MEMORY_LIMIT, 100 * 1024 * 1024);
}

#[test]
fn project_stage_takes_expressions() {
    let out = run_on(
        doc! { "p": [ { "$project": { "_id": 0, "x": "$a.b", "y": { "$add": ["$n", 1] }, "z": { "$literal": "$notapath" }, "w": ["$n", 2] } } ] },
        vec![doc! { "a": { "b": 7 }, "n": 1 }],
    );
    assert_eq!(
        out,
        vec![doc! { "x": 7, "y": 2, "z": "$notapath", "w": [1, 2] }]
    );
    // `$slice` with an array expression is the aggregation operator, not the find projection.
    let out = run_on(
        doc! { "p": [ { "$project": { "_id": 0, "s": { "$slice": ["$arr", 1, 2] }, "t": { "$slice": 1 } } } ] },
        vec![doc! { "arr": [1, 2, 3, 4], "t": [9, 8] }],
    );
    assert_eq!(out, vec![doc! { "s": [2, 3], "t": [9] }]);
}

#[test]
fn add_fields_merges_embedded_objects_and_reaches_into_arrays() {
    let out = run_on(
        doc! { "p": [ { "$addFields": { "specs": { "fuel": "unleaded", "n": { "$add": ["$x", 1] } }, "items.tag": "t", "x": "$$REMOVE" } } ] },
        vec![doc! { "x": 1, "specs": { "doors": 4 }, "items": [ { "k": 1 }, 5, { "k": 2 } ] }],
    );
    assert_eq!(
        out,
        vec![
            doc! { "specs": { "doors": 4, "fuel": "unleaded", "n": 2 }, "items": [ { "k": 1, "tag": "t" }, 5, { "k": 2, "tag": "t" } ] }
        ]
    );
}

#[test]
fn union_with_appends_another_collection() {
    let p = parse(doc! { "p": [ { "$unionWith": { "coll": "inv", "pipeline": [ { "$match": { "k": 2 } } ] } }, { "$project": { "_id": 0, "k": 1 } } ] }).unwrap();
    assert_eq!(p.foreign_collections(), vec!["inv"]);
    let foreign = docs(vec![doc! { "k": 1 }, doc! { "k": 2 }]);
    let out = p
        .run_with(docs(vec![doc! { "k": 0 }]), &|name| {
            assert_eq!(name, "inv");
            Ok(foreign.clone())
        })
        .unwrap();
    assert_eq!(plain(out), vec![doc! { "k": 0 }, doc! { "k": 2 }]);
}

#[test]
fn n_accumulators_and_add_to_set() {
    let input: Vec<bson::Document> = [5, 1, 4, 2, 3]
        .iter()
        .map(|v| doc! { "g": 1, "v": *v })
        .chain([doc! { "g": 1 }, doc! { "g": 1, "v": 1.0 }])
        .collect();
    let out = run_on(
        doc! { "p": [ { "$group": { "_id": "$g",
            "first": { "$firstN": { "input": "$v", "n": 2 } },
            "last": { "$lastN": { "input": "$v", "n": 2 } },
            "min": { "$minN": { "input": "$v", "n": 3 } },
            "max": { "$maxN": { "input": "$v", "n": 2 } },
            "set": { "$addToSet": "$v" },
        } } ] },
        input,
    );
    assert_eq!(
        out[0].get_array("first").unwrap(),
        &vec![Bson::Int32(5), Bson::Int32(1)]
    );
    assert_eq!(
        out[0].get_array("last").unwrap(),
        &vec![Bson::Null, Bson::Double(1.0)]
    );
    assert_eq!(
        out[0].get_array("min").unwrap(),
        &vec![Bson::Int32(1), Bson::Double(1.0), Bson::Int32(2)]
    );
    assert_eq!(
        out[0].get_array("max").unwrap(),
        &vec![Bson::Int32(5), Bson::Int32(4)]
    );
    // 1 and 1.0 are one member of the set.
    assert_eq!(
        out[0].get_array("set").unwrap(),
        &vec![
            Bson::Int32(5),
            Bson::Int32(1),
            Bson::Int32(4),
            Bson::Int32(2),
            Bson::Int32(3)
        ]
    );
    let p = parse(
        doc! { "p": [ { "$group": { "_id": 1, "f": { "$firstN": { "input": "$v", "n": 0 } } } } ] },
    )
    .unwrap();
    assert_eq!(p.run(docs(vec![doc! {}])).unwrap_err().code, 5787908);
}

#[test]
fn graph_lookup_walks_the_hierarchy() {
    let employees = docs(vec![
        doc! { "_id": 1, "name": "Dev" },
        doc! { "_id": 2, "name": "Eliot", "reportsTo": "Dev" },
        doc! { "_id": 3, "name": "Ron", "reportsTo": "Eliot" },
        doc! { "_id": 4, "name": "Andrew", "reportsTo": "Eliot" },
        doc! { "_id": 5, "name": "Asya", "reportsTo": "Ron" },
        doc! { "_id": 6, "name": "Dan", "reportsTo": "Andrew" },
    ]);
    let p = parse(doc! { "p": [
        { "$match": { "name": "Asya" } },
        { "$graphLookup": { "from": "emp", "startWith": "$reportsTo", "connectFromField": "reportsTo",
            "connectToField": "name", "as": "chain", "depthField": "d", "maxDepth": 1 } },
        { "$project": { "chain": { "$map": { "input": "$chain", "in": ["$$this.name", "$$this.d"] } } } },
    ] })
    .unwrap();
    assert_eq!(p.foreign_collections(), vec!["emp"]);
    let out = p
        .run_with(vec![employees[4].clone()], &|_| Ok(employees.clone()))
        .unwrap();
    assert_eq!(
        plain(out),
        vec![doc! { "_id": 5, "chain": [ ["Ron", 0i64], ["Eliot", 1i64] ] }]
    );
    // Without maxDepth the search runs on, reaching each document once even round a cycle
    // (Ron, Eliot, Dev, and Asya herself; never Andrew or Dan).
    let mut cyclic = employees.clone();
    cyclic[0] =
        bson::RawDocumentBuf::try_from(&doc! { "_id": 1, "name": "Dev", "reportsTo": "Asya" })
            .unwrap();
    let p = parse(doc! { "p": [
        { "$graphLookup": { "from": "emp", "startWith": "$reportsTo", "connectFromField": "reportsTo",
            "connectToField": "name", "as": "chain" } },
        { "$project": { "n": { "$size": "$chain" } } },
    ] })
    .unwrap();
    let out = p
        .run_with(vec![cyclic[4].clone()], &|_| Ok(cyclic.clone()))
        .unwrap();
    assert_eq!(plain(out), vec![doc! { "_id": 5, "n": 4 }]);
    assert_eq!(
        parse(doc! { "p": [ { "$graphLookup": { "from": "emp", "as": "x" } } ] })
            .err()
            .unwrap()
            .code,
        40105
    );
}
