//! A backup directory: its layout, its manifest, and its check.
//!
//! ```text
//! <backup>/base.redb        one checkpoint of the base store (a logical copy)
//! <backup>/log/*.seg        the log after that checkpoint, up to the backup's point
//! <backup>/log/control      the log's control file: where the copied log ends
//! <backup>/manifest.json    {"manifest": {...}, "crc32c": <crc32c of the manifest's JSON>}
//! ```
//!
//! A backup directory is also a data directory: `mangrove serve --data-dir <backup>` starts
//! from it (better: restore it elsewhere first, and keep the backup as it is).
//!
//! Invariants:
//! - The manifest is written last (to a temporary name, fdatasynced, renamed, directory
//!   synced): a directory without one is an incomplete backup, never a usable one.
//! - The manifest lists every file with its size and crc32c, and carries its own crc32c, so
//!   `mangrove backup verify` finds any changed, cut or missing byte and names the file.
//!
//! Lock order: takes no lock.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::txlog::{self, sync_dir};
use crate::{StorageError, Timestamp};

pub const BASE_FILE: &str = "base.redb";
pub const LOG_DIR: &str = "log";
pub const MANIFEST_FILE: &str = "manifest.json";
const FORMAT: u64 = 1;

/// One file of a backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupFile {
    /// Relative to the backup directory, with `/`.
    pub path: String,
    pub bytes: u64,
    pub crc32c: u32,
}

/// What a backup holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub created_ms: i64,
    /// The base store's checkpoint.
    pub checkpoint: Timestamp,
    /// The last commit the backup holds (its log's end, or the checkpoint).
    pub until: Timestamp,
    /// That commit's wall clock (0 when the log part is empty).
    pub until_wall_ms: i64,
    /// Log records copied (some may be at or before the checkpoint; replay skips them).
    pub records: u64,
    pub base_values: u64,
    pub files: Vec<BackupFile>,
}

pub(crate) fn control_path() -> String {
    format!("{LOG_DIR}/control")
}

fn backup_error(message: String) -> StorageError {
    StorageError::Backup(message)
}

/// Creates `dir`, or accepts it if it exists and is empty.
pub(crate) fn prepare_empty_dir(dir: &Path) -> Result<(), StorageError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StorageError::io(format!("cannot create {}", dir.display()), e))?;
    let mut entries = std::fs::read_dir(dir)
        .map_err(|e| StorageError::io(format!("cannot list {}", dir.display()), e))?;
    if entries.next().is_some() {
        return Err(backup_error(format!(
            "{} is not empty: choose a new directory (nothing was written)",
            dir.display()
        )));
    }
    Ok(())
}

/// The size and crc32c of one file, read whole.
pub(crate) fn describe_file(dir: &Path, rel: &str) -> Result<BackupFile, StorageError> {
    use std::io::Read;
    let path = dir.join(rel);
    let mut file = File::open(&path)
        .map_err(|e| StorageError::io(format!("cannot open {}", path.display()), e))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut crc, mut bytes) = (0u32, 0u64);
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| StorageError::io(format!("cannot read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        bytes += n as u64;
    }
    Ok(BackupFile {
        path: rel.to_string(),
        bytes,
        crc32c: crc,
    })
}

fn ts_json(ts: Timestamp) -> Value {
    json!({"t": ts.seconds(), "i": ts.increment()})
}

fn manifest_json(m: &Manifest) -> Value {
    let files: Vec<Value> = m
        .files
        .iter()
        .map(|f| json!({"path": f.path, "bytes": f.bytes, "crc32c": f.crc32c}))
        .collect();
    json!({
        "format": FORMAT,
        "createdMs": m.created_ms,
        "checkpoint": ts_json(m.checkpoint),
        "until": ts_json(m.until),
        "untilWallMs": m.until_wall_ms,
        "records": m.records,
        "baseValues": m.base_values,
        "files": files,
    })
}

/// Writes the manifest, last of all, durably (see the invariants).
pub(crate) fn write_manifest(dir: &Path, m: &Manifest) -> Result<(), StorageError> {
    let body = manifest_json(m);
    let crc = crc32c::crc32c(body.to_string().as_bytes());
    let text = serde_json::to_string_pretty(&json!({"manifest": body, "crc32c": crc}))
        .map_err(|e| backup_error(format!("cannot encode the manifest: {e}")))?;
    sync_dir(&dir.join(LOG_DIR))?;
    sync_dir(dir)?;
    let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
    let fail = |e| StorageError::io(format!("cannot write {}", tmp.display()), e);
    let mut file = File::create(&tmp).map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, dir.join(MANIFEST_FILE)).map_err(fail)?;
    sync_dir(dir)
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a Value, String> {
    v.get(name)
        .ok_or_else(|| format!("field {name:?} is missing"))
}

