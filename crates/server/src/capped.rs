//! Capped collections: their limits, their insertion-ordered keys, and the one writer at a time
//! that keeps them within their limits.
//!
//! A capped collection keys its documents by an insertion number (a `u64`, big-endian), not by
//! `_id`: the collection's own key order is then insertion order, which is what `$natural`
//! order and tailable cursors walk. Its `_id` is a unique secondary index named `_id_`, created
//! with the collection, so `_id` lookups and duplicate-key errors work as on any collection.
//!
//! Invariants:
//! - Insertion numbers are handed out, and the transaction holding them committed and visible,
//!   under the collection's writer lock: numbers become visible in increasing order, so a
//!   tailable cursor that resumes after the last key it returned misses no document.
//! - A number is never handed out twice while the server runs (`next_floor`), even when the
//!   newest document is deleted, so a tailable cursor cannot skip a reused number.
//! - Every write to a capped collection holds its writer: inserts trim the oldest documents
//!   in the same transaction until the collection is within `size` bytes and `max` documents;
//!   other writes leave the tally stale, and the next insert recounts with a scan.
//! - Capped collections are never written by multi-document transactions (as in mongod: 263).
//!
//! Lock order: the registry's map (`std::sync::Mutex`) is a leaf, never held across an await; a
//! writer lock (`tokio::sync::Mutex`) is held across the statement's commit until it is
//! visible, and no other writer lock is taken while holding one.

use std::collections::HashMap;
use std::ops::{Bound, ControlFlow};
use std::sync::{Arc, Mutex};

use bson::{Bson, Document};
use mangrove_storage::{CollectionInfo, DocKey, IndexInfo, ReadView, StoredDoc, Txn};
use tokio::sync::OwnedMutexGuard;

use crate::error::{CommandError, CommandResult, code};

/// mongod's bounds on `size` (1 PB) and `max` (under 2^31).
pub const MAX_CAPPED_SIZE: i64 = 1 << 50;
pub const MAX_CAPPED_DOCS: i64 = (1 << 31) - 1;
/// The smallest cap, as mongod rounds up: a collection of `size: 1` holds 4 KiB.
pub const MIN_CAPPED_SIZE: u64 = 4096;

/// The name of the `_id` index.
const ID_INDEX: &str = "_id_";

/// The limits of a capped collection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of documents (BSON sizes) it holds at most.
    pub size: u64,
    /// Documents it holds at most, if limited.
    pub max: Option<u64>,
}

fn as_i64(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        Bson::Double(d) if d.is_finite() => Some(*d as i64),
        _ => None,
    }
}

/// The limits of `coll` if it is capped.
pub fn limits(coll: &CollectionInfo) -> Option<Limits> {
    limits_of(&coll.options)
}

pub fn is_capped(coll: &CollectionInfo) -> bool {
    matches!(coll.options.get("capped"), Some(Bson::Boolean(true)))
}

/// Whether `coll` keys its documents by insertion number: capped and time-series collections
/// (the latter without any `_id` index, see `timeseries.rs`).
pub fn keyed_by_insertion(coll: &CollectionInfo) -> bool {
    is_capped(coll) || crate::timeseries::is_timeseries(coll)
}

/// A time-series collection's writer needs numbers but no limits.
const UNLIMITED: Limits = Limits {
    size: u64::MAX,
    max: None,
};

/// The limits a collection's options give, if it is capped: the stored `size` rounded as mongod
/// rounds it (at least 4 KiB, else up to a multiple of 256), and `max` if positive.
pub fn limits_of(options: &Document) -> Option<Limits> {
    if !matches!(options.get("capped"), Some(Bson::Boolean(true))) {
        return None;
    }
    let size = options.get("size").and_then(as_i64).unwrap_or(0).max(0) as u64;
    let size = if size <= MIN_CAPPED_SIZE {
        MIN_CAPPED_SIZE
    } else {
        size.div_ceil(256) * 256
    };
    let max = options
        .get("max")
        .and_then(as_i64)
        .filter(|&m| m > 0)
        .map(|m| m as u64);
    Some(Limits { size, max })
}

