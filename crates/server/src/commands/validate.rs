//! `validate`: checks one collection's documents against its indexes, both ways, in a
//! snapshot (the storage engine's `verify_collection`, what `mangrove verify` runs for all),
//! and with `full: true` every value of the base store against its checksum.
//!
//! Invariants:
//! - Nothing is repaired: a problem is reported (`valid: false`, `errors`) with the index and
//!   key it concerns, as mongod reports without `repair`. Damage that stops a read (a checksum
//!   that does not match) fails the command, naming the file and offset, as any read would.
//! - It reads a snapshot, so writers are never blocked; the answer describes that snapshot.

use bson::raw::RawBsonRef;
use bson::{Document, doc};

use crate::Shared;
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;

use super::Reply;
use super::names::validate_db_name;

pub(super) fn validate(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&[
        "full",
        "background",
        "repair",
        "metadata",
        "checkBSONConformance",
    ])?;
    validate_db_name(req.db)?;
    let Some(RawBsonRef::String(name)) = req.command_value() else {
        return Err(CommandError::type_mismatch(
            "collection name has invalid type; expected a string",
        ));
    };
    if req.opt_bool("repair")?.unwrap_or(false) {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "validate with repair is not supported by Mangrove: it reports problems and repairs nothing; rebuild a damaged index with dropIndexes and createIndexes",
        ));
    }
    let full = req.opt_bool("full")?.unwrap_or(false);
    let ns = req.ns(name);
    let snapshot = shared.engine.snapshot();
    let Some(coll) = snapshot.collection(&ns) else {
        return Err(CommandError::new(
            code::NAMESPACE_NOT_FOUND,
            format!("Collection '{ns}' does not exist to validate."),
        ));
    };
    super::views::refuse_view(&coll, Some(format!("Cannot validate a view: {ns}")))?;
    let (report, per_index_keys) = snapshot.verify_collection(&coll)?;
    let mut errors = report.problems;
    let mut warnings: Vec<String> = Vec::new();
    if full {
        match shared.engine.verify_base_store()? {
            Some(base) => errors.extend(base.problems),
            None => warnings.push("no base store to check (an in-memory engine)".into()),
        }
    }
    let (keys, details) = per_index(&coll, report.documents, &per_index_keys, &errors);
    Ok(doc! {
        "ns": ns,
        "nInvalidDocuments": 0i64,
        "nNonCompliantDocuments": 0i64,
        "nrecords": report.documents as i64,
        "nIndexes": keys.len() as i32,
        "keysPerIndex": keys,
        "indexDetails": details,
        "valid": errors.is_empty(),
        "repaired": false,
        "warnings": warnings,
        "errors": errors,
        "extraIndexEntries": [],
        "missingIndexEntries": [],
        "corruptRecords": [],
        "ok": 1.0,
    }
    .into())
}

/// `keysPerIndex` and `indexDetails`: the `_id` index (the collection's own key order, one key
/// per document) unless keyed by insertion, then each index but the hidden internal ones.
fn per_index(
    coll: &mangrove_storage::CollectionInfo,
    documents: u64,
    counts: &[u64],
    errors: &[String],
) -> (Document, Document) {
    let mut keys = Document::new();
    let mut details = Document::new();
    if !crate::capped::keyed_by_insertion(coll) {
        keys.insert("_id_", documents as i64);
        details.insert("_id_", doc! { "valid": true });
    }
    for (index, n) in coll.indexes.iter().zip(counts) {
        if crate::timeseries::is_internal_index(&index.key.name) {
            continue;
        }
        let valid = !errors.iter().any(|e| e.contains(&index.key.name));
        keys.insert(index.key.name.clone(), *n as i64);
        details.insert(index.key.name.clone(), doc! { "valid": valid });
    }
    (keys, details)
}
