//! Online backups and point-in-time restore: a backup taken while writers commit and the
//! checkpointer removes log restores to exactly a durable prefix; restores stop before a
//! drop, at a log position, or at the end of an archive; damage and gaps are named.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use common::*;
use mangrove_storage::backup::{read_manifest, verify_backup};
use mangrove_storage::restore::{RestorePlan, StopAt, restore};
use mangrove_storage::{BackupPhase, Engine, EngineOptions, StorageError, Timestamp, txlog};

/// Small segments and no retention: segments are sealed and removed all the time.
fn churning(dir: &TempDir, archive: Option<&TempDir>) -> EngineOptions {
    EngineOptions {
        segment_bytes: 4096,
        history_size_bytes: 0,
        log_archive_dir: archive.map(|a| a.0.clone()),
        ..options(dir)
    }
}

fn insert(engine: &Engine, ns: &str, id: i64) -> Timestamp {
    let coll = engine.snapshot().collection(ns).unwrap();
    let mut t = engine.begin();
    t.insert(&coll, key(id), doc(id, id)).unwrap();
    commit_durable(t).unwrap()
}

fn ids(engine: &Engine, ns: &str) -> Vec<i64> {
    values(&engine.snapshot(), ns)
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

fn restore_to(plan: RestorePlan) -> Result<Engine, StorageError> {
    let target = plan.target.clone();
    restore(&plan, EngineOptions::default(), |_, _, _| {})?;
    let (engine, _) = open(EngineOptions {
        data_dir: Some(target),
        ..EngineOptions::default()
    })?;
    Ok(engine)
}

#[test]
fn a_backup_under_load_restores_exactly_a_durable_prefix() {
    let dir = TempDir::new("backup-load");
    let (engine, _) = open(churning(&dir, None)).unwrap();
    collection(&engine, "db.c");
    collection(&engine, "db.other");
    let acked = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (engine, acked, stop) = (engine.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 1;
            while !stop.load(Ordering::Relaxed) {
                insert(&engine, "db.c", i);
                acked.store(i, Ordering::Relaxed);
                if i % 50 == 0 {
                    engine.checkpoint().unwrap();
                }
                i += 1;
            }
        })
    };
    while acked.load(Ordering::Relaxed) < 300 {
        std::thread::yield_now();
    }
    let before = acked.load(Ordering::Relaxed);
    let out = TempDir::new("backup-load-out");
    // Between the base store's copy and the log's, more commits and a checkpoint that would
    // remove the log the backup still needs, were it not pinned.
    let mut squeezed = false;
    let report = engine
        .backup(&out.0, |phase, _| {
            if phase == BackupPhase::Base && !squeezed {
                squeezed = true;
                for i in 0..200 {
                    insert(&engine, "db.other", i);
                }
                engine.checkpoint().unwrap();
            }
        })
        .unwrap();
    assert!(squeezed);
    let after = acked.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    engine.close();

    let verified = verify_backup(&out.0).unwrap();
    assert!(verified.problems.is_empty(), "{:?}", verified.problems);
    assert_eq!(read_manifest(&out.0).unwrap(), report.manifest);
    let target = TempDir::new("backup-load-restored");
    let restored = restore_to(RestorePlan {
        backup: out.0.clone(),
        archives: vec![],
        target: target.0.join("data"),
        stop: StopAt::End,
        round_bytes: mangrove_storage::restore::REPLAY_ROUND_BYTES,
    })
    .unwrap();
    let got = ids(&restored, "db.c");
    let n = got.len() as i64;
    assert_eq!(got, (1..=n).collect::<Vec<_>>(), "a prefix, with no gap");
    assert!(
        n >= before && n <= after,
        "{n} documents: at least the {before} acknowledged before the backup, at most the {after} after"
    );
    restored.close();
}

/// A server with an archive: 20 documents in a.x, a backup, 130 more (several segments),
/// a.x dropped, 10 in b.y. Returns the commit of a.x's 30th.
fn history_with_a_drop(dir: &TempDir, archive: &TempDir, backup: &TempDir) -> Timestamp {
    let (engine, _) = open(churning(dir, Some(archive))).unwrap();
    collection(&engine, "a.x");
    collection(&engine, "b.y");
    for i in 1..=20 {
        insert(&engine, "a.x", i);
    }
    engine.checkpoint().unwrap();
    engine.backup(&backup.0, |_, _| {}).unwrap();
    let mut position = Timestamp::ZERO;
    for i in 21..=150 {
        let ts = insert(&engine, "a.x", i);
        if i == 30 {
            position = ts;
        }
    }
    let mut t = engine.begin();
    t.drop_collection("a.x").unwrap();
    commit_durable(t).unwrap();
    for i in 1..=10 {
        insert(&engine, "b.y", i);
    }
    // Archives the sealed segments, then removes them from the log.
    engine.checkpoint().unwrap();
    engine.close();
    position
}

