//! Appending to the log, starting segments, removing the ones a checkpoint covers, and cutting
//! a damaged log when the operator asks for it.
//!
//! Invariants:
//! - Every segment but the newest is complete and fdatasynced before the next one starts, and
//!   the next one's header records where it ended (so the chain check can tell a cut file).
//! - Zero-filling happens before a batch is written (`make_room`), so running out of space
//!   never leaves a batch half visible.
//! - The control file is only ever told what is already durable.
//! - Cutting never deletes: what is cut moves to `log/quarantine-<seconds>/`.
//!
//! Lock order: `ControlHandle::current` is a leaf, held across the control file's write and
//! taken with no engine lock held (see the engine's lock order, `engine.rs`).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::control::{self, Control, DurableEnd};
use super::scan::{LogDamage, LogEnd, LogScan};
use super::segment::{self, Predecessor};
use super::{PREALLOCATE_BYTES, list_segments, name_ts, segment_name};
use crate::{StorageError, Timestamp};

/// The control file and what it last said, shared by the log writer (segment switches, clean
/// shutdown) and the checkpointer (checkpoints).
pub(crate) struct ControlHandle {
    dir: PathBuf,
    current: Mutex<Control>,
}

impl ControlHandle {
    pub(crate) fn new(dir: &Path, current: Control) -> ControlHandle {
        ControlHandle {
            dir: dir.to_path_buf(),
            current: Mutex::new(current),
        }
    }

    /// The checkpoint the control file records: segments it covers may be removed.
    pub(crate) fn checkpoint(&self) -> Timestamp {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .checkpoint
    }

    /// Changes what the control file says, and writes it.
    pub(crate) fn update(&self, change: impl FnOnce(&mut Control)) -> Result<(), StorageError> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = *current;
        change(&mut next);
        debug_assert!(
            next.newest >= current.newest,
            "the newest segment only moves on"
        );
        control::write(&self.dir, &next)?;
        *current = next;
        Ok(())
    }
}

/// The segment being appended to.
pub(crate) struct LogWriter {
    dir: PathBuf,
    file: File,
    first_ts: Timestamp,
    /// Where the next record goes: the end of the valid records.
    len: u64,
    /// The file's size: zeros from `len` up to here.
    allocated: u64,
    /// The newest record's timestamp.
    last_ts: Timestamp,
    segment_bytes: u64,
    control: Arc<ControlHandle>,
}

