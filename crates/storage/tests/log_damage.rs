//! Damage an operator or a disk can do to a stopped data directory, and what recovery does:
//! a missing or cut segment is named, a damaged acknowledged record is told from a torn write,
//! the base store never serves a damaged value, and `truncate_damaged_log` continues from the
//! intact part, moving the rest aside.

mod common;

use common::*;
use mangrove_storage::{EngineOptions, StorageError, txlog};

/// A log of many small segments with a known history (see `write_history`).
fn segmented(tag: &str) -> (TempDir, EngineOptions, Vec<std::path::PathBuf>) {
    let dir = TempDir::new(tag);
    let opts = EngineOptions {
        segment_bytes: 2048,
        ..options(&dir)
    };
    let (engine, _) = open(opts.clone()).unwrap();
    write_history(&engine, 60);
    engine.close_without_checkpoint();
    drop(engine);
    let segments = txlog::list_segments(&dir.0.join("log")).unwrap();
    assert!(segments.len() >= 5, "only {} segments", segments.len());
    (dir, opts, segments)
}

/// Opens and expects the damage to be named: the file, and something in the detail.
fn expect_corrupt(opts: &EngineOptions, file: &std::path::Path, detail: &str) -> u64 {
    match open(opts.clone()) {
        Err(StorageError::Corrupt {
            segment,
            offset,
            detail: d,
        }) => {
            assert_eq!(segment, file, "the wrong file is blamed: {d}");
            assert!(d.contains(detail), "{d}");
            offset
        }
        Err(e) => panic!("expected Corrupt naming {}, got {e}", file.display()),
        Ok(_) => panic!("opened a log with {} damaged", file.display()),
    }
}

/// How many history transactions a reopened state reflects (document 0's counter).
fn history_len(opts: &EngineOptions) -> i64 {
    let (engine, _) = open(opts.clone()).unwrap();
    let v = values(&engine.snapshot(), "db.c");
    engine.close_without_checkpoint();
    assert_eq!(v, expected_after(v[0].1), "not a prefix of the history");
    v[0].1
}

#[test]
fn a_removed_newest_segment_is_named_and_the_flag_accepts_the_loss() {
    let (dir, opts, segments) = segmented("no-newest");
    let newest = segments.last().unwrap();
    let moved = dir.0.join("moved-away.log");
    std::fs::rename(newest, &moved).unwrap();
    expect_corrupt(&opts, newest, "is missing: the control file names it");
    let salvage = EngineOptions {
        truncate_damaged_log: true,
        ..opts.clone()
    };
    let (engine, report) = open(salvage).unwrap();
    let (damage, cut) = report.cut.clone().expect("the cut is reported");
    assert_eq!(&damage.segment, newest);
    assert!(cut.quarantine.join("control").exists(), "{cut:?}");
    let kept = values(&engine.snapshot(), "db.c")[0].1;
    assert!(kept > 0 && kept < 60, "kept {kept} of 60");
    engine.close_without_checkpoint();
    drop(engine);
    // The log is whole again: a plain open works and sees the same prefix.
    assert_eq!(history_len(&opts), kept);
}

#[test]
fn a_removed_middle_segment_is_named_not_its_neighbours() {
    let (_dir, opts, segments) = segmented("no-middle");
    let middle = &segments[segments.len() / 2];
    std::fs::remove_file(middle).unwrap();
    expect_corrupt(&opts, middle, "is missing");
    let salvage = EngineOptions {
        truncate_damaged_log: true,
        ..opts.clone()
    };
    let (engine, report) = open(salvage).unwrap();
    assert!(report.cut.is_some());
    engine.close_without_checkpoint();
    drop(engine);
    let kept = history_len(&opts);
    assert!(kept > 0 && kept < 60, "kept {kept}");
}

#[test]
fn a_removed_oldest_segment_is_named() {
    let (_dir, opts, segments) = segmented("no-oldest");
    std::fs::remove_file(&segments[0]).unwrap();
    expect_corrupt(&opts, &segments[0], "after the checkpoint");
}

