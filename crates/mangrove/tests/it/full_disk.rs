//! A full disk: the server runs under a file-size limit (`ulimit -S -f`, with SIGXFSZ ignored so
//! the write fails with EFBIG instead of killing the process). While the log cannot grow, every
//! write must fail at once with one clear, non-transient error (OutOfDiskSpace, 14031), never a
//! WriteConflict that `with_transaction` would retry for two minutes; reads must keep working;
//! the server log must say so once. When space comes back (the limit is lifted from outside, as
//! an operator frees space) writes must resume by themselves, and after a kill -9 every
//! acknowledged write must be there.

use std::time::{Duration, Instant};

use crate::common::{driver_client, server_log_path, spawn_on_data_dir};
use bson::{Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};

/// The server's code and labels for a failed operation.
fn code_and_labels(e: &mongodb::error::Error) -> (Option<i32>, Vec<String>) {
    let code = match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        _ => None,
    };
    (code, e.labels().iter().cloned().collect())
}

fn assert_out_of_space(what: &str, e: &mongodb::error::Error) {
    let (code, labels) = code_and_labels(e);
    assert_eq!(
        code,
        Some(14031),
        "{what}: expected OutOfDiskSpace, got {e}"
    );
    assert!(
        !labels.iter().any(|l| l == "TransientTransactionError"),
        "{what}: a full disk is not transient: {labels:?}"
    );
    let message = e.to_string();
    assert!(message.contains("transaction log"), "{what}: {message}");
    assert!(
        message.contains("Free space") && message.contains("resume by themselves"),
        "{what}: the error should say what to do: {message}"
    );
}

/// Inserts until the log hits the file-size limit; returns the acknowledged ids and the error.
async fn fill(coll: &mongodb::Collection<Document>) -> (Vec<i64>, mongodb::error::Error) {
    let payload = "x".repeat(3000);
    let mut acknowledged = Vec::new();
    for i in 0..20_000i64 {
        match coll
            .insert_one(doc! { "_id": i, "payload": &payload })
            .await
        {
            Ok(_) => acknowledged.push(i),
            Err(e) => return (acknowledged, e),
        }
    }
    panic!("the log never hit the size limit");
}

/// While the log is unavailable: the failed id, an update of an acknowledged document, and a
/// transaction all fail with OutOfDiskSpace (not WriteConflict: no intent was leaked).
async fn writes_fail_clearly(client: &mongodb::Client, failed_id: i64, last_acked: i64) {
    let coll = client.database("db").collection::<Document>("c");
    let again = coll
        .insert_one(doc! { "_id": failed_id })
        .await
        .unwrap_err();
    assert_out_of_space("the same insert again", &again);
    let update = coll
        .update_one(
            doc! { "_id": last_acked },
            doc! { "$set": { "touched": true } },
        )
        .await
        .unwrap_err();
    assert_out_of_space("an update", &update);
    let mut session = client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    coll.insert_one(doc! { "_id": "in-txn" })
        .session(&mut session)
        .await
        .unwrap();
    let commit = session.commit_transaction().await.unwrap_err();
    assert_out_of_space("commitTransaction", &commit);
}

/// Lifts the file-size limit of a running process, as freeing disk space would.
fn free_space(pid: u32) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--fsize=unlimited"])
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit failed");
}