impl LogWriter {
    /// Opens the log for appending after recovery: cuts a torn tail, then continues the newest
    /// segment, or starts one.
    pub(crate) fn open(
        dir: &Path,
        segment_bytes: u64,
        scan: &LogScan,
        next_ts: Timestamp,
        control: Arc<ControlHandle>,
    ) -> Result<LogWriter, StorageError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::io(format!("cannot create {}", dir.display()), e))?;
        if let Some(torn) = &scan.torn_tail {
            if torn.offset == 0 {
                // A segment whose header was never written: remove it, or it would sit
                // before the next segment as a damaged one.
                std::fs::remove_file(&torn.segment).map_err(|e| {
                    StorageError::io(format!("cannot remove {}", torn.segment.display()), e)
                })?;
            } else {
                cut_file(&torn.segment, torn.offset)?;
            }
        }
        let continues = scan
            .end
            .as_ref()
            .filter(|end| end.version == segment::VERSION);
        let writer = match continues {
            Some(end) => Self::continue_segment(dir, segment_bytes, end, control)?,
            None => {
                let prev = scan.end.as_ref().map(|end| Predecessor {
                    first_ts: end.first_ts,
                    end: end.offset,
                    last_ts: end.last_ts,
                });
                Self::new_segment(dir, segment_bytes, next_ts, prev, control)?
            }
        };
        if scan.control.is_none() {
            writer.control.update(|_| {})?;
        }
        Ok(writer)
    }

    fn continue_segment(
        dir: &Path,
        segment_bytes: u64,
        end: &LogEnd,
        control: Arc<ControlHandle>,
    ) -> Result<LogWriter, StorageError> {
        let open_error = |e| StorageError::io(format!("cannot open {}", end.segment.display()), e);
        let file = OpenOptions::new()
            .write(true)
            .open(&end.segment)
            .map_err(open_error)?;
        let allocated = file.metadata().map_err(open_error)?.len();
        // The scan read this very segment (the data directory is locked), so it knows where
        // the records end; the rest of the file is preallocated zeros.
        assert!(end.offset <= allocated, "valid records end inside the file");
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            file,
            first_ts: end.first_ts,
            len: end.offset,
            allocated,
            last_ts: end.last_ts,
            segment_bytes,
            control,
        })
    }

    fn new_segment(
        dir: &Path,
        segment_bytes: u64,
        first_ts: Timestamp,
        prev: Option<Predecessor>,
        control: Arc<ControlHandle>,
    ) -> Result<LogWriter, StorageError> {
        use std::os::unix::fs::FileExt;
        let path = dir.join(segment_name(first_ts));
        let fail = |what: &str, e| StorageError::io(format!("cannot {what} {}", path.display()), e);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| fail("create", e))?;
        let header = segment::encode_header(first_ts, prev.as_ref());
        file.write_all_at(&header, 0)
            .map_err(|e| fail("write", e))?;
        let mut writer = LogWriter {
            dir: dir.to_path_buf(),
            file,
            first_ts,
            len: header.len() as u64,
            allocated: header.len() as u64,
            last_ts: prev.map_or(Timestamp::ZERO, |p| p.last_ts),
            segment_bytes,
            control,
        };
        // The first stretch of zeros now, so the segment's first commits already overwrite.
        writer.zero_fill_to(writer.len + PREALLOCATE_BYTES.min(segment_bytes))?;
        writer.file.sync_all().map_err(|e| fail("write", e))?;
        // The new file's directory entry must be durable too, or a crash could lose the segment.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StorageError::io(format!("cannot sync {}", dir.display()), e))?;
        // Only now may the control file name it: it exists, durably.
        writer.control.update(|c| {
            c.newest = first_ts;
            if let Some(p) = prev {
                c.durable = Some(DurableEnd {
                    segment: p.first_ts,
                    offset: p.end,
                    last_ts: p.last_ts,
                });
            }
        })?;
        Ok(writer)
    }

    /// Makes sure `extra` more bytes can be written after the records without the file
    /// growing: starts the next segment (named `first_ts`) if this one is full, and zero-fills
    /// ahead, durably. Everything that can run out of disk space happens here, before a
    /// batch is written, so a full disk never makes a batch half visible. The writer also
    /// calls it alone, to probe whether the log can be written again.
    pub(crate) fn make_room(
        &mut self,
        extra: u64,
        first_ts: Timestamp,
    ) -> Result<(), StorageError> {
        if self.len >= self.segment_bytes {
            // Seal the full segment before starting the next, so every segment but the newest
            // is complete on disk.
            self.sync()?;
            let prev = Predecessor {
                first_ts: self.first_ts,
                end: self.len,
                last_ts: self.last_ts,
            };
            let control = self.control.clone();
            *self =
                Self::new_segment(&self.dir, self.segment_bytes, first_ts, Some(prev), control)?;
        }
        let needed = self.len + extra;
        if needed <= self.allocated {
            return Ok(());
        }
        self.zero_fill_to(needed + PREALLOCATE_BYTES.min(self.segment_bytes))?;
        // Durable now, so the batch's own fdatasync only writes data, and a filesystem that
        // allocates blocks at writeback reports a full disk here rather than there.
        self.sync()
    }

    /// Writes zeros from the file's end up to `target`.
    fn zero_fill_to(&mut self, target: u64) -> Result<(), StorageError> {
        use std::os::unix::fs::FileExt;
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut at = self.allocated.max(self.len);
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..n], at).map_err(|e| {
                StorageError::io("cannot preallocate the transaction log".into(), e)
            })?;
            at += n as u64;
        }
        self.allocated = self.allocated.max(target);
        Ok(())
    }

    /// Appends a batch of sealed records, the first with timestamp `first_ts` and the last
    /// with `last_ts`. On failure nothing of the batch counts as written, and the next append
    /// overwrites it.
    pub(crate) fn append(
        &mut self,
        batch: &[u8],
        first_ts: Timestamp,
        last_ts: Timestamp,
    ) -> Result<(), StorageError> {
        use std::os::unix::fs::FileExt;
        assert!(
            first_ts <= last_ts && last_ts > self.last_ts,
            "batches append in timestamp order"
        );
        self.make_room(batch.len() as u64, first_ts)?;
        if let Err(e) = self.file.write_all_at(batch, self.len) {
            // Whatever part of the batch reached the file must not stay there: a later append
            // would follow garbage and turn a torn tail into corruption in the middle. The
            // next `make_room` zero-fills again from the end of the records.
            let _ = self.file.set_len(self.len);
            self.allocated = self.len;
            return Err(StorageError::io(
                "cannot append to the transaction log".into(),
                e,
            ));
        }
        self.len += batch.len() as u64;
        self.last_ts = last_ts;
        debug_assert!(self.len <= self.allocated);
        Ok(())
    }

    pub(crate) fn sync(&mut self) -> Result<(), StorageError> {
        self.file
            .sync_data()
            .map_err(|e| StorageError::io("cannot fdatasync the transaction log".into(), e))
    }

    /// At a clean shutdown, after the last batch's fdatasync: records the exact end in the
    /// control file, so the next start can tell if anything of it goes missing.
    pub(crate) fn record_clean_end(&mut self) -> Result<(), StorageError> {
        self.sync()?;
        let end = DurableEnd {
            segment: self.first_ts,
            offset: self.len,
            last_ts: self.last_ts,
        };
        self.control.update(|c| c.durable = Some(end))
    }
}

