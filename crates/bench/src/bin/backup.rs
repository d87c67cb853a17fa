//! mangrove-backup-bench: the transfer workload while online backups run (issue 16), against a
//! running server. Three cells of the same length, back to back: no backup; backups one after
//! another for the whole cell (each `createBackup` into a fresh directory, the previous one
//! removed); no backup again. Reports throughput and latency per cell and each backup's size
//! and speed. `scripts/bench-backup` starts a server and runs this; see docs/benchmarks.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bson::doc;
use clap::Parser;
use mangrove_bench::mongo;
use mangrove_bench::workload::{self, CellStats, PAD, Shared, Sizes, Timing, Workload};
use mongodb::Client;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "The transfer workload on Mangrove with and without an online backup running")]
struct Args {
    /// Mangrove's connection string.
    #[arg(long)]
    uri: String,
    /// A directory on the server's machine for the backups (each run's go in subdirectories).
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Measured seconds per cell.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// MB of extra documents loaded first, so that a backup has a base store to copy.
    #[arg(long, default_value_t = 200)]
    ballast_mb: u64,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("mangrove-backup-bench: {e}");
        std::process::exit(2);
    }
}

async fn load_ballast(client: &Client, mb: u64) -> Result<(), String> {
    let coll = client
        .database(mongo::DB)
        .collection::<bson::Document>("ballast");
    let pad = PAD.repeat(10); // about 1 KB a document
    for start in (0..mb * 1000).step_by(1000) {
        let docs = (start..start + 1000).map(|i| doc! { "_id": i as i64, "pad": &pad });
        coll.insert_many(docs)
            .await
            .map_err(|e| format!("ballast: {e}"))?;
    }
    Ok(())
}

/// One backup's size (bytes), and how long it took.
type BackupRun = (u64, Duration);

/// Takes backups one after another until `stop`, each into a new subdirectory of `dir`
/// (removed at the end).
async fn backups_until(
    client: Client,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
) -> Result<Vec<BackupRun>, String> {
    let mut runs = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let target = dir.join(format!("b{n}"));
        n += 1;
        let started = Instant::now();
        let reply = client
            .database("admin")
            .run_command(
                doc! { "createBackup": 1, "backupDir": target.to_string_lossy().into_owned() },
            )
            .await
            .map_err(|e| format!("createBackup: {e}"))?;
        runs.push((
            reply.get_i64("bytes").unwrap_or(0) as u64,
            started.elapsed(),
        ));
    }
    // Removed only now: removing hundreds of MB inside a task held one of the clients' worker
    // threads (and so part of the clients) each time.
    for i in 0..n {
        let _ = std::fs::remove_dir_all(dir.join(format!("b{i}")));
    }
    Ok(runs)
}

fn row(name: &str, s: &CellStats) -> String {
    let ms = |q| s.percentile_ms(q).map_or("-".into(), |v| format!("{v:.2}"));
    format!(
        "| {name} | {:.0} | {} | {} | {} | {} |",
        s.throughput(),
        ms(0.5),
        ms(0.99),
        ms(1.0),
        s.errors
    )
}

async fn cell(
    client: &Client,
    shared: &Arc<Shared>,
    clients: usize,
    timing: Timing,
    seed: u64,
) -> Result<CellStats, String> {
    let mut workers = Vec::with_capacity(clients);
    for i in 0..clients {
        workers.push(mongo::MongoWorker::new(client, shared.clone(), seed + i as u64).await?);
    }
    Ok(workload::run_cell(workers, Workload::TransferUniform, timing).await)
}

async fn run(args: Args) -> Result<(), String> {
    let client = mongo::connect(&args.uri, args.clients + 8).await?;
    let shared = Shared::new(Sizes {
        accounts: 10_000,
        customers: 3_000,
        items: 10_000,
    });
    eprintln!(
        "loading the accounts and {} MB of ballast ...",
        args.ballast_mb
    );
    mongo::load(&client, &shared).await?;
    load_ballast(&client, args.ballast_mb).await?;
    // A first backup waits for nothing but makes the base store hold the load: the
    // checkpointer runs on its interval, so give it one.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let timing = Timing {
        warmup: Duration::from_secs(2),
        duration: Duration::from_secs_f64(args.duration_secs),
    };
    let quiet = cell(&client, &shared, args.clients, timing, 1).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let backups = tokio::spawn(backups_until(
        client.clone(),
        args.dir.clone(),
        stop.clone(),
    ));
    let busy = cell(&client, &shared, args.clients, timing, 1000).await?;
    stop.store(true, Ordering::Relaxed);
    let runs = backups.await.map_err(|e| e.to_string())??;
    let again = cell(&client, &shared, args.clients, timing, 2000).await?;
    println!(
        "| transfer-uniform, {} clients | ops/s | p50 ms | p99 ms | max ms | errors |",
        args.clients
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    println!("{}", row("no backup", &quiet));
    println!("{}", row("backups running", &busy));
    println!("{}", row("no backup (again)", &again));
    for (i, (bytes, took)) in runs.iter().enumerate() {
        let mb = *bytes as f64 / 1e6;
        println!(
            "backup {}: {mb:.0} MB in {:.2} s ({:.0} MB/s)",
            i + 1,
            took.as_secs_f64(),
            mb / took.as_secs_f64()
        );
    }
    Ok(())
}
