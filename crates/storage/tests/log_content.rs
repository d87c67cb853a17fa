//! What a log record says about a transaction, for change streams: update descriptions (absent
//! for replacements), pre-images only for collections that ask for them, one op per document in
//! statement order, annotations, and collection options that survive a restart.

mod common;

use std::sync::Arc;

use bson::{Document, RawDocumentBuf, doc, rawdoc};
use common::*;
use mangrove_storage::txlog::{self, LogOp, LogRecord};
use mangrove_storage::{CollectionInfo, Engine, StoredDoc};

fn records(dir: &TempDir) -> Vec<LogRecord> {
    let scan = txlog::scan_log(&dir.0.join("log"), None, |_, _| {}).unwrap();
    assert!(scan.damage.is_none(), "{:?}", scan.damage);
    scan.records.into_iter().map(|(_, r)| r).collect()
}

fn last_ops(dir: &TempDir) -> Vec<LogOp> {
    records(dir).pop().unwrap().ops
}

fn stored(d: RawDocumentBuf) -> StoredDoc {
    Arc::new(d)
}

fn parsed(d: &StoredDoc) -> Document {
    Document::try_from(d.as_ref().as_ref()).unwrap()
}

fn create(engine: &Engine, ns: &str, options: Document) -> CollectionInfo {
    let mut t = engine.begin();
    let info = t.create_collection(ns, options).unwrap();
    commit_durable(t).unwrap();
    info
}

fn pre_images_on() -> Document {
    doc! { "changeStreamPreAndPostImages": { "enabled": true } }
}

fn seed(engine: &Engine, coll: &CollectionInfo, docs: &[(i64, RawDocumentBuf)]) {
    let mut t = engine.begin();
    for (k, d) in docs {
        t.insert(coll, key(*k), stored(d.clone())).unwrap();
    }
    commit_durable(t).unwrap();
}

#[test]
fn update_has_its_description_and_replacement_has_none() {
    let dir = TempDir::new("logc-diff");
    let (engine, _) = open(options(&dir)).unwrap();
    let coll = create(&engine, "db.c", Document::new());
    seed(
        &engine,
        &coll,
        &[(1, rawdoc! { "_id": 1, "a": 1, "b": { "c": 1 }, "z": 0 })],
    );

    let mut t = engine.begin();
    let post = rawdoc! { "_id": 1, "a": 2, "b": { "c": 1, "d": [1] } };
    t.update(&coll, key(1), stored(post.clone())).unwrap();
    commit_durable(t).unwrap();
    let ops = last_ops(&dir);
    assert_eq!(ops.len(), 1);
    let LogOp::Update { doc, diff, pre, .. } = &ops[0] else {
        panic!("{ops:?}")
    };
    assert_eq!(doc.as_bytes(), post.as_bytes());
    assert!(pre.is_none(), "no pre-images without the option");
    let want = doc! {
        "updatedFields": { "a": 2, "b.d": [1] },
        "removedFields": ["z"],
        "truncatedArrays": [],
    };
    assert_eq!(parsed(diff.as_ref().unwrap()), want);

    let mut t = engine.begin();
    t.replace(&coll, key(1), stored(rawdoc! { "_id": 1, "r": true }))
        .unwrap();
    commit_durable(t).unwrap();
    let ops = last_ops(&dir);
    assert!(
        matches!(
            &ops[0],
            LogOp::Update {
                diff: None,
                pre: None,
                ..
            }
        ),
        "{ops:?}"
    );
    engine.close_without_checkpoint();
}

