//! `findAndModify`: update, replace or remove the first matching document (in `sort` order)
//! and return it as it was before or after.

use std::ops::ControlFlow;
use std::sync::Arc;

use bson::raw::{RawBsonRef, RawDocument};
use bson::{Bson, Document, RawDocumentBuf, doc};
use mangrove_query::{Filter, Projection, SortSpec, Update, with_collation, with_let};
use mangrove_storage::{CollectionInfo, DocKey, StoredDoc, Txn};

use crate::error::{CommandError, CommandResult};
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
use super::write_stmt::targets;

/// What findAndModify did, for its `lastErrorObject` and `value`.
struct FamOutcome {
    n: i32,
    updated_existing: Option<bool>,
    upserted: Option<Bson>,
    value: Option<StoredDoc>,
}

fn fam_bool(req: &Request<'_>, field: &str) -> CommandResult<bool> {
    Ok(req.opt_bool(field)?.unwrap_or(false))
}

const FAM_FIELDS: &[&str] = &[
    "query",
    "sort",
    "remove",
    "update",
    "new",
    "fields",
    "upsert",
    "bypassDocumentValidation",
    "collation",
    "arrayFilters",
    "hint",
    "let",
];

/// A findAndModify request, parsed and checked.
struct FamSpec {
    filter: Filter,
    sort: Option<SortSpec>,
    projection: Option<Projection>,
    remove: bool,
    return_new: bool,
    upsert: bool,
    update: Option<Update>,
    collation: OwnCollation,
}

/// `findAndModify`: update, replace or remove the first matching document (in `sort` order) and
/// return it as it was before or after.
pub(super) async fn find_and_modify(
    shared: &Shared,
    req: &Request<'_>,
    mut txn: Option<&mut Txn>,
    retry: Option<Arc<RetryableWrite>>,
) -> CommandResult<Reply> {
    req.check_fields(FAM_FIELDS)?;
    let name = req.collection()?;
    validate_collection_name(req.db, name)?;
    let mut opts = WriteOptions::from_request(req)?;
    opts.retry = retry;
    let ns = req.ns(name);
    let spec = parse_spec(req)?;
    // A retry of a findAndModify that ran returns what it returned then (pre- or post-image).
    if let Some(recorded) = opts.retry.as_ref().and_then(|r| r.recorded(0))
        && let Some(recorded) = recorded.as_document()
    {
        return Ok(fam_reply(
            recorded.get_document("le").cloned().unwrap_or_default(),
            recorded.get("v").cloned().unwrap_or(Bson::Null),
            opts.wc_error(),
        ));
    }
    let bypass = crate::validation::bypass(req)?;
    // Again from the start if the collection became capped meanwhile (`modify_once`).
    let mut attempts = 0;
    let outcome = loop {
        match modify_once(shared, txn.as_deref_mut(), (&ns, &spec, &opts), bypass).await {
            Err(e)
                if e.code == super::write_path::REKEYED
                    && attempts < super::write_path::REKEYED_RETRIES =>
            {
                attempts += 1;
            }
            other => break other?,
        }
    };
    Counters::bump(
        if spec.remove {
            &shared.counters.delete
        } else {
            &shared.counters.update
        },
        1,
    );
    let (last_error, value) = outcome.reply_parts(spec.projection.as_ref())?;
    Ok(fam_reply(last_error, value, opts.wc_error()))
}

/// The collection the command writes to: created by an upsert if it does not exist.
async fn target_collection(
    shared: &Shared,
    txn: Option<&mut Txn>,
    ns: &str,
    spec: &FamSpec,
    opts: &WriteOptions,
) -> CommandResult<Option<CollectionInfo>> {
    if !spec.upsert {
        return Ok(collection_for_write(shared, txn.as_deref(), ns));
    }
    Ok(Some(match txn {
        Some(t) => t.create_collection_shared(ns, Document::new())?,
        None => implicit_collection(shared, ns, opts).await?,
    }))
}

