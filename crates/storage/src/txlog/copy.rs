//! Copying log segments record by record, each record checked: for online backups, the log
//! archive, and point-in-time restore.
//!
//! A copy keeps a segment's header as it is (so the copies still form the chain the scan
//! checks: each header names its predecessor and where that one ended) and then whole records
//! only, up to the first record the caller does not want, or the end of the records. It never
//! copies the zeros a live segment is preallocated with.
//!
//! Invariants:
//! - Every record copied passed its checksum; a damaged record before the end of what is
//!   wanted fails the copy with the segment and offset, and nothing is written under the final
//!   name.
//! - A copy is written under `<name>.tmp`, fdatasynced, then renamed: a file with a segment's
//!   name is always whole. The caller syncs the directory once after its last rename.
//! - A record past `durable` may be one the log writer is still writing: bytes that do not form
//!   a valid record there end the copy instead of failing it.
//!
//! Lock order: takes no lock.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::reader::{SegmentCursor, Step};
use super::segment::Predecessor;
use super::{LogRecord, name_ts};
use crate::{StorageError, Timestamp};

/// What one segment's copy holds.
#[derive(Clone, Debug)]
pub struct SegmentCopy {
    /// The file name, the same in the source and the copy.
    pub name: String,
    pub first_ts: Timestamp,
    /// What its header says of the segment before it.
    pub prev: Option<Predecessor>,
    /// Where its records end: the copy's length.
    pub end: u64,
    /// Its newest record's timestamp (or, with no record, its predecessor's).
    pub last_ts: Timestamp,
    pub last_wall_ms: i64,
    pub records: u64,
    pub crc32c: u32,
}

impl SegmentCopy {
    /// What the next segment's header must say about this one.
    pub fn as_predecessor(&self) -> Predecessor {
        Predecessor {
            first_ts: self.first_ts,
            end: self.end,
            last_ts: self.last_ts,
        }
    }
}

/// How a copy ended.
#[derive(Debug)]
pub enum CopyEnd {
    /// At the end of the segment's records.
    Records,
    /// At the first record not wanted (returned).
    Unwanted(Box<LogRecord>),
    /// At bytes after the durable end that are not a valid record: a write in progress, or
    /// a crash's torn write (see [`CopyLimit::durable`]).
    NotARecord { offset: u64, detail: String },
}

/// How far a copy goes.
pub struct CopyLimit<'a> {
    /// The log's durable end when the copy started: nothing after it is copied (see the
    /// invariants).
    pub durable: Timestamp,
    /// The segment is the newest of a log that may have been live: bytes that are not a
    /// record end it wherever they are (a torn write), and the caller says so.
    pub open_tail: bool,
    /// Whether a record is wanted. The first one that is not ends the copy (records are in
    /// timestamp order), and is returned.
    pub keep: &'a mut dyn FnMut(&LogRecord) -> bool,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StorageError {
    StorageError::io(format!("cannot {what} {}", path.display()), e)
}

/// The output of a copy, checksummed as it is written.
struct Out {
    file: BufWriter<File>,
    path: PathBuf,
    crc: u32,
    len: u64,
}

impl Out {
    fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.file
            .write_all(bytes)
            .map_err(|e| io("write", &self.path, e))?;
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }
}