#[test]
fn updates_collapse_to_one_op_from_the_pre_transaction_version() {
    let dir = TempDir::new("logc-collapse");
    let (engine, _) = open(options(&dir)).unwrap();
    let coll = create(&engine, "db.c", Document::new());
    seed(
        &engine,
        &coll,
        &[
            (1, rawdoc! { "_id": 1, "v": 1 }),
            (2, rawdoc! { "_id": 2, "v": 1 }),
        ],
    );

    // update then update: one update, described from before the transaction.
    // update then replace (key 2): a replacement.
    // insert then update (key 3): one insert with the final document.
    let mut t = engine.begin();
    t.update(&coll, key(1), stored(rawdoc! { "_id": 1, "v": 2 }))
        .unwrap();
    t.update(&coll, key(2), stored(rawdoc! { "_id": 2, "v": 2 }))
        .unwrap();
    t.insert(&coll, key(3), stored(rawdoc! { "_id": 3, "v": 1 }))
        .unwrap();
    t.update(&coll, key(1), stored(rawdoc! { "_id": 1, "v": 3, "w": 1 }))
        .unwrap();
    t.replace(&coll, key(2), stored(rawdoc! { "_id": 2, "v": 3 }))
        .unwrap();
    t.update(&coll, key(2), stored(rawdoc! { "_id": 2, "v": 4 }))
        .unwrap();
    t.update(&coll, key(3), stored(rawdoc! { "_id": 3, "v": 2 }))
        .unwrap();
    commit_durable(t).unwrap();
    let ops = last_ops(&dir);
    assert_eq!(ops.len(), 3, "{ops:?}");
    let LogOp::Update { diff: Some(d), .. } = &ops[0] else {
        panic!("{ops:?}")
    };
    assert_eq!(
        parsed(d),
        doc! { "updatedFields": { "v": 3, "w": 1 }, "removedFields": [], "truncatedArrays": [] }
    );
    assert!(
        matches!(&ops[1], LogOp::Update { diff: None, .. }),
        "{ops:?}"
    );
    let LogOp::Insert { doc, .. } = &ops[2] else {
        panic!("{ops:?}")
    };
    assert_eq!(doc.get_i32("v").unwrap(), 2);
    engine.close_without_checkpoint();
}

#[test]
fn ops_follow_statement_order_across_keys_and_collections() {
    let dir = TempDir::new("logc-order");
    let (engine, _) = open(options(&dir)).unwrap();
    let a = create(&engine, "db.a", Document::new());
    let b = create(&engine, "db.b", Document::new());
    seed(
        &engine,
        &a,
        &[(1, rawdoc! { "_id": 1 }), (5, rawdoc! { "_id": 5 })],
    );

    let mut t = engine.begin();
    t.update(&a, key(5), stored(rawdoc! { "_id": 5, "x": 1 }))
        .unwrap();
    t.insert(&b, key(9), stored(rawdoc! { "_id": 9 })).unwrap();
    t.delete(&a, key(1)).unwrap();
    t.insert(&a, key(3), stored(rawdoc! { "_id": 3 })).unwrap();
    // A second write of an earlier key keeps that key's place.
    t.update(&a, key(5), stored(rawdoc! { "_id": 5, "x": 2 }))
        .unwrap();
    commit_durable(t).unwrap();
    let got: Vec<(&str, String, i64)> = last_ops(&dir)
        .iter()
        .map(|op| {
            (
                op.kind(),
                op.ns().to_string(),
                op.id().unwrap().as_i32().unwrap() as i64,
            )
        })
        .collect();
    let want = vec![
        ("update", "db.a".to_string(), 5),
        ("insert", "db.b".to_string(), 9),
        ("delete", "db.a".to_string(), 1),
        ("insert", "db.a".to_string(), 3),
    ];
    assert_eq!(got, want);

    // The record replays to the same state.
    engine.close_without_checkpoint();
    drop(engine);
    let (engine, _) = open(options(&dir)).unwrap();
    let snap = engine.snapshot();
    let coll = snap.collection("db.a").unwrap();
    assert!(snap.get(&coll, &key(1)).unwrap().is_none());
    assert_eq!(
        snap.get(&coll, &key(5))
            .unwrap()
            .unwrap()
            .get_i32("x")
            .unwrap(),
        2
    );
    engine.close_without_checkpoint();
}

#[test]
fn pre_images_only_where_the_collection_asks() {
    let dir = TempDir::new("logc-pre");
    let (engine, _) = open(options(&dir)).unwrap();
    let with = create(&engine, "db.with", pre_images_on());
    let without = create(&engine, "db.without", Document::new());
    let v1 = rawdoc! { "_id": 1, "v": 1 };
    seed(
        &engine,
        &with,
        &[(1, v1.clone()), (2, rawdoc! { "_id": 2 })],
    );
    seed(
        &engine,
        &without,
        &[(1, v1.clone()), (2, rawdoc! { "_id": 2 })],
    );

    let mut t = engine.begin();
    for coll in [&with, &without] {
        t.update(coll, key(1), stored(rawdoc! { "_id": 1, "v": 2 }))
            .unwrap();
        t.update(coll, key(1), stored(rawdoc! { "_id": 1, "v": 3 }))
            .unwrap();
        t.delete(coll, key(2)).unwrap();
    }
    commit_durable(t).unwrap();
    let ops = last_ops(&dir);
    assert_eq!(ops.len(), 4, "{ops:?}");
    match (&ops[0], &ops[1]) {
        (
            LogOp::Update { pre: Some(pre), .. },
            LogOp::Delete {
                pre: Some(deleted), ..
            },
        ) => {
            // The version before the transaction, not the intermediate one.
            assert_eq!(pre.as_bytes(), v1.as_bytes());
            assert_eq!(deleted.get_i32("_id").unwrap(), 2);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        &ops[2],
        LogOp::Update {
            pre: None,
            diff: Some(_),
            ..
        }
    ));
    assert!(matches!(&ops[3], LogOp::Delete { pre: None, .. }));
    engine.close_without_checkpoint();
}

