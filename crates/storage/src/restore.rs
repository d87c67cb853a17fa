//! Point-in-time restore: a new data directory holding exactly the transactions committed up
//! to a chosen point, built from a backup and the log after it (the backup's own log, then
//! archived segments, `--log-archive-dir`, or a stopped server's log directory).
//!
//! The steps, each checked: the backup's files against its manifest; its base store copied;
//! the log segments from its checkpoint on, each copied record by record (every record's
//! checksum checked) from the first source that has it, up to the last record wanted; the
//! chain of segments checked link by link (a missing or cut segment is named, never skipped);
//! a control file saying where the log now ends; then the engine opened on the new directory,
//! which replays the log like any recovery, and closed with a checkpoint.
//!
//! Invariants:
//! - The restored log is a prefix of the committed log: whole transactions, in commit order,
//!   with no gap. A record is kept or not as a whole.
//! - Nothing is written outside the target directory; on failure, the target is left as it is
//!   for inspection and the error says so.
//!
//! Lock order: the engine's own, once opened (see `engine.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::backup::{self, Manifest};
use crate::txlog::{
    self, Control, CopyEnd, CopyLimit, DurableEnd, LogOp, LogRecord, SegmentCopy, check_link,
    file_name, segments_between,
};
use crate::{Engine, EngineOptions, StorageError, Timestamp};

/// Where the restored log stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopAt {
    /// Everything the backup and the archives hold.
    End,
    /// The transactions committed at or before this wall-clock time (ms since the epoch).
    Time(i64),
    /// The transactions up to and including this commit timestamp (a log position).
    Timestamp(Timestamp),
    /// The transactions before the first one that dropped (or renamed away) this collection
    /// ("db.coll"), or any collection of this database ("db").
    BeforeDrop(String),
}

impl StopAt {
    fn keeps(&self, record: &LogRecord) -> bool {
        match self {
            StopAt::End => true,
            StopAt::Time(ms) => record.wall_ms <= *ms,
            StopAt::Timestamp(ts) => record.ts <= *ts,
            StopAt::BeforeDrop(target) => !record.ops.iter().any(|op| drops(op, target)),
        }
    }
}

fn drops(op: &LogOp, target: &str) -> bool {
    let LogOp::DropCollection { ns } = op else {
        return false;
    };
    ns == target
        || (!target.contains('.') && ns.split_once('.').is_some_and(|(db, _)| db == target))
}

/// What to restore, from where, to where.
#[derive(Clone, Debug)]
pub struct RestorePlan {
    pub backup: PathBuf,
    /// Directories of log segments after the backup, searched in order.
    pub archives: Vec<PathBuf>,
    /// The new data directory (created; it must be empty).
    pub target: PathBuf,
    pub stop: StopAt,
    /// Log replayed per round ([`REPLAY_ROUND_BYTES`]).
    pub round_bytes: u64,
}

/// Where a restore is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestorePhase {
    /// Checking the backup's files against its manifest (bytes).
    Verify,
    /// Copying the base store and the log (bytes).
    Copy,
    /// Replaying the log on the new directory (log bytes).
    Replay,
}

/// A transaction, briefly: for the summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSummary {
    pub ts: Timestamp,
    pub wall_ms: i64,
    /// Its operations, by kind and namespace ("drop test.orders", "insert ×3 test.a").
    pub ops: Vec<String>,
}

/// What a restore did.
#[derive(Clone, Debug)]
pub struct RestoreReport {
    pub manifest: Manifest,
    /// Each segment copied and the file it came from.
    pub segments: Vec<(String, PathBuf)>,
    /// Transactions after the backup's checkpoint that the new directory replayed.
    pub replayed: u64,
    /// Bytes of log the replay read, and how long opening the new directory took (the replay
    /// and its checks).
    pub log_bytes: u64,
    pub replay_elapsed: Duration,
    /// The newest transaction restored (`None`: only the base).
    pub last: Option<RecordSummary>,
    /// The first transaction left out, when the stop point ended the log.
    pub stopped_before: Option<RecordSummary>,
    /// The log ended at bytes that are not a whole record (a write in progress or a torn
    /// write in the newest segment): its file, offset and why.
    pub tail_note: Option<String>,
    pub elapsed: Duration,
}

