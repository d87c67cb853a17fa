//! A transaction's collection DDL: create, create "if absent" (shared by concurrent
//! transactions), drop, change options (collMod). The catalog's types are in `catalog.rs`.
//!
//! Invariants:
//! - one catalog write per namespace per transaction: a drop and a re-create in one record would
//!   replay as a create of an existing collection;
//! - a shared creation is invisible to others until one holder commits; explicit creates and
//!   drops of its namespace conflict with it meanwhile;
//! - keyspace ids (collections and indexes) are never reused.
//!
//! Lock order: each call takes `Inner::state` (write) alone; see the engine's lock order
//! (`engine.rs`).

use std::collections::BTreeSet;
use std::sync::Arc;

use super::catalog::{CollectionInfo, with_new_uuid};
use super::txn::Txn;
use super::versions::{SharedCreate, VersionChain};
use crate::StorageError;

impl Txn {
    /// Creates the collection unless it exists; returns whether it did create it.
    pub fn ensure_collection(
        &mut self,
        ns: &str,
        options: bson::Document,
    ) -> Result<(CollectionInfo, bool), StorageError> {
        if let Some(info) = self.collection(ns) {
            return Ok((info, false));
        }
        let info = self.create_collection(ns, options)?;
        Ok((info, true))
    }

    pub fn create_collection(
        &mut self,
        ns: &str,
        options: bson::Document,
    ) -> Result<CollectionInfo, StorageError> {
        self.check_open()?;
        if self.collection(ns).is_some() {
            return Err(StorageError::NamespaceExists(ns.to_string()));
        }
        // One catalog write per namespace per transaction: a drop and a re-create in one record
        // would replay as a create of an existing collection.
        if matches!(self.catalog.get(ns), Some(None)) {
            return Err(StorageError::Encoding(format!(
                "{ns} was dropped in this transaction; create it again in a later one"
            )));
        }
        let engine = self.snapshot.engine.clone();
        let mut state = engine.write_state();
        let read_ts = self.read_ts();
        if state.shared_creates.contains_key(ns) {
            return Err(StorageError::WriteConflict);
        }
        let chain = state
            .catalog
            .entry(ns.to_string())
            .or_insert_with(VersionChain::new);
        chain.claim(self.id, read_ts)?;
        let info = state.new_collection(ns, with_new_uuid(options));
        self.catalog.insert(ns.to_string(), Some(info.clone()));
        self.created.insert(ns.to_string());
        Ok((*info).clone())
    }

    pub fn drop_collection(&mut self, ns: &str) -> Result<(), StorageError> {
        self.check_open()?;
        if self.collection(ns).is_none() {
            return Err(StorageError::NamespaceNotFound(ns.to_string()));
        }
        let engine = self.snapshot.engine.clone();
        let mut state = engine.write_state();
        let read_ts = self.read_ts();
        if state.shared_creates.contains_key(ns) {
            return Err(StorageError::WriteConflict);
        }
        state
            .catalog
            .entry(ns.to_string())
            .or_insert_with(VersionChain::new)
            .claim(self.id, read_ts)?;
        self.catalog.insert(ns.to_string(), None);
        self.created.remove(ns);
        Ok(())
    }

    /// The collection `ns`, for a change to its catalog entry (`what` it is, for the error):
    /// NamespaceNotFound without one, refused if this transaction created it implicitly
    /// (a shared creation has no catalog entry of its own to change yet).
    pub(super) fn explicit_collection(
        &self,
        ns: &str,
        what: &str,
    ) -> Result<CollectionInfo, StorageError> {
        self.check_open()?;
        let coll = self
            .collection(ns)
            .ok_or_else(|| StorageError::NamespaceNotFound(ns.to_string()))?;
        if self.shared_creates.contains(ns) {
            return Err(StorageError::Encoding(format!(
                "cannot {what} {ns}: this transaction created it implicitly; create it explicitly first"
            )));
        }
        Ok(coll)
    }

    /// Replaces the options of the collection `ns` (collMod), logged as
    /// `LogOp::SetCollectionOptions` (or in the create, if this transaction created it). Like
    /// an index change it takes the collection's catalog intent, so it waits (WriteConflict)
    /// for the transactions writing the collection: a write commits with the options its
    /// writer saw.
    pub fn set_collection_options(
        &mut self,
        ns: &str,
        options: bson::Document,
    ) -> Result<CollectionInfo, StorageError> {
        let coll = self.explicit_collection(ns, "change the options of")?;
        {
            let engine = self.snapshot.engine.clone();
            let mut state = engine.write_state();
            self.claim_catalog_for_indexes(&mut state, &coll)?;
        }
        let mut info = coll;
        info.options = Arc::new(options);
        self.catalog
            .insert(ns.to_string(), Some(Arc::new(info.clone())));
        if !self.created.contains(ns) {
            self.options_set.insert(ns.to_string());
        }
        Ok(info)
    }

    /// The collection `ns`, created "if absent" when nobody has it: MongoDB's implicit creation
    /// by a write, without its lock-timeout failures. Any number of open transactions may do
    /// this for one namespace at once; they share one collection id, the creation stays
    /// invisible to others until one of them commits, and none conflicts with another over it.
    /// A collection committed after this transaction's snapshot is returned as it is, so
    /// writes go into it. Only an explicit create or drop in progress is a conflict.
    pub fn create_collection_shared(
        &mut self,
        ns: &str,
        options: bson::Document,
    ) -> Result<CollectionInfo, StorageError> {
        self.check_open()?;
        if let Some(info) = self.collection(ns) {
            return Ok(info);
        }
        let engine = self.snapshot.engine.clone();
        let mut state = engine.write_state();
        let state = &mut *state;
        if let Some(chain) = state.catalog.get(ns) {
            if chain.intent.is_some() {
                return Err(StorageError::WriteConflict);
            }
            match chain.versions.last() {
                Some((_, Some(info))) => return Ok((**info).clone()),
                // Dropped after our snapshot: a real race with DDL.
                Some((ts, None)) if *ts > self.read_ts() => {
                    return Err(StorageError::WriteConflict);
                }
                _ => {}
            }
        }
        if !state.shared_creates.contains_key(ns) {
            let info = state.new_collection(ns, with_new_uuid(options));
            let holders = BTreeSet::new();
            let create = SharedCreate { info, holders };
            state.shared_creates.insert(ns.to_string(), create);
        }
        let Some(shared) = state.shared_creates.get_mut(ns) else {
            unreachable!("the shared create of {ns} was just ensured");
        };
        shared.holders.insert(self.id);
        let info = shared.info.clone();
        self.catalog.insert(ns.to_string(), Some(info.clone()));
        self.shared_creates.insert(ns.to_string());
        self.created.insert(ns.to_string());
        Ok((*info).clone())
    }
}
