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
    /// an index where one answers it.
    fn each_match(
        &self,
        name: &str,
        filter: &RawDocument,
        visit: &mut dyn FnMut(&RawDocument) -> Result<(), QueryError>,
    ) -> Result<(), QueryError>;

    /// Whether an index of `name` answers equality on `path`, so asking per input document
    /// costs an index lookup rather than a scan.
    fn indexed(&self, name: &str, path: &str) -> bool;
}

/// [`ForeignSource::each_match`] over documents already in memory (a view computed whole).
pub fn each_match_in(
    docs: &[RawDocumentBuf],
    filter: &RawDocument,
    visit: &mut dyn FnMut(&RawDocument) -> Result<(), QueryError>,
) -> Result<(), QueryError> {
    let filter = crate::Filter::parse(filter)?;
    for d in docs {
        if filter.matches_checked(d)? {
            visit(d)?;
        }
    }
    Ok(())
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
    ) -> Result<(), QueryError> {
        Ok(())
    }

    fn indexed(&self, _: &str, _: &str) -> bool {
        false
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
    /// Every document of collection `name`, which `stage` holds in memory: at most the
    /// per-stage limit (292 past it).
    pub(crate) fn collection(
        &self,
        name: &str,
        stage: &str,
    ) -> Result<Arc<Vec<RawDocumentBuf>>, QueryError> {
        let max = self.limits.stage_bytes;
        self.foreign.whole(name, max)?.ok_or_else(|| {
            QueryError::new(
                292,
                "QueryExceededMemoryLimitNoDiskUseAllowed",
                format!(
                    "{stage} reads the whole collection {name} into memory, and it holds more than {max} bytes; filter it into a smaller collection with $out first"
                ),
            )
        })
    }

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
