//! Capped collections and tailable cursors through the Rust driver against a real server:
//! `create` with `capped`/`size`/`max` and its errors, insertion order (`$natural`, either way)
//! independent of `_id` order, trimming to `max` documents and to `size` bytes, `_id` lookups
//! and duplicate keys through the capped collection's `_id` index, tailable `awaitData`
//! cursors following concurrent writers, `CappedPositionLost`, the writes mongod refuses, and
//! insertion order surviving a kill -9.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::{Server, driver_client, spawn_on_data_dir};
use bson::{Bson, Document, doc};
use futures_util::TryStreamExt;
use mongodb::error::ErrorKind;
use mongodb::options::{CursorType, FindOptions};
use mongodb::{Collection, Database};

async fn code_of(db: &Database, command: Document) -> i32 {
    match db.run_command(command.clone()).await {
        Ok(reply) => panic!("{command} succeeded: {reply}"),
        Err(e) => error_code(&e).unwrap_or_else(|| panic!("{command}: {e}")),
    }
}

fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match *e.kind {
        ErrorKind::Command(ref c) => Some(c.code),
        ErrorKind::InsertMany(ref m) => m.write_errors.as_ref()?.first().map(|w| w.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(ref w)) => Some(w.code),
        _ => None,
    }
}

fn bson_len(d: &Document) -> usize {
    bson::RawDocumentBuf::try_from(d).unwrap().as_bytes().len()
}

