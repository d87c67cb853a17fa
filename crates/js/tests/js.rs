//! The engine through its public face: conversions both ways, `$where` truthiness, `emit`,
//! scope, errors and the `maxTimeMS` interrupt.

use std::time::{Duration, Instant};

use bson::{Bson, doc, oid::ObjectId, rawdoc};
use mangrove_js::{call, check, map, where_function, where_matches, with_deadline};

#[test]
fn where_strings_become_functions() {
    assert_eq!(
        where_function("this.a == 1"),
        "function(obj) { return this.a == 1 }"
    );
    assert_eq!(
        where_function("return this.a == 1;"),
        "function(obj) { return this.a == 1;\n}"
    );
    let doc = rawdoc! { "a": 1, "b": "x" };
    let f = where_function(" function() { return this.a == 1 && obj.b == 'x'; } ");
    assert!(where_matches(&f, &doc).unwrap());
    assert!(where_matches(&where_function("this.a == 1"), &doc).unwrap());
    assert!(!where_matches(&where_function("this.a == 2"), &doc).unwrap());
    assert!(where_matches(&where_function("obj.b === 'x'"), &doc).unwrap());
    assert!(!where_matches("function() { return 0; }", &doc).unwrap());
    assert!(where_matches("function() { return 'yes'; }", &doc).unwrap());
}

#[test]
fn values_round_trip_with_their_types() {
    let oid = ObjectId::new();
    let date = bson::DateTime::from_millis(1_700_000_000_123);
    let input = doc! {
        "d": 1.5, "i": 7, "l": 9_007_199_254_740_993_i64, "s": "é", "b": true, "n": null,
        "arr": [1, "two", [3]], "sub": { "x": { "y": 2.5 } }, "date": date, "oid": oid,
        "dec": Bson::Decimal128("1.10".parse().unwrap()),
        "ts": Bson::Timestamp(bson::Timestamp { time: 5, increment: 6 }),
        "bin": Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![1, 2, 255] }),
    };
    let out = call(
        "function(x) { return x; }",
        None,
        None,
        &[Bson::Document(input.clone())],
    )
    .unwrap();
    let Bson::Document(out) = out else {
        panic!("not a document: {out:?}")
    };
    // JS numbers come back as doubles, as mongod; everything else keeps its type.
    assert_eq!(out.get("i"), Some(&Bson::Double(7.0)));
    for key in [
        "d", "l", "s", "b", "n", "sub", "date", "oid", "dec", "ts", "bin",
    ] {
        assert_eq!(out.get(key), input.get(key), "{key}");
    }
    assert_eq!(
        out.get_array("arr").unwrap(),
        &vec![
            Bson::Double(1.0),
            "two".into(),
            Bson::Array(vec![Bson::Double(3.0)])
        ]
    );
}

#[test]
fn shell_types_behave_like_the_shell() {
    let oid = ObjectId::parse_str("507f1f77bcf86cd799439011").unwrap();
    let got = call(
        "function(o) { return [o.str, o.toString(), o.equals(ObjectId(o.str))]; }",
        None,
        None,
        &[Bson::ObjectId(oid)],
    )
    .unwrap();
    assert_eq!(
        got,
        Bson::Array(vec![
            "507f1f77bcf86cd799439011".into(),
            "ObjectId(\"507f1f77bcf86cd799439011\")".into(),
            true.into()
        ])
    );
    let got = call(
        "function(d) { return d.getUTCFullYear() + NumberLong(2) * 1; }",
        None,
        None,
        &[Bson::DateTime(bson::DateTime::from_millis(0))],
    )
    .unwrap();
    assert_eq!(got, Bson::Double(1972.0));
    let got = call("function() { return NumberInt(3); }", None, None, &[]).unwrap();
    assert_eq!(got, Bson::Int32(3));
    let got = call("function() { return /a.c/i; }", None, None, &[]).unwrap();
    assert!(
        matches!(got, Bson::RegularExpression(ref r) if r.pattern.as_str() == "a.c" && r.options.as_str() == "i"),
        "{got:?}"
    );
}

