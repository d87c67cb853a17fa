//! `mangrove restore --from BACKUP`: point-in-time restore into a new data directory, from a
//! backup plus the log archived after it (`--log-archive-dir`) and, for the newest commits,
//! a stopped server's log directory. The storage crate does the work
//! (`mangrove_storage::restore`); this file parses the stop point, draws progress and prints
//! the summary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bson::DateTime;
use clap::Args;
use mangrove_storage::restore::{RecordSummary, RestorePhase, RestorePlan, StopAt, restore};
use mangrove_storage::{EngineOptions, Timestamp};

#[derive(Args)]
pub struct PitrArgs {
    /// The backup to start from (made by `mangrove backup`).
    #[arg(long, value_name = "BACKUP", requires = "to")]
    pub from: Option<PathBuf>,
    /// The new data directory to build (created; it must be empty). Start a server on it with
    /// `mangrove serve --data-dir DIR`.
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
    /// A directory of log segments after the backup: the server's --log-archive-dir, or the
    /// log directory (`<data dir>/log`) of a stopped server for its newest commits. Repeat
    /// for several; each segment is taken from the first that has it.
    #[arg(long, value_name = "DIR", requires = "from")]
    pub archive: Vec<PathBuf>,
    /// Keep the transactions committed at or before this time (RFC 3339, e.g.
    /// 2026-12-05T10:00:00Z, or seconds since the epoch). Default: everything available.
    #[arg(long, value_name = "TIME", group = "stop", requires = "from")]
    pub until: Option<String>,
    /// Keep the transactions up to and including this one: its commit timestamp `T:I`, as
    /// `mangrove log list` prints it.
    #[arg(long, value_name = "T:I", group = "stop", requires = "from")]
    pub until_log_position: Option<String>,
    /// Keep the transactions before the first one that dropped this collection ("db.coll")
    /// or any collection of this database ("db"): undo a bad drop.
    #[arg(long, value_name = "NS", group = "stop", requires = "from")]
    pub until_before_ns_drop: Option<String>,
}

fn parse_position(s: &str) -> Result<Timestamp, String> {
    let (t, i) = s.split_once(':').ok_or_else(|| {
        format!("log position {s:?} is not T:I (as `mangrove log list` prints it)")
    })?;
    let t: u32 = t
        .trim()
        .parse()
        .map_err(|_| format!("bad seconds in {s:?}"))?;
    let i: u32 = i
        .trim()
        .parse()
        .map_err(|_| format!("bad increment in {s:?}"))?;
    Ok(Timestamp((u64::from(t) << 32) | u64::from(i)))
}

fn stop_at(args: &PitrArgs) -> Result<StopAt, String> {
    if let Some(t) = &args.until {
        return Ok(StopAt::Time(crate::log_cmd::parse_time(t)?));
    }
    if let Some(p) = &args.until_log_position {
        return Ok(StopAt::Timestamp(parse_position(p)?));
    }
    if let Some(ns) = &args.until_before_ns_drop {
        return Ok(StopAt::BeforeDrop(ns.clone()));
    }
    Ok(StopAt::End)
}