/// A record's kinds of operations per namespace, for people: what `mangrove log list` shows.
pub fn summarize(record: &LogRecord) -> RecordSummary {
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for op in &record.ops {
        if !matches!(op, LogOp::Command { .. }) {
            *counts.entry((op.kind(), op.ns())).or_default() += 1;
        }
    }
    let ops = counts
        .into_iter()
        .map(|((kind, ns), n)| match n {
            1 => format!("{kind} {ns}"),
            n => format!("{kind} ×{n} {ns}"),
        })
        .collect();
    RecordSummary {
        ts: record.ts,
        wall_ms: record.wall_ms,
        ops,
    }
}

/// Restores `plan` (see the module comment). `options` are the engine options the new
/// directory is opened with (its partial-index filters, cache); its data directory is set
/// here. `progress(phase, done, total)`.
pub fn restore(
    plan: &RestorePlan,
    mut options: EngineOptions,
    mut progress: impl FnMut(RestorePhase, u64, u64),
) -> Result<RestoreReport, StorageError> {
    let started = Instant::now();
    let manifest = check_backup(&plan.backup, &mut progress)?;
    refuse_early_stop(&plan.stop, &manifest)?;
    backup::prepare_empty_dir(&plan.target)?;
    copy_file(
        &plan.backup.join(backup::BASE_FILE),
        &plan.target.join(backup::BASE_FILE),
    )?;
    options.data_dir = Some(plan.target.clone());
    options.read_only = false;
    let mut replayer = Replayer {
        options,
        progress: &mut progress,
        replayed: 0,
        elapsed: Duration::ZERO,
        copied: 0,
    };
    let log = copy_log(plan, &manifest, &mut replayer)?;
    replayer.replay()?;
    Ok(RestoreReport {
        manifest,
        segments: log.segments,
        replayed: replayer.replayed,
        log_bytes: replayer.copied,
        replay_elapsed: replayer.elapsed,
        last: log.last,
        stopped_before: log.stopped_before,
        tail_note: log.tail_note,
        elapsed: started.elapsed(),
    })
}

/// Reads the manifest and checks every file of the backup against it.
fn check_backup(
    dir: &Path,
    progress: &mut impl FnMut(RestorePhase, u64, u64),
) -> Result<Manifest, StorageError> {
    let manifest = backup::read_manifest(dir)?;
    let total: u64 = manifest.files.iter().map(|f| f.bytes).sum();
    let mut done = 0;
    for want in &manifest.files {
        let got = backup::describe_file(dir, &want.path)?;
        if got != *want {
            return Err(StorageError::DataCorruption {
                file: backup::file_path(dir, want),
                detail: format!(
                    "{} bytes with crc32c {:08x}, but the backup's manifest says {} bytes with crc32c {:08x}. Run `mangrove backup verify {}` for a full check, and restore from another backup",
                    got.bytes,
                    got.crc32c,
                    want.bytes,
                    want.crc32c,
                    dir.display()
                ),
            });
        }
        done += got.bytes;
        progress(RestorePhase::Verify, done, total);
    }
    Ok(manifest)
}

