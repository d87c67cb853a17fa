//! Malformed-input suite over raw TCP (no driver), against one spawned server.
//!
//! Every message is built by hand here (little-endian header: messageLength,
//! requestID, responseTo, opCode; OP_MSG body: flagBits, section kind, BSON)
//! so the suite does not depend on the server's own codec.
//!
//! Rules checked for every case:
//! * a well-delimited frame (the declared length matches the bytes sent and is
//!   within limits) gets an error reply `{ok: 0, code, errmsg}` whose
//!   `responseTo` is our requestID;
//! * a frame that cannot be delimited (truncated, lying or oversized length)
//!   makes the server close the connection;
//! * after each case a separate, healthy connection still gets `ping` ->
//!   `ok: 1`, and the server process is the same PID, still running.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::common::*;
use bson::{Document, doc};

const MAX_MESSAGE: i32 = 48_000_000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// `{ok: 0, code, errmsg}` reply to our request.
    ErrorReply,
    /// The connection is closed (an error reply before the close is tolerated).
    Close,
    /// Either of the above is acceptable; only server health is checked.
    ErrorOrClose,
}

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    /// Half-close our write side after sending (simulates the client closing).
    then_close: bool,
    expect: Expect,
}

const REQ: i32 = 0x1234_5678;

fn ping_bson() -> Vec<u8> {
    bson_bytes(&doc! { "ping": 1, "$db": "admin" })
}

/// A BSON document with the given raw element bytes (type, name, value) and a
/// correct length prefix and terminator.
fn raw_doc(elements: &[u8]) -> Vec<u8> {
    let mut v = ((elements.len() + 5) as i32).to_le_bytes().to_vec();
    v.extend_from_slice(elements);
    v.push(0);
    v
}

fn db_element() -> Vec<u8> {
    // "$db": "admin"
    let mut e = vec![0x02];
    e.extend_from_slice(b"$db\0");
    e.extend_from_slice(&6i32.to_le_bytes());
    e.extend_from_slice(b"admin\0");
    e
}

fn msg_with_doc(raw: Vec<u8>) -> Vec<u8> {
    frame(REQ, OP_MSG, &op_msg_body_raw(0, &raw))
}

