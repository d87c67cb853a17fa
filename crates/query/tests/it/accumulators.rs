//! `$top`/`$bottom`/`$topN`/`$bottomN`, `$percentile`/`$median` (accumulators and expressions)
//! and `$bucketAuto`, checked against the examples of MongoDB's documentation.

use bson::{Bson, Document, doc};
use mangrove_query::{Pipeline, QueryError};

fn run(stages: Vec<Document>, input: Vec<Document>) -> Result<Vec<Document>, QueryError> {
    let wrapped = doc! { "p": stages.into_iter().map(Bson::Document).collect::<Vec<_>>() };
    let raw = bson::RawDocumentBuf::try_from(&wrapped).unwrap();
    let p = Pipeline::parse(raw.get_array("p").unwrap())?;
    let docs = input
        .iter()
        .map(|d| bson::RawDocumentBuf::try_from(d).unwrap())
        .collect();
    Ok(p.run(docs)?
        .iter()
        .map(|d| Document::try_from(d.as_ref()).unwrap())
        .collect())
}

fn code(stages: Vec<Document>, input: Vec<Document>) -> i32 {
    match run(stages, input) {
        Ok(out) => panic!("expected an error, got {out:?}"),
        Err(e) => e.code,
    }
}

fn game_scores() -> Vec<Document> {
    let mut out = Vec::new();
    for (game, scores) in [("G1", [31, 33, 99, 1]), ("G2", [10, 14, 66, 80])] {
        for (player, score) in ["PlayerA", "PlayerB", "PlayerC", "PlayerD"]
            .iter()
            .zip(scores)
        {
            out.push(doc! { "playerId": *player, "gameId": game, "score": score });
        }
    }
    out
}

fn by_game(acc: Document) -> Vec<Document> {
    vec![
        doc! { "$group": { "_id": "$gameId", "r": acc } },
        doc! { "$sort": { "_id": 1 } },
    ]
}

#[test]
fn top_and_bottom_follow_the_documentation() {
    let top = doc! { "$top": { "output": ["$playerId", "$score"], "sortBy": { "score": -1 } } };
    let out = run(by_game(top), game_scores()).unwrap();
    assert_eq!(out[0], doc! { "_id": "G1", "r": ["PlayerC", 99] });
    assert_eq!(out[1], doc! { "_id": "G2", "r": ["PlayerD", 80] });
    let bottom =
        doc! { "$bottom": { "output": ["$playerId", "$score"], "sortBy": { "score": -1 } } };
    let out = run(by_game(bottom), game_scores()).unwrap();
    assert_eq!(out[0], doc! { "_id": "G1", "r": ["PlayerD", 1] });
    assert_eq!(out[1], doc! { "_id": "G2", "r": ["PlayerA", 10] });
}

#[test]
fn top_n_and_bottom_n_follow_the_documentation() {
    let top =
        doc! { "$topN": { "output": ["$playerId", "$score"], "sortBy": { "score": -1 }, "n": 3 } };
    let out = run(by_game(top), game_scores()).unwrap();
    assert_eq!(
        out[0],
        doc! { "_id": "G1", "r": [["PlayerC", 99], ["PlayerB", 33], ["PlayerA", 31]] }
    );
    assert_eq!(
        out[1],
        doc! { "_id": "G2", "r": [["PlayerD", 80], ["PlayerC", 66], ["PlayerB", 14]] }
    );
    let bottom = doc! { "$bottomN": { "output": ["$playerId", "$score"], "sortBy": { "score": -1 }, "n": 3 } };
    let out = run(by_game(bottom), game_scores()).unwrap();
    assert_eq!(
        out[0],
        doc! { "_id": "G1", "r": [["PlayerB", 33], ["PlayerA", 31], ["PlayerD", 1]] }
    );
    assert_eq!(
        out[1],
        doc! { "_id": "G2", "r": [["PlayerC", 66], ["PlayerB", 14], ["PlayerA", 10]] }
    );
    // n from the group key, as the documentation's "n based on the group key" example.
    let dynamic = doc! { "$topN": { "output": "$score", "sortBy": { "score": 1 },
    "n": { "$cond": { "if": { "$eq": ["$gameId", "G2"] }, "then": 1, "else": 2 } } } };
    let out = run(by_game(dynamic), game_scores()).unwrap();
    assert_eq!(out[0], doc! { "_id": "G1", "r": [1, 31] });
    assert_eq!(out[1], doc! { "_id": "G2", "r": [10] });
}

