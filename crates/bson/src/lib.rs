//! BSON as Mangrove stores and orders it, below the query language: MongoDB's total order of
//! values ([`compare_values`]), collations, the order-preserving key encoding ([`encode_key`]),
//! dotted paths, Decimal128 arithmetic, and index definitions with the keys they derive from a
//! document ([`IndexSpec`]).
//!
//! Both the query crate and the storage engine depend on this crate; the storage engine depends
//! on nothing above it. What an index needs from the query language (the predicate of a partial
//! index) reaches it as a compiled closure ([`PartialFilter`]), never as a filter.
//!
//! Also the one registry of MongoDB error codes and names (`error_codes`).
//!
//! Layering inside the crate (each module imports only from those before it): `error_codes`, `error`,
//! `numbers`, `path`, `decimal`, `collation`, `compare`, `key`, `index`; `diff` (update
//! descriptions for change streams) and `writer` ([`RawWriter`]) stand alone.

pub mod collation;
pub mod compare;
pub mod decimal;
pub mod diff;
mod error;
pub mod error_codes;
pub mod geo_index;
pub mod hashed;
pub mod index;
pub mod key;
pub mod numbers;
pub mod path;
pub mod writer;

pub use collation::{Collation, active_collation, collation_active, with_collation};
pub use compare::{compare_values, type_bracket};
pub use diff::{update_description, update_description_raw};
pub use error::CodedError;
pub use index::{
    CompilePartial, IndexField, IndexSpec, KeyInterval, MAX_KEYS_PER_DOCUMENT, PartialFilter,
    PartialFilters, no_partial_filters,
};
pub use key::{encode_key, encode_key_collated};
pub use path::distinct_values;
pub use writer::RawWriter;
