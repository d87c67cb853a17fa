//! Memory and size limits of pipelines and expressions: each bomb fails with mongod's code
//! before the value is built, the limits are configurable, and ordinary work stays unaffected.

use bson::{Bson, Document, RawDocumentBuf, doc};
use mangrove_query::{Limits, Pipeline, QueryError};

fn pipeline(stages: Vec<Document>) -> Pipeline {
    let wrapped = doc! { "p": stages };
    let raw = RawDocumentBuf::try_from(&wrapped).unwrap();
    Pipeline::parse(raw.get_array("p").unwrap()).unwrap()
}

fn run(p: Pipeline, input: Vec<Document>) -> Result<Vec<Document>, QueryError> {
    let input = input
        .iter()
        .map(|d| RawDocumentBuf::try_from(d).unwrap())
        .collect();
    Ok(p.run(input)?
        .iter()
        .map(|d| Document::try_from(d.as_ref()).unwrap())
        .collect())
}

/// The error of `expr` evaluated in a `$project` over one document.
fn expr_error(expr: impl Into<Bson>) -> QueryError {
    let p = pipeline(vec![doc! { "$project": { "v": expr.into() } }]);
    run(p, vec![doc! { "_id": 1 }]).unwrap_err()
}

fn doubling(op: &str, initial: Bson, n: i32) -> Document {
    doc! { "$reduce": { "input": { "$range": [0, n] }, "initialValue": initial, "in": { op: ["$$value", "$$value"] } } }
}

#[test]
fn strings_stop_below_16mb_before_they_are_built() {
    let e = expr_error(doubling("$concat", "ab".into(), 40));
    assert_eq!(
        (e.code, e.code_name),
        (16493, "Location16493"),
        "{}",
        e.message
    );
    assert!(
        e.message
            .contains("Tried to create string longer than 16MB")
    );
    assert!(
        e.message.contains("16777216 bytes"),
        "the first string too long: {}",
        e.message
    );
    // A string just under the limit is fine.
    let p = pipeline(vec![
        doc! { "$project": { "n": { "$strLenBytes": doubling("$concat", "ab".into(), 22) } } },
    ]);
    assert_eq!(
        run(p, vec![doc! {}]).unwrap()[0].get_i32("n").unwrap(),
        8 << 20
    );
    // $replaceAll that would grow a string past 16MB.
    let big = doubling("$concat", "ab".into(), 20); // 2 MB of "abab..."
    let e = expr_error(
        doc! { "$replaceAll": { "input": big, "find": "a", "replacement": "0123456789abcdef" } },
    );
    assert_eq!(e.code, 16493, "{}", e.message);
}

#[test]
fn arrays_are_bounded_by_the_expression_budget() {
    let e = expr_error(doubling("$concatArrays", Bson::Array(vec![1.into()]), 40));
    assert_eq!(
        (e.code, e.code_name),
        (146, "ExceededMemoryLimit"),
        "{}",
        e.message
    );
    assert!(
        e.message
            .starts_with("$concatArrays would use too much memory ("),
        "{}",
        e.message
    );
    // $split into millions of pieces is refused from the count of separators.
    let e = expr_error(doc! { "$split": [doubling("$concat", "-".into(), 22), "-"] });
    assert_eq!(e.code, 146, "{}", e.message);
    assert!(e.message.starts_with("$split"), "{}", e.message);
    // $regexFindAll making a document per match.
    let e = expr_error(
        doc! { "$regexFindAll": { "input": doubling("$concat", "ab".into(), 20), "regex": "a" } },
    );
    assert_eq!(e.code, 146, "{}", e.message);
    // Nested arrays deeper than 100 levels cannot be built.
    let e = expr_error(
        doc! { "$reduce": { "input": { "$range": [0, 1000] }, "initialValue": [], "in": ["$$value"] } },
    );
    assert_eq!((e.code, e.code_name), (15, "Overflow"), "{}", e.message);
}

