//! Legacy OP_QUERY commands on `<db>.$cmd` over raw TCP, as old drivers and tools send them
//! (the Prometheus MongoDB exporter, the Java driver 3.6): the handshake, diagnostics, writes,
//! cursors (with a getMore over either opcode), the `$query` wrapper and mongod 5.0's checks,
//! the refused legacy opcodes, malformed bodies and OP_COMPRESSED.
//!
//! Every reply is checked as an OP_REPLY: one document, cursorID 0, startingFrom 0,
//! numberReturned 1, responseFlags 8 (AwaitCapable, what mongod 5.0 set on every command reply)
//! or 2 (QueryFailure) for refused legacy queries and opcodes.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;
use bson::{Bson, Document, doc};

const AWAIT_CAPABLE: i32 = 8;
const QUERY_FAILURE: i32 = 2;

/// OP_QUERY with every header field chosen: flags, namespace, numberToReturn, raw query bytes.
fn query_frame(request_id: i32, flags: u32, ns: &[u8], to_return: i32, query: &[u8]) -> Vec<u8> {
    let mut body = flags.to_le_bytes().to_vec();
    body.extend_from_slice(ns);
    body.push(0);
    body.extend_from_slice(&0i32.to_le_bytes());
    body.extend_from_slice(&to_return.to_le_bytes());
    body.extend_from_slice(query);
    frame(request_id, OP_QUERY, &body)
}

/// The OP_REPLY's fixed fields: responseFlags, cursorID, startingFrom, numberReturned.
fn reply_fields(r: &Reply) -> (i32, i64, i32, i32) {
    assert_eq!(r.op_code, OP_REPLY, "an OP_QUERY is answered with OP_REPLY");
    let b = &r.body;
    (
        i32::from_le_bytes(b[0..4].try_into().unwrap()),
        i64::from_le_bytes(b[4..12].try_into().unwrap()),
        i32::from_le_bytes(b[12..16].try_into().unwrap()),
        i32::from_le_bytes(b[16..20].try_into().unwrap()),
    )
}

/// Sends a command as OP_QUERY to `<db>.$cmd` and checks the reply's shape (one document,
/// flags 8, no legacy cursor); returns the document.
fn command(s: &mut TcpStream, id: i32, db: &str, cmd: &Document) -> Document {
    let (r, d) = round_trip(s, &op_query(id, &format!("{db}.$cmd"), cmd));
    assert_eq!(r.response_to, id);
    assert_eq!(
        reply_fields(&r),
        (AWAIT_CAPABLE, 0, 0, 1),
        "reply to {cmd}: {d}"
    );
    d
}

fn assert_error(d: &Document, code: i64, name: &str) {
    assert_eq!(ok_value(d), Some(0.0), "{d}");
    assert_eq!(int_value(d, "code"), Some(code), "{d}");
    assert_eq!(d.get_str("codeName").ok(), Some(name), "{d}");
    assert!(d.get_str("errmsg").is_ok_and(|m| !m.is_empty()), "{d}");
}

fn ids(batch: &[Bson]) -> Vec<i32> {
    batch
        .iter()
        .filter_map(|b| b.as_document()?.get_i32("_id").ok())
        .collect()
}

#[test]
fn diagnostics_and_handshake() {
    let server = Server::start();
    let mut s = server.connect();
    let d = command(&mut s, 1, "admin", &doc! {"isMaster": 1});
    assert_eq!(d.get_bool("ismaster").ok(), Some(true), "{d}");
    let d = command(&mut s, 2, "admin", &doc! {"ping": 1});
    assert_eq!(ok_value(&d), Some(1.0), "{d}");
    // Old tools spell it in lower case.
    let d = command(&mut s, 3, "admin", &doc! {"buildinfo": 1});
    assert!(d.get_str("version").is_ok(), "{d}");
    let d = command(&mut s, 4, "admin", &doc! {"serverStatus": 1});
    assert_eq!(ok_value(&d), Some(1.0), "{d}");
    assert!(d.get_document("connections").is_ok(), "{d}");
    let d = command(&mut s, 5, "admin", &doc! {"noSuchCommand": 1});
    assert_error(&d, 59, "CommandNotFound");
    // The connection still serves OP_MSG too.
    let (_, d) = round_trip(&mut s, &ping_msg(6));
    assert_eq!(ok_value(&d), Some(1.0));
}

