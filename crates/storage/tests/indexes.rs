//! Secondary indexes in the engine: entries versioned with their documents, unique keys under
//! concurrency, index builds against open writers, and recovery of entries from the log.

mod common;

use std::ops::Bound;
use std::sync::Arc;

use bson::{RawBsonRef, RawDocument, doc, rawdoc};
use common::*;
use mangrove_bson::{IndexField, IndexSpec, KeyInterval, encode_key, no_partial_filters};
use std::ops::ControlFlow;

use mangrove_storage::{CollectionInfo, DocKey, Engine, ReadView, StorageError};

fn spec(key: bson::Document, name: &str, unique: bool) -> bson::Document {
    let mut raw = doc! { "key": key, "name": name };
    if unique {
        raw.insert("unique", true);
    }
    IndexSpec::normalize(
        &bson::RawDocumentBuf::try_from(&raw).unwrap(),
        &no_partial_filters,
    )
    .unwrap()
}

fn create_index(engine: &Engine, ns: &str, s: bson::Document) -> CollectionInfo {
    let mut t = engine.begin();
    let info = t.create_index(ns, s).unwrap();
    commit_durable(t).unwrap();
    info
}

/// The `_id`s the index `name` yields for `filter`, in index order.
fn lookup(view: &dyn ReadView, ns: &str, name: &str, filter: bson::RawDocumentBuf) -> Vec<i64> {
    let coll = view.collection(ns).unwrap();
    let index = coll.index(name).unwrap().clone();
    let interval = interval(&index.key.fields[0], &filter);
    let mut out = Vec::new();
    for (_, target) in view
        .index_scan(&index, &interval, None, usize::MAX, false)
        .unwrap()
    {
        let d = view
            .get(&coll, &target)
            .unwrap()
            .expect("entry points at a document");
        out.push(d.get_i64("_id").unwrap());
    }
    out
}

/// The entries of a single-field index that `filter` (`{field: value}`, or one comparison on
/// the field) selects: the interval the query crate's planner computes for such a filter,
/// built here because the engine (and its tests) do not depend on the query language.
fn interval(field: &IndexField, filter: &RawDocument) -> KeyInterval {
    let (path, cond) = filter.iter().next().unwrap().unwrap();
    assert_eq!(path.as_str(), field.path);
    let (op, value) = match cond {
        RawBsonRef::Document(d) => {
            let (op, value) = d.iter().next().unwrap().unwrap();
            (op.as_str().to_string(), value)
        }
        value => ("$eq".to_string(), value),
    };
    let invert = |mut k: Vec<u8>| {
        if field.descending {
            k.iter_mut().for_each(|b| *b = !*b);
        }
        k
    };
    let mut point = Vec::new();
    encode_key(value, &mut point);
    let point = invert(point);
    let after = |k: &[u8]| [k, &[0xFF]].concat();
    // A range stays within the value's type: from its tag to the next tag.
    assert!(
        op == "$eq" || !field.descending,
        "ranges only on ascending indexes"
    );
    let tag = point[..1].to_vec();
    let next_tag = vec![tag[0] + 1];
    let (lower, upper) = match op.as_str() {
        "$eq" => (point.clone(), after(&point)),
        "$gte" => (point, next_tag),
        "$gt" => (after(&point), next_tag),
        "$lt" => (tag, point),
        "$lte" => (tag, after(&point)),
        other => panic!("no interval for {other}"),
    };
    (Bound::Included(lower), Bound::Excluded(upper))
}

#[test]
fn entries_follow_inserts_updates_and_deletes_per_snapshot() {
    let engine = Engine::in_memory();
    let coll = collection(&engine, "db.c");
    let mut t = engine.begin();
    for i in 0..10 {
        t.insert(&coll, key(i), doc(i, i % 3)).unwrap();
    }
    commit_durable(t).unwrap();
    let coll = create_index(&engine, "db.c", spec(doc! { "v": 1 }, "v_1", false));
    let before = engine.snapshot();
    assert_eq!(
        lookup(&before, "db.c", "v_1", rawdoc! { "v": 1 }),
        vec![1, 4, 7]
    );

    let mut t = engine.begin();
    t.replace(&coll, key(4), doc(4, 2)).unwrap();
    t.delete(&coll, key(7)).unwrap();
    t.insert(&coll, key(20), doc(20, 1)).unwrap();
    // The transaction sees its own index writes...
    assert_eq!(lookup(&t, "db.c", "v_1", rawdoc! { "v": 1 }), vec![1, 20]);
    commit_durable(t).unwrap();
    // ...an older snapshot keeps its own view of the index...
    assert_eq!(
        lookup(&before, "db.c", "v_1", rawdoc! { "v": 1 }),
        vec![1, 4, 7]
    );
    // ...and a new one sees the commit.
    let after = engine.snapshot();
    assert_eq!(
        lookup(&after, "db.c", "v_1", rawdoc! { "v": 1 }),
        vec![1, 20]
    );
    assert_eq!(
        lookup(&after, "db.c", "v_1", rawdoc! { "v": { "$gte": 2 } }),
        vec![2, 4, 5, 8]
    );
    assert_eq!(
        lookup(&after, "db.c", "v_1", rawdoc! { "v": { "$lt": 1 } }),
        vec![0, 3, 6, 9]
    );
}

