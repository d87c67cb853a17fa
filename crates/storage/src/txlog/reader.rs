//! Reading one segment incrementally, from a byte offset, while the log writer may still be
//! appending to it: the history reader's building block (`engine/history.rs`).
//!
//! Unlike the start-up scan (`scan.rs`), which reads whole files, a cursor holds one open file
//! descriptor, a fixed read buffer and at most one record: memory stays bounded by
//! [`READ_BUFFER`] + [`MAX_RECORD_LEN`] however large the segment. The open descriptor keeps a
//! segment readable after the checkpointer removed its name.
//!
//! Invariants:
//! - `offset` is always the start of a record (or of the zeros after the last one): a record is
//!   consumed whole or not at all.
//! - The buffered reader's position is `stream_at`; whenever it differs from `offset`, or bytes
//!   may have changed on disk since they were buffered (the zeros after the last record), the
//!   cursor seeks, which drops the buffer. So no stale byte is ever parsed twice.
//!
//! Lock order: takes no lock.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::segment::{self, SegmentHeader};
use super::{LogRecord, MAX_RECORD_LEN, PAYLOAD_PREFIX_LEN, RECORD_HEADER_LEN};
use crate::{StorageError, Timestamp};

/// The read buffer of one cursor. Small on purpose: a segment is zero-filled ahead of its
/// records, so a reader at the log's tail (a change stream waiting for commits) would copy a
/// whole buffer of those zeros on every read to find one new record; with 256 KiB that copy was
/// the largest part of a watching stream's cost per commit. A record larger than the buffer is
/// read straight into its own allocation, so catching up loses little.
pub(crate) const READ_BUFFER: usize = 16 * 1024;

/// What the bytes at a cursor's offset hold.
pub(crate) enum Step {
    /// A whole, checked record of `len` bytes (not consumed yet: see [`SegmentCursor::consume`]).
    Record { record: LogRecord, len: u64 },
    /// Zeros or the end of the file: no record (yet) at this offset.
    End,
    /// Bytes that are not a valid record; `ts` is the commit timestamp its prefix claims, if
    /// that much of it could be read.
    Bad {
        detail: String,
        ts: Option<Timestamp>,
    },
}

/// A record's length prefix and checksum, read.
enum Head {
    Record { header: [u8; RECORD_HEADER_LEN] },
    End,
    Bad(String),
}

/// One open segment and a position in it.
pub(crate) struct SegmentCursor {
    pub(crate) path: PathBuf,
    /// The timestamp the file is named after.
    pub(crate) name_ts: Timestamp,
    pub(crate) header: SegmentHeader,
    /// Where the next record starts.
    pub(crate) offset: u64,
    /// The newest record read from this segment (skipped ones included), or, before any, what
    /// the header says the segment before it ended with: what the next segment's header must
    /// repeat.
    pub(crate) last_ts: Timestamp,
    reader: Reader,
    stream_at: u64,
}

/// The open file, with a read buffer only while a batch is being read: an idle cursor (a
/// watcher waiting for commits) holds a descriptor but no buffer, so memory does not grow with
/// the number of open change streams.
enum Reader {
    Buffered(BufReader<File>),
    Parked(File),
    /// Only between `Parked` and `Buffered`, inside `buffered`.
    Moving,
}

fn read_error(path: &Path, offset: u64, e: std::io::Error) -> StorageError {
    StorageError::io(
        format!("cannot read {} at offset {offset}", path.display()),
        e,
    )
}