#[test]
fn writes_reads_and_cursors() {
    let server = Server::start();
    let mut s = server.connect();
    let docs: Vec<Document> = (0..5).map(|i| doc! {"_id": i, "k": "v"}).collect();
    let d = command(
        &mut s,
        1,
        "legacy",
        &doc! {"insert": "c", "documents": docs},
    );
    assert_eq!(ok_value(&d), Some(1.0), "{d}");
    assert_eq!(int_value(&d, "n"), Some(5), "{d}");

    let d = command(&mut s, 2, "legacy", &doc! {"find": "c", "sort": {"_id": 1}});
    let cursor = d.get_document("cursor").expect("cursor");
    assert_eq!(
        ids(cursor.get_array("firstBatch").unwrap()),
        [0, 1, 2, 3, 4]
    );
    assert_eq!(cursor.get_str("ns").ok(), Some("legacy.c"));

    let d = command(&mut s, 3, "admin", &doc! {"listDatabases": 1});
    let names: Vec<&str> = d
        .get_array("databases")
        .expect("databases")
        .iter()
        .filter_map(|db| db.as_document()?.get_str("name").ok())
        .collect();
    assert!(names.contains(&"legacy"), "{d}");
    let d = command(&mut s, 4, "legacy", &doc! {"listCollections": 1});
    let first = d
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"));
    assert_eq!(first.map(Vec::len).ok(), Some(1), "{d}");
    let d = command(&mut s, 5, "legacy", &doc! {"listIndexes": "c"});
    assert!(d.get_document("cursor").is_ok(), "{d}");

    // A cursor opened over OP_QUERY, continued over OP_QUERY and then OP_MSG.
    let find = doc! {"find": "c", "sort": {"_id": 1}, "batchSize": 2};
    let d = command(&mut s, 6, "legacy", &find);
    let cursor = d.get_document("cursor").unwrap();
    let id = cursor.get_i64("id").unwrap();
    assert_ne!(id, 0, "{d}");
    assert_eq!(ids(cursor.get_array("firstBatch").unwrap()), [0, 1]);
    let more = doc! {"getMore": id, "collection": "c", "batchSize": 2};
    let d = command(&mut s, 7, "legacy", &more);
    let batch = d
        .get_document("cursor")
        .and_then(|c| c.get_array("nextBatch"));
    assert_eq!(ids(batch.unwrap()), [2, 3], "{d}");
    let mut msg = more.clone();
    msg.insert("$db", "legacy");
    let (r, d) = round_trip(&mut s, &op_msg(8, &msg));
    assert_eq!(r.op_code, OP_MSG);
    let cursor = d.get_document("cursor").unwrap();
    assert_eq!(ids(cursor.get_array("nextBatch").unwrap()), [4], "{d}");
    assert_eq!(cursor.get_i64("id").ok(), Some(0), "{d}");

    // And the other way: opened over OP_MSG, continued over OP_QUERY.
    let mut find_msg = find.clone();
    find_msg.insert("$db", "legacy");
    let (_, d) = round_trip(&mut s, &op_msg(9, &find_msg));
    let id = d.get_document("cursor").unwrap().get_i64("id").unwrap();
    let more = doc! {"getMore": id, "collection": "c", "batchSize": 10};
    let d = command(&mut s, 10, "legacy", &more);
    let batch = d
        .get_document("cursor")
        .and_then(|c| c.get_array("nextBatch"));
    assert_eq!(ids(batch.unwrap()), [2, 3, 4], "{d}");

    let pipeline = vec![
        doc! {"$match": {"_id": {"$gte": 3}}},
        doc! {"$sort": {"_id": 1}},
    ];
    let agg = doc! {"aggregate": "c", "pipeline": pipeline, "cursor": {}};
    let d = command(&mut s, 11, "legacy", &agg);
    let batch = d
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"));
    assert_eq!(ids(batch.unwrap()), [3, 4], "{d}");
}

