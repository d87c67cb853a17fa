//! The server: connections, command dispatch and cursors.
//!
//! Data flows one way: bytes from a socket are framed by `mangrove-wire`, become a [`Request`]
//! for one command, and the command runs against the `mangrove-storage` engine, using
//! `mangrove-query` to match, update, project and sort documents. Nothing below this crate knows
//! about sockets or commands.
//!
//! Each connection is one tokio task; a connection that sends garbage is answered with an error
//! or closed, and never affects another.

mod access;
mod admission;
mod api_version;
mod auth;
mod batch;
mod capped;
mod changes;
mod commands;
mod conn;
mod cursor;
mod error;
mod failpoint;
mod foreign;
mod geo_near;
mod index_usage;
mod legacy;
pub mod log_ring;
mod metrics;
mod metrics_http;
mod op_stats;
mod ops;
mod params;
mod pipeline_input;
mod query_params;
mod reply;
mod request;
mod retryable;
mod session;
mod spill;
mod status;
mod text_access;
mod timeseries;
mod tls;
mod top;
mod validation;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mangrove_storage::{Engine, EngineOptions};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{error, info, warn};

pub use error::{CommandError, code_name};
pub use request::Request;
pub use tls::{TlsMode, TlsSettings};

/// Everything `mangrove serve` can be told. Defaults match MongoDB's where MongoDB has one.
#[derive(Clone, Debug)]
pub struct Config {
    pub bind: String,
    /// 0 lets the OS choose; the chosen port is then advertised.
    pub port: u16,
    pub data_dir: PathBuf,
    pub replset: String,
    /// The `host:port` drivers are told to use. Defaults to the bound address.
    pub advertise: Option<String>,
    pub max_connections: usize,
    pub cursor_timeout: Duration,
    pub max_message_size: usize,
    pub max_bson_size: usize,
    /// Bytes a blocking sort may hold before it fails, as mongod's
    /// `internalQueryMaxBlockingSortMemoryUsageBytes`.
    pub max_sort_bytes: usize,
    /// Bytes all spill files together may hold (`allowDiskUse`, in `<data dir>/_tmp`); a
    /// stage that would spill past it fails with OutOfDiskSpace (14031).
    pub max_spill_bytes: u64,
    /// Most cursors open at once; beyond it new cursors are refused rather than memory growing.
    pub max_cursors: usize,
    /// Most sessions with transaction state at once (mongod's `maxSessions`).
    pub max_sessions: usize,
    /// Transactions open longer are aborted (`transactionLifetimeLimitSeconds`, 60).
    pub transaction_lifetime: Duration,
    /// Bytes of request frames all connections together may hold at once beyond each
    /// connection's own `connection_inflight_bytes` (1 GiB).
    pub max_inflight_bytes: usize,
    /// Bytes of its current frame each connection may hold without drawing on the shared
    /// budget (64 KiB), so ordinary requests never queue behind other connections' large ones.
    pub connection_inflight_bytes: usize,
    /// From accept to the first byte of the first message (10 s). Drivers send `hello` at
    /// once; a socket that stays silent only holds a connection slot.
    pub handshake_timeout: Duration,
    /// From a message's first byte to its last, and for writing its reply (30 s).
    pub message_timeout: Duration,
    /// The longest a change stream at the log's tail lets commits gather before it answers,
    /// on a log busier than 3,000 commits/s (`changes/board.rs`; 8 ms). Zero answers every
    /// commit at once, at the cost of a `getMore` per commit per stream.
    pub change_stream_max_gather: Duration,
    /// Between messages after the first; None (the default) never closes an idle connection,
    /// because drivers keep pooled connections open and idle for as long as they like.
    pub idle_timeout: Option<Duration>,
    /// Memory for data (base-store cache plus versions awaiting a checkpoint).
    pub cache_bytes: usize,
    pub checkpoint_interval: Duration,
    pub checkpoint_log_bytes: u64,
    /// Log segments kept after a checkpoint covers them, whatever the oplog size says.
    pub retain_log_segments: usize,
    /// Bytes of log kept as history for change streams and `local.oplog.rs` (mongod's
    /// `--oplogSize`, in MB there); `replSetResizeOplog` changes it at runtime.
    pub oplog_size_bytes: u64,
    /// How long history is kept at least, even past `oplog_size_bytes` (mongod's
    /// `--oplogMinRetentionHours`).
    pub oplog_min_retention: Duration,
    /// A new log segment starts once the current one reaches this size.
    pub log_segment_bytes: u64,
    /// Where sealed log segments are copied before retention removes them, for
    /// point-in-time restore (`--log-archive-dir`).
    pub log_archive_dir: Option<std::path::PathBuf>,
    /// The process arguments, echoed by `getCmdLineOpts`.
    pub argv: Vec<String>,
    /// Allows `configureFailPoint` and other hooks the drivers' spec tests need.
    pub enable_test_commands: bool,
    /// At damage in the log, cut it there and start instead of refusing to start.
    pub truncate_damaged_log: bool,
    /// Server-side JavaScript (`$where`, `$function`, `$accumulator`, `mapReduce`): mongod's
    /// `security.javascriptEnabled`. Process-wide, as in mongod.
    pub javascript_enabled: bool,
    /// The bound of one JavaScript call when the command has no nearer `maxTimeMS`.
    pub javascript_time_limit: Duration,
    /// `--metrics-addr`: where Prometheus metrics are served over HTTP (`None`: nowhere).
    pub metrics_addr: Option<String>,
    /// `--auth`: every command but the handshake and authentication needs a user with the
    /// rights for it.
    pub auth: bool,
    /// PBKDF2 iterations for new SCRAM-SHA-1 and SCRAM-SHA-256 credentials (mongod's
    /// `scramIterationCount`, `scramSHA256IterationCount`).
    pub scram_sha1_iterations: u32,
    pub scram_sha256_iterations: u32,
    /// `--tls-mode` and its certificate files.
    pub tls: TlsSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: "127.0.0.1".into(),
            port: 27017,
            data_dir: PathBuf::from("mangrove-data"),
            replset: "rs0".into(),
            advertise: None,
            max_connections: 1_000,
            cursor_timeout: Duration::from_secs(600),
            max_message_size: mangrove_wire::DEFAULT_MAX_MESSAGE_SIZE,
            max_bson_size: mangrove_wire::DEFAULT_MAX_BSON_SIZE,
            max_sort_bytes: 100 * 1024 * 1024,
            max_spill_bytes: 10 * 1024 * 1024 * 1024,
            max_cursors: 100_000,
            max_sessions: 1_000_000,
            transaction_lifetime: Duration::from_secs(60),
            max_inflight_bytes: 1024 * 1024 * 1024,
            connection_inflight_bytes: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            message_timeout: Duration::from_secs(30),
            change_stream_max_gather: changes::board::DEFAULT_MAX_GATHER,
            idle_timeout: None,
            cache_bytes: EngineOptions::default().cache_bytes,
            checkpoint_interval: EngineOptions::default().checkpoint_interval,
            checkpoint_log_bytes: EngineOptions::default().checkpoint_log_bytes,
            retain_log_segments: 0,
            oplog_size_bytes: EngineOptions::default().history_size_bytes,
            oplog_min_retention: EngineOptions::default().history_min_retention,
            log_segment_bytes: EngineOptions::default().segment_bytes,
            log_archive_dir: None,
            argv: Vec::new(),
            enable_test_commands: false,
            truncate_damaged_log: false,
            javascript_enabled: true,
            javascript_time_limit: mangrove_js::Settings::default().time,
            metrics_addr: None,
            auth: false,
            scram_sha1_iterations: 10_000,
            scram_sha256_iterations: 15_000,
            tls: TlsSettings::default(),
        }
    }
}

