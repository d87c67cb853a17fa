//! Aggregation expression operators, evaluated through `$replaceWith: {r: <expr>}` so each
//! test sees exactly what a pipeline would produce (a missing result leaves `r` absent).

use bson::{Bson, DateTime, Decimal128, Document, doc, oid::ObjectId};
use mangrove_query::{Pipeline, QueryError};
use std::str::FromStr;

fn run(expr: Bson, input: Document) -> Result<Option<Bson>, QueryError> {
    let stages = doc! { "p": [ { "$replaceWith": { "r": expr } } ] };
    let raw = bson::RawDocumentBuf::try_from(&stages).unwrap();
    let p = Pipeline::parse(raw.get_array("p").unwrap())?;
    let out = p.run(vec![bson::RawDocumentBuf::try_from(&input).unwrap()])?;
    let d = Document::try_from(out[0].as_ref()).unwrap();
    Ok(d.get("r").cloned())
}

fn ev(expr: Bson) -> Option<Bson> {
    ev_on(expr, doc! {})
}

fn ev_on(expr: Bson, input: Document) -> Option<Bson> {
    run(expr.clone(), input).unwrap_or_else(|e| panic!("{expr} failed: {e:?}"))
}

fn code(expr: Bson) -> i32 {
    code_on(expr, doc! {})
}

fn code_on(expr: Bson, input: Document) -> i32 {
    match run(expr.clone(), input) {
        Ok(v) => panic!("{expr} unexpectedly gave {v:?}"),
        Err(e) => e.code,
    }
}

fn b(v: impl Into<Bson>) -> Option<Bson> {
    Some(v.into())
}

fn dec(s: &str) -> Bson {
    Bson::Decimal128(Decimal128::from_str(s).unwrap())
}

#[test]
fn add_promotes_and_handles_dates() {
    assert_eq!(ev(doc! { "$add": [1, 2] }.into()), b(3));
    assert_eq!(
        ev(doc! { "$add": [i32::MAX, 1] }.into()),
        b(2_147_483_648i64)
    );
    assert_eq!(ev(doc! { "$add": [1i64, 2] }.into()), b(3i64));
    assert_eq!(
        ev(doc! { "$add": [i64::MAX, 1] }.into()),
        b(9.223372036854776e18)
    );
    assert_eq!(ev(doc! { "$add": [1, 0.5] }.into()), b(1.5));
    assert_eq!(ev(doc! { "$add": [1, Bson::Null] }.into()), b(Bson::Null));
    assert_eq!(ev(doc! { "$add": [1, "$missing"] }.into()), b(Bson::Null));
    let d = DateTime::from_millis(1000);
    assert_eq!(
        ev(doc! { "$add": [d, 500] }.into()),
        b(DateTime::from_millis(1500))
    );
    assert_eq!(code(doc! { "$add": [d, d] }.into()), 16612);
    assert_eq!(code(doc! { "$add": [1, "x"] }.into()), 16554);
    assert!(matches!(
        ev(doc! { "$add": [dec("1.5"), 1] }.into()),
        Some(Bson::Decimal128(_))
    ));
}

#[test]
fn subtract_multiply_divide_mod() {
    let d1 = DateTime::from_millis(5000);
    let d2 = DateTime::from_millis(2000);
    assert_eq!(ev(doc! { "$subtract": [d1, d2] }.into()), b(3000i64));
    assert_eq!(
        ev(doc! { "$subtract": [d1, 1000] }.into()),
        b(DateTime::from_millis(4000))
    );
    assert_eq!(ev(doc! { "$subtract": [5, 7] }.into()), b(-2));
    assert_eq!(code(doc! { "$subtract": ["a", 1] }.into()), 16556);
    assert_eq!(ev(doc! { "$multiply": [2, 3, 4] }.into()), b(24));
    assert_eq!(
        ev(doc! { "$multiply": [i32::MAX, 2] }.into()),
        b(4_294_967_294i64)
    );
    assert_eq!(code(doc! { "$multiply": [2, "3"] }.into()), 16555);
    assert_eq!(ev(doc! { "$divide": [1, 2] }.into()), b(0.5));
    assert_eq!(ev(doc! { "$divide": [4, 2] }.into()), b(2.0));
    let e = run(doc! { "$divide": [1, 0] }.into(), doc! {}).unwrap_err();
    assert_eq!((e.code, e.code_name), (2, "BadValue"));
    assert_eq!(e.message, "can't $divide by zero");
    assert_eq!(
        ev(doc! { "$divide": [Bson::Null, 0] }.into()),
        b(Bson::Null)
    );
    assert_eq!(ev(doc! { "$mod": [7, 3] }.into()), b(1));
    assert_eq!(ev(doc! { "$mod": [-7, 3] }.into()), b(-1));
    assert_eq!(ev(doc! { "$mod": [7.5, 2] }.into()), b(1.5));
    assert_eq!(code(doc! { "$mod": [7, 0] }.into()), 16610);
}

