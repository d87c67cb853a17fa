//! The Ruby driver transaction guide (`../shared/seeds/004_*.txt`), scenario by scenario,
//! through the Rust `mongodb` crate against a server started with `--enable-test-commands`
//! (fail points make a commit's outcome unknown). Each scenario prints what the driver saw.

use std::time::{Duration, Instant};

use crate::common;
use crate::common::Server;
use bson::{Document, doc};
use mongodb::Client;
use mongodb::error::{TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::{Acknowledgment, ReadConcern, WriteConcern};

async fn client(server: &Server) -> Client {
    let mut options = mongodb::options::ClientOptions::parse(server.uri())
        .await
        .expect("parse URI");
    options.server_selection_timeout = Some(Duration::from_secs(10));
    Client::with_options(options).expect("client")
}

async fn fail_point(client: &Client, mode: bson::Bson, data: Document) {
    client
        .database("admin")
        .run_command(doc! { "configureFailPoint": "failCommand", "mode": mode, "data": data })
        .await
        .expect("configureFailPoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_guide_scenarios_through_the_rust_driver() {
    let server = Server::start_with(&["--enable-test-commands"]);
    let c1 = client(&server).await;

    // with_transaction commits.
    let coll = c1.database("seed1").collection::<Document>("coll");
    let mut session = c1.start_session().await.unwrap();
    session
        .start_transaction()
        .and_run2(async |s| {
            coll.insert_one(doc! { "hello": "world" })
                .session(s)
                .await
                .map(|_| ())
        })
        .await
        .expect("with_transaction");
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 1);
    println!("[seed/rust] and_run: insert_one({{hello: 'world'}}) committed");

    // with_transaction retries a transient error.
    let coll = c1.database("seed2").collection::<Document>("coll");
    coll.insert_one(doc! { "_id": 0 }).await.unwrap();
    fail_point(
        &c1,
        doc! { "times": 1 }.into(),
        doc! { "failCommands": ["insert"], "errorCode": 112 },
    )
    .await;
    let mut calls = 0;
    session
        .start_transaction()
        .and_run2(async |s| {
            calls += 1;
            coll.insert_one(doc! { "hello": "world" })
                .session(s)
                .await
                .map(|_| ())
        })
        .await
        .expect("with_transaction after a transient error");
    assert_eq!(calls, 2);
    println!(
        "[seed/rust] and_run: callback ran {calls} times (WriteConflict labelled {TRANSIENT_TRANSACTION_ERROR}, then committed)"
    );

    // Options, and the low-level API: commit keeps, abort drops, dropping the session aborts.
    let coll = c1.database("seed4").collection::<Document>("coll");
    session
        .start_transaction()
        .read_concern(ReadConcern::majority())
        .write_concern(WriteConcern::majority())
        .await
        .unwrap();
    coll.insert_one(doc! { "n": 1 })
        .session(&mut session)
        .await
        .unwrap();
    session.commit_transaction().await.unwrap();
    session.start_transaction().await.unwrap();
    coll.insert_one(doc! { "n": 2 })
        .session(&mut session)
        .await
        .unwrap();
    session.abort_transaction().await.unwrap();
    session
        .start_transaction()
        .write_concern(WriteConcern::builder().w(Acknowledgment::Nodes(3)).build())
        .await
        .unwrap();
    coll.insert_one(doc! { "n": 3 })
        .session(&mut session)
        .await
        .unwrap();
    let w3 = session.commit_transaction().await.unwrap_err();
    assert!(
        w3.to_string().contains("UnsatisfiableWriteConcern") || w3.to_string().contains("100"),
        "{w3}"
    );
    let mut ns: Vec<i32> = common::all_docs(&coll)
        .await
        .iter()
        .map(|d| d.get_i32("n").unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, vec![1, 3]);
    println!(
        "[seed/rust] commit kept n=1, abort dropped n=2; w: 3 -> UnsatisfiableWriteConcern (the commit applied)"
    );

    // A drop from a second client hangs while a transaction holds the namespace, and goes
    // ahead as soon as the session ends.
    let db = c1.database("test_db");
    db.collection::<Document>("foo")
        .insert_one(doc! { "test": 1 })
        .await
        .unwrap();
    let mut holder = c1.start_session().await.unwrap();
    holder.start_transaction().await.unwrap();
    db.collection::<Document>("foo")
        .insert_one(doc! { "test": 2 })
        .session(&mut holder)
        .await
        .unwrap();
    let c2 = client(&server).await;
    let drop = tokio::spawn(async move { c2.database("test_db").drop().await });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !drop.is_finished(),
        "the drop did not wait for the open transaction"
    );
    let ended = Instant::now();
    // What end_session does in the guide: abort the open transaction.
    holder.abort_transaction().await.unwrap();
    drop.await
        .unwrap()
        .expect("drop after the transaction ended");
    println!(
        "[seed/rust] c2 drop hung while the transaction was open; proceeded {:?} after the session's transaction ended",
        ended.elapsed()
    );

    // Commit retry on UnknownTransactionCommitResult.
    let coll = c1.database("seed6").collection::<Document>("coll");
    coll.insert_one(doc! { "_id": 0 }).await.unwrap();
    session.start_transaction().await.unwrap();
    coll.insert_one(doc! { "_id": 1 })
        .session(&mut session)
        .await
        .unwrap();
    fail_point(
        &c1,
        doc! { "times": 2 }.into(),
        doc! { "failCommands": ["commitTransaction"], "closeConnection": true },
    )
    .await;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match session.commit_transaction().await {
            Ok(()) => break,
            Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && attempts < 5 => {}
            Err(e) => panic!("commit failed: {e}"),
        }
    }
    assert_eq!(coll.count_documents(doc! { "_id": 1 }).await.unwrap(), 1);
    println!(
        "[seed/rust] commit_transaction: retried {} time(s) on {UNKNOWN_TRANSACTION_COMMIT_RESULT}; committed exactly once",
        attempts - 1
    );

    // Nesting is an error.
    session.start_transaction().await.unwrap();
    let nested = session.start_transaction().await.unwrap_err();
    println!("[seed/rust] nested start_transaction -> {nested}");
    session.abort_transaction().await.unwrap();
}
