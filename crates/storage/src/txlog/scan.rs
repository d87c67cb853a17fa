//! Reading a log directory: every record, checked, in order, and a verdict on its end.
//!
//! Three questions decide whether a log can be replayed as it is:
//! - **Is every segment there?** Each v2 segment names its predecessor and where that one's
//!   records ended, and the control file names the newest segment and an end known durable.
//!   A missing, truncated, renamed or reordered segment breaks one of those links; the damage
//!   names the file that is actually missing or cut, not an intact neighbour.
//! - **Is a damaged record at the very end torn, or damaged?** A group commit is written into
//!   zero-filled space and acknowledged only after its fdatasync, and a crash before that leaves
//!   whole pages of it unwritten, still zeros. So a final record whose header is still zeros,
//!   that runs past the last written byte, or that contains a whole zero page was cut short by
//!   the crash and never acknowledged: a torn tail, which recovery cuts, saying what it cut. A
//!   record written whole that fails its checksum was damaged afterwards and was probably
//!   acknowledged: that stops start-up (see [`LogDamage`]). Known limit: a record holding an
//!   aligned 4 KiB run of zeros (a large binary of zeros) that is also damaged reads as torn.
//! - **Is anything damaged before the end?** Any bad record followed by a valid one, in any
//!   segment but the newest, or before the control file's durable end, is damage.
//!
//! The scan stops at the first damage; `records` then holds only what comes before it.
//!
//! Recovery ([`scan_log_for_recovery`]) does not read the records of segments wholly at or
//! before the checkpoint (retention keeps up to `history_size_bytes` of them for change
//! streams; parsing and holding them would make start-up time and memory grow with the
//! history): it reads their headers, so the chain is still checked, and their records are
//! read by whoever needs them (`mangrove log verify` reads everything, history readers read
//! incrementally).

use std::path::{Path, PathBuf};

use bson::RawDocument;

use super::control::{self, Control};
use super::segment::{self, SegmentHeader};
use super::{
    LogRecord, MAX_RECORD_LEN, PAYLOAD_PREFIX_LEN, RECORD_HEADER_LEN, RecordPos, list_segments,
    record_crc, segment_name,
};
use crate::{StorageError, Timestamp};

/// The page cache writes back whole pages: a crash leaves a page of a batch written or not.
const PAGE: usize = 4096;
/// A disk persists whole sectors: the finest grain in which a write can be torn.
const SECTOR: usize = 512;

/// A final record cut short by a crash, which recovery cuts off.
#[derive(Clone, Debug, PartialEq)]
pub struct TornTail {
    pub segment: PathBuf,
    /// Where the valid records end: what is kept.
    pub offset: u64,
    /// Bytes written after it, not counting preallocated zeros.
    pub bytes: u64,
    /// What can still be read of the torn record: its commit timestamp, session and
    /// transaction number, as far as they were written.
    pub record: String,
}

/// Why the log cannot be replayed as it is, and where it would have to be cut to replay the
/// intact part before it.
#[derive(Clone, Debug, PartialEq)]
pub struct LogDamage {
    /// The file that is damaged or missing.
    pub segment: PathBuf,
    pub offset: u64,
    pub detail: String,
    /// The first byte that cannot be kept: (segment, offset). `None` when nothing on disk is
    /// wrong but something is missing at the end (a removed newest segment, a lost control
    /// file), so continuing means accepting the loss without cutting anything.
    pub cut_from: Option<(PathBuf, u64)>,
}

impl LogDamage {
    pub fn to_error(&self) -> StorageError {
        StorageError::Corrupt {
            segment: self.segment.clone(),
            offset: self.offset,
            detail: self.detail.clone(),
        }
    }
}

/// The newest segment: where the next record goes, and what the next segment's header must
/// say about it.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEnd {
    pub segment: PathBuf,
    pub first_ts: Timestamp,
    pub version: u32,
    /// Where its valid records end.
    pub offset: u64,
    /// The newest record's timestamp at that point.
    pub last_ts: Timestamp,
}

