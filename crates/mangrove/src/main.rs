//! `mangrove`: the server and its tools.

mod backup_cmd;
mod dump_cmd;
mod dump_format;
mod dump_load;
mod log_cmd;
mod restore_cmd;
mod verify_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use mangrove_server::{Config, Server, TlsMode, TlsSettings};
use tracing::{error, info, warn};

// A command allocates and frees many small buffers (decoded fields, reply documents, log
// records); glibc's malloc was a sixth of the server's CPU in the transfer benchmark's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A MongoDB-compatible document database for multi-document ACID transactions on one node.
///
/// Drivers connect as to the primary of a one-member replica set, so sessions, retryable writes
/// and transactions work without setting one up.
#[derive(Parser)]
#[command(name = "mangrove", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Read the transaction log: list or show committed transactions, verify checksums.
    #[command(subcommand)]
    Log(log_cmd::LogCommand),
    /// Check a stopped server's data directory end to end: the log, the base store's checksums,
    /// and every index entry against its document. Repairs nothing; exit 2 on damage.
    Verify(verify_cmd::VerifyArgs),
    /// Take an online backup of a running server (`--to DIR`), or check one (`verify DIR`).
    Backup(backup_cmd::BackupArgs),
    /// Build a new data directory from a backup and the log after it, up to a point in time,
    /// a log position, or the transaction before a drop (--from BACKUP --to DIR); or load a
    /// mongodump-compatible directory into a running server, as mongorestore does (--dump DIR).
    Restore(restore_cmd::RestoreCli),
    /// Write a running server's databases to a mongodump-compatible directory (.bson files of
    /// documents and .metadata.json files of options and indexes).
    Dump(dump_cmd::DumpArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TCP port to listen on; 0 lets the OS choose a free one (printed in the ready line).
    #[arg(long, default_value_t = 27017, env = "MANGROVE_PORT")]
    port: u16,
    /// Address to bind. The default accepts only local connections; use 0.0.0.0 for all
    /// interfaces, together with --advertise.
    #[arg(long, default_value = "127.0.0.1", env = "MANGROVE_BIND")]
    bind: String,
    /// Directory holding the database; created if missing.
    #[arg(long, default_value = "mangrove-data", env = "MANGROVE_DATA_DIR")]
    data_dir: PathBuf,
    /// Replica-set name reported to drivers (must match `replicaSet=` in URIs that give one).
    #[arg(long, default_value = "rs0")]
    replset: String,
    /// The host:port clients use to reach this server, reported as the replica set's only
    /// member. Defaults to the bound address. Drivers reconnect to this address, so it must be
    /// reachable from them.
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Log line format (logs go to stderr).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log verbosity: error, warn, info, debug or trace; RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Most client connections at once; further ones are refused and logged.
    #[arg(long, default_value_t = 1000)]
    max_connections: usize,
    /// Seconds of inactivity after which an open cursor is killed (MongoDB: 600).
    #[arg(long, default_value_t = 600, value_parser = secs(1))]
    cursor_timeout_secs: u64,
    /// Most cursors open at once, across all clients.
    #[arg(long, default_value_t = 100_000)]
    max_cursors: usize,
    /// Bytes all spill files together may hold: blocking sorts and groups past their memory
    /// limit write runs to <data-dir>/_tmp (allowDiskUse); a spill past this bound fails with
    /// OutOfDiskSpace.
    #[arg(long, default_value_t = 10 << 30, value_name = "BYTES")]
    max_spill_bytes: u64,
    /// Largest accepted wire message in bytes (MongoDB: 48000000).
    #[arg(long, default_value_t = 48_000_000)]
    max_message_size: usize,
    /// Bytes of partly or wholly received requests all connections together may hold beyond
    /// each one's own --connection-inflight-bytes; must be at least --max-message-size.
    /// Budget is taken as bytes arrive, so a declared but unsent message holds none.
    #[arg(long, default_value_t = 1 << 30, value_name = "BYTES")]
    max_inflight_bytes: usize,
    /// Bytes of its current request each connection may hold without drawing on the shared
    /// --max-inflight-bytes, so small requests never wait behind other clients' large ones.
    #[arg(long, default_value_t = 64 * 1024, value_name = "BYTES")]
    connection_inflight_bytes: usize,
    /// Seconds a new connection may stay silent before its first message; frees the slots of
    /// sockets that never speak (drivers send their handshake at once).
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = secs(1))]
    handshake_timeout_secs: u64,
    /// Seconds a message may take to arrive once its first byte has, and a reply to be
    /// written; a client this slow (or one that stops reading) is disconnected.
    #[arg(long, default_value_t = 30, value_name = "SECS", value_parser = secs(1))]
    message_timeout_secs: u64,
    /// Milliseconds a change stream at the log's tail may let commits gather before it
    /// answers, on a log busier than 3,000 commits/s: one `getMore` then carries many
    /// commits. Lower it for fresher events under heavy load, at a cost in write throughput
    /// with many streams; 0 answers every commit at once.
    #[arg(long, default_value_t = 8, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=1000))]
    change_stream_max_gather_ms: u64,
    /// Seconds a connection may sit idle between messages before it is closed; 0 (the
    /// default) never closes one, because drivers keep pooled connections idle indefinitely
    /// and only notice a closed one when they next use it. Set it when untrusted clients can
    /// connect, above your drivers' maxIdleTimeMS.
    #[arg(long, default_value_t = 0, value_name = "SECS", value_parser = secs(0))]
    idle_timeout_secs: u64,
    /// Seconds a multi-document transaction may stay open before it is aborted
    /// (MongoDB's transactionLifetimeLimitSeconds).
    #[arg(long, default_value_t = 60, value_parser = secs(1))]
    transaction_lifetime_limit_secs: u64,
    /// Memory for data, in MiB: the base store's cache plus the versions waiting for a
    /// checkpoint. Resident memory stays near it however large the data grows.
    #[arg(long, default_value_t = 512, value_name = "MIB")]
    cache_size: usize,
    /// Seconds between checkpoints (sooner when the log grows past --checkpoint-log-size).
    #[arg(long, default_value_t = 60, value_parser = secs(1))]
    checkpoint_interval_secs: u64,
    /// MiB of transaction log that triggers a checkpoint; bounds recovery time.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    checkpoint_log_size: u64,
    /// MiB per transaction log segment: a new segment starts once the current one is this
    /// large.
    #[arg(long, default_value_t = 64, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=4096))]
    log_segment_size: u64,
    /// Log segments to keep after a checkpoint has made them unnecessary for recovery,
    /// whatever --oplog-size-mb says (for `mangrove log` history).
    #[arg(long, default_value_t = 0)]
    log_retention_segments: usize,
    /// MB of transaction log kept as history for change streams and local.oplog.rs
    /// (mongod's --oplogSize): segments a checkpoint covers are removed, oldest first, only
    /// while the log is larger. mongod's replSetResizeOplog accepts 990 to 1073741824 (1 PB);
    /// this flag accepts anything from 1, for tests and small machines.
    #[arg(long, default_value_t = 1024, value_name = "MB", value_parser = clap::value_parser!(u64).range(1..=1024 * 1024 * 1024))]
    oplog_size_mb: u64,
    /// Hours a segment's newest record is kept at least, even past --oplog-size-mb (mongod's
    /// --oplogMinRetentionHours; 0: size alone decides).
    #[arg(long, default_value_t = 0.0, value_name = "HOURS", value_parser = min_retention_hours)]
    oplog_min_retention_hours: f64,
    /// Keep every sealed log segment in this directory (checked, written whole, before the
    /// checkpointer may remove it from the log), for point-in-time restore with
    /// `mangrove restore --from BACKUP --archive DIR`. Put it on another disk. Nothing is ever
    /// removed from it; if it cannot be written, the log keeps its segments until it can.
    #[arg(long, value_name = "DIR", env = "MANGROVE_LOG_ARCHIVE_DIR")]
    log_archive_dir: Option<PathBuf>,
    /// Enable test-only commands (configureFailPoint) that the drivers' spec tests use. Never
    /// on a server anyone depends on: a fail point can make every command fail.
    #[arg(long)]
    enable_test_commands: bool,
    /// Require authentication (SCRAM-SHA-256 or SCRAM-SHA-1) and enforce users' roles. While
    /// no user exists, a client on a loopback address may create the first one (mongod's
    /// localhost exception).
    #[arg(long)]
    auth: bool,
    /// Listen beyond loopback without --auth, letting anyone who can reach the port read and
    /// change every database. Without it such a --bind refuses to start.
    #[arg(long)]
    insecure_no_auth: bool,
    /// TLS: disabled, allowTLS or preferTLS (TLS and plaintext on one port), requireTLS.
    #[arg(long, default_value = "disabled", value_parser = tls_mode)]
    tls_mode: TlsMode,
    /// PEM file with the server's certificate chain and private key (needed for TLS);
    /// re-read on SIGHUP.
    #[arg(long, value_name = "PEM")]
    tls_certificate_key_file: Option<PathBuf>,
    /// PEM file with the CAs that sign client certificates: a client certificate, when one is
    /// presented, must verify against them. Re-read on SIGHUP.
    #[arg(long, value_name = "PEM")]
    tls_ca_file: Option<PathBuf>,
    /// PBKDF2 iterations for new SCRAM-SHA-1 credentials (mongod's scramIterationCount).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(5000..=1_000_000_000))]
    scram_iteration_count: u32,
    /// PBKDF2 iterations for new SCRAM-SHA-256 credentials (mongod's
    /// scramSHA256IterationCount).
    #[arg(long, default_value_t = 15_000, value_parser = clap::value_parser!(u32).range(5000..=1_000_000_000))]
    scram_sha256_iteration_count: u32,
    /// Start even if the transaction log is damaged (a complete record that fails its checksum,
    /// a missing or cut segment): cut the log at the damage and replay only what comes before
    /// it. What is cut is moved to a quarantine folder in the log directory, and the
    /// transactions it holds are lost. Without it such damage stops start-up, naming the file.
    #[arg(long)]
    truncate_damaged_log: bool,
    /// Server-side JavaScript ($where, $function, $accumulator, mapReduce); false refuses them
    /// with mongod's errors (mongod's security.javascriptEnabled).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    javascript_enabled: bool,
    /// The longest one JavaScript call may run when its command has no nearer maxTimeMS; past
    /// it the call fails with ExceededTimeLimit (262).
    #[arg(long, default_value_t = 60_000, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=i32::MAX as u64))]
    javascript_time_limit_ms: u64,
    /// Serve Prometheus metrics over HTTP at http://ADDR/metrics (e.g. 127.0.0.1:9216; port 0
    /// picks a free one). Off by default.
    #[arg(long, value_name = "HOST:PORT", env = "MANGROVE_METRICS_ADDR")]
    metrics_addr: Option<String>,
}

