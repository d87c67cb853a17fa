//! `createBackup` (Percona Server for MongoDB's name and shape): an online backup of the
//! running server into a directory on the server's machine, for `mangrove backup` and for
//! operators with mongosh.
//!
//! The engine does the work (`mangrove_storage::Engine::backup`): one checkpoint of the base
//! store plus the log after it up to the durable end, with a checksummed manifest. It runs on
//! a blocking thread, so no connection waits for it, and it holds no lock that commits or
//! checkpoints need beyond an instant.
//!
//! Invariant: the reply is sent only once the manifest is durable; an error leaves the
//! directory without a manifest, which no restore accepts.

use std::path::PathBuf;

use bson::{DateTime, doc};

use crate::Shared;
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;

use super::Reply;

pub(super) async fn create_backup(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&["backupDir"])?;
    let dir = match req.opt_str("backupDir")? {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            return Err(CommandError::bad_value(
                "createBackup needs backupDir: a new or empty directory on the server's machine, given as an absolute path",
            ));
        }
    };
    if !dir.is_absolute() {
        return Err(CommandError::bad_value(format!(
            "backupDir {dir:?} is relative; give an absolute path (the server's working directory is not the client's)"
        )));
    }
    let engine = shared.engine.clone();
    let target = dir.clone();
    let report = tokio::task::spawn_blocking(move || engine.backup(&target, |_, _| {}))
        .await
        .map_err(|e| {
            CommandError::new(code::INTERNAL_ERROR, format!("the backup stopped: {e}"))
        })??;
    let m = &report.manifest;
    tracing::info!(dir = %dir.display(), records = m.records, files = m.files.len(), millis = report.elapsed.as_millis() as u64, "backup written");
    Ok(doc! {
        "backupDir": dir.to_string_lossy().into_owned(),
        "checkpoint": m.checkpoint.to_bson(),
        "lastCommit": m.until.to_bson(),
        "lastCommitWall": DateTime::from_millis(m.until_wall_ms),
        "logRecords": m.records as i64,
        "files": m.files.len() as i64,
        "bytes": m.files.iter().map(|f| f.bytes).sum::<u64>() as i64,
        "elapsedMillis": report.elapsed.as_millis() as i64,
        "ok": 1.0,
    }
    .into())
}
