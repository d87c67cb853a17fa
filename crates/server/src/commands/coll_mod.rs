//! `collMod`: changes a collection's options (validation, pre- and post-images, a capped
//! collection's limits, a time-series collection's granularity, the TTL of a time-series or
//! clustered collection), a view's definition, or one index's `expireAfterSeconds` and `hidden`.
//!
//! Invariants:
//! - Every change is one transaction: the new options (a durable catalog change,
//!   `LogOp::SetCollectionOptions`) and any index rebuilt for it commit together, annotated
//!   with the command so change streams report one `modify` event.
//! - Nothing is checked against the collection inside the transaction that was not checked
//!   as a command error first: an unknown or ill-typed field fails before anything is written.
//! - An index change rebuilds the index under its new spec (drop and create in the same
//!   transaction): the storage engine has no in-place index option change, and a rebuild costs
//!   one scan of the collection.
//! - Like `drop`, it first waits for the open transactions that use the collection.

use bson::raw::RawBsonRef;
use bson::{Bson, Document, doc};
use mangrove_storage::{CollectionInfo, Txn};

use crate::Shared;
use crate::error::{CommandError, CommandResult, code};
use crate::request::{Request, as_i64};

use super::Reply;
use super::catalog::{pre_and_post_images, wait_for_transactions};
use super::names::validate_collection_name;
use super::write_path::{WriteOptions, retry_conflicts};

/// Options of mongod's `collMod` that Mangrove does not implement: refused with InvalidOptions
/// rather than ignored.
const UNSUPPORTED: &[&str] = &[
    "timeseriesBucketsMayHaveMixedSchemaData",
    "clusteredIndex",
    "dryRun",
    "recordPreImages",
];

/// The fields `collMod` takes.
const FIELDS: &[&str] = &[
    "changeStreamPreAndPostImages",
    "validator",
    "validationLevel",
    "validationAction",
    "viewOn",
    "pipeline",
    "index",
    "expireAfterSeconds",
    "timeseries",
    "cappedSize",
    "cappedMax",
];

/// One index's change: which index, and its new TTL and visibility.
struct IndexChange {
    name: Option<String>,
    key: Option<Document>,
    expire: Option<i64>,
    hidden: Option<bool>,
}

/// Everything a `collMod` asks for, checked.
struct Changes {
    pre_images: Option<bool>,
    validation: Document,
    view: Option<(Option<Bson>, Option<Bson>)>,
    timeseries: Option<Bson>,
    /// `Some(None)`: `expireAfterSeconds: "off"`.
    expire: Option<Option<i64>>,
    capped_size: Option<i64>,
    capped_max: Option<i64>,
    index: Option<IndexChange>,
}

pub(super) async fn coll_mod(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    refuse_unsupported(req)?;
    req.check_fields(FIELDS)?;
    let name = req.collection()?;
    validate_collection_name(req.db, name)?;
    let changes = parse(req)?;
    let ns = req.ns(name);
    let opts = WriteOptions::from_request(req)?;
    wait_for_transactions(shared, req, &ns, &|used| used == ns).await?;
    let reply = retry_conflicts(shared, &opts, |txn: &mut Txn| {
        let Some(coll) = txn.collection(&ns) else {
            return Err(CommandError::new(
                code::NAMESPACE_NOT_FOUND,
                format!("ns does not exist: {ns}"),
            ));
        };
        apply(txn, &coll, &changes, doc! { "collMod": name })
    })
    .await?;
    let mut reply = opts.finish_reply(reply);
    reply.insert("ok", 1.0);
    Ok(reply.into())
}

fn refuse_unsupported(req: &Request<'_>) -> CommandResult<()> {
    for option in UNSUPPORTED {
        if req.get(option).is_some() {
            return Err(CommandError::new(
                code::INVALID_OPTIONS,
                format!("collMod option '{option}' is not supported by Mangrove"),
            ));
        }
    }
    Ok(())
}