#[test]
fn legacy_wrapper_and_mongod_checks() {
    let server = Server::start();
    let mut s = server.connect();
    let d = command(
        &mut s,
        1,
        "w",
        &doc! {"insert": "c", "documents": [{"_id": 1}]},
    );
    assert_eq!(ok_value(&d), Some(1.0), "{d}");
    // `$query` with the read preference beside it, as mongos-era drivers sent it.
    let wrapped = doc! {
        "$query": {"find": "c", "filter": {"_id": 1}},
        "$readPreference": {"mode": "primaryPreferred"},
    };
    let d = command(&mut s, 2, "w", &wrapped);
    let batch = d
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"));
    assert_eq!(ids(batch.unwrap()), [1], "{d}");
    let d = command(
        &mut s,
        3,
        "w",
        &doc! {"query": {"count": "c"}, "$orderby": {}},
    );
    assert_eq!(int_value(&d, "n"), Some(1), "{d}");
    // `$maxTimeMS` is refused beside a wrapped command, as mongod did.
    let d = command(
        &mut s,
        4,
        "w",
        &doc! {"$query": {"ping": 1}, "$maxTimeMS": 10},
    );
    assert_error(&d, 72, "InvalidOptions");
    // `$db` comes from the namespace only.
    let d = command(&mut s, 5, "w", &doc! {"ping": 1, "$db": "other"});
    assert_error(&d, 40621, "Location40621");
    let d = command(&mut s, 6, "w", &doc! {"$query": 5});
    assert_eq!(ok_value(&d), Some(0.0), "{d}");
    // The secondaryOk flag is accepted (a read preference on a primary).
    let ping = bson_bytes(&doc! {"count": "c"});
    let (r, d) = round_trip(&mut s, &query_frame(7, 4, b"w.$cmd", 1, &ping));
    assert_eq!(reply_fields(&r).0, AWAIT_CAPABLE);
    assert_eq!(int_value(&d, "n"), Some(1), "{d}");
    // numberToReturn other than 1 or -1, and exhaust, are command errors.
    for (id, n) in [(8, 0), (9, -2), (10, 5), (11, i32::MIN)] {
        let (r, d) = round_trip(&mut s, &query_frame(id, 0, b"w.$cmd", n, &ping));
        assert_eq!(reply_fields(&r), (AWAIT_CAPABLE, 0, 0, 1));
        assert_error(&d, 16979, "Location16979");
    }
    let (_, d) = round_trip(&mut s, &query_frame(12, 1 << 6, b"w.$cmd", -1, &ping));
    assert_error(&d, 18527, "Location18527");
    for (id, ns) in [(13, &b".$cmd"[..]), (14, b"a b.$cmd"), (15, b"a.b.$cmd")] {
        let (_, d) = round_trip(&mut s, &query_frame(id, 0, ns, -1, &ping));
        assert_error(&d, 73, "InvalidNamespace");
    }
    let d = command(&mut s, 16, "w", &doc! {});
    assert_error(&d, 59, "CommandNotFound");
}

#[test]
fn legacy_find_and_other_opcodes_refused() {
    let server = Server::start();
    let mut s = server.connect();
    let (r, d) = round_trip(&mut s, &op_query(1, "legacy.c", &doc! {"_id": 1}));
    assert_eq!(reply_fields(&r), (QUERY_FAILURE, 0, 0, 1), "{d}");
    assert_eq!(int_value(&d, "code"), Some(352), "{d}");
    let err = d.get_str("$err").unwrap_or_default();
    assert!(err.contains("OP_QUERY") && err.contains("OP_MSG"), "{d}");

    let legacy = [
        (2001, "OP_UPDATE"),
        (2002, "OP_INSERT"),
        (2005, "OP_GET_MORE"),
    ];
    for (i, (op, name)) in legacy.into_iter().chain([(2006, "OP_DELETE")]).enumerate() {
        let id = 10 + i as i32;
        let mut body = 0i32.to_le_bytes().to_vec();
        body.extend_from_slice(b"legacy.c\0");
        body.extend_from_slice(&bson_bytes(&doc! {"_id": 1}));
        let (r, d) = round_trip(&mut s, &frame(id, op, &body));
        assert_eq!(r.response_to, id);
        assert_eq!(reply_fields(&r).0, QUERY_FAILURE, "{d}");
        let err = d.get_str("$err").unwrap_or_default();
        assert!(err.contains(name) && err.contains("OP_MSG"), "{op}: {d}");
        assert_eq!(ok_value(&d), Some(0.0), "{d}");
    }
    let d = command(&mut s, 20, "admin", &doc! {"ping": 1});
    assert_eq!(ok_value(&d), Some(1.0), "{d}");
}

