//! The one registry of MongoDB error codes Mangrove emits: each code's number and the
//! `codeName` mongod 7.0 reports for it (numbers and names from mongod's `error_codes.yml`).
//! A code without a name here is an assertion site (`uassert` with a bare number), which mongod
//! names `Location<code>`.
//!
//! It lives in this leaf crate so that every layer's error (`CodedError` here, which the query
//! crate reports as `QueryError`, and the server's `CommandError`) names codes from it.
//!
//! Invariant: a name appears here once, with mongod's number; `CodedError::new` checks (in
//! debug builds) that the name it is given is this table's name for its code, so a second,
//! drifting list cannot grow back.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Mutex;

macro_rules! registry {
    (named { $($konst:ident = $code:literal => $name:literal,)* }
     location { $($lkonst:ident = $lcode:literal,)* }) => {
        $(pub const $konst: i32 = $code;)*
        $(pub const $lkonst: i32 = $lcode;)*

        /// mongod's name for `code`, if it has one (else it is `Location<code>`).
        pub fn name(code: i32) -> Option<&'static str> {
            match code {
                $($code => Some($name),)*
                _ => None,
            }
        }
    };
}

registry! {
    named {
        INTERNAL_ERROR = 1 => "InternalError",
        BAD_VALUE = 2 => "BadValue",
        NO_SUCH_KEY = 4 => "NoSuchKey",
        GRAPH_CONTAINS_CYCLE = 5 => "GraphContainsCycle",
        HOST_UNREACHABLE = 6 => "HostUnreachable",
        HOST_NOT_FOUND = 7 => "HostNotFound",
        UNKNOWN_ERROR = 8 => "UnknownError",
        FAILED_TO_PARSE = 9 => "FailedToParse",
        USER_NOT_FOUND = 11 => "UserNotFound",
        UNAUTHORIZED = 13 => "Unauthorized",
        TYPE_MISMATCH = 14 => "TypeMismatch",
        OVERFLOW = 15 => "Overflow",
        INVALID_LENGTH = 16 => "InvalidLength",
        PROTOCOL_ERROR = 17 => "ProtocolError",
        AUTHENTICATION_FAILED = 18 => "AuthenticationFailed",
        ILLEGAL_OPERATION = 20 => "IllegalOperation",
        INVALID_BSON = 22 => "InvalidBSON",
        ALREADY_INITIALIZED = 23 => "AlreadyInitialized",
        LOCK_TIMEOUT = 24 => "LockTimeout",
        NAMESPACE_NOT_FOUND = 26 => "NamespaceNotFound",
        INDEX_NOT_FOUND = 27 => "IndexNotFound",
        PATH_NOT_VIABLE = 28 => "PathNotViable",
        ROLE_NOT_FOUND = 31 => "RoleNotFound",
        CONFLICTING_UPDATE_OPERATORS = 40 => "ConflictingUpdateOperators",
        CURSOR_NOT_FOUND = 43 => "CursorNotFound",
        NO_MATCHING_DOCUMENT = 47 => "NoMatchingDocument",
        NAMESPACE_EXISTS = 48 => "NamespaceExists",
        MAX_TIME_MS_EXPIRED = 50 => "MaxTimeMSExpired",
        DOLLAR_PREFIXED_FIELD_NAME = 52 => "DollarPrefixedFieldName",
        INVALID_ID_FIELD = 53 => "InvalidIdField",
        NOT_SINGLE_VALUE_FIELD = 54 => "NotSingleValueField",
        EMPTY_FIELD_NAME = 56 => "EmptyFieldName",
        DOTTED_FIELD_NAME = 57 => "DottedFieldName",
        COMMAND_NOT_FOUND = 59 => "CommandNotFound",
        WRITE_CONCERN_FAILED = 64 => "WriteConcernFailed",
        IMMUTABLE_FIELD = 66 => "ImmutableField",
        CANNOT_CREATE_INDEX = 67 => "CannotCreateIndex",
        INVALID_OPTIONS = 72 => "InvalidOptions",
        INVALID_NAMESPACE = 73 => "InvalidNamespace",
        NODE_NOT_FOUND = 74 => "NodeNotFound",
        UNKNOWN_REPL_WRITE_CONCERN = 79 => "UnknownReplWriteConcern",
        INDEX_OPTIONS_CONFLICT = 85 => "IndexOptionsConflict",
        INDEX_KEY_SPECS_CONFLICT = 86 => "IndexKeySpecsConflict",
        NETWORK_TIMEOUT = 89 => "NetworkTimeout",
        SHUTDOWN_IN_PROGRESS = 91 => "ShutdownInProgress",
        OPERATION_FAILED = 96 => "OperationFailed",
        UNSATISFIABLE_WRITE_CONCERN = 100 => "UnsatisfiableWriteConcern",
        WRITE_CONFLICT = 112 => "WriteConflict",
        COMMAND_NOT_SUPPORTED = 115 => "CommandNotSupported",
        CONFLICTING_OPERATION_IN_PROGRESS = 117 => "ConflictingOperationInProgress",
        DOCUMENT_VALIDATION_FAILURE = 121 => "DocumentValidationFailure",
        FAILED_TO_SATISFY_READ_PREFERENCE = 133 => "FailedToSatisfyReadPreference",
        READ_CONCERN_MAJORITY_NOT_AVAILABLE_YET = 134 => "ReadConcernMajorityNotAvailableYet",
        CAPPED_POSITION_LOST = 136 => "CappedPositionLost",
        JS_INTERPRETER_FAILURE = 139 => "JSInterpreterFailure",
        EXCEEDED_MEMORY_LIMIT = 146 => "ExceededMemoryLimit",
        VIEW_DEPTH_LIMIT_EXCEEDED = 165 => "ViewDepthLimitExceeded",
        COMMAND_NOT_SUPPORTED_ON_VIEW = 166 => "CommandNotSupportedOnView",
        OPTION_NOT_SUPPORTED_ON_VIEW = 167 => "OptionNotSupportedOnView",
        INVALID_PIPELINE_OPERATOR = 168 => "InvalidPipelineOperator",
        CANNOT_INDEX_PARALLEL_ARRAYS = 171 => "CannotIndexParallelArrays",
        QUERY_PLAN_KILLED = 175 => "QueryPlanKilled",
        PRIMARY_STEPPED_DOWN = 189 => "PrimarySteppedDown",
        INVALID_INDEX_SPECIFICATION_OPTION = 197 => "InvalidIndexSpecificationOption",
        NO_SUCH_SESSION = 206 => "NoSuchSession",
        INCOMPLETE_TRANSACTION_HISTORY = 217 => "IncompleteTransactionHistory",
        TRANSACTION_TOO_OLD = 225 => "TransactionTooOld",
        MAX_SUB_PIPELINE_DEPTH_EXCEEDED = 232 => "MaxSubPipelineDepthExceeded",
        RETRY_CHANGE_STREAM = 234 => "RetryChangeStream",
        CURSOR_KILLED = 237 => "CursorKilled",
        SNAPSHOT_TOO_OLD = 239 => "SnapshotTooOld",
        CONVERSION_FAILURE = 241 => "ConversionFailure",
        SNAPSHOT_UNAVAILABLE = 246 => "SnapshotUnavailable",
        NO_SUCH_TRANSACTION = 251 => "NoSuchTransaction",
        TRANSACTION_COMMITTED = 256 => "TransactionCommitted",
        TRANSACTION_TOO_LARGE = 257 => "TransactionTooLarge",
        INVALID_RESUME_TOKEN = 260 => "InvalidResumeToken",
        TOO_MANY_LOGICAL_SESSIONS = 261 => "TooManyLogicalSessions",
        EXCEEDED_TIME_LIMIT = 262 => "ExceededTimeLimit",
        OPERATION_NOT_SUPPORTED_IN_TRANSACTION = 263 => "OperationNotSupportedInTransaction",
        API_VERSION_ERROR = 322 => "APIVersionError",
        API_STRICT_ERROR = 323 => "APIStrictError",
        API_DEPRECATION_ERROR = 324 => "APIDeprecationError",
        MECHANISM_UNAVAILABLE = 334 => "MechanismUnavailable",
        PREPARED_TRANSACTION_IN_PROGRESS = 267 => "PreparedTransactionInProgress",
        CHANGE_STREAM_FATAL_ERROR = 280 => "ChangeStreamFatalError",
        CHANGE_STREAM_HISTORY_LOST = 286 => "ChangeStreamHistoryLost",
        TRANSACTION_EXCEEDED_LIFETIME_LIMIT_SECONDS = 290 => "TransactionExceededLifetimeLimitSeconds",
        NO_QUERY_EXECUTION_PLANS = 291 => "NoQueryExecutionPlans",
        QUERY_EXCEEDED_MEMORY_LIMIT = 292 => "QueryExceededMemoryLimitNoDiskUseAllowed",
        DATA_CORRUPTION_DETECTED = 301 => "DataCorruptionDetected",
        UNSUPPORTED_OP_QUERY_COMMAND = 352 => "UnsupportedOpQueryCommand",
        TRANSACTION_TOO_LARGE_FOR_CACHE = 388 => "TransactionTooLargeForCache",
        SOCKET_EXCEPTION = 9001 => "SocketException",
        NOT_WRITABLE_PRIMARY = 10107 => "NotWritablePrimary",
        BSON_OBJECT_TOO_LARGE = 10334 => "BSONObjectTooLarge",
        DUPLICATE_KEY = 11000 => "DuplicateKey",
        INTERRUPTED_AT_SHUTDOWN = 11600 => "InterruptedAtShutdown",
        INTERRUPTED = 11601 => "Interrupted",
        INTERRUPTED_DUE_TO_REPL_STATE_CHANGE = 11602 => "InterruptedDueToReplStateChange",
        DATABASE_DIFFER_CASE = 13297 => "DatabaseDifferCase",
        STALE_CONFIG = 13388 => "StaleConfig",
        NOT_PRIMARY_NO_SECONDARY_OK = 13435 => "NotPrimaryNoSecondaryOk",
        NOT_PRIMARY_OR_SECONDARY = 13436 => "NotPrimaryOrSecondary",
        OUT_OF_DISK_SPACE = 14031 => "OutOfDiskSpace",
        KEY_TOO_LONG = 17280 => "KeyTooLong",
    }
    location {
        MISSING_FIELD = 40414,
        UNKNOWN_FIELD = 40415,
        MISSING_DB = 40571,
        CHANGE_STREAM_NOT_FIRST = 40602,
        MULTIPLE_RESUME_OPTIONS = 40674,
        BOTH_RESUME_AFTER_AND_START_AFTER = 50865,
    }
}

