//! The crate's one error: a MongoDB error code, its name and a message, so that the layers
//! above can report it unchanged without this crate knowing their error types.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextError {
    pub code: i32,
    pub code_name: &'static str,
    pub message: String,
}

impl TextError {
    pub fn new(code: i32, code_name: &'static str, message: impl Into<String>) -> Self {
        TextError {
            code,
            code_name,
            message: message.into(),
        }
    }

    /// CannotCreateIndex (67): an invalid text index specification.
    pub fn cannot_create(message: impl Into<String>) -> Self {
        TextError::new(67, "CannotCreateIndex", message)
    }

    /// BadValue (2).
    pub fn bad_value(message: impl Into<String>) -> Self {
        TextError::new(2, "BadValue", message)
    }
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TextError {}