#[test]
fn unary_math() {
    assert_eq!(ev(doc! { "$abs": -5 }.into()), b(5));
    assert_eq!(ev(doc! { "$abs": i32::MIN }.into()), b(2_147_483_648i64));
    assert_eq!(code(doc! { "$abs": i64::MIN }.into()), 28680);
    assert_eq!(ev(doc! { "$abs": Bson::Null }.into()), b(Bson::Null));
    assert_eq!(code(doc! { "$abs": "x" }.into()), 28765);
    assert_eq!(ev(doc! { "$ceil": 1.2 }.into()), b(2.0));
    assert_eq!(ev(doc! { "$floor": -1.2 }.into()), b(-2.0));
    assert_eq!(ev(doc! { "$floor": 3 }.into()), b(3));
    assert_eq!(ev(doc! { "$sqrt": 16 }.into()), b(4.0));
    assert_eq!(code(doc! { "$sqrt": -1 }.into()), 28714);
    assert_eq!(ev(doc! { "$exp": 0 }.into()), b(1.0));
    assert_eq!(ev(doc! { "$ln": 1 }.into()), b(0.0));
    assert_eq!(code(doc! { "$ln": 0 }.into()), 28766);
    assert_eq!(ev(doc! { "$log10": 1000 }.into()), b(3.0));
    assert_eq!(code(doc! { "$log10": -1 }.into()), 28761);
    assert_eq!(ev(doc! { "$log": [8, 2] }.into()), b(3.0));
    assert_eq!(code(doc! { "$log": [8, 1] }.into()), 28759);
    assert_eq!(ev(doc! { "$pow": [2, 10] }.into()), b(1024));
    assert_eq!(ev(doc! { "$pow": [2, 40] }.into()), b(1_099_511_627_776i64));
    assert_eq!(ev(doc! { "$pow": [2, -1] }.into()), b(0.5));
    assert_eq!(ev(doc! { "$pow": [2.0, 2] }.into()), b(4.0));
    assert_eq!(code(doc! { "$pow": [0, -1] }.into()), 28764);
}

#[test]
fn round_and_trunc() {
    assert_eq!(ev(doc! { "$round": [2.5] }.into()), b(2.0));
    assert_eq!(ev(doc! { "$round": [3.5] }.into()), b(4.0));
    assert_eq!(ev(doc! { "$round": [1.2345, 2] }.into()), b(1.23));
    assert_eq!(ev(doc! { "$round": [1234, -2] }.into()), b(1200));
    assert_eq!(ev(doc! { "$round": [1250, -2] }.into()), b(1200));
    assert_eq!(ev(doc! { "$round": [1350, -2] }.into()), b(1400));
    assert_eq!(ev(doc! { "$trunc": [1.789, 1] }.into()), b(1.7));
    assert_eq!(ev(doc! { "$trunc": [-1.7] }.into()), b(-1.0));
    assert_eq!(ev(doc! { "$round": [Bson::Null, 1] }.into()), b(Bson::Null));
    assert_eq!(code(doc! { "$round": [1.5, 101] }.into()), 51155);
    assert_eq!(code(doc! { "$round": ["x"] }.into()), 51081);
}