/// Checks `create`'s `capped`, `size` and `max` as mongod does and returns what to store for
/// them (nothing for an uncapped collection).
pub fn create_options(
    capped: Option<&Bson>,
    size: Option<&Bson>,
    max: Option<&Bson>,
) -> CommandResult<Document> {
    let capped = match capped {
        None => false,
        Some(Bson::Boolean(b)) => *b,
        Some(v) => as_i64(v).is_some_and(|n| n != 0),
    };
    let number = |field: &str, v: Option<&Bson>| -> CommandResult<Option<i64>> {
        match v {
            None => Ok(None),
            Some(v) => as_i64(v).map(Some).ok_or_else(|| {
                CommandError::type_mismatch(format!(
                    "BSON field 'create.{field}' is the wrong type, expected a number"
                ))
            }),
        }
    };
    let size = number("size", size)?;
    let max = number("max", max)?;
    if !capped {
        return Ok(Document::new());
    }
    let Some(size) = size else {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "the 'size' field is required when 'capped' is true",
        ));
    };
    if !(0..=MAX_CAPPED_SIZE).contains(&size) {
        return Err(CommandError::bad_value(format!(
            "size must be between 0 and {MAX_CAPPED_SIZE} (1 PB), not {size}"
        )));
    }
    // Stored as the smallest integer that holds them, as mongod shows them.
    let number = |n: i64| i32::try_from(n).map_or(Bson::Int64(n), Bson::Int32);
    let mut options = bson::doc! { "capped": true, "size": number(size) };
    if let Some(max) = max {
        if max > MAX_CAPPED_DOCS {
            return Err(CommandError::bad_value(
                "max in a capped collection has to be < 2^31 or not set",
            ));
        }
        // mongod keeps a non-positive `max` as "no limit".
        if max > 0 {
            options.insert("max", number(max));
        }
    }
    Ok(options)
}

/// The indexes `listIndexes` shows after `_id_`: all of them, but a capped collection's own
/// `_id_` index, which stands where other collections' key order does.
/// Internal indexes (`timeseries.rs`'s TTL index) are not shown either.
pub fn secondary_indexes(coll: &CollectionInfo) -> impl Iterator<Item = &Arc<IndexInfo>> {
    let capped = is_capped(coll);
    coll.indexes.iter().filter(move |i| {
        let hidden_id = capped && i.key.name == ID_INDEX;
        !hidden_id && !crate::timeseries::is_internal_index(&i.key.name)
    })
}

/// Indexes of `coll`, `_id` included (mongod's `nIndexes`; a time-series collection has none
/// on `_id`).
pub fn index_count(coll: &CollectionInfo) -> usize {
    let id = usize::from(!crate::timeseries::is_timeseries(coll));
    secondary_indexes(coll).count() + id
}

/// The `_id` index of a capped collection, if it has one.
pub fn id_index(coll: &CollectionInfo) -> Option<&Arc<IndexInfo>> {
    if !is_capped(coll) {
        return None;
    }
    coll.indexes.iter().find(|i| i.key.name == ID_INDEX)
}

/// mongod's refusal of a capped collection's writes in a multi-document transaction.
pub fn refuse_in_transaction(coll: &CollectionInfo) -> CommandResult<()> {
    if crate::timeseries::is_timeseries(coll) {
        return Err(CommandError::new(
            code::OPERATION_NOT_SUPPORTED_IN_TRANSACTION,
            format!(
                "Cannot write to time-series collection '{}' in a multi-document transaction.",
                coll.ns()
            ),
        ));
    }
    if is_capped(coll) {
        return Err(CommandError::new(
            code::OPERATION_NOT_SUPPORTED_IN_TRANSACTION,
            format!(
                "Collection '{}' is a capped collection. Writes in transactions are not allowed on capped collections.",
                coll.ns()
            ),
        ));
    }
    Ok(())
}

/// The key of insertion number `n`.
pub fn key_of_number(n: u64) -> DocKey {
    DocKey(n.to_be_bytes().to_vec())
}

/// The insertion number of a capped collection's key (0 for a key that is not one).
pub fn number_of_key(key: &DocKey) -> u64 {
    key.0
        .as_slice()
        .try_into()
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// What a capped collection holds, as of its last committed insert.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    bytes: u64,
    docs: u64,
}

