//! `$setWindowFields`, `$densify`, `$fill` and `$redact`, checked against the examples of
//! MongoDB's documentation, and their errors.

use bson::{Bson, DateTime, Document, doc};
use mangrove_query::{Pipeline, QueryError};

fn pipeline(stages: Vec<Document>) -> Result<Pipeline, QueryError> {
    let wrapped = doc! { "p": stages.into_iter().map(Bson::Document).collect::<Vec<_>>() };
    let raw = bson::RawDocumentBuf::try_from(&wrapped).unwrap();
    Pipeline::parse(raw.get_array("p").unwrap())
}

fn run_on(p: Pipeline, input: Vec<Document>) -> Result<Vec<Document>, QueryError> {
    let docs = input
        .iter()
        .map(|d| bson::RawDocumentBuf::try_from(d).unwrap())
        .collect();
    Ok(p.run(docs)?
        .iter()
        .map(|d| Document::try_from(d.as_ref()).unwrap())
        .collect())
}

fn run(stages: Vec<Document>, input: Vec<Document>) -> Result<Vec<Document>, QueryError> {
    run_on(pipeline(stages)?, input)
}

fn code(stages: Vec<Document>, input: Vec<Document>) -> i32 {
    match run(stages, input) {
        Ok(out) => panic!("expected an error, got {out:?}"),
        Err(e) => e.code,
    }
}

fn date(s: &str) -> DateTime {
    DateTime::parse_rfc3339_str(s).unwrap()
}

fn cake_sales() -> Vec<Document> {
    vec![
        doc! { "_id": 0, "type": "chocolate", "orderDate": date("2020-05-18T14:10:30Z"), "state": "CA", "price": 13, "quantity": 120 },
        doc! { "_id": 1, "type": "chocolate", "orderDate": date("2021-03-20T11:30:05Z"), "state": "WA", "price": 14, "quantity": 140 },
        doc! { "_id": 2, "type": "vanilla", "orderDate": date("2021-01-11T06:31:15Z"), "state": "CA", "price": 12, "quantity": 145 },
        doc! { "_id": 3, "type": "vanilla", "orderDate": date("2020-02-08T13:13:23Z"), "state": "WA", "price": 13, "quantity": 104 },
        doc! { "_id": 4, "type": "strawberry", "orderDate": date("2019-05-18T16:09:01Z"), "state": "CA", "price": 41, "quantity": 162 },
        doc! { "_id": 5, "type": "strawberry", "orderDate": date("2019-01-08T06:12:03Z"), "state": "WA", "price": 43, "quantity": 134 },
    ]
}

/// (_id, output) pairs of one output field, in result order.
fn column(out: &[Document], field: &str) -> Vec<(i32, Bson)> {
    out.iter()
        .map(|d| {
            (
                d.get_i32("_id").unwrap(),
                d.get(field).cloned().unwrap_or(Bson::Null),
            )
        })
        .collect()
}

#[test]
fn cumulative_sum_per_state() {
    let out = run(
        vec![
            doc! { "$setWindowFields": { "partitionBy": "$state", "sortBy": { "orderDate": 1 },
            "output": { "cumulativeQuantityForState": { "$sum": "$quantity",
                "window": { "documents": ["unbounded", "current"] } } } } },
        ],
        cake_sales(),
    )
    .unwrap();
    assert_eq!(
        column(&out, "cumulativeQuantityForState"),
        vec![
            (4, Bson::Int32(162)),
            (0, Bson::Int32(282)),
            (2, Bson::Int32(427)),
            (5, Bson::Int32(134)),
            (3, Bson::Int32(238)),
            (1, Bson::Int32(378)),
        ]
    );
    // The input fields are kept.
    assert_eq!(out[0].get_str("type").unwrap(), "strawberry");
}

