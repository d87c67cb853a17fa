//! The profiler, as mongod's: `profile` sets a database's level (0 off, 1 slow operations, 2
//! every operation) and the server's `slowms` and `sampleRate`, or a `filter` that replaces the
//! slowness test. Profiled operations are written to `<db>.system.profile`, a capped collection
//! of 1 MiB created when first needed, with mongod's fields; operations slower than `slowms` are
//! logged as mongod's "Slow query" lines whatever the level.
//!
//! Invariants:
//! - Recording never changes the profiled command's reply: a failure to record is logged.
//! - An entry is committed in its own transaction after the command ran and before its reply
//!   is sent, visible but not waited on for durability (mongod does not wait for the journal
//!   either): a client that reads `system.profile` right after its command finds it there.
//! - Operations on `system.profile` itself, the handshake and authentication are not profiled,
//!   so profiling cannot feed on itself.
//! - What an operation examined comes from `op_stats.rs` (added up by the access paths).
//! - Memory: one settings entry per database whose level was set; an entry's `command` is cut
//!   to [`MAX_COMMAND_BYTES`] (mongod's `$truncated`).
//! - Every "Slow query" line also goes to an in-memory ring of the last [`RECENT_SLOW`] slow
//!   operations (a summary: time, ns, op, command, duration), read by the status page
//!   (`status.rs`); the oldest is dropped when it is full.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::raw::{RawBsonRef, RawDocument};
use bson::{Bson, Document, RawDocumentBuf, doc};
use mangrove_query::Filter;
use tracing::{info, warn};

use crate::Shared;
use crate::error::{CommandError, CommandResult, code};
use crate::op_stats::OpStats;
use crate::reply::Reply;
use crate::request::{Request, as_i64};

use super::handshake::Client;
use super::write_path::{Ack, WriteOptions, retry_conflicts};

/// mongod's defaults: operations over 100 ms are slow; every one of them is sampled.
const DEFAULT_SLOW_MS: i64 = 100;
/// `system.profile`'s size when the profiler creates it (mongod: 1 MiB).
const PROFILE_COLLECTION_BYTES: i32 = 1024 * 1024;
/// A profiled command larger than this is shown cut, as mongod's `$truncated` string.
const MAX_COMMAND_BYTES: usize = 50 * 1024;
const PROFILE_COLLECTION: &str = "system.profile";
/// How many recent slow operations the status page can show.
pub(crate) const RECENT_SLOW: usize = 50;

/// Commands never profiled: the handshake and authentication (mongod leaves them out too).
const UNPROFILED: &[&str] = &[
    "hello",
    "isMaster",
    "ismaster",
    "saslStart",
    "saslContinue",
    "authenticate",
    "logout",
];

/// The profiler's settings: `slowms` and `sampleRate` for the server, a level and filter per
/// database.
pub(crate) struct Profiler {
    settings: Mutex<Settings>,
    /// Copies of what every command checks, so that a command that is neither profiled nor
    /// slow costs no lock: whether any database has a level or filter, and `slowms`.
    any_db: AtomicBool,
    slow_ms: AtomicI64,
    /// Drawn from for `sampleRate` (no generator crate for one number).
    sample_seed: AtomicU64,
    /// The last [`RECENT_SLOW`] operations logged as "Slow query", oldest first.
    recent_slow: Mutex<VecDeque<SlowOp>>,
}

/// One operation logged as "Slow query", as the status page lists it.
#[derive(Clone, Debug)]
pub(crate) struct SlowOp {
    pub at: bson::DateTime,
    pub ns: String,
    pub op: String,
    pub command: String,
    pub millis: i64,
}

struct Settings {
    slow_ms: i64,
    sample_rate: f64,
    dbs: HashMap<String, DbProfile>,
}

#[derive(Clone, Default)]
struct DbProfile {
    level: i32,
    filter: Option<(Document, Arc<Filter>)>,
}

impl Default for Profiler {
    fn default() -> Self {
        Profiler {
            settings: Mutex::new(Settings {
                slow_ms: DEFAULT_SLOW_MS,
                sample_rate: 1.0,
                dbs: HashMap::new(),
            }),
            sample_seed: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
            any_db: AtomicBool::new(false),
            slow_ms: AtomicI64::new(DEFAULT_SLOW_MS),
            recent_slow: Mutex::new(VecDeque::with_capacity(RECENT_SLOW)),
        }
    }
}

