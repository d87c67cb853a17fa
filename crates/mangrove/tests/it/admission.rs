//! Admission under hostile clients (issue 11): half-sent frames must not hold the in-flight
//! budget, stalled messages and silent sockets are closed after their timeouts, and an
//! established connection keeps being served meanwhile.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::*;

/// A frame header declaring the largest message the server accepts.
const DECLARED: i32 = 48_000_000;
/// Enough attackers to exceed the 1 GiB in-flight budget if declared bytes were reserved
/// up front (22 frames of 48 MB fit in it).
const ATTACKERS: usize = 25;

/// Opens `n` connections that each send a header declaring `DECLARED` bytes, then `body`
/// bytes of it, and stall.
fn stalled_senders(server: &Server, n: usize, body: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut s = server.connect();
            let mut bytes = header(DECLARED, 500 + i as i32, 0, OP_MSG);
            bytes.resize(16 + body, 0);
            s.write_all(&bytes).expect("send the partial frame");
            s
        })
        .collect()
}

/// A `ping` padded with a comment to about 1 KiB.
fn ping_1k(request_id: i32) -> Vec<u8> {
    let pad = "x".repeat(1000);
    op_msg(
        request_id,
        &bson::doc! { "ping": 1, "comment": pad, "$db": "admin" },
    )
}

/// Sends a 1 KiB ping and waits up to `patience` for its reply; the latency if it came.
fn timed_ping(s: &mut TcpStream, request_id: i32, patience: Duration) -> Option<Duration> {
    s.set_read_timeout(Some(patience)).unwrap();
    let start = Instant::now();
    s.write_all(&ping_1k(request_id)).expect("send ping");
    match read_message(s) {
        ReadOutcome::Reply(r) => {
            let d = reply_doc(&r).expect("ping reply");
            assert_eq!(ok_value(&d), Some(1.0), "ping reply: {d}");
            Some(start.elapsed())
        }
        ReadOutcome::TimedOut { .. } => None,
        other => panic!("ping connection failed: {other:?}"),
    }
}

