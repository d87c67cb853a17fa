//! Schema validation on writes: a collection's `validator`, `validationLevel` and
//! `validationAction` (its options, as `create` and `collMod` store them), applied to every
//! document a write produces.
//!
//! Invariants:
//! - A document is checked before it is written, never after: a refused write leaves nothing
//!   in the transaction, which matters inside a multi-document transaction that goes on.
//! - Inserts (and the document an upsert inserts) are always checked; an update under
//!   `moderate` is checked only when the document it replaces satisfied the validator.
//! - `validationLevel: off`, `bypassDocumentValidation: true`, or no validator: no checks, and
//!   no cost beyond one look at the collection's options.
//! - `validationAction: warn` never refuses: it logs the failure (namespace, `_id`, `errInfo`).
//! - The validator is read from the collection the statement resolved, so a `collMod` that
//!   commits meanwhile applies from the next statement on.

use bson::raw::RawBsonRef;
use bson::{Bson, Document, RawDocument, doc};
use mangrove_query::Validator;
use mangrove_storage::CollectionInfo;

use crate::Shared;
use crate::auth::Identity;
use crate::auth::roles::Action;
use crate::error::{CommandError, CommandResult, code};
use crate::request::{Request, type_name};

/// The most `errInfo` a failure carries before its details are left out (mongod truncates
/// its description to stay well under the 16 MiB reply limit too).
const MAX_ERR_INFO_BYTES: usize = 12 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Strict,
    Moderate,
}

/// What the writes of one statement to one collection must satisfy.
pub(crate) struct DocValidator {
    ns: String,
    /// A time-series collection's time field, which every document must hold as a date
    /// (never bypassed: it is the collection's shape, not a rule).
    time_field: Option<String>,
    validator: Option<Validator>,
    level: Level,
    warn: bool,
}

/// The statement's `bypassDocumentValidation`.
pub(crate) fn bypass(req: &Request<'_>) -> CommandResult<bool> {
    Ok(req.opt_bool("bypassDocumentValidation")?.unwrap_or(false))
}

/// The validator `coll`'s writes must satisfy, if any: none without one, under `off`, or when
/// the statement bypasses validation.
pub(crate) fn for_write(
    coll: &CollectionInfo,
    bypass: bool,
) -> CommandResult<Option<DocValidator>> {
    let options = &coll.options;
    let level = match options.get_str("validationLevel") {
        Ok("moderate") => Level::Moderate,
        _ => Level::Strict,
    };
    let validator = match options.get_document("validator") {
        _ if bypass || options.get_str("validationLevel").ok() == Some("off") => None,
        Ok(spec) if !spec.is_empty() => {
            let raw = bson::RawDocumentBuf::try_from(spec).map_err(CommandError::internal)?;
            Some(Validator::parse(&raw)?)
        }
        _ => None,
    };
    let time_field = crate::timeseries::time_field(coll).map(str::to_string);
    if validator.is_none() && time_field.is_none() {
        return Ok(None);
    }
    Ok(Some(DocValidator {
        ns: coll.ns(),
        time_field,
        validator,
        level,
        warn: options.get_str("validationAction").ok() == Some("warn"),
    }))
}

impl DocValidator {
    /// Checks a document about to be inserted.
    pub(crate) fn check_insert(&self, doc: &RawDocument) -> CommandResult<()> {
        self.check(doc)
    }

    /// Checks the document an update writes in place of `old`.
    pub(crate) fn check_update(&self, old: &RawDocument, new: &RawDocument) -> CommandResult<()> {
        if let Some(field) = &self.time_field {
            crate::timeseries::check_document(field, new)?;
        }
        // `moderate` leaves documents that were already invalid alone, as mongod does.
        if self.level == Level::Moderate && self.validator.as_ref().is_some_and(|v| !v.matches(old))
        {
            return Ok(());
        }
        self.check_rules(new)
    }

