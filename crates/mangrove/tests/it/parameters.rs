//! setParameter and maxTimeMS at their extremes (issue 11, point 4): every value outside
//! mongod 7.0's range is refused with BadValue (2) and leaves the old value, the server stays
//! healthy, and DDL behind an open transaction waits only as long as it is told to.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::*;
use bson::{Bson, Document, doc};

const BAD_VALUE: i64 = 2;

fn command(s: &mut TcpStream, cmd: Document) -> Document {
    round_trip(s, &op_msg(1, &cmd)).1
}

fn set(s: &mut TcpStream, name: &str, value: Bson) -> Document {
    let mut cmd = doc! { "setParameter": 1 };
    cmd.insert(name, value);
    cmd.insert("$db", "admin");
    command(s, cmd)
}

fn get(s: &mut TcpStream, name: &str) -> Bson {
    let mut cmd = doc! { "getParameter": 1 };
    cmd.insert(name, 1);
    cmd.insert("$db", "admin");
    let reply = command(s, cmd);
    reply.get(name).cloned().unwrap_or(Bson::Null)
}

/// Values every int32 parameter must refuse, whatever its lower bound.
fn always_bad() -> Vec<Bson> {
    vec![
        Bson::Int64(i64::MAX),
        Bson::Int64(i64::MIN),
        Bson::Int64(i32::MAX as i64 + 1),
        Bson::Double(f64::NAN),
        Bson::Double(f64::INFINITY),
        Bson::Double(f64::NEG_INFINITY),
        Bson::Double(1e300),
        Bson::String("60".into()),
        Bson::Null,
        Bson::Document(doc! { "x": 1 }),
        Bson::Array(vec![Bson::Int32(1)]),
    ]
}

/// Refused values answer BadValue and leave `keep` in place; accepted ones read back.
fn check_parameter(
    s: &mut TcpStream,
    name: &str,
    keep: i64,
    bad: Vec<Bson>,
    good: Vec<(Bson, i64)>,
) {
    assert_eq!(ok_value(&set(s, name, Bson::Int64(keep))), Some(1.0));
    for value in bad {
        let reply = set(s, name, value.clone());
        assert_eq!(ok_value(&reply), Some(0.0), "{name} = {value}: {reply}");
        assert_eq!(
            int_value(&reply, "code"),
            Some(BAD_VALUE),
            "{name} = {value}: {reply}"
        );
        assert_eq!(reply.get_str("codeName").ok(), Some("BadValue"), "{reply}");
        let message = reply.get_str("errmsg").unwrap_or_default();
        assert!(
            message.contains(&format!("Invalid value for parameter {name}")),
            "{message}"
        );
        assert_eq!(
            int_value(&get_doc(s, name), name),
            Some(keep),
            "{name} changed by {value}"
        );
    }
    for (value, read_back) in good {
        let reply = set(s, name, value.clone());
        assert_eq!(ok_value(&reply), Some(1.0), "{name} = {value}: {reply}");
        assert_eq!(
            int_value(&get_doc(s, name), name),
            Some(read_back),
            "{name} = {value}"
        );
    }
    assert_eq!(ok_value(&set(s, name, Bson::Int64(keep))), Some(1.0));
}

fn get_doc(s: &mut TcpStream, name: &str) -> Document {
    let mut d = Document::new();
    d.insert(name, get(s, name));
    d
}

#[test]
fn set_parameter_refuses_values_outside_mongods_ranges() {
    let server = Server::start();
    let mut s = server.connect();
    let positive = || {
        let mut bad = always_bad();
        bad.extend([
            Bson::Int32(0),
            Bson::Int32(-1),
            Bson::Double(0.5),
            Bson::Double(-1.0),
        ]);
        let good = vec![
            (Bson::Int32(i32::MAX), i32::MAX as i64),
            (Bson::Int64(1), 1),
            (Bson::Double(2.7), 2),
        ];
        (bad, good)
    };
    for name in ["transactionLifetimeLimitSeconds", "ttlMonitorSleepSecs"] {
        let (bad, good) = positive();
        check_parameter(&mut s, name, 60, bad, good);
    }
    let good = vec![
        (Bson::Int32(0), 0),
        (Bson::Int32(-1), -1),
        (Bson::Int32(i32::MIN), i32::MIN as i64),
        (Bson::Int32(i32::MAX), i32::MAX as i64),
    ];
    check_parameter(
        &mut s,
        "maxTransactionLockRequestTimeoutMillis",
        5,
        always_bad(),
        good,
    );

    let reply = set(&mut s, "ttlMonitorEnabled", Bson::String("yes".into()));
    assert_eq!(int_value(&reply, "code"), Some(BAD_VALUE), "{reply}");
    let reply = set(&mut s, "noSuchParameter", Bson::Int32(1));
    assert_eq!(int_value(&reply, "code"), Some(72), "{reply}");
    assert_healthy(&server);
}