/// Copies the segment `src` to `dst` (a file path) within `limit`. Returns the copy and how
/// it ended.
pub fn copy_segment(
    src: &Path,
    dst: &Path,
    limit: CopyLimit<'_>,
) -> Result<(SegmentCopy, CopyEnd), StorageError> {
    let Some(mut cursor) = SegmentCursor::open(src)? else {
        return Err(StorageError::Corrupt {
            segment: src.to_path_buf(),
            offset: 0,
            detail: "the segment disappeared while it was being copied".into(),
        });
    };
    let raw = File::open(src).map_err(|e| io("open", src, e))?;
    let tmp = dst.with_extension("tmp");
    let file = File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
    let mut out = Out {
        file: BufWriter::with_capacity(1 << 20, file),
        path: tmp.clone(),
        crc: 0,
        len: 0,
    };
    let mut header = vec![0u8; cursor.header.len];
    raw.read_exact_at(&mut header, 0)
        .map_err(|e| io("read", src, e))?;
    out.write(&header)?;
    let mut copy = SegmentCopy {
        name: file_name(src),
        first_ts: name_ts(src),
        prev: cursor.header.prev,
        end: 0,
        last_ts: cursor.last_ts,
        last_wall_ms: 0,
        records: 0,
        crc32c: 0,
    };
    let ended = copy_records(&mut cursor, &raw, &mut out, &mut copy, limit)?;
    copy.end = out.len;
    copy.crc32c = out.crc;
    let file = out
        .file
        .into_inner()
        .map_err(|e| io("write", &tmp, e.into_error()))?;
    file.sync_data().map_err(|e| io("fdatasync", &tmp, e))?;
    std::fs::rename(&tmp, dst).map_err(|e| io("rename", &tmp, e))?;
    Ok((copy, ended))
}

