//! Durable commit throughput against the disk's own fdatasync rate, measured in the same run,
//! and log replay speed.
//!
//! ```sh
//! cargo run --release -p mangrove-storage --example commit_bench -- [DIR] [SECONDS]
//! ```
//!
//! DIR defaults to a directory under the system temp dir (put it on the disk you care about);
//! SECONDS is the duration of each measurement (default 3).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bson::rawdoc;
use mangrove_storage::{DocKey, Engine, EngineOptions};

fn fdatasync_rate(dir: &Path, seconds: f64) -> f64 {
    let path = dir.join("fsync-probe");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .unwrap();
    let block = vec![0xabu8; 4096];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        file.write_all(&block).unwrap();
        file.sync_data().unwrap();
        n += 1;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    rate
}

fn open(dir: &Path) -> Engine {
    let _ = std::fs::remove_dir_all(dir);
    let opts = EngineOptions {
        data_dir: Some(dir.to_path_buf()),
        ..EngineOptions::default()
    };
    Engine::open(opts, |_, _| {}).unwrap().0
}

fn key(n: u64) -> DocKey {
    DocKey(n.to_be_bytes().to_vec())
}

struct Run {
    commits_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    commits_per_sync: f64,
}

fn durable_commits(dir: &Path, committers: usize, seconds: f64) -> Run {
    let engine = open(dir);
    let mut t = engine.begin();
    let (coll, _) = t
        .ensure_collection("bench.c", bson::Document::new())
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(t.commit().unwrap().durable()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let before = engine.log_stats();
    let started = Instant::now();
    let workers: Vec<_> = (0..committers)
        .map(|_| {
            let (engine, coll, stop, next) =
                (engine.clone(), coll.clone(), stop.clone(), next.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                let mut latencies = Vec::new();
                let payload = "x".repeat(150);
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let t0 = Instant::now();
                    let mut t = engine.begin();
                    t.insert(
                        &coll,
                        key(n),
                        Arc::new(rawdoc! { "_id": n as i64, "payload": payload.as_str() }),
                    )
                    .unwrap();
                    rt.block_on(t.commit().unwrap().durable()).unwrap();
                    latencies.push(t0.elapsed().as_micros() as u64);
                }
                latencies
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut latencies: Vec<u64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let after = engine.log_stats();
    engine.close();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let commits = after.commits - before.commits;
    Run {
        commits_per_sec: latencies.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        commits_per_sync: commits as f64 / (after.batches - before.batches).max(1) as f64,
    }
}

/// Writes about `target_bytes` of log without waiting for each sync, stops as a crash would
/// (no checkpoint), then times the replay of all of it.
fn replay_speed(dir: &Path, target_bytes: u64) -> (f64, u64, f64) {
    let _ = std::fs::remove_dir_all(dir);
    let no_checkpoints = EngineOptions {
        data_dir: Some(dir.to_path_buf()),
        cache_bytes: 16 * target_bytes as usize,
        checkpoint_log_bytes: 4 * target_bytes,
        checkpoint_interval: Duration::from_secs(3600),
        ..EngineOptions::default()
    };
    let engine = Engine::open(no_checkpoints.clone(), |_, _| {}).unwrap().0;
    let mut t = engine.begin();
    let (coll, _) = t
        .ensure_collection("bench.r", bson::Document::new())
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(t.commit().unwrap().durable()).unwrap();
    let payload = "y".repeat(900);
    let mut n = 0u64;
    let mut last = None;
    while engine.log_stats().bytes < target_bytes {
        let mut t = engine.begin();
        for _ in 0..8 {
            t.insert(
                &coll,
                key(n),
                Arc::new(rawdoc! { "_id": n as i64, "payload": payload.as_str() }),
            )
            .unwrap();
            n += 1;
        }
        last = Some(t.commit().unwrap());
    }
    if let Some(mut ticket) = last {
        rt.block_on(ticket.durable()).unwrap();
    }
    engine.close_without_checkpoint();
    drop(engine);
    let started = Instant::now();
    let (engine, report) = Engine::open(no_checkpoints, |_, _| {}).unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(report.replayed, report.records, "everything is replayed");
    engine.close_without_checkpoint();
    (report.log_bytes as f64 / 1e6 / secs, report.replayed, secs)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = args.get(1).map(PathBuf::from).unwrap_or_else(|| {
        std::env::temp_dir().join(format!("mangrove-bench-{}", std::process::id()))
    });
    let seconds: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    std::fs::create_dir_all(&root).unwrap();

    // The disk's rate drifts during a run: measure it before and after, compare with the mean.
    let fsync_before = fdatasync_rate(&root, seconds);
    let mut rows = Vec::new();
    for committers in [1, 8, 32, 128] {
        let dir = root.join(format!("c{committers}"));
        rows.push((committers, durable_commits(&dir, committers, seconds)));
    }
    let fsync_after = fdatasync_rate(&root, seconds);
    let fsync = (fsync_before + fsync_after) / 2.0;
    println!(
        "disk: {} — fdatasync of a 4 KiB append: {fsync_before:.0}/s before, {fsync_after:.0}/s after, mean {fsync:.0}/s\n",
        root.display()
    );
    println!(
        "| committers | durable commits/s | x fdatasync rate | p50 latency | p99 latency | commits per fdatasync |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for (committers, run) in rows {
        println!(
            "| {committers} | {:.0} | {:.2} | {:.2} ms | {:.2} ms | {:.1} |",
            run.commits_per_sec,
            run.commits_per_sec / fsync,
            run.p50_us as f64 / 1000.0,
            run.p99_us as f64 / 1000.0,
            run.commits_per_sync
        );
    }
    let (mb_per_sec, records, secs) = replay_speed(&root.join("replay"), 200_000_000);
    println!(
        "\nrecovery: replayed {records} transactions ({:.0} MB of log) in {secs:.2} s: {mb_per_sec:.0} MB/s",
        mb_per_sec * secs
    );
    let _ = std::fs::remove_dir_all(&root);
}