/// Retries an insert until the server accepts writes again; returns how long it took.
async fn wait_for_writes(coll: &mongodb::Collection<Document>, id: i64) -> Duration {
    let started = Instant::now();
    loop {
        match coll.insert_one(doc! { "_id": id }).await {
            Ok(_) => return started.elapsed(),
            Err(e) => {
                assert_out_of_space("while space comes back", &e);
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "writes did not resume after space was freed: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_full_disk_refuses_writes_clearly_and_writes_resume_when_space_is_freed() {
    let dir = std::env::temp_dir().join(format!("mangrove-full-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("data");
    std::fs::create_dir_all(&dir).unwrap();

    // redb needs a few MiB to create the base store; the log segment then fills up to the limit.
    let (mut server, port) = spawn_on_data_dir(&data, Some(4096));
    let client = driver_client(port).await;
    let coll = client.database("db").collection::<Document>("c");
    // One transaction first, so the session table exists and the later one fails at commit.
    let mut session = client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    client
        .database("db")
        .collection::<Document>("other")
        .insert_one(doc! { "_id": 1 })
        .session(&mut session)
        .await
        .unwrap();
    session.commit_transaction().await.unwrap();
    let (acknowledged, failure) = fill(&coll).await;
    println!(
        "after {} acknowledged inserts the next failed with: {failure}",
        acknowledged.len()
    );
    assert!(acknowledged.len() > 10, "the limit was hit too early");
    assert_out_of_space("the first failed insert", &failure);
    let failed_id = acknowledged.len() as i64;
    writes_fail_clearly(&client, failed_id, *acknowledged.last().unwrap()).await;
    // Reads still work, and the failed writes are not visible.
    let visible = coll.count_documents(doc! {}).await.unwrap();
    assert_eq!(visible, acknowledged.len() as u64);

    free_space(server.id());
    let took = wait_for_writes(&coll, failed_id).await;
    println!("writes resumed {took:?} after the limit was lifted, without a restart");
    coll.update_one(doc! { "_id": 0 }, doc! { "$set": { "after": true } })
        .await
        .unwrap();
    let log = std::fs::read_to_string(server_log_path(&data)).unwrap();
    let episodes = log.matches("refusing writes until it can").count();
    assert_eq!(episodes, 1, "the server log should say it once:\n{log}");
    assert!(log.contains("can be written again"), "{log}");
    server.kill().unwrap();
    server.wait().unwrap();

    // After kill -9, everything acknowledged is back, including what came after the recovery.
    let (mut server, port) = spawn_on_data_dir(&data, None);
    let coll = driver_client(port)
        .await
        .database("db")
        .collection::<Document>("c");
    for id in acknowledged.iter().chain([&failed_id]) {
        assert!(
            coll.find_one(doc! { "_id": id }).await.unwrap().is_some(),
            "acknowledged insert {id} lost"
        );
    }
    let first = coll.find_one(doc! { "_id": 0 }).await.unwrap().unwrap();
    assert_eq!(first.get_bool("after").ok(), Some(true));
    assert!(
        coll.find_one(doc! { "_id": "in-txn" })
            .await
            .unwrap()
            .is_none()
    );
    println!(
        "restart: all {} acknowledged inserts present",
        acknowledged.len() + 1
    );
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small tmpfs for the data directory, unmounted on drop. `None` where mounting is not
/// allowed (not root, no CAP_SYS_ADMIN); the file-size-limit test above covers the same
/// mechanism there.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(mib: u64) -> Option<Tmpfs> {
        let dir = std::env::temp_dir().join(format!("mangrove-enospc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real ENOSPC: the data directory on a 24 MiB tmpfs that also holds a 6 MiB file the
/// operator can delete. Writes fail with OutOfDiskSpace until the file is deleted, then resume
/// without a restart, and everything acknowledged survives kill -9.
#[tokio::test]
async fn a_real_enospc_then_space_freed() {
    let Some(fs) = Tmpfs::mount(24) else {
        println!("SKIPPED: cannot mount a tmpfs here (needs root); see the file-size-limit test");
        return;
    };
    let filler = fs.0.join("filler");
    std::fs::write(&filler, vec![1u8; 6 << 20]).unwrap();
    let data = fs.0.join("data");
    let (mut server, port) = spawn_on_data_dir(&data, None);
    let coll = driver_client(port)
        .await
        .database("db")
        .collection::<Document>("c");
    let (acknowledged, failure) = fill(&coll).await;
    println!(
        "ENOSPC after {} acknowledged inserts: {failure}",
        acknowledged.len()
    );
    assert_out_of_space("the first insert on a full disk", &failure);
    assert!(failure.to_string().contains("No space left"), "{failure}");
    assert_eq!(
        coll.count_documents(doc! {}).await.unwrap(),
        acknowledged.len() as u64
    );
    std::fs::remove_file(&filler).unwrap();
    let failed_id = acknowledged.len() as i64;
    let took = wait_for_writes(&coll, failed_id).await;
    println!("writes resumed {took:?} after 6 MiB were freed");
    server.kill().unwrap();
    server.wait().unwrap();
    let (mut server, port) = spawn_on_data_dir(&data, None);
    let coll = driver_client(port)
        .await
        .database("db")
        .collection::<Document>("c");
    assert_eq!(
        coll.count_documents(doc! {}).await.unwrap(),
        acknowledged.len() as u64 + 1,
        "every acknowledged insert is back after kill -9"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}