#[test]
fn strings() {
    assert_eq!(ev(doc! { "$concat": ["a", "b", "c"] }.into()), b("abc"));
    assert_eq!(
        ev(doc! { "$concat": ["a", "$missing"] }.into()),
        b(Bson::Null)
    );
    assert_eq!(code(doc! { "$concat": ["a", 1] }.into()), 16702);
    assert_eq!(ev(doc! { "$substr": ["hello", 1, 3] }.into()), b("ell"));
    assert_eq!(
        ev(doc! { "$substrBytes": ["hello", 2, -1] }.into()),
        b("llo")
    );
    assert_eq!(code(doc! { "$substrBytes": ["é", 1, 1] }.into()), 28656);
    assert_eq!(ev(doc! { "$substrCP": ["héllo", 1, 2] }.into()), b("él"));
    assert_eq!(code(doc! { "$substrCP": ["abc", -1, 2] }.into()), 34455);
    assert_eq!(ev(doc! { "$toUpper": "aBc" }.into()), b("ABC"));
    assert_eq!(ev(doc! { "$toLower": "aBc" }.into()), b("abc"));
    assert_eq!(ev(doc! { "$toUpper": Bson::Null }.into()), b(""));
    assert_eq!(ev(doc! { "$toLower": 12 }.into()), b("12"));
    assert_eq!(ev(doc! { "$strLenCP": "héllo" }.into()), b(5));
    assert_eq!(ev(doc! { "$strLenBytes": "héllo" }.into()), b(6));
    assert_eq!(code(doc! { "$strLenCP": "$missing" }.into()), 34471);
    assert_eq!(
        ev(doc! { "$split": ["a,b,,c", ","] }.into()),
        b(vec!["a", "b", "", "c"])
    );
    assert_eq!(code(doc! { "$split": ["abc", ""] }.into()), 40087);
    assert_eq!(code(doc! { "$split": [1, ","] }.into()), 40085);
    assert_eq!(ev(doc! { "$trim": { "input": "  x  " } }.into()), b("x"));
    assert_eq!(ev(doc! { "$ltrim": { "input": "  x  " } }.into()), b("x  "));
    assert_eq!(
        ev(doc! { "$rtrim": { "input": "xxaxx", "chars": "x" } }.into()),
        b("xxa")
    );
    assert_eq!(code(doc! { "$trim": { "input": 1 } }.into()), 50699);
    assert_eq!(ev(doc! { "$indexOfCP": ["héllo", "l"] }.into()), b(2));
    assert_eq!(ev(doc! { "$indexOfBytes": ["héllo", "l"] }.into()), b(3));
    assert_eq!(ev(doc! { "$indexOfCP": ["hello", "z"] }.into()), b(-1));
    assert_eq!(ev(doc! { "$indexOfCP": ["hello", "l", 3] }.into()), b(3));
    assert_eq!(
        ev(doc! { "$indexOfCP": [Bson::Null, "l"] }.into()),
        b(Bson::Null)
    );
    assert_eq!(ev(doc! { "$strcasecmp": ["ABC", "abc"] }.into()), b(0));
    assert_eq!(ev(doc! { "$strcasecmp": ["a", "B"] }.into()), b(-1));
    assert_eq!(
        ev(doc! { "$regexMatch": { "input": "Hello", "regex": "^h", "options": "i" } }.into()),
        b(true)
    );
    assert_eq!(
        ev(doc! { "$regexMatch": { "input": Bson::Null, "regex": "x" } }.into()),
        b(false)
    );
    assert_eq!(
        code(doc! { "$regexMatch": { "input": 1, "regex": "x" } }.into()),
        51104
    );
    assert_eq!(
        ev(doc! { "$replaceOne": { "input": "a-a-a", "find": "a", "replacement": "b" } }.into()),
        b("b-a-a")
    );
    assert_eq!(
        ev(doc! { "$replaceAll": { "input": "a-a-a", "find": "a", "replacement": "b" } }.into()),
        b("b-b-b")
    );
    assert_eq!(
        ev(doc! { "$replaceAll": { "input": Bson::Null, "find": "a", "replacement": "b" } }.into()),
        b(Bson::Null)
    );
}

