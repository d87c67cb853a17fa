//! Start-up time with a large retained log (change-stream history): fills a data directory
//! with about MB megabytes of log that a checkpoint covers but retention keeps, then times
//! `Engine::open` on it.
//!
//! ```sh
//! cargo run --release -p mangrove-storage --example history_startup -- fill DIR [MB]
//! /usr/bin/time -v cargo run --release -p mangrove-storage --example history_startup -- open DIR
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bson::rawdoc;
use mangrove_storage::{DocKey, Engine, EngineOptions};

fn options(dir: &Path) -> EngineOptions {
    EngineOptions {
        data_dir: Some(dir.to_path_buf()),
        // Every covered segment is kept: the log stays as large as it was written.
        retain_log_segments: 100_000,
        ..EngineOptions::default()
    }
}

fn fill(dir: &Path, megabytes: u64) {
    let _ = std::fs::remove_dir_all(dir);
    let (engine, _) = Engine::open(options(dir), |_, _| {}).unwrap();
    let mut t = engine.begin();
    let (coll, _) = t.ensure_collection("h.c", bson::Document::new()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(t.commit().unwrap().durable()).unwrap();
    // Four 64 KiB documents per transaction, the same 1,024 keys updated over and over, so
    // the base store stays small and the log is what start-up has to get through.
    let payload = "x".repeat(64 * 1024);
    let commits = megabytes * 1024 * 1024 / (4 * 64 * 1024);
    let started = Instant::now();
    for n in 0..commits {
        let mut t = engine.begin();
        for k in 0..4u64 {
            let id = ((n * 4 + k) % 1024) as i64;
            let doc = Arc::new(rawdoc! { "_id": id, "n": n as i64, "p": payload.as_str() });
            let key = DocKey(id.to_be_bytes().to_vec());
            if n * 4 + k < 1024 {
                t.insert(&coll, key, doc).unwrap();
            } else {
                t.replace(&coll, key, doc).unwrap();
            }
        }
        // Visible before the next transaction's snapshot, or its write to the same key
        // would conflict; durable only at the end (group commit does the rest).
        rt.block_on(t.commit().unwrap().visible()).unwrap();
    }
    engine.close();
    println!(
        "filled {} with {commits} commits in {:.1}s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
}

fn open(dir: &Path) {
    let started = Instant::now();
    let (engine, report) = Engine::open(options(dir), |_, _| {}).unwrap();
    let elapsed = started.elapsed();
    println!(
        "open: {:.3}s ({} segments, {} MiB of log, {} records read, {} replayed)",
        elapsed.as_secs_f64(),
        report.segments,
        report.log_bytes / (1024 * 1024),
        report.records,
        report.replayed
    );
    engine.close_without_checkpoint();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(args.get(1).expect("usage: fill|open DIR [MB]"));
    match args[0].as_str() {
        "fill" => fill(&dir, args.get(2).map_or(1024, |m| m.parse().unwrap())),
        "open" => open(&dir),
        other => panic!("unknown mode {other}"),
    }
}
