//! `distinct` and `count`: answers computed from the matching documents of a collection or view.

use std::ops::ControlFlow;

use bson::raw::{RawArrayBuf, RawBsonRef, RawDocument, cstr};
use bson::{RawDocumentBuf, doc};
use mangrove_query::{Filter, with_collation};
use mangrove_storage::{CollectionInfo, ReadView, Snapshot, Txn};

use crate::access::{
    Examined, choose, deadline_of, for_each_match_any_order, parse_hint, with_deadline,
};
use crate::error::{CommandError, CommandResult, code};
use crate::request::{Request, type_name};
use crate::{Counters, Shared};

use super::Reply;
use super::args::{collation_for, non_negative};
use super::collections::read_target;
use super::names::validate_db_name;

/// `distinct`: the distinct values at `key` among matching documents, in BSON order (mongod
/// collects them into an ordered set). Arrays at the key contribute their elements.
pub(super) fn distinct(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&Txn>,
    at: Option<Snapshot>,
) -> CommandResult<Reply> {
    let (snapshot, coll) = read_target(shared, req, txn, at)?;
    let collation = collation_for(req.opt_doc("collation")?, coll.as_ref())?;
    let deadline = deadline_of(req.opt_i64("maxTimeMS")?);
    with_deadline(deadline, || {
        with_collation(collation.as_ref(), || {
            distinct_with(shared, req, txn, snapshot, coll)
        })
    })
}

/// `distinct` with its collation set (values equal under it are one value).
fn distinct_with(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&Txn>,
    snapshot: Snapshot,
    coll: Option<CollectionInfo>,
) -> CommandResult<Reply> {
    req.check_fields(&[
        "key",
        "query",
        "collation",
        "hint",
        "readConcern",
        "maxTimeMS",
    ])?;
    Counters::bump(&shared.counters.query, 1);
    validate_db_name(req.db)?;
    let key = distinct_key(req)?;
    let empty = RawDocumentBuf::new();
    let raw_filter = req.opt_doc("query")?.unwrap_or(&empty);
    let filter = Filter::parse(raw_filter)?;
    let mut values: Vec<bson::RawBson> = Vec::new();
    if let Some(coll) = coll {
        let view: &dyn ReadView = match txn {
            Some(txn) => txn,
            None => &snapshot,
        };
        if super::views::is_view(&coll) {
            values = view_values(shared, view, &coll, &filter, key)?;
        } else {
            distinct_from_collection(
                shared,
                req,
                view,
                &coll,
                &filter,
                raw_filter,
                key,
                &mut values,
            )?;
        }
    }
    dedup_values(&mut values);
    Ok(values_reply(values))
}

/// `key`: the (dotted) field whose values are asked for.
fn distinct_key<'r>(req: &Request<'r>) -> CommandResult<&'r str> {
    match req.get("key") {
        Some(RawBsonRef::String(k)) => Ok(k),
        Some(v) => Err(CommandError::type_mismatch(format!(
            "BSON field 'distinct.key' is the wrong type '{}', expected type 'string'",
            type_name(v.element_type())
        ))),
        None => Err(CommandError::new(
            code::MISSING_FIELD,
            "BSON field 'distinct.key' is missing but a required field",
        )),
    }
}

/// The values of `key` in the documents of the view `coll` that match `filter`.
fn view_values(
    shared: &Shared,
    view: &dyn ReadView,
    coll: &CollectionInfo,
    filter: &Filter,
    key: &str,
) -> CommandResult<Vec<bson::RawBson>> {
    let mut values = Vec::new();
    for d in super::views::view_docs(shared, view, coll)? {
        if filter.try_matches(&d)? {
            values.extend(
                mangrove_query::distinct_values(&d, key)
                    .into_iter()
                    .map(bson::RawBson::from),
            );
        }
    }
    Ok(values)
}

/// `{values: [...], ok: 1}`, built raw.
fn values_reply(values: Vec<bson::RawBson>) -> Reply {
    let mut array = RawArrayBuf::new();
    for v in values {
        array.push(v);
    }
    let mut reply = RawDocumentBuf::new();
    reply.append(cstr!("values"), array);
    reply.append(cstr!("ok"), 1.0);
    Reply::Raw(reply)
}

