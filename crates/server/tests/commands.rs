//! Command semantics, against an in-process server over real TCP, with the wire crate as the
//! client codec.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bson::{Bson, Document, RawDocumentBuf, doc};
use mangrove_server::{Config, Server};
use mangrove_wire::{self as wire, HEADER_LEN, Header, Limits, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

async fn start(config: Config) -> SocketAddr {
    let dir = std::env::temp_dir().join(format!(
        "mangrove-server-test-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    let server = Server::bind(Config {
        port: 0,
        data_dir: dir,
        ..config
    })
    .await
    .expect("bind");
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(std::future::pending()));
    addr
}

struct Client {
    stream: TcpStream,
    next_id: i32,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            next_id: 1,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn read_reply(&mut self) -> Document {
        let mut header = [0u8; HEADER_LEN];
        self.stream.read_exact(&mut header).await.unwrap();
        let len = Header::parse(&header).message_length as usize;
        let mut frame = vec![0u8; len];
        frame[..HEADER_LEN].copy_from_slice(&header);
        self.stream
            .read_exact(&mut frame[HEADER_LEN..])
            .await
            .unwrap();
        match wire::decode(&frame, &Limits::default()).unwrap().request {
            Request::Msg(m) => Document::try_from(m.body).unwrap(),
            Request::Query(_) => panic!("unexpected OP_QUERY reply"),
        }
    }

    async fn cmd_flags(&mut self, db: &str, mut cmd: Document, flags: u32) -> Vec<u8> {
        cmd.insert("$db", db);
        let raw = RawDocumentBuf::try_from(&cmd).unwrap();
        self.next_id += 1;
        wire::encode_msg(self.next_id, 0, flags, &raw, &[], None)
    }

    async fn cmd(&mut self, db: &str, cmd: Document) -> Document {
        let bytes = self.cmd_flags(db, cmd, 0).await;
        self.send(&bytes).await;
        self.read_reply().await
    }

    async fn ok(&mut self, db: &str, cmd: Document) -> Document {
        let reply = self.cmd(db, cmd.clone()).await;
        assert_eq!(reply.get_f64("ok").ok(), Some(1.0), "{cmd} -> {reply}");
        reply
    }
}

fn code(reply: &Document) -> i32 {
    reply
        .get_i32("code")
        .unwrap_or_else(|_| panic!("no code in {reply}"))
}

fn batch(reply: &Document, field: &str) -> Vec<Document> {
    reply
        .get_document("cursor")
        .unwrap()
        .get_array(field)
        .unwrap()
        .iter()
        .map(|b| b.as_document().unwrap().clone())
        .collect()
}

fn cursor_id(reply: &Document) -> i64 {
    reply.get_document("cursor").unwrap().get_i64("id").unwrap()
}

async fn seed(c: &mut Client, n: i32) {
    let docs: Vec<Document> = (0..n).map(|i| doc! { "_id": i, "x": i % 10 }).collect();
    let reply = c.ok("db", doc! { "insert": "c", "documents": docs }).await;
    assert_eq!(reply.get_i32("n").unwrap(), n);
}

#[tokio::test]
async fn hello_reports_a_replica_set_primary() {
    let addr = start(Config::default()).await;
    let mut c = Client::connect(addr).await;
    let r = c
        .ok(
            "admin",
            doc! { "hello": 1, "helloOk": true, "compression": ["zstd", "bogus", "zlib"] },
        )
        .await;
    assert!(r.get_bool("isWritablePrimary").unwrap());
    assert_eq!(r.get_str("setName").unwrap(), "rs0");
    let me = addr.to_string();
    assert_eq!(
        r.get_array("hosts").unwrap(),
        &vec![Bson::String(me.clone())]
    );
    assert_eq!(r.get_str("primary").unwrap(), me);
    // MongoDB 8.0's: drivers offer `bulkWrite` only at 25.
    assert_eq!(r.get_i32("maxWireVersion").unwrap(), 25);
    assert_eq!(
        r.get_array("compression").unwrap(),
        &vec![Bson::from("zstd"), Bson::from("zlib")]
    );
    assert!(r.get_timestamp("operationTime").unwrap().time > 0);
    let legacy = c.ok("admin", doc! { "isMaster": 1 }).await;
    assert!(legacy.get_bool("ismaster").unwrap());
}

