//! The server's integration tests, one module per concern, in one test binary: each
//! separate binary linked the driver and the server again (about 20 s of build each), and
//! one binary lets tests of different concerns run side by side.
//! Run one concern with its module name, e.g. `cargo test -p mangrove --test it kill_server::`.

mod common;

mod admission;
mod auth;
mod capped;
mod change_streams;
mod coll_mod;
mod command_fuzz;
mod damage;
mod full_disk;
mod kill_change_stream;
mod kill_retryable;
mod kill_server;
mod kill_transfers;
mod malformed;
mod memory_bombs;
mod op_query;
mod oplog_retention;
mod parameters;
mod raw_protocol;
mod rust_driver;
mod rust_seed_scenarios;
mod tls;
mod txn_memory;
mod validation;
mod writer_panic;
