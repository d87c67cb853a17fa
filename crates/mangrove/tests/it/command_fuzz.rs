//! Command-layer fuzzing (issue 11): random command documents, built from the server's own
//! command table (`listCommands`, test commands included) with random fields of random BSON
//! types and extreme values, sent to the real binary over one connection. Every command must
//! be answered, with `ok: 1` or an error carrying a numeric code, without the connection
//! dropping or the server panicking.
//!
//! CI runs it for at most `MANGROVE_FUZZ_SECS` (default 40) seconds or `MANGROVE_FUZZ_CASES`
//! (default 20,000) cases, whichever ends first; raise both for a longer local run, e.g.
//! `MANGROVE_FUZZ_SECS=600 MANGROVE_FUZZ_CASES=1000000 cargo test -p mangrove --test it command_fuzz::`.
//!
//! Fail points are configured with random data too, but `FIELDS` leaves out `closeConnection`
//! and `blockConnection`: those close or stall connections on purpose. After each case the
//! fail points are switched off, every session is killed (ending transactions a case opened)
//! and the transaction lifetime is reset, so one case cannot make the next one wait.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::*;
use bson::{Bson, Document, doc};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Cases per proptest run; the time budget is checked between runs.
const ROUND: u64 = 500;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Argument names the handlers read, so random values reach their parsing and arithmetic.
const FIELDS: &[&str] = &[
    "filter",
    "update",
    "updates",
    "deletes",
    "documents",
    "q",
    "u",
    "limit",
    "skip",
    "sort",
    "projection",
    "batchSize",
    "maxTimeMS",
    "writeConcern",
    "readConcern",
    "lsid",
    "txnNumber",
    "autocommit",
    "startTransaction",
    "ordered",
    "upsert",
    "multi",
    "new",
    "remove",
    "fields",
    "pipeline",
    "cursor",
    "key",
    "indexes",
    "name",
    "expireAfterSeconds",
    "unique",
    "hint",
    "collation",
    "let",
    "query",
    "cursors",
    "to",
    "dropTarget",
    "viewOn",
    "comment",
    "mode",
    "data",
    "w",
    "wtimeout",
    "j",
    "level",
    "afterClusterTime",
    "atClusterTime",
    "nameOnly",
    "explain",
    "verbosity",
    "arrayFilters",
    "collection",
    "stmtIds",
    "maxAwaitTimeMS",
    "transactionLifetimeLimitSeconds",
    "ttlMonitorSleepSecs",
    "ttlMonitorEnabled",
    "maxTransactionLockRequestTimeoutMillis",
    "failCommands",
    "errorCode",
    "times",
    "activationProbability",
    "partialFilterExpression",
    "sparse",
    "singleBatch",
    "min",
    "max",
    "$gt",
    "$lt",
    "$in",
    "$set",
    "$inc",
    "$match",
    "$group",
    "$sort",
    "$limit",
    "$skip",
    "$project",
    "$expr",
    "$add",
    "$dateAdd",
    "$substr",
    "$range",
    "$pow",
    "$toDate",
    "_id",
    "a",
    "a.b",
    "$db",
    "id",
    "startAt",
    "unit",
    "amount",
    "i",
    "t",
];

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(FIELDS).prop_map(str::to_string),
        1 => "[a-z$.]{0,6}",
    ]
}

fn int64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MAX),
        Just(i64::MIN),
        Just(i32::MAX as i64),
        Just(i32::MIN as i64),
        Just(i32::MAX as i64 + 1),
        Just(0),
        Just(-1),
        Just(1),
        -1000i64..1000,
        any::<i64>(),
    ]
}

fn double() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MAX),
        Just(f64::MIN),
        Just(9.3e18),
        Just(-0.0),
        Just(0.5),
        any::<f64>(),
    ]
}

fn leaf() -> impl Strategy<Value = Bson> {
    prop_oneof![
        int64().prop_map(|i| Bson::Int32(i as i32)),
        int64().prop_map(Bson::Int64),
        double().prop_map(Bson::Double),
        "[ -~]{0,12}".prop_map(Bson::String),
        Just(Bson::String("failCommand".into())),
        (0usize..2_000_000).prop_map(|n| Bson::String("z".repeat(n))),
        any::<bool>().prop_map(Bson::Boolean),
        Just(Bson::Null),
        Just(Bson::Undefined),
        Just(Bson::MinKey),
        Just(Bson::MaxKey),
        int64().prop_map(|ms| Bson::DateTime(bson::DateTime::from_millis(ms))),
        (any::<u32>(), any::<u32>())
            .prop_map(|(time, increment)| Bson::Timestamp(bson::Timestamp { time, increment })),
        proptest::collection::vec(any::<u8>(), 0..20).prop_map(|bytes| {
            let subtype = if bytes.len() == 16 {
                bson::spec::BinarySubtype::Uuid
            } else {
                bson::spec::BinarySubtype::Generic
            };
            Bson::Binary(bson::Binary { subtype, bytes })
        }),
        Just(Bson::ObjectId(bson::oid::ObjectId::new())),
        "[a-z.*]{0,5}".prop_map(|p| {
            let pattern = bson::raw::CString::try_from(p);
            let options = bson::raw::CString::try_from(String::new());
            match (pattern, options) {
                (Ok(pattern), Ok(options)) => {
                    Bson::RegularExpression(bson::Regex { pattern, options })
                }
                _ => Bson::Null,
            }
        }),
        "[0-9.eE+-]{1,8}".prop_map(|s| s
            .parse::<bson::Decimal128>()
            .map_or(Bson::Null, Bson::Decimal128)),
    ]
}

