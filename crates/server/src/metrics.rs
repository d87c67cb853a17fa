//! Prometheus metrics: the command latency histograms this module keeps, and the text
//! exposition (format 0.0.4) of every counter the server and the engine already keep, served
//! by `metrics_http.rs` at `--metrics-addr`.
//!
//! Invariants:
//! - Observing a command costs a read lock, one hash lookup by its table name (a `&'static
//!   str`: the label set is the command table, never a client's string) and three atomic adds.
//! - Rendering reads counters only; it takes no engine lock but the transaction registry's
//!   and allocates only the text.
//! - Names follow Prometheus' conventions: a `mangrove_` prefix, base units (seconds, bytes),
//!   `_total` for counters.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mangrove_storage::histogram::{Histogram, HistogramSnapshot};

use crate::Shared;

/// Command latency buckets, microseconds (100 µs to 10 s).
static COMMAND_MICROS: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

#[derive(Default)]
pub(crate) struct Metrics {
    commands: RwLock<HashMap<&'static str, Arc<Histogram>>>,
    /// Auto-commit writes run again after a WriteConflict (`write_path::retry_conflicts`).
    write_conflicts_retried: AtomicU64,
    /// Change streams open now: each holds a [`Watching`] until its cursor is dropped.
    change_streams_open: Arc<AtomicI64>,
    /// Change events returned to clients, in first batches and `getMore`s.
    change_events: AtomicU64,
    /// Of those, events in batches another stream had read and encoded (`changes/board.rs`).
    change_events_shared: AtomicU64,
}

