//! The panic policy, end to end: when the log writer thread panics (the `logWriterPanic` fail
//! point), the server process stops within a bound instead of leaving committers hanging, and
//! after a restart every write the Rust driver saw acknowledged is there.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::common::{
    all_docs, driver_client, server_log_path, spawn_on_data_dir, spawn_on_data_dir_with,
};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_log_writer_stops_the_server_and_loses_no_acknowledged_write() {
    let dir = std::env::temp_dir().join(format!("mangrove-writer-panic-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    let (mut server, port) = spawn_on_data_dir_with(&data, None, &["--enable-test-commands"]);
    let coll = collection(port).await;
    let mut acked = HashSet::new();
    for id in 0..50i64 {
        coll.insert_one(doc! { "_id": id, "n": id })
            .await
            .expect("insert");
        acked.insert(id);
    }

    let client = driver_client(port).await;
    client
        .database("admin")
        .run_command(doc! { "configureFailPoint": "logWriterPanic", "mode": "alwaysOn" })
        .await
        .expect("arm the fail point");
    // This commit's batch is the one the writer panics in: it must fail (the connection goes
    // with the process), not hang.
    let last = tokio::spawn(async move { coll.insert_one(doc! { "_id": 1000i64 }).await });

    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.try_wait().expect("wait for the server") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = server.kill();
            let _ = server.wait();
            panic!("the server still runs 20 s after its log writer panicked");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success(), "the server exited cleanly: {status}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(6), "not an abort: {status}");
    }
    let outcome = tokio::time::timeout(Duration::from_secs(20), last)
        .await
        .expect("the last insert still waits after the server stopped")
        .expect("the insert task");
    assert!(
        outcome.is_err(),
        "an insert succeeded in the batch that panicked"
    );
    let log = std::fs::read_to_string(server_log_path(&data)).unwrap_or_default();
    assert!(
        log.contains("panic: fail point logWriterPanic") && log.contains("mangrove-log-writer"),
        "the panic is not in the server's log:\n{log}"
    );

    let (mut server, port) = spawn_on_data_dir(&data, None);
    let present: HashSet<i64> = all_docs(&collection(port).await)
        .await
        .iter()
        .map(|d| d.get_i64("_id").unwrap())
        .collect();
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(lost.is_empty(), "acknowledged inserts lost: {lost:?}");
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
