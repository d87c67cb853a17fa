#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use std::ops::ControlFlow;

use bson::rawdoc;
use mangrove_storage::{
    CollectionInfo, DocKey, Engine, EngineOptions, RecoveryReport, Snapshot, StorageError,
    Timestamp, Txn, txlog,
};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "mangrove-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn options(dir: &TempDir) -> EngineOptions {
    EngineOptions {
        data_dir: Some(dir.0.clone()),
        ..EngineOptions::default()
    }
}

pub fn open(opts: EngineOptions) -> Result<(Engine, RecoveryReport), StorageError> {
    Engine::open(opts, |_, _| {})
}

pub fn key(n: i64) -> DocKey {
    DocKey(n.to_be_bytes().to_vec())
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Commits and waits for the fdatasync, as a `j: true` write does.
pub fn commit_durable(t: Txn) -> Result<Timestamp, StorageError> {
    let mut ticket = t.commit()?;
    block_on(ticket.durable())
}

pub fn collection(engine: &Engine, ns: &str) -> CollectionInfo {
    let mut t = engine.begin();
    let (info, _) = t.ensure_collection(ns, bson::Document::new()).unwrap();
    commit_durable(t).unwrap();
    info
}

pub fn doc(id: i64, v: i64) -> Arc<bson::RawDocumentBuf> {
    Arc::new(rawdoc! { "_id": id, "v": v })
}

/// Every `(_id, v)` of a collection as `snap` sees it; empty if the collection does not exist.
pub fn values(snap: &Snapshot, ns: &str) -> Vec<(i64, i64)> {
    let Some(coll) = snap.collection(ns) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    snap.scan(&coll, None, |_, d| {
        out.push((d.get_i64("_id").unwrap(), d.get_i64("v").unwrap()));
        ControlFlow::Continue(())
    })
    .unwrap();
    out
}

/// Commits `n` transactions, each inserting document i and bumping document 0's counter, so any
/// prefix of the log has a recognisable state.
pub fn write_history(engine: &Engine, n: i64) {
    let coll = collection(engine, "db.c");
    let mut t = engine.begin();
    t.insert(&coll, key(0), doc(0, 0)).unwrap();
    commit_durable(t).unwrap();
    for i in 1..=n {
        let mut t = engine.begin();
        t.insert(&coll, key(i), doc(i, i * 10)).unwrap();
        t.replace(&coll, key(0), doc(0, i)).unwrap();
        if i % 5 == 0 {
            t.delete(&coll, key(i - 1)).unwrap();
        }
        commit_durable(t).unwrap();
    }
}

/// The state after the first `k` history transactions.
pub fn expected_after(k: i64) -> Vec<(i64, i64)> {
    let mut out = vec![(0, k)];
    for i in 1..=k {
        let deleted = (i + 1) % 5 == 0 && i < k;
        if !deleted {
            out.push((i, i * 10));
        }
    }
    out
}

/// A copy of `from`'s log directory (segments and control file) in `to`; returns it.
pub fn copy_log(from: &TempDir, to: &TempDir) -> std::path::PathBuf {
    let log = to.0.join("log");
    std::fs::create_dir_all(&log).unwrap();
    for entry in std::fs::read_dir(from.0.join("log")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), log.join(entry.file_name())).unwrap();
    }
    log
}

pub fn last_segment(dir: &TempDir) -> std::path::PathBuf {
    txlog::list_segments(&dir.0.join("log"))
        .unwrap()
        .pop()
        .unwrap()
}

/// Record boundaries of a segment, from the log reader.
pub fn record_offsets(dir: &TempDir) -> Vec<(u64, u64)> {
    let scan = txlog::scan_log(&dir.0.join("log"), None, |_, _| {}).unwrap();
    scan.records
        .iter()
        .map(|(pos, _)| (pos.offset, pos.len))
        .collect()
}
