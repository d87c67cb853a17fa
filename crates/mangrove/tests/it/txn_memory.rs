//! `--cache-size` bounds transactions and large statements: a transaction that outgrows its
//! share of the cache is refused as soon as it does (TransactionTooLargeForCache, 388), not at
//! commit after gigabytes; a multi-document update over a large collection commits in pieces,
//! so memory stays bounded and other clients are not stalled. Each case reads the server's peak
//! resident memory (VmHWM) from /proc.

use std::time::{Duration, Instant};

use crate::common::*;
use bson::{Document, doc};
use mongodb::error::ErrorKind;

const CACHE_MIB: &str = "128";
/// What the server may reach with `--cache-size 128`: the cache itself (a quarter of it for
/// redb pages, a quarter for versions awaiting a checkpoint) plus a transaction's quarter, the
/// commit queue and the runtime. Before this bound existed these cases reached 1.0 to 2.3 GB.
const RSS_BOUND_MIB: u64 = 512;

fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

fn code_of(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|w| w.first())
            .map(|w| w.code),
        _ => None,
    }
}

/// Inserts into one transaction until the server refuses; returns the bytes sent before.
async fn grow_until_refused(
    client: &mongodb::Client,
    doc_bytes: usize,
    per_batch: usize,
) -> (u64, mongodb::error::Error) {
    let coll = client.database("db").collection::<Document>("big");
    let mut session = client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    let pad = "x".repeat(doc_bytes);
    let mut sent = 0u64;
    for batch in 0..100_000i64 {
        let docs: Vec<Document> = (0..per_batch as i64)
            .map(|i| doc! { "_id": batch * per_batch as i64 + i, "pad": &pad })
            .collect();
        match coll.insert_many(docs).session(&mut session).await {
            Ok(_) => sent += (per_batch * doc_bytes) as u64,
            Err(e) => {
                let _ = session.abort_transaction().await;
                return (sent, e);
            }
        }
        assert!(
            sent < 1 << 30,
            "1 GiB in one transaction and still not refused"
        );
    }
    unreachable!()
}

#[tokio::test]
async fn a_transaction_past_its_share_of_the_cache_is_refused_at_once() {
    let server = Server::start_with(&["--cache-size", CACHE_MIB]);
    let client = driver_client(server.port).await;
    // Large documents: the 200 MB transaction.
    let (sent, e) = grow_until_refused(&client, 100_000, 20).await;
    println!(
        "large documents: refused after {} MiB sent: {e}",
        sent >> 20
    );
    assert_eq!(
        code_of(&e),
        Some(388),
        "TransactionTooLargeForCache expected: {e}"
    );
    assert!(
        e.to_string().contains("--cache-size"),
        "the error says what to do: {e}"
    );
    // A quarter of 128 MiB, refused at the write that passes it.
    assert!(
        (24 << 20..=34 << 20).contains(&sent),
        "refused after {sent} bytes"
    );
    // Small documents: the million-document transaction.
    let (sent_small, e) = grow_until_refused(&client, 100, 10_000).await;
    let docs = sent_small / 100;
    println!("small documents: refused after {docs} documents: {e}");
    assert_eq!(code_of(&e), Some(388), "{e}");
    assert!(docs < 200_000, "refused only after {docs} documents");
    let rss = peak_rss_mib(server.pid());
    println!("peak RSS with --cache-size {CACHE_MIB}: {rss} MiB");
    assert!(rss < RSS_BOUND_MIB, "peak RSS {rss} MiB");
    // Nothing leaked: the server accepts writes and transactions as before.
    let coll = client.database("db").collection::<Document>("after");
    coll.insert_one(doc! { "_id": 1 }).await.unwrap();
    assert_healthy(&server);
}

/// Pings from another client while `work` runs; returns the slowest ping.
async fn slowest_ping_during<F: std::future::Future>(port: u16, work: F) -> (F::Output, Duration) {
    let pinger = driver_client(port).await;
    pinger
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let pings = tokio::spawn(async move {
        let mut slowest = Duration::ZERO;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let t = Instant::now();
            pinger
                .database("admin")
                .run_command(doc! { "ping": 1 })
                .await
                .unwrap();
            slowest = slowest.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        slowest
    });
    let out = work.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    (out, pings.await.unwrap())
}

#[tokio::test]
async fn update_many_over_200k_documents_commits_in_pieces() {
    let server = Server::start_with(&["--cache-size", CACHE_MIB]);
    let client = driver_client(server.port).await;
    let coll = client.database("db").collection::<Document>("many");
    let n = 200_000i64;
    for start in (0..n).step_by(20_000) {
        let docs: Vec<Document> = (start..start + 20_000)
            .map(|i| doc! { "_id": i, "n": 0, "pad": "y".repeat(80) })
            .collect();
        coll.insert_many(docs).await.unwrap();
    }
    let (result, slowest) = slowest_ping_during(server.port, async {
        coll.update_many(doc! {}, doc! { "$inc": { "n": 1 } })
            .await
            .unwrap()
    })
    .await;
    assert_eq!(result.matched_count, n as u64);
    assert_eq!(result.modified_count, n as u64);
    assert_eq!(
        coll.count_documents(doc! { "n": 1 }).await.unwrap(),
        n as u64
    );
    let rss = peak_rss_mib(server.pid());
    println!(
        "update_many over {n} documents: slowest concurrent ping {slowest:?}, peak RSS {rss} MiB"
    );
    assert!(rss < RSS_BOUND_MIB, "peak RSS {rss} MiB");
    // Generous: before, one giant commit held every other client for about 4 s.
    assert!(
        slowest < Duration::from_secs(1),
        "a ping waited {slowest:?}"
    );
    let deleted = coll
        .delete_many(doc! { "_id": { "$gte": 100_000 } })
        .await
        .unwrap();
    assert_eq!(deleted.deleted_count, 100_000);
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 100_000);
}
