//! Online backups: one checkpoint of the base store plus the log after it, up to one durable
//! commit, copied while the server runs and commits.
//!
//! How it stays consistent without stopping anyone: under the `checkpointing` lock (for an
//! instant, never across the copy) the backup opens a read transaction on the base store,
//! which holds the current checkpoint C for as long as the copy takes, and pins the log after
//! C, so that no later checkpoint removes a segment it still has to copy. The log is then
//! copied from C up to the durable end D read after the pin; records after D are not copied,
//! even when they are already on disk. Restoring replays C's base plus the log to D: exactly
//! the transactions committed durably up to D.
//!
//! Invariants:
//! - While a pin is held, `trim_history` removes no segment holding a record after the pin.
//! - A backup directory is complete when, and only when, its manifest exists: the manifest is
//!   written last, after every file it lists is durable.
//!
//! Lock order: `checkpointing` → `state` (read, only to clone the base store's handle) →
//! redb's locks → `HistoryPins::pins` (a leaf). See the engine's lock order (`engine.rs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Engine, lock_mutex, wall_clock_ms};
use crate::backup::{self, BackupFile, Manifest};
use crate::txlog::{self, Control, DurableEnd};
use crate::{StorageError, Timestamp};

/// Timestamps after which the log must be kept whatever retention says, each with a count.
#[derive(Default)]
pub(super) struct HistoryPins {
    pins: Mutex<BTreeMap<Timestamp, usize>>,
}

impl HistoryPins {
    /// The checkpoint to trim the log to: `checkpoint`, or the oldest pin if older.
    pub(super) fn bound(&self, checkpoint: Timestamp) -> Timestamp {
        let pins = lock_mutex(&self.pins);
        pins.keys()
            .next()
            .map_or(checkpoint, |p| checkpoint.min(*p))
    }
}

/// Keeps the log after `ts` until dropped.
struct HistoryPin<'a> {
    pins: &'a HistoryPins,
    ts: Timestamp,
}

impl Drop for HistoryPin<'_> {
    fn drop(&mut self) {
        let mut pins = lock_mutex(&self.pins.pins);
        if let Some(n) = pins.get_mut(&self.ts) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.ts);
            }
        }
    }
}

/// A backup's progress: what it is copying, and bytes done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupPhase {
    Base,
    Log,
}

/// What one backup copied.
#[derive(Clone, Debug)]
pub struct BackupReport {
    pub manifest: Manifest,
    pub elapsed: Duration,
}

impl Engine {
    fn pin_history(&self, ts: Timestamp) -> HistoryPin<'_> {
        let pins = &self.inner.history_pins;
        *lock_mutex(&pins.pins).entry(ts).or_insert(0) += 1;
        HistoryPin { pins, ts }
    }

    /// Copies a consistent backup into `dest` (created; it must be empty) while commits go on:
    /// the base store's current checkpoint, then the log after it up to the durable end.
    /// `progress(phase, bytes)` as it goes.
    pub fn backup(
        &self,
        dest: &Path,
        mut progress: impl FnMut(BackupPhase, u64),
    ) -> Result<BackupReport, StorageError> {
        let started = Instant::now();
        let data_dir = self.inner.options.data_dir.clone().ok_or_else(|| {
            StorageError::Backup("an in-memory engine has no files to back up".into())
        })?;
        backup::prepare_empty_dir(dest)?;
        let (snapshot, _pin) = {
            let _no_checkpoint = lock_mutex(&self.inner.checkpointing);
            let base = self
                .read_state()
                .base
                .clone()
                .ok_or_else(|| StorageError::Backup("this engine has no base store".into()))?;
            let snapshot = base.snapshot()?;
            let pin = self.pin_history(snapshot.checkpoint);
            (snapshot, pin)
        };
        let until = self.last_durable();
        let base = snapshot.copy_to(&dest.join(backup::BASE_FILE), &mut |bytes| {
            progress(BackupPhase::Base, bytes)
        })?;
        let checkpoint = snapshot.checkpoint;
        drop(snapshot);
        let log_dst = dest.join(backup::LOG_DIR);
        let segments = txlog::copy_log_range(
            &data_dir.join("log"),
            &log_dst,
            checkpoint,
            until,
            &mut |bytes| progress(BackupPhase::Log, bytes),
        )?;
        let end = segments.last().map(|s| DurableEnd {
            segment: s.first_ts,
            offset: s.end,
            last_ts: s.last_ts,
        });
        let control = Control {
            newest: end.map_or(Timestamp::ZERO, |e| e.segment),
            checkpoint,
            durable: end,
        };
        txlog::write_control(&log_dst, &control)?;
        let manifest = manifest_of(dest, checkpoint, base.values, &segments)?;
        backup::write_manifest(dest, &manifest)?;
        Ok(BackupReport {
            manifest,
            elapsed: started.elapsed(),
        })
    }
}

/// The manifest of a backup whose files are all written: each with its size and crc32c.
fn manifest_of(
    dest: &Path,
    checkpoint: Timestamp,
    base_values: u64,
    segments: &[txlog::SegmentCopy],
) -> Result<Manifest, StorageError> {
    let mut files = vec![backup::describe_file(dest, backup::BASE_FILE)?];
    for s in segments {
        files.push(BackupFile {
            path: format!("{}/{}", backup::LOG_DIR, s.name),
            bytes: s.end,
            crc32c: s.crc32c,
        });
    }
    files.push(backup::describe_file(dest, &backup::control_path())?);
    let last = segments.last();
    Ok(Manifest {
        created_ms: wall_clock_ms(),
        checkpoint,
        until: last.map_or(checkpoint, |s| s.last_ts.max(checkpoint)),
        until_wall_ms: last.map_or(0, |s| s.last_wall_ms),
        records: segments.iter().map(|s| s.records).sum(),
        base_values,
        files,
    })
}
