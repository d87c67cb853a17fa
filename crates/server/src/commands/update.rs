//! `update`: statements parsed, run one by one (multi-document ones outside transactions in
//! bounded commits), and their counts and upserted ids replied.

use std::sync::Arc;

use bson::raw::{RawBsonRef, RawDocument};
use bson::{Bson, Document, doc};
use mangrove_query::{Filter, Update, with_collation, with_let};
use mangrove_storage::{CollectionInfo, Txn};

use crate::capped::Writer;
use crate::error::{CommandError, CommandResult, code};
use crate::request::{Request, type_name};
use crate::retryable::RetryableWrite;
use crate::{Counters, Shared};

use super::Reply;
use super::args::{OwnCollation, internal};
use super::collections::{collection_for_write, implicit_collection};
use super::modify::{DocChecks, update_one_doc, upsert_doc};
use super::names::validate_collection_name;
use super::stored::id_of;
use super::write_path::{WriteOptions, run_write};
use super::write_stmt::{
    Stmt, batch_size_check, finish_write, stmt_bool, stmt_collation, stmt_fields, stmt_filter,
    targets,
};

#[derive(Default)]
pub(super) struct UpdateOutcome {
    pub matched: u64,
    pub modified: u64,
    pub upserted: Option<Bson>,
}

impl UpdateOutcome {
    /// The statement's result as a retryable write records it.
    fn to_record(&self) -> Bson {
        let mut d = doc! { "n": self.matched as i64, "m": self.modified as i64 };
        if let Some(id) = &self.upserted {
            d.insert("u", id.clone());
        }
        Bson::Document(d)
    }

    fn from_record(record: &Bson) -> UpdateOutcome {
        let d = record.as_document();
        UpdateOutcome {
            matched: d.and_then(|d| d.get_i64("n").ok()).unwrap_or(0) as u64,
            modified: d.and_then(|d| d.get_i64("m").ok()).unwrap_or(0) as u64,
            upserted: d.and_then(|d| d.get("u")).cloned(),
        }
    }
}

fn run_update_stmt(
    txn: &mut Txn,
    coll: &CollectionInfo,
    p: &ParsedStmt,
    checks: &DocChecks<'_>,
    capped: Option<&mut Writer>,
) -> CommandResult<UpdateOutcome> {
    let (filter, update) = (&p.filter, &p.update);
    let mut outcome = UpdateOutcome::default();
    let found = match &p.sort {
        // MongoDB 8.0: the first match in `sort` order, as findAndModify picks it.
        Some(sort) => super::find_and_modify::find_target(txn, coll, filter, Some(sort))?
            .into_iter()
            .collect(),
        None => targets(txn, coll, filter, !p.multi)?,
    };
    for (key, old) in found {
        outcome.matched += 1;
        if update_one_doc(txn, coll, filter, update, key, &old, checks)?.is_some() {
            outcome.modified += 1;
        }
    }
    if outcome.matched == 0 && p.upsert {
        let inserted = upsert_doc(txn, coll, filter, update, checks, capped)?;
        outcome.upserted = id_of(&inserted).and_then(|id| Bson::try_from(id).ok());
    }
    Ok(outcome)
}

/// A `multi: true` update outside a transaction, in bounded commits (see `multi_write.rs`).
async fn multi_update(
    shared: &Shared,
    opts: &WriteOptions,
    coll: &CollectionInfo,
    filter: &Filter,
    update: &Update,
    collation: Option<&mangrove_query::Collation>,
    checks: &DocChecks<'_>,
) -> CommandResult<UpdateOutcome> {
    let (matched, modified) =
        super::multi_write::run_chunked(shared, opts, coll, filter, collation, |txn, key, old| {
            let changed = update_one_doc(txn, coll, filter, update, key, old, checks)?;
            Ok(changed.is_some() as u64)
        })
        .await?;
    Ok(UpdateOutcome {
        matched,
        modified,
        ..UpdateOutcome::default()
    })
}

const UPDATE_STMT_FIELDS: &[&str] = &[
    "q",
    "u",
    "upsert",
    "multi",
    "arrayFilters",
    "collation",
    "hint",
    "sort",
    "c",
    "upsertSupplied",
];

/// The totals of an update command's statements, for its reply.
#[derive(Default)]
struct UpdateTotals {
    n: u64,
    modified: u64,
    upserted: Vec<Document>,
}

