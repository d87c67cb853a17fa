//! The command table: every command Mangrove answers, and the dispatcher.

mod aggregate;
mod args;
mod catalog;
mod collections;
mod count_distinct;
mod delete;
mod diag;
mod explain;
mod find;
mod find_and_modify;
mod get_more;
mod handshake;
mod indexes;
mod insert;
mod modify;
mod multi_write;
mod names;
mod read_concern;
mod reply;
mod stored;
mod update;
mod views;
mod write_path;
mod write_stmt;

use bson::{Bson, Document, RawDocumentBuf, doc};
use std::sync::atomic::Ordering;

use crate::Shared;
use crate::conn::ConnState;
use crate::error::{CommandError, CommandResult, LabelContext, code};
use crate::request::Request;
use crate::retryable::{self, RetryableWrite};
use crate::session::{self, TxnState};
use bson::raw::RawBsonRef;
use std::time::Instant;

pub(crate) enum Reply {
    Doc(Document),
    /// Replies that embed stored documents are built raw, so documents are copied once, into
    /// the reply, and never converted.
    Raw(RawDocumentBuf),
}

impl From<Document> for Reply {
    fn from(d: Document) -> Self {
        Reply::Doc(d)
    }
}

pub(crate) struct CommandInfo {
    pub name: &'static str,
    pub help: &'static str,
    /// mongod refuses these anywhere but the `admin` database.
    pub admin_only: bool,
    /// Exists only with `--enable-test-commands`.
    pub test_only: bool,
}

const fn cmd(name: &'static str, help: &'static str, admin_only: bool) -> CommandInfo {
    CommandInfo {
        name,
        help,
        admin_only,
        test_only: false,
    }
}

/// Every command, for dispatch and for `listCommands`.
pub(crate) const COMMANDS: &[CommandInfo] = &[
    cmd(
        "hello",
        "the handshake: topology, limits and wire versions",
        false,
    ),
    cmd("isMaster", "legacy name of hello", false),
    cmd("ismaster", "legacy name of hello", false),
    cmd("ping", "answers ok", false),
    cmd("buildInfo", "server version and build details", false),
    cmd("buildinfo", "legacy name of buildInfo", false),
    cmd(
        "getParameter",
        "reads server parameters; \"*\" lists all",
        true,
    ),
    cmd(
        "setParameter",
        "changes a runtime parameter (transactionLifetimeLimitSeconds, ...)",
        true,
    ),
    CommandInfo {
        name: "configureFailPoint",
        help: "arms a test fail point (only with --enable-test-commands)",
        admin_only: true,
        test_only: true,
    },
    cmd(
        "getCmdLineOpts",
        "the command line the server was started with",
        true,
    ),
    cmd(
        "serverStatus",
        "counters and state of the running server",
        false,
    ),
    cmd("hostInfo", "the machine the server runs on", false),
    cmd(
        "whatsmyuri",
        "the client's address as the server sees it",
        false,
    ),
    cmd(
        "connectionStatus",
        "authentication state of this connection",
        false,
    ),
    cmd("listCommands", "this list", false),
    cmd(
        "currentOp",
        "open transactions: lsid, txnNumber, time open, namespaces",
        true,
    ),
    cmd(
        "endSessions",
        "ends logical sessions, aborting their transactions",
        false,
    ),
    cmd(
        "killSessions",
        "kills logical sessions, aborting their transactions",
        false,
    ),
    cmd("killAllSessions", "kills every logical session", false),
    cmd(
        "killAllSessionsByPattern",
        "kills the logical sessions matching {lsid} or {uid} patterns",
        false,
    ),
    cmd(
        "startSession",
        "starts a logical session and returns its id",
        false,
    ),
    cmd(
        "refreshSessions",
        "keeps logical sessions from expiring",
        false,
    ),
    cmd(
        "commitTransaction",
        "commits the session's transaction",
        true,
    ),
    cmd("abortTransaction", "aborts the session's transaction", true),
    cmd("getLog", "recent log lines (none are kept)", true),
    cmd("listDatabases", "databases and their sizes", true),
    cmd("listCollections", "collections of a database", false),
    cmd("create", "creates a collection", false),
    cmd("drop", "drops a collection", false),
    cmd("dropDatabase", "drops a database", false),
    cmd(
        "renameCollection",
        "renames a collection (one transaction; waits for open transactions on it)",
        true,
    ),
    cmd(
        "createIndexes",
        "builds secondary indexes (waits for open transactions on the collection)",
        false,
    ),
    cmd("listIndexes", "indexes of a collection", false),
    cmd("dropIndexes", "drops secondary indexes", false),
    cmd(
        "explain",
        "the plan of a find, count, distinct, update, delete, findAndModify or aggregate",
        false,
    ),
    cmd("insert", "inserts documents", false),
    cmd("find", "queries a collection", false),
    cmd("getMore", "next batch of a cursor", false),
    cmd("killCursors", "closes cursors", false),
    cmd("update", "updates documents", false),
    cmd("delete", "deletes documents", false),
    cmd("count", "counts matching documents", false),
    cmd(
        "distinct",
        "distinct values of a field among matching documents",
        false,
    ),
    cmd(
        "findAndModify",
        "updates or removes one document and returns it",
        false,
    ),
    cmd("findandmodify", "legacy name of findAndModify", false),
    cmd(
        "aggregate",
        "runs an aggregation pipeline ($match, $sort, $skip, $limit, $project, $count, $group)",
        false,
    ),
];