#[derive(Default)]
struct Tally {
    /// `None` when a write other than an insert may have changed them: recounted when needed.
    counts: Option<Counts>,
    /// The next insertion number, when known.
    next: Option<u64>,
    /// No number below this is handed out again (survives a stale tally).
    next_floor: u64,
}

/// The capped collections' writer locks, one per collection (by UUID).
#[derive(Default)]
pub struct Registry {
    writers: Mutex<HashMap<bson::Uuid, Arc<tokio::sync::Mutex<Tally>>>>,
}

impl Registry {
    /// The writer of `coll`, waiting for the one before it; `None` if `coll` is not keyed by
    /// insertion.
    pub async fn writer(&self, coll: &CollectionInfo) -> Option<Writer> {
        let limits = match limits(coll) {
            Some(limits) => limits,
            None if crate::timeseries::is_timeseries(coll) => UNLIMITED,
            None => return None,
        };
        let uuid = coll.uuid()?;
        let lock = {
            let mut writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
            // Forget writers of dropped collections now and then, so the map stays bounded by
            // the capped collections that exist (plus those dropped since the last sweep).
            if writers.len() > 64 && !writers.contains_key(&uuid) {
                writers.retain(|_, w| Arc::strong_count(w) > 1);
            }
            writers.entry(uuid).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        Some(Writer {
            guard,
            limits,
            work: None,
            pending: true,
        })
    }
}

/// The one writer of a capped collection, for one statement. Dropped without [`Writer::settle`]
/// after its last change, it leaves the tally to be recounted.
pub struct Writer {
    guard: OwnedMutexGuard<Tally>,
    limits: Limits,
    /// The counts including this statement's uncommitted changes.
    work: Option<Counts>,
    /// Changes made since the last settle (or a statement that is not an insert).
    pending: bool,
}

impl Writer {
    /// The next insertion number's key. The first call after a stale tally finds the newest
    /// key (one step down the collection's key order).
    pub fn next_key(
        &mut self,
        view: &dyn ReadView,
        coll: &CollectionInfo,
    ) -> CommandResult<DocKey> {
        let next = match self.guard.next {
            Some(n) => n,
            None => newest_number(view, coll)?.map_or(1, |n| n + 1),
        }
        .max(self.guard.next_floor)
        .max(1);
        self.guard.next = Some(next + 1);
        self.guard.next_floor = next + 1;
        self.pending = true;
        Ok(key_of_number(next))
    }

    /// A document of `len` bytes is refused when it alone exceeds the cap (mongod's BadValue:
    /// it would have to evict itself).
    fn check_fits(&self, len: usize) -> CommandResult<()> {
        if len as u64 > self.limits.size {
            return Err(CommandError::bad_value(format!(
                "object to insert exceeds cappedMaxSize ({len} bytes; the collection holds {} bytes)",
                self.limits.size
            )));
        }
        Ok(())
    }

    /// The key for a document of `len` bytes about to be inserted: refused when it alone
    /// exceeds the cap; counts the collection first when the tally is stale (before the insert,
    /// so the count does not see it).
    pub fn reserve(
        &mut self,
        view: &dyn ReadView,
        coll: &CollectionInfo,
        len: usize,
    ) -> CommandResult<DocKey> {
        self.check_fits(len)?;
        self.counts(view, coll)?;
        self.next_key(view, coll)
    }

    /// Counts a document of `len` bytes inserted under a key from [`Writer::reserve`].
    pub fn added(&mut self, len: usize) {
        let counts = self.work.get_or_insert_with(Counts::default);
        counts.bytes += len as u64;
        counts.docs += 1;
        self.pending = true;
    }

    /// The counts with this statement's changes, counted from `view` when stale. `view` must
    /// see everything committed to the collection (it is read under this writer).
    fn counts(&mut self, view: &dyn ReadView, coll: &CollectionInfo) -> CommandResult<&mut Counts> {
        if self.work.is_none() {
            self.work = Some(match self.guard.counts {
                Some(c) => c,
                None => count(view, coll)?,
            });
        }
        Ok(self.work.get_or_insert_with(Counts::default))
    }