#[test]
fn top_family_errors_carry_mongod_codes() {
    let g = |acc: Document| by_game(acc);
    assert_eq!(
        code(
            g(doc! { "$topN": { "output": "$x", "sortBy": { "x": 1 } } }),
            vec![]
        ),
        5788003
    );
    assert_eq!(
        code(
            g(doc! { "$top": { "output": "$x", "sortBy": { "x": 1 }, "n": 2 } }),
            vec![]
        ),
        5788002
    );
    assert_eq!(
        code(g(doc! { "$top": { "sortBy": { "x": 1 } } }), vec![]),
        5788004
    );
    assert_eq!(
        code(g(doc! { "$top": { "output": "$x" } }), vec![]),
        5788005
    );
    assert_eq!(code(g(doc! { "$top": 1 }), vec![]), 5788001);
    let zero = g(doc! { "$topN": { "output": "$x", "sortBy": { "x": 1 }, "n": 0 } });
    assert_eq!(code(zero, game_scores()), 5787908);
    let frac = g(doc! { "$topN": { "output": "$x", "sortBy": { "x": 1 }, "n": 1.5 } });
    assert_eq!(code(frac, game_scores()), 5787903);
    let text = g(doc! { "$topN": { "output": "$x", "sortBy": { "x": 1 }, "n": "a" } });
    assert_eq!(code(text, game_scores()), 5787902);
}

fn test_scores() -> Vec<Document> {
    vec![
        doc! { "studentId": "2345", "test01": 62, "test02": 81, "test03": 80 },
        doc! { "studentId": "2356", "test01": 60, "test02": 83, "test03": 79 },
        doc! { "studentId": "2358", "test01": 67, "test02": 82, "test03": 78 },
        doc! { "studentId": "2367", "test01": 64, "test02": 72, "test03": 77 },
        doc! { "studentId": "2369", "test01": 60, "test02": 53, "test03": 72 },
    ]
}

#[test]
fn percentile_and_median_accumulators_follow_the_documentation() {
    let out = run(
        vec![doc! { "$group": { "_id": Bson::Null,
        "p": { "$percentile": { "input": "$test01", "p": [0.5, 0.95], "method": "approximate" } },
        "m": { "$median": { "input": "$test01", "method": "approximate" } },
        "none": { "$percentile": { "input": "$nope", "p": [0.5, 0.9], "method": "approximate" } },
        "noneMedian": { "$median": { "input": "$studentId", "method": "approximate" } } } }],
        test_scores(),
    )
    .unwrap();
    assert_eq!(
        out[0],
        doc! { "_id": Bson::Null, "p": [62.0, 67.0], "m": 62.0, "none": [Bson::Null, Bson::Null], "noneMedian": Bson::Null }
    );
}

#[test]
fn percentile_and_median_expressions_follow_the_documentation() {
    let out = run(
        vec![
            doc! { "$project": { "_id": 0, "studentId": 1,
                "testPercentiles": { "$percentile": { "input": ["$test01", "$test02", "$test03"], "p": [0.5, 0.95], "method": "approximate" } },
                "testMedian": { "$median": { "input": ["$test01", "$test02", "$test03"], "method": "approximate" } },
                "scalar": { "$median": { "input": "$test01", "method": "approximate" } } } },
        ],
        test_scores(),
    )
    .unwrap();
    assert_eq!(
        out[0],
        doc! { "studentId": "2345", "testPercentiles": [80.0, 81.0], "testMedian": 80.0, "scalar": 62.0 }
    );
    assert_eq!(
        out[4],
        doc! { "studentId": "2369", "testPercentiles": [60.0, 72.0], "testMedian": 60.0, "scalar": 60.0 }
    );
}

