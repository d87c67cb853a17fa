//! Schema validation through the Rust driver against a real server: `create` and `collMod`
//! with `validator`, `validationLevel` and `validationAction`; DocumentValidationFailure (121)
//! with its `errInfo` on inserts, updates, upserts, findAndModify and `$out`; `moderate`,
//! `warn`, `bypassDocumentValidation`, transactions, and a restart.

use crate::common::{Server, all_docs, driver_client, op_msg, round_trip, spawn_on_data_dir};
use bson::{Bson, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::{Collection, Database};

/// The code of a failed command or write.
fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    match *e.kind {
        ErrorKind::Command(ref c) => Some(c.code),
        ErrorKind::InsertMany(ref m) => m.write_errors.as_ref()?.first().map(|w| w.code),
        ErrorKind::Write(WriteFailure::WriteError(ref w)) => Some(w.code),
        _ => None,
    }
}

/// The write error of a single-document write (its code must be 121), with its `errInfo`.
fn validation_failure(e: &mongodb::error::Error) -> Document {
    match *e.kind {
        ErrorKind::Write(WriteFailure::WriteError(ref w)) => {
            assert_eq!(w.code, 121, "{e}");
            assert_eq!(w.message, "Document failed validation");
            w.details.clone().expect("errInfo")
        }
        ref other => panic!("not a write error: {other:?}"),
    }
}

async fn command_code(db: &Database, command: Document) -> i32 {
    match db.run_command(command.clone()).await {
        Ok(reply) => panic!("{command} succeeded: {reply}"),
        Err(e) => error_code(&e).unwrap_or_else(|| panic!("{command}: {e}")),
    }
}

async fn options_of(db: &Database, name: &str) -> Document {
    let reply = db
        .run_command(doc! { "listCollections": 1, "filter": { "name": name } })
        .await
        .unwrap();
    let batch = reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap();
    assert_eq!(batch.len(), 1, "{reply}");
    batch[0]
        .as_document()
        .unwrap()
        .get_document("options")
        .unwrap()
        .clone()
}

fn a_above_5() -> Document {
    doc! { "a": { "$gt": 5 } }
}

