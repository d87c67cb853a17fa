//! Spilling blocking stages to disk, as mongod does under `allowDiskUse`: the interface a
//! caller provides ([`SpillStore`]) and the stable k-way merge of sorted runs.
//!
//! Invariants:
//! - This crate never touches a file: it hands documents to the [`SpillFile`] the caller's
//!   store opens and reads them back through it. Where the bytes go, how they are framed and
//!   checksummed, and how much disk all spills may use together are the store's business.
//! - A spill file belongs to one stage of one running pipeline and lives exactly as long as
//!   that stage's state (the store deletes it when the `SpillFile` is dropped: at the end of
//!   the results, on an error, or when the cursor is killed).
//! - Every run is written in the stage's order, and runs are numbered in input order. The
//!   merge is stable: among equal keys the earlier run wins, and the documents still in memory
//!   (the latest input) come last, so ties keep their input order as an in-memory stable sort
//!   would.
//! - A damaged record is never returned: the store's reader fails instead, and the error ends
//!   the operation.
//! - No stage spills unless the caller gave a store (`allowDiskUse`); without one, the stage
//!   fails at its memory limit with 292 as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bson::RawDocumentBuf;

use crate::{QueryError, SortSpec};

/// The documents of one run, read back in the order they were written.
pub type RunReader = Box<dyn Iterator<Item = Result<RawDocumentBuf, QueryError>> + Send>;

/// Where one run lies in its spill file: opaque to this crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunHandle {
    /// The offset of its first record.
    pub offset: u64,
    /// Its bytes, framing included.
    pub len: u64,
}

/// Opens spill files; the server's implementation keeps them in the data directory.
pub trait SpillStore: Send + Sync {
    /// A new, empty file for one stage.
    fn open(&self) -> Result<Box<dyn SpillFile>, QueryError>;
}

/// One stage's spill file: runs appended, each read back on its own.
pub trait SpillFile: Send {
    /// Appends `docs` as one run.
    fn write_run(
        &mut self,
        docs: &mut dyn Iterator<Item = Result<RawDocumentBuf, QueryError>>,
    ) -> Result<RunHandle, QueryError>;

    /// A reader of the run `run` (several may be open at once) that holds at most about
    /// `read_ahead` bytes it has read but not yet returned (besides the record at hand).
    fn read_run(&self, run: RunHandle, read_ahead: usize) -> Result<RunReader, QueryError>;
}

/// One stage's use of the pipeline's store. It notes that the stage opened a file and counts
/// what the stage wrote, so each stage can tell whether it ever spilled and how much (mongod's
/// per-stage `usedDisk`, `spills`, `spilledDataStorageSize`), whatever it holds by the time it
/// is asked: a stage that spilled may be answering from memory, or be done.
pub(crate) struct StageStore {
    store: Arc<dyn SpillStore>,
    used: AtomicBool,
    counts: Arc<SpillCounts>,
}

/// What one stage wrote to its spill files.
#[derive(Default)]
struct SpillCounts {
    runs: AtomicU64,
    bytes: AtomicU64,
    records: AtomicU64,
}

/// What one stage spilled, as `explain` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpillStats {
    /// Whether it opened a spill file (mongod's `usedDisk`).
    pub used_disk: bool,
    /// Runs written (mongod's `spills`).
    pub spills: u64,
    /// Bytes written, framing included (mongod's `spilledDataStorageSize`).
    pub bytes: u64,
    /// Documents written (mongod's `spilledRecords`).
    pub records: u64,
}

impl StageStore {
    pub(crate) fn new(store: Arc<dyn SpillStore>) -> StageStore {
        StageStore {
            store,
            used: AtomicBool::new(false),
            counts: Arc::default(),
        }
    }

    /// Whether the stage has opened a spill file.
    pub(crate) fn used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    pub(crate) fn stats(&self) -> SpillStats {
        SpillStats {
            used_disk: self.used(),
            spills: self.counts.runs.load(Ordering::Relaxed),
            bytes: self.counts.bytes.load(Ordering::Relaxed),
            records: self.counts.records.load(Ordering::Relaxed),
        }
    }
}

impl SpillStore for StageStore {
    fn open(&self) -> Result<Box<dyn SpillFile>, QueryError> {
        self.used.store(true, Ordering::Relaxed);
        Ok(Box::new(CountedFile {
            file: self.store.open()?,
            counts: self.counts.clone(),
        }))
    }
}

/// A stage's spill file that counts the runs, bytes and documents written to it.
struct CountedFile {
    file: Box<dyn SpillFile>,
    counts: Arc<SpillCounts>,
}

