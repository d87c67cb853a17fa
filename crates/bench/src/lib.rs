//! What the benchmark binaries share: the workloads and their Mangrove worker, the seeded
//! random numbers, and the probes of the machine and of server processes. `mangrove-bench`
//! (src/main.rs) compares Mangrove with PostgreSQL; `mangrove-changes-bench`
//! (src/bin/changes/, a module per scenario) measures change streams.

pub mod mongo;
pub mod probe;
pub mod raw_watch;
pub mod rng;
pub mod workload;