async fn values(coll: &Collection<Document>, sort: Option<Document>, field: &str) -> Vec<i64> {
    let options = FindOptions::builder().sort(sort).build();
    let docs: Vec<Document> = coll
        .find(doc! {})
        .with_options(options)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    docs.iter()
        .map(|d| match d.get(field) {
            Some(&Bson::Int32(n)) => i64::from(n),
            Some(&Bson::Int64(n)) => n,
            other => panic!("{field} is {other:?} in {d}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_checks_options_and_lists_them() {
    let server = Server::start();
    let client = driver_client(server.port).await;
    let db = client.database("capped_create");

    assert_eq!(code_of(&db, doc! {"create": "a", "capped": true}).await, 72);
    assert_eq!(
        code_of(&db, doc! {"create": "a", "capped": true, "size": -1}).await,
        2
    );
    let huge = doc! {"create": "a", "capped": true, "size": 1i64 << 51};
    assert_eq!(code_of(&db, huge).await, 2);
    let many = doc! {"create": "a", "capped": true, "size": 4096, "max": 1i64 << 31};
    assert_eq!(code_of(&db, many).await, 2);
    let typed = doc! {"create": "a", "capped": true, "size": "big"};
    assert_eq!(code_of(&db, typed).await, 14);

    db.run_command(doc! {"create": "logs", "capped": true, "size": 10000, "max": 50})
        .await
        .unwrap();
    let reply = db
        .run_command(doc! {"listCollections": 1, "filter": {"name": "logs"}})
        .await
        .unwrap();
    let batch = reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap();
    let options = batch[0]
        .as_document()
        .unwrap()
        .get_document("options")
        .unwrap()
        .clone();
    assert_eq!(
        options,
        doc! {"capped": true, "size": 10000, "max": 50},
        "{options}"
    );
    // Idempotent with the same options, refused with others.
    db.run_command(doc! {"create": "logs", "capped": true, "size": 10000, "max": 50})
        .await
        .unwrap();
    assert_eq!(
        code_of(&db, doc! {"create": "logs", "capped": true, "size": 20000}).await,
        48
    );

    // `_id_` is listed once; `dropIndexes: "*"` keeps it; no TTL index on a capped collection.
    let coll = db.collection::<Document>("logs");
    coll.create_index(mongodb::IndexModel::builder().keys(doc! {"x": 1}).build())
        .await
        .unwrap();
    let names = coll.list_index_names().await.unwrap();
    assert_eq!(names, vec!["_id_".to_string(), "x_1".to_string()]);
    db.run_command(doc! {"dropIndexes": "logs", "index": "*"})
        .await
        .unwrap();
    assert_eq!(coll.list_index_names().await.unwrap(), vec!["_id_"]);
    let ttl = doc! {"createIndexes": "logs", "indexes": [
        {"key": {"at": 1}, "name": "at_1", "expireAfterSeconds": 10}
    ]};
    assert_eq!(code_of(&db, ttl).await, 67);
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    assert_eq!(
        coll.find_one(doc! {"_id": 1}).await.unwrap(),
        Some(doc! {"_id": 1})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insertion_order_and_max_documents() {
    let server = Server::start();
    let client = driver_client(server.port).await;
    let db = client.database("capped_max");
    db.run_command(doc! {"create": "c", "capped": true, "size": 100000, "max": 5})
        .await
        .unwrap();
    let coll = db.collection::<Document>("c");
    // `_id`s that fall as insertion goes on: insertion order is not `_id` order.
    for i in 0..4i64 {
        coll.insert_one(doc! {"_id": 100 - i, "n": i})
            .await
            .unwrap();
    }
    let batch: Vec<Document> = (4..12i64).map(|i| doc! {"_id": 100 - i, "n": i}).collect();
    coll.insert_many(batch).await.unwrap();
    assert_eq!(values(&coll, None, "n").await, vec![7, 8, 9, 10, 11]);
    let natural = Some(doc! {"$natural": 1});
    assert_eq!(values(&coll, natural, "n").await, vec![7, 8, 9, 10, 11]);
    let backward = Some(doc! {"$natural": -1});
    assert_eq!(values(&coll, backward, "n").await, vec![11, 10, 9, 8, 7]);
    let by_id = Some(doc! {"_id": 1});
    assert_eq!(values(&coll, by_id, "n").await, vec![11, 10, 9, 8, 7]);
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 5);

    // `_id` lookups go through the `_id` index; a duplicate `_id` is refused and loses nothing.
    let found = coll.find_one(doc! {"_id": 92}).await.unwrap();
    assert_eq!(found, Some(doc! {"_id": 92_i64, "n": 8_i64}));
    let dup = coll
        .insert_one(doc! {"_id": 92, "n": 99})
        .await
        .unwrap_err();
    assert_eq!(error_code(&dup), Some(11000), "{dup}");
    assert_eq!(values(&coll, None, "n").await, vec![7, 8, 9, 10, 11]);

    // Updates (growing a document is allowed since MongoDB 6.0) keep a document's place, and
    // `_id` stays immutable.
    coll.update_one(doc! {"_id": 91}, doc! {"$set": {"note": "x".repeat(200)}})
        .await
        .unwrap();
    assert_eq!(values(&coll, None, "n").await, vec![7, 8, 9, 10, 11]);
    let moved = coll
        .update_one(doc! {"_id": 91}, doc! {"$set": {"_id": 5}})
        .await
        .unwrap_err();
    assert_eq!(error_code(&moved), Some(66), "{moved}");
    // A delete, then inserts: the newest stay, in insertion order.
    coll.delete_one(doc! {"_id": 93}).await.unwrap();
    coll.insert_one(doc! {"_id": 1, "n": 12}).await.unwrap();
    assert_eq!(values(&coll, None, "n").await, vec![8, 9, 10, 11, 12]);
    coll.insert_one(doc! {"_id": 2, "n": 13}).await.unwrap();
    assert_eq!(values(&coll, None, "n").await, vec![9, 10, 11, 12, 13]);
    // An upsert inserts at the end too.
    coll.update_one(doc! {"_id": 3}, doc! {"$set": {"n": 14}})
        .upsert(true)
        .await
        .unwrap();
    coll.insert_one(doc! {"_id": 4, "n": 15}).await.unwrap();
    assert_eq!(values(&coll, None, "n").await, vec![11, 12, 13, 14, 15]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limit_trims_the_oldest() {
    let server = Server::start();
    let client = driver_client(server.port).await;
    let db = client.database("capped_size");
    db.run_command(doc! {"create": "c", "capped": true, "size": 4096})
        .await
        .unwrap();
    let coll = db.collection::<Document>("c");
    let pad = "p".repeat(180);
    for n in 0..100i64 {
        coll.insert_one(doc! {"n": n, "pad": &pad}).await.unwrap();
    }
    let docs: Vec<Document> = coll
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let bytes: usize = docs.iter().map(bson_len).sum();
    assert!(bytes <= 4096, "{bytes} bytes kept");
    // One more document would not have fitted: the collection is as full as it can be.
    let one = bson_len(&docs[0]);
    assert!(bytes + one > 4096, "{bytes} bytes kept, documents of {one}");
    let kept: Vec<i64> = docs.iter().map(|d| d.get_i64("n").unwrap()).collect();
    let expected: Vec<i64> = (100 - kept.len() as i64..100).collect();
    assert_eq!(kept, expected);

    // A document larger than the whole cap is refused, and nothing is evicted for it.
    let big = coll
        .insert_one(doc! {"pad": "b".repeat(5000)})
        .await
        .unwrap_err();
    assert_eq!(error_code(&big), Some(2), "{big}");
    assert_eq!(
        coll.count_documents(doc! {}).await.unwrap(),
        kept.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_and_out_are_refused() {
    let server = Server::start();
    let client = driver_client(server.port).await;
    let db = client.database("capped_refused");
    db.run_command(doc! {"create": "c", "capped": true, "size": 4096})
        .await
        .unwrap();
    let coll = db.collection::<Document>("c");
    let mut session = client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    let e = coll
        .insert_one(doc! {"x": 1})
        .session(&mut session)
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), Some(263), "{e}");
    let _ = session.abort_transaction().await;
    let mut session = client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    let create = doc! {"create": "d", "capped": true, "size": 4096};
    let e = db
        .run_command(create)
        .session(&mut session)
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), Some(263), "{e}");
    let _ = session.abort_transaction().await;

    db.collection::<Document>("src")
        .insert_one(doc! {"x": 1})
        .await
        .unwrap();
    let out = doc! {"aggregate": "src", "pipeline": [{"$out": "c"}], "cursor": {}};
    assert_eq!(code_of(&db, out).await, 17152);
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 0);

    let tail_plain = doc! {"find": "src", "tailable": true};
    assert_eq!(code_of(&db, tail_plain).await, 2);
    let await_alone = doc! {"find": "c", "awaitData": true};
    assert_eq!(code_of(&db, await_alone).await, 9);
    let sorted = doc! {"find": "c", "tailable": true, "sort": {"x": 1}};
    assert_eq!(code_of(&db, sorted).await, 2);
}

/// Writers on several connections insert concurrently while a tailable `awaitData` cursor
/// follows: it sees every document exactly once, each writer's in its own order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailable_cursor_follows_concurrent_writers() {
    let server = Server::start();
    let client = driver_client(server.port).await;
    let db = client.database("capped_tail");
    db.run_command(doc! {"create": "c", "capped": true, "size": 1 << 20})
        .await
        .unwrap();
    let coll = db.collection::<Document>("c");
    coll.insert_one(doc! {"w": -1, "i": 0}).await.unwrap();
    let options = FindOptions::builder()
        .cursor_type(CursorType::TailableAwait)
        .max_await_time(Duration::from_millis(200))
        .batch_size(7)
        .build();
    let mut cursor = coll.find(doc! {}).with_options(options).await.unwrap();

    const WRITERS: i64 = 4;
    const EACH: i64 = 150;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let coll = coll.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                if i % 10 == 0 {
                    let batch: Vec<Document> = (i..i + 10).map(|i| doc! {"w": w, "i": i}).collect();
                    coll.insert_many(batch).await.unwrap();
                }
            }
        }));
    }
    let mut seen = HashSet::new();
    let mut last = vec![-1i64; WRITERS as usize];
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < (WRITERS * EACH + 1) as usize {
        assert!(Instant::now() < deadline, "saw {} documents", seen.len());
        let Some(doc) = cursor.try_next().await.unwrap() else {
            continue;
        };
        let (w, i) = (
            doc.get_i32("w")
                .map(i64::from)
                .unwrap_or_else(|_| doc.get_i64("w").unwrap()),
            doc.get_i32("i")
                .map(i64::from)
                .unwrap_or_else(|_| doc.get_i64("i").unwrap()),
        );
        assert!(seen.insert((w, i)), "({w}, {i}) twice");
        if w >= 0 {
            assert!(
                i > last[w as usize],
                "writer {w}: {i} after {}",
                last[w as usize]
            );
            last[w as usize] = i;
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Nothing more arrives: an awaitData getMore waits and answers empty, the cursor alive.
    let started = Instant::now();
    let more = tokio::time::timeout(Duration::from_millis(600), cursor.try_next()).await;
    assert!(more.is_err() || matches!(more, Ok(Ok(None))), "{more:?}");
    assert!(started.elapsed() >= Duration::from_millis(150));
    coll.insert_one(doc! {"w": 9, "i": 9}).await.unwrap();
    let next = loop {
        if let Some(d) = cursor.try_next().await.unwrap() {
            break d;
        }
    };
    assert_eq!(next.get_i32("w").unwrap(), 9);
}

/// A tailable cursor whose place was trimmed away ends with CappedPositionLost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailable_cursor_loses_a_trimmed_position() {
    let server = Server::start();
    let client = driver_client(server.port).await;
    let db = client.database("capped_lost");
    db.run_command(doc! {"create": "c", "capped": true, "size": 4096, "max": 3})
        .await
        .unwrap();
    let coll = db.collection::<Document>("c");
    coll.insert_one(doc! {"n": 0}).await.unwrap();
    let reply = db
        .run_command(doc! {"find": "c", "tailable": true, "batchSize": 1})
        .await
        .unwrap();
    let id = reply.get_document("cursor").unwrap().get_i64("id").unwrap();
    assert_ne!(id, 0, "{reply}");
    for n in 1..6 {
        coll.insert_one(doc! {"n": n}).await.unwrap();
    }
    let lost = doc! {"getMore": id, "collection": "c"};
    assert_eq!(code_of(&db, lost.clone()).await, 136);
    assert_eq!(code_of(&db, lost).await, 43, "the cursor is gone");

    // An empty capped collection gives a dead tailable cursor, as mongod documents.
    db.run_command(doc! {"create": "empty", "capped": true, "size": 4096})
        .await
        .unwrap();
    let reply = db
        .run_command(doc! {"find": "empty", "tailable": true})
        .await
        .unwrap();
    assert_eq!(
        reply.get_document("cursor").unwrap().get_i64("id").unwrap(),
        0
    );
}

