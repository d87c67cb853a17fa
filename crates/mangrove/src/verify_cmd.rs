//! `mangrove verify`: checks a stopped server's data directory end to end and repairs nothing.
//!
//! 1. the log: every record's checksum, every segment present and whole (`log verify`'s check);
//! 2. the base store: every value's checksum and the order of its keys;
//! 3. the indexes: the log replayed read-only over the base store, then every index entry
//!    checked against its document, both ways.
//!
//! Exit 0 when all is well, 2 when something is damaged, 1 when the check could not run (the
//! server holds the directory, say).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use mangrove_storage::{Engine, EngineOptions, StorageError, txlog};

#[derive(Args)]
pub struct VerifyArgs {
    /// The data directory of a stopped server.
    #[arg(long, default_value = "mangrove-data", env = "MANGROVE_DATA_DIR")]
    data_dir: PathBuf,
}

pub fn run(args: VerifyArgs) -> ExitCode {
    match verify(&args.data_dir) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(message) => {
            eprintln!("mangrove verify: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Prints each part's verdict; `Ok(true)` when nothing is damaged.
fn verify(data_dir: &Path) -> Result<bool, String> {
    if !data_dir.join("base.redb").exists() {
        return Err(format!(
            "no base store at {}: is --data-dir the server's data directory?",
            data_dir.join("base.redb").display()
        ));
    }
    let options = EngineOptions {
        data_dir: Some(data_dir.to_path_buf()),
        read_only: true,
        // Verifying a partial index recomputes which documents its filter admits.
        partial_filters: mangrove_query::partial_filters(),
        ..EngineOptions::default()
    };
    let (engine, _) = match Engine::open(options, |_, _| {}) {
        Ok(opened) => opened,
        Err(e @ StorageError::Locked { .. }) => {
            return Err(format!("{e}; verify reads a stopped server's files"));
        }
        // Damage that stops recovery: still say what the log and the base store look like.
        Err(e) => {
            println!("recovery: damaged: {e}");
            verify_log(data_dir);
            return Ok(false);
        }
    };
    let log_ok = verify_log(data_dir);
    let base_ok = verify_base(&engine);
    let indexes_ok = verify_indexes(&engine);
    engine.close();
    Ok(log_ok && base_ok && indexes_ok)
}

fn verify_log(data_dir: &Path) -> bool {
    let dir = data_dir.join("log");
    match txlog::scan_log(&dir, None, |_, _| {}) {
        Ok(scan) => {
            let (lines, damaged) = crate::log_cmd::verdict(&scan);
            for line in lines {
                println!("log: {line}");
            }
            !damaged
        }
        Err(e) => {
            println!("log: cannot read: {e}");
            false
        }
    }
}

fn verify_base(engine: &Engine) -> bool {
    let report = match engine.verify_base_store() {
        Ok(Some(report)) => report,
        Ok(None) => return true,
        Err(e) => {
            println!("base store: damaged: {e}");
            return false;
        }
    };
    if report.problems.is_empty() {
        println!(
            "base store: ok: {} values and {} catalog entries, every checksum valid, keys in order",
            report.values, report.catalog_entries
        );
        return true;
    }
    println!(
        "base store: damaged: {} problems in {} values:",
        report.problems.len(),
        report.values
    );
    for p in report.problems.iter().take(100) {
        println!("  {p}");
    }
    false
}

fn verify_indexes(engine: &Engine) -> bool {
    let report = match engine.snapshot().verify_indexes() {
        Ok(report) => report,
        Err(e) => {
            println!("indexes: damaged: {e}");
            return false;
        }
    };
    if report.problems.is_empty() {
        println!(
            "indexes: ok: {} collections, {} documents, {} index entries, each entry matches its document",
            report.collections, report.documents, report.entries
        );
        return true;
    }
    println!(
        "indexes: damaged: {} problems ({} documents, {} entries):",
        report.problems.len(),
        report.documents,
        report.entries
    );
    for p in report.problems.iter().take(100) {
        println!("  {p}");
    }
    false
}
