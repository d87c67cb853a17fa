//! The command table as data: every command Mangrove answers, with its handler and the
//! properties the dispatcher, the transaction rules and the connection ask about (admin-only,
//! test-only, allowed in a transaction, retryable, snapshot-capable, writes, legacy OP_QUERY).
//!
//! Invariant: no code outside this table matches a command name to decide what the command may
//! do; it looks the command up ([`lookup`]) and reads the entry. A legacy alias (`ismaster`,
//! `findandmodify`, ...) is an entry of its own, a copy of its command's with its own name and
//! help, so `listCommands` lists it as mongod does.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use bson::doc;
use mangrove_storage::{Snapshot, Txn};

use crate::Shared;
use crate::auth::roles::Action;
use crate::auth::{self, Needs};
use crate::error::CommandResult;
use crate::request::Request;
use crate::retryable::RetryableWrite;

use super::handshake::{self, Client};
use super::{
    Reply, backup, bulk_write, catalog, coll_mod, coll_stats, convert_capped, count_distinct,
    delete, diag, explain, find, find_and_modify, get_more, indexes, insert, map_reduce,
    oplog_admin, profile, repl_set, role_admin, sasl, search_indexes, sessions, update, user_admin,
    validate,
};

pub(crate) type BoxFuture<'a> = Pin<Box<dyn Future<Output = CommandResult<Reply>> + Send + 'a>>;

/// One run of a command: the request, and the context the dispatcher chose for it.
pub(crate) struct Call<'a> {
    pub shared: &'a Shared,
    pub client: &'a mut Client,
    pub req: &'a Request<'a>,
    /// The multi-document transaction the command runs in, as one of its statements.
    pub txn: Option<&'a mut Txn>,
    /// The snapshot a `snapshot` read concern chose, outside a transaction.
    pub at: Option<Snapshot>,
    /// The record of a retryable write (`txnNumber` outside a transaction).
    pub retry: Option<Arc<RetryableWrite>>,
}

impl<'a> Call<'a> {
    /// A run outside any transaction, snapshot or retryable write.
    pub fn plain(shared: &'a Shared, client: &'a mut Client, req: &'a Request<'a>) -> Call<'a> {
        Call {
            shared,
            client,
            req,
            txn: None,
            at: None,
            retry: None,
        }
    }
}

/// A command's handler: most answer at once; writes and DDL wait (for commits, for open
/// transactions), so their futures are boxed.
#[derive(Clone, Copy)]
pub(crate) enum Handler {
    Sync(for<'a> fn(Call<'a>) -> CommandResult<Reply>),
    Async(for<'a> fn(Call<'a>) -> BoxFuture<'a>),
}

impl Handler {
    pub async fn call(self, call: Call<'_>) -> CommandResult<Reply> {
        match self {
            Handler::Sync(f) => f(call),
            Handler::Async(f) => f(call).await,
        }
    }
}

/// What a command does inside a multi-document transaction (`autocommit: false`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum InTxn {
    /// Refused with OperationNotSupportedInTransaction.
    Refused,
    /// Runs as one of the transaction's statements.
    Statement,
    Commit,
    Abort,
}

#[derive(Clone, Copy)]
pub(crate) struct Command {
    pub name: &'static str,
    pub help: &'static str,
    pub handler: Handler,
    /// mongod refuses these anywhere but the `admin` database.
    pub admin_only: bool,
    /// Exists only with `--enable-test-commands`.
    pub test_only: bool,
    pub in_txn: InTxn,
    /// With `lsid` + `txnNumber` outside a transaction it runs at most once.
    pub retryable_write: bool,
    /// Drivers retry it once on a network error or a retriable code (the retryable reads
    /// spec); nothing in the server depends on it.
    #[allow(dead_code)]
    pub retryable_read: bool,
    /// May read at `readConcern: {level: "snapshot"}` outside a transaction (mongod 7.0).
    pub snapshot: bool,
    /// Changes stored data or the catalog; for authorization (issue 14) and a read-only mode.
    #[allow(dead_code)]
    pub writes: bool,
    /// What a connection needs to run it under `--auth` (see `auth/mod.rs`).
    pub needs: Needs,
}

