//! The markdown report and the SVG charts.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::workload::{CellStats, Workload};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Mangrove,
    Postgres,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Mangrove => "Mangrove",
            System::Postgres => "PostgreSQL",
        }
    }
}

pub struct Cell {
    pub system: System,
    pub workload: Workload,
    pub clients: usize,
    pub stats: CellStats,
    /// fdatasyncs over the cell (warm-up included), when they could be counted.
    pub syncs: Option<u64>,
    /// `syncs` counts a superset of the fdatasyncs (so commits per fdatasync is a lower bound).
    pub syncs_upper_bound: bool,
    /// CPU time of the server's processes over the cell (warm-up included).
    pub server_cpu: Option<std::time::Duration>,
    /// CPU time of the benchmark process (the driver side) over the cell (warm-up included).
    pub client_cpu: Option<std::time::Duration>,
}

impl Cell {
    /// Server CPU per operation in µs, over the whole cell.
    pub fn cpu_per_op_us(&self) -> Option<f64> {
        self.per_op_us(self.server_cpu?)
    }

    /// The benchmark client's own CPU per operation in µs: on a shared machine the driver's
    /// cost limits throughput as much as the server's.
    pub fn client_cpu_per_op_us(&self) -> Option<f64> {
        self.per_op_us(self.client_cpu?)
    }

    fn per_op_us(&self, cpu: std::time::Duration) -> Option<f64> {
        (self.stats.ops_total > 0).then(|| cpu.as_secs_f64() * 1e6 / self.stats.ops_total as f64)
    }

    pub fn commits_per_sync(&self) -> Option<f64> {
        let syncs = self.syncs?;
        (self.workload.commits() && syncs > 0)
            .then(|| self.stats.commits_total as f64 / syncs as f64)
    }
}

pub struct RunInfo {
    pub date: String,
    pub machine: String,
    pub command: String,
    pub probe_dir: String,
    pub mangrove_version: String,
    pub postgres_version: String,
    pub postgres_settings: String,
    pub fdatasync_before: f64,
    pub fdatasync_after: f64,
    pub sizes: crate::workload::Sizes,
    pub zipf_top: f64,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    pub clients: Vec<usize>,
    pub workloads: Vec<Workload>,
    pub mangrove_sync_source: String,
}

fn find(cells: &[Cell], s: System, w: Workload, c: usize) -> Option<&Cell> {
    cells
        .iter()
        .find(|x| x.system == s && x.workload == w && x.clients == c)
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v < 1.0 => format!("{v:.3}"),
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.1}"),
        None => "–".into(),
    }
}

fn ratio(m: Option<&Cell>, p: Option<&Cell>) -> Option<f64> {
    let (m, p) = (m?.stats.throughput(), p?.stats.throughput());
    (p > 0.0).then_some(m / p)
}

pub fn markdown(info: &RunInfo, cells: &[Cell]) -> String {
    let mut md = String::new();
    setup_section(&mut md, info);
    ratio_table(&mut md, info, cells);
    detail_tables(&mut md, info, cells);
    errors_section(&mut md, cells);
    let _ = writeln!(md, "### Goals (issue 6)\n");
    for line in goals(cells) {
        let _ = writeln!(md, "- {line}");
    }
    md
}

