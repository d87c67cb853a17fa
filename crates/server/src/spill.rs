//! Spill files: where blocking stages write their runs under `allowDiskUse`, in
//! `<data dir>/_tmp` as mongod does, behind the query crate's [`SpillStore`].
//!
//! Invariants:
//! - Files live only in `<data dir>/_tmp`, one per spilling stage (`spill-<n>.bin`). The
//!   directory is emptied when the server starts, so nothing in it outlives the process that
//!   wrote it, and a file is deleted when its [`SpillFile`] is dropped: at the end of the
//!   results, on an error, or when its cursor is killed or times out.
//! - Every record is framed `[length: u32 LE][crc32c: u32 LE][document]`, the checksum over the
//!   length's bytes and the document. A record read back is checked (its frame inside its run,
//!   its checksum, its BSON) before it is returned; a damaged one fails the read with
//!   DataCorruptionDetected (301) naming the file and the offset, and the reader returns nothing
//!   after it. Damaged data is never returned.
//! - The bytes of all spill files together never exceed `--max-spill-bytes`: space is reserved
//!   in the shared counter before it is written and given back when the file is deleted. Past
//!   the bound, and when the disk is full, the write fails with OutOfDiskSpace (14031); no I/O
//!   error panics.
//! - A file is read only within the runs it recorded.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bson::RawDocumentBuf;
use mangrove_query::{QueryError, RunHandle, RunReader, SpillFile, SpillStore};

/// Records are written, and read ahead, in chunks of at most this size.
const CHUNK: usize = 256 * 1024;

/// Readers of many runs each read ahead at least this much.
const MIN_CHUNK: usize = 4 * 1024;

/// The frame before each record: its length and its checksum.
const HEADER: usize = 8;

/// The server's spill directory and the bytes all its files hold.
pub(crate) struct SpillDir {
    dir: PathBuf,
    max: u64,
    used: Arc<AtomicU64>,
    next: AtomicU64,
}

impl SpillDir {
    /// `<data_dir>/_tmp`, emptied (what an earlier process left is garbage).
    pub fn open(data_dir: &Path, max: u64) -> std::io::Result<SpillDir> {
        let dir = data_dir.join("_tmp");
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot empty the spill directory {}: {e}", dir.display()),
                ));
            }
        }
        std::fs::create_dir_all(&dir).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot create the spill directory {}: {e}", dir.display()),
            )
        })?;
        Ok(SpillDir {
            dir,
            max,
            used: Arc::new(AtomicU64::new(0)),
            next: AtomicU64::new(1),
        })
    }
}

impl SpillStore for SpillDir {
    fn open(&self) -> Result<Box<dyn SpillFile>, QueryError> {
        let n = self.next.fetch_add(1, Relaxed);
        let path = self.dir.join(format!("spill-{n}.bin"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_error("create", &path, e))?;
        crate::op_stats::note_used_disk();
        Ok(Box::new(DiskFile {
            path: Arc::new(path),
            file: Arc::new(file),
            len: 0,
            reserved: 0,
            used: self.used.clone(),
            max: self.max,
        }))
    }
}

/// One stage's spill file.
struct DiskFile {
    path: Arc<PathBuf>,
    file: Arc<File>,
    /// Bytes written.
    len: u64,
    /// Bytes this file counts in `used` (at least `len`).
    reserved: u64,
    used: Arc<AtomicU64>,
    max: u64,
}

impl Drop for DiskFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&*self.path)
            && e.kind() != ErrorKind::NotFound
        {
            tracing::warn!(file = %self.path.display(), error = %e, "cannot delete a spill file");
        }
        self.used.fetch_sub(self.reserved, Relaxed);
    }
}

impl DiskFile {
    /// Counts `n` more bytes against `--max-spill-bytes`, or fails without counting them.
    fn reserve(&mut self, n: u64) -> Result<(), QueryError> {
        let before = self.used.fetch_add(n, Relaxed);
        if before.saturating_add(n) > self.max {
            self.used.fetch_sub(n, Relaxed);
            return Err(QueryError::new(
                14031,
                "OutOfDiskSpace",
                format!(
                    "spilling to disk would exceed the server's bound on spill files (--max-spill-bytes {} bytes, {before} in use by running operations); reduce the stage's input ($match or $project earlier), wait for other large sorts and groups to finish, or raise --max-spill-bytes",
                    self.max
                ),
            ));
        }
        self.reserved += n;
        Ok(())
    }

