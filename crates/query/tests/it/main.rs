//! The query language's tests, one module per concern, in one test binary (each separate
//! binary linked the crate again).

mod common;
mod corpus;

mod accumulators;
mod aggregate;
mod compare;
mod expressions;
mod filter;
mod geo;
mod javascript;
mod jsonschema;
mod limits;
mod projection_sort;
mod props;
mod spill;
mod stream_golden;
mod streaming;
mod text;
mod update;
mod validation;
mod window;
