//! mangrove-bench: Mangrove against PostgreSQL on the same transactional workloads with the same
//! durability, in one run. `scripts/bench` starts both servers and runs this; see
//! docs/benchmarks.md.

mod pg;
mod report;

// Shared with mangrove-changes-bench through the library; imported here under the same names,
// so `crate::workload` and the others still resolve in this binary's modules.
use mangrove_bench::{mongo, probe, rng, workload};

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

// The client shares the machine's two cores with the server it measures, so its own CPU caps
// both systems' throughput; both drivers allocate per operation (the Rust `mongodb` driver
// clones its topology description for every server selection). The same allocator as the
// server, for both drivers alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use report::{Cell, RunInfo, System};
use workload::{Shared, Sizes, Timing, Workload};

#[derive(Parser)]
#[command(about = "Mangrove against PostgreSQL: transfer, order, point-read and insert workloads")]
struct Args {
    /// Mangrove's connection string.
    #[arg(long)]
    mongo_uri: String,
    /// PostgreSQL connection string (libpq key=value or postgres:// URL).
    #[arg(long)]
    pg: String,
    /// Mangrove's process id, to count its group commits from /proc when serverStatus does not.
    #[arg(long)]
    mangrove_pid: Option<u32>,
    /// The postmaster's process id, to measure PostgreSQL's CPU time per operation.
    #[arg(long)]
    pg_pid: Option<u32>,
    /// A directory on the disk both databases write to, for the fdatasync probe.
    #[arg(long)]
    probe_dir: PathBuf,
    /// Where results.md, throughput.svg and latency-cdf.svg go.
    #[arg(long)]
    out_dir: PathBuf,
    /// Small data, clients 1 and 8, short cells: checks the harness, not the speed.
    #[arg(long)]
    quick: bool,
    /// Concurrent clients per cell, comma-separated (default 1,8,32,128; quick 1,8).
    #[arg(long, value_delimiter = ',')]
    clients: Option<Vec<usize>>,
    /// Workloads to run, comma-separated (default all: transfer-uniform, transfer-zipf, order,
    /// point-read, insert).
    #[arg(long, value_delimiter = ',')]
    workloads: Option<Vec<String>>,
    /// Measured seconds per cell (default 6; quick 1).
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Warm-up seconds per cell, not measured (default 2; quick 0.3).
    #[arg(long)]
    warmup_secs: Option<f64>,
    /// The command line to print in the report, so it says how to reproduce it.
    #[arg(long, default_value = "scripts/bench")]
    command: String,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("mangrove-bench: {e}");
            std::process::exit(2);
        }
    }
}

fn seconds(v: f64, what: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| format!("{what} must be a number of seconds ≥ 0, not {v}"))
}

/// What the arguments ask for: the cells to run and how long, on how much data.
struct Plan {
    clients: Vec<usize>,
    workloads: Vec<Workload>,
    timing: Timing,
    sizes: Sizes,
}

