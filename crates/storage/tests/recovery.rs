//! Recovery from the transaction log: what was committed comes back, a torn tail is cut off,
//! damage in the middle refuses to open.

mod common;

use std::fs::OpenOptions;

use common::*;
use mangrove_storage::{EngineOptions, StorageError, txlog};

#[test]
fn committed_data_survives_reopen() {
    let dir = TempDir::new("reopen");
    {
        let (engine, report) = open(options(&dir)).unwrap();
        assert_eq!(report.records, 0);
        write_history(&engine, 40);
        engine.close_without_checkpoint();
    }
    let (engine, report) = open(options(&dir)).unwrap();
    // One record for the create, one for document 0, 40 for the history.
    assert_eq!(report.records, 42);
    assert!(report.torn_tail.is_none());
    assert_eq!(values(&engine.snapshot(), "db.c"), expected_after(40));
    // Commit timestamps keep increasing across restarts.
    let before = engine.last_commit();
    let coll = engine.snapshot().collection("db.c").unwrap();
    let mut t = engine.begin();
    t.insert(&coll, key(1000), doc(1000, 1)).unwrap();
    assert!(commit_durable(t).unwrap() > before);
}

#[test]
fn drops_and_recreates_replay() {
    let dir = TempDir::new("drop");
    {
        let (engine, _) = open(options(&dir)).unwrap();
        let c = collection(&engine, "db.gone");
        let mut t = engine.begin();
        t.insert(&c, key(1), doc(1, 1)).unwrap();
        commit_durable(t).unwrap();
        let mut t = engine.begin();
        t.drop_collection("db.gone").unwrap();
        commit_durable(t).unwrap();
        let c = collection(&engine, "db.gone");
        let mut t = engine.begin();
        t.insert(&c, key(2), doc(2, 2)).unwrap();
        commit_durable(t).unwrap();
        engine.close_without_checkpoint();
    }
    let (engine, _) = open(options(&dir)).unwrap();
    assert_eq!(values(&engine.snapshot(), "db.gone"), vec![(2, 2)]);
}

#[test]
fn segments_rotate_and_replay_in_order() {
    let dir = TempDir::new("rotate");
    let opts = EngineOptions {
        segment_bytes: 2048,
        ..options(&dir)
    };
    {
        let (engine, _) = open(opts.clone()).unwrap();
        write_history(&engine, 100);
        engine.close_without_checkpoint();
    }
    let segments = txlog::list_segments(&dir.0.join("log")).unwrap();
    assert!(segments.len() > 5, "only {} segments", segments.len());
    let (engine, report) = open(opts).unwrap();
    assert_eq!(report.segments, segments.len());
    assert_eq!(values(&engine.snapshot(), "db.c"), expected_after(100));
}

#[test]
fn a_second_engine_cannot_open_a_locked_directory() {
    let dir = TempDir::new("lock");
    let (engine, _) = open(options(&dir)).unwrap();
    match open(options(&dir)) {
        Err(StorageError::Locked { .. }) => {}
        other => panic!("expected Locked, got {:?}", other.map(|(_, r)| r)),
    }
    engine.close_without_checkpoint();
}

#[test]
fn torn_tail_is_truncated_at_every_offset_of_the_last_records() {
    let master = TempDir::new("torn-master");
    {
        let (engine, _) = open(options(&master)).unwrap();
        write_history(&engine, 12);
        engine.close_without_checkpoint();
    }
    let segment = last_segment(&master);
    let bytes = std::fs::read(&segment).unwrap();
    let records = record_offsets(&master);
    // Cut inside each of the last three records, at several offsets each.
    for &(offset, len) in records.iter().rev().take(3) {
        for cut in [
            offset + 1,
            offset + 7,
            offset + 8,
            offset + len / 2,
            offset + len - 1,
        ] {
            let dir = TempDir::new("torn");
            let log = copy_log(&master, &dir);
            let copy = log.join(segment.file_name().unwrap());
            std::fs::write(&copy, &bytes[..cut as usize]).unwrap();
            let (engine, report) = open(options(&dir)).unwrap();
            // Zeros at the end of what was written cannot be told from the segment's
            // preallocated zeros, so the report counts the torn bytes up to the last non-zero;
            // a torn record of zeros only (a length of 256 cut after its first byte) is no
            // torn tail at all, just the end of the records.
            let torn = &bytes[offset as usize..cut as usize];
            let written = torn.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1) as u64;
            match report.torn_tail.clone() {
                Some(torn) => {
                    assert_eq!(
                        torn.offset, offset,
                        "valid data ends where the torn record starts"
                    );
                    assert_eq!(torn.bytes, written);
                }
                None => assert_eq!(written, 0, "torn bytes at {offset}..{cut} not reported"),
            }
            // Whole transactions before the cut are back; the torn one is gone entirely.
            let complete = records.iter().filter(|(o, l)| o + l <= cut).count() as i64;
            assert_eq!(
                values(&engine.snapshot(), "db.c"),
                expected_after(complete - 2)
            );
            // The file was truncated, and new commits append after the valid prefix.
            engine.close_without_checkpoint();
            drop(engine);
            if written > 0 {
                assert_eq!(std::fs::metadata(&copy).unwrap().len(), offset);
            }
            let (engine, report) = open(options(&dir)).unwrap();
            assert!(report.torn_tail.is_none());
            let coll = engine.snapshot().collection("db.c").unwrap();
            let mut t = engine.begin();
            t.insert(&coll, key(777), doc(777, 7)).unwrap();
            commit_durable(t).unwrap();
            engine.close_without_checkpoint();
            drop(engine);
            let (engine, _) = open(options(&dir)).unwrap();
            assert!(values(&engine.snapshot(), "db.c").contains(&(777, 7)));
            engine.close_without_checkpoint();
        }
    }
}

