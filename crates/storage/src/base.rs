//! The base store: the committed state as of the last checkpoint, in a redb file.
//!
//! ```text
//! docs     (coll id u64 BE ++ document key) -> (crc32c u32 LE ++ commit ts u64 LE ++ BSON document)
//! catalog  namespace                        -> (crc32c u32 LE ++ BSON { id, options, ts, indexes: [{id, spec}] })
//!
//! An index's entries are a keyspace of `docs` with the index's own id.
//! meta     "checkpoint_ts" | "next_coll_id" | "format" | "meta_crc" -> u64
//! ```
//!
//! A collection's natural (insertion) order is two more keyspaces of `docs`, whose ids the
//! engine derives from the collection's (`engine/natural.rs`); this file stores them as any
//! other.
//!
//! Only the checkpointer writes here, one redb transaction per checkpoint, so the file always
//! holds one consistent checkpoint: redb's commit is atomic and durable. Every value carries the
//! commit timestamp of the version it holds, so a reader can tell whether it may see it.
//!
//! Invariants:
//! - Every value is checksummed, and the checksum covers its key: a flipped byte, or a value
//!   found under another key, is [`StorageError::DataCorruption`] for that read, never data.
//! - redb does not verify its pages on reads; a damaged page can make it panic. Every call into
//!   redb runs under [`guarded`], which turns such a panic into `DataCorruption` naming the
//!   file, so one damaged page fails the reads that meet it and nothing else. This is the one
//!   panic the crate survives (see `panic_policy.rs`).
//! - A file of format 1 (values without checksums) is upgraded in one redb transaction on open.
//! - A file of format 1 or 2 (no natural-order keyspaces) says so ([`BaseStore::needs_natural_order`])
//!   and stays at format 2 until the engine has written them and called
//!   [`BaseStore::finish_natural_order`]: a crash in between builds them again on the next open.
//!
//! Lock order: only redb's own locks, taken with at most the engine's `state` lock held (see the
//! engine's lock order, `engine.rs`).

use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bson::{Document, RawDocumentBuf, doc};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{DocKey, StorageError, StoredDoc, Timestamp, panic_policy};

mod copy;
pub use copy::{BaseCopyReport, verify_base_file};

const DOCS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs");
const CATALOG: TableDefinition<&str, &[u8]> = TableDefinition::new("catalog");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Format 3: every collection has its natural-order keyspaces. Format 2 had every value
/// checksummed but no natural order; format 1 (no "format" key) had bare values.
const FORMAT: u64 = 3;
const FORMAT_CHECKSUMMED: u64 = 2;
const CRC_LEN: usize = 4;

fn err(context: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Io {
        context: format!("base store: {context}"),
        message: e.to_string(),
        kind: std::io::ErrorKind::Other,
    }
}

fn doc_key(coll: u64, key: &DocKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.0.len());
    k.extend_from_slice(&coll.to_be_bytes());
    k.extend_from_slice(&key.0);
    k
}

/// A checksum over a value's key and its bytes after the checksum.
fn value_crc(key: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(key), body)
}

/// `crc ++ body`, the checksum covering `key` too.
fn seal(key: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(CRC_LEN + body.len());
    v.extend_from_slice(&value_crc(key, body).to_le_bytes());
    v.extend_from_slice(body);
    v
}

/// The body of a sealed value, if its checksum holds.
fn unseal<'a>(key: &[u8], value: &'a [u8]) -> Result<&'a [u8], String> {
    let (crc, body) = value.split_first_chunk::<CRC_LEN>().ok_or_else(|| {
        format!(
            "value of {} bytes is shorter than its checksum",
            value.len()
        )
    })?;
    if value_crc(key, body) != u32::from_le_bytes(*crc) {
        return Err("checksum mismatch".into());
    }
    Ok(body)
}

fn encode_doc_value(key: &[u8], ts: Timestamp, doc: &RawDocumentBuf) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 + doc.as_bytes().len());
    body.extend_from_slice(&ts.0.to_le_bytes());
    body.extend_from_slice(doc.as_bytes());
    seal(key, &body)
}

fn decode_doc_value(key: &[u8], value: &[u8]) -> Result<(Timestamp, StoredDoc), String> {
    let body = unseal(key, value)?;
    let (ts, doc) = body
        .split_first_chunk::<8>()
        .ok_or("value shorter than its timestamp")?;
    let doc = RawDocumentBuf::from_bytes(doc.to_vec()).map_err(|e| format!("not BSON: {e}"))?;
    Ok((Timestamp(u64::from_le_bytes(*ts)), Arc::new(doc)))
}