    /// Appends `buf` to the file and empties it.
    fn flush(&mut self, buf: &mut Vec<u8>) -> Result<(), QueryError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.reserve(buf.len() as u64)?;
        self.file
            .write_all_at(buf, self.len)
            .map_err(|e| io_error("write", &self.path, e))?;
        self.len += buf.len() as u64;
        buf.clear();
        Ok(())
    }
}

impl SpillFile for DiskFile {
    fn write_run(
        &mut self,
        docs: &mut dyn Iterator<Item = Result<RawDocumentBuf, QueryError>>,
    ) -> Result<RunHandle, QueryError> {
        let start = self.len;
        let mut buf = Vec::with_capacity(CHUNK);
        for doc in docs {
            frame(&mut buf, doc?.as_bytes())?;
            if buf.len() >= CHUNK {
                self.flush(&mut buf)?;
            }
        }
        self.flush(&mut buf)?;
        Ok(RunHandle {
            offset: start,
            len: self.len - start,
        })
    }

    fn read_run(&self, run: RunHandle, read_ahead: usize) -> Result<RunReader, QueryError> {
        let end = run.offset.saturating_add(run.len);
        if end > self.len {
            return Err(damaged(
                &self.path,
                run.offset,
                "the run lies past the file's end",
            ));
        }
        Ok(Box::new(RunIter {
            path: self.path.clone(),
            file: self.file.clone(),
            pos: run.offset,
            end,
            buf: Vec::new(),
            at: 0,
            chunk: read_ahead.clamp(MIN_CHUNK, CHUNK),
            failed: false,
        }))
    }
}

/// Appends one record, framed.
fn frame(buf: &mut Vec<u8>, doc: &[u8]) -> Result<(), QueryError> {
    let len = u32::try_from(doc.len())
        .map_err(|_| QueryError::location(10334, "a document too large to spill"))?
        .to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), doc);
    buf.extend_from_slice(&len);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(doc);
    Ok(())
}

/// Reads one run's records back, checking each.
struct RunIter {
    path: Arc<PathBuf>,
    file: Arc<File>,
    /// The file offset of the next record.
    pos: u64,
    end: u64,
    /// Bytes read ahead, from file offset `pos - at`.
    buf: Vec<u8>,
    at: usize,
    /// How much to read ahead at once.
    chunk: usize,
    /// After an error nothing more is returned.
    failed: bool,
}

impl Iterator for RunIter {
    type Item = Result<RawDocumentBuf, QueryError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.end {
            return None;
        }
        let record = self.record();
        self.failed = record.is_err();
        Some(record)
    }
}

impl RunIter {
    fn record(&mut self) -> Result<RawDocumentBuf, QueryError> {
        let at = self.pos;
        let header: [u8; HEADER] = self
            .take(HEADER)?
            .try_into()
            .map_err(|_| damaged(&self.path, at, "a short header"))?;
        let len_bytes = [header[0], header[1], header[2], header[3]];
        let len = u32::from_le_bytes(len_bytes) as u64;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len < 5 || len > self.end - self.pos {
            let why = format!("a record length of {len} bytes does not fit the run");
            return Err(damaged(&self.path, at, &why));
        }
        let body = self.take(len as usize)?.to_vec();
        if crc32c::crc32c_append(crc32c::crc32c(&len_bytes), &body) != crc {
            return Err(damaged(
                &self.path,
                at,
                "the record's checksum does not match",
            ));
        }
        RawDocumentBuf::from_bytes(body).map_err(|e| damaged(&self.path, at, &e.to_string()))
    }

    /// The next `n` bytes of the run.
    fn take(&mut self, n: usize) -> Result<&[u8], QueryError> {
        let avail = self.buf.len() - self.at;
        if avail < n {
            self.buf.drain(..self.at);
            self.at = 0;
            let from = self.pos + avail as u64;
            let want = ((n - avail).max(self.chunk) as u64).min(self.end - from) as usize;
            if want < n - avail {
                return Err(damaged(
                    &self.path,
                    self.pos,
                    "the run ends inside a record",
                ));
            }
            let old = self.buf.len();
            self.buf.resize(old + want, 0);
            if let Err(e) = self.file.read_exact_at(&mut self.buf[old..], from) {
                return Err(match e.kind() {
                    ErrorKind::UnexpectedEof => damaged(&self.path, from, "the file is truncated"),
                    _ => io_error("read", &self.path, e),
                });
            }
        }
        let out = &self.buf[self.at..self.at + n];
        self.at += n;
        self.pos += n as u64;
        Ok(out)
    }
}

