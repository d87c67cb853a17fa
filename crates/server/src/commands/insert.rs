//! `insert`: auto-commit batches in bounded commits that resume after write conflicts, or the
//! statements of a transaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::RawDocumentBuf;
use bson::raw::RawDocument;
use bson::{Bson, Document, doc};
use mangrove_storage::{CollectionInfo, CommitTicket, DocKey, Txn};

use crate::capped::Writer;
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;
use crate::retryable::RetryableWrite;
use crate::validation::DocValidator;
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
    let bypass = crate::validation::bypass(req)?;
    if let Some(txn) = txn {
        let coll = txn.create_collection_shared(&ns, Document::new())?;
        super::views::refuse_write(&coll)?;
        crate::capped::refuse_in_transaction(&coll)?;
        let validator = crate::validation::for_write(&coll, bypass)?;
        return insert_in_txn(shared, txn, (&coll, validator.as_ref()), &docs);
    }
    let coll = implicit_collection(shared, &ns, &opts).await?;
    super::views::refuse_write(&coll)?;
    let capped = shared.capped.writer(&coll).await;
    let validator = crate::validation::for_write(&coll, bypass)?;

    let mut batch = Batch {
        shared,
        opts: &opts,
        coll: std::borrow::Cow::Borrowed(&coll),
        docs: &docs,
        ordered,
        started: Instant::now(),
        inserted: 0,
        write_errors: Vec::new(),
        next: 0,
        last_ticket: None,
        capped,
        validator: validator.as_ref(),
        index_base: 0,
    };
    batch.run().await?;
    let (inserted, write_errors) = (batch.inserted, batch.write_errors);
    Counters::bump(&shared.counters.insert, inserted as u64);
    Ok(finish_write(
        doc! { "n": inserted as i32 },
        write_errors,
        opts.wc_error(),
    ))
}

/// An auto-commit insert batch in progress: one transaction carries the batch; a write
/// conflict commits what is done, waits, and resumes at the conflicting document.
struct Batch<'a> {
    shared: &'a Shared,
    opts: &'a WriteOptions,
    /// Looked up again if the collection becomes capped meanwhile
    /// (`write_path::keying_changed`).
    coll: std::borrow::Cow<'a, CollectionInfo>,
    docs: &'a [&'a RawDocument],
    ordered: bool,
    started: Instant,
    inserted: usize,
    write_errors: Vec<Document>,
    /// The next document to insert.
    next: usize,
    /// Commits become visible and durable in order, so waiting on the last covers them all.
    last_ticket: Option<CommitTicket>,
    /// A capped collection's writer: keys in insertion order, and the trim to its limits.
    capped: Option<Writer>,
    /// The collection's validator, unless the command bypasses it.
    validator: Option<&'a DocValidator>,
    /// The statement number of `docs[0]` (non-zero for an op of `bulkWrite`).
    index_base: usize,
}

/// Why one transaction of a batch ended.
enum Step {
    /// Every document is done.
    Done,
    /// The transaction holds a piece's worth of writes; the rest goes in the next one.
    Piece,
    /// A write conflict: commit what is done, wait, and resume at the conflicting document.
    Conflict,
    /// An ordered batch stops at its first write error.
    Stop,
}

impl Batch<'_> {
    async fn run(&mut self) -> CommandResult<()> {
        let chunk = super::multi_write::chunk_bytes(&self.shared.engine);
        while self.next < self.docs.len() {
            let mut txn = self.shared.engine.begin();
            txn.set_meta(self.opts.meta.clone());
            if super::write_path::keying_changed(&txn, &self.coll) {
                // `convertToCapped` since the statement looked the collection up: the rest
                // goes in by insertion number, under the capped collection's writer.
                drop(txn);
                self.refresh().await;
                continue;
            }
            let step = self.fill(&mut txn, chunk);
            if let Some(capped) = &mut self.capped {
                capped.trim(&mut txn, &self.coll)?;
            }
            let mut ticket = commit_write(self.shared, self.opts, txn)?;
            if let Some(capped) = &mut self.capped {
                // The next insertion numbers may be handed out once these are visible.
                ticket.visible().await.map_err(CommandError::from)?;
                capped.settle();
            }
            match step {
                // The next piece's snapshot must see this one (its retryable-write record is
                // rewritten by the next commit).
                Step::Piece => {
                    ticket.visible().await.map_err(CommandError::from)?;
                }
                Step::Conflict => tokio::time::sleep(Duration::from_millis(1)).await,
                Step::Done => {}
                Step::Stop => {
                    self.last_ticket = Some(ticket);
                    break;
                }
            }
            self.last_ticket = Some(ticket);
        }
        // Waiting for durability does not hold up the collection's next writer.
        self.capped = None;
        if let Some(ticket) = self.last_ticket.take() {
            acknowledge(ticket, self.opts).await?;
        }
        Ok(())
    }

    /// Looks the collection up again, with the writer its keying needs.
    async fn refresh(&mut self) {
        let Some(now) = self.shared.engine.snapshot().collection(&self.coll.ns()) else {
            return;
        };
        self.capped = None;
        self.capped = self.shared.capped.writer(&now).await;
        self.coll = std::borrow::Cow::Owned(now);
    }

    /// Inserts documents from `next` into `txn` until the batch ends or the transaction must.
    fn fill(&mut self, txn: &mut Txn, chunk: u64) -> Step {
        let max_bson = self.shared.config.max_bson_size;
        while self.next < self.docs.len() {
            // A retried statement that already ran counts as inserted and is not run again.
            if let Some(retry) = &self.opts.retry
                && retry.recorded(self.index_base + self.next).is_some()
            {
                self.inserted += 1;
                self.next += 1;
                continue;
            }
            let result = prepare_insert(&self.coll, self.docs[self.next], max_bson)
                .and_then(|(key, stored)| self.insert_one(txn, key, stored));
            match result {
                Ok(()) => {
                    self.inserted += 1;
                    if let Some(retry) = &self.opts.retry {
                        retry.note(self.index_base + self.next, Bson::Int32(1));
                    }
                    // A large batch commits in pieces, bounding the memory one commit holds
                    // (an insert batch was never atomic in MongoDB either).
                    if txn.bytes() >= chunk && self.next + 1 < self.docs.len() {
                        self.next += 1;
                        return Step::Piece;
                    }
                }
                Err(e)
                    if e.code == code::WRITE_CONFLICT
                        && self.started.elapsed() < self.opts.patience =>
                {
                    return Step::Conflict;
                }
                Err(e) => {
                    let e = if e.code == code::WRITE_CONFLICT {
                        max_time_expired(self.opts)
                    } else {
                        e
                    };
                    self.write_errors
                        .push(e.to_write_error(self.index_base + self.next));
                    if self.ordered {
                        return Step::Stop;
                    }
                }
            }
            self.next += 1;
        }
        Step::Done
    }
}

