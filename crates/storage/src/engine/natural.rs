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
//!   the engine runs (`State::natural_next` starts past every position in memory or in the
//!   base store, read once at open, so install never reads the base store);
//! - a transaction's own inserts have positions `OWN_PREFIX ++ statement order`, after every
//!   committed position (those stay below `MAX_POSITION`), seen only by that transaction;
//! - while a collection's *disorder marker* is not visible at T, its natural order at T is its
//!   `_id` order, and a scan at T walks the documents themselves (no lookup per document), with
//!   document keys as positions. The marker is written, once and for good (like the multikey
//!   marker), by the first commit that inserts a key below the newest positioned one; replay
//!   writes it at the same commit or earlier, never later, so it is never missing where needed.
//!
//! Lock order: installs and replay run under `Inner::state` (write); scans hold its read lock
//! and call into the base store (a leaf). See the engine's lock order (`engine.rs`).

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};

use bson::RawDocumentBuf;
use bson::raw::cstr;

use super::catalog::{CollectionInfo, collect_entries, entry_target, entry_value};
use super::snapshot::Snapshot;
use super::txn::Txn;
use super::verify::IndexVerifyReport;
use super::versions::{DocWrite, State, VersionChain, set_recovered};
use super::{CollId, DocKey, StoredDoc};
use crate::base::BaseStore;
use crate::{StorageError, Timestamp};

const POSITIONS_BIT: u64 = 1 << 62;
const OWNERS_BIT: u64 = 1 << 61;
/// Committed positions stay below this, so their first byte is below `OWN_PREFIX`.
const MAX_POSITION: u64 = 1 << 56;
/// The first byte of a transaction's own, uncommitted positions.
const OWN_PREFIX: u8 = 0xFF;
/// The disorder marker's key in the positions keyspace: after every position. Its value has no
/// `r`, so entry scans skip it.
const DISORDER_MARKER: &[u8] = &[0xFF];
/// Position entries read per step of a scan, whose documents are then looked up together.
const SCAN_CHUNK: usize = 256;
/// Positions checked per scan by `verify`.
const VERIFY_BATCH: usize = 1_000;
/// Documents given positions per redb transaction when a format-2 store is upgraded.
const UPGRADE_BATCH: usize = 8192;

/// The keyspaces of a collection's natural order: positions, then owners.
pub(super) fn natural_ids(coll: CollId) -> [CollId; 2] {
    debug_assert!(
        coll < OWNERS_BIT,
        "keyspace ids are handed out from 0 upward"
    );
    [coll | POSITIONS_BIT, coll | OWNERS_BIT]
}

fn position_key(n: u64) -> DocKey {
    assert!(n < MAX_POSITION, "natural positions stay below 2^56");
    DocKey(n.to_be_bytes().to_vec())
}

fn position_of(key: &DocKey) -> Option<u64> {
    key.0.as_slice().try_into().ok().map(u64::from_be_bytes)
}

fn owner_value(n: u64) -> StoredDoc {
    let mut d = RawDocumentBuf::new();
    d.append(cstr!("n"), n as i64);
    StoredDoc::new(d)
}

