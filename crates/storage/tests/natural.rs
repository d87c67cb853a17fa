//! Natural order: documents come back in the order their inserts committed, whatever their
//! `_id`s, through transactions, deletes, checkpoints, recovery and the format-2 upgrade.

mod common;

use std::ops::ControlFlow;

use common::*;
use mangrove_storage::{DocKey, Engine, EngineOptions, ReadView};
use redb::{Database, ReadableTable, TableDefinition};

/// `(position, _id)` of every document in natural order, as `view` sees it.
fn natural(view: &dyn ReadView, ns: &str, reverse: bool) -> Vec<(DocKey, i64)> {
    let coll = view.collection(ns).unwrap();
    let mut out = Vec::new();
    view.scan_natural(&coll, None, reverse, &mut |position, _, d| {
        out.push((position.clone(), d.get_i64("_id").unwrap()));
        ControlFlow::Continue(())
    })
    .unwrap();
    out
}

fn ids(view: &dyn ReadView, ns: &str) -> Vec<i64> {
    natural(view, ns, false)
        .into_iter()
        .map(|(_, id)| id)
        .collect()
}

fn insert_all(engine: &Engine, ns: &str, ids: &[i64]) {
    let coll = engine.snapshot().collection(ns).unwrap();
    let mut t = engine.begin();
    for &id in ids {
        t.insert(&coll, key(id), doc(id, 0)).unwrap();
    }
    commit_durable(t).unwrap();
}

