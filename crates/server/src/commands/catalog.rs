//! Databases and collections: list, create, drop, rename (collMod: `coll_mod.rs`). The DDL that change
//! streams report by command (renameCollection, dropDatabase, collMod) annotates its
//! transaction with that command (`Txn::annotate`), in the same log record as its writes.

use std::collections::VecDeque;
use std::time::Instant;

use bson::raw::RawBsonRef;
use bson::{Document, RawDocumentBuf, doc};
use mangrove_query::Filter;
use mangrove_storage::Txn;

use crate::Shared;
use crate::cursor::{BatchDoc, Cursor, Source};
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;

use super::Reply;
use super::args::{cursor_batch_size, internal};
use super::names::{validate_collection_name, validate_db_name};
use super::reply::cursor_reply;
use super::write_path::{WriteOptions, retry_conflicts, run_write};

/// `listDatabases`. `admin`, `config` and `local` are always listed, as a replica-set mongod
/// lists them: `admin` holds the users and roles when there are any, `config` the settings
/// (`setDefaultRWConcern`), and `local` the oplog, which is the transaction log itself (its
/// size is the history the log retains).
pub(super) fn list_databases(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&["nameOnly", "filter", "authorizedDatabases"])?;
    let name_only = req.opt_bool("nameOnly")?.unwrap_or(false);
    let filter = req.opt_doc("filter")?.map(Filter::parse).transpose()?;
    let snapshot = shared.engine.snapshot();
    let mut names = snapshot.list_databases();
    names.extend([
        "admin".to_string(),
        "config".to_string(),
        "local".to_string(),
    ]);
    names.sort();
    names.dedup();
    let mut databases = Vec::new();
    let mut total: i64 = 0;
    for db in names {
        let size = match db.as_str() {
            "local" => shared.engine.history_window()?.retained_bytes as i64,
            _ => database_bytes(&snapshot, &db)?,
        };
        let entry = if name_only {
            doc! { "name": &db }
        } else {
            doc! { "name": &db, "sizeOnDisk": size, "empty": size == 0 }
        };
        if let Some(f) = &filter {
            let raw = RawDocumentBuf::try_from(&entry).map_err(internal)?;
            if !f.matches(&raw) {
                continue;
            }
        }
        total += size;
        databases.push(entry);
    }
    let mut reply = doc! { "databases": databases };
    if !name_only {
        reply.insert("totalSize", total);
        reply.insert("totalSizeMb", total / (1024 * 1024));
    }
    reply.insert("ok", 1.0);
    Ok(reply.into())
}

/// The bytes of a database's documents.
fn database_bytes(snapshot: &mangrove_storage::Snapshot, db: &str) -> CommandResult<i64> {
    let mut size: i64 = 0;
    for coll in snapshot.list_collections(db) {
        snapshot.scan(&coll, None, |_, d| {
            size += d.as_bytes().len() as i64;
            std::ops::ControlFlow::Continue(())
        })?;
    }
    Ok(size)
}

pub(super) fn list_collections(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&[
        "filter",
        "nameOnly",
        "authorizedCollections",
        "cursor",
        "includePendingDrops",
    ])?;
    validate_db_name(req.db)?;
    let name_only = req.opt_bool("nameOnly")?.unwrap_or(false);
    let filter = req.opt_doc("filter")?.map(Filter::parse).transpose()?;
    let batch_size = cursor_batch_size(req)?;
    let snapshot = shared.engine.snapshot();
    let mut docs = VecDeque::new();
    if req.db == "local" {
        let replset = doc! { "name": "system.replset", "type": "collection" };
        for entry in [oplog_entry(shared, name_only)?, replset] {
            let raw = RawDocumentBuf::try_from(&entry).map_err(internal)?;
            if filter.as_ref().is_none_or(|f| f.matches(&raw)) {
                docs.push_back(BatchDoc::Owned(raw));
            }
        }
    }
    for coll in snapshot.list_collections(req.db) {
        let entry = collection_entry(&coll, name_only);
        let raw = RawDocumentBuf::try_from(&entry).map_err(internal)?;
        if filter.as_ref().is_none_or(|f| f.matches(&raw)) {
            docs.push_back(BatchDoc::Owned(raw));
        }
    }
    let ns = format!("{}.$cmd.listCollections", req.db);
    let mut cursor = Cursor {
        ns: ns.clone(),
        source: Source::Buffered(docs),
        projection: None,
        remaining: None,
        last_used: Instant::now(),
        txn: None,
        time_left: None,
    };
    let (batch, exhausted) = cursor.next_batch(batch_size)?;
    let id = if exhausted {
        0
    } else {
        shared.cursors.insert(cursor)?
    };
    Ok(Reply::Raw(cursor_reply(&ns, id, "firstBatch", &batch)))
}