/// The request's query, sort, projection, flags, update and collation, in the order mongod
/// checks them.
fn parse_spec(req: &Request<'_>) -> CommandResult<FamSpec> {
    let empty = RawDocumentBuf::new();
    let lets = req.opt_doc("let")?;
    let filter = with_let(lets, || {
        Filter::parse(req.opt_doc("query")?.unwrap_or(&empty)).map_err(CommandError::from)
    })?;
    let sort = match req.opt_doc("sort")? {
        Some(spec) if !spec.is_empty() => Some(SortSpec::parse(spec)?),
        _ => None,
    };
    let projection = match req.opt_doc("fields")? {
        Some(spec) if !spec.is_empty() => Some(Projection::parse(spec)?.with_filter(&filter)),
        _ => None,
    };
    let (remove, return_new, upsert) = (
        fam_bool(req, "remove")?,
        fam_bool(req, "new")?,
        fam_bool(req, "upsert")?,
    );
    let update = parse_update(req, lets)?;
    check_flags(update.is_some(), remove, return_new, upsert)?;
    let collation = OwnCollation::parse(req.opt_doc("collation")?)?;
    Ok(FamSpec {
        filter,
        sort,
        projection,
        remove,
        return_new,
        upsert,
        update,
        collation,
    })
}

/// `update` (a document or a pipeline) with its `arrayFilters`, if given.
fn parse_update(req: &Request<'_>, lets: Option<&RawDocument>) -> CommandResult<Option<Update>> {
    match req.get("update") {
        None => Ok(None),
        Some(v @ (RawBsonRef::Document(_) | RawBsonRef::Array(_))) => {
            let u: Bson = v.try_into().map_err(internal)?;
            let filters = match req.opt_array("arrayFilters")? {
                Some(items) => Some(
                    items
                        .into_iter()
                        .map(|f| match f {
                            Ok(RawBsonRef::Document(d)) => Document::try_from(d).map_err(internal),
                            _ => Err(CommandError::type_mismatch(
                                "arrayFilters entries must be objects",
                            )),
                        })
                        .collect::<CommandResult<Vec<_>>>()?,
                ),
                None => None,
            };
            Ok(Some(with_let(lets, || {
                Update::parse_with_array_filters(&u, filters.as_deref())
            })?))
        }
        Some(v) => Err(CommandError::type_mismatch(format!(
            "BSON field 'findAndModify.update' is the wrong type '{}', expected types '[object, array]'",
            type_name(v.element_type())
        ))),
    }
}

/// Exactly one of `update` and `remove`; `remove` with neither `new` nor `upsert`.
fn check_flags(
    has_update: bool,
    remove: bool,
    return_new: bool,
    upsert: bool,
) -> CommandResult<()> {
    match (has_update, remove) {
        (true, true) => {
            return Err(CommandError::failed_to_parse(
                "Cannot specify both an update and remove=true",
            ));
        }
        (false, false) => {
            return Err(CommandError::failed_to_parse(
                "Either an update or remove=true must be specified",
            ));
        }
        _ => {}
    }
    if remove && return_new {
        return Err(CommandError::failed_to_parse(
            "Cannot specify both new=true and remove=true; 'remove' always returns the deleted document",
        ));
    }
    if remove && upsert {
        return Err(CommandError::failed_to_parse(
            "Cannot specify both upsert=true and remove=true ",
        ));
    }
    Ok(())
}

/// The first matching document, in `sort` order when there is one.
pub(super) fn find_target(
    t: &mut Txn,
    coll: &CollectionInfo,
    filter: &Filter,
    sort: Option<&SortSpec>,
) -> CommandResult<Option<(DocKey, StoredDoc)>> {
    Ok(match sort {
        None => targets(t, coll, filter, true)?.into_iter().next(),
        Some(sort) => {
            let mut best: Option<(DocKey, StoredDoc)> = None;
            t.scan(coll, None, |key, doc| {
                if filter.matches(doc)
                    && best
                        .as_ref()
                        .is_none_or(|(_, b)| sort.compare(doc, b).is_lt())
                {
                    best = Some((key.clone(), doc.clone()));
                }
                ControlFlow::Continue(())
            })?;
            best
        }
    })
}

