//! Diagnostic commands drivers and shells send at connect time: build info, parameters,
//! command line, status, host.

use bson::raw::RawBsonRef;
use bson::{Bson, DateTime, Document, doc};

use crate::Shared;
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;

use super::{COMMANDS, Reply};

/// The MongoDB version Mangrove implements the behaviour of.
pub const COMPAT_VERSION: &str = "8.0.0";

pub(super) fn build_info(shared: &Shared) -> Document {
    doc! {
        "version": COMPAT_VERSION,
        "gitVersion": concat!("mangrove-", env!("CARGO_PKG_VERSION")),
        "mangroveVersion": env!("CARGO_PKG_VERSION"),
        "versionArray": [8, 0, 0, 0],
        "bits": 64,
        "debug": cfg!(debug_assertions),
        "maxBsonObjectSize": shared.config.max_bson_size as i32,
        "storageEngines": ["mangrove"],
        "javascriptEngine": "none",
        "allocator": "system",
        "modules": [],
        "openssl": { "running": "disabled" },
        "buildEnvironment": { "target_os": std::env::consts::OS, "target_arch": std::env::consts::ARCH },
        "ok": 1.0,
    }
}

fn parameters(shared: &Shared) -> Document {
    use std::sync::atomic::Ordering::Relaxed;
    let mut all = doc! {
        "featureCompatibilityVersion": { "version": "8.0" },
        "enableTestCommands": shared.config.enable_test_commands,
        "transactionLifetimeLimitSeconds": shared.params.transaction_lifetime_secs.load(Relaxed) as i64,
        "maxTransactionLockRequestTimeoutMillis": shared.params.max_transaction_lock_request_timeout_ms.load(Relaxed),
        "ttlMonitorSleepSecs": shared.params.ttl_monitor_sleep_secs.load(Relaxed) as i64,
        "ttlMonitorEnabled": shared.params.ttl_monitor_enabled.load(Relaxed),
        "allowDiskUseByDefault": shared.params.allow_disk_use_by_default.load(Relaxed),
        "cursorTimeoutMillis": shared.config.cursor_timeout.as_millis() as i64,
        "maxBSONDepth": 100,
        "authenticationMechanisms": ["SCRAM-SHA-1", "SCRAM-SHA-256"],
        "scramIterationCount": shared.config.scram_sha1_iterations as i32,
        "scramSHA256IterationCount": shared.config.scram_sha256_iterations as i32,
        "logLevel": 0,
        // One verbosity for everything (`--log-level`); per-component verbosities inherit it.
        "logComponentVerbosity": log_components(),
        "quiet": false,
        // The versioned API's switches, at mongod's defaults (not settable here).
        "requireApiVersion": false,
        "acceptApiVersion2": false,
    };
    shared.params.query.report(&mut all);
    all
}

fn log_components() -> Document {
    let mut tree = doc! { "verbosity": 0 };
    for c in [
        "accessControl",
        "command",
        "control",
        "geo",
        "index",
        "network",
        "query",
        "replication",
        "storage",
        "transaction",
        "write",
    ] {
        tree.insert(c, doc! { "verbosity": -1 });
    }
    tree
}

pub(super) fn get_parameter(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    let all = parameters(shared);
    if matches!(req.command_value(), Some(RawBsonRef::String("*"))) {
        let mut reply = all;
        reply.insert("ok", 1.0);
        return Ok(reply.into());
    }
    let mut reply = Document::new();
    for item in req.body.iter() {
        let (key, _) = item.map_err(|e| CommandError::new(22, e.to_string()))?;
        let key = key.as_str();
        if key == req.name || key.starts_with('$') || key == "lsid" || key == "comment" {
            continue;
        }
        if let Some(v) = all.get(key) {
            reply.insert(key, v.clone());
        }
    }
    if reply.is_empty() {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "no option found to get",
        ));
    }
    reply.insert("ok", 1.0);
    Ok(reply.into())
}

/// `setParameter`: the runtime parameters Mangrove lets you change, within mongod's ranges.
pub(super) fn set_parameter(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    Ok(crate::params::set_parameter(&shared.params, req)?.into())
}