/// Seconds from `min` up to i32::MAX (68 years), the range of mongod's int32 time
/// parameters; larger values would overflow the clock when added to it.
fn secs(min: u64) -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(min..=i32::MAX as u64)
}

/// mongod's `oplogMinRetentionHours`: a finite number of hours, at least 0 (and at most ten
/// thousand years, so it fits a `Duration`).
fn min_retention_hours(text: &str) -> Result<f64, String> {
    let hours: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=87_600_000.0).contains(&hours) {
        return Err(format!("{hours} is not between 0 and 87600000 hours"));
    }
    Ok(hours)
}

/// Logging to stderr, and a panic hook that makes a panic one structured error line. With
/// `stop_on_panic` (the server) the hook then aborts the process unless storage catches the
/// panic on purpose: see the policy in [`install_panic_hook`].
fn init_logging(format: LogFormat, level: &str, stop_on_panic: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    use tracing_subscriber::prelude::*;
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let stderr = match format {
        LogFormat::Text => stderr.boxed(),
        LogFormat::Json => stderr.json().boxed(),
    };
    // The ring keeps the recent lines for `getLog`, filtered as stderr's are.
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(mangrove_server::log_ring::RingLayer)
        .init();
    install_panic_hook(stop_on_panic);
}

/// The panic policy (see `mangrove_storage::panic_policy`). A panic is a structured log line
/// like any other error, not raw text on stderr. Panics the server expects (a damaged
/// base-store page makes redb panic; the read that met it fails with DataCorruptionDetected)
/// are then one line with its location, and unwind to the storage code that catches them.
/// Any other panic, in any thread, stops the server (`stop_on_panic`): it aborts right after
/// the line is written, as `panic = "abort"` would. A server that kept running with a dead
/// log writer would leave committers waiting forever; one that restarts recovers every
/// acknowledged commit from the log. (Not `panic = "abort"` itself: that would turn the
/// expected redb panic into a crash.)
fn install_panic_hook(stop_on_panic: bool) {
    std::panic::set_hook(Box::new(move |info| {
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        let thread = std::thread::current().name().unwrap_or("?").to_string();
        error!(%location, thread = thread.as_str(), "panic: {message}");
        if stop_on_panic && !mangrove_storage::panic_policy::unwinding_is_caught() {
            // stderr is unbuffered: the line above is out. Abort, not exit: nothing else
            // (destructors, other threads' shutdown) runs on a state the panic interrupted.
            error!(
                thread = thread.as_str(),
                "stopping the server after a panic; restart it to recover from the log"
            );
            std::process::abort();
        }
    }));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Log(command) => log_cmd::run(command),
        Command::Verify(args) => {
            init_logging(LogFormat::Text, "warn", false);
            verify_cmd::run(args)
        }
        Command::Backup(args) => backup_cmd::run(args),
        Command::Restore(args) => {
            init_logging(LogFormat::Text, "warn", false);
            restore_cmd::run_restore(args)
        }
        Command::Dump(args) => dump_cmd::run_dump(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logging(args.log_format, &args.log_level, true);
    if !loopback(&args.bind) && !args.auth {
        if !args.insecure_no_auth {
            error!(
                bind = %args.bind,
                "refusing to listen beyond loopback without authentication: anyone who can reach the port could read and change every database. Start with --auth (create the first user from this machine over 127.0.0.1), or pass --insecure-no-auth if the network itself is trusted"
            );
            return ExitCode::FAILURE;
        }
        warn!(bind = %args.bind, "--insecure-no-auth: listening beyond loopback without authentication; anyone who can reach the port can read and change every database");
    }
    let config = config_from(args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mangrove: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run_server(config))
}

fn tls_mode(s: &str) -> Result<TlsMode, String> {
    TlsMode::parse(s).ok_or_else(|| {
        format!("'{s}' is not a TLS mode: disabled, allowTLS, preferTLS or requireTLS")
    })
}

/// Whether `bind` listens on loopback only (an address, or `localhost`).
fn loopback(bind: &str) -> bool {
    bind == "localhost"
        || bind
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The server's `Config` from the command line, each value clamped to what it can mean.
fn config_from(args: ServeArgs) -> Config {
    Config {
        bind: args.bind,
        port: args.port,
        data_dir: args.data_dir,
        replset: args.replset,
        advertise: args.advertise,
        max_connections: args.max_connections.max(1),
        cursor_timeout: Duration::from_secs(args.cursor_timeout_secs.max(1)),
        max_cursors: args.max_cursors.max(1),
        max_spill_bytes: args.max_spill_bytes,
        max_message_size: args.max_message_size,
        max_inflight_bytes: args.max_inflight_bytes,
        connection_inflight_bytes: args.connection_inflight_bytes,
        handshake_timeout: Duration::from_secs(args.handshake_timeout_secs.max(1)),
        message_timeout: Duration::from_secs(args.message_timeout_secs.max(1)),
        change_stream_max_gather: Duration::from_millis(args.change_stream_max_gather_ms),
        idle_timeout: (args.idle_timeout_secs > 0)
            .then(|| Duration::from_secs(args.idle_timeout_secs)),
        cache_bytes: args.cache_size.max(1).saturating_mul(1024 * 1024),
        transaction_lifetime: Duration::from_secs(args.transaction_lifetime_limit_secs.max(1)),
        checkpoint_interval: Duration::from_secs(args.checkpoint_interval_secs.max(1)),
        checkpoint_log_bytes: args.checkpoint_log_size.max(1).saturating_mul(1024 * 1024),
        retain_log_segments: args.log_retention_segments,
        oplog_size_bytes: args.oplog_size_mb.saturating_mul(1024 * 1024),
        oplog_min_retention: Duration::from_secs_f64(args.oplog_min_retention_hours * 3600.0),
        log_segment_bytes: args.log_segment_size * 1024 * 1024,
        log_archive_dir: args.log_archive_dir.clone(),
        enable_test_commands: args.enable_test_commands,
        truncate_damaged_log: args.truncate_damaged_log,
        javascript_enabled: args.javascript_enabled,
        javascript_time_limit: Duration::from_millis(args.javascript_time_limit_ms),
        metrics_addr: args.metrics_addr.clone(),
        auth: args.auth,
        tls: TlsSettings {
            mode: args.tls_mode,
            certificate_key_file: args.tls_certificate_key_file,
            ca_file: args.tls_ca_file,
        },
        scram_sha1_iterations: args.scram_iteration_count,
        scram_sha256_iterations: args.scram_sha256_iteration_count,
        argv: std::env::args().collect(),
        ..Config::default()
    }
}

/// SIGHUP reads the TLS certificate files again (a renewed certificate without a restart); a
/// bad file is logged and the running certificate kept.
fn reload_tls_on_sighup(reloader: mangrove_server::TlsReloader) -> std::io::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            if !reloader.enabled() {
                info!("SIGHUP: TLS is disabled, nothing to reload");
                continue;
            }
            match reloader.reload() {
                Ok(()) => info!("SIGHUP: reloaded the TLS certificate files"),
                Err(e) => error!("SIGHUP: kept the running TLS certificate: {e}"),
            }
        }
    });
    Ok(())
}

