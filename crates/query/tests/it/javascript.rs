//! Server-side JavaScript in the language: `$where` filters, `$function`, `$accumulator`, and
//! mapReduce's internal map and reduce steps, with mongod's codes for their mistakes.

use crate::common;
use crate::common::{filter, filter_err, matches};
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

fn err(stages: Vec<Document>, input: Vec<Document>) -> QueryError {
    match run(stages, input) {
        Ok(out) => panic!("expected an error, got {out:?}"),
        Err(e) => e,
    }
}

#[test]
fn where_in_its_string_function_and_code_forms() {
    let d = doc! { "a": 3, "b": [1, 2] };
    assert!(matches(doc! { "$where": "this.a > 2" }, d.clone()));
    assert!(!matches(doc! { "$where": "this.a > 3" }, d.clone()));
    assert!(matches(
        doc! { "$where": "return obj.b.length == 2;" },
        d.clone()
    ));
    assert!(matches(
        doc! { "$where": Bson::JavaScriptCode("function() { return this.a === 3; }".into()) },
        d.clone()
    ));
    // With other conditions, all must hold.
    assert!(!matches(doc! { "a": 4, "$where": "true" }, d.clone()));
    assert!(matches(
        doc! { "$or": [{ "a": 4 }, { "$where": "this.b[1] == 2" }] },
        d.clone()
    ));
    assert!(filter(doc! { "$where": "true" }).has_where());
    assert!(!filter(doc! { "$expr": true }).has_where());
}

#[test]
fn where_errors_carry_mongod_codes() {
    assert_eq!(filter_err(doc! { "$where": "this.a >" }).code, 139);
    assert_eq!(filter_err(doc! { "$where": 5 }).code, 2);
    let cws = Bson::JavaScriptCodeWithScope(bson::JavaScriptCodeWithScope {
        code: "true".into(),
        scope: doc! {},
    });
    assert_eq!(filter_err(doc! { "$where": cws }).code, 4649201);
    // A runtime throw is the match's error.
    let f = filter(doc! { "$where": "if (this.a) throw new Error('nope'); return true" });
    let raw = common::raw(&doc! { "a": 1 });
    let e = f.try_matches(&raw).unwrap_err();
    assert_eq!(e.code, 139);
    assert!(e.message.contains("nope"), "{}", e.message);
}

#[test]
fn match_refuses_where_but_function_runs() {
    let e = err(vec![doc! { "$match": { "$where": "true" } }], vec![doc! {}]);
    assert_eq!(e.code, 2);
    let out = run(
        // `run` expects a leading `$match` applied by the caller, so one goes second.
        vec![doc! { "$skip": 0 }, doc! { "$match": { "$expr": { "$function": { "body": "function(a) { return a > 1; }", "args": ["$a"], "lang": "js" } } } }],
        vec![doc! { "a": 1 }, doc! { "a": 2 }],
    ).unwrap();
    assert_eq!(out, vec![doc! { "a": 2 }]);
}

#[test]
fn function_computes_and_checks_its_arguments() {
    let out = run(
        vec![doc! { "$project": { "_id": 0, "s": { "$function": {
            "body": Bson::JavaScriptCode("function(name, n) { return name.toUpperCase() + ':' + (n * 2); }".into()),
            "args": ["$name", "$n"], "lang": "js" } } } }],
        vec![doc! { "name": "ab", "n": 21 }],
    ).unwrap();
    assert_eq!(out, vec![doc! { "s": "AB:42" }]);
    let f = |spec: Document| {
        err(
            vec![doc! { "$project": { "x": { "$function": spec } } }],
            vec![doc! {}],
        )
        .code
    };
    assert_eq!(f(doc! { "args": [], "lang": "js" }), 31261);
    assert_eq!(f(doc! { "body": 1, "args": [], "lang": "js" }), 31262);
    assert_eq!(f(doc! { "body": "function(){}", "lang": "js" }), 31263);
    assert_eq!(f(doc! { "body": "function(){}", "args": [] }), 31418);
    assert_eq!(
        f(doc! { "body": "function(){}", "args": [], "lang": "py" }),
        31419
    );
    assert_eq!(
        f(doc! { "body": "function({", "args": [], "lang": "js" }),
        139
    );
    assert_eq!(
        f(doc! { "body": "function(){}", "args": "$notarray", "lang": "js" }),
        31266
    );
    let e = err(
        vec![doc! { "$project": { "x": { "$function": "f" } } }],
        vec![doc! {}],
    );
    assert_eq!(e.code, 31260);
}

