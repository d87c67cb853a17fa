//! Well-formed wire-protocol conversations over raw TCP, built by hand:
//! the stdout ready line, OP_QUERY and OP_MSG hello/isMaster, compression
//! negotiated in the handshake followed by real OP_COMPRESSED traffic for
//! snappy, zlib and zstd, and clean shutdown on SIGTERM / SIGINT.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;
use bson::{Bson, Document, doc};

#[test]
fn ready_line_matches_the_contract() {
    let server = Server::start();
    println!("ready line: {}", server.ready_line);
    let want = format!(
        "mangrove ready: listening on {addr}, connect with mongodb://{addr}/",
        addr = server.addr()
    );
    assert_eq!(server.ready_line.trim_end(), want);
    assert_eq!(server.host, "127.0.0.1");
    assert_ne!(server.port, 0);
}

#[test]
fn op_query_and_op_msg_handshakes() {
    let server = Server::start();
    let mut s = server.connect();

    // Legacy OP_QUERY isMaster on admin.$cmd, as old drivers' first message.
    let (r, d) = round_trip(
        &mut s,
        &op_query(
            101,
            "admin.$cmd",
            &doc! {"isMaster": 1, "client": {"driver": {"name": "raw", "version": "0"}}},
        ),
    );
    println!("OP_QUERY isMaster -> opcode {} {d}", r.op_code);
    assert_eq!(
        r.op_code, OP_REPLY,
        "OP_QUERY must be answered with OP_REPLY"
    );
    assert_eq!(r.response_to, 101);
    assert_eq!(ok_value(&d), Some(1.0));
    assert_eq!(d.get_bool("ismaster").ok(), Some(true));
    assert_eq!(d.get_str("setName").ok(), Some("rs0"));
    let hosts: Vec<String> = d
        .get_array("hosts")
        .expect("hosts")
        .iter()
        .filter_map(|h| h.as_str().map(String::from))
        .collect();
    assert_eq!(hosts, vec![server.addr()]);

    // OP_QUERY hello (modern name, legacy opcode)
    let (r, d) = round_trip(&mut s, &op_query(102, "admin.$cmd", &doc! {"hello": 1}));
    assert_eq!(r.op_code, OP_REPLY);
    assert_eq!(r.response_to, 102);
    assert_eq!(d.get_bool("isWritablePrimary").ok(), Some(true));

    // OP_MSG hello and isMaster on the same connection
    let (r, d) = round_trip(&mut s, &op_msg(103, &doc! {"hello": 1, "$db": "admin"}));
    assert_eq!((r.op_code, r.response_to), (OP_MSG, 103));
    assert_eq!(d.get_bool("isWritablePrimary").ok(), Some(true));
    assert_eq!(d.get_str("setName").ok(), Some("rs0"));
    assert_eq!(int_value(&d, "maxMessageSizeBytes"), Some(48_000_000));
    let (r, d) = round_trip(&mut s, &op_msg(104, &doc! {"isMaster": 1, "$db": "admin"}));
    assert_eq!((r.op_code, r.response_to), (OP_MSG, 104));
    assert_eq!(d.get_bool("ismaster").ok(), Some(true));

    // unknown command over raw OP_MSG: the documented error shape
    let (_, d) = round_trip(
        &mut s,
        &op_msg(105, &doc! {"noSuchCommand": 1, "$db": "admin"}),
    );
    assert_eq!(ok_value(&d), Some(0.0));
    assert_eq!(int_value(&d, "code"), Some(59));
    assert_eq!(d.get_str("codeName").ok(), Some("CommandNotFound"));
    assert!(d.get_str("errmsg").is_ok_and(|m| !m.is_empty()));

    // and the connection is still fine
    let (_, d) = round_trip(&mut s, &ping_msg(106));
    assert_eq!(ok_value(&d), Some(1.0));
}