/// Insertion order, the limits and the `_id` index survive kill -9; numbering goes on after
/// the newest document, so new documents still come last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insertion_order_survives_kill_9() {
    let dir = std::env::temp_dir().join(format!("mangrove-capped-{}", std::process::id()));
    let data = dir.join("data");
    let (mut child, port) = spawn_on_data_dir(&data, None);
    let client = driver_client(port).await;
    let db = client.database("capped_kill");
    db.run_command(doc! {"create": "c", "capped": true, "size": 100000, "max": 4})
        .await
        .unwrap();
    let coll = db.collection::<Document>("c");
    for n in 0..6i64 {
        coll.insert_one(doc! {"_id": 50 - n, "n": n}).await.unwrap();
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut child, port) = spawn_on_data_dir(&data, None);
    let client = driver_client(port).await;
    let coll = client.database("capped_kill").collection::<Document>("c");
    assert_eq!(values(&coll, None, "n").await, vec![2, 3, 4, 5]);
    coll.insert_one(doc! {"_id": 1000, "n": 6}).await.unwrap();
    assert_eq!(values(&coll, None, "n").await, vec![3, 4, 5, 6]);
    let dup = coll.insert_one(doc! {"_id": 47, "n": 7}).await.unwrap_err();
    assert_eq!(error_code(&dup), Some(11000), "{dup}");
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// killCursors on a tailable cursor whose awaitData getMore is waiting ends the wait at once
/// with CursorKilled, and the cursor is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_cursors_interrupts_a_waiting_get_more() {
    let server = Server::start();
    let client = driver_client(server.port).await;
    let db = client.database("capped_kill_cursor");
    db.run_command(doc! {"create": "c", "capped": true, "size": 4096})
        .await
        .unwrap();
    db.collection::<Document>("c")
        .insert_one(doc! {"n": 1})
        .await
        .unwrap();
    let reply = db
        .run_command(doc! {"find": "c", "tailable": true, "awaitData": true})
        .await
        .unwrap();
    let id = reply.get_document("cursor").unwrap().get_i64("id").unwrap();
    let waiting = {
        let db = db.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = db
                .run_command(doc! {"getMore": id, "collection": "c", "maxTimeMS": 20_000})
                .await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = db
        .run_command(doc! {"killCursors": "c", "cursors": [id]})
        .await
        .unwrap();
    assert_eq!(
        killed.get_array("cursorsKilled").unwrap(),
        &vec![Bson::Int64(id)],
        "{killed}"
    );
    let (result, elapsed) = waiting.await.unwrap();
    let e = result.unwrap_err();
    assert_eq!(error_code(&e), Some(237), "{e}");
    assert!(
        elapsed < Duration::from_secs(5),
        "the getMore waited {elapsed:?}"
    );
    let again = doc! {"getMore": id, "collection": "c"};
    assert_eq!(code_of(&db, again).await, 43);

    // The same for a change stream's waiting getMore; and a capped collection's create shows
    // as one `create` event, without a `createIndexes` of its own `_id_` index.
    let open = doc! {"aggregate": 1, "pipeline": [{"$changeStream": {"showExpandedEvents": true}}], "cursor": {}};
    let reply = db.run_command(open).await.unwrap();
    let id = reply.get_document("cursor").unwrap().get_i64("id").unwrap();
    db.run_command(doc! {"create": "d", "capped": true, "size": 4096})
        .await
        .unwrap();
    db.collection::<Document>("d")
        .insert_one(doc! {"n": 1})
        .await
        .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let more = doc! {"getMore": id, "collection": "$cmd.aggregate", "maxTimeMS": 1000};
        let reply = db.run_command(more).await.unwrap();
        for e in reply
            .get_document("cursor")
            .unwrap()
            .get_array("nextBatch")
            .unwrap()
        {
            kinds.push(
                e.as_document()
                    .unwrap()
                    .get_str("operationType")
                    .unwrap()
                    .to_string(),
            );
        }
    }
    assert_eq!(kinds, vec!["create", "insert"]);
    let waiting = {
        let db = db.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let more = doc! {"getMore": id, "collection": "$cmd.aggregate", "maxTimeMS": 20_000};
            (db.run_command(more).await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    db.run_command(doc! {"killCursors": "$cmd.aggregate", "cursors": [id]})
        .await
        .unwrap();
    let (result, elapsed) = waiting.await.unwrap();
    assert_eq!(error_code(&result.unwrap_err()), Some(237));
    assert!(
        elapsed < Duration::from_secs(5),
        "the getMore waited {elapsed:?}"
    );
}