#[tokio::test]
async fn get_more_walks_every_batch_then_closes() {
    let addr = start(Config::default()).await;
    let mut c = Client::connect(addr).await;
    seed(&mut c, 250).await;
    let first = c.ok("db", doc! { "find": "c", "batchSize": 100 }).await;
    let mut seen: Vec<i32> = batch(&first, "firstBatch")
        .iter()
        .map(|d| d.get_i32("_id").unwrap())
        .collect();
    assert_eq!(seen.len(), 100);
    let mut id = cursor_id(&first);
    assert_ne!(id, 0);
    while id != 0 {
        let more = c
            .ok(
                "db",
                doc! { "getMore": id, "collection": "c", "batchSize": 100 },
            )
            .await;
        seen.extend(
            batch(&more, "nextBatch")
                .iter()
                .map(|d| d.get_i32("_id").unwrap()),
        );
        id = cursor_id(&more);
    }
    assert_eq!(seen, (0..250).collect::<Vec<_>>());
}

#[tokio::test]
async fn default_first_batch_is_101_and_limit_closes_cursor() {
    let addr = start(Config::default()).await;
    let mut c = Client::connect(addr).await;
    seed(&mut c, 300).await;
    let r = c.ok("db", doc! { "find": "c" }).await;
    assert_eq!(batch(&r, "firstBatch").len(), 101);
    let r = c.ok("db", doc! { "find": "c", "limit": 5 }).await;
    assert_eq!(batch(&r, "firstBatch").len(), 5);
    assert_eq!(cursor_id(&r), 0);
    let r = c.ok("db", doc! { "find": "c", "filter": { "x": 3 }, "sort": { "_id": -1 }, "skip": 2, "limit": 3 }).await;
    let ids: Vec<i32> = batch(&r, "firstBatch")
        .iter()
        .map(|d| d.get_i32("_id").unwrap())
        .collect();
    assert_eq!(ids, vec![273, 263, 253]);
}