/// Truncates a segment to `len` durably (a torn tail).
fn cut_file(segment: &Path, len: u64) -> Result<(), StorageError> {
    let file = OpenOptions::new()
        .write(true)
        .open(segment)
        .map_err(|e| StorageError::io(format!("cannot open {}", segment.display()), e))?;
    file.set_len(len)
        .and_then(|_| file.sync_all())
        .map_err(|e| StorageError::io(format!("cannot truncate {}", segment.display()), e))
}

/// What retention keeps of the segments a checkpoint covers (mongod's oplog size and minimum
/// retention, plus Mangrove's own count of segments kept).
#[derive(Clone, Debug)]
pub(crate) struct Retention {
    /// The newest this many covered segments are kept whatever their size or age.
    pub keep_segments: usize,
    /// Covered segments are removed, oldest first, only while all segments together are
    /// larger than this ...
    pub size_limit_bytes: u64,
    /// ... and only if their newest record is at least this old.
    pub min_retention: Duration,
    /// The wall clock now, in milliseconds since the epoch.
    pub now_ms: i64,
}

/// What one removal did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Removal {
    pub removed: usize,
    /// Time spent removing files (the rest was deciding).
    pub removing: Duration,
}

/// Removes segments every record of which is at or before `checkpoint` (recovery no longer
/// needs them) that `retention` does not keep, oldest first. Never the segment being appended
/// to, never one the checkpoint does not cover.
pub(crate) fn remove_covered_segments(
    dir: &Path,
    checkpoint: Timestamp,
    retention: &Retention,
) -> Result<Removal, StorageError> {
    let segments = list_segments(dir)?;
    // A segment removed meanwhile (there is one remover, but be lenient) weighs nothing.
    let sizes: Vec<u64> = segments
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .collect();
    let mut total: u64 = sizes.iter().sum();
    // A segment's records all come before the next segment's first record, whose timestamp
    // its name gives: covered iff that name is at most checkpoint + 1.
    let covered = segments
        .windows(2)
        .take_while(|pair| name_ts(&pair[1]).0 <= checkpoint.0.saturating_add(1))
        .count();
    let removable = covered.saturating_sub(retention.keep_segments);
    let min_retention_ms = retention.min_retention.as_millis() as i64;
    let mut removal = Removal::default();
    for i in 0..removable {
        if total <= retention.size_limit_bytes {
            break;
        }
        // The next segment's name is a commit timestamp no older than this segment's newest
        // record, and commit timestamps count wall-clock seconds: a bound on its age that
        // never removes a segment too early.
        let newest_ms = i64::from(name_ts(&segments[i + 1]).seconds()) * 1000;
        if min_retention_ms > 0 && retention.now_ms.saturating_sub(newest_ms) < min_retention_ms {
            break; // the segments after it are younger still
        }
        let started = Instant::now();
        let path = &segments[i];
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StorageError::io(
                    format!("cannot remove {}", path.display()),
                    e,
                ));
            }
        }
        removal.removing += started.elapsed();
        removal.removed += 1;
        total -= sizes[i];
    }
    if removal.removed > 0 {
        let started = Instant::now();
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StorageError::io(format!("cannot sync {}", dir.display()), e))?;
        removal.removing += started.elapsed();
    }
    Ok(removal)
}

