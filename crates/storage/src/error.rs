use std::path::PathBuf;

/// What the engine can refuse. The server maps each to MongoDB's code, codeName and labels.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StorageError {
    /// Another open transaction holds the intent on this document, or a transaction committed a
    /// newer version after this transaction's snapshot was taken.
    #[error(
        "Write conflict during plan execution and yielding is disabled. :: Please retry your operation or multi-document transaction."
    )]
    WriteConflict,
    /// A unique index (`_id_` or a secondary one) already has an entry with this key.
    /// `collation`: the index's, when it has one (mongod names it in the message and in
    /// `errInfo`).
    #[error(
        "E11000 duplicate key error collection: {ns} index: {index}{} dup key: {}",
        collation.as_deref().map_or(String::new(), |c| format!(" collation: {}", show_key(c))),
        show_key(key_value)
    )]
    DuplicateKey {
        ns: String,
        index: String,
        key_pattern: Box<bson::Document>,
        key_value: Box<bson::Document>,
        collation: Option<Box<bson::Document>>,
    },
    /// A document cannot be indexed (parallel arrays, too many keys), or an index specification
    /// cannot be compiled: MongoDB's code and message.
    #[error("{0}")]
    Index(mangrove_bson::CodedError),
    #[error("ns does not exist: {0}")]
    NamespaceNotFound(String),
    #[error("Collection {0} already exists.")]
    NamespaceExists(String),
    /// The transaction was already committed or aborted; a programming error in the caller.
    #[error("transaction is no longer open")]
    TxnClosed,
    #[error("transaction too large for one log record: {bytes} bytes, at most {max}")]
    TransactionTooLarge { bytes: usize, max: usize },
    /// Memory for open transactions is bounded by the cache: one transaction may hold a quarter
    /// of `--cache-size`, all of them half (`all`).
    #[error(
        "{}: {bytes} bytes of writes, the limit is {limit} ({}). {}",
        if *all { "Open transactions together hold too much memory" } else { "Transaction is too large for the cache" },
        if *all { "half of --cache-size" } else { "a quarter of --cache-size" },
        if *all { "Retry once other transactions have finished, or raise --cache-size" } else { "Split the work into smaller transactions, or raise --cache-size" }
    )]
    TransactionTooLargeForCache { bytes: u64, limit: u64, all: bool },
    #[error("cannot encode a log record: {0}")]
    Encoding(String),
    /// A file operation failed; `context` says which and the message says what to do.
    #[error("{context}: {message}")]
    Io {
        context: String,
        message: String,
        kind: std::io::ErrorKind,
    },
    #[error(
        "the transaction log is damaged: {} at offset {offset}: {detail}. Records before this point are intact. Run `mangrove verify` for details; restore the file from a backup, or start the server with --truncate-damaged-log to continue from the intact part (what follows the damage is moved to a quarantine folder in the log directory, and the transactions it holds are lost)",
        segment.display()
    )]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        detail: String,
    },
    /// Stored data failed its checksum, or the store's structure is damaged. Never served as
    /// data; the read that met it fails.
    #[error(
        "data corruption detected in {}: {detail}. The damaged data is not served. Stop the server and run `mangrove verify --data-dir <dir>` for a full check; restore the file from a backup",
        file.display()
    )]
    DataCorruption { file: PathBuf, detail: String },
    /// The log could not be written or synced; no commit can be made durable until restart.
    #[error(
        "the transaction log failed and the server accepts no more writes: {0}. Nothing acknowledged is lost; free disk space or fix the disk, then restart the server"
    )]
    LogFailed(String),
    /// The log cannot be written now (full disk, permissions). Not sticky: the engine refuses
    /// commits with this error until a write succeeds again, then accepts them by itself.
    #[error(
        "cannot write the transaction log in {}: {message}. Writes are refused until it can be written again; reads keep working. {}",
        dir.display(),
        unavailable_hint(*kind)
    )]
    LogUnavailable {
        dir: PathBuf,
        message: String,
        kind: std::io::ErrorKind,
    },
    /// The history needed to read at `requested` was already pruned.
    #[error(
        "Read timestamp {requested:?} is older than the oldest available timestamp: no snapshot at or before it is held any more"
    )]
    SnapshotTooOld { requested: crate::Timestamp },
    #[error("Read timestamp {requested:?} is newer than the latest commit {latest:?}")]
    SnapshotUnavailable {
        requested: crate::Timestamp,
        latest: crate::Timestamp,
    },
    /// A history reader needs records the log no longer holds: retention removed them.
    #[error(
        "the history after {requested:?} is no longer in the transaction log: the oldest record still there is {}. Resume from a newer point or restart the change stream; to keep more history, raise --oplog-size-mb or --oplog-min-retention-hours (or run replSetResizeOplog)",
        oldest.map_or("none".to_string(), |ts| format!("{ts:?}"))
    )]
    HistoryLost {
        requested: crate::Timestamp,
        oldest: Option<crate::Timestamp>,
    },
    /// The engine keeps no log (it runs in memory), so it has no history to read.
    #[error(
        "this storage engine runs in memory without a transaction log, so it keeps no history of commits (change streams and the oplog need a data directory)"
    )]
    NoHistory,
    #[error(
        "data directory {} is in use by another mangrove process (lock file {}); stop it or choose another --data-dir",
        dir.display(),
        lock.display()
    )]
    Locked { dir: PathBuf, lock: PathBuf },
    /// A backup or restore cannot go on; the message says why and what to do.
    #[error("{0}")]
    Backup(String),
}