/// Opens the data directory (replaying the log), announces readiness, and serves until a
/// signal asks it to stop.
async fn run_server(config: Config) -> ExitCode {
    let server = match Server::bind_with_progress(config.clone(), replay_progress()).await {
        Ok(s) => s,
        Err(e) => {
            error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let advertised = server.advertised().to_string();
    let local = server
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| advertised.clone());
    if config.advertise.is_none() && local.starts_with("0.0.0.0") {
        warn!(
            "listening on all interfaces but advertising {advertised}; pass --advertise HOST:PORT with the address clients use"
        );
    }
    info!(
        listen = %local,
        advertise = %advertised,
        replset = %config.replset,
        data_dir = %config.data_dir.display(),
        "server ready"
    );
    let shutdown = match shutdown_signal() {
        Ok(f) => f,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = reload_tls_on_sighup(server.tls_reloader()) {
        error!("cannot install the SIGHUP handler: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(addr) = server.metrics_addr() {
        println!("mangrove metrics: http://{addr}/metrics");
    }
    // The one line scripts and people wait for; stdout, so it stays apart from the logs.
    println!("mangrove ready: listening on {local}, connect with mongodb://{advertised}/");
    match server.serve(shutdown).await {
        Ok(()) => {
            info!("shut down cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("server failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Log replay progress: a bar on a terminal, a log line every few seconds otherwise.
fn replay_progress() -> impl FnMut(u64, u64) {
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut last_line = std::time::Instant::now();
    move |done, total| {
        if on_terminal {
            let bar = bar.get_or_insert_with(|| {
                let b = indicatif::ProgressBar::new(total);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "replaying transaction log {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b
            });
            bar.set_position(done);
            if done >= total {
                bar.finish_and_clear();
            }
        } else if last_line.elapsed() >= Duration::from_secs(2) || done >= total && total > 0 {
            last_line = std::time::Instant::now();
            info!(
                done_bytes = done,
                total_bytes = total,
                "replaying transaction log"
            );
        }
    }
}

/// Registers SIGINT and SIGTERM handlers now, before the ready line, and returns the future
/// that resolves on either. Registering lazily (on first poll) left a window after "ready" in
/// which a signal still had its default action and killed the process uncleanly.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => info!("SIGINT received, shutting down"),
                _ = term.recv() => info!("SIGTERM received, shutting down"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            info!("interrupt received, shutting down");
        })
    }
}

#[cfg(test)]
mod tests {
    /// clap checks its definitions only when they are used: a clash between two subcommands'
    /// arguments would otherwise show only as a panic when someone runs that subcommand.
    #[test]
    fn the_command_line_definition_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