#[test]
fn range_is_checked_from_its_arguments() {
    let e = expr_error(doc! { "$range": [0, 1_000_000_000] });
    assert_eq!((e.code, e.code_name), (146, "ExceededMemoryLimit"));
    assert!(
        e.message.starts_with("$range would use too much memory ("),
        "{}",
        e.message
    );
    assert!(
        e.message
            .contains("and cannot spill to disk. Memory limit: 104857600 bytes"),
        "{}",
        e.message
    );
    // Configurable, as mongod's internalQueryMaxRangeBytes.
    let small = Limits {
        range_bytes: 10_000,
        ..Limits::default()
    };
    let p =
        pipeline(vec![doc! { "$project": { "r": { "$range": [0, 1000] } } }]).with_limits(small);
    assert_eq!(run(p, vec![doc! {}]).unwrap_err().code, 146);
    let p = pipeline(vec![
        doc! { "$project": { "r": { "$size": { "$range": [0, 50] } } } },
    ])
    .with_limits(small);
    assert_eq!(run(p, vec![doc! {}]).unwrap()[0].get_i32("r").unwrap(), 50);
}

#[test]
fn what_one_evaluation_holds_is_bounded_and_configurable() {
    let small = Limits {
        expression_bytes: 200_000,
        ..Limits::default()
    };
    // Each $range alone fits; a $map's output beside its input does not.
    let map = doc! { "$map": { "input": { "$range": [0, 1000] }, "in": ["$$this", "$$this"] } };
    let p = pipeline(vec![doc! { "$project": { "m": map.clone() } }]).with_limits(small);
    let e = run(p, vec![doc! {}]).unwrap_err();
    assert_eq!(e.code, 146, "{}", e.message);
    assert!(
        e.message.contains("would use too much memory"),
        "{}",
        e.message
    );
    assert!(
        run(
            pipeline(vec![doc! { "$project": { "m": map } }]),
            vec![doc! {}]
        )
        .is_ok()
    );
    // Many computed fields cannot add up to more than the budget either.
    let mut fields = Document::new();
    for i in 0..10 {
        fields.insert(format!("f{i}"), doc! { "$range": [0, 200] });
    }
    let p = pipeline(vec![doc! { "$project": fields.clone() }]).with_limits(small);
    assert_eq!(run(p, vec![doc! {}]).unwrap_err().code, 146);
    let p = pipeline(vec![doc! { "$addFields": fields }]).with_limits(small);
    assert_eq!(run(p, vec![doc! {}]).unwrap_err().code, 146);
}

fn padded(n: i32, group: impl Fn(i32) -> i32) -> Vec<Document> {
    (0..n)
        .map(|i| doc! { "_id": i, "g": group(i), "pad": "x".repeat(1000) })
        .collect()
}

#[test]
fn push_and_add_to_set_have_their_own_limits() {
    let limits = Limits {
        push_bytes: 20_000,
        add_to_set_bytes: 20_000,
        ..Limits::default()
    };
    let push = pipeline(vec![
        doc! { "$group": { "_id": null, "all": { "$push": "$$ROOT" } } },
    ])
    .with_limits(limits);
    let e = run(push, padded(100, |_| 0)).unwrap_err();
    assert_eq!((e.code, e.code_name), (146, "ExceededMemoryLimit"));
    assert!(
        e.message.starts_with(
            "$push used too much memory and cannot spill to disk. Memory limit: 20000 bytes"
        ),
        "{}",
        e.message
    );
    let set = pipeline(vec![
        doc! { "$group": { "_id": null, "all": { "$addToSet": "$pad" } } },
    ])
    .with_limits(limits);
    // 100 equal values are one element.
    assert_eq!(
        run(set, padded(100, |_| 0)).unwrap()[0]
            .get_array("all")
            .unwrap()
            .len(),
        1
    );
    let set = pipeline(vec![
        doc! { "$group": { "_id": null, "all": { "$addToSet": "$$ROOT" } } },
    ])
    .with_limits(limits);
    let e = run(set, padded(100, |_| 0)).unwrap_err();
    assert!(
        e.message.starts_with("$addToSet used too much memory"),
        "{}",
        e.message
    );
}

