//! Atlas Search's index commands (`createSearchIndexes`, `updateSearchIndex`,
//! `dropSearchIndex`) and the `$listSearchIndexes` stage. A mongod without Atlas Search (any
//! self-managed 7.0 server) refuses them with SearchNotEnabled (31082) and a message that says
//! what to do; Mangrove answers the same, so drivers' helpers fail the way they do against
//! mongod rather than with "no such command". Text search is `text` indexes and `$text`.

use crate::error::{CommandError, CommandResult};
use crate::request::Request;

use super::Reply;
use super::coll_stats::first_stage;

const SEARCH_NOT_ENABLED: i32 = 31082;

fn not_enabled() -> CommandError {
    CommandError::new(
        SEARCH_NOT_ENABLED,
        "Using Atlas Search Database Commands and the $listSearchIndexes aggregation stage requires additional configuration. Mangrove has no Atlas Search: connect to MongoDB Atlas for search indexes, or use a text index and $text for full-text search on Mangrove.",
    )
}

/// The three search-index commands.
pub(super) fn refuse(_req: &Request<'_>) -> CommandResult<Reply> {
    Err(not_enabled())
}

/// `aggregate` whose first stage is `$listSearchIndexes`, refused.
pub(super) fn check_aggregate(req: &Request<'_>) -> CommandResult<()> {
    match first_stage(req)? {
        Some(("$listSearchIndexes", _)) => Err(not_enabled()),
        _ => Ok(()),
    }
}