fn copy_records(
    cursor: &mut SegmentCursor,
    raw: &File,
    out: &mut Out,
    copy: &mut SegmentCopy,
    limit: CopyLimit<'_>,
) -> Result<CopyEnd, StorageError> {
    let mut bytes = Vec::new();
    loop {
        let (record, len) = match cursor.peek()? {
            Step::Record { record, len } => (record, len),
            Step::End => return Ok(CopyEnd::Records),
            Step::Bad { detail, .. } if limit.open_tail || cursor.last_ts >= limit.durable => {
                let offset = cursor.offset;
                return Ok(CopyEnd::NotARecord { offset, detail });
            }
            Step::Bad { detail, .. } => {
                return Err(StorageError::Corrupt {
                    segment: cursor.path.clone(),
                    offset: cursor.offset,
                    detail,
                });
            }
        };
        if record.ts > limit.durable {
            return Ok(CopyEnd::Records); // not durable yet when the copy began
        }
        if !(limit.keep)(&record) {
            return Ok(CopyEnd::Unwanted(Box::new(record)));
        }
        bytes.resize(len as usize, 0);
        raw.read_exact_at(&mut bytes, cursor.offset)
            .map_err(|e| io("read", &cursor.path, e))?;
        out.write(&bytes)?;
        cursor.consume(len, record.ts);
        copy.last_ts = record.ts;
        copy.last_wall_ms = record.wall_ms;
        copy.records += 1;
    }
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Makes the renames into `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", dir, e))
}

/// Of a log's segments (oldest first), the ones holding the records after `after` up to
/// `until`: from the last one named at or before the first timestamp after `after` (it may
/// also hold older records, which replay skips) to the last one named at or before `until`,
/// and always that first one.
pub(crate) fn segments_between(
    segments: &[PathBuf],
    after: Timestamp,
    until: Timestamp,
) -> &[PathBuf] {
    let first_after = after.0.saturating_add(1);
    let start = segments
        .iter()
        .take_while(|p| name_ts(p).0 <= first_after)
        .count()
        .saturating_sub(1);
    let end = segments.iter().take_while(|p| name_ts(p) <= until).count();
    // At least the first one, even if it holds no record yet: the chain continues from it.
    let end = end.max(start + 1).min(segments.len());
    segments.get(start..end).unwrap_or_default()
}

/// Copies the records after `after` up to `until` (at most the durable end) of the log in
/// `src` into `dst` (a new directory): whole segments, the last one cut after `until`.
/// `progress(bytes)` after each segment.
pub(crate) fn copy_log_range(
    src: &Path,
    dst: &Path,
    after: Timestamp,
    until: Timestamp,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<SegmentCopy>, StorageError> {
    std::fs::create_dir_all(dst).map_err(|e| io("create", dst, e))?;
    let segments = super::list_segments(src)?;
    let mut copies: Vec<SegmentCopy> = Vec::new();
    let mut bytes = 0;
    for path in segments_between(&segments, after, until) {
        let mut keep = |r: &LogRecord| r.ts <= until;
        let limit = CopyLimit {
            durable: until,
            open_tail: false,
            keep: &mut keep,
        };
        let (copy, _) = copy_segment(path, &dst.join(file_name(path)), limit)?;
        check_link(copies.last(), &copy, path)?;
        bytes += copy.end;
        progress(bytes);
        copies.push(copy);
    }
    check_starts_after(src, &copies, after)?;
    sync_dir(dst)?;
    Ok(copies)
}

/// The copied log must begin no later than the first record after `after` (whatever copies
/// it, a pin keeps those segments; this checks that it did).
pub(crate) fn check_starts_after(
    src: &Path,
    copies: &[SegmentCopy],
    after: Timestamp,
) -> Result<(), StorageError> {
    // The segment holding `after` itself (or the newest) is always among the copies: a log
    // always has a segment, and one named at or before `after` is only removed once a later
    // one exists.
    let complete = match copies.first() {
        None => false,
        Some(first) => {
            first.first_ts.0 <= after.0.saturating_add(1)
                || first.prev.is_none_or(|p| p.last_ts <= after)
        }
    };
    if complete {
        return Ok(());
    }
    Err(StorageError::Backup(format!(
        "{} no longer holds every record after timestamp {} (its oldest segment is {}): a segment was removed while it was needed; nothing usable was written",
        src.display(),
        after.0,
        copies.first().map_or("none", |c| c.name.as_str())
    )))
}

/// Checks that `next` continues `prev` as its header says: nothing missing or cut between.
pub(crate) fn check_link(
    prev: Option<&SegmentCopy>,
    next: &SegmentCopy,
    path: &Path,
) -> Result<(), StorageError> {
    let (Some(prev), Some(said)) = (prev, next.prev) else {
        return Ok(());
    };
    if said == prev.as_predecessor() {
        return Ok(());
    }
    Err(StorageError::Corrupt {
        segment: path.to_path_buf(),
        offset: 0,
        detail: format!(
            "its header says the segment before it, {}, ended at offset {} with the record of {}, but the copy of {} ends at offset {} with {}: a segment is missing or cut",
            super::segment_name(said.first_ts),
            said.end,
            said.last_ts.0,
            prev.name,
            prev.end,
            prev.last_ts.0
        ),
    })
}

/// Copies every sealed segment of the log in `log_dir` (all but the newest) that `archive`
/// does not hold yet into it, checked and whole. Returns how many it copied.
pub(crate) fn archive_sealed(log_dir: &Path, archive: &Path) -> Result<usize, StorageError> {
    std::fs::create_dir_all(archive).map_err(|e| io("create", archive, e))?;
    let segments = super::list_segments(log_dir)?;
    let mut copied = 0;
    for pair in segments.windows(2) {
        let dst = archive.join(file_name(&pair[0]));
        if dst.exists() {
            continue;
        }
        let mut keep = |_: &LogRecord| true;
        let limit = CopyLimit {
            durable: Timestamp(u64::MAX),
            open_tail: false,
            keep: &mut keep,
        };
        let (copy, _) = copy_segment(&pair[0], &dst, limit)?;
        if let Some(next) = SegmentCursor::open(&pair[1])?
            && let Some(said) = next.header.prev
            && said != copy.as_predecessor()
        {
            let _ = std::fs::remove_file(&dst);
            return Err(StorageError::Corrupt {
                segment: pair[0].clone(),
                offset: copy.end,
                detail: format!(
                    "the next segment says this one ends at offset {}, but its records end at {}",
                    said.end, copy.end
                ),
            });
        }
        copied += 1;
    }
    if copied > 0 {
        sync_dir(archive)?;
    }
    Ok(copied)
}