fn parse(req: &Request<'_>) -> CommandResult<Changes> {
    let owned = |field: &str| -> CommandResult<Option<Bson>> {
        req.get(field)
            .map(|v| Bson::try_from(v).map_err(super::args::internal))
            .transpose()
    };
    let view = match (owned("viewOn")?, owned("pipeline")?) {
        (None, None) => None,
        given => Some(given),
    };
    Ok(Changes {
        pre_images: pre_and_post_images(req)?,
        validation: crate::validation::parse_options(req, "collMod")?,
        view,
        timeseries: owned("timeseries")?,
        expire: owned("expireAfterSeconds")?
            .map(|v| parse_expire(&v))
            .transpose()?,
        capped_size: capped_number(req, "cappedSize", 1, crate::capped::MAX_CAPPED_SIZE)?,
        capped_max: capped_number(req, "cappedMax", 0, crate::capped::MAX_CAPPED_DOCS)?,
        index: req.opt_doc("index")?.map(parse_index).transpose()?,
    })
}

/// `expireAfterSeconds`: seconds, or `"off"` to stop expiring.
fn parse_expire(v: &Bson) -> CommandResult<Option<i64>> {
    match v {
        Bson::String(s) if s == "off" => Ok(None),
        Bson::String(s) => Err(CommandError::bad_value(format!(
            "Invalid value for 'expireAfterSeconds': '{s}' (a number of seconds, or \"off\")"
        ))),
        v => crate::timeseries::expire_seconds(v).map(Some),
    }
}

fn capped_number(req: &Request<'_>, field: &str, min: i64, max: i64) -> CommandResult<Option<i64>> {
    let Some(v) = req.get(field) else {
        return Ok(None);
    };
    let Some(n) = as_i64(v) else {
        return Err(CommandError::type_mismatch(format!(
            "BSON field 'collMod.{field}' is the wrong type, expected a number"
        )));
    };
    if !(min..=max).contains(&n) {
        return Err(CommandError::bad_value(format!(
            "'{field}' must be between {min} and {max}, not {n}"
        )));
    }
    Ok(Some(n))
}

fn parse_index(spec: &bson::RawDocument) -> CommandResult<IndexChange> {
    let mut change = IndexChange {
        name: None,
        key: None,
        expire: None,
        hidden: None,
    };
    for item in spec.iter() {
        let (field, value) = item.map_err(super::args::internal)?;
        match (field.as_str(), value) {
            ("name", RawBsonRef::String(s)) => change.name = Some(s.to_string()),
            ("keyPattern", RawBsonRef::Document(d)) => {
                change.key = Some(Document::try_from(d).map_err(super::args::internal)?)
            }
            ("expireAfterSeconds", v) => {
                let v = Bson::try_from(v).map_err(super::args::internal)?;
                change.expire = Some(crate::timeseries::expire_seconds(&v)?);
            }
            ("hidden", RawBsonRef::Boolean(b)) => change.hidden = Some(b),
            ("unique" | "prepareUnique" | "forceNonUnique", _) => {
                return Err(CommandError::new(
                    code::INVALID_OPTIONS,
                    format!("collMod index option '{field}' is not supported by Mangrove"),
                ));
            }
            (field @ ("name" | "keyPattern" | "hidden"), _) => {
                return Err(CommandError::type_mismatch(format!(
                    "BSON field 'collMod.index.{field}' is the wrong type"
                )));
            }
            (other, _) => {
                return Err(CommandError::new(
                    code::UNKNOWN_FIELD,
                    format!("BSON field 'collMod.index.{other}' is an unknown field."),
                ));
            }
        }
    }
    match (&change.name, &change.key) {
        (Some(_), Some(_)) | (None, None) => Err(CommandError::new(
            code::INVALID_OPTIONS,
            "Must specify either index name or key pattern.",
        )),
        _ if change.expire.is_none() && change.hidden.is_none() => Err(CommandError::new(
            code::INVALID_OPTIONS,
            "no expireAfterSeconds or hidden field",
        )),
        _ => Ok(change),
    }
}