impl UpdateTotals {
    fn add(&mut self, index: usize, outcome: UpdateOutcome) {
        self.n += outcome.matched;
        self.modified += outcome.modified;
        if let Some(id) = outcome.upserted {
            self.n += 1;
            self.upserted
                .push(doc! { "index": index as i32, "_id": id });
        }
    }

    fn reply(self, write_errors: Vec<Document>, wc_error: Option<Document>) -> Reply {
        let mut reply = doc! { "n": self.n as i32, "nModified": self.modified as i32 };
        if !self.upserted.is_empty() {
            reply.insert("upserted", self.upserted);
        }
        finish_write(reply, write_errors, wc_error)
    }
}

pub(super) async fn update(
    shared: &Shared,
    req: &Request<'_>,
    mut txn: Option<&mut Txn>,
    retry: Option<Arc<RetryableWrite>>,
) -> CommandResult<Reply> {
    req.check_fields(&["updates", "ordered", "bypassDocumentValidation", "let"])?;
    let name = req.collection()?;
    validate_collection_name(req.db, name)?;
    let mut opts = WriteOptions::from_request(req)?;
    opts.retry = retry;
    let ordered = req.opt_bool("ordered")?.unwrap_or(true);
    let stmts = req.batch("updates")?;
    batch_size_check(stmts.len())?;
    let lets = req.opt_doc("let")?;
    let bypass = crate::validation::bypass(req)?;
    // Unknown fields fail the whole command before anything runs, as mongod's IDL parser does.
    for stmt in &stmts {
        stmt_fields(stmt, "update", "updates", UPDATE_STMT_FIELDS)?;
    }
    let ns = req.ns(name);
    let mut totals = UpdateTotals::default();
    let mut write_errors = Vec::new();
    let in_txn = txn.is_some();
    for (index, stmt) in stmts.iter().enumerate() {
        Counters::bump(&shared.counters.update, 1);
        let stmt = Stmt {
            index,
            doc: stmt,
            lets,
            ns: &ns,
        };
        match run_stmt(shared, &opts, txn.as_deref_mut(), stmt, bypass).await {
            // In a transaction a conflict fails the statement, not one write of it.
            Err(e) if in_txn && e.code == code::WRITE_CONFLICT => return Err(e),
            // killOp fails the whole command, as mongod's interruptions do.
            Err(e) if e.code == code::INTERRUPTED => return Err(e),
            Ok(outcome) => totals.add(index, outcome),
            Err(e) => {
                write_errors.push(e.to_write_error(index));
                if ordered {
                    break;
                }
            }
        }
    }
    Ok(totals.reply(write_errors, opts.wc_error()))
}

/// An update statement, parsed.
struct ParsedStmt {
    filter: Filter,
    update: Update,
    multi: bool,
    upsert: bool,
    collation: OwnCollation,
    /// Which match a single-document update takes (MongoDB 8.0).
    sort: Option<mangrove_query::SortSpec>,
}

/// Runs one statement (or returns what a retried one did the first time), again from the
/// start if the collection became capped meanwhile (`write_path::same_keying`).
pub(super) async fn run_stmt(
    shared: &Shared,
    opts: &WriteOptions,
    mut txn: Option<&mut Txn>,
    stmt: Stmt<'_>,
    bypass: bool,
) -> CommandResult<UpdateOutcome> {
    for _ in 0..super::write_path::REKEYED_RETRIES {
        match run_stmt_once(shared, opts, txn.as_deref_mut(), stmt, bypass).await {
            Err(e) if e.code == super::write_path::REKEYED => continue,
            other => return other,
        }
    }
    run_stmt_once(shared, opts, txn, stmt, bypass).await
}