/// Counters `serverStatus` reports.
#[derive(Default)]
pub(crate) struct Counters {
    pub insert: AtomicU64,
    pub query: AtomicU64,
    pub update: AtomicU64,
    pub delete: AtomicU64,
    pub getmore: AtomicU64,
    pub command: AtomicU64,
    pub connections_current: AtomicU64,
    pub connections_total: AtomicU64,
    pub ttl_passes: AtomicU64,
    pub ttl_deleted: AtomicU64,
    /// Bytes of client messages read and of replies written, and messages read
    /// (`serverStatus.network`).
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub requests: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    /// mongod's `opcounters` (also the status page's operation counts).
    pub fn opcounters(&self) -> bson::Document {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed) as i64;
        bson::doc! {
            "insert": n(&self.insert),
            "query": n(&self.query),
            "update": n(&self.update),
            "delete": n(&self.delete),
            "getmore": n(&self.getmore),
            "command": n(&self.command),
        }
    }
}

/// State shared by every connection.
pub(crate) struct Shared {
    pub config: Config,
    pub advertised: String,
    pub engine: Engine,
    pub cursors: cursor::CursorManager,
    pub sessions: session::Sessions,
    pub started: Instant,
    pub next_connection_id: AtomicI64,
    pub counters: Counters,
    pub limits: mangrove_wire::Limits,
    /// Permits of 1 KiB each; see [`Config::max_inflight_bytes`].
    pub inflight: Semaphore,
    pub failpoints: failpoint::FailPoints,
    pub params: params::RuntimeParams,
    /// Capped collections' writer locks and tallies.
    pub capped: capped::Registry,
    /// The profiler's settings (`profile`).
    pub profiler: commands::profile::Profiler,
    /// How often each index served a query (`$indexStats`).
    pub index_usage: index_usage::IndexUsage,
    /// Time spent per collection by kind of operation (`top`).
    pub top: top::Top,
    /// The operations running now, by opid (`$currentOp`, `killOp`).
    pub ops: ops::Ops,
    /// Command latency histograms (`metrics.rs`).
    pub metrics: metrics::Metrics,
    /// Changes to users, which connections follow.
    pub auth: auth::Registry,
    /// The running TLS configuration (reloaded on SIGHUP).
    pub tls: tls::Tls,
    /// The `shutdown` command's request to stop, as SIGTERM would.
    pub shutdown: tokio::sync::Notify,
    /// Where blocking stages spill under `allowDiskUse` (`<data dir>/_tmp`).
    pub spill: Arc<spill::SpillDir>,
    /// Batches change streams at the log's tail share (`changes/board.rs`).
    pub change_batches: Arc<changes::board::BatchBoard>,
}