fn plan(args: &Args) -> Result<Plan, String> {
    let quick = args.quick;
    let clients = args.clients.clone().unwrap_or_else(|| {
        if quick {
            vec![1, 8]
        } else {
            vec![1, 8, 32, 128]
        }
    });
    if clients.is_empty() || clients.contains(&0) {
        return Err("--clients needs positive counts, e.g. --clients 1,8,32".into());
    }
    let workloads = match &args.workloads {
        None => Workload::ALL.to_vec(),
        Some(names) => names
            .iter()
            .map(|n| {
                Workload::parse(n).ok_or_else(|| {
                    let all: Vec<_> = Workload::ALL.iter().map(|w| w.name()).collect();
                    format!("unknown workload {n:?}; choose from {}", all.join(", "))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let timing = Timing {
        warmup: seconds(
            args.warmup_secs.unwrap_or(if quick { 0.3 } else { 2.0 }),
            "--warmup-secs",
        )?,
        duration: seconds(
            args.duration_secs.unwrap_or(if quick { 1.0 } else { 6.0 }),
            "--duration-secs",
        )?,
    };
    let scale = if quick { 1 } else { 10 };
    let sizes = Sizes {
        accounts: 1_000 * scale,
        customers: 300 * scale,
        items: 1_000 * scale,
    };
    Ok(Plan {
        clients,
        workloads,
        timing,
        sizes,
    })
}

/// The connections and counters every cell uses.
struct Bench<'a> {
    args: &'a Args,
    mongo: mongodb::Client,
    monitor: tokio_postgres::Client,
    shared: std::sync::Arc<Shared>,
    timing: Timing,
    /// Whether Mangrove's serverStatus counts its group-commit rounds.
    server_batches: bool,
}

impl Bench<'_> {
    /// Where Mangrove's fdatasync count comes from, as the report says it.
    fn mangrove_sync_source(&self) -> String {
        let proc_batches = self
            .args
            .mangrove_pid
            .and_then(probe::log_writer_writes)
            .is_some();
        if self.server_batches {
            "`serverStatus.mangrove.log.batches` (group-commit rounds)".to_string()
        } else if proc_batches {
            "the log writer thread's write syscalls in /proc (`syscw`). Each group commit makes one write and one \
             fdatasync, but the thread's wake-ups of the async runtime (eventfd writes) count too, so Mangrove's \
             commits per fdatasync below is a lower bound (≥): `serverStatus` does not report the engine's exact \
             `LogStats` yet".to_string()
        } else {
            "nowhere: pass --mangrove-pid on Linux, or expose `LogStats` in serverStatus"
                .to_string()
        }
    }

    /// The system's fdatasync counter now, if it can be read.
    async fn syncs(&self, system: System) -> Option<u64> {
        match system {
            System::Mangrove if self.server_batches => mongo::server_log_batches(&self.mongo).await,
            System::Mangrove => self.args.mangrove_pid.and_then(probe::log_writer_writes),
            System::Postgres => pg::wal_syncs(&self.monitor).await,
        }
    }

    /// `clients` workers of `system` running `w` for one cell.
    async fn workers(
        &self,
        system: System,
        w: Workload,
        clients: usize,
        seed: &mut u64,
    ) -> Result<workload::CellStats, String> {
        let mut next_seed = || {
            *seed += 1;
            *seed
        };
        match system {
            System::Mangrove => {
                let mut workers = Vec::with_capacity(clients);
                for _ in 0..clients {
                    let s = next_seed();
                    workers
                        .push(mongo::MongoWorker::new(&self.mongo, self.shared.clone(), s).await?);
                }
                Ok(workload::run_cell(workers, w, self.timing).await)
            }
            System::Postgres => {
                let mut workers = Vec::with_capacity(clients);
                for _ in 0..clients {
                    let s = next_seed();
                    workers.push(pg::PgWorker::new(&self.args.pg, self.shared.clone(), s).await?);
                }
                let stats = workload::run_cell(workers, w, self.timing).await;
                // Backends publish their WAL counters as they exit.
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(stats)
            }
        }
    }

    /// One cell, with the fdatasyncs and CPU time it cost.
    async fn cell(
        &self,
        system: System,
        w: Workload,
        clients: usize,
        seed: &mut u64,
    ) -> Result<Cell, String> {
        let server_pid = match system {
            System::Mangrove => self.args.mangrove_pid,
            System::Postgres => self.args.pg_pid,
        };
        let before = self.syncs(system).await;
        let cpu_before = server_pid.and_then(probe::tree_cpu);
        let client_before = probe::tree_cpu(std::process::id());
        eprintln!("starting {} {clients} clients {}", w.name(), system.name());
        let stats = self.workers(system, w, clients, seed).await?;
        let after = self.syncs(system).await;
        let cell = Cell {
            system,
            workload: w,
            clients,
            stats,
            syncs: before.zip(after).map(|(b, a)| a.saturating_sub(b)),
            syncs_upper_bound: system == System::Mangrove && !self.server_batches,
            server_cpu: cpu_before
                .zip(server_pid.and_then(probe::tree_cpu))
                .map(|(b, a)| a.saturating_sub(b)),
            client_cpu: client_before
                .zip(probe::tree_cpu(std::process::id()))
                .map(|(b, a)| a.saturating_sub(b)),
        };
        print_cell(&cell);
        Ok(cell)
    }
}

fn print_cell(cell: &Cell) {
    eprintln!(
        "{:<16} {:>3} clients {:<10} {:>9.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  aborts {:>6}  errors {}{}{}",
        cell.workload.name(),
        cell.clients,
        cell.system.name(),
        cell.stats.throughput(),
        cell.stats.percentile_ms(0.5).unwrap_or(0.0),
        cell.stats.percentile_ms(0.99).unwrap_or(0.0),
        cell.stats.aborts,
        cell.stats.errors,
        cell.commits_per_sync()
            .map_or(String::new(), |v| format!("  commits/fdatasync {v:.1}")),
        cell.cpu_per_op_us()
            .map_or(String::new(), |v| format!("  server CPU {v:.0} µs/op")),
    );
    if let Some(e) = &cell.stats.first_error {
        eprintln!("    first error: {e}");
    }
}

/// Runs every cell, writes the report; `Ok(false)` when some operation failed.
async fn run(args: Args) -> Result<bool, String> {
    let plan = plan(&args)?;
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| format!("cannot create --out-dir {}: {e}", args.out_dir.display()))?;
    let probe_time = Duration::from_millis(if args.quick { 500 } else { 3000 });
    let max_clients = *plan.clients.iter().max().unwrap_or(&1);

    let fdatasync_before = probe::fdatasync_rate(&args.probe_dir, probe_time)?;
    eprintln!("fdatasync probe: {fdatasync_before:.0}/s");
    let mongo = mongo::connect(&args.mongo_uri, max_clients).await?;
    let monitor = pg::connect(&args.pg).await?;
    let postgres_settings = pg::check_settings(&monitor).await?;
    let shared = Shared::new(plan.sizes);
    eprintln!("loading data into both systems ...");
    mongo::load(&mongo, &shared).await?;
    pg::load(&monitor, &shared).await?;
    let server_batches = mongo::server_log_batches(&mongo).await.is_some();
    let bench = Bench {
        args: &args,
        mongo,
        monitor,
        shared,
        timing: plan.timing,
        server_batches,
    };

    let mut cells = Vec::new();
    let mut seed = 1u64;
    for &w in &plan.workloads {
        for &c in &plan.clients {
            for system in [System::Mangrove, System::Postgres] {
                cells.push(bench.cell(system, w, c, &mut seed).await?);
            }
        }
    }

    let fdatasync_after = probe::fdatasync_rate(&args.probe_dir, probe_time)?;
    let info = RunInfo {
        date: probe::today(),
        machine: probe::machine(),
        command: args.command.clone(),
        probe_dir: args.probe_dir.display().to_string(),
        mangrove_version: mongo::version(&bench.mongo).await,
        postgres_version: pg::version(&bench.monitor).await,
        postgres_settings,
        fdatasync_before,
        fdatasync_after,
        sizes: plan.sizes,
        zipf_top: bench.shared.zipf.top_probability(),
        warmup_secs: plan.timing.warmup.as_secs_f64(),
        duration_secs: plan.timing.duration.as_secs_f64(),
        clients: plan.clients.clone(),
        workloads: plan.workloads.clone(),
        mangrove_sync_source: bench.mangrove_sync_source(),
    };
    write_reports(&args, &info, &cells, max_clients)?;
    Ok(all_cells_ran(&cells))
}

/// results.md, throughput.svg and latency-cdf.svg under --out-dir; the markdown to stdout too.
fn write_reports(
    args: &Args,
    info: &RunInfo,
    cells: &[Cell],
    max_clients: usize,
) -> Result<(), String> {
    let md = report::markdown(info, cells);
    let md_path = args.out_dir.join("results.md");
    std::fs::write(&md_path, &md)
        .map_err(|e| format!("cannot write {}: {e}", md_path.display()))?;
    report::throughput_svg(&args.out_dir.join("throughput.svg"), info, cells)?;
    let cdf_clients = if info.clients.contains(&32) {
        32
    } else {
        max_clients
    };
    report::latency_svg(
        &args.out_dir.join("latency-cdf.svg"),
        info,
        cells,
        cdf_clients,
    )?;
    println!("{md}");
    Ok(())
}

/// Whether every cell ran operations without errors (each failure is reported).
fn all_cells_ran(cells: &[Cell]) -> bool {
    let mut ok = true;
    for cell in cells {
        if cell.stats.errors > 0 || cell.stats.ops == 0 {
            ok = false;
            eprintln!(
                "mangrove-bench: {} {} at {} clients: {} operations, {} errors{}",
                cell.system.name(),
                cell.workload.name(),
                cell.clients,
                cell.stats.ops,
                cell.stats.errors,
                cell.stats
                    .first_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(" (first: {e})"))
            );
        }
    }
    ok
}