#[test]
fn moving_average_whole_partition_and_rank() {
    let out = run(
        vec![doc! { "$setWindowFields": { "partitionBy": "$state", "sortBy": { "quantity": -1 },
            "output": {
                "rank": { "$rank": {} },
                "dense": { "$denseRank": {} },
                "number": { "$documentNumber": {} },
                "total": { "$sum": "$quantity" },
                "avg": { "$avg": "$quantity", "window": { "documents": [-1, 0] } },
                "next": { "$shift": { "output": "$quantity", "by": 1, "default": "Not available" } },
                "all": { "$push": "$_id" },
                "count": { "$count": {} },
                "max": { "$max": "$price" },
                "first": { "$first": "$_id" },
                "last": { "$last": "$_id", "window": { "documents": ["current", 1] } },
            } } }],
        cake_sales(),
    )
    .unwrap();
    let ids: Vec<i32> = out.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    assert_eq!(ids, vec![4, 2, 0, 1, 5, 3]);
    let ca = &out[0..3];
    assert_eq!(
        column(ca, "rank"),
        vec![
            (4, Bson::Int32(1)),
            (2, Bson::Int32(2)),
            (0, Bson::Int32(3))
        ]
    );
    assert_eq!(column(ca, "total")[1].1, Bson::Int32(427));
    assert_eq!(
        column(ca, "avg"),
        vec![
            (4, Bson::Double(162.0)),
            (2, Bson::Double(153.5)),
            (0, Bson::Double(132.5))
        ]
    );
    assert_eq!(
        column(ca, "next"),
        vec![
            (4, Bson::Int32(145)),
            (2, Bson::Int32(120)),
            (0, Bson::String("Not available".into()))
        ]
    );
    assert_eq!(
        ca[0].get_array("all").unwrap(),
        &vec![Bson::Int32(4), Bson::Int32(2), Bson::Int32(0)]
    );
    assert_eq!(ca[2].get_i32("count").unwrap(), 3);
    assert_eq!(ca[2].get_i32("max").unwrap(), 41);
    assert_eq!(ca[2].get_i32("first").unwrap(), 4);
    assert_eq!(
        column(ca, "last"),
        vec![
            (4, Bson::Int32(2)),
            (2, Bson::Int32(0)),
            (0, Bson::Int32(0))
        ]
    );
    assert_eq!(
        out[3].get_i32("number").unwrap(),
        1,
        "numbering restarts per partition"
    );
}

#[test]
fn range_windows_over_values_and_dates() {
    let out = run(
        vec![
            doc! { "$setWindowFields": { "partitionBy": "$state", "sortBy": { "price": 1 },
            "output": { "quantityFromSimilarOrders": { "$sum": "$quantity",
                "window": { "range": [-10, 10] } } } } },
        ],
        cake_sales(),
    )
    .unwrap();
    assert_eq!(
        column(&out, "quantityFromSimilarOrders"),
        vec![
            (2, Bson::Int32(265)),
            (0, Bson::Int32(265)),
            (4, Bson::Int32(162)),
            (3, Bson::Int32(244)),
            (1, Bson::Int32(244)),
            (5, Bson::Int32(134)),
        ]
    );
    // The documentation's "recent orders": up to 10 months after each order.
    let out = run(
        vec![
            doc! { "$setWindowFields": { "partitionBy": "$state", "sortBy": { "orderDate": 1 },
            "output": { "recentOrders": { "$push": "$orderDate",
                "window": { "range": ["unbounded", 10], "unit": "month" } } } } },
        ],
        cake_sales(),
    )
    .unwrap();
    let lens: Vec<usize> = out
        .iter()
        .map(|d| d.get_array("recentOrders").unwrap().len())
        .collect();
    assert_eq!(lens, vec![1, 3, 3, 1, 2, 3]);
}

#[test]
fn statistics_rates_and_moving_averages() {
    let input: Vec<Document> = [
        (0, 1.0, 10.0),
        (1, 2.0, 20.0),
        (2, 3.0, 40.0),
        (3, 4.0, 80.0),
    ]
    .iter()
    .map(|(id, x, y)| doc! { "_id": *id, "x": *x, "y": *y })
    .collect();
    let out = run(
        vec![doc! { "$setWindowFields": { "sortBy": { "x": 1 }, "output": {
            "cov": { "$covariancePop": ["$x", "$y"] },
            "covSamp": { "$covarianceSamp": ["$x", "$y"] },
            "sd": { "$stdDevPop": "$y" },
            "rate": { "$derivative": { "input": "$y" }, "window": { "documents": [-1, 0] } },
            "area": { "$integral": { "input": "$y" }, "window": { "documents": ["unbounded", "current"] } },
            "ema": { "$expMovingAvg": { "input": "$y", "alpha": 0.5 } },
            "ema2": { "$expMovingAvg": { "input": "$y", "N": 3 } },
            "top2": { "$topN": { "n": 2, "output": "$_id", "sortBy": { "y": -1 } } },
            "minN": { "$minN": { "n": 2, "input": "$y" } },
            "median": { "$median": { "input": "$y", "method": "approximate" } },
        } } }],
        input,
    )
    .unwrap();
    assert_eq!(out[0].get_f64("cov").unwrap(), 28.75);
    assert!((out[0].get_f64("covSamp").unwrap() - 115.0 / 3.0).abs() < 1e-9);
    assert!((out[0].get_f64("sd").unwrap() - 26.809513).abs() < 1e-5);
    assert_eq!(out[0].get("rate"), Some(&Bson::Null));
    assert_eq!(out[2].get_f64("rate").unwrap(), 20.0);
    let area: Vec<f64> = out.iter().map(|d| d.get_f64("area").unwrap()).collect();
    assert_eq!(area, vec![0.0, 15.0, 45.0, 105.0]);
    let ema: Vec<f64> = out.iter().map(|d| d.get_f64("ema").unwrap()).collect();
    assert_eq!(ema, vec![10.0, 15.0, 27.5, 53.75]);
    assert_eq!(out[3].get_f64("ema2").unwrap(), 53.75, "N = 3 is alpha 0.5");
    assert_eq!(
        out[0].get_array("top2").unwrap(),
        &vec![Bson::Int32(3), Bson::Int32(2)]
    );
    assert_eq!(
        out[0].get_array("minN").unwrap(),
        &vec![Bson::Double(10.0), Bson::Double(20.0)]
    );
    assert_eq!(out[0].get_f64("median").unwrap(), 20.0);
}