/// Runs one command and labels its error (or write concern error) as mongod would, so
/// drivers make the same retry decisions. Test fail points act here, before the command runs.
pub(crate) async fn run(shared: &Shared, conn: &mut ConnState, req: &Request<'_>) -> Reply {
    let ctx = LabelContext {
        command: req.name,
        has_txn_number: req.get("txnNumber").is_some(),
        in_transaction: req.get("autocommit").is_some(),
    };
    if let Ok(Some(lsid)) = req.lsid() {
        shared.sessions.note_use(lsid);
    }
    let fault = if shared.config.enable_test_commands {
        shared
            .failpoints
            .fail_command(req, conn.app_name.as_deref())
    } else {
        None
    };
    let mut labels_override = None;
    let mut forced_wce = None;
    if let Some(fault) = fault {
        if let Some(pause) = fault.block {
            tokio::time::sleep(pause).await;
        }
        if fault.close_connection {
            req.close_connection.store(true, Ordering::Relaxed);
            return Reply::Doc(Document::new());
        }
        labels_override = fault.error_labels;
        if let Some(code) = fault.error_code {
            let e = CommandError::new(code, "Failing command via 'failCommand' failpoint");
            return Reply::Doc(error_reply(e, &ctx, labels_override));
        }
        forced_wce = fault.write_concern_error;
    }
    let result = match crate::params::check_max_time_ms(req) {
        Ok(()) => dispatch(shared, conn, req).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(Reply::Doc(mut reply)) => {
            if let Some(wce) = forced_wce {
                reply.insert("writeConcernError", wce);
            }
            let wc_code = reply
                .get_document("writeConcernError")
                .ok()
                .and_then(|w| w.get("code"))
                .and_then(|c| match c {
                    Bson::Int32(c) => Some(*c),
                    Bson::Int64(c) => Some(*c as i32),
                    Bson::Double(c) => Some(*c as i32),
                    _ => None,
                });
            let labels: Vec<String> = match labels_override {
                Some(labels) => labels,
                None if wc_code.is_some() => ctx
                    .labels_for(None, wc_code)
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
                None => Vec::new(),
            };
            if !labels.is_empty() {
                reply.insert("errorLabels", labels);
            }
            Reply::Doc(reply)
        }
        Ok(reply) => reply,
        Err(e) => Reply::Doc(error_reply(e, &ctx, labels_override)),
    }
}