#[test]
fn unique_index_refuses_duplicates_and_concurrent_writers_conflict() {
    let engine = Engine::in_memory();
    collection(&engine, "db.u");
    let coll = create_index(&engine, "db.u", spec(doc! { "v": 1 }, "v_1", true));
    let mut t = engine.begin();
    t.insert(&coll, key(1), doc(1, 5)).unwrap();
    commit_durable(t).unwrap();

    let mut t = engine.begin();
    match t.insert(&coll, key(2), doc(2, 5)) {
        Err(StorageError::DuplicateKey {
            index,
            key_pattern,
            key_value,
            ..
        }) => {
            assert_eq!(index, "v_1");
            assert_eq!(*key_pattern, doc! { "v": 1 });
            assert_eq!(*key_value, doc! { "v": 5i64 });
        }
        other => panic!("expected DuplicateKey, got {other:?}"),
    }
    // The refused insert left nothing behind: another key is fine in the same transaction.
    t.insert(&coll, key(2), doc(2, 6)).unwrap();

    // A second open transaction taking the same key conflicts with the first.
    let mut other = engine.begin();
    assert!(matches!(
        other.insert(&coll, key(3), doc(3, 6)),
        Err(StorageError::WriteConflict)
    ));
    commit_durable(t).unwrap();
    drop(other);

    // Moving a key away frees it within one transaction.
    let mut t = engine.begin();
    t.replace(&coll, key(1), doc(1, 7)).unwrap();
    t.insert(&coll, key(4), doc(4, 5)).unwrap();
    commit_durable(t).unwrap();
    let snap = engine.snapshot();
    assert_eq!(lookup(&snap, "db.u", "v_1", rawdoc! { "v": 5 }), vec![4]);
    assert_eq!(lookup(&snap, "db.u", "v_1", rawdoc! { "v": 7 }), vec![1]);
}

#[test]
fn index_build_waits_for_writers_and_writers_for_builds() {
    let engine = Engine::in_memory();
    let coll = collection(&engine, "db.b");
    let mut writer = engine.begin();
    writer.insert(&coll, key(1), doc(1, 1)).unwrap();
    // A build while a writer holds documents of the collection would miss its write.
    let mut build = engine.begin();
    assert!(matches!(
        build.create_index("db.b", spec(doc! { "v": 1 }, "v_1", false)),
        Err(StorageError::WriteConflict)
    ));
    drop(build);
    commit_durable(writer).unwrap();
    // A build whose snapshot predates a committed write would miss it too.
    let mut stale = engine.begin();
    let mut w2 = engine.begin();
    w2.insert(&coll, key(2), doc(2, 1)).unwrap();
    commit_durable(w2).unwrap();
    assert!(matches!(
        stale.create_index("db.b", spec(doc! { "v": 1 }, "v_1", false)),
        Err(StorageError::WriteConflict)
    ));
    drop(stale);
    // While a build holds the catalog, writers wait (conflict and retry).
    let mut build = engine.begin();
    build
        .create_index("db.b", spec(doc! { "v": 1 }, "v_1", false))
        .unwrap();
    let mut late = engine.begin();
    assert!(matches!(
        late.insert(&coll, key(3), doc(3, 1)),
        Err(StorageError::WriteConflict)
    ));
    commit_durable(build).unwrap();
    // A transaction whose snapshot predates the index cannot write the collection...
    assert!(matches!(
        late.insert(&coll, key(3), doc(3, 1)),
        Err(StorageError::WriteConflict)
    ));
    drop(late);
    // ...while a newer one maintains the index even when handed the old collection info.
    let mut t = engine.begin();
    t.insert(&coll, key(3), doc(3, 1)).unwrap();
    commit_durable(t).unwrap();
    assert_eq!(
        lookup(&engine.snapshot(), "db.b", "v_1", rawdoc! { "v": 1 }),
        vec![1, 2, 3]
    );
}