#[test]
fn restore_stops_before_a_drop_using_the_archive_and_the_live_log() {
    let (dir, archive, backup) = (
        TempDir::new("pitr"),
        TempDir::new("pitr-archive"),
        TempDir::new("pitr-backup"),
    );
    let position = history_with_a_drop(&dir, &archive, &backup);
    assert!(!txlog::list_segments(&archive.0).unwrap().is_empty());
    let target = TempDir::new("pitr-restored");
    let plan = RestorePlan {
        backup: backup.0.clone(),
        archives: vec![archive.0.clone(), dir.0.join("log")],
        target: target.0.join("before-drop"),
        stop: StopAt::BeforeDrop("a.x".into()),
        round_bytes: mangrove_storage::restore::REPLAY_ROUND_BYTES,
    };
    let report = restore(&plan, EngineOptions::default(), |_, _, _| {}).unwrap();
    let stopped = report.stopped_before.expect("stopped at the drop");
    assert_eq!(stopped.ops, vec!["drop a.x".to_string()]);
    let (restored, _) = open(EngineOptions {
        data_dir: Some(plan.target.clone()),
        ..EngineOptions::default()
    })
    .unwrap();
    assert_eq!(ids(&restored, "a.x"), (1..=150).collect::<Vec<_>>());
    assert!(ids(&restored, "b.y").is_empty());
    restored.close();

    let at_position = restore_to(RestorePlan {
        stop: StopAt::Timestamp(position),
        round_bytes: mangrove_storage::restore::REPLAY_ROUND_BYTES,
        target: target.0.join("at-position"),
        ..plan.clone()
    })
    .unwrap();
    assert_eq!(ids(&at_position, "a.x"), (1..=30).collect::<Vec<_>>());
    at_position.close();

    let whole = restore_to(RestorePlan {
        stop: StopAt::End,
        round_bytes: mangrove_storage::restore::REPLAY_ROUND_BYTES,
        target: target.0.join("end"),
        ..plan.clone()
    })
    .unwrap();
    assert!(whole.snapshot().collection("a.x").is_none());
    assert_eq!(ids(&whole, "b.y"), (1..=10).collect::<Vec<_>>());
    whole.close();

    // The same in rounds of one segment: replayed and checkpointed after each, so memory holds
    // one round's versions; the outcome is the same.
    let rounds = TempDir::new("pitr-rounds");
    let plan = RestorePlan {
        target: rounds.0.join("data"),
        round_bytes: 1,
        ..plan
    };
    let report = restore(&plan, EngineOptions::default(), |_, _, _| {}).unwrap();
    assert!(report.segments.len() > 2, "{:?}", report.segments);
    assert_eq!(
        report.stopped_before.unwrap().ops,
        vec!["drop a.x".to_string()]
    );
    let (in_rounds, _) = open(EngineOptions {
        data_dir: Some(plan.target.clone()),
        ..EngineOptions::default()
    })
    .unwrap();
    assert_eq!(ids(&in_rounds, "a.x"), (1..=150).collect::<Vec<_>>());
    assert!(ids(&in_rounds, "b.y").is_empty());
    in_rounds.close();
}

#[test]
fn a_missing_archived_segment_is_named_not_skipped() {
    let (dir, archive, backup) = (
        TempDir::new("gap"),
        TempDir::new("gap-archive"),
        TempDir::new("gap-backup"),
    );
    history_with_a_drop(&dir, &archive, &backup);
    let manifest = read_manifest(&backup.0).unwrap();
    let archived = txlog::list_segments(&archive.0).unwrap();
    // One segment after the backup's end goes missing from the archive.
    let missing = archived
        .iter()
        .rev()
        .nth(1)
        .expect("several archived segments")
        .clone();
    assert!(
        missing.file_stem().unwrap().to_str().unwrap()
            > format!("{:016x}", manifest.until.0).as_str()
    );
    std::fs::remove_file(&missing).unwrap();
    let target = TempDir::new("gap-restored");
    let error = restore(
        &RestorePlan {
            backup: backup.0.clone(),
            archives: vec![archive.0.clone(), dir.0.join("log")],
            target: target.0.join("data"),
            stop: StopAt::End,
            round_bytes: mangrove_storage::restore::REPLAY_ROUND_BYTES,
        },
        EngineOptions::default(),
        |_, _, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("missing or cut"), "{error}");
    assert!(error.contains("--log-archive-dir"), "{error}");
}

#[test]
fn a_damaged_backup_is_named_by_verify_and_refused_by_restore() {
    let (dir, archive, backup) = (
        TempDir::new("dmg"),
        TempDir::new("dmg-archive"),
        TempDir::new("dmg-backup"),
    );
    history_with_a_drop(&dir, &archive, &backup);
    assert!(verify_backup(&backup.0).unwrap().problems.is_empty());
    let segment = txlog::list_segments(&backup.0.join("log"))
        .unwrap()
        .pop()
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();
    let problems = verify_backup(&backup.0).unwrap().problems;
    let name = segment.file_name().unwrap().to_str().unwrap();
    assert!(problems.iter().any(|p| p.contains(name)), "{problems:?}");
    let target = TempDir::new("dmg-restored");
    let error = restore(
        &RestorePlan {
            backup: backup.0.clone(),
            archives: vec![],
            target: target.0.join("data"),
            stop: StopAt::End,
            round_bytes: mangrove_storage::restore::REPLAY_ROUND_BYTES,
        },
        EngineOptions::default(),
        |_, _, _| {},
    )
    .unwrap_err();
    assert!(
        matches!(error, StorageError::DataCorruption { .. }),
        "{error}"
    );
    assert!(error.to_string().contains(name), "{error}");
}

#[test]
fn a_backup_refuses_a_directory_that_is_not_empty() {
    let dir = TempDir::new("nonempty");
    let (engine, _) = open(options(&dir)).unwrap();
    let out = TempDir::new("nonempty-out");
    std::fs::write(out.0.join("keep-me"), b"x").unwrap();
    let error = engine.backup(&out.0, |_, _| {}).unwrap_err().to_string();
    assert!(error.contains("not empty"), "{error}");
    assert_eq!(std::fs::read(out.0.join("keep-me")).unwrap(), b"x");
    engine.close();
}