fn unavailable_hint(kind: std::io::ErrorKind) -> &'static str {
    use std::io::ErrorKind as K;
    match kind {
        K::StorageFull | K::FileTooLarge | K::QuotaExceeded => {
            "Free space on the disk that holds it: writes resume by themselves within a second, without a restart"
        }
        K::PermissionDenied | K::ReadOnlyFilesystem => {
            "Let the server's user write to that directory: writes resume by themselves within a second, without a restart"
        }
        _ => "Check the disk and the server log: writes resume by themselves once a write succeeds",
    }
}

/// A key as MongoDB prints it in E11000 messages: `{ a: 1, b: "x" }`.
fn show_key(key: &bson::Document) -> String {
    let fields: Vec<String> = key.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{ {} }}", fields.join(", "))
}

impl StorageError {
    /// DuplicateKey on the `_id` index, whose keys are encoded under `collation` if any.
    pub fn duplicate_id(
        ns: String,
        id: bson::Bson,
        collation: Option<&bson::Document>,
    ) -> StorageError {
        StorageError::DuplicateKey {
            ns,
            index: "_id_".into(),
            key_pattern: Box::new(bson::doc! { "_id": 1 }),
            key_value: Box::new(bson::doc! { "_id": id }),
            collation: collation.map(|c| Box::new(c.clone())),
        }
    }

    /// Whether the disk (or a quota, or a file-size limit) is out of space.
    pub fn is_out_of_space(&self) -> bool {
        use std::io::ErrorKind as K;
        matches!(
            self,
            StorageError::Io { kind, .. } | StorageError::LogUnavailable { kind, .. }
                if matches!(kind, K::StorageFull | K::FileTooLarge | K::QuotaExceeded)
        )
    }

    /// A failed log write as the error every refused commit gets while the log is unavailable.
    pub(crate) fn into_log_unavailable(self, dir: PathBuf) -> StorageError {
        match self {
            StorageError::Io {
                context,
                message,
                kind,
            } => StorageError::LogUnavailable {
                dir,
                message: format!("{context}: {message}"),
                kind,
            },
            other => StorageError::LogUnavailable {
                dir,
                message: other.to_string(),
                kind: std::io::ErrorKind::Other,
            },
        }
    }

    pub(crate) fn io(context: String, e: std::io::Error) -> StorageError {
        let hint = match e.kind() {
            std::io::ErrorKind::StorageFull => " (the disk is full)",
            std::io::ErrorKind::FileTooLarge => {
                " (the disk is full: the file-size limit was reached)"
            }
            std::io::ErrorKind::PermissionDenied => " (check the data directory's permissions)",
            _ => "",
        };
        StorageError::Io {
            context,
            message: format!("{e}{hint}"),
            kind: e.kind(),
        }
    }
}
