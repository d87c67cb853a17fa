//! Pipelines and inputs shared by `stream_golden.rs` (results as the eager implementation before
//! streaming gave them) and `streaming.rs` (results fed and pulled piecewise): deterministic
//! stages only (no `$sample`, `$rand`, `$$NOW`).

use bson::{Bson, DateTime, Document, RawDocumentBuf, doc};
use mangrove_query::{Pipeline, QueryError};

/// The input collection: mixed shapes, types, missing and null fields, arrays and ties.
pub fn input() -> Vec<Document> {
    let mut out = Vec::new();
    for i in 0..40i32 {
        let mut d = doc! { "_id": i, "g": i % 4, "n": i * 3 % 17 };
        match i % 5 {
            0 => d.insert(
                "arr",
                vec![Bson::Int32(i), Bson::Int32(i + 1), Bson::Int32(i % 3)],
            ),
            1 => d.insert("arr", Bson::Array(Vec::new())),
            2 => d.insert("arr", Bson::Null),
            3 => d.insert("arr", format!("s{i}")),
            _ => None,
        };
        if i % 3 == 0 {
            d.insert(
                "s",
                format!("word-{}-{}", i % 7, "ab".repeat((i % 4) as usize)),
            );
        }
        if i % 6 == 1 {
            d.insert("x", Bson::Double(f64::from(i) / 4.0));
        } else if i % 6 == 2 {
            d.insert("x", Bson::Int64(i64::from(i) * 1_000_000_000));
        }
        d.insert(
            "sub",
            doc! { "k": i % 3, "tags": [format!("t{}", i % 2), "all"] },
        );
        d.insert(
            "at",
            DateTime::from_millis(1_700_000_000_000 + i64::from(i) * 86_400_000),
        );
        out.push(d);
    }
    out
}

/// The collection `$lookup`, `$graphLookup` and `$unionWith` read ("other").
pub fn foreign() -> Vec<Document> {
    (0..12i32)
        .map(|i| doc! { "_id": 100 + i, "g": i % 5, "next": 100 + (i + 1) % 12, "w": format!("f{i}") })
        .collect()
}