#[test]
fn arrays() {
    let input = doc! { "a": [1, 2, 3], "s": "x" };
    assert_eq!(ev_on(doc! { "$size": "$a" }.into(), input.clone()), b(3));
    assert_eq!(code_on(doc! { "$size": "$s" }.into(), input.clone()), 17124);
    assert_eq!(
        ev_on(doc! { "$arrayElemAt": ["$a", 0] }.into(), input.clone()),
        b(1)
    );
    assert_eq!(
        ev_on(doc! { "$arrayElemAt": ["$a", -1] }.into(), input.clone()),
        b(3)
    );
    assert_eq!(
        ev_on(doc! { "$arrayElemAt": ["$a", 5] }.into(), input.clone()),
        None
    );
    let e = run(doc! { "$arrayElemAt": ["$s", 0] }.into(), input.clone()).unwrap_err();
    assert_eq!(e.code, 28689);
    assert_eq!(ev_on(doc! { "$first": "$a" }.into(), input.clone()), b(1));
    assert_eq!(ev_on(doc! { "$last": "$a" }.into(), input.clone()), b(3));
    assert_eq!(ev(doc! { "$first": [[]] }.into()), None);
    assert_eq!(
        ev_on(doc! { "$in": [2, "$a"] }.into(), input.clone()),
        b(true)
    );
    assert_eq!(
        ev_on(doc! { "$in": [2.0, "$a"] }.into(), input.clone()),
        b(true)
    );
    assert_eq!(
        code_on(doc! { "$in": [2, "$s"] }.into(), input.clone()),
        40081
    );
    assert_eq!(
        ev_on(doc! { "$concatArrays": ["$a", [4]] }.into(), input.clone()),
        b(vec![1, 2, 3, 4])
    );
    assert_eq!(
        ev_on(
            doc! { "$concatArrays": ["$a", "$missing"] }.into(),
            input.clone()
        ),
        b(Bson::Null)
    );
    assert_eq!(
        code_on(doc! { "$concatArrays": ["$a", "$s"] }.into(), input.clone()),
        28664
    );
    assert_eq!(
        ev_on(
            doc! { "$filter": { "input": "$a", "as": "x", "cond": { "$gt": ["$$x", 1] } } }.into(),
            input.clone()
        ),
        b(vec![2, 3])
    );
    assert_eq!(
        ev_on(
            doc! { "$filter": { "input": "$a", "cond": { "$gt": ["$$this", 1] }, "limit": 1 } }
                .into(),
            input.clone()
        ),
        b(vec![2])
    );
    assert_eq!(
        code_on(
            doc! { "$filter": { "input": "$s", "cond": true } }.into(),
            input.clone()
        ),
        28651
    );
    assert_eq!(
        ev_on(
            doc! { "$map": { "input": "$a", "as": "x", "in": { "$multiply": ["$$x", 10] } } }
                .into(),
            input.clone()
        ),
        b(vec![10, 20, 30])
    );
    assert_eq!(
        ev_on(
            doc! { "$map": { "input": "$missing", "in": 1 } }.into(),
            input.clone()
        ),
        b(Bson::Null)
    );
    assert_eq!(
        ev_on(
            doc! { "$reduce": { "input": "$a", "initialValue": 0, "in": { "$add": ["$$value", "$$this"] } } }
                .into(),
            input.clone()
        ),
        b(6)
    );
    assert_eq!(
        ev_on(doc! { "$slice": ["$a", 2] }.into(), input.clone()),
        b(vec![1, 2])
    );
    assert_eq!(
        ev_on(doc! { "$slice": ["$a", -2] }.into(), input.clone()),
        b(vec![2, 3])
    );
    assert_eq!(
        ev_on(doc! { "$slice": ["$a", 1, 1] }.into(), input.clone()),
        b(vec![2])
    );
    assert_eq!(
        code_on(doc! { "$slice": ["$a", 1, 0] }.into(), input.clone()),
        28729
    );
    assert_eq!(
        ev_on(doc! { "$reverseArray": "$a" }.into(), input.clone()),
        b(vec![3, 2, 1])
    );
    assert_eq!(
        ev_on(doc! { "$isArray": "$a" }.into(), input.clone()),
        b(true)
    );
    assert_eq!(
        ev_on(doc! { "$isArray": ["$s"] }.into(), input.clone()),
        b(false)
    );
    assert_eq!(
        ev(doc! { "$range": [0, 10, 3] }.into()),
        b(vec![0, 3, 6, 9])
    );
    assert_eq!(ev(doc! { "$range": [5, 0, -2] }.into()), b(vec![5, 3, 1]));
    assert_eq!(code(doc! { "$range": [0, 10, 0] }.into()), 34449);
    assert_eq!(
        ev_on(doc! { "$indexOfArray": ["$a", 3] }.into(), input.clone()),
        b(2)
    );
    assert_eq!(
        ev_on(doc! { "$indexOfArray": ["$a", 9] }.into(), input.clone()),
        b(-1)
    );
    assert_eq!(
        ev(doc! { "$setUnion": [[1, 2], [2, 3]] }.into()),
        b(vec![1, 2, 3])
    );
    assert_eq!(
        ev(doc! { "$setIntersection": [[1, 2, 3], [2, 3, 4]] }.into()),
        b(vec![2, 3])
    );
    assert_eq!(
        ev(doc! { "$setDifference": [[1, 2, 3], [2]] }.into()),
        b(vec![1, 3])
    );
    assert_eq!(
        ev(doc! { "$setEquals": [[1, 2], [2, 1, 1]] }.into()),
        b(true)
    );
    // Array literals evaluate their elements; a missing one becomes null.
    assert_eq!(
        ev_on(Bson::Array(vec!["$s".into(), "$missing".into()]), input),
        b(vec![Bson::String("x".into()), Bson::Null])
    );
}

#[test]
fn field_paths_map_over_arrays() {
    let input = doc! { "a": [ { "b": 1 }, { "c": 2 }, { "b": 3 }, 7 ] };
    assert_eq!(ev_on("$a.b".into(), input), b(vec![1, 3]));
}

