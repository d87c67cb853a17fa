//! Natural order, read: scans in natural order for snapshots and transactions, the positions a
//! commit changes (computed before it is queued), and `verify`'s check. The keyspaces, positions
//! and their invariants are in `natural.rs`.
//!
//! Lock order: scans hold `Inner::state` (read) and call into the base store (a leaf); see the
//! engine's lock order (`engine.rs`).

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};

use super::catalog::{CollectionInfo, collect_entries, natural_ids};
use super::natural::{
    NaturalChange, OWN_PREFIX, SCAN_CHUNK, VERIFY_BATCH, disorder_marker, owner_position,
    position_of,
};
use super::snapshot::Snapshot;
use super::txn::Txn;
use super::verify::IndexVerifyReport;
use super::versions::{DocWrite, State};
use super::{CollId, DocKey, StoredDoc};
use crate::StorageError;
use crate::base::Lookups;

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
        let mut lookups = Lookups::default();
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
            let docs = self.docs_in_state(&state, coll.id, &entries, &mut lookups)?;
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
        lookups: &mut Lookups,
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
            let found = base.get_many(id, from_base.iter().map(|&i| &entries[i].1), lookups)?;
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