fn cases() -> Vec<Case> {
    let ping = ping_msg(REQ);
    let mut v = Vec::new();

    // ---- frames that cannot be delimited: expect the connection to close ----
    v.push(Case {
        name: "truncated header (10 of 16 bytes) then close",
        bytes: ping[..10].to_vec(),
        then_close: true,
        expect: Expect::Close,
    });
    for (name, len) in [
        ("length prefix 8 (shorter than the 16-byte header)", 8),
        ("length prefix 0", 0),
        ("length prefix -1", -1),
        ("length prefix 15", 15),
    ] {
        let mut b = header(len, REQ, 0, OP_MSG);
        b.extend_from_slice(&ping[16..]);
        v.push(Case {
            name,
            bytes: b,
            then_close: false,
            expect: Expect::Close,
        });
    }
    {
        // declares 1000 bytes, sends the 16-byte header + 84 bytes, then closes
        let mut b = header(1000, REQ, 0, OP_MSG);
        b.extend(std::iter::repeat_n(0xAAu8, 84));
        v.push(Case {
            name: "length prefix 1000 but only 100 bytes sent, then close",
            bytes: b,
            then_close: true,
            expect: Expect::Close,
        });
    }
    for (name, len) in [
        (
            "declared length 48,000,001 (over maxMessageSizeBytes)",
            MAX_MESSAGE + 1,
        ),
        ("declared length 100,000,000", 100_000_000),
        ("declared length i32::MAX", i32::MAX),
    ] {
        // Only the header is sent and the socket stays open: the server must
        // reject on the declared size, not wait for the body.
        let mut b = header(len, REQ, 0, OP_MSG);
        b.extend_from_slice(&[0, 0, 0, 0, 0]);
        v.push(Case {
            name,
            bytes: b,
            then_close: false,
            expect: Expect::Close,
        });
    }

    // ---- well-delimited but malformed OP_MSG: expect an error reply ----
    {
        let mut body = 0u32.to_le_bytes().to_vec();
        body.push(7);
        body.extend_from_slice(&ping_bson());
        v.push(Case {
            name: "OP_MSG with section kind 7",
            bytes: frame(REQ, OP_MSG, &body),
            then_close: false,
            expect: Expect::ErrorReply,
        });
    }
    v.push(Case {
        name: "OP_MSG with no sections (flagBits only)",
        bytes: frame(REQ, OP_MSG, &0u32.to_le_bytes()),
        then_close: false,
        expect: Expect::ErrorReply,
    });
    v.push(Case {
        name: "OP_MSG with an empty body (16-byte message)",
        bytes: frame(REQ, OP_MSG, &[]),
        then_close: false,
        expect: Expect::ErrorReply,
    });
    {
        let mut body = op_msg_body_raw(0, &ping_bson());
        body.push(0);
        body.extend_from_slice(&ping_bson());
        v.push(Case {
            name: "OP_MSG with two kind-0 body sections",
            bytes: frame(REQ, OP_MSG, &body),
            then_close: false,
            expect: Expect::ErrorReply,
        });
    }
    {
        let mut body = op_msg_body_raw(0, &bson_bytes(&doc! { "insert": "c", "$db": "m" }));
        body.push(1);
        body.extend_from_slice(&5000i32.to_le_bytes()); // kind-1 size far beyond the message
        body.extend_from_slice(b"documents\0");
        v.push(Case {
            name: "OP_MSG kind-1 section whose size overruns the message",
            bytes: frame(REQ, OP_MSG, &body),
            then_close: false,
            expect: Expect::ErrorReply,
        });
    }
    v.push(Case {
        name: "OP_MSG with unknown required flag bit 3",
        bytes: frame(REQ, OP_MSG, &op_msg_body_raw(1 << 3, &ping_bson())),
        then_close: false,
        expect: Expect::ErrorReply,
    });
    v.push(Case {
        name: "OP_MSG with unknown required flag bit 15",
        bytes: frame(REQ, OP_MSG, &op_msg_body_raw(1 << 15, &ping_bson())),
        then_close: false,
        expect: Expect::ErrorReply,
    });
    {
        // checksumPresent with a CRC-32C that cannot be right
        let mut body = op_msg_body_raw(1, &ping_bson());
        body.extend_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
        v.push(Case {
            name: "OP_MSG checksumPresent with a wrong checksum",
            bytes: frame(REQ, OP_MSG, &body),
            then_close: false,
            expect: Expect::ErrorOrClose,
        });
    }

    // ---- invalid BSON inside a well-delimited OP_MSG ----
    {
        let mut el = vec![0x55];
        el.extend_from_slice(b"ping\0");
        el.extend_from_slice(&1i32.to_le_bytes());
        el.extend(db_element());
        v.push(Case {
            name: "BSON with unknown element type 0x55",
            bytes: msg_with_doc(raw_doc(&el)),
            then_close: false,
            expect: Expect::ErrorReply,
        });
    }
    {
        let mut d = ping_bson();
        let wrong = (d.len() as i32 + 40).to_le_bytes();
        d[..4].copy_from_slice(&wrong);
        v.push(Case {
            name: "BSON document length larger than the section",
            bytes: msg_with_doc(d),
            then_close: false,
            expect: Expect::ErrorReply,
        });
    }
    {
        let mut d = ping_bson();
        d[..4].copy_from_slice(&7i32.to_le_bytes());
        v.push(Case {
            name: "BSON document length smaller than its contents",
            bytes: msg_with_doc(d),
            then_close: false,
            expect: Expect::ErrorReply,
        });
    }
    {
        let mut d = ping_bson();
        d[..4].copy_from_slice(&(-20i32).to_le_bytes());
        v.push(Case {
            name: "BSON document length negative",
            bytes: msg_with_doc(d),
            then_close: false,
            expect: Expect::ErrorReply,
        });
    }
    {
        let mut el = vec![0x02];
        el.extend_from_slice(b"ping\0");
        el.extend_from_slice(&1000i32.to_le_bytes()); // string length lies
        el.extend_from_slice(b"x\0");
        el.extend(db_element());
        v.push(Case {
            name: "BSON string element whose length overruns the document",
            bytes: msg_with_doc(raw_doc(&el)),
            then_close: false,
            expect: Expect::ErrorReply,
        });
    }
    {
        let mut el = vec![0x02];
        el.extend_from_slice(b"ping\0");
        el.extend_from_slice(&2i32.to_le_bytes());
        el.extend_from_slice(b"xy"); // no NUL where the string should end
        el.extend(db_element());
        v.push(Case {
            name: "BSON string element missing its NUL terminator",
            bytes: msg_with_doc(raw_doc(&el)),
            then_close: false,
            expect: Expect::ErrorReply,
        });
    }
    {
        let mut d = ping_bson();
        let n = d.len();
        d[n - 1] = 0x01; // the document's trailing NUL replaced
        v.push(Case {
            name: "BSON document missing its trailing NUL",
            bytes: msg_with_doc(d),
            then_close: false,
            expect: Expect::ErrorReply,
        });
    }
    {
        let mut el = vec![0x03];
        el.extend_from_slice(b"ping\0");
        el.extend_from_slice(&200i32.to_le_bytes()); // embedded doc length lies
        el.push(0);
        el.extend(db_element());
        v.push(Case {
            name: "BSON embedded document whose length overruns its parent",
            bytes: msg_with_doc(raw_doc(&el)),
            then_close: false,
            expect: Expect::ErrorReply,
        });
    }
    {
        let mut el = vec![0x10];
        el.extend_from_slice(b"ping"); // key without a NUL: runs into the value
        el.extend_from_slice(&[1, 1, 1, 1]);
        v.push(Case {
            name: "BSON key without NUL terminator",
            bytes: msg_with_doc(raw_doc(&el)),
            then_close: false,
            expect: Expect::ErrorReply,
        });
    }
    v.push(Case {
        name: "empty command document {}",
        bytes: msg_with_doc(raw_doc(&[])),
        then_close: false,
        expect: Expect::ErrorReply,
    });
    v.push(Case {
        name: "command document without $db",
        bytes: msg_with_doc(bson_bytes(&doc! { "ping": 1 })),
        then_close: false,
        expect: Expect::ErrorReply,
    });

    // ---- other opcodes ----
    v.push(Case {
        name: "unknown opcode 9999",
        bytes: frame(REQ, 9999, &op_msg_body_raw(0, &ping_bson())),
        then_close: false,
        expect: Expect::ErrorReply,
    });
    v.push(Case {
        name: "removed legacy opcode OP_INSERT (2002)",
        bytes: frame(REQ, 2002, &op_msg_body_raw(0, &ping_bson())),
        then_close: false,
        expect: Expect::ErrorReply,
    });
    {
        // OP_QUERY whose collection name has no NUL terminator
        let mut body = 0i32.to_le_bytes().to_vec();
        body.extend_from_slice(b"admin.$cmd");
        v.push(Case {
            name: "OP_QUERY with an unterminated collection name",
            bytes: frame(REQ, OP_QUERY, &body),
            then_close: false,
            expect: Expect::ErrorOrClose,
        });
    }
    {
        // OP_COMPRESSED: originalOpcode, uncompressedSize, compressorId, payload
        let mut body = OP_MSG.to_le_bytes().to_vec();
        body.extend_from_slice(&100i32.to_le_bytes());
        body.push(99);
        body.extend_from_slice(&[1, 2, 3, 4, 5]);
        v.push(Case {
            name: "OP_COMPRESSED with unknown compressor id 99",
            bytes: frame(REQ, OP_COMPRESSED, &body),
            then_close: false,
            expect: Expect::ErrorOrClose,
        });
    }
    for (name, id) in [
        ("OP_COMPRESSED snappy with a garbage payload", 1u8),
        ("OP_COMPRESSED zlib with a garbage payload", 2u8),
        ("OP_COMPRESSED zstd with a garbage payload", 3u8),
    ] {
        let mut body = OP_MSG.to_le_bytes().to_vec();
        body.extend_from_slice(&64i32.to_le_bytes());
        body.push(id);
        body.extend(std::iter::repeat_n(0xFFu8, 40));
        v.push(Case {
            name,
            bytes: frame(REQ, OP_COMPRESSED, &body),
            then_close: false,
            expect: Expect::ErrorOrClose,
        });
    }
    {
        // declared uncompressed size over the message limit
        let mut body = OP_MSG.to_le_bytes().to_vec();
        body.extend_from_slice(&(MAX_MESSAGE * 2).to_le_bytes());
        body.push(0); // noop
        body.extend_from_slice(&op_msg_body_raw(0, &ping_bson()));
        v.push(Case {
            name: "OP_COMPRESSED noop declaring a 96 MB uncompressed size",
            bytes: frame(REQ, OP_COMPRESSED, &body),
            then_close: false,
            expect: Expect::ErrorOrClose,
        });
    }
    v
}