#[test]
fn conditionals() {
    assert_eq!(ev(doc! { "$cond": [true, "y", "n"] }.into()), b("y"));
    assert_eq!(
        ev(doc! { "$cond": { "if": 0, "then": "y", "else": "n" } }.into()),
        b("n")
    );
    assert_eq!(
        code(doc! { "$cond": { "then": 1, "else": 2 } }.into()),
        17080
    );
    assert_eq!(
        ev(doc! { "$ifNull": ["$missing", Bson::Null, "d"] }.into()),
        b("d")
    );
    assert_eq!(ev(doc! { "$ifNull": [0, "d"] }.into()), b(0));
    let sw = |x: i32| {
        ev_on(
            doc! { "$switch": { "branches": [
                { "case": { "$lt": ["$x", 0] }, "then": "neg" },
                { "case": { "$eq": ["$x", 0] }, "then": "zero" },
            ], "default": "pos" } }
            .into(),
            doc! { "x": x },
        )
    };
    assert_eq!((sw(-1), sw(0), sw(5)), (b("neg"), b("zero"), b("pos")));
    assert_eq!(
        code(doc! { "$switch": { "branches": [ { "case": false, "then": 1 } ] } }.into()),
        40066
    );
    // The branch not taken is never evaluated, so its error never fires.
    assert_eq!(
        ev(doc! { "$cond": [true, 1, { "$divide": [1, 0] }] }.into()),
        b(1)
    );
}

#[test]
fn types_and_conversions() {
    assert_eq!(ev(doc! { "$type": 1 }.into()), b("int"));
    assert_eq!(ev(doc! { "$type": "$missing" }.into()), b("missing"));
    assert_eq!(ev(doc! { "$type": [[1]] }.into()), b("array"));
    assert_eq!(ev(doc! { "$isNumber": 1.5 }.into()), b(true));
    assert_eq!(ev(doc! { "$isNumber": "1" }.into()), b(false));
    assert_eq!(ev(doc! { "$toString": 1.5 }.into()), b("1.5"));
    assert_eq!(ev(doc! { "$toString": 12i64 }.into()), b("12"));
    assert_eq!(ev(doc! { "$toString": true }.into()), b("true"));
    assert_eq!(
        ev(doc! { "$toString": DateTime::from_millis(0) }.into()),
        b("1970-01-01T00:00:00.000Z")
    );
    assert_eq!(ev(doc! { "$toInt": "42" }.into()), b(42));
    assert_eq!(ev(doc! { "$toInt": 4.9 }.into()), b(4));
    assert_eq!(ev(doc! { "$toInt": true }.into()), b(1));
    let e = run(doc! { "$toInt": "4.5x" }.into(), doc! {}).unwrap_err();
    assert_eq!((e.code, e.code_name), (241, "ConversionFailure"));
    assert_eq!(code(doc! { "$toInt": 3e10 }.into()), 241);
    assert_eq!(
        ev(doc! { "$toLong": "9000000000" }.into()),
        b(9_000_000_000i64)
    );
    assert_eq!(ev(doc! { "$toDouble": "2.5" }.into()), b(2.5));
    assert_eq!(ev(doc! { "$toDouble": Bson::Null }.into()), b(Bson::Null));
    assert_eq!(ev(doc! { "$toDecimal": "1.10" }.into()), b(dec("1.10")));
    assert_eq!(ev(doc! { "$toBool": 0 }.into()), b(false));
    assert_eq!(ev(doc! { "$toBool": "" }.into()), b(true));
    let oid = ObjectId::parse_str("5ab9cbfa31c2ab715d42129e").unwrap();
    assert_eq!(
        ev(doc! { "$toObjectId": "5ab9cbfa31c2ab715d42129e" }.into()),
        b(oid)
    );
    assert_eq!(code(doc! { "$toObjectId": "nope" }.into()), 241);
    assert_eq!(
        ev(doc! { "$toDate": "2024-02-29T13:14:15.678Z" }.into()),
        b(DateTime::from_millis(1_709_212_455_678))
    );
    assert_eq!(
        ev(doc! { "$toDate": 1_000i64 }.into()),
        b(DateTime::from_millis(1000))
    );
    assert_eq!(
        ev(doc! { "$convert": { "input": "abc", "to": "int", "onError": -1 } }.into()),
        b(-1)
    );
    assert_eq!(
        ev(doc! { "$convert": { "input": "$missing", "to": "int", "onNull": 0 } }.into()),
        b(0)
    );
    assert_eq!(
        ev(doc! { "$convert": { "input": "7", "to": 16 } }.into()),
        b(7)
    );
    assert_eq!(
        code(doc! { "$convert": { "input": "abc", "to": "int" } }.into()),
        241
    );
    assert_eq!(
        code(doc! { "$convert": { "input": 1, "to": "bogus" } }.into()),
        2
    );
}