/// The values of `key` in the documents of a collection matching `filter`, deduplicated as
/// they accumulate so memory stays near the answer's size (16 MiB at most).
#[allow(clippy::too_many_arguments)]
fn distinct_from_collection(
    shared: &Shared,
    req: &Request<'_>,
    view: &dyn ReadView,
    coll: &CollectionInfo,
    filter: &Filter,
    raw_filter: &RawDocument,
    key: &str,
    values: &mut Vec<bson::RawBson>,
) -> CommandResult<()> {
    {
        let max = shared.config.max_bson_size;
        let mut bytes = 0usize;
        let mut too_big = false;
        let access = choose(
            view,
            coll,
            filter,
            raw_filter,
            &parse_hint(req.get("hint"), Some(coll))?,
            None,
        )?;
        for_each_match_any_order(
            view,
            coll,
            &access,
            filter,
            &mut Examined::default(),
            &mut |_, doc| {
                for v in mangrove_query::distinct_values(doc, key) {
                    let v = bson::RawBson::from(v);
                    bytes += raw_size(&v);
                    values.push(v);
                }
                // Sorting and deduplicating as we go keeps memory near the answer's size.
                if bytes > max {
                    dedup_values(values);
                    bytes = values.iter().map(raw_size).sum();
                    if bytes > max {
                        too_big = true;
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            },
        )?;
        if too_big {
            return Err(CommandError::new(
                17217,
                format!("distinct too big, {max} byte cap; use an aggregation with $group instead"),
            ));
        }
    }
    Ok(())
}

fn dedup_values(values: &mut Vec<bson::RawBson>) {
    values.sort_by(|a, b| mangrove_query::compare_values(a.as_raw_bson_ref(), b.as_raw_bson_ref()));
    values.dedup_by(|a, b| {
        mangrove_query::compare_values(a.as_raw_bson_ref(), b.as_raw_bson_ref()).is_eq()
    });
}

/// Roughly what a value adds to the reply: enough to enforce the 16 MiB cap.
fn raw_size(v: &bson::RawBson) -> usize {
    match v.as_raw_bson_ref() {
        RawBsonRef::String(s) => s.len() + 8,
        RawBsonRef::Document(d) => d.as_bytes().len() + 4,
        RawBsonRef::Array(a) => a.as_bytes().len() + 4,
        RawBsonRef::Binary(b) => b.bytes.len() + 9,
        _ => 16,
    }
}

pub(super) fn count(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    let snapshot = shared.engine.snapshot();
    let coll = snapshot.collection(&req.ns(req.collection()?));
    let collation = collation_for(req.opt_doc("collation")?, coll.as_ref())?;
    let deadline = deadline_of(req.opt_i64("maxTimeMS")?);
    with_deadline(deadline, || {
        with_collation(collation.as_ref(), || count_with(shared, req, snapshot))
    })
}

fn count_with(shared: &Shared, req: &Request<'_>, snapshot: Snapshot) -> CommandResult<Reply> {
    req.check_fields(&[
        "query",
        "limit",
        "skip",
        "hint",
        "collation",
        "readConcern",
        "fields",
        "maxTimeMS",
    ])?;
    let name = req.collection()?;
    let ns = req.ns(name);
    let empty = RawDocumentBuf::new();
    let raw_filter = req.opt_doc("query")?.unwrap_or(&empty);
    let filter = Filter::parse(raw_filter)?;
    let mut skip = non_negative(req, "skip")?.unwrap_or(0);
    // `count` takes a negative limit as its absolute value, unlike `find`.
    let limit = req
        .opt_i64("limit")?
        .map(i64::unsigned_abs)
        .filter(|&l| l > 0);
    let mut n = 0u64;
    if let Some(coll) = snapshot.collection(&ns)
        && super::views::is_view(&coll)
    {
        for d in super::views::view_docs(shared, &snapshot, &coll)? {
            if filter.try_matches(&d)? {
                if skip > 0 {
                    skip -= 1;
                } else {
                    n += 1;
                    if limit.is_some_and(|l| n >= l) {
                        break;
                    }
                }
            }
        }
    } else if let Some(coll) = snapshot.collection(&ns) {
        let hint = parse_hint(req.get("hint"), Some(&coll))?;
        let access = choose(&snapshot, &coll, &filter, raw_filter, &hint, None)?;
        for_each_match_any_order(
            &snapshot,
            &coll,
            &access,
            &filter,
            &mut Examined::default(),
            &mut |_, _| {
                if skip > 0 {
                    skip -= 1;
                } else {
                    n += 1;
                    if limit.is_some_and(|l| n >= l) {
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            },
        )?;
    }
    Ok(doc! { "n": n as i64, "ok": 1.0 }.into())
}
