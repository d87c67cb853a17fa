//! What every running stage may consult: the foreign collections a `$lookup`, `$graphLookup`
//! or `$unionWith` reads (the server's [`ForeignSource`], reading the reader's snapshot), the
//! pipeline's memory limits, and where blocking stages may spill (`allowDiskUse`).

use std::sync::Arc;

use bson::{RawDocument, RawDocumentBuf};

use crate::QueryError;
use crate::limits::{self, Limits};
use crate::spill::SpillStore;

/// Where `$lookup`, `$graphLookup` and `$unionWith` read the collections they name: the
/// server reads them from the reader's snapshot or transaction, so this crate stays pure.
pub trait ForeignSource {
    /// Every document of collection `name` (none when it does not exist), or `None` when they
    /// hold more than `max_bytes`: a join then asks per input document instead.
    fn whole(
        &self,
        name: &str,
        max_bytes: usize,
    ) -> Result<Option<Arc<Vec<RawDocumentBuf>>>, QueryError>;

    /// Hands `visit` each document of `name` that `filter` (a query document) matches, through
    /// an index where one answers it; says what the read examined.
    fn each_match(
        &self,
        name: &str,
        filter: &RawDocument,
        visit: &mut dyn FnMut(&RawDocument) -> Result<(), QueryError>,
    ) -> Result<ForeignRead, QueryError>;

    /// Whether an index of `name` answers equality on `path`, so asking per input document
    /// costs an index lookup rather than a scan.
    fn indexed(&self, name: &str, path: &str) -> bool;

    /// The documents of `name` in `$natural` order after position `after` (one this method
    /// returned; `None` to start), about `max_bytes` of them, with the position to go on from:
    /// `None` once none are left.
    fn next_chunk(
        &self,
        name: &str,
        after: Option<&[u8]>,
        max_bytes: usize,
    ) -> Result<Chunk, QueryError>;
}

/// What one [`ForeignSource::each_match`] examined.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForeignRead {
    pub keys: u64,
    pub docs: u64,
    /// The index the read walked, by name; `None` for a collection scan.
    pub index: Option<String>,
}

/// What a join read of its foreign collection over a run, as mongod's `explain` shows a
/// `$lookup` at `executionStats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinStats {
    pub keys_examined: u64,
    pub docs_examined: u64,
    pub collection_scans: u64,
    /// Indexes used, by name, each once, in the order first used.
    pub indexes_used: Vec<String>,
}

impl JoinStats {
    pub(crate) fn add(&mut self, read: ForeignRead) {
        self.keys_examined += read.keys;
        self.docs_examined += read.docs;
        match read.index {
            None => self.collection_scans += 1,
            Some(name) if !self.indexes_used.contains(&name) => self.indexes_used.push(name),
            Some(_) => {}
        }
    }
}

/// Documents of a collection read in order, and where the next read resumes (`None`: done).
pub type Chunk = (Vec<RawDocumentBuf>, Option<Vec<u8>>);

/// [`ForeignSource::each_match`] over documents already in memory (a view computed whole).
pub fn each_match_in(
    docs: &[RawDocumentBuf],
    filter: &RawDocument,
    visit: &mut dyn FnMut(&RawDocument) -> Result<(), QueryError>,
) -> Result<ForeignRead, QueryError> {
    let filter = crate::Filter::parse(filter)?;
    for d in docs {
        if filter.matches_checked(d)? {
            visit(d)?;
        }
    }
    let docs = docs.len() as u64;
    Ok(ForeignRead {
        docs,
        ..ForeignRead::default()
    })
}

/// No foreign collections: for pipelines that name none (a find's spilling sort).
pub struct NoForeign;

impl ForeignSource for NoForeign {
    fn whole(&self, _: &str, _: usize) -> Result<Option<Arc<Vec<RawDocumentBuf>>>, QueryError> {
        Ok(Some(Arc::default()))
    }

    fn each_match(
        &self,
        _: &str,
        _: &RawDocument,
        _: &mut dyn FnMut(&RawDocument) -> Result<(), QueryError>,
    ) -> Result<ForeignRead, QueryError> {
        Ok(ForeignRead::default())
    }

    fn indexed(&self, _: &str, _: &str) -> bool {
        false
    }

    fn next_chunk(&self, _: &str, _: Option<&[u8]>, _: usize) -> Result<Chunk, QueryError> {
        Ok((Vec::new(), None))
    }
}

/// What every stage may consult: foreign collections, the limits and the spill store.
pub(crate) struct Ctx<'a> {
    pub(crate) foreign: &'a dyn ForeignSource,
    pub(crate) limits: Limits,
    /// Where blocking stages spill past their limit; `None` when disk use is not allowed.
    pub(crate) spill: Option<&'a dyn SpillStore>,
}

impl<'a> Ctx<'a> {
    /// Whether a stage holding `used` bytes is past the per-stage limit and may spill.
    pub(crate) fn should_spill(&self, used: usize) -> Option<&'a dyn SpillStore> {
        self.spill.filter(|_| used > self.limits.stage_bytes)
    }

    /// Fails (292) once a stage holds more than the per-stage limit.
    pub(crate) fn check(&self, stage: &str, used: usize) -> Result<(), QueryError> {
        if used > self.limits.stage_bytes {
            return Err(limits::stage_exceeded(stage, self.limits.stage_bytes));
        }
        Ok(())
    }
}