#[test]
fn dates() {
    // 2024-02-29T13:14:15.678Z, a Thursday.
    let d = doc! { "d": DateTime::from_millis(1_709_212_455_678) };
    let part = |op: &str| ev_on(doc! { op: "$d" }.into(), d.clone());
    assert_eq!(part("$year"), b(2024));
    assert_eq!(part("$month"), b(2));
    assert_eq!(part("$dayOfMonth"), b(29));
    assert_eq!(part("$hour"), b(13));
    assert_eq!(part("$minute"), b(14));
    assert_eq!(part("$second"), b(15));
    assert_eq!(part("$millisecond"), b(678));
    assert_eq!(part("$dayOfWeek"), b(5));
    assert_eq!(part("$dayOfYear"), b(60));
    assert_eq!(part("$week"), b(8));
    assert_eq!(
        ev_on(doc! { "$year": "$missing" }.into(), d.clone()),
        b(Bson::Null)
    );
    assert_eq!(code(doc! { "$year": "2024" }.into()), 16006);
    assert_eq!(
        ev_on(
            doc! { "$hour": { "date": "$d", "timezone": "+05:30" } }.into(),
            d.clone()
        ),
        b(18)
    );
    assert_eq!(
        ev_on(
            doc! { "$dateToString": { "date": "$d", "format": "%Y/%m/%d %H:%M:%S.%L %j %w %%" } }
                .into(),
            d.clone()
        ),
        b("2024/02/29 13:14:15.678 060 5 %")
    );
    assert_eq!(
        ev_on(doc! { "$dateToString": { "date": "$d" } }.into(), d.clone()),
        b("2024-02-29T13:14:15.678Z")
    );
    assert_eq!(
        ev_on(
            doc! { "$dateToString": { "date": "$missing", "onNull": "none" } }.into(),
            d.clone()
        ),
        b("none")
    );
    assert_eq!(
        code_on(
            doc! { "$dateToString": { "date": "$d", "format": "%Q" } }.into(),
            d.clone()
        ),
        18536
    );
    assert_eq!(
        code_on(
            doc! { "$dateToString": { "date": "$d", "timezone": "America/New_York" } }.into(),
            d
        ),
        40485
    );
}

#[test]
fn objects() {
    assert_eq!(
        ev(doc! { "$mergeObjects": [ { "a": 1, "b": 1 }, Bson::Null, { "b": 2 } ] }.into()),
        b(doc! { "a": 1, "b": 2 })
    );
    assert_eq!(
        code(doc! { "$mergeObjects": [ { "a": 1 }, 5 ] }.into()),
        40400
    );
    assert_eq!(
        ev_on(
            doc! { "$objectToArray": "$o" }.into(),
            doc! { "o": { "x": 1 } }
        ),
        b(vec![doc! { "k": "x", "v": 1 }])
    );
    assert_eq!(code(doc! { "$objectToArray": 1 }.into()), 40390);
    assert_eq!(
        ev(doc! { "$arrayToObject": [[ ["a", 1], ["b", 2] ]] }.into()),
        b(doc! { "a": 1, "b": 2 })
    );
    assert_eq!(
        ev(doc! { "$arrayToObject": [[ { "k": "a", "v": 1 } ]] }.into()),
        b(doc! { "a": 1 })
    );
    assert_eq!(code(doc! { "$arrayToObject": [[ [1, 2] ]] }.into()), 40395);
    assert_eq!(
        ev_on(
            doc! { "$getField": "a.b" }.into(),
            doc! { "a.b": 5, "a": { "b": 6 } }
        ),
        b(5)
    );
    assert_eq!(
        ev_on(
            doc! { "$getField": { "field": "x", "input": "$o" } }.into(),
            doc! { "o": { "x": 9 } }
        ),
        b(9)
    );
}

#[test]
fn let_and_variables() {
    assert_eq!(
        ev_on(
            doc! { "$let": { "vars": { "t": { "$add": ["$a", 1] } }, "in": { "$multiply": ["$$t", 2] } } }
                .into(),
            doc! { "a": 4 }
        ),
        b(10)
    );
    // Inner bindings shadow outer ones of the same name.
    assert_eq!(
        ev(doc! { "$let": { "vars": { "x": 1 }, "in": { "$let": { "vars": { "x": 2 }, "in": "$$x" } } } }
            .into()),
        b(2)
    );
    assert_eq!(code(doc! { "$add": ["$$nope", 1] }.into()), 17276);
    assert_eq!(
        code(doc! { "$let": { "vars": { "Bad": 1 }, "in": 1 } }.into()),
        16867
    );
}

#[test]
fn unknown_operator_and_shape_errors() {
    let e = run(doc! { "$foo": 1 }.into(), doc! {}).unwrap_err();
    assert_eq!((e.code, e.code_name), (168, "InvalidPipelineOperator"));
    assert_eq!(e.message, "Unrecognized expression '$foo'");
    assert_eq!(code(doc! { "$subtract": [1] }.into()), 16020);
    assert_eq!(code(doc! { "$add": 1, "$sub": 2 }.into()), 15983);
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let mut e: Bson = 1.into();
    for _ in 0..400 {
        e = doc! { "$abs": e }.into();
    }
    assert_eq!(code(e), 2);
}

