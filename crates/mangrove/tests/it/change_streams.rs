//! Change streams and the oplog through the Rust driver against the real server: events of
//! every kind with their fields, resuming from tokens (also across a restart), the errors for
//! bad input, and an oplog tailer that rebuilds a collection from `local.oplog.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common;
use crate::common::{driver_client, spawn_on_data_dir};
use bson::{Bson, Document, doc};
use futures_util::StreamExt;
use mongodb::options::{CursorType, FullDocumentType};
use mongodb::{Client, Database};

struct TestServer {
    child: std::process::Child,
    port: u16,
    data: std::path::PathBuf,
}

impl TestServer {
    fn start(name: &str) -> TestServer {
        let dir = std::env::temp_dir().join(format!("mangrove-cs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let data = dir.join("data");
        let (child, port) = spawn_on_data_dir(&data, None);
        TestServer { child, port, data }
    }

    fn restart(&mut self, kill: bool) {
        if kill {
            self.child.kill().unwrap();
        } else {
            let _ = std::process::Command::new("kill")
                .arg(self.child.id().to_string())
                .status();
        }
        self.child.wait().unwrap();
        let (child, port) = spawn_on_data_dir(&self.data, None);
        self.child = child;
        self.port = port;
    }

    async fn client(&self) -> Client {
        driver_client(self.port).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = self.data.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

async fn command(db: &Database, cmd: Document) -> Result<Document, mongodb::error::Error> {
    db.run_command(cmd).await
}

fn code_of(e: &mongodb::error::Error) -> Option<i32> {
    match &*e.kind {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// The next event of a raw change stream, waiting up to 10 s.
async fn next_event(stream: &mut mongodb::change_stream::ChangeStream<Document>) -> Document {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream goes on")
        .expect("no error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_stream_shows_every_kind_of_event_then_invalidates() {
    let server = TestServer::start("kinds");
    let client = server.client().await;
    let db = client.database("cs");
    let coll = db.collection::<Document>("c");
    coll.insert_one(doc! {"_id": 0}).await.unwrap();
    let mut stream = coll
        .watch()
        .full_document(FullDocumentType::UpdateLookup)
        .await
        .unwrap()
        .with_type::<Document>();
    coll.insert_one(doc! {"_id": 1, "a": 1, "arr": ["foo", {"a": "bar"}, 1, 2, 3]})
        .await
        .unwrap();
    coll.update_one(
        doc! {"_id": 1},
        doc! {"$set": {"a": 2, "b.c": 3}, "$unset": {"x": 1}},
    )
    .await
    .unwrap();
    coll.update_one(
        doc! {"_id": 1},
        vec![doc! {"$set": {"arr": ["foo", {"a": "bar"}]}}],
    )
    .await
    .unwrap();
    coll.replace_one(doc! {"_id": 1}, doc! {"r": true})
        .await
        .unwrap();
    coll.delete_one(doc! {"_id": 1}).await.unwrap();
    coll.drop().await.unwrap();

    let insert = next_event(&mut stream).await;
    assert_eq!(insert.get_str("operationType").unwrap(), "insert");
    assert_eq!(
        insert.get_document("ns").unwrap(),
        &doc! {"db": "cs", "coll": "c"}
    );
    assert_eq!(
        insert.get_document("documentKey").unwrap(),
        &doc! {"_id": 1}
    );
    assert_eq!(
        insert.get_document("fullDocument").unwrap(),
        &doc! {"_id": 1, "a": 1, "arr": ["foo", {"a": "bar"}, 1, 2, 3]}
    );
    assert!(matches!(
        insert.get("clusterTime"),
        Some(Bson::Timestamp(_))
    ));
    assert!(matches!(insert.get("wallTime"), Some(Bson::DateTime(_))));

    let update = next_event(&mut stream).await;
    assert_eq!(update.get_str("operationType").unwrap(), "update");
    let desc = update.get_document("updateDescription").unwrap();
    assert_eq!(
        desc.get_document("updatedFields").unwrap(),
        &doc! {"a": 2, "b": {"c": 3}}
    );
    assert_eq!(
        desc.get_array("removedFields").unwrap(),
        &Vec::<Bson>::new()
    );
    assert!(desc.get("disambiguatedPaths").is_none());
    assert_eq!(
        update.get_document("fullDocument").unwrap(),
        &doc! {"_id": 1, "a": 2, "arr": ["foo", {"a": "bar"}, 1, 2, 3], "b": {"c": 3}}
    );

    let truncate = next_event(&mut stream).await;
    let desc = truncate.get_document("updateDescription").unwrap();
    assert_eq!(
        desc.get_array("truncatedArrays").unwrap(),
        &vec![Bson::Document(doc! {"field": "arr", "newSize": 2})]
    );

    let replace = next_event(&mut stream).await;
    assert_eq!(replace.get_str("operationType").unwrap(), "replace");
    assert_eq!(
        replace.get_document("fullDocument").unwrap(),
        &doc! {"_id": 1, "r": true}
    );
    let delete = next_event(&mut stream).await;
    assert_eq!(delete.get_str("operationType").unwrap(), "delete");
    assert_eq!(
        delete.get_document("documentKey").unwrap(),
        &doc! {"_id": 1}
    );
    let drop = next_event(&mut stream).await;
    assert_eq!(drop.get_str("operationType").unwrap(), "drop");
    let invalidate = next_event(&mut stream).await;
    assert_eq!(invalidate.get_str("operationType").unwrap(), "invalidate");
    let after = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream ends at once after an invalidate");
    assert!(after.is_none(), "nothing after an invalidate: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_database_and_cluster_streams() {
    let server = TestServer::start("scopes");
    let client = server.client().await;
    let db = client.database("scope");
    let a = db.collection::<Document>("a");
    let b = db.collection::<Document>("b");
    let other = client.database("other").collection::<Document>("x");
    for c in [&a, &b, &other] {
        c.insert_one(doc! {"_id": "seed"}).await.unwrap();
    }
    let mut db_stream = db.watch().await.unwrap().with_type::<Document>();
    let mut cluster_stream = client.watch().await.unwrap().with_type::<Document>();
    let mut session = client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    b.insert_one(doc! {"_id": 2})
        .session(&mut session)
        .await
        .unwrap();
    a.insert_one(doc! {"_id": 1})
        .session(&mut session)
        .await
        .unwrap();
    session.commit_transaction().await.unwrap();
    other.insert_one(doc! {"_id": 3}).await.unwrap();

    let first = next_event(&mut db_stream).await;
    let second = next_event(&mut db_stream).await;
    // Statement order within the transaction, one cluster time, the session's fields.
    assert_eq!(
        first.get_document("ns").unwrap().get_str("coll").unwrap(),
        "b"
    );
    assert_eq!(
        second.get_document("ns").unwrap().get_str("coll").unwrap(),
        "a"
    );
    assert_eq!(first.get("clusterTime"), second.get("clusterTime"));
    assert!(first.get_document("lsid").is_ok());
    assert!(first.get_i64("txnNumber").is_ok());
    assert_ne!(first.get("_id"), second.get("_id"));
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = next_event(&mut cluster_stream).await;
        seen.push(
            e.get_document("ns")
                .unwrap()
                .get_str("db")
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(seen, ["scope", "scope", "other"]);
    let none = tokio::time::timeout(Duration::from_millis(1500), db_stream.next()).await;
    assert!(
        none.is_err(),
        "the database stream saw another database's write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_a_token_after_a_restart_sees_each_later_event_once() {
    let mut server = TestServer::start("resume");
    let client = server.client().await;
    let coll = client.database("r").collection::<Document>("c");
    coll.insert_one(doc! {"_id": -1}).await.unwrap();
    let mut stream = coll.watch().await.unwrap().with_type::<Document>();
    for i in 0..5 {
        coll.insert_one(doc! {"_id": i}).await.unwrap();
    }
    let mut token = None;
    for i in 0..3 {
        let e = next_event(&mut stream).await;
        assert_eq!(
            e.get_document("documentKey")
                .unwrap()
                .get_i32("_id")
                .unwrap(),
            i
        );
        token = Some(e.get_document("_id").unwrap().clone());
    }
    drop(stream);
    server.restart(false);
    let client = server.client().await;
    let coll = client.database("r").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 5}).await.unwrap();
    let token: mongodb::change_stream::event::ResumeToken =
        bson::deserialize_from_document(doc! {"_data": token.unwrap().get_str("_data").unwrap()})
            .ok()
            .unwrap_or_else(|| panic!("token"));
    let mut resumed = coll
        .watch()
        .resume_after(token)
        .await
        .unwrap()
        .with_type::<Document>();
    for i in 3..6 {
        let e = next_event(&mut resumed).await;
        assert_eq!(
            e.get_document("documentKey")
                .unwrap()
                .get_i32("_id")
                .unwrap(),
            i
        );
    }
    let none = tokio::time::timeout(Duration::from_millis(1500), resumed.next()).await;
    assert!(none.is_err(), "an event twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_change_stream_requests_get_mongods_errors() {
    let server = TestServer::start("bad");
    let client = server.client().await;
    let db = client.database("bad");
    db.collection::<Document>("c")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    let agg = |pipeline: Vec<Document>| doc! {"aggregate": "c", "pipeline": pipeline, "cursor": {}};
    let cases: Vec<(Document, i32)> = vec![
        (
            agg(vec![doc! {"$match": {}}, doc! {"$changeStream": {}}]),
            40602,
        ),
        (agg(vec![doc! {"$changeStream": {"bogus": 1}}]), 40415),
        (
            agg(vec![doc! {"$changeStream": {"fullDocument": "sometimes"}}]),
            2,
        ),
        (agg(vec![doc! {"$changeStream": {"fullDocument": 1}}]), 14),
        (
            agg(vec![
                doc! {"$changeStream": {}},
                doc! {"$group": {"_id": 1}},
            ]),
            20,
        ),
        (
            agg(vec![doc! {"$changeStream": {}}, doc! {"$bogus": {}}]),
            40324,
        ),
        (
            agg(vec![doc! {"$changeStream": {"resumeAfter": {"_data": 1}}}]),
            9,
        ),
        (
            agg(vec![
                doc! {"$changeStream": {"resumeAfter": {"_data": "8263F5A0E4000000012B022C0100296E5A1004"}}},
            ]),
            260,
        ),
    ];
    for (cmd, want) in cases {
        let e = command(&db, cmd.clone())
            .await
            .expect_err(&format!("{cmd}"));
        assert_eq!(code_of(&e), Some(want), "{cmd}: {e}");
    }
    let admin = client.database("admin");
    let e = command(
        &admin,
        doc! {"aggregate": 1, "pipeline": [{"$changeStream": {}}], "cursor": {}},
    )
    .await
    .unwrap_err();
    assert_eq!(code_of(&e), Some(73));

    // A token of a dropped collection's stream: resuming shows the drop and the invalidate;
    // resumeAfter the invalidate is refused, startAfter it starts a new stream.
    let coll = db.collection::<Document>("gone");
    coll.insert_one(doc! {"_id": 0}).await.unwrap();
    let mut stream = coll.watch().await.unwrap().with_type::<Document>();
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    coll.drop().await.unwrap();
    let insert = next_event(&mut stream).await;
    let _drop = next_event(&mut stream).await;
    let invalidate = next_event(&mut stream).await;
    assert_eq!(invalidate.get_str("operationType").unwrap(), "invalidate");
    let reply = command(&db, doc! {"aggregate": "gone", "pipeline": [{"$changeStream": {"resumeAfter": insert.get_document("_id").unwrap().clone()}}], "cursor": {}}).await.unwrap();
    let kinds: Vec<&str> = reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|e| e.as_document().unwrap().get_str("operationType").unwrap())
        .collect();
    assert_eq!(kinds, ["drop", "invalidate"]);
    let token = invalidate.get_document("_id").unwrap().clone();
    let e = command(&db, doc! {"aggregate": "gone", "pipeline": [{"$changeStream": {"resumeAfter": token.clone()}}], "cursor": {}}).await.unwrap_err();
    assert_eq!(code_of(&e), Some(260));
    command(&db, doc! {"aggregate": "gone", "pipeline": [{"$changeStream": {"startAfter": token}}], "cursor": {}})
        .await
        .unwrap();
    // The server is still healthy.
    db.run_command(doc! {"ping": 1}).await.unwrap();
}

/// Applies one oplog entry to a copy of a collection (`ns`), as an oplog tailer does.
fn apply(copy: &mut BTreeMap<String, Document>, ns: &str, entry: &Document) {
    let op = entry.get_str("op").unwrap();
    if op == "c" {
        if let Ok(ops) = entry
            .get_document("o")
            .and_then(|o| o.get_array("applyOps"))
        {
            for inner in ops {
                apply(copy, ns, inner.as_document().unwrap());
            }
        }
        return;
    }
    if entry.get_str("ns").unwrap() != ns {
        return;
    }
    let o = entry.get_document("o").unwrap();
    match op {
        "i" | "u" => {
            let id = o.get("_id").unwrap().to_string();
            copy.insert(id, o.clone());
        }
        "d" => {
            copy.remove(&o.get("_id").unwrap().to_string());
        }
        other => panic!("unexpected op {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oplog_tailer_rebuilds_a_collection() {
    let server = TestServer::start("oplog");
    let client = server.client().await;
    let coll = client.database("o").collection::<Document>("c");
    coll.insert_one(doc! {"_id": "first"}).await.unwrap();
    let oplog = client.database("local").collection::<Document>("oplog.rs");
    let newest = oplog
        .find(doc! {})
        .sort(doc! {"$natural": -1})
        .limit(1)
        .await
        .unwrap()
        .next()
        .await
        .unwrap()
        .unwrap();
    let start = newest.get("ts").unwrap().clone();
    let mut tail = oplog
        .find(doc! {"ts": {"$gte": start}})
        .cursor_type(CursorType::TailableAwait)
        .max_await_time(Duration::from_millis(200))
        .await
        .unwrap();
    let mut copy = BTreeMap::new();
    copy.insert(
        Bson::String("first".into()).to_string(),
        doc! {"_id": "first"},
    );
    let writer = {
        let coll = coll.clone();
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..200i64 {
                coll.insert_one(doc! {"_id": i, "v": 0}).await.unwrap();
                if i % 3 == 0 {
                    coll.update_one(doc! {"_id": i / 2}, doc! {"$inc": {"v": 1}})
                        .await
                        .unwrap();
                }
                if i % 7 == 0 {
                    coll.delete_one(doc! {"_id": i / 3}).await.unwrap();
                }
                if i % 20 == 0 {
                    let mut s = client.start_session().await.unwrap();
                    s.start_transaction().await.unwrap();
                    coll.insert_one(doc! {"_id": format!("t{i}")})
                        .session(&mut s)
                        .await
                        .unwrap();
                    coll.update_one(doc! {"_id": i}, doc! {"$set": {"txn": true}})
                        .session(&mut s)
                        .await
                        .unwrap();
                    s.commit_transaction().await.unwrap();
                }
            }
        })
    };
    writer.await.unwrap();
    let original: Vec<Document> = common::all_docs(&coll).await;
    let want: BTreeMap<String, Document> = original
        .into_iter()
        .map(|d| (d.get("_id").unwrap().to_string(), d))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while copy != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the copy never caught up"
        );
        match tokio::time::timeout(Duration::from_secs(5), tail.next()).await {
            Ok(Some(entry)) => apply(&mut copy, "o.c", &entry.unwrap()),
            Ok(None) => panic!("the tailable cursor ended"),
            Err(_) => {}
        }
    }
    assert_eq!(copy.len(), want.len());
}
