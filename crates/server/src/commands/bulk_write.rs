//! `bulkWrite` (MongoDB 8.0): inserts, updates and deletes over several namespaces in one
//! command, run on `admin`; what drivers' `client.bulk_write` sends.
//!
//! Each op runs as the statement an `insert`, `update` or `delete` would run for it (the same
//! code: `insert::insert_op`, `update::run_stmt`, `delete::run_stmt`), numbered by its index in
//! `ops`, so a retryable `bulkWrite` records and replays its ops as those commands record their
//! statements, and inside a transaction the ops are statements of the transaction.
//!
//! Invariants:
//! - `ordered` stops at the first failed op; inside a transaction the first failure always
//!   ends the command (as an `insert` there does), and a write conflict is the command's error.
//! - Every op's result is kept (or only its errors, with `errorsOnly`) and returned through a
//!   cursor, so a reply never outgrows the wire's limits however many ops there are.
//! - The command's `ops` are at most [`MAX_OPS`] (mongod's `maxWriteBatchSize`).

use bson::raw::{RawBsonRef, RawDocument, RawDocumentBuf};
use bson::{Document, doc};
use mangrove_storage::Txn;
use std::sync::Arc;

use crate::Shared;
use crate::auth::roles::Action;
use crate::error::{CommandError, CommandResult, code};
use crate::request::{Request, type_name};
use crate::retryable::RetryableWrite;

use super::Reply;
use super::args::{cursor_batch_size, internal};
use super::handshake::Client;
use super::names::validate_collection_name;
use super::write_path::WriteOptions;
use super::write_stmt::Stmt;

/// mongod's `maxWriteBatchSize`: ops one command may carry.
const MAX_OPS: usize = 100_000;

const FIELDS: &[&str] = &[
    "ops",
    "nsInfo",
    "ordered",
    "bypassDocumentValidation",
    "let",
    "errorsOnly",
    "cursor",
];

/// What one op asks, parsed.
enum Op<'a> {
    Insert(&'a RawDocument),
    /// An `update` command's statement built from the op.
    Update(RawDocumentBuf),
    /// A `delete` command's statement built from the op.
    Delete(RawDocumentBuf),
}

/// The counts the reply carries.
#[derive(Default)]
struct Totals {
    errors: i32,
    inserted: i64,
    matched: i64,
    modified: i64,
    upserted: i64,
    deleted: i64,
}

pub(super) async fn bulk_write(
    shared: &Shared,
    client: &mut Client,
    req: &Request<'_>,
    mut txn: Option<&mut Txn>,
    retry: Option<Arc<RetryableWrite>>,
) -> CommandResult<Reply> {
    req.check_fields(FIELDS)?;
    let ops = req.batch("ops")?;
    let namespaces = namespaces(req)?;
    if ops.is_empty() || ops.len() > MAX_OPS {
        return Err(CommandError::new(
            code::INVALID_LENGTH,
            format!(
                "Write batch sizes must be between 1 and {MAX_OPS}. Got {} operations.",
                ops.len()
            ),
        ));
    }
    let parsed = ops
        .iter()
        .map(|op| parse_op(op, &namespaces))
        .collect::<CommandResult<Vec<_>>>()?;
    authorize(shared, client, &parsed, req)?;
    let mut opts = WriteOptions::from_request(req)?;
    opts.retry = retry;
    let ordered = req.opt_bool("ordered")?.unwrap_or(true);
    let errors_only = req.opt_bool("errorsOnly")?.unwrap_or(false);
    let bypass = crate::validation::bypass(req)?;
    let lets = req.opt_doc("let")?;
    let in_txn = txn.is_some();
    let mut totals = Totals::default();
    let mut results = Vec::new();
    for (index, (ns, op)) in parsed.iter().enumerate() {
        let outcome = run_op(
            shared,
            &opts,
            txn.as_deref_mut(),
            (ns, op, index),
            lets,
            bypass,
        )
        .await;
        let result = match outcome {
            Err(e) if in_txn && e.code == code::WRITE_CONFLICT => return Err(e),
            // killOp fails the whole command, as mongod's interruptions do.
            Err(e) if e.code == code::INTERRUPTED => return Err(e),
            Err(e) => Err(e.to_write_error(index)),
            Ok(Err(write_error)) => Err(write_error),
            Ok(Ok(result)) => Ok(result),
        };
        let failed = result.is_err();
        let entry = totals.add(index, op, result);
        if failed || !errors_only {
            results.push(RawDocumentBuf::try_from(&entry).map_err(internal)?);
        }
        if failed && (ordered || in_txn) {
            break;
        }
    }
    reply(shared, req, results, &totals, &opts)
}