/// Documents and arrays nested up to 6 levels, plus chains 90–130 levels deep, around
/// mongod's maxBSONDepth of 100.
fn value() -> impl Strategy<Value = Bson> {
    let nested = leaf().prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Bson::Array),
            proptest::collection::vec((field_name(), inner), 0..6)
                .prop_map(|pairs| Bson::Document(pairs.into_iter().collect())),
        ]
    });
    prop_oneof![
        30 => nested,
        1 => (90usize..130, field_name()).prop_map(|(depth, key)| deep(depth, &key)),
    ]
}

fn deep(depth: usize, key: &str) -> Bson {
    (0..depth).fold(Bson::Int32(1), |inner, i| {
        if i % 2 == 0 {
            Bson::Document(doc! { key: inner })
        } else {
            Bson::Array(vec![inner])
        }
    })
}

/// `{<command>: v, <field>: v, ..., $db: <db>}`, the command name first as mongod requires.
fn command(names: Vec<String>) -> impl Strategy<Value = Document> {
    let db = prop_oneof![
        4 => Just("fuzz".to_string()),
        1 => Just("admin".to_string()),
        1 => Just("config".to_string()),
        1 => "[a-z$.]{0,4}",
    ];
    (
        proptest::sample::select(names),
        value(),
        proptest::collection::vec((field_name(), value()), 0..5),
        db,
    )
        .prop_map(|(name, v, fields, db)| {
            let mut cmd = doc! { name: v };
            for (k, v) in fields {
                if !cmd.contains_key(&k) {
                    cmd.insert(k, v);
                }
            }
            cmd.insert("$db", db);
            cmd
        })
}

/// Sends one command and reads its reply; Err describes a dropped connection or a timeout.
fn exchange(s: &mut TcpStream, cmd: &Document) -> Result<Document, String> {
    let bytes = op_msg(1, cmd);
    s.write_all(&bytes)
        .map_err(|e| format!("write failed: {e}"))?;
    match read_message(s) {
        ReadOutcome::Reply(r) => reply_doc(&r),
        other => Err(format!("no reply: {other:?}")),
    }
}

/// `ok: 1`, or `ok: 0` with a numeric `code` and its `codeName`.
fn well_formed(reply: &Document) -> bool {
    match ok_value(reply) {
        Some(1.0) => true,
        Some(0.0) => {
            let (Some(code), Ok(name)) = (int_value(reply, "code"), reply.get_str("codeName"))
            else {
                return false;
            };
            // mongod names an unnamed code `Location<code>`, never a bare `Location`.
            !name.is_empty() && (!name.starts_with("Location") || name == format!("Location{code}"))
        }
        _ => false,
    }
}

/// Undoes what a case may have switched on, so that cases stay independent.
fn reset(s: &mut TcpStream) -> Result<(), String> {
    for cmd in [
        doc! { "configureFailPoint": "failCommand", "mode": "off", "$db": "admin" },
        doc! { "configureFailPoint": "onPrimaryTransactionalWrite", "mode": "off", "$db": "admin" },
        doc! { "configureFailPoint": "failGetMoreAfterCursorCheckout", "mode": "off", "$db": "admin" },
        doc! { "killAllSessions": [], "$db": "admin" },
        doc! { "setParameter": 1, "transactionLifetimeLimitSeconds": 1, "$db": "admin" },
    ] {
        exchange(s, &cmd)?;
    }
    seed(s)
}

