//! The storage engine: multi-version documents, snapshots and write transactions.
//!
//! This crate owns *what is committed and who may see it*. It knows nothing about commands,
//! sessions or the query language: callers hand it documents already keyed by the
//! order-preserving encoding of their `_id`.
//!
//! The engine is in memory for now. Its shape is the one the durable engine keeps:
//! - every read goes through a [`Snapshot`] pinned at a commit [`Timestamp`];
//! - every write goes through a [`Txn`], which takes an eager write intent per document (first
//!   writer wins) and fails at once with [`StorageError::WriteConflict`] instead of waiting;
//! - [`Txn::commit`] is the single point where a transaction's writes become visible, all at once,
//!   at one timestamp. The transaction log will be appended there.
//!
//! Invariants (asserted where cheap):
//! - a version chain is ordered by strictly increasing commit timestamp;
//! - at most one open transaction holds the intent on a key;
//! - a snapshot never observes a version committed after its read timestamp.

mod clock;
mod engine;
mod error;

pub use clock::Timestamp;
pub use engine::{CollectionInfo, DocKey, Engine, Snapshot, StoredDoc, Txn, TxnId};
pub use error::StorageError;