fn open_engine(config: &Config, progress: impl FnMut(u64, u64)) -> std::io::Result<Engine> {
    let options = EngineOptions {
        data_dir: Some(config.data_dir.clone()),
        cache_bytes: config.cache_bytes,
        checkpoint_interval: config.checkpoint_interval,
        checkpoint_log_bytes: config.checkpoint_log_bytes,
        retain_log_segments: config.retain_log_segments,
        history_size_bytes: config.oplog_size_bytes,
        history_min_retention: config.oplog_min_retention,
        truncate_damaged_log: config.truncate_damaged_log,
        segment_bytes: config.log_segment_bytes,
        log_archive_dir: config.log_archive_dir.clone(),
        partial_filters: mangrove_query::partial_filters(),
        ..EngineOptions::default()
    };
    let (engine, report) =
        Engine::open(options, progress).map_err(|e| std::io::Error::other(e.to_string()))?;
    report_log_repairs(&report);
    let secs = report.elapsed.as_secs_f64();
    info!(
        records = report.records,
        replayed = report.replayed,
        log_bytes = report.log_bytes,
        segments = report.segments,
        segments_kept_as_history = report.segments_skipped,
        seconds = format!("{secs:.3}"),
        mb_per_sec = format!("{:.1}", report.log_bytes as f64 / 1e6 / secs.max(1e-9)),
        "recovered the transaction log"
    );
    Ok(engine)
}

