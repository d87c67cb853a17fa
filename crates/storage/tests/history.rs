//! Reading committed history back from the log (change streams, `local.oplog.rs`), and how
//! long the log keeps it: real files, real segment switches, real removals.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bson::{doc, rawdoc};
use common::*;
use mangrove_bson::{IndexSpec, no_partial_filters};
use mangrove_storage::txlog::{self, CommitMeta, LogOp, LogRecord};
use mangrove_storage::{
    Engine, EngineOptions, HistoryReader, StorageError, TAIL_RECORDS, Timestamp,
};

fn small_segments(dir: &TempDir) -> EngineOptions {
    EngineOptions {
        segment_bytes: 2048,
        ..options(dir)
    }
}

/// Commits `n` inserts of documents `from..from + n`, each durably; returns their timestamps.
fn insert_many(engine: &Engine, from: i64, n: i64) -> Vec<Timestamp> {
    let coll = collection(engine, "db.h");
    (from..from + n)
        .map(|i| {
            let mut t = engine.begin();
            t.insert(&coll, key(i), doc(i, i)).unwrap();
            commit_durable(t).unwrap()
        })
        .collect()
}

/// Every record a reader returns from now until it is caught up, in batches of `batch`.
fn drain(reader: &mut HistoryReader, batch: usize) -> Result<Vec<LogRecord>, StorageError> {
    let mut out = Vec::new();
    loop {
        let records = reader.next_batch(batch, usize::MAX)?;
        if records.is_empty() {
            return Ok(out);
        }
        assert!(records.len() <= batch);
        assert_eq!(reader.position(), records.last().unwrap().ts);
        out.extend(records);
    }
}

/// The `_id`s the records insert into `db.h`, in order.
fn inserted_ids(records: &[LogRecord]) -> Vec<i64> {
    records
        .iter()
        .flat_map(|r| &r.ops)
        .filter_map(|op| match op {
            LogOp::Insert { ns, doc, .. } if ns == "db.h" => Some(doc.get_i64("_id").unwrap()),
            _ => None,
        })
        .collect()
}

fn assert_strictly_increasing(records: &[LogRecord]) {
    assert!(
        records.windows(2).all(|w| w[0].ts < w[1].ts),
        "records out of order or repeated"
    );
}

