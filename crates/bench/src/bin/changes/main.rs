//! mangrove-changes-bench: change streams served from Mangrove's transaction log (issue 13),
//! against a running server. Scenarios, each selectable with `--scenarios`:
//!
//! - `latency`: one watcher on a collection while a writer commits into it, paced (1,000
//!   commits/s, one `insert_one` each) and at the maximum rate (the transfer workload, each
//!   transaction also inserting a marker document). Latency is the time the watcher receives an
//!   event minus the time the writer received the commit's acknowledgement (and minus the time
//!   the commit was sent).
//! - `watchers`: transfer-uniform throughput with 0, 1, 10 and 100 change streams open on the
//!   bench database, each consuming its events; the counts run in rounds (`--rounds`, default
//!   3), and each count's mean is compared with the mean of the 0-stream cells, because this
//!   machine's speed drifts by more than the difference measured over a run.
//! - `catchup`: about 0.9 GB of history written, then one stream opened with
//!   `startAtOperationTime` before it reads every event.
//! - `memory`: the server's RSS before and after opening 1,000 change-stream cursors, and after
//!   a `getMore` round on all of them.
//!
//! Prints a markdown report. `scripts/bench-changes` starts a server and runs this; see
//! docs/benchmarks.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bson::{Bson, Document, doc};
use clap::Parser;
use mangrove_bench::workload::{Shared, Sizes, Timing};
use mangrove_bench::{mongo, probe};
use mongodb::Client;

mod catchup;
mod latency;
mod memory;
mod watchers;

// The same allocator as the server and as mangrove-bench.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DB: &str = mongo::DB;

#[derive(Parser)]
#[command(
    about = "Change streams on Mangrove: delivery latency, throughput with watchers, \
                   catch-up read speed, memory of open streams"
)]
struct Args {
    /// Mangrove's connection string.
    #[arg(long)]
    uri: String,
    /// Scenarios to run, comma-separated: latency, watchers, catchup, memory (default all).
    #[arg(long, value_delimiter = ',')]
    scenarios: Option<Vec<String>>,
    /// The server's process id, for its RSS (default: serverStatus `pid`; the server must run
    /// on this machine).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Tiny sizes and short phases (about 10 s): checks the harness, not the speed.
    #[arg(long)]
    quick: bool,
    /// Also write the markdown report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Paced writer's commits per second (latency).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured seconds of each latency phase (default 10; quick 1).
    #[arg(long)]
    latency_secs: Option<f64>,
    /// Concurrent transfer clients (latency at the maximum rate, and watchers; default 32,
    /// quick 8).
    #[arg(long)]
    clients: Option<usize>,
    /// Change streams open per throughput cell, comma-separated (default 0,1,10,100; quick
    /// 0,1,10). A 0 first is run again last, to show drift.
    #[arg(long, value_delimiter = ',')]
    watchers: Option<Vec<usize>>,
    /// Measured seconds per throughput cell (default 5; quick 1).
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Rounds of throughput cells: the counts of `--watchers` run in order this many times
    /// (default 3; quick 1), so that the machine's drift over the run falls on every count
    /// alike, and each count's mean is compared with the mean of the 0-stream cells.
    #[arg(long)]
    rounds: Option<usize>,
    /// The throughput cells' streams count each batch's events without decoding them (bare
    /// `getMore`s on a connection each, see `raw_watch.rs`) instead of going through the
    /// driver's `watch()`: what the server pays for the streams, without the client's decoding
    /// on the same cores. Needs a server without authentication or TLS.
    #[arg(long)]
    raw_watchers: bool,
    /// Warm-up seconds before each measured phase (default 2; quick 0.3).
    #[arg(long)]
    warmup_secs: Option<f64>,
    /// MiB of 1 KiB documents written as history for the catch-up read (default 800; quick 8).
    /// 800 MiB makes about 0.93 GB of log, under the server's default history retention
    /// (1 GiB of log, which `mangrove serve` has no option for yet): past it the oldest
    /// segments may be removed and the stream would start after a gap.
    #[arg(long)]
    catchup_mib: Option<u64>,
    /// Change-stream cursors opened for the memory scenario (default 1000; quick 50).
    #[arg(long)]
    streams: Option<usize>,
    /// Connections (and sessions) the memory scenario opens its cursors through.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// The command line to print in the report.
    #[arg(long, default_value = "mangrove-changes-bench")]
    command: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    Latency,
    Watchers,
    Catchup,
    Memory,
}

impl Scenario {
    const ALL: [Scenario; 4] = [
        Scenario::Latency,
        Scenario::Watchers,
        Scenario::Catchup,
        Scenario::Memory,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Latency => "latency",
            Scenario::Watchers => "watchers",
            Scenario::Catchup => "catchup",
            Scenario::Memory => "memory",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Scenario::Latency => "Delivery latency",
            Scenario::Watchers => "Throughput with watchers",
            Scenario::Catchup => "Catch-up read speed",
            Scenario::Memory => "Memory with open change streams",
        }
    }
}