#[test]
fn percentile_errors_carry_mongod_codes() {
    let group = |spec: Document| {
        vec![doc! { "$group": { "_id": Bson::Null, "x": { "$percentile": spec } } }]
    };
    assert_eq!(
        code(
            group(doc! { "input": "$a", "p": [1.5], "method": "approximate" }),
            vec![]
        ),
        7750303
    );
    assert_eq!(
        code(
            group(doc! { "input": "$a", "p": [], "method": "approximate" }),
            vec![]
        ),
        7750301
    );
    assert_eq!(
        code(
            group(doc! { "input": "$a", "p": ["x"], "method": "approximate" }),
            vec![]
        ),
        7750302
    );
    assert_eq!(
        code(
            group(doc! { "input": "$a", "p": "$p", "method": "approximate" }),
            vec![]
        ),
        7750300
    );
    assert_eq!(
        code(
            group(doc! { "input": "$a", "p": [0.5], "method": "exact" }),
            vec![]
        ),
        2
    );
    assert_eq!(
        code(
            group(doc! { "input": "$a", "p": [0.5], "method": 1 }),
            vec![]
        ),
        14
    );
    assert_eq!(
        code(group(doc! { "input": "$a", "p": [0.5] }), vec![]),
        40414
    );
    assert_eq!(
        code(
            group(doc! { "input": "$a", "p": [0.5], "method": "approximate", "x": 1 }),
            vec![]
        ),
        40415
    );
    let median_p = vec![
        doc! { "$project": { "m": { "$median": { "input": "$a", "p": [0.5], "method": "approximate" } } } },
    ];
    assert_eq!(code(median_p, vec![]), 40415);
}

fn artwork() -> Vec<Document> {
    [199.99, 280.0, 76.04, 167.30, 483.0, 385.0, 159.0, 118.42]
        .iter()
        .enumerate()
        .map(|(i, p)| doc! { "_id": i as i32 + 1, "price": *p, "year": 1900 + i as i32 })
        .collect()
}

#[test]
fn bucket_auto_follows_the_documentation() {
    let out = run(
        vec![doc! { "$bucketAuto": { "groupBy": "$price", "buckets": 4 } }],
        artwork(),
    )
    .unwrap();
    assert_eq!(
        out,
        vec![
            doc! { "_id": { "min": 76.04, "max": 159.0 }, "count": 2 },
            doc! { "_id": { "min": 159.0, "max": 199.99 }, "count": 2 },
            doc! { "_id": { "min": 199.99, "max": 385.0 }, "count": 2 },
            doc! { "_id": { "min": 385.0, "max": 483.0 }, "count": 2 },
        ]
    );
    // Output accumulators, $top included; more buckets than documents gives one each.
    let out = run(
        vec![
            doc! { "$bucketAuto": { "groupBy": "$price", "buckets": 3, "output": {
            "n": { "$sum": 1 }, "years": { "$push": "$year" },
            "cheapest": { "$top": { "output": "$_id", "sortBy": { "price": 1 } } } } } },
        ],
        artwork(),
    )
    .unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(
        out[0],
        doc! { "_id": { "min": 76.04, "max": 167.30 }, "n": 3, "years": [1902, 1907, 1906], "cheapest": 3 }
    );
    assert_eq!(
        out[2].get_i32("n").unwrap(),
        2,
        "the last bucket takes the rest: {out:?}"
    );
    let out = run(
        vec![doc! { "$bucketAuto": { "groupBy": "$price", "buckets": 20 } }],
        artwork(),
    )
    .unwrap();
    assert_eq!(out.len(), 8);
}