#[test]
fn locf_and_linear_fill() {
    let input = vec![
        doc! { "_id": 1, "t": 1, "v": 10 },
        doc! { "_id": 2, "t": 2 },
        doc! { "_id": 3, "t": 3, "v": Bson::Null },
        doc! { "_id": 4, "t": 4, "v": 40 },
        doc! { "_id": 5, "t": 5 },
    ];
    let out = run(
        vec![
            doc! { "$setWindowFields": { "sortBy": { "t": 1 }, "output": {
            "locf": { "$locf": "$v" }, "lin": { "$linearFill": "$v" } } } },
        ],
        input.clone(),
    )
    .unwrap();
    assert_eq!(
        column(&out, "locf"),
        vec![
            (1, Bson::Int32(10)),
            (2, Bson::Int32(10)),
            (3, Bson::Int32(10)),
            (4, Bson::Int32(40)),
            (5, Bson::Int32(40))
        ]
    );
    assert_eq!(
        column(&out, "lin"),
        vec![
            (1, Bson::Int32(10)),
            (2, Bson::Double(20.0)),
            (3, Bson::Double(30.0)),
            (4, Bson::Int32(40)),
            (5, Bson::Null)
        ]
    );
    // $fill: the same through the stage, and a value fill.
    let out = run(
        vec![doc! { "$fill": { "sortBy": { "t": 1 }, "output": { "v": { "method": "linear" }, "w": { "value": 0 } } } }],
        input,
    )
    .unwrap();
    assert_eq!(
        column(&out, "v"),
        vec![
            (1, Bson::Int32(10)),
            (2, Bson::Double(20.0)),
            (3, Bson::Double(30.0)),
            (4, Bson::Int32(40)),
            (5, Bson::Null)
        ]
    );
    assert!(out.iter().all(|d| d.get_i32("w").ok() == Some(0)));
}

#[test]
fn fill_by_partition_fields_with_locf() {
    let input = vec![
        doc! { "_id": 1, "s": "a", "t": 1, "v": 1 },
        doc! { "_id": 2, "s": "b", "t": 1, "v": 5 },
        doc! { "_id": 3, "s": "a", "t": 2 },
        doc! { "_id": 4, "s": "b", "t": 2 },
    ];
    let out = run(
        vec![
            doc! { "$fill": { "partitionByFields": ["s"], "sortBy": { "t": 1 }, "output": { "v": { "method": "locf" } } } },
            doc! { "$sort": { "_id": 1 } },
        ],
        input,
    )
    .unwrap();
    assert_eq!(
        column(&out, "v"),
        vec![
            (1, Bson::Int32(1)),
            (2, Bson::Int32(5)),
            (3, Bson::Int32(1)),
            (4, Bson::Int32(5))
        ]
    );
}

