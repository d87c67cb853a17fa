//! What every running stage may consult: the foreign collections a `$lookup`, `$graphLookup`
//! or `$unionWith` reads (handed over by the server, from the reader's snapshot), the
//! pipeline's memory limits, and where blocking stages may spill (`allowDiskUse`).

use std::sync::Arc;

use bson::RawDocumentBuf;

use crate::QueryError;
use crate::limits::{self, Limits};
use crate::spill::SpillStore;

/// Where `$lookup`, `$graphLookup` and `$unionWith` get foreign collections.
pub(crate) trait Foreign {
    fn collection(&self, name: &str) -> Result<Arc<Vec<RawDocumentBuf>>, QueryError>;
}

/// What every stage may consult: foreign collections, the limits and the spill store.
pub(crate) struct Ctx<'a> {
    pub(crate) foreign: &'a dyn Foreign,
    pub(crate) limits: Limits,
    /// Where blocking stages spill past their limit; `None` when disk use is not allowed.
    pub(crate) spill: Option<&'a dyn SpillStore>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn collection(&self, name: &str) -> Result<Arc<Vec<RawDocumentBuf>>, QueryError> {
        self.foreign.collection(name)
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
