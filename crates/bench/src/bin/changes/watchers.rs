//! The `watchers` scenario: transfer throughput with change streams open, in rounds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::RawDocumentBuf;
use mangrove_bench::probe;
use mangrove_bench::raw_watch::{self, RawWatcher};
use mangrove_bench::workload::{self, Workload};
use mongodb::change_stream::ChangeStream;

use super::{Ctx, DB, GRACE, describe, open_cursors};

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

pub(super) async fn watchers_scenario(ctx: &Ctx) -> Result<String, String> {
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
    for (i, &n) in counts.iter().enumerate() {
        // A count given twice is one row: its cells are pooled anyway.
        if counts[..i].contains(&n) {
            continue;
        }
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