impl Profiler {
    /// The recent slow operations, newest first.
    pub(crate) fn recent_slow(&self) -> Vec<SlowOp> {
        let ring = self.recent_slow.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().rev().cloned().collect()
    }

    fn remember_slow(&self, op: SlowOp) {
        let mut ring = self.recent_slow.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() >= RECENT_SLOW {
            ring.pop_front();
        }
        ring.push_back(op);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this operation falls in the sample (`sampleRate` of them, roughly).
    fn sampled(&self, rate: f64) -> bool {
        if rate >= 1.0 {
            return true;
        }
        // splitmix64 over a counter: uniform enough for sampling, and lock-free.
        let mut z = self
            .sample_seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 <= rate
    }
}

/// `profile: <level>` with `slowms`, `sampleRate` and `filter` (a document, or `"unset"`);
/// `-1` only reads. Replies with the settings as they were.
pub(super) async fn profile(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&["slowms", "sampleRate", "filter"])?;
    let level = match req.command_value().and_then(as_i64) {
        Some(n) if (-1..=2).contains(&n) => n as i32,
        Some(_) => return Err(CommandError::bad_value("Invalid profiling level")),
        None => {
            return Err(CommandError::type_mismatch(
                "profile takes a profiling level: -1, 0, 1 or 2",
            ));
        }
    };
    let slow_ms = req.opt_i64("slowms")?;
    let sample_rate = sample_rate(req)?;
    let filter = filter_setting(req)?;
    let mut reply = {
        let mut settings = shared.profiler.lock();
        let was = settings.dbs.get(req.db).cloned().unwrap_or_default();
        let mut reply = doc! {
            "was": was.level,
            "slowms": settings.slow_ms,
            "sampleRate": settings.sample_rate,
        };
        if let Some((shown, _)) = &was.filter {
            reply.insert("filter", shown.clone());
            reply.insert(
                "note",
                "When a filter expression is set, slowms and sampleRate are not used for profiling and slow-query log lines.",
            );
        }
        settings.slow_ms = slow_ms.unwrap_or(settings.slow_ms);
        settings.sample_rate = sample_rate.unwrap_or(settings.sample_rate);
        if level >= 0 || filter.is_some() {
            let db = settings.dbs.entry(req.db.to_string()).or_default();
            if level >= 0 {
                db.level = level;
            }
            if let Some(f) = filter {
                db.filter = f;
            }
        }
        settings
            .dbs
            .retain(|_, d| d.level > 0 || d.filter.is_some());
        let profiler = &shared.profiler;
        profiler
            .any_db
            .store(!settings.dbs.is_empty(), Ordering::Relaxed);
        profiler.slow_ms.store(settings.slow_ms, Ordering::Relaxed);
        reply
    };
    if level > 0 {
        profile_collection(shared, req.db).await?;
    }
    reply.insert("ok", 1.0);
    Ok(reply.into())
}

fn sample_rate(req: &Request<'_>) -> CommandResult<Option<f64>> {
    let rate = match req.get("sampleRate") {
        None => return Ok(None),
        Some(RawBsonRef::Double(d)) => d,
        Some(v) => match as_i64(v) {
            Some(n) => n as f64,
            None => {
                return Err(CommandError::type_mismatch(
                    "'sampleRate' must be a number between 0.0 and 1.0",
                ));
            }
        },
    };
    if !(0.0..=1.0).contains(&rate) {
        return Err(CommandError::bad_value(
            "'sampleRate' must be between 0.0 and 1.0 inclusive",
        ));
    }
    Ok(Some(rate))
}

/// `filter`: `None` to leave it, `Some(None)` to remove it (`"unset"`), else the new one.
#[allow(clippy::type_complexity)]
fn filter_setting(req: &Request<'_>) -> CommandResult<Option<Option<(Document, Arc<Filter>)>>> {
    match req.get("filter") {
        None => Ok(None),
        Some(RawBsonRef::String("unset")) => Ok(Some(None)),
        Some(RawBsonRef::Document(d)) => {
            let filter = Filter::parse(d)?;
            let shown =
                Document::try_from(d).map_err(|e| CommandError::bad_value(e.to_string()))?;
            Ok(Some(Some((shown, Arc::new(filter)))))
        }
        Some(_) => Err(CommandError::type_mismatch(
            "the profiling 'filter' must be a query document or \"unset\"",
        )),
    }
}