/// `nsInfo`: each entry's `ns`, checked.
fn namespaces<'a>(req: &Request<'a>) -> CommandResult<Vec<(String, String)>> {
    let mut out = Vec::new();
    for info in req.batch("nsInfo")? {
        let ns = match info.get("ns").map_err(internal)? {
            Some(RawBsonRef::String(ns)) => ns,
            Some(v) => {
                return Err(CommandError::type_mismatch(format!(
                    "BSON field 'bulkWrite.nsInfo.ns' is the wrong type '{}', expected type 'string'",
                    type_name(v.element_type())
                )));
            }
            None => {
                return Err(CommandError::new(
                    code::MISSING_FIELD,
                    "BSON field 'bulkWrite.nsInfo.ns' is missing but a required field",
                ));
            }
        };
        let Some((db, coll)) = ns.split_once('.') else {
            return Err(CommandError::new(
                code::INVALID_NAMESPACE,
                format!("Invalid namespace specified '{ns}'"),
            ));
        };
        super::names::validate_db_name(db)?;
        validate_collection_name(db, coll)?;
        out.push((db.to_string(), coll.to_string()));
    }
    if out.is_empty() {
        return Err(CommandError::new(
            code::INVALID_LENGTH,
            "bulkWrite needs at least one nsInfo entry",
        ));
    }
    Ok(out)
}

/// One op: its namespace and what it does.
fn parse_op<'a>(
    op: &'a RawDocument,
    namespaces: &[(String, String)],
) -> CommandResult<(String, Op<'a>)> {
    let (kind, target) = match op.iter().next() {
        Some(Ok((k, v))) => (k.as_str(), v),
        _ => return Err(CommandError::failed_to_parse("bulkWrite op is empty")),
    };
    let index = match target {
        RawBsonRef::Int32(n) => Some(n as i64),
        RawBsonRef::Int64(n) => Some(n),
        _ => None,
    }
    .filter(|&n| n >= 0 && (n as usize) < namespaces.len())
    .ok_or_else(|| {
        CommandError::bad_value(format!(
            "BulkWrite ops entry {kind}: {target:?} does not name an entry of nsInfo"
        ))
    })?;
    let (db, coll) = &namespaces[index as usize];
    let ns = format!("{db}.{coll}");
    let parsed = match kind {
        "insert" => Op::Insert(insert_document(op)?),
        "update" => Op::Update(update_statement(op)?),
        "delete" => Op::Delete(delete_statement(op)?),
        other => {
            return Err(CommandError::failed_to_parse(format!(
                "Unrecognized bulkWrite operation '{other}': ops are insert, update or delete"
            )));
        }
    };
    Ok((ns, parsed))
}

fn insert_document(op: &RawDocument) -> CommandResult<&RawDocument> {
    check_op_fields(op, "insert", &["insert", "document"])?;
    match op.get("document").map_err(internal)? {
        Some(RawBsonRef::Document(d)) => Ok(d),
        _ => Err(CommandError::new(
            code::MISSING_FIELD,
            "BSON field 'bulkWrite.ops.document' is missing but a required field",
        )),
    }
}

/// An `update` statement (`q`, `u`, `multi`, `upsert`, ...) made from an update op.
fn update_statement(op: &RawDocument) -> CommandResult<RawDocumentBuf> {
    const FIELDS: &[&str] = &[
        "update",
        "filter",
        "updateMods",
        "multi",
        "upsert",
        "arrayFilters",
        "hint",
        "collation",
        "constants",
        "sort",
    ];
    check_op_fields(op, "update", FIELDS)?;
    let renamed = [("filter", "q"), ("updateMods", "u"), ("constants", "c")];
    let kept = [
        "multi",
        "upsert",
        "arrayFilters",
        "hint",
        "collation",
        "sort",
    ];
    statement(op, &renamed, &kept)
}

/// A `delete` statement (`q`, `limit`, ...) made from a delete op.
fn delete_statement(op: &RawDocument) -> CommandResult<RawDocumentBuf> {
    check_op_fields(
        op,
        "delete",
        &["delete", "filter", "multi", "hint", "collation"],
    )?;
    let mut stmt = statement(op, &[("filter", "q")], &["hint", "collation"])?;
    let multi = matches!(
        op.get("multi").map_err(internal)?,
        Some(RawBsonRef::Boolean(true))
    );
    stmt.append(bson::cstr!("limit"), if multi { 0i32 } else { 1i32 });
    Ok(stmt)
}

/// The op's fields under the statement's names: `renamed` pairs, then `kept` as they are.
fn statement(
    op: &RawDocument,
    renamed: &[(&str, &str)],
    kept: &[&str],
) -> CommandResult<RawDocumentBuf> {
    let mut stmt = RawDocumentBuf::new();
    for (from, to) in renamed {
        if let Some(v) = op.get(from).map_err(internal)? {
            let key = bson::raw::CString::try_from(*to).map_err(internal)?;
            stmt.append(key, v);
        }
    }
    for field in kept {
        if let Some(v) = op.get(field).map_err(internal)? {
            let key = bson::raw::CString::try_from(*field).map_err(internal)?;
            stmt.append(key, v);
        }
    }
    Ok(stmt)
}