#[test]
fn map_collects_emits_and_sees_the_scope() {
    let doc = rawdoc! { "tags": ["a", "b"], "n": 2 };
    let scope = doc! { "factor": 10 };
    let out = map(
        "function() { var n = this.n; this.tags.forEach(function(t) { emit(t, n * factor); }); }",
        Some(&scope),
        &doc,
    )
    .unwrap();
    assert_eq!(
        out,
        vec![
            ("a".into(), Bson::Double(20.0)),
            ("b".into(), Bson::Double(20.0))
        ]
    );
    // The same source with another scope is another function.
    let out = map(
        "function() { var n = this.n; this.tags.forEach(function(t) { emit(t, n * factor); }); }",
        Some(&doc! { "factor": 1 }),
        &doc,
    )
    .unwrap();
    assert_eq!(out[0].1, Bson::Double(2.0));
}

#[test]
fn errors_are_jsinterpreterfailure() {
    let e = check("function( { return 1; }", None).unwrap_err();
    assert_eq!((e.code, e.code_name), (139, "JSInterpreterFailure"));
    assert!(e.message.contains("SyntaxError"), "{}", e.message);
    let e = call("function() { throw new Error('boom'); }", None, None, &[]).unwrap_err();
    assert_eq!(e.code, 139);
    assert!(e.message.contains("boom"), "{}", e.message);
    let e = check("42", None).unwrap_err();
    assert_eq!(e.code, 139);
    let e = map("function() { emit(1); }", None, &rawdoc! {})
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.code, 139);
}

#[test]
fn globals_do_not_leak_between_calls() {
    let _ = call("function() { leaked = 5; return 1; }", None, None, &[]);
    let got = call("function() { return typeof leaked; }", None, None, &[]).unwrap();
    assert_eq!(got, Bson::String("undefined".into()));
}

#[test]
fn an_endless_loop_stops_at_the_deadline_with_50() {
    let started = Instant::now();
    let e = with_deadline(Some(Instant::now() + Duration::from_millis(200)), || {
        where_matches("function() { while (true) {} }", &rawdoc! {})
    })
    .unwrap_err();
    assert_eq!((e.code, e.code_name), (50, "MaxTimeMSExpired"));
    assert!(started.elapsed() < Duration::from_secs(5));
    // The engine is usable afterwards.
    assert!(where_matches("function() { return true; }", &rawdoc! {}).unwrap());
}

#[test]
fn a_lone_statement_where_becomes_a_body() {
    let src = mangrove_js::where_source("while (false) {}").unwrap();
    assert_eq!(src, "function(obj) { while (false) {}\n}");
    assert!(!where_matches(&src, &rawdoc! {}).unwrap());
    assert_eq!(mangrove_js::where_source("this.a >").unwrap_err().code, 139);
    // Only a function expression is taken as one.
    assert_eq!(
        where_function("functional == 1"),
        "function(obj) { return functional == 1 }"
    );
    assert!(where_function("function named() { return 1; }").contains(".call(this)"));
}

#[test]
fn a_map_that_emits_without_end_is_stopped_by_size() {
    let e = map(
        "function() { var s = 'x'.repeat(1 << 20); for (;;) emit(1, s); }",
        None,
        &rawdoc! {},
    )
    .unwrap_err();
    assert_eq!(e.code, 31292, "{}", e.message);
    // The next map starts from nothing.
    assert_eq!(
        map("function() { emit(1, 2); }", None, &rawdoc! {})
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn sleep_waits_and_is_cut_by_the_deadline() {
    let started = Instant::now();
    assert!(where_matches("function() { sleep(50); return true; }", &rawdoc! {}).unwrap());
    assert!(started.elapsed() >= Duration::from_millis(50));
    let started = Instant::now();
    let e = with_deadline(Some(Instant::now() + Duration::from_millis(100)), || {
        where_matches("function() { sleep(60000); return true; }", &rawdoc! {})
    })
    .unwrap_err();
    assert_eq!(e.code, 50);
    assert!(started.elapsed() < Duration::from_secs(5));
}
