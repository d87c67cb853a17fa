//! Every checkpoint is a consistent cut, even while commits race past it: in the base store
//! each document has exactly the index entries it derives, and no entry points elsewhere.
//!
//! Commits become visible before they are durable, and installing one prunes its keys' older
//! versions, so a checkpoint must cut where nothing it needs was pruned (`checkpoint.rs`). This
//! test checkpoints over and over while writer threads move a few hot documents (each write
//! moves the document's index entry) and a reader holds snapshots now and then, and reads the
//! base store itself after each checkpoint: a cut that missed some version shows there as a
//! document whose entry is missing or another version's entry that stayed.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bson::rawdoc;

use super::catalog::{CollectionInfo, MULTIKEY_MARKER, entry_target};
use super::*;
use crate::scratch::Scratch;

const HOT_KEYS: i32 = 4;
const WRITERS: usize = 3;
const CHECKPOINTS: usize = 300;

fn key(n: i32) -> DocKey {
    DocKey(n.to_be_bytes().to_vec())
}

/// An engine whose checkpoints run only when the test asks.
fn engine(dir: &Scratch) -> Engine {
    let options = EngineOptions {
        data_dir: Some(dir.0.clone()),
        checkpoint_log_bytes: u64::MAX,
        checkpoint_interval: Duration::from_secs(3600),
        ..EngineOptions::default()
    };
    Engine::open(options, |_, _| {}).unwrap().0
}

fn wait_visible(t: Txn) {
    let mut ticket = t.commit().unwrap();
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(ticket.visible())
        .unwrap();
}

fn hot_collection(engine: &Engine) -> CollectionInfo {
    let mut t = engine.begin();
    t.ensure_collection("db.hot", bson::Document::new())
        .unwrap();
    let spec = mangrove_bson::IndexSpec::normalize(
        &rawdoc! { "key": { "v": 1 }, "name": "v_1" },
        &mangrove_bson::no_partial_filters,
    )
    .unwrap();
    let coll = t.create_index("db.hot", spec).unwrap();
    for n in 0..HOT_KEYS {
        t.insert(&coll, key(n), Arc::new(rawdoc! { "_id": n, "v": 0 }))
            .unwrap();
    }
    wait_visible(t);
    coll
}

/// Moves one hot document to a new `v` (so to a new index entry), retrying conflicts.
fn move_one(engine: &Engine, coll: &CollectionInfo, n: i32) {
    loop {
        let mut t = engine.begin();
        let v = t.get(coll, &key(n)).unwrap().unwrap().get_i32("v").unwrap();
        match t.replace(coll, key(n), Arc::new(rawdoc! { "_id": n, "v": v + 1 })) {
            Ok(()) => return wait_visible(t),
            Err(StorageError::WriteConflict) => continue,
            Err(e) => panic!("writer: {e}"),
        }
    }
}

/// What the base store holds for the hot collection: its documents' derived entries, and the
/// entries its index keyspace holds (entry key to target document).
type Entries = BTreeMap<DocKey, DocKey>;

fn base_entries(engine: &Engine, coll: &CollectionInfo) -> (Entries, Entries) {
    let base = engine.read_state().base.clone().unwrap();
    let index = &coll.indexes[0];
    let all = (Bound::Unbounded, Bound::Unbounded);
    let mut derived = Entries::new();
    base.scan(coll.id, all.0, all.1, false, |key, _, doc| {
        for index_key in index.key.keys(&doc).unwrap() {
            derived.insert(index.entry_key(&index_key, &key), key.clone());
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    let mut held = Entries::new();
    base.scan(index.id, all.0, all.1, false, |key, _, value| {
        if key.0 != MULTIKEY_MARKER {
            held.insert(key, entry_target(&value).unwrap());
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    (derived, held)
}

#[test]
fn every_checkpoint_is_a_consistent_cut_while_commits_race_it() {
    let dir = Scratch::new("checkpoint-cut");
    let engine = engine(&dir);
    let coll = hot_collection(&engine);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (engine, coll, stop) = (engine.clone(), coll.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = w as i32;
                while !stop.load(Ordering::Relaxed) {
                    move_one(&engine, &coll, n % HOT_KEYS);
                    n += 1;
                }
            })
        })
        .collect::<Vec<_>>();
    // Snapshots held for a moment keep older versions alive now and then, so that pruning
    // also runs bounded by a reader (how a stale entry, not only a missing one, came about).
    let reader = {
        let (engine, coll, stop) = (engine.clone(), coll.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let snapshot = engine.snapshot();
                snapshot.get(&coll, &key(0)).unwrap();
                std::thread::sleep(Duration::from_micros(50));
                drop(snapshot);
            }
        })
    };
    let mut cut = Timestamp(0);
    for round in 0..CHECKPOINTS {
        // Something new each time, so that every round checkpoints while writers commit.
        while engine.inner.progress.borrow().durable <= cut {
            std::thread::yield_now();
        }
        cut = engine
            .checkpoint()
            .unwrap()
            .expect("a commit since the last cut")
            .ts;
        let (derived, held) = base_entries(&engine, &coll);
        if derived != held {
            stop.store(true, Ordering::Relaxed);
            panic!(
                "checkpoint {round}: the base store's index disagrees with its documents\n\
                 derived from the documents: {derived:?}\nheld by the index: {held:?}"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    reader.join().unwrap();
    engine.close();
}