#[test]
fn expr_in_match_reports_runtime_errors() {
    let stages = doc! { "p": [ { "$match": { "x": 1 } }, { "$match": { "$expr": { "$gt": [ { "$divide": [1, "$y"] }, 0 ] } } } ] };
    let raw = bson::RawDocumentBuf::try_from(&stages).unwrap();
    let p = Pipeline::parse(raw.get_array("p").unwrap()).unwrap();
    let docs = vec![bson::RawDocumentBuf::try_from(&doc! { "x": 1, "y": 0 }).unwrap()];
    assert_eq!(p.run(docs).unwrap_err().code, 2);
}

fn date(s: &str) -> DateTime {
    DateTime::parse_rfc3339_str(s).unwrap()
}

#[test]
fn calendar_operators() {
    let d = doc! { "d": date("2024-01-31T10:00:00Z"), "e": date("2025-03-01T09:00:00Z") };
    let on = |e: Document| ev_on(e.into(), d.clone());
    // Adding a month to January 31st clamps to the end of February.
    assert_eq!(
        on(doc! { "$dateAdd": { "startDate": "$d", "unit": "month", "amount": 1 } }),
        b(date("2024-02-29T10:00:00Z"))
    );
    assert_eq!(
        on(doc! { "$dateSubtract": { "startDate": "$d", "unit": "hour", "amount": 11 } }),
        b(date("2024-01-30T23:00:00Z"))
    );
    assert_eq!(
        on(doc! { "$dateAdd": { "startDate": "$d", "unit": "year", "amount": 1 } }),
        b(date("2025-01-31T10:00:00Z"))
    );
    assert_eq!(
        on(doc! { "$dateAdd": { "startDate": "$missing", "unit": "day", "amount": 1 } }),
        b(Bson::Null)
    );
    assert_eq!(
        code_on(
            doc! { "$dateAdd": { "startDate": "$d", "unit": "fortnight", "amount": 1 } }.into(),
            d.clone()
        ),
        5439014
    );
    assert_eq!(
        on(doc! { "$dateDiff": { "startDate": "$d", "endDate": "$e", "unit": "month" } }),
        b(14i64)
    );
    assert_eq!(
        on(doc! { "$dateDiff": { "startDate": "$d", "endDate": "$e", "unit": "year" } }),
        b(1i64)
    );
    assert_eq!(
        on(doc! { "$dateDiff": { "startDate": "$d", "endDate": "$e", "unit": "day" } }),
        b(395i64)
    );
    assert_eq!(
        on(doc! { "$dateTrunc": { "date": "$d", "unit": "month" } }),
        b(date("2024-01-01T00:00:00Z"))
    );
    assert_eq!(
        on(doc! { "$dateTrunc": { "date": "$d", "unit": "hour", "binSize": 6 } }),
        b(date("2024-01-31T06:00:00Z"))
    );
    // 2024-01-31 is a Wednesday; its week (starting Sunday) began on the 28th.
    assert_eq!(
        on(doc! { "$dateTrunc": { "date": "$d", "unit": "week" } }),
        b(date("2024-01-28T00:00:00Z"))
    );
    assert_eq!(
        on(doc! { "$dateTrunc": { "date": "$d", "unit": "week", "startOfWeek": "monday" } }),
        b(date("2024-01-29T00:00:00Z"))
    );
    assert_eq!(
        ev(doc! { "$dateFromParts": { "year": 2024, "month": 14, "day": 1, "hour": 5 } }.into()),
        b(date("2025-02-01T05:00:00Z"))
    );
    assert_eq!(
        ev(
            doc! { "$dateFromParts": { "isoWeekYear": 2021, "isoWeek": 1, "isoDayOfWeek": 1 } }
                .into()
        ),
        b(date("2021-01-04T00:00:00Z"))
    );
    assert_eq!(code(doc! { "$dateFromParts": { "year": 0 } }.into()), 31095);
    assert_eq!(
        on(doc! { "$dateToParts": { "date": "$d" } }),
        b(
            doc! { "year": 2024, "month": 1, "day": 31, "hour": 10, "minute": 0, "second": 0, "millisecond": 0 }
        )
    );
    assert_eq!(
        ev(doc! { "$dateFromString": { "dateString": "2024-03-05 07:08:09" } }.into()),
        b(date("2024-03-05T07:08:09Z"))
    );
    assert_eq!(
        ev(doc! { "$dateFromString": { "dateString": "05/03/2024", "format": "%d/%m/%Y", "timezone": "+01:00" } }.into()),
        b(date("2024-03-04T23:00:00Z"))
    );
    assert_eq!(
        ev(doc! { "$dateFromString": { "dateString": "nope", "onError": "bad" } }.into()),
        b("bad")
    );
    assert_eq!(
        code(doc! { "$dateFromString": { "dateString": "nope" } }.into()),
        241
    );
}

