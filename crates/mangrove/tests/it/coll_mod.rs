//! `collMod` and `create` with `changeStreamPreAndPostImages` through the Rust driver against
//! a real server, their errors for bad input, and what `mangrove log show` then prints: update
//! descriptions, replacements, pre-images and the commands' annotations.

use crate::common::{Server, driver_client, run_tool};
use bson::{Document, doc};
use mongodb::Database;
use mongodb::error::ErrorKind;

async fn code_of(db: &Database, command: Document) -> i32 {
    match db.run_command(command.clone()).await {
        Ok(reply) => panic!("{command} succeeded: {reply}"),
        Err(e) => match *e.kind {
            ErrorKind::Command(ref c) => c.code,
            ref other => panic!("{command}: not a command error: {other:?}"),
        },
    }
}

/// The options `listCollections` reports for `name`.
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
    let spec = batch[0].as_document().unwrap();
    spec.get_document("options").unwrap().clone()
}

fn enabled(on: bool) -> Document {
    doc! { "changeStreamPreAndPostImages": { "enabled": on } }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_coll_mod_set_pre_and_post_images() {
    let server = Server::start();
    let client = driver_client(server.port).await;
    let db = client.database("cs");

    let mut create = doc! { "create": "with" };
    create.extend(enabled(true));
    db.run_command(create).await.unwrap();
    assert_eq!(options_of(&db, "with").await, enabled(true));

    db.run_command(doc! { "create": "plain" }).await.unwrap();
    assert_eq!(options_of(&db, "plain").await, doc! {});
    let mut coll_mod = doc! { "collMod": "plain" };
    coll_mod.extend(enabled(true));
    db.run_command(coll_mod).await.unwrap();
    assert_eq!(options_of(&db, "plain").await, enabled(true));
    let mut coll_mod = doc! { "collMod": "plain" };
    coll_mod.extend(enabled(false));
    db.run_command(coll_mod).await.unwrap();
    // Disabled is stored as no option, as mongod stores it.
    assert_eq!(options_of(&db, "plain").await, doc! {});
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pre_and_post_images_options_are_refused() {
    let server = Server::start();
    let client = driver_client(server.port).await;
    let db = client.database("cs");
    db.run_command(doc! { "create": "c" }).await.unwrap();
    let bad = [
        (doc! { "changeStreamPreAndPostImages": 1 }, 14),
        (
            doc! { "changeStreamPreAndPostImages": { "enabled": 1 } },
            14,
        ),
        (doc! { "changeStreamPreAndPostImages": {} }, 40414),
        (
            doc! { "changeStreamPreAndPostImages": { "enabled": true, "x": 1 } },
            40415,
        ),
    ];
    for (option, code) in &bad {
        let mut create = doc! { "create": "new" };
        create.extend(option.clone());
        assert_eq!(code_of(&db, create).await, *code, "create {option}");
        let mut coll_mod = doc! { "collMod": "c" };
        coll_mod.extend(option.clone());
        assert_eq!(code_of(&db, coll_mod).await, *code, "collMod {option}");
    }
    let mut missing = doc! { "collMod": "missing" };
    missing.extend(enabled(true));
    assert_eq!(code_of(&db, missing).await, 26);
    let not_capped = doc! { "collMod": "c", "cappedSize": 4096 };
    assert_eq!(code_of(&db, not_capped).await, 72);
    let unsupported = doc! { "collMod": "c", "dryRun": true };
    assert_eq!(code_of(&db, unsupported).await, 72);
    let unknown = doc! { "collMod": "c", "noSuchOption": 1 };
    assert_eq!(code_of(&db, unknown).await, 40415);
    // Nothing was created or changed by the refused commands.
    assert_eq!(options_of(&db, "c").await, doc! {});
    let names = db.list_collection_names().await.unwrap();
    assert_eq!(names, vec!["c".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_show_prints_descriptions_pre_images_and_annotations() {
    let server = Server::start();
    let client = driver_client(server.port).await;
    let db = client.database("cs");
    let coll = db.collection::<Document>("c");
    coll.insert_one(doc! { "_id": 1, "a": 1 }).await.unwrap();
    let mut coll_mod = doc! { "collMod": "c" };
    coll_mod.extend(enabled(true));
    db.run_command(coll_mod).await.unwrap();
    coll.update_one(doc! { "_id": 1 }, doc! { "$set": { "a": 2 } })
        .await
        .unwrap();
    coll.replace_one(doc! { "_id": 1 }, doc! { "b": 1 })
        .await
        .unwrap();
    let admin = client.database("admin");
    admin
        .run_command(doc! { "renameCollection": "cs.c", "to": "cs.d" })
        .await
        .unwrap();
    db.run_command(doc! { "dropDatabase": 1 }).await.unwrap();

    let data = server.dir.join("data");
    let (code, out) = run_tool(&["log", "show", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    let line = |needle: &str| {
        out.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{out}"))
            .to_string()
    };
    assert!(line("collMod").contains("changeStreamPreAndPostImages"));
    let update = line("updatedFields");
    assert!(
        update.contains("\"a\": 2") && update.contains("+pre"),
        "{update}"
    );
    assert!(line("replaced").contains("+pre"));
    let rename = line("renameCollection");
    assert!(rename.contains("\"to\": \"cs.d\""), "{rename}");
    assert!(line("dropDatabase").contains("cs.$cmd"));
}
