//! `insert`: auto-commit batches in bounded commits that resume after write conflicts, or the
//! statements of a transaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::raw::RawDocument;
use bson::{Bson, Document, doc};
use mangrove_storage::{CollectionInfo, CommitTicket, Txn};

use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;
use crate::retryable::RetryableWrite;
use crate::{Counters, Shared};

use super::Reply;
use super::collections::implicit_collection;
use super::names::validate_collection_name;
use super::stored::prepare_insert;
use super::write_path::{WriteOptions, acknowledge, commit_write, max_time_expired};
use super::write_stmt::{batch_size_check, finish_write};

pub(super) async fn insert(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&mut Txn>,
    retry: Option<Arc<RetryableWrite>>,
) -> CommandResult<Reply> {
    req.check_fields(&["documents", "ordered", "bypassDocumentValidation"])?;
    let name = req.collection()?;
    validate_collection_name(req.db, name)?;
    let mut opts = WriteOptions::from_request(req)?;
    opts.retry = retry;
    let ordered = req.opt_bool("ordered")?.unwrap_or(true);
    let docs = req.batch("documents")?;
    batch_size_check(docs.len())?;
    let ns = req.ns(name);
    let max_bson = shared.config.max_bson_size;
    if let Some(txn) = txn {
        let coll = txn.create_collection_shared(&ns, Document::new())?;
        super::views::refuse_write(&coll)?;
        return insert_in_txn(shared, txn, &coll, &docs);
    }
    let coll = implicit_collection(shared, &ns, &opts).await?;
    super::views::refuse_write(&coll)?;

    let mut inserted = 0usize;
    let mut write_errors = Vec::new();
    let mut next = 0usize;
    let started = Instant::now();
    // Commits become visible and durable in order, so waiting on the last covers them all.
    let mut last_ticket: Option<CommitTicket> = None;
    let chunk = super::multi_write::chunk_bytes(&shared.engine);
    // One transaction carries the batch; a write conflict commits what is done, waits, and
    // resumes at the conflicting document.
    'batch: while next < docs.len() {
        let mut txn = shared.engine.begin();
        txn.set_meta(opts.meta.clone());
        while next < docs.len() {
            // A retried statement that already ran counts as inserted and is not run again.
            if let Some(retry) = &opts.retry
                && retry.recorded(next).is_some()
            {
                inserted += 1;
                next += 1;
                continue;
            }
            let result = prepare_insert(docs[next], max_bson).and_then(|(key, stored)| {
                txn.insert(&coll, key, Arc::new(stored))
                    .map_err(CommandError::from)
            });
            match result {
                Ok(()) => {
                    inserted += 1;
                    if let Some(retry) = &opts.retry {
                        retry.note(next, Bson::Int32(1));
                    }
                    // A large batch commits in pieces, bounding the memory one commit holds
                    // (an insert batch was never atomic in MongoDB either).
                    if txn.bytes() >= chunk && next + 1 < docs.len() {
                        next += 1;
                        // The next piece's snapshot must see this one (its retryable-write
                        // record is rewritten by the next commit).
                        let mut ticket = commit_write(shared, &opts, txn)?;
                        ticket.visible().await.map_err(CommandError::from)?;
                        last_ticket = Some(ticket);
                        continue 'batch;
                    }
                }
                Err(e) if e.code == code::WRITE_CONFLICT && started.elapsed() < opts.patience => {
                    last_ticket = Some(commit_write(shared, &opts, txn)?);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue 'batch;
                }
                Err(e) => {
                    let e = if e.code == code::WRITE_CONFLICT {
                        max_time_expired(&opts)
                    } else {
                        e
                    };
                    write_errors.push(e.to_write_error(next));
                    if ordered {
                        last_ticket = Some(commit_write(shared, &opts, txn)?);
                        break 'batch;
                    }
                }
            }
            next += 1;
        }
        last_ticket = Some(commit_write(shared, &opts, txn)?);
    }
    if let Some(ticket) = last_ticket {
        acknowledge(ticket, &opts).await?;
    }
    Counters::bump(&shared.counters.insert, inserted as u64);
    Ok(finish_write(
        doc! { "n": inserted as i32 },
        write_errors,
        opts.wc_error(),
    ))
}

/// Inserts into the session's transaction. The first failure ends the statement: a conflict as
/// the command's error (the transaction is then aborted and the client retries it whole), any
/// other as a write error, as mongod reports them.
fn insert_in_txn(
    shared: &Shared,
    txn: &mut Txn,
    coll: &CollectionInfo,
    docs: &[&RawDocument],
) -> CommandResult<Reply> {
    let mut inserted = 0usize;
    let mut write_errors = Vec::new();
    for (index, doc) in docs.iter().enumerate() {
        let result = prepare_insert(doc, shared.config.max_bson_size)
            .and_then(|(key, stored)| Ok(txn.insert(coll, key, Arc::new(stored))?));
        match result {
            Ok(()) => inserted += 1,
            Err(e) if e.code == code::WRITE_CONFLICT => return Err(e),
            Err(e) => {
                write_errors.push(e.to_write_error(index));
                break;
            }
        }
    }
    Counters::bump(&shared.counters.insert, inserted as u64);
    Ok(finish_write(
        doc! { "n": inserted as i32 },
        write_errors,
        None,
    ))
}