/// One collection's `listCollections` entry: a view, a time-series collection or a
/// collection, with its options unless only names are asked for.
fn collection_entry(coll: &mangrove_storage::CollectionInfo, name_only: bool) -> Document {
    let kind = if super::views::is_view(coll) {
        "view"
    } else if crate::timeseries::is_timeseries(coll) {
        "timeseries"
    } else {
        "collection"
    };
    let mut entry = doc! { "name": &coll.name, "type": kind };
    if name_only {
        return entry;
    }
    entry.insert("options", crate::access::shown_options(coll));
    let mut info = doc! { "readOnly": kind == "view" };
    if kind == "collection"
        && let Some(uuid) = coll.uuid()
    {
        info.insert("uuid", uuid);
    }
    entry.insert("info", info);
    // mongod shows the `_id` index of ordinary collections; a clustered one's is its key order.
    if kind == "collection" && !coll.options.contains_key("clusteredIndex") {
        entry.insert("idIndex", super::args::id_index_spec(coll));
    }
    entry
}

/// `local.oplog.rs` as `listCollections` shows it: a capped collection the size of the
/// configured history (it is the log itself, read through `commands/oplog_find.rs`).
fn oplog_entry(shared: &Shared, name_only: bool) -> CommandResult<Document> {
    if name_only {
        return Ok(doc! { "name": "oplog.rs", "type": "collection" });
    }
    let window = shared.engine.history_window()?;
    Ok(doc! {
        "name": "oplog.rs",
        "type": "collection",
        "options": {
            "capped": true,
            "size": window.size_limit_bytes as i64,
            "autoIndexId": false,
        },
        "info": { "readOnly": false },
    })
}

/// Options MongoDB's `create` takes that Mangrove does not implement. Refusing them is better than
/// silently creating a collection that behaves differently from what was asked.
const UNSUPPORTED_CREATE_OPTIONS: &[&str] = &["encryptedFields"];

const CREATE_OPTIONS: &[&str] = &[
    "capped",
    "size",
    "max",
    "viewOn",
    "pipeline",
    "timeseries",
    "expireAfterSeconds",
    "clusteredIndex",
    "validator",
    "validationLevel",
    "validationAction",
    "encryptedFields",
    "changeStreamPreAndPostImages",
    "collation",
    "storageEngine",
    "indexOptionDefaults",
    "autoIndexId",
    "idIndex",
    "flags",
    "recordPreImages",
];