/// Applies `changes` to `coll` in `txn`; the reply's fields besides `ok`.
fn apply(
    txn: &mut Txn,
    coll: &CollectionInfo,
    changes: &Changes,
    mut annotation: Document,
) -> CommandResult<Document> {
    let ns = coll.ns();
    let is_view = super::views::is_view(coll);
    let mut options = (*coll.options).clone();
    if let Some(enabled) = changes.pre_images {
        refuse_on_view(is_view, "changeStreamPreAndPostImages")?;
        // Stored only when enabled, as mongod does.
        if enabled {
            options.insert("changeStreamPreAndPostImages", doc! { "enabled": true });
        } else {
            options.remove("changeStreamPreAndPostImages");
        }
        annotation.insert("changeStreamPreAndPostImages", doc! { "enabled": enabled });
    }
    if let Some(option) = changes.validation.keys().next() {
        refuse_on_view(is_view, option)?;
    }
    options.extend(changes.validation.clone());
    annotation.extend(changes.validation.clone());
    if let Some((view_on, pipeline)) = &changes.view {
        modify_view(is_view, &mut options, view_on.as_ref(), pipeline.as_ref())?;
    }
    modify_capped(coll, &mut options, changes)?;
    if let Some(ts) = &changes.timeseries {
        let current = timeseries_options(coll)?;
        options.insert("timeseries", crate::timeseries::modified(current, ts)?);
    }
    if let Some(expire) = changes.expire {
        modify_expiry(txn, coll, &mut options, expire)?;
    }
    let mut reply = Document::new();
    if let Some(change) = &changes.index {
        refuse_on_view(is_view, "index")?;
        reply = modify_index(txn, coll, change)?;
    }
    if options != *coll.options {
        txn.set_collection_options(&ns, options)?;
    }
    txn.annotate(&ns, annotation);
    Ok(reply)
}

fn refuse_on_view(is_view: bool, option: &str) -> CommandResult<()> {
    if is_view {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            format!("option not supported on a view: {option}"),
        ));
    }
    Ok(())
}

/// `viewOn` and `pipeline` on a view: the one not given keeps its value.
fn modify_view(
    is_view: bool,
    options: &mut Document,
    view_on: Option<&Bson>,
    pipeline: Option<&Bson>,
) -> CommandResult<()> {
    if !is_view {
        let option = if view_on.is_some() {
            "viewOn"
        } else {
            "pipeline"
        };
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            format!("option only supported on a view: {option}"),
        ));
    }
    let view_on = view_on.or(options.get("viewOn")).cloned();
    let pipeline = pipeline.or(options.get("pipeline")).cloned();
    let raw = bson::RawDocumentBuf::try_from(&doc! { "v": view_on, "p": pipeline })
        .map_err(super::args::internal)?;
    let (v, p) = (raw.get("v").ok().flatten(), raw.get("p").ok().flatten());
    let Some(v) = v else {
        return Err(CommandError::type_mismatch("'viewOn' must be a string"));
    };
    options.extend(super::views::view_options(v, p)?);
    Ok(())
}

/// `cappedSize` and `cappedMax`: the next insert trims the collection to its new limits.
fn modify_capped(
    coll: &CollectionInfo,
    options: &mut Document,
    changes: &Changes,
) -> CommandResult<()> {
    if changes.capped_size.is_none() && changes.capped_max.is_none() {
        return Ok(());
    }
    if !crate::capped::is_capped(coll) {
        let option = if changes.capped_size.is_some() {
            "cappedSize"
        } else {
            "cappedMax"
        };
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            format!("option only supported on a capped collection: {option}"),
        ));
    }
    if let Some(size) = changes.capped_size {
        options.insert("size", size);
    }
    match changes.capped_max {
        Some(0) => {
            options.remove("max");
        }
        Some(max) => {
            options.insert("max", max);
        }
        None => {}
    }
    Ok(())
}

fn timeseries_options(coll: &CollectionInfo) -> CommandResult<&Document> {
    coll.options.get_document("timeseries").map_err(|_| {
        CommandError::new(
            code::INVALID_OPTIONS,
            "option only supported on a time-series collection: timeseries",
        )
    })
}

