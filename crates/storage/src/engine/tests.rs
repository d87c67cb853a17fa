use super::*;
use bson::rawdoc;
use std::ops::ControlFlow;

fn key(n: i32) -> DocKey {
    DocKey(n.to_be_bytes().to_vec())
}

fn doc(id: i32, v: i32) -> StoredDoc {
    Arc::new(rawdoc! { "_id": id, "v": v })
}

fn v_of(d: &StoredDoc) -> i32 {
    d.get_i32("v").unwrap()
}

/// Commits and waits until the writes are visible.
fn commit(t: Txn) -> Timestamp {
    let mut ticket = t.commit().unwrap();
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(ticket.visible())
        .unwrap()
}

fn setup() -> (Engine, CollectionInfo) {
    let engine = Engine::in_memory();
    let mut t = engine.begin();
    let (coll, created) = t.ensure_collection("db.c", bson::Document::new()).unwrap();
    assert!(created);
    commit(t);
    (engine, coll)
}

fn collect(snap: &Snapshot, coll: &CollectionInfo) -> Vec<i32> {
    let mut out = Vec::new();
    snap.scan(coll, None, |_, d| {
        out.push(v_of(d));
        ControlFlow::Continue(())
    })
    .unwrap();
    out
}

#[test]
fn snapshot_does_not_see_later_commits() {
    let (engine, coll) = setup();
    let before = engine.snapshot();
    let mut t = engine.begin();
    t.insert(&coll, key(1), doc(1, 10)).unwrap();
    let ts = commit(t);
    assert!(ts > before.read_ts());
    assert!(before.get(&coll, &key(1)).unwrap().is_none());
    assert_eq!(
        engine
            .snapshot()
            .get(&coll, &key(1))
            .unwrap()
            .map(|d| v_of(&d)),
        Some(10)
    );
}

#[test]
fn uncommitted_writes_are_private() {
    let (engine, coll) = setup();
    let mut t = engine.begin();
    t.insert(&coll, key(1), doc(1, 10)).unwrap();
    assert!(t.get(&coll, &key(1)).unwrap().is_some());
    assert!(engine.snapshot().get(&coll, &key(1)).unwrap().is_none());
    t.abort();
    assert!(engine.snapshot().get(&coll, &key(1)).unwrap().is_none());
}

#[test]
fn first_writer_wins_at_once() {
    let (engine, coll) = setup();
    let mut a = engine.begin();
    let mut b = engine.begin();
    a.insert(&coll, key(1), doc(1, 1)).unwrap();
    assert_eq!(
        b.insert(&coll, key(1), doc(1, 2)),
        Err(StorageError::WriteConflict)
    );
    commit(a);
    // b's snapshot predates a's commit: still a conflict, not a duplicate.
    assert_eq!(
        b.replace(&coll, key(1), doc(1, 3)),
        Err(StorageError::WriteConflict)
    );
    // A fresh transaction sees the document and gets DuplicateKey.
    let mut c = engine.begin();
    assert!(matches!(
        c.insert(&coll, key(1), doc(1, 4)),
        Err(StorageError::DuplicateKey { .. })
    ));
    // The failed insert must not keep the intent.
    let mut d = engine.begin();
    d.replace(&coll, key(1), doc(1, 5)).unwrap();
    commit(d);
}

#[test]
fn dropping_an_open_transaction_releases_its_intents() {
    let (engine, coll) = setup();
    {
        let mut a = engine.begin();
        a.insert(&coll, key(1), doc(1, 1)).unwrap();
    }
    let mut b = engine.begin();
    b.insert(&coll, key(1), doc(1, 2)).unwrap();
    commit(b);
}

#[test]
fn scan_merges_own_writes_in_key_order() {
    let (engine, coll) = setup();
    let mut t = engine.begin();
    for i in [2, 4, 6] {
        t.insert(&coll, key(i), doc(i, i)).unwrap();
    }
    commit(t);
    let mut t = engine.begin();
    t.insert(&coll, key(1), doc(1, 1)).unwrap();
    t.insert(&coll, key(5), doc(5, 5)).unwrap();
    t.replace(&coll, key(4), doc(4, 40)).unwrap();
    t.delete(&coll, key(6)).unwrap();
    t.insert(&coll, key(9), doc(9, 9)).unwrap();
    let mut seen = Vec::new();
    t.scan(&coll, None, |_, d| {
        seen.push(v_of(d));
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(seen, vec![1, 2, 40, 5, 9]);
    let mut after = Vec::new();
    t.scan(&coll, Some(&key(2)), |_, d| {
        after.push(v_of(d));
        if after.len() == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(after, vec![40, 5]);
    commit(t);
    assert_eq!(collect(&engine.snapshot(), &coll), vec![1, 2, 40, 5, 9]);
}

#[test]
fn old_snapshot_survives_pruning() {
    let (engine, coll) = setup();
    let mut t = engine.begin();
    t.insert(&coll, key(1), doc(1, 1)).unwrap();
    commit(t);
    let old = engine.snapshot();
    for v in 2..10 {
        let mut t = engine.begin();
        t.replace(&coll, key(1), doc(1, v)).unwrap();
        commit(t);
    }
    assert_eq!(old.get(&coll, &key(1)).unwrap().map(|d| v_of(&d)), Some(1));
    drop(old);
    let mut t = engine.begin();
    t.delete(&coll, key(1)).unwrap();
    commit(t);
    let state = engine.read_state();
    let chains = &state.collections[&coll.id];
    // With no reader left, the deleted key's whole history is reclaimed.
    assert!(chains.get(&key(1)).is_none());
}

#[test]
fn drop_collection_is_snapshot_consistent() {
    let (engine, coll) = setup();
    let mut t = engine.begin();
    t.insert(&coll, key(1), doc(1, 1)).unwrap();
    commit(t);
    let old = engine.snapshot();
    let mut t = engine.begin();
    t.drop_collection("db.c").unwrap();
    commit(t);
    assert!(engine.snapshot().collection("db.c").is_none());
    assert_eq!(collect(&old, &coll), vec![1]);
    assert_eq!(engine.snapshot().list_databases(), Vec::<String>::new());
    drop(old);
    // Recreate under the same name: a new, empty collection.
    let mut t = engine.begin();
    let (coll2, created) = t.ensure_collection("db.c", bson::Document::new()).unwrap();
    assert!(created);
    commit(t);
    assert_eq!(collect(&engine.snapshot(), &coll2), Vec::<i32>::new());
    assert_eq!(engine.snapshot().list_databases(), vec!["db".to_string()]);
}

#[test]
fn aborted_create_leaves_nothing() {
    let engine = Engine::in_memory();
    let mut t = engine.begin();
    t.ensure_collection("db.x", bson::Document::new()).unwrap();
    t.abort();
    assert!(engine.snapshot().collection("db.x").is_none());
    assert!(engine.read_state().collections.is_empty());
    assert!(engine.read_state().catalog.is_empty());
}

#[test]
fn commit_timestamps_increase() {
    let (engine, coll) = setup();
    let mut last = engine.last_commit();
    for i in 0..100 {
        let mut t = engine.begin();
        t.insert(&coll, key(i), doc(i, i)).unwrap();
        let ts = commit(t);
        assert!(ts > last);
        last = ts;
    }
    assert_eq!(engine.snapshot().count(&coll).unwrap(), 100);
}
