//! Command errors in MongoDB's reply shape: `{ok: 0, errmsg, code, codeName, errorLabels?}`.

use bson::{Document, doc};

/// MongoDB's error codes, by name. Only the ones Mangrove emits; numbers from mongod 7.0's
/// `error_codes.yml`.
pub mod code {
    pub const INTERNAL_ERROR: i32 = 1;
    pub const BAD_VALUE: i32 = 2;
    pub const FAILED_TO_PARSE: i32 = 9;
    pub const UNAUTHORIZED: i32 = 13;
    pub const TYPE_MISMATCH: i32 = 14;
    pub const ILLEGAL_OPERATION: i32 = 20;
    pub const NAMESPACE_NOT_FOUND: i32 = 26;
    pub const CURSOR_NOT_FOUND: i32 = 43;
    pub const NAMESPACE_EXISTS: i32 = 48;
    pub const MAX_TIME_MS_EXPIRED: i32 = 50;
    pub const COMMAND_NOT_FOUND: i32 = 59;
    pub const INVALID_OPTIONS: i32 = 72;
    pub const INVALID_NAMESPACE: i32 = 73;
    pub const UNKNOWN_REPL_WRITE_CONCERN: i32 = 79;
    pub const UNSATISFIABLE_WRITE_CONCERN: i32 = 100;
    pub const LOCK_TIMEOUT: i32 = 24;
    pub const WRITE_CONFLICT: i32 = 112;
    pub const CONFLICTING_OPERATION_IN_PROGRESS: i32 = 117;
    pub const TRANSACTION_TOO_OLD: i32 = 225;
    pub const SNAPSHOT_TOO_OLD: i32 = 239;
    pub const SNAPSHOT_UNAVAILABLE: i32 = 246;
    pub const INCOMPLETE_TRANSACTION_HISTORY: i32 = 217;
    pub const NO_SUCH_TRANSACTION: i32 = 251;
    pub const TRANSACTION_COMMITTED: i32 = 256;
    pub const TOO_MANY_LOGICAL_SESSIONS: i32 = 261;
    pub const OPERATION_NOT_SUPPORTED_IN_TRANSACTION: i32 = 263;
    pub const COMMAND_NOT_SUPPORTED: i32 = 115;
    pub const QUERY_EXCEEDED_MEMORY_LIMIT: i32 = 292;
    pub const UNSUPPORTED_OP_QUERY_COMMAND: i32 = 352;
    pub const DUPLICATE_KEY: i32 = 11000;
    pub const BSON_OBJECT_TOO_LARGE: i32 = 10334;
    pub const OUT_OF_DISK_SPACE: i32 = 14031;
    pub const OPERATION_FAILED: i32 = 96;
    pub const DATA_CORRUPTION_DETECTED: i32 = 301;
    pub const TRANSACTION_TOO_LARGE_FOR_CACHE: i32 = 388;
    pub const TRANSACTION_TOO_LARGE: i32 = 257;
    pub const MISSING_FIELD: i32 = 40414;
    pub const UNKNOWN_FIELD: i32 = 40415;
    pub const MISSING_DB: i32 = 40571;
}

