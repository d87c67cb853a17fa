//! Multi-document updates and deletes outside transactions, in commits of bounded size.
//!
//! MongoDB applies `multi: true` updates and `limit: 0` deletes one document at a time; they
//! were never atomic. Mangrove runs them as a series of transactions of at most
//! [`chunk_bytes`] of writes each, so that one statement over a large collection neither holds
//! memory in proportion to its size nor blocks other clients' commits while one giant commit
//! installs.
//!
//! Invariants:
//! - The target keys are fixed first, from one snapshot (keys only, not documents); each chunk
//!   re-reads its documents in its own transaction and re-checks the filter, so a document
//!   another client changed meanwhile is judged as it is now, and one the statement already
//!   changed is never changed twice (its key is visited once).
//! - A write conflict redoes only the current chunk; committed chunks stand.
//! - Statements with a retryable-write record (`txnNumber`) keep the single-transaction path:
//!   their record must commit with all their writes.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use mangrove_query::{Collation, Filter, with_collation};
use mangrove_storage::{
    CollectionInfo, CommitTicket, DocKey, Engine, StoredDoc, TransactionLimits, Txn,
};

use super::write_path::{WriteOptions, acknowledge};
use crate::Shared;
use crate::access::{Examined, Hint, choose, for_each_match};
use crate::error::{CommandError, CommandResult, code};

/// Writes per commit: at most 4 MiB (a piece's work runs on one runtime thread, so a piece
/// should take milliseconds, not hundreds), and at most a quarter of what one transaction may
/// hold.
pub(super) fn chunk_bytes(engine: &Engine) -> u64 {
    let limit = TransactionLimits::per_transaction(engine.cache_bytes());
    (4 * 1024 * 1024).min(limit / 4).max(1)
}

/// The keys of the documents `filter` matches now, in the order the access path visits them.
fn target_keys(
    shared: &Shared,
    coll: &CollectionInfo,
    filter: &Filter,
) -> CommandResult<Vec<DocKey>> {
    let snapshot = shared.engine.snapshot();
    let access = choose(
        &snapshot,
        coll,
        filter,
        &bson::RawDocumentBuf::new(),
        &Hint::None,
        None,
    )?;
    let mut keys = Vec::new();
    for_each_match(
        &snapshot,
        coll,
        &access,
        filter,
        &mut Examined::default(),
        &mut |key, _| {
            keys.push(key.clone());
            ControlFlow::Continue(())
        },
    )?;
    Ok(keys)
}

/// Runs `apply` on every document `filter` matches, in chunked commits; returns the sum of
/// what `apply` returned (0 for documents that no longer match).
pub(super) async fn run_chunked(
    shared: &Shared,
    opts: &WriteOptions,
    coll: &CollectionInfo,
    filter: &Filter,
    collation: Option<&Collation>,
    mut apply: impl FnMut(&mut Txn, DocKey, &StoredDoc) -> CommandResult<u64>,
) -> CommandResult<(u64, u64)> {
    debug_assert!(
        opts.retry.is_none(),
        "retryable writes commit in one transaction"
    );
    let keys = mangrove_js::with_deadline(opts.js_deadline, || {
        with_collation(collation, || target_keys(shared, coll, filter))
    })?;
    let limit = chunk_bytes(&shared.engine);
    let started = Instant::now();
    let (mut matched, mut changed) = (0, 0);
    let mut last: Option<CommitTicket> = None;
    let mut next = 0;
    let mut backoff = Duration::from_micros(200);
    while next < keys.len() {
        let mut txn = shared.engine.begin();
        txn.set_meta(opts.meta.clone());
        let outcome = with_collation(collation, || {
            run_chunk(&mut txn, coll, filter, &keys[next..], limit, &mut apply)
        });
        match outcome {
            Ok((done, m, c)) => {
                // The next chunk reads a snapshot that includes this one.
                let mut ticket = txn.commit().map_err(CommandError::from)?;
                ticket.visible().await.map_err(CommandError::from)?;
                last = Some(ticket);
                next += done;
                matched += m;
                changed += c;
            }
            Err(e) if e.code == code::WRITE_CONFLICT => {
                drop(txn);
                if started.elapsed() >= opts.patience {
                    return Err(e);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(ticket) = last {
        acknowledge(ticket, opts).await?;
    }
    Ok((matched, changed))
}

/// Applies to keys until the transaction holds `limit` bytes; returns (keys done, matched,
/// sum of `apply`).
fn run_chunk(
    txn: &mut Txn,
    coll: &CollectionInfo,
    filter: &Filter,
    keys: &[DocKey],
    limit: u64,
    apply: &mut impl FnMut(&mut Txn, DocKey, &StoredDoc) -> CommandResult<u64>,
) -> CommandResult<(usize, u64, u64)> {
    let (mut done, mut matched, mut changed) = (0, 0, 0);
    for key in keys {
        done += 1;
        let Some(doc) = txn.get(coll, key).map_err(CommandError::from)? else {
            continue; // deleted since the keys were read
        };
        if !filter.try_matches(&doc)? {
            continue; // changed since, and no longer a target
        }
        matched += 1;
        changed += apply(txn, key.clone(), &doc)?;
        if txn.bytes() >= limit {
            break;
        }
    }
    Ok((done, matched, changed))
}