/// Says loudly what recovery cut from the log: a torn write a crash left, or damage the
/// operator chose to cut at.
fn report_log_repairs(report: &mangrove_storage::RecoveryReport) {
    if let Some(torn) = &report.torn_tail {
        warn!(
            segment = %torn.segment.display(),
            offset = torn.offset,
            dropped_bytes = torn.bytes,
            record = %torn.record,
            "cut a torn final log write left by a crash: {}; it was never fdatasynced, so no write acknowledged with j:true or w:\"majority\" is lost (a w:1, j:false acknowledgement of it is)",
            torn.record
        );
    }
    if let Some((damage, cut)) = &report.cut {
        error!(
            damaged = %damage.segment.display(),
            offset = damage.offset,
            detail = %damage.detail,
            moved = ?cut.moved,
            quarantine = %cut.quarantine.display(),
            "--truncate-damaged-log: cut the transaction log at the damage; the transactions after it are not replayed (the bytes are kept in the quarantine folder)"
        );
    }
}

/// Sessions idle this long are forgotten, as MongoDB's `logicalSessionTimeoutMinutes` (30).
const LOGICAL_SESSION_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Aborts transactions past their lifetime limit, checking a few times per limit.
async fn reap_transactions(shared: Arc<Shared>) {
    loop {
        // Re-read each round: setParameter may change the limit at any time.
        let limit = shared.params.transaction_lifetime();
        let period = (limit / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::time::sleep(period).await;
        shared.sessions.reap_expired(limit);
        shared.sessions.expire_idle(LOGICAL_SESSION_TIMEOUT);
    }
}

/// Reloads the running server's TLS certificate files; see [`Server::tls_reloader`].
#[derive(Clone)]
pub struct TlsReloader(Arc<Shared>);

impl TlsReloader {
    /// Reads the files again; on failure the running configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        self.0.tls.reload()
    }

    pub fn enabled(&self) -> bool {
        self.0.tls.mode() != TlsMode::Disabled
    }
}

pub struct Server {
    listener: TcpListener,
    metrics: Option<TcpListener>,
    shared: Arc<Shared>,
}

/// The MongoDB listener.
async fn bind_listener(config: &Config) -> std::io::Result<TcpListener> {
    TcpListener::bind((config.bind.as_str(), config.port))
        .await
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot listen on {}:{}: {e}; is another server using the port? Pass --port to choose another",
                    config.bind, config.port
                ),
            )
        })
}

/// The `--metrics-addr` listener, if asked for.
async fn bind_metrics(config: &Config) -> std::io::Result<Option<TcpListener>> {
    let Some(addr) = &config.metrics_addr else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr.as_str()).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot serve metrics on {addr}: {e}; pass another --metrics-addr"),
        )
    })?;
    Ok(Some(listener))
}

/// A budget smaller than one maximal message could never admit it: refuse to start.
fn check_inflight_budget(config: &Config) -> std::io::Result<()> {
    if config.max_inflight_bytes < config.max_message_size {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "the in-flight budget ({} bytes) is smaller than the message limit ({} bytes)",
                config.max_inflight_bytes, config.max_message_size
            ),
        ));
    }
    Ok(())
}

/// JavaScript's switch and per-call bound are process-wide, as mongod's.
fn configure_javascript(config: &Config) {
    mangrove_js::set_kill_check(op_stats::killed);
    mangrove_js::configure(mangrove_js::Settings {
        enabled: config.javascript_enabled,
        time: config.javascript_time_limit,
        ..mangrove_js::Settings::default()
    });
}

impl Server {
    /// Opens the data directory (replaying the transaction log) and binds the listening socket;
    /// nothing is served until [`Server::serve`].
    pub async fn bind(config: Config) -> std::io::Result<Server> {
        Self::bind_with_progress(config, |_, _| {}).await
    }

