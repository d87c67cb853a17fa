//! The document as stored: a valid `_id` first (generated if absent), within the size limit.

use bson::oid::ObjectId;
use bson::raw::{RawBsonRef, RawDocument, cstr};
use bson::{Bson, Document, RawDocumentBuf};
use mangrove_storage::{CollectionInfo, DocKey};

use crate::error::{CommandError, CommandResult, code};

use super::args::internal;

pub(super) use crate::access::{doc_key, key_of};

pub(super) fn id_of(doc: &RawDocument) -> Option<RawBsonRef<'_>> {
    doc.get("_id").ok().flatten()
}

pub(super) fn check_id(id: RawBsonRef<'_>) -> CommandResult<()> {
    let bad = match id {
        RawBsonRef::Array(_) => Some("array"),
        RawBsonRef::RegularExpression(_) => Some("regex"),
        RawBsonRef::Undefined => Some("undefined"),
        _ => None,
    };
    if let Some(t) = bad {
        return Err(CommandError::new(53, format!("can't use an {t} for _id")));
    }
    // An _id document must be storable as a value, so no operator-looking field names in it.
    if let RawBsonRef::Document(d) = id
        && let Some(Ok((k, _))) = d
            .iter()
            .find(|f| f.as_ref().is_ok_and(|(k, _)| k.as_str().starts_with('$')))
    {
        return Err(CommandError::new(
            52,
            format!(
                "_id fields may not contain '$'-prefixed fields: {} is not valid for storage.",
                k.as_str()
            ),
        ));
    }
    Ok(())
}

pub(super) fn too_large(size: usize, max: usize) -> CommandError {
    CommandError::new(
        code::BSON_OBJECT_TOO_LARGE,
        format!("object to insert too large. size in bytes: {size}, max size: {max}"),
    )
}

/// The document as stored in `coll`: `_id` first (generated if absent), within the size limit;
/// with its key there.
pub(super) fn prepare_insert(
    coll: &CollectionInfo,
    doc: &RawDocument,
    max_bson: usize,
) -> CommandResult<(DocKey, RawDocumentBuf)> {
    let mut position = None;
    for (i, item) in doc.iter().enumerate() {
        let (key, value) = item.map_err(|e| CommandError::new(22, format!("invalid BSON: {e}")))?;
        if key.as_str() == "_id" {
            check_id(value)?;
            position = Some(i);
            break;
        }
    }
    let stored = if position == Some(0) {
        RawDocumentBuf::from_bytes(doc.as_bytes().to_vec()).map_err(internal)?
    } else {
        // Rebuild with `_id` first, as mongod stores it.
        let mut out = RawDocumentBuf::new();
        match id_of(doc) {
            Some(id) => out.append(cstr!("_id"), id),
            None => out.append(cstr!("_id"), ObjectId::new()),
        }
        for item in doc.iter() {
            let (key, value) = item.map_err(internal)?;
            if key.as_str() != "_id" {
                out.append(key, value);
            }
        }
        out
    };
    if stored.as_bytes().len() > max_bson {
        return Err(too_large(stored.as_bytes().len(), max_bson));
    }
    let id = id_of(&stored).ok_or_else(|| internal("stored document lost its _id"))?;
    let key = doc_key(coll, id);
    Ok((key, stored))
}

/// Puts `_id` first, taking it from `fallback` when the document has none.
pub(super) fn with_id_first(doc: Document, fallback: Option<&Bson>) -> Document {
    let id = doc
        .get("_id")
        .cloned()
        .or_else(|| fallback.cloned())
        .unwrap_or_else(|| Bson::ObjectId(ObjectId::new()));
    let mut out = Document::new();
    out.insert("_id", id);
    for (k, v) in doc {
        if k != "_id" {
            out.insert(k, v);
        }
    }
    out
}