/// Outcome of one case, described for the log.
fn run_case(server: &Server, case: &Case) -> Result<String, String> {
    let mut s = server.connect();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&case.bytes)
        .map_err(|e| format!("could not even send the bytes: {e}"))?;
    if case.then_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let started = Instant::now();
    let first = read_message(&mut s);
    match (case.expect, first) {
        (Expect::ErrorReply | Expect::ErrorOrClose, ReadOutcome::Reply(r)) => {
            let d = reply_doc(&r)?;
            check_error_doc(&r, &d)?;
            // Informational: is the same connection still usable?
            let after = same_connection_ping(&mut s);
            Ok(format!(
                "error reply opcode={} code={} codeName={:?} errmsg={:?}; same connection afterwards: {after}",
                r.op_code,
                int_value(&d, "code").unwrap_or_default(),
                d.get_str("codeName").unwrap_or("-"),
                d.get_str("errmsg").unwrap_or("-"),
            ))
        }
        (Expect::Close, ReadOutcome::Reply(r)) => {
            // Tolerated: an error reply first, but the connection must then close.
            let d = reply_doc(&r)?;
            check_error_doc(&r, &d)?;
            match read_message(&mut s) {
                ReadOutcome::Closed { .. } => Ok(format!(
                    "error reply (code={}) then closed",
                    int_value(&d, "code").unwrap_or_default()
                )),
                other => Err(format!(
                    "replied {d} but did not close the connection afterwards: {other:?}"
                )),
            }
        }
        (Expect::Close | Expect::ErrorOrClose, ReadOutcome::Closed { bytes_before_close }) => {
            if bytes_before_close > 0 {
                return Err(format!(
                    "sent {bytes_before_close} bytes that are not a whole message, then closed"
                ));
            }
            Ok(format!(
                "closed the connection after {:?}",
                started.elapsed()
            ))
        }
        (Expect::ErrorReply, ReadOutcome::Closed { bytes_before_close }) => Err(format!(
            "closed the connection ({bytes_before_close} bytes received) instead of replying with an error to a well-delimited frame"
        )),
        (_, ReadOutcome::TimedOut { bytes }) => Err(format!(
            "neither replied nor closed within 5s ({bytes} bytes received)"
        )),
    }
}

