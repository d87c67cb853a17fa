//! Arguments several commands parse alike: collations, non-negative counts, a cursor's
//! `batchSize`, `allowDiskUse`; and `internal`, the error for input already checked that cannot occur.

use bson::RawDocumentBuf;
use bson::raw::RawDocument;
use mangrove_storage::CollectionInfo;

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

/// The collation a command on `coll` runs under: its own `collation` if it gives one (the
/// simple one included), else the collection's default (`create`'s `collation`, stored
/// normalized), else none.
pub(super) fn collation_for(
    explicit: Option<&RawDocument>,
    coll: Option<&CollectionInfo>,
) -> CommandResult<Option<mangrove_query::Collation>> {
    if let Some(view) = coll.filter(|c| c.options.contains_key("viewOn")) {
        return view_collation(explicit, view);
    }
    match (explicit, coll.and_then(default_collation)) {
        (Some(_), _) | (None, None) => parse_collation(explicit),
        (None, Some(stored)) => {
            let raw = RawDocumentBuf::try_from(stored).map_err(internal)?;
            parse_collation(Some(&raw))
        }
    }
}

/// A statement's own `collation`, parsed before its collection is known: `None` if it gave none
/// (then the collection's default applies, [`OwnCollation::on`]).
pub(super) struct OwnCollation(Option<Option<mangrove_query::Collation>>);

impl OwnCollation {
    pub(super) fn parse(explicit: Option<&RawDocument>) -> CommandResult<OwnCollation> {
        match explicit {
            None => Ok(OwnCollation(None)),
            Some(_) => Ok(OwnCollation(Some(parse_collation(explicit)?))),
        }
    }

    /// The collation the statement runs under on `coll`.
    pub(super) fn on(
        &self,
        coll: &CollectionInfo,
    ) -> CommandResult<Option<mangrove_query::Collation>> {
        match &self.0 {
            Some(own) => Ok(own.clone()),
            None => collation_for(None, Some(coll)),
        }
    }
}

/// The collation of a command on a view: the view's default (the simple one unless it was
/// created with one); a command may name it, but not another (OptionNotSupportedOnView, 167).
fn view_collation(
    explicit: Option<&RawDocument>,
    view: &CollectionInfo,
) -> CommandResult<Option<mangrove_query::Collation>> {
    let stored = default_collation(view)
        .map(|d| RawDocumentBuf::try_from(d).map_err(internal))
        .transpose()?;
    let default = parse_collation(stored.as_deref())?;
    let given = parse_collation(explicit)?;
    if explicit.is_some()
        && given.as_ref().map(|c| c.index_spec()) != default.as_ref().map(|c| c.index_spec())
    {
        return Err(CommandError::new(
            167,
            format!(
                "Cannot override a view's default collation: {} has {}",
                view.ns(),
                default_collation(view)
                    .map_or("the simple collation".to_string(), |d| d.to_string()),
            ),
        ));
    }
    Ok(default)
}

/// A collection's stored default collation, if it has one.
pub(crate) fn default_collation(coll: &CollectionInfo) -> Option<&bson::Document> {
    coll.options.get_document("collation").ok()
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

/// The `_id` index of an ordinary collection: with the collection's default collation when
/// its keys are encoded under it, as mongod's `_id` index inherits it.
pub(super) fn id_index_spec(coll: &CollectionInfo) -> bson::Document {
    let mut spec = bson::doc! { "v": 2, "key": { "_id": 1 }, "name": "_id_" };
    if crate::access::ids_collated(coll)
        && let Some(collation) = default_collation(coll)
    {
        spec.insert("collation", collation.clone());
    }
    spec
}