/// A bar per phase on a terminal; a line per phase otherwise.
fn progress() -> impl FnMut(RestorePhase, u64, u64) {
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut current: Option<(RestorePhase, indicatif::ProgressBar)> = None;
    move |phase, done, total| {
        if current.as_ref().is_none_or(|(p, _)| *p != phase) {
            if let Some((_, bar)) = current.take() {
                bar.finish_and_clear();
            }
            let label = match phase {
                RestorePhase::Verify => "checking the backup",
                RestorePhase::Copy => "copying the base store and the log",
                RestorePhase::Replay => "replaying the log",
            };
            let bar = match on_terminal {
                true => indicatif::ProgressBar::new(total),
                false => indicatif::ProgressBar::hidden(),
            };
            let template =
                format!("{label} {{bar:40}} {{bytes}}/{{total_bytes}} ({{bytes_per_sec}})");
            bar.set_style(
                indicatif::ProgressStyle::with_template(&template)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            if !on_terminal {
                eprintln!("mangrove restore: {label}");
            }
            current = Some((phase, bar));
        }
        if let Some((_, bar)) = &current {
            if total > 0 {
                bar.set_length(total);
            }
            bar.set_position(done);
        }
    }
}

fn describe(r: &RecordSummary) -> String {
    let wall = DateTime::from_millis(r.wall_ms)
        .try_to_rfc3339_string()
        .unwrap_or_default();
    format!(
        "{}:{} ({wall}): {}",
        r.ts.seconds(),
        r.ts.increment(),
        r.ops.join(", ")
    )
}

pub fn run(args: &PitrArgs, from: PathBuf) -> ExitCode {
    let Some(target) = args.to.clone() else {
        eprintln!("mangrove restore: pass --to DIR, the new data directory to build");
        return ExitCode::FAILURE;
    };
    let stop = match stop_at(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mangrove restore: {e}");
            return ExitCode::FAILURE;
        }
    };
    let plan = RestorePlan {
        backup: from,
        archives: args.archive.clone(),
        target,
        stop,
        round_bytes: mangrove_storage::restore::REPLAY_ROUND_BYTES,
    };
    let options = EngineOptions {
        partial_filters: mangrove_query::partial_filters(),
        checkpoint_interval: Duration::from_secs(3600),
        ..EngineOptions::default()
    };
    match restore(&plan, options, progress()) {
        Ok(report) => {
            print_summary(&plan, &report);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mangrove restore: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_summary(plan: &RestorePlan, report: &mangrove_storage::restore::RestoreReport) {
    let m = &report.manifest;
    println!(
        "restored into {} in {:.1} s: the backup's checkpoint {}:{}, then {} transactions replayed from {} log segment{}",
        plan.target.display(),
        report.elapsed.as_secs_f64(),
        m.checkpoint.seconds(),
        m.checkpoint.increment(),
        report.replayed,
        report.segments.len(),
        if report.segments.len() == 1 { "" } else { "s" }
    );
    let secs = report.replay_elapsed.as_secs_f64();
    println!(
        "replay: {} bytes of log in {secs:.2} s ({:.0} MB/s)",
        report.log_bytes,
        report.log_bytes as f64 / 1e6 / secs.max(1e-9)
    );
    for (name, source) in &report.segments {
        println!("  {name}  from {}", source.display());
    }
    match &report.last {
        Some(last) => println!("last transaction restored: {}", describe(last)),
        None => println!("no transaction after the backup's checkpoint was restored"),
    }
    if let Some(stopped) = &report.stopped_before {
        println!("stopped before: {}", describe(stopped));
    } else if plan.stop != StopAt::End {
        println!("the log available ended before the stop point: everything it holds was restored");
    }
    if let Some(note) = &report.tail_note {
        println!(
            "note: the newest segment ends with bytes that are not a whole transaction (a write in progress or a crash; never acknowledged as durable): {note}"
        );
    }
    println!(
        "start it with: mangrove serve --data-dir {}",
        plan.target.display()
    );
}

/// `mangrove restore`'s arguments: a point-in-time restore from a backup (`--from`), or a
/// mongodump directory loaded into a running server (`--dump`, `dump_cmd.rs`).
#[derive(Args)]
pub struct RestoreCli {
    #[command(flatten)]
    pitr: PitrArgs,
    #[command(flatten)]
    dump: crate::dump_cmd::RestoreArgs,
}

pub fn run_restore(args: RestoreCli) -> ExitCode {
    match (args.pitr.from.clone(), &args.dump.dump) {
        (Some(from), None) => run(&args.pitr, from),
        (None, Some(_)) => crate::dump_cmd::run_restore(args.dump),
        (Some(_), Some(_)) => {
            eprintln!(
                "mangrove restore: --from (a backup) and --dump (a mongodump directory) are two different restores; pass one"
            );
            ExitCode::FAILURE
        }
        (None, None) => {
            eprintln!(
                "mangrove restore: pass --dump DIR to load a mongodump directory, or --from BACKUP --to DIR to restore a backup"
            );
            ExitCode::from(2)
        }
    }
}