/// Every operator over awkward values (extremes, wrong types, null, missing) must answer
/// with a value or an error, never a panic.
#[test]
fn extreme_inputs_never_panic() {
    let values: Vec<Bson> = vec![
        Bson::Int32(i32::MIN),
        Bson::Int64(i64::MIN),
        Bson::Int64(i64::MAX),
        Bson::Double(f64::NAN),
        Bson::Double(f64::INFINITY),
        Bson::Double(-1e308),
        dec("1E+6000"),
        Bson::DateTime(DateTime::from_millis(i64::MIN)),
        Bson::DateTime(DateTime::from_millis(i64::MAX)),
        Bson::String("é\u{0}x".into()),
        Bson::String(String::new()),
        Bson::Array(vec![Bson::Null, Bson::Int32(-1)]),
        Bson::Document(doc! { "k": "a", "v": 1 }),
        Bson::Null,
        Bson::String("$missing".into()),
    ];
    let ops = [
        "$add",
        "$subtract",
        "$multiply",
        "$divide",
        "$mod",
        "$abs",
        "$ceil",
        "$floor",
        "$round",
        "$trunc",
        "$pow",
        "$sqrt",
        "$exp",
        "$ln",
        "$log",
        "$log10",
        "$sum",
        "$avg",
        "$min",
        "$max",
        "$stdDevPop",
        "$stdDevSamp",
        "$concat",
        "$substr",
        "$substrBytes",
        "$substrCP",
        "$toUpper",
        "$toLower",
        "$strLenCP",
        "$strLenBytes",
        "$split",
        "$indexOfCP",
        "$indexOfBytes",
        "$strcasecmp",
        "$size",
        "$arrayElemAt",
        "$first",
        "$last",
        "$in",
        "$concatArrays",
        "$slice",
        "$reverseArray",
        "$isArray",
        "$range",
        "$indexOfArray",
        "$setUnion",
        "$setIntersection",
        "$setDifference",
        "$setEquals",
        "$setIsSubset",
        "$allElementsTrue",
        "$anyElementTrue",
        "$type",
        "$isNumber",
        "$toString",
        "$toInt",
        "$toLong",
        "$toDouble",
        "$toDecimal",
        "$toBool",
        "$toObjectId",
        "$toDate",
        "$mergeObjects",
        "$objectToArray",
        "$arrayToObject",
        "$year",
        "$week",
        "$isoWeek",
        "$dayOfYear",
    ];
    for op in ops {
        for a in &values {
            for b2 in &values {
                for args in [
                    vec![a.clone()],
                    vec![a.clone(), b2.clone()],
                    vec![a.clone(), b2.clone(), b2.clone()],
                ] {
                    let _ = run(doc! { op: args }.into(), doc! {});
                }
            }
        }
    }
    for a in &values {
        for unit in ["year", "month", "week", "day", "millisecond"] {
            let _ = run(
                doc! { "$dateAdd": { "startDate": a.clone(), "unit": unit, "amount": i64::MAX } }
                    .into(),
                doc! {},
            );
            let _ = run(
                doc! { "$dateTrunc": { "date": a.clone(), "unit": unit, "binSize": i64::MAX } }
                    .into(),
                doc! {},
            );
            let _ = run(doc! { "$dateDiff": { "startDate": a.clone(), "endDate": Bson::DateTime(DateTime::from_millis(i64::MAX)), "unit": unit } }.into(), doc! {});
        }
        let _ = run(doc! { "$dateFromParts": { "year": 9999, "month": a.clone(), "day": 32767, "hour": 32767, "millisecond": -32768 } }.into(), doc! {});
        let _ = run(
            doc! { "$dateToString": { "date": a.clone(), "format": "%G-%V-%u %b %B %z %Z" } }
                .into(),
            doc! {},
        );
    }
}

#[test]
fn n_array_operators() {
    let a = doc! { "a": [3, Bson::Null, 1, 2] };
    let on = |e: Document| ev_on(e.into(), a.clone());
    assert_eq!(
        on(doc! { "$firstN": { "input": "$a", "n": 2 } }),
        b(vec![Bson::Int32(3), Bson::Null])
    );
    assert_eq!(
        on(doc! { "$lastN": { "input": "$a", "n": 2 } }),
        b(vec![1, 2])
    );
    assert_eq!(
        on(doc! { "$minN": { "input": "$a", "n": 2 } }),
        b(vec![1, 2])
    );
    assert_eq!(
        on(doc! { "$maxN": { "input": "$a", "n": 5 } }),
        b(vec![3, 2, 1])
    );
    assert_eq!(
        code_on(
            doc! { "$firstN": { "input": "$a", "n": 0 } }.into(),
            a.clone()
        ),
        5787908
    );
    assert_eq!(
        on(doc! { "$firstN": { "input": "$missing", "n": 1 } }),
        b(Bson::Null)
    );
}
