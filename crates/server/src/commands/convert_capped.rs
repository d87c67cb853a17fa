//! `convertToCapped`: an existing collection becomes capped, in one transaction, so readers see
//! it either as it was or as capped, never half converted, and a crash leaves one or the other.
//!
//! mongod copies into a temporary capped collection and renames it over the original. Here the
//! collection keeps its namespace, UUID and documents: its options gain `capped` and `size`,
//! its secondary indexes are dropped (mongod keeps only `_id`), and its documents are keyed by
//! insertion number in their natural order (`capped.rs`), keeping the newest that fit `size`,
//! as copying them into the capped collection would. A collection that is already capped keeps
//! its keys and only sheds what no longer fits.
//!
//! The log record is annotated with the command (`event.rs` and `oplog.rs` show the command
//! and the documents it removed, not the rewrite of the rest).
//!
//! Invariants:
//! - Waits for open transactions on the collection first, like `drop`; refused inside one.
//! - Holds the capped writer of an already-capped collection across its commit, so no insert
//!   interleaves with the trimming.

use bson::{Bson, Document, doc};
use mangrove_storage::{COLLATED_ID_OPTION, CollectionInfo, DocKey, StoredDoc, Txn};

use super::catalog::{capped_id_index, wait_for_transactions};
use super::write_path::{WriteOptions, retry_conflicts};
use crate::Shared;
use crate::capped;
use crate::error::{CommandError, CommandResult, code};
use crate::reply::Reply;
use crate::request::Request;

pub(super) async fn convert_to_capped(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&["size"])?;
    let name = req.collection()?;
    let ns = req.ns(name);
    let size = match req.get("size").map(Bson::try_from) {
        Some(Ok(n @ (Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_)))) => n,
        Some(_) => {
            return Err(CommandError::type_mismatch(
                "BSON field 'convertToCapped.size' is the wrong type, expected a number",
            ));
        }
        None => {
            return Err(CommandError::new(
                code::MISSING_FIELD,
                "BSON field 'convertToCapped.size' is missing but a required field",
            ));
        }
    };
    let capped_options = capped::create_options(Some(&Bson::Boolean(true)), Some(&size), None)?;
    let opts = WriteOptions::from_request(req)?;
    wait_for_transactions(shared, req, &ns, &|used| used == ns).await?;
    let coll = source(shared, &ns)?;
    // Held until the conversion is visible (dropped after the commit below).
    let _writer = match capped::is_capped(&coll) {
        true => shared.capped.writer(&coll).await,
        false => None,
    };
    retry_conflicts(shared, &opts, |txn: &mut Txn| {
        convert(txn, &ns, &capped_options)?;
        txn.annotate(&ns, doc! { "convertToCapped": name, "size": size.clone() });
        Ok(())
    })
    .await?;
    Ok(opts.finish_reply(doc! { "ok": 1.0 }).into())
}

/// The collection to convert: it must exist and hold documents of its own.
fn source(shared: &Shared, ns: &str) -> CommandResult<CollectionInfo> {
    let Some(coll) = shared.engine.snapshot().collection(ns) else {
        return Err(not_found(ns));
    };
    super::views::refuse_view(&coll, None)?;
    if crate::timeseries::is_timeseries(&coll) || coll.options.contains_key("clusteredIndex") {
        return Err(CommandError::new(
            code::COMMAND_NOT_SUPPORTED,
            format!(
                "convertToCapped is not supported on {ns}: it is a time-series or clustered collection"
            ),
        ));
    }
    Ok(coll)
}

fn not_found(ns: &str) -> CommandError {
    CommandError::new(
        code::NAMESPACE_NOT_FOUND,
        format!("source collection {ns} does not exist"),
    )
}

/// The conversion itself, in `txn` (see the module comment).
fn convert(txn: &mut Txn, ns: &str, capped_options: &Document) -> CommandResult<()> {
    // Dropped since `source` looked: the same answer.
    let Some(before) = txn.collection(ns) else {
        return Err(not_found(ns));
    };
    let was_capped = capped::is_capped(&before);
    let mut docs: Vec<(DocKey, StoredDoc)> = Vec::new();
    crate::access::walk_natural(&*txn, &before, None, false, &mut |_, key, doc| {
        docs.push((key.clone(), doc.clone()));
        std::ops::ControlFlow::Continue(())
    })?;
    for index in capped::secondary_indexes(&before) {
        txn.drop_index(ns, &index.key.name)?;
    }
    let mut options = (*before.options).clone();
    options.remove(COLLATED_ID_OPTION);
    options.remove("max");
    options.extend(capped_options.clone());
    let after = txn.set_collection_options(ns, options)?;
    let limits = capped::limits(&after).expect("the options just set are capped");
    let keep = newest_that_fit(&docs, limits.size);
    if was_capped {
        for (key, _) in &docs[..keep] {
            txn.delete(&after, key.clone())?;
        }
        return Ok(());
    }
    for (key, _) in &docs {
        txn.delete(&after, key.clone())?;
    }
    let after = txn.create_index(ns, capped_id_index())?;
    for (n, (_, doc)) in docs[keep..].iter().enumerate() {
        txn.insert(&after, capped::key_of_number(n as u64 + 1), doc.clone())?;
    }
    Ok(())
}

/// Where the newest documents that fit in `size` bytes start: the documents a capped
/// collection of that size holds after all of them were inserted in this order.
fn newest_that_fit(docs: &[(DocKey, StoredDoc)], size: u64) -> usize {
    let mut total = 0u64;
    for (i, (_, doc)) in docs.iter().enumerate().rev() {
        total += doc.as_bytes().len() as u64;
        if total > size {
            return i + 1;
        }
    }
    0
}