#[test]
fn op_msg_kind1_document_sequence_insert() {
    // Drivers send insert's documents as a kind-1 section; build one by hand.
    let server = Server::start();
    let mut s = server.connect();
    let mut body = op_msg_body_raw(0, &bson_bytes(&doc! {"insert": "seq", "$db": "raw"}));
    let docs: Vec<Vec<u8>> = (0..3)
        .map(|i| bson_bytes(&doc! {"_id": i, "k": "v"}))
        .collect();
    let payload_len: usize = 4 + "documents".len() + 1 + docs.iter().map(Vec::len).sum::<usize>();
    body.push(1);
    body.extend_from_slice(&(payload_len as i32).to_le_bytes());
    body.extend_from_slice(b"documents\0");
    for d in &docs {
        body.extend_from_slice(d);
    }
    let (_, d) = round_trip(&mut s, &frame(201, OP_MSG, &body));
    assert_eq!(ok_value(&d), Some(1.0), "{d}");
    assert_eq!(int_value(&d, "n"), Some(3), "{d}");
    let (_, d) = round_trip(
        &mut s,
        &op_msg(
            202,
            &doc! {"find": "seq", "filter": {}, "sort": {"_id": 1}, "$db": "raw"},
        ),
    );
    let batch = d
        .get_document("cursor")
        .and_then(|c| c.get_array("firstBatch"))
        .unwrap_or_else(|_| panic!("no cursor.firstBatch in {d}"));
    let ids: Vec<Bson> = batch
        .iter()
        .map(|b| b.as_document().unwrap().get("_id").unwrap().clone())
        .collect();
    assert_eq!(ids, vec![Bson::Int32(0), Bson::Int32(1), Bson::Int32(2)]);
}

fn compress(id: u8, data: &[u8]) -> Vec<u8> {
    match id {
        1 => snap::raw::Encoder::new().compress_vec(data).unwrap(),
        2 => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        3 => zstd::bulk::compress(data, 3).unwrap(),
        _ => unreachable!(),
    }
}

fn decompress(id: u8, data: &[u8], size: usize) -> Vec<u8> {
    match id {
        0 => data.to_vec(),
        1 => snap::raw::Decoder::new().decompress_vec(data).unwrap(),
        2 => {
            let mut out = Vec::new();
            flate2::read::ZlibDecoder::new(data)
                .read_to_end(&mut out)
                .unwrap();
            out
        }
        3 => zstd::bulk::decompress(data, size).unwrap(),
        other => panic!("reply uses unknown compressor id {other}"),
    }
}

/// Wraps the OP_MSG `body` in OP_COMPRESSED with compressor `id`.
fn op_compressed(request_id: i32, id: u8, op_msg_body: &[u8]) -> Vec<u8> {
    let mut body = OP_MSG.to_le_bytes().to_vec();
    body.extend_from_slice(&(op_msg_body.len() as i32).to_le_bytes());
    body.push(id);
    body.extend_from_slice(&compress(id, op_msg_body));
    frame(request_id, OP_COMPRESSED, &body)
}

/// Reads a reply that may be OP_COMPRESSED; returns (was_compressed, compressor, doc).
fn read_maybe_compressed(s: &mut TcpStream, want_response_to: i32) -> (bool, u8, Document) {
    let r = match read_message(s) {
        ReadOutcome::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    };
    assert_eq!(r.response_to, want_response_to);
    if r.op_code != OP_COMPRESSED {
        return (false, 0, reply_doc(&r).unwrap());
    }
    let original = i32::from_le_bytes(r.body[0..4].try_into().unwrap());
    let size = i32::from_le_bytes(r.body[4..8].try_into().unwrap()) as usize;
    let id = r.body[8];
    let inner = decompress(id, &r.body[9..], size);
    assert_eq!(
        inner.len(),
        size,
        "uncompressedSize does not match the payload"
    );
    let inner_reply = Reply {
        request_id: r.request_id,
        response_to: r.response_to,
        op_code: original,
        body: inner,
    };
    (true, id, reply_doc(&inner_reply).unwrap())
}

