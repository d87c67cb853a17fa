//! Query-language evaluation for Mangrove: BSON ordering, key encoding, filters, updates,
//! projections and sorts. Everything here is a pure function over BSON; the server owns I/O.

mod compare;
mod error;
mod filter;
mod key;
mod path;
mod projection;
mod sort;
mod update;

pub use compare::{compare_values, type_bracket};
pub use error::QueryError;
pub use filter::Filter;
pub use key::encode_key;
pub use projection::Projection;
pub use sort::SortSpec;
pub use update::Update;