const fn cmd(name: &'static str, help: &'static str, handler: Handler) -> Command {
    Command {
        name,
        help,
        handler,
        admin_only: false,
        test_only: false,
        in_txn: InTxn::Refused,
        retryable_write: false,
        retryable_read: false,
        snapshot: false,
        writes: false,
        // Every entry says what it needs; the default is the strictest that still lets a
        // user's own sessions work.
        needs: Needs::Authentication,
    }
}

impl Command {
    const fn admin(self) -> Command {
        Command {
            admin_only: true,
            ..self
        }
    }

    const fn test_only(self) -> Command {
        Command {
            test_only: true,
            ..self
        }
    }

    const fn in_txn(self, in_txn: InTxn) -> Command {
        Command { in_txn, ..self }
    }

    /// A statement of a transaction.
    const fn statement(self) -> Command {
        self.in_txn(InTxn::Statement)
    }

    const fn retryable_write(self) -> Command {
        Command {
            retryable_write: true,
            ..self
        }
    }

    const fn retryable_read(self) -> Command {
        Command {
            retryable_read: true,
            ..self
        }
    }

    const fn snapshot(self) -> Command {
        Command {
            snapshot: true,
            ..self
        }
    }

    const fn writes(self) -> Command {
        Command {
            writes: true,
            ..self
        }
    }

    const fn needs(self, needs: Needs) -> Command {
        Command { needs, ..self }
    }

    /// The legacy spelling of this command: the same command under another name.
    const fn alias(self, name: &'static str, help: &'static str) -> Command {
        Command { name, help, ..self }
    }
}