/// Reads until the server closes the connection; how long that took, or None past `patience`.
fn time_until_closed(s: &mut TcpStream, patience: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while start.elapsed() < patience {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

fn slow_header_attack(body: usize) {
    let server = Server::start();
    let mut established = server.connect();
    round_trip(&mut established, &ping_msg(1));
    let attackers = stalled_senders(&server, ATTACKERS, body);
    // Let the server read every partial frame before measuring.
    std::thread::sleep(Duration::from_millis(300));
    let latency = timed_ping(&mut established, 2, Duration::from_secs(10));
    match latency {
        Some(l) => println!(
            "ping latency with {ATTACKERS} stalled {DECLARED}-byte frames ({body} body bytes each): {:.2} ms",
            l.as_secs_f64() * 1e3
        ),
        None => println!(
            "ping latency with {ATTACKERS} stalled {DECLARED}-byte frames ({body} body bytes each): no reply within 10 s"
        ),
    }
    assert!(
        latency.is_some_and(|l| l < Duration::from_secs(2)),
        "an established connection's ping must be answered within 2 s during the attack"
    );
    // A new client gets in and is answered too.
    let mut fresh = server.connect();
    let latency = timed_ping(&mut fresh, 3, Duration::from_secs(10));
    println!("new connection's first ping: {latency:?}");
    assert!(latency.is_some_and(|l| l < Duration::from_secs(2)));
    drop(attackers);
    assert_healthy(&server);
}

#[test]
fn stalled_headers_do_not_delay_an_established_ping() {
    slow_header_attack(0);
}

#[test]
fn stalled_partial_bodies_do_not_delay_an_established_ping() {
    slow_header_attack(4096);
}

/// How many log lines mention `needle`.
/// How many server log lines contain `needle`, once at least one does (the line is written
/// just after the socket closes, so the test may see the close first) or 2 s have passed.
fn log_count(server: &Server, needle: &str) -> usize {
    let count = || {
        std::fs::read_to_string(&server.log_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while count() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    count()
}

#[test]
fn a_stalled_message_is_closed_after_the_message_timeout() {
    let server = Server::start_with(&["--message-timeout-secs", "1"]);
    let mut established = server.connect();
    round_trip(&mut established, &ping_msg(1));
    // A body that stops half way, and a header that stops after 5 bytes.
    let start = Instant::now();
    let mut half_body = server.connect();
    let mut bytes = header(200, 2, 0, OP_MSG);
    bytes.extend_from_slice(&[0; 50]);
    half_body.write_all(&bytes).unwrap();
    let mut half_header = server.connect();
    half_header
        .write_all(&header(200, 3, 0, OP_MSG)[..5])
        .unwrap();
    for (what, s) in [("body", &mut half_body), ("header", &mut half_header)] {
        time_until_closed(s, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("a stalled {what} was never closed"));
        let closed = start.elapsed();
        println!("stalled {what} closed {closed:?} after it was sent");
        assert!(
            closed >= Duration::from_millis(800),
            "closed too early: {closed:?}"
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let lines = log_count(&server, "with a message started but not finished");
    assert_eq!(
        lines,
        2,
        "one timeout line per connection:\n{}",
        server.log_tail(20)
    );
    assert!(
        server.log_tail(20).contains("peer="),
        "{}",
        server.log_tail(20)
    );
    // The connection that was only idle between messages is still served.
    let (_, d) = round_trip(&mut established, &ping_msg(4));
    assert_eq!(ok_value(&d), Some(1.0));
}

#[test]
fn silent_sockets_free_their_slots_after_the_handshake_timeout() {
    let server = Server::start_with(&["--max-connections", "50", "--handshake-timeout-secs", "1"]);
    let mut silent: Vec<TcpStream> = (0..50).map(|_| server.connect()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    let mut attempts = 0;
    let served = loop {
        attempts += 1;
        if let Ok(mut s) = TcpStream::connect(server.addr()) {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            if s.write_all(&ping_msg(7)).is_ok()
                && let ReadOutcome::Reply(r) = read_message(&mut s)
            {
                assert_eq!(ok_value(&reply_doc(&r).unwrap()), Some(1.0));
                break Some(start.elapsed());
            }
        }
        if start.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("new client served after {served:?} ({attempts} attempts) with 50 silent sockets");
    assert!(served.is_some(), "a new client was kept out for 10 s");
    for s in &mut silent {
        assert!(time_until_closed(s, Duration::from_secs(5)).is_some());
    }
    assert_healthy(&server);
}

#[test]
fn the_idle_timeout_closes_idle_connections_only_when_set() {
    let server = Server::start_with(&["--idle-timeout-secs", "1"]);
    let mut s = server.connect();
    round_trip(&mut s, &ping_msg(1));
    let closed = time_until_closed(&mut s, Duration::from_secs(10));
    println!("idle connection closed after {closed:?}");
    assert!(closed.is_some_and(|c| c >= Duration::from_millis(800)));
    assert_eq!(log_count(&server, "idle between messages"), 1);

    // By default an idle connection stays open.
    let server = Server::start();
    let mut s = server.connect();
    round_trip(&mut s, &ping_msg(1));
    std::thread::sleep(Duration::from_millis(1500));
    let (_, d) = round_trip(&mut s, &ping_msg(2));
    assert_eq!(ok_value(&d), Some(1.0));
}

#[test]
fn a_large_message_sent_in_slow_pieces_is_still_served() {
    let server = Server::start_with(&["--message-timeout-secs", "5"]);
    let mut s = server.connect();
    let pad = "y".repeat(5_000_000);
    let msg = op_msg(1, &bson::doc! { "ping": 1, "comment": pad, "$db": "admin" });
    for piece in msg.chunks(msg.len() / 3 + 1) {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    match read_message(&mut s) {
        ReadOutcome::Reply(r) => assert_eq!(ok_value(&reply_doc(&r).unwrap()), Some(1.0)),
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn a_ping_is_answered_while_real_half_sent_bytes_exhaust_the_shared_budget() {
    let server = Server::start_with(&[
        "--max-message-size",
        "1000000",
        "--max-inflight-bytes",
        "2000000",
    ]);
    let mut established = server.connect();
    round_trip(&mut established, &ping_msg(1));
    // Three frames of 1 MB, each 900 KB sent: together more than the 2 MB shared budget.
    let attackers: Vec<TcpStream> = (0..3)
        .map(|i| {
            let mut s = server.connect();
            let mut bytes = header(1_000_000, 600 + i, 0, OP_MSG);
            bytes.resize(900_000, 0);
            // The third one blocks once the server stops reading it; that is the point.
            s.set_write_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let _ = s.write_all(&bytes);
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let latency = timed_ping(&mut established, 2, Duration::from_secs(10));
    println!("ping latency with the shared budget exhausted by half-sent frames: {latency:?}");
    assert!(latency.is_some_and(|l| l < Duration::from_secs(2)));
    let mut fresh = server.connect();
    assert!(timed_ping(&mut fresh, 3, Duration::from_secs(10)).is_some());
    drop(attackers);
    assert_healthy(&server);
}
