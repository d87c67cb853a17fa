//! A data directory written before checksums and the segment chain existed (base store format
//! 1: bare values; log segments version 1: a 16-byte header; no control file) opens, is
//! upgraded, and keeps every committed transaction.

mod common;

use common::*;
use redb::{Database, ReadableTable, TableDefinition};

const DOCS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs");
const CATALOG: TableDefinition<&str, &[u8]> = TableDefinition::new("catalog");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Strips the checksums this build added, leaving what the previous format stored.
fn downgrade_base(path: &std::path::Path) {
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut docs = txn.open_table(DOCS).unwrap();
        let all: Vec<(Vec<u8>, Vec<u8>)> = docs
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value().to_vec(), v.value()[4..].to_vec())
            })
            .collect();
        for (k, v) in all {
            docs.insert(k.as_slice(), v.as_slice()).unwrap();
        }
        let mut catalog = txn.open_table(CATALOG).unwrap();
        let all: Vec<(String, Vec<u8>)> = catalog
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value().to_string(), v.value()[4..].to_vec())
            })
            .collect();
        for (k, v) in all {
            catalog.insert(k.as_str(), v.as_slice()).unwrap();
        }
        let mut meta = txn.open_table(META).unwrap();
        meta.remove("format").unwrap();
        meta.remove("meta_crc").unwrap();
    }
    txn.commit().unwrap();
}

/// Rewrites a version-2 segment as version 1: the same records after a 16-byte header.
fn downgrade_segment(path: &std::path::Path) {
    let bytes = std::fs::read(path).unwrap();
    let mut old = Vec::with_capacity(bytes.len());
    old.extend_from_slice(b"MGVLOG\0\0");
    old.extend_from_slice(&1u32.to_le_bytes());
    old.extend_from_slice(&[0; 4]);
    old.extend_from_slice(&bytes[64..]);
    std::fs::write(path, old).unwrap();
}

#[test]
fn a_data_directory_of_the_previous_format_opens_and_is_upgraded() {
    let dir = TempDir::new("upgrade");
    {
        let (engine, _) = open(options(&dir)).unwrap();
        write_history(&engine, 10);
        engine.checkpoint().unwrap();
        let coll = engine.snapshot().collection("db.c").unwrap();
        for i in 100..110 {
            let mut t = engine.begin();
            t.insert(&coll, key(i), doc(i, i)).unwrap();
            commit_durable(t).unwrap();
        }
        engine.close_without_checkpoint();
    }
    downgrade_base(&dir.0.join("base.redb"));
    for segment in mangrove_storage::txlog::list_segments(&dir.0.join("log")).unwrap() {
        downgrade_segment(&segment);
    }
    std::fs::remove_file(dir.0.join("log").join("control")).unwrap();

    let (engine, report) = open(options(&dir)).unwrap();
    assert!(report.torn_tail.is_none() && report.cut.is_none());
    let mut expected = expected_after(10);
    expected.extend((100..110).map(|i| (i, i)));
    assert_eq!(values(&engine.snapshot(), "db.c"), expected);
    let base = engine.verify_base_store().unwrap().unwrap();
    assert!(base.problems.is_empty(), "{:?}", base.problems);
    // New writes go to a new version-2 segment that names the old one.
    let coll = engine.snapshot().collection("db.c").unwrap();
    let mut t = engine.begin();
    t.insert(&coll, key(500), doc(500, 5)).unwrap();
    commit_durable(t).unwrap();
    engine.close();
    drop(engine);
    let scan = mangrove_storage::txlog::scan_log(&dir.0.join("log"), None, |_, _| {}).unwrap();
    assert!(scan.damage.is_none(), "{:?}", scan.damage);
    let (engine, _) = open(options(&dir)).unwrap();
    assert!(values(&engine.snapshot(), "db.c").contains(&(500, 5)));
    engine.close_without_checkpoint();
}