#[test]
fn max_time_ms_outside_its_range_is_bad_value() {
    let server = Server::start();
    let mut s = server.connect();
    for value in [
        Bson::Int64(-1),
        Bson::Int64(i32::MAX as i64 + 1),
        Bson::Int64(i64::MAX),
        Bson::Int64(i64::MIN),
        Bson::Double(1.5),
        Bson::Double(f64::NAN),
        Bson::Double(f64::INFINITY),
        Bson::String("100".into()),
    ] {
        let reply = command(
            &mut s,
            doc! { "find": "c", "maxTimeMS": value.clone(), "$db": "t" },
        );
        assert_eq!(
            int_value(&reply, "code"),
            Some(BAD_VALUE),
            "maxTimeMS {value}: {reply}"
        );
    }
    let reply = command(
        &mut s,
        doc! { "find": "c", "maxTimeMS": i32::MAX, "$db": "t" },
    );
    assert_eq!(ok_value(&reply), Some(1.0), "{reply}");
    assert_healthy(&server);
}

fn lsid() -> Document {
    let id = bson::Binary {
        subtype: bson::spec::BinarySubtype::Uuid,
        bytes: (1..=16).collect(),
    };
    doc! { "id": id }
}

/// Opens a transaction on t.c through `s` (one insert) and leaves it open.
fn open_transaction(s: &mut TcpStream) {
    let reply = command(
        s,
        doc! {
            "insert": "c", "documents": [{ "_id": 2 }], "lsid": lsid(), "txnNumber": 1i64,
            "startTransaction": true, "autocommit": false, "$db": "t",
        },
    );
    assert_eq!(ok_value(&reply), Some(1.0), "{reply}");
}

#[test]
fn drop_behind_a_transaction_with_a_huge_lifetime_waits_only_as_told() {
    let server = Server::start();
    let mut s = server.connect();
    // The value that used to overflow the clock in drop's wait is refused outright.
    let reply = set(
        &mut s,
        "transactionLifetimeLimitSeconds",
        Bson::Int64(i64::MAX),
    );
    assert_eq!(int_value(&reply, "code"), Some(BAD_VALUE), "{reply}");
    let reply = set(
        &mut s,
        "transactionLifetimeLimitSeconds",
        Bson::Int32(i32::MAX),
    );
    assert_eq!(ok_value(&reply), Some(1.0), "{reply}");
    command(
        &mut s,
        doc! { "insert": "c", "documents": [{ "_id": 1 }], "$db": "t" },
    );
    open_transaction(&mut s);

    let mut ddl = server.connect();
    let start = Instant::now();
    let reply = command(&mut ddl, doc! { "drop": "c", "maxTimeMS": 300, "$db": "t" });
    let waited = start.elapsed();
    println!(
        "drop with maxTimeMS 300 behind an open transaction answered after {waited:?}: {reply}"
    );
    assert_eq!(
        int_value(&reply, "code"),
        Some(50),
        "MaxTimeMSExpired: {reply}"
    );
    assert!(waited < Duration::from_secs(3), "{waited:?}");

    // Without maxTimeMS, drop waits for the transaction and no longer: abort it meanwhile.
    let addr = server.addr();
    let dropper = std::thread::spawn(move || {
        let mut ddl = TcpStream::connect(addr).unwrap();
        ddl.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let start = Instant::now();
        let reply = command(&mut ddl, doc! { "drop": "c", "$db": "t" });
        (reply, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let reply = command(
        &mut s,
        doc! { "abortTransaction": 1, "lsid": lsid(), "txnNumber": 1i64, "autocommit": false, "$db": "admin" },
    );
    assert_eq!(ok_value(&reply), Some(1.0), "{reply}");
    let (reply, waited) = dropper.join().unwrap();
    println!(
        "drop without maxTimeMS returned {waited:?} after it was sent, once the transaction aborted"
    );
    assert_eq!(ok_value(&reply), Some(1.0), "{reply}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_healthy(&server);
}

#[test]
fn ttl_expire_after_seconds_outside_its_range_is_cannot_create_index() {
    let server = Server::start();
    let mut s = server.connect();
    let create = |s: &mut TcpStream, ttl: Bson| {
        command(
            s,
            doc! {
                "createIndexes": "c",
                "indexes": [{ "key": { "t": 1 }, "name": "t_1", "expireAfterSeconds": ttl }],
                "$db": "t",
            },
        )
    };
    for ttl in [
        Bson::Int32(-1),
        Bson::Int64(i32::MAX as i64 + 1),
        Bson::Int64(i64::MAX),
        Bson::Int64(i64::MIN),
        Bson::Double(f64::NAN),
        Bson::Double(f64::INFINITY),
        Bson::Double(-0.5),
        Bson::String("60".into()),
    ] {
        let reply = create(&mut s, ttl.clone());
        assert_eq!(
            int_value(&reply, "code"),
            Some(67),
            "expireAfterSeconds {ttl}: {reply}"
        );
    }
    // Other numeric types are accepted and kept as whole seconds.
    let reply = create(&mut s, Bson::Double(100.7));
    assert_eq!(ok_value(&reply), Some(1.0), "{reply}");
    let reply = command(&mut s, doc! { "listIndexes": "c", "$db": "t" });
    let batch = reply
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .expect("listIndexes batch");
    let ttl = batch
        .iter()
        .filter_map(Bson::as_document)
        .find(|i| i.get_str("name").is_ok_and(|n| n == "t_1"))
        .and_then(|i| i.get("expireAfterSeconds").cloned());
    assert_eq!(ttl, Some(Bson::Int32(100)), "{reply}");
    assert_healthy(&server);
}