/// Reads as many bytes as are there, up to `buf.len()`: fewer only at the end of the file.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl SegmentCursor {
    /// Opens a segment and reads its header. `Ok(None)` if the file no longer exists (the
    /// checkpointer removed it).
    pub(crate) fn open(path: &Path) -> Result<Option<SegmentCursor>, StorageError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(path, 0, e)),
        };
        let mut reader = BufReader::with_capacity(READ_BUFFER, file);
        let mut head = [0u8; segment::HEADER_LEN];
        let n = read_up_to(&mut reader, &mut head).map_err(|e| read_error(path, 0, e))?;
        let header = segment::parse_header(&head[..n]).map_err(|detail| StorageError::Corrupt {
            segment: path.to_path_buf(),
            offset: 0,
            detail,
        })?;
        let mut cursor = SegmentCursor {
            path: path.to_path_buf(),
            name_ts: super::name_ts(path),
            header,
            offset: header.len as u64,
            last_ts: header.prev.map_or(Timestamp::ZERO, |p| p.last_ts),
            reader: Reader::Buffered(reader),
            stream_at: n as u64,
        };
        cursor.refresh()?;
        Ok(Some(cursor))
    }

    /// Gives the read buffer back until the next read (see [`Reader`]).
    pub(crate) fn park(&mut self) {
        if let Reader::Buffered(_) = self.reader
            && let Reader::Buffered(b) = std::mem::replace(&mut self.reader, Reader::Moving)
        {
            self.reader = Reader::Parked(b.into_inner());
            // Where the file's own position is no longer says anything: seek before reading.
            self.stream_at = u64::MAX;
        }
    }

    /// The buffered reader, with a new buffer if it was parked.
    fn buffered(&mut self) -> &mut BufReader<File> {
        if let Reader::Parked(_) = self.reader
            && let Reader::Parked(file) = std::mem::replace(&mut self.reader, Reader::Moving)
        {
            self.reader = Reader::Buffered(BufReader::with_capacity(READ_BUFFER, file));
        }
        match &mut self.reader {
            Reader::Buffered(b) => b,
            Reader::Parked(_) | Reader::Moving => unreachable!("unparked above"),
        }
    }

    /// Drops whatever is buffered, so the next read sees the file as it is now.
    pub(crate) fn refresh(&mut self) -> Result<(), StorageError> {
        let offset = self.offset;
        self.buffered()
            .seek(SeekFrom::Start(offset))
            .map_err(|e| read_error(&self.path, offset, e))?;
        self.stream_at = self.offset;
        Ok(())
    }

    fn read_head(&mut self) -> Result<Head, StorageError> {
        if self.stream_at != self.offset {
            self.refresh()?;
        }
        let mut header = [0u8; RECORD_HEADER_LEN];
        let n = read_up_to(self.buffered(), &mut header)
            .map_err(|e| read_error(&self.path, self.offset, e))?;
        self.stream_at += n as u64;
        // Preallocated zeros, or a file that ends here: no record (yet).
        if n < RECORD_HEADER_LEN || header.iter().all(|&b| b == 0) {
            return Ok(Head::End);
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if !(PAYLOAD_PREFIX_LEN..=MAX_RECORD_LEN).contains(&len) {
            return Ok(Head::Bad(format!("implausible record length {len}")));
        }
        Ok(Head::Record { header })
    }

    /// Skips, without reading their payloads or checking them, the records with a timestamp
    /// at or before `through`: the cheap way to reach a resume point.
    pub(crate) fn skip_through(&mut self, through: Timestamp) -> Result<(), StorageError> {
        loop {
            let Head::Record { header } = self.read_head()? else {
                return Ok(());
            };
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as u64;
            let mut ts = [0u8; 8];
            let n = read_up_to(self.buffered(), &mut ts)
                .map_err(|e| read_error(&self.path, self.offset, e))?;
            self.stream_at += n as u64;
            let ts = Timestamp(u64::from_le_bytes(ts));
            if n < ts.0.to_le_bytes().len() || ts > through {
                return Ok(()); // the next read starts over at `offset`
            }
            let rest = len - 8;
            self.buffered()
                .seek_relative(rest as i64)
                .map_err(|e| read_error(&self.path, self.offset, e))?;
            self.offset += RECORD_HEADER_LEN as u64 + len;
            self.stream_at = self.offset;
            self.last_ts = self.last_ts.max(ts);
        }
    }

    /// The record at `offset`, checked (length, checksum, contents), without consuming it.
    pub(crate) fn peek(&mut self) -> Result<Step, StorageError> {
        let header = match self.read_head()? {
            Head::End => return Ok(Step::End),
            Head::Bad(detail) => return Ok(Step::Bad { detail, ts: None }),
            Head::Record { header } => header,
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let mut payload = vec![0u8; len];
        let n = read_up_to(self.buffered(), &mut payload)
            .map_err(|e| read_error(&self.path, self.offset, e))?;
        self.stream_at += n as u64;
        let ts = (n >= 8).then(|| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&payload[..8]);
            Timestamp(u64::from_le_bytes(b))
        });
        if n < len {
            let detail = format!("record of {len} bytes runs past the end of the segment");
            return Ok(Step::Bad { detail, ts });
        }
        Ok(match segment::check_record(&header, &payload) {
            Ok(record) => Step::Record {
                record,
                len: (RECORD_HEADER_LEN + len) as u64,
            },
            Err(detail) => Step::Bad { detail, ts },
        })
    }

    /// Moves past the record [`peek`](Self::peek) just returned.
    pub(crate) fn consume(&mut self, len: u64, ts: Timestamp) {
        assert!(ts > self.last_ts, "records are consumed in timestamp order");
        self.offset += len;
        debug_assert_eq!(self.offset, self.stream_at, "peek read exactly the record");
        self.last_ts = ts;
    }

    /// The timestamp and wall clock of the first record, read from its prefix without checking
    /// it (for status reports). `None` if the segment holds no record.
    pub(crate) fn first_record_prefix(&mut self) -> Result<Option<(Timestamp, i64)>, StorageError> {
        let Head::Record { .. } = self.read_head()? else {
            return Ok(None);
        };
        let mut prefix = [0u8; PAYLOAD_PREFIX_LEN];
        let n = read_up_to(self.buffered(), &mut prefix)
            .map_err(|e| read_error(&self.path, self.offset, e))?;
        self.stream_at += n as u64;
        if n < PAYLOAD_PREFIX_LEN {
            return Ok(None);
        }
        let mut ts = [0u8; 8];
        let mut wall = [0u8; 8];
        ts.copy_from_slice(&prefix[..8]);
        wall.copy_from_slice(&prefix[8..]);
        Ok(Some((
            Timestamp(u64::from_le_bytes(ts)),
            i64::from_le_bytes(wall),
        )))
    }
}