#[test]
fn bucket_auto_keeps_equal_values_together_and_rounds_to_a_series() {
    let input: Vec<Document> = [1, 1, 1, 1, 2, 3]
        .iter()
        .map(|v| doc! { "v": *v })
        .collect();
    let out = run(
        vec![doc! { "$bucketAuto": { "groupBy": "$v", "buckets": 3 } }],
        input,
    )
    .unwrap();
    assert_eq!(
        out,
        vec![
            doc! { "_id": { "min": 1, "max": 2 }, "count": 4 },
            doc! { "_id": { "min": 2, "max": 3 }, "count": 2 },
        ]
    );
    let input: Vec<Document> = (1..=10).map(|v| doc! { "v": v }).collect();
    let out = run(
        vec![doc! { "$bucketAuto": { "groupBy": "$v", "buckets": 2, "granularity": "R5" } }],
        input.clone(),
    )
    .unwrap();
    let bounds: Vec<(f64, f64, i32)> = out
        .iter()
        .map(|d| {
            let id = d.get_document("_id").unwrap();
            (
                id.get_f64("min").unwrap(),
                id.get_f64("max").unwrap(),
                d.get_i32("count").unwrap(),
            )
        })
        .collect();
    assert!(
        (bounds[0].0 - 0.63).abs() < 1e-9 && (bounds[0].1 - 6.3).abs() < 1e-9,
        "{bounds:?}"
    );
    assert_eq!((bounds[0].2, bounds[1].2), (6, 4));
    assert!(
        (bounds[1].0 - 6.3).abs() < 1e-9 && bounds[1].1 == 16.0,
        "{bounds:?}"
    );
    let out = run(
        vec![doc! { "$bucketAuto": { "groupBy": "$v", "buckets": 2, "granularity": "POWERSOF2" } }],
        input,
    )
    .unwrap();
    assert_eq!(
        out[0].get_document("_id").unwrap(),
        &doc! { "min": 0.5, "max": 8 }
    );
    assert_eq!(
        out[1].get_document("_id").unwrap(),
        &doc! { "min": 8, "max": 16 }
    );
}

#[test]
fn bucket_auto_errors_carry_mongod_codes() {
    let one = |spec: Document| vec![doc! { "$bucketAuto": spec }];
    assert_eq!(
        code(one(doc! { "groupBy": "$a", "buckets": 0 }), vec![]),
        40243
    );
    assert_eq!(
        code(one(doc! { "groupBy": "$a", "buckets": "x" }), vec![]),
        40241
    );
    assert_eq!(
        code(one(doc! { "groupBy": "$a", "buckets": 1.5 }), vec![]),
        40242
    );
    assert_eq!(code(one(doc! { "groupBy": "$a" }), vec![]), 40246);
    assert_eq!(
        code(one(doc! { "groupBy": "a", "buckets": 1 }), vec![]),
        40239
    );
    assert_eq!(
        code(one(doc! { "groupBy": "$a", "buckets": 1, "x": 1 }), vec![]),
        40245
    );
    assert_eq!(
        code(
            one(doc! { "groupBy": "$a", "buckets": 1, "output": 1 }),
            vec![]
        ),
        40244
    );
    assert_eq!(
        code(
            one(doc! { "groupBy": "$a", "buckets": 1, "granularity": 1 }),
            vec![]
        ),
        40261
    );
    assert_eq!(
        code(
            one(doc! { "groupBy": "$a", "buckets": 1, "granularity": "R7" }),
            vec![]
        ),
        40257
    );
    let g = one(doc! { "groupBy": "$a", "buckets": 1, "granularity": "R5" });
    assert_eq!(code(g.clone(), vec![doc! { "a": "x" }]), 40258);
    assert_eq!(code(g, vec![doc! { "a": -1 }]), 40260);
    let limited = {
        let wrapped = doc! { "p": [ { "$bucketAuto": { "groupBy": "$a", "buckets": 1 } } ] };
        let raw = bson::RawDocumentBuf::try_from(&wrapped).unwrap();
        Pipeline::parse(raw.get_array("p").unwrap())
            .unwrap()
            .with_memory_limit(1000)
    };
    let big: Vec<_> = (0..100)
        .map(|i| bson::rawdoc! { "a": i, "pad": "x".repeat(50) })
        .collect();
    assert_eq!(limited.run(big).unwrap_err().code, 292);
}