/// What the arguments ask for, with the quick or full defaults filled in.
struct Plan {
    scenarios: Vec<Scenario>,
    rate: f64,
    latency: Timing,
    clients: usize,
    watchers: Vec<usize>,
    rounds: usize,
    raw_watchers: bool,
    cell: Timing,
    catchup_docs: u64,
    streams: usize,
    connections: usize,
    memory_writes: usize,
    sizes: Sizes,
}

fn seconds(v: f64, what: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| format!("{what} must be a number of seconds ≥ 0, not {v}"))
}

fn plan(a: &Args) -> Result<Plan, String> {
    let q = a.quick;
    let scenarios = match &a.scenarios {
        None => Scenario::ALL.to_vec(),
        Some(names) => names
            .iter()
            .map(|n| {
                Scenario::ALL
                    .into_iter()
                    .find(|s| s.name() == n)
                    .ok_or_else(|| {
                        format!(
                            "unknown scenario {n:?}; choose from latency, watchers, catchup, memory"
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    let warmup = seconds(
        a.warmup_secs.unwrap_or(if q { 0.3 } else { 2.0 }),
        "--warmup-secs",
    )?;
    let pick = |v: Option<f64>, full: f64, quick: f64| v.unwrap_or(if q { quick } else { full });
    let clients = a.clients.unwrap_or(if q { 8 } else { 32 });
    let streams = a.streams.unwrap_or(if q { 50 } else { 1000 });
    if clients == 0 || streams == 0 || a.connections == 0 || a.rate.is_nan() || a.rate <= 0.0 {
        return Err("--clients, --streams, --connections and --rate must be positive".into());
    }
    let scale = if q { 1 } else { 10 };
    Ok(Plan {
        scenarios,
        rate: a.rate,
        latency: Timing {
            warmup: warmup.min(Duration::from_secs(1)),
            duration: seconds(pick(a.latency_secs, 10.0, 1.0), "--latency-secs")?,
        },
        clients,
        watchers: a.watchers.clone().unwrap_or_else(|| {
            if q {
                vec![0, 1, 10]
            } else {
                vec![0, 1, 10, 100]
            }
        }),
        rounds: match a.rounds.unwrap_or(if q { 1 } else { 3 }) {
            0 => return Err("--rounds must be at least 1".into()),
            n => n,
        },
        raw_watchers: a.raw_watchers,
        cell: Timing {
            warmup,
            duration: seconds(pick(a.duration_secs, 5.0, 1.0), "--duration-secs")?,
        },
        catchup_docs: a.catchup_mib.unwrap_or(if q { 8 } else { 800 }) * 1024,
        streams,
        connections: a.connections,
        memory_writes: if q { 10 } else { 100 },
        // The transfer workload's accounts, as mangrove-bench loads them.
        sizes: Sizes {
            accounts: 1_000 * scale,
            customers: 300 * scale,
            items: 1_000 * scale,
        },
    })
}

/// Connections and state every scenario uses.
struct Ctx {
    plan: Plan,
    uri: String,
    /// The writers' pool (transfer clients and the paced writer).
    writers: Client,
    /// The watchers' pool, apart from the writers' so that a waiting `getMore` never holds a
    /// writer back.
    watchers: Client,
    shared: Arc<Shared>,
    /// Unique ids of marker documents across the run.
    next_mark: AtomicI64,
    seed: AtomicU64,
    server_pid: Option<u32>,
}

impl Ctx {
    fn db(&self, client: &Client) -> mongodb::Database {
        client.database(DB)
    }

    async fn transfer_workers(&self, n: usize) -> Result<Vec<mongo::MongoWorker>, String> {
        let mut workers = Vec::with_capacity(n);
        for _ in 0..n {
            let seed = self.seed.fetch_add(1, Ordering::Relaxed);
            workers.push(mongo::MongoWorker::new(&self.writers, self.shared.clone(), seed).await?);
        }
        Ok(workers)
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("mangrove-changes-bench: {e}");
            std::process::exit(2);
        }
    }
}

/// Runs the scenarios and prints the report; `Ok(false)` when a scenario failed (its section
/// says how).
async fn run(args: Args) -> Result<bool, String> {
    let plan = plan(&args)?;
    let max_watchers = plan.watchers.iter().copied().max().unwrap_or(0);
    let writers = mongo::connect(&args.uri, plan.clients.max(64)).await?;
    let watchers = mongo::connect(&args.uri, max_watchers + 4).await?;
    let status = server_status(&writers).await?;
    let server_pid = args
        .server_pid
        .or_else(|| status.get("pid").and_then(bson_u64).map(|p| p as u32));
    let load_before = load_average();
    let ctx = Ctx {
        shared: Shared::new(plan.sizes),
        plan,
        uri: args.uri.clone(),
        writers,
        watchers,
        next_mark: AtomicI64::new(1),
        seed: AtomicU64::new(1),
        server_pid,
    };
    if ctx
        .plan
        .scenarios
        .iter()
        .any(|s| matches!(s, Scenario::Latency | Scenario::Watchers))
    {
        eprintln!("loading the transfer workload's accounts ...");
        mongo::load(&ctx.writers, &ctx.shared).await?;
    }
    let mut sections = Vec::new();
    let mut ok = true;
    for &s in &ctx.plan.scenarios {
        eprintln!("scenario {} ...", s.name());
        let started = Instant::now();
        let body = match s {
            Scenario::Latency => latency::latency(&ctx).await,
            Scenario::Watchers => watchers::watchers_scenario(&ctx).await,
            Scenario::Catchup => catchup::catchup(&ctx).await,
            Scenario::Memory => memory::memory(&ctx).await,
        };
        let body = body.unwrap_or_else(|e| {
            ok = false;
            eprintln!("scenario {} failed: {e}", s.name());
            format!("**Failed.** {e}\n")
        });
        eprintln!(
            "scenario {} took {:.1} s",
            s.name(),
            started.elapsed().as_secs_f64()
        );
        sections.push(format!("## {}\n\n{body}", s.title()));
    }
    let md = header(&args, &ctx, &load_before).await + &sections.join("\n");
    println!("{md}");
    if let Some(path) = &args.out {
        std::fs::write(path, &md).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(ok)
}

async fn header(args: &Args, ctx: &Ctx, load_before: &str) -> String {
    let version = mongo::version(&ctx.writers).await;
    format!(
        "# Change streams (issue 13)\n\n\
         - date: {}\n- machine: {}\n- command: `{}`\n- Mangrove {version}, pid {}\n\
         - load average (1, 5, 15 min) before: {load_before}; after: {}\n\n",
        probe::today(),
        machine(),
        args.command,
        ctx.server_pid.map_or("unknown".into(), |p| p.to_string()),
        load_average(),
    )
}

/// `probe::machine()` with the machine's CPU count from /proc/cpuinfo: under `BENCH_PIN=1`
/// this process may only use one of them, which is what `probe::machine()` counts.
fn machine() -> String {
    let described = probe::machine();
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let usable = std::thread::available_parallelism().map_or(0, |n| n.get());
    match described.split_once(" cores ") {
        Some((_, rest)) if cpus > 0 && cpus != usable => {
            format!("{cpus} cores {rest} (this client may run on {usable} of them)")
        }
        _ => described,
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|_| "unknown".into())
}

async fn server_status(client: &Client) -> Result<Document, String> {
    client
        .database("admin")
        .run_command(doc! { "serverStatus": 1 })
        .await
        .map_err(describe)
        .map_err(|e| format!("serverStatus: {e}"))
}

/// A driver error as the server gave it: for a command error, its code, name and message
/// (the driver's own text also dumps the raw reply in hex).
fn describe(e: mongodb::error::Error) -> String {
    let labels: Vec<&String> = e.labels().iter().collect();
    let labels = if labels.is_empty() {
        String::new()
    } else {
        format!(", errorLabels: {labels:?}")
    };
    match *e.kind {
        mongodb::error::ErrorKind::Command(ref c) => format!(
            "the server answered {{ok: 0, code: {}, codeName: {:?}, errmsg: {:?}{labels}}}",
            c.code, c.code_name, c.message
        ),
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(ref w)) => {
            format!(
                "write error {{code: {}, errmsg: {:?}{labels}}}",
                w.code, w.message
            )
        }
        _ => e.to_string(),
    }
}

fn bson_u64(v: &Bson) -> Option<u64> {
    match v {
        Bson::Int32(n) => u64::try_from(*n).ok(),
        Bson::Int64(n) => u64::try_from(*n).ok(),
        Bson::Double(f) if *f >= 0.0 => Some(*f as u64),
        _ => None,
    }
}

/// serverStatus `mangrove.log.<field>`.
fn log_field<'a>(status: &'a Document, field: &str) -> Option<&'a Bson> {
    status
        .get_document("mangrove")
        .ok()?
        .get_document("log")
        .ok()?
        .get(field)
}

/// How long the watcher waits, once the writers stopped, for events still missing.
const GRACE: Duration = Duration::from_secs(10);

/// Creates `bench.<name>` unless it exists.
async fn ensure_collection(ctx: &Ctx, name: &str) -> Result<(), String> {
    match ctx.db(&ctx.writers).create_collection(name).await {
        Ok(()) => Ok(()),
        Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::Command(ref c) if c.code == 48) => {
            Ok(())
        }
        Err(e) => {
            let e = describe(e);
            Err(format!("create {DB}.{name}: {e}"))
        }
    }
}

/// serverStatus `metrics.cursor.open.total`.
async fn open_cursors(ctx: &Ctx) -> Option<u64> {
    let status = server_status(&ctx.writers).await.ok()?;
    let open = status
        .get_document("metrics")
        .ok()?
        .get_document("cursor")
        .ok()?
        .get_document("open")
        .ok()?;
    open.get("total").and_then(bson_u64)
}
