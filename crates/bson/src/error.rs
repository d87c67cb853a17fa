//! The error this crate reports: MongoDB's numeric code, code name and message. The query
//! crate's `QueryError` converts to and from it field by field, so a client sees the same code
//! and message whichever layer found the problem (an index key the storage engine derives, a
//! collation a command parses).

/// An error with MongoDB's code and code name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CodedError {
    pub code: i32,
    pub code_name: &'static str,
    pub message: String,
}

impl CodedError {
    pub fn new(code: i32, code_name: &'static str, message: impl Into<String>) -> Self {
        debug_assert_eq!(
            code_name,
            crate::error_codes::static_code_name(code),
            "code {code} is named differently in error_codes.rs"
        );
        CodedError {
            code,
            code_name,
            message: message.into(),
        }
    }

    pub fn bad_value(message: impl Into<String>) -> Self {
        Self::new(2, "BadValue", message)
    }

    pub fn failed_to_parse(message: impl Into<String>) -> Self {
        Self::new(9, "FailedToParse", message)
    }

    pub fn type_mismatch(message: impl Into<String>) -> Self {
        Self::new(14, "TypeMismatch", message)
    }
}