#[test]
fn window_errors_carry_mongod_codes() {
    let swf = |spec: Document| vec![doc! { "$setWindowFields": spec }];
    assert_eq!(code(swf(doc! { "output": {}, "x": 1 }), vec![]), 40415);
    assert_eq!(code(swf(doc! { "sortBy": { "a": 1 } }), vec![]), 40414);
    assert_eq!(
        code(swf(doc! { "output": { "r": { "$rank": {} } } }), vec![]),
        5371602
    );
    assert_eq!(
        code(
            swf(doc! { "sortBy": { "a": 1, "b": 1 }, "output": { "r": { "$rank": {} } } }),
            vec![]
        ),
        5371602
    );
    assert_eq!(
        code(
            swf(
                doc! { "sortBy": { "a": 1 }, "output": { "r": { "$rank": {}, "window": { "documents": [0, 1] } } } }
            ),
            vec![]
        ),
        5371601
    );
    assert_eq!(
        code(swf(doc! { "output": { "r": { "$nope": "$a" } } }), vec![]),
        9
    );
    assert_eq!(
        code(
            swf(doc! { "output": { "r": { "$sum": "$a", "window": { "documents": [1, 0] } } } }),
            vec![]
        ),
        9
    );
    assert_eq!(
        code(
            swf(doc! { "output": { "r": { "$sum": "$a", "window": { "range": [0, 1] } } } }),
            vec![]
        ),
        9
    );
    assert_eq!(
        code(
            swf(
                doc! { "sortBy": { "a": 1 }, "output": { "r": { "$derivative": { "input": "$b" } } } }
            ),
            vec![]
        ),
        5624901
    );
    let ranged = swf(
        doc! { "sortBy": { "a": 1 }, "output": { "r": { "$sum": 1, "window": { "range": [0, 1] } } } },
    );
    assert_eq!(code(ranged, vec![doc! { "a": "text" }]), 5429413);
    let p = pipeline(swf(doc! { "output": { "all": { "$push": "$pad" } } }))
        .unwrap()
        .with_memory_limit(2000);
    let big: Vec<Document> = (0..100)
        .map(|i| doc! { "i": i, "pad": "x".repeat(50) })
        .collect();
    assert_eq!(run_on(p, big).unwrap_err().code, 5643011);
    let fill = |spec: Document| vec![doc! { "$fill": spec }];
    assert_eq!(
        code(
            fill(
                doc! { "partitionBy": "$a", "partitionByFields": ["a"], "output": { "v": { "value": 1 } } }
            ),
            vec![]
        ),
        6050204
    );
    assert_eq!(
        code(
            fill(doc! { "sortBy": { "a": 1 }, "output": { "v": { "method": "spline" } } }),
            vec![]
        ),
        6050202
    );
    assert_eq!(
        code(
            fill(doc! { "output": { "v": { "value": 1, "method": "locf" } } }),
            vec![]
        ),
        6050203
    );
    assert_eq!(
        code(
            fill(doc! { "output": { "v": { "value": 1 } }, "x": 1 }),
            vec![]
        ),
        40415
    );
}

fn coffee() -> Vec<Document> {
    vec![
        doc! { "altitude": 600, "variety": "Arabica Typica", "score": 68.3 },
        doc! { "altitude": 750, "variety": "Arabica Typica", "score": 69.5 },
        doc! { "altitude": 950, "variety": "Arabica Typica", "score": 70.5 },
        doc! { "altitude": 1250, "variety": "Gesha", "score": 88.15 },
        doc! { "altitude": 1700, "variety": "Gesha", "score": 85.5 },
        doc! { "altitude": 1600, "variety": "SL28", "score": 86.5 },
        doc! { "altitude": 1750, "variety": "SL28", "score": 89.0 },
    ]
}

fn altitudes(out: &[Document], variety: &str) -> Vec<(i32, bool)> {
    out.iter()
        .filter(|d| d.get_str("variety").ok() == Some(variety))
        .map(|d| (d.get_i32("altitude").unwrap(), d.contains_key("score")))
        .collect()
}

#[test]
fn densify_partitions_over_the_full_range() {
    let out = run(
        vec![
            doc! { "$densify": { "field": "altitude", "partitionByFields": ["variety"],
            "range": { "bounds": "full", "step": 200 } } },
        ],
        coffee(),
    )
    .unwrap();
    assert_eq!(
        altitudes(&out, "Arabica Typica"),
        vec![
            (600, true),
            (750, true),
            (800, false),
            (950, true),
            (1000, false),
            (1200, false),
            (1400, false),
            (1600, false)
        ]
    );
    assert_eq!(
        altitudes(&out, "Gesha"),
        vec![
            (600, false),
            (800, false),
            (1000, false),
            (1200, false),
            (1250, true),
            (1400, false),
            (1600, false),
            (1700, true)
        ]
    );
    // SL28 gets 600..1400 and its own 1600 and 1750.
    assert_eq!(out.len(), 8 + 8 + 7);
    let out = run(
        vec![
            doc! { "$densify": { "field": "altitude", "partitionByFields": ["variety"],
            "range": { "bounds": "partition", "step": 200 } } },
        ],
        coffee(),
    )
    .unwrap();
    assert_eq!(
        altitudes(&out, "Arabica Typica"),
        vec![(600, true), (750, true), (800, false), (950, true)]
    );
    assert_eq!(altitudes(&out, "SL28"), vec![(1600, true), (1750, true)]);
}

