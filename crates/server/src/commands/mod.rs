//! The command table: every command Mangrove answers, and the dispatcher.

mod catalog;
mod crud;
mod diag;
mod handshake;

use bson::{Document, RawDocumentBuf, doc};

use crate::Shared;
use crate::conn::ConnState;
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;
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
}

const fn cmd(name: &'static str, help: &'static str, admin_only: bool) -> CommandInfo {
    CommandInfo {
        name,
        help,
        admin_only,
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
    cmd("insert", "inserts documents", false),
    cmd("find", "queries a collection", false),
    cmd("getMore", "next batch of a cursor", false),
    cmd("killCursors", "closes cursors", false),
    cmd("update", "updates documents", false),
    cmd("delete", "deletes documents", false),
    cmd("count", "counts matching documents", false),
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

pub(crate) async fn run(shared: &Shared, conn: &mut ConnState, req: &Request<'_>) -> Reply {
    match dispatch(shared, conn, req).await {
        Ok(reply) => reply,
        Err(e) => Reply::Doc(e.with_server_labels().to_document()),
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
    if info.admin_only && req.db != "admin" {
        return Err(CommandError::new(
            code::UNAUTHORIZED,
            format!("{} may only be run against the admin database.", req.name),
        ));
    }
    if let Some(args) = session::txn_args(req)? {
        return in_transaction(shared, req, args).await;
    }
    match req.name {
        "hello" | "isMaster" | "ismaster" => handshake::hello(shared, conn, req),
        "ping" => Ok(doc! { "ok": 1.0 }.into()),
        "buildInfo" | "buildinfo" => Ok(diag::build_info(shared).into()),
        "getParameter" => diag::get_parameter(shared, req),
        "getCmdLineOpts" => Ok(diag::cmd_line_opts(shared).into()),
        "serverStatus" => Ok(diag::server_status(shared).into()),
        "hostInfo" => Ok(diag::host_info().into()),
        "whatsmyuri" => Ok(doc! { "you": conn.peer.to_string(), "ok": 1.0 }.into()),
        "connectionStatus" => Ok(doc! {
            "authInfo": { "authenticatedUsers": [], "authenticatedUserRoles": [] },
            "ok": 1.0,
        }
        .into()),
        "listCommands" => Ok(diag::list_commands().into()),
        "endSessions" | "killSessions" => end_sessions(shared, req).await,
        "killAllSessions" => {
            shared.sessions.end_all().await;
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
        "create" => catalog::create(shared, req).await,
        "drop" => catalog::drop(shared, req).await,
        "dropDatabase" => catalog::drop_database(shared, req).await,
        "insert" => crud::insert(shared, req, None).await,
        "find" => crud::find(shared, req, None),
        "getMore" => crud::get_more(shared, req),
        "killCursors" => crud::kill_cursors(shared, req),
        "update" => crud::update(shared, req, None).await,
        "delete" => crud::delete(shared, req, None).await,
        "count" => crud::count(shared, req),
        "findAndModify" | "findandmodify" => crud::find_and_modify(shared, req, None).await,
        "aggregate" => crud::aggregate(shared, req, None),
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
    // The log record's session metadata is built once, when the transaction begins.
    session::begin_or_continue(&mut session, &args, || {
        let mut txn = shared.engine.begin();
        txn.set_meta(req.commit_meta()?);
        Ok(txn)
    })?;

    match req.name {
        "commitTransaction" => {
            let opts = crud::WriteOptions::from_request(req)?;
            match std::mem::replace(&mut session.state, TxnState::Committed) {
                TxnState::Active(active) => {
                    let ticket = match active.txn.commit() {
                        Ok(ticket) => ticket,
                        Err(e) => {
                            session.state = TxnState::Aborted;
                            return Err(e.into());
                        }
                    };
                    if let Err(mut e) = crud::acknowledge(ticket, opts.ack).await {
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
            if let Some(wce) = opts.wc_error {
                reply.insert("writeConcernError", wce);
            }
            reply.insert("ok", 1.0);
            Ok(reply.into())
        }
        "abortTransaction" => match &session.state {
            TxnState::Active(_) => {
                session.abort();
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
            let txn = &mut active.txn;
            let result = match req.name {
                "find" => crud::find(shared, req, Some(txn)),
                "aggregate" => crud::aggregate(shared, req, Some(txn)),
                "insert" => crud::insert(shared, req, Some(txn)).await,
                "update" => crud::update(shared, req, Some(txn)).await,
                "delete" => crud::delete(shared, req, Some(txn)).await,
                "findAndModify" | "findandmodify" => {
                    crud::find_and_modify(shared, req, Some(txn)).await
                }
                "getMore" => crud::get_more(shared, req),
                "killCursors" => crud::kill_cursors(shared, req),
                other => Err(CommandError::new(
                    code::OPERATION_NOT_SUPPORTED_IN_TRANSACTION,
                    format!("Cannot run '{other}' in a multi-document transaction."),
                )),
            };
            // Any failed statement aborts the transaction, as in mongod.
            match result {
                Ok(Reply::Doc(reply)) if reply.contains_key("writeErrors") => {
                    session.abort();
                    Ok(Reply::Doc(reply))
                }
                Ok(reply) => Ok(reply),
                Err(e) => {
                    session.abort();
                    Err(session::transient(e))
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
