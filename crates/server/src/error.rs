//! Command errors in MongoDB's reply shape: `{ok: 0, errmsg, code, codeName, errorLabels?}`.

use bson::{Document, doc};

/// MongoDB's error codes, by name: the one registry, shared with the query crate.
pub use mangrove_query::error_codes as code;

/// The codeName MongoDB reports for a code. Location codes (assertion sites without a name)
/// are reported as `Location<code>`, as mongod does.
pub fn code_name(code: i32) -> String {
    code::code_name(code).into_owned()
}

#[derive(Debug, Clone)]
pub struct CommandError {
    pub code: i32,
    pub code_name: String,
    pub message: String,
    pub labels: Vec<&'static str>,
    /// Extra fields MongoDB attaches to some errors (keyPattern/keyValue on DuplicateKey).
    pub info: Option<Box<Document>>,
}

impl CommandError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        CommandError {
            code,
            code_name: code_name(code),
            message: message.into(),
            labels: Vec::new(),
            info: None,
        }
    }

    /// InternalError (1): what should not happen did (a stored document failed to convert...).
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::new(code::INTERNAL_ERROR, format!("internal error: {e}"))
    }

    pub fn bad_value(message: impl Into<String>) -> Self {
        Self::new(code::BAD_VALUE, message)
    }

    pub fn type_mismatch(message: impl Into<String>) -> Self {
        Self::new(code::TYPE_MISMATCH, message)
    }

    pub fn failed_to_parse(message: impl Into<String>) -> Self {
        Self::new(code::FAILED_TO_PARSE, message)
    }

    /// Adds the labels mongod's `ErrorLabelBuilder` would, so drivers retry exactly what they
    /// would retry against mongod.
    pub fn with_server_labels(mut self, ctx: &LabelContext) -> Self {
        for label in ctx.labels_for(Some(self.code), None) {
            if !self.labels.contains(&label) {
                self.labels.push(label);
            }
        }
        self
    }

    pub fn to_document(&self) -> Document {
        let mut d = doc! {
            "ok": 0.0,
            "errmsg": &self.message,
            "code": self.code,
            "codeName": &self.code_name,
        };
        if let Some(info) = &self.info {
            d.extend((**info).clone());
        }
        if !self.labels.is_empty() {
            d.insert("errorLabels", self.labels.clone());
        }
        d
    }

    /// The shape of one entry of a write command's `writeErrors`.
    pub fn to_write_error(&self, index: usize) -> Document {
        let mut d = doc! {
            "index": index as i32,
            "code": self.code,
            "codeName": &self.code_name,
            "errmsg": &self.message,
        };
        if let Some(info) = &self.info {
            d.extend((**info).clone());
        }
        d
    }
}

/// Errors of the query language and the layer below it (index keys, collations): one type,
/// reaching the client with its code, code name and message.
impl From<mangrove_query::QueryError> for CommandError {
    fn from(e: mangrove_query::QueryError) -> Self {
        CommandError {
            code: e.code,
            code_name: e.code_name.to_string(),
            message: e.message,
            labels: Vec::new(),
            info: None,
        }
    }
}