/// A time-series or clustered collection's `expireAfterSeconds`: its hidden TTL index is
/// rebuilt with the new value, or dropped for `"off"`.
fn modify_expiry(
    txn: &mut Txn,
    coll: &CollectionInfo,
    options: &mut Document,
    expire: Option<i64>,
) -> CommandResult<()> {
    let field = match crate::timeseries::time_field(coll) {
        Some(time) => time.to_string(),
        None if coll.options.contains_key("clusteredIndex") => "_id".to_string(),
        None => {
            return Err(CommandError::new(
                code::INVALID_OPTIONS,
                "'expireAfterSeconds' is only supported on time-series collections or clustered collections",
            ));
        }
    };
    let ns = coll.ns();
    if coll.index(crate::timeseries::TTL_INDEX).is_some() {
        txn.drop_index(&ns, crate::timeseries::TTL_INDEX)?;
    }
    match expire {
        None => {
            options.remove("expireAfterSeconds");
        }
        Some(secs) => {
            options.insert("expireAfterSeconds", secs);
            txn.create_index(
                &ns,
                doc! {
                    "v": 2, "key": { field: 1 }, "name": crate::timeseries::TTL_INDEX,
                    "expireAfterSeconds": secs as i32,
                },
            )?;
        }
    }
    Ok(())
}

/// One index's `expireAfterSeconds` and `hidden`, rebuilt under its new spec; mongod's reply
/// fields (`expireAfterSeconds_old`/`_new`, `hidden_old`/`_new`).
fn modify_index(
    txn: &mut Txn,
    coll: &CollectionInfo,
    change: &IndexChange,
) -> CommandResult<Document> {
    let ns = coll.ns();
    let found = coll
        .indexes
        .iter()
        .find(|i| match (&change.name, &change.key) {
            (Some(name), _) => &i.key.name == name,
            (None, Some(key)) => &i.key.key_pattern == key,
            (None, None) => false,
        });
    let is_id = change.name.as_deref() == Some("_id_")
        || change.key.as_ref().is_some_and(|k| k == &doc! { "_id": 1 });
    let Some(index) = found.filter(|i| !crate::timeseries::is_internal_index(&i.key.name)) else {
        let (code, what) = match is_id {
            true => (
                code::BAD_VALUE,
                "the _id index cannot be changed".to_string(),
            ),
            false => (
                27,
                format!("cannot find index {} for ns {ns}", describe(change)),
            ),
        };
        return Err(CommandError::new(code, what));
    };
    let mut spec = index.spec.clone();
    let mut reply = Document::new();
    if let Some(secs) = change.expire {
        modify_index_ttl(&mut spec, secs, &mut reply)?;
    }
    if let Some(hidden) = change.hidden {
        reply.insert("hidden_old", spec.get_bool("hidden").unwrap_or(false));
        reply.insert("hidden_new", hidden);
        if hidden {
            spec.insert("hidden", true);
        } else {
            spec.remove("hidden");
        }
    }
    if spec != index.spec {
        let name = index.key.name.clone();
        txn.drop_index(&ns, &name)?;
        txn.create_index(&ns, spec)?;
    }
    Ok(reply)
}

fn modify_index_ttl(spec: &mut Document, secs: i64, reply: &mut Document) -> CommandResult<()> {
    let single_field = spec.get_document("key").is_ok_and(|k| k.len() == 1);
    if !single_field {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "TTL indexes are single-field indexes, compound indexes do not support TTL",
        ));
    }
    if let Some(old) = spec.get("expireAfterSeconds").cloned() {
        reply.insert("expireAfterSeconds_old", old);
    }
    reply.insert("expireAfterSeconds_new", secs);
    // Stored as createIndexes stores it (an int32; `expire_seconds` checked the range).
    spec.insert("expireAfterSeconds", secs as i32);
    Ok(())
}

fn describe(change: &IndexChange) -> String {
    match (&change.name, &change.key) {
        (Some(name), _) => format!("name {name}"),
        (None, Some(key)) => format!("key pattern {key}"),
        (None, None) => String::new(),
    }
}