fn compressed_conversation(name: &str, id: u8) {
    let server = Server::start();
    let mut s = server.connect();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (_, hello) = round_trip(
        &mut s,
        &op_msg(1, &doc! {"hello": 1, "compression": [name], "$db": "admin"}),
    );
    println!(
        "handshake with compression [{name}] -> compression field {:?}",
        hello.get("compression")
    );
    assert_eq!(
        hello.get("compression"),
        Some(&Bson::Array(vec![Bson::String(name.into())])),
        "server did not agree to {name}: {hello}"
    );

    // insert a large compressible document through OP_COMPRESSED
    let big = "mangrove ".repeat(5000);
    let insert = op_msg_body_raw(
        0,
        &bson_bytes(&doc! {"insert": "c", "documents": [{"_id": 1, "big": &big}], "$db": "comp"}),
    );
    s.write_all(&op_compressed(2, id, &insert)).unwrap();
    let (compressed, reply_id, d) = read_maybe_compressed(&mut s, 2);
    assert_eq!(ok_value(&d), Some(1.0), "{d}");
    assert_eq!(int_value(&d, "n"), Some(1), "{d}");
    println!("{name}: insert reply compressed={compressed} compressor id={reply_id}");

    // read it back through OP_COMPRESSED; the reply must be compressed too
    let find = op_msg_body_raw(
        0,
        &bson_bytes(&doc! {"find": "c", "filter": {"_id": 1}, "$db": "comp"}),
    );
    s.write_all(&op_compressed(3, id, &find)).unwrap();
    let (compressed, reply_id, d) = read_maybe_compressed(&mut s, 3);
    let batch = d
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap();
    assert_eq!(batch.len(), 1);
    assert_eq!(
        batch[0].as_document().unwrap().get_str("big").ok(),
        Some(big.as_str())
    );
    assert!(
        compressed,
        "{name}: reply to a compressed request was not compressed"
    );
    assert_eq!(reply_id, id, "{name}: reply used a different compressor");

    // an uncompressed request on the same connection is still fine
    let (_, d) = round_trip(&mut s, &ping_msg(4));
    assert_eq!(ok_value(&d), Some(1.0));
}

#[test]
fn compressed_traffic_snappy() {
    compressed_conversation("snappy", 1);
}

#[test]
fn compressed_traffic_zlib() {
    compressed_conversation("zlib", 2);
}

#[test]
fn compressed_traffic_zstd() {
    compressed_conversation("zstd", 3);
}

#[test]
fn compression_negotiation_picks_the_first_supported() {
    let server = Server::start();
    let mut s = server.connect();
    let (_, hello) = round_trip(
        &mut s,
        &op_msg(
            1,
            &doc! {"hello": 1, "compression": ["lz4-nonexistent", "zstd", "zlib"], "$db": "admin"},
        ),
    );
    let agreed: Vec<&str> = hello
        .get_array("compression")
        .map(|a| a.iter().filter_map(|b| b.as_str()).collect())
        .unwrap_or_default();
    println!("offered [lz4-nonexistent, zstd, zlib] -> agreed {agreed:?}");
    assert!(!agreed.is_empty(), "no compressor agreed: {hello}");
    assert_eq!(
        agreed[0], "zstd",
        "server must keep the client's order: {agreed:?}"
    );
    assert!(!agreed.contains(&"lz4-nonexistent"));
}

fn shutdown_with(signal: &str) {
    let mut server = Server::start();
    let addr = server.addr();
    assert_healthy(&server);
    let status = server.stop_with(signal);
    println!("SIG{signal} -> {status:?}");
    let status = status.unwrap_or_else(|| panic!("server did not exit within 15s of SIG{signal}"));
    assert!(status.success(), "exit status after SIG{signal}: {status}");
    assert!(
        TcpStream::connect(&addr).is_err(),
        "port still accepting after shutdown"
    );
}

#[test]
fn clean_shutdown_on_sigterm() {
    shutdown_with("TERM");
}

#[test]
fn clean_shutdown_on_sigint() {
    shutdown_with("INT");
}