#[test]
fn a_renamed_segment_is_named() {
    let (_dir, opts, segments) = segmented("renamed");
    let victim = &segments[2];
    let stem = victim.file_stem().unwrap().to_str().unwrap();
    let renamed = victim.with_file_name(format!(
        "{:016x}.log",
        u64::from_str_radix(stem, 16).unwrap() + 1
    ));
    std::fs::rename(victim, &renamed).unwrap();
    let offset = expect_corrupt(&opts, &renamed, "renamed or replaced");
    assert_eq!(offset, 16);
}

/// Flips one byte of the final record's body: written whole, so acknowledged, so not a torn
/// tail to cut quietly.
#[test]
fn a_flipped_byte_in_the_last_record_stops_start_up() {
    let dir = TempDir::new("last-record");
    {
        let (engine, _) = open(options(&dir)).unwrap();
        write_history(&engine, 12);
        engine.close_without_checkpoint();
    }
    let segment = last_segment(&dir);
    let (offset, len) = *record_offsets(&dir).last().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[(offset + len / 2) as usize] ^= 0x04;
    std::fs::write(&segment, &bytes).unwrap();
    let at = expect_corrupt(&options(&dir), &segment, "probably acknowledged");
    assert_eq!(at, offset, "the damaged record is named");
    // `log verify` says the same.
    let scan = txlog::scan_log(&dir.0.join("log"), None, |_, _| {}).unwrap();
    assert_eq!(scan.damage.map(|d| d.offset), Some(offset));
    let salvage = EngineOptions {
        truncate_damaged_log: true,
        ..options(&dir)
    };
    let (engine, report) = open(salvage).unwrap();
    assert_eq!(values(&engine.snapshot(), "db.c"), expected_after(11));
    let (_, cut) = report.cut.unwrap();
    let kept_aside = cut.quarantine.join(format!(
        "{}.from-{offset}",
        segment.file_name().unwrap().to_str().unwrap()
    ));
    assert_eq!(
        std::fs::read(&kept_aside).unwrap()[..len as usize],
        bytes[offset as usize..(offset + len) as usize],
        "the cut record is kept, byte for byte"
    );
    engine.close_without_checkpoint();
}

/// A flipped bit in the last record's length field, making it run past the written bytes:
/// the body's own length shows the record is whole, so this is damage too.
#[test]
fn a_damaged_length_of_the_last_record_is_not_taken_for_a_torn_write() {
    let dir = TempDir::new("last-length");
    {
        let (engine, _) = open(options(&dir)).unwrap();
        write_history(&engine, 12);
        engine.close_without_checkpoint();
    }
    let segment = last_segment(&dir);
    let (offset, _) = *record_offsets(&dir).last().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[offset as usize + 1] ^= 0x40; // +16 KiB
    std::fs::write(&segment, &bytes).unwrap();
    expect_corrupt(&options(&dir), &segment, "probably acknowledged");
}

/// A crash in the middle of writing a large final record leaves an aligned page of it
/// unwritten (zeros): a torn write, cut at the next start, with what it held reported.
#[test]
fn a_zero_page_inside_the_last_record_is_a_torn_write() {
    let dir = TempDir::new("zero-page");
    {
        let (engine, _) = open(options(&dir)).unwrap();
        write_history(&engine, 5);
        let coll = collection(&engine, "db.c");
        let mut t = engine.begin();
        let big = bson::rawdoc! { "_id": 1000i64, "v": 1i64, "pad": "p".repeat(20_000) };
        t.insert(&coll, key(1000), std::sync::Arc::new(big))
            .unwrap();
        commit_durable(t).unwrap();
        engine.close_without_checkpoint();
    }
    let segment = last_segment(&dir);
    let (offset, len) = *record_offsets(&dir).last().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let page = (offset as usize).next_multiple_of(4096) + 4096;
    assert!(page + 4096 < (offset + len) as usize);
    bytes[page..page + 4096].fill(0);
    std::fs::write(&segment, &bytes).unwrap();
    let (engine, report) = open(options(&dir)).unwrap();
    let torn = report.torn_tail.expect("a torn tail");
    assert_eq!(torn.offset, offset);
    assert!(torn.record.contains("commit timestamp"), "{}", torn.record);
    assert_eq!(values(&engine.snapshot(), "db.c"), expected_after(5));
    engine.close_without_checkpoint();
}