/// How the run was made: the command, machine, durability, data, timing and disk.
fn setup_section(md: &mut String, info: &RunInfo) {
    let fsync_mean = (info.fdatasync_before + info.fdatasync_after) / 2.0;
    let _ = writeln!(md, "```sh\n{}\n```\n", info.command);
    let _ = writeln!(
        md,
        "{}, {}. Mangrove {} (release build) and PostgreSQL {} on the same machine, data on the same disk ({}); \
         the benchmark client runs there too, so all three share the CPUs.\n",
        info.machine, info.date, info.mangrove_version, info.postgres_version, info.probe_dir
    );
    let _ = writeln!(
        md,
        "- Durability: Mangrove commits with `w: \"majority\"` (fdatasynced before the reply); PostgreSQL runs with {}, \
         REPEATABLE READ transactions, one JSONB document per row keyed by `_id`.",
        info.postgres_settings
    );
    let _ = writeln!(
        md,
        "- Data: {} accounts, {} customers, {} items with their stock. transfer-zipf draws accounts with Zipf \
         θ = {}, so the hottest account takes part in about {:.0} % of transfers.",
        thousands(info.sizes.accounts as f64),
        thousands(info.sizes.customers as f64),
        thousands(info.sizes.items as f64),
        crate::workload::ZIPF_THETA,
        info.zipf_top * 100.0 * 2.0
    );
    let _ = writeln!(
        md,
        "- Each cell: {} s warm-up, then {} s measured; the two systems alternate cell by cell. Latency is one \
         logical operation, retries included.",
        info.warmup_secs, info.duration_secs
    );
    let _ = writeln!(
        md,
        "- Disk: fdatasync of a 4 KiB append: {}/s before the run, {}/s after, mean {}/s.",
        thousands(info.fdatasync_before),
        thousands(info.fdatasync_after),
        thousands(fsync_mean)
    );
    let _ = writeln!(
        md,
        "- fdatasyncs per cell: Mangrove from {}; PostgreSQL from `pg_stat_wal.wal_sync` (WAL flushes by backends \
         and the WAL writer). Commits per fdatasync counts the warm-up too, and so does server CPU per operation: the CPU time (user + system) of the \
         `mangrove` process, or of the postmaster and all its children, over the cell, divided by the operations \
         completed. Client CPU per operation is the same for the benchmark process itself (the Rust `mongodb` \
         driver or `tokio-postgres`): both share the machine's cores with the server.\n",
        info.mangrove_sync_source
    );
}