/// Named pipelines covering every stage, streaming and blocking, alone and combined.
pub fn pipelines() -> Vec<(&'static str, Vec<Document>)> {
    let mut p: Vec<(&'static str, Vec<Document>)> = vec![
        (
            "match",
            vec![doc! { "$match": { "g": { "$in": [1, 3] }, "n": { "$gt": 4 } } }],
        ),
        (
            "match_expr",
            vec![doc! { "$match": { "$expr": { "$gt": ["$n", "$g"] } } }],
        ),
        (
            "project_inclusion",
            vec![doc! { "$project": { "g": 1, "sub.k": 1, "twice": { "$multiply": ["$n", 2] } } }],
        ),
        (
            "project_exclusion",
            vec![doc! { "$project": { "sub": 0, "at": 0 } }],
        ),
        (
            "add_fields_set_unset",
            vec![
                doc! { "$addFields": { "y": { "$add": ["$n", 1] }, "sub.extra": "$g" } },
                doc! { "$set": { "z": { "$concat": [{ "$toString": "$g" }, "-", { "$ifNull": ["$s", "none"] }] } } },
                doc! { "$unset": ["at", "sub.tags"] },
            ],
        ),
        (
            "replace_root",
            vec![
                doc! { "$replaceRoot": { "newRoot": { "$mergeObjects": ["$sub", { "id": "$_id" }] } } },
            ],
        ),
        (
            "replace_with",
            vec![doc! { "$replaceWith": { "k": "$sub.k", "n": "$n" } }],
        ),
        (
            "skip_limit",
            vec![doc! { "$skip": 7 }, doc! { "$limit": 5 }],
        ),
        (
            "limit_then_group",
            vec![
                doc! { "$limit": 9 },
                doc! { "$group": { "_id": "$g", "ids": { "$push": "$_id" } } },
            ],
        ),
        (
            "sort_multi_key_ties",
            vec![
                doc! { "$sort": { "g": -1, "n": 1 } },
                doc! { "$project": { "g": 1, "n": 1 } },
            ],
        ),
        (
            "sort_limit_top_k",
            vec![
                doc! { "$sort": { "n": 1 } },
                doc! { "$limit": 6 },
                doc! { "$project": { "n": 1 } },
            ],
        ),
        (
            "sort_skip_limit",
            vec![
                doc! { "$sort": { "x": -1, "_id": 1 } },
                doc! { "$skip": 3 },
                doc! { "$limit": 4 },
                doc! { "$project": { "x": 1 } },
            ],
        ),
        (
            "count",
            vec![doc! { "$match": { "g": 2 } }, doc! { "$count": "total" }],
        ),
        (
            "count_empty",
            vec![doc! { "$match": { "g": 99 } }, doc! { "$count": "total" }],
        ),
        (
            "group_accumulators",
            vec![doc! { "$group": {
                "_id": "$g",
                "sum": { "$sum": "$n" }, "avg": { "$avg": "$n" }, "min": { "$min": "$x" }, "max": { "$max": "$x" },
                "first": { "$first": "$s" }, "last": { "$last": "$s" }, "count": { "$count": {} },
                "set": { "$addToSet": "$sub.k" }, "pushed": { "$push": "$n" },
                "sd": { "$stdDevPop": "$n" }, "sds": { "$stdDevSamp": "$n" },
                "merged": { "$mergeObjects": "$sub" },
            } }],
        ),
        (
            "group_n_accumulators",
            vec![doc! { "$group": {
                "_id": { "$mod": ["$n", 3] },
                "firstN": { "$firstN": { "input": "$_id", "n": 2 } },
                "lastN": { "$lastN": { "input": "$s", "n": 3 } },
                "minN": { "$minN": { "input": "$n", "n": 2 } },
                "maxN": { "$maxN": { "input": "$x", "n": 2 } },
            } }],
        ),
        (
            "group_null_and_compound",
            vec![
                doc! { "$group": { "_id": { "g": "$g", "odd": { "$mod": ["$_id", 2] } }, "n": { "$sum": 1 } } },
                doc! { "$sort": { "_id.g": 1, "_id.odd": 1 } },
            ],
        ),
        (
            "group_all",
            vec![doc! { "$group": { "_id": null, "n": { "$sum": 1 }, "total": { "$sum": "$n" } } }],
        ),
        (
            "bucket",
            vec![
                doc! { "$bucket": { "groupBy": "$n", "boundaries": [0, 5, 10], "default": "other", "output": { "c": { "$sum": 1 }, "ids": { "$push": "$_id" } } } },
            ],
        ),
        (
            "bucket_default_output",
            vec![doc! { "$bucket": { "groupBy": "$_id", "boundaries": [0, 10, 20, 40] } }],
        ),
        ("sort_by_count", vec![doc! { "$sortByCount": "$sub.k" }]),
        (
            "unwind",
            vec![
                doc! { "$unwind": "$arr" },
                doc! { "$project": { "arr": 1 } },
            ],
        ),
        (
            "unwind_index_preserve",
            vec![
                doc! { "$unwind": { "path": "$arr", "includeArrayIndex": "i", "preserveNullAndEmptyArrays": true } },
                doc! { "$project": { "arr": 1, "i": 1 } },
            ],
        ),
        (
            "unwind_group_sort",
            vec![
                doc! { "$unwind": "$sub.tags" },
                doc! { "$group": { "_id": "$sub.tags", "n": { "$sum": 1 }, "gs": { "$addToSet": "$g" } } },
                doc! { "$sort": { "n": -1, "_id": 1 } },
            ],
        ),
        (
            "facet",
            vec![doc! { "$facet": {
                "byG": [{ "$group": { "_id": "$g", "n": { "$sum": 1 } } }, { "$sort": { "_id": 1 } }],
                "top": [{ "$sort": { "n": -1, "_id": 1 } }, { "$limit": 3 }, { "$project": { "n": 1 } }],
                "none": [{ "$match": { "g": 42 } }],
                "counted": [{ "$match": { "s": { "$exists": true } } }, { "$count": "c" }],
            } }],
        ),
        (
            "lookup_equality",
            vec![
                doc! { "$match": { "_id": { "$lt": 6 } } },
                doc! { "$lookup": { "from": "other", "localField": "g", "foreignField": "g", "as": "joined" } },
                doc! { "$project": { "joined.w": 1 } },
            ],
        ),
        (
            "lookup_pipeline_let",
            vec![
                doc! { "$match": { "_id": { "$lt": 5 } } },
                doc! { "$lookup": { "from": "other", "let": { "gg": "$g" }, "pipeline": [
                    { "$match": { "$expr": { "$eq": ["$g", "$$gg"] } } },
                    { "$project": { "_id": 0, "w": 1 } },
                ], "as": "j" } },
                doc! { "$project": { "j": 1 } },
            ],
        ),
        (
            "graph_lookup",
            vec![
                doc! { "$match": { "_id": { "$lt": 3 } } },
                doc! { "$graphLookup": { "from": "other", "startWith": { "$add": [100, "$_id"] }, "connectFromField": "next", "connectToField": "_id", "as": "chain", "maxDepth": 3, "depthField": "d" } },
                doc! { "$project": { "chain._id": 1, "chain.d": 1 } },
            ],
        ),
        (
            "union_with",
            vec![
                doc! { "$match": { "g": 0 } },
                doc! { "$project": { "g": 1 } },
                doc! { "$unionWith": { "coll": "other", "pipeline": [{ "$match": { "g": { "$lt": 2 } } }, { "$project": { "g": 1 } }] } },
                doc! { "$limit": 20 },
            ],
        ),
        (
            "documents",
            vec![
                doc! { "$documents": [{ "a": 1 }, { "a": 2 }, { "a": 3 }] },
                doc! { "$match": { "a": { "$gte": 2 } } },
            ],
        ),
        (
            "expressions",
            vec![doc! { "$project": {
                "mapped": { "$map": { "input": { "$range": [0, "$g"] }, "in": { "$multiply": ["$$this", "$n"] } } },
                "filtered": { "$filter": { "input": "$sub.tags", "cond": { "$ne": ["$$this", "all"] } } },
                "reduced": { "$reduce": { "input": { "$range": [0, 4] }, "initialValue": "", "in": { "$concat": ["$$value", { "$toString": "$$this" }] } } },
                "split": { "$split": [{ "$ifNull": ["$s", "a-b"] }, "-"] },
                "replaced": { "$replaceAll": { "input": { "$ifNull": ["$s", ""] }, "find": "ab", "replacement": "X" } },
                "concatArrays": { "$concatArrays": [["$g"], { "$slice": ["$sub.tags", 1] }] },
                "day": { "$dayOfMonth": "$at" },
                "let": { "$let": { "vars": { "t": { "$add": ["$n", "$g"] } }, "in": { "$multiply": ["$$t", "$$t"] } } },
            } }],
        ),
        (
            "match_after_blocking",
            vec![
                doc! { "$group": { "_id": "$n", "c": { "$sum": 1 } } },
                doc! { "$match": { "c": { "$gt": 2 } } },
                doc! { "$sort": { "_id": 1 } },
            ],
        ),
        (
            "sort_then_unwind_limit",
            vec![
                doc! { "$sort": { "_id": -1 } },
                doc! { "$unwind": "$sub.tags" },
                doc! { "$limit": 7 },
                doc! { "$project": { "sub.tags": 1 } },
            ],
        ),
    ];
    p.sort_by_key(|(name, _)| *name);
    p
}