/// OP_QUERY bodies with broken fields; each is answered or closes the connection, and the
/// server keeps serving.
fn malformed_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let ping = bson_bytes(&doc! {"ping": 1});
    let mut v: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let body = |bytes: &[u8]| frame(77, OP_QUERY, bytes);
    v.push(("empty body", body(&[])));
    v.push(("flags only", body(&0u32.to_le_bytes())));
    let mut name_only = 0u32.to_le_bytes().to_vec();
    name_only.extend_from_slice(b"admin.$cmd");
    v.push(("unterminated name", body(&name_only)));
    name_only.push(0);
    v.push(("name without numbers", body(&name_only)));
    let mut numbers = name_only.clone();
    numbers.extend_from_slice(&0i32.to_le_bytes());
    numbers.extend_from_slice(&(-1i32).to_le_bytes());
    v.push(("no query document", body(&numbers)));
    let mut bad = ping.clone();
    bad[0] = bad[0].wrapping_add(3);
    v.push((
        "query length past the end",
        query_frame(77, 0, b"admin.$cmd", -1, &bad),
    ));
    let mut bad = ping.clone();
    bad[4] = 0x7f;
    v.push((
        "unknown element type",
        query_frame(77, 0, b"admin.$cmd", -1, &bad),
    ));
    let mut huge = ping.clone();
    huge[0..4].copy_from_slice(&(64 * 1024 * 1024i32).to_le_bytes());
    v.push((
        "query declares 64 MiB",
        query_frame(77, 0, b"admin.$cmd", -1, &huge),
    ));
    v.push((
        "negative numberToReturn",
        query_frame(77, 0, b"admin.$cmd", -7, &ping),
    ));
    v.push((
        "name not UTF-8",
        query_frame(77, 0, b"adm\xffin.$cmd", -1, &ping),
    ));
    let mut trailing = ping.clone();
    trailing.extend_from_slice(&[1, 2, 3]);
    v.push((
        "trailing bytes",
        query_frame(77, 0, b"admin.$cmd", -1, &trailing),
    ));
    v.push(("empty name", query_frame(77, 0, b"", -1, &ping)));
    v
}

#[test]
fn malformed_bodies_answered_or_closed() {
    let server = Server::start();
    for (name, bytes) in malformed_bodies() {
        let mut s = server.connect();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&bytes).unwrap();
        match read_message(&mut s) {
            ReadOutcome::Reply(r) => {
                let (flags, cursor, _, returned) = reply_fields(&r);
                let d = reply_doc(&r).unwrap();
                println!("{name}: flags {flags} -> {d}");
                assert_eq!((cursor, returned), (0, 1), "{name}");
                assert_eq!(ok_value(&d), Some(0.0), "{name}: {d}");
                assert!(int_value(&d, "code").is_some(), "{name}: {d}");
                // The same connection is still served.
                let d = command(&mut s, 78, "admin", &doc! {"ping": 1});
                assert_eq!(ok_value(&d), Some(1.0), "{name}: {d}");
            }
            ReadOutcome::Closed { .. } => println!("{name}: connection closed"),
            ReadOutcome::TimedOut { .. } => panic!("{name}: neither answered nor closed"),
        }
        assert_healthy(&server);
    }
}

#[test]
fn compressed_op_query() {
    let server = Server::start();
    let mut s = server.connect();
    let hello = doc! {"isMaster": 1, "compression": ["snappy"]};
    let d = command(&mut s, 1, "admin", &hello);
    assert_eq!(
        d.get_array("compression").ok(),
        Some(&vec![Bson::from("snappy")])
    );
    let inner = &query_frame(0, 0, b"admin.$cmd", -1, &bson_bytes(&doc! {"ping": 1}))[16..];
    let mut body = OP_QUERY.to_le_bytes().to_vec();
    body.extend_from_slice(&(inner.len() as i32).to_le_bytes());
    body.push(1);
    body.extend_from_slice(&snap::raw::Encoder::new().compress_vec(inner).unwrap());
    s.write_all(&frame(2, OP_COMPRESSED, &body)).unwrap();
    let r = match read_message(&mut s) {
        ReadOutcome::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    };
    assert_eq!((r.op_code, r.response_to), (OP_COMPRESSED, 2));
    assert_eq!(
        i32::from_le_bytes(r.body[0..4].try_into().unwrap()),
        OP_REPLY
    );
    assert_eq!(r.body[8], 1, "answered with snappy");
    let unpacked = snap::raw::Decoder::new()
        .decompress_vec(&r.body[9..])
        .unwrap();
    let reply = Reply {
        request_id: r.request_id,
        response_to: r.response_to,
        op_code: OP_REPLY,
        body: unpacked,
    };
    assert_eq!(reply_fields(&reply), (AWAIT_CAPABLE, 0, 0, 1));
    assert_eq!(ok_value(&reply_doc(&reply).unwrap()), Some(1.0));
}

#[test]
fn authorization_applies() {
    let server = Server::start_with(&["--replset", "rs0", "--auth"]);
    let mut s = server.connect();
    let d = command(&mut s, 1, "admin", &doc! {"isMaster": 1});
    assert_eq!(ok_value(&d), Some(1.0), "{d}");
    let d = command(&mut s, 2, "t", &doc! {"find": "c"});
    assert_error(&d, 13, "Unauthorized");
    let d = command(&mut s, 3, "admin", &doc! {"$query": {"listDatabases": 1}});
    assert_error(&d, 13, "Unauthorized");
}
