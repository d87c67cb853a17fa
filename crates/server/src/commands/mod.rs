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
    cmd("endSessions", "ends logical sessions", false),
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
    if req.get("startTransaction").is_some() || req.get("autocommit").is_some() {
        // Running the statement outside a transaction would silently break the caller's
        // atomicity, so refuse until transactions land.
        return Err(CommandError::new(
            code::ILLEGAL_OPERATION,
            "multi-document transactions are not implemented in this Mangrove build yet",
        ));
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
        "endSessions" => Ok(doc! { "ok": 1.0 }.into()),
        "getLog" => diag::get_log(req),
        "listDatabases" => catalog::list_databases(shared, req),
        "listCollections" => catalog::list_collections(shared, req),
        "create" => catalog::create(shared, req).await,
        "drop" => catalog::drop(shared, req).await,
        "dropDatabase" => catalog::drop_database(shared, req).await,
        "insert" => crud::insert(shared, req).await,
        "find" => crud::find(shared, req),
        "getMore" => crud::get_more(shared, req),
        "killCursors" => crud::kill_cursors(shared, req),
        "update" => crud::update(shared, req).await,
        "delete" => crud::delete(shared, req).await,
        "count" => crud::count(shared, req),
        other => Err(CommandError::new(
            code::COMMAND_NOT_FOUND,
            format!("no such command: '{other}'"),
        )),
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