/// Records `req` (answered with `reply` after `elapsed`) if the profiler says so, and logs it
/// if it was slow.
pub(crate) async fn after(
    shared: &Shared,
    client: &Client,
    req: &Request<'_>,
    reply: &Reply,
    elapsed: Duration,
    stats: &OpStats,
) {
    let millis = elapsed.as_millis() as i64;
    let profiler = &shared.profiler;
    if !profiler.any_db.load(Ordering::Relaxed)
        && millis <= profiler.slow_ms.load(Ordering::Relaxed)
    {
        return;
    }
    if UNPROFILED.contains(&req.name) || on_profile_collection(req) {
        return;
    }
    let (db, slow_ms, rate) = {
        let settings = shared.profiler.lock();
        let db = settings.dbs.get(req.db).cloned().unwrap_or_default();
        (db, settings.slow_ms, settings.sample_rate)
    };
    let slow = millis > slow_ms;
    if db.level == 0 && db.filter.is_none() && !slow {
        return;
    }
    let entry = entry(client, req, reply, millis, stats);
    let (log, record) = match &db.filter {
        Some((_, f)) => {
            let raw = RawDocumentBuf::try_from(&entry).ok();
            let hit = raw.is_some_and(|r| f.matches(&r));
            (hit, hit && db.level > 0)
        }
        None => {
            let sampled = shared.profiler.sampled(rate);
            (
                slow && sampled,
                db.level == 2 || (db.level == 1 && slow && sampled),
            )
        }
    };
    if log {
        info!(
            ns = %entry.get_str("ns").unwrap_or_default(),
            op = %entry.get_str("op").unwrap_or_default(),
            duration_millis = millis,
            entry = %entry,
            "Slow query"
        );
        profiler.remember_slow(SlowOp {
            at: bson::DateTime::now(),
            ns: cut(entry.get_str("ns").unwrap_or_default()),
            op: cut(entry.get_str("op").unwrap_or_default()),
            command: cut(req.name),
            millis,
        });
    }
    if record && let Err(e) = write_entry(shared, req.db, entry).await {
        warn!(db = req.db, code = e.code, error = %e.message, "could not write a profiler entry to system.profile");
    }
}

/// A string kept in the slow-operation ring: at most 200 bytes, cut on a char boundary.
fn cut(s: &str) -> String {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn on_profile_collection(req: &Request<'_>) -> bool {
    matches!(req.command_value(), Some(RawBsonRef::String(c)) if c == PROFILE_COLLECTION)
        || matches!(req.get("collection"), Some(RawBsonRef::String(c)) if c == PROFILE_COLLECTION)
}

/// mongod's `op` for a command.
pub(super) fn op_name(command: &str) -> &'static str {
    match command {
        "find" => "query",
        "getMore" => "getmore",
        "insert" => "insert",
        "update" => "update",
        "delete" => "remove",
        _ => "command",
    }
}

/// The profiler's document for one operation, with mongod's field names.
fn entry(
    client: &Client,
    req: &Request<'_>,
    reply: &Reply,
    millis: i64,
    stats: &OpStats,
) -> Document {
    // A raw reply (a cursor's batch, up to 16 MiB) is read where it is, not copied.
    let reply: std::borrow::Cow<'_, RawDocumentBuf> = match reply {
        Reply::Doc(d) => std::borrow::Cow::Owned(RawDocumentBuf::try_from(d).unwrap_or_default()),
        Reply::Raw(r) => std::borrow::Cow::Borrowed(r),
        Reply::Segmented(s) => std::borrow::Cow::Owned(s.to_raw()),
    };
    let mut e = doc! { "op": op_name(req.name), "ns": namespace(req), "command": command(req) };
    e.insert("keysExamined", stats.keys.load(Ordering::Relaxed) as i64);
    e.insert("docsExamined", stats.docs.load(Ordering::Relaxed) as i64);
    write_counts(req.name, &reply, &mut e);
    if let Some(n) = returned(&reply) {
        e.insert("nreturned", n);
    }
    e.insert("numYield", 0);
    e.insert("responseLength", reply.as_bytes().len() as i64);
    e.insert("protocol", "op_msg");
    e.insert("millis", millis);
    if let Some(plan) = stats.plan.get() {
        e.insert("planSummary", plan.summary());
    }
    if stats.used_disk.load(Ordering::Relaxed) {
        e.insert("usedDisk", true);
    }
    if let Ok(Some(RawBsonRef::Double(ok))) = reply.get("ok")
        && ok != 1.0
    {
        e.insert("ok", 0.0);
        if let Ok(code) = reply.get_i32("code") {
            e.insert("errCode", code);
        }
        if let Ok(name) = reply.get_str("codeName") {
            e.insert("errName", name);
        }
        if let Ok(msg) = reply.get_str("errmsg") {
            e.insert("errMsg", msg);
        }
    }
    e.insert("ts", bson::DateTime::now());
    e.insert("client", client.peer.ip().to_string());
    if let Some(app) = &client.app_name {
        e.insert("appName", &**app);
    }
    e.insert("allUsers", Vec::<Bson>::new());
    e.insert("user", req.owner.as_deref().unwrap_or(""));
    e
}

