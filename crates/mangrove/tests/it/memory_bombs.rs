//! Issue 11, "tiny aggregations exhaust memory" and "replies larger than the protocol allows":
//! each bomb against the real server started with `--cache-size 128`, asserting the error a
//! client gets (MongoDB's code and codeName) or, for large results, that the driver receives
//! correct batches, and that the server's peak resident memory (`VmHWM`) stays under
//! [`RSS_BOUND_KB`].
//!
//! Why 600 MB: the server's baseline (~20 MB) plus the data cache (128 MiB) plus what one
//! aggregation may hold at once: one blocking stage (100 MiB) or one expression evaluation's
//! values (100 MiB) plus the value it is returning (at most as large), and a reply (a batch is
//! at most 16 MiB plus one document of at most 16 MiB + 16 KiB) with its encoding copy. That is
//! about 480 MB; 600 MB leaves room for allocator slack. Before the fix these bombs reached the
//! 3 GB watchdog (string and array doubling, the 2^30-byte string), 1.6 GB (`$range`) and
//! 634 MB (`$push: "$$ROOT"` over 94 MB).
//!
//! A watchdog kills the server above 3 GB so that a regression fails the test instead of
//! swapping the machine. The tests take a lock so that only one of these servers runs at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::{OP_MSG, ReadOutcome, Server, driver_client, op_msg, read_message, reply_doc};
use bson::{Bson, Document, doc};
use futures_util::TryStreamExt;
use mongodb::Collection;
use std::io::Write;