#[test]
fn inserts_come_back_in_commit_order_not_id_order() {
    let dir = TempDir::new("natural-order");
    let (engine, _) = open(options(&dir)).unwrap();
    let coll = collection(&engine, "db.c");
    insert_all(&engine, "db.c", &[5, 1, 9]);
    insert_all(&engine, "db.c", &[3]);
    let snap = engine.snapshot();
    assert_eq!(ids(&snap, "db.c"), vec![5, 1, 9, 3]);
    let backward: Vec<i64> = natural(&snap, "db.c", true)
        .into_iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(backward, vec![3, 9, 1, 5]);

    // Resuming past a position continues where the scan stopped, either way.
    let all = natural(&snap, "db.c", false);
    let mut rest = Vec::new();
    snap.scan_natural(&coll, Some(&all[1].0), false, |_, _, d| {
        rest.push(d.get_i64("_id").unwrap());
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(rest, vec![9, 3]);
    let mut before = Vec::new();
    snap.scan_natural(&coll, Some(&all[2].0), true, |_, _, d| {
        before.push(d.get_i64("_id").unwrap());
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(before, vec![1, 5]);
}

#[test]
fn updates_keep_their_place_and_a_reinsert_goes_last() {
    let dir = TempDir::new("natural-update");
    let (engine, _) = open(options(&dir)).unwrap();
    let coll = collection(&engine, "db.c");
    insert_all(&engine, "db.c", &[2, 1, 3]);
    let mut t = engine.begin();
    t.replace(&coll, key(2), doc(2, 7)).unwrap();
    commit_durable(t).unwrap();
    let mut t = engine.begin();
    t.delete(&coll, key(1)).unwrap();
    commit_durable(t).unwrap();
    let before_reinsert = engine.snapshot();
    insert_all(&engine, "db.c", &[1]);
    assert_eq!(ids(&engine.snapshot(), "db.c"), vec![2, 3, 1]);
    // An older snapshot still sees its own state.
    assert_eq!(ids(&before_reinsert, "db.c"), vec![2, 3]);
    // A delete and re-insert in one transaction is an update to everyone else: it keeps its
    // place.
    let mut t = engine.begin();
    t.delete(&coll, key(2)).unwrap();
    t.insert(&coll, key(2), doc(2, 8)).unwrap();
    commit_durable(t).unwrap();
    assert_eq!(ids(&engine.snapshot(), "db.c"), vec![2, 3, 1]);
}

#[test]
fn a_transaction_sees_its_own_writes_in_natural_order() {
    let dir = TempDir::new("natural-txn");
    let (engine, _) = open(options(&dir)).unwrap();
    let coll = collection(&engine, "db.c");
    insert_all(&engine, "db.c", &[4, 2, 6]);
    let mut t = engine.begin();
    t.insert(&coll, key(9), doc(9, 0)).unwrap();
    t.insert(&coll, key(0), doc(0, 0)).unwrap();
    t.delete(&coll, key(2)).unwrap();
    t.replace(&coll, key(6), doc(6, 1)).unwrap();
    assert_eq!(ids(&t, "db.c"), vec![4, 6, 9, 0]);
    let backward: Vec<i64> = natural(&t, "db.c", true).into_iter().map(|e| e.1).collect();
    assert_eq!(backward, vec![0, 9, 6, 4]);
    // Resuming past one of its own inserts.
    let all = natural(&t, "db.c", false);
    let mut rest = Vec::new();
    t.scan_natural(&coll, Some(&all[2].0), false, |_, _, d| {
        rest.push(d.get_i64("_id").unwrap());
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(rest, vec![0]);
    // Others see nothing of it until it commits, then the inserts in statement order.
    assert_eq!(ids(&engine.snapshot(), "db.c"), vec![4, 2, 6]);
    commit_durable(t).unwrap();
    assert_eq!(ids(&engine.snapshot(), "db.c"), vec![4, 6, 9, 0]);
}

#[test]
fn positions_follow_commit_order_across_concurrent_transactions() {
    let dir = TempDir::new("natural-concurrent");
    let (engine, _) = open(options(&dir)).unwrap();
    let coll = collection(&engine, "db.c");
    let mut first = engine.begin();
    let mut second = engine.begin();
    first.insert(&coll, key(1), doc(1, 0)).unwrap();
    second.insert(&coll, key(2), doc(2, 0)).unwrap();
    commit_durable(second).unwrap();
    commit_durable(first).unwrap();
    assert_eq!(ids(&engine.snapshot(), "db.c"), vec![2, 1]);
}

/// A history with inserts out of `_id` order, updates, deletes and re-inserts, with or without
/// a checkpoint in the middle; the same positions and order must come back after reopening.
fn churn(engine: &Engine, checkpoint_midway: bool) {
    let coll = collection(engine, "db.c");
    for round in 0..6i64 {
        let mut t = engine.begin();
        for i in 0..20i64 {
            let id = (i * 7 + round * 3) % 50;
            let exists = t.get(&coll, &key(id)).unwrap().is_some();
            match (exists, (i + round) % 3) {
                (false, _) => t.insert(&coll, key(id), doc(id, round)).unwrap(),
                (true, 0) => t.delete(&coll, key(id)).unwrap(),
                (true, _) => t.replace(&coll, key(id), doc(id, round)).unwrap(),
            }
        }
        commit_durable(t).unwrap();
        if checkpoint_midway && round == 2 {
            engine.checkpoint().unwrap();
        }
    }
}

#[test]
fn recovery_hands_out_the_same_positions() {
    for checkpoint_midway in [false, true] {
        let dir = TempDir::new("natural-recovery");
        let (engine, _) = open(options(&dir)).unwrap();
        churn(&engine, checkpoint_midway);
        let before = natural(&engine.snapshot(), "db.c", false);
        assert!(before.len() > 10);
        engine.close_without_checkpoint();
        drop(engine);
        let (engine, _) = open(options(&dir)).unwrap();
        assert_eq!(natural(&engine.snapshot(), "db.c", false), before);
        let report = engine.snapshot().verify_indexes().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        // New inserts go after everything, also after a restart.
        insert_all(&engine, "db.c", &[-1]);
        assert_eq!(ids(&engine.snapshot(), "db.c").last(), Some(&-1));
        engine.checkpoint().unwrap();
        engine.close_without_checkpoint();
        drop(engine);
        let (engine, _) = open(options(&dir)).unwrap();
        assert_eq!(ids(&engine.snapshot(), "db.c").last(), Some(&-1));
        assert_eq!(
            natural(&engine.snapshot(), "db.c", false)[..before.len()],
            before[..]
        );
    }
}

#[test]
fn dropping_a_collection_drops_its_natural_order() {
    let dir = TempDir::new("natural-drop");
    let (engine, _) = open(options(&dir)).unwrap();
    collection(&engine, "db.c");
    insert_all(&engine, "db.c", &[3, 1]);
    engine.checkpoint().unwrap();
    let mut t = engine.begin();
    t.drop_collection("db.c").unwrap();
    commit_durable(t).unwrap();
    collection(&engine, "db.c");
    insert_all(&engine, "db.c", &[2]);
    engine.checkpoint().unwrap();
    assert_eq!(ids(&engine.snapshot(), "db.c"), vec![2]);
    engine.close_without_checkpoint();
    drop(engine);
    let (engine, _) = open(options(&dir)).unwrap();
    assert_eq!(ids(&engine.snapshot(), "db.c"), vec![2]);
}

const DOCS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Makes a base store look as format 2 wrote it: no natural-order keyspaces (their ids have
/// bit 62 or 61 set), format 2.
fn downgrade_to_format_2(path: &std::path::Path) -> usize {
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    let removed;
    {
        let mut docs = txn.open_table(DOCS).unwrap();
        let natural: Vec<Vec<u8>> = docs
            .iter()
            .unwrap()
            .map(|e| e.unwrap().0.value().to_vec())
            .filter(|k| k[0] & 0x60 != 0)
            .collect();
        removed = natural.len();
        for k in natural {
            docs.remove(k.as_slice()).unwrap();
        }
        let mut meta = txn.open_table(META).unwrap();
        meta.insert("format", 2).unwrap();
    }
    txn.commit().unwrap();
    removed
}

#[test]
fn a_format_2_store_gets_id_order_as_natural_order() {
    let dir = TempDir::new("natural-upgrade");
    let opts = EngineOptions {
        checkpoint_interval: std::time::Duration::from_secs(3600),
        ..options(&dir)
    };
    let (engine, _) = open(opts.clone()).unwrap();
    collection(&engine, "db.c");
    insert_all(&engine, "db.c", &[30, 10, 20]);
    engine.checkpoint().unwrap();
    // Written after the checkpoint: replayed from the log onto the upgraded store.
    insert_all(&engine, "db.c", &[5]);
    let coll = engine.snapshot().collection("db.c").unwrap();
    let mut t = engine.begin();
    t.delete(&coll, key(20)).unwrap();
    commit_durable(t).unwrap();
    engine.close_without_checkpoint();
    drop(engine);
    // Three positions, three owners, and the disorder marker (30 came before 10).
    assert_eq!(downgrade_to_format_2(&dir.0.join("base.redb")), 7);
    let (engine, _) = open(opts.clone()).unwrap();
    assert_eq!(ids(&engine.snapshot(), "db.c"), vec![10, 30, 5]);
    insert_all(&engine, "db.c", &[1]);
    assert_eq!(ids(&engine.snapshot(), "db.c"), vec![10, 30, 5, 1]);
    engine.checkpoint().unwrap();
    engine.close_without_checkpoint();
    drop(engine);
    let (engine, _) = open(opts).unwrap();
    assert_eq!(ids(&engine.snapshot(), "db.c"), vec![10, 30, 5, 1]);
}

#[test]
fn verify_names_a_document_without_a_position() {
    let dir = TempDir::new("natural-verify");
    let (engine, _) = open(options(&dir)).unwrap();
    collection(&engine, "db.c");
    insert_all(&engine, "db.c", &[2, 1]);
    let report = engine.snapshot().verify_indexes().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    engine.close();
    drop(engine);
    // Remove one position entry (bit 62 set in its keyspace id) behind the engine's back.
    let db = Database::create(dir.0.join("base.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut docs = txn.open_table(DOCS).unwrap();
        let position = docs
            .iter()
            .unwrap()
            .map(|e| e.unwrap().0.value().to_vec())
            .find(|k| k[0] & 0x40 != 0)
            .unwrap();
        docs.remove(position.as_slice()).unwrap();
    }
    txn.commit().unwrap();
    drop(db);
    let (engine, _) = open(options(&dir)).unwrap();
    let report = engine.snapshot().verify_indexes().unwrap();
    assert_eq!(
        report.problems,
        vec!["db.c: 2 documents but 1 natural positions".to_string()]
    );
}

/// `(position, key)` pairs of a scan: with the collection still in `_id` order, the scan walks
/// the documents themselves and a position is the document's key.
fn positions_are_keys(view: &dyn ReadView, ns: &str) -> bool {
    let coll = view.collection(ns).unwrap();
    let mut all = true;
    view.scan_natural(&coll, None, false, &mut |position, key, _| {
        all &= position == key;
        ControlFlow::Continue(())
    })
    .unwrap();
    all
}

#[test]
fn a_collection_in_id_order_is_walked_by_id_until_an_insert_breaks_the_order() {
    let dir = TempDir::new("natural-ordered");
    let (engine, _) = open(options(&dir)).unwrap();
    let coll = collection(&engine, "db.c");
    insert_all(&engine, "db.c", &[1, 2, 3]);
    let mut t = engine.begin();
    t.delete(&coll, key(3)).unwrap();
    commit_durable(t).unwrap();
    insert_all(&engine, "db.c", &[3, 4]);
    engine.checkpoint().unwrap();
    let ordered = engine.snapshot();
    assert_eq!(ids(&ordered, "db.c"), vec![1, 2, 3, 4]);
    assert!(positions_are_keys(&ordered, "db.c"));
    // A transaction's own inserts still come last, whatever their keys.
    let mut t = engine.begin();
    t.insert(&coll, key(0), doc(0, 0)).unwrap();
    assert_eq!(ids(&t, "db.c"), vec![1, 2, 3, 4, 0]);
    commit_durable(t).unwrap();
    let disordered = engine.snapshot();
    assert_eq!(ids(&disordered, "db.c"), vec![1, 2, 3, 4, 0]);
    assert!(!positions_are_keys(&disordered, "db.c"));
    // The snapshot from before the marker still walks by `_id`, and still sees its documents.
    assert_eq!(ids(&ordered, "db.c"), vec![1, 2, 3, 4]);
    drop((ordered, disordered));
    engine.close_without_checkpoint();
    drop(engine);
    let (engine, _) = open(options(&dir)).unwrap();
    assert_eq!(ids(&engine.snapshot(), "db.c"), vec![1, 2, 3, 4, 0]);
    let report = engine.snapshot().verify_indexes().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn an_ordered_collection_stays_ordered_across_restarts() {
    let dir = TempDir::new("natural-stays-ordered");
    let (engine, _) = open(options(&dir)).unwrap();
    collection(&engine, "db.c");
    insert_all(&engine, "db.c", &[1, 2, 3]);
    engine.close();
    drop(engine);
    let (engine, _) = open(options(&dir)).unwrap();
    insert_all(&engine, "db.c", &[4]);
    assert!(positions_are_keys(&engine.snapshot(), "db.c"));
    // The newest key is known after the restart: a smaller one breaks the order.
    insert_all(&engine, "db.c", &[0]);
    assert!(!positions_are_keys(&engine.snapshot(), "db.c"));
    assert_eq!(ids(&engine.snapshot(), "db.c"), vec![1, 2, 3, 4, 0]);
}
