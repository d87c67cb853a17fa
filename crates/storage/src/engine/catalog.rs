//! The catalog: collections and their secondary indexes as one version of the catalog records
//! them ([`CollectionInfo`], [`IndexInfo`]) and the layout of index entries in their
//! keyspaces. A transaction's collection DDL is in `txn_catalog.rs`, its index DDL in
//! `txn_index.rs`.
//!
//! Invariants:
//! - a catalog entry is versioned like a document (its chain lives in `State::catalog`), so a
//!   snapshot sees the collections and indexes that agree with its documents;
//! - one catalog write per namespace per transaction: a drop and a re-create in one record would
//!   replay as a create of an existing collection;
//! - keyspace ids (collections and indexes) are never reused.
//!
//! Lock order: no locks; catalog entries live under `Inner::state` (see the engine's lock
//! order, `engine.rs`).

use std::ops::ControlFlow;
use std::sync::Arc;

use bson::raw::{RawBinaryRef, cstr};
use bson::{RawDocument, RawDocumentBuf};
use mangrove_bson::{IndexSpec, PartialFilters};

use super::{CollId, DocKey, StoredDoc};
use crate::StorageError;

/// One collection as the catalog records it at some timestamp.
#[derive(Clone, Debug)]
pub struct CollectionInfo {
    pub db: String,
    pub name: String,
    /// Shared: a `CollectionInfo` is cloned for every statement that names the collection.
    pub options: Arc<bson::Document>,
    /// Secondary indexes (the `_id` index is the collection's own key order).
    pub indexes: Vec<Arc<IndexInfo>>,
    pub(super) id: CollId,
}

/// Marks, among a collection's options, that the server encodes its `_id` keys under its default
/// collation (the `collation` option), as mongod's `_id` index is. Collections created before
/// Mangrove did so lack it and keep binary keys. The engine only reads it to name the collation
/// in a duplicate `_id` error, as mongod's message does.
pub const COLLATED_ID_OPTION: &str = "mangroveCollatedId";

/// Where a collection's UUID (MongoDB's `collectionUUID`, the oplog's `ui`) is kept: among its
/// options, so it travels with them through the log, checkpoints, `collMod` and renames without
/// a format of its own. Given once, when a transaction creates the collection (never on replay,
/// which reads it back); the server shows it as `info.uuid`, never among the `options`.
pub const UUID_OPTION: &str = "uuid";

/// `options` with a new UUID, unless they hold one or describe a view (views have none).
pub(super) fn with_new_uuid(mut options: bson::Document) -> bson::Document {
    if !options.contains_key(UUID_OPTION) && !options.contains_key("viewOn") {
        options.insert(UUID_OPTION, bson::Uuid::new());
    }
    options
}

/// A collection's UUID among `options` (see [`UUID_OPTION`]).
pub fn uuid_of(options: &bson::Document) -> Option<bson::Uuid> {
    match options.get(UUID_OPTION) {
        Some(bson::Bson::Binary(b)) if b.subtype == bson::spec::BinarySubtype::Uuid => {
            Some(bson::Uuid::from_bytes(b.bytes.as_slice().try_into().ok()?))
        }
        _ => None,
    }
}

impl CollectionInfo {
    pub fn ns(&self) -> String {
        format!("{}.{}", self.db, self.name)
    }

    /// The collation its `_id` keys are encoded under (see [`COLLATED_ID_OPTION`]), as the
    /// collection's options give it; `None`: binary keys.
    pub fn id_collation_spec(&self) -> Option<&bson::Document> {
        match self.options.get(COLLATED_ID_OPTION) {
            Some(bson::Bson::Boolean(true)) => self.options.get_document("collation").ok(),
            _ => None,
        }
    }

    /// MongoDB's collection UUID; `None` for views and for collections created before
    /// Mangrove kept one.
    pub fn uuid(&self) -> Option<bson::Uuid> {
        uuid_of(&self.options)
    }

    /// The options as the user gave them (without the UUID kept among them).
    pub fn user_options(&self) -> bson::Document {
        let mut options = (*self.options).clone();
        options.remove(UUID_OPTION);
        options
    }