#[test]
fn a_missing_control_file_is_named() {
    let (dir, opts, _) = segmented("no-control");
    let control = dir.0.join("log").join("control");
    std::fs::remove_file(&control).unwrap();
    expect_corrupt(&opts, &control, "is missing");
    let salvage = EngineOptions {
        truncate_damaged_log: true,
        ..opts.clone()
    };
    let (engine, _) = open(salvage).unwrap();
    assert_eq!(values(&engine.snapshot(), "db.c"), expected_after(60));
    engine.close_without_checkpoint();
    drop(engine);
    assert!(control.exists(), "rebuilt");
    assert_eq!(history_len(&opts), 60);
}

/// After checkpoints removed the old segments, the log still checks out, and a clean close
/// records the exact end.
#[test]
fn checkpoints_and_clean_shutdowns_keep_the_chain_whole() {
    let (dir, opts, _) = segmented("chain-checkpoint");
    let (engine, _) = open(opts.clone()).unwrap();
    engine.checkpoint().unwrap();
    write_history_more(&engine);
    engine.close();
    drop(engine);
    let scan = txlog::scan_log(&dir.0.join("log"), None, |_, _| {}).unwrap();
    assert!(scan.damage.is_none(), "{:?}", scan.damage);
    let control = scan.control.unwrap();
    let end = scan.end.unwrap();
    assert_eq!(control.durable.map(|d| d.offset), Some(end.offset));
    let (engine, _) = open(opts).unwrap();
    assert_eq!(values(&engine.snapshot(), "db.extra").len(), 30);
    engine.close_without_checkpoint();
}

fn write_history_more(engine: &mangrove_storage::Engine) {
    let coll = collection(engine, "db.extra");
    for i in 0..30 {
        let mut t = engine.begin();
        t.insert(&coll, key(i), doc(i, i)).unwrap();
        commit_durable(t).unwrap();
    }
}

/// A crash while a new segment was being created (its file made, its header not yet written)
/// leaves an empty newest file. Recovery removes it and the log goes on in the segment before
/// it, so the next opens find an unbroken chain. (The first version of this left the log's
/// end unset, the writer started a segment naming no predecessor, and the *second* open
/// refused the directory: found by `tests/crash.rs`, killing a writer mid-rotation.)
#[test]
fn a_newest_segment_whose_header_was_never_written_is_removed_and_the_chain_holds() {
    let (dir, opts, segments) = segmented("headerless");
    let newest = segments.last().unwrap();
    let name = newest.file_name().unwrap().to_str().unwrap();
    let first_ts = u64::from_str_radix(name.trim_end_matches(".log"), 16).unwrap();
    let empty = dir
        .0
        .join("log")
        .join(format!("{:016x}.log", first_ts + 1000));
    std::fs::File::create(&empty).unwrap();
    for round in 0..3 {
        let (engine, report) = open(opts.clone()).unwrap_or_else(|e| panic!("open {round}: {e}"));
        if round == 0 {
            let torn = report.torn_tail.expect("the empty segment is a torn tail");
            assert_eq!(torn.segment, empty);
        }
        assert_eq!(values(&engine.snapshot(), "db.c"), expected_after(60));
        // What each round wrote is still there, and this round writes more.
        let extra = values(&engine.snapshot(), "db.extra");
        assert_eq!(extra.len() as i64, round);
        let coll = collection(&engine, "db.extra");
        let mut t = engine.begin();
        t.insert(&coll, key(round), doc(round, round)).unwrap();
        commit_durable(t).unwrap();
        engine.close_without_checkpoint();
    }
    assert!(!empty.exists(), "the empty segment was left in place");
}