/// An error reply; a fail point's `errorLabels` replace the server's own labelling entirely.
fn error_reply(e: CommandError, ctx: &LabelContext<'_>, labels: Option<Vec<String>>) -> Document {
    match labels {
        None => e.with_server_labels(ctx).to_document(),
        Some(labels) => {
            let mut d = CommandError {
                labels: Vec::new(),
                ..e
            }
            .to_document();
            if !labels.is_empty() {
                d.insert("errorLabels", labels);
            }
            d
        }
    }
}

async fn dispatch(
    shared: &Shared,
    conn: &mut ConnState,
    req: &Request<'_>,
) -> CommandResult<Reply> {
    let Some(info) = COMMANDS.iter().find(|c| c.name == req.name) else {
        return Err(CommandError::new(
            code::COMMAND_NOT_FOUND,
            format!("no such command: '{}'", req.name),
        ));
    };
    if info.test_only && !shared.config.enable_test_commands {
        return Err(CommandError::new(
            code::COMMAND_NOT_FOUND,
            format!(
                "no such command: '{}' (test commands need --enable-test-commands)",
                req.name
            ),
        ));
    }
    if info.admin_only && req.db != "admin" {
        return Err(CommandError::new(
            code::UNAUTHORIZED,
            format!("{} may only be run against the admin database.", req.name),
        ));
    }
    if let Some(args) = session::txn_args(req)? {
        return in_transaction(shared, req, args).await;
    }
    // readConcern: wait for what it asks, and pick a snapshot-level read's point in time.
    let read_at = if req.get("readConcern").is_some() {
        prepare_read_concern(shared, req).await?
    } else {
        None
    };
    if let Some(at) = &read_at {
        let at_ts = at.read_ts().to_bson();
        let at = read_at;
        let reply = match req.name {
            "find" => find::find(shared, req, None, at)?,
            "aggregate" => aggregate::aggregate(shared, req, None, at).await?,
            _ => count_distinct::distinct(shared, req, None, at)?,
        };
        return Ok(with_at_cluster_time(reply, at_ts));
    }
    match req.name {
        "hello" | "isMaster" | "ismaster" => handshake::hello(shared, conn, req),
        "ping" => Ok(doc! { "ok": 1.0 }.into()),
        "buildInfo" | "buildinfo" => Ok(diag::build_info(shared).into()),
        "getParameter" => diag::get_parameter(shared, req),
        "setParameter" => diag::set_parameter(shared, req),
        "configureFailPoint" => Ok(shared.failpoints.configure(req)?.into()),
        "getCmdLineOpts" => Ok(diag::cmd_line_opts(shared).into()),
        "serverStatus" => Ok(diag::server_status(shared).into()),
        "hostInfo" => Ok(diag::host_info().into()),
        "whatsmyuri" => Ok(doc! { "you": conn.peer.to_string(), "ok": 1.0 }.into()),
        "connectionStatus" => Ok(doc! {
            "authInfo": { "authenticatedUsers": [], "authenticatedUserRoles": [] },
            "ok": 1.0,
        }
        .into()),
        "listCommands" => Ok(diag::list_commands(shared).into()),
        "currentOp" => Ok(diag::current_op(shared).into()),
        "endSessions" | "killSessions" => end_sessions(shared, req).await,
        "killAllSessions" => {
            shared.sessions.end_all().await;
            Ok(doc! { "ok": 1.0 }.into())
        }
        "killAllSessionsByPattern" => kill_sessions_by_pattern(shared, req).await,
        "startSession" => Ok(doc! {
            "id": { "id": bson::Uuid::new() },
            "timeoutMinutes": 30,
            "ok": 1.0,
        }
        .into()),
        "refreshSessions" => {
            if let Some(RawBsonRef::Array(lsids)) = req.command_value() {
                for lsid in lsids.into_iter().flatten() {
                    if let RawBsonRef::Document(lsid) = lsid {
                        shared.sessions.touch(lsid);
                    }
                }
            }
            Ok(doc! { "ok": 1.0 }.into())
        }
        "commitTransaction" | "abortTransaction" => Err(CommandError::new(
            code::INVALID_OPTIONS,
            format!(
                "{} must be run within a transaction: it needs lsid, txnNumber and autocommit: false",
                req.name
            ),
        )),
        "getLog" => diag::get_log(req),
        "listDatabases" => catalog::list_databases(shared, req),
        "listCollections" => catalog::list_collections(shared, req),
        "create" => catalog::create(shared, req, None).await,
        "drop" => catalog::drop(shared, req).await,
        "dropDatabase" => catalog::drop_database(shared, req).await,
        "renameCollection" => catalog::rename_collection(shared, req).await,
        "createIndexes" => indexes::create_indexes(shared, req, None).await,
        "listIndexes" => indexes::list_indexes(shared, req, None),
        "dropIndexes" => indexes::drop_indexes(shared, req).await,
        "explain" => explain::explain(shared, req),
        "insert" | "update" | "delete" | "findAndModify" | "findandmodify"
            if req.get("txnNumber").is_some() =>
        {
            retryable_write(shared, req).await
        }
        "insert" => insert::insert(shared, req, None, None).await,
        "find" => find::find(shared, req, None, None),
        "distinct" => count_distinct::distinct(shared, req, None, None),
        "getMore" => get_more::get_more(shared, req),
        "killCursors" => get_more::kill_cursors(shared, req),
        "update" => update::update(shared, req, None, None).await,
        "delete" => delete::delete(shared, req, None, None).await,
        "count" => count_distinct::count(shared, req),
        "findAndModify" | "findandmodify" => {
            find_and_modify::find_and_modify(shared, req, None, None).await
        }
        "aggregate" => aggregate::aggregate(shared, req, None, None).await,
        other => Err(CommandError::new(
            code::COMMAND_NOT_FOUND,
            format!("no such command: '{other}'"),
        )),
    }
}