/// What cutting a damaged log moved away.
#[derive(Clone, Debug, Default)]
pub struct CutReport {
    pub quarantine: PathBuf,
    /// Files moved whole, and the part of a segment cut from an offset.
    pub moved: Vec<String>,
}

/// Continues past damage at the operator's request: moves everything from the damage on into
/// `log/quarantine-<seconds>/` (the damaged segment's tail as a file of its own, later segments
/// whole) and rewrites the control file to match what is left.
pub fn cut_at_damage(dir: &Path, damage: &LogDamage) -> Result<CutReport, StorageError> {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let quarantine = dir.join(format!("quarantine-{seconds}"));
    std::fs::create_dir_all(&quarantine)
        .map_err(|e| StorageError::io(format!("cannot create {}", quarantine.display()), e))?;
    let mut report = CutReport {
        quarantine: quarantine.clone(),
        moved: Vec::new(),
    };
    if let Some((segment, offset)) = &damage.cut_from {
        for path in list_segments(dir)?.into_iter().filter(|p| p >= segment) {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            if path == *segment && *offset >= segment::HEADER_LEN as u64 {
                move_tail(
                    &path,
                    *offset,
                    &quarantine.join(format!("{name}.from-{offset}")),
                )?;
                report.moved.push(format!("{name} from offset {offset}"));
            } else {
                std::fs::rename(&path, quarantine.join(&name))
                    .map_err(|e| StorageError::io(format!("cannot move {}", path.display()), e))?;
                report.moved.push(name);
            }
        }
    }
    // The control file is rebuilt from what is left at the next scan.
    let control = control::path(dir);
    if control.exists() {
        std::fs::rename(&control, quarantine.join(control::CONTROL_FILE))
            .map_err(|e| StorageError::io(format!("cannot move {}", control.display()), e))?;
        report.moved.push(control::CONTROL_FILE.into());
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(format!("cannot sync {}", dir.display()), e))?;
    Ok(report)
}

/// Copies a segment's bytes from `offset` to `to`, then truncates the segment there.
fn move_tail(segment: &Path, offset: u64, to: &Path) -> Result<(), StorageError> {
    let bytes = std::fs::read(segment)
        .map_err(|e| StorageError::io(format!("cannot read {}", segment.display()), e))?;
    let tail = bytes.get(offset as usize..).unwrap_or_default();
    let mut out = File::create(to)
        .map_err(|e| StorageError::io(format!("cannot create {}", to.display()), e))?;
    std::io::Write::write_all(&mut out, tail)
        .and_then(|_| out.sync_all())
        .map_err(|e| StorageError::io(format!("cannot write {}", to.display()), e))?;
    cut_file(segment, offset)
}
