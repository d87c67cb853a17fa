//! Resident memory with a dataset several times the cache: load, scan, and random reads, with
//! RSS read from /proc after each phase.
//!
//! ```sh
//! cargo run --release -p mangrove-storage --example memory_bench -- [CACHE_MB] [DATA_MULTIPLE] [DIR]
//! ```

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bson::rawdoc;
use mangrove_storage::{DocKey, Engine, EngineOptions};

fn rss_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cache_mb: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(64);
    let multiple: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(4);
    let dir = args.get(3).map(PathBuf::from).unwrap_or_else(|| {
        std::env::temp_dir().join(format!("mangrove-membench-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&dir);
    let cache = cache_mb * 1024 * 1024;
    let opts = EngineOptions {
        data_dir: Some(dir.clone()),
        cache_bytes: cache,
        ..EngineOptions::default()
    };
    let (engine, _) = Engine::open(opts.clone(), |_, _| {}).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut t = engine.begin();
    let (coll, _) = t
        .ensure_collection("bench.big", bson::Document::new())
        .unwrap();
    rt.block_on(t.commit().unwrap().durable()).unwrap();

    let payload = "z".repeat(1000);
    let docs = multiple * cache / 1024;
    let started = Instant::now();
    for batch in 0..docs / 100 {
        let mut t = engine.begin();
        for i in 0..100 {
            let id = (batch * 100 + i) as i64;
            t.insert(
                &coll,
                DocKey(id.to_be_bytes().to_vec()),
                Arc::new(rawdoc! { "_id": id, "payload": payload.as_str() }),
            )
            .unwrap();
        }
        rt.block_on(t.commit().unwrap().durable()).unwrap();
    }
    let load_secs = started.elapsed().as_secs_f64();
    let after_load = rss_mb("VmRSS:");
    let snap = engine.snapshot();
    let mut n = 0u64;
    snap.scan(&coll, None, |_, _| {
        n += 1;
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(n as usize, docs / 100 * 100);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..100_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = (x % n) as i64;
        assert!(
            snap.get(&coll, &DocKey(id.to_be_bytes().to_vec()))
                .unwrap()
                .is_some()
        );
    }
    drop(snap);
    let after_reads = rss_mb("VmRSS:");
    let peak = rss_mb("VmHWM:");
    println!(
        "| cache | data | documents | load | RSS after load | RSS after scan + 100k random reads | peak RSS | peak / cache |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {cache_mb} MiB | {} MiB | {n} | {load_secs:.1} s | {after_load:.0} MiB | {after_reads:.0} MiB | {peak:.0} MiB | {:.2} |",
        docs / 1024,
        peak / cache_mb as f64
    );
    engine.close();
    let _ = std::fs::remove_dir_all(&dir);
}
