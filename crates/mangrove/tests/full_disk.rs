//! A full disk: the server runs under a file-size limit (`ulimit -f`, with SIGXFSZ ignored so
//! the write fails with EFBIG instead of killing the process). Commits that cannot be made
//! durable must fail with a clear error, reads must keep working, and after a restart with room
//! again every acknowledged write must be there.

mod common;

use bson::doc;
use common::{driver_client, spawn_on_data_dir};

#[tokio::test]
async fn commits_fail_clearly_when_the_log_cannot_grow_and_nothing_acknowledged_is_lost() {
    let dir = std::env::temp_dir().join(format!("mangrove-full-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");

    // redb needs a few MiB to create the base store; the log segment then fills up to the limit.
    let (mut server, port) = spawn_on_data_dir(&data, Some(4096));
    let coll = driver_client(port)
        .await
        .database("db")
        .collection::<bson::Document>("c");
    let payload = "x".repeat(3000);
    let mut acknowledged = Vec::new();
    let mut failure = None;
    for i in 0..20_000i64 {
        match coll
            .insert_one(doc! { "_id": i, "payload": &payload })
            .await
        {
            Ok(_) => acknowledged.push(i),
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    let failure = failure.expect("the log never hit the size limit");
    println!(
        "after {} acknowledged inserts the next failed with: {failure}",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() > 10,
        "the limit was hit too early to mean anything"
    );
    assert!(
        failure.contains("transaction log"),
        "unclear error: {failure}"
    );
    assert!(
        failure.contains("restart"),
        "the error should say what to do: {failure}"
    );
    // Later writes fail the same way instead of pretending to succeed...
    let again = coll
        .insert_one(doc! { "_id": -1 })
        .await
        .unwrap_err()
        .to_string();
    assert!(again.contains("transaction log"), "{again}");
    // ...while reads still work, and the failed writes are not visible.
    let visible = coll.count_documents(doc! {}).await;
    match visible {
        Ok(n) => assert_eq!(n, acknowledged.len() as u64),
        // countDocuments needs aggregate, which may not exist yet; use find instead.
        Err(_) => {
            let mut cursor = coll.find(doc! {}).await.unwrap();
            let mut n = 0;
            while cursor.advance().await.unwrap() {
                n += 1;
            }
            assert_eq!(n, acknowledged.len());
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();

    // With room again, everything acknowledged is back and writes work.
    let (mut server, port) = spawn_on_data_dir(&data, None);
    let coll = driver_client(port)
        .await
        .database("db")
        .collection::<bson::Document>("c");
    for id in &acknowledged {
        assert!(
            coll.find_one(doc! { "_id": id }).await.unwrap().is_some(),
            "acknowledged insert {id} lost"
        );
    }
    coll.insert_one(doc! { "_id": "after-restart" })
        .await
        .unwrap();
    println!(
        "restart without the limit: all {} acknowledged inserts present, writes accepted again",
        acknowledged.len()
    );
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
