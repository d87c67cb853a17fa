//! The official Rust `mongodb` driver (3.9.1, bson 3) against a real Mangrove
//! server. Clients connect with a plain `mongodb://HOST:PORT/` (no
//! directConnection), so the driver runs replica-set discovery; the topology
//! type it reports through SDAM events must be ReplicaSetWithPrimary.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::Server;
use bson::{Bson, Document, doc};
use futures_util::TryStreamExt;
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::event::EventHandler;
use mongodb::event::command::{CommandEvent, CommandSucceededEvent};
use mongodb::event::sdam::SdamEvent;
use mongodb::options::ClientOptions;
use mongodb::{Client, ServerType, TopologyType};

const DRIVER: &str = "rust mongodb 3.9.1";

/// (type, set name, servers) of one TopologyDescriptionChanged event.
type TopologySnapshot = (TopologyType, Option<String>, Vec<(String, ServerType)>);

#[derive(Clone, Default)]
struct Observed {
    /// (type, set name, servers) from every TopologyDescriptionChanged event.
    topology: Arc<Mutex<Vec<TopologySnapshot>>>,
    heartbeats: Arc<Mutex<Vec<Document>>>,
    commands: Arc<Mutex<Vec<CommandSucceededEvent>>>,
}

impl Observed {
    fn last_topology(&self) -> Option<TopologySnapshot> {
        self.topology.lock().unwrap().last().cloned()
    }