/// `endSessions` and `killSessions`: an array of lsids; their open transactions abort at once.
async fn end_sessions(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    let Some(RawBsonRef::Array(lsids)) = req.command_value() else {
        return Err(CommandError::type_mismatch(format!(
            "{} takes an array of session ids",
            req.name
        )));
    };
    for lsid in lsids {
        if let Ok(RawBsonRef::Document(lsid)) = lsid {
            shared.sessions.end(lsid).await;
        }
    }
    Ok(doc! { "ok": 1.0 }.into())
}

/// Waits for the read concern; for `snapshot` level returns the snapshot to read. A snapshot
/// session's first read pins its snapshot in the session for the reads that follow.
async fn prepare_read_concern(
    shared: &Shared,
    req: &Request<'_>,
) -> CommandResult<Option<mangrove_storage::Snapshot>> {
    let snapshot_level = matches!(
        req.opt_doc("readConcern")?
            .and_then(|rc| rc.get("level").ok().flatten()),
        Some(RawBsonRef::String("snapshot"))
    );
    match req.lsid()? {
        Some(lsid) if snapshot_level => {
            let handle = shared.sessions.get_or_create(lsid)?;
            let mut session = handle.lock().await;
            session.last_used = Instant::now();
            read_concern::prepare(shared, req, Some(&mut session)).await
        }
        _ => read_concern::prepare(shared, req, None).await,
    }
}

/// Reports the time a snapshot read was served at, where drivers look for it: in the cursor
/// for `find` and `aggregate`, at the top level for `distinct`.
fn with_at_cluster_time(reply: Reply, at: bson::Timestamp) -> Reply {
    let mut doc = match reply {
        Reply::Doc(d) => d,
        Reply::Raw(raw) => match Document::try_from(raw.as_ref() as &bson::RawDocument) {
            Ok(d) => d,
            Err(_) => return Reply::Raw(raw),
        },
    };
    match doc.get_document_mut("cursor") {
        Ok(cursor) => {
            cursor.insert("atClusterTime", at);
        }
        Err(_) => {
            doc.insert("atClusterTime", at);
        }
    }
    Reply::Doc(doc)
}