/// Peak resident memory a server may reach in these tests (see the module comment).
const RSS_BOUND_KB: u64 = 600 * 1024;
/// The watchdog's kill line.
const KILL_KB: u64 = 3 * 1024 * 1024;
/// mongod's `maxMessageSizeBytes`.
const MAX_MESSAGE_BYTES: usize = 48_000_000;
/// mongod's `BSONObjMaxInternalSize`: the largest document an aggregation may return.
const MAX_RESULT_DOC_BYTES: usize = 16 * 1024 * 1024 + 16 * 1024;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `kB` field of `/proc/<pid>/status`.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A server with `--cache-size 128` and a watchdog that kills it above [`KILL_KB`].
struct Watched {
    server: Server,
    killed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Watched {
    fn start() -> Watched {
        let server = Server::start_with(&["--cache-size", "128"]);
        let (pid, killed, stop) = (
            server.pid(),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (k, s) = (killed.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if status_kb(pid, "VmRSS") > KILL_KB {
                    k.store(true, Ordering::Relaxed);
                    let _ = std::process::Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .status();
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Watched {
            server,
            killed,
            stop,
        }
    }

    async fn coll(&self, name: &str) -> Collection<Document> {
        driver_client(self.server.port)
            .await
            .database("bombs")
            .collection(name)
    }

    /// Fails if the watchdog fired or the peak resident memory passed the bound.
    fn assert_peak_within_bound(&self, what: &str) {
        assert!(
            !self.killed.load(Ordering::Relaxed),
            "{what}: the server passed {} MB and was killed",
            KILL_KB / 1024
        );
        let peak = status_kb(self.server.pid(), "VmHWM");
        assert!(peak > 0, "{what}: no VmHWM for the server");
        eprintln!("[memory_bombs] {what}: server peak RSS {} MB", peak / 1024);
        assert!(
            peak < RSS_BOUND_KB,
            "{what}: server peak RSS {} MB, bound {} MB",
            peak / 1024,
            RSS_BOUND_KB / 1024
        );
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The server's (code, codeName, message) for an aggregation that must fail.
async fn aggregate_error(
    coll: &Collection<Document>,
    pipeline: Vec<Document>,
) -> (i32, String, String) {
    aggregate_error_disk(coll, pipeline, None).await
}

/// [`aggregate_error`] with `allowDiskUse` given.
async fn aggregate_error_disk(
    coll: &Collection<Document>,
    pipeline: Vec<Document>,
    allow_disk_use: Option<bool>,
) -> (i32, String, String) {
    let mut aggregate = coll.aggregate(pipeline);
    if let Some(allow) = allow_disk_use {
        aggregate = aggregate.allow_disk_use(allow);
    }
    let result = match aggregate.await {
        Ok(cursor) => cursor.try_collect::<Vec<Document>>().await.map(|d| d.len()),
        Err(e) => Err(e),
    };
    match result {
        Ok(n) => panic!("the aggregation returned {n} documents instead of failing"),
        Err(e) => match *e.kind {
            mongodb::error::ErrorKind::Command(c) => (c.code, c.code_name, c.message),
            other => panic!(
                "expected a command error, got {other:?} (a closed connection means the server \
                 died, e.g. killed by the watchdog above {} MB)",
                KILL_KB / 1024
            ),
        },
    }
}

/// `$reduce` over `0..n` doubling `initial` with `op` (`$concat` or `$concatArrays`).
fn doubling(op: &str, initial: Bson, n: i32) -> Document {
    doc! { "$reduce": {
        "input": { "$range": [0, n] },
        "initialValue": initial,
        "in": { op: ["$$value", "$$value"] },
    } }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expressions_that_build_huge_values_fail_before_allocating() {
    let _one = ONE_AT_A_TIME.lock().await;
    let w = Watched::start();
    let coll = w.coll("one").await;
    coll.insert_one(doc! { "_id": 1 }).await.unwrap();

    // The issue's 271-byte pipeline: a string doubled 40 times.
    let bomb = vec![doc! { "$project": { "s": doubling("$concat", "ab".into(), 40) } }];
    let (code, name, msg) = aggregate_error(&coll, bomb).await;
    assert_eq!((code, name.as_str()), (16493, "Location16493"), "{msg}");
    assert!(
        msg.contains("Tried to create string longer than 16MB"),
        "{msg}"
    );

    // A 2^30-byte string, built only to be measured.
    let measured = doubling("$concat", "ab".into(), 29);
    let bomb = vec![doc! { "$project": { "n": { "$strLenBytes": measured } } }];
    assert_eq!(aggregate_error(&coll, bomb).await.0, 16493);

    // The same doubling with arrays.
    let bomb = vec![
        doc! { "$project": { "a": doubling("$concatArrays", Bson::Array(vec![1.into()]), 40) } },
    ];
    let (code, name, msg) = aggregate_error(&coll, bomb).await;
    assert_eq!((code, name.as_str()), (146, "ExceededMemoryLimit"), "{msg}");
    assert!(
        msg.starts_with("$concatArrays would use too much memory"),
        "{msg}"
    );

    // $range to 1e9 is refused from its arguments, before any element exists.
    let bomb = vec![doc! { "$project": { "r": { "$range": [0, 1_000_000_000] } } }];
    let (code, name, msg) = aggregate_error(&coll, bomb).await;
    assert_eq!((code, name.as_str()), (146, "ExceededMemoryLimit"), "{msg}");
    assert!(
        msg.starts_with("$range would use too much memory ("),
        "{msg}"
    );
    assert!(msg.contains("Memory limit: 104857600 bytes"), "{msg}");

    // The issue's $map over a 6-million-element $range (a 77 MB reply before).
    let bomb = vec![
        doc! { "$project": { "a": { "$map": { "input": { "$range": [0, 6_000_000] }, "in": "$$this" } } } },
    ];
    assert_eq!(aggregate_error(&coll, bomb).await.0, 146);

    // A $map whose output no longer fits beside its input fails in $map.
    let bomb = vec![doc! { "$project": { "a": { "$map": {
        "input": { "$range": [0, 600_000] },
        "in": ["$$this", "$$this"],
    } } } }];
    let (code, _, msg) = aggregate_error(&coll, bomb).await;
    assert_eq!(code, 146, "{msg}");
    assert!(msg.contains("would use too much memory"), "{msg}");

    // Still healthy, and ordinary expressions still work.
    let ok: Vec<Document> = coll
        .aggregate(vec![doc! { "$project": { "n": { "$size": { "$range": [0, 1000] } }, "s": doubling("$concat", "ab".into(), 10) } }])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ok[0].get_i32("n").unwrap(), 1000);
    assert_eq!(ok[0].get_str("s").unwrap().len(), 2048);
    w.assert_peak_within_bound("expression bombs");
}

/// `n` documents with a `pad` string of `pad_bytes`, inserted in batches.
async fn seed(coll: &Collection<Document>, n: i32, pad_bytes: usize) {
    let pad = "p".repeat(pad_bytes);
    let batch = ((8 << 20) / pad_bytes.max(1)).max(1) as i32;
    let mut start = 0;
    while start < n {
        let docs: Vec<Document> = (start..(start + batch).min(n))
            .map(|i| doc! { "_id": i, "pad": &pad })
            .collect();
        coll.insert_many(docs).await.unwrap();
        start += batch;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregations_over_more_than_100mb_stream_and_groups_are_bounded() {
    let _one = ONE_AT_A_TIME.lock().await;
    let w = Watched::start();
    let coll = w.coll("big").await;
    // 1,500 documents of 100 KB: 150 MB, more than any per-stage limit.
    seed(&coll, 1500, 100_000).await;

    // count_documents is aggregate [{$match: {}}, {$group: {_id: 1, n: {$sum: 1}}}].
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 1500);
    let counted: Vec<Document> = coll
        .aggregate(vec![
            doc! { "$match": { "_id": { "$gte": 100 } } },
            doc! { "$group": { "_id": null, "n": { "$sum": 1 }, "bytes": { "$sum": { "$strLenBytes": "$pad" } } } },
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(counted.len(), 1);
    assert_eq!(counted[0].get_i32("n").unwrap(), 1400);
    assert_eq!(counted[0].get_i32("bytes").unwrap(), 140_000_000);

    // The whole collection through a cursor: batches come lazily, every document once.
    let mut cursor = coll
        .aggregate(vec![
            doc! { "$project": { "len": { "$strLenBytes": "$pad" }, "pad": 1 } },
        ])
        .await
        .unwrap();
    let mut seen = 0;
    while let Some(d) = cursor.try_next().await.unwrap() {
        assert_eq!(d.get_i32("_id").unwrap(), seen);
        assert_eq!(d.get_i32("len").unwrap(), 100_000);
        seen += 1;
    }
    assert_eq!(seen, 1500);

    // A $sort followed by $limit keeps only the top documents, however large the input.
    let top: Vec<Document> = coll
        .aggregate(vec![
            doc! { "$sort": { "_id": -1 } },
            doc! { "$limit": 3 },
            doc! { "$project": { "pad": 0 } },
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        top,
        vec![
            doc! { "_id": 1499 },
            doc! { "_id": 1498 },
            doc! { "_id": 1497 }
        ]
    );

    // Without disk use, a blocking $sort over all of it is refused at its limit, with mongod's
    // code (with it, it spills: tests/python/test_spill.py).
    let sort = vec![doc! { "$sort": { "pad": 1 } }];
    let (code, name, msg) = aggregate_error_disk(&coll, sort, Some(false)).await;
    assert_eq!(
        (code, name.as_str()),
        (292, "QueryExceededMemoryLimitNoDiskUseAllowed"),
        "{msg}"
    );
    // With disk use (the default) it spills its 150 MB past the 100 MiB limit, within the
    // watchdog's memory bound, and answers every document in order (the pads are all equal:
    // ties keep the input order).
    let sorted: Vec<Document> = coll
        .aggregate(vec![
            doc! { "$sort": { "pad": 1 } },
            doc! { "$project": { "pad": 0 } },
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let ids: Vec<i32> = sorted.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    assert_eq!(ids, (0..1500).collect::<Vec<_>>());

    // $push: "$$ROOT" over 150 MB: the accumulator's limit (146), as mongod 7.0 by default.
    let push_all = vec![doc! { "$group": { "_id": null, "all": { "$push": "$$ROOT" } } }];
    let (code, name, msg) = aggregate_error(&coll, push_all).await;
    assert_eq!((code, name.as_str()), (146, "ExceededMemoryLimit"), "{msg}");
    assert!(
        msg.starts_with("$push used too much memory and cannot spill to disk"),
        "{msg}"
    );

    // Over 90 MB it fits the accumulator, but not a result document: BSONObjectTooLarge,
    // not a 94 MB reply the driver would reject.
    let push_90mb = vec![
        doc! { "$match": { "_id": { "$lt": 900 } } },
        doc! { "$group": { "_id": null, "all": { "$push": "$$ROOT" } } },
    ];
    let (code, name, msg) = aggregate_error(&coll, push_90mb).await;
    assert_eq!(
        (code, name.as_str()),
        (10334, "BSONObjectTooLarge"),
        "{msg}"
    );
    assert!(msg.starts_with("BSONObj size: "), "{msg}");
    w.assert_peak_within_bound("150 MB of input");
}

/// Sends `aggregate` on a raw connection and returns the reply frame's length and document.
fn raw_aggregate(server: &Server, cmd: Document) -> (usize, Document) {
    let mut s = server.connect();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(&op_msg(7, &cmd)).unwrap();
    match read_message(&mut s) {
        ReadOutcome::Reply(r) => {
            assert_eq!(r.op_code, OP_MSG);
            let len = r.body.len() + 16;
            (len, reply_doc(&r).unwrap())
        }
        other => panic!("no reply: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_come_back_in_batches_within_the_protocol_limits() {
    let _one = ONE_AT_A_TIME.lock().await;
    let w = Watched::start();
    let coll = w.coll("arrays").await;
    coll.insert_many((0..20).map(|i| doc! { "_id": i }).collect::<Vec<_>>())
        .await
        .unwrap();
    // Each result holds a 400,000-element array (about 5.3 MB of BSON): 106 MB in all.
    let pipeline = vec![
        doc! { "$project": { "a": { "$map": { "input": { "$range": [0, 400_000] }, "in": { "$add": ["$$this", "$_id"] } } } } },
    ];

    // On the wire: every frame within maxMessageSizeBytes, every document within 16 MB.
    let cmd =
        doc! { "aggregate": "arrays", "pipeline": pipeline.clone(), "cursor": {}, "$db": "bombs" };
    let (frame, reply) = raw_aggregate(&w.server, cmd);
    assert!(
        frame <= MAX_MESSAGE_BYTES,
        "first reply frame of {frame} bytes"
    );
    let cursor = reply.get_document("cursor").unwrap();
    let first = cursor.get_array("firstBatch").unwrap();
    assert!(
        !first.is_empty() && first.len() < 20,
        "first batch of {}",
        first.len()
    );
    let id = cursor.get_i64("id").unwrap();
    assert_ne!(id, 0, "the rest waits in a cursor");
    let more = doc! { "getMore": id, "collection": "arrays", "$db": "bombs" };
    let (frame, reply) = raw_aggregate(&w.server, more);
    assert!(
        frame <= MAX_MESSAGE_BYTES,
        "getMore reply frame of {frame} bytes"
    );
    for d in reply
        .get_document("cursor")
        .unwrap()
        .get_array("nextBatch")
        .unwrap()
    {
        let d = d.as_document().unwrap();
        let mut bytes = Vec::new();
        d.to_writer(&mut bytes).unwrap();
        assert!(bytes.len() <= MAX_RESULT_DOC_BYTES);
    }

    // Through the driver: all 20 documents, correct, and no ProtocolError.
    let docs: Vec<Document> = coll
        .aggregate(pipeline)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(docs.len(), 20);
    for (i, d) in docs.iter().enumerate() {
        let a = d.get_array("a").unwrap();
        assert_eq!(a.len(), 400_000);
        assert_eq!(a[0], Bson::Int32(i as i32));
        assert_eq!(a[399_999], Bson::Int32(399_999 + i as i32));
    }

    // One result document over 16 MB (three 8 MB strings) is an error the driver understands.
    let eight_mb = || doubling("$concat", "ab".into(), 22);
    let big = vec![doc! { "$project": { "a": eight_mb(), "b": eight_mb(), "c": eight_mb() } }];
    let (code, name, msg) = aggregate_error(&coll, big).await;
    assert_eq!(
        (code, name.as_str()),
        (10334, "BSONObjectTooLarge"),
        "{msg}"
    );
    w.assert_peak_within_bound("large results");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limits_are_server_parameters() {
    let _one = ONE_AT_A_TIME.lock().await;
    let w = Watched::start();
    let client = driver_client(w.server.port).await;
    let admin = client.database("admin");
    let got = admin
        .run_command(doc! { "getParameter": 1, "internalQueryMaxPushBytes": 1, "internalQueryMaxRangeBytes": 1 })
        .await
        .unwrap();
    assert_eq!(got.get_i64("internalQueryMaxPushBytes").unwrap(), 100 << 20);
    assert_eq!(
        got.get_i64("internalQueryMaxRangeBytes").unwrap(),
        100 << 20
    );
    let set = admin
        .run_command(doc! { "setParameter": 1, "internalQueryMaxPushBytes": 10_000 })
        .await
        .unwrap();
    assert_eq!(set.get_i64("was").unwrap(), 100 << 20);
    let coll = w.coll("params").await;
    seed(&coll, 30, 1000).await;
    let push = vec![doc! { "$group": { "_id": null, "all": { "$push": "$pad" } } }];
    let (code, _, msg) = aggregate_error(&coll, push).await;
    assert_eq!(code, 146, "{msg}");
    assert!(msg.contains("Memory limit: 10000 bytes"), "{msg}");
    let bad = admin
        .run_command(doc! { "setParameter": 1, "internalQueryMaxRangeBytes": 0 })
        .await
        .unwrap_err();
    assert!(
        matches!(*bad.kind, mongodb::error::ErrorKind::Command(ref c) if c.code == 2),
        "{bad}"
    );
}