/// `create`; inside a transaction (MongoDB 4.4+) the new collection stays invisible to others
/// until the transaction commits.
pub(super) async fn create(
    shared: &Shared,
    req: &Request<'_>,
    txn: Option<&mut Txn>,
) -> CommandResult<Reply> {
    req.check_fields(CREATE_OPTIONS)?;
    let name = req.collection()?;
    validate_collection_name(req.db, name)?;
    let (options, extra_indexes) = create_options(req, txn.is_some())?;
    let ns = req.ns(name);
    let opts = WriteOptions::from_request(req)?;
    let in_txn = txn.is_some();
    run_write(shared, &opts, txn, |txn: &mut Txn| {
        match txn.collection(&ns) {
            Some(_) if in_txn => Err(CommandError::new(
                code::NAMESPACE_EXISTS,
                format!("Collection {ns} already exists."),
            )),
            // MongoDB 7.0 makes `create` idempotent when the options match.
            Some(existing) if crate::access::shown_options(&existing) == options => Ok(()),
            Some(_) => Err(CommandError::new(
                code::NAMESPACE_EXISTS,
                format!("Collection {ns} already exists with different options."),
            )),
            None => {
                super::views::check_source_collation(&*txn, req.db, &options)?;
                txn.create_collection(&ns, with_id_collation(options.clone()))?;
                if crate::capped::limits_of(&options).is_some() {
                    // A capped collection is keyed by insertion order; `_id` is an index.
                    txn.create_index(&ns, capped_id_index())?;
                }
                for index in &extra_indexes {
                    txn.create_index(&ns, index.clone())?;
                }
                Ok(())
            }
        }
    })
    .await?;
    Ok(opts.finish_reply(doc! { "ok": 1.0 }).into())
}

/// `options` with the marker that keys the new collection's `_id`s under its default
/// collation (`access::COLLATED_ID_OPTION`), as mongod's `_id` index inherits it. Views have
/// no keys; capped, clustered and time-series collections keep binary `_id` keys.
fn with_id_collation(mut options: Document) -> Document {
    let keyed_by_id = ["viewOn", "capped", "clusteredIndex", "timeseries"]
        .iter()
        .all(|k| !options.contains_key(k));
    if keyed_by_id && options.contains_key("collation") {
        options.insert(crate::access::COLLATED_ID_OPTION, true);
    }
    options
}

/// The options `create` stores: those given (for a view, its checked `viewOn` and `pipeline`),
/// after refusing the ones Mangrove does not implement; and the indexes a time-series or
/// clustered collection's options call for.
fn create_options(req: &Request<'_>, in_txn: bool) -> CommandResult<(Document, Vec<Document>)> {
    refuse_unsupported(req)?;
    let collation = default_collation_option(req)?;
    // Checked here; stored as given by the copy below.
    let validation = crate::validation::parse_options(req, "create")?;
    if let Some(option) = validation.keys().next()
        && req.get("viewOn").is_some()
    {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            format!("option not supported on a view: {option}"),
        ));
    }
    let pre_images = pre_and_post_images(req)?;
    if pre_images == Some(true) && req.get("viewOn").is_some() {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "option not supported on a view: changeStreamPreAndPostImages",
        ));
    }
    let mut options = capped_options(req, in_txn)?;
    let (shaped, indexes) = shaped_options(req, in_txn, !options.is_empty())?;
    options.extend(shaped);
    options.extend(collation);
    for item in req.body.iter() {
        let (key, value) = item.map_err(internal)?;
        if matches!(
            key.as_str(),
            "capped"
                | "size"
                | "max"
                | "timeseries"
                | "clusteredIndex"
                | "expireAfterSeconds"
                | "collation"
        ) {
            continue;
        }
        if key.as_str() == "changeStreamPreAndPostImages" {
            // Stored normalized, and only when enabled, as mongod stores it.
            if pre_images == Some(true) {
                options.insert(key.as_str(), doc! { "enabled": true });
            }
        } else if CREATE_OPTIONS.contains(&key.as_str())
            && !matches!(key.as_str(), "viewOn" | "pipeline")
        {
            let value: bson::Bson = value.try_into().map_err(internal)?;
            options.insert(key.as_str(), value);
        }
    }
    match (req.get("viewOn"), req.get("pipeline")) {
        (Some(view_on), pipeline) => {
            if in_txn {
                return Err(CommandError::new(
                    code::OPERATION_NOT_SUPPORTED_IN_TRANSACTION,
                    "Cannot create a view in a multi-document transaction.",
                ));
            }
            options.extend(super::views::view_options(view_on, pipeline)?);
        }
        (None, Some(_)) => {
            return Err(CommandError::bad_value(
                "'pipeline' requires 'viewOn' to also be specified",
            ));
        }
        (None, None) => {}
    }
    Ok((options, indexes))
}

