//! Replay: applying one logged transaction to the state during recovery. Index entries and
//! natural positions are not in the log; they are derived again from the documents, exactly as
//! the live commit derived them.
//!
//! Invariants:
//! - records replay in log order, which is timestamp order, so chains grow as they did live;
//! - one record may write an index entry or a catalog entry twice: the last write wins, as it
//!   did live ([`set_recovered`]);
//! - nothing reads old versions during recovery, so each write prunes its chain at once.
//!
//! Lock order: runs before the engine starts, on a `State` no other thread can see.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};
use std::sync::Arc;

use bson::Document;

use super::catalog::{
    CollectionInfo, IndexInfo, compile_index, entry_value, multikey_marker, multikey_value,
};
use super::natural;
use super::ranges::merge_overlay;
use super::versions::{State, VersionChain, set_recovered};
use super::{CollId, DocKey, StoredDoc};
use mangrove_bson::PartialFilters;

use crate::Timestamp;
use crate::txlog::LogOp;

/// Applies one logged transaction to the state during recovery. Index entries are not in the
/// log: they are derived again from the documents, exactly as the live commit derived them.
pub(super) fn replay(
    state: &mut State,
    ts: Timestamp,
    ops: &[LogOp],
    partial: &PartialFilters,
) -> Result<(), String> {
    for op in ops {
        debug_assert!(!op.ns().is_empty(), "a logged op names its namespace");
        match op {
            LogOp::CreateCollection { ns, options } => {
                replay_create_collection(state, ts, ns, options);
            }
            LogOp::DropCollection { ns } => replay_drop_collection(state, ts, ns)?,
            LogOp::CreateIndex { ns, spec } => {
                replay_create_index(state, ts, ns, spec, partial)?;
            }
            LogOp::DropIndex { ns, name } => replay_drop_index(state, ts, ns, name)?,
            LogOp::SetCollectionOptions { ns, options } => {
                replay_set_options(state, ts, ns, options)?;
            }
            LogOp::Insert { ns, key, doc } => {
                let key = DocKey(key.clone());
                let coll = replay_doc(state, ns, ts, key.clone(), Some(doc))?;
                natural::replay_insert(state, ts, coll, &key);
            }
            LogOp::Update { ns, key, doc, .. } => {
                replay_doc(state, ns, ts, DocKey(key.clone()), Some(doc))?;
            }
            LogOp::Delete { ns, key, .. } => {
                let key = DocKey(key.clone());
                let coll = replay_doc(state, ns, ts, key.clone(), None)?;
                natural::replay_delete(state, ts, coll, &key).map_err(|e| e.to_string())?;
            }
            // An annotation describes the record's other ops; it changes nothing.
            LogOp::Command { .. } => {}
        }
    }
    Ok(())
}

fn replay_create_collection(state: &mut State, ts: Timestamp, ns: &str, options: &Document) {
    // Shared ("if absent") creations by concurrent transactions each log the
    // create; only the first made it. An explicit create of an existing
    // collection is refused before it reaches the log, so this is the only case.
    if state
        .catalog
        .get(ns)
        .is_some_and(|c| matches!(c.versions.last(), Some((_, Some(_)))))
    {
        return;
    }
    let info = state.new_collection(ns, options.clone());
    set_recovered(
        state
            .catalog
            .entry(ns.to_string())
            .or_insert_with(VersionChain::new),
        ts,
        Some(info),
    );
}

fn replay_drop_collection(state: &mut State, ts: Timestamp, ns: &str) -> Result<(), String> {
    let checkpoint = state.checkpoint_ts;
    let chain = state
        .catalog
        .get_mut(ns)
        .ok_or_else(|| format!("drop of unknown collection {ns}"))?;
    let old = chain.visible_at(ts).cloned();
    chain.install_recovered(ts, None);
    // Nothing reads old versions during recovery: keep only the tombstone.
    chain.prune(ts, checkpoint);
    if let Some(old) = old {
        for id in old.keyspaces() {
            state.collections.remove(&id);
            state.base_drops.push((ts, id));
        }
    }
    Ok(())
}