fn check_op_fields(op: &RawDocument, kind: &str, allowed: &[&str]) -> CommandResult<()> {
    for item in op.iter() {
        let (key, _) = item.map_err(internal)?;
        if !allowed.contains(&key.as_str()) {
            return Err(CommandError::new(
                code::UNKNOWN_FIELD,
                format!(
                    "BSON field 'bulkWrite.ops.{kind}.{}' is an unknown field.",
                    key.as_str()
                ),
            ));
        }
    }
    Ok(())
}

/// Each namespace's action, as the `insert`, `update` and `delete` commands need it.
fn authorize(
    shared: &Shared,
    client: &mut Client,
    ops: &[(String, Op<'_>)],
    req: &Request<'_>,
) -> CommandResult<()> {
    for (ns, op) in ops {
        let action = match op {
            Op::Insert(_) => Action::Insert,
            Op::Update(_) => Action::Update,
            Op::Delete(_) => Action::Remove,
        };
        let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
        if !crate::auth::may_on(shared, &mut client.identity, (db, coll), action)? {
            return Err(crate::auth::unauthorized(db, req.name));
        }
    }
    Ok(())
}

/// Runs one op: `Ok(Ok(result))` its result entry, `Ok(Err(e))` its write error.
async fn run_op(
    shared: &Shared,
    opts: &WriteOptions,
    txn: Option<&mut Txn>,
    (ns, op, index): (&str, &Op<'_>, usize),
    lets: Option<&RawDocument>,
    bypass: bool,
) -> CommandResult<Result<Document, Document>> {
    match op {
        Op::Insert(doc) => {
            let failed =
                super::insert::insert_op(shared, opts, txn, (ns, doc, index), bypass).await?;
            Ok(match failed {
                Some(e) => Err(e),
                None => Ok(doc! { "n": 1 }),
            })
        }
        Op::Update(stmt) => {
            let stmt = Stmt {
                index,
                doc: stmt,
                lets,
                ns,
            };
            let outcome = super::update::run_stmt(shared, opts, txn, stmt, bypass).await?;
            let mut entry = doc! {
                "n": outcome.matched as i32,
                "nModified": outcome.modified as i32,
            };
            if let Some(id) = outcome.upserted {
                entry.insert("n", 1);
                entry.insert("upserted", doc! { "_id": id });
            }
            Ok(Ok(entry))
        }
        Op::Delete(stmt) => {
            let stmt = Stmt {
                index,
                doc: stmt,
                lets,
                ns,
            };
            let n = super::delete::run_stmt(shared, opts, txn, stmt).await?;
            Ok(Ok(doc! { "n": n as i32 }))
        }
    }
}

impl Totals {
    /// Counts one op's outcome and returns its entry in the results cursor.
    fn add(&mut self, index: usize, op: &Op<'_>, result: Result<Document, Document>) -> Document {
        let result = match result {
            Err(mut e) => {
                self.errors += 1;
                e.remove("index");
                let mut entry = doc! { "ok": 0.0, "idx": index as i32, "n": 0 };
                entry.extend(e);
                return entry;
            }
            Ok(result) => result,
        };
        let n = i64::from(result.get_i32("n").unwrap_or(0));
        match op {
            Op::Insert(_) => self.inserted += n,
            Op::Delete(_) => self.deleted += n,
            Op::Update(_) if result.contains_key("upserted") => self.upserted += 1,
            Op::Update(_) => {
                self.matched += n;
                self.modified += i64::from(result.get_i32("nModified").unwrap_or(0));
            }
        }
        let mut entry = doc! { "ok": 1.0, "idx": index as i32 };
        entry.extend(result);
        entry
    }
}

/// The reply: the results through a cursor on `admin.$cmd.bulkWrite`, the counts, and a write
/// concern error if there is one.
fn reply(
    shared: &Shared,
    req: &Request<'_>,
    results: Vec<RawDocumentBuf>,
    totals: &Totals,
    opts: &WriteOptions,
) -> CommandResult<Reply> {
    let batch_size = cursor_batch_size(req)?;
    let ns = "admin.$cmd.bulkWrite".to_string();
    let cursor = super::reply::pipeline_cursor(shared, ns, results, batch_size, None)?;
    let mut out = match cursor {
        Reply::Doc(d) => d,
        Reply::Raw(raw) => Document::try_from(raw.as_ref() as &RawDocument).map_err(internal)?,
        Reply::Segmented(s) => {
            Document::try_from(s.to_raw().as_ref() as &RawDocument).map_err(internal)?
        }
    };
    out.remove("ok");
    out.insert("nErrors", totals.errors);
    out.insert("nInserted", totals.inserted as i32);
    out.insert("nMatched", totals.matched as i32);
    out.insert("nModified", totals.modified as i32);
    out.insert("nUpserted", totals.upserted as i32);
    out.insert("nDeleted", totals.deleted as i32);
    if let Some(wce) = opts.wc_error() {
        out.insert("writeConcernError", wce);
    }
    out.insert("ok", 1.0);
    Ok(out.into())
}