fn check_error_doc(r: &Reply, d: &Document) -> Result<(), String> {
    if r.response_to != REQ {
        return Err(format!(
            "reply responseTo={} (expected our requestID {REQ}); doc {d}",
            r.response_to
        ));
    }
    if ok_value(d) != Some(0.0) {
        return Err(format!("expected ok: 0, got {d}"));
    }
    match int_value(d, "code") {
        Some(c) if c != 0 => {}
        _ => return Err(format!("error reply without a non-zero numeric code: {d}")),
    }
    match d.get_str("errmsg") {
        Ok(m) if !m.is_empty() => {}
        _ => return Err(format!("error reply without a string errmsg: {d}")),
    }
    Ok(())
}

fn same_connection_ping(s: &mut TcpStream) -> String {
    if s.write_all(&ping_msg(REQ + 1)).is_err() {
        return "closed (write failed)".into();
    }
    match read_message(s) {
        ReadOutcome::Reply(r) => match reply_doc(&r) {
            Ok(d) if ok_value(&d) == Some(1.0) => "ping ok".into(),
            Ok(d) => format!("ping replied {d}"),
            Err(e) => format!("ping reply undecodable: {e}"),
        },
        ReadOutcome::Closed { .. } => "closed".into(),
        ReadOutcome::TimedOut { .. } => "no answer to ping within 5s".into(),
    }
}

