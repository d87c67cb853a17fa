//! History retention through the real server: `replSetResizeOplog` with mongod 7.0's
//! validation and codes, `serverStatus.oplogTruncation` and `serverStatus.mangrove.history`,
//! and segments actually removed from disk once the size is lowered.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::*;
use bson::{Bson, Document, doc};

fn command(s: &mut TcpStream, cmd: Document) -> Document {
    round_trip(s, &op_msg(1, &cmd)).1
}

fn resize(s: &mut TcpStream, args: Document) -> Document {
    let mut cmd = doc! { "replSetResizeOplog": 1 };
    cmd.extend(args);
    cmd.insert("$db", "admin");
    command(s, cmd)
}

fn status(s: &mut TcpStream) -> Document {
    let reply = command(s, doc! { "serverStatus": 1, "$db": "admin" });
    assert_eq!(ok_value(&reply), Some(1.0), "{reply}");
    reply
}

fn history(s: &mut TcpStream) -> Document {
    status(s)
        .get_document("mangrove")
        .unwrap()
        .get_document("history")
        .unwrap()
        .clone()
}

fn assert_code(reply: &Document, code: i64, what: &str) {
    assert_eq!(ok_value(reply), Some(0.0), "{what}: {reply}");
    assert_eq!(int_value(reply, "code"), Some(code), "{what}: {reply}");
}