#[test]
fn damage_in_the_middle_refuses_to_open() {
    let master = TempDir::new("corrupt-master");
    {
        let (engine, _) = open(options(&master)).unwrap();
        write_history(&engine, 20);
        engine.close_without_checkpoint();
    }
    let segment = last_segment(&master);
    let bytes = std::fs::read(&segment).unwrap();
    let records = record_offsets(&master);
    // Flip one bit in the length, the checksum, and the body of a record in the middle.
    let (offset, len) = records[records.len() / 2];
    for at in [
        offset,
        offset + 5,
        offset + 9,
        offset + len / 2,
        offset + len - 1,
    ] {
        let dir = TempDir::new("corrupt");
        let log = copy_log(&master, &dir);
        let mut damaged = bytes.clone();
        damaged[at as usize] ^= 0x10;
        std::fs::write(log.join(segment.file_name().unwrap()), &damaged).unwrap();
        match open(options(&dir)) {
            Err(StorageError::Corrupt {
                segment: s,
                offset: o,
                ..
            }) => {
                assert_eq!(s.file_name(), segment.file_name());
                assert_eq!(o, offset, "the damaged record is named");
                let message = StorageError::Corrupt {
                    segment: s,
                    offset: o,
                    detail: String::new(),
                }
                .to_string();
                assert!(message.contains("mangrove verify"), "{message}");
                assert!(message.contains("--truncate-damaged-log"), "{message}");
            }
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok(_) => panic!("opened a log with a flipped bit at byte {at}"),
        }
        // Nothing was truncated: the damaged file is left as it was for inspection.
        assert_eq!(
            std::fs::read(log.join(segment.file_name().unwrap())).unwrap(),
            damaged
        );
    }
}

#[test]
fn damage_in_an_older_segment_refuses_to_open_even_at_its_end() {
    let dir = TempDir::new("corrupt-old");
    let opts = EngineOptions {
        segment_bytes: 2048,
        ..options(&dir)
    };
    {
        let (engine, _) = open(opts.clone()).unwrap();
        write_history(&engine, 60);
        engine.close_without_checkpoint();
    }
    let segments = txlog::list_segments(&dir.0.join("log")).unwrap();
    let first = &segments[0];
    let scan = txlog::scan_log(&dir.0.join("log"), None, |_, _| {}).unwrap();
    let (last_in_first, _) = scan
        .records
        .iter()
        .rfind(|(pos, _)| &pos.segment == first)
        .unwrap();
    // Tear the last record of a sealed segment (cutting off the preallocated zeros after it
    // too): that is not a crash artefact, newer segments exist.
    let file = OpenOptions::new().write(true).open(first).unwrap();
    file.set_len(last_in_first.offset + last_in_first.len - 3)
        .unwrap();
    match open(opts) {
        Err(StorageError::Corrupt { segment, .. }) => assert_eq!(&segment, first),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("opened a log with a torn sealed segment"),
    }
}

/// Transactions that implicitly create the same collection share the creation: neither
/// conflicts with the other, the collection stays invisible until the first commit, an abort
/// leaves the other's creation intact, and replay rebuilds one collection holding both.
#[test]
fn shared_implicit_creation_never_conflicts_and_replays_once() {
    let dir = TempDir::new("shared-create");
    {
        let (engine, _) = open(options(&dir)).unwrap();
        let mut a = engine.begin();
        let mut b = engine.begin();
        let mut c = engine.begin();
        let ca = a
            .create_collection_shared("db.new", bson::Document::new())
            .unwrap();
        let cb = b
            .create_collection_shared("db.new", bson::Document::new())
            .unwrap();
        let cc = c
            .create_collection_shared("db.new", bson::Document::new())
            .unwrap();
        a.insert(&ca, key(1), doc(1, 1)).unwrap();
        b.insert(&cb, key(2), doc(2, 2)).unwrap();
        c.insert(&cc, key(3), doc(3, 3)).unwrap();
        // Neither explicit DDL nor an outside reader sees or overrides the pending creation.
        assert!(engine.snapshot().collection("db.new").is_none());
        let mut ddl = engine.begin();
        assert_eq!(
            ddl.create_collection("db.new", bson::Document::new())
                .unwrap_err(),
            StorageError::WriteConflict
        );
        drop(ddl);
        c.abort();
        commit_durable(b).unwrap();
        assert_eq!(values(&engine.snapshot(), "db.new"), vec![(2, 2)]);
        commit_durable(a).unwrap();
        assert_eq!(values(&engine.snapshot(), "db.new"), vec![(1, 1), (2, 2)]);
        // A later shared create finds the committed collection and writes into it.
        let mut d = engine.begin();
        let cd = d
            .create_collection_shared("db.new", bson::Document::new())
            .unwrap();
        d.insert(&cd, key(4), doc(4, 4)).unwrap();
        commit_durable(d).unwrap();
        engine.close_without_checkpoint();
    }
    let (engine, _) = open(options(&dir)).unwrap();
    assert_eq!(
        values(&engine.snapshot(), "db.new"),
        vec![(1, 1), (2, 2), (4, 4)]
    );
    assert_eq!(engine.snapshot().list_collections("db").len(), 1);
}