/// A stop point the backup is already past cannot be reached from it.
fn refuse_early_stop(stop: &StopAt, manifest: &Manifest) -> Result<(), StorageError> {
    let checkpoint = manifest.checkpoint;
    let too_early = match stop {
        StopAt::Timestamp(ts) => *ts < checkpoint,
        // Commit timestamps count wall-clock seconds: a time within or before the
        // checkpoint's second may be before the checkpoint.
        StopAt::Time(ms) => ms.div_euclid(1000) <= i64::from(checkpoint.seconds()),
        StopAt::End | StopAt::BeforeDrop(_) => false,
    };
    if too_early {
        return Err(StorageError::Backup(format!(
            "this backup already holds every transaction up to its checkpoint (timestamp {}:{}), which is after the stop point; restore from an older backup",
            checkpoint.seconds(),
            checkpoint.increment()
        )));
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path) -> Result<(), StorageError> {
    std::fs::copy(from, to)
        .and_then(|_| std::fs::File::open(to)?.sync_all())
        .map(|_| ())
        .map_err(|e| {
            StorageError::io(
                format!("cannot copy {} to {}", from.display(), to.display()),
                e,
            )
        })
}

/// What the log copy assembled.
#[derive(Default)]
struct LogCopy {
    segments: Vec<(String, PathBuf)>,
    last: Option<RecordSummary>,
    stopped_before: Option<RecordSummary>,
    tail_note: Option<String>,
}

/// Every segment name the sources hold from the backup's checkpoint on, each with its sources
/// in the order they are searched: the archives as given, then the backup's own log.
fn candidates(
    plan: &RestorePlan,
    checkpoint: Timestamp,
) -> Result<BTreeMap<String, Vec<PathBuf>>, StorageError> {
    let mut by_name: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let backup_log = plan.backup.join(backup::LOG_DIR);
    for dir in plan.archives.iter().chain(std::iter::once(&backup_log)) {
        if !dir.is_dir() {
            return Err(StorageError::Backup(format!(
                "{} is not a directory of log segments",
                dir.display()
            )));
        }
        for path in txlog::list_segments(dir)? {
            by_name.entry(file_name(&path)).or_default().push(path);
        }
    }
    // Names sort like the timestamps they hold, so the wanted ones are a range of them.
    let firsts: Vec<PathBuf> = by_name.values().map(|v| v[0].clone()).collect();
    let first_wanted = segments_between(&firsts, checkpoint, Timestamp(u64::MAX))
        .first()
        .map(|p| file_name(p));
    Ok(match first_wanted {
        Some(first) => by_name.split_off(&first),
        None => BTreeMap::new(),
    })
}

/// Log replayed per round by default ([`RestorePlan::round_bytes`]): a restore holds at most
/// about this much replayed log in memory (the versions recovery builds), however long the
/// archive it reads. The server's own checkpoint trigger (`--checkpoint-log-size`).
pub const REPLAY_ROUND_BYTES: u64 = 256 * 1024 * 1024;

/// Replays the log copied so far on the target: it opens the engine there (an ordinary
/// recovery) and closes it, which checkpoints. Done every [`REPLAY_ROUND_BYTES`] of log and
/// at the end (see [`RestorePlan::round_bytes`]).
struct Replayer<'p> {
    options: EngineOptions,
    progress: &'p mut dyn FnMut(RestorePhase, u64, u64),
    /// Transactions replayed so far (after the backup's checkpoint).
    replayed: u64,
    elapsed: Duration,
    /// Bytes of log copied so far.
    copied: u64,
}

impl Replayer<'_> {
    fn replay(&mut self) -> Result<(), StorageError> {
        let started = Instant::now();
        let progress = &mut *self.progress;
        let (engine, recovery) = Engine::open(self.options.clone(), |done, total| {
            progress(RestorePhase::Replay, done, total)
        })?;
        engine.close();
        self.replayed += recovery.replayed;
        self.elapsed += started.elapsed();
        Ok(())
    }
}