fn meta_crc(checkpoint: u64, next_coll_id: u64) -> u64 {
    let mut bytes = [0u8; 24];
    bytes[0..8].copy_from_slice(&checkpoint.to_le_bytes());
    bytes[8..16].copy_from_slice(&next_coll_id.to_le_bytes());
    bytes[16..24].copy_from_slice(&FORMAT.to_le_bytes());
    crc32c::crc32c(&bytes) as u64
}

/// Runs a call into redb, turning a panic (redb's reaction to some damaged pages) into a
/// [`StorageError::DataCorruption`] naming the file.
/// The panic is expected, so it runs under [`panic_policy::catch`]: the server's panic hook
/// logs it but lets it unwind to here instead of stopping the process.
fn guarded<T>(path: &Path, what: &str, f: impl FnOnce() -> T) -> Result<T, StorageError> {
    panic_policy::catch(f).map_err(|panic| {
        let message = panic_policy::panic_message(&*panic);
        corruption(
            path,
            format!("the store's internal structure is damaged ({what}: {message})"),
        )
    })
}

/// The checkpoint record of a read transaction (checkpoint timestamp, next collection id),
/// checked against its checksum.
fn read_meta(txn: &redb::ReadTransaction, path: &Path) -> Result<(u64, u64), StorageError> {
    let meta = txn.open_table(META).map_err(|e| err("meta table", e))?;
    let get = |k: &str| -> Result<u64, StorageError> {
        Ok(meta
            .get(k)
            .map_err(|e| err("meta", e))?
            .map(|v| v.value())
            .unwrap_or(0))
    };
    let (checkpoint, next) = (get("checkpoint_ts")?, get("next_coll_id")?);
    if get("meta_crc")? != meta_crc(checkpoint, next) {
        let detail = "the checkpoint record (table meta) fails its checksum".to_string();
        return Err(corruption(path, detail));
    }
    Ok((checkpoint, next))
}

fn corruption(path: &Path, detail: String) -> StorageError {
    let error = StorageError::DataCorruption {
        file: path.to_path_buf(),
        detail,
    };
    tracing::error!(error = %error, "data corruption detected");
    error
}

/// A collection as the base store records it.
pub(crate) struct BaseCollection {
    pub ns: String,
    pub id: u64,
    pub options: Document,
    pub ts: Timestamp,
    /// Each secondary index: its keyspace id and normalized specification.
    pub indexes: Vec<(u64, Document)>,
}

/// What a checkpoint writes: the newest version at or before `ts` of every key changed since
/// the previous checkpoint, the whole catalog as of `ts`, and the collections dropped since.
pub(crate) struct CheckpointData {
    pub ts: Timestamp,
    pub next_coll_id: u64,
    pub docs: Vec<(u64, DocKey, Timestamp, Option<StoredDoc>)>,
    pub catalog: Vec<BaseCollection>,
    pub dropped: Vec<u64>,
}

/// What [`BaseStore::verify`] found: values read, and each problem with where it is.
#[derive(Debug, Default)]
pub struct BaseVerifyReport {
    pub values: u64,
    pub catalog_entries: u64,
    pub problems: Vec<String>,
}

pub(crate) struct BaseStore {
    db: Database,
    path: PathBuf,
    /// Opened at format 1 or 2: the natural-order keyspaces are still to be built.
    natural_pending: std::sync::atomic::AtomicBool,
}

impl BaseStore {
    pub(crate) fn open(path: &Path, cache_bytes: usize) -> Result<BaseStore, StorageError> {
        let db = guarded(path, "open", || {
            Database::builder().set_cache_size(cache_bytes).create(path)
        })?
        .map_err(|e| match e {
            // redb verifies every page after an unclean shutdown and refuses damaged ones.
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => corruption(
                path,
                format!("the store's pages fail their checksums ({detail})"),
            ),
            e => err(&format!("cannot open {}", path.display()), e),
        })?;
        let mut store = BaseStore {
            db,
            path: path.to_path_buf(),
            natural_pending: Default::default(),
        };
        store.guard("create tables", || store.create_tables())??;
        let pending = store.guard("upgrade", || store.upgrade())??;
        store.natural_pending = pending.into();
        Ok(store)
    }

