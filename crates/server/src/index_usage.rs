//! How often each index served a query since it was created or the server started: what
//! `$indexStats` reports as `accesses`.
//!
//! Invariants:
//! - Counted once per command whose chosen plan walked the index (the plan `op_stats` noted),
//!   after the command, so the access paths do not pay for it. Counting an index already seen
//!   takes a read lock, string lookups and one atomic add: nothing is allocated per command.
//! - An entry belongs to one index *instance* (a `Weak` to its catalog entry): dropping an
//!   index and creating another of the same name starts again from zero, as in mongod.
//! - Bounded: entries of indexes that no longer exist are swept when the map outgrows
//!   [`MAX_ENTRIES`].
//! - Lock: one `RwLock`, a leaf, held only to find or insert an entry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::SystemTime;

use mangrove_storage::IndexInfo;

/// Entries kept before dead ones are swept.
const MAX_ENTRIES: usize = 10_000;

/// The name `$indexStats` gives the `_id` index.
const ID_INDEX: &str = "_id_";

struct Usage {
    /// The index instance counted; `None` for `_id_`, which has no catalog entry of its own
    /// (its counts outlive a drop of the collection).
    index: Option<Weak<IndexInfo>>,
    ops: AtomicU64,
    since: SystemTime,
}

/// Usage counters by database, collection and index name.
type Entries = HashMap<String, HashMap<String, HashMap<String, Arc<Usage>>>>;

pub(crate) struct IndexUsage {
    started: SystemTime,
    entries: RwLock<Entries>,
}

impl Default for IndexUsage {
    fn default() -> Self {
        IndexUsage {
            started: SystemTime::now(),
            entries: RwLock::new(HashMap::new()),
        }
    }
}

impl IndexUsage {
    /// Counts one use of `index` (`None`: the `_id` index) of collection `coll` of `db`.
    pub fn note(&self, (db, coll): (&str, &str), index: Option<&Arc<IndexInfo>>) {
        let name = index.map_or(ID_INDEX, |i| i.key.name.as_str());
        let seen = {
            let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
            lookup(&entries, (db, coll, name))
                .filter(|u| same_index(u, index))
                .cloned()
        };
        let usage = seen.unwrap_or_else(|| self.insert((db, coll, name), index));
        usage.ops.fetch_add(1, Ordering::Relaxed);
    }

    /// A fresh entry for an index not counted yet (or a new instance of its name).
    fn insert(
        &self,
        (db, coll, name): (&str, &str, &str),
        index: Option<&Arc<IndexInfo>>,
    ) -> Arc<Usage> {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if count(&entries) >= MAX_ENTRIES {
            sweep(&mut entries);
        }
        let slot = entries
            .entry(db.to_string())
            .or_default()
            .entry(coll.to_string())
            .or_default()
            .entry(name.to_string())
            .or_insert_with(|| fresh(index));
        // Another command may have inserted it meanwhile; a different instance starts over.
        if !same_index(slot, index) {
            *slot = fresh(index);
        }
        slot.clone()
    }

    /// The uses of `index` (`None`: the `_id` index) of `coll` in `db`, and since when they
    /// are counted (the server's start for an index not used since).
    pub fn of(
        &self,
        (db, coll): (&str, &str),
        index: Option<&Arc<IndexInfo>>,
    ) -> (u64, SystemTime) {
        let name = index.map_or(ID_INDEX, |i| i.key.name.as_str());
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        match lookup(&entries, (db, coll, name)) {
            Some(u) if same_index(u, index) => (u.ops.load(Ordering::Relaxed), u.since),
            _ => (0, self.started),
        }
    }
}

fn lookup<'e>(
    entries: &'e Entries,
    (db, coll, name): (&str, &str, &str),
) -> Option<&'e Arc<Usage>> {
    entries.get(db)?.get(coll)?.get(name)
}

fn count(entries: &Entries) -> usize {
    entries
        .values()
        .flat_map(HashMap::values)
        .map(HashMap::len)
        .sum()
}

/// Drops the entries of indexes that no longer exist, and the maps they leave empty.
fn sweep(entries: &mut Entries) {
    for colls in entries.values_mut() {
        for names in colls.values_mut() {
            names.retain(|_, u| u.index.as_ref().is_none_or(|w| w.strong_count() > 0));
        }
        colls.retain(|_, names| !names.is_empty());
    }
    entries.retain(|_, colls| !colls.is_empty());
}

/// Whether `usage` counts `index` (the same instance; `None` for `_id`).
fn same_index(usage: &Usage, index: Option<&Arc<IndexInfo>>) -> bool {
    match (&usage.index, index) {
        (None, None) => true,
        (Some(w), Some(i)) => std::ptr::eq(w.as_ptr(), Arc::as_ptr(i)),
        _ => false,
    }
}

fn fresh(index: Option<&Arc<IndexInfo>>) -> Arc<Usage> {
    Arc::new(Usage {
        index: index.map(Arc::downgrade),
        ops: AtomicU64::new(0),
        since: SystemTime::now(),
    })
}