/// Expression and update operators whose arithmetic takes client numbers.
const OPERATORS: &[&str] = &[
    "$add",
    "$subtract",
    "$multiply",
    "$divide",
    "$mod",
    "$pow",
    "$exp",
    "$ln",
    "$log",
    "$log10",
    "$sqrt",
    "$abs",
    "$ceil",
    "$floor",
    "$round",
    "$trunc",
    "$range",
    "$substr",
    "$substrCP",
    "$substrBytes",
    "$indexOfCP",
    "$indexOfBytes",
    "$slice",
    "$arrayElemAt",
    "$zip",
    "$concat",
    "$concatArrays",
    "$split",
    "$strLenCP",
    "$toDate",
    "$toInt",
    "$toLong",
    "$toDouble",
    "$toDecimal",
    "$convert",
    "$dateAdd",
    "$dateSubtract",
    "$dateDiff",
    "$dateTrunc",
    "$dateFromParts",
    "$dateToParts",
    "$dateToString",
    "$dateFromString",
    "$year",
    "$week",
    "$isoWeek",
    "$millisecond",
    "$sum",
    "$avg",
    "$min",
    "$max",
    "$firstN",
    "$lastN",
    "$maxN",
    "$minN",
    "$sortArray",
    "$bitAnd",
    "$bitOr",
    "$bitNot",
    "$replaceAll",
    "$regexMatch",
    "$let",
    "$map",
    "$reduce",
    "$filter",
    "$cond",
    "$switch",
    "$literal",
];
const UPDATE_OPERATORS: &[&str] = &[
    "$set",
    "$inc",
    "$mul",
    "$min",
    "$max",
    "$push",
    "$addToSet",
    "$pop",
    "$pull",
    "$bit",
    "$rename",
    "$unset",
    "$currentDate",
    "$setOnInsert",
];
const STAGES: &[&str] = &[
    "$match",
    "$project",
    "$addFields",
    "$set",
    "$group",
    "$sort",
    "$limit",
    "$skip",
    "$unwind",
    "$bucket",
    "$bucketAuto",
    "$count",
    "$sample",
    "$replaceRoot",
    "$facet",
    "$lookup",
    "$densify",
    "$fill",
    "$setWindowFields",
    "$sortByCount",
    "$unset",
];

/// Aggregation expressions: leaves, field paths, and operators over them.
fn expression() -> impl Strategy<Value = Bson> {
    let leaf = prop_oneof![
        3 => leaf(),
        1 => proptest::sample::select(&["$a", "$t", "$n", "$s", "$arr", "$$ROOT", "$$NOW"][..])
            .prop_map(|p| Bson::String(p.to_string())),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        (
            proptest::sample::select(OPERATORS),
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Bson::Array),
                proptest::collection::vec((field_name(), inner.clone()), 0..4)
                    .prop_map(|pairs| Bson::Document(pairs.into_iter().collect())),
                inner,
            ],
        )
            .prop_map(|(op, args)| Bson::Document(doc! { op: args }))
    })
}

fn small_doc(values: impl Strategy<Value = Bson>) -> impl Strategy<Value = Document> {
    proptest::collection::vec((field_name(), values), 0..3)
        .prop_map(|pairs| pairs.into_iter().collect())
}

