//! How often each index served a query since it was created or the server started: what
//! `$indexStats` reports as `accesses`.
//!
//! Invariants:
//! - Counted once per command whose chosen plan walked the index (the plan `op_stats` noted),
//!   after the command, so the access paths do not pay for it.
//! - An entry belongs to one index *instance* (a `Weak` to its catalog entry): dropping an
//!   index and creating another of the same name starts again from zero, as in mongod.
//! - Bounded: entries of indexes that no longer exist are swept when the map outgrows
//!   [`MAX_ENTRIES`].
//! - Lock: one mutex, a leaf, held only to find or insert an entry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use mangrove_storage::IndexInfo;

/// Entries kept before dead ones are swept.
const MAX_ENTRIES: usize = 10_000;

struct Usage {
    /// The index instance counted; `None` for `_id_`, which has no catalog entry of its own
    /// (its counts outlive a drop of the collection).
    index: Option<Weak<IndexInfo>>,
    ops: AtomicU64,
    since: SystemTime,
}

/// Usage counters per `(namespace, index name)`.
pub(crate) struct IndexUsage {
    started: SystemTime,
    entries: Mutex<HashMap<(String, String), Arc<Usage>>>,
}

impl Default for IndexUsage {
    fn default() -> Self {
        IndexUsage {
            started: SystemTime::now(),
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl IndexUsage {
    /// Counts one use of `index` of `ns`.
    pub fn note(&self, ns: &str, index: &Arc<IndexInfo>) {
        let usage = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if entries.len() >= MAX_ENTRIES {
                entries.retain(|_, u| u.index.as_ref().is_none_or(|w| w.strong_count() > 0));
            }
            let key = (ns.to_string(), index.key.name.clone());
            let entry = entries.entry(key).or_insert_with(|| fresh(Some(index)));
            if !same_index(entry, index) {
                *entry = fresh(Some(index));
            }
            entry.clone()
        };
        usage.ops.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one use of `ns`'s `_id` index (a point lookup or a walk of the `_id` order).
    pub fn note_id(&self, ns: &str) {
        let usage = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let key = (ns.to_string(), ID_INDEX.to_string());
            entries.entry(key).or_insert_with(|| fresh(None)).clone()
        };
        usage.ops.fetch_add(1, Ordering::Relaxed);
    }

    /// [`IndexUsage::of`] for the `_id` index.
    pub fn of_id(&self, ns: &str) -> (u64, SystemTime) {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(&(ns.to_string(), ID_INDEX.to_string())) {
            Some(u) => (u.ops.load(Ordering::Relaxed), u.since),
            None => (0, self.started),
        }
    }

    /// `index`'s uses and since when they are counted (the server's start for an index not
    /// used since).
    pub fn of(&self, ns: &str, index: &Arc<IndexInfo>) -> (u64, SystemTime) {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(&(ns.to_string(), index.key.name.clone())) {
            Some(u) if same_index(u, index) => (u.ops.load(Ordering::Relaxed), u.since),
            _ => (0, self.started),
        }
    }
}

const ID_INDEX: &str = "_id_";

fn same_index(usage: &Usage, index: &Arc<IndexInfo>) -> bool {
    usage
        .index
        .as_ref()
        .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(index)))
}

fn fresh(index: Option<&Arc<IndexInfo>>) -> Arc<Usage> {
    Arc::new(Usage {
        index: index.map(Arc::downgrade),
        ops: AtomicU64::new(0),
        since: SystemTime::now(),
    })
}