/// `create`'s `collation`, the collection's or view's default: stored normalized as mongod
/// shows it in `listCollections` (nothing for the simple collation).
fn default_collation_option(req: &Request<'_>) -> CommandResult<Option<(String, bson::Bson)>> {
    let Some(collation) = super::args::parse_collation(req.opt_doc("collation")?)? else {
        return Ok(None);
    };
    Ok(Some((
        "collation".to_string(),
        collation.index_spec().into(),
    )))
}

/// Refuses the `create` options Mangrove does not implement.
fn refuse_unsupported(req: &Request<'_>) -> CommandResult<()> {
    for option in UNSUPPORTED_CREATE_OPTIONS {
        // `encryptedFields: false` and friends ask for nothing special.
        if let Some(v) = req.get(option)
            && !matches!(v, RawBsonRef::Boolean(false))
        {
            return Err(CommandError::new(
                code::COMMAND_NOT_SUPPORTED,
                format!("create option '{option}' is not supported by Mangrove"),
            ));
        }
    }
    Ok(())
}

/// `timeseries`, `clusteredIndex` and `expireAfterSeconds`, checked (`timeseries.rs`).
fn shaped_options(
    req: &Request<'_>,
    in_txn: bool,
    capped: bool,
) -> CommandResult<(Document, Vec<Document>)> {
    let field = |name: &str| -> CommandResult<Option<bson::Bson>> {
        req.get(name)
            .map(|v| bson::Bson::try_from(v).map_err(internal))
            .transpose()
    };
    let (options, indexes) = crate::timeseries::create_options(
        field("timeseries")?.as_ref(),
        field("clusteredIndex")?.as_ref(),
        field("expireAfterSeconds")?.as_ref(),
    )?;
    let Some(option) = options.keys().next() else {
        return Ok((options, indexes));
    };
    if req.get("viewOn").is_some() || capped {
        let other = if capped { "capped" } else { "a view" };
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            format!("option '{option}' is not supported with {other}"),
        ));
    }
    if in_txn && options.contains_key("timeseries") {
        return Err(CommandError::new(
            code::OPERATION_NOT_SUPPORTED_IN_TRANSACTION,
            "Cannot create a time-series collection in a multi-document transaction.",
        ));
    }
    Ok((options, indexes))
}

/// `capped`, `size` and `max`, checked; a capped collection is not created in a transaction.
fn capped_options(req: &Request<'_>, in_txn: bool) -> CommandResult<Document> {
    let field = |name: &str| -> CommandResult<Option<bson::Bson>> {
        req.get(name)
            .map(|v| bson::Bson::try_from(v).map_err(internal))
            .transpose()
    };
    let options = crate::capped::create_options(
        field("capped")?.as_ref(),
        field("size")?.as_ref(),
        field("max")?.as_ref(),
    )?;
    if !options.is_empty() {
        if req.get("viewOn").is_some() {
            return Err(CommandError::new(
                code::INVALID_OPTIONS,
                "option not supported on a view: capped",
            ));
        }
        if in_txn {
            return Err(CommandError::new(
                code::OPERATION_NOT_SUPPORTED_IN_TRANSACTION,
                "Cannot create a capped collection in a multi-document transaction.",
            ));
        }
    }
    Ok(options)
}

/// A capped collection's `_id` index: a real unique index, since its documents are keyed by
/// insertion order (see `capped.rs`).
pub(super) fn capped_id_index() -> Document {
    doc! { "v": 2, "key": { "_id": 1 }, "name": "_id_", "unique": true }
}

