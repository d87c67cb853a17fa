//! The query language's error: the leaf crate's `CodedError` (MongoDB's code, code name and
//! message), under the name the language's code has always used. One type, so errors of the
//! layer below (index keys, collations) reach the client unchanged, with no conversion.

pub use mangrove_bson::CodedError as QueryError;
