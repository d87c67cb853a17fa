//! Legacy OP_QUERY commands: turns an OP_QUERY on `<db>.$cmd` into the command body an OP_MSG
//! would have carried, as mongod 5.0 did (`opMsgRequestFromLegacyRequest` and
//! `upconvertRequest`), so that it runs through the same command table, authorization,
//! sessions and error handling.
//!
//! Invariants:
//! - Only the namespace, the flags, `numberToReturn` and the query document are read; the
//!   query has already been validated in full by the wire crate, so walking it cannot fail
//!   beyond what is reported here as an error.
//! - The body handed on always ends with `$db` taken from the namespace; a `$db` the client
//!   sent is refused (40621), never trusted.
//! - Every refusal is a [`LegacyError`]: either a command error (answered `{ok: 0}` with the
//!   normal reply flags, as mongod answered `$cmd` queries) or a query failure (answered with
//!   the QueryFailure flag and `$err`, as mongod answered a failed legacy find).

use bson::raw::{RawBsonRef, RawDocument, RawDocumentBuf, cstr};
use bson::rawdoc;

use crate::error::{CommandError, code};

/// OP_QUERY flag bits mongod looked at for commands.
const SECONDARY_OK: u32 = 1 << 2;
const EXHAUST: u32 = 1 << 6;

/// OP_REPLY responseFlags: mongod answered every command with AwaitCapable set
/// (`setResultFlagsToOk`), and a failed legacy query (or getMore) with QueryFailure alone.
pub(crate) const REPLY_OK: i32 = 8;
pub(crate) const REPLY_QUERY_FAILURE: i32 = 2;

/// Why an OP_QUERY is not run as a command.
pub(crate) enum LegacyError {
    /// Answered as a command's error reply (`{ok: 0, errmsg, code, codeName}`).
    Command(CommandError),
    /// Answered as a failed legacy query: QueryFailure flag, `$err` and `code`.
    Query(CommandError),
}

/// A command upconverted from an OP_QUERY: its database and its body (ending in `$db`).
pub(crate) struct Upconverted {
    pub db: String,
    pub body: RawDocumentBuf,
}

/// The command an OP_QUERY carries, or why it cannot be run.
pub(crate) fn upconvert(
    full_collection_name: &str,
    flags: u32,
    number_to_return: i32,
    query: &RawDocument,
) -> Result<Upconverted, LegacyError> {
    let Some(db) = full_collection_name.strip_suffix(".$cmd") else {
        return Err(LegacyError::Query(CommandError::new(
            code::UNSUPPORTED_OP_QUERY_COMMAND,
            format!(
                "OP_QUERY (opcode 2004) on {full_collection_name:?} is a legacy find, which \
                 Mangrove does not support: only commands on <db>.$cmd are answered over \
                 OP_QUERY. Use a driver that speaks OP_MSG (MongoDB 3.6 or later)."
            ),
        )));
    };
    let command_error = |c: i32, m: String| Err(LegacyError::Command(CommandError::new(c, m)));
    if flags & EXHAUST != 0 {
        return command_error(
            18527,
            format!("The 'exhaust' OP_QUERY flag is invalid for commands: {full_collection_name}"),
        );
    }
    if !valid_db_name(db) {
        return command_error(
            code::INVALID_NAMESPACE,
            format!("Invalid database name: '{db}'"),
        );
    }
    if number_to_return != 1 && number_to_return != -1 {
        return command_error(
            16979,
            format!(
                "bad numberToReturn ({number_to_return}) for $cmd type ns - can only be 1 or -1"
            ),
        );
    }
    let body = command_body(db, flags, query).map_err(LegacyError::Command)?;
    Ok(Upconverted {
        db: db.to_owned(),
        body,
    })
}

/// mongod's `upconvertRequest`: unwraps `{$query: {...}}` / `{query: {...}}`, keeps the
/// wrapper's `$readPreference`, expands `$queryOptions`, turns the secondaryOk flag into a
/// read preference and appends `$db`.
fn command_body(db: &str, flags: u32, query: &RawDocument) -> Result<RawDocumentBuf, CommandError> {
    let Unwrapped {
        command,
        wrapped,
        read_pref,
    } = unwrap(query)?;
    let mut body = RawDocumentBuf::new();
    let mut has_read_pref = false;
    for item in command.iter() {
        let (key, value) =
            item.map_err(|e| CommandError::new(code::INVALID_BSON, e.to_string()))?;
        match key.as_str() {
            "$db" => {
                return Err(CommandError::new(
                    40621,
                    "$db is not allowed in OP_QUERY requests",
                ));
            }
            // Only the unwrapped form carries it inline; its fields join the body.
            "$queryOptions" if !wrapped => {
                if let RawBsonRef::Document(options) = value {
                    for (option, value) in options.iter().flatten() {
                        has_read_pref |= option.as_str() == "$readPreference";
                        body.append(option, value);
                    }
                }
            }
            other => {
                has_read_pref |= other == "$readPreference";
                body.append(key, value);
            }
        }
    }
    match read_pref {
        Some(read_pref) if !has_read_pref => body.append(cstr!("$readPreference"), read_pref),
        None if !has_read_pref && flags & SECONDARY_OK != 0 => {
            body.append(
                cstr!("$readPreference"),
                rawdoc! { "mode": "secondaryPreferred" },
            );
        }
        _ => {}
    }
    body.append(cstr!("$db"), db);
    Ok(body)
}

/// A query document with its legacy wrapper, if any, taken apart.
struct Unwrapped<'a> {
    command: &'a RawDocument,
    /// The query was `{$query: {...}, ...}` or `{query: {...}, ...}`.
    wrapped: bool,
    /// The wrapper's `$readPreference`, which joins the command.
    read_pref: Option<RawBsonRef<'a>>,
}

/// The command inside a `$query`/`query` wrapper, or the query itself when it is not wrapped.
fn unwrap(query: &RawDocument) -> Result<Unwrapped<'_>, CommandError> {
    let plain = Unwrapped {
        command: query,
        wrapped: false,
        read_pref: None,
    };
    let Some(Ok((first, value))) = query.iter().next() else {
        return Ok(plain);
    };
    if first.as_str() != "$query" && first.as_str() != "query" {
        return Ok(plain);
    }
    let RawBsonRef::Document(command) = value else {
        return Err(CommandError::new(
            10065,
            format!("invalid parameter: expected an object ({})", first.as_str()),
        ));
    };
    if matches!(query.get("$maxTimeMS"), Ok(Some(_))) {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "cannot use $maxTimeMS query option with commands; use maxTimeMS command option \
             instead",
        ));
    }
    Ok(Unwrapped {
        command,
        wrapped: true,
        read_pref: query.get("$readPreference").ok().flatten(),
    })
}

/// mongod's `validDBName` (with `$` allowed, as for command namespaces).
fn valid_db_name(db: &str) -> bool {
    !db.is_empty()
        && db.len() < 64
        && !db
            .chars()
            .any(|c| matches!(c, '/' | '\\' | '.' | ' ' | '"' | '\0'))
}