#[test]
fn unique_build_over_duplicates_fails() {
    let engine = Engine::in_memory();
    let coll = collection(&engine, "db.d");
    let mut t = engine.begin();
    t.insert(&coll, key(1), doc(1, 9)).unwrap();
    t.insert(&coll, key(2), doc(2, 9)).unwrap();
    commit_durable(t).unwrap();
    let mut t = engine.begin();
    assert!(matches!(
        t.create_index("db.d", spec(doc! { "v": 1 }, "v_1", true)),
        Err(StorageError::DuplicateKey { .. })
    ));
    drop(t);
    // Nothing of the failed build remains; a non-unique index builds fine.
    assert!(
        engine
            .snapshot()
            .collection("db.d")
            .unwrap()
            .indexes
            .is_empty()
    );
    create_index(&engine, "db.d", spec(doc! { "v": -1 }, "v_-1", false));
    assert_eq!(
        lookup(&engine.snapshot(), "db.d", "v_-1", rawdoc! { "v": 9 }),
        vec![1, 2]
    );
}

fn all_entries(engine: &Engine, ns: &str, name: &str) -> Vec<i64> {
    let snap = engine.snapshot();
    let coll = snap.collection(ns).unwrap();
    let index = coll.index(name).unwrap().clone();
    snap.index_scan(
        &index,
        &(Bound::Unbounded, Bound::Unbounded),
        None,
        usize::MAX,
        false,
    )
    .unwrap()
    .into_iter()
    .map(|(_, target)| {
        snap.get(&coll, &target)
            .unwrap()
            .unwrap()
            .get_i64("_id")
            .unwrap()
    })
    .collect()
}

#[test]
fn index_entries_are_recovered_from_the_log_and_the_checkpoint() {
    let dir = TempDir::new("indexes");
    let expected;
    {
        let (engine, _) = open(options(&dir)).unwrap();
        let coll = collection(&engine, "db.r");
        let mut t = engine.begin();
        for i in 0..50 {
            t.insert(&coll, key(i), doc(i, 49 - i)).unwrap();
        }
        commit_durable(t).unwrap();
        create_index(&engine, "db.r", spec(doc! { "v": 1 }, "v_1", false));
        // Some changes go into the checkpoint, the rest only into the log.
        let coll = engine.snapshot().collection("db.r").unwrap();
        let mut t = engine.begin();
        t.replace(&coll, key(0), doc(0, 1000)).unwrap();
        commit_durable(t).unwrap();
        engine.checkpoint().unwrap();
        let mut t = engine.begin();
        t.delete(&coll, key(49)).unwrap();
        t.replace(&coll, key(1), doc(1, -5)).unwrap();
        commit_durable(t).unwrap();
        create_index(
            &engine,
            "db.r",
            spec(doc! { "v": -1, "_id": 1 }, "v_-1__id_1", false),
        );
        // A multikey marker is set by the first array and survives recovery.
        create_index(&engine, "db.r", spec(doc! { "tags": 1 }, "tags_1", false));
        let idx = engine
            .snapshot()
            .collection("db.r")
            .unwrap()
            .index("tags_1")
            .unwrap()
            .clone();
        assert!(!engine.snapshot().index_multikey(&idx).unwrap());
        let coll = engine.snapshot().collection("db.r").unwrap();
        let mut t = engine.begin();
        t.insert(
            &coll,
            key(500),
            Arc::new(rawdoc! { "_id": 500i64, "v": 7i64, "tags": ["x", "y"] }),
        )
        .unwrap();
        assert!(t.index_multikey(&idx).unwrap());
        assert!(!engine.snapshot().index_multikey(&idx).unwrap());
        commit_durable(t).unwrap();
        assert!(engine.snapshot().index_multikey(&idx).unwrap());
        expected = all_entries(&engine, "db.r", "v_1");
        engine.close_without_checkpoint();
    }
    let (engine, _) = open(options(&dir)).unwrap();
    let mut want = vec![1];
    want.extend((2..=48).rev());
    want.insert(want.iter().position(|&i| i == 42).unwrap() + 1, 500);
    want.push(0);
    assert_eq!(expected, want);
    assert_eq!(all_entries(&engine, "db.r", "v_1"), want);
    // Descending v, then ascending _id: doc 42 and doc 500 share v = 7.
    let mut desc = want.clone();
    desc.reverse();
    let (a, b) = (
        desc.iter().position(|&i| i == 500).unwrap(),
        desc.iter().position(|&i| i == 42).unwrap(),
    );
    desc.swap(a, b);
    assert_eq!(all_entries(&engine, "db.r", "v_-1__id_1"), desc);
    let idx = engine
        .snapshot()
        .collection("db.r")
        .unwrap()
        .index("tags_1")
        .unwrap()
        .clone();
    assert!(engine.snapshot().index_multikey(&idx).unwrap());
    // Documents without tags index as null (before strings); 500 has one entry per tag.
    let mut tags: Vec<i64> = (0..=48).collect();
    tags.extend([500, 500]);
    assert_eq!(all_entries(&engine, "db.r", "tags_1"), tags);
    // Dropping an index survives a restart too.
    let mut t = engine.begin();
    t.drop_index("db.r", "v_1").unwrap();
    commit_durable(t).unwrap();
    engine.close();
    drop(engine);
    let (engine, _) = open(options(&dir)).unwrap();
    let coll = engine.snapshot().collection("db.r").unwrap();
    let names: Vec<&str> = coll.indexes.iter().map(|i| i.key.name.as_str()).collect();
    assert_eq!(names, ["v_-1__id_1", "tags_1"]);
    assert_eq!(all_entries(&engine, "db.r", "v_-1__id_1"), desc);
}

