//! Retryable writes across `kill -9`: workers send `$inc` updates with their own lsid and a
//! growing txnNumber, as a driver does. Whenever the server is killed, every write that got no
//! reply is retried, after the restart, with the same lsid and txnNumber, as a driver's retry
//! would. Each worker's counter must then equal the number of its writes exactly: a write that
//! committed before the kill must not run again when retried (its record is in the same log
//! record), and one that never became durable must run on the retry.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::{ReadOutcome, op_msg, read_message, reply_doc, spawn_on_data_dir};
use bson::{Binary, Bson, Document, doc, spec::BinarySubtype};

const WORKERS: i64 = 4;

/// The server child, killed when dropped, so a failed assertion never leaves it running.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
const KILLS: usize = 4;

/// One worker's session: its lsid, the txnNumber of its next write, and the write (if any)
/// that was sent but never answered.
struct Worker {
    id: i64,
    lsid: Document,
    next_txn: i64,
    unanswered: Option<i64>,
    acknowledged: i64,
}

fn update(w: &Worker, txn_number: i64) -> Document {
    doc! {
        "update": "counters",
        "updates": [ { "q": { "_id": w.id }, "u": { "$inc": { "n": 1 } }, "upsert": true } ],
        "lsid": w.lsid.clone(),
        "txnNumber": txn_number,
        "$db": "retry",
    }
}

/// Sends one command; `None` when the connection broke (the server was killed).
fn send(stream: &mut TcpStream, request_id: i32, cmd: &Document) -> Option<Document> {
    // A hung server fails the test instead of stalling it.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    stream.write_all(&op_msg(request_id, cmd)).ok()?;
    match read_message(stream) {
        ReadOutcome::Reply(r) => Some(reply_doc(&r).expect("reply")),
        _ => None,
    }
}

fn check_write_reply(reply: &Document, what: &str) {
    assert_eq!(reply.get_f64("ok").ok(), Some(1.0), "{what}: {reply}");
    assert!(!reply.contains_key("writeErrors"), "{what}: {reply}");
    let n = reply.get_i32("n").unwrap_or(0);
    assert_eq!(
        n, 1,
        "{what}: a retried write must report its original outcome: {reply}"
    );
}

#[test]
fn retried_writes_apply_exactly_once_across_kill_9() {
    let dir = std::env::temp_dir().join(format!("mangrove-kill-retry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut workers: Vec<Worker> = (0..WORKERS)
        .map(|id| Worker {
            id,
            lsid: doc! { "id": Binary { subtype: BinarySubtype::Uuid, bytes: (id as u128 + 1).to_be_bytes().to_vec() } },
            next_txn: 1,
            unanswered: None,
            acknowledged: 0,
        })
        .collect();
    let mut retried_after_kill = 0;
    for cycle in 0..=KILLS {
        let (server, port) = spawn_on_data_dir(&dir, None);
        let mut server = Killed(server);
        // First, as a driver would after reconnecting: retry every unanswered write.
        for w in workers.iter_mut() {
            if let Some(txn) = w.unanswered.take() {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let reply = send(&mut s, 1, &update(w, txn)).expect("retry after restart");
                check_write_reply(&reply, &format!("worker {} retry of txnNumber {txn}", w.id));
                w.acknowledged += 1;
                retried_after_kill += 1;
            }
        }
        let last = cycle == KILLS;
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = workers
            .drain(..)
            .map(|mut w| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    let mut request_id = 1;
                    while !stop.load(Ordering::Relaxed) {
                        let txn = w.next_txn;
                        w.next_txn += 1;
                        request_id += 1;
                        match send(&mut s, request_id, &update(&w, txn)) {
                            Some(reply) => {
                                check_write_reply(&reply, "write");
                                w.acknowledged += 1;
                            }
                            None => {
                                w.unanswered = Some(txn);
                                break;
                            }
                        }
                    }
                    w
                })
            })
            .collect();
        let run = Instant::now();
        std::thread::sleep(Duration::from_millis(if last { 300 } else { 700 }));
        if last {
            stop.store(true, Ordering::Relaxed);
            workers = handles
                .into_iter()
                .map(|h| h.join().expect("worker"))
                .collect();
            server.0.kill().expect("kill -9");
        } else {
            server.0.kill().expect("kill -9");
            workers = handles
                .into_iter()
                .map(|h| h.join().expect("worker"))
                .collect();
        }
        let _ = server.0.wait();
        if last {
            // Every write has now been answered exactly once; each counter must say so.
            let (server, port) = spawn_on_data_dir(&dir, None);
            let _server = Killed(server);
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let reply = send(
                &mut s,
                9,
                &doc! { "find": "counters", "filter": {}, "batchSize": 100, "$db": "retry" },
            )
            .expect("find");
            let docs = reply
                .get_document("cursor")
                .and_then(|c| c.get_array("firstBatch"))
                .expect("cursor")
                .clone();
            let total: i64 = workers.iter().map(|w| w.acknowledged).sum();
            for w in &workers {
                let n = docs
                    .iter()
                    .filter_map(Bson::as_document)
                    .find(|d| d.get_i64("_id").ok() == Some(w.id))
                    .and_then(|d| match d.get("n") {
                        Some(Bson::Int32(n)) => Some(*n as i64),
                        Some(Bson::Int64(n)) => Some(*n),
                        _ => None,
                    })
                    .unwrap_or(0);
                assert_eq!(
                    n, w.acknowledged,
                    "worker {}: counter {n} but {} writes acknowledged (exactly once each)",
                    w.id, w.acknowledged
                );
            }
            println!(
                "kill -9 retryable-write test: {KILLS} kills, {total} $inc writes acknowledged, {retried_after_kill} of them retried after a restart, every counter exact (no write lost, none applied twice) ({:.1}s last cycle)",
                run.elapsed().as_secs_f64()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
