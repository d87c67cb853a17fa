//! What every running stage may consult: the foreign collections a `$lookup`, `$graphLookup`
//! or `$unionWith` reads (handed over by the server, from the reader's snapshot) and the
//! pipeline's memory limits.

use std::sync::Arc;

use bson::RawDocumentBuf;

use crate::QueryError;
use crate::limits::{self, Limits};

/// Where `$lookup`, `$graphLookup` and `$unionWith` get foreign collections.
pub(crate) trait Foreign {
    fn collection(&self, name: &str) -> Result<Arc<Vec<RawDocumentBuf>>, QueryError>;
}

/// What every stage may consult: foreign collections and the limits.
pub(crate) struct Ctx<'a> {
    pub(crate) foreign: &'a dyn Foreign,
    pub(crate) limits: Limits,
}

impl Ctx<'_> {
    pub(crate) fn collection(&self, name: &str) -> Result<Arc<Vec<RawDocumentBuf>>, QueryError> {
        self.foreign.collection(name)
    }

    /// Fails (292) once a stage holds more than the per-stage limit.
    pub(crate) fn check(&self, stage: &str, used: usize) -> Result<(), QueryError> {
        if used > self.limits.stage_bytes {
            return Err(limits::stage_exceeded(stage, self.limits.stage_bytes));
        }
        Ok(())
    }
}
