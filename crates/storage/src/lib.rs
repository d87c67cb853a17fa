//! The storage engine: multi-version documents, snapshots, write transactions, and the durable
//! transaction log they commit to.
//!
//! This crate owns *what is committed and who may see it*. It knows nothing about commands,
//! sessions or the query language: callers hand it documents already keyed by the
//! order-preserving encoding of their `_id`.
//!
//! - Every read goes through a [`Snapshot`] pinned at a commit [`Timestamp`].
//! - Every write goes through a [`Txn`], which takes an eager write intent per document (first
//!   writer wins) and fails at once with [`StorageError::WriteConflict`] instead of waiting.
//! - [`Txn::commit`] seals one log record for the whole transaction and queues it. One writer
//!   thread group-commits the queue: one write makes a batch visible, one fdatasync makes it
//!   durable ([`CommitTicket::visible`], [`CommitTicket::durable`]).
//! - [`Engine::open`] replays the log: a torn final record is cut off and reported, damage
//!   anywhere else refuses to open.
//!
//! Invariants (asserted where cheap):
//! - a version chain is ordered by strictly increasing commit timestamp;
//! - at most one open transaction holds the intent on a key;
//! - commits become visible in timestamp order, which is also log order, so a durable commit
//!   implies every earlier one is durable;
//! - a snapshot never observes a version committed after its read timestamp;
//! - nothing becomes visible before its log record is written.
//!
//! A panic in a storage thread is not survived: see [`panic_policy`]. The engine's locks and
//! the one order they are taken in are listed in `engine.rs`.

pub mod backup;
mod base;
mod clock;
mod engine;
mod error;
pub mod histogram;
pub mod panic_policy;
pub mod restore;
#[cfg(test)]
mod scratch;
pub mod txlog;

pub use base::{BaseCopyReport, BaseVerifyReport, verify_base_file};
pub use clock::Timestamp;
pub use engine::{BackupPhase, BackupReport, CheckpointReport};
pub use engine::{
    COLLATED_ID_OPTION, CollectionInfo, CommitTicket, DocKey, Engine, EngineOptions, HistoryReader,
    HistoryTruncationStats, HistoryWindow, IndexInfo, IndexVerifyReport, LogStats, ReadView,
    RecoveryReport, Snapshot, StoredDoc, TAIL_IDLE, TAIL_RECORDS, TailRecord, TransactionLimits,
    Txn, TxnId, UUID_OPTION, uuid_of,
};
pub use error::StorageError;
pub use txlog::CommitMeta;
