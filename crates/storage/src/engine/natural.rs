//! Natural order: the order in which a collection's documents were inserted, which an unsorted
//! `find` returns, as in mongod (where it is the order of record ids). Documents stay keyed by
//! `_id`; natural order is two derived keyspaces per collection, whose ids come from the
//! collection's ([`natural_ids`]):
//!
//! ```text
//! positions  position (u64 BE)  -> { r: document key }   (shaped as an index entry)
//! owners     document key       -> { n: position }
//! ```
//!
//! Nothing about positions is in the log: a commit's positions are handed out when it is
//! installed, in commit order and, within the commit, in the order of its log ops, so replaying
//! the log hands out the same ones.
//!
//! Invariants:
//! - a document visible at T has exactly one position entry and one owner entry visible at T,
//!   both written by the commit that inserted it and removed by the commit that deleted it;
//!   updates keep the position (also a delete and re-insert within one transaction, which the
//!   log records as an update);
//! - positions of a collection increase with commit order and are never handed out twice while
//!   the engine runs (`State::natural` starts past every position in memory or in the base
//!   store, read once at open, so install never reads the base store);
//! - a transaction's own inserts have positions `OWN_PREFIX ++ statement order`, after every
//!   committed position (those stay below `MAX_POSITION`), seen only by that transaction;
//! - while a collection's *disorder marker* is not visible at T, its natural order at T is its
//!   `_id` order, and a scan at T walks the documents themselves (no lookup per document), with
//!   document keys as positions. The marker is written, once and for good (like the multikey
//!   marker), by the first commit that inserts a key below the newest key positioned since the
//!   engine opened (or, at open, the key at the last position). That is never later than the
//!   first commit that really breaks `_id` order, live or in replay, so the marker is never
//!   missing where it is needed (it may come earlier than needed: scans are then only slower).
//!
//! Lock order: installs and replay run under `Inner::state` (write); scans hold its read lock
//! and call into the base store (a leaf). See the engine's lock order (`engine.rs`).

use std::ops::{Bound, ControlFlow};

use bson::RawDocumentBuf;
use bson::raw::cstr;

use super::catalog::{entry_target, entry_value, natural_ids};
use super::versions::{NaturalTail, State, VersionChain, set_recovered};
use super::{CollId, DocKey, StoredDoc};
use crate::base::BaseStore;
use crate::{StorageError, Timestamp};

/// Committed positions stay below this, so their first byte is below `OWN_PREFIX`.
const MAX_POSITION: u64 = 1 << 56;
/// The first byte of a transaction's own, uncommitted positions.
pub(super) const OWN_PREFIX: u8 = 0xFF;
/// The disorder marker's key in the positions keyspace: after every position. Its value has no
/// `r`, so entry scans skip it.
const DISORDER_MARKER: &[u8] = &[0xFF];
/// Position entries read per step of a scan, whose documents are then looked up together.
pub(super) const SCAN_CHUNK: usize = 256;
/// Positions checked per scan by `verify`.
pub(super) const VERIFY_BATCH: usize = 1_000;
/// Documents given positions per redb transaction when a format-2 store is upgraded.
const UPGRADE_BATCH: usize = 8192;

fn position_key(n: u64) -> DocKey {
    assert!(n < MAX_POSITION, "natural positions stay below 2^56");
    DocKey(n.to_be_bytes().to_vec())
}

pub(super) fn position_of(key: &DocKey) -> Option<u64> {
    key.0.as_slice().try_into().ok().map(u64::from_be_bytes)
}

fn owner_value(n: u64) -> StoredDoc {
    let mut d = RawDocumentBuf::new();
    d.append(cstr!("n"), n as i64);
    StoredDoc::new(d)
}

pub(super) fn owner_position(value: &StoredDoc) -> Option<u64> {
    value.get_i64("n").ok().map(|n| n as u64)
}

/// What a commit changes in natural order, in the order of its log ops.
pub(super) enum NaturalChange {
    /// A document came into being: it takes the next position.
    Insert { coll: CollId, key: DocKey },
    /// A document went away from `position`.
    Delete {
        coll: CollId,
        key: DocKey,
        position: u64,
    },
}

/// Installs a commit's natural-order changes at `ts`, then prunes what no reader at or after
/// `oldest` can see (as `commit.rs` does for the commit's own writes).
pub(super) fn install(
    state: &mut State,
    ts: Timestamp,
    changes: &[NaturalChange],
    oldest: Timestamp,
) {
    for change in changes {
        match change {
            NaturalChange::Insert { coll, key } => insert(state, ts, *coll, key, oldest),
            NaturalChange::Delete {
                coll,
                key,
                position,
            } => delete(state, ts, *coll, key, *position, oldest),
        }
    }
}

fn insert(state: &mut State, ts: Timestamp, coll: CollId, key: &DocKey, oldest: Timestamp) {
    let tail = state.natural.entry(coll).or_default();
    let n = tail.next;
    tail.next += 1;
    let disorders = !tail.disordered && tail.last_key.as_ref().is_some_and(|last| key < last);
    tail.disordered |= disorders;
    if tail.last_key.as_ref().is_none_or(|last| key > last) {
        tail.last_key = Some(key.clone());
    }
    let [positions, owners] = natural_ids(coll);
    if disorders {
        put(
            state,
            positions,
            disorder_marker(),
            ts,
            Some(marker_value()),
            oldest,
        );
    }
    put(
        state,
        positions,
        position_key(n),
        ts,
        Some(entry_value(key)),
        oldest,
    );
    put(state, owners, key.clone(), ts, Some(owner_value(n)), oldest);
}