async fn with_validator(db: &Database, name: &str, extra: Document) -> Collection<Document> {
    let mut create = doc! { "create": name, "validator": a_above_5() };
    create.extend(extra);
    db.run_command(create).await.unwrap();
    db.collection(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_are_checked_with_err_info() {
    let server = Server::start();
    let client = driver_client(server.port).await;
    let db = client.database("val");
    let coll = with_validator(&db, "c", doc! {}).await;
    // Stored and shown as given: no level or action when none was given, as mongod.
    assert_eq!(
        options_of(&db, "c").await,
        doc! { "validator": a_above_5() }
    );

    coll.insert_one(doc! { "_id": 1, "a": 6 }).await.unwrap();
    let e = coll
        .insert_one(doc! { "_id": 2, "a": 3 })
        .await
        .unwrap_err();
    assert_eq!(
        validation_failure(&e),
        doc! {
            "failingDocumentId": 2,
            "details": {
                "operatorName": "$gt",
                "specifiedAs": { "a": { "$gt": 5 } },
                "reason": "comparison failed",
                "consideredValue": 3,
            },
        }
    );

    // A batch: ordered stops at the first failure, unordered goes on; each failure is a write
    // error with its index, code and errInfo.
    let docs = vec![
        doc! { "_id": 10, "a": 7 },
        doc! { "_id": 11 },
        doc! { "_id": 12, "a": 8 },
    ];
    let reply = db
        .run_command(doc! { "insert": "c", "documents": docs.clone() })
        .await
        .unwrap();
    assert_eq!(reply.get_i32("n").unwrap(), 1, "{reply}");
    let errors = reply.get_array("writeErrors").unwrap();
    assert_eq!(errors.len(), 1);
    let first = errors[0].as_document().unwrap();
    assert_eq!(first.get_i32("index").unwrap(), 1);
    assert_eq!(first.get_i32("code").unwrap(), 121);
    assert_eq!(
        first.get_str("errmsg").unwrap(),
        "Document failed validation"
    );
    let info = first.get_document("errInfo").unwrap();
    assert_eq!(info.get_i32("failingDocumentId").unwrap(), 11);
    assert_eq!(
        info.get_document("details")
            .unwrap()
            .get_str("reason")
            .unwrap(),
        "field was missing"
    );
    let unordered = doc! { "insert": "c", "documents": [{ "_id": 20 }, { "_id": 21, "a": 9 }], "ordered": false };
    let reply = db.run_command(unordered).await.unwrap();
    assert_eq!(reply.get_i32("n").unwrap(), 1, "{reply}");
    let ids: Vec<Bson> = all_docs(&coll)
        .await
        .iter()
        .map(|d| d.get("_id").unwrap().clone())
        .collect();
    assert_eq!(ids, vec![Bson::Int32(1), Bson::Int32(10), Bson::Int32(21)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_upserts_and_find_and_modify_are_checked() {
    let server = Server::start();
    let client = driver_client(server.port).await;
    let db = client.database("val");
    let coll = with_validator(&db, "c", doc! {}).await;
    coll.insert_one(doc! { "_id": 1, "a": 6 }).await.unwrap();

    let e = coll
        .update_one(doc! { "_id": 1 }, doc! { "$set": { "a": 1 } })
        .await
        .unwrap_err();
    assert_eq!(
        validation_failure(&e).get_i32("failingDocumentId").unwrap(),
        1
    );
    let e = coll
        .replace_one(doc! { "_id": 1 }, doc! { "b": 1 })
        .await
        .unwrap_err();
    validation_failure(&e);
    let e = coll
        .update_one(doc! { "_id": 2 }, doc! { "$set": { "a": 0 } })
        .upsert(true)
        .await
        .unwrap_err();
    assert_eq!(
        validation_failure(&e).get_i32("failingDocumentId").unwrap(),
        2
    );
    let e = coll
        .update_many(doc! {}, doc! { "$inc": { "a": -10 } })
        .await
        .unwrap_err();
    validation_failure(&e);
    assert_eq!(all_docs(&coll).await, vec![doc! { "_id": 1, "a": 6 }]);

    // findAndModify fails the command, with errInfo at the top level of the reply.
    let mut conn = server.connect();
    let fam = doc! {
        "findAndModify": "c", "query": { "_id": 1 }, "update": { "$set": { "a": 2 } }, "$db": "val",
    };
    let (_, reply) = round_trip(&mut conn, &op_msg(1, &fam));
    assert_eq!(reply.get_i32("code").unwrap(), 121, "{reply}");
    assert_eq!(
        reply.get_str("codeName").unwrap(),
        "DocumentValidationFailure"
    );
    let info = reply.get_document("errInfo").unwrap();
    assert_eq!(info.get_i32("failingDocumentId").unwrap(), 1);
    assert_eq!(
        info.get_document("details")
            .unwrap()
            .get_i32("consideredValue")
            .unwrap(),
        2
    );
    // A valid change goes through.
    coll.update_one(doc! { "_id": 1 }, doc! { "$set": { "a": 60 } })
        .await
        .unwrap();
    assert_eq!(all_docs(&coll).await, vec![doc! { "_id": 1, "a": 60 }]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderate_strict_off_warn_and_bypass() {
    let server = Server::start();
    let client = driver_client(server.port).await;
    let db = client.database("val");
    let coll = with_validator(&db, "c", doc! {}).await;
    // bypassDocumentValidation lets invalid documents in.
    let bypass = doc! {
        "insert": "c", "documents": [{ "_id": 1, "a": 1 }, { "_id": 2, "a": 10 }],
        "bypassDocumentValidation": true,
    };
    let reply = db.run_command(bypass).await.unwrap();
    assert_eq!(reply.get_i32("n").unwrap(), 2, "{reply}");

    // strict: even an already invalid document must become valid.
    let invalid_to_invalid = doc! { "$set": { "a": 2 } };
    let e = coll
        .update_one(doc! { "_id": 1 }, invalid_to_invalid.clone())
        .await
        .unwrap_err();
    validation_failure(&e);

    db.run_command(doc! { "collMod": "c", "validationLevel": "moderate" })
        .await
        .unwrap();
    assert_eq!(
        options_of(&db, "c").await,
        doc! { "validator": a_above_5(), "validationLevel": "moderate" }
    );
    // moderate: an invalid document may stay invalid; a valid one may not become invalid.
    coll.update_one(doc! { "_id": 1 }, invalid_to_invalid.clone())
        .await
        .unwrap();
    let e = coll
        .update_one(doc! { "_id": 2 }, doc! { "$set": { "a": 3 } })
        .await
        .unwrap_err();
    validation_failure(&e);
    // ... and inserts are always checked.
    let e = coll
        .insert_one(doc! { "_id": 3, "a": 0 })
        .await
        .unwrap_err();
    validation_failure(&e);

    db.run_command(doc! { "collMod": "c", "validationLevel": "off" })
        .await
        .unwrap();
    coll.insert_one(doc! { "_id": 4, "a": 0 }).await.unwrap();

    db.run_command(
        doc! { "collMod": "c", "validationLevel": "strict", "validationAction": "warn" },
    )
    .await
    .unwrap();
    coll.insert_one(doc! { "_id": "warned", "a": 0 })
        .await
        .unwrap();
    let mut logged = false;
    for _ in 0..50 {
        let log = std::fs::read_to_string(&server.log_path).unwrap_or_default();
        if log
            .lines()
            .any(|l| l.contains("Document would fail validation") && l.contains("warned"))
        {
            logged = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(logged, "no warning in the log:\n{}", server.log_tail(20));

    db.run_command(doc! { "collMod": "c", "validationAction": "error" })
        .await
        .unwrap();
    let update = doc! {
        "update": "c", "updates": [{ "q": { "_id": 2 }, "u": { "$set": { "a": 0 } } }],
        "bypassDocumentValidation": true,
    };
    let reply = db.run_command(update).await.unwrap();
    assert_eq!(reply.get_i32("nModified").unwrap(), 1, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coll_mod_json_schema_and_bad_options() {
    let server = Server::start();
    let client = driver_client(server.port).await;
    let db = client.database("val");
    db.run_command(doc! { "create": "c" }).await.unwrap();
    let coll = db.collection::<Document>("c");
    let schema = doc! { "$jsonSchema": {
        "required": ["name"],
        "properties": { "name": { "bsonType": "string" } },
    } };
    let reply = db
        .run_command(
            doc! { "collMod": "c", "validator": schema.clone(), "validationAction": "error" },
        )
        .await
        .unwrap();
    assert_eq!(reply.get_f64("ok").unwrap(), 1.0, "{reply}");
    assert_eq!(
        options_of(&db, "c").await,
        doc! { "validator": schema.clone(), "validationAction": "error" }
    );
    let e = coll
        .insert_one(doc! { "_id": 1, "name": 5 })
        .await
        .unwrap_err();
    let details = validation_failure(&e)
        .get_document("details")
        .unwrap()
        .clone();
    assert_eq!(details.get_str("operatorName").unwrap(), "$jsonSchema");
    let rules = details.get_array("schemaRulesNotSatisfied").unwrap();
    let properties = rules[0].as_document().unwrap();
    assert_eq!(properties.get_str("operatorName").unwrap(), "properties");
    let e = coll.insert_one(doc! { "_id": 2 }).await.unwrap_err();
    let details = validation_failure(&e)
        .get_document("details")
        .unwrap()
        .clone();
    let required = details.get_array("schemaRulesNotSatisfied").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(
        required,
        doc! { "operatorName": "required", "specifiedAs": { "required": ["name"] }, "missingProperties": ["name"] }
    );
    coll.insert_one(doc! { "_id": 3, "name": "ok" })
        .await
        .unwrap();

    for (command, code) in [
        (doc! { "create": "d", "validationLevel": "bogus" }, 2),
        (doc! { "create": "d", "validationAction": "bogus" }, 2),
        (doc! { "create": "d", "validationLevel": 1 }, 14),
        (doc! { "create": "d", "validator": "x" }, 14),
        (doc! { "create": "d", "validator": { "$where": "true" } }, 2),
        (
            doc! { "create": "d", "validator": { "a": { "$bogus": 1 } } },
            2,
        ),
        (
            doc! { "create": "v", "viewOn": "c", "pipeline": [], "validator": { "a": 1 } },
            72,
        ),
        (doc! { "collMod": "c", "validationLevel": "bogus" }, 2),
        (
            doc! { "collMod": "c", "validator": { "$text": { "$search": "x" } } },
            2,
        ),
        (doc! { "collMod": "missing", "validator": { "a": 1 } }, 26),
    ] {
        assert_eq!(command_code(&db, command.clone()).await, code, "{command}");
    }
    let e = client
        .database("admin")
        .run_command(doc! { "create": "x", "validator": { "a": 1 } })
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), Some(72), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_and_out_are_checked() {
    let server = Server::start();
    let client = driver_client(server.port).await;
    let db = client.database("val");
    let coll = with_validator(&db, "c", doc! {}).await;
    let mut session = client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    coll.insert_one(doc! { "_id": 1, "a": 9 })
        .session(&mut session)
        .await
        .unwrap();
    let e = coll
        .insert_one(doc! { "_id": 2, "a": 0 })
        .session(&mut session)
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), Some(121), "{e}");
    let _ = session.abort_transaction().await;
    assert!(all_docs(&coll).await.is_empty());

    // $out into a validated collection: refused unless bypassed.
    let src = db.collection::<Document>("src");
    src.insert_many(vec![doc! { "_id": 1, "a": 1 }])
        .await
        .unwrap();
    let out = doc! { "aggregate": "src", "pipeline": [{ "$out": "c" }], "cursor": {} };
    assert_eq!(command_code(&db, out.clone()).await, 121);
    let mut bypassed = out.clone();
    bypassed.insert("bypassDocumentValidation", true);
    db.run_command(bypassed).await.unwrap();
    assert_eq!(all_docs(&coll).await, vec![doc! { "_id": 1, "a": 1 }]);
    let merge = doc! {
        "aggregate": "src", "pipeline": [{ "$set": { "a": 0 } }, { "$merge": { "into": "c" } }], "cursor": {},
    };
    assert_eq!(command_code(&db, merge).await, 121);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_options_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("mangrove-validation-{}", std::process::id()));
    let data = dir.join("data");
    let (mut child, port) = spawn_on_data_dir(&data, None);
    let client = driver_client(port).await;
    let db = client.database("val");
    with_validator(
        &db,
        "c",
        doc! { "validationLevel": "moderate", "validationAction": "error" },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut child, port) = spawn_on_data_dir(&data, None);
    let client = driver_client(port).await;
    let db = client.database("val");
    assert_eq!(
        options_of(&db, "c").await,
        doc! { "validator": a_above_5(), "validationLevel": "moderate", "validationAction": "error" }
    );
    let e = db
        .collection::<Document>("c")
        .insert_one(doc! { "a": 1 })
        .await
        .unwrap_err();
    validation_failure(&e);
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

async fn user_client(port: u16, user: &str) -> mongodb::Client {
    let mut options =
        mongodb::options::ClientOptions::parse(format!("mongodb://127.0.0.1:{port}/"))
            .await
            .unwrap();
    options.server_selection_timeout = Some(std::time::Duration::from_secs(2));
    options.retry_writes = Some(false);
    options.credential = Some(
        mongodb::options::Credential::builder()
            .username(user.to_string())
            .password("pw".to_string())
            .source("admin".to_string())
            .mechanism(mongodb::options::AuthMechanism::ScramSha256)
            .build(),
    );
    mongodb::Client::with_options(options).unwrap()
}

/// Under `--auth`, bypassing validation needs more than readWrite: mongod's
/// `bypassDocumentValidation` action, which dbAdmin grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_needs_privilege_under_auth() {
    let server = Server::start_with(&["--replset", "rs0", "--auth"]);
    let anon = driver_client(server.port).await;
    anon.database("admin")
        .run_command(doc! { "createUser": "root", "pwd": "pw", "roles": ["root"] })
        .await
        .unwrap();
    let root = user_client(server.port, "root").await;
    let writer = doc! { "createUser": "writer", "pwd": "pw", "roles": [{ "role": "readWrite", "db": "val" }] };
    root.database("admin").run_command(writer).await.unwrap();
    with_validator(&root.database("val"), "c", doc! {}).await;

    let bypass = doc! {
        "insert": "c", "documents": [{ "_id": 1, "a": 0 }], "bypassDocumentValidation": true,
    };
    let writer = user_client(server.port, "writer").await;
    assert_eq!(
        command_code(&writer.database("val"), bypass.clone()).await,
        13
    );
    let reply = root.database("val").run_command(bypass).await.unwrap();
    assert_eq!(reply.get_i32("n").unwrap(), 1, "{reply}");
}