/// `changeStreamPreAndPostImages: {enabled: <bool>}` of `create` or `collMod`, checked as
/// mongod's IDL checks it (TypeMismatch, missing or unknown field); its `enabled`.
pub(super) fn pre_and_post_images(req: &Request<'_>) -> CommandResult<Option<bool>> {
    const FIELD: &str = "changeStreamPreAndPostImages";
    let Some(spec) = req.opt_doc(FIELD)? else {
        return Ok(None);
    };
    let mut enabled = None;
    for item in spec.iter() {
        let (key, value) = item.map_err(internal)?;
        match (key.as_str(), value) {
            ("enabled", RawBsonRef::Boolean(b)) => enabled = Some(b),
            ("enabled", v) => {
                return Err(CommandError::type_mismatch(format!(
                    "BSON field '{}.{FIELD}.enabled' is the wrong type '{}', expected type 'bool'",
                    req.name,
                    crate::request::type_name(v.element_type())
                )));
            }
            (other, _) => {
                return Err(CommandError::new(
                    code::UNKNOWN_FIELD,
                    format!("BSON field '{FIELD}.{other}' is an unknown field."),
                ));
            }
        }
    }
    match enabled {
        Some(b) => Ok(Some(b)),
        None => Err(CommandError::new(
            code::MISSING_FIELD,
            format!("BSON field '{FIELD}.enabled' is missing but a required field"),
        )),
    }
}

/// DDL waits for the open transactions that used its namespaces, as mongod waits for their
/// collection locks, until they end (commit, abort, endSessions, or the lifetime limit's reaper)
/// or the command's `maxTimeMS` runs out.
pub(super) async fn wait_for_transactions(
    shared: &Shared,
    req: &Request<'_>,
    what: &str,
    matches: &(dyn Fn(&str) -> bool + Sync),
) -> CommandResult<()> {
    let uses = &shared.sessions.open;
    if !uses.in_use(matches) {
        return Ok(());
    }
    let max_time = match req.opt_i64("maxTimeMS")? {
        Some(ms) if ms > 0 => Some(std::time::Duration::from_millis(ms as u64)),
        _ => None,
    };
    // Without maxTimeMS: past the lifetime limit the reaper has aborted every such transaction.
    // The limit may be up to 68 years, so the deadline saturates (None: no deadline) rather
    // than overflowing the clock.
    let patience = max_time.unwrap_or_else(|| {
        let lifetime = shared.params.transaction_lifetime();
        lifetime.saturating_add(std::time::Duration::from_secs(5))
    });
    let deadline = tokio::time::Instant::now().checked_add(patience);
    tracing::info!(
        target_ns = what,
        "waiting for open transactions that use it"
    );
    if uses.wait_unused(matches, deadline).await {
        return Ok(());
    }
    Err(match max_time {
        Some(_) => CommandError::new(
            code::MAX_TIME_MS_EXPIRED,
            format!("operation exceeded time limit waiting for open transactions that use {what}"),
        ),
        None => CommandError::new(
            code::LOCK_TIMEOUT,
            format!("timed out waiting for open transactions that use {what}"),
        ),
    })
}

pub(super) async fn drop(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&[])?;
    let name = req.collection()?;
    let ns = req.ns(name);
    let opts = WriteOptions::from_request(req)?;
    wait_for_transactions(shared, req, &ns, &|used| used == ns).await?;
    let indexes = retry_conflicts(shared, &opts, |txn: &mut Txn| {
        // Since MongoDB 7.0, dropping a missing collection succeeds.
        match txn.collection(&ns) {
            Some(coll) => {
                txn.drop_collection(&ns)?;
                Ok(crate::capped::index_count(&coll) as i32)
            }
            None => Ok(0),
        }
    })
    .await?;
    Ok(opts
        .finish_reply(doc! { "nIndexesWas": indexes, "ns": ns, "ok": 1.0 })
        .into())
}