#[test]
fn densify_time_series_with_explicit_bounds() {
    let reading = |h: u32, temp: i32| {
        doc! { "metadata": { "sensorId": 5578, "type": "temperature" },
        "timestamp": date(&format!("2021-05-18T{h:02}:00:00Z")), "temp": temp }
    };
    let input = vec![
        reading(0, 12),
        reading(4, 11),
        reading(8, 11),
        reading(12, 12),
    ];
    let out = run(
        vec![
            doc! { "$densify": { "field": "timestamp", "range": { "step": 1, "unit": "hour",
            "bounds": [date("2021-05-18T00:00:00Z"), date("2021-05-18T08:00:00Z")] } } },
        ],
        input,
    )
    .unwrap();
    let hours: Vec<(i64, bool)> = out
        .iter()
        .map(|d| {
            (
                d.get_datetime("timestamp").unwrap().timestamp_millis() / 3_600_000 % 24,
                d.contains_key("temp"),
            )
        })
        .collect();
    assert_eq!(
        hours,
        vec![
            (0, true),
            (1, false),
            (2, false),
            (3, false),
            (4, true),
            (5, false),
            (6, false),
            (7, false),
            (8, true),
            (12, true)
        ]
    );
}

#[test]
fn densify_errors_carry_mongod_codes() {
    let d = |spec: Document| vec![doc! { "$densify": spec }];
    assert_eq!(code(d(doc! { "field": "a" }), vec![]), 40414);
    assert_eq!(
        code(
            d(doc! { "field": "a", "range": { "step": 0, "bounds": "full" } }),
            vec![]
        ),
        5733401
    );
    assert_eq!(
        code(
            d(doc! { "field": "a", "range": { "step": 1, "bounds": "partition" } }),
            vec![]
        ),
        5733408
    );
    assert_eq!(
        code(
            d(doc! { "field": "a", "range": { "step": 1, "bounds": "all" } }),
            vec![]
        ),
        5946802
    );
    assert_eq!(
        code(
            d(doc! { "field": "a", "range": { "step": 1, "bounds": [1] } }),
            vec![]
        ),
        5733403
    );
    assert_eq!(
        code(
            d(doc! { "field": "a", "range": { "step": 1, "bounds": [2, 1] } }),
            vec![]
        ),
        5733406
    );
    assert_eq!(
        code(
            d(doc! { "field": "a", "range": { "step": 1, "bounds": "full", "x": 1 } }),
            vec![]
        ),
        40415
    );
    assert_eq!(
        code(
            d(doc! { "field": "a", "y": 1, "range": { "step": 1, "bounds": "full" } }),
            vec![]
        ),
        40415
    );
    let full = d(doc! { "field": "a", "range": { "step": 1, "bounds": "full" } });
    assert_eq!(code(full.clone(), vec![doc! { "a": "x" }]), 5733201);
    assert_eq!(
        code(full, vec![doc! { "a": 0 }, doc! { "a": 1_000_000 }]),
        5897900
    );
}

#[test]
fn redact_follows_the_documentation() {
    let input = vec![
        doc! { "_id": 1, "title": "123 Department Report", "tags": ["G", "STLW"], "year": 2014,
        "subsections": [
            { "subtitle": "Section 1: Overview", "tags": ["SI", "G"], "content": "Section 1: This is the content of section 1." },
            { "subtitle": "Section 2: Analysis", "tags": ["STLW"], "content": "Section 2: This is the content of section 2." },
            { "subtitle": "Section 3: Budgeting", "tags": ["TK"], "content": { "text": "Section 3: This is the content of section3.", "tags": ["HCS"] } },
        ] },
    ];
    let out = run(
        vec![doc! { "$redact": { "$cond": {
        "if": { "$gt": [{ "$size": { "$setIntersection": ["$tags", ["STLW", "G"]] } }, 0] },
        "then": "$$DESCEND", "else": "$$PRUNE" } } }],
        input.clone(),
    )
    .unwrap();
    let subs = out[0].get_array("subsections").unwrap();
    assert_eq!(subs.len(), 2);
    assert_eq!(out[0].get_i32("year").unwrap(), 2014);
    let out = run(vec![doc! { "$redact": "$$PRUNE" }], input.clone()).unwrap();
    assert!(out.is_empty());
    let out = run(vec![doc! { "$redact": "$$KEEP" }], input.clone()).unwrap();
    assert_eq!(out, input);
    assert_eq!(code(vec![doc! { "$redact": "keep it" }], input), 17053);
}
