//! The panic policy embedded (no server, no panic hook): when the log writer thread panics,
//! committers get an error instead of waiting forever, later commits are refused, and a reopen
//! finds every commit that was acknowledged. Its own test binary, because the fail point it
//! arms is process-wide.

mod common;

use std::time::Duration;

use common::*;
use mangrove_storage::{StorageError, panic_policy};

#[test]
fn a_panicking_log_writer_fails_commits_instead_of_hanging() {
    let dir = TempDir::new("writer-panic");
    let acknowledged = {
        let (engine, _) = open(options(&dir)).unwrap();
        write_history(&engine, 20);
        let acknowledged = values(&engine.snapshot(), "db.c");
        let coll = engine.snapshot().collection("db.c").unwrap();

        panic_policy::arm_log_writer_panic();
        let mut t = engine.begin();
        t.insert(&coll, key(1000), doc(1000, 1)).unwrap();
        let mut ticket = t.commit().unwrap();
        let outcome = block_on(async {
            tokio::time::timeout(Duration::from_secs(30), ticket.durable()).await
        });
        match outcome {
            Err(_) => panic!("the commit still waits 30 s after the log writer panicked"),
            Ok(Ok(ts)) => panic!("the commit succeeded at {ts:?} though its writer panicked"),
            Ok(Err(StorageError::LogFailed(reason))) => {
                assert!(reason.contains("panicked"), "{reason}");
            }
            Ok(Err(other)) => panic!("unexpected error {other:?}"),
        }

        // Later commits are refused at once.
        let mut t = engine.begin();
        t.insert(&coll, key(1001), doc(1001, 1)).unwrap();
        assert!(matches!(t.commit(), Err(StorageError::LogFailed(_))));
        engine.close_without_checkpoint();
        acknowledged
    };
    // Everything acknowledged before the panic is there after a restart. (The batch the writer
    // panicked in was written, so it may be there too: it was never acknowledged either way.)
    let (engine, _) = open(options(&dir)).unwrap();
    let mut found = values(&engine.snapshot(), "db.c");
    found.retain(|(id, _)| *id != 1000);
    assert_eq!(found, acknowledged);
}
