//! The base store: the committed state as of the last checkpoint, in a redb file.
//!
//! ```text
//! docs     (coll id u64 BE ++ document key) -> (commit ts u64 LE ++ BSON document)
//! catalog  namespace                        -> BSON { id, options, ts, indexes: [{id, spec}] }
//!
//! An index's entries are a keyspace of `docs` with the index's own id.
//! meta     "checkpoint_ts" | "next_coll_id" -> u64
//! ```
//!
//! Only the checkpointer writes here, one redb transaction per checkpoint, so the file always
//! holds one consistent checkpoint: redb's commit is atomic and durable. Every value carries the
//! commit timestamp of the version it holds, so a reader can tell whether it may see it.

use std::ops::{Bound, ControlFlow};
use std::path::Path;
use std::sync::Arc;

use bson::{Document, RawDocumentBuf, doc};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{DocKey, StorageError, StoredDoc, Timestamp};

const DOCS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs");
const CATALOG: TableDefinition<&str, &[u8]> = TableDefinition::new("catalog");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

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

fn decode_value(value: &[u8]) -> Option<(Timestamp, StoredDoc)> {
    let (ts, doc) = value.split_first_chunk::<8>()?;
    let doc = RawDocumentBuf::from_bytes(doc.to_vec()).ok()?;
    Some((Timestamp(u64::from_le_bytes(*ts)), Arc::new(doc)))
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

pub(crate) struct BaseStore {
    db: Database,
}

impl BaseStore {
    pub(crate) fn open(path: &Path, cache_bytes: usize) -> Result<BaseStore, StorageError> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| err(&format!("cannot open {}", path.display()), e))?;
        let txn = db.begin_write().map_err(|e| err("begin", e))?;
        {
            // Create the tables so readers never meet a missing one.
            txn.open_table(DOCS).map_err(|e| err("docs table", e))?;
            txn.open_table(CATALOG)
                .map_err(|e| err("catalog table", e))?;
            txn.open_table(META).map_err(|e| err("meta table", e))?;
        }
        txn.commit().map_err(|e| err("commit", e))?;
        Ok(BaseStore { db })
    }

    /// The checkpoint timestamp, the next collection id, and the catalog.
    pub(crate) fn load(&self) -> Result<(Timestamp, u64, Vec<BaseCollection>), StorageError> {
        let txn = self.db.begin_read().map_err(|e| err("begin", e))?;
        let meta = txn.open_table(META).map_err(|e| err("meta table", e))?;
        let get = |k: &str| -> Result<u64, StorageError> {
            Ok(meta
                .get(k)
                .map_err(|e| err("meta", e))?
                .map(|v| v.value())
                .unwrap_or(0))
        };
        let checkpoint = Timestamp(get("checkpoint_ts")?);
        let next_coll_id = get("next_coll_id")?;
        let catalog = txn
            .open_table(CATALOG)
            .map_err(|e| err("catalog table", e))?;
        let mut collections = Vec::new();
        for entry in catalog.iter().map_err(|e| err("catalog", e))? {
            let (ns, value) = entry.map_err(|e| err("catalog", e))?;
            let d = Document::from_reader(value.value()).map_err(|e| err("catalog entry", e))?;
            let mut indexes = Vec::new();
            for index in d
                .get_array("indexes")
                .map(|a| a.as_slice())
                .unwrap_or_default()
            {
                let index = index
                    .as_document()
                    .ok_or_else(|| err("catalog index", "not a document"))?;
                indexes.push((
                    index
                        .get_i64("id")
                        .map_err(|e| err("catalog index id", e))? as u64,
                    index
                        .get_document("spec")
                        .map_err(|e| err("catalog index spec", e))?
                        .clone(),
                ));
            }
            collections.push(BaseCollection {
                ns: ns.value().to_string(),
                id: d.get_i64("id").map_err(|e| err("catalog id", e))? as u64,
                options: d.get_document("options").cloned().unwrap_or_default(),
                ts: Timestamp(d.get_i64("ts").unwrap_or(0) as u64),
                indexes,
            });
        }
        Ok((checkpoint, next_coll_id, collections))
    }

    pub(crate) fn get(
        &self,
        coll: u64,
        key: &DocKey,
    ) -> Result<Option<(Timestamp, StoredDoc)>, StorageError> {
        let txn = self.db.begin_read().map_err(|e| err("begin", e))?;
        let table = txn.open_table(DOCS).map_err(|e| err("docs table", e))?;
        let value = table
            .get(doc_key(coll, key).as_slice())
            .map_err(|e| err("get", e))?;
        Ok(value.and_then(|v| decode_value(v.value())))
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
        let txn = self.db.begin_read().map_err(|e| err("begin", e))?;
        let table = txn.open_table(DOCS).map_err(|e| err("docs table", e))?;
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
        let range = table
            .range::<&[u8]>((
                lower.as_ref().map(|v| v.as_slice()),
                upper.as_ref().map(|v| v.as_slice()),
            ))
            .map_err(|e| err("scan", e))?;
        let entries: Box<dyn Iterator<Item = _>> = if reverse {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        for entry in entries {
            let (k, v) = entry.map_err(|e| err("scan", e))?;
            let key = DocKey(k.value()[8..].to_vec());
            let Some((ts, doc)) = decode_value(v.value()) else {
                return Err(err(
                    "scan",
                    format!("undecodable document at key {:?}", key.0),
                ));
            };
            if visit(key, ts, doc).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// Writes one checkpoint atomically; on return it is durable.
    pub(crate) fn write_checkpoint(&self, data: &CheckpointData) -> Result<(), StorageError> {
        let txn = self.db.begin_write().map_err(|e| err("begin", e))?;
        {
            let mut docs = txn.open_table(DOCS).map_err(|e| err("docs table", e))?;
            for coll in &data.dropped {
                let lower = coll.to_be_bytes().to_vec();
                let upper = coll.checked_add(1).map(|n| n.to_be_bytes().to_vec());
                let range = (
                    Bound::Included(lower.as_slice()),
                    upper
                        .as_ref()
                        .map_or(Bound::Unbounded, |u| Bound::Excluded(u.as_slice())),
                );
                docs.retain_in::<&[u8], _>(range, |_, _| false)
                    .map_err(|e| err("drop collection", e))?;
            }
            for (coll, key, ts, doc) in &data.docs {
                let k = doc_key(*coll, key);
                match doc {
                    Some(doc) => {
                        let mut v = Vec::with_capacity(8 + doc.as_bytes().len());
                        v.extend_from_slice(&ts.0.to_le_bytes());
                        v.extend_from_slice(doc.as_bytes());
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
                catalog
                    .insert(c.ns.as_str(), bytes.as_slice())
                    .map_err(|e| err("catalog", e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| err("meta table", e))?;
            meta.insert("checkpoint_ts", data.ts.0)
                .map_err(|e| err("meta", e))?;
            meta.insert("next_coll_id", data.next_coll_id)
                .map_err(|e| err("meta", e))?;
        }
        txn.commit().map_err(|e| err("commit", e))
    }
}