/// Mangrove / PostgreSQL throughput per workload and client count, with the p99 ratio.
fn ratio_table(md: &mut String, info: &RunInfo, cells: &[Cell]) {
    let _ = writeln!(md, "### Mangrove / PostgreSQL, throughput (p99 latency)\n");
    let mut header = String::from("| workload |");
    let mut rule = String::from("| --- |");
    for c in &info.clients {
        let _ = write!(header, " {c} clients |");
        rule.push_str(" ---: |");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    for &w in &info.workloads {
        let _ = write!(md, "| {} |", w.name());
        for &c in &info.clients {
            let m = find(cells, System::Mangrove, w, c);
            let p = find(cells, System::Postgres, w, c);
            let lat = match (m, p) {
                (Some(m), Some(p)) => {
                    match (m.stats.percentile_ms(0.99), p.stats.percentile_ms(0.99)) {
                        (Some(a), Some(b)) if b > 0.0 => format!(" ({:.2})", a / b),
                        _ => String::new(),
                    }
                }
                _ => String::new(),
            };
            match ratio(m, p) {
                Some(r) => {
                    let _ = write!(md, " {r:.2}x{lat} |");
                }
                None => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
    md.push('\n');
}

/// One table per workload: every cell's numbers.
fn detail_tables(md: &mut String, info: &RunInfo, cells: &[Cell]) {
    for &w in &info.workloads {
        let _ = writeln!(md, "### {}\n", w.name());
        let _ = writeln!(
            md,
            "| clients | system | ops/s | p50 ms | p99 ms | p99.9 ms | aborted attempts | retries per op | errors | commits per fdatasync | server CPU µs/op | client CPU µs/op |"
        );
        let _ = writeln!(
            md,
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for &c in &info.clients {
            for s in [System::Mangrove, System::Postgres] {
                let Some(cell) = find(cells, s, w, c) else {
                    continue;
                };
                let st = &cell.stats;
                let per_op = if st.ops > 0 {
                    format!("{:.3}", st.aborts as f64 / st.ops as f64)
                } else {
                    "–".into()
                };
                let cps = cell.commits_per_sync().map_or("–".into(), |v| {
                    format!("{}{v:.1}", if cell.syncs_upper_bound { "≥ " } else { "" })
                });
                let cpu = cell
                    .cpu_per_op_us()
                    .map_or("–".into(), |v| format!("{v:.0}"));
                let client_cpu = cell
                    .client_cpu_per_op_us()
                    .map_or("–".into(), |v| format!("{v:.0}"));
                let _ = writeln!(
                    md,
                    "| {c} | {} | {} | {} | {} | {} | {} | {per_op} | {} | {cps} | {cpu} | {client_cpu} |",
                    s.name(),
                    thousands(st.throughput()),
                    ms(st.percentile_ms(0.50)),
                    ms(st.percentile_ms(0.99)),
                    ms(st.percentile_ms(0.999)),
                    st.aborts,
                    st.errors,
                );
            }
        }
        md.push('\n');
    }
}

fn errors_section(md: &mut String, cells: &[Cell]) {
    let errors: Vec<String> = cells
        .iter()
        .filter_map(|c| {
            c.stats.first_error.as_ref().map(|e| {
                format!(
                    "- {} {} at {} clients: {} errors, first: {e}",
                    c.system.name(),
                    c.workload.name(),
                    c.clients,
                    c.stats.errors
                )
            })
        })
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(md, "Errors:\n\n{}\n", errors.join("\n"));
    }
}

fn goals(cells: &[Cell]) -> Vec<String> {
    let at = |w, s| find(cells, s, w, 32);
    let mut out = Vec::new();
    let (m, p) = (
        at(Workload::TransferUniform, System::Mangrove),
        at(Workload::TransferUniform, System::Postgres),
    );
    match (m, p, ratio(m, p)) {
        (Some(m), Some(p), Some(r)) => {
            let (mp99, pp99) = (
                m.stats.percentile_ms(0.99).unwrap_or(f64::MAX),
                p.stats.percentile_ms(0.99).unwrap_or(f64::MAX),
            );
            let met = r >= 2.0 && mp99 <= pp99;
            out.push(format!(
                "transfer (uniform) at 32 clients, at least 2x PostgreSQL with p99 no worse: {} ({r:.2}x, p99 {} ms against {} ms).",
                if met { "met" } else { "missed" },
                ms(Some(mp99)),
                ms(Some(pp99))
            ));
        }
        _ => out.push("transfer at 32 clients: not measured in this run.".into()),
    }
    let (m, p) = (
        at(Workload::Order, System::Mangrove),
        at(Workload::Order, System::Postgres),
    );
    match ratio(m, p) {
        Some(r) => out.push(format!(
            "order at 32 clients, at least 1.5x PostgreSQL: {} ({r:.2}x).",
            if r >= 1.5 { "met" } else { "missed" }
        )),
        None => out.push("order at 32 clients: not measured in this run.".into()),
    }
    match m
        .and(at(Workload::TransferUniform, System::Mangrove))
        .and_then(|c| c.commits_per_sync())
    {
        Some(v) => {
            let bound = m
                .and(at(Workload::TransferUniform, System::Mangrove))
                .is_some_and(|c| c.syncs_upper_bound);
            let verdict = match (v >= 10.0, bound) {
                (true, _) => "met",
                (false, false) => "missed",
                (false, true) => "not shown (only a lower bound was measured)",
            };
            out.push(format!(
                "at least 10 durable commits per fdatasync at 32 clients (transfer): {verdict} ({}{v:.1}).",
                if bound { "≥ " } else { "" }
            ));
        }
        None => out.push("commits per fdatasync at 32 clients: not measured in this run.".into()),
    }
    out
}

fn draw_err<E: std::fmt::Debug>(e: E) -> String {
    format!("drawing a chart: {e:?}")
}

const MANGROVE_COLOR: RGBColor = RGBColor(0, 128, 96);
const POSTGRES_COLOR: RGBColor = RGBColor(51, 103, 145);

fn color(s: System) -> RGBColor {
    match s {
        System::Mangrove => MANGROVE_COLOR,
        System::Postgres => POSTGRES_COLOR,
    }
}

/// Throughput against clients, one panel per workload.
pub fn throughput_svg(path: &Path, info: &RunInfo, cells: &[Cell]) -> Result<(), String> {
    let root = SVGBackend::new(path, (1200, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let root = root
        .titled(
            "Throughput against concurrent clients (operations per second; higher is better)",
            ("sans-serif", 20),
        )
        .map_err(draw_err)?;
    let panels = root.split_evenly((2, 3));
    let max_clients = *info.clients.iter().max().unwrap_or(&1) as f64;
    for (panel, &w) in panels.iter().zip(&info.workloads) {
        let ymax = cells
            .iter()
            .filter(|c| c.workload == w)
            .map(|c| c.stats.throughput())
            .fold(1.0, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(w.name(), ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d((0.8f64..max_clients * 1.25).log_scale(), 0f64..ymax)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("clients")
            .y_desc("ops/s")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| thousands(*y))
            .draw()
            .map_err(draw_err)?;
        for s in [System::Mangrove, System::Postgres] {
            let points: Vec<(f64, f64)> = info
                .clients
                .iter()
                .filter_map(|&c| find(cells, s, w, c).map(|x| (c as f64, x.stats.throughput())))
                .collect();
            let col = color(s);
            chart
                .draw_series(LineSeries::new(points.clone(), col.stroke_width(2)))
                .map_err(draw_err)?
                .label(s.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, col.filled())))
                .map_err(draw_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw_err)?;
    }
    root.present().map_err(draw_err)
}

/// The x range (ms) that holds every series' fastest and slowest operation.
fn latency_range(series: &[(System, &CellStats)]) -> (f64, f64) {
    let lo = series
        .iter()
        .map(|(_, st)| st.latencies_us[0] as f64 / 1000.0)
        .fold(f64::MAX, f64::min)
        .max(0.01);
    let hi = series
        .iter()
        .map(|(_, st)| *st.latencies_us.last().unwrap_or(&0) as f64 / 1000.0)
        .fold(lo * 10.0, f64::max);
    (lo, hi)
}

/// (latency ms, fraction faster) along sorted, non-empty `latencies_us`.
fn cdf_points(latencies_us: &[u32]) -> Vec<(f64, f64)> {
    let n = latencies_us.len();
    // ~400 points are enough for a smooth curve; keep the tail's last point exact.
    let step = (n / 400).max(1);
    let mut points: Vec<(f64, f64)> = (0..n)
        .step_by(step)
        .map(|i| (latencies_us[i] as f64 / 1000.0, (i + 1) as f64 / n as f64))
        .collect();
    points.push((latencies_us[n - 1] as f64 / 1000.0, 1.0));
    points
}

/// Latency CDFs at `clients`, one panel per workload.
pub fn latency_svg(
    path: &Path,
    info: &RunInfo,
    cells: &[Cell],
    clients: usize,
) -> Result<(), String> {
    let root = SVGBackend::new(path, (1200, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let root = root
        .titled(
            &format!("Latency CDF at {clients} clients (fraction of operations faster than x)"),
            ("sans-serif", 20),
        )
        .map_err(draw_err)?;
    let panels = root.split_evenly((2, 3));
    for (panel, &w) in panels.iter().zip(&info.workloads) {
        let series: Vec<(System, &CellStats)> = [System::Mangrove, System::Postgres]
            .into_iter()
            .filter_map(|s| find(cells, s, w, clients).map(|c| (s, &c.stats)))
            .filter(|(_, st)| !st.latencies_us.is_empty())
            .collect();
        let (lo, hi) = latency_range(&series);
        let mut chart = ChartBuilder::on(panel)
            .caption(w.name(), ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d((lo * 0.9..hi * 1.1).log_scale(), 0f64..1.0)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("latency, ms")
            .y_desc("fraction")
            .x_label_formatter(&|x| {
                if *x < 1.0 {
                    format!("{x:.2}")
                } else {
                    format!("{x:.0}")
                }
            })
            .draw()
            .map_err(draw_err)?;
        for (s, st) in series {
            let points = cdf_points(&st.latencies_us);
            let col = color(s);
            chart
                .draw_series(LineSeries::new(points, col.stroke_width(2)))
                .map_err(draw_err)?
                .label(s.name())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw_err)?;
    }
    root.present().map_err(draw_err)
}