#[test]
fn group_memory_is_counted_exactly_and_names_the_culprit() {
    let limits = Limits {
        group_bytes: 50_000,
        ..Limits::default()
    };
    // $last and $max replace their value: a long stream over one group never overcounts.
    let last = pipeline(vec![doc! { "$group": { "_id": "$g", "last": { "$last": "$$ROOT" }, "max": { "$max": "$pad" }, "merged": { "$mergeObjects": "$$ROOT" } } }]).with_limits(limits);
    let out = run(last, padded(500, |i| i % 2)).unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[0].get_document("last").unwrap().get_i32("_id").unwrap(),
        498
    );
    // Many groups past the stage limit: 292 (Mangrove cannot spill them).
    let many = pipeline(vec![
        doc! { "$group": { "_id": "$_id", "p": { "$first": "$pad" } } },
    ])
    .with_limits(limits);
    let e = run(many, padded(100, |i| i)).unwrap_err();
    assert_eq!(
        (e.code, e.code_name),
        (292, "QueryExceededMemoryLimitNoDiskUseAllowed")
    );
    assert!(
        e.message
            .contains("$group exceeded the per-stage memory limit"),
        "{}",
        e.message
    );
    // One accumulator holding most of it: that accumulator's 146, as mongod (which would
    // spill the groups but cannot split one $push) reports.
    let one = pipeline(vec![
        doc! { "$group": { "_id": null, "all": { "$push": "$pad" } } },
    ])
    .with_limits(limits);
    let e = run(one, padded(100, |_| 0)).unwrap_err();
    assert_eq!(e.code, 146, "{}", e.message);
    assert!(
        e.message.starts_with("$push used too much memory"),
        "{}",
        e.message
    );
}

#[test]
fn result_documents_over_16mb_are_bson_object_too_large() {
    let eight_mb = || doubling("$concat", "ab".into(), 22);
    let p = pipeline(vec![
        doc! { "$project": { "a": eight_mb(), "b": eight_mb(), "c": eight_mb() } },
    ]);
    let e = run(p, vec![doc! { "_id": 7 }]).unwrap_err();
    assert_eq!((e.code, e.code_name), (10334, "BSONObjectTooLarge"));
    assert!(
        e.message.starts_with("BSONObj size: 25165"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains(
            "is invalid. Size must be between 0 and 16793600(16MB) First element: _id: 7"
        ),
        "{}",
        e.message
    );
    // Larger documents may exist between stages: only results are bounded.
    let p = pipeline(vec![
        doc! { "$project": { "a": eight_mb(), "b": eight_mb(), "c": eight_mb() } },
        doc! { "$project": { "n": { "$strLenBytes": "$a" } } },
    ]);
    assert_eq!(
        run(p, vec![doc! {}]).unwrap()[0].get_i32("n").unwrap(),
        8 << 20
    );
}

#[test]
fn a_result_collected_whole_is_bounded_by_the_stage_limit() {
    let p = pipeline(vec![doc! { "$unwind": "$a" }]).with_memory_limit(50_000);
    let input = vec![doc! { "a": (0..100).collect::<Vec<i32>>(), "pad": "x".repeat(1000) }];
    let e = run(p, input).unwrap_err();
    assert_eq!(e.code, 292, "{}", e.message);
}

#[test]
fn a_final_group_too_large_to_return_fails_before_it_is_serialized() {
    let input: Vec<Document> = (0..20)
        .map(|i| doc! { "_id": i, "pad": "x".repeat(1 << 20) })
        .collect();
    let push = || doc! { "$group": { "_id": "all", "docs": { "$push": "$$ROOT" } } };
    let e = run(pipeline(vec![push()]), input.clone()).unwrap_err();
    assert_eq!((e.code, e.code_name), (10334, "BSONObjectTooLarge"));
    assert!(
        e.message.contains("First element: _id: \"all...\""),
        "{}",
        e.message
    );
    // Between stages the large group is fine.
    let p = pipeline(vec![
        push(),
        doc! { "$project": { "n": { "$size": "$docs" } } },
    ]);
    assert_eq!(run(p, input.clone()).unwrap()[0].get_i32("n").unwrap(), 20);
    // So is a $facet's, which is checked the same way when it is the result.
    let facet = doc! { "$facet": { "all": [{ "$match": {} }] } };
    assert_eq!(run(pipeline(vec![facet]), input).unwrap_err().code, 10334);
}