/// A write with `lsid` and `txnNumber` outside a transaction: statements this `txnNumber`
/// already ran are answered from the session's record instead of running again.
async fn retryable_write(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    let Some(n) = req.txn_number()? else {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "a retryable write needs a txnNumber",
        ));
    };
    let Some(lsid) = req.lsid()? else {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "Transaction number requires a session ID to also be specified",
        ));
    };
    let handle = shared.sessions.get_or_create(lsid)?;
    let mut session = handle.lock().await;
    session.last_used = Instant::now();
    let retry = begin_retryable_write(shared, &mut session, lsid, n).await?;
    let result = match req.name {
        "insert" => insert::insert(shared, req, None, Some(retry.clone())).await,
        "update" => update::update(shared, req, None, Some(retry.clone())).await,
        "delete" => delete::delete(shared, req, None, Some(retry.clone())).await,
        _ => find_and_modify::find_and_modify(shared, req, None, Some(retry.clone())).await,
    };
    if retry.take_close_request() {
        req.close_connection.store(true, Ordering::Relaxed);
    }
    result
}

/// Where a session's durable record lives in `config.transactions`.
struct SessionRecord {
    coll: mangrove_storage::CollectionInfo,
    key: mangrove_storage::DocKey,
    lsid: Document,
}

/// Where the session's record lives. Computed only when a record is read or written: the first
/// use of a session since the server started, a new retryable write, a commit with writes.
async fn session_record(shared: &Shared, lsid: &bson::RawDocument) -> CommandResult<SessionRecord> {
    let opts = write_path::WriteOptions::from_request_defaults();
    Ok(SessionRecord {
        coll: collections::implicit_collection(shared, retryable::SESSIONS_NS, &opts).await?,
        key: stored::key_of(RawBsonRef::Document(lsid)),
        lsid: Document::try_from(lsid)
            .map_err(|e| CommandError::bad_value(format!("lsid: {e}")))?,
    })
}

/// The first time a session is used since the server started, restores its state from its
/// `config.transactions` record: the last retryable write and its statements, or the last
/// committed transaction (so a commit retried across a restart still answers "committed"
/// instead of inviting the driver to run the transaction again). Returns the record's location
/// when it had to compute it.
async fn restore_session(
    shared: &Shared,
    session: &mut session::Session,
    lsid: &bson::RawDocument,
) -> CommandResult<Option<SessionRecord>> {
    if session.record_loaded {
        return Ok(None);
    }
    let record = session_record(shared, lsid).await?;
    session.record_loaded = true;
    if let Some(stored) = shared.engine.snapshot().get(&record.coll, &record.key)? {
        let fields = Document::try_from(stored.as_ref() as &bson::RawDocument).ok();
        let stored_n = fields.as_ref().and_then(|d| d.get_i64("txnNum").ok());
        let committed_txn = fields
            .as_ref()
            .is_some_and(|d| d.get_str("state").ok() == Some("committed"));
        if let Some(stored_n) = stored_n
            && session.txn_number.is_none_or(|cur| stored_n > cur)
        {
            session.txn_number = Some(stored_n);
            if committed_txn {
                session.state = TxnState::Committed;
            } else {
                session.retryable = Some(std::sync::Arc::new(RetryableWrite::new(
                    record.lsid.clone(),
                    record.key.clone(),
                    stored_n,
                    record.coll.clone(),
                    Some(&stored),
                )));
            }
        }
    }
    Ok(Some(record))
}