async fn run_stmt_once(
    shared: &Shared,
    opts: &WriteOptions,
    mut txn: Option<&mut Txn>,
    stmt: Stmt<'_>,
    bypass: bool,
) -> CommandResult<UpdateOutcome> {
    if let Some(recorded) = opts.retry.as_ref().and_then(|r| r.recorded(stmt.index)) {
        return Ok(UpdateOutcome::from_record(&recorded));
    }
    let p = parse_stmt(stmt.doc, stmt.lets)?;
    let coll = if p.upsert {
        match txn.as_deref_mut() {
            Some(t) => t.create_collection_shared(stmt.ns, Document::new())?,
            None => implicit_collection(shared, stmt.ns, opts).await?,
        }
    } else {
        match collection_for_write(shared, txn.as_deref(), stmt.ns) {
            Some(c) => c,
            None => return Ok(UpdateOutcome::default()),
        }
    };
    super::views::refuse_write(&coll)?;
    if txn.is_some() {
        crate::capped::refuse_in_transaction(&coll)?;
    }
    let mut capped = shared.capped.writer(&coll).await;
    let validator = crate::validation::for_write(&coll, bypass)?;
    let checks = DocChecks {
        max_bson: shared.config.max_bson_size,
        validator: validator.as_ref(),
    };
    let collation = p.collation.on(&coll)?;
    if p.multi && txn.is_none() && opts.retry.is_none() {
        let chunked = multi_update(
            shared,
            opts,
            &coll,
            &p.filter,
            &p.update,
            collation.as_ref(),
            &checks,
        )
        .await?;
        if chunked.matched > 0 || !p.upsert {
            return Ok(chunked);
        }
    }
    run_write(shared, opts, txn, |txn| {
        super::write_path::same_keying(txn, &coll)?;
        let outcome = mangrove_js::with_deadline(opts.js_deadline, || {
            with_collation(collation.as_ref(), || {
                run_update_stmt(txn, &coll, &p, &checks, capped.as_mut())
            })
        })?;
        if let Some(retry) = &opts.retry {
            retry.note(stmt.index, outcome.to_record());
        }
        Ok(outcome)
    })
    .await
}

/// A statement's `q`, `u`, `arrayFilters`, `multi`, `upsert` and `collation`, in the order
/// mongod checks them.
fn parse_stmt(stmt: &RawDocument, lets: Option<&RawDocument>) -> CommandResult<ParsedStmt> {
    let filter = with_let(lets, || stmt_filter(stmt, "update", "updates"))?;
    let u = stmt_update(stmt)?;
    let array_filters = stmt_array_filters(stmt)?;
    let update = with_let(lets, || {
        Update::parse_with_array_filters(&u, array_filters.as_deref())
    })?;
    let multi = stmt_bool(stmt, "multi")?;
    let upsert = stmt_bool(stmt, "upsert")?;
    if multi && update.is_replacement() {
        return Err(CommandError::failed_to_parse(
            "multi update is not supported for replacement-style update",
        ));
    }
    let collation = stmt_collation(stmt)?;
    let sort = match stmt.get("sort").ok().flatten() {
        None => None,
        Some(RawBsonRef::Document(spec)) if spec.is_empty() => None,
        Some(RawBsonRef::Document(_)) if multi => {
            return Err(CommandError::new(
                code::FAILED_TO_PARSE,
                "Cannot specify sort with multi=true",
            ));
        }
        Some(RawBsonRef::Document(spec)) => Some(mangrove_query::SortSpec::parse(spec)?),
        Some(v) => {
            return Err(CommandError::type_mismatch(format!(
                "BSON field 'update.updates.sort' is the wrong type '{}', expected type 'object'",
                type_name(v.element_type())
            )));
        }
    };
    Ok(ParsedStmt {
        filter,
        update,
        multi,
        upsert,
        collation,
        sort,
    })
}

/// `u`: an update document, a replacement, or a pipeline.
fn stmt_update(stmt: &RawDocument) -> CommandResult<Bson> {
    match stmt.get("u").ok().flatten() {
        Some(v @ (RawBsonRef::Document(_) | RawBsonRef::Array(_))) => {
            v.try_into().map_err(internal)
        }
        Some(v) => Err(CommandError::type_mismatch(format!(
            "BSON field 'update.updates.u' is the wrong type '{}', expected type 'object or array'",
            type_name(v.element_type())
        ))),
        None => Err(CommandError::new(
            code::MISSING_FIELD,
            "BSON field 'update.updates.u' is missing but a required field",
        )),
    }
}

/// `arrayFilters`, if given: an array of documents.
fn stmt_array_filters(stmt: &RawDocument) -> CommandResult<Option<Vec<Document>>> {
    match stmt.get("arrayFilters").ok().flatten() {
        None => Ok(None),
        Some(RawBsonRef::Array(items)) => {
            let mut filters = Vec::new();
            for item in items {
                match item.map_err(internal)? {
                    RawBsonRef::Document(d) => {
                        filters.push(Document::try_from(d).map_err(internal)?)
                    }
                    v => {
                        return Err(CommandError::type_mismatch(format!(
                            "BSON field 'update.updates.arrayFilters' contains an element of type '{}', expected 'object'",
                            type_name(v.element_type())
                        )));
                    }
                }
            }
            Ok(Some(filters))
        }
        Some(v) => Err(CommandError::type_mismatch(format!(
            "BSON field 'update.updates.arrayFilters' is the wrong type '{}', expected type 'array'",
            type_name(v.element_type())
        ))),
    }
}