#[test]
fn malformed_inputs_never_hurt_the_server() {
    let mut server = Server::start();
    let pid = server.pid();
    assert!(server.alive());
    assert_healthy(&server);

    let mut failures = Vec::new();
    for case in cases() {
        let outcome = run_case(&server, &case);
        let alive = server.alive();
        let healthy = if alive {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| assert_healthy(&server)))
                .is_ok()
        } else {
            false
        };
        match (&outcome, alive, healthy) {
            (Ok(desc), true, true) => println!("ok   [{}] {desc}", case.name),
            _ => {
                let msg = format!(
                    "FAIL [{}] expected {:?}: {:?}; server alive={alive} healthy ping={healthy}",
                    case.name, case.expect, outcome
                );
                println!("{msg}");
                failures.push(msg);
                if !alive {
                    println!("server died; stderr tail:\n{}", server.log_tail(40));
                    break;
                }
            }
        }
    }

    assert!(server.alive(), "server process {pid} is gone");
    assert_eq!(server.pid(), pid);
    assert_healthy(&server);
    println!("server pid {pid} alive before and after");
    assert!(
        failures.is_empty(),
        "{} malformed-input case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let status = server.stop_with("TERM");
    assert!(
        status.is_some_and(|s| s.success()),
        "server did not exit cleanly on SIGTERM: {status:?}"
    );
}

#[test]
fn fifty_concurrent_clients_while_one_sends_garbage() {
    let mut server = Server::start();
    let pid = server.pid();
    let host = server.host.clone();
    let port = server.port;

    // The garbage sender and the 50 clients start together (barrier of 51);
    // the sender keeps opening connections and spraying bytes until the
    // clients are done, and at least 20 times, bounded by count and time.
    let barrier = Arc::new(Barrier::new(51));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let garbage = {
        let stop = stop.clone();
        let host = host.clone();
        let barrier = barrier.clone();
        std::thread::spawn(move || {
            // xorshift: deterministic garbage
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let mut sent = 0usize;
            let mut conns = 0usize;
            let deadline = Instant::now() + Duration::from_secs(20);
            barrier.wait();
            for i in 0..500 {
                if (i >= 20 && stop.load(std::sync::atomic::Ordering::Relaxed))
                    || Instant::now() > deadline
                {
                    break;
                }
                let Ok(mut s) = TcpStream::connect((host.as_str(), port)) else {
                    continue;
                };
                conns += 1;
                let mut buf = vec![0u8; 16 * 1024];
                for b in buf.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                // Every other time a plausible small length, so the server
                // parses a garbage body rather than rejecting the header.
                if x.is_multiple_of(2) {
                    buf[..4].copy_from_slice(&200i32.to_le_bytes());
                    buf[12..16].copy_from_slice(&OP_MSG.to_le_bytes());
                }
                if s.write_all(&buf).is_ok() {
                    sent += buf.len();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (conns, sent)
        })
    };

    let clients: Vec<_> = (0..50)
        .map(|i| {
            let barrier = barrier.clone();
            let host = host.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let mut s = TcpStream::connect((host.as_str(), port))
                    .map_err(|e| format!("client {i}: connect: {e}"))?;
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                barrier.wait();
                for round in 0..3 {
                    let req = 1000 + i * 10 + round;
                    s.write_all(&ping_msg(req))
                        .map_err(|e| format!("client {i}: write: {e}"))?;
                    match read_message(&mut s) {
                        ReadOutcome::Reply(r) => {
                            let d = reply_doc(&r).map_err(|e| format!("client {i}: {e}"))?;
                            if ok_value(&d) != Some(1.0) || r.response_to != req {
                                return Err(format!(
                                    "client {i}: bad ping reply (responseTo {}): {d}",
                                    r.response_to
                                ));
                            }
                        }
                        other => return Err(format!("client {i}: no reply: {other:?}")),
                    }
                }
                Ok(())
            })
        })
        .collect();

    let results: Vec<_> = clients
        .into_iter()
        .map(|h| h.join().expect("client thread panicked"))
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (garbage_conns, garbage_bytes) = garbage.join().expect("garbage thread");
    let errors: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    println!(
        "50 clients: {} ok, {} failed; garbage sender wrote {garbage_bytes} bytes over {garbage_conns} connections",
        results.len() - errors.len(),
        errors.len()
    );
    assert!(errors.is_empty(), "client failures: {errors:#?}");
    assert!(
        server.alive(),
        "server died; stderr:\n{}",
        server.log_tail(40)
    );
    assert_eq!(server.pid(), pid);
    assert_healthy(&server);
    println!("server pid {pid} alive before and after");
}
