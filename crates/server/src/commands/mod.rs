//! The commands Mangrove answers, and the dispatcher. [`table`] lists every command with its
//! handler and properties; [`run`] finds a request's entry, applies test fail points, and runs
//! the handler in the context the request asks for: a statement, commit or abort of a
//! multi-document transaction or a retryable write (both in [`txn`]), a snapshot read, or
//! plain. Errors are labelled here, as mongod labels them, so drivers retry the same way.

mod aggregate;
mod args;
mod backup;
mod bulk_write;
mod catalog;
mod change_stream;
mod coll_mod;
mod coll_stats;
mod collections;
mod convert_capped;
mod count_distinct;
mod delete;
mod diag;
mod explain;
mod find;
mod find_and_modify;
mod get_more;
mod handshake;
mod index_stats;
mod indexes;
mod insert;
mod map_reduce;
mod modify;
mod multi_write;
mod names;
mod oplog_admin;
mod oplog_find;
pub(crate) mod profile;
mod read_concern;
mod repl_set;
mod reply;
mod role_admin;
mod sasl;
mod search_indexes;
mod sessions;
mod stored;
mod table;
mod tailable;
mod txn;
mod update;
mod user_admin;
mod validate;
mod views;
mod write_path;
mod write_stmt;

use bson::raw::RawBsonRef;
use bson::{Bson, Document};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::Shared;
use crate::error::{CommandError, CommandResult, LabelContext, code};
use crate::failpoint::FailCommand;
use crate::request::Request;

pub(crate) use crate::reply::Reply;
pub(crate) use handshake::Client;
pub(crate) use indexes::ttl_monitor;
pub(crate) use table::{COMMANDS, Command, lookup};

use table::{Call, InTxn};

/// Runs one command and labels its error (or write concern error) as mongod would, so
/// drivers make the same retry decisions. Test fail points act here, before the command runs.
pub(crate) async fn run(shared: &Shared, client: &mut Client, req: &Request<'_>) -> Reply {
    let cmd = lookup(req.name);
    let ctx = LabelContext {
        commit_or_abort: cmd.is_some_and(|c| matches!(c.in_txn, InTxn::Commit | InTxn::Abort)),
        has_txn_number: req.session.has_txn_number(),
        in_transaction: req.session.has_autocommit(),
    };
    if let Ok(Some(lsid)) = req.lsid() {
        shared.sessions.note_use(lsid, req.owner.as_deref());
    }
    let fault = if shared.config.enable_test_commands {
        shared
            .failpoints
            // A handshake names its application itself, before the connection knows it.
            .fail_command(
                req,
                handshake::declared_app_name(req).or(client.app_name.as_deref()),
            )
    } else {
        None
    };
    let mut labels_override = None;
    let mut forced_wce = None;
    if let Some(fault) = fault {
        match apply_fault(req, fault, &ctx).await {
            Ok((labels, wce)) => (labels_override, forced_wce) = (labels, wce),
            Err(reply) => return reply,
        }
    }
    let expired = match shared.config.enable_test_commands {
        true => shared.failpoints.max_time_expired(req),
        false => None,
    };
    let started = std::time::Instant::now();
    let runs_js = matches!(req.name, "find" | "aggregate" | "count" | "distinct")
        && crate::op_stats::names_javascript(req.body.as_bytes());
    let stats = Arc::new(crate::op_stats::OpStats {
        runs_js,
        ..Default::default()
    });
    let _listed = shared
        .ops
        .register(running(shared, client, req, started, stats.clone()));
    let result = match (crate::params::check_max_time_ms(req), expired) {
        (Err(e), _) | (Ok(()), Some(e)) => Err(e),
        (Ok(()), None) => {
            crate::op_stats::measured(stats.clone(), dispatch(shared, client, req, cmd)).await
        }
    };
    let result = result.map_err(|e| interrupted_if_killed(e, &stats));
    let reply = match result {
        Ok(Reply::Doc(reply)) => Reply::Doc(label_reply(reply, &ctx, labels_override, forced_wce)),
        Ok(reply) => reply,
        Err(e) => Reply::Doc(error_reply(e, &ctx, labels_override)),
    };
    let took = started.elapsed();
    profile::after(shared, client, req, &reply, took, &stats).await;
    note_index_use(shared, req, &stats);
    note_top(shared, req, took);
    if let Some(cmd) = cmd {
        shared.metrics.observe(cmd.name, took);
    }
    reply
}

/// A JavaScript failure of a command that `killOp` asked to stop is its interruption: the
/// kill reaches running JavaScript as the interpreter's own "interrupted" exception, and the
/// client must see Interrupted (11601), as from mongod, whichever layer reported it.
fn interrupted_if_killed(e: CommandError, stats: &crate::op_stats::OpStats) -> CommandError {
    let killed = stats.killed.load(Ordering::Relaxed);
    if killed && e.code == code::JS_INTERPRETER_FAILURE {
        tracing::debug!(error = %e.message, "a killed command's JavaScript failure reported as Interrupted");
        return crate::access::interrupted();
    }
    e
}

/// The command as `$currentOp` lists it while it runs, numbered for `killOp`.
fn running(
    shared: &Shared,
    client: &Client,
    req: &Request<'_>,
    started: std::time::Instant,
    stats: Arc<crate::op_stats::OpStats>,
) -> crate::ops::Running {
    let ns = match req.command_value() {
        Some(RawBsonRef::String(_)) => profile::namespace(req),
        _ if req.name == "aggregate" => format!("{}.$cmd.aggregate", req.db),
        _ => profile::namespace(req),
    };
    crate::ops::Running {
        opid: shared.ops.next_opid(),
        started,
        connection: client.id,
        client: client.peer,
        app_name: client.app_name.clone(),
        owner: req.owner.clone(),
        op: profile::op_name(req.name),
        ns,
        command: crate::ops::shown_command(req.body),
        lsid: req.lsid().ok().flatten().map(ToOwned::to_owned),
        txn_number: req.txn_number().ok().flatten(),
        stats,
    }
}