fn owner_position(value: &StoredDoc) -> Option<u64> {
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

/// Where a collection's natural order ends: the next position, the key of the newest
/// positioned document (never smaller than any live document's key while the collection is in
/// `_id` order), and whether the disorder marker is written.
#[derive(Default)]
pub(super) struct NaturalTail {
    next: u64,
    last_key: Option<DocKey>,
    disordered: bool,
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

fn disorder_marker() -> DocKey {
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

/// Reads where each collection's natural order ends from the base store, once at open, so
/// that installs never read it.
pub(super) fn load_positions(state: &mut State) -> Result<(), StorageError> {
    let Some(base) = state.base.clone() else {
        return Ok(());
    };
    let ids: Vec<CollId> = state
        .catalog
        .values()
        .filter_map(|chain| chain.versions.last()?.1.as_ref().map(|c| c.id))
        .collect();
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
    let ids: Vec<CollId> = state
        .catalog
        .values()
        .filter_map(|chain| chain.versions.last()?.1.as_ref().map(|c| c.id))
        .collect();
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

impl Snapshot {
    /// Visits the documents of `coll` in natural order (reversed if `reverse`), past the
    /// position `resume`, until `visit` breaks: `visit` gets each document's position (what a
    /// later scan resumes after), its key and the document. The engine's lock is held
    /// meanwhile, so `visit` must not call back into the engine.
    pub fn scan_natural(
        &self,
        coll: &CollectionInfo,
        resume: Option<&DocKey>,
        reverse: bool,
        mut visit: impl FnMut(&DocKey, &DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        let [positions, _] = natural_ids(coll.id);
        let state = self.engine.read_state();
        if !self.disordered_in_state(&state, positions)? {
            // Natural order is `_id` order here: walk the documents themselves.
            let (lower, upper) = past(resume, reverse);
            return self.scan_in_state(&state, coll.id, lower, upper, reverse, |key, doc| {
                visit(key, key, doc)
            });
        }
        let mut resume = resume.cloned();
        loop {
            let (lower, upper) = past(resume.as_ref(), reverse);
            let mut entries = Vec::with_capacity(SCAN_CHUNK);
            self.scan_in_state(
                &state,
                positions,
                lower,
                upper,
                reverse,
                collect_entries(&mut entries, SCAN_CHUNK),
            )?;
            let docs = self.docs_in_state(&state, coll.id, &entries)?;
            for ((position, key), doc) in entries.iter().zip(docs) {
                debug_assert!(doc.is_some(), "a visible position has a visible document");
                if let Some(doc) = doc
                    && visit(position, key, &doc).is_break()
                {
                    return Ok(());
                }
            }
            if entries.len() < SCAN_CHUNK {
                return Ok(());
            }
            resume = entries.pop().map(|(position, _)| position);
        }
    }

    /// Whether this snapshot sees the collection's disorder marker (`positions` is its
    /// positions keyspace).
    fn disordered_in_state(&self, state: &State, positions: CollId) -> Result<bool, StorageError> {
        Ok(self
            .get_in_state(state, positions, &disorder_marker())?
            .is_some())
    }

    /// The documents under the keys of `entries` (`(position, key)` pairs) as this snapshot
    /// sees them: chains in memory, the rest from the base store through one read.
    fn docs_in_state(
        &self,
        state: &State,
        id: CollId,
        entries: &[(DocKey, DocKey)],
    ) -> Result<Vec<Option<StoredDoc>>, StorageError> {
        let chains = state.collections.get(&id);
        let mut out = Vec::with_capacity(entries.len());
        let mut from_base = Vec::new();
        for (i, (_, key)) in entries.iter().enumerate() {
            match chains.and_then(|c| c.get(key)) {
                Some(chain) => out.push(chain.visible_at(self.read_ts).cloned()),
                None => {
                    out.push(None);
                    from_base.push(i);
                }
            }
        }
        if let Some(base) = &state.base
            && !from_base.is_empty()
        {
            let found = base.get_many(id, from_base.iter().map(|&i| &entries[i].1))?;
            for (i, found) in from_base.into_iter().zip(found) {
                out[i] = found.filter(|(ts, _)| *ts <= self.read_ts).map(|(_, d)| d);
            }
        }
        Ok(out)
    }
}

impl Snapshot {
    /// `verify`'s check of a collection's natural order: every position points at a document
    /// whose owner entry names that position, and there are as many positions as documents.
    /// Runs in batches, reading between them (the scans hold the engine lock).
    pub(super) fn check_natural(
        &self,
        coll: &CollectionInfo,
        report: &mut IndexVerifyReport,
    ) -> Result<(), StorageError> {
        let [positions, owners] = natural_ids(coll.id);
        let ns = coll.ns();
        let mut resume: Option<DocKey> = None;
        let mut seen = 0u64;
        let id_ordered = self.get_in(positions, &disorder_marker())?.is_none();
        let mut previous: Option<DocKey> = None;
        loop {
            let mut entries = Vec::with_capacity(VERIFY_BATCH);
            let lower = resume.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
            self.scan_in(
                positions,
                lower,
                Bound::Unbounded,
                false,
                collect_entries(&mut entries, VERIFY_BATCH),
            )?;
            for (position, key) in &entries {
                seen += 1;
                if id_ordered && previous.as_ref().is_some_and(|p| p >= key) {
                    report.problems.push(format!(
                        "{ns}: natural position {:?} is out of _id order without the disorder \
                         marker",
                        position_of(position)
                    ));
                }
                previous = Some(key.clone());
                let owner = self.get_in(owners, key)?;
                let named = owner.as_ref().and_then(owner_position);
                if named.is_none() || named != position_of(position) {
                    report.problems.push(format!(
                        "{ns}: natural position {:?} points at a document whose owner entry \
                         names {named:?}",
                        position_of(position)
                    ));
                } else if self.get_in(coll.id, key)?.is_none() {
                    report.problems.push(format!(
                        "{ns}: natural position {named:?} points at a missing document"
                    ));
                }
            }
            if entries.len() < VERIFY_BATCH {
                break;
            }
            resume = entries.pop().map(|(position, _)| position);
        }
        report.entries += seen;
        let documents = self.count(coll)?;
        if documents != seen {
            report.problems.push(format!(
                "{ns}: {documents} documents but {seen} natural positions"
            ));
        }
        Ok(())
    }
}

/// The bounds of a scan past `resume`, either way.
fn past(resume: Option<&DocKey>, reverse: bool) -> (Bound<&DocKey>, Bound<&DocKey>) {
    match (resume, reverse) {
        (None, _) => (Bound::Unbounded, Bound::Unbounded),
        (Some(r), false) => (Bound::Excluded(r), Bound::Unbounded),
        (Some(r), true) => (Bound::Unbounded, Bound::Excluded(r)),
    }
}

impl Txn {
    /// Like [`Snapshot::scan_natural`], with this transaction's own writes: its updates and
    /// deletes where the documents are, its inserts after every committed document, in
    /// statement order.
    pub fn scan_natural(
        &self,
        coll: &CollectionInfo,
        resume: Option<&DocKey>,
        reverse: bool,
        mut visit: impl FnMut(&DocKey, &DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        let mut own = self.own_inserts(coll.id);
        own.retain(|(position, _, _)| match (resume, reverse) {
            (None, _) => true,
            (Some(r), false) => position > r,
            (Some(r), true) => position < r,
        });
        if reverse {
            for (position, key, doc) in own.iter().rev() {
                if visit(position, key, doc).is_break() {
                    return Ok(());
                }
            }
        }
        let mut stopped = false;
        self.snapshot
            .scan_natural(coll, resume, reverse, |position, key, doc| {
                let flow = match self.docs.get(&(coll.id, key.clone())) {
                    Some(write) => match write.doc() {
                        Some(own) => visit(position, key, own),
                        None => ControlFlow::Continue(()),
                    },
                    None => visit(position, key, doc),
                };
                stopped = flow.is_break();
                flow
            })?;
        if !reverse && !stopped {
            for (position, key, doc) in &own {
                if visit(position, key, doc).is_break() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// This transaction's inserts into `coll` with their provisional positions, in statement
    /// order.
    fn own_inserts(&self, coll: CollId) -> Vec<(DocKey, &DocKey, &StoredDoc)> {
        let start = (coll, DocKey(Vec::new()));
        let mut own: Vec<(DocKey, &DocKey, &StoredDoc)> = self
            .docs
            .range(start..)
            .take_while(|((id, _), _)| *id == coll)
            .filter_map(|(k, write)| match write {
                DocWrite::Insert(doc) => {
                    let seq = self.origins.get(k).map_or(u64::MAX, |o| o.seq as u64);
                    let mut position = vec![OWN_PREFIX];
                    position.extend_from_slice(&seq.to_be_bytes());
                    Some((DocKey(position), &k.1, doc))
                }
                _ => None,
            })
            .collect();
        own.sort_by(|a, b| a.0.cmp(&b.0));
        own
    }

    /// The commit's natural-order changes, in the order of its log ops (see `doc_ops`): an
    /// insert for each document that did not exist before, a delete (with the position the
    /// snapshot gives it) for each that did and is gone. Runs before the snapshot is released.
    pub(super) fn natural_changes(&self) -> Result<Vec<NaturalChange>, StorageError> {
        let mut changes: BTreeMap<usize, NaturalChange> = BTreeMap::new();
        for (k, write) in &self.docs {
            let (coll, key) = k;
            let origin = self.origins.get(k);
            debug_assert!(origin.is_some(), "every written key has an origin");
            let Some(origin) = origin else { continue };
            debug_assert_eq!(
                matches!(write, DocWrite::Insert(_)),
                origin.pre.is_none() && write.doc().is_some(),
                "an insert is logged exactly for a document that did not exist before"
            );
            let change = match write {
                DocWrite::Insert(_) => NaturalChange::Insert {
                    coll: *coll,
                    key: key.clone(),
                },
                DocWrite::Delete(_) if origin.pre.is_some() => {
                    let [_, owners] = natural_ids(*coll);
                    let owner = self.snapshot.get_in(owners, key)?;
                    let position = owner.as_ref().and_then(owner_position);
                    debug_assert!(position.is_some(), "a visible document has a position");
                    let Some(position) = position else { continue };
                    NaturalChange::Delete {
                        coll: *coll,
                        key: key.clone(),
                        position,
                    }
                }
                _ => continue,
            };
            changes.insert(origin.seq, change);
        }
        Ok(changes.into_values().collect())
    }
}
