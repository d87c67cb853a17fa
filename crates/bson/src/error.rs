//! The one error type of the layers below the server: MongoDB's numeric code, code name and
//! message. The query crate reports the same type (as `QueryError`), so a client sees the same
//! code and message whichever layer found the problem (an index key the storage engine
//! derives, a collation a command parses, a filter).

/// An error reported to the client with MongoDB's numeric code and code name, so drivers that
/// branch on codes behave as they would against a real server.
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

    pub fn path_not_viable(message: impl Into<String>) -> Self {
        Self::new(28, "PathNotViable", message)
    }

    pub fn conflicting_update(message: impl Into<String>) -> Self {
        Self::new(40, "ConflictingUpdateOperators", message)
    }

    pub fn immutable_field(message: impl Into<String>) -> Self {
        Self::new(66, "ImmutableField", message)
    }

    /// Errors MongoDB raises through `uassert` with a bare numeric code; their code name is
    /// `Location<code>`, from the one registry in `error_codes`.
    pub fn location(code: i32, message: impl Into<String>) -> Self {
        Self::new(code, crate::error_codes::static_code_name(code), message)
    }
}