/// Counts the command's time against the collection it names, for `top`; a dropped
/// collection or database is forgotten.
fn note_top(shared: &Shared, req: &Request<'_>, took: std::time::Duration) {
    let coll = match (req.name, req.command_value()) {
        ("getMore", _) => match req.get("collection") {
            Some(RawBsonRef::String(c)) => c,
            _ => return,
        },
        ("dropDatabase", _) => return shared.top.forget(req.db, None),
        (_, Some(RawBsonRef::String(c))) => c,
        _ => return,
    };
    match req.name {
        "drop" => shared.top.forget(req.db, Some(coll)),
        name => shared.top.note((req.db, coll), name, took),
    }
}

/// Counts the index the command's plan walked, for `$indexStats`.
fn note_index_use(shared: &Shared, req: &Request<'_>, stats: &crate::op_stats::OpStats) {
    let Some(plan) = stats.plan.get() else {
        return;
    };
    let Some(RawBsonRef::String(coll)) = req.command_value() else {
        return;
    };
    let index = match plan {
        crate::op_stats::Plan::Index(index) => Some(index),
        crate::op_stats::Plan::IdPoint | crate::op_stats::Plan::IdRange => None,
        crate::op_stats::Plan::CollectionScan => return,
    };
    shared.index_usage.note((req.db, coll), index);
}

/// Acts out an armed `failCommand`: waits, closes the connection or fails the command (Err:
/// the reply to send instead of running it). Otherwise returns the labels and write concern
/// error the fail point imposes on the command's reply.
async fn apply_fault(
    req: &Request<'_>,
    fault: FailCommand,
    ctx: &LabelContext,
) -> Result<(Option<Vec<String>>, Option<Document>), Reply> {
    if let Some(pause) = fault.block {
        tokio::time::sleep(pause).await;
    }
    if fault.close_connection {
        req.close_connection.store(true, Ordering::Relaxed);
        return Err(Reply::Doc(Document::new()));
    }
    if let Some(code) = fault.error_code {
        let e = CommandError::new(code, "Failing command via 'failCommand' failpoint");
        return Err(Reply::Doc(error_reply(e, ctx, fault.error_labels)));
    }
    Ok((fault.error_labels, fault.write_concern_error))
}

/// A successful reply's labels: those a fail point imposes, or those its write concern error
/// earns.
fn label_reply(
    mut reply: Document,
    ctx: &LabelContext,
    labels_override: Option<Vec<String>>,
    forced_wce: Option<Document>,
) -> Document {
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
    reply
}

/// An error reply; a fail point's `errorLabels` replace the server's own labelling entirely.
fn error_reply(e: CommandError, ctx: &LabelContext, labels: Option<Vec<String>>) -> Document {
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

/// Finds the command's entry and runs it in the context the request asks for.
async fn dispatch(
    shared: &Shared,
    client: &mut Client,
    req: &Request<'_>,
    cmd: Option<&'static Command>,
) -> CommandResult<Reply> {
    let cmd = check_command(shared, req, cmd)?;
    crate::api_version::check(req, cmd.name)?;
    let peer = client.peer;
    crate::auth::authorize(shared, &mut client.identity, peer, req, cmd.needs)?;
    crate::validation::authorize_bypass(shared, &mut client.identity, req)?;
    if let Some(args) = req.session.transaction()? {
        return txn::in_transaction(shared, client, req, cmd, args).await;
    }
    // readConcern: wait for what it asks, and pick a snapshot-level read's point in time.
    let read_at = if req.get("readConcern").is_some() {
        prepare_read_concern(shared, req).await?
    } else {
        None
    };
    if let Some(at) = read_at {
        let at_ts = at.read_ts().to_bson();
        let call = Call {
            at: Some(at),
            ..Call::plain(shared, client, req)
        };
        let reply = cmd.handler.call(call).await?;
        return Ok(with_at_cluster_time(reply, at_ts));
    }
    if cmd.retryable_write && req.session.has_txn_number() {
        return txn::retryable_write(shared, client, req, cmd).await;
    }
    cmd.handler.call(Call::plain(shared, client, req)).await
}

/// The command's entry, if it exists here and may run in this database.
fn check_command(
    shared: &Shared,
    req: &Request<'_>,
    cmd: Option<&'static Command>,
) -> CommandResult<&'static Command> {
    let Some(cmd) = cmd else {
        return Err(CommandError::new(
            code::COMMAND_NOT_FOUND,
            format!("no such command: '{}'", req.name),
        ));
    };
    if cmd.test_only && !shared.config.enable_test_commands {
        return Err(CommandError::new(
            code::COMMAND_NOT_FOUND,
            format!(
                "no such command: '{}' (test commands need --enable-test-commands)",
                req.name
            ),
        ));
    }
    if cmd.admin_only && req.db != "admin" {
        return Err(CommandError::new(
            code::UNAUTHORIZED,
            format!("{} may only be run against the admin database.", req.name),
        ));
    }
    Ok(cmd)
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
            let mut session = txn::checkout(shared, lsid, req.owner.as_deref()).await?;
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
        // Only a change stream's batches are segmented, and change streams read no snapshot.
        segmented @ Reply::Segmented(_) => return segmented,
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