    /// Runs a call into redb under [`guarded`], naming this store's file.
    fn guard<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T, StorageError> {
        guarded(&self.path, what, f)
    }

    /// The documents table of a new read transaction (which the table keeps alive).
    fn docs_table(
        &self,
    ) -> Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>, StorageError> {
        let txn = self
            .guard("begin", || self.db.begin_read())?
            .map_err(|e| err("begin", e))?;
        self.guard("open", || txn.open_table(DOCS))?
            .map_err(|e| err("docs table", e))
    }

    fn damaged(&self, detail: String) -> StorageError {
        corruption(&self.path, detail)
    }

    /// Creates the tables so readers never meet a missing one.
    fn create_tables(&self) -> Result<(), StorageError> {
        let txn = self.db.begin_write().map_err(|e| err("begin", e))?;
        txn.open_table(DOCS).map_err(|e| err("docs table", e))?;
        txn.open_table(CATALOG)
            .map_err(|e| err("catalog table", e))?;
        txn.open_table(META).map_err(|e| err("meta table", e))?;
        txn.commit().map_err(|e| err("commit", e))
    }

    /// Brings a format-1 file (values without checksums) to format 2, in one redb
    /// transaction; a new file just gets format 2 recorded. Returns whether the file is below
    /// format 3 (natural order still to be built by the engine).
    fn upgrade(&self) -> Result<bool, StorageError> {
        let txn = self.db.begin_write().map_err(|e| err("begin", e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| err("meta table", e))?;
            let get = |m: &redb::Table<&str, u64>, k: &str| -> Result<Option<u64>, StorageError> {
                Ok(m.get(k).map_err(|e| err("meta", e))?.map(|v| v.value()))
            };
            match get(&meta, "format")? {
                Some(FORMAT) => return Ok(false),
                Some(FORMAT_CHECKSUMMED) => return Ok(true),
                Some(other) => {
                    return Err(err(
                        "format",
                        format!(
                            "{} has format {other}; this build reads formats 1 to {FORMAT}: \
                             use the mangrove build that wrote it, or restore a backup",
                            self.path.display()
                        ),
                    ));
                }
                None => {}
            }
            let upgraded = upgrade_values(&txn)?;
            if upgraded > 0 {
                tracing::info!(values = upgraded, file = %self.path.display(), "base store upgraded: every value checksummed");
            }
            let checkpoint = get(&meta, "checkpoint_ts")?.unwrap_or(0);
            let next = get(&meta, "next_coll_id")?.unwrap_or(0);
            write_meta(&mut meta, checkpoint, next, FORMAT_CHECKSUMMED)?;
        }
        txn.commit().map_err(|e| err("commit", e))?;
        Ok(true)
    }