/// Every record of a log directory, checked, in order.
pub struct LogScan {
    pub records: Vec<(RecordPos, LogRecord)>,
    pub torn_tail: Option<TornTail>,
    pub end: Option<LogEnd>,
    pub segments: usize,
    pub bytes: u64,
    pub control: Option<Control>,
    /// The first damage found; `records` stop before it.
    pub damage: Option<LogDamage>,
    /// Segments the checkpoint covers whose records were not read (recovery only).
    pub skipped_segments: usize,
}

/// A damaged record at the end of a segment's valid records.
struct TailDamage {
    offset: u64,
    detail: String,
    /// Some well-formed record with a later timestamp starts after it.
    valid_after: bool,
    torn: bool,
    /// Bytes from the damage to the last non-zero byte.
    written: u64,
}

/// One segment, read.
struct SegmentScan {
    path: PathBuf,
    /// The timestamp the file is named after.
    name_ts: Timestamp,
    header: Option<SegmentHeader>,
    records: Vec<(RecordPos, LogRecord)>,
    valid_len: u64,
    file_len: u64,
    damage: Option<TailDamage>,
    bytes: Vec<u8>,
    /// Only the header was read (a segment the checkpoint covers, at recovery).
    skipped: bool,
}

impl SegmentScan {
    fn last_ts(&self) -> Option<Timestamp> {
        self.records.last().map(|(_, r)| r.ts)
    }
}

/// The timestamp a segment file is named after (its first record's, or earlier).
pub(crate) fn name_ts(path: &Path) -> Timestamp {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .map_or(Timestamp::ZERO, Timestamp)
}

fn scan_segment(path: &Path) -> Result<SegmentScan, StorageError> {
    let bytes = std::fs::read(path)
        .map_err(|e| StorageError::io(format!("cannot read {}", path.display()), e))?;
    let mut scan = SegmentScan {
        path: path.to_path_buf(),
        name_ts: name_ts(path),
        header: None,
        records: Vec::new(),
        valid_len: 0,
        file_len: bytes.len() as u64,
        damage: None,
        bytes: Vec::new(),
        skipped: false,
    };
    let header = match segment::parse_header(&bytes) {
        Ok(h) => h,
        Err(detail) => {
            // A header still all zeros is a segment whose creation a crash cut short.
            let unwritten = bytes.iter().take(segment::HEADER_LEN).all(|&b| b == 0);
            scan.damage = Some(TailDamage {
                offset: 0,
                detail,
                valid_after: !unwritten,
                torn: unwritten,
                written: written_end(&bytes) as u64,
            });
            scan.bytes = bytes;
            return Ok(scan);
        }
    };
    scan.header = Some(header);
    read_records(&mut scan, &bytes, header.len);
    scan.bytes = bytes;
    Ok(scan)
}

/// A segment the checkpoint covers: only its header is read. `None` if the header cannot be
/// read (then the whole segment is scanned, so the damage is reported as usual).
fn scan_header_only(path: &Path) -> Result<Option<SegmentScan>, StorageError> {
    use std::io::Read;
    let fail = |e| StorageError::io(format!("cannot read {}", path.display()), e);
    let file = std::fs::File::open(path).map_err(fail)?;
    let file_len = file.metadata().map_err(fail)?.len();
    let mut head = Vec::with_capacity(segment::HEADER_LEN);
    file.take(segment::HEADER_LEN as u64)
        .read_to_end(&mut head)
        .map_err(fail)?;
    let Ok(header) = segment::parse_header(&head) else {
        return Ok(None);
    };
    Ok(Some(SegmentScan {
        path: path.to_path_buf(),
        name_ts: name_ts(path),
        header: Some(header),
        records: Vec::new(),
        // Unknown without reading: the successor's claim is checked against the file's size.
        valid_len: file_len,
        file_len,
        damage: None,
        bytes: Vec::new(),
        skipped: true,
    }))
}

fn written_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

