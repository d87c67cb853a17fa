//! `mangrove backup`: an online backup of a running server (it sends `createBackup`, so the
//! server writes the backup on its own machine), and `mangrove backup verify`, which checks a
//! backup directory end to end without writing to it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bson::{Bson, doc};
use clap::{Args, Subcommand};
use mangrove_storage::backup;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    command: Option<BackupCommand>,
    /// The new (or empty) directory to write the backup into, on the server's machine. A
    /// relative path is taken from this command's working directory.
    #[arg(long, required = true, value_name = "DIR")]
    to: Option<PathBuf>,
    /// The server to back up. Credentials and TLS go in the URI as for any driver
    /// (mongodb://user:pass@host:port/?authSource=admin&tls=true); the user needs the
    /// `backup` or `hostManager` role.
    #[arg(
        long,
        default_value = "mongodb://127.0.0.1:27017/",
        env = "MANGROVE_URI"
    )]
    uri: String,
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Checks a backup without writing to it: the manifest's checksum, every file's size and
    /// crc32c, every log record's checksum and the segment chain, every value of the base
    /// store. Exit 2 if anything is wrong.
    Verify {
        /// The backup directory.
        dir: PathBuf,
    },
}

pub fn run(args: BackupArgs) -> ExitCode {
    match (args.command, args.to) {
        (Some(BackupCommand::Verify { dir }), _) => verify(&dir),
        (None, Some(to)) => take(&args.uri, &to),
        (None, None) => {
            eprintln!("mangrove backup: pass --to DIR, or `verify DIR`");
            ExitCode::FAILURE
        }
    }
}

fn take(uri: &str, to: &Path) -> ExitCode {
    let dir = match std::path::absolute(to) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("mangrove backup: cannot resolve {}: {e}", to.display());
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mangrove backup: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let spinner = waiting_spinner(&dir);
    let result = runtime.block_on(send_create_backup(uri, &dir));
    spinner.finish_and_clear();
    match result {
        Ok(reply) => {
            print_reply(&dir, &reply);
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("mangrove backup: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A spinner with the time waited, on a terminal: the server writes the backup and answers
/// once it is whole, which can take minutes.
fn waiting_spinner(dir: &Path) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_message(format!(
        "the server is writing the backup into {}",
        dir.display()
    ));
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

async fn send_create_backup(uri: &str, dir: &Path) -> Result<bson::Document, String> {
    let client = mongodb::Client::with_uri_str(uri)
        .await
        .map_err(|e| format!("cannot use the URI {uri:?}: {e}"))?;
    let command = doc! { "createBackup": 1, "backupDir": dir.to_string_lossy().into_owned() };
    let result = client.database("admin").run_command(command).await;
    client.shutdown().await;
    result.map_err(|e| match *e.kind {
        mongodb::error::ErrorKind::Command(ref c) if c.code == 13 => format!(
            "the server requires a user with the backup or hostManager role: put the credentials in --uri ({})",
            c.message
        ),
        mongodb::error::ErrorKind::Command(ref c) => c.message.clone(),
        _ => format!("cannot reach the server at {uri}: {e}"),
    })
}

fn ts_text(v: Option<&Bson>) -> String {
    match v {
        Some(Bson::Timestamp(ts)) => format!("{}:{}", ts.time, ts.increment),
        _ => "?".into(),
    }
}

fn print_reply(dir: &Path, reply: &bson::Document) {
    let int = |k: &str| reply.get_i64(k).unwrap_or(0);
    let wall = reply
        .get_datetime("lastCommitWall")
        .ok()
        .and_then(|d| d.try_to_rfc3339_string().ok())
        .unwrap_or_default();
    println!(
        "backup written to {}: checkpoint {} plus {} log records, up to the commit {} ({wall}); {} files, {} bytes, {} ms",
        dir.display(),
        ts_text(reply.get("checkpoint")),
        int("logRecords"),
        ts_text(reply.get("lastCommit")),
        int("files"),
        int("bytes"),
        int("elapsedMillis"),
    );
    println!("check it with: mangrove backup verify {}", dir.display());
}

fn verify(dir: &Path) -> ExitCode {
    let report = match backup::verify_backup(dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mangrove backup verify: {e}");
            return ExitCode::from(2);
        }
    };
    if report.problems.is_empty() {
        println!(
            "ok: {} files, {} bytes, every checksum valid; {} log records, {} base-store values",
            report.files, report.bytes, report.log_records, report.base_values
        );
        return ExitCode::SUCCESS;
    }
    for problem in &report.problems {
        println!("damaged: {problem}");
    }
    ExitCode::from(2)
}