/// DataCorruptionDetected (301) for the record at `offset` of the spill file `path`.
fn damaged(path: &Path, offset: u64, why: &str) -> QueryError {
    QueryError::new(
        301,
        "DataCorruptionDetected",
        format!(
            "spill file {} is damaged at offset {offset}: {why}; the operation cannot continue. Check the disk holding the data directory and run the operation again (spill files are temporary)",
            path.display()
        ),
    )
}

/// An I/O error on a spill file: OutOfDiskSpace (14031) when the disk is full.
fn io_error(what: &str, path: &Path, e: std::io::Error) -> QueryError {
    let full = matches!(
        e.kind(),
        ErrorKind::StorageFull | ErrorKind::FileTooLarge | ErrorKind::QuotaExceeded
    );
    if full {
        return QueryError::new(
            14031,
            "OutOfDiskSpace",
            format!(
                "cannot {what} spill file {}: {e}; free space on the disk holding the data directory, reduce the stage's input, or run with allowDiskUse: false",
                path.display()
            ),
        );
    }
    QueryError::new(
        8,
        "UnknownError",
        format!("cannot {what} spill file {}: {e}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh data directory under the system's temporary one.
    fn data_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("mangrove-spill-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn docs(n: i32) -> Vec<RawDocumentBuf> {
        (0..n)
            .map(|i| bson::rawdoc! { "_id": i, "pad": "y".repeat(100) })
            .collect()
    }

    fn write(file: &mut dyn SpillFile, docs: &[RawDocumentBuf]) -> RunHandle {
        file.write_run(&mut docs.iter().cloned().map(Ok)).unwrap()
    }

    #[test]
    fn runs_read_back_whole_and_the_file_goes_with_its_owner() {
        let data = data_dir("roundtrip");
        std::fs::create_dir_all(data.join("_tmp")).unwrap();
        std::fs::write(data.join("_tmp/stale.bin"), b"old").unwrap();
        let dir = SpillDir::open(&data, u64::MAX).unwrap();
        assert_eq!(std::fs::read_dir(data.join("_tmp")).unwrap().count(), 0);
        let mut file = dir.open().unwrap();
        let (a, b) = (docs(3000), docs(10));
        let (ra, rb) = (write(&mut *file, &a), write(&mut *file, &b));
        let back: Vec<_> = file
            .read_run(ra, CHUNK)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(back, a);
        let back: Vec<_> = file.read_run(rb, 1).unwrap().map(Result::unwrap).collect();
        assert_eq!(back, b);
        assert_eq!(dir.used.load(Relaxed), ra.len + rb.len);
        drop(file);
        assert_eq!(dir.used.load(Relaxed), 0);
        assert_eq!(std::fs::read_dir(data.join("_tmp")).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(&data);
    }

    #[test]
    fn a_flipped_byte_fails_the_read_naming_the_file_and_offset() {
        let data = data_dir("damage");
        let dir = SpillDir::open(&data, u64::MAX).unwrap();
        let mut file = dir.open().unwrap();
        let run = write(&mut *file, &docs(3000));
        let path = std::fs::read_dir(data.join("_tmp"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&path).unwrap();
        // Inside the 100th record's document (each record: 8 bytes of frame, then the document).
        let record = HEADER + docs(1)[0].as_bytes().len();
        bytes[100 * record + 20] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let read: Vec<_> = file.read_run(run, CHUNK).unwrap().collect();
        assert_eq!(read.len(), 101, "nothing after the damaged record");
        assert!(read[..100].iter().all(Result::is_ok));
        let e = read[100].as_ref().unwrap_err();
        assert_eq!(e.code, 301);
        let offset = format!("at offset {}:", 100 * record);
        assert!(
            e.message.contains(&*path.to_string_lossy()),
            "{}",
            e.message
        );
        assert!(e.message.contains(&offset), "{}", e.message);
        drop(file);
        let _ = std::fs::remove_dir_all(&data);
    }

    #[test]
    fn spills_past_the_bound_fail_with_out_of_disk_space_and_give_the_space_back() {
        let data = data_dir("bound");
        let dir = SpillDir::open(&data, 100_000).unwrap();
        let mut file = dir.open().unwrap();
        let e = file
            .write_run(&mut docs(3000).into_iter().map(Ok))
            .unwrap_err();
        assert_eq!(e.code, 14031);
        assert!(e.message.contains("--max-spill-bytes"), "{}", e.message);
        drop(file);
        assert_eq!(dir.used.load(Relaxed), 0);
        let mut file = dir.open().unwrap();
        write(&mut *file, &docs(100));
        let _ = std::fs::remove_dir_all(&data);
    }
}