    /// Whether the file predates natural order: the engine must build its keyspaces before it
    /// serves anything (`engine/natural.rs`).
    pub(crate) fn needs_natural_order(&self) -> bool {
        self.natural_pending
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes entries of a format upgrade in one redb transaction (durable on return),
    /// leaving the checkpoint as it is.
    pub(crate) fn write_entries(
        &self,
        entries: &[(u64, DocKey, Timestamp, StoredDoc)],
    ) -> Result<(), StorageError> {
        self.guard("upgrade", || -> Result<(), StorageError> {
            let txn = self.db.begin_write().map_err(|e| err("begin", e))?;
            {
                let mut docs = txn.open_table(DOCS).map_err(|e| err("docs table", e))?;
                for (coll, key, ts, doc) in entries {
                    let k = doc_key(*coll, key);
                    docs.insert(k.as_slice(), encode_doc_value(&k, *ts, doc).as_slice())
                        .map_err(|e| err("upgrade", e))?;
                }
            }
            txn.commit().map_err(|e| err("commit", e))
        })?
    }

    /// Records that every collection has its natural-order keyspaces: the file is format 3.
    pub(crate) fn finish_natural_order(&self) -> Result<(), StorageError> {
        self.guard("upgrade", || -> Result<(), StorageError> {
            let txn = self.db.begin_write().map_err(|e| err("begin", e))?;
            {
                let mut meta = txn.open_table(META).map_err(|e| err("meta table", e))?;
                let (checkpoint, next) = {
                    let get = |k: &str| -> Result<u64, StorageError> {
                        Ok(meta
                            .get(k)
                            .map_err(|e| err("meta", e))?
                            .map_or(0, |v| v.value()))
                    };
                    (get("checkpoint_ts")?, get("next_coll_id")?)
                };
                write_meta(&mut meta, checkpoint, next, FORMAT)?;
            }
            txn.commit().map_err(|e| err("commit", e))?;
            self.natural_pending
                .store(false, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })?
    }

    /// The checkpoint timestamp, the next collection id, and the catalog.
    pub(crate) fn load(&self) -> Result<(Timestamp, u64, Vec<BaseCollection>), StorageError> {
        self.guard("load", || self.load_unguarded())?
    }

    fn load_unguarded(&self) -> Result<(Timestamp, u64, Vec<BaseCollection>), StorageError> {
        let txn = self.db.begin_read().map_err(|e| err("begin", e))?;
        let (checkpoint, next_coll_id) = read_meta(&txn, &self.path)?;
        let catalog = txn
            .open_table(CATALOG)
            .map_err(|e| err("catalog table", e))?;
        let mut collections = Vec::new();
        for entry in catalog.iter().map_err(|e| err("catalog", e))? {
            let (ns, value) = entry.map_err(|e| err("catalog", e))?;
            let ns = ns.value().to_string();
            let c = decode_catalog_entry(&ns, value.value())
                .map_err(|detail| self.damaged(format!("catalog entry {ns:?}: {detail}")))?;
            collections.push(c);
        }
        Ok((Timestamp(checkpoint), next_coll_id, collections))
    }

    pub(crate) fn get(
        &self,
        coll: u64,
        key: &DocKey,
    ) -> Result<Option<(Timestamp, StoredDoc)>, StorageError> {
        self.get_in(&self.docs_table()?, coll, key)
    }

    /// [`BaseStore::get`] of many keys of one keyspace through one read transaction (a
    /// natural-order scan looks its documents up a chunk at a time), in the order given.
    /// `lookups` chooses, from what earlier chunks of the same scan found, between a lookup per
    /// key and walks through the keys in key order (see [`Lookups`]).
    pub(crate) fn get_many<'k>(
        &self,
        coll: u64,
        keys: impl Iterator<Item = &'k DocKey>,
        lookups: &mut Lookups,
    ) -> Result<Vec<Option<(Timestamp, StoredDoc)>>, StorageError> {
        let table = self.docs_table()?;
        let keys: Vec<&DocKey> = keys.collect();
        if !lookups.walk_next() {
            return keys
                .into_iter()
                .map(|key| self.get_in(&table, coll, key))
                .collect();
        }
        let wanted: Vec<Vec<u8>> = keys.iter().map(|k| doc_key(coll, k)).collect();
        let mut order: Vec<usize> = (0..wanted.len()).collect();
        order.sort_unstable_by(|&a, &b| wanted[a].cmp(&wanted[b]));
        let mut walk = Walk {
            store: self,
            table: &table,
            coll,
            wanted: &wanted,
            order: &order,
            end: keyspace_bounds(coll, Bound::Unbounded, Bound::Unbounded).1,
            out: vec![None; wanted.len()],
        };
        let mut next = 0;
        let mut seeks = 0u64;
        while next < order.len() {
            seeks += 1;
            next = walk.from(next)?;
        }
        lookups.walked(wanted.len() as u64, seeks);
        Ok(walk.out)
    }

    /// One document of `table` (a read transaction's documents), its checksum checked.
    fn get_in(
        &self,
        table: &redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
        coll: u64,
        key: &DocKey,
    ) -> Result<Option<(Timestamp, StoredDoc)>, StorageError> {
        let k = doc_key(coll, key);
        let found = self.guard("get", || -> Result<_, StorageError> {
            let value = table.get(k.as_slice()).map_err(|e| err("get", e))?;
            Ok(value.map(|v| decode_doc_value(&k, v.value())))
        })??;
        found
            .transpose()
            .map_err(|detail| self.value_damage(coll, key, detail))
    }

    fn value_damage(&self, coll: u64, key: &DocKey, detail: String) -> StorageError {
        self.damaged(format!(
            "the value of key {} in keyspace {coll}: {detail}",
            hex(&key.0)
        ))
    }

    /// Visits a keyspace's entries in key order (descending if `reverse`) within the bounds,
    /// until `visit` breaks.
    pub(crate) fn scan(
        &self,
        coll: u64,
        lower: Bound<&DocKey>,
        upper: Bound<&DocKey>,
        reverse: bool,
        mut visit: impl FnMut(DocKey, Timestamp, StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        let (lower, upper) = keyspace_bounds(coll, lower, upper);
        let table = self.docs_table()?;
        let range = self
            .guard("scan", || {
                table.range::<&[u8]>((
                    lower.as_ref().map(|v| v.as_slice()),
                    upper.as_ref().map(|v| v.as_slice()),
                ))
            })?
            .map_err(|e| err("scan", e))?;
        let mut entries: Box<dyn Iterator<Item = _>> = if reverse {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        // Only redb's own steps are guarded: a panic in `visit` is a bug, not damage.
        while let Some(entry) = self.guard("scan", || entries.next())? {
            let (k, v) = entry.map_err(|e| err("scan", e))?;
            let key = DocKey(k.value()[8..].to_vec());
            let (ts, doc) = decode_doc_value(k.value(), v.value())
                .map_err(|d| self.value_damage(coll, &key, d))?;
            if visit(key, ts, doc).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// Writes one checkpoint atomically; on return it is durable.
    pub(crate) fn write_checkpoint(&self, data: &CheckpointData) -> Result<(), StorageError> {
        self.guard("checkpoint", || self.write_checkpoint_unguarded(data))?
    }

    fn write_checkpoint_unguarded(&self, data: &CheckpointData) -> Result<(), StorageError> {
        let txn = self.db.begin_write().map_err(|e| err("begin", e))?;
        {
            let mut docs = txn.open_table(DOCS).map_err(|e| err("docs table", e))?;
            for coll in &data.dropped {
                let (lower, upper) = keyspace_bounds(*coll, Bound::Unbounded, Bound::Unbounded);
                let range = (
                    lower.as_ref().map(|v| v.as_slice()),
                    upper.as_ref().map(|v| v.as_slice()),
                );
                docs.retain_in::<&[u8], _>(range, |_, _| false)
                    .map_err(|e| err("drop collection", e))?;
            }
            for (coll, key, ts, doc) in &data.docs {
                let k = doc_key(*coll, key);
                match doc {
                    Some(doc) => {
                        let v = encode_doc_value(&k, *ts, doc);
                        docs.insert(k.as_slice(), v.as_slice())
                            .map_err(|e| err("put", e))?;
                    }
                    None => {
                        docs.remove(k.as_slice()).map_err(|e| err("delete", e))?;
                    }
                }
            }
            let mut catalog = txn
                .open_table(CATALOG)
                .map_err(|e| err("catalog table", e))?;
            catalog
                .retain(|_, _| false)
                .map_err(|e| err("catalog", e))?;
            for c in &data.catalog {
                let value = encode_catalog_entry(c)?;
                catalog
                    .insert(c.ns.as_str(), value.as_slice())
                    .map_err(|e| err("catalog", e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| err("meta table", e))?;
            // A checkpoint never marks natural order built: only `finish_natural_order` does.
            let format = if self.needs_natural_order() {
                FORMAT_CHECKSUMMED
            } else {
                FORMAT
            };
            write_meta(&mut meta, data.ts.0, data.next_coll_id, format)?;
        }
        txn.commit().map_err(|e| err("commit", e))
    }

    /// Reads every value of the file and checks its checksum and its key order; for
    /// `mangrove verify`. Damage is reported, not repaired.
    pub fn verify(&self) -> Result<BaseVerifyReport, StorageError> {
        let mut report = BaseVerifyReport::default();
        match self.load() {
            Ok((_, _, catalog)) => report.catalog_entries = catalog.len() as u64,
            Err(e) => report.problems.push(e.to_string()),
        }
        let table = self.docs_table()?;
        let mut entries = self
            .guard("scan", || table.iter())?
            .map_err(|e| err("scan", e))?;
        let mut previous: Option<Vec<u8>> = None;
        loop {
            let entry = match self.guard("scan", || entries.next()) {
                Ok(Some(entry)) => entry.map_err(|e| err("scan", e))?,
                Ok(None) => break,
                Err(e) => {
                    report.problems.push(format!(
                        "{e} (after {} values; the rest of the file was not read)",
                        report.values
                    ));
                    break;
                }
            };
            let (k, v) = entry;
            let key = k.value().to_vec();
            report.values += 1;
            if previous.as_ref().is_some_and(|p| *p >= key) {
                report.problems.push(format!(
                    "keys out of order at {}: the tree is damaged",
                    hex(&key)
                ));
            }
            if let Err(detail) = decode_doc_value(&key, v.value()) {
                report
                    .problems
                    .push(format!("value of key {}: {detail}", hex(&key)));
            }
            previous = Some(key);
        }
        Ok(report)
    }
}

/// The walks of one [`BaseStore::get_many`]: the keys it wants (keyspace prefix included),
/// their order by key, and what it found so far, in the order asked.
struct Walk<'a> {
    store: &'a BaseStore,
    table: &'a redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    coll: u64,
    wanted: &'a [Vec<u8>],
    order: &'a [usize],
    /// The end of the keyspace.
    end: Bound<Vec<u8>>,
    out: Vec<Option<(Timestamp, StoredDoc)>>,
}

impl Walk<'_> {
    /// One walk from the wanted key `order[next]` on: fills `out` for each wanted key it
    /// passes, until the keys run out or more than [`WALK_GAP`] entries in a row were not
    /// wanted (a seek is then cheaper). Returns where the next walk starts.
    fn from(&mut self, mut next: usize) -> Result<usize, StorageError> {
        let (wanted, order) = (self.wanted, self.order);
        let first = wanted[order[next]].as_slice();
        let end = self.end.as_ref().map(|v| v.as_slice());
        let mut range = self
            .store
            .guard("get", || {
                self.table.range::<&[u8]>((Bound::Included(first), end))
            })?
            .map_err(|e| err("get", e))?;
        let mut unwanted = 0;
        while let Some(entry) = self.store.guard("get", || range.next())? {
            let (k, v) = entry.map_err(|e| err("get", e))?;
            let k = k.value();
            // Wanted keys before this entry are not in the store.
            while next < order.len() && wanted[order[next]].as_slice() < k {
                next += 1;
            }
            if next == order.len() {
                return Ok(next);
            }
            if wanted[order[next]].as_slice() != k {
                unwanted += 1;
                if unwanted > WALK_GAP {
                    return Ok(next);
                }
                continue;
            }
            unwanted = 0;
            let found = decode_doc_value(k, v.value()).map_err(|d| {
                self.store
                    .value_damage(self.coll, &DocKey(k[8..].to_vec()), d)
            })?;
            while next < order.len() && wanted[order[next]].as_slice() == k {
                self.out[order[next]] = Some(found.clone());
                next += 1;
            }
        }
        // The keyspace ended: no later key is in the store.
        Ok(order.len())
    }
}

/// Entries a walk of [`BaseStore::get_many`] passes in a row without wanting them before it
/// seeks to the next key it wants instead.
const WALK_GAP: usize = 2;

/// How a scan's chunks of lookups ([`BaseStore::get_many`]) read the base store, learned from
/// the chunks before. A walk costs two descents of the tree and then one step per entry, a
/// lookup one descent: walking wins when the wanted keys lie close together in key order
/// (documents inserted in nearly `_id` order, as concurrent writers' ObjectIds are), lookups
/// when they are scattered (random `_id`s). A scan walks while its walks find at least
/// [`WALK_YIELD`] keys per seek, and tries again every [`WALK_RETRY`] chunks otherwise, since
/// how a collection was filled can change along its natural order.
#[derive(Default)]
pub(crate) struct Lookups {
    /// Chunks looked up key by key since the last walk; `None` until one walked.
    since_walk: Option<u32>,
}

const WALK_YIELD: u64 = 3;
const WALK_RETRY: u32 = 128;

impl Lookups {
    fn walk_next(&mut self) -> bool {
        match &mut self.since_walk {
            None => true,
            Some(n) if *n + 1 >= WALK_RETRY => true,
            Some(n) => {
                *n += 1;
                false
            }
        }
    }

    /// A chunk of `keys` was walked in `seeks` walks.
    fn walked(&mut self, keys: u64, seeks: u64) {
        self.since_walk = if keys >= WALK_YIELD * seeks {
            None
        } else {
            Some(0)
        };
    }
}

/// The redb key range of a keyspace's entries within the bounds.
fn keyspace_bounds(
    coll: u64,
    lower: Bound<&DocKey>,
    upper: Bound<&DocKey>,
) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let lower = match lower {
        Bound::Included(k) => Bound::Included(doc_key(coll, k)),
        Bound::Excluded(k) => Bound::Excluded(doc_key(coll, k)),
        Bound::Unbounded => Bound::Included(coll.to_be_bytes().to_vec()),
    };
    let upper = match upper {
        Bound::Included(k) => Bound::Included(doc_key(coll, k)),
        Bound::Excluded(k) => Bound::Excluded(doc_key(coll, k)),
        Bound::Unbounded => match coll.checked_add(1) {
            Some(next) => Bound::Excluded(next.to_be_bytes().to_vec()),
            None => Bound::Unbounded,
        },
    };
    (lower, upper)
}

fn write_meta(
    meta: &mut redb::Table<&str, u64>,
    checkpoint: u64,
    next_coll_id: u64,
    format: u64,
) -> Result<(), StorageError> {
    for (k, v) in [
        ("checkpoint_ts", checkpoint),
        ("next_coll_id", next_coll_id),
        ("format", format),
        ("meta_crc", meta_crc(checkpoint, next_coll_id)),
    ] {
        meta.insert(k, v).map_err(|e| err("meta", e))?;
    }
    Ok(())
}

/// Rewrites format-1 values (bare) with checksums; returns how many.
fn upgrade_values(txn: &redb::WriteTransaction) -> Result<u64, StorageError> {
    let mut docs = txn.open_table(DOCS).map_err(|e| err("docs table", e))?;
    let mut n = 0;
    let old: Vec<(Vec<u8>, Vec<u8>)> = docs
        .iter()
        .map_err(|e| err("upgrade", e))?
        .map(|e| e.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())))
        .collect::<Result<_, _>>()
        .map_err(|e| err("upgrade", e))?;
    for (k, v) in old {
        docs.insert(k.as_slice(), seal(&k, &v).as_slice())
            .map_err(|e| err("upgrade", e))?;
        n += 1;
    }
    let mut catalog = txn
        .open_table(CATALOG)
        .map_err(|e| err("catalog table", e))?;
    let old: Vec<(String, Vec<u8>)> = catalog
        .iter()
        .map_err(|e| err("upgrade", e))?
        .map(|e| e.map(|(k, v)| (k.value().to_string(), v.value().to_vec())))
        .collect::<Result<_, _>>()
        .map_err(|e| err("upgrade", e))?;
    for (ns, v) in old {
        catalog
            .insert(ns.as_str(), seal(ns.as_bytes(), &v).as_slice())
            .map_err(|e| err("upgrade", e))?;
    }
    Ok(n)
}

fn encode_catalog_entry(c: &BaseCollection) -> Result<Vec<u8>, StorageError> {
    let indexes: Vec<Document> = c
        .indexes
        .iter()
        .map(|(id, spec)| doc! { "id": *id as i64, "spec": spec.clone() })
        .collect();
    let entry = doc! {
        "id": c.id as i64,
        "options": c.options.clone(),
        "ts": c.ts.0 as i64,
        "indexes": indexes,
    };
    let bytes = entry.to_vec().map_err(|e| err("catalog entry", e))?;
    Ok(seal(c.ns.as_bytes(), &bytes))
}

fn decode_catalog_entry(ns: &str, value: &[u8]) -> Result<BaseCollection, String> {
    let body = unseal(ns.as_bytes(), value)?;
    let d = Document::from_reader(body).map_err(|e| format!("not BSON: {e}"))?;
    let mut indexes = Vec::new();
    for index in d
        .get_array("indexes")
        .map(|a| a.as_slice())
        .unwrap_or_default()
    {
        let index = index.as_document().ok_or("index is not a document")?;
        let id = index.get_i64("id").map_err(|e| format!("index id: {e}"))?;
        let spec = index
            .get_document("spec")
            .map_err(|e| format!("index spec: {e}"))?;
        indexes.push((id as u64, spec.clone()));
    }
    Ok(BaseCollection {
        ns: ns.to_string(),
        id: d.get_i64("id").map_err(|e| format!("id: {e}"))? as u64,
        options: d.get_document("options").cloned().unwrap_or_default(),
        ts: Timestamp(d.get_i64("ts").unwrap_or(0) as u64),
        indexes,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[path = "base/lookups_tests.rs"]
mod lookups_tests;