/// The codeName MongoDB reports for a code. Location codes (assertion sites without a name)
/// are reported as `Location<code>`, as mongod does.
pub fn code_name(code: i32) -> String {
    let name = match code {
        1 => "InternalError",
        2 => "BadValue",
        9 => "FailedToParse",
        13 => "Unauthorized",
        14 => "TypeMismatch",
        20 => "IllegalOperation",
        22 => "InvalidBSON",
        26 => "NamespaceNotFound",
        31 => "RoleNotFound",
        40 => "ConflictingUpdateOperators",
        43 => "CursorNotFound",
        48 => "NamespaceExists",
        50 => "MaxTimeMSExpired",
        52 => "DollarPrefixedFieldName",
        56 => "EmptyFieldName",
        57 => "DottedFieldName",
        59 => "CommandNotFound",
        66 => "ImmutableField",
        72 => "InvalidOptions",
        73 => "InvalidNamespace",
        79 => "UnknownReplWriteConcern",
        100 => "UnsatisfiableWriteConcern",
        24 => "LockTimeout",
        112 => "WriteConflict",
        117 => "ConflictingOperationInProgress",
        225 => "TransactionTooOld",
        217 => "IncompleteTransactionHistory",
        251 => "NoSuchTransaction",
        256 => "TransactionCommitted",
        261 => "TooManyLogicalSessions",
        263 => "OperationNotSupportedInTransaction",
        115 => "CommandNotSupported",
        292 => "QueryExceededMemoryLimitNoDiskUseAllowed",
        352 => "UnsupportedOpQueryCommand",
        10334 => "BSONObjectTooLarge",
        301 => "DataCorruptionDetected",
        388 => "TransactionTooLargeForCache",
        257 => "TransactionTooLarge",
        14031 => "OutOfDiskSpace",
        11000 => "DuplicateKey",
        27 => "IndexNotFound",
        165 => "ViewDepthLimitExceeded",
        167 => "OptionNotSupportedOnView",
        67 => "CannotCreateIndex",
        85 => "IndexOptionsConflict",
        86 => "IndexKeySpecsConflict",
        171 => "CannotIndexParallelArrays",
        197 => "InvalidIndexSpecificationOption",
        17280 => "KeyTooLong",
        3 => "NoSuchKey",
        4 => "GraphContainsCycle",
        6 => "HostUnreachable",
        7 => "HostNotFound",
        8 => "UnknownError",
        11 => "UserNotFound",
        16 => "InvalidLength",
        18 => "AuthenticationFailed",
        28 => "PathNotViable",
        64 => "WriteConcernFailed",
        74 => "NodeNotFound",
        89 => "NetworkTimeout",
        91 => "ShutdownInProgress",
        96 => "OperationFailed",
        121 => "DocumentValidationFailure",
        133 => "FailedToSatisfyReadPreference",
        134 => "ReadConcernMajorityNotAvailableYet",
        166 => "CommandNotSupportedOnView",
        175 => "QueryPlanKilled",
        189 => "PrimarySteppedDown",
        206 => "NoSuchSession",
        234 => "RetryChangeStream",
        237 => "CursorKilled",
        239 => "SnapshotTooOld",
        246 => "SnapshotUnavailable",
        262 => "ExceededTimeLimit",
        267 => "PreparedTransactionInProgress",
        280 => "ChangeStreamFatalError",
        286 => "ChangeStreamHistoryLost",
        290 => "TransactionExceededLifetimeLimitSeconds",
        9001 => "SocketException",
        10107 => "NotWritablePrimary",
        11600 => "InterruptedAtShutdown",
        11601 => "Interrupted",
        11602 => "InterruptedDueToReplStateChange",
        13297 => "DatabaseDifferCase",
        13388 => "StaleConfig",
        13435 => "NotPrimaryNoSecondaryOk",
        13436 => "NotPrimaryOrSecondary",
        _ => return format!("Location{code}"),
    };
    name.to_string()
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

/// Errors of the layer below the query language (index keys, collations), as the query
/// crate's, so they reach the client with the same code and message.
impl From<mangrove_query::CodedError> for CommandError {
    fn from(e: mangrove_query::CodedError) -> Self {
        mangrove_query::QueryError::from(e).into()
    }
}

impl From<mangrove_query::QueryError> for CommandError {
    fn from(e: mangrove_query::QueryError) -> Self {
        // The query crate names only some `Location<code>` errors (its names are static
        // strings); mongod names every unnamed code that way.
        let code_name = match e.code_name {
            "Location" => format!("Location{}", e.code),
            name => name.to_string(),
        };
        CommandError {
            code: e.code,
            code_name,
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
                ..
            } => {
                let mut err = CommandError::new(code::DUPLICATE_KEY, message);
                err.info = Some(Box::new(
                    doc! { "keyPattern": *key_pattern, "keyValue": *key_value },
                ));
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
            S::SnapshotUnavailable { .. } => CommandError::new(code::SNAPSHOT_UNAVAILABLE, message),
            S::TransactionTooLarge { .. } => {
                CommandError::new(code::TRANSACTION_TOO_LARGE, message)
            }
            S::TransactionTooLargeForCache { .. } => {
                CommandError::new(code::TRANSACTION_TOO_LARGE_FOR_CACHE, message)
            }
            S::LogFailed(_) | S::Io { .. } | S::Encoding(_) | S::Locked { .. } => {
                CommandError::new(1, message)
            }
        }
    }
}

/// What decides an error's labels besides its code: the command and its session fields.
pub struct LabelContext<'a> {
    pub command: &'a str,
    pub has_txn_number: bool,
    /// `autocommit` was sent (it can only be `false`): a statement of a transaction.
    pub in_transaction: bool,
}

/// Codes drivers treat as "the operation may succeed on another try" (mongod's RetriableError
/// category); servers of wire version 9 and later label them for retryable writes.
pub const RETRIABLE_CODES: [i32; 12] = [
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

impl LabelContext<'_> {
    fn is_commit_or_abort(&self) -> bool {
        matches!(self.command, "commitTransaction" | "abortTransaction")
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