    /// Like [`Server::bind`], reporting log replay as `progress(bytes_done, bytes_total)`.
    pub async fn bind_with_progress(
        config: Config,
        progress: impl FnMut(u64, u64),
    ) -> std::io::Result<Server> {
        // Certificates first: a bad file should stop start-up before recovery runs.
        let tls = tls::Tls::load(config.tls.clone()).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("TLS: {e}"))
        })?;
        configure_javascript(&config);
        let engine = open_engine(&config, progress)?;
        let spill = Arc::new(spill::SpillDir::open(
            &config.data_dir,
            config.max_spill_bytes,
        )?);
        let listener = bind_listener(&config).await?;
        let metrics = bind_metrics(&config).await?;
        let local = listener.local_addr()?;
        let advertised = config
            .advertise
            .clone()
            .unwrap_or_else(|| local.to_string());
        let limits = mangrove_wire::Limits {
            max_message_size: config.max_message_size,
            max_bson_size: config.max_bson_size,
        };
        check_inflight_budget(&config)?;
        let inflight = Semaphore::new(admission::budget_units(config.max_inflight_bytes) as usize);
        let config_lifetime = config.transaction_lifetime;
        let query_limits = mangrove_query::Limits {
            stage_bytes: config.max_sort_bytes,
            ..mangrove_query::Limits::default()
        };
        let change_batches = Arc::new(changes::board::BatchBoard::new(
            config.change_stream_max_gather,
        ));
        let shared = Arc::new(Shared {
            inflight,
            cursors: cursor::CursorManager::new(config.max_cursors),
            sessions: session::Sessions::new(config.max_sessions),
            config,
            advertised,
            engine,
            started: Instant::now(),
            next_connection_id: AtomicI64::new(1),
            counters: Counters::default(),
            limits,
            failpoints: failpoint::FailPoints::default(),
            params: params::RuntimeParams::new(config_lifetime, query_limits),
            capped: capped::Registry::default(),
            profiler: Default::default(),
            index_usage: Default::default(),
            top: Default::default(),
            ops: Default::default(),
            metrics: Default::default(),
            auth: auth::Registry::default(),
            tls,
            shutdown: tokio::sync::Notify::new(),
            spill,
            change_batches,
        });
        Ok(Server {
            listener,
            metrics,
            shared,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where metrics are served, if `--metrics-addr` asked for it.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn advertised(&self) -> &str {
        &self.shared.advertised
    }

    /// A handle that reloads the TLS certificate files (for SIGHUP) while the server runs.
    pub fn tls_reloader(&self) -> TlsReloader {
        TlsReloader(self.shared.clone())
    }

    /// Accepts connections until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let Server {
            listener,
            metrics,
            shared,
        } = self;
        let metrics_server = metrics.map(|m| tokio::spawn(metrics_http::serve(m, shared.clone())));
        log_ring::mark_serving();
        let slots = Arc::new(Semaphore::new(shared.config.max_connections));
        let reaper = tokio::spawn(cursor::reap_idle(shared.clone()));
        let txn_reaper = tokio::spawn(reap_transactions(shared.clone()));
        let ttl_monitor = tokio::spawn(commands::ttl_monitor(shared.clone()));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                _ = shared.shutdown.notified() => {
                    info!("the shutdown command asked the server to stop");
                    break;
                }
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                warn!(%peer, limit = shared.config.max_connections, "refusing connection: too many open connections (raise --max-connections)");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let id = shared.next_connection_id.fetch_add(1, Ordering::Relaxed);
            let shared = shared.clone();
            tokio::spawn(async move {
                conn::serve_connection(shared, stream, peer, id).await;
                drop(permit);
            });
        }
        reaper.abort();
        txn_reaper.abort();
        ttl_monitor.abort();
        if let Some(m) = metrics_server {
            m.abort();
        }
        info!("stopped accepting connections");
        // Everything acknowledged is already durable; this only stops the log writer cleanly.
        shared.engine.close();
        Ok(())
    }
}