/// Copies the log from the backup's checkpoint to the stop point into the target, checking
/// the chain, replaying it in rounds, and writes its control file.
fn copy_log(
    plan: &RestorePlan,
    manifest: &Manifest,
    replayer: &mut Replayer<'_>,
) -> Result<LogCopy, StorageError> {
    let dst = plan.target.join(backup::LOG_DIR);
    std::fs::create_dir_all(&dst)
        .map_err(|e| StorageError::io(format!("cannot create {}", dst.display()), e))?;
    let sources = candidates(plan, manifest.checkpoint)?;
    let mut out = LogCopy::default();
    let mut copies: Vec<SegmentCopy> = Vec::new();
    let count = sources.len();
    let mut since_round = 0u64;
    for (i, (name, paths)) in sources.into_iter().enumerate() {
        let mut last: Option<LogRecord> = None;
        let mut keep = |r: &LogRecord| {
            let kept = plan.stop.keeps(r);
            if kept && r.ts > manifest.checkpoint {
                last = Some(r.clone());
            }
            kept
        };
        // Only the newest segment may end in a write in progress (a live log's tail).
        let limit = CopyLimit {
            durable: Timestamp(u64::MAX),
            open_tail: i + 1 == count,
            keep: &mut keep,
        };
        let (copy, end) = txlog::copy_segment(&paths[0], &dst.join(&name), limit)?;
        check_link(copies.last(), &copy, &paths[0]).map_err(|e| missing_hint(e, &copies))?;
        if let Some(r) = last {
            out.last = Some(summarize(&r));
        }
        replayer.copied += copy.end;
        (replayer.progress)(RestorePhase::Copy, replayer.copied, 0);
        out.segments.push((name, paths[0].clone()));
        copies.push(copy);
        if i == 0 {
            txlog::check_starts_after(&paths[0], &copies, manifest.checkpoint)?;
        }
        let more = match end {
            CopyEnd::Records => i + 1 < count,
            CopyEnd::Unwanted(record) => {
                out.stopped_before = Some(summarize(&record));
                false
            }
            CopyEnd::NotARecord { offset, detail } => {
                out.tail_note = Some(format!(
                    "{} at offset {offset}: {detail}",
                    paths[0].display()
                ));
                false
            }
        };
        if !more {
            break;
        }
        since_round += copies.last().map_or(0, |c| c.end);
        if since_round >= plan.round_bytes {
            write_log_control(&dst, manifest.checkpoint, &copies)?;
            replayer.replay()?;
            since_round = 0;
        }
    }
    check_stop_found(plan, &out)?;
    write_log_control(&dst, manifest.checkpoint, &copies)?;
    Ok(out)
}

/// A broken link, explained: the usual cause is a source that lacks a segment.
fn missing_hint(e: StorageError, copies: &[SegmentCopy]) -> StorageError {
    let Some(prev) = copies.last() else { return e };
    StorageError::Backup(format!(
        "{e}. The log after segment {} is incomplete in the sources given: pass the server's --log-archive-dir (and, for the newest transactions, its log directory) with --archive",
        prev.name
    ))
}

/// A restore to the transaction before a drop that finds no such drop restores nothing usable.
fn check_stop_found(plan: &RestorePlan, out: &LogCopy) -> Result<(), StorageError> {
    if let StopAt::BeforeDrop(ns) = &plan.stop
        && out.stopped_before.is_none()
    {
        return Err(StorageError::Backup(format!(
            "no transaction after the backup's checkpoint drops {ns:?} in the backup or the archives given, so there is no point before it to stop at (nothing usable was restored in {}; remove it). Check the name with `mangrove log list --ns {ns}`, or use --until",
            plan.target.display()
        )));
    }
    Ok(())
}

/// Writes the restored log's control file: it ends where the last copy ends. Its checkpoint is
/// the backup's, or the newer one an earlier replay round wrote.
fn write_log_control(
    dst: &Path,
    checkpoint: Timestamp,
    copies: &[SegmentCopy],
) -> Result<(), StorageError> {
    let end = copies.last().map(|c| DurableEnd {
        segment: c.first_ts,
        offset: c.end,
        last_ts: c.last_ts,
    });
    let earlier = txlog::read_control(dst)?.map_or(Timestamp::ZERO, |c| c.checkpoint);
    let control = Control {
        newest: end.map_or(Timestamp::ZERO, |e| e.segment),
        checkpoint: checkpoint.max(earlier),
        durable: end,
    };
    txlog::write_control(dst, &control)?;
    txlog::sync_dir(dst)
}
