//! Namespace names: which database and collection names commands accept, as mongod checks
//! them (InvalidNamespace otherwise).

use crate::error::{CommandError, CommandResult, code};

pub(super) fn validate_db_name(db: &str) -> CommandResult<()> {
    let bad = db.is_empty()
        || db.len() >= 64
        || db.chars().any(|c| {
            matches!(
                c,
                '/' | '\\' | '.' | ' ' | '"' | '$' | '*' | '<' | '>' | ':' | '|' | '?' | '\0'
            )
        });
    if bad {
        return Err(CommandError::new(
            code::INVALID_NAMESPACE,
            format!("Invalid database name: '{db}'"),
        ));
    }
    Ok(())
}

pub(super) fn validate_collection_name(db: &str, name: &str) -> CommandResult<()> {
    validate_db_name(db)?;
    let invalid = name.is_empty()
        || name.contains('$')
        || name.contains('\0')
        || name.starts_with('.')
        || name.starts_with("system.");
    if invalid || db.len() + 1 + name.len() > 255 {
        return Err(CommandError::new(
            code::INVALID_NAMESPACE,
            format!("Invalid collection name: '{db}.{name}'"),
        ));
    }
    Ok(())
}