#[test]
fn accumulator_groups_with_init_args_and_finalize() {
    let spec = doc! { "$group": { "_id": "$g", "r": { "$accumulator": {
    "init": "function(start) { return { total: start, n: 0 }; }",
    "initArgs": [100],
    "accumulate": "function(s, x) { s.total += x; s.n += 1; return s; }",
    "accumulateArgs": ["$x"],
    "merge": "function(a, b) { return { total: a.total + b.total, n: a.n + b.n }; }",
    "finalize": "function(s) { return s.total / s.n; }",
    "lang": "js" } } } };
    let mut out = run(
        vec![spec, doc! { "$sort": { "_id": 1 } }],
        vec![
            doc! { "g": "a", "x": 1 },
            doc! { "g": "a", "x": 3 },
            doc! { "g": "b", "x": 10 },
        ],
    )
    .unwrap();
    assert_eq!(out.remove(0), doc! { "_id": "a", "r": 52.0 });
    assert_eq!(out.remove(0), doc! { "_id": "b", "r": 110.0 });
    let acc = |spec: Document| {
        err(
            vec![doc! { "$group": { "_id": null, "r": { "$accumulator": spec } } }],
            vec![doc! {}],
        )
        .code
    };
    let base = doc! { "init": "function() { return 0; }", "accumulate": "function(s) { return s; }", "accumulateArgs": [], "merge": "function(a, b) { return a; }", "lang": "js" };
    let without = |k: &str| {
        let mut d = base.clone();
        d.remove(k);
        d
    };
    assert_eq!(acc(without("init")), 4544707);
    assert_eq!(acc(without("accumulate")), 4544708);
    assert_eq!(acc(without("merge")), 4544709);
    assert_eq!(acc(without("accumulateArgs")), 4544710);
    let mut bad = base.clone();
    bad.insert("lang", "lua");
    assert_eq!(acc(bad), 4544705);
    let mut bad = base.clone();
    bad.insert("extra", 1);
    assert_eq!(acc(bad), 4544706);
    let mut bad = base.clone();
    bad.insert("accumulateArgs", "$x");
    assert_eq!(acc(bad), 4544712);
}

#[test]
fn map_and_reduce_steps_as_mapreduce_runs_them() {
    let map = "function() { this.tags.forEach(function(t) { emit(t, { n: 1, w: weight }); }); }";
    let reduce = "function(k, vs) { var r = { n: 0, w: 0 }; vs.forEach(function(v) { r.n += v.n; r.w += v.w; }); return r; }";
    let scope = doc! { "weight": 2 };
    let stages = vec![
        doc! { "$project": { "_id": 0, "e": { "$_internalJsEmit": { "eval": map, "this": "$$ROOT", "scope": scope.clone() } } } },
        doc! { "$unwind": "$e" },
        doc! { "$group": { "_id": "$e.k", "value": { "$_internalJsReduce": { "data": "$e", "eval": reduce, "scope": scope } } } },
        doc! { "$sort": { "_id": 1 } },
    ];
    let out = run(
        stages,
        vec![doc! { "tags": ["x", "y"] }, doc! { "tags": ["x"] }],
    )
    .unwrap();
    assert_eq!(
        out,
        vec![
            doc! { "_id": "x", "value": { "n": 2.0, "w": 4.0 } },
            doc! { "_id": "y", "value": { "n": 1.0, "w": 2.0 } },
        ]
    );
}

#[test]
fn validators_refuse_javascript() {
    let v = |spec: Document| {
        let raw = bson::RawDocumentBuf::try_from(&spec).unwrap();
        mangrove_query::Validator::parse(&raw)
            .map(|_| ())
            .unwrap_err()
            .code
    };
    assert_eq!(v(doc! { "$where": "true" }), 2);
    let f =
        doc! { "$function": { "body": "function() { return true; }", "args": [], "lang": "js" } };
    assert_eq!(v(doc! { "$expr": { "$and": [f] } }), 4660800);
}
