//! `kill -9` of the real server while writers commit transfers (durably, `w: "majority"`) and
//! a change stream watches them: after every restart the watcher resumes from the last token
//! it saw. In the end it has seen every acknowledged transfer exactly once, in commit order,
//! and nothing that a crash took back.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common;
use crate::common::{driver_client, spawn_on_data_dir};
use bson::{Document, doc};
use futures_util::StreamExt;
use mongodb::Client;
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::WriteConcern;

const ACCOUNTS: i64 = 10;

async fn transfer(client: &Client, id: i64) -> Result<bool, ()> {
    let db = client.database("bank");
    let accounts = db.collection::<Document>("accounts");
    let transfers = db.collection::<Document>("transfers");
    let mut session = client.start_session().await.map_err(|_| ())?;
    session
        .start_transaction()
        .write_concern(WriteConcern::majority())
        .await
        .map_err(|_| ())?;
    let (from, to) = (id % ACCOUNTS, (id * 7 + 3) % ACCOUNTS);
    let body = async {
        accounts
            .update_one(doc! {"_id": from}, doc! {"$inc": {"bal": -1}})
            .session(&mut session)
            .await?;
        transfers
            .insert_one(doc! {"_id": id, "from": from, "to": to})
            .session(&mut session)
            .await?;
        accounts
            .update_one(doc! {"_id": to}, doc! {"$inc": {"bal": 1}})
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
        Err(_) => Err(()),
    }
}

/// What the watcher saw: each transfer's id with its event's cluster time, in order.
#[derive(Default)]
struct Seen {
    events: Vec<(i64, bson::Timestamp)>,
    last_token: Option<ResumeToken>,
}

/// Watches `bank.transfers` from `seen.last_token` until the stream fails (the server died)
/// or `until` has all been seen.
async fn watch(client: Client, seen: Arc<Mutex<Seen>>, until: Option<HashSet<i64>>) {
    let coll = client.database("bank").collection::<Document>("transfers");
    let token = seen.lock().unwrap().last_token.clone();
    let mut builder = coll.watch().max_await_time(Duration::from_millis(200));
    if let Some(t) = token {
        builder = builder.resume_after(t);
    }
    let Ok(stream) = builder.await else {
        return;
    };
    let mut stream = stream.with_type::<Document>();
    loop {
        if let Some(until) = &until {
            let got: HashSet<i64> = seen.lock().unwrap().events.iter().map(|e| e.0).collect();
            if until.is_subset(&got) {
                return;
            }
        }
        let Ok(Some(Ok(event))) =
            tokio::time::timeout(Duration::from_secs(10), stream.next()).await
        else {
            return;
        };
        assert_eq!(event.get_str("operationType").unwrap(), "insert");
        let id = event
            .get_document("documentKey")
            .unwrap()
            .get_i64("_id")
            .unwrap();
        let ts = event.get_timestamp("clusterTime").unwrap();
        let token: ResumeToken =
            bson::deserialize_from_document(event.get_document("_id").unwrap().clone()).unwrap();
        let mut s = seen.lock().unwrap();
        s.events.push((id, ts));
        s.last_token = Some(token);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_watcher_sees_every_acknowledged_write_once_in_commit_order() {
    let dir = std::env::temp_dir().join(format!("mangrove-kill-cs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let acked: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let cycles = 4i64;
    for cycle in 0..cycles {
        let (mut server, port) = spawn_on_data_dir(&data, None);
        let client = driver_client(port).await;
        if cycle == 0 {
            let accounts: Vec<Document> = (0..ACCOUNTS)
                .map(|a| doc! {"_id": a, "bal": 100i64})
                .collect();
            let db = client.database("bank");
            db.collection::<Document>("accounts")
                .insert_many(accounts)
                .await
                .unwrap();
            db.create_collection("transfers").await.unwrap();
        }
        let watcher = tokio::spawn(watch(client.clone(), seen.clone(), None));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4i64)
            .map(|w| {
                let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
                tokio::spawn(async move {
                    for n in 0.. {
                        let id = cycle * 1_000_000 + w * 100_000 + n;
                        loop {
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            match transfer(&client, id).await {
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
        tokio::time::sleep(Duration::from_millis(500 + 150 * cycle as u64)).await;
        stop.store(true, Ordering::Relaxed);
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        for w in writers {
            let _ = w.await;
        }
        let _ = watcher.await;
        println!(
            "cycle {cycle}: {} acknowledged, {} events seen so far",
            acked.lock().unwrap().len(),
            seen.lock().unwrap().events.len()
        );
    }
    let (mut server, port) = spawn_on_data_dir(&data, None);
    let client = driver_client(port).await;
    let present: HashSet<i64> = common::all_docs(&client.database("bank").collection("transfers"))
        .await
        .iter()
        .map(|d| d.get_i64("_id").unwrap())
        .collect();
    watch(client, seen.clone(), Some(present.clone())).await;
    let seen = seen.lock().unwrap();
    let acked = acked.lock().unwrap();
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for (id, _) in &seen.events {
        *counts.entry(*id).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "events delivered twice: {twice:?}");
    let missing: Vec<_> = acked.iter().filter(|id| !counts.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged transfers never seen: {missing:?}"
    );
    let phantom: Vec<_> = counts.keys().filter(|id| !present.contains(id)).collect();
    assert!(
        phantom.is_empty(),
        "events for writes a crash took back: {phantom:?}"
    );
    let unseen: Vec<_> = present
        .iter()
        .filter(|id| !counts.contains_key(id))
        .collect();
    assert!(
        unseen.is_empty(),
        "committed transfers never seen: {unseen:?}"
    );
    for pair in seen.events.windows(2) {
        assert!(
            pair[0].1 < pair[1].1,
            "events out of commit order: {pair:?}"
        );
    }
    assert!(
        acked.len() > cycles as usize,
        "too few transfers ({}) to mean anything",
        acked.len()
    );
    println!(
        "kill -9 change stream test: {cycles} kills, {} acknowledged, {} committed, {} events, each once, in commit order",
        acked.len(),
        present.len(),
        seen.events.len()
    );
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