    /// Waits (up to 10 s) until the latest topology event has type `want`.
    async fn wait_topology(&self, want: TopologyType) -> TopologySnapshot {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(t) = self.last_topology()
                && (t.0 == want || Instant::now() > deadline)
            {
                return t;
            }
            if Instant::now() > deadline {
                panic!("no TopologyDescriptionChanged event at all within 10s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn succeeded(&self, name: &str) -> Vec<CommandSucceededEvent> {
        self.commands
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.command_name == name)
            .cloned()
            .collect()
    }
}

async fn client(server: &Server, query: &str) -> (Client, Observed) {
    let mut opts = ClientOptions::parse(format!("{}{}", server.uri(), query))
        .await
        .expect("parse URI");
    opts.server_selection_timeout = Some(Duration::from_secs(10));
    opts.connect_timeout = Some(Duration::from_secs(5));
    let obs = Observed::default();
    let (topo, hb) = (obs.topology.clone(), obs.heartbeats.clone());
    opts.sdam_event_handler = Some(EventHandler::callback(move |ev: SdamEvent| match ev {
        SdamEvent::TopologyDescriptionChanged(e) => {
            let d = &e.new_description;
            let servers = d
                .servers()
                .iter()
                .map(|(a, s)| (a.to_string(), s.server_type()))
                .collect();
            topo.lock()
                .unwrap()
                .push((d.topology_type(), d.set_name().cloned(), servers));
        }
        SdamEvent::ServerHeartbeatSucceeded(e) => hb.lock().unwrap().push(e.reply),
        _ => {}
    }));
    let cmds = obs.commands.clone();
    opts.command_event_handler = Some(EventHandler::callback(move |ev: CommandEvent| {
        if let CommandEvent::Succeeded(e) = ev {
            cmds.lock().unwrap().push(e);
        }
    }));
    (Client::with_options(opts).expect("client"), obs)
}

fn as_i64(b: Option<&Bson>) -> Option<i64> {
    match b? {
        Bson::Int32(v) => Some(*v as i64),
        Bson::Int64(v) => Some(*v),
        Bson::Double(v) => Some(*v as i64),
        _ => None,
    }
}

fn ok(d: &Document) -> f64 {
    match d.get("ok") {
        Some(Bson::Double(v)) => *v,
        Some(Bson::Int32(v)) => *v as f64,
        Some(Bson::Int64(v)) => *v as f64,
        other => panic!("no numeric ok in {d} ({other:?})"),
    }
}

fn ids(docs: &[Document]) -> Vec<i64> {
    let mut v: Vec<i64> = docs.iter().map(|d| as_i64(d.get("_id")).unwrap()).collect();
    v.sort();
    v
}

// --------------------------------------------------------------------------
// topology / handshake
// --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_is_replica_set_with_primary() {
    let server = Server::start();
    let (client, obs) = client(&server, "").await;
    let ping = client
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .unwrap();
    assert_eq!(ok(&ping), 1.0);
    let (ty, set, servers) = obs.wait_topology(TopologyType::ReplicaSetWithPrimary).await;
    println!(
        "[{DRIVER}] mongodb://{}/: topology_type={ty:?} set_name={set:?} servers={servers:?}",
        server.addr()
    );
    assert_eq!(ty, TopologyType::ReplicaSetWithPrimary);
    assert_eq!(set.as_deref(), Some("rs0"));
    assert_eq!(servers, vec![(server.addr(), ServerType::RsPrimary)]);
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_with_replica_set_option_and_direct_connection() {
    let server = Server::start();
    let (c1, obs1) = client(&server, "?replicaSet=rs0").await;
    c1.database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .unwrap();
    let (ty, set, _) = obs1
        .wait_topology(TopologyType::ReplicaSetWithPrimary)
        .await;
    println!(
        "[{DRIVER}] mongodb://{}/?replicaSet=rs0: topology_type={ty:?} set_name={set:?}",
        server.addr()
    );
    assert_eq!(ty, TopologyType::ReplicaSetWithPrimary);
    c1.shutdown().await;

    let (c2, obs2) = client(&server, "?directConnection=true").await;
    c2.database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .unwrap();
    let (ty, _, _) = obs2.wait_topology(TopologyType::Single).await;
    println!(
        "[{DRIVER}] mongodb://{}/?directConnection=true: topology_type={ty:?}",
        server.addr()
    );
    assert_eq!(ty, TopologyType::Single);
    c2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_ismaster_buildinfo() {
    let server = Server::start();
    let (client, _) = client(&server, "").await;
    let admin = client.database("admin");
    let hello = admin.run_command(doc! {"hello": 1}).await.unwrap();
    assert_eq!(ok(&hello), 1.0);
    assert_eq!(hello.get_bool("isWritablePrimary").ok(), Some(true));
    assert_eq!(hello.get_str("setName").ok(), Some("rs0"));
    let hosts: Vec<&str> = hello
        .get_array("hosts")
        .unwrap()
        .iter()
        .filter_map(|h| h.as_str())
        .collect();
    assert!(hosts.contains(&server.addr().as_str()), "hosts={hosts:?}");
    assert_eq!(as_i64(hello.get("maxMessageSizeBytes")), Some(48_000_000));
    assert_eq!(
        as_i64(hello.get("maxBsonObjectSize")),
        Some(16 * 1024 * 1024)
    );
    let legacy = admin.run_command(doc! {"isMaster": 1}).await.unwrap();
    assert_eq!(legacy.get_bool("ismaster").ok(), Some(true));
    assert_eq!(legacy.get_str("setName").ok(), Some("rs0"));
    let info = admin.run_command(doc! {"buildInfo": 1}).await.unwrap();
    let version = info.get_str("version").expect("buildInfo.version");
    assert!(!version.is_empty());
    assert!(
        info.get_array("versionArray")
            .map(|a| a.len() >= 3)
            .unwrap_or(false),
        "{info}"
    );
    println!("[{DRIVER}] buildInfo.version={version}");
    client.shutdown().await;
}

// --------------------------------------------------------------------------
// CRUD
// --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_round_trip() {
    let server = Server::start();
    let (client, _) = client(&server, "").await;
    let db = client.database("rs_crud");
    let coll = db.collection::<Document>("people");

    // insert_one / find_one
    let res = coll
        .insert_one(doc! {"name": "ada", "age": 36, "tags": ["math", "code"]})
        .await
        .unwrap();
    let oid = res.inserted_id.as_object_id().expect("generated ObjectId");
    let got = coll
        .find_one(doc! {"_id": oid})
        .await
        .unwrap()
        .expect("found");
    assert_eq!(
        got,
        doc! {"_id": oid, "name": "ada", "age": 36, "tags": ["math", "code"]}
    );
    assert!(
        coll.find_one(doc! {"name": "nobody"})
            .await
            .unwrap()
            .is_none()
    );

    // insert_many / find with filters
    let nums = db.collection::<Document>("nums");
    let docs: Vec<Document> = (0..20)
        .map(|i| doc! {"_id": i, "n": i, "even": i % 2 == 0})
        .collect();
    let r = nums.insert_many(docs).await.unwrap();
    assert_eq!(r.inserted_ids.len(), 20);
    let evens: Vec<Document> = nums
        .find(doc! {"even": true})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids(&evens), (0..20).step_by(2).collect::<Vec<i64>>());
    let big: Vec<Document> = nums
        .find(doc! {"n": {"$gte": 15}})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids(&big), vec![15, 16, 17, 18, 19]);
    let both: Vec<Document> = nums
        .find(doc! {"n": {"$lt": 6}, "even": false})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids(&both), vec![1, 3, 5]);
    let proj = nums
        .find_one(doc! {"_id": 4})
        .projection(doc! {"n": 1, "_id": 0})
        .await
        .unwrap();
    assert_eq!(proj, Some(doc! {"n": 4}));

    // update_one / update_many / upsert
    let upd = db.collection::<Document>("upd");
    upd.insert_many(
        (0..10).map(|i| doc! {"_id": i, "group": if i < 5 {"a"} else {"b"}, "score": i}),
    )
    .await
    .unwrap();
    let r = upd
        .update_one(doc! {"_id": 3}, doc! {"$set": {"score": 300, "flag": true}})
        .await
        .unwrap();
    assert_eq!((r.matched_count, r.modified_count), (1, 1));
    assert_eq!(
        upd.find_one(doc! {"_id": 3}).await.unwrap(),
        Some(doc! {"_id": 3, "group": "a", "score": 300, "flag": true})
    );
    let r = upd
        .update_many(doc! {"group": "b"}, doc! {"$inc": {"score": 100}})
        .await
        .unwrap();
    assert_eq!((r.matched_count, r.modified_count), (5, 5));
    let b: Vec<Document> = upd
        .find(doc! {"group": "b"})
        .sort(doc! {"_id": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let scores: Vec<i64> = b.iter().map(|d| as_i64(d.get("score")).unwrap()).collect();
    assert_eq!(scores, vec![105, 106, 107, 108, 109]);
    let r = upd
        .update_one(doc! {"_id": "up"}, doc! {"$set": {"v": 1}})
        .upsert(true)
        .await
        .unwrap();
    assert_eq!(r.upserted_id, Some(Bson::String("up".into())));
    assert_eq!(
        upd.find_one(doc! {"_id": "up"}).await.unwrap(),
        Some(doc! {"_id": "up", "v": 1})
    );

    // replace_one
    let r = upd
        .replace_one(doc! {"_id": 1}, doc! {"c": 3})
        .await
        .unwrap();
    assert_eq!((r.matched_count, r.modified_count), (1, 1));
    assert_eq!(
        upd.find_one(doc! {"_id": 1}).await.unwrap(),
        Some(doc! {"_id": 1, "c": 3})
    );

    // delete_one / delete_many
    let dels = db.collection::<Document>("dels");
    dels.insert_many((0..30).map(|i| doc! {"_id": i, "k": i % 3}))
        .await
        .unwrap();
    assert_eq!(
        dels.delete_one(doc! {"k": 1}).await.unwrap().deleted_count,
        1
    );
    assert_eq!(
        dels.delete_many(doc! {"k": 2}).await.unwrap().deleted_count,
        10
    );
    assert_eq!(
        dels.delete_many(doc! {"k": 42})
            .await
            .unwrap()
            .deleted_count,
        0
    );
    let left: Vec<Document> = dels
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(left.len(), 19);
    assert!(left.iter().all(|d| as_i64(d.get("k")) != Some(2)));

    // counts: estimated_document_count and the count command
    assert_eq!(dels.estimated_document_count().await.unwrap(), 19);
    let n = db
        .run_command(doc! {"count": "dels", "query": {"k": 0}})
        .await
        .unwrap();
    assert_eq!(as_i64(n.get("n")), Some(10));
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_over_many_batches() {
    let server = Server::start();
    let (client, obs) = client(&server, "").await;
    let coll = client.database("rs_cursor").collection::<Document>("items");
    let pad = "p".repeat(64);
    coll.insert_many((0..1000i64).map(|i| doc! {"_id": i, "v": i * 2, "pad": pad.clone()}))
        .await
        .unwrap();
    obs.commands.lock().unwrap().clear();

    let docs: Vec<Document> = coll
        .find(doc! {})
        .batch_size(7)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(docs.len(), 1000);
    assert_eq!(ids(&docs), (0..1000).collect::<Vec<i64>>());
    assert!(
        docs.iter()
            .all(|d| as_i64(d.get("v")) == as_i64(d.get("_id")).map(|x| x * 2))
    );

    let finds = obs.succeeded("find");
    assert_eq!(finds.len(), 1);
    let first = finds[0].reply.get_document("cursor").unwrap();
    assert_eq!(first.get_array("firstBatch").unwrap().len(), 7);
    let get_mores = obs.succeeded("getMore");
    let sizes: Vec<usize> = get_mores
        .iter()
        .map(|e| {
            e.reply
                .get_document("cursor")
                .unwrap()
                .get_array("nextBatch")
                .unwrap()
                .len()
        })
        .collect();
    println!(
        "[{DRIVER}] 1000 docs with batch_size 7: 1 find + {} getMore",
        get_mores.len()
    );
    assert!(
        get_mores.len() == 142 || get_mores.len() == 143,
        "{sizes:?}"
    );
    assert_eq!(sizes.iter().sum::<usize>(), 993);
    assert!(sizes[..141].iter().all(|&s| s == 7), "{sizes:?}");
    let last_id = as_i64(
        get_mores
            .last()
            .unwrap()
            .reply
            .get_document("cursor")
            .unwrap()
            .get("id"),
    );
    assert_eq!(last_id, Some(0));

    let desc: Vec<Document> = coll
        .find(doc! {})
        .sort(doc! {"_id": -1})
        .batch_size(9)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let desc_ids: Vec<i64> = desc.iter().map(|d| as_i64(d.get("_id")).unwrap()).collect();
    assert_eq!(desc_ids, (0..1000).rev().collect::<Vec<i64>>());
    let lim: Vec<Document> = coll
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .skip(10)
        .limit(5)
        .batch_size(2)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let lim_ids: Vec<i64> = lim.iter().map(|d| as_i64(d.get("_id")).unwrap()).collect();
    assert_eq!(lim_ids, vec![10, 11, 12, 13, 14]);
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_cursors() {
    let server = Server::start();
    let (client, obs) = client(&server, "").await;
    let db = client.database("rs_kill");
    let coll = db.collection::<Document>("items");
    coll.insert_many((0..50).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    let mut cursor = coll.find(doc! {}).batch_size(5).await.unwrap();
    for _ in 0..3 {
        assert!(cursor.advance().await.unwrap());
    }
    let find = obs.succeeded("find").pop().expect("find event");
    let cid = as_i64(find.reply.get_document("cursor").unwrap().get("id")).unwrap();
    assert_ne!(
        cid, 0,
        "server returned cursor id 0 with documents remaining"
    );
    drop(cursor); // the driver sends killCursors in the background
    let deadline = Instant::now() + Duration::from_secs(10);
    while obs.succeeded("killCursors").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kills = obs.succeeded("killCursors");
    assert_eq!(kills.len(), 1, "killCursors not observed");
    let killed: Vec<i64> = kills[0]
        .reply
        .get_array("cursorsKilled")
        .unwrap()
        .iter()
        .filter_map(|b| as_i64(Some(b)))
        .collect();
    assert_eq!(killed, vec![cid]);
    let err = db
        .run_command(doc! {"getMore": cid, "collection": "items"})
        .await
        .expect_err("getMore on a killed cursor must fail");
    match *err.kind {
        ErrorKind::Command(ref c) => assert_eq!(c.code, 43, "{c:?}"),
        ref other => panic!("unexpected error kind: {other:?}"),
    }
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_and_collections() {
    let server = Server::start();
    let (client, _) = client(&server, "").await;
    let db = client.database("rs_ddl");
    db.create_collection("alpha").await.unwrap();
    db.collection::<Document>("beta")
        .insert_one(doc! {"x": 1})
        .await
        .unwrap();
    let mut names = db.list_collection_names().await.unwrap();
    names.sort();
    assert_eq!(names, vec!["alpha".to_string(), "beta".to_string()]);
    assert!(
        client
            .list_database_names()
            .await
            .unwrap()
            .contains(&"rs_ddl".to_string())
    );
    db.collection::<Document>("alpha").drop().await.unwrap();
    assert_eq!(
        db.list_collection_names().await.unwrap(),
        vec!["beta".to_string()]
    );
    db.drop().await.unwrap();
    assert!(
        !client
            .list_database_names()
            .await
            .unwrap()
            .contains(&"rs_ddl".to_string())
    );
    assert!(
        db.collection::<Document>("beta")
            .find_one(doc! {})
            .await
            .unwrap()
            .is_none()
    );
    client.shutdown().await;
}

// --------------------------------------------------------------------------
// errors
// --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_shapes() {
    let server = Server::start();
    let (client, _) = client(&server, "").await;
    let err = client
        .database("admin")
        .run_command(doc! {"definitelyNotARealCommand": 1})
        .await
        .expect_err("unknown command must fail");
    match *err.kind {
        ErrorKind::Command(ref c) => {
            assert_eq!(c.code, 59, "{c:?}");
            assert_eq!(c.code_name, "CommandNotFound");
            assert!(!c.message.is_empty());
        }
        ref other => panic!("unexpected error kind: {other:?}"),
    }

    let coll = client.database("rs_err").collection::<Document>("dups");
    coll.insert_one(doc! {"_id": 1, "v": "original"})
        .await
        .unwrap();
    let err = coll
        .insert_one(doc! {"_id": 1, "v": "second"})
        .await
        .expect_err("duplicate");
    match *err.kind {
        ErrorKind::Write(WriteFailure::WriteError(ref w)) => assert_eq!(w.code, 11000, "{w:?}"),
        ref other => panic!("unexpected error kind: {other:?}"),
    }
    assert_eq!(
        coll.find_one(doc! {"_id": 1}).await.unwrap(),
        Some(doc! {"_id": 1, "v": "original"})
    );
    let err = coll
        .insert_many(vec![doc! {"_id": 10}, doc! {"_id": 1}, doc! {"_id": 11}])
        .await
        .expect_err("duplicate in insert_many");
    match *err.kind {
        ErrorKind::InsertMany(ref e) => {
            let we = e.write_errors.as_ref().expect("write errors");
            let got: Vec<(usize, i32)> = we.iter().map(|w| (w.index, w.code)).collect();
            assert_eq!(got, vec![(1, 11000)]);
        }
        ref other => panic!("unexpected error kind: {other:?}"),
    }
    assert!(
        coll.find_one(doc! {"_id": 11}).await.unwrap().is_none(),
        "ordered insert must stop"
    );
    assert!(coll.find_one(doc! {"_id": 10}).await.unwrap().is_some());
    client.shutdown().await;
}

// --------------------------------------------------------------------------
// compression
// --------------------------------------------------------------------------

async fn compression_case(compressor: &str) {
    let server = Server::start();
    let (client, obs) = client(&server, &format!("?compressors={compressor}")).await;
    client
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .unwrap();
    let (ty, _, _) = obs.wait_topology(TopologyType::ReplicaSetWithPrimary).await;
    assert_eq!(ty, TopologyType::ReplicaSetWithPrimary);
    let coll = client
        .database(&format!("rs_comp_{compressor}"))
        .collection::<Document>("docs");
    let text = "mangrove ".repeat(2000);
    coll.insert_many((0..50).map(|i| doc! {"_id": i, "text": text.clone(), "i": i}))
        .await
        .unwrap();
    let got: Vec<Document> = coll
        .find(doc! {"i": {"$gte": 10}})
        .batch_size(8)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids(&got), (10..50).collect::<Vec<i64>>());
    assert!(
        got.iter()
            .all(|d| d.get_str("text").ok() == Some(text.as_str()))
    );
    assert_eq!(
        coll.update_many(doc! {}, doc! {"$set": {"seen": true}})
            .await
            .unwrap()
            .modified_count,
        50
    );
    assert_eq!(
        coll.delete_many(doc! {"i": {"$lt": 25}})
            .await
            .unwrap()
            .deleted_count,
        25
    );
    let agreed: Vec<Bson> = obs
        .heartbeats
        .lock()
        .unwrap()
        .iter()
        .filter_map(|r| r.get("compression").cloned())
        .collect();
    println!("[{DRIVER}] compressors={compressor}: handshake compression fields {agreed:?}");
    assert!(
        agreed.contains(&Bson::Array(vec![Bson::String(compressor.into())])),
        "handshake never agreed to {compressor}: {agreed:?}"
    );
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_snappy() {
    compression_case("snappy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_zlib() {
    compression_case("zlib").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_zstd() {
    compression_case("zstd").await;
}
