//! mangrove-auth-bench: what authentication and TLS cost (issue 14), against two running
//! servers, one plain (no `--auth`, no TLS) and one secure (`--auth --tls-mode preferTLS`):
//!
//! - `connections`: new authenticated connections per second as a driver makes them (a new
//!   client, one `ping`, closed), SCRAM-SHA-256 over plaintext and over TLS, beside the same
//!   without authentication on the plain server;
//! - `transfer`: the transfer workload (uniform, `--clients`) on the plain server and over TLS
//!   with a SCRAM user on the secure one, alternated in the same run (plain, secure, plain,
//!   secure), with each server's CPU time per transfer.
//!
//! `scripts/bench-auth` makes a test CA, starts both servers and runs this.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bson::doc;
use clap::Parser;
use mangrove_bench::workload::{self, Shared, Sizes, Timing, Workload};
use mangrove_bench::{mongo, probe};
use mongodb::Client;
use mongodb::options::ClientOptions;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "What authentication and TLS cost on Mangrove: new connections/s, transfers/s")]
struct Args {
    /// The plain server (no --auth, no TLS).
    #[arg(long)]
    plain_uri: String,
    /// The secure server over plaintext without credentials: the first user is created
    /// through it (the localhost exception).
    #[arg(long)]
    setup_uri: String,
    /// The user created for the secure server's cells (with the `root` role).
    #[arg(long, default_value = "bench")]
    user: String,
    #[arg(long, default_value = "bench-password")]
    password: String,
    /// The secure server over plaintext, with the user's credentials.
    #[arg(long)]
    secure_uri: String,
    /// The secure server over TLS (tls=true&tlsCAFile=...), with the user's credentials.
    #[arg(long)]
    secure_tls_uri: String,
    /// Process ids of the plain and the secure server, for their CPU time.
    #[arg(long)]
    plain_pid: u32,
    #[arg(long)]
    secure_pid: u32,
    /// Concurrent transfer clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Concurrent connection makers.
    #[arg(long, default_value_t = 8)]
    connectors: usize,
    /// Measured seconds per cell.
    #[arg(long, default_value_t = 5.0)]
    duration_secs: f64,
    /// Warm-up seconds per transfer cell.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// Accounts in the transfer workload.
    #[arg(long, default_value_t = 10_000)]
    accounts: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args).await {
        eprintln!("mangrove-auth-bench: {e}");
        std::process::exit(2);
    }
}

async fn run(args: &Args) -> Result<(), String> {
    let setup = mongo::connect(&args.setup_uri, 1).await?;
    setup
        .database("admin")
        .run_command(doc! { "createUser": &args.user, "pwd": &args.password, "roles": ["root"] })
        .await
        .map_err(|e| format!("creating the bench user on the secure server: {e}"))?;
    println!("## Authentication and TLS (issue 14)\n");
    println!(
        "**New connections per second** ({} concurrent makers; each a new driver client, one `ping`, closed):\n",
        args.connectors
    );
    println!("| server | connection | per second |");
    println!("| --- | --- | ---: |");
    for (label, uri) in [
        ("plain", ("no authentication, plaintext", &args.plain_uri)),
        ("secure", ("SCRAM-SHA-256, plaintext", &args.secure_uri)),
        ("secure", ("SCRAM-SHA-256, TLS", &args.secure_tls_uri)),
    ] {
        let rate = connections_per_sec(uri.1, args.connectors, secs(args.duration_secs)).await?;
        println!("| {label} | {} | {rate:.0} |", uri.0);
    }
    println!(
        "\n**Transfers** (transfer-uniform, {} clients, `w: \"majority\"`, same run):\n",
        args.clients
    );
    println!("| server | connection | transfers/s | p50 ms | p99 ms | server CPU µs/transfer |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    let mut rates = [Vec::new(), Vec::new()];
    for round in 0..2 {
        for (i, (label, uri, pid)) in [
            ("plain", &args.plain_uri, args.plain_pid),
            ("secure", &args.secure_tls_uri, args.secure_pid),
        ]
        .into_iter()
        .enumerate()
        {
            let (rate, line) = transfer_cell(args, uri, pid, round == 0).await?;
            let how = if i == 0 {
                "no authentication, plaintext"
            } else {
                "SCRAM-SHA-256 user, TLS"
            };
            println!("| {label} | {how} | {line}");
            rates[i].push(rate);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "\nSecure over plain: {:.2} (means of two cells each).",
        mean(&rates[1]) / mean(&rates[0]).max(1e-9)
    );
    Ok(())
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.1))
}

/// New driver clients per second, each making and authenticating its connection for one
/// `ping` and closing it.
async fn connections_per_sec(uri: &str, makers: usize, duration: Duration) -> Result<f64, String> {
    let options = ClientOptions::parse(uri)
        .await
        .map_err(|e| format!("bad URI {uri:?}: {e}"))?;
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..makers {
        let (options, done) = (options.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let mut o = options.clone();
                o.direct_connection = Some(true);
                o.max_pool_size = Some(1);
                o.heartbeat_freq = Some(Duration::from_secs(60));
                let client = Client::with_options(o).map_err(|e| e.to_string())?;
                client
                    .database("admin")
                    .run_command(doc! { "ping": 1 })
                    .await
                    .map_err(|e| e.to_string())?;
                client.shutdown().await;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// One transfer cell against `uri` (loading the accounts first if `load`): its rate, and the
/// table row's remaining cells.
async fn transfer_cell(
    args: &Args,
    uri: &str,
    pid: u32,
    load: bool,
) -> Result<(f64, String), String> {
    let client = mongo::connect(uri, args.clients).await?;
    let shared = Shared::new(Sizes {
        accounts: args.accounts,
        customers: 1,
        items: 1,
    });
    if load {
        mongo::load(&client, &shared).await?;
    }
    let mut workers = Vec::with_capacity(args.clients);
    for seed in 0..args.clients as u64 {
        workers.push(mongo::MongoWorker::new(&client, shared.clone(), seed + 1).await?);
    }
    let timing = Timing {
        warmup: secs(args.warmup_secs),
        duration: secs(args.duration_secs),
    };
    let cpu_before = probe::tree_cpu(pid);
    let stats = workload::run_cell(workers, Workload::TransferUniform, timing).await;
    let cpu_after = probe::tree_cpu(pid);
    if stats.errors > 0 {
        return Err(format!("transfers failed: {:?}", stats.first_error));
    }
    let cpu = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) if stats.ops_total > 0 => {
            format!(
                "{:.0}",
                (b - a).as_secs_f64() * 1e6 / stats.ops_total as f64
            )
        }
        _ => "-".into(),
    };
    let rate = stats.throughput();
    let p = |q| {
        stats
            .percentile_ms(q)
            .map_or("-".into(), |v| format!("{v:.2}"))
    };
    Ok((
        rate,
        format!("{rate:.0} | {} | {} | {cpu} |", p(0.5), p(0.99)),
    ))
}