    fn check(&self, doc: &RawDocument) -> CommandResult<()> {
        if let Some(field) = &self.time_field {
            crate::timeseries::check_document(field, doc)?;
        }
        self.check_rules(doc)
    }

    fn check_rules(&self, doc: &RawDocument) -> CommandResult<()> {
        let Some(info) = self.validator.as_ref().and_then(|v| v.error_info(doc)) else {
            return Ok(());
        };
        if self.warn {
            let id = info.get("failingDocumentId").cloned().unwrap_or(Bson::Null);
            tracing::warn!(
                ns = %self.ns,
                id = %id,
                err_info = %info,
                "Document would fail validation"
            );
            return Ok(());
        }
        Err(failure(info))
    }
}

/// DocumentValidationFailure with its `errInfo`; an `errInfo` too large keeps only the
/// failing document's `_id`.
fn failure(mut info: Document) -> CommandError {
    let size = bson::RawDocumentBuf::try_from(&info).map_or(usize::MAX, |b| b.as_bytes().len());
    if size > MAX_ERR_INFO_BYTES {
        info.remove("details");
    }
    let mut e = CommandError::new(
        code::DOCUMENT_VALIDATION_FAILURE,
        "Document failed validation",
    );
    e.info = Some(Box::new(doc! { "errInfo": info }));
    e
}

/// Checks the validation options of `create` or `collMod` (`command`) as mongod does, for a
/// collection in database `db`; returns them in the form they are stored and shown.
pub(crate) fn parse_options(req: &Request<'_>, command: &str) -> CommandResult<Document> {
    let mut out = Document::new();
    if let Some(v) = req.get("validator") {
        let RawBsonRef::Document(spec) = v else {
            return Err(wrong_type(command, "validator", v, "object"));
        };
        if !spec.is_empty() {
            refuse_in_database(req.db)?;
        }
        Validator::parse(spec)?;
        out.insert(
            "validator",
            Document::try_from(spec).map_err(CommandError::internal)?,
        );
    }
    for (field, allowed) in [
        ("validationLevel", &["off", "strict", "moderate"][..]),
        ("validationAction", &["error", "warn"][..]),
    ] {
        match req.get(field) {
            None => {}
            Some(RawBsonRef::String(s)) if allowed.contains(&s) => {
                out.insert(field, s);
            }
            Some(RawBsonRef::String(s)) => {
                return Err(CommandError::bad_value(format!(
                    "Enumeration value '{s}' for field '{command}.{field}' is not a valid value."
                )));
            }
            Some(v) => return Err(wrong_type(command, field, v, "string")),
        }
    }
    Ok(out)
}

/// mongod keeps validators off the `admin`, `local` and `config` databases.
fn refuse_in_database(db: &str) -> CommandResult<()> {
    if matches!(db, "admin" | "local" | "config") {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            format!("Document validators are not allowed on collections in the {db} database"),
        ));
    }
    Ok(())
}

fn wrong_type(command: &str, field: &str, v: RawBsonRef<'_>, expected: &str) -> CommandError {
    CommandError::type_mismatch(format!(
        "BSON field '{command}.{field}' is the wrong type '{}', expected type '{expected}'",
        type_name(v.element_type())
    ))
}

/// Under `--auth`, `bypassDocumentValidation: true` needs mongod's `bypassDocumentValidation`
/// action (granted by dbAdmin, restore and the roles above them).
pub(crate) fn authorize_bypass(
    shared: &Shared,
    identity: &mut Identity,
    req: &Request<'_>,
) -> CommandResult<()> {
    if !shared.config.auth
        || !matches!(
            req.get("bypassDocumentValidation"),
            Some(RawBsonRef::Boolean(true))
        )
    {
        return Ok(());
    }
    if crate::auth::may(shared, identity, req.db, Action::BypassDocumentValidation)? {
        return Ok(());
    }
    Err(crate::auth::unauthorized(req.db, req.name))
}
