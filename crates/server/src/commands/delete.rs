//! `delete`: statements run one by one (multi-document ones outside transactions in bounded
//! commits), replying how many documents went.

use std::sync::Arc;

use bson::raw::RawDocument;
use bson::{Bson, doc};
use mangrove_query::{with_collation, with_let};
use mangrove_storage::{StorageError, Txn};

use crate::error::{CommandError, CommandResult, code};
use crate::request::{Request, as_i64};
use crate::retryable::RetryableWrite;
use crate::{Counters, Shared};

use super::Reply;
use super::collections::collection_for_write;
use super::names::validate_collection_name;
use super::write_path::{WriteOptions, run_write};
use super::write_stmt::{
    Stmt, batch_size_check, finish_write, stmt_collation, stmt_fields, stmt_filter, targets,
};

pub(super) async fn delete(
    shared: &Shared,
    req: &Request<'_>,
    mut txn: Option<&mut Txn>,
    retry: Option<Arc<RetryableWrite>>,
) -> CommandResult<Reply> {
    req.check_fields(&["deletes", "ordered", "let"])?;
    let name = req.collection()?;
    validate_collection_name(req.db, name)?;
    let mut opts = WriteOptions::from_request(req)?;
    opts.retry = retry;
    let ordered = req.opt_bool("ordered")?.unwrap_or(true);
    let stmts = req.batch("deletes")?;
    batch_size_check(stmts.len())?;
    let lets = req.opt_doc("let")?;
    let ns = req.ns(name);

    let mut n = 0u64;
    let mut write_errors = Vec::new();
    let in_txn = txn.is_some();
    for (index, stmt) in stmts.iter().enumerate() {
        Counters::bump(&shared.counters.delete, 1);
        let stmt = Stmt {
            index,
            doc: stmt,
            lets,
            ns: &ns,
        };
        match run_stmt(shared, &opts, txn.as_deref_mut(), stmt).await {
            Err(e) if in_txn && e.code == code::WRITE_CONFLICT => return Err(e),
            // killOp fails the whole command, as mongod's interruptions do.
            Err(e) if e.code == code::INTERRUPTED => return Err(e),
            Ok(count) => n += count,
            Err(e) => {
                write_errors.push(e.to_write_error(index));
                if ordered {
                    break;
                }
            }
        }
    }
    Ok(finish_write(
        doc! { "n": n as i32 },
        write_errors,
        opts.wc_error(),
    ))
}

/// Runs one statement (or returns what a retried one did the first time): how many documents
/// it deleted.
pub(super) async fn run_stmt(
    shared: &Shared,
    opts: &WriteOptions,
    txn: Option<&mut Txn>,
    stmt: Stmt<'_>,
) -> CommandResult<u64> {
    if let Some(recorded) = opts.retry.as_ref().and_then(|r| r.recorded(stmt.index)) {
        return Ok(recorded.as_i64().unwrap_or(0) as u64);
    }
    stmt_fields(
        stmt.doc,
        "delete",
        "deletes",
        &["q", "limit", "collation", "hint"],
    )?;
    let filter = with_let(stmt.lets, || stmt_filter(stmt.doc, "delete", "deletes"))?;
    let just_one = stmt_limit(stmt.doc)?;
    let collation = stmt_collation(stmt.doc)?;
    let found = collection_for_write(shared, txn.as_deref(), stmt.ns);
    let Some(coll) = found else {
        return Ok(0);
    };
    super::views::refuse_write(&coll)?;
    let collation = collation.on(&coll)?;
    if txn.is_some() {
        crate::capped::refuse_in_transaction(&coll)?;
    }
    // Held for the statement: the next insert into a capped collection recounts after it.
    let _capped = shared.capped.writer(&coll).await;
    if !just_one && txn.is_none() && opts.retry.is_none() {
        let (deleted, _) = super::multi_write::run_chunked(
            shared,
            opts,
            &coll,
            &filter,
            collation.as_ref(),
            |txn, key, _| {
                txn.delete(&coll, key).map_err(CommandError::from)?;
                Ok(1)
            },
        )
        .await?;
        return Ok(deleted);
    }
    run_write(shared, opts, txn, |txn| {
        let found = mangrove_js::with_deadline(opts.js_deadline, || {
            with_collation(collation.as_ref(), || {
                targets(txn, &coll, &filter, just_one)
            })
        })?;
        let count = found.len() as u64;
        for (key, _) in found {
            txn.delete(&coll, key)
                .map_err(|e: StorageError| CommandError::from(e))?;
        }
        if let Some(retry) = &opts.retry {
            retry.note(stmt.index, Bson::Int64(count as i64));
        }
        Ok(count)
    })
    .await
}

/// `limit`: 1 deletes the first match only, 0 every match.
fn stmt_limit(stmt: &RawDocument) -> CommandResult<bool> {
    match stmt.get("limit").ok().flatten() {
        None => Err(CommandError::new(
            code::MISSING_FIELD,
            "BSON field 'delete.deletes.limit' is missing but a required field",
        )),
        Some(v) => match as_i64(v) {
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            _ => Err(CommandError::failed_to_parse(format!(
                "The limit field in delete objects must be 0 or 1. Got {v:?}"
            ))),
        },
    }
}