fn log_bytes(dir: &TempDir) -> u64 {
    txlog::list_segments(&dir.0.join("log"))
        .unwrap()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn records_across_small_segments_come_back_in_order_exactly_once() {
    let dir = TempDir::new("hist-order");
    let (engine, _) = open(small_segments(&dir)).unwrap();
    let stamps = insert_many(&engine, 0, 200);
    let segments = txlog::list_segments(&dir.0.join("log")).unwrap().len();
    assert!(segments > 10, "only {segments} segments");

    let mut reader = engine.read_history(Timestamp::ZERO).unwrap();
    assert_eq!(reader.position(), Timestamp::ZERO);
    let records = drain(&mut reader, 7).unwrap();
    assert_strictly_increasing(&records);
    assert_eq!(inserted_ids(&records), (0..200).collect::<Vec<_>>());
    assert_eq!(records.last().unwrap().ts, *stamps.last().unwrap());
    assert!(reader.next_batch(10, usize::MAX).unwrap().is_empty());

    // From a point in the middle: exactly the records after it, whichever segment it is in.
    for cut in [0usize, 1, 57, 120, 198, 199] {
        let mut reader = engine.read_history(stamps[cut]).unwrap();
        let records = drain(&mut reader, 1000).unwrap();
        assert_eq!(
            inserted_ids(&records),
            (cut as i64 + 1..200).collect::<Vec<_>>()
        );
    }
    // A byte budget bounds a batch, but never below one record.
    let mut reader = engine.read_history(Timestamp::ZERO).unwrap();
    assert_eq!(reader.next_batch(100, 1).unwrap().len(), 1);
    engine.close();
}

#[test]
fn a_reader_never_returns_records_past_the_durable_end() {
    // The engine under test is opened read-only on a copy of a log; then the copy's files are
    // replaced by a longer log from disk. Those extra records are on disk, whole and valid,
    // but not durable as far as this engine knows: the reader must stop before them.
    let source = TempDir::new("hist-durable-src");
    let copy = TempDir::new("hist-durable-copy");
    let first = {
        let (engine, _) = open(small_segments(&source)).unwrap();
        let stamps = insert_many(&engine, 0, 30);
        engine.close_without_checkpoint();
        stamps
    };
    copy_log(&source, &copy);
    {
        let (engine, _) = open(small_segments(&source)).unwrap();
        insert_many(&engine, 30, 30);
        engine.close_without_checkpoint();
    }
    let read_only = EngineOptions {
        read_only: true,
        ..small_segments(&copy)
    };
    let (engine, _) = open(read_only).unwrap();
    assert_eq!(engine.last_durable(), *first.last().unwrap());
    copy_log(&source, &copy);
    assert!(txlog::list_segments(&copy.0.join("log")).unwrap().len() > 2);

    let mut reader = engine.read_history(Timestamp::ZERO).unwrap();
    let records = drain(&mut reader, 4).unwrap();
    assert_eq!(inserted_ids(&records), (0..30).collect::<Vec<_>>());
    assert!(records.iter().all(|r| r.ts <= engine.last_durable()));
    // Asking again changes nothing while the durable end stays.
    assert!(reader.next_batch(100, usize::MAX).unwrap().is_empty());
    assert_eq!(reader.position(), *first.last().unwrap());
}

#[test]
fn concurrent_commits_while_reading_are_each_seen_once_and_only_when_durable() {
    let dir = TempDir::new("hist-concurrent");
    let (engine, _) = open(small_segments(&dir)).unwrap();
    let coll = collection(&engine, "db.h");
    let start = engine.last_durable();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (engine, coll, done) = (engine.clone(), coll.clone(), done.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let mut last = None;
            for i in 0..600 {
                let mut t = engine.begin();
                t.insert(&coll, key(i), doc(i, i)).unwrap();
                // Only visible: the reader races the fdatasync.
                let mut ticket = t.commit().unwrap();
                rt.block_on(ticket.visible()).unwrap();
                last = Some(ticket);
            }
            rt.block_on(last.unwrap().durable()).unwrap();
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut reader = engine.read_history(start).unwrap();
    let mut records = Vec::new();
    loop {
        let finished = done.load(Ordering::SeqCst);
        assert!(
            finished || !writer.is_finished(),
            "the writer thread failed"
        );
        let batch = reader.next_batch(13, usize::MAX).unwrap();
        let durable = engine.last_durable();
        assert!(
            batch.iter().all(|r| r.ts <= durable),
            "a non-durable record"
        );
        records.extend(batch);
        if finished && reader.position() == engine.last_durable() {
            break;
        }
    }
    writer.join().unwrap();
    assert_strictly_increasing(&records);
    assert_eq!(inserted_ids(&records), (0..600).collect::<Vec<_>>());
    engine.close();
}

#[test]
fn wait_durable_after_wakes_on_a_commit_and_times_out_without_one() {
    let dir = TempDir::new("hist-wait");
    let (engine, _) = open(options(&dir)).unwrap();
    let coll = collection(&engine, "db.h");
    let now = engine.last_durable();
    let waited = block_on(engine.wait_durable_after(now, Duration::from_millis(50)));
    assert_eq!(waited, now, "nothing committed: the timeout answers");
    let committer = {
        let (engine, coll) = (engine.clone(), coll.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut t = engine.begin();
            t.insert(&coll, key(1), doc(1, 1)).unwrap();
            commit_durable(t).unwrap()
        })
    };
    let waited = block_on(engine.wait_durable_after(now, Duration::from_secs(30)));
    let ts = committer.join().unwrap();
    assert!(waited > now && waited <= ts);
    engine.close();
}

#[test]
fn retention_keeps_the_log_within_its_size_limit_after_a_checkpoint() {
    let dir = TempDir::new("hist-size");
    let limit = 16 * 1024;
    let opts = EngineOptions {
        history_size_bytes: limit,
        ..small_segments(&dir)
    };
    let (engine, _) = open(opts).unwrap();
    insert_many(&engine, 0, 400);
    let before = log_bytes(&dir);
    assert!(before > 2 * limit, "only {before} bytes of log");
    let report = engine.checkpoint().unwrap().unwrap();
    assert!(report.segments_removed > 0);
    let after = log_bytes(&dir);
    let largest = txlog::list_segments(&dir.0.join("log"))
        .unwrap()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .max()
        .unwrap();
    // Within the limit, and not more than one segment below it: removal stops once under.
    assert!(after <= limit, "{after} bytes kept, limit {limit}");
    assert!(
        after + largest > limit,
        "{after} bytes kept: removed too much"
    );
    let stats = engine.history_truncation_stats();
    assert_eq!(stats.truncate_count, report.segments_removed as u64);

    let window = engine.history_window().unwrap();
    assert_eq!(window.retained_bytes, after);
    assert_eq!(window.size_limit_bytes, limit);
    assert_eq!(window.newest, engine.last_durable());
    let oldest = window.oldest.unwrap();
    assert!(window.oldest_wall_ms.unwrap() > 0 && window.newest_wall_ms.unwrap() > 0);
    // Everything from the oldest retained record on is readable, in order.
    let mut reader = engine.read_history(Timestamp(oldest.0 - 1)).unwrap();
    let records = drain(&mut reader, 50).unwrap();
    assert_eq!(records[0].ts, oldest);
    assert_eq!(records.last().unwrap().ts, window.newest);
    assert_strictly_increasing(&records);
    engine.close();
}

#[test]
fn the_default_size_limit_keeps_every_covered_segment() {
    let dir = TempDir::new("hist-keep");
    let (engine, _) = open(small_segments(&dir)).unwrap();
    insert_many(&engine, 0, 100);
    let segments = txlog::list_segments(&dir.0.join("log")).unwrap().len();
    let report = engine.checkpoint().unwrap().unwrap();
    assert_eq!(report.segments_removed, 0);
    assert_eq!(
        txlog::list_segments(&dir.0.join("log")).unwrap().len(),
        segments
    );
    let records = drain(&mut engine.read_history(Timestamp::ZERO).unwrap(), 1000).unwrap();
    assert_eq!(inserted_ids(&records), (0..100).collect::<Vec<_>>());
    engine.close();
}

#[test]
fn reading_from_before_the_oldest_retained_record_is_history_lost() {
    let dir = TempDir::new("hist-lost");
    let opts = EngineOptions {
        history_size_bytes: 32 * 1024,
        ..small_segments(&dir)
    };
    let (engine, _) = open(opts).unwrap();
    let stamps = insert_many(&engine, 0, 300);
    engine.checkpoint().unwrap().unwrap();
    let oldest = engine.history_window().unwrap().oldest.unwrap();
    assert!(oldest > stamps[0]);
    match engine.read_history(stamps[0]) {
        Err(StorageError::HistoryLost {
            requested,
            oldest: Some(o),
        }) => {
            assert_eq!((requested, o), (stamps[0], oldest));
        }
        Err(e) => panic!("expected HistoryLost, got {e}"),
        Ok(_) => panic!("expected HistoryLost, got a reader"),
    }
    let message = engine
        .read_history(Timestamp::ZERO)
        .err()
        .unwrap()
        .to_string();
    assert!(message.contains("--oplog-size-mb"), "{message}");
    // Just before the oldest record is still whole.
    let mut reader = engine.read_history(Timestamp(oldest.0 - 1)).unwrap();
    assert_eq!(reader.next_batch(1, usize::MAX).unwrap()[0].ts, oldest);
    engine.close();
}

#[test]
fn a_reader_whose_next_segment_was_removed_gets_history_lost() {
    let dir = TempDir::new("hist-lost-open");
    let (engine, _) = open(small_segments(&dir)).unwrap();
    insert_many(&engine, 0, 300);
    let mut reader = engine.read_history(Timestamp::ZERO).unwrap();
    // The reader holds the first segment open; then retention removes most of the log.
    let first = reader.next_batch(1, usize::MAX).unwrap();
    assert_eq!(first.len(), 1);
    engine.set_history_retention(16 * 1024, Duration::ZERO);
    insert_many(&engine, 300, 1);
    // The checkpoint the resize asked for may already have run and removed them.
    engine.checkpoint().unwrap();
    assert!(engine.history_truncation_stats().truncate_count > 0);
    // The open segment still reads through its descriptor; the one after it is gone.
    match drain(&mut reader, 5) {
        Err(StorageError::HistoryLost { requested, .. }) => {
            assert!(requested > first[0].ts);
        }
        other => panic!("expected HistoryLost, got {:?}", other.map(|r| r.len())),
    }
    engine.close();
}

#[test]
fn min_retention_keeps_old_segments_until_it_is_lowered() {
    let dir = TempDir::new("hist-minret");
    let opts = EngineOptions {
        history_size_bytes: 0,
        history_min_retention: Duration::from_secs(3600),
        ..small_segments(&dir)
    };
    let (engine, _) = open(opts).unwrap();
    insert_many(&engine, 0, 100);
    let segments = txlog::list_segments(&dir.0.join("log")).unwrap().len();
    assert_eq!(engine.checkpoint().unwrap().unwrap().segments_removed, 0);
    assert_eq!(
        txlog::list_segments(&dir.0.join("log")).unwrap().len(),
        segments
    );
    let window = engine.history_window().unwrap();
    assert_eq!(window.min_retention, Duration::from_secs(3600));
    // replSetResizeOplog lowers it: the next checkpoint (even with nothing new) removes.
    engine.set_history_retention(0, Duration::ZERO);
    assert!(engine.checkpoint().unwrap().is_none());
    assert_eq!(txlog::list_segments(&dir.0.join("log")).unwrap().len(), 1);
    assert_eq!(engine.history_window().unwrap().size_limit_bytes, 0);
    engine.close();
}

#[test]
fn history_is_readable_after_close_and_reopen_without_being_replayed() {
    let dir = TempDir::new("hist-reopen");
    let (engine, _) = open(small_segments(&dir)).unwrap();
    let stamps = insert_many(&engine, 0, 150);
    let before = drain(&mut engine.read_history(Timestamp::ZERO).unwrap(), 64).unwrap();
    engine.close();
    drop(engine);
    let (engine, report) = open(small_segments(&dir)).unwrap();
    // Recovery read only the segments the checkpoint does not cover.
    assert!(report.segments_skipped > 5, "{report:?}");
    assert!(report.records < 20, "{report:?}");
    let after = drain(&mut engine.read_history(Timestamp::ZERO).unwrap(), 64).unwrap();
    assert_eq!(after, before);
    assert_eq!(inserted_ids(&after), (0..150).collect::<Vec<_>>());
    assert_eq!(engine.history_window().unwrap().oldest, Some(before[0].ts));
    assert!(stamps.iter().all(|ts| *ts <= engine.last_durable()));
    engine.close();
}

#[test]
fn a_flipped_byte_in_a_retained_segment_names_the_file_and_offset() {
    let dir = TempDir::new("hist-flip");
    {
        let (engine, _) = open(small_segments(&dir)).unwrap();
        insert_many(&engine, 0, 100);
        engine.close();
    }
    let scan = txlog::scan_log(&dir.0.join("log"), None, |_, _| {}).unwrap();
    let (pos, _) = &scan.records[scan.records.len() / 3];
    let mut bytes = std::fs::read(&pos.segment).unwrap();
    bytes[(pos.offset + pos.len - 3) as usize] ^= 0x40;
    std::fs::write(&pos.segment, &bytes).unwrap();
    // Start-up does not read covered segments: it opens, and the reader finds the damage.
    let (engine, _) = open(small_segments(&dir)).unwrap();
    let mut reader = engine.read_history(Timestamp::ZERO).unwrap();
    let err = drain(&mut reader, 3).unwrap_err();
    match &err {
        StorageError::Corrupt {
            segment, offset, ..
        } => assert_eq!((segment, *offset), (&pos.segment, pos.offset)),
        other => panic!("expected Corrupt, got {other}"),
    }
    let message = err.to_string();
    let name = pos.segment.file_name().unwrap().to_string_lossy();
    assert!(message.contains(&*name), "{message}");
    assert!(
        message.contains(&format!("offset {}", pos.offset)),
        "{message}"
    );
    engine.close();
}

#[test]
fn an_in_memory_engine_has_no_history() {
    let engine = Engine::in_memory();
    assert!(matches!(
        engine.read_history(Timestamp::ZERO),
        Err(StorageError::NoHistory)
    ));
    let window = engine.history_window().unwrap();
    assert_eq!((window.oldest, window.retained_bytes), (None, 0));
    assert_eq!(window.newest, engine.last_durable());
}

/// Commits one of every kind of log op, each durably, with session fields on some; returns
/// the commits' timestamps.
fn every_kind_of_op(engine: &Engine) -> Vec<Timestamp> {
    let ns = "db.kinds";
    let session = |n: i64, in_transaction: bool| CommitMeta {
        lsid: Some(doc! { "id": bson::Uuid::new() }),
        txn_number: Some(n),
        in_transaction,
    };
    let mut stamps = Vec::new();
    let mut t = engine.begin();
    t.set_meta(session(1, true));
    let options = doc! { "changeStreamPreAndPostImages": { "enabled": true } };
    let coll = t.create_collection(ns, options).unwrap();
    t.insert(&coll, key(1), doc(1, 10)).unwrap();
    t.insert(&coll, key(2), doc(2, 20)).unwrap();
    stamps.push(commit_durable(t).unwrap());
    let mut t = engine.begin();
    let raw = doc! { "key": { "v": 1 }, "name": "v_1" };
    let spec = IndexSpec::normalize(
        &bson::RawDocumentBuf::try_from(&raw).unwrap(),
        &no_partial_filters,
    );
    t.create_index(ns, spec.unwrap()).unwrap();
    stamps.push(commit_durable(t).unwrap());
    let mut t = engine.begin();
    t.set_meta(session(2, false));
    t.update(&coll, key(1), doc(1, 11)).unwrap();
    t.replace(&coll, key(2), Arc::new(rawdoc! { "_id": 2i64, "w": "x" }))
        .unwrap();
    stamps.push(commit_durable(t).unwrap());
    let mut t = engine.begin();
    t.delete(&coll, key(1)).unwrap();
    stamps.push(commit_durable(t).unwrap());
    let mut t = engine.begin();
    t.set_collection_options(ns, doc! { "validationLevel": "moderate" })
        .unwrap();
    t.annotate(
        ns,
        doc! { "collMod": "kinds", "validationLevel": "moderate" },
    );
    stamps.push(commit_durable(t).unwrap());
    let mut t = engine.begin();
    t.drop_index(ns, "v_1").unwrap();
    stamps.push(commit_durable(t).unwrap());
    let mut t = engine.begin();
    t.drop_collection(ns).unwrap();
    stamps.push(commit_durable(t).unwrap());
    stamps
}

/// The shared tail starts when first read, then holds what the log writer hands over: exactly
/// the records reading the log gives, for every kind of op, after the position it started at.
#[test]
fn shared_tail_hands_over_exactly_the_records_the_log_holds() {
    let dir = TempDir::new("hist-tail");
    let (engine, _) = open(small_segments(&dir)).unwrap();
    let before = insert_many(&engine, 0, 5);
    let start = *before.last().unwrap();
    // Not running: the first read starts it, and the caller reads its own history meanwhile.
    assert!(engine.read_tail(start, 100).is_none());
    assert!(
        engine.read_tail(start, 100).is_none(),
        "nothing handed over yet"
    );
    let mut stamps = every_kind_of_op(&engine);
    stamps.extend(insert_many(&engine, 5, 40));
    let from_tail = engine.read_tail(start, 1000).unwrap();
    let tail_ts: Vec<Timestamp> = from_tail.iter().map(|r| r.record.ts).collect();
    assert_eq!(tail_ts, stamps);
    let own = drain(&mut engine.read_history(start).unwrap(), 7).unwrap();
    let tail_records: Vec<LogRecord> = from_tail.iter().map(|r| r.record.clone()).collect();
    assert_eq!(tail_records, own);
    let kinds: Vec<&str> = own.iter().flat_map(|r| &r.ops).map(LogOp::kind).collect();
    for kind in [
        "create",
        "createIndex",
        "insert",
        "update",
        "delete",
        "collMod",
        "command",
        "dropIndex",
        "drop",
    ] {
        assert!(kinds.contains(&kind), "no {kind} op in {kinds:?}");
    }
    assert!(own.iter().any(|r| r.meta.in_transaction));
    // From the middle, bounded by `max`; at the newest, nothing yet; before the start, `None`.
    let middle = engine.read_tail(stamps[9], 5).unwrap();
    let middle_ts: Vec<Timestamp> = middle.iter().map(|r| r.record.ts).collect();
    assert_eq!(middle_ts, stamps[10..15]);
    assert!(
        engine
            .read_tail(*stamps.last().unwrap(), 10)
            .unwrap()
            .is_empty()
    );
    assert!(engine.read_tail(before[1], 10).is_none());
    // What a reader remembers about a record in the ring is there for the next one.
    assert!(from_tail[0].shared());
    from_tail[0].remember(&engine, 7u32, 64);
    assert_eq!(from_tail[0].memo::<u32>(|v| *v == 7).as_deref(), Some(&7));
    assert!(from_tail[0].memo::<u64>(|_| true).is_none());
}

/// A tail nobody reads stops at the next commit (commits stop keeping their records for it);
/// the next read starts it again after the commits it missed.
#[test]
fn an_unread_shared_tail_stops_and_starts_again_after_what_it_missed() {
    let dir = TempDir::new("hist-tail-idle");
    let (engine, _) = open(options(&dir)).unwrap();
    let start = *insert_many(&engine, 0, 2).last().unwrap();
    assert!(engine.read_tail(start, 100).is_none());
    let first = insert_many(&engine, 2, 3);
    assert_eq!(engine.read_tail(start, 100).unwrap().len(), 3);
    std::thread::sleep(mangrove_storage::TAIL_IDLE + Duration::from_millis(100));
    let missed = insert_many(&engine, 5, 2);
    assert!(
        engine.read_tail(first[2], 100).is_none(),
        "stopped, and starts"
    );
    let after = insert_many(&engine, 7, 3);
    // Started after the last commit it missed: earlier positions read their own history.
    assert!(engine.read_tail(first[2], 100).is_none());
    let served = engine.read_tail(missed[1], 100).unwrap();
    let served_ts: Vec<Timestamp> = served.iter().map(|r| r.record.ts).collect();
    assert_eq!(served_ts, after);
    assert!(!served[0].record.ops.is_empty());
}

/// A reader that falls further behind than the ring holds gets `None` (it reads its own
/// history from the log), and is served by the ring again once its own reads caught up; what
/// it gets on the way is every record once, in order.
#[test]
fn a_reader_behind_the_ring_reads_its_own_history_then_rejoins_the_ring() {
    let dir = TempDir::new("hist-tail-behind");
    let (engine, _) = open(options(&dir)).unwrap();
    let start = *insert_many(&engine, 0, 1).last().unwrap();
    assert!(engine.read_tail(start, 100).is_none(), "starts the ring");
    let coll = collection(&engine, "db.h");
    let n = TAIL_RECORDS as i64 + 200;
    let mut last = None;
    for i in 1..=n {
        let mut t = engine.begin();
        t.insert(&coll, key(i), doc(i, i)).unwrap();
        last = Some(t.commit().unwrap());
    }
    block_on(last.unwrap().durable()).unwrap();
    assert!(
        engine.read_tail(start, 100).is_none(),
        "evicted past the reader"
    );
    let (mut position, mut seen, mut from_ring) = (start, Vec::new(), 0);
    let mut own = engine.read_history(start).unwrap();
    loop {
        let records: Vec<LogRecord> = match engine.read_tail(position, 300) {
            Some(tail) => {
                from_ring += tail.len();
                tail.iter().map(|r| r.record.clone()).collect()
            }
            None => {
                if own.position() != position {
                    own = engine.read_history(position).unwrap();
                }
                own.next_batch(300, usize::MAX).unwrap()
            }
        };
        let Some(newest) = records.last() else { break };
        position = newest.ts;
        seen.extend(records);
    }
    assert_strictly_increasing(&seen);
    assert_eq!(inserted_ids(&seen), (1..=n).collect::<Vec<i64>>());
    assert!(
        from_ring > 0 && from_ring < TAIL_RECORDS,
        "{from_ring} from the ring"
    );
}