/// Reads records from `start` until the zeros or the first damage.
fn read_records(scan: &mut SegmentScan, bytes: &[u8], start: usize) {
    let mut offset = start;
    scan.valid_len = offset as u64;
    let mut last_ts = Timestamp::ZERO;
    while offset < bytes.len() {
        let detail = match segment::parse_record_at(bytes, offset) {
            Ok((len, record)) if record.ts > last_ts => {
                last_ts = record.ts;
                let pos = RecordPos {
                    segment: scan.path.clone(),
                    offset: offset as u64,
                    len: len as u64,
                };
                scan.records.push((pos, record));
                offset += len;
                scan.valid_len = offset as u64;
                continue;
            }
            Ok(_) => "record timestamp does not increase".to_string(),
            // Zeros from here to the end: the preallocated part of the segment, not yet written.
            Err(_) if bytes[offset..].iter().all(|&b| b == 0) => break,
            Err(detail) => detail,
        };
        let written = written_end(bytes);
        let valid_after = (offset + 1..bytes.len())
            .any(|at| matches!(segment::parse_record_at(bytes, at), Ok((_, r)) if r.ts > last_ts));
        scan.damage = Some(TailDamage {
            offset: offset as u64,
            detail,
            valid_after,
            torn: looks_torn(bytes, offset, written),
            written: written.saturating_sub(offset) as u64,
        });
        break;
    }
}