/// `renameCollection` (on `admin`): one transaction creates the target with the source's
/// options, moves every document, and drops the source, so readers see either name, never
/// both or neither. It first waits for open transactions on either namespace, like `drop`.
/// The move is one log record, so a collection too large for one record is refused
/// (TransactionTooLarge) rather than half renamed.
pub(super) async fn rename_collection(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&["to", "dropTarget", "stayTemp"])?;
    let (from, to) = rename_namespaces(req)?;
    if from == to {
        return Err(CommandError::new(
            code::ILLEGAL_OPERATION,
            "Can't rename a collection to itself",
        ));
    }
    let drop_target = req.opt_bool("dropTarget")?.unwrap_or(false);
    let opts = WriteOptions::from_request(req)?;
    let what = format!("{from} and {to}");
    wait_for_transactions(shared, req, &what, &|used| used == from || used == to).await?;
    if drop_target {
        // Its own commit: a transaction never drops and re-creates one namespace.
        retry_conflicts(shared, &opts, |txn: &mut Txn| {
            if txn.collection(from).is_some() && txn.collection(to).is_some() {
                txn.drop_collection(to)?;
            }
            Ok(())
        })
        .await?;
    }
    retry_conflicts(shared, &opts, |txn: &mut Txn| {
        move_collection(txn, from, to)?;
        txn.annotate(
            from,
            doc! { "renameCollection": from, "to": to, "dropTarget": drop_target },
        );
        Ok(())
    })
    .await?;
    Ok(opts.finish_reply(doc! { "ok": 1.0 }).into())
}

/// The source (the command's value) and `to` namespaces, both valid.
fn rename_namespaces<'r>(req: &Request<'r>) -> CommandResult<(&'r str, &'r str)> {
    let from = match req.command_value() {
        Some(RawBsonRef::String(s)) => s,
        _ => {
            return Err(CommandError::type_mismatch(
                "renameCollection takes the source namespace as a string",
            ));
        }
    };
    let to = match req.get("to") {
        Some(RawBsonRef::String(s)) => s,
        Some(_) => return Err(CommandError::type_mismatch("'to' must be a string")),
        None => {
            return Err(CommandError::new(
                code::MISSING_FIELD,
                "BSON field 'renameCollection.to' is missing but a required field",
            ));
        }
    };
    for ns in [from, to] {
        let (db, coll) = ns.split_once('.').ok_or_else(|| {
            CommandError::new(
                code::INVALID_NAMESPACE,
                format!("Invalid namespace specified '{ns}'"),
            )
        })?;
        validate_collection_name(db, coll)?;
    }
    Ok((from, to))
}

/// Creates `to` with the source's options and indexes, moves every document, and drops `from`.
fn move_collection(txn: &mut Txn, from: &str, to: &str) -> CommandResult<()> {
    let Some(source) = txn.collection(from) else {
        return Err(CommandError::new(
            code::NAMESPACE_NOT_FOUND,
            format!("Source collection {from} does not exist"),
        ));
    };
    if txn.collection(to).is_some() {
        return Err(CommandError::new(
            code::NAMESPACE_EXISTS,
            format!("target namespace exists: {to}"),
        ));
    }
    let mut target = txn.create_collection(to, (*source.options).clone())?;
    // The indexes move with the collection, as in MongoDB; built empty, then filled by
    // the inserts below.
    for index in &source.indexes {
        target = txn.create_index(to, index.spec.clone())?;
    }
    // Copied in natural order, so the target keeps it.
    let mut docs = Vec::new();
    crate::access::walk_natural(&*txn, &source, None, false, &mut |_, key, doc| {
        docs.push((key.clone(), doc.clone()));
        std::ops::ControlFlow::Continue(())
    })?;
    for (key, doc) in docs {
        txn.insert(&target, key, doc)?;
    }
    txn.drop_collection(from)?;
    Ok(())
}

pub(super) async fn drop_database(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&[])?;
    validate_db_name(req.db)?;
    let opts = WriteOptions::from_request(req)?;
    let prefix = format!("{}.", req.db);
    wait_for_transactions(shared, req, req.db, &|used| used.starts_with(&prefix)).await?;
    retry_conflicts(shared, &opts, |txn: &mut Txn| {
        let collections = txn.list_collections(req.db);
        for coll in &collections {
            txn.drop_collection(&coll.ns())?;
        }
        // A database with nothing to drop logs nothing, as in mongod.
        if !collections.is_empty() {
            txn.annotate(&format!("{}.$cmd", req.db), doc! { "dropDatabase": 1 });
        }
        Ok(())
    })
    .await?;
    Ok(opts
        .finish_reply(doc! { "dropped": req.db, "ok": 1.0 })
        .into())
}