impl From<mangrove_storage::StorageError> for CommandError {
    fn from(e: mangrove_storage::StorageError) -> Self {
        use mangrove_storage::StorageError as S;
        let message = e.to_string();
        match e {
            // Labelled TransientTransactionError only inside a transaction, by the caller that
            // knows it is in one.
            S::WriteConflict => CommandError::new(code::WRITE_CONFLICT, message),
            S::DuplicateKey {
                key_pattern,
                key_value,
                collation,
                ..
            } => {
                let mut err = CommandError::new(code::DUPLICATE_KEY, message);
                let mut info = doc! { "keyPattern": *key_pattern, "keyValue": *key_value };
                if let Some(collation) = collation {
                    info.insert("collation", *collation);
                }
                err.info = Some(Box::new(info));
                err
            }
            S::Index(q) => q.into(),
            S::NamespaceNotFound(_) => CommandError::new(code::NAMESPACE_NOT_FOUND, message),
            S::NamespaceExists(_) => CommandError::new(code::NAMESPACE_EXISTS, message),
            S::TxnClosed => CommandError::new(1, message),
            ref e if e.is_out_of_space() => CommandError::new(code::OUT_OF_DISK_SPACE, message),
            S::LogUnavailable { .. } => CommandError::new(code::OPERATION_FAILED, message),
            S::DataCorruption { .. } | S::Corrupt { .. } => {
                CommandError::new(code::DATA_CORRUPTION_DETECTED, message)
            }
            S::SnapshotTooOld { .. } => CommandError::new(code::SNAPSHOT_TOO_OLD, message),
            S::HistoryLost { .. } => CommandError::new(code::CHANGE_STREAM_HISTORY_LOST, message),
            S::NoHistory => CommandError::new(code::ILLEGAL_OPERATION, message),
            S::SnapshotUnavailable { .. } => CommandError::new(code::SNAPSHOT_UNAVAILABLE, message),
            S::TransactionTooLarge { .. } => {
                CommandError::new(code::TRANSACTION_TOO_LARGE, message)
            }
            S::TransactionTooLargeForCache { .. } => {
                CommandError::new(code::TRANSACTION_TOO_LARGE_FOR_CACHE, message)
            }
            S::Backup(_) => CommandError::new(code::ILLEGAL_OPERATION, message),
            S::LogFailed(_) | S::Io { .. } | S::Encoding(_) | S::Locked { .. } => {
                CommandError::new(1, message)
            }
        }
    }
}

/// What decides an error's labels besides its code: the command and its session fields.
pub struct LabelContext {
    /// The command is `commitTransaction` or `abortTransaction`.
    pub commit_or_abort: bool,
    pub has_txn_number: bool,
    /// `autocommit` was sent (it can only be `false`): a statement of a transaction.
    pub in_transaction: bool,
}

/// Codes drivers treat as "the operation may succeed on another try" (mongod's RetriableError
/// category); servers of wire version 9 and later label them for retryable writes.
pub const RETRIABLE_CODES: [i32; 12] = [
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

impl LabelContext {
    fn is_commit_or_abort(&self) -> bool {
        self.commit_or_abort
    }

    /// `TransientTransactionError` or `RetryableWriteError`, never both, as mongod decides them.
    pub fn labels_for(&self, code: Option<i32>, wc_code: Option<i32>) -> Vec<&'static str> {
        let retriable = |c: Option<i32>| c.is_some_and(|c| RETRIABLE_CODES.contains(&c));
        if let Some(code) = code
            && self.has_txn_number
            && self.in_transaction
            && is_transient(code, wc_code.is_some(), self.is_commit_or_abort())
        {
            return vec!["TransientTransactionError"];
        }
        let retryable_write = self.has_txn_number && !self.in_transaction;
        let commit_or_abort =
            self.has_txn_number && self.in_transaction && self.is_commit_or_abort();
        if (retryable_write || commit_or_abort) && (retriable(code) || retriable(wc_code)) {
            return vec!["RetryableWriteError"];
        }
        Vec::new()
    }
}

/// mongod's `isTransientTransactionError`: the transaction failed with no lasting effect, so
/// running it again from the start may succeed.
fn is_transient(code: i32, has_wc_error: bool, commit_or_abort: bool) -> bool {
    // WriteConflict, LockTimeout, PreparedTransactionInProgress, and the snapshot errors
    // (SnapshotTooOld, SnapshotUnavailable, StaleChunkHistory, MigrationConflict).
    if matches!(code, 112 | 24 | 267 | 239 | 246 | 249 | 250) {
        return true;
    }
    if commit_or_abort {
        code == code::NO_SUCH_TRANSACTION && !has_wc_error
    } else {
        RETRIABLE_CODES.contains(&code) || code == code::NO_SUCH_TRANSACTION
    }
}

pub type CommandResult<T> = Result<T, CommandError>;