fn replay_create_index(
    state: &mut State,
    ts: Timestamp,
    ns: &str,
    spec: &Document,
    partial: &PartialFilters,
) -> Result<(), String> {
    let info = current_info(state, ns, ts)?;
    let id = state.new_keyspace();
    let index = compile_index(spec.clone(), id, partial).map_err(|e| e.to_string())?;
    let mut entries = BTreeMap::new();
    for (key, doc) in latest_docs(state, info.id)? {
        let (keys, multikey) = index
            .key
            .keys_and_multikey(&doc)
            .map_err(|e| e.to_string())?;
        for k in keys {
            entries.insert(index.entry_key(&k, &key), entry_value(&key));
        }
        if multikey {
            entries.insert(multikey_marker(), multikey_value());
        }
    }
    let keyspace = state.collections.get_mut(&id).expect("inserted above");
    for (entry, value) in entries {
        let mut chain = VersionChain::new();
        chain.install_recovered(ts, Some(value));
        keyspace.insert(entry, chain);
    }
    let mut new_info = (*info).clone();
    new_info.indexes.push(index);
    let chain = state.catalog.get_mut(ns).expect("current_info found it");
    set_recovered(chain, ts, Some(Arc::new(new_info)));
    Ok(())
}

fn replay_set_options(
    state: &mut State,
    ts: Timestamp,
    ns: &str,
    options: &Document,
) -> Result<(), String> {
    let info = current_info(state, ns, ts)?;
    let mut new_info = (*info).clone();
    new_info.options = Arc::new(options.clone());
    let chain = state.catalog.get_mut(ns).expect("current_info found it");
    set_recovered(chain, ts, Some(Arc::new(new_info)));
    Ok(())
}

fn replay_drop_index(state: &mut State, ts: Timestamp, ns: &str, name: &str) -> Result<(), String> {
    let info = current_info(state, ns, ts)?;
    let mut new_info = (*info).clone();
    let pos = new_info
        .indexes
        .iter()
        .position(|i| i.key.name == *name)
        .ok_or_else(|| format!("drop of unknown index {name} on {ns}"))?;
    let removed = new_info.indexes.remove(pos);
    state.collections.remove(&removed.id);
    state.base_drops.push((ts, removed.id));
    let chain = state.catalog.get_mut(ns).expect("current_info found it");
    set_recovered(chain, ts, Some(Arc::new(new_info)));
    Ok(())
}

pub(super) fn current_info(
    state: &State,
    ns: &str,
    ts: Timestamp,
) -> Result<Arc<CollectionInfo>, String> {
    state
        .catalog
        .get(ns)
        .and_then(|c| c.visible_at(ts))
        .cloned()
        .ok_or_else(|| format!("catalog change on unknown collection {ns}"))
}