/// One open change stream, counted while it lives (held by its cursor).
pub(crate) struct Watching(Arc<AtomicI64>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Metrics {
    /// A write conflict the server retried on its own.
    pub fn write_conflict_retried(&self) {
        self.write_conflicts_retried.fetch_add(1, Relaxed);
    }

    /// Counts a change stream open until the returned guard is dropped.
    pub fn watching(&self) -> Watching {
        self.change_streams_open.fetch_add(1, Relaxed);
        Watching(self.change_streams_open.clone())
    }

    /// A change stream's batch went to a client.
    pub fn change_events_sent(&self, batch: &crate::changes::Batch) {
        self.change_events.fetch_add(batch.count() as u64, Relaxed);
        if batch.taken {
            self.change_events_shared
                .fetch_add(batch.count() as u64, Relaxed);
        }
    }

    /// Counts one run of the command named `name` (from the command table) that took `took`.
    pub fn observe(&self, name: &'static str, took: Duration) {
        let micros = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let seen = {
            let map = self.commands.read().unwrap_or_else(|p| p.into_inner());
            map.get(name).cloned()
        };
        let histogram = seen.unwrap_or_else(|| {
            let mut map = self.commands.write().unwrap_or_else(|p| p.into_inner());
            map.entry(name)
                .or_insert_with(|| Arc::new(Histogram::new(&COMMAND_MICROS)))
                .clone()
        });
        histogram.record(micros);
    }

    /// Every command's histogram added up (they share [`COMMAND_MICROS`]'s bounds), for the
    /// status page's latency chart.
    pub(crate) fn command_totals(&self) -> HistogramSnapshot {
        let mut total = HistogramSnapshot {
            buckets: COMMAND_MICROS.iter().map(|b| (*b, 0)).collect(),
            count: 0,
            sum: 0,
        };
        for (_, h) in self.command_snapshots() {
            for (slot, (_, n)) in total.buckets.iter_mut().zip(&h.buckets) {
                slot.1 += n;
            }
            total.count += h.count;
            total.sum += h.sum;
        }
        total
    }

    fn command_snapshots(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        let map = self.commands.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = map.iter().map(|(n, h)| (*n, h.snapshot())).collect();
        all.sort_by_key(|(n, _)| *n);
        all
    }
}

/// One metric family's header.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn single(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A histogram's lines; `scale` turns recorded units into the exported base unit.
fn histogram_lines(out: &mut String, name: &str, labels: &str, h: &HistogramSnapshot, scale: f64) {
    let sep = if labels.is_empty() { "" } else { "," };
    for (bound, count) in &h.buckets {
        let le = *bound as f64 * scale;
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", h.sum as f64 * scale);
    let _ = writeln!(out, "{name}_count{braces} {}", h.count);
}

/// The whole exposition.
pub(crate) fn render(shared: &Shared) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let c = &shared.counters;
    single(
        &mut out,
        "mangrove_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
        shared.started.elapsed().as_secs_f64(),
    );
    single(
        &mut out,
        "mangrove_connections",
        "gauge",
        "Open client connections.",
        c.connections_current.load(Relaxed) as f64,
    );
    single(
        &mut out,
        "mangrove_connections_created_total",
        "counter",
        "Client connections accepted since the start.",
        c.connections_total.load(Relaxed) as f64,
    );
    header(
        &mut out,
        "mangrove_operations_total",
        "counter",
        "Operations by kind, as serverStatus.opcounters counts them.",
    );
    for (kind, n) in [
        ("insert", &c.insert),
        ("query", &c.query),
        ("update", &c.update),
        ("delete", &c.delete),
        ("getmore", &c.getmore),
        ("command", &c.command),
    ] {
        let _ = writeln!(
            out,
            "mangrove_operations_total{{type=\"{kind}\"}} {}",
            n.load(Relaxed)
        );
    }
    render_log(&mut out, shared);
    render_checkpoints(&mut out, shared);
    render_transactions(&mut out, shared);
    render_retries_and_streams(&mut out, shared);
    render_commands(&mut out, shared);
    out
}

fn render_commands(out: &mut String, shared: &Shared) {
    single(
        out,
        "mangrove_cursors_open",
        "gauge",
        "Open cursors.",
        shared.cursors.open_count() as f64,
    );
    header(
        out,
        "mangrove_command_duration_seconds",
        "histogram",
        "Time to run each command, by command.",
    );
    for (name, h) in shared.metrics.command_snapshots() {
        histogram_lines(
            out,
            "mangrove_command_duration_seconds",
            &format!("command=\"{name}\""),
            &h,
            1e-6,
        );
    }
}

fn render_log(out: &mut String, shared: &Shared) {
    let log = shared.engine.log_stats();
    single(
        out,
        "mangrove_log_commits_total",
        "counter",
        "Transactions committed to the log.",
        log.commits as f64,
    );
    single(
        out,
        "mangrove_log_group_commits_total",
        "counter",
        "Group-commit rounds: one write and one fdatasync each.",
        log.batches as f64,
    );
    single(
        out,
        "mangrove_log_written_bytes_total",
        "counter",
        "Bytes written to the transaction log.",
        log.bytes as f64,
    );
    header(
        out,
        "mangrove_log_group_commit_size",
        "histogram",
        "Commits per group-commit round.",
    );
    histogram_lines(
        out,
        "mangrove_log_group_commit_size",
        "",
        &log.batch_commits,
        1.0,
    );
    header(
        out,
        "mangrove_log_fdatasync_seconds",
        "histogram",
        "Time each group-commit round's fdatasync took.",
    );
    histogram_lines(
        out,
        "mangrove_log_fdatasync_seconds",
        "",
        &log.sync_micros,
        1e-6,
    );
    single(
        out,
        "mangrove_cache_limit_bytes",
        "gauge",
        "The configured cache size (--cache-size).",
        shared.engine.cache_bytes() as f64,
    );
    single(
        out,
        "mangrove_cache_versions_bytes",
        "gauge",
        "Committed versions held in memory since the last checkpoint.",
        shared.engine.versions_bytes() as f64,
    );
}

fn render_transactions(out: &mut String, shared: &Shared) {
    let open = shared.sessions.open.list();
    let oldest = open
        .iter()
        .map(|t| t.started.elapsed().as_secs_f64())
        .fold(0.0, f64::max);
    let stats = &shared.sessions.open.stats;
    single(
        out,
        "mangrove_transactions_open",
        "gauge",
        "Multi-document transactions open now.",
        open.len() as f64,
    );
    single(
        out,
        "mangrove_transactions_oldest_open_seconds",
        "gauge",
        "Age of the oldest open transaction (0: none).",
        oldest,
    );
    single(
        out,
        "mangrove_transactions_started_total",
        "counter",
        "Multi-document transactions started.",
        stats.started.load(Relaxed) as f64,
    );
    single(
        out,
        "mangrove_transactions_committed_total",
        "counter",
        "Multi-document transactions committed.",
        stats.committed.load(Relaxed) as f64,
    );
    single(
        out,
        "mangrove_transactions_aborted_total",
        "counter",
        "Multi-document transactions aborted.",
        stats.aborted.load(Relaxed) as f64,
    );
    single(
        out,
        "mangrove_write_conflicts_total",
        "counter",
        "Writes that met another transaction's intent (WriteConflict).",
        stats.write_conflicts.load(Relaxed) as f64,
    );
}

fn render_checkpoints(out: &mut String, shared: &Shared) {
    let checkpoints = shared.engine.checkpoint_durations();
    single(
        out,
        "mangrove_checkpoints_total",
        "counter",
        "Checkpoints that folded committed versions into the base store.",
        checkpoints.count as f64,
    );
    header(
        out,
        "mangrove_checkpoint_duration_seconds",
        "histogram",
        "Time each checkpoint took.",
    );
    histogram_lines(
        out,
        "mangrove_checkpoint_duration_seconds",
        "",
        &checkpoints,
        1e-6,
    );
}

fn render_retries_and_streams(out: &mut String, shared: &Shared) {
    let m = &shared.metrics;
    single(
        out,
        "mangrove_retryable_writes_retried_total",
        "counter",
        "Statements of retried retryable writes answered from the session's record (already executed).",
        crate::retryable::retried_statements() as f64,
    );
    single(
        out,
        "mangrove_write_conflicts_retried_total",
        "counter",
        "Auto-commit writes the server ran again after a WriteConflict.",
        m.write_conflicts_retried.load(Relaxed) as f64,
    );
    single(
        out,
        "mangrove_change_streams_open",
        "gauge",
        "Change streams open now.",
        m.change_streams_open.load(Relaxed) as f64,
    );
    single(
        out,
        "mangrove_change_events_delivered_total",
        "counter",
        "Change events returned to clients.",
        m.change_events.load(Relaxed) as f64,
    );
    single(
        out,
        "mangrove_change_events_shared_total",
        "counter",
        "Change events returned in a batch another stream watching the same way had read and encoded (changes/board.rs).",
        m.change_events_shared.load(Relaxed) as f64,
    );
}
