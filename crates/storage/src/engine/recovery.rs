//! Opening a data directory: the base store's checkpoint, then the log replayed on top.
//!
//! Invariants:
//! - Nothing is served that the log cannot account for: damage the scan cannot explain as a
//!   torn write stops the open with the file and offset, unless the operator asked to cut the
//!   log there (`truncate_damaged_log`), and then what is cut is moved aside and reported.
//! - A torn tail is cut, and the report says what it held.
//! - Records at or before the checkpoint are skipped; the rest replay in log order, which is
//!   timestamp order.
//!
//! Lock order: runs before the engine (and its threads) exist; the data directory's lock file
//! is taken first and held for the engine's lifetime. See the engine's lock order
//! (`engine.rs`).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mangrove_bson::PartialFilters;

use super::catalog::{CollectionInfo, compile_index};
use super::replay::replay;
use super::versions::{State, VersionChain};
use super::{Engine, EngineOptions, split_ns};
use crate::base::BaseStore;
use crate::txlog::{
    self, Control, ControlHandle, CutReport, LogDamage, LogScan, LogWriter, TornTail,
};
use crate::{StorageError, Timestamp};

/// What recovery found, for the start-up log.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    pub records: u64,
    /// Records newer than the checkpoint, the ones actually applied.
    pub replayed: u64,
    pub checkpoint: Timestamp,
    pub log_bytes: u64,
    pub segments: usize,
    /// Segments the checkpoint covers, kept as history, whose records were not read.
    pub segments_skipped: usize,
    /// A torn final write that was cut off.
    pub torn_tail: Option<TornTail>,
    /// Damage the operator chose to cut the log at (`truncate_damaged_log`), and what moved.
    pub cut: Option<(LogDamage, CutReport)>,
    pub last_commit: Timestamp,
    pub elapsed: Duration,
}

impl Engine {
    /// Opens the data directory: takes its lock, replays the transaction log, and starts the
    /// log writer. `progress(done, total)` reports replay in log bytes.
    pub fn open(
        options: EngineOptions,
        progress: impl FnMut(u64, u64),
    ) -> Result<(Engine, RecoveryReport), StorageError> {
        let Some(dir) = options.data_dir.clone() else {
            return Ok((Self::in_memory(), RecoveryReport::default()));
        };
        let started = Instant::now();
        std::fs::create_dir_all(&dir).map_err(|e| {
            StorageError::io(format!("cannot create data directory {}", dir.display()), e)
        })?;
        let lock = lock_data_dir(&dir)?;
        let base = Arc::new(BaseStore::open(
            &dir.join("base.redb"),
            options.cache_bytes / 4,
        )?);
        let mut state = load_base(base.clone(), &options.partial_filters)?;
        if base.needs_natural_order() && !options.read_only {
            super::natural::upgrade_base(&base, &state)?;
        }
        super::natural::load_positions(&mut state)?;
        let log_dir = dir.join("log");
        let mut report = RecoveryReport::default();
        let scan = scan_and_cut(
            &log_dir,
            &options,
            state.checkpoint_ts,
            progress,
            &mut report,
        )?;
        replay_log(&mut state, &scan, &mut report, &options.partial_filters)?;
        let (writer, control) = match options.read_only {
            true => (None, None),
            false => {
                let (writer, control) = open_writer(&log_dir, &options, &scan, &state)?;
                (Some(writer), Some(control))
            }
        };
        report.elapsed = started.elapsed();
        let engine = Self::start(state, writer, control, Some(lock), options);
        Ok((engine, report))
    }
}

