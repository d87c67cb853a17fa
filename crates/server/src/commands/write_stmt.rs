//! What the statements of insert, update and delete share: the batch size limit, checks of a
//! statement's fields, the documents a statement targets, and the write reply.

use std::ops::ControlFlow;

use bson::raw::{RawBsonRef, RawDocument};
use bson::{Document, RawDocumentBuf};
use mangrove_query::Filter;
use mangrove_storage::{CollectionInfo, DocKey, StoredDoc, Txn};

use crate::access::{Examined, Hint, choose, for_each_match};
use crate::error::{CommandError, CommandResult, code};
use crate::request::{as_bool, type_name};

use super::Reply;
use super::args::{OwnCollation, internal};

/// A write command may carry at most this many statements, as mongod's `maxWriteBatchSize`.
const MAX_WRITE_BATCH: usize = 100_000;

pub(super) fn finish_write(
    mut reply: Document,
    write_errors: Vec<Document>,
    wc_error: Option<Document>,
) -> Reply {
    if !write_errors.is_empty() {
        reply.insert("writeErrors", write_errors);
    }
    if let Some(wce) = wc_error {
        reply.insert("writeConcernError", wce);
    }
    reply.insert("ok", 1.0);
    reply.into()
}

pub(super) fn batch_size_check(n: usize) -> CommandResult<()> {
    if n == 0 || n > MAX_WRITE_BATCH {
        return Err(CommandError::new(
            16,
            format!(
                "Write batch sizes must be between 1 and {MAX_WRITE_BATCH}. Got {n} operations."
            ),
        ));
    }
    Ok(())
}

/// Documents a write statement targets, read through the transaction so its own writes count.
pub(super) fn targets(
    txn: &Txn,
    coll: &CollectionInfo,
    filter: &Filter,
    just_one: bool,
) -> CommandResult<Vec<(DocKey, StoredDoc)>> {
    // Partial indexes need the raw filter to prove they cover it; write statements go without.
    let access = choose(txn, coll, filter, &RawDocumentBuf::new(), &Hint::None, None)?;
    let mut out = Vec::new();
    for_each_match(
        txn,
        coll,
        &access,
        filter,
        &mut Examined::default(),
        &mut |key, doc| {
            out.push((key.clone(), doc.clone()));
            if just_one {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        },
    )?;
    Ok(out)
}

pub(super) fn stmt_fields(
    stmt: &RawDocument,
    command: &str,
    list: &str,
    allowed: &[&str],
) -> CommandResult<()> {
    for item in stmt.iter() {
        let (key, _) = item.map_err(internal)?;
        if !allowed.contains(&key.as_str()) {
            return Err(CommandError::new(
                code::UNKNOWN_FIELD,
                format!(
                    "BSON field '{command}.{list}.{}' is an unknown field.",
                    key.as_str()
                ),
            ));
        }
    }
    Ok(())
}

pub(super) fn stmt_bool(stmt: &RawDocument, field: &str) -> CommandResult<bool> {
    match stmt.get(field).ok().flatten() {
        None => Ok(false),
        Some(v) => as_bool(v).ok_or_else(|| {
            CommandError::type_mismatch(format!(
                "BSON field '{field}' is the wrong type '{}', expected type 'bool'",
                type_name(v.element_type())
            ))
        }),
    }
}

pub(super) fn stmt_filter(stmt: &RawDocument, command: &str, list: &str) -> CommandResult<Filter> {
    match stmt.get("q").ok().flatten() {
        Some(RawBsonRef::Document(q)) => Ok(Filter::parse(q)?),
        Some(v) => Err(CommandError::type_mismatch(format!(
            "BSON field '{command}.{list}.q' is the wrong type '{}', expected type 'object'",
            type_name(v.element_type())
        ))),
        None => Err(CommandError::new(
            code::MISSING_FIELD,
            format!("BSON field '{command}.{list}.q' is missing but a required field"),
        )),
    }
}

/// One update or delete statement and what it is run with: its position in the batch, the
/// command's `let` variables and namespace.
#[derive(Clone, Copy)]
pub(super) struct Stmt<'a> {
    pub index: usize,
    pub doc: &'a RawDocument,
    pub lets: Option<&'a RawDocument>,
    pub ns: &'a str,
}

/// A statement's `collation`, if given as a document.
pub(super) fn stmt_collation(stmt: &RawDocument) -> CommandResult<OwnCollation> {
    OwnCollation::parse(match stmt.get("collation").ok().flatten() {
        Some(RawBsonRef::Document(c)) => Some(c),
        _ => None,
    })
}