/// Removes, updates or upserts as the request asks, given the document it found (if any).
fn modify_target(
    t: &mut Txn,
    coll: &CollectionInfo,
    target: Option<(DocKey, StoredDoc)>,
    spec: &FamSpec,
    checks: &DocChecks<'_>,
    capped: Option<&mut crate::capped::Writer>,
) -> CommandResult<FamOutcome> {
    Ok(match (target, &spec.update) {
        (Some((key, old)), None) => {
            t.delete(coll, key)?;
            FamOutcome {
                n: 1,
                updated_existing: None,
                upserted: None,
                value: Some(old),
            }
        }
        (Some((key, old)), Some(update)) => {
            let new = update_one_doc(t, coll, &spec.filter, update, key, &old, checks)?;
            let value = if spec.return_new {
                Some(new.unwrap_or(old))
            } else {
                Some(old)
            };
            FamOutcome {
                n: 1,
                updated_existing: Some(true),
                upserted: None,
                value,
            }
        }
        (None, Some(update)) if spec.upsert => {
            let inserted = upsert_doc(t, coll, &spec.filter, update, checks, capped)?;
            let id = id_of(&inserted).and_then(|id| Bson::try_from(id).ok());
            FamOutcome {
                n: 1,
                updated_existing: Some(false),
                upserted: id,
                value: spec.return_new.then_some(inserted),
            }
        }
        (None, _) => FamOutcome {
            n: 0,
            updated_existing: spec.update.as_ref().map(|_| false),
            upserted: None,
            value: None,
        },
    })
}

fn fam_reply(last_error: Document, value: Bson, wc_error: Option<Document>) -> Reply {
    let mut reply = doc! { "lastErrorObject": last_error, "value": value };
    if let Some(wce) = wc_error {
        reply.insert("writeConcernError", wce);
    }
    reply.insert("ok", 1.0);
    reply.into()
}

impl FamOutcome {
    /// `lastErrorObject` and `value` as the reply gives them.
    fn reply_parts(&self, projection: Option<&Projection>) -> CommandResult<(Document, Bson)> {
        let mut last_error = doc! { "n": self.n };
        if let Some(existing) = self.updated_existing {
            last_error.insert("updatedExisting", existing);
        }
        if let Some(id) = &self.upserted {
            last_error.insert("upserted", id.clone());
        }
        let value = match (&self.value, projection) {
            (None, _) => Bson::Null,
            (Some(doc), Some(p)) => {
                Bson::Document(Document::try_from(p.apply(doc)?).map_err(internal)?)
            }
            (Some(doc), None) => {
                Bson::Document(Document::try_from(doc.as_ref() as &RawDocument).map_err(internal)?)
            }
        };
        Ok((last_error, value))
    }

    /// Notes the reply for a retryable write before the commit, when a retry must get it back.
    fn recorded_in(
        self,
        retry: Option<&RetryableWrite>,
        projection: Option<&Projection>,
    ) -> CommandResult<FamOutcome> {
        if let Some(retry) = retry
            && self.n > 0
        {
            let (le, v) = self.reply_parts(projection)?;
            retry.note(0, Bson::Document(doc! { "le": le, "v": v }));
        }
        Ok(self)
    }
}

/// One attempt at the command's write: `write_path::same_keying` fails it if the collection
/// became capped after it was looked up, and the command starts over.
async fn modify_once(
    shared: &Shared,
    mut txn: Option<&mut Txn>,
    (ns, spec, opts): (&str, &FamSpec, &WriteOptions),
    bypass: bool,
) -> CommandResult<FamOutcome> {
    let coll = target_collection(shared, txn.as_deref_mut(), ns, spec, opts).await?;
    let mut capped = None;
    if let Some(c) = &coll {
        super::views::refuse_write(c)?;
        if txn.is_some() {
            crate::capped::refuse_in_transaction(c)?;
        }
        capped = shared.capped.writer(c).await;
    }
    Ok(match coll {
        None => FamOutcome {
            n: 0,
            updated_existing: Some(false),
            upserted: None,
            value: None,
        },
        Some(coll) => {
            let validator = crate::validation::for_write(&coll, bypass)?;
            let checks = DocChecks {
                max_bson: shared.config.max_bson_size,
                validator: validator.as_ref(),
            };
            let collation = spec.collation.on(&coll)?;
            run_write(shared, opts, txn, |t| {
                super::write_path::same_keying(t, &coll)?;
                let target = with_collation(collation.as_ref(), || {
                    find_target(t, &coll, &spec.filter, spec.sort.as_ref())
                })?;
                modify_target(t, &coll, target, spec, &checks, capped.as_mut())?
                    .recorded_in(opts.retry.as_deref(), spec.projection.as_ref())
            })
            .await?
        }
    })
}
