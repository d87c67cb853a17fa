//! Checkpoints: versions folded into the base store, memory evicted, log segments removed,
//! and readers of every age still seeing exactly their snapshot.

mod common;

use common::*;
use mangrove_storage::{Engine, EngineOptions, Snapshot, txlog};

fn get(snap: &Snapshot, ns: &str, id: i64) -> Option<i64> {
    let coll = snap.collection(ns)?;
    snap.get(&coll, &key(id))
        .unwrap()
        .map(|d| d.get_i64("v").unwrap())
}

fn small_segments(dir: &TempDir) -> EngineOptions {
    EngineOptions {
        segment_bytes: 1024,
        // No history kept: covered segments go at once.
        history_size_bytes: 0,
        ..options(dir)
    }
}

#[test]
fn checkpoint_moves_data_to_the_base_store_and_reads_still_agree() {
    let dir = TempDir::new("ckpt-basic");
    let (engine, _) = open(small_segments(&dir)).unwrap();
    let coll = collection(&engine, "db.c");
    for i in 0..50 {
        let mut t = engine.begin();
        t.insert(&coll, key(i), doc(i, i)).unwrap();
        commit_durable(t).unwrap();
    }
    let segments_before = txlog::list_segments(&dir.0.join("log")).unwrap().len();
    let report = engine
        .checkpoint()
        .unwrap()
        .expect("something to checkpoint");
    // Each document with its natural position and its owner entry (`engine/natural.rs`).
    assert_eq!(report.documents_written, 3 * 50);
    // No reader is open: every chain is evicted and reads come from the base store.
    assert_eq!(report.chains_in_memory, 0);
    assert_eq!(report.chains_evicted, 3 * 50);
    assert!(report.segments_removed > 0 && report.segments_removed < segments_before);
    let snap = engine.snapshot();
    assert_eq!(
        values(&snap, "db.c"),
        (0..50).map(|i| (i, i)).collect::<Vec<_>>()
    );
    assert_eq!(get(&snap, "db.c", 7), Some(7));
    drop(snap);
    // Nothing new: a second checkpoint has nothing to do.
    assert!(engine.checkpoint().unwrap().is_none());
    engine.close_without_checkpoint();
}

#[test]
fn old_snapshots_keep_their_view_across_checkpoints() {
    let dir = TempDir::new("ckpt-snap");
    let (engine, _) = open(options(&dir)).unwrap();
    let coll = collection(&engine, "db.c");
    let mut t = engine.begin();
    for i in 0..10 {
        t.insert(&coll, key(i), doc(i, 0)).unwrap();
    }
    commit_durable(t).unwrap();
    engine.checkpoint().unwrap();
    // Every document now lives only in the base store. A snapshot taken now must keep seeing
    // version 0 while later writes seed chains from the base store and are checkpointed.
    let old = engine.snapshot();
    for round in 1..=3 {
        let mut t = engine.begin();
        t.replace(&coll, key(1), doc(1, round)).unwrap();
        t.delete(&coll, key(2 + round)).unwrap();
        t.insert(&coll, key(100 + round), doc(100 + round, round))
            .unwrap();
        commit_durable(t).unwrap();
        engine.checkpoint().unwrap();
        assert_eq!(
            values(&old, "db.c"),
            (0..10).map(|i| (i, 0)).collect::<Vec<_>>()
        );
        assert_eq!(get(&old, "db.c", 1), Some(0));
        assert_eq!(get(&old, "db.c", 3), Some(0));
        assert_eq!(get(&old, "db.c", 101), None);
    }
    let now = engine.snapshot();
    assert_eq!(get(&now, "db.c", 1), Some(3));
    assert_eq!(get(&now, "db.c", 3), None);
    assert_eq!(get(&now, "db.c", 103), Some(3));
    assert_eq!(values(&now, "db.c").len(), 10 - 3 + 3);
    drop((old, now));
    // With the old reader gone, the next checkpoint evicts what it pinned.
    let mut t = engine.begin();
    t.replace(&coll, key(0), doc(0, 9)).unwrap();
    commit_durable(t).unwrap();
    let report = engine.checkpoint().unwrap().unwrap();
    assert_eq!(report.chains_in_memory, 0, "{report:?}");
    engine.close_without_checkpoint();
}

