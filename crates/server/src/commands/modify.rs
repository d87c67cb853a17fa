//! One document changed by an update (kept `_id`, size limit), and the document an upsert that
//! matched nothing inserts; shared by `update` and `findAndModify`.

use std::sync::Arc;

use bson::raw::RawDocument;
use bson::{Document, RawDocumentBuf};
use mangrove_query::{Filter, Update};
use mangrove_storage::{CollectionInfo, DocKey, StoredDoc, Txn};

use crate::capped::Writer;
use crate::error::{CommandError, CommandResult};
use crate::validation::DocValidator;

use super::args::internal;
use super::stored::{id_of, key_of, prepare_insert, with_id_first};

/// What a document a statement writes must satisfy: the size limit and the collection's
/// validator (checked before the write, see `crate::validation`).
pub(super) struct DocChecks<'a> {
    pub max_bson: usize,
    pub validator: Option<&'a DocValidator>,
}

/// Applies `update` to one matched document and writes the result if it changed; returns the
/// new document when it did.
pub(super) fn update_one_doc(
    txn: &mut Txn,
    coll: &CollectionInfo,
    filter: &Filter,
    update: &Update,
    key: DocKey,
    old: &StoredDoc,
    checks: &DocChecks<'_>,
) -> CommandResult<Option<StoredDoc>> {
    let max_bson = checks.max_bson;
    let old_doc = Document::try_from(old.as_ref() as &RawDocument).map_err(internal)?;
    let old_id = old_doc.get("_id").cloned();
    // The `$` operator refers to the array element the filter matched in this document.
    let positional = filter.positional_index(old);
    let new_doc = with_id_first(
        update.apply_with_positional(&old_doc, false, positional)?,
        old_id.as_ref(),
    );
    if new_doc == old_doc {
        return Ok(None);
    }
    let new_raw = RawDocumentBuf::try_from(&new_doc).map_err(internal)?;
    if new_raw.as_bytes().len() > max_bson {
        return Err(CommandError::new(
            17419,
            format!("Resulting document after update is larger than {max_bson}"),
        ));
    }
    let new_id = id_of(&new_raw).ok_or_else(|| internal("updated document lost its _id"))?;
    // Compared binary, as mongod does, whatever the key: a capped collection's key is an
    // insertion number, a collated one equates "a" and "A".
    let id_changed = id_of(old).is_some_and(|old_id| key_of(new_id) != key_of(old_id));
    if id_changed {
        return Err(CommandError::new(
            66,
            format!(
                "After applying the update, the (immutable) field '_id' was found to have been altered to _id: {}",
                new_doc
                    .get("_id")
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ),
        ));
    }
    if let Some(validator) = checks.validator {
        validator.check_update(old, &new_raw)?;
    }
    let new = Arc::new(new_raw);
    // The log describes an operator or pipeline update by its changed fields (change streams'
    // `updateDescription`); a replacement is logged as one.
    if update.is_replacement() {
        txn.replace(coll, key, new.clone())?;
    } else {
        txn.update(coll, key, new.clone())?;
    }
    Ok(Some(new))
}

/// Inserts the document an upsert that matched nothing creates; returns it. Into a capped
/// collection it goes under `capped`'s next insertion number (the next insert trims).
pub(super) fn upsert_doc(
    txn: &mut Txn,
    coll: &CollectionInfo,
    filter: &Filter,
    update: &Update,
    checks: &DocChecks<'_>,
    capped: Option<&mut Writer>,
) -> CommandResult<StoredDoc> {
    let seed = filter.equality_seed()?;
    let new_doc = if update.is_replacement() {
        update.apply(&Document::new(), true)?
    } else {
        update.apply(&seed, true)?
    };
    let new_doc = with_id_first(new_doc, seed.get("_id"));
    let raw = RawDocumentBuf::try_from(&new_doc).map_err(internal)?;
    let (key, stored) = prepare_insert(coll, &raw, checks.max_bson)?;
    if let Some(validator) = checks.validator {
        validator.check_insert(&stored)?;
    }
    let key = match capped {
        Some(capped) => capped.next_key(txn, coll)?,
        None => key,
    };
    let stored = Arc::new(stored);
    txn.insert(coll, key, stored.clone())?;
    Ok(stored)
}