/// Whether a damaged record at `offset` is a write a crash cut short (see the module comment):
/// its header still zeros, the file ending inside it, its end in a sector past the last
/// written byte (a disk persists whole sectors), or an aligned page of it all zeros. Trailing
/// zeros of a whole record (BSON ends in zero bytes) stay within the sector of its last
/// non-zero byte unless they cross a sector boundary: that case cannot be told from a torn
/// final sector, and reads as torn.
fn looks_torn(bytes: &[u8], offset: usize, written_end: usize) -> bool {
    let Some(header) = bytes.get(offset..offset + RECORD_HEADER_LEN) else {
        return true; // the file ends inside the header
    };
    if header.iter().all(|&b| b == 0) {
        return true;
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if !(PAYLOAD_PREFIX_LEN..=MAX_RECORD_LEN).contains(&len) {
        return false; // a length no writer wrote, in bytes that were written
    }
    let end = offset + RECORD_HEADER_LEN + len;
    if end > bytes.len() {
        return true; // the file was cut short inside the record
    }
    if written_end.next_multiple_of(SECTOR) < end {
        return !length_field_damaged(bytes, offset);
    }
    let first_page = offset.next_multiple_of(PAGE);
    (first_page..written_end.saturating_sub(PAGE - 1))
        .step_by(PAGE)
        .any(|p| bytes[p..p + PAGE].iter().all(|&b| b == 0))
}

/// Whether the record at `offset` is whole on disk and only its length field is wrong: the
/// BSON body's own length, put in its place, makes the checksum match.
fn length_field_damaged(bytes: &[u8], offset: usize) -> bool {
    let body_at = offset + RECORD_HEADER_LEN + PAYLOAD_PREFIX_LEN;
    let Some(body_len) = bytes.get(body_at..body_at + 4) else {
        return false;
    };
    let len = PAYLOAD_PREFIX_LEN
        + u32::from_le_bytes([body_len[0], body_len[1], body_len[2], body_len[3]]) as usize;
    let crc = &bytes[offset + 4..offset + 8];
    let Some(payload) = bytes.get(offset + RECORD_HEADER_LEN..offset + RECORD_HEADER_LEN + len)
    else {
        return false;
    };
    record_crc(&(len as u32).to_le_bytes(), payload).to_le_bytes() == crc
}

/// What can still be read of a record that failed to parse: for the warning that says what
/// a cut removed.
fn describe_record(bytes: &[u8], offset: usize) -> String {
    let at = offset + RECORD_HEADER_LEN;
    let ts = bytes
        .get(at..at + 8)
        .map(|b| Timestamp(u64::from_le_bytes(b.try_into().unwrap_or_default())))
        .filter(|ts| *ts != Timestamp::ZERO);
    let Some(ts) = ts else {
        return "a record whose header was never written".into();
    };
    let body = bytes
        .get(at + PAYLOAD_PREFIX_LEN..)
        .and_then(|b| RawDocument::from_bytes(b).ok());
    let session = body.map(|b| {
        let lsid = b
            .get_document("lsid")
            .ok()
            .and_then(|l| l.get_binary("id").ok())
            .map(|id| {
                id.bytes
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<String>()
            });
        match (lsid, b.get_i64("txnNumber").ok()) {
            (Some(l), Some(n)) => format!(", lsid {l}, txnNumber {n}"),
            (Some(l), None) => format!(", lsid {l}"),
            _ => ", no session".into(),
        }
    });
    format!(
        "the record of commit timestamp ({}, {}){}",
        ts.seconds(),
        ts.increment(),
        session.unwrap_or_else(|| ", its session unreadable".into())
    )
}

/// A segment summary for the chain check: what the next segment's header must agree with.
struct Link {
    path: PathBuf,
    name_ts: Timestamp,
    valid_end: u64,
    last_ts: Timestamp,
    /// Its records were not read: `valid_end` is its file size and `last_ts` a lower bound.
    skipped: bool,
}

fn damage(path: &Path, offset: u64, detail: String, cut: Option<(&Path, u64)>) -> LogDamage {
    LogDamage {
        segment: path.to_path_buf(),
        offset,
        detail,
        cut_from: cut.map(|(p, o)| (p.to_path_buf(), o)),
    }
}

fn ts_text(ts: Timestamp) -> String {
    format!("({}, {})", ts.seconds(), ts.increment())
}

/// Whether `cur` follows `prev` (the segment before it on disk, if any) as its header says.
fn chain_problem(
    dir: &Path,
    prev: Option<&Link>,
    cur: &SegmentScan,
    checkpoint: Timestamp,
) -> Option<LogDamage> {
    let header = cur.header?;
    let here = Some((cur.path.as_path(), 0));
    if let Some(first) = header.first_ts
        && first != cur.name_ts
    {
        let detail = format!(
            "its header says it starts at {} but its name says {}: it was renamed or replaced",
            ts_text(first),
            ts_text(cur.name_ts)
        );
        return Some(damage(&cur.path, 16, detail, here));
    }
    if header.version < segment::VERSION {
        return None;
    }
    let missing = |first_ts: Timestamp, why: String| {
        let path = dir.join(segment_name(first_ts));
        Some(damage(&path, 0, format!("is missing: {why}"), here))
    };
    match (prev, header.prev) {
        (None, Some(p)) if p.last_ts > checkpoint => missing(
            p.first_ts,
            format!(
                "{} follows it, and it held transactions up to {}, after the checkpoint {} the base store holds",
                cur.path.display(),
                ts_text(p.last_ts),
                ts_text(checkpoint)
            ),
        ),
        (None, _) => None,
        (Some(prev), None) => Some(damage(
            &cur.path,
            24,
            format!(
                "it names no predecessor but follows {}",
                prev.path.display()
            ),
            here,
        )),
        (Some(prev), Some(p)) => link_problem(prev, cur, &p, &missing),
    }
}

fn link_problem(
    prev: &Link,
    cur: &SegmentScan,
    p: &segment::Predecessor,
    missing: &dyn Fn(Timestamp, String) -> Option<LogDamage>,
) -> Option<LogDamage> {
    if p.first_ts > prev.name_ts {
        let why = format!(
            "{} names it as its predecessor, after {}",
            cur.path.display(),
            prev.path.display()
        );
        return missing(p.first_ts, why);
    }
    if p.first_ts < prev.name_ts {
        let detail = format!(
            "it names {} as its predecessor, older than {}: segments are out of order or one was replaced",
            segment_name(p.first_ts),
            prev.path.display()
        );
        return Some(damage(&cur.path, 24, detail, Some((&cur.path, 0))));
    }
    if prev.valid_end < p.end || (!prev.skipped && prev.last_ts != p.last_ts) {
        let detail = format!(
            "its valid records end at offset {} (last commit {}), but {} records that it was sealed at offset {} (last commit {}): the committed records between are lost (the file was cut or damaged)",
            prev.valid_end,
            ts_text(prev.last_ts),
            cur.path.display(),
            p.end,
            ts_text(p.last_ts)
        );
        return Some(damage(
            &prev.path,
            prev.valid_end,
            detail,
            Some((&prev.path, prev.valid_end)),
        ));
    }
    None
}

/// Reads a log directory, every record of it. `checkpoint` is what the base store holds
/// (records at or before it may be gone); `None` takes the control file's record of it (for
/// readers of a live log).
pub fn scan_log(
    dir: &Path,
    checkpoint: Option<Timestamp>,
    progress: impl FnMut(u64, u64),
) -> Result<LogScan, StorageError> {
    scan(dir, checkpoint, progress, false)
}

/// Reads a log directory for recovery: like [`scan_log`], but the records of segments wholly
/// at or before `checkpoint` are not read, only their headers (see the module comment).
pub fn scan_log_for_recovery(
    dir: &Path,
    checkpoint: Timestamp,
    progress: impl FnMut(u64, u64),
) -> Result<LogScan, StorageError> {
    scan(dir, Some(checkpoint), progress, true)
}

fn scan(
    dir: &Path,
    checkpoint: Option<Timestamp>,
    mut progress: impl FnMut(u64, u64),
    skip_covered: bool,
) -> Result<LogScan, StorageError> {
    let segments = list_segments(dir)?;
    let total: u64 = segments
        .iter()
        .map(|s| std::fs::metadata(s).map(|m| m.len()).unwrap_or(0))
        .sum();
    let mut out = LogScan {
        records: Vec::new(),
        torn_tail: None,
        end: None,
        segments: segments.len(),
        bytes: 0,
        control: None,
        damage: None,
        skipped_segments: 0,
    };
    let control = match control::read(dir) {
        Ok(c) => c,
        Err(e) => {
            out.damage = Some(control_damage(dir, e.to_string()));
            return Ok(out);
        }
    };
    out.control = control;
    let checkpoint = checkpoint.unwrap_or(control.map_or(Timestamp::ZERO, |c| c.checkpoint));
    let mut links: Vec<Link> = Vec::new();
    let mut last_ts = Timestamp::ZERO;
    for (i, path) in segments.iter().enumerate() {
        // Covered: the next segment starts at or before checkpoint + 1 (names are first
        // timestamps), so every record here is at or before the checkpoint.
        let covered = skip_covered
            && segments
                .get(i + 1)
                .is_some_and(|next| name_ts(next).0 <= checkpoint.0.saturating_add(1));
        let scan = match covered {
            true => scan_header_only(path)?,
            false => None,
        };
        let scan = match scan {
            Some(scan) => scan,
            None => scan_segment(path)?,
        };
        out.bytes += scan.file_len;
        progress(out.bytes, total);
        let newest = i + 1 == segments.len();
        if let Some(d) = chain_problem(dir, links.last(), &scan, checkpoint) {
            out.damage = Some(d);
            break;
        }
        if let Some(d) = take_segment(&mut out, scan, newest, &mut links, &mut last_ts) {
            out.damage = Some(d);
            break;
        }
    }
    if out.damage.is_none() {
        out.damage = end_problem(dir, &out, &links, control.as_ref(), checkpoint);
    }
    if let Some(d) = out.damage.clone() {
        drop_records_from(&mut out, &d);
    }
    Ok(out)
}

/// Adds a scanned segment's records to the scan, or says why they cannot be replayed.
fn take_segment(
    out: &mut LogScan,
    mut scan: SegmentScan,
    newest: bool,
    links: &mut Vec<Link>,
    last_ts: &mut Timestamp,
) -> Option<LogDamage> {
    if let Some((pos, _)) = scan.records.iter().find(|(_, r)| r.ts <= *last_ts) {
        let detail = "record timestamp does not increase across segments".to_string();
        let cut = Some((pos.segment.as_path(), pos.offset));
        return Some(damage(&pos.segment, pos.offset, detail, cut));
    }
    if let Some(tail) = &scan.damage {
        if !newest || tail.valid_after || !tail.torn {
            return Some(tail_damage(&scan, tail, newest));
        }
        out.torn_tail = Some(TornTail {
            segment: scan.path.clone(),
            offset: scan.valid_len,
            bytes: tail.written,
            record: match scan.header {
                Some(_) => describe_record(&scan.bytes, tail.offset as usize),
                None => "a segment whose header was never written".into(),
            },
        });
        // A segment whose creation a crash cut short holds nothing: the log ends with the
        // segment before it.
        scan.header?;
    }
    *last_ts = scan.last_ts().unwrap_or(*last_ts).max(
        scan.header
            .and_then(|h| h.prev)
            .map_or(Timestamp::ZERO, |p| p.last_ts),
    );
    links.push(Link {
        path: scan.path.clone(),
        name_ts: scan.name_ts,
        valid_end: scan.valid_len,
        last_ts: *last_ts,
        skipped: scan.skipped,
    });
    out.skipped_segments += usize::from(scan.skipped);
    // Every segment taken may be where the log ends: the newest one, or the one before a newest
    // whose creation a crash cut short (its header never written, returned above), which the
    // writer then continues. Leaving the end unset there made the writer start a segment
    // naming no predecessor, which the next open refused as a broken chain.
    out.end = Some(LogEnd {
        segment: scan.path.clone(),
        first_ts: scan.name_ts,
        version: scan.header.map_or(0, |h| h.version),
        offset: scan.valid_len,
        last_ts: *last_ts,
    });
    out.records.append(&mut scan.records);
    None
}

fn tail_damage(scan: &SegmentScan, tail: &TailDamage, newest: bool) -> LogDamage {
    let why = if !newest {
        "in a segment that is not the newest, so every record in it was committed"
    } else if tail.valid_after {
        "with valid records after it, so it is not a write cut short by a crash"
    } else {
        "in a record that was written whole, so it was probably acknowledged (a crash leaves unwritten pages as zeros, and this record has none)"
    };
    damage(
        &scan.path,
        tail.offset,
        format!("{} {why}", tail.detail),
        Some((&scan.path, tail.offset)),
    )
}

/// What the control file says the log must reach, checked against what is there.
fn end_problem(
    dir: &Path,
    out: &LogScan,
    links: &[Link],
    control: Option<&Control>,
    checkpoint: Timestamp,
) -> Option<LogDamage> {
    let Some(control) = control else {
        return missing_control(dir, out);
    };
    let newest_on_disk = links.last().map(|l| l.name_ts);
    if newest_on_disk.is_none_or(|n| n < control.newest) {
        let path = dir.join(segment_name(control.newest));
        let detail = format!(
            "is missing: the control file names it as the newest segment, holding transactions after {}",
            newest_on_disk.map_or("the checkpoint".into(), ts_text)
        );
        return Some(damage(&path, 0, detail, None));
    }
    let durable = control.durable.filter(|d| d.last_ts > checkpoint)?;
    let link = links.iter().find(|l| l.name_ts == durable.segment)?;
    (link.valid_end < durable.offset).then(|| {
        let detail = format!(
            "its valid records end at offset {}, but the control file records that they reached offset {} (commit {}) and were durable: the committed records between are lost (the file was cut or damaged)",
            link.valid_end,
            durable.offset,
            ts_text(durable.last_ts)
        );
        damage(
            &link.path,
            link.valid_end,
            detail,
            Some((&link.path, link.valid_end)),
        )
    })
}

/// A log without a control file is fine when it is new or was written before the control file
/// existed; otherwise the file was lost, and with it the knowledge of where the log ends.
fn missing_control(dir: &Path, out: &LogScan) -> Option<LogDamage> {
    let end = out.end.as_ref()?;
    let only_new_segment = out.segments == 1 && out.records.is_empty();
    if end.version < segment::VERSION || only_new_segment {
        return None;
    }
    Some(control_damage(
        dir,
        "is missing; it records where the log ends, so without it a removed newest segment would go unnoticed".into(),
    ))
}

fn control_damage(dir: &Path, detail: String) -> LogDamage {
    LogDamage {
        segment: control::path(dir),
        offset: 0,
        detail,
        cut_from: None,
    }
}

/// Keeps only the records before the cut.
fn drop_records_from(out: &mut LogScan, d: &LogDamage) {
    let Some((segment, offset)) = &d.cut_from else {
        return;
    };
    out.records.retain(|(pos, _)| {
        pos.segment < *segment || (pos.segment == *segment && pos.offset < *offset)
    });
}