/// Every document of a keyspace as of the newest version, during recovery: chains in memory
/// over the base store.
pub(super) fn latest_docs(state: &State, id: CollId) -> Result<Vec<(DocKey, StoredDoc)>, String> {
    let memory = state
        .collections
        .get(&id)
        .into_iter()
        .flat_map(|docs| docs.iter())
        .map(|(key, chain)| (key, chain.versions.last().and_then(|(_, v)| v.as_ref())));
    let mut out = Vec::new();
    merge_overlay(
        memory,
        |emit| match &state.base {
            Some(base) => base.scan(
                id,
                Bound::Unbounded,
                Bound::Unbounded,
                false,
                |key, _, doc| emit(&key, &doc),
            ),
            None => Ok(()),
        },
        false,
        &mut |key, doc| {
            out.push((key.clone(), doc.clone()));
            ControlFlow::Continue(())
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Replays one document write (`None` deletes) and the index entries it changes; returns the
/// collection's keyspace (natural order's replay needs it too).
pub(super) fn replay_doc(
    state: &mut State,
    ns: &str,
    ts: Timestamp,
    key: DocKey,
    doc: Option<&StoredDoc>,
) -> Result<CollId, String> {
    let checkpoint = state.checkpoint_ts;
    let info =
        current_info(state, ns, ts).map_err(|_| format!("write to unknown collection {ns}"))?;
    let old = if info.indexes.is_empty() {
        None
    } else {
        latest_doc(state, info.id, &key)?
    };
    for index in &info.indexes {
        replay_index_entries(state, ns, ts, index, &key, old.as_ref(), doc)?;
    }
    let docs = state
        .collections
        .get_mut(&info.id)
        .ok_or_else(|| format!("collection {ns} has no data"))?;
    // A delete's chain is created even if memory has none: the base store may hold the
    // document, and the tombstone must hide it until the next checkpoint.
    let chain = docs.entry(key.clone()).or_insert_with(VersionChain::new);
    chain.install_recovered(ts, doc.cloned());
    chain.prune(ts, checkpoint);
    if chain.is_empty() {
        docs.remove(&key);
    }
    Ok(info.id)
}

/// The newest version of one document during recovery: its chain in memory, else the base
/// store's.
fn latest_doc(state: &State, id: CollId, key: &DocKey) -> Result<Option<StoredDoc>, String> {
    Ok(match state.collections.get(&id).and_then(|d| d.get(key)) {
        Some(chain) => chain.versions.last().and_then(|(_, v)| v.clone()),
        None => match &state.base {
            Some(base) => base
                .get(id, key)
                .map_err(|e| e.to_string())?
                .map(|(_, d)| d),
            None => None,
        },
    })
}

/// Whether an index is already marked multikey, in memory or in the base store.
fn multikey_marked(state: &State, index: &IndexInfo) -> Result<bool, String> {
    Ok(state
        .collections
        .get(&index.id)
        .and_then(|k| k.get(&multikey_marker()))
        .is_some_and(|c| c.versions.last().is_some_and(|(_, v)| v.is_some()))
        || match &state.base {
            Some(base) => base
                .get(index.id, &multikey_marker())
                .map_err(|e| e.to_string())?
                .is_some(),
            None => false,
        })
}

/// Replays the entries one index changes when the document under `key` goes from `old` to
/// `doc`.
fn replay_index_entries(
    state: &mut State,
    ns: &str,
    ts: Timestamp,
    index: &IndexInfo,
    key: &DocKey,
    old: Option<&StoredDoc>,
    doc: Option<&StoredDoc>,
) -> Result<(), String> {
    let checkpoint = state.checkpoint_ts;
    let old_keys = match old {
        Some(d) => index.key.keys(d).map_err(|e| e.to_string())?,
        None => Vec::new(),
    };
    let (new_keys, multikey) = match doc {
        Some(d) => index.key.keys_and_multikey(d).map_err(|e| e.to_string())?,
        None => (Vec::new(), false),
    };
    let marked = multikey && multikey_marked(state, index)?;
    let keyspace = state
        .collections
        .get_mut(&index.id)
        .ok_or_else(|| format!("index {} of {ns} has no entries", index.key.name))?;
    if multikey && !marked {
        let chain = keyspace
            .entry(multikey_marker())
            .or_insert_with(VersionChain::new);
        set_recovered(chain, ts, Some(multikey_value()));
    }
    let changes = old_keys
        .iter()
        .filter(|k| new_keys.binary_search(k).is_err())
        .map(|k| (index.entry_key(k, key), None))
        .chain(
            new_keys
                .iter()
                .filter(|k| old_keys.binary_search(k).is_err())
                .map(|k| (index.entry_key(k, key), Some(entry_value(key)))),
        );
    for (entry, value) in changes {
        let chain = keyspace
            .entry(entry.clone())
            .or_insert_with(VersionChain::new);
        set_recovered(chain, ts, value);
        chain.prune(ts, checkpoint);
        if chain.is_empty() {
            keyspace.remove(&entry);
        }
    }
    Ok(())
}
