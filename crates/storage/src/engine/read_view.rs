//! [`ReadView`]: what a read needs, whichever view reads — a snapshot, or a transaction's
//! view of its snapshot plus its own writes. One trait, so that query execution is written
//! once for both.
//!
//! Lock order: no locks of its own (see the engine's lock order, `engine.rs`).

use std::ops::ControlFlow;

use mangrove_bson::KeyInterval;

use super::catalog::{CollectionInfo, IndexInfo};
use super::snapshot::Snapshot;
use super::txn::Txn;
use super::{DocKey, StoredDoc};
use crate::StorageError;

/// What a read needs, whether it reads a snapshot or a transaction's view (its snapshot plus
/// its own writes).
pub trait ReadView {
    fn collection(&self, ns: &str) -> Option<CollectionInfo>;
    fn get(&self, coll: &CollectionInfo, key: &DocKey) -> Result<Option<StoredDoc>, StorageError>;
    fn scan(
        &self,
        coll: &CollectionInfo,
        after: Option<&DocKey>,
        visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError>;
    fn index_multikey(&self, index: &IndexInfo) -> Result<bool, StorageError>;
    /// The documents whose keys lie in `interval`, past `resume`, in key order (descending if
    /// `reverse`).
    fn scan_range(
        &self,
        coll: &CollectionInfo,
        interval: &KeyInterval,
        resume: Option<&DocKey>,
        reverse: bool,
        visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError>;
    /// Up to `max` `(entry key, document key)` pairs of `index` in `interval`, past `resume`,
    /// descending if `reverse`.
    fn index_scan(
        &self,
        index: &IndexInfo,
        interval: &KeyInterval,
        resume: Option<&DocKey>,
        max: usize,
        reverse: bool,
    ) -> Result<Vec<(DocKey, DocKey)>, StorageError>;
    /// The documents in natural (insertion) order, past the position `resume`, reversed if
    /// `reverse`: `visit` gets each one's position, key and document.
    fn scan_natural(
        &self,
        coll: &CollectionInfo,
        resume: Option<&DocKey>,
        reverse: bool,
        visit: &mut dyn FnMut(&DocKey, &DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError>;
}

impl ReadView for Snapshot {
    fn collection(&self, ns: &str) -> Option<CollectionInfo> {
        Snapshot::collection(self, ns)
    }

    fn get(&self, coll: &CollectionInfo, key: &DocKey) -> Result<Option<StoredDoc>, StorageError> {
        Snapshot::get(self, coll, key)
    }

    fn scan(
        &self,
        coll: &CollectionInfo,
        after: Option<&DocKey>,
        visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        Snapshot::scan(self, coll, after, visit)
    }

    fn index_scan(
        &self,
        index: &IndexInfo,
        interval: &KeyInterval,
        resume: Option<&DocKey>,
        max: usize,
        reverse: bool,
    ) -> Result<Vec<(DocKey, DocKey)>, StorageError> {
        Snapshot::index_scan(self, index, interval, resume, max, reverse)
    }

    fn index_multikey(&self, index: &IndexInfo) -> Result<bool, StorageError> {
        Snapshot::index_multikey(self, index)
    }

    fn scan_range(
        &self,
        coll: &CollectionInfo,
        interval: &KeyInterval,
        resume: Option<&DocKey>,
        reverse: bool,
        visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        Snapshot::scan_range(self, coll, interval, resume, reverse, visit)
    }

    fn scan_natural(
        &self,
        coll: &CollectionInfo,
        resume: Option<&DocKey>,
        reverse: bool,
        visit: &mut dyn FnMut(&DocKey, &DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        Snapshot::scan_natural(self, coll, resume, reverse, visit)
    }
}

impl ReadView for Txn {
    fn collection(&self, ns: &str) -> Option<CollectionInfo> {
        Txn::collection(self, ns)
    }

    fn get(&self, coll: &CollectionInfo, key: &DocKey) -> Result<Option<StoredDoc>, StorageError> {
        Txn::get(self, coll, key)
    }

    fn scan(
        &self,
        coll: &CollectionInfo,
        after: Option<&DocKey>,
        visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        Txn::scan(self, coll, after, visit)
    }

    fn index_scan(
        &self,
        index: &IndexInfo,
        interval: &KeyInterval,
        resume: Option<&DocKey>,
        max: usize,
        reverse: bool,
    ) -> Result<Vec<(DocKey, DocKey)>, StorageError> {
        Txn::index_scan(self, index, interval, resume, max, reverse)
    }

    fn index_multikey(&self, index: &IndexInfo) -> Result<bool, StorageError> {
        Txn::index_multikey(self, index)
    }

    fn scan_range(
        &self,
        coll: &CollectionInfo,
        interval: &KeyInterval,
        resume: Option<&DocKey>,
        reverse: bool,
        visit: &mut dyn FnMut(&DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        Txn::scan_range(self, coll, interval, resume, reverse, visit)
    }

    fn scan_natural(
        &self,
        coll: &CollectionInfo,
        resume: Option<&DocKey>,
        reverse: bool,
        visit: &mut dyn FnMut(&DocKey, &DocKey, &StoredDoc) -> ControlFlow<()>,
    ) -> Result<(), StorageError> {
        Txn::scan_natural(self, coll, resume, reverse, visit)
    }
}