impl SpillFile for CountedFile {
    fn write_run(
        &mut self,
        docs: &mut dyn Iterator<Item = Result<RawDocumentBuf, QueryError>>,
    ) -> Result<RunHandle, QueryError> {
        let mut records = 0u64;
        let mut counted = docs.inspect(|_| records += 1);
        let run = self.file.write_run(&mut counted)?;
        self.counts.runs.fetch_add(1, Ordering::Relaxed);
        self.counts.bytes.fetch_add(run.len, Ordering::Relaxed);
        self.counts.records.fetch_add(records, Ordering::Relaxed);
        Ok(run)
    }

    fn read_run(&self, run: RunHandle, read_ahead: usize) -> Result<RunReader, QueryError> {
        self.file.read_run(run, read_ahead)
    }
}

/// A stage's spill file and the runs written to it so far, in input order.
pub(crate) struct Spilled {
    pub(crate) file: Box<dyn SpillFile>,
    pub(crate) runs: Vec<RunHandle>,
}

impl Spilled {
    /// Opens a file on the store, for a stage's first spill.
    pub(crate) fn open(store: &dyn SpillStore) -> Result<Spilled, QueryError> {
        Ok(Spilled {
            file: store.open()?,
            runs: Vec::new(),
        })
    }

    /// Readers of every run, which together read ahead at most about `budget` bytes (the
    /// stage's memory limit), so many runs cannot multiply the merge's memory.
    pub(crate) fn readers(&self, budget: usize) -> Result<Vec<RunReader>, QueryError> {
        let each = budget / self.runs.len().max(1);
        self.runs
            .iter()
            .map(|run| self.file.read_run(*run, each))
            .collect()
    }

    /// Writes `docs` (already in the stage's order) as the next run.
    pub(crate) fn write(&mut self, docs: Vec<RawDocumentBuf>) -> Result<(), QueryError> {
        let run = self.file.write_run(&mut docs.into_iter().map(Ok))?;
        self.runs.push(run);
        Ok(())
    }
}

/// Where the merge takes its next document from.
enum Source {
    Run(RunReader),
    Memory(std::vec::IntoIter<RawDocumentBuf>),
}

impl Source {
    fn next(&mut self) -> Result<Option<RawDocumentBuf>, QueryError> {
        match self {
            Source::Run(r) => r.next().transpose(),
            Source::Memory(m) => Ok(m.next()),
        }
    }
}

/// The stable merge of a `$sort`'s runs and its sorted in-memory remainder.
pub(crate) struct SortMerge {
    /// Kept so the file lives (and is deleted) with the merge.
    _file: Box<dyn SpillFile>,
    sources: Vec<Source>,
    heads: Vec<Option<RawDocumentBuf>>,
    /// Documents still to answer (a `$sort` followed by `$limit`).
    left: Option<usize>,
}

impl SortMerge {
    /// `rest`: the documents still in memory, sorted; they came after every run.
    /// `budget`: the bytes the runs' readers may hold together.
    pub(crate) fn new(
        spilled: Spilled,
        rest: Vec<RawDocumentBuf>,
        keep: Option<usize>,
        budget: usize,
    ) -> Result<SortMerge, QueryError> {
        let mut sources: Vec<Source> = spilled
            .readers(budget)?
            .into_iter()
            .map(Source::Run)
            .collect();
        sources.push(Source::Memory(rest.into_iter()));
        let mut heads = Vec::with_capacity(sources.len());
        for s in &mut sources {
            heads.push(s.next()?);
        }
        Ok(SortMerge {
            _file: spilled.file,
            sources,
            heads,
            left: keep,
        })
    }

    /// The next document in sort order; ties go to the earliest source.
    pub(crate) fn next(&mut self, spec: &SortSpec) -> Result<Option<RawDocumentBuf>, QueryError> {
        if self.left == Some(0) {
            return Ok(None);
        }
        let mut best: Option<usize> = None;
        for (i, head) in self.heads.iter().enumerate() {
            let Some(d) = head else { continue };
            let better = match best.and_then(|b| self.heads[b].as_ref()) {
                None => true,
                Some(b) => spec.compare(d, b).is_lt(),
            };
            if better {
                best = Some(i);
            }
        }
        let Some(i) = best else {
            return Ok(None);
        };
        let next = self.sources[i].next()?;
        let out = std::mem::replace(&mut self.heads[i], next);
        if let Some(left) = &mut self.left {
            *left -= 1;
        }
        Ok(out)
    }
}