pub(super) fn disorder_marker() -> DocKey {
    DocKey(DISORDER_MARKER.to_vec())
}

fn marker_value() -> StoredDoc {
    let mut d = RawDocumentBuf::new();
    d.append(cstr!("disordered"), true);
    StoredDoc::new(d)
}

fn delete(
    state: &mut State,
    ts: Timestamp,
    coll: CollId,
    key: &DocKey,
    position: u64,
    oldest: Timestamp,
) {
    let [positions, owners] = natural_ids(coll);
    put(state, positions, position_key(position), ts, None, oldest);
    put(state, owners, key.clone(), ts, None, oldest);
}

/// Sets one derived version. No transaction holds an intent on derived keys: the document's
/// own intent already kept other writers away.
fn put(
    state: &mut State,
    id: CollId,
    key: DocKey,
    ts: Timestamp,
    value: Option<StoredDoc>,
    oldest: Timestamp,
) {
    let checkpoint = state.checkpoint_ts;
    let chains = state.collections.entry(id).or_default();
    let chain = chains.entry(key.clone()).or_insert_with(VersionChain::new);
    set_recovered(chain, ts, value);
    chain.prune(oldest, checkpoint);
    if chain.is_empty() {
        chains.remove(&key);
    }
}

/// Replays an insert of `key` into `coll` (recovery: the same positions as live).
pub(super) fn replay_insert(state: &mut State, ts: Timestamp, coll: CollId, key: &DocKey) {
    insert(state, ts, coll, key, ts);
}

/// Replays a delete: the position comes from the newest owner entry, in memory or in the base
/// store. A delete of a document that had none (inserted and deleted by one transaction) changes
/// nothing, as live.
pub(super) fn replay_delete(
    state: &mut State,
    ts: Timestamp,
    coll: CollId,
    key: &DocKey,
) -> Result<(), StorageError> {
    let [_, owners] = natural_ids(coll);
    let newest = match state.collections.get(&owners).and_then(|c| c.get(key)) {
        Some(chain) => chain.versions.last().and_then(|(_, v)| v.clone()),
        None => match &state.base {
            Some(base) => base.get(owners, key)?.map(|(_, v)| v),
            None => None,
        },
    };
    if let Some(position) = newest.as_ref().and_then(owner_position) {
        delete(state, ts, coll, key, position, ts);
    }
    Ok(())
}

/// The keyspace ids of the collections the catalog holds now (at open, before replay).
fn collection_ids(state: &State) -> Vec<CollId> {
    state
        .catalog
        .values()
        .filter_map(|chain| chain.versions.last()?.1.as_ref().map(|c| c.id))
        .collect()
}

/// Reads where each collection's natural order ends from the base store, once at open, so
/// that installs never read it.
pub(super) fn load_positions(state: &mut State) -> Result<(), StorageError> {
    let Some(base) = state.base.clone() else {
        return Ok(());
    };
    let ids = collection_ids(state);
    let marker = disorder_marker();
    for coll in ids {
        let [positions, _] = natural_ids(coll);
        let mut tail = NaturalTail::default();
        base.scan(
            positions,
            Bound::Unbounded,
            Bound::Excluded(&marker),
            true,
            |k, _, v| {
                tail.next = position_of(&k).map_or(0, |n| n + 1);
                tail.last_key = entry_target(&v);
                ControlFlow::Break(())
            },
        )?;
        tail.disordered = base.get(positions, &marker)?.is_some();
        if tail.next > 0 || tail.disordered {
            state.natural.insert(coll, tail);
        }
    }
    Ok(())
}

/// Gives every document of a store written before natural order existed (format 2) its
/// position, in `_id` order, in batches; then marks the store format 3. A crash midway leaves
/// it at format 2, and the next open does it again from the start (the same positions).
pub(super) fn upgrade_base(base: &BaseStore, state: &State) -> Result<(), StorageError> {
    let ids = collection_ids(state);
    let mut documents = 0u64;
    for coll in ids {
        documents += upgrade_collection(base, coll)?;
    }
    base.finish_natural_order()?;
    tracing::info!(
        documents,
        "base store upgraded to format 3: documents keep their _id order as natural order"
    );
    Ok(())
}

fn upgrade_collection(base: &BaseStore, coll: CollId) -> Result<u64, StorageError> {
    let [positions, owners] = natural_ids(coll);
    let mut n = 0u64;
    let mut after: Option<DocKey> = None;
    loop {
        let mut batch = Vec::with_capacity(2 * UPGRADE_BATCH);
        let lower = after.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
        base.scan(coll, lower, Bound::Unbounded, false, |key, ts, _| {
            batch.push((positions, position_key(n), ts, entry_value(&key)));
            batch.push((owners, key, ts, owner_value(n)));
            n += 1;
            if batch.len() >= 2 * UPGRADE_BATCH {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        let Some((_, last, _, _)) = batch.last() else {
            return Ok(n);
        };
        after = Some(last.clone());
        base.write_entries(&batch)?;
        if batch.len() < 2 * UPGRADE_BATCH {
            return Ok(n);
        }
    }
}