/// Writes "transaction `n` committed" into the committing transaction itself, so the outcome is
/// exactly as durable as the transaction.
fn record_commit(
    txn: &mut mangrove_storage::Txn,
    record: &SessionRecord,
    n: i64,
) -> CommandResult<()> {
    let doc = doc! {
        "_id": record.lsid.clone(),
        "txnNum": n,
        "state": "committed",
        "lastWriteDate": bson::DateTime::now(),
    };
    let raw = std::sync::Arc::new(
        RawDocumentBuf::try_from(&doc).map_err(|e| CommandError::new(1, e.to_string()))?,
    );
    if txn.get(&record.coll, &record.key)?.is_some() {
        txn.replace(&record.coll, record.key.clone(), raw)?;
    } else {
        txn.insert(&record.coll, record.key.clone(), raw)?;
    }
    Ok(())
}

/// Brings the session to retryable write `n`: the record of what `n` already ran (from memory,
/// or from `config.transactions` after a restart), or a fresh one for a newer `n`.
async fn begin_retryable_write(
    shared: &Shared,
    session: &mut session::Session,
    lsid: &bson::RawDocument,
    n: i64,
) -> CommandResult<std::sync::Arc<RetryableWrite>> {
    let restored = restore_session(shared, session, lsid).await?;
    match session.txn_number {
        Some(current) if n < current => Err(CommandError::new(
            code::TRANSACTION_TOO_OLD,
            format!(
                "Retryable write with txnNumber {n} is prohibited on session because a newer retryable write with txnNumber {current} has already started on this session."
            ),
        )),
        Some(current) if n == current => match &session.retryable {
            Some(r) if r.txn_number == n => Ok(r.clone()),
            _ => Err(CommandError::new(
                code::INCOMPLETE_TRANSACTION_HISTORY,
                format!(
                    "Cannot run a retryable write with txnNumber {n}: the session used that number for a multi-document transaction"
                ),
            )),
        },
        _ => {
            // A newer number ends whatever the session was doing, as a newer transaction would.
            session.abort("a retryable write with a newer txnNumber arrived on the session");
            session.state = TxnState::Idle;
            session.txn_number = Some(n);
            let SessionRecord { coll, key, lsid } = match restored {
                Some(record) => record,
                None => session_record(shared, lsid).await?,
            };
            let record = std::sync::Arc::new(RetryableWrite::new(lsid, key, n, coll, None));
            session.retryable = Some(record.clone());
            Ok(record)
        }
    }
}

/// A commit that could not be made: the transaction ends aborted (its intents already went back
/// with its dropped `Txn`), counted and logged like every abort.
fn commit_failed(shared: &Shared, session: &mut session::Session, n: i64, reason: &str) {
    session.state = TxnState::Aborted;
    shared
        .sessions
        .open
        .stats
        .aborted
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(lsid = %session.lsid, txn_number = n, reason, "transaction aborted: its commit failed");
}

/// Transactions open at least this long are logged when they commit.
const SLOW_TRANSACTION_MS: u64 = 1_000;

/// `killAllSessionsByPattern`: `[{lsid: {...}}, ...]` kills those sessions; an empty list, an
/// empty pattern or a `uid`/`users`/`roles` pattern kills all (there is one user: no auth).
async fn kill_sessions_by_pattern(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    let Some(RawBsonRef::Array(patterns)) = req.command_value() else {
        return Err(CommandError::type_mismatch(
            "killAllSessionsByPattern takes an array of patterns",
        ));
    };
    let mut lsids = Vec::new();
    let mut all = true;
    for pattern in patterns {
        all = false;
        match pattern {
            Ok(RawBsonRef::Document(p)) => match p.get("lsid") {
                Ok(Some(RawBsonRef::Document(lsid))) => lsids.push(lsid),
                _ => all = true,
            },
            _ => {
                return Err(CommandError::type_mismatch(
                    "killAllSessionsByPattern patterns must be documents",
                ));
            }
        }
        if all {
            break;
        }
    }
    if all {
        shared.sessions.end_all().await;
    } else {
        for lsid in lsids {
            shared.sessions.end(lsid).await;
        }
    }
    Ok(doc! { "ok": 1.0 }.into())
}