/// A synchronous handler from an expression over the call `c`.
macro_rules! sync {
    (|$c:ident| $body:expr) => {
        Handler::Sync(|$c: Call<'_>| $body)
    };
}

/// An asynchronous handler from a future over the call `c`.
macro_rules! future {
    (|$c:ident| $body:expr) => {{
        fn handler($c: Call<'_>) -> BoxFuture<'_> {
            Box::pin($body)
        }
        Handler::Async(handler)
    }};
}

/// The connection as an authentication conversation sees it.
fn peer(client: &mut Client) -> sasl::Peer<'_> {
    sasl::Peer {
        addr: client.peer,
        identity: &mut client.identity,
        x509_subject: client.x509_subject.as_deref(),
    }
}

fn ok() -> CommandResult<Reply> {
    Ok(doc! { "ok": 1.0 }.into())
}

const HELLO: Command = cmd(
    "hello",
    "the handshake: topology, limits and wire versions",
    future!(|c| handshake::hello(c.shared, c.client, c.req)),
)
.needs(Needs::Nothing);

const BUILD_INFO: Command = cmd(
    "buildInfo",
    "server version and build details",
    sync!(|c| Ok(diag::build_info(c.shared).into())),
)
.needs(Needs::Nothing);

const FIND_AND_MODIFY: Command = cmd(
    "findAndModify",
    "updates or removes one document and returns it",
    future!(|c| find_and_modify::find_and_modify(c.shared, c.req, c.txn, c.retry)),
)
.statement()
.retryable_write()
.writes()
.needs(Needs::Actions(&[Action::Find, Action::Update]));

const DB_STATS: Command = cmd(
    "dbStats",
    "a database's collections, documents and sizes",
    sync!(|c| coll_stats::db_stats(c.shared, c.req)),
)
.needs(Needs::Actions(&[Action::DbStats]));

const PROFILE: Command = cmd(
    "profile",
    "the profiler's level for a database, slowms, sampleRate and filter",
    future!(|c| profile::profile(c.shared, c.req)),
)
.needs(Needs::Actions(&[Action::EnableProfiler]));

/// Every command, in `listCommands` order.
pub(crate) static COMMANDS: &[Command] = &[
    HELLO,
    HELLO.alias("isMaster", "legacy name of hello"),
    HELLO.alias("ismaster", "legacy name of hello"),
    cmd("ping", "answers ok", sync!(|_c| ok())).needs(Needs::Nothing),
    cmd(
        "saslStart",
        "starts a SCRAM-SHA-1 or SCRAM-SHA-256 authentication",
        future!(|c| sasl::sasl_start(c.shared, peer(c.client), c.req)),
    )
    .needs(Needs::Nothing),
    cmd(
        "saslContinue",
        "continues an authentication saslStart began",
        sync!(|c| sasl::sasl_continue(c.shared, peer(c.client), c.req)),
    )
    .needs(Needs::Nothing),
    cmd(
        "createUser",
        "creates a user with a password (SCRAM-SHA-1 and SCRAM-SHA-256) and roles",
        future!(|c| user_admin::create_user(c.shared, &mut c.client.identity, c.req)),
    )
    .writes()
    .needs(Needs::Actions(&[Action::CreateUser])),
    cmd(
        "updateUser",
        "changes a user's password, roles or custom data",
        future!(|c| user_admin::update_user(c.shared, &mut c.client.identity, c.req)),
    )
    .writes()
    .needs(Needs::Actions(&[Action::ChangePassword])),
    cmd(
        "dropUser",
        "removes a user",
        future!(|c| user_admin::drop_user(c.shared, c.req)),
    )
    .writes()
    .needs(Needs::Actions(&[Action::DropUser])),
    cmd(
        "dropAllUsersFromDatabase",
        "removes every user of the database",
        future!(|c| user_admin::drop_all_users(c.shared, c.req)),
    )
    .writes()
    .needs(Needs::Actions(&[Action::DropUser])),
    cmd(
        "grantRolesToUser",
        "adds roles to a user",
        future!(|c| user_admin::change_roles(c.shared, &mut c.client.identity, c.req, true)),
    )
    .writes(),
    cmd(
        "revokeRolesFromUser",
        "removes roles from a user",
        future!(|c| user_admin::change_roles(c.shared, &mut c.client.identity, c.req, false)),
    )
    .writes(),
    cmd(
        "usersInfo",
        "users, their roles and mechanisms (a user may always see itself)",
        sync!(|c| user_admin::users_info(c.shared, &mut c.client.identity, c.req)),
    ),
    cmd(
        "rolesInfo",
        "built-in and user-defined roles, with their privileges",
        sync!(|c| role_admin::roles_info(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::ViewRole])),
    cmd(
        "createRole",
        "defines a role: privileges (actions on resources) and inherited roles",
        future!(|c| role_admin::create_role(c.shared, c.req)),
    )
    .writes()
    .needs(Needs::Actions(&[Action::CreateRole])),
    cmd(
        "updateRole",
        "replaces a defined role's privileges or inherited roles",
        future!(|c| role_admin::update_role(c.shared, c.req)),
    )
    .writes()
    .needs(Needs::Actions(&[
        Action::CreateRole,
        Action::GrantRole,
        Action::RevokeRole,
    ])),
    cmd(
        "dropRole",
        "removes a defined role",
        future!(|c| role_admin::drop_role(c.shared, c.req)),
    )
    .writes()
    .needs(Needs::Actions(&[Action::DropRole])),
    cmd(
        "dropAllRolesFromDatabase",
        "removes every defined role of the database",
        future!(|c| role_admin::drop_all_roles(c.shared, c.req)),
    )
    .writes()
    .needs(Needs::Actions(&[Action::DropRole])),
    cmd(
        "grantPrivilegesToRole",
        "adds privileges to a defined role",
        future!(|c| role_admin::change_privileges(c.shared, c.req, true)),
    )
    .writes()
    .needs(Needs::Actions(&[Action::GrantRole])),
    cmd(
        "revokePrivilegesFromRole",
        "removes privileges from a defined role",
        future!(|c| role_admin::change_privileges(c.shared, c.req, false)),
    )
    .writes()
    .needs(Needs::Actions(&[Action::RevokeRole])),
    cmd(
        "grantRolesToRole",
        "adds inherited roles to a defined role",
        future!(|c| role_admin::change_inherited(c.shared, c.req, true)),
    )
    .writes()
    .needs(Needs::Actions(&[Action::GrantRole])),
    cmd(
        "revokeRolesFromRole",
        "removes inherited roles from a defined role",
        future!(|c| role_admin::change_inherited(c.shared, c.req, false)),
    )
    .writes()
    .needs(Needs::Actions(&[Action::RevokeRole])),
    cmd(
        "authenticate",
        "authenticates with MONGODB-X509: the verified TLS client certificate names the user",
        sync!(|c| sasl::authenticate_x509(c.shared, peer(c.client), c.req)),
    )
    .needs(Needs::Nothing),
    cmd(
        "logout",
        "ends the connection's authentication",
        sync!(|c| sasl::logout(&mut c.client.identity)),
    )
    .needs(Needs::Nothing),
    BUILD_INFO,
    BUILD_INFO.alias("buildinfo", "legacy name of buildInfo"),
    cmd(
        "getParameter",
        "reads server parameters; \"*\" lists all",
        sync!(|c| diag::get_parameter(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::GetParameter]))
    .admin(),
    cmd(
        "setParameter",
        "changes a runtime parameter (transactionLifetimeLimitSeconds, ...)",
        sync!(|c| diag::set_parameter(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::SetParameter]))
    .admin(),
    cmd(
        "configureFailPoint",
        "arms a test fail point (only with --enable-test-commands)",
        sync!(|c| Ok(c.shared.failpoints.configure(c.req)?.into())),
    )
    .needs(Needs::Actions(&[Action::TestCommands]))
    .admin()
    .test_only(),
    cmd(
        "bulkWrite",
        "inserts, updates and deletes over several namespaces (MongoDB 8.0)",
        future!(|c| bulk_write::bulk_write(c.shared, c.client, c.req, c.txn, c.retry)),
    )
    // Each namespace's insert, update or remove action is checked per op.
    .needs(Needs::Authentication)
    .admin()
    .statement()
    .retryable_write()
    .writes(),
    cmd(
        "createSearchIndexes",
        "Atlas Search indexes: refused (SearchNotEnabled), as by a mongod without Atlas Search",
        sync!(|c| search_indexes::refuse(c.req)),
    )
    .needs(Needs::Actions(&[Action::CreateIndex])),
    cmd(
        "updateSearchIndex",
        "Atlas Search indexes: refused (SearchNotEnabled), as by a mongod without Atlas Search",
        sync!(|c| search_indexes::refuse(c.req)),
    )
    .needs(Needs::Actions(&[Action::CreateIndex])),
    cmd(
        "dropSearchIndex",
        "Atlas Search indexes: refused (SearchNotEnabled), as by a mongod without Atlas Search",
        sync!(|c| search_indexes::refuse(c.req)),
    )
    .needs(Needs::Actions(&[Action::DropIndex])),
    // mongod's commands for testing the versioned API (`api_version.rs` knows which versions
    // hold them); they do nothing.
    cmd(
        "testVersion1",
        "in API Version 1 (test only)",
        sync!(|_c| ok()),
    )
    .needs(Needs::Nothing)
    .test_only(),
    cmd(
        "testVersion2",
        "not in API Version 1 (test only)",
        sync!(|_c| ok()),
    )
    .needs(Needs::Nothing)
    .test_only(),
    cmd(
        "testDeprecation",
        "deprecated in API Version 1 (test only)",
        sync!(|_c| ok()),
    )
    .needs(Needs::Nothing)
    .test_only(),
    cmd(
        "testDeprecationInVersion2",
        "deprecated in API Version 2 (test only)",
        sync!(|_c| ok()),
    )
    .needs(Needs::Nothing)
    .test_only(),
    cmd(
        "testRemoval",
        "removed from API Version 2 (test only)",
        sync!(|_c| ok()),
    )
    .needs(Needs::Nothing)
    .test_only(),
    cmd(
        "replSetResizeOplog",
        "changes how much history the log keeps: size (MB), minRetentionHours",
        sync!(|c| oplog_admin::resize_oplog(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::ReplSetResizeOplog]))
    .admin(),
    cmd(
        "shutdown",
        "stops the server cleanly, as SIGTERM does (the reply may not arrive)",
        sync!(|c| {
            c.req.check_fields(&["force", "timeoutSecs"])?;
            tracing::warn!(client = %c.client.peer, "shutdown requested by a client");
            c.shared.shutdown.notify_one();
            ok()
        }),
    )
    .admin()
    .needs(Needs::Actions(&[Action::Shutdown])),
    cmd(
        "fsync",
        "waits until every commit so far is on disk (lock: true is refused)",
        future!(|c| diag::fsync(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::Fsync]))
    .admin(),
    cmd(
        "createBackup",
        "an online backup into backupDir on the server's machine: a checkpoint and the log after it, with a checksummed manifest",
        future!(|c| backup::create_backup(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::CreateBackup]))
    .admin(),
    cmd(
        "fsyncUnlock",
        "refused: there is never an fsync lock",
        sync!(|c| diag::fsync_unlock(c.req)),
    )
    .needs(Needs::Actions(&[Action::Unlock]))
    .admin(),
    cmd(
        "dataSize",
        "the documents of a namespace (in a key range) and their bytes",
        sync!(|c| coll_stats::data_size(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::Find])),
    cmd(
        "killOp",
        "interrupts a running operation by its opid",
        sync!(|c| diag::kill_op(c.shared, c.client, c.req)),
    )
    // `killop` on the cluster, or the operation's own user (checked by the command).
    .needs(Needs::Authentication)
    .admin(),
    cmd(
        "top",
        "time spent per collection by kind of operation",
        sync!(|c| diag::top(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::Top]))
    .admin(),
    cmd(
        "validate",
        "checks a collection's documents against its indexes (and checksums with full: true)",
        sync!(|c| validate::validate(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::Validate])),
    cmd(
        "replSetGetStatus",
        "the one-member replica set's status, as mongod's",
        sync!(|c| repl_set::get_status(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::ReplSetGetStatus]))
    .admin(),
    cmd(
        "replSetGetConfig",
        "the one-member replica set's configuration",
        sync!(|c| repl_set::get_config(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::ReplSetGetConfig]))
    .admin(),
    cmd(
        "replSetInitiate",
        "refused: the set is initiated at the first start (AlreadyInitialized)",
        sync!(|c| repl_set::initiate(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::ReplSetConfigure]))
    .admin(),
    cmd(
        "replSetStepDown",
        "refused: the only member stays primary",
        sync!(|c| repl_set::step_down(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::ReplSetStateChange]))
    .admin(),
    cmd(
        "getDefaultRWConcern",
        "the cluster-wide default read and write concerns",
        sync!(|c| repl_set::get_default_rw_concern(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::GetDefaultRwConcern]))
    .admin(),
    cmd(
        "setDefaultRWConcern",
        "sets the cluster-wide default read and write concerns (kept in config.settings)",
        future!(|c| repl_set::set_default_rw_concern(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::SetDefaultRwConcern]))
    .admin()
    .writes(),
    cmd(
        "getCmdLineOpts",
        "the command line the server was started with",
        sync!(|c| Ok(diag::cmd_line_opts(c.shared).into())),
    )
    .needs(Needs::Actions(&[Action::GetCmdLineOpts]))
    .admin(),
    cmd(
        "serverStatus",
        "counters and state of the running server",
        sync!(|c| Ok(diag::server_status(c.shared).into())),
    )
    .needs(Needs::Actions(&[Action::ServerStatus])),
    cmd(
        "hostInfo",
        "the machine the server runs on",
        sync!(|_c| Ok(diag::host_info().into())),
    )
    .needs(Needs::Actions(&[Action::HostInfo])),
    cmd(
        "whatsmyuri",
        "the client's address as the server sees it",
        sync!(|c| Ok(doc! { "you": c.client.peer.to_string(), "ok": 1.0 }.into())),
    )
    .needs(Needs::Nothing),
    cmd(
        "connectionStatus",
        "authentication state of this connection",
        sync!(|c| Ok(auth::status(c.shared, &mut c.client.identity)?.into())),
    )
    .needs(Needs::Nothing),
    cmd(
        "listCommands",
        "this list",
        sync!(|c| Ok(diag::list_commands(c.shared).into())),
    )
    .needs(Needs::Authentication),
    cmd(
        "currentOp",
        "open transactions: lsid, txnNumber, time open, namespaces",
        sync!(|c| Ok(diag::current_op(c.shared).into())),
    )
    .needs(Needs::Actions(&[Action::Inprog]))
    .admin(),
    cmd(
        "endSessions",
        "ends logical sessions, aborting their transactions",
        future!(|c| sessions::end_sessions(c.shared, c.req)),
    )
    .needs(Needs::Authentication),
    cmd(
        "killSessions",
        "kills logical sessions, aborting their transactions",
        future!(|c| sessions::end_sessions(c.shared, c.req)),
    )
    .needs(Needs::Authentication),
    cmd(
        "killAllSessions",
        "kills every logical session",
        future!(|c| sessions::kill_all_sessions(c.shared)),
    )
    .needs(Needs::Actions(&[Action::KillAnySession])),
    cmd(
        "killAllSessionsByPattern",
        "kills the logical sessions matching {lsid} or {uid} patterns",
        future!(|c| sessions::kill_sessions_by_pattern(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::KillAnySession])),
    cmd(
        "startSession",
        "starts a logical session and returns its id",
        sync!(|_c| sessions::start_session()),
    )
    .needs(Needs::Authentication),
    cmd(
        "refreshSessions",
        "keeps logical sessions from expiring",
        sync!(|c| sessions::refresh_sessions(c.shared, c.req)),
    )
    .needs(Needs::Authentication),
    cmd(
        "commitTransaction",
        "commits the session's transaction",
        sync!(|c| sessions::not_in_transaction(c.req)),
    )
    .needs(Needs::Authentication)
    .admin()
    .in_txn(InTxn::Commit),
    cmd(
        "abortTransaction",
        "aborts the session's transaction",
        sync!(|c| sessions::not_in_transaction(c.req)),
    )
    .needs(Needs::Authentication)
    .admin()
    .in_txn(InTxn::Abort),
    cmd(
        "getLog",
        "recent log lines (global: the last 1,024; startupWarnings)",
        sync!(|c| diag::get_log(c.req)),
    )
    .needs(Needs::Actions(&[Action::GetLog]))
    .admin(),
    cmd(
        "listDatabases",
        "databases and their sizes",
        sync!(|c| catalog::list_databases(c.shared, c.req)),
    )
    .needs(Needs::Authentication)
    .admin()
    .retryable_read(),
    cmd(
        "listCollections",
        "collections of a database",
        sync!(|c| catalog::list_collections(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::ListCollections]))
    .retryable_read(),
    cmd(
        "create",
        "creates a collection",
        future!(|c| catalog::create(c.shared, c.req, c.txn)),
    )
    .needs(Needs::Actions(&[Action::CreateCollection]))
    .statement()
    .writes(),
    cmd(
        "drop",
        "drops a collection",
        future!(|c| catalog::drop(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::DropCollection]))
    .writes(),
    cmd(
        "dropDatabase",
        "drops a database",
        future!(|c| catalog::drop_database(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::DropDatabase]))
    .writes(),
    cmd(
        "collMod",
        "changes a collection's, view's or index's options",
        future!(|c| coll_mod::coll_mod(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::CollMod]))
    .writes(),
    cmd(
        "convertToCapped",
        "makes a collection capped (one transaction; waits for open transactions on it)",
        future!(|c| convert_capped::convert_to_capped(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::ConvertToCapped]))
    .writes(),
    cmd(
        "renameCollection",
        "renames a collection (one transaction; waits for open transactions on it)",
        future!(|c| catalog::rename_collection(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::RenameCollectionSameDb]))
    .admin()
    .writes(),
    cmd(
        "createIndexes",
        "builds secondary indexes (waits for open transactions on the collection)",
        future!(|c| indexes::create_indexes(c.shared, c.req, c.txn)),
    )
    .needs(Needs::Actions(&[Action::CreateIndex]))
    .statement()
    .writes(),
    cmd(
        "collStats",
        "a collection's document count and sizes (deprecated by mongod for $collStats)",
        sync!(|c| coll_stats::coll_stats(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::CollStats]))
    .retryable_read(),
    DB_STATS,
    PROFILE,
    DB_STATS.alias("dbstats", "legacy name of dbStats"),
    cmd(
        "listIndexes",
        "indexes of a collection",
        sync!(|c| indexes::list_indexes(c.shared, c.req, None)),
    )
    .needs(Needs::Actions(&[Action::ListIndexes]))
    .retryable_read(),
    cmd(
        "dropIndexes",
        "drops secondary indexes",
        future!(|c| indexes::drop_indexes(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::DropIndex]))
    .writes(),
    cmd(
        "explain",
        "the plan of a find, count, distinct, update, delete, findAndModify or aggregate",
        sync!(|c| explain::explain(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::Find])),
    cmd(
        "insert",
        "inserts documents",
        future!(|c| insert::insert(c.shared, c.req, c.txn, c.retry)),
    )
    .needs(Needs::Actions(&[Action::Insert]))
    .statement()
    .retryable_write()
    .writes(),
    cmd(
        "find",
        "queries a collection",
        future!(|c| find::find_or_oplog(c.shared, c.req, c.txn.map(|t| &*t), c.at)),
    )
    .needs(Needs::Actions(&[Action::Find]))
    .statement()
    .retryable_read()
    .snapshot(),
    cmd(
        "getMore",
        "next batch of a cursor",
        future!(|c| get_more::get_more(c.shared, c.req)),
    )
    .needs(Needs::Authentication)
    .statement(),
    cmd(
        "killCursors",
        "closes cursors",
        sync!(|c| get_more::kill_cursors(c.shared, c.req)),
    )
    .needs(Needs::Authentication)
    .statement(),
    cmd(
        "update",
        "updates documents",
        future!(|c| update::update(c.shared, c.req, c.txn, c.retry)),
    )
    .needs(Needs::Actions(&[Action::Update]))
    .statement()
    .retryable_write()
    .writes(),
    cmd(
        "delete",
        "deletes documents",
        future!(|c| delete::delete(c.shared, c.req, c.txn, c.retry)),
    )
    .needs(Needs::Actions(&[Action::Remove]))
    .statement()
    .retryable_write()
    .writes(),
    cmd(
        "count",
        "counts matching documents",
        sync!(|c| count_distinct::count(c.shared, c.req)),
    )
    .needs(Needs::Actions(&[Action::Find]))
    .retryable_read(),
    cmd(
        "distinct",
        "distinct values of a field among matching documents",
        sync!(|c| count_distinct::distinct(c.shared, c.req, c.txn.as_deref(), c.at)),
    )
    .needs(Needs::Actions(&[Action::Find]))
    .statement()
    .retryable_read()
    .snapshot(),
    FIND_AND_MODIFY,
    FIND_AND_MODIFY.alias("findandmodify", "legacy name of findAndModify"),
    cmd(
        "aggregate",
        "runs an aggregation pipeline ($match, $sort, $skip, $limit, $project, $count, $group)",
        future!(|c| explain::aggregate_or_explain(
            c.shared,
            c.req,
            c.txn.map(|t| &*t),
            c.at
        )),
    )
    .needs(Needs::Actions(&[Action::Find]))
    .statement()
    .retryable_read()
    .snapshot(),
    // Not a statement: mongod refuses mapReduce in a transaction (263).
    cmd(
        "mapReduce",
        "runs map and reduce JavaScript functions over a collection (as an aggregation)",
        future!(|c| map_reduce::map_reduce(c.shared, c.client, c.req, c.at)),
    )
    .needs(Needs::Actions(&[Action::Find])),
];

/// The entry for the command name exactly as sent (names are case-sensitive), if any.
pub(crate) fn lookup(name: &str) -> Option<&'static Command> {
    static BY_NAME: LazyLock<HashMap<&'static str, &'static Command>> =
        LazyLock::new(|| COMMANDS.iter().map(|c| (c.name, c)).collect());
    BY_NAME.get(name).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for c in COMMANDS {
            assert!(std::ptr::eq(lookup(c.name).unwrap(), c), "{}", c.name);
        }
        assert!(lookup("FIND").is_none());
    }

    #[test]
    fn properties_agree() {
        for c in COMMANDS {
            if c.retryable_write {
                assert!(c.writes && c.in_txn == InTxn::Statement, "{}", c.name);
            }
            if c.snapshot {
                assert!(!c.writes && c.in_txn == InTxn::Statement, "{}", c.name);
            }
        }
    }
}