    /// Deletes the oldest documents in `txn` until the collection is within its limits.
    pub fn trim(&mut self, txn: &mut Txn, coll: &CollectionInfo) -> CommandResult<()> {
        let limits = self.limits;
        // Only inserts trim, and `reserve` counted before the first of them.
        let Some(counts) = self.work else {
            return Ok(());
        };
        let over = |c: &Counts| c.bytes > limits.size || limits.max.is_some_and(|m| c.docs > m);
        if !over(&counts) {
            return Ok(());
        }
        let mut left = counts;
        let mut oldest: Vec<(DocKey, u64)> = Vec::new();
        txn.scan(coll, None, |key, doc| {
            let len = doc.as_bytes().len() as u64;
            oldest.push((key.clone(), len));
            left.bytes = left.bytes.saturating_sub(len);
            left.docs = left.docs.saturating_sub(1);
            if over(&left) {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        })?;
        for (key, _) in &oldest {
            txn.delete(coll, key.clone())?;
        }
        self.work = Some(left);
        self.pending = true;
        Ok(())
    }

    /// The statement's changes so far are committed and visible: they become the tally.
    pub fn settle(&mut self) {
        if let Some(work) = self.work {
            self.guard.counts = Some(work);
        }
        self.pending = false;
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.pending {
            self.guard.counts = None;
            self.guard.next = None;
        }
    }
}

/// The newest insertion number in `coll`, if it holds any document.
fn newest_number(view: &dyn ReadView, coll: &CollectionInfo) -> CommandResult<Option<u64>> {
    let mut newest = None;
    let all = (Bound::Unbounded, Bound::Unbounded);
    view.scan_range(coll, &all, None, true, &mut |key, _| {
        newest = Some(number_of_key(key));
        ControlFlow::Break(())
    })?;
    Ok(newest)
}

/// Bytes and documents `coll` holds, by a scan.
fn count(view: &dyn ReadView, coll: &CollectionInfo) -> CommandResult<Counts> {
    let mut counts = Counts::default();
    view.scan(coll, None, &mut |_, doc: &StoredDoc| {
        counts.bytes += doc.as_bytes().len() as u64;
        counts.docs += 1;
        ControlFlow::Continue(())
    })?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_round_like_mongod() {
        let l = |size: i64| limits_of(&bson::doc! {"capped": true, "size": size}).map(|l| l.size);
        assert_eq!(l(1), Some(4096));
        assert_eq!(l(4096), Some(4096));
        assert_eq!(l(4097), Some(4352));
        assert_eq!(l(100_000), Some(100_096));
        assert_eq!(limits_of(&bson::doc! {"size": 10}), None);
    }

    #[test]
    fn create_options_are_checked() {
        let t = Bson::Boolean(true);
        assert_eq!(
            create_options(Some(&t), None, None).unwrap_err().code,
            code::INVALID_OPTIONS
        );
        assert_eq!(
            create_options(Some(&t), Some(&Bson::Int64(-1)), None)
                .unwrap_err()
                .code,
            code::BAD_VALUE
        );
        assert_eq!(
            create_options(Some(&t), Some(&Bson::Int64(1 << 51)), None)
                .unwrap_err()
                .code,
            code::BAD_VALUE
        );
        let big = Bson::Int64(1 << 31);
        assert_eq!(
            create_options(Some(&t), Some(&Bson::Int32(10)), Some(&big))
                .unwrap_err()
                .code,
            code::BAD_VALUE
        );
        let ok = create_options(Some(&t), Some(&Bson::Int32(10)), Some(&Bson::Int32(0))).unwrap();
        assert_eq!(ok, bson::doc! {"capped": true, "size": 10});
        let off = Bson::Boolean(false);
        assert!(
            create_options(Some(&off), Some(&Bson::Int32(10)), None)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn numbers_keep_key_order() {
        let keys: Vec<DocKey> = [1u64, 2, 255, 256, 1 << 40].map(key_of_number).to_vec();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert!(keys.iter().all(|k| key_of_number(number_of_key(k)) == *k));
    }
}