fn u64_field(v: &Value, name: &str) -> Result<u64, String> {
    field(v, name)?
        .as_u64()
        .ok_or_else(|| format!("field {name:?} is not a number"))
}

fn ts_field(v: &Value, name: &str) -> Result<Timestamp, String> {
    let ts = field(v, name)?;
    let (t, i) = (u64_field(ts, "t")?, u64_field(ts, "i")?);
    Ok(Timestamp((t << 32) | (i & 0xffff_ffff)))
}

fn parse_manifest(body: &Value) -> Result<Manifest, String> {
    if u64_field(body, "format")? != FORMAT {
        return Err(format!(
            "format {} is not {FORMAT}: made by another version of Mangrove",
            body["format"]
        ));
    }
    let mut files = Vec::new();
    for f in field(body, "files")?
        .as_array()
        .ok_or("files is not a list")?
    {
        let path = field(f, "path")?
            .as_str()
            .ok_or("a file's path is not text")?;
        if path.split('/').any(|part| part == ".." || part.is_empty()) {
            return Err(format!("file path {path:?} leaves the backup directory"));
        }
        files.push(BackupFile {
            path: path.to_string(),
            bytes: u64_field(f, "bytes")?,
            crc32c: u32::try_from(u64_field(f, "crc32c")?).map_err(|_| "crc32c out of range")?,
        });
    }
    Ok(Manifest {
        created_ms: field(body, "createdMs")?.as_i64().ok_or("createdMs")?,
        checkpoint: ts_field(body, "checkpoint")?,
        until: ts_field(body, "until")?,
        until_wall_ms: field(body, "untilWallMs")?.as_i64().ok_or("untilWallMs")?,
        records: u64_field(body, "records")?,
        base_values: u64_field(body, "baseValues")?,
        files,
    })
}

/// Reads and checks a backup's manifest.
pub fn read_manifest(dir: &Path) -> Result<Manifest, StorageError> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(backup_error(format!(
                "{} has no {MANIFEST_FILE}: it is not a Mangrove backup, or the backup did not finish (a backup is complete only once its manifest is written)",
                dir.display()
            )));
        }
        Err(e) => {
            return Err(StorageError::io(
                format!("cannot read {}", path.display()),
                e,
            ));
        }
    };
    let damaged = |detail: String| StorageError::DataCorruption {
        file: path.clone(),
        detail,
    };
    let outer: Value =
        serde_json::from_str(&text).map_err(|e| damaged(format!("not valid JSON: {e}")))?;
    let body = outer
        .get("manifest")
        .ok_or_else(|| damaged("no manifest".into()))?;
    let crc = outer.get("crc32c").and_then(Value::as_u64);
    if crc != Some(u64::from(crc32c::crc32c(body.to_string().as_bytes()))) {
        return Err(damaged("the manifest fails its checksum".into()));
    }
    parse_manifest(body).map_err(damaged)
}

/// What [`verify_backup`] found.
#[derive(Debug, Default)]
pub struct BackupVerifyReport {
    pub files: usize,
    pub bytes: u64,
    pub log_records: usize,
    pub base_values: u64,
    /// Each problem, naming the file (and offset where known). Empty: the backup is whole.
    pub problems: Vec<String>,
}

/// Checks a backup end to end, without writing to it: the manifest's checksum, every file's
/// size and crc32c against it, every log record's checksum and the segment chain, and every
/// value of the base store.
pub fn verify_backup(dir: &Path) -> Result<BackupVerifyReport, StorageError> {
    let manifest = read_manifest(dir)?;
    let mut report = BackupVerifyReport::default();
    for want in &manifest.files {
        report.files += 1;
        match describe_file(dir, &want.path) {
            Ok(got) if got == *want => report.bytes += got.bytes,
            Ok(got) => report.problems.push(format!(
                "{}: {} bytes with crc32c {:08x}, but the manifest says {} bytes with crc32c {:08x}: the file changed after the backup",
                dir.join(&want.path).display(), got.bytes, got.crc32c, want.bytes, want.crc32c
            )),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    let scan = txlog::scan_log(&dir.join(LOG_DIR), None, |_, _| {})?;
    report.log_records = scan.records.len();
    if let Some(damage) = &scan.damage {
        report.problems.push(damage.to_error().to_string());
    }
    match crate::base::verify_base_file(&dir.join(BASE_FILE)) {
        Ok((checkpoint, base)) => {
            report.base_values = base.values;
            if checkpoint != manifest.checkpoint {
                report.problems.push(format!(
                    "{} holds the checkpoint {:?}, but the manifest says {:?}",
                    BASE_FILE, checkpoint, manifest.checkpoint
                ));
            }
        }
        Err(e) => report.problems.push(e.to_string()),
    }
    Ok(report)
}

/// The absolute path of a file the manifest lists.
pub fn file_path(dir: &Path, file: &BackupFile) -> PathBuf {
    dir.join(&file.path)
}