/// Runs a statement of a multi-document transaction, or commits or aborts one.
async fn in_transaction(
    shared: &Shared,
    req: &Request<'_>,
    args: session::TxnArgs,
) -> CommandResult<Reply> {
    let lsid = req
        .opt_doc("lsid")?
        .ok_or_else(|| CommandError::new(code::INVALID_OPTIONS, "a transaction needs an lsid"))?;
    let handle = shared.sessions.get_or_create(lsid)?;
    let mut session = handle.lock().await;
    session.last_used = Instant::now();
    let n = args.txn_number;
    let finishing = matches!(req.name, "commitTransaction" | "abortTransaction");
    if !session::allowed_in_transaction(req.name) {
        return Err(CommandError::new(
            code::OPERATION_NOT_SUPPORTED_IN_TRANSACTION,
            format!("Cannot run '{}' in a multi-document transaction.", req.name),
        ));
    }
    if req.get("writeConcern").is_some() && !finishing {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "Cannot set write concern after starting a transaction.",
        ));
    }
    if req.get("readConcern").is_some() && !args.start {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "Only the first command in a transaction may specify a readConcern",
        ));
    }
    restore_session(shared, &mut session, lsid).await?;
    // The log record's session metadata is built once, when the transaction begins.
    session::begin_or_continue(&mut session, &args, &shared.sessions.open, lsid, || {
        let mut txn = shared.engine.begin();
        txn.set_meta(req.commit_meta()?);
        Ok(txn)
    })?;

    match req.name {
        "commitTransaction" => {
            let opts = write_path::WriteOptions::from_request(req)?;
            match std::mem::replace(&mut session.state, TxnState::Committed) {
                TxnState::Active(mut active) => {
                    let open_ms = active.started.elapsed().as_millis() as u64;
                    let recorded = if active.txn.is_read_only() {
                        Ok(())
                    } else {
                        match session_record(shared, lsid).await {
                            Ok(record) => record_commit(&mut active.txn, &record, n),
                            Err(e) => Err(e),
                        }
                    };
                    if let Err(e) = recorded {
                        commit_failed(shared, &mut session, n, &e.message);
                        return Err(e);
                    }
                    let ticket = match active.txn.commit() {
                        Ok(ticket) => ticket,
                        Err(e) => {
                            commit_failed(shared, &mut session, n, &e.to_string());
                            return Err(e.into());
                        }
                    };
                    shared
                        .sessions
                        .open
                        .stats
                        .committed
                        .fetch_add(1, Ordering::Relaxed);
                    if open_ms >= SLOW_TRANSACTION_MS {
                        tracing::info!(lsid = %session.lsid, txn_number = n, open_ms, "slow transaction committed");
                    }
                    if let Err(mut e) = write_path::acknowledge(ticket, &opts).await {
                        // Queued but not confirmed durable: the outcome is unknown to us too.
                        e.labels.push("UnknownTransactionCommitResult");
                        return Err(e);
                    }
                }
                // A retried commit returns the original outcome.
                TxnState::Committed => {}
                TxnState::Aborted => {
                    session.state = TxnState::Aborted;
                    return Err(session::no_such_transaction(format!(
                        "Transaction {n} has been aborted."
                    )));
                }
                TxnState::Idle => {
                    session.state = TxnState::Idle;
                    return Err(session::no_such_transaction(format!(
                        "Transaction {n} does not exist on this session"
                    )));
                }
            }
            let mut reply = doc! {};
            if let Some(wce) = opts.wc_error() {
                reply.insert("writeConcernError", wce);
            }
            reply.insert("ok", 1.0);
            Ok(reply.into())
        }
        "abortTransaction" => match &session.state {
            TxnState::Active(_) => {
                session.abort("abortTransaction");
                Ok(doc! { "ok": 1.0 }.into())
            }
            TxnState::Committed => Err(CommandError::new(
                code::TRANSACTION_COMMITTED,
                format!("Transaction {n} has been committed."),
            )),
            TxnState::Aborted | TxnState::Idle => Err(CommandError::new(
                code::NO_SUCH_TRANSACTION,
                format!("Transaction {n} has been aborted."),
            )),
        },
        _ => {
            let active = match &mut session.state {
                TxnState::Active(active) => active,
                TxnState::Committed => {
                    return Err(CommandError::new(
                        code::TRANSACTION_COMMITTED,
                        format!("Transaction {n} has been committed."),
                    ));
                }
                TxnState::Aborted | TxnState::Idle => {
                    return Err(session::no_such_transaction(format!(
                        "Transaction {n} has been aborted."
                    )));
                }
            };
            active
                .touched
                .statement_started(req.collection().ok().map(|coll| req.ns(coll)));
            let txn = &mut active.txn;
            let result = match req.name {
                "find" => find::find(shared, req, Some(txn), None),
                "aggregate" => aggregate::aggregate(shared, req, Some(txn), None).await,
                "distinct" => count_distinct::distinct(shared, req, Some(txn), None),
                "create" => catalog::create(shared, req, Some(txn)).await,
                "createIndexes" => indexes::create_indexes(shared, req, Some(txn)).await,
                "insert" => insert::insert(shared, req, Some(txn), None).await,
                "update" => update::update(shared, req, Some(txn), None).await,
                "delete" => delete::delete(shared, req, Some(txn), None).await,
                "findAndModify" | "findandmodify" => {
                    find_and_modify::find_and_modify(shared, req, Some(txn), None).await
                }
                "getMore" => get_more::get_more(shared, req),
                "killCursors" => get_more::kill_cursors(shared, req),
                other => Err(CommandError::new(
                    code::OPERATION_NOT_SUPPORTED_IN_TRANSACTION,
                    format!("Cannot run '{other}' in a multi-document transaction."),
                )),
            };
            if let TxnState::Active(active) = &session.state {
                active.touched.statement_finished();
            }
            // Any failed statement aborts the transaction, as in mongod.
            match result {
                Ok(Reply::Doc(reply)) if reply.contains_key("writeErrors") => {
                    session.abort(&format!("a write error in '{}'", req.name));
                    Ok(Reply::Doc(reply))
                }
                Ok(reply) => Ok(reply),
                Err(e) => {
                    if e.code == code::WRITE_CONFLICT {
                        shared
                            .sessions
                            .open
                            .stats
                            .write_conflicts
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    session.abort(&format!(
                        "'{}' failed: {} ({})",
                        req.name, e.code_name, e.message
                    ));
                    // Labels (TransientTransactionError) are added in `run`, as for every error.
                    Err(e)
                }
            }
        }
    }
}

/// `$clusterTime` as a one-node replica set gossips it: unsigned, since there is no auth.
fn cluster_time(shared: &Shared) -> (bson::Timestamp, Document) {
    let ts = shared.engine.last_commit().to_bson();
    let ct = doc! {
        "clusterTime": ts,
        "signature": {
            "hash": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0u8; 20] },
            "keyId": 0i64,
        },
    };
    (ts, ct)
}

/// Adds `operationTime` and `$clusterTime`, which every replica-set reply carries.
pub(crate) fn decorate(shared: &Shared, reply: &mut Document) {
    let (ts, ct) = cluster_time(shared);
    reply.insert("$clusterTime", ct);
    reply.insert("operationTime", ts);
}

pub(crate) fn decorate_raw(shared: &Shared, reply: &mut RawDocumentBuf) {
    let (ts, ct) = cluster_time(shared);
    if let Ok(ct) = RawDocumentBuf::try_from(&ct) {
        reply.append(bson::raw::cstr!("$clusterTime"), ct);
    }
    reply.append(bson::raw::cstr!("operationTime"), ts);
}

pub(crate) use indexes::ttl_monitor;
