//! `kill -9` of the real server under concurrent `j: true` inserts from the Rust driver: after
//! every restart, each insert the driver saw acknowledged must be there.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{all_docs, driver_client, spawn_on_data_dir};
use bson::doc;
use mongodb::options::{CollectionOptions, WriteConcern};

async fn collection(port: u16) -> mongodb::Collection<bson::Document> {
    let journaled = CollectionOptions::builder()
        .write_concern(WriteConcern::builder().journal(true).build())
        .build();
    driver_client(port)
        .await
        .database("db")
        .collection_with_options("acked", journaled)
}

/// Every `_id` in the collection.
async fn ids(coll: &mongodb::Collection<bson::Document>) -> HashSet<i64> {
    all_docs(coll)
        .await
        .iter()
        .map(|d| d.get_i64("_id").unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_journaled_writes_survive_kill_9() {
    let dir = std::env::temp_dir().join(format!("mangrove-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let acked: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let cycles = 5;
    for cycle in 0..cycles {
        let (mut server, port) = spawn_on_data_dir(&data, None);
        let coll = collection(port).await;
        // Everything acknowledged before this kill-and-restart is still there.
        let present = ids(&coll).await;
        let expected = acked.lock().unwrap().clone();
        let lost: Vec<_> = expected.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "cycle {cycle}: acknowledged inserts lost: {lost:?}"
        );
        println!(
            "cycle {cycle}: restart found all {} acknowledged inserts ({} present)",
            expected.len(),
            present.len()
        );
        let tasks: Vec<_> = (0..8i64)
            .map(|task| {
                let (coll, acked) = (coll.clone(), acked.clone());
                tokio::spawn(async move {
                    for n in 0.. {
                        let id = cycle * 10_000_000 + task * 1_000_000 + n;
                        match coll.insert_one(doc! { "_id": id, "task": task }).await {
                            Ok(_) => {
                                acked.lock().unwrap().insert(id);
                            }
                            Err(_) => return, // the server is gone
                        }
                    }
                })
            })
            .collect();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(200 + seed % 400)).await;
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        for t in tasks {
            let _ = t.await;
        }
    }
    let total = acked.lock().unwrap().len();
    assert!(
        total > cycles as usize,
        "too few acknowledged inserts ({total}) to mean anything"
    );
    // A last restart to check the final kill too.
    let (mut server, port) = spawn_on_data_dir(&data, None);
    let coll = collection(port).await;
    let present = ids(&coll).await;
    let missing = acked.lock().unwrap().difference(&present).count();
    assert_eq!(missing, 0, "acknowledged inserts lost at the last kill");
    println!(
        "kill -9 test: {cycles} kills of the server, {total} j:true inserts acknowledged, 0 lost"
    );
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
