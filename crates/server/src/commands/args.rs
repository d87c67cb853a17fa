//! Arguments several commands parse alike: collations, non-negative counts, a cursor's
//! `batchSize`, `allowDiskUse`; and `internal`, the error for input already checked that cannot occur.

use bson::raw::RawDocument;

use crate::error::{CommandError, CommandResult};
use crate::request::{Request, as_i64};

pub(super) fn internal(e: impl std::fmt::Display) -> CommandError {
    CommandError::internal(e)
}

/// A command's `collation`: `None` for the simple (binary) one. See
/// `mangrove_query::Collation` for what is supported.
pub(super) fn parse_collation(
    collation: Option<&RawDocument>,
) -> CommandResult<Option<mangrove_query::Collation>> {
    match collation {
        None => Ok(None),
        Some(c) => Ok(mangrove_query::Collation::parse(c)?),
    }
}

/// A collection's or index's default collation: only the simple one is supported.
pub(super) fn check_simple_collation(collation: Option<&RawDocument>) -> CommandResult<()> {
    if let Some(c) = collation {
        let locale = c.get_str("locale").ok();
        if locale != Some("simple") {
            return Err(CommandError::bad_value(
                "only the simple collation ({locale: \"simple\"}) is supported by Mangrove",
            ));
        }
    }
    Ok(())
}

/// Where the request's blocking stages may spill: the server's spill directory when
/// `allowDiskUse` is true, or absent while `allowDiskUseByDefault` is (mongod 7.0); `None` keeps
/// them to their memory limits (292). A non-boolean `allowDiskUse` is a TypeMismatch (14).
pub(super) fn disk_use(
    shared: &crate::Shared,
    req: &Request<'_>,
) -> CommandResult<Option<std::sync::Arc<dyn mangrove_query::SpillStore>>> {
    let by_default = || {
        shared
            .params
            .allow_disk_use_by_default
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let allowed = req.opt_bool("allowDiskUse")?.unwrap_or_else(by_default);
    Ok(allowed.then(|| shared.spill.clone() as std::sync::Arc<dyn mangrove_query::SpillStore>))
}

pub(super) fn non_negative(req: &Request<'_>, field: &str) -> CommandResult<Option<u64>> {
    match req.opt_i64(field)? {
        None => Ok(None),
        Some(n) if n >= 0 => Ok(Some(n as u64)),
        Some(n) => Err(CommandError::new(
            51024,
            format!("BSON field '{field}' value must be >= 0, actual value '{n}'"),
        )),
    }
}

/// `cursor: {batchSize: n}` as listCollections and aggregate take it.
pub(super) fn cursor_batch_size(req: &Request<'_>) -> CommandResult<Option<u64>> {
    let Some(cursor) = req.opt_doc("cursor")? else {
        return Ok(None);
    };
    match cursor.get("batchSize").ok().flatten() {
        None => Ok(None),
        Some(v) => match as_i64(v) {
            Some(n) if n >= 0 => Ok(Some(n as u64)),
            Some(n) => Err(CommandError::new(
                51024,
                format!("BSON field 'batchSize' value must be >= 0, actual value '{n}'"),
            )),
            None => Err(CommandError::type_mismatch(
                "BSON field 'cursor.batchSize' is the wrong type, expected a number",
            )),
        },
    }
}

/// How long an `awaitData` `getMore` (a tailable cursor's, a change stream's) waits for
/// commits: its `maxTimeMS` (the driver's `maxAwaitTimeMS`), 1 s without one, as mongod.
pub(super) fn await_time(req: &Request<'_>) -> CommandResult<std::time::Duration> {
    Ok(match req.opt_i64("maxTimeMS")? {
        Some(ms) if ms > 0 => std::time::Duration::from_millis(ms as u64),
        _ => std::time::Duration::from_secs(1),
    })
}