#[test]
fn writes_conflict_with_versions_that_only_the_base_store_holds() {
    let dir = TempDir::new("ckpt-conflict");
    let (engine, _) = open(options(&dir)).unwrap();
    let coll = collection(&engine, "db.c");
    let mut t = engine.begin();
    t.insert(&coll, key(1), doc(1, 1)).unwrap();
    commit_durable(t).unwrap();
    engine.checkpoint().unwrap();
    // A duplicate _id is found in the base store.
    let mut t = engine.begin();
    assert!(matches!(
        t.insert(&coll, key(1), doc(1, 2)),
        Err(mangrove_storage::StorageError::DuplicateKey { .. })
    ));
    drop(t);
    // A transaction that began before a checkpointed update conflicts with it.
    let early = engine.begin();
    let mut t = engine.begin();
    t.replace(&coll, key(1), doc(1, 2)).unwrap();
    commit_durable(t).unwrap();
    engine.checkpoint().unwrap();
    let mut early = early;
    assert_eq!(
        early.replace(&coll, key(1), doc(1, 3)),
        Err(mangrove_storage::StorageError::WriteConflict)
    );
    engine.close_without_checkpoint();
}

#[test]
fn recovery_replays_only_what_follows_the_checkpoint() {
    let dir = TempDir::new("ckpt-recover");
    {
        let (engine, _) = open(options(&dir)).unwrap();
        let c = collection(&engine, "db.c");
        let gone = collection(&engine, "db.gone");
        let mut t = engine.begin();
        for i in 0..20 {
            t.insert(&c, key(i), doc(i, i)).unwrap();
            t.insert(&gone, key(i), doc(i, i)).unwrap();
        }
        commit_durable(t).unwrap();
        engine.checkpoint().unwrap();
        // After the checkpoint: an update, a delete of a base-only document, a drop of a
        // checkpointed collection, and a new collection.
        let mut t = engine.begin();
        t.replace(&c, key(0), doc(0, 1000)).unwrap();
        t.delete(&c, key(5)).unwrap();
        commit_durable(t).unwrap();
        let mut t = engine.begin();
        t.drop_collection("db.gone").unwrap();
        commit_durable(t).unwrap();
        let fresh = collection(&engine, "db.fresh");
        let mut t = engine.begin();
        t.insert(&fresh, key(1), doc(1, 1)).unwrap();
        commit_durable(t).unwrap();
        engine.close_without_checkpoint(); // as a crash would leave it
    }
    let check = |engine: &Engine| {
        let snap = engine.snapshot();
        let c = values(&snap, "db.c");
        assert_eq!(c.len(), 19);
        assert_eq!(c[0], (0, 1000));
        assert!(!c.iter().any(|(id, _)| *id == 5));
        assert!(snap.collection("db.gone").is_none());
        assert_eq!(values(&snap, "db.fresh"), vec![(1, 1)]);
    };
    let (engine, report) = open(options(&dir)).unwrap();
    assert_eq!(report.replayed, 4, "{report:?}");
    check(&engine);
    // A clean close checkpoints; the next start replays nothing and still agrees.
    engine.close();
    drop(engine);
    let (engine, report) = open(options(&dir)).unwrap();
    assert_eq!(report.replayed, 0, "{report:?}");
    check(&engine);
    // The dropped collection's documents left the base store too: recreating it is empty.
    let gone = collection(&engine, "db.gone");
    assert_eq!(engine.snapshot().count(&gone).unwrap(), 0);
    engine.close();
}

#[test]
fn log_growth_triggers_checkpoints_and_bounds_the_log() {
    let dir = TempDir::new("ckpt-auto");
    let opts = EngineOptions {
        segment_bytes: 16 * 1024,
        checkpoint_log_bytes: 64 * 1024,
        history_size_bytes: 0,
        ..options(&dir)
    };
    let (engine, _) = open(opts.clone()).unwrap();
    let coll = collection(&engine, "db.c");
    let payload = "p".repeat(500);
    for i in 0..2_000 {
        let mut t = engine.begin();
        t.insert(
            &coll,
            key(i),
            std::sync::Arc::new(bson::rawdoc! { "_id": i, "v": i, "p": payload.as_str() }),
        )
        .unwrap();
        let ticket = t.commit().unwrap();
        if i % 100 == 99 {
            block_on(async move {
                let mut ticket = ticket;
                ticket.durable().await
            })
            .unwrap();
        }
    }
    // About 1 MB of log went through; checkpoints must have kept what remains small.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log_bytes: u64 = txlog::list_segments(&dir.0.join("log"))
        .unwrap()
        .iter()
        .map(|s| std::fs::metadata(s).unwrap().len())
        .sum();
    assert!(log_bytes < 400 * 1024, "log not trimmed: {log_bytes} bytes");
    engine.close_without_checkpoint();
    drop(engine);
    let (engine, report) = open(opts).unwrap();
    assert!(
        report.replayed < 2_000,
        "replayed {} records: checkpoints did not bound recovery",
        report.replayed
    );
    assert_eq!(
        engine
            .snapshot()
            .count(&engine.snapshot().collection("db.c").unwrap())
            .unwrap(),
        2_000
    );
    engine.close();
}
