//! `createBackup` (Percona Server for MongoDB's name and shape): an online backup of the
//! running server into a directory on the server's machine, for `mangrove backup` and for
//! operators with mongosh.
//!
//! The engine does the work (`mangrove_storage::Engine::backup`): one checkpoint of the base
//! store plus the log after it up to the durable end, with a checksummed manifest. It holds no
//! lock that commits or checkpoints need beyond an instant, and it runs on a thread of its own
//! at a lower CPU and I/O priority, so that on a busy server the commits go first: copying is
//! CPU work (every value is checked and written into a new file) that would otherwise take a
//! core from them (measured in docs/benchmarks.md, "Backup").
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
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("mangrove-backup".into())
        .spawn(move || {
            lower_own_priority();
            let _ = done.send(engine.backup(&target, |_, _| {}));
        })
        .map_err(|e| {
            CommandError::new(
                code::INTERNAL_ERROR,
                format!("cannot start the backup: {e}"),
            )
        })?;
    let report = result.await.map_err(|_| {
        CommandError::new(
            code::INTERNAL_ERROR,
            "the backup thread stopped without an answer",
        )
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

/// CPU niceness of a backup's thread: a tenth of a normal thread's share when they compete.
const BACKUP_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`BACKUP_NICE`] and its I/O priority to the
/// lowest best-effort level. Best effort: a refusal leaves the backup at normal priority.
fn lower_own_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread's own id, with integer arguments and
    // no memory passed; their only effect is this thread's scheduling priority.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, BACKUP_NICE);
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        const BEST_EFFORT_LOWEST: libc::c_long = (2 << 13) | 7;
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            tid as libc::c_long,
            BEST_EFFORT_LOWEST,
        );
    }
}