pub(super) fn namespace(req: &Request<'_>) -> String {
    match (req.command_value(), req.get("collection")) {
        (_, Some(RawBsonRef::String(coll))) if req.name == "getMore" => req.ns(coll),
        (Some(RawBsonRef::String(coll)), _) => req.ns(coll),
        _ => format!("{}.$cmd", req.db),
    }
}

/// The command as the client sent it, cut when large (mongod's `$truncated`).
fn command(req: &Request<'_>) -> Bson {
    let len = req.body.as_bytes().len();
    if len > MAX_COMMAND_BYTES {
        let shown: String = format!("{:?}", req.body).chars().take(1024).collect();
        return Bson::Document(doc! { "$truncated": shown, "comment": format!("{len} bytes") });
    }
    Document::try_from(req.body).map_or(Bson::Null, Bson::Document)
}

/// mongod's write counts: `ninserted`, `nMatched`/`nModified`, `ndeleted`.
fn write_counts(command: &str, reply: &RawDocument, e: &mut Document) {
    let n = reply.get_i32("n").ok();
    match (command, n) {
        ("insert", Some(n)) => {
            e.insert("ninserted", n);
        }
        ("update", Some(n)) => {
            e.insert("nMatched", n);
            e.insert("nModified", reply.get_i32("nModified").unwrap_or(0));
        }
        ("delete", Some(n)) => {
            e.insert("ndeleted", n);
        }
        _ => {}
    }
}

/// Documents in a cursor reply's batch.
fn returned(reply: &RawDocument) -> Option<i64> {
    let cursor = reply.get_document("cursor").ok()?;
    let batch = cursor
        .get_array("firstBatch")
        .or_else(|_| cursor.get_array("nextBatch"))
        .ok()?;
    Some(batch.into_iter().count() as i64)
}

/// `<db>.system.profile`, created capped (1 MiB, no `_id` index: its entries have no `_id`, as
/// mongod's) if it does not exist.
async fn profile_collection(
    shared: &Shared,
    db: &str,
) -> CommandResult<mangrove_storage::CollectionInfo> {
    let ns = format!("{db}.{PROFILE_COLLECTION}");
    if let Some(coll) = shared.engine.snapshot().collection(&ns) {
        return Ok(coll);
    }
    let opts = visible_only();
    retry_conflicts(shared, &opts, |txn| {
        if txn.collection(&ns).is_none() {
            txn.create_collection(
                &ns,
                doc! { "capped": true, "size": PROFILE_COLLECTION_BYTES },
            )?;
        }
        Ok(())
    })
    .await?;
    shared.engine.snapshot().collection(&ns).ok_or_else(|| {
        CommandError::new(
            code::NAMESPACE_NOT_FOUND,
            format!("{ns} was dropped while the profiler created it"),
        )
    })
}

fn visible_only() -> WriteOptions {
    let mut opts = WriteOptions::from_request_defaults();
    opts.ack = Ack::Visible;
    opts
}

/// Appends `entry` to the database's `system.profile` in its own transaction, trimming the
/// oldest entries to its size.
async fn write_entry(shared: &Shared, db: &str, entry: Document) -> CommandResult<()> {
    let coll = profile_collection(shared, db).await?;
    let raw =
        RawDocumentBuf::try_from(&entry).map_err(|e| CommandError::bad_value(e.to_string()))?;
    let len = raw.as_bytes().len();
    let Some(mut writer) = shared.capped.writer(&coll).await else {
        return Err(CommandError::bad_value(format!(
            "{}.{PROFILE_COLLECTION} exists and is not capped: drop it to let the profiler write",
            db
        )));
    };
    let doc = Arc::new(raw);
    retry_conflicts(shared, &visible_only(), |txn| {
        let key = writer.reserve(txn, &coll, len)?;
        txn.insert(&coll, key, doc.clone())?;
        writer.added(len);
        writer.trim(txn, &coll)
    })
    .await?;
    writer.settle();
    Ok(())
}
