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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::{Bson, Document, RawDocumentBuf, Timestamp, doc};
use clap::Parser;
use mangrove_bench::raw_watch::{self, RawWatcher};
use mangrove_bench::workload::{self, PAD, Shared, Sizes, Timing, Workload};
use mangrove_bench::{mongo, probe};
use mongodb::change_stream::ChangeStream;
use mongodb::{Client, ClientSession, Collection};

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
            Scenario::Latency => latency(&ctx).await,
            Scenario::Watchers => watchers_scenario(&ctx).await,
            Scenario::Catchup => catchup(&ctx).await,
            Scenario::Memory => memory(&ctx).await,
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

// ---------------------------------------------------------------- latency

/// One write whose event the watcher should see.
struct Write {
    id: i64,
    /// When the commit was sent (the insert, or the transaction's `commitTransaction`).
    sent: Instant,
    /// When its acknowledgement arrived.
    acked: Instant,
    measured: bool,
}

#[derive(Default)]
struct Writes {
    done: Vec<Write>,
    errors: u64,
    first_error: Option<String>,
}

impl Writes {
    fn absorb(&mut self, other: Writes) {
        self.done.extend(other.done);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn fail(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }
}

#[derive(Clone, Copy)]
enum Pace {
    /// One `insert_one` per tick, this many per second, whether or not earlier ones returned.
    Paced(f64),
    /// The transfer workload with this many clients, back to back.
    Max(usize),
}

async fn latency(ctx: &Ctx) -> Result<String, String> {
    ensure_collection(ctx, "change_marks").await?;
    let mut out = String::from(
        "A watcher (`watch()` on `bench.change_marks`, its own connection pool) and a writer in \
         one client process. Paced: one `insert_one` (`w: \"majority\"`) per tick, open loop. \
         Max: the transfer workload, each transaction also inserting a marker document into \
         `change_marks` (`commitTransaction` with `w: \"majority\"`). ack → event: the watcher \
         received the event minus the writer received the acknowledgement (negative when the \
         event came first); sent → event: minus when the insert or `commitTransaction` was \
         sent; commit: sent → ack.\n\n\
         | writer | commits/s | events | missing | errors | ack → event p50 | p99 | max | \
         event before ack | sent → event p50 | p99 | max | commit p50 | p99 |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut notes = String::new();
    for pace in [Pace::Paced(ctx.plan.rate), Pace::Max(ctx.plan.clients)] {
        let r = latency_phase(ctx, pace).await?;
        eprintln!("  {}", r.row());
        out += &r.row();
        out.push('\n');
        if let Some(e) = &r.first_error {
            notes += &format!("- {}: first error: {e}\n", r.name);
        }
        if let Some(e) = &r.watch_error {
            notes += &format!("- {}: the change stream failed: {e}\n", r.name);
        }
    }
    out += &format!(
        "\n{} s measured per phase after {} s of warm-up; milliseconds. Goal (issue 13): p99 \
         ack → event under 5 ms at 1,000 commits/s.\n",
        ctx.plan.latency.duration.as_secs_f64(),
        ctx.plan.latency.warmup.as_secs_f64()
    );
    if !notes.is_empty() {
        out += &format!("\n{notes}");
    }
    Ok(out)
}

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

struct LatencyResult {
    name: String,
    commits_per_sec: f64,
    /// Acknowledged measured writes.
    writes: usize,
    received: usize,
    errors: u64,
    first_error: Option<String>,
    watch_error: Option<String>,
    ack_to_event: Vec<i64>,
    sent_to_event: Vec<i64>,
    commit: Vec<i64>,
}

impl LatencyResult {
    fn row(&self) -> String {
        let p = |v: &[i64], q: f64| percentile(v, q).map_or("–".into(), ms);
        let early = self.ack_to_event.iter().filter(|&&v| v < 0).count();
        format!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.name,
            self.commits_per_sec,
            self.received,
            self.writes - self.received,
            self.errors,
            p(&self.ack_to_event, 0.5),
            p(&self.ack_to_event, 0.99),
            p(&self.ack_to_event, 1.0),
            early,
            p(&self.sent_to_event, 0.5),
            p(&self.sent_to_event, 0.99),
            p(&self.sent_to_event, 1.0),
            p(&self.commit, 0.5),
            p(&self.commit, 0.99),
        )
    }
}

fn ms(us: i64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// Nearest-rank quantile of sorted `v`.
fn percentile(v: &[i64], q: f64) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// `to − from` in µs, negative when `to` came first.
fn signed_us(from: Instant, to: Instant) -> i64 {
    if to >= from {
        (to - from).as_micros() as i64
    } else {
        -((from - to).as_micros() as i64)
    }
}

/// One phase: a fresh stream, the writer, then the events joined to the writes by `_id`.
async fn latency_phase(ctx: &Ctx, pace: Pace) -> Result<LatencyResult, String> {
    let marks = mongo::collection(&ctx.db(&ctx.writers), "change_marks");
    let stream = mongo::collection(&ctx.db(&ctx.watchers), "change_marks")
        .watch()
        .await
        .map_err(describe)
        .map_err(|e| format!("watch() on {DB}.change_marks: {e}"))?
        .with_type::<Document>();
    let stop = Arc::new(AtomicBool::new(false));
    let expect = Arc::new(AtomicU64::new(u64::MAX));
    let watcher = tokio::spawn(receive_marks(stream, stop.clone(), expect.clone()));
    let measure_from = Instant::now() + ctx.plan.latency.warmup;
    let end = measure_from + ctx.plan.latency.duration;
    let (name, writes) = match pace {
        Pace::Paced(rate) => (
            format!("paced {rate:.0}/s"),
            paced_writes(ctx, &marks, rate, measure_from, end).await,
        ),
        Pace::Max(clients) => (
            format!("max: transfer, {clients} clients"),
            max_writes(ctx, &marks, clients, measure_from, end).await?,
        ),
    };
    expect.store(writes.done.len() as u64, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let (events, watch_error) = watcher
        .await
        .map_err(|e| format!("the watcher task panicked: {e}"))?;
    let arrived: HashMap<i64, Instant> = events.into_iter().collect();
    let measured: Vec<&Write> = writes.done.iter().filter(|w| w.measured).collect();
    let mut r = LatencyResult {
        name,
        commits_per_sec: measured.len() as f64 / ctx.plan.latency.duration.as_secs_f64(),
        writes: measured.len(),
        received: 0,
        errors: writes.errors,
        first_error: writes.first_error,
        watch_error,
        ack_to_event: Vec::new(),
        sent_to_event: Vec::new(),
        commit: Vec::new(),
    };
    for w in measured {
        r.commit.push(signed_us(w.sent, w.acked));
        if let Some(&t) = arrived.get(&w.id) {
            r.received += 1;
            r.ack_to_event.push(signed_us(w.acked, t));
            r.sent_to_event.push(signed_us(w.sent, t));
        }
    }
    for v in [&mut r.ack_to_event, &mut r.sent_to_event, &mut r.commit] {
        v.sort_unstable();
    }
    Ok(r)
}

/// How long the watcher waits, once the writers stopped, for events still missing.
const GRACE: Duration = Duration::from_secs(10);

/// Receives insert events and when each arrived, until the writers stopped and every
/// acknowledged write's event arrived (or `GRACE` passed). Returns the events and, if the
/// stream failed, the error.
async fn receive_marks(
    mut stream: ChangeStream<Document>,
    stop: Arc<AtomicBool>,
    expect: Arc<AtomicU64>,
) -> (Vec<(i64, Instant)>, Option<String>) {
    let mut got = Vec::new();
    let mut stopped: Option<Instant> = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            let since = *stopped.get_or_insert_with(Instant::now);
            if got.len() as u64 >= expect.load(Ordering::SeqCst) || since.elapsed() > GRACE {
                return (got, None);
            }
        }
        match stream.next_if_any().await {
            Ok(Some(event)) => {
                let at = Instant::now();
                let id = event
                    .get_document("documentKey")
                    .ok()
                    .and_then(|k| k.get_i64("_id").ok());
                if let Some(id) = id {
                    got.push((id, at));
                }
            }
            Ok(None) => {}
            Err(e) => return (got, Some(describe(e))),
        }
    }
}

/// Open loop: an `insert_one` every `1/rate` s, each in its own task.
async fn paced_writes(
    ctx: &Ctx,
    marks: &Collection<Document>,
    rate: f64,
    measure_from: Instant,
    end: Instant,
) -> Writes {
    let results = Arc::new(Mutex::new(Writes::default()));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let id = ctx.next_mark.fetch_add(1, Ordering::Relaxed);
        let (marks, results) = (marks.clone(), results.clone());
        tasks.spawn(async move {
            let sent = Instant::now();
            let r = marks.insert_one(doc! { "_id": id, "pad": PAD }).await;
            let acked = Instant::now();
            let mut results = results.lock().unwrap();
            match r {
                Ok(_) => results.done.push(Write {
                    id,
                    sent,
                    acked,
                    measured: sent >= measure_from,
                }),
                Err(e) => {
                    let e = describe(e);
                    results.fail(format!("insert_one: {e}"))
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    std::mem::take(&mut *results.lock().unwrap())
}

/// The transfer workload at full speed, each transaction also inserting a marker.
async fn max_writes(
    ctx: &Ctx,
    marks: &Collection<Document>,
    clients: usize,
    measure_from: Instant,
    end: Instant,
) -> Result<Writes, String> {
    let mut tasks = Vec::new();
    for mut w in ctx.transfer_workers(clients).await? {
        let marks = marks.clone();
        // Each client takes ids from its own stripe, so no shared counter is contended.
        let base = ctx.next_mark.fetch_add(1 << 32, Ordering::Relaxed);
        tasks.push(tokio::spawn(async move {
            let mut s = Writes::default();
            let mut id = base;
            while Instant::now() < end {
                id += 1;
                let started = Instant::now();
                match w.transfer_marked(&marks, id).await {
                    Ok((_, sent)) => s.done.push(Write {
                        id,
                        sent,
                        acked: Instant::now(),
                        measured: started >= measure_from,
                    }),
                    Err(e) => {
                        s.fail(e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (s, w)
        }));
    }
    let mut total = Writes::default();
    let mut finished = Vec::new();
    for t in tasks {
        let (s, w) = t.await.map_err(|e| format!("a writer panicked: {e}"))?;
        total.absorb(s);
        finished.push(w);
    }
    Ok(total)
}

// ---------------------------------------------------------------- watchers

struct WatchRow {
    watchers: usize,
    stats: workload::CellStats,
    /// Events each watcher should get: two updates per committed transfer.
    expected: u64,
    /// The fewest events one watcher received.
    min_received: u64,
    /// From the end of the cell until every watcher had every event.
    caught_up: Option<Duration>,
    stream_error: Option<String>,
    /// serverStatus `metrics.cursor.open.total` before the cell's streams opened: cursors
    /// left over from earlier cells would show here.
    cursors_before: Option<u64>,
    /// CPU time of the server and of this client over the cell (warm-up included, like
    /// `commits_total`).
    server_cpu: Option<Duration>,
    client_cpu: Option<Duration>,
}

impl WatchRow {
    /// CPU µs per committed transfer over the whole cell.
    fn per_commit(&self, cpu: Option<Duration>) -> String {
        self.micros_per_commit(cpu)
            .map_or("–".into(), |us| format!("{us:.0}"))
    }

    fn micros_per_commit(&self, cpu: Option<Duration>) -> Option<f64> {
        let d = cpu.filter(|_| self.stats.commits_total > 0)?;
        Some(d.as_micros() as f64 / self.stats.commits_total as f64)
    }
}

async fn watchers_scenario(ctx: &Ctx) -> Result<String, String> {
    let mut counts = ctx.plan.watchers.repeat(ctx.plan.rounds);
    if counts.first() == Some(&0) && counts.len() > 1 {
        counts.push(0);
    }
    let mut rows: Vec<WatchRow> = Vec::new();
    for n in counts {
        let row = watchers_cell(ctx, n).await?;
        eprintln!(
            "  {n:>3} watchers: {:.0} commits/s, aborts {}, errors {}",
            row.stats.throughput(),
            row.stats.aborts,
            row.stats.errors
        );
        rows.push(row);
    }
    let zeros: Vec<&WatchRow> = rows.iter().filter(|r| r.watchers == 0).collect();
    let base = mean(zeros.iter().map(|r| Some(r.stats.throughput())));
    let base_server = mean(zeros.iter().map(|r| r.micros_per_commit(r.server_cpu)));
    let mut out = format!(
        "transfer-uniform ({} accounts), {} clients, `w: \"majority\"`; the change streams are \
         {}, each consuming every event in its own task. {} s warm-up + {} s measured per cell; cells run in the order shown, {} round(s) \
         of the counts; \"vs 0 streams\" compares with the mean of every 0-stream cell.\n\n\
         | change streams | commits/s | vs 0 streams | p50 ms | p99 ms | aborts | errors | \
         server CPU µs/commit | server CPU vs 0 streams | client CPU µs/commit | \
         events per stream (min / expected) | all streams caught up | \
         server cursors open before |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        ctx.plan.sizes.accounts,
        ctx.plan.clients,
        if ctx.plan.raw_watchers {
            "on `bench`, each read with bare `getMore`s on its own connection that count a \
             batch's events without decoding them (`--raw-watchers`)"
        } else {
            "`db.watch()` on `bench` through their own pool"
        },
        ctx.plan.cell.warmup.as_secs_f64(),
        ctx.plan.cell.duration.as_secs_f64(),
        ctx.plan.rounds,
    );
    let mut notes = String::new();
    for r in &rows {
        out += &watch_row(r, base, base_server);
        if let Some(e) = &r.stats.first_error {
            notes += &format!("- {} streams: first writer error: {e}\n", r.watchers);
        }
        if let Some(e) = &r.stream_error {
            notes += &format!("- {} streams: a change stream failed: {e}\n", r.watchers);
        }
    }
    out += "\nCPU per commit: the server's and this client's (/proc, user + system), over warm-up \
            and measured time, divided by the commits in both. The client decodes every event of \
            every stream. \"Server CPU vs 0 streams\" is the server's CPU per commit with none \
            divided by that with these: the throughput ratio a server with a core to itself would \
            allow if the client cost nothing. Goal (issue 13): 10 change streams cost under 10 % \
            of the commits/s with none.\n";
    if ctx.plan.rounds > 1 {
        out += &watch_summary(&ctx.plan.watchers, &rows, base, base_server);
    }
    if !notes.is_empty() {
        out += &format!("\n{notes}");
    }
    Ok(out)
}

/// The mean of the values there are, if any.
fn mean(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let values: Vec<f64> = values.flatten().collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Each count of streams over its cells: the mean commits/s against the mean of the 0-stream
/// cells, with the lowest and highest cell, and the same for the server's CPU per commit.
fn watch_summary(
    counts: &[usize],
    rows: &[WatchRow],
    base: Option<f64>,
    base_server: Option<f64>,
) -> String {
    let mut out =
        "\nBy count, over all its cells (ratios against the mean of the 0-stream cells):\n\n\
         | change streams | cells | commits/s, mean | vs 0 streams, mean (lowest – highest cell) | \
         server CPU µs/commit, mean | server CPU vs 0 streams | client CPU µs/commit, mean |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n"
            .to_string();
    for &n in counts {
        let cells: Vec<&WatchRow> = rows.iter().filter(|r| r.watchers == n).collect();
        let throughputs: Vec<f64> = cells.iter().map(|r| r.stats.throughput()).collect();
        let Some(t) = mean(throughputs.iter().map(|&t| Some(t))) else {
            continue;
        };
        let ratio = base.map_or("–".into(), |b| {
            let lowest = throughputs.iter().copied().fold(f64::INFINITY, f64::min);
            let highest = throughputs.iter().copied().fold(0.0, f64::max);
            format!("{:.3} ({:.3} – {:.3})", t / b, lowest / b, highest / b)
        });
        let server = mean(cells.iter().map(|r| r.micros_per_commit(r.server_cpu)));
        let client = mean(cells.iter().map(|r| r.micros_per_commit(r.client_cpu)));
        let us = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.0}"));
        let share = base_server
            .zip(server)
            .map_or("–".into(), |(b, s)| format!("{:.3}", b / s));
        out += &format!(
            "| {n} | {} | {t:.0} | {ratio} | {} | {share} | {} |\n",
            cells.len(),
            us(server),
            us(client),
        );
    }
    out
}

/// One row of the watchers table; `base` is the commits/s with no stream open, and
/// `base_server` the server's CPU µs per commit then.
fn watch_row(r: &WatchRow, base: Option<f64>, base_server: Option<f64>) -> String {
    let t = r.stats.throughput();
    // What the server alone would allow: commits/s in inverse proportion to its CPU per
    // commit, as if it had a core to itself and the client cost nothing.
    let server_bound = base_server
        .zip(r.micros_per_commit(r.server_cpu))
        .map_or("–".into(), |(b, us)| format!("{:.3}", b / us));
    format!(
        "| {} | {t:.0} | {} | {:.2} | {:.2} | {} | {} | {} | {server_bound} | {} | {} | {} | {} |\n",
        r.watchers,
        base.map_or("–".into(), |b| format!("{:.3}", t / b)),
        r.stats.percentile_ms(0.5).unwrap_or(0.0),
        r.stats.percentile_ms(0.99).unwrap_or(0.0),
        r.stats.aborts,
        r.stats.errors,
        r.per_commit(r.server_cpu),
        r.per_commit(r.client_cpu),
        if r.watchers == 0 {
            "–".into()
        } else {
            format!("{} / {}", r.min_received, r.expected)
        },
        match (r.watchers, r.caught_up) {
            (0, _) => "–".into(),
            (_, Some(d)) => format!("{:.2} s after the cell", d.as_secs_f64()),
            (_, None) => format!("no, after {} s", GRACE.as_secs()),
        },
        r.cursors_before.map_or("?".into(), |c| c.to_string()),
    )
}

/// One throughput cell with `n` change streams open and consuming.
async fn watchers_cell(ctx: &Ctx, n: usize) -> Result<WatchRow, String> {
    let cursors_before = open_cursors(ctx).await;
    let stop = Arc::new(AtomicBool::new(false));
    let errors: Arc<Mutex<Option<String>>> = Arc::default();
    let mut counters = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let count = Arc::new(AtomicU64::new(0));
        counters.push(count.clone());
        let (stop, errors) = (stop.clone(), errors.clone());
        if ctx.plan.raw_watchers {
            let address = raw_watch::plain_address(&ctx.uri)?;
            let watcher = RawWatcher::open(&address, DB)
                .await
                .map_err(|e| format!("raw watcher on {DB} (stream {} of {n}): {e}", i + 1))?;
            tasks.push(tokio::spawn(consume_raw(watcher, count, stop, errors)));
            continue;
        }
        let stream = ctx
            .db(&ctx.watchers)
            .watch()
            .await
            .map_err(describe)
            .map_err(|e| format!("db.watch() on {DB} (stream {} of {n}): {e}", i + 1))?
            .with_type::<RawDocumentBuf>();
        tasks.push(tokio::spawn(consume(stream, count, stop, errors)));
    }
    let workers = ctx.transfer_workers(ctx.plan.clients).await?;
    let cpu = || {
        (
            ctx.server_pid.and_then(probe::tree_cpu),
            probe::tree_cpu(std::process::id()),
        )
    };
    let cpu_before = cpu();
    let stats = workload::run_cell(workers, Workload::TransferUniform, ctx.plan.cell).await;
    let cpu_after = cpu();
    let used =
        |b: Option<Duration>, a: Option<Duration>| b.zip(a).map(|(b, a)| a.saturating_sub(b));
    let ended = Instant::now();
    let expected = 2 * stats.commits_total;
    let min = |c: &[Arc<AtomicU64>]| c.iter().map(|c| c.load(Ordering::Relaxed)).min();
    let mut caught_up = None;
    while n > 0 && ended.elapsed() < GRACE {
        if min(&counters).unwrap_or(0) >= expected || errors.lock().unwrap().is_some() {
            caught_up = Some(ended.elapsed()).filter(|_| min(&counters).unwrap_or(0) >= expected);
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    stop_streams(ctx, tasks, cursors_before).await;
    let stream_error = errors.lock().unwrap().clone();
    Ok(WatchRow {
        watchers: n,
        stats,
        expected,
        min_received: min(&counters).unwrap_or(0),
        caught_up,
        stream_error,
        cursors_before,
        server_cpu: used(cpu_before.0, cpu_after.0),
        client_cpu: used(cpu_before.1, cpu_after.1),
    })
}

/// Waits for the consuming tasks (told to stop) and for the server to close their cursors.
async fn stop_streams(ctx: &Ctx, tasks: Vec<tokio::task::JoinHandle<()>>, before: Option<u64>) {
    for mut t in tasks {
        // A stream waiting in getMore for events that will not come returns within the
        // server's await time; do not wait longer than that.
        if tokio::time::timeout(Duration::from_secs(3), &mut t)
            .await
            .is_err()
        {
            eprintln!("  a change stream did not stop within 3 s; cancelled");
            t.abort();
        }
    }
    // The driver kills a dropped stream's cursor in the background: let that finish, so the
    // next cell does not start with this one's cursors still open.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(5)
        && open_cursors(ctx).await.unwrap_or(0) > before.unwrap_or(0)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
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

async fn consume(
    mut stream: ChangeStream<RawDocumentBuf>,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<Option<String>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        match stream.next_if_any().await {
            Ok(Some(_)) => {
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok(None) => {}
            Err(e) => {
                errors.lock().unwrap().get_or_insert(describe(e));
                return;
            }
        }
    }
}

/// [`consume`] for a stream read with bare `getMore`s; kills its cursor when told to stop.
async fn consume_raw(
    mut watcher: RawWatcher,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<Option<String>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        match watcher.next_batch().await {
            Ok(n) => {
                count.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                errors.lock().unwrap().get_or_insert(e);
                return;
            }
        }
    }
    if let Err(e) = watcher.close().await {
        errors.lock().unwrap().get_or_insert(e);
    }
}

// ---------------------------------------------------------------- catch-up

/// Bytes of padding that make a history document `{_id: <int64>, pad: <string>}` 1 KiB.
const HISTORY_PAD: usize = 1024 - 28;

async fn catchup(ctx: &Ctx) -> Result<String, String> {
    // A new collection each run: a stream starting before a drop of its collection would be
    // invalidated by it.
    let name = format!(
        "change_history_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let coll = mongo::collection(&ctx.db(&ctx.writers), &name);
    let before = server_status(&ctx.writers).await?;
    let start = match log_field(&before, "lastCommit") {
        Some(Bson::Timestamp(ts)) => *ts,
        other => {
            return Err(format!(
                "serverStatus has no mangrove.log.lastCommit timestamp to start from (found {other:?})"
            ));
        }
    };
    let docs = ctx.plan.catchup_docs;
    let doc_bytes = bson_len(&history_doc(0))?;
    eprintln!("  writing {docs} documents of {doc_bytes} bytes to {DB}.{name} ...");
    let t = Instant::now();
    write_history(&coll, docs).await?;
    let write_secs = t.elapsed().as_secs_f64();
    let after = server_status(&ctx.writers).await?;
    let log_bytes = log_field(&before, "bytes")
        .and_then(bson_u64)
        .zip(log_field(&after, "bytes").and_then(bson_u64))
        .map(|(b, a)| a.saturating_sub(b));
    eprintln!("  reading them back from {start:?} ...");
    let read = read_history(ctx, &name, start, docs).await?;
    let secs = read.elapsed.as_secs_f64();
    let mb = |bytes: u64| bytes as f64 / 1e6;
    let total_doc_bytes = docs * doc_bytes as u64;
    let mut out = format!(
        "{docs} documents of {doc_bytes} bytes (`insert_many` of 1,000, 4 writers, `w: \
         \"majority\"`) written in {write_secs:.1} s; then one `watch()` on the collection with \
         `startAtOperationTime` = serverStatus `mangrove.log.lastCommit` taken before the writes \
         (Timestamp({}, {})), read to the last event. Time from the `watch()` call to the last \
         event.\n\n\
         | events | read time | events/s | log bytes | log MB/s | document bytes | document MB/s \
         | event bytes received | first event after |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        start.time, start.increment,
    );
    out += &format!(
        "| {} | {secs:.2} s | {:.0} | {} | {} | {:.0} MB | {:.1} | {:.0} MB | {:.1} ms |\n",
        read.events,
        read.events as f64 / secs,
        log_bytes.map_or("not reported".into(), |b| format!("{:.0} MB", mb(b))),
        log_bytes.map_or("–".into(), |b| format!("{:.1}", mb(b) / secs)),
        mb(total_doc_bytes),
        mb(total_doc_bytes) / secs,
        mb(read.event_bytes),
        read.first_event.as_secs_f64() * 1000.0,
    );
    out += "\nLog bytes: the growth of serverStatus `mangrove.log.bytes` over the writes. MB = 10^6 bytes.\n";
    if read.other_events > 0 {
        out += &format!(
            "\n{} events other than inserts were received too.\n",
            read.other_events
        );
    }
    Ok(out)
}

fn history_doc(id: i64) -> Document {
    doc! { "_id": id, "pad": "h".repeat(HISTORY_PAD) }
}

fn bson_len(d: &Document) -> Result<usize, String> {
    RawDocumentBuf::try_from(d)
        .map(|r| r.as_bytes().len())
        .map_err(|e| format!("encoding a document: {e}"))
}

async fn write_history(coll: &Collection<Document>, docs: u64) -> Result<(), String> {
    const BATCH: u64 = 1000;
    const WRITERS: u64 = 4;
    let batches = docs.div_ceil(BATCH);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let coll = coll.clone();
        tasks.push(tokio::spawn(async move {
            for b in (w..batches).step_by(WRITERS as usize) {
                let ids = b * BATCH..((b + 1) * BATCH).min(docs);
                coll.insert_many(ids.map(|i| history_doc(i as i64)))
                    .await
                    .map_err(describe)
                    .map_err(|e| format!("insert_many of history: {e}"))?;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| format!("a history writer panicked: {e}"))??;
    }
    Ok(())
}

struct HistoryRead {
    events: u64,
    other_events: u64,
    event_bytes: u64,
    elapsed: Duration,
    first_event: Duration,
}

async fn read_history(
    ctx: &Ctx,
    name: &str,
    start: Timestamp,
    docs: u64,
) -> Result<HistoryRead, String> {
    let t = Instant::now();
    let mut stream = mongo::collection(&ctx.db(&ctx.watchers), name)
        .watch()
        .start_at_operation_time(start)
        .await
        .map_err(describe)
        .map_err(|e| format!("watch() with startAtOperationTime {start:?}: {e}"))?
        .with_type::<RawDocumentBuf>();
    let mut r = HistoryRead {
        events: 0,
        other_events: 0,
        event_bytes: 0,
        elapsed: Duration::ZERO,
        first_event: Duration::ZERO,
    };
    let mut last_progress = Instant::now();
    while r.events < docs {
        let event =
            stream.next_if_any().await.map_err(describe).map_err(|e| {
                format!("reading the history stream after {} events: {e}", r.events)
            })?;
        let Some(event) = event else {
            if last_progress.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "the history stream stopped after {} of {docs} insert events (no event for 30 s)",
                    r.events
                ));
            }
            continue;
        };
        if r.events == 0 {
            r.first_event = t.elapsed();
        }
        last_progress = Instant::now();
        r.event_bytes += event.as_bytes().len() as u64;
        match event.get_str("operationType") {
            Ok("insert") => r.events += 1,
            _ => r.other_events += 1,
        }
    }
    r.elapsed = t.elapsed();
    Ok(r)
}

// ---------------------------------------------------------------- memory

/// A measured point of the memory scenario: what had happened, `VmRSS` and `VmHWM` in KiB, and
/// how long the step took.
struct Stage {
    what: String,
    rss_kib: u64,
    hwm_kib: u64,
    took: Option<f64>,
    /// serverStatus `metrics.cursor.open.total` right after.
    cursors: Option<u64>,
}

/// What the memory scenario did, for its report.
#[derive(Default)]
struct MemoryRun {
    stages: Vec<Stage>,
    events: u64,
}

async fn memory(ctx: &Ctx) -> Result<String, String> {
    let pid = ctx
        .server_pid
        .ok_or("no server pid: pass --server-pid (serverStatus has no pid)".to_string())?;
    let (n, writes) = (ctx.plan.streams, ctx.plan.memory_writes);
    let k = ctx.plan.connections.min(n);
    let mut run = MemoryRun::default();
    // The stages measured before a failure are reported with it.
    let failed = memory_steps(ctx, pid, k, &mut run).await.err();
    let mut out = format!(
        "{n} `aggregate` commands with `[{{$changeStream: {{}}}}]` on `bench.change_memory`, \
         through {k} connections (one session each); then {writes} single-document inserts \
         (`w: \"majority\"`); then one `getMore` on every cursor ({} events returned in all, \
         {} expected); then `killCursors`. RSS (`VmRSS`) of pid {pid}.\n\n\
         | stage | RSS MiB | vs before | per stream | took | server cursors open |\n\
         |---|---:|---:|---:|---:|---:|\n",
        run.events,
        n * writes
    );
    let base = run.stages.first().map_or(0, |s| s.rss_kib);
    for s in &run.stages {
        let delta = s.rss_kib as i64 - base as i64;
        out += &format!(
            "| {} | {:.1} | {:+.1} MiB | {:+.1} KiB | {} | {} |\n",
            s.what,
            s.rss_kib as f64 / 1024.0,
            delta as f64 / 1024.0,
            delta as f64 / n as f64,
            s.took.map_or("–".into(), |t| format!("{t:.2} s")),
            s.cursors.map_or("?".into(), |c| c.to_string()),
        );
    }
    if let Some(last) = run.stages.last() {
        out += &format!(
            "\nPeak RSS (`VmHWM`) of the server since it started: {:.1} MiB.\n",
            last.hwm_kib as f64 / 1024.0
        );
    }
    match failed {
        None => Ok(out),
        Some(e) => Err(format!("{e}\n\nMeasured before the failure:\n\n{out}")),
    }
}

async fn memory_steps(ctx: &Ctx, pid: u32, k: usize, run: &mut MemoryRun) -> Result<(), String> {
    let measure = |run: &mut MemoryRun, what: String, took: Option<Instant>| {
        let (rss_kib, hwm_kib) = probe::rss_kib(pid).ok_or_else(|| {
            format!("cannot read /proc/{pid}/status: is the server running on this machine?")
        })?;
        let took = took.map(|t| t.elapsed().as_secs_f64());
        run.stages.push(Stage {
            what,
            rss_kib,
            hwm_kib,
            took,
            cursors: None,
        });
        Ok::<(), String>(())
    };
    let (n, writes) = (ctx.plan.streams, ctx.plan.memory_writes);
    ensure_collection(ctx, "change_memory").await?;
    let client = mongo::connect(&ctx.uri, k).await?;
    measure(run, "before opening".into(), None)?;
    note_cursors(ctx, run).await;
    let t = Instant::now();
    let mut groups = open_streams(&client, n, k).await?;
    measure(run, format!("{n} streams open"), Some(t))?;
    note_cursors(ctx, run).await;
    let marks = mongo::collection(&ctx.db(&ctx.writers), "change_memory");
    for i in 0..writes {
        let id = ctx.next_mark.fetch_add(1, Ordering::Relaxed);
        marks
            .insert_one(doc! { "_id": id, "i": i as i64, "pad": PAD })
            .await
            .map_err(describe)
            .map_err(|e| format!("insert into {DB}.change_memory: {e}"))?;
    }
    let t = Instant::now();
    run.events = get_more_round(&mut groups).await?;
    measure(
        run,
        format!("after {writes} commits and one getMore on each"),
        Some(t),
    )?;
    note_cursors(ctx, run).await;
    let t = Instant::now();
    kill_all(&client, &groups).await?;
    measure(run, "after killCursors".into(), Some(t))?;
    note_cursors(ctx, run).await;
    // Freed memory goes back to the system a little later, if the allocator returns it at all.
    tokio::time::sleep(Duration::from_secs(1)).await;
    measure(run, "1 s after killCursors".into(), None)?;
    note_cursors(ctx, run).await;
    Ok(())
}

/// Adds the server's open cursor count to the last stage.
async fn note_cursors(ctx: &Ctx, run: &mut MemoryRun) {
    let open = open_cursors(ctx).await;
    if let Some(stage) = run.stages.last_mut() {
        stage.cursors = open;
    }
}

/// Cursors opened through one session (and so, one at a time, one connection).
struct CursorGroup {
    session: ClientSession,
    ids: Vec<i64>,
}

async fn open_streams(client: &Client, n: usize, k: usize) -> Result<Vec<CursorGroup>, String> {
    let mut tasks = Vec::new();
    for g in 0..k {
        let client = client.clone();
        let count = n / k + usize::from(g < n % k);
        tasks.push(tokio::spawn(async move {
            let mut session = client
                .start_session()
                .await
                .map_err(describe)
                .map_err(|e| format!("start_session: {e}"))?;
            let db = client.database(DB);
            let mut ids = Vec::with_capacity(count);
            for i in 0..count {
                let reply = db
                    .run_command(doc! {
                        "aggregate": "change_memory",
                        "pipeline": [{ "$changeStream": {} }],
                        "cursor": {},
                    })
                    .session(&mut session)
                    .await
                    .map_err(describe)
                    .map_err(|e| {
                        format!(
                            "aggregate with $changeStream (cursor {} of connection {g}): {e}",
                            i + 1
                        )
                    })?;
                let id = reply
                    .get_document("cursor")
                    .ok()
                    .and_then(|c| c.get_i64("id").ok())
                    .filter(|&id| id != 0)
                    .ok_or_else(|| {
                        format!(
                            "aggregate with $changeStream answered without an open cursor: {reply}"
                        )
                    })?;
                ids.push(id);
            }
            Ok::<_, String>(CursorGroup { session, ids })
        }));
    }
    let mut groups = Vec::new();
    for t in tasks {
        groups.push(t.await.map_err(|e| format!("an opener panicked: {e}"))??);
    }
    Ok(groups)
}

/// One `getMore` on every cursor; returns how many events they answered with.
async fn get_more_round(groups: &mut Vec<CursorGroup>) -> Result<u64, String> {
    let mut tasks = Vec::new();
    for mut g in std::mem::take(groups) {
        tasks.push(tokio::spawn(async move {
            let mut events = 0u64;
            for &id in &g.ids {
                let reply = run_in(
                    &mut g.session,
                    doc! {
                        "getMore": id,
                        "collection": "change_memory",
                        "maxTimeMS": 1000,
                    },
                )
                .await
                .map_err(describe)
                .map_err(|e| format!("getMore on change-stream cursor {id}: {e}"))?;
                let batch = reply
                    .get_document("cursor")
                    .ok()
                    .and_then(|c| c.get_array("nextBatch").ok())
                    .ok_or_else(|| {
                        format!("getMore on cursor {id} answered without cursor.nextBatch: {reply}")
                    })?;
                events += batch.len() as u64;
            }
            Ok::<_, String>((g, events))
        }));
    }
    let mut events = 0;
    for t in tasks {
        let (g, e) = t
            .await
            .map_err(|e| format!("a getMore task panicked: {e}"))??;
        groups.push(g);
        events += e;
    }
    Ok(events)
}

/// `killCursors` on every cursor, outside the sessions (the driver refuses to send
/// `killCursors` in a session).
async fn kill_all(client: &Client, groups: &[CursorGroup]) -> Result<(), String> {
    for g in groups {
        let ids: Vec<Bson> = g.ids.iter().map(|&id| Bson::Int64(id)).collect();
        client
            .database(DB)
            .run_command(doc! { "killCursors": "change_memory", "cursors": ids })
            .await
            .map_err(describe)
            .map_err(|e| format!("killCursors: {e}"))?;
    }
    Ok(())
}

async fn run_in(
    session: &mut ClientSession,
    command: Document,
) -> mongodb::error::Result<Document> {
    let client = session.client();
    client
        .database(DB)
        .run_command(command)
        .session(session)
        .await
}