#[test]
fn annotations_round_trip_and_replay_ignores_them() {
    let dir = TempDir::new("logc-annotate");
    let (engine, _) = open(options(&dir)).unwrap();
    let coll = create(&engine, "db.c", Document::new());
    let mut t = engine.begin();
    t.insert(&coll, key(1), doc(1, 1)).unwrap();
    t.annotate("db.$cmd", doc! { "dropDatabase": 1 });
    commit_durable(t).unwrap();

    let ops = last_ops(&dir);
    assert_eq!(ops.len(), 2);
    assert_eq!(
        ops[1],
        LogOp::Command {
            ns: "db.$cmd".into(),
            o: doc! { "dropDatabase": 1 }
        }
    );

    // An annotation alone is a record too (a collMod that changes nothing is still an event),
    // and replay passes over it.
    let before = records(&dir).len();
    let mut t = engine.begin();
    t.annotate("db.c", doc! { "collMod": "c" });
    commit_durable(t).unwrap();
    assert_eq!(records(&dir).len(), before + 1);
    assert_eq!(
        last_ops(&dir),
        vec![LogOp::Command {
            ns: "db.c".into(),
            o: doc! { "collMod": "c" }
        }]
    );
    engine.close_without_checkpoint();
    drop(engine);
    let (engine, _) = open(options(&dir)).unwrap();
    assert_eq!(values(&engine.snapshot(), "db.c"), vec![(1, 1)]);
    engine.close_without_checkpoint();
}

#[test]
fn collection_options_survive_restart_by_replay_and_by_checkpoint() {
    for checkpoint in [false, true] {
        let dir = TempDir::new("logc-collmod");
        let (engine, _) = open(options(&dir)).unwrap();
        let coll = create(&engine, "db.c", Document::new());
        seed(&engine, &coll, &[(1, rawdoc! { "_id": 1, "v": 1 })]);
        let mut t = engine.begin();
        let info = t.set_collection_options("db.c", pre_images_on()).unwrap();
        assert!(info.records_pre_images());
        commit_durable(t).unwrap();
        assert_eq!(
            last_ops(&dir),
            vec![LogOp::SetCollectionOptions {
                ns: "db.c".into(),
                options: pre_images_on()
            }]
        );
        if checkpoint {
            engine.close();
        } else {
            engine.close_without_checkpoint();
        }
        drop(engine);

        let (engine, _) = open(options(&dir)).unwrap();
        let coll = engine.snapshot().collection("db.c").unwrap();
        assert_eq!(*coll.options, pre_images_on(), "checkpoint: {checkpoint}");
        // And the option is in force: updates log their pre-image.
        let mut t = engine.begin();
        t.update(&coll, key(1), stored(rawdoc! { "_id": 1, "v": 2 }))
            .unwrap();
        commit_durable(t).unwrap();
        assert!(matches!(
            &last_ops(&dir)[0],
            LogOp::Update { pre: Some(_), .. }
        ));
        engine.close_without_checkpoint();
    }
}

#[test]
fn set_options_of_a_missing_collection_is_namespace_not_found() {
    let dir = TempDir::new("logc-collmod-missing");
    let (engine, _) = open(options(&dir)).unwrap();
    let mut t = engine.begin();
    let err = t
        .set_collection_options("db.nope", pre_images_on())
        .unwrap_err();
    assert!(
        matches!(err, mangrove_storage::StorageError::NamespaceNotFound(_)),
        "{err:?}"
    );
    engine.close_without_checkpoint();
}