impl Batch<'_> {
    /// Inserts one prepared document; into a capped collection, under its next insertion
    /// number.
    fn insert_one(
        &mut self,
        txn: &mut Txn,
        key: DocKey,
        stored: RawDocumentBuf,
    ) -> CommandResult<()> {
        // Checked before anything of it is written or reserved.
        if let Some(validator) = self.validator {
            validator.check_insert(&stored)?;
        }
        let len = stored.as_bytes().len();
        let key = match &mut self.capped {
            Some(capped) => capped.reserve(txn, &self.coll, len)?,
            None => key,
        };
        txn.insert(&self.coll, key, Arc::new(stored))?;
        if let Some(capped) = &mut self.capped {
            capped.added(len);
        }
        Ok(())
    }
}

/// Inserts into the session's transaction. The first failure ends the statement: a conflict as
/// the command's error (the transaction is then aborted and the client retries it whole), any
/// other as a write error, as mongod reports them.
fn insert_in_txn(
    shared: &Shared,
    txn: &mut Txn,
    (coll, validator): (&CollectionInfo, Option<&DocValidator>),
    docs: &[&RawDocument],
) -> CommandResult<Reply> {
    let mut inserted = 0usize;
    let mut write_errors = Vec::new();
    for (index, doc) in docs.iter().enumerate() {
        let result =
            prepare_insert(coll, doc, shared.config.max_bson_size).and_then(|(key, stored)| {
                if let Some(validator) = validator {
                    validator.check_insert(&stored)?;
                }
                Ok(txn.insert(coll, key, Arc::new(stored))?)
            });
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

/// One `insert` op of `bulkWrite`: `doc` into `ns`, as statement `index` of the command (its
/// number in a retryable write's record). `Ok(Some(e))` is the op's write error, as an
/// `insert` reports it in `writeErrors`.
pub(super) async fn insert_op(
    shared: &Shared,
    opts: &WriteOptions,
    txn: Option<&mut Txn>,
    (ns, doc, index): (&str, &RawDocument, usize),
    bypass: bool,
) -> CommandResult<Option<Document>> {
    if let Some(txn) = txn {
        let coll = txn.create_collection_shared(ns, Document::new())?;
        super::views::refuse_write(&coll)?;
        crate::capped::refuse_in_transaction(&coll)?;
        let validator = crate::validation::for_write(&coll, bypass)?;
        let (key, stored) = prepare_insert(&coll, doc, shared.config.max_bson_size)?;
        if let Some(validator) = &validator {
            validator.check_insert(&stored)?;
        }
        txn.insert(&coll, key, Arc::new(stored))?;
        Counters::bump(&shared.counters.insert, 1);
        return Ok(None);
    }
    let coll = implicit_collection(shared, ns, opts).await?;
    super::views::refuse_write(&coll)?;
    let capped = shared.capped.writer(&coll).await;
    let validator = crate::validation::for_write(&coll, bypass)?;
    let docs = [doc];
    let mut batch = Batch {
        shared,
        opts,
        coll: std::borrow::Cow::Borrowed(&coll),
        docs: &docs,
        ordered: true,
        started: Instant::now(),
        inserted: 0,
        write_errors: Vec::new(),
        next: 0,
        last_ticket: None,
        capped,
        validator: validator.as_ref(),
        index_base: index,
    };
    batch.run().await?;
    Counters::bump(&shared.counters.insert, batch.inserted as u64);
    Ok(batch.write_errors.pop())
}