/// Inserts `n` documents of about 100 KB each.
fn insert_large(s: &mut TcpStream, n: i32) {
    let payload = "h".repeat(100 * 1024);
    for i in 0..n {
        let reply = command(
            s,
            doc! { "insert": "c", "documents": [{ "_id": i, "p": payload.as_str() }], "$db": "test" },
        );
        assert_eq!(ok_value(&reply), Some(1.0), "{reply}");
    }
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn resize_oplog_validates_like_mongod_7_0() {
    let server = Server::start_with(&["--replset", "rs0"]);
    let mut s = server.connect();
    let cases: Vec<(Document, i64, &str)> = vec![
        (doc! { "size": 900.0 }, 51024, "below 990 MB"),
        (doc! { "size": -1024.0 }, 51024, "negative"),
        (
            doc! { "size": 8.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 },
            51024,
            "8 EB",
        ),
        (doc! { "size": f64::NAN }, 51024, "NaN"),
        (
            doc! { "size": 990, "minRetentionHours": -1 },
            51024,
            "negative hours",
        ),
        (doc! { "size": "1000" }, 14, "a string"),
        (doc! {}, 72, "neither field"),
        (doc! { "sizee": 1000 }, 40415, "an unknown field"),
    ];
    for (args, code, what) in cases {
        assert_code(&resize(&mut s, args), code, what);
    }
    // Unchanged by any of them.
    assert_eq!(
        history(&mut s).get_i64("sizeLimitBytes").unwrap(),
        1024 * 1024 * 1024
    );
    let reply = command(
        &mut s,
        doc! { "replSetResizeOplog": 1, "size": 1000.0, "$db": "test" },
    );
    assert_code(&reply, 13, "outside admin");

    // The maximum, 1 PB, and hours alone.
    let pb_mb = 1024.0 * 1024.0 * 1024.0;
    let reply = resize(&mut s, doc! { "size": pb_mb, "minRetentionHours": 5 });
    assert_eq!(ok_value(&reply), Some(1.0), "{reply}");
    let reply = resize(&mut s, doc! { "minRetentionHours": 1.5 });
    assert_eq!(ok_value(&reply), Some(1.0), "{reply}");
    let status = status(&mut s);
    let truncation = status.get_document("oplogTruncation").unwrap();
    assert_eq!(truncation.get_f64("oplogMinRetentionHours").unwrap(), 1.5);
    assert_eq!(truncation.get_str("processingMethod").unwrap(), "scanning");
    let history = status
        .get_document("mangrove")
        .unwrap()
        .get_document("history")
        .unwrap();
    assert_eq!(
        history.get_i64("sizeLimitBytes").unwrap(),
        1024i64 * 1024 * 1024 * 1024 * 1024
    );
    assert_eq!(history.get_f64("minRetentionHours").unwrap(), 1.5);
    assert_healthy(&server);
}

#[test]
fn lowering_the_size_removes_history_and_server_status_reports_it() {
    let server = Server::start_with(&[
        "--replset",
        "rs0",
        "--enable-test-commands",
        "--log-segment-size",
        "1",
        "--checkpoint-interval-secs",
        "1",
        "--oplog-size-mb",
        "64",
    ]);
    let mut s = server.connect();
    insert_large(&mut s, 40);
    let before = history(&mut s);
    assert_eq!(before.get_i64("sizeLimitBytes").unwrap(), 64 * 1024 * 1024);
    assert!(
        before.get_i64("retainedBytes").unwrap() > 4_000_000,
        "{before}"
    );
    let oldest = before.get_timestamp("oldest").unwrap();
    let newest = before.get_timestamp("newest").unwrap();
    assert!(oldest < newest, "{before}");
    assert!(matches!(before.get("oldestWall"), Some(Bson::DateTime(_))));
    assert!(matches!(before.get("newestWall"), Some(Bson::DateTime(_))));

    // A small size but a retention the fresh history has not reached: nothing goes.
    let reply = resize(&mut s, doc! { "size": 1.0, "minRetentionHours": 0.5 });
    assert_eq!(ok_value(&reply), Some(1.0), "{reply}");
    std::thread::sleep(Duration::from_millis(2500));
    let kept = history(&mut s);
    assert_eq!(kept.get_timestamp("oldest").unwrap(), oldest, "{kept}");
    let truncation = status(&mut s)
        .get_document("oplogTruncation")
        .unwrap()
        .clone();
    assert_eq!(
        truncation.get_i64("truncateCount").unwrap(),
        0,
        "{truncation}"
    );
    assert_eq!(truncation.get_f64("oplogMinRetentionHours").unwrap(), 0.5);

    // Retention lifted: the next checkpoint removes what the size no longer allows.
    let reply = resize(&mut s, doc! { "minRetentionHours": 0 });
    assert_eq!(ok_value(&reply), Some(1.0), "{reply}");
    wait_for("segments removed", || {
        let t = status(&mut s)
            .get_document("oplogTruncation")
            .unwrap()
            .clone();
        t.get_i64("truncateCount").unwrap() > 0
    });
    let after = history(&mut s);
    assert!(after.get_timestamp("oldest").unwrap() > oldest, "{after}");
    assert!(
        after.get_i64("retainedBytes").unwrap() < before.get_i64("retainedBytes").unwrap() / 2,
        "{after}"
    );
    assert_eq!(after.get_i64("sizeLimitBytes").unwrap(), 1024 * 1024);
    let segments = std::fs::read_dir(server.dir.join("data/log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
        })
        .count();
    assert!(segments <= 3, "{segments} segments left");

    // A change stream from before the retained history cannot be served: ChangeStreamHistoryLost.
    let stream = |start: bson::Timestamp| {
        doc! {
            "aggregate": "c",
            "pipeline": [{ "$changeStream": { "startAtOperationTime": start } }],
            "cursor": {},
            "$db": "test",
        }
    };
    let lost = command(&mut s, stream(oldest));
    assert_code(&lost, 286, "a stream from the removed history");
    let kept_from = after.get_timestamp("oldest").unwrap();
    let reply = command(&mut s, stream(kept_from));
    assert_eq!(
        ok_value(&reply),
        Some(1.0),
        "a stream from the retained history: {reply}"
    );
    // The oplog starts where the history now starts.
    let reply = command(
        &mut s,
        doc! { "find": "oplog.rs", "limit": 1, "$db": "local" },
    );
    let first = reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()[0]
        .as_document()
        .unwrap()
        .get_timestamp("ts")
        .unwrap();
    assert_eq!(first, kept_from, "{reply}");
    assert_healthy(&server);
}
