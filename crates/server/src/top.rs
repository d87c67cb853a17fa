//! Time spent per collection, by kind of operation, since the server started: what the `top`
//! command reports (mongod's `Top`).
//!
//! Invariants:
//! - Counted once per command that names a collection, after the command (`commands::run`),
//!   so the command itself pays nothing. Counting a collection already seen takes a read lock,
//!   two string lookups and four atomic adds: nothing is allocated per command.
//! - Bounded: at most [`MAX_NAMESPACES`] collections are tracked; commands on others are not
//!   counted (and `top` says so with `untrackedNamespaces: true`).
//! - Lock: one `RwLock`, a leaf, held only to find or insert an entry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bson::{Document, doc};

/// Collections tracked at most.
const MAX_NAMESPACES: usize = 10_000;

/// mongod's categories, in its order; `total` and one of the lock kinds are counted for
/// every command besides its own kind.
const KINDS: [&str; 9] = [
    "total",
    "readLock",
    "writeLock",
    "queries",
    "getmore",
    "insert",
    "update",
    "remove",
    "commands",
];
const TOTAL: usize = 0;
const READ_LOCK: usize = 1;
const WRITE_LOCK: usize = 2;
const QUERIES: usize = 3;
const GETMORE: usize = 4;
const INSERT: usize = 5;
const UPDATE: usize = 6;
const REMOVE: usize = 7;
const COMMANDS: usize = 8;

#[derive(Default)]
struct Counters {
    micros: [AtomicU64; KINDS.len()],
    count: [AtomicU64; KINDS.len()],
}

impl Counters {
    fn add(&self, kind: usize, micros: u64) {
        self.micros[kind].fetch_add(micros, Ordering::Relaxed);
        self.count[kind].fetch_add(1, Ordering::Relaxed);
    }
}

type Entries = HashMap<String, HashMap<String, Arc<Counters>>>;

#[derive(Default)]
pub(crate) struct Top {
    entries: RwLock<Entries>,
    untracked: AtomicBool,
}

/// The kind a command counts as, and whether it writes.
fn kind_of(command: &str) -> (usize, bool) {
    match command {
        "find" => (QUERIES, false),
        "getMore" => (GETMORE, false),
        "insert" => (INSERT, true),
        "update" => (UPDATE, true),
        "delete" => (REMOVE, true),
        "findAndModify" | "create" | "drop" | "createIndexes" | "dropIndexes" | "collMod"
        | "renameCollection" => (COMMANDS, true),
        _ => (COMMANDS, false),
    }
}

impl Top {
    /// Counts one `command` on `coll` of `db` that took `took`.
    pub fn note(&self, (db, coll): (&str, &str), command: &str, took: Duration) {
        let micros = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let seen = {
            let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
            entries.get(db).and_then(|c| c.get(coll)).cloned()
        };
        let Some(counters) = seen.or_else(|| self.insert(db, coll)) else {
            return;
        };
        let (kind, writes) = kind_of(command);
        counters.add(TOTAL, micros);
        counters.add(if writes { WRITE_LOCK } else { READ_LOCK }, micros);
        counters.add(kind, micros);
    }

    fn insert(&self, db: &str, coll: &str) -> Option<Arc<Counters>> {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let tracked: usize = entries.values().map(HashMap::len).sum();
        let known = entries.get(db).is_some_and(|c| c.contains_key(coll));
        if !known && tracked >= MAX_NAMESPACES {
            self.untracked.store(true, Ordering::Relaxed);
            return None;
        }
        let slot = entries
            .entry(db.to_string())
            .or_default()
            .entry(coll.to_string())
            .or_default();
        Some(slot.clone())
    }

    /// `top`'s reply: `totals` by namespace, each kind as `{time, count}` in microseconds.
    pub fn report(&self) -> Document {
        let mut totals = doc! { "note": "all times in microseconds" };
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<(&String, &String, &Arc<Counters>)> = entries
            .iter()
            .flat_map(|(db, colls)| colls.iter().map(move |(c, n)| (db, c, n)))
            .collect();
        names.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for (db, coll, counters) in names {
            let mut entry = Document::new();
            for (i, kind) in KINDS.iter().enumerate() {
                entry.insert(
                    *kind,
                    doc! {
                        "time": counters.micros[i].load(Ordering::Relaxed) as i64,
                        "count": counters.count[i].load(Ordering::Relaxed) as i64,
                    },
                );
            }
            totals.insert(format!("{db}.{coll}"), entry);
        }
        let mut reply = doc! { "totals": totals };
        if self.untracked.load(Ordering::Relaxed) {
            reply.insert("untrackedNamespaces", true);
        }
        reply.insert("ok", 1.0);
        reply
    }

    /// Forgets a dropped collection (`drop`, `dropDatabase` with `coll: None`).
    pub fn forget(&self, db: &str, coll: Option<&str>) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        match coll {
            Some(c) => {
                if let Some(colls) = entries.get_mut(db) {
                    colls.remove(c);
                }
            }
            None => {
                entries.remove(db);
            }
        }
    }
}
