//! The aggregation pipeline: stages parsed from a command's `pipeline` array. `$out`/`$merge`
//! end a pipeline as a [`Sink`] the server writes, and `$lookup`, `$graphLookup` and
//! `$unionWith` get other collections from the caller, so the crate stays pure. Running the
//! stages is `stream.rs` (documents stream through; only blocking stages hold memory), groups
//! are `group.rs`, joins `lookup.rs`, expressions `expr.rs`, limits `limits.rs`.
//!
//! Stages: `$match $sort $skip $limit $project $addFields/$set $unset $replaceRoot/$replaceWith
//! $count $group $bucket $bucketAuto $sortByCount $unwind $lookup $graphLookup $unionWith $facet
//! $sample $documents $setWindowFields $densify $fill $redact`, then `$out`/`$merge`. Anything else is refused with mongod's error (40324).

use bson::RawDocumentBuf;

use crate::QueryError;
pub use crate::expr::with_let;
pub use crate::stage::{Pipeline, Sink, WhenMatched, WhenNotMatched};
use crate::stream::{self, Runner};

impl Pipeline {
    /// Runs the stages over `docs`, which have already passed [`Pipeline::leading_match`].
    /// A `$lookup` fails here; use [`Pipeline::run_with`] to supply foreign collections.
    pub fn run(&self, docs: Vec<RawDocumentBuf>) -> Result<Vec<RawDocumentBuf>, QueryError> {
        self.run_with(docs, &|name| {
            Err(QueryError::bad_value(format!(
                "$lookup from '{name}' is not available in this context"
            )))
        })
    }

    /// Runs every stage over `docs`, a leading `$match` included: for inputs the caller made
    /// rather than read through an access path (`$collStats`, `$indexStats`, sessions).
    pub fn run_from_start(
        &self,
        mut docs: Vec<RawDocumentBuf>,
    ) -> Result<Vec<RawDocumentBuf>, QueryError> {
        if let Some(filter) = self.leading_match() {
            let mut kept = Vec::with_capacity(docs.len());
            for doc in docs.drain(..) {
                if filter.matches_checked(&doc)? {
                    kept.push(doc);
                }
            }
            docs = kept;
        }
        self.run(docs)
    }

    /// Runs the stages over `docs` (already filtered by [`Pipeline::leading_match`]) and
    /// returns the whole result, which may hold at most the per-stage memory limit;
    /// `foreign` returns the documents of a collection a `$lookup` names, and is called at
    /// most once per collection.
    pub fn run_with(
        &self,
        docs: Vec<RawDocumentBuf>,
        foreign: &dyn Fn(&str) -> Result<Vec<RawDocumentBuf>, QueryError>,
    ) -> Result<Vec<RawDocumentBuf>, QueryError> {
        stream::run_with(self, docs, foreign)
    }

    /// A [`Runner`] the caller feeds with input documents (already filtered by
    /// [`Pipeline::leading_match`]) and pulls results from, one at a time, handing each step
    /// the collections its joins read.
    pub fn into_runner(self) -> Runner {
        Runner::new(self)
    }
}
