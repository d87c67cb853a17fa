//! Damaged files, as an unlucky operator meets them, through the real binary and driver: bytes
//! flipped in the base store and in the log, a newest segment moved away after a crash. Damage
//! is never served as data, never panics a connection, stops start-up naming the file that is
//! damaged, and `mangrove verify` finds it.

use std::path::{Path, PathBuf};
use std::process::Child;

use crate::common::*;
use bson::{Document, doc};
use mongodb::error::ErrorKind;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let dir =
            std::env::temp_dir().join(format!("mangrove-damage-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn data(&self) -> PathBuf {
        self.0.join("data")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn canary(i: i64) -> String {
    format!("canary-{i:06}")
}

/// Inserts `n` documents of about 1 KiB, each with a findable canary string.
async fn fill(port: u16, n: i64) {
    let coll = driver_client(port)
        .await
        .database("db")
        .collection::<Document>("c");
    let docs: Vec<Document> = (0..n)
        .map(|i| doc! { "_id": i, "tag": canary(i), "pad": "x".repeat(1000) })
        .collect();
    for chunk in docs.chunks(500) {
        coll.insert_many(chunk.to_vec()).await.unwrap();
    }
}

fn stop(mut server: Child, signal: &str) {
    let pid = server.id().to_string();
    std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap();
    server.wait().unwrap();
}

fn find_bytes(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the canary is in the file")
}

fn flip(path: &Path, at: usize, mask: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= mask;
    std::fs::write(path, bytes).unwrap();
}

/// The server's code for a failed read.
fn code_of(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// A data directory whose documents were checkpointed into the base store (a clean stop),
/// with the offset of one canary in base.redb.
async fn checkpointed(dir: &Dir) -> usize {
    let (server, port) = spawn_on_data_dir(&dir.data(), None);
    fill(port, 2000).await;
    stop(server, "-TERM");
    let base = std::fs::read(dir.data().join("base.redb")).unwrap();
    find_bytes(&base, canary(1000).as_bytes())
}

fn assert_verify_finds(data: &Path, what: &str) {
    let (code, out) = run_tool(&["verify", "--data-dir", data.to_str().unwrap()]);
    println!("mangrove verify:\n{out}");
    assert_eq!(code, Some(2), "verify should report damage:\n{out}");
    assert!(out.contains(what), "verify should name {what}:\n{out}");
}

#[tokio::test]
async fn a_flipped_byte_in_a_stored_document_is_never_served() {
    let dir = Dir::new("value");
    let at = checkpointed(&dir).await;
    let (code, out) = run_tool(&["verify", "--data-dir", dir.data().to_str().unwrap()]);
    assert_eq!(code, Some(0), "a healthy directory verifies clean:\n{out}");
    assert!(
        out.contains("indexes: ok") && out.contains("base store: ok"),
        "{out}"
    );
    flip(&dir.data().join("base.redb"), at + 3, 0x20); // "canary" -> "caNary"
    let (server, port) = spawn_on_data_dir(&dir.data(), None);
    let coll = driver_client(port)
        .await
        .database("db")
        .collection::<Document>("c");
    let err = coll.find_one(doc! { "_id": 1000 }).await.unwrap_err();
    assert_eq!(
        code_of(&err),
        Some(301),
        "DataCorruptionDetected expected: {err}"
    );
    assert!(err.to_string().contains("base.redb"), "{err}");
    // A scan meets it too, and fails rather than returning the damaged value.
    let scan = coll
        .count_documents(doc! { "tag": { "$regex": "^caNary" } })
        .await;
    assert_eq!(scan.map_err(|e| code_of(&e)), Err(Some(301)));
    // Everything else still works.
    assert!(coll.find_one(doc! { "_id": 3 }).await.unwrap().is_some());
    coll.insert_one(doc! { "_id": "new" }).await.unwrap();
    let log = std::fs::read_to_string(server_log_path(&dir.data())).unwrap();
    assert!(log.contains("data corruption detected"), "{log}");
    stop(server, "-TERM");
    assert_verify_finds(&dir.data(), "checksum mismatch");
}

/// The reproduction: a flipped byte at a b-tree page start made redb panic inside
/// every read ("entered unreachable code") and drop the connection. The store is larger than
/// its cache, so the page is read from disk after the damage.
#[tokio::test]
async fn a_damaged_btree_page_fails_reads_without_dropping_connections() {
    let dir = Dir::new("page");
    let small_cache = ["--cache-size", "4"];
    let (server, port) = spawn_on_data_dir_with(&dir.data(), None, &small_cache);
    fill(port, 10_000).await;
    stop(server, "-TERM");
    let (server, port) = spawn_on_data_dir_with(&dir.data(), None, &small_cache);
    let base = dir.data().join("base.redb");
    let at = find_bytes(&std::fs::read(&base).unwrap(), canary(1000).as_bytes());
    flip(&base, at & !4095, 0xFF);
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    for round in 0..3 {
        let find = op_msg(
            10 + round,
            &doc! { "find": "c", "filter": { "_id": 1000 }, "$db": "db" },
        );
        let (_, reply) = round_trip(&mut raw, &find);
        assert_eq!(
            ok_value(&reply),
            Some(0.0),
            "a damaged page is not data: {reply}"
        );
        assert_eq!(int_value(&reply, "code"), Some(301), "{reply}");
        // The same connection still answers.
        let (_, pong) = round_trip(&mut raw, &ping_msg(20 + round));
        assert_eq!(ok_value(&pong), Some(1.0));
    }
    let other = op_msg(
        40,
        &doc! { "find": "c", "filter": { "_id": 9_999 }, "$db": "db" },
    );
    assert_eq!(ok_value(&round_trip(&mut raw, &other).1), Some(1.0));
    stop(server, "-TERM");
    // redb reads that page when it opens the file: start-up refuses, naming it.
    let (_, stderr) = start_refused(&dir.data(), &small_cache);
    assert!(
        stderr.contains("data corruption detected") && stderr.contains("base.redb"),
        "{stderr}"
    );
    assert_verify_finds(&dir.data(), "base.redb");
}

/// A log of several 1 MiB segments, left by a kill -9.
async fn crashed_with_segments(dir: &Dir) -> i64 {
    let (server, port) = spawn_on_data_dir_with(&dir.data(), None, &["--log-segment-size", "1"]);
    fill(port, 3000).await;
    stop(server, "-KILL");
    let segments = mangrove_storage::txlog::list_segments(&dir.data().join("log")).unwrap();
    assert!(segments.len() >= 3, "{segments:?}");
    3000
}

async fn count(port: u16) -> u64 {
    driver_client(port)
        .await
        .database("db")
        .collection::<Document>("c")
        .count_documents(doc! {})
        .await
        .unwrap()
}

#[tokio::test]
async fn a_removed_newest_segment_stops_start_up_naming_it() {
    let dir = Dir::new("newest");
    let acknowledged = crashed_with_segments(&dir).await;
    let log = dir.data().join("log");
    let newest = mangrove_storage::txlog::list_segments(&log)
        .unwrap()
        .pop()
        .unwrap();
    let name = newest.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::rename(&newest, dir.0.join(&name)).unwrap();
    let (status, stderr) = start_refused(&dir.data(), &[]);
    println!("refused ({status}): {stderr}");
    assert!(!status.success());
    assert!(
        stderr.contains(&name) && stderr.contains("is missing"),
        "{stderr}"
    );
    assert!(stderr.contains("--truncate-damaged-log"), "{stderr}");
    let (code, out) = run_tool(&["log", "verify", "--data-dir", dir.data().to_str().unwrap()]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains(&name), "{out}");
    // The operator accepts the loss explicitly.
    let (server, port) = spawn_on_data_dir_with(&dir.data(), None, &["--truncate-damaged-log"]);
    let left = count(port).await;
    println!("with --truncate-damaged-log: {left} of {acknowledged} documents");
    assert!(left > 0 && left < acknowledged as u64);
    stop(server, "-TERM");
}

/// The offset of the newest record, from `mangrove log show --json`.
fn last_record_offset(data: &Path) -> (PathBuf, u64) {
    let (_, out) = run_tool(&[
        "log",
        "list",
        "--json",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let last = out.lines().rfind(|l| l.starts_with('{')).unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    let segment = data.join("log").join(v["segment"].as_str().unwrap());
    (segment, v["offset"].as_u64().unwrap())
}

#[tokio::test]
async fn a_flipped_byte_in_the_last_acknowledged_record_stops_start_up() {
    let dir = Dir::new("last");
    let (server, port) = spawn_on_data_dir(&dir.data(), None);
    let coll = driver_client(port)
        .await
        .database("db")
        .collection::<Document>("c");
    for i in 0..50 {
        coll.insert_one(doc! { "_id": i, "tag": canary(i) })
            .await
            .unwrap();
    }
    stop(server, "-KILL");
    let (segment, offset) = last_record_offset(&dir.data());
    flip(&segment, offset as usize + 40, 0x01);
    let (_, stderr) = start_refused(&dir.data(), &[]);
    println!("refused: {stderr}");
    let name = segment.file_name().unwrap().to_str().unwrap();
    assert!(
        stderr.contains(name) && stderr.contains(&format!("offset {offset}")),
        "{stderr}"
    );
    assert!(stderr.contains("probably acknowledged"), "{stderr}");
    assert!(!stderr.contains("never acknowledged"), "{stderr}");
    let (server, port) = spawn_on_data_dir_with(&dir.data(), None, &["--truncate-damaged-log"]);
    assert_eq!(count(port).await, 49, "only the damaged transaction is cut");
    stop(server, "-TERM");
}

#[tokio::test]
async fn a_flipped_byte_in_the_middle_of_the_log_stops_start_up() {
    let dir = Dir::new("middle");
    let (server, port) = spawn_on_data_dir(&dir.data(), None);
    fill(port, 1000).await;
    stop(server, "-KILL");
    let segment = mangrove_storage::txlog::list_segments(&dir.data().join("log"))
        .unwrap()
        .pop()
        .unwrap();
    let at = find_bytes(&std::fs::read(&segment).unwrap(), canary(400).as_bytes());
    flip(&segment, at, 0x20);
    let (_, stderr) = start_refused(&dir.data(), &[]);
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    assert!(
        stderr.contains(segment.file_name().unwrap().to_str().unwrap()),
        "{stderr}"
    );
    let (code, out) = run_tool(&["verify", "--data-dir", dir.data().to_str().unwrap()]);
    assert_eq!(code, Some(2), "{out}");
}