    /// The keyspaces this collection owns: its documents and each index's entries.
    /// Every keyspace the collection owns: its documents, its natural order, its indexes.
    pub(super) fn keyspaces(&self) -> impl Iterator<Item = CollId> + '_ {
        std::iter::once(self.id)
            .chain(natural_ids(self.id))
            .chain(self.indexes.iter().map(|i| i.id))
    }

    pub(super) fn same_indexes(&self, other: &CollectionInfo) -> bool {
        self.indexes.len() == other.indexes.len()
            && self
                .indexes
                .iter()
                .zip(&other.indexes)
                .all(|(a, b)| a.id == b.id)
    }

    /// Whether the collection has `changeStreamPreAndPostImages: {enabled: true}`: then the
    /// log records the document before each update and delete (the pre-image).
    pub fn records_pre_images(&self) -> bool {
        self.options
            .get_document("changeStreamPreAndPostImages")
            .is_ok_and(|o| o.get_bool("enabled").unwrap_or(false))
    }

    pub fn index(&self, name: &str) -> Option<&Arc<IndexInfo>> {
        self.indexes.iter().find(|i| i.key.name == name)
    }
}

/// A secondary index. Its entries live in their own keyspace, versioned like documents and
/// written in the same commit as the documents they index, so every snapshot sees indexes that
/// agree with its documents.
///
/// An entry's key is the index key (see [`IndexSpec::keys`]), followed by the document's key
/// unless the index is unique (then the key alone is the entry, so two documents with one key
/// contend for one entry: DuplicateKey, or WriteConflict while both are uncommitted). Its value
/// is `{r: <document key>}`.
#[derive(Clone, Debug)]
pub struct IndexInfo {
    /// The normalized specification, as `listIndexes` reports it.
    pub spec: bson::Document,
    pub key: Arc<IndexSpec>,
    pub(super) id: CollId,
}

impl IndexInfo {
    pub(super) fn entry_key(&self, index_key: &[u8], doc: &DocKey) -> DocKey {
        let mut k = Vec::with_capacity(index_key.len() + doc.0.len());
        k.extend_from_slice(index_key);
        if !self.key.unique {
            k.extend_from_slice(&doc.0);
        }
        DocKey(k)
    }
}

/// What an index entry costs in memory beyond its key: chain, value document, map node.
pub(super) const INDEX_ENTRY_OVERHEAD: u64 = 128;

/// The key, in an index's keyspace, of the marker saying some document made the index multikey.
/// Entry keys start with a type tag (at most 0xEF, inverted or not), so it sorts after every
/// entry, and its value has no `r`, so scans skip it. Versioned like entries and never removed
/// (as MongoDB's multikey flag), so a snapshot knows whether its view of the index is multikey.
pub(super) const MULTIKEY_MARKER: &[u8] = &[0xFF];

pub(super) fn multikey_marker() -> DocKey {
    DocKey(MULTIKEY_MARKER.to_vec())
}

pub(super) fn multikey_value() -> StoredDoc {
    let mut d = RawDocumentBuf::new();
    d.append(cstr!("multikey"), true);
    Arc::new(d)
}

pub(super) fn entry_value(doc: &DocKey) -> StoredDoc {
    let mut d = RawDocumentBuf::new();
    d.append(
        cstr!("r"),
        RawBinaryRef {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: &doc.0,
        },
    );
    Arc::new(d)
}

/// The document an index entry points at.
pub(super) fn entry_target(value: &RawDocument) -> Option<DocKey> {
    value.get_binary("r").ok().map(|b| DocKey(b.bytes.to_vec()))
}

/// A scan visitor that gathers `(entry key, document key)` pairs into `out`, stopping at `max`.
pub(super) fn collect_entries(
    out: &mut Vec<(DocKey, DocKey)>,
    max: usize,
) -> impl FnMut(&DocKey, &StoredDoc) -> ControlFlow<()> + '_ {
    move |key, value| {
        if let Some(target) = entry_target(value) {
            out.push((key.clone(), target));
        }
        if out.len() >= max {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

pub(super) fn compile_index(
    spec: bson::Document,
    id: CollId,
    partial: &PartialFilters,
) -> Result<Arc<IndexInfo>, StorageError> {
    let key = IndexSpec::compile(&spec, &**partial).map_err(StorageError::Index)?;
    Ok(Arc::new(IndexInfo {
        spec,
        key: Arc::new(key),
        id,
    }))
}

const POSITIONS_BIT: u64 = 1 << 62;
const OWNERS_BIT: u64 = 1 << 61;

/// The keyspaces of a collection's natural order (`natural.rs`): positions, then owners. Their
/// ids are the collection's with a high bit set, so they need no entry in the catalog.
pub(super) fn natural_ids(coll: CollId) -> [CollId; 2] {
    debug_assert!(
        coll < OWNERS_BIT,
        "keyspace ids are handed out from 0 upward"
    );
    [coll | POSITIONS_BIT, coll | OWNERS_BIT]
}