/// Commands of the right shape on the seeded collection, with hostile values inside.
fn shaped() -> impl Strategy<Value = Document> {
    let stage = (
        proptest::sample::select(STAGES),
        prop_oneof![expression(), value()],
    )
        .prop_map(|(name, spec)| Bson::Document(doc! { name: spec }));
    let pipeline = proptest::collection::vec(stage, 0..4);
    let update = (
        proptest::sample::select(UPDATE_OPERATORS),
        small_doc(value()),
    )
        .prop_map(|(op, fields)| doc! { op: fields });
    prop_oneof![
        (small_doc(value()), value(), value(), value(), value()).prop_map(|(f, sort, limit, skip, max)| doc! {
            "find": "c", "filter": f, "sort": sort, "limit": limit, "skip": skip, "maxTimeMS": max,
        }),
        (pipeline, value()).prop_map(|(p, batch)| doc! {
            "aggregate": "c", "pipeline": p, "cursor": { "batchSize": batch },
        }),
        (small_doc(expression()), expression()).prop_map(|(f, e)| doc! {
            "find": "c", "filter": { "$expr": e }, "projection": f,
        }),
        (small_doc(value()), update, any::<bool>(), any::<bool>()).prop_map(|(q, u, upsert, multi)| doc! {
            "update": "c", "updates": [{ "q": q, "u": u, "upsert": upsert, "multi": multi }],
        }),
        (value(), value()).prop_map(|(key, ttl)| doc! {
            "createIndexes": "c", "indexes": [{ "key": { "t": key }, "name": "t_1", "expireAfterSeconds": ttl }],
        }),
        (int64(), value(), value()).prop_map(|(id, batch, max)| doc! {
            "getMore": id, "collection": "c", "batchSize": batch, "maxTimeMS": max,
        }),
        (int64(), value(), value()).prop_map(|(txn, level, after)| doc! {
            "find": "c", "lsid": { "id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![7; 16] } },
            "txnNumber": txn, "startTransaction": true, "autocommit": false,
            "readConcern": { "level": level, "afterClusterTime": after },
        }),
        (proptest::sample::select(FIELDS), value()).prop_map(|(name, v)| {
            let mut cmd = doc! { "setParameter": 1 };
            cmd.insert(name, v);
            cmd
        }),
        (value(), value()).prop_map(|(w, wtimeout)| doc! {
            "insert": "c", "documents": [{ "x": 1 }], "writeConcern": { "w": w, "wtimeout": wtimeout },
        }),
    ]
    .prop_map(|mut cmd| {
        cmd.insert("$db", "fuzz");
        cmd
    })
}

/// Documents for the shaped commands to read, match and update.
fn seed(s: &mut TcpStream) -> Result<(), String> {
    let docs: Vec<Bson> = (0..20i64)
        .map(|i| {
            Bson::Document(doc! {
                "_id": i, "a": i * 7 - 50, "n": i as f64 / 3.0, "s": format!("s{i}"),
                "t": bson::DateTime::from_millis(i * 86_400_000), "arr": [i, i + 1, "x"],
            })
        })
        .collect();
    let cmd = doc! { "insert": "c", "documents": docs, "ordered": false, "$db": "fuzz" };
    exchange(s, &cmd).map(|_| ())
}

/// A connection whose reads give up after 30 s: generous for the slowest legitimate case (a
/// blocking stage filling its 100 MB on a loaded CI machine), short enough to report a hang.
fn fuzz_connection(server: &Server) -> TcpStream {
    let s = server.connect();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

fn command_names(s: &mut TcpStream) -> Vec<String> {
    let reply = exchange(s, &doc! { "listCommands": 1, "$db": "admin" }).expect("listCommands");
    let names: Vec<String> = reply
        .get_document("commands")
        .expect("listCommands lists commands")
        .keys()
        .filter(|name| *name != "shutdown")
        .cloned()
        .collect();
    assert!(
        names.contains(&"configureFailPoint".to_string()),
        "test commands listed"
    );
    names
}

#[test]
fn random_commands_are_always_answered() {
    let server = Server::start_with(&[
        "--enable-test-commands",
        "--transaction-lifetime-limit-secs",
        "1",
    ]);
    let s = std::cell::RefCell::new(fuzz_connection(&server));
    let names = command_names(&mut s.borrow_mut());
    let budget = Duration::from_secs(env_or("MANGROVE_FUZZ_SECS", 40));
    let cases = env_or("MANGROVE_FUZZ_CASES", 20_000);
    let start = Instant::now();
    let ran = std::cell::Cell::new(0u64);
    let answered_ok = std::cell::Cell::new(0u64);
    let outcomes = std::cell::RefCell::new(std::collections::BTreeMap::<String, u64>::new());
    let strategy = prop_oneof![command(names), shaped()];
    // Rounds of a few hundred cases, so that the time budget ends the run promptly.
    let mut result = Ok(());
    while result.is_ok() && ran.get() < cases && start.elapsed() < budget {
        let config = Config {
            cases: ROUND.min(cases - ran.get()) as u32,
            failure_persistence: None,
            max_shrink_time: 30_000,
            ..Config::default()
        };
        result = TestRunner::new(config).run(&strategy, |cmd| {
            ran.set(ran.get() + 1);
            let mut s = s.borrow_mut();
            let reply = exchange(&mut s, &cmd).map_err(|e| {
                // Reconnect so that shrinking can go on with the next candidate.
                *s = fuzz_connection(&server);
                TestCaseError::fail(format!("{e}; server log:\n{}", server.log_tail(15)))
            })?;
            prop_assert!(well_formed(&reply), "malformed reply {reply}");
            answered_ok.set(answered_ok.get() + u64::from(ok_value(&reply) == Some(1.0)));
            let outcome = reply.get_str("codeName").unwrap_or("ok").to_string();
            *outcomes.borrow_mut().entry(outcome).or_default() += 1;
            reset(&mut s).map_err(|e| TestCaseError::fail(format!("reset after the case: {e}")))?;
            Ok(())
        });
    }
    println!(
        "command fuzz: {} cases in {:.1} s, {} answered ok:1",
        ran.get(),
        start.elapsed().as_secs_f64(),
        answered_ok.get()
    );
    println!("outcomes: {:?}", outcomes.borrow());
    if let Err(e) = result {
        panic!("{e}");
    }
    let log = std::fs::read_to_string(&server.log_path).unwrap_or_default();
    assert!(
        !log.contains("panicked"),
        "the server panicked:\n{}",
        server.log_tail(40)
    );
    assert_healthy(&server);
}