#[test]
fn backward_walks_mirror_forward_ones_with_own_writes_merged() {
    backward_walks(&Engine::in_memory(), false);
    // Again with the data in the base store (redb), under the in-memory chains.
    let dir = TempDir::new("backward");
    let (engine, _) = open(options(&dir)).unwrap();
    backward_walks(&engine, true);
}

fn backward_walks(engine: &Engine, checkpoint: bool) {
    let engine = engine.clone();
    let coll = collection(&engine, "db.w");
    let mut t = engine.begin();
    for i in 0..40 {
        t.insert(&coll, key(i), doc(i, i % 7)).unwrap();
    }
    commit_durable(t).unwrap();
    let coll = create_index(&engine, "db.w", spec(doc! { "v": 1 }, "v_1", false));
    if checkpoint {
        engine.checkpoint().unwrap().expect("a checkpoint ran");
        // One committed change lives only in memory, over the base store.
        let mut t = engine.begin();
        t.replace(&coll, key(20), doc(20, 0)).unwrap();
        commit_durable(t).unwrap();
    }
    let index = coll.index("v_1").unwrap().clone();
    let mut t = engine.begin();
    t.delete(&coll, key(3)).unwrap();
    t.insert(&coll, key(100), doc(100, 2)).unwrap();
    t.replace(&coll, key(10), doc(10, 6)).unwrap();
    let all = (Bound::Unbounded, Bound::Unbounded);
    let targets = |rev: bool, chunk: usize| -> Vec<DocKey> {
        // Resume chunk by chunk, as a cursor does.
        let mut out = Vec::new();
        let mut resume: Option<DocKey> = None;
        loop {
            let got = t
                .index_scan(&index, &all, resume.as_ref(), chunk, rev)
                .unwrap();
            let Some((last, _)) = got.last() else { break };
            resume = Some(last.clone());
            out.extend(got.into_iter().map(|(_, d)| d));
        }
        out
    };
    let forward = targets(false, 5);
    let mut backward = targets(true, 3);
    backward.reverse();
    assert_eq!(forward.len(), 40);
    assert_eq!(forward, backward);
    assert!(forward.contains(&key(100)) && !forward.contains(&key(3)));
    let mut docs_fwd = Vec::new();
    t.scan_range(&coll, &all, None, false, |k, _| {
        docs_fwd.push(k.clone());
        ControlFlow::Continue(())
    })
    .unwrap();
    let mut docs_back = Vec::new();
    t.scan_range(&coll, &all, Some(&key(100)), true, |k, _| {
        docs_back.push(k.clone());
        ControlFlow::Continue(())
    })
    .unwrap();
    docs_back.reverse();
    assert_eq!(&docs_fwd[..docs_fwd.len() - 1], &docs_back[..]);
}
