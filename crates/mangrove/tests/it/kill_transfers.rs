//! `kill -9` of the real server while clients run multi-document transfers in transactions
//! through the Rust driver, committed with `w: "majority"` (durable). After every restart:
//! every acknowledged transfer is present, none is half applied, and the total is unchanged.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::{all_docs, driver_client, spawn_on_data_dir};
use bson::{Document, doc};
use mongodb::Client;

const ACCOUNTS: i64 = 20;
const OPENING: i64 = 1_000;

/// One transfer; `Ok(true)` once committed, `Ok(false)` to retry, `Err` when the server is gone
/// or the outcome is unknown.
async fn transfer(client: &Client, id: i64, from: i64, to: i64, amount: i64) -> Result<bool, ()> {
    let db = client.database("bank");
    let accounts = db.collection::<Document>("accounts");
    let transfers = db.collection::<Document>("transfers");
    let mut session = client.start_session().await.map_err(|_| ())?;
    session.start_transaction().await.map_err(|_| ())?;
    let body = async {
        accounts
            .update_one(doc! { "_id": from }, doc! { "$inc": { "bal": -amount } })
            .session(&mut session)
            .await?;
        accounts
            .update_one(doc! { "_id": to }, doc! { "$inc": { "bal": amount } })
            .session(&mut session)
            .await?;
        transfers
            .insert_one(doc! { "_id": id, "from": from, "to": to, "amount": amount })
            .session(&mut session)
            .await?;
        Ok::<(), mongodb::error::Error>(())
    }
    .await;
    if let Err(e) = body {
        let _ = session.abort_transaction().await;
        return if e.contains_label("TransientTransactionError") {
            Ok(false)
        } else {
            Err(())
        };
    }
    match session.commit_transaction().await {
        Ok(()) => Ok(true),
        Err(e) if e.contains_label("TransientTransactionError") => Ok(false),
        Err(_) => Err(()), // unknown outcome (the server died): not acknowledged
    }
}

async fn verify(client: &Client, acked: &HashSet<i64>) -> usize {
    let db = client.database("bank");
    let accounts = all_docs(&db.collection::<Document>("accounts")).await;
    let transfers = all_docs(&db.collection::<Document>("transfers")).await;
    let mut expected: HashMap<i64, i64> = (0..ACCOUNTS).map(|a| (a, OPENING)).collect();
    let mut present = HashSet::new();
    for t in &transfers {
        let amount = t.get_i64("amount").unwrap();
        *expected.get_mut(&t.get_i64("from").unwrap()).unwrap() -= amount;
        *expected.get_mut(&t.get_i64("to").unwrap()).unwrap() += amount;
        present.insert(t.get_i64("_id").unwrap());
    }
    let balances: HashMap<i64, i64> = accounts
        .iter()
        .map(|d| (d.get_i64("_id").unwrap(), d.get_i64("bal").unwrap()))
        .collect();
    assert_eq!(balances.len() as i64, ACCOUNTS, "accounts lost");
    assert_eq!(
        balances.values().sum::<i64>(),
        ACCOUNTS * OPENING,
        "money created or destroyed"
    );
    assert_eq!(balances, expected, "a transfer is half applied");
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(lost.is_empty(), "acknowledged transfers lost: {lost:?}");
    present.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_transactions_survive_kill_9_whole() {
    let dir = std::env::temp_dir().join(format!("mangrove-kill-transfers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let acked: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let cycles = 4;
    for cycle in 0..cycles {
        let (mut server, port) = spawn_on_data_dir(&data, None);
        let c = driver_client(port).await;
        if cycle == 0 {
            let accounts: Vec<Document> = (0..ACCOUNTS)
                .map(|a| doc! { "_id": a, "bal": OPENING })
                .collect();
            c.database("bank")
                .collection::<Document>("accounts")
                .insert_many(accounts)
                .await
                .unwrap();
            c.database("bank")
                .create_collection("transfers")
                .await
                .unwrap();
        }
        let expected = acked.lock().unwrap().clone();
        let committed = verify(&c, &expected).await;
        println!(
            "cycle {cycle}: restart found all {} acknowledged transfers ({committed} committed), none partial, total unchanged",
            acked.lock().unwrap().len()
        );
        // Set just before the kill: the driver labels network errors inside a transaction
        // TransientTransactionError, so without it the tasks would retry forever.
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..6i64)
            .map(|task| {
                let (c, acked, stop) = (c.clone(), acked.clone(), stop.clone());
                let mut rng = seed ^ (task as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                tokio::spawn(async move {
                    for n in 0.. {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let from = (rng % ACCOUNTS as u64) as i64;
                        let to = (from + 1 + (rng >> 20) as i64 % (ACCOUNTS - 1)) % ACCOUNTS;
                        let id = cycle * 10_000_000 + task * 1_000_000 + n;
                        loop {
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            match transfer(&c, id, from, to, 1 + (rng >> 40) as i64 % 50).await {
                                Ok(true) => {
                                    acked.lock().unwrap().insert(id);
                                    break;
                                }
                                Ok(false) => continue,
                                Err(()) => return,
                            }
                        }
                    }
                })
            })
            .collect();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(400 + seed % 600)).await;
        stop.store(true, Ordering::Relaxed);
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        for t in tasks {
            let _ = t.await;
        }
    }
    let (mut server, port) = spawn_on_data_dir(&data, None);
    let expected = acked.lock().unwrap().clone();
    let committed = verify(&driver_client(port).await, &expected).await;
    let total = acked.lock().unwrap().len();
    assert!(
        total > cycles as usize,
        "too few acknowledged transfers ({total}) to mean anything"
    );
    println!(
        "kill -9 transfer test: {cycles} kills of the server, {total} transactions acknowledged, {committed} committed, 0 lost, 0 partial, total unchanged"
    );
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