/// The `codeName` a reply carries for `code`.
pub fn code_name(code: i32) -> Cow<'static, str> {
    match name(code) {
        Some(n) => Cow::Borrowed(n),
        None => Cow::Owned(format!("Location{code}")),
    }
}

/// `code_name` as a static string, for errors that carry one: `Location<code>` names are made
/// once per code and kept (the codes are the finite set written in this source, so the set
/// stays small).
pub fn static_code_name(code: i32) -> &'static str {
    if let Some(n) = name(code) {
        return n;
    }
    static LOCATIONS: Mutex<BTreeMap<i32, &'static str>> = Mutex::new(BTreeMap::new());
    let mut known = LOCATIONS.lock().unwrap_or_else(|e| e.into_inner());
    known
        .entry(code)
        .or_insert_with(|| Box::leak(format!("Location{code}").into_boxed_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_and_location_codes() {
        assert_eq!(code_name(BAD_VALUE), "BadValue");
        assert_eq!(
            code_name(MAX_SUB_PIPELINE_DEPTH_EXCEEDED),
            "MaxSubPipelineDepthExceeded"
        );
        assert_eq!(code_name(40324), "Location40324");
        assert_eq!(static_code_name(40324), "Location40324");
        assert!(std::ptr::eq(
            static_code_name(40324),
            static_code_name(40324)
        ));
        assert_eq!(static_code_name(MISSING_FIELD), "Location40414");
    }
}