/// The state as of the base store's checkpoint: its catalog, with every key left to the base.
fn load_base(base: Arc<BaseStore>, partial: &PartialFilters) -> Result<State, StorageError> {
    let mut state = State::default();
    let (checkpoint_ts, next_coll_id, collections) = base.load()?;
    for c in collections {
        let (db, name) = split_ns(&c.ns);
        let mut indexes = Vec::with_capacity(c.indexes.len());
        for (id, spec) in c.indexes {
            indexes.push(compile_index(spec, id, partial)?);
            state.collections.insert(id, BTreeMap::new());
        }
        let info = Arc::new(CollectionInfo {
            db: db.to_string(),
            name: name.to_string(),
            options: Arc::new(c.options),
            indexes,
            id: c.id,
        });
        state.collections.insert(c.id, BTreeMap::new());
        let mut chain = VersionChain::new();
        chain.install_recovered(c.ts, Some(info));
        state.catalog.insert(c.ns, chain);
    }
    state.next_coll_id = next_coll_id;
    state.checkpoint_ts = checkpoint_ts;
    state.last_commit = checkpoint_ts;
    state.base = Some(base);
    Ok(state)
}

/// Scans the log; at damage, either refuses (the default) or cuts the log there and scans
/// what is left.
fn scan_and_cut(
    log_dir: &Path,
    options: &EngineOptions,
    checkpoint: Timestamp,
    progress: impl FnMut(u64, u64),
    report: &mut RecoveryReport,
) -> Result<LogScan, StorageError> {
    let scan = txlog::scan_log_for_recovery(log_dir, checkpoint, progress)?;
    let Some(damage) = scan.damage.clone() else {
        return Ok(scan);
    };
    if !options.truncate_damaged_log || options.read_only {
        return Err(damage.to_error());
    }
    let cut = txlog::cut_at_damage(log_dir, &damage)?;
    report.cut = Some((damage, cut));
    let mut scan = txlog::scan_log_for_recovery(log_dir, checkpoint, |_, _| {})?;
    // The cut moved the control file aside; it is rebuilt from what is left. Anything else
    // still wrong is damage the cut could not remove.
    match &scan.damage {
        Some(d) if d.cut_from.is_some() => Err(d.to_error()),
        _ => {
            scan.damage = None;
            scan.control = None;
            Ok(scan)
        }
    }
}

fn replay_log(
    state: &mut State,
    scan: &LogScan,
    report: &mut RecoveryReport,
    partial: &PartialFilters,
) -> Result<(), StorageError> {
    report.records = scan.records.len() as u64;
    report.log_bytes = scan.bytes;
    report.segments = scan.segments;
    report.segments_skipped = scan.skipped_segments;
    report.torn_tail = scan.torn_tail.clone();
    // Records the checkpoint already holds are skipped; the log may still have them when
    // segments are retained, or when a crash came between checkpoint and log cleanup.
    let checkpoint = state.checkpoint_ts;
    for (pos, record) in scan.records.iter().filter(|(_, r)| r.ts > checkpoint) {
        report.replayed += 1;
        replay(state, record.ts, &record.ops, partial).map_err(|detail| StorageError::Corrupt {
            segment: pos.segment.clone(),
            offset: pos.offset,
            detail,
        })?;
        state.last_commit = record.ts;
    }
    if state.last_commit == Timestamp::ZERO {
        state.last_commit = Timestamp::ZERO.next_after();
    }
    report.last_commit = state.last_commit;
    report.checkpoint = state.checkpoint_ts;
    Ok(())
}

/// The log writer, continuing where the scan found the log's end, and the control file it
/// shares with the checkpointer.
fn open_writer(
    log_dir: &Path,
    options: &EngineOptions,
    scan: &LogScan,
    state: &State,
) -> Result<(LogWriter, Arc<ControlHandle>), StorageError> {
    let initial = scan.control.unwrap_or(Control {
        newest: scan.end.as_ref().map_or(Timestamp::ZERO, |e| e.first_ts),
        checkpoint: state.checkpoint_ts,
        durable: None,
    });
    let control = Arc::new(ControlHandle::new(log_dir, initial));
    let writer = LogWriter::open(
        log_dir,
        options.segment_bytes,
        scan,
        state.last_commit.next_after(),
        control.clone(),
    )?;
    Ok((writer, control))
}
fn lock_data_dir(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join("mangrove.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StorageError::io(format!("cannot open lock file {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::Locked {
            dir: dir.to_path_buf(),
            lock: path,
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(StorageError::io(
            format!("cannot lock {}", path.display()),
            e,
        )),
    }
}