pub(super) fn cmd_line_opts(shared: &Shared) -> Document {
    let c = &shared.config;
    doc! {
        "argv": c.argv.clone(),
        "parsed": {
            "net": { "bindIp": &c.bind, "port": c.port as i32 },
            "replication": { "replSet": &c.replset },
            "storage": { "dbPath": c.data_dir.display().to_string() },
            "security": { "authorization": if c.auth { "enabled" } else { "disabled" } },
        },
        "ok": 1.0,
    }
}

/// `serverStatus.mem`: the process's resident and virtual sizes in MiB, from
/// `/proc/self/status` (`supported: false` where there is none).
fn mem_status() -> Document {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| -> Option<i64> {
        let line = status.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    match (kib("VmRSS:"), kib("VmSize:")) {
        (Some(rss), Some(virt)) => doc! {
            "bits": 64,
            "resident": (rss / 1024) as i32,
            "virtual": (virt / 1024) as i32,
            "supported": true,
        },
        _ => doc! { "bits": 64, "supported": false },
    }
}

/// `serverStatus.network`: message bytes as read and written (compressed ones as sent, so
/// physical and logical are the same count here).
fn network_status(counters: &crate::Counters) -> Document {
    use std::sync::atomic::Ordering::Relaxed;
    let (bytes_in, bytes_out) = (
        counters.bytes_in.load(Relaxed) as i64,
        counters.bytes_out.load(Relaxed) as i64,
    );
    doc! {
        "bytesIn": bytes_in,
        "bytesOut": bytes_out,
        "physicalBytesIn": bytes_in,
        "physicalBytesOut": bytes_out,
        "numRequests": counters.requests.load(Relaxed) as i64,
    }
}

pub(super) fn server_status(shared: &Shared) -> Document {
    use std::sync::atomic::Ordering::Relaxed;
    let counters = &shared.counters;
    let uptime = shared.started.elapsed();
    let current = counters.connections_current.load(Relaxed) as i64;
    let log = shared.engine.log_stats();
    doc! {
        "host": hostname(),
        "version": COMPAT_VERSION,
        "process": "mangrove",
        "pid": std::process::id() as i64,
        "uptime": uptime.as_secs_f64().floor(),
        "uptimeMillis": uptime.as_millis() as i64,
        "uptimeEstimate": uptime.as_secs() as i64,
        "localTime": DateTime::now(),
        "connections": {
            "current": current,
            "available": shared.config.max_connections as i64 - current,
            "totalCreated": counters.connections_total.load(Relaxed) as i64,
        },
        "mem": mem_status(),
        "network": network_status(counters),
        "opcounters": counters.opcounters(),
        // The transaction log's group commit: `batches` is the number of write+fdatasync
        // rounds, so `commits / batches` is durable commits per fdatasync.
        "mangrove": {
            "log": {
                "commits": log.commits as i64,
                "batches": log.batches as i64,
                "bytes": log.bytes as i64,
                "lastCommit": shared.engine.last_commit().to_bson(),
            },
            "history": super::oplog_admin::history_status(shared),
        },
        "oplogTruncation": super::oplog_admin::oplog_truncation(shared),
        "metrics": {
            "cursor": { "open": { "total": shared.cursors.open_count() as i64 } },
            "ttl": {
                "passes": shared.counters.ttl_passes.load(std::sync::atomic::Ordering::Relaxed) as i64,
                "deletedDocuments": shared.counters.ttl_deleted.load(std::sync::atomic::Ordering::Relaxed) as i64,
            },
        },
        "transactions": transactions_status(shared),
        "repl": {
            "setName": &shared.config.replset,
            "isWritablePrimary": true,
            "secondary": false,
            "hosts": [shared.advertised.as_str()],
            "primary": shared.advertised.as_str(),
            "me": shared.advertised.as_str(),
        },
        "storageEngine": {
            "name": "mangrove",
            "supportsCommittedReads": true,
            "supportsSnapshotReadConcern": true,
            "persistent": true,
        },
        "ok": 1.0,
    }
}

/// `serverStatus.transactions`, from the open-transaction table and its counters.
fn transactions_status(shared: &Shared) -> Document {
    use std::sync::atomic::Ordering::Relaxed;
    let open = shared.sessions.open.list();
    let active = open.iter().filter(|t| t.running).count() as i64;
    let stats = &shared.sessions.open.stats;
    doc! {
        "currentActive": active,
        "currentInactive": open.len() as i64 - active,
        "currentOpen": open.len() as i64,
        "totalAborted": stats.aborted.load(Relaxed) as i64,
        "totalCommitted": stats.committed.load(Relaxed) as i64,
        "totalStarted": stats.started.load(Relaxed) as i64,
        "totalPrepared": 0i64,
        "totalPreparedThenCommitted": 0i64,
        "totalPreparedThenAborted": 0i64,
        "currentPrepared": 0i64,
        "writeConflicts": stats.write_conflicts.load(Relaxed) as i64,
    }
}

/// `killOp`: asks the operation numbered `op` to stop; it fails with Interrupted (11601) at
/// its next interruption check (`ops.rs`). As mongod, the answer is the same whether or not
/// the operation exists or has already ended. A user without the `killop` action may kill only
/// its own operations (mongod's "coauthorized" client); anything else is Unauthorized.
pub(super) fn kill_op(
    shared: &Shared,
    client: &mut super::Client,
    req: &Request<'_>,
) -> CommandResult<Reply> {
    req.check_fields(&["op"])?;
    let op = match req.get("op") {
        Some(v) => crate::request::as_i64(v)
            .ok_or_else(|| CommandError::type_mismatch("op must be a number"))?,
        None => {
            return Err(CommandError::new(
                code::MISSING_FIELD,
                "BSON field 'killOp.op' is missing but a required field",
            ));
        }
    };
    let Ok(opid) = i32::try_from(op) else {
        return Err(CommandError::new(
            26823,
            format!("invalid op : {op}. Op ID cannot be represented with 32 bits"),
        ));
    };
    let any = crate::auth::may(
        shared,
        &mut client.identity,
        "admin",
        crate::auth::roles::Action::Killop,
    )?;
    match shared.ops.get(opid) {
        Some(target) if any || (target.owner.is_some() && target.owner == req.owner) => {
            tracing::info!(opid, ns = %target.ns, "killOp: interrupting the operation");
            target.stats.kill();
        }
        _ if any => {}
        _ => return Err(crate::auth::unauthorized(req.db, req.name)),
    }
    Ok(doc! { "info": "attempting to kill op", "ok": 1.0 }.into())
}

/// `fsync`: returns once every commit so far is on disk (a write acknowledged with `w: 1` may
/// not be yet). `lock: true` is refused: Mangrove cannot stop its writers for an outside copy;
/// a consistent copy is a stopped server's data directory.
pub(super) async fn fsync(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&[
        "lock",
        "async",
        "forBackup",
        "fsyncLockAcquisitionTimeoutMillis",
    ])?;
    if req.opt_bool("lock")?.unwrap_or(false) {
        return Err(CommandError::new(
            code::COMMAND_NOT_SUPPORTED,
            "fsync with lock: true is not supported by Mangrove: every acknowledged write is already on disk, and writers cannot be paused for an outside copy; take an online backup with createBackup (`mangrove backup --to DIR`) instead",
        ));
    }
    let target = shared.engine.last_commit();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while shared.engine.last_durable() < target {
        if std::time::Instant::now() > deadline {
            return Err(CommandError::new(
                code::EXCEEDED_TIME_LIMIT,
                "fsync: the log did not reach the disk within 60 s; check the server log for I/O errors",
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    Ok(doc! { "numFiles": 1, "ok": 1.0 }.into())
}

/// `fsyncUnlock`: there is never an fsync lock to release.
pub(super) fn fsync_unlock(req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&[])?;
    Err(CommandError::new(
        code::ILLEGAL_OPERATION,
        "fsyncUnlock called when not locked",
    ))
}

/// `top`: time per collection by kind of operation (`top.rs`).
pub(super) fn top(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&[])?;
    Ok(shared.top.report().into())
}

/// The in-progress entries `currentOp` and `$currentOp` show: running operations and open
/// transactions.
pub(super) fn current_ops(shared: &Shared) -> Vec<Document> {
    current_op(shared)
        .get_array("inprog")
        .map(|a| a.iter().filter_map(|d| d.as_document().cloned()).collect())
        .unwrap_or_default()
}

/// `currentOp`: every running operation (`ops.rs`), a statement of a transaction with the
/// transaction's description, and the transactions idle between statements, in mongod's shape.
pub(super) fn current_op(shared: &Shared) -> Document {
    let mut open = shared.sessions.open.list();
    let mut inprog: Vec<Bson> = Vec::new();
    for op in shared.ops.list() {
        let txn = open.iter().position(|t| {
            t.running
                && Some(t.txn_number) == op.txn_number
                && op
                    .lsid
                    .as_ref()
                    .and_then(|l| l.get("id").ok().flatten())
                    .and_then(|id| Bson::try_from(id).ok())
                    .as_ref()
                    == t.lsid.get("id")
        });
        let transaction = txn.map(|i| transaction_doc(&open.swap_remove(i)));
        inprog.push(Bson::Document(crate::ops::describe(
            &shared.advertised,
            &op,
            transaction,
        )));
    }
    // Idle transactions, and a running one whose statement has just ended.
    for t in open {
        inprog.push(Bson::Document(doc! {
            "type": if t.running { "op" } else { "idleSession" },
            "active": t.running,
            "lsid": t.lsid.clone(),
            "transaction": transaction_doc(&t),
        }));
    }
    doc! { "inprog": inprog, "ok": 1.0 }
}

/// An open transaction as `currentOp` describes it.
fn transaction_doc(t: &crate::session::OpenTxn) -> Document {
    let open_micros = t.started.elapsed().as_micros() as i64;
    doc! {
        "parameters": {
            "txnNumber": t.txn_number,
            "autocommit": false,
        },
        "startWallClockTime": t.started_wall.try_to_rfc3339_string().unwrap_or_default(),
        "timeOpenMicros": open_micros,
        "timeActiveMicros": if t.running { open_micros } else { 0 },
        "namespaces": t.namespaces.iter().cloned().collect::<Vec<_>>(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

pub(super) fn host_info() -> Document {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as i32;
    let mem_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<i64>().ok())
        })
        .map_or(0, |kb| kb / 1024);
    doc! {
        "system": {
            "currentTime": DateTime::now(),
            "hostname": hostname(),
            "cpuAddrSize": 64,
            "memSizeMB": mem_mb,
            "numCores": cores,
            "cpuArch": std::env::consts::ARCH,
        },
        "os": { "type": std::env::consts::OS, "name": std::env::consts::OS },
        "extra": {},
        "ok": 1.0,
    }
}

pub(super) fn list_commands(shared: &Shared) -> Document {
    let mut commands = Document::new();
    for c in COMMANDS {
        if c.test_only && !shared.config.enable_test_commands {
            continue;
        }
        commands.insert(
            c.name,
            doc! { "help": c.help, "requiresAuth": false, "secondaryOk": true, "adminOnly": c.admin_only },
        );
    }
    doc! { "commands": commands, "ok": 1.0 }
}

/// Mangrove keeps no log ring in memory; shells ask for startup warnings, and there are none.
pub(super) fn get_log(req: &Request<'_>) -> CommandResult<Reply> {
    match req.command_value() {
        Some(RawBsonRef::String("*")) => {
            Ok(doc! { "names": ["startupWarnings", "global"], "ok": 1.0 }.into())
        }
        Some(RawBsonRef::String(name)) => match crate::log_ring::lines(name) {
            Some((lines, written)) => Ok(doc! {
                "totalLinesWritten": written as i64,
                "log": lines,
                "ok": 1.0,
            }
            .into()),
            None => Err(CommandError::bad_value(format!(
                "No log named '{name}'; getLog knows 'global' and 'startupWarnings' ('*' lists them)"
            ))),
        },
        _ => Err(CommandError::type_mismatch(
            "Argument to getLog must be of type String",
        )),
    }
}