pub fn raw(docs: &[Document]) -> Vec<RawDocumentBuf> {
    docs.iter()
        .map(|d| RawDocumentBuf::try_from(d).unwrap())
        .collect()
}

pub fn parse(stages: &[Document]) -> Pipeline {
    let wrapped = doc! { "p": stages.to_vec() };
    let raw = RawDocumentBuf::try_from(&wrapped).unwrap();
    Pipeline::parse(raw.get_array("p").unwrap()).unwrap()
}

/// The pipeline's result over the input (its leading `$match` applied first, as the server
/// does while reading), all at once.
pub fn run_whole(stages: &[Document]) -> Result<Vec<Document>, QueryError> {
    let p = parse(stages);
    let mut input = raw(&input());
    if let Some(f) = p.leading_match() {
        input.retain(|d| f.matches(d));
    }
    if p.starts_with_documents() {
        input.clear();
    }
    let foreign = raw(&foreign());
    let out = p.run_with(input, &|name| {
        assert_eq!(name, "other");
        Ok(foreign.clone())
    })?;
    Ok(out
        .iter()
        .map(|d| Document::try_from(d.as_ref()).unwrap())
        .collect())
}

/// One line per result document, `name<TAB>index<TAB>Debug of the document`.
pub fn render(name: &str, out: &[Document]) -> String {
    let mut s = String::new();
    for (i, d) in out.iter().enumerate() {
        s.push_str(&format!("{name}\t{i}\t{d:?}\n"));
    }
    if out.is_empty() {
        s.push_str(&format!("{name}\t-\t(no documents)\n"));
    }
    s
}
