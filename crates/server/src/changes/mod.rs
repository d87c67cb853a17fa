//! Change streams, served from the transaction log.
//!
//! Every committed transaction is one checksummed record in the log, in commit order; a change
//! stream is a reader of that history from a point (`stream.rs`), turning each durable record
//! into the events its scope and options ask for (`event.rs`), behind resume tokens that name a
//! place in the log (`token.rs`), with the `$changeStream` options parsed and checked as mongod
//! does (`spec.rs`). Nothing is stored twice: the events are derived from the log when read
//! (streams at the log's tail share the engine's decoded tail and, watching the same way, the
//! events shaped from it: a bounded cache, not a copy of history).
//!
//! The command side (`aggregate` with `$changeStream`, `getMore` waiting for commits) is
//! `commands/change_stream.rs`.

pub mod board;
pub mod event;
pub mod oplog;
pub mod spec;
pub mod stream;
pub mod token;

pub use stream::{Batch, HistoryCursor, Shape};