#[tokio::test]
async fn idle_cursors_time_out() {
    let addr = start(Config {
        cursor_timeout: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let mut c = Client::connect(addr).await;
    seed(&mut c, 20).await;
    let r = c.ok("db", doc! { "find": "c", "batchSize": 2 }).await;
    let id = cursor_id(&r);
    // Used within the timeout, the cursor lives on.
    c.ok(
        "db",
        doc! { "getMore": id, "collection": "c", "batchSize": 2 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = c.cmd("db", doc! { "getMore": id, "collection": "c" }).await;
    assert_eq!(code(&r), 43, "{r}");
    assert_eq!(r.get_str("codeName").unwrap(), "CursorNotFound");
}

#[tokio::test]
async fn kill_cursors_reports_each_id() {
    let addr = start(Config::default()).await;
    let mut c = Client::connect(addr).await;
    seed(&mut c, 20).await;
    let id = cursor_id(&c.ok("db", doc! { "find": "c", "batchSize": 1 }).await);
    let r = c
        .ok("db", doc! { "killCursors": "c", "cursors": [id, 12345i64] })
        .await;
    assert_eq!(
        r.get_array("cursorsKilled").unwrap(),
        &vec![Bson::Int64(id)]
    );
    assert_eq!(
        r.get_array("cursorsNotFound").unwrap(),
        &vec![Bson::Int64(12345)]
    );
    let r = c.cmd("db", doc! { "getMore": id, "collection": "c" }).await;
    assert_eq!(code(&r), 43);
}

#[tokio::test]
async fn get_more_checks_namespace_and_type() {
    let addr = start(Config::default()).await;
    let mut c = Client::connect(addr).await;
    seed(&mut c, 20).await;
    let id = cursor_id(&c.ok("db", doc! { "find": "c", "batchSize": 1 }).await);
    let r = c
        .cmd("db", doc! { "getMore": id, "collection": "other" })
        .await;
    assert_eq!(code(&r), 13);
    let r = c
        .cmd("db", doc! { "getMore": 5i32, "collection": "c" })
        .await;
    assert_eq!(code(&r), 14);
    // The cursor survived the wrong-namespace attempt.
    c.ok("db", doc! { "getMore": id, "collection": "c" }).await;
}

#[tokio::test]
async fn errors_have_mongodb_codes_and_names() {
    let addr = start(Config::default()).await;
    let mut c = Client::connect(addr).await;
    let r = c.cmd("db", doc! { "frobnicate": 1 }).await;
    assert_eq!(
        (code(&r), r.get_str("codeName").unwrap()),
        (59, "CommandNotFound")
    );
    assert_eq!(r.get_f64("ok").unwrap(), 0.0);
    let r = c.cmd("db", doc! { "find": "c", "bogus": 1 }).await;
    assert_eq!(code(&r), 40415);
    assert_eq!(
        r.get_str("errmsg").unwrap(),
        "BSON field 'find.bogus' is an unknown field."
    );
    let r = c.cmd("db", doc! { "find": "c", "limit": "ten" }).await;
    assert_eq!(
        (code(&r), r.get_str("codeName").unwrap()),
        (14, "TypeMismatch")
    );
    let r = c.cmd("db", doc! { "find": "c", "limit": -1 }).await;
    assert_eq!(code(&r), 51024);
    let r = c
        .cmd(
            "db",
            doc! { "find": "c", "filter": { "x": { "$frob": 1 } } },
        )
        .await;
    assert_eq!(code(&r), 2);
    let r = c.cmd("db", doc! { "listDatabases": 1 }).await;
    assert_eq!(code(&r), 13, "listDatabases is admin-only: {r}");
    let r = c
        .cmd("db", doc! { "insert": "c", "documents": [{ "_id": [1] }] })
        .await;
    let errors = r.get_array("writeErrors").unwrap();
    assert_eq!(
        errors[0].as_document().unwrap().get_i32("code").unwrap(),
        53
    );
    // A missing $db in OP_MSG.
    let raw = RawDocumentBuf::try_from(&doc! { "ping": 1 }).unwrap();
    c.send(&wire::encode_msg(99, 0, 0, &raw, &[], None)).await;
    let r = c.read_reply().await;
    assert_eq!(code(&r), 40571);
}

#[tokio::test]
async fn duplicate_key_write_error_shape() {
    let addr = start(Config::default()).await;
    let mut c = Client::connect(addr).await;
    let r = c
        .ok("db", doc! { "insert": "c", "documents": [{ "_id": 1 }, { "_id": 1 }, { "_id": 2 }], "ordered": false })
        .await;
    assert_eq!(r.get_i32("n").unwrap(), 2);
    let err = r.get_array("writeErrors").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(err.get_i32("index").unwrap(), 1);
    assert_eq!(err.get_i32("code").unwrap(), 11000);
    assert_eq!(err.get_document("keyValue").unwrap(), &doc! { "_id": 1 });
    // Ordered inserts stop at the first error.
    let r = c
        .ok(
            "db",
            doc! { "insert": "c", "documents": [{ "_id": 3 }, { "_id": 1 }, { "_id": 4 }] },
        )
        .await;
    assert_eq!(r.get_i32("n").unwrap(), 1);
    let r = c.ok("db", doc! { "count": "c" }).await;
    assert_eq!(r.get_i64("n").unwrap(), 3);
}

#[tokio::test]
async fn int_and_double_ids_are_the_same_key() {
    let addr = start(Config::default()).await;
    let mut c = Client::connect(addr).await;
    c.ok("db", doc! { "insert": "c", "documents": [{ "_id": 1i32 }] })
        .await;
    let r = c
        .ok(
            "db",
            doc! { "insert": "c", "documents": [{ "_id": 1.0f64 }] },
        )
        .await;
    assert_eq!(r.get_array("writeErrors").unwrap().len(), 1);
    let r = c
        .ok("db", doc! { "find": "c", "filter": { "_id": 1i64 } })
        .await;
    assert_eq!(batch(&r, "firstBatch").len(), 1);
}

#[tokio::test]
async fn update_upsert_and_delete_report_counts() {
    let addr = start(Config::default()).await;
    let mut c = Client::connect(addr).await;
    seed(&mut c, 30).await;
    let r = c
        .ok(
            "db",
            doc! { "update": "c", "updates": [
                { "q": { "x": 1 }, "u": { "$inc": { "y": 1 } }, "multi": true },
                { "q": { "_id": "new" }, "u": { "$set": { "z": 1 } }, "upsert": true },
                { "q": { "_id": 0 }, "u": { "$set": { "x": 0 } } },
            ] },
        )
        .await;
    assert_eq!(r.get_i32("n").unwrap(), 3 + 1 + 1);
    assert_eq!(r.get_i32("nModified").unwrap(), 3);
    let up = r.get_array("upserted").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(up, doc! { "index": 1, "_id": "new" });
    let r = c.cmd("db", doc! { "update": "c", "updates": [{ "q": { "_id": 2 }, "u": { "$set": { "_id": 99 } } }] }).await;
    let err = r.get_array("writeErrors").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(err.get_i32("code").unwrap(), 66);
    let r = c
        .ok(
            "db",
            doc! { "delete": "c", "deletes": [{ "q": { "x": { "$gte": 8 } }, "limit": 0 }] },
        )
        .await;
    assert_eq!(r.get_i32("n").unwrap(), 6);
    let r = c
        .ok(
            "db",
            doc! { "delete": "c", "deletes": [{ "q": {}, "limit": 1 }] },
        )
        .await;
    assert_eq!(r.get_i32("n").unwrap(), 1);
    let r = c
        .ok("db", doc! { "count": "c", "query": { "x": { "$lt": 8 } } })
        .await;
    assert_eq!(r.get_i64("n").unwrap(), 30 - 6 - 1);
}

#[tokio::test]
async fn write_concern_beyond_one_node_is_reported() {
    let addr = start(Config::default()).await;
    let mut c = Client::connect(addr).await;
    let r = c
        .ok(
            "db",
            doc! { "insert": "c", "documents": [{ "_id": 1 }], "writeConcern": { "w": 3 } },
        )
        .await;
    let wce = r.get_document("writeConcernError").unwrap();
    assert_eq!(wce.get_i32("code").unwrap(), 100);
    let r = c
        .ok(
            "db",
            doc! { "insert": "c", "documents": [{ "_id": 2 }], "writeConcern": { "w": "dc-east" } },
        )
        .await;
    assert_eq!(
        r.get_document("writeConcernError")
            .unwrap()
            .get_i32("code")
            .unwrap(),
        79
    );
    let r = c.ok("db", doc! { "insert": "c", "documents": [{ "_id": 3 }], "writeConcern": { "w": "majority", "j": true } }).await;
    assert!(r.get("writeConcernError").is_none());
    // The writes themselves happened.
    assert_eq!(
        c.ok("db", doc! { "count": "c" })
            .await
            .get_i64("n")
            .unwrap(),
        3
    );
}

#[tokio::test]
async fn catalog_commands() {
    let addr = start(Config::default()).await;
    let mut c = Client::connect(addr).await;
    c.ok("db", doc! { "create": "a" }).await;
    // Same options again: idempotent, as in MongoDB 7.0.
    c.ok("db", doc! { "create": "a" }).await;
    // The simple collation is no collation: the same options.
    c.ok(
        "db",
        doc! { "create": "a", "collation": { "locale": "simple" } },
    )
    .await;
    let r = c
        .cmd(
            "db",
            doc! { "create": "a", "collation": { "locale": "en", "strength": 2 } },
        )
        .await;
    assert_eq!(code(&r), 48);
    let r = c
        .cmd(
            "db",
            doc! { "create": "enc", "encryptedFields": { "fields": [] } },
        )
        .await;
    assert_eq!(code(&r), 115);
    c.ok("db", doc! { "insert": "b", "documents": [{ "_id": 1 }] })
        .await;
    let r = c
        .ok("db", doc! { "listCollections": 1, "nameOnly": true })
        .await;
    let names: Vec<String> = batch(&r, "firstBatch")
        .iter()
        .map(|d| d.get_str("name").unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["a", "b"]);
    let r = c
        .ok(
            "db",
            doc! { "listCollections": 1, "filter": { "name": "b" } },
        )
        .await;
    assert_eq!(batch(&r, "firstBatch").len(), 1);
    c.ok("db", doc! { "drop": "a" }).await;
    c.ok("db", doc! { "drop": "never-existed" }).await;
    let r = c.ok("admin", doc! { "listDatabases": 1 }).await;
    let dbs: Vec<&str> = r
        .get_array("databases")
        .unwrap()
        .iter()
        .map(|d| d.as_document().unwrap().get_str("name").unwrap())
        .collect();
    // `admin`, `config` and `local` are always listed, as a replica-set mongod lists them.
    assert_eq!(dbs, vec!["admin", "config", "db", "local"]);
    c.ok("db", doc! { "dropDatabase": 1 }).await;
    let r = c
        .ok("admin", doc! { "listDatabases": 1, "nameOnly": true })
        .await;
    let names: Vec<&str> = r
        .get_array("databases")
        .unwrap()
        .iter()
        .map(|d| d.as_document().unwrap().get_str("name").unwrap())
        .collect();
    assert_eq!(names, vec!["admin", "config", "local"]);
}

#[tokio::test]
async fn more_to_come_gets_no_reply() {
    let addr = start(Config::default()).await;
    let mut c = Client::connect(addr).await;
    let bytes = c
        .cmd_flags(
            "db",
            doc! { "insert": "c", "documents": [{ "_id": 1 }], "writeConcern": { "w": 0 } },
            wire::msg_flags::MORE_TO_COME,
        )
        .await;
    c.send(&bytes).await;
    // The next reply on the connection answers the ping, not the insert.
    let r = c.ok("db", doc! { "ping": 1 }).await;
    assert!(r.get("n").is_none());
    assert_eq!(
        c.ok("db", doc! { "count": "c" })
            .await
            .get_i64("n")
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn op_query_answers_any_command() {
    let addr = start(Config::default()).await;
    let mut c = Client::connect(addr).await;
    let query = |name: &str| wire::OpQuery {
        flags: 0,
        full_collection_name: "admin.$cmd".into(),
        number_to_skip: 0,
        number_to_return: -1,
        query: RawDocumentBuf::try_from(&doc! { name: 1 }).unwrap(),
        return_fields_selector: None,
    };
    // Any command is answered over OP_QUERY now; an unknown one with CommandNotFound.
    for (name, expect_ok) in [("isMaster", true), ("noSuchCommand", false)] {
        c.send(&wire::encode_query(7, &query(name), None)).await;
        let mut header = [0u8; HEADER_LEN];
        c.stream.read_exact(&mut header).await.unwrap();
        let h = Header::parse(&header);
        assert_eq!(h.op_code, wire::opcode::OP_REPLY);
        assert_eq!(h.response_to, 7);
        let mut frame = vec![0u8; h.message_length as usize];
        frame[..HEADER_LEN].copy_from_slice(&header);
        c.stream.read_exact(&mut frame[HEADER_LEN..]).await.unwrap();
        let reply = wire::decode_reply(&frame, &Limits::default()).unwrap();
        let d = Document::try_from(reply.reply.documents[0].clone()).unwrap();
        if expect_ok {
            assert!(d.get_bool("ismaster").unwrap());
        } else {
            assert_eq!(d.get_i32("code").unwrap(), 59);
        }
    }
}

fn txn_cmd(mut cmd: Document, lsid: &Document, n: i64, start: bool) -> Document {
    cmd.insert("lsid", lsid.clone());
    cmd.insert("txnNumber", n);
    cmd.insert("autocommit", false);
    if start {
        cmd.insert("startTransaction", true);
    }
    cmd
}

fn labels(reply: &Document) -> Vec<String> {
    reply
        .get_array("errorLabels")
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn transaction_numbers_follow_mongodb_rules() {
    let addr = start(Config::default()).await;
    let mut c = Client::connect(addr).await;
    let lsid = doc! { "id": bson::Uuid::new() };
    c.ok(
        "db",
        txn_cmd(
            doc! { "insert": "c", "documents": [{ "_id": 1 }] },
            &lsid,
            5,
            true,
        ),
    )
    .await;
    // Restarting the active number, or going back, is refused.
    let r = c
        .cmd("db", txn_cmd(doc! { "find": "c" }, &lsid, 5, true))
        .await;
    assert_eq!(code(&r), 117, "{r}");
    let r = c
        .cmd("db", txn_cmd(doc! { "find": "c" }, &lsid, 4, true))
        .await;
    assert_eq!(code(&r), 225, "{r}");
    assert_eq!(r.get_str("codeName").unwrap(), "TransactionTooOld");
    // Continuing a number that never started.
    let r = c
        .cmd("db", txn_cmd(doc! { "find": "c" }, &lsid, 6, false))
        .await;
    assert_eq!(code(&r), 251, "{r}");
    assert_eq!(labels(&r), vec!["TransientTransactionError"]);
    // Write concern belongs to commit, not to statements.
    let r = c
        .cmd(
            "db",
            txn_cmd(
                doc! { "insert": "c", "documents": [{ "_id": 2 }], "writeConcern": { "w": 1 } },
                &lsid,
                5,
                false,
            ),
        )
        .await;
    assert_eq!(code(&r), 72, "{r}");
    // Refused before it ran, that statement left the transaction as it was: it commits.
    c.ok(
        "admin",
        txn_cmd(doc! { "commitTransaction": 1 }, &lsid, 5, false),
    )
    .await;
    // A newer number starts afresh, commits, and the commit can be retried.
    c.ok(
        "db",
        txn_cmd(
            doc! { "insert": "c", "documents": [{ "_id": 3 }] },
            &lsid,
            7,
            true,
        ),
    )
    .await;
    c.ok(
        "admin",
        txn_cmd(doc! { "commitTransaction": 1 }, &lsid, 7, false),
    )
    .await;
    c.ok(
        "admin",
        txn_cmd(doc! { "commitTransaction": 1 }, &lsid, 7, false),
    )
    .await;
    let r = c
        .cmd("db", txn_cmd(doc! { "find": "c" }, &lsid, 7, false))
        .await;
    assert_eq!(code(&r), 256, "{r}");
    let r = c
        .cmd(
            "admin",
            txn_cmd(doc! { "abortTransaction": 1 }, &lsid, 7, false),
        )
        .await;
    assert_eq!(code(&r), 256, "{r}");
    // Only the committed inserts are there.
    let r = c.ok("db", doc! { "find": "c" }).await;
    let ids: Vec<i32> = batch(&r, "firstBatch")
        .iter()
        .map(|d| d.get_i32("_id").unwrap())
        .collect();
    assert_eq!(ids, vec![1, 3]);
    // commitTransaction outside a transaction, and on another database.
    let r = c.cmd("admin", doc! { "commitTransaction": 1 }).await;
    assert_eq!(code(&r), 72);
    let r = c
        .cmd(
            "db",
            txn_cmd(doc! { "commitTransaction": 1 }, &lsid, 7, false),
        )
        .await;
    assert_eq!(code(&r), 13);
}

/// A server where an open transaction (txnNumber 1 of the returned lsid) has updated document
/// `{_id: 1}` of `db.c` and so holds its write intent.
async fn hold_in_transaction() -> (Client, Document) {
    let addr = start(Config::default()).await;
    let mut c = Client::connect(addr).await;
    let lsid = doc! { "id": bson::Uuid::new() };
    c.ok(
        "db",
        doc! { "insert": "c", "documents": [{ "_id": 1, "v": 0 }] },
    )
    .await;
    c.ok(
        "db",
        txn_cmd(
            doc! { "update": "c", "updates": [{ "q": { "_id": 1 }, "u": { "$set": { "v": 1 } } }] },
            &lsid,
            1,
            true,
        ),
    )
    .await;
    (c, lsid)
}

#[tokio::test]
async fn kill_all_sessions_aborts_open_transactions() {
    let (mut c, lsid) = hold_in_transaction().await;
    c.ok("admin", doc! { "killAllSessions": [] }).await;
    // The intent is released: a plain write goes through at once, and the transaction is gone.
    c.ok("db", doc! { "update": "c", "updates": [{ "q": { "_id": 1 }, "u": { "$set": { "v": 2 } } }], "maxTimeMS": 1000 })
        .await;
    let r = c
        .cmd(
            "admin",
            txn_cmd(doc! { "commitTransaction": 1 }, &lsid, 1, false),
        )
        .await;
    assert_eq!(code(&r), 251, "{r}");
}

#[tokio::test]
async fn plain_write_waits_out_maxtimems_behind_a_transaction() {
    let (mut c, lsid) = hold_in_transaction().await;
    let r = c
        .ok("db", doc! { "update": "c", "updates": [{ "q": { "_id": 1 }, "u": { "$set": { "v": 2 } } }], "maxTimeMS": 200 })
        .await;
    let err = r.get_array("writeErrors").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(err.get_i32("code").unwrap(), 50, "{r}");
    c.ok(
        "admin",
        txn_cmd(doc! { "commitTransaction": 1 }, &lsid, 1, false),
    )
    .await;
    let r = c.ok("db", doc! { "find": "c" }).await;
    assert_eq!(batch(&r, "firstBatch")[0].get_i32("v").unwrap(), 1);
}

#[tokio::test]
async fn positional_and_array_filter_updates() {
    let addr = start(Config::default()).await;
    let mut c = Client::connect(addr).await;
    c.ok("db", doc! { "insert": "c", "documents": [{ "_id": 1, "grades": [80, 95, 70], "items": [{ "q": 1 }, { "q": 5 }] }] })
        .await;
    c.ok("db", doc! { "update": "c", "updates": [{ "q": { "grades": 95 }, "u": { "$set": { "grades.$": 96 } } }] })
        .await;
    c.ok(
        "db",
        doc! { "update": "c", "updates": [{
            "q": { "_id": 1 },
            "u": { "$inc": { "items.$[big].q": 10 } },
            "arrayFilters": [{ "big.q": { "$gte": 5 } }],
        }] },
    )
    .await;
    let r = c.ok("db", doc! { "find": "c" }).await;
    let d = &batch(&r, "firstBatch")[0];
    assert_eq!(
        d.get_array("grades").unwrap(),
        &vec![Bson::Int32(80), Bson::Int32(96), Bson::Int32(70)]
    );
    assert_eq!(
        d.get_array("items").unwrap(),
        &vec![
            Bson::Document(doc! { "q": 1 }),
            Bson::Document(doc! { "q": 15 })
        ]
    );
}
