//! Geometry for Mangrove's geospatial indexes and operators: GeoJSON and legacy shapes read
//! from BSON and validated (`shape.rs`, `shape_parts.rs`), a quadtree of numbered cells
//! (`cell.rs`), coverings of shapes and query regions by cells (`cover.rs`), distances
//! (`distance.rs`), the query operators' regions and predicates (`region.rs`, `near.rs`), and
//! the index keys of a stored value (`keys.rs`).
//!
//! Invariant: a leaf. Depends on the `bson` crate and `geo` only; knows no filter, index
//! specification, storage or command. Callers (mangrove-bson's key derivation, the query
//! crate's operators) turn its `String` reasons into their coded errors.

pub mod cell;
pub mod cover;
pub mod distance;
pub mod keys;
pub mod near;
pub mod region;
pub mod shape;
mod shape_parts;

pub use cell::{Cell, Frame, MAX_LEVEL, SPHERE};
pub use keys::{flat_keys, sphere_keys};
pub use near::Near;
pub use region::{GeoOp, Region};
pub use shape::{Form, Shape};
