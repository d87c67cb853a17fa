//! The versioned ("stable") API: `apiVersion`, `apiStrict` and `apiDeprecationErrors`, checked
//! as mongod 7.0 checks them before a command runs.
//!
//! - The parameters are typed (`apiVersion` a string, the flags booleans: TypeMismatch), and
//!   the flags need `apiVersion` (4886600). Version "1" is the only one (APIVersionError).
//! - `apiStrict: true` refuses what API Version 1 does not contain (APIStrictError): commands
//!   outside [`V1_COMMANDS`], aggregation stages in [`NOT_V1_STAGES`], and writes to
//!   `system.js`.
//! - `apiDeprecationErrors: true` refuses what Version 1 deprecates: only the test command
//!   `testDeprecation` (mongod deprecates nothing else in Version 1).
//!
//! Invariant: a pure check of the request; it runs after the command is found and before
//! authorization, so an unknown command is still CommandNotFound.

use bson::raw::RawBsonRef;

use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;

/// API Version 1's commands (mongod 8.0's `apiVersions: ["1"]`), with the test commands that
/// exist to test it.
const V1_COMMANDS: &[&str] = &[
    "abortTransaction",
    "aggregate",
    "authenticate",
    "bulkWrite",
    "collMod",
    "commitTransaction",
    "count",
    "create",
    "createIndexes",
    "delete",
    "drop",
    "dropDatabase",
    "dropIndexes",
    "endSessions",
    "explain",
    "find",
    "findAndModify",
    "getMore",
    "hello",
    "insert",
    "killCursors",
    "listCollections",
    "listDatabases",
    "listIndexes",
    "ping",
    "refreshSessions",
    "saslContinue",
    "saslStart",
    "update",
    "testVersion1",
    "testDeprecation",
];

/// Aggregation stages outside API Version 1.
const NOT_V1_STAGES: &[&str] = &[
    "$collStats",
    "$currentOp",
    "$indexStats",
    "$listLocalSessions",
    "$listSessions",
    "$planCacheStats",
    "$listCatalog",
    "$listSearchIndexes",
    "$search",
    "$searchMeta",
];

const DOCS: &str = "Information on supported commands and migrations in API Version 1 can be found at https://dochub.mongodb.org/core/manual-versioned-api";

/// Checks the request's API parameters against the command `name` it runs.
pub(crate) fn check(req: &Request<'_>, name: &str) -> CommandResult<()> {
    let version = match req.get("apiVersion") {
        None => None,
        Some(RawBsonRef::String(v)) => Some(v),
        Some(other) => return Err(wrong_type("apiVersion", other, "string")),
    };
    let strict = flag(req, "apiStrict")?;
    let deprecation_errors = flag(req, "apiDeprecationErrors")?;
    let Some(version) = version else {
        for (field, given) in [
            ("apiStrict", strict),
            ("apiDeprecationErrors", deprecation_errors),
        ] {
            if given.is_some() {
                return Err(CommandError::new(
                    4886600,
                    format!("Provided {field} without passing apiVersion"),
                ));
            }
        }
        return Ok(());
    };
    if version != "1" {
        return Err(CommandError::new(
            code::API_VERSION_ERROR,
            "API version must be \"1\"",
        ));
    }
    if strict == Some(true) {
        check_strict(req, name)?;
    }
    if deprecation_errors == Some(true) && name == "testDeprecation" {
        return Err(CommandError::new(
            code::API_DEPRECATION_ERROR,
            format!(
                "Provided apiDeprecationErrors: true, but the invoked command's deprecatedApiVersions() does not include \"1\": command {name} is deprecated in API Version 1"
            ),
        ));
    }
    Ok(())
}

fn check_strict(req: &Request<'_>, name: &str) -> CommandResult<()> {
    if !V1_COMMANDS.contains(&name) {
        return Err(strict_error(format!(
            "Provided apiStrict:true, but the command {name} is not in API Version 1. {DOCS}"
        )));
    }
    let writes = matches!(name, "insert" | "update" | "delete" | "findAndModify");
    if writes && matches!(req.command_value(), Some(RawBsonRef::String("system.js"))) {
        return Err(strict_error(format!(
            "Provided apiStrict:true, but the command {name} attempts to write to system.js"
        )));
    }
    if name == "aggregate"
        && let Some(stage) = first_foreign_stage(req)
    {
        return Err(strict_error(format!(
            "{stage} is not allowed with 'apiStrict: true' in API Version 1"
        )));
    }
    Ok(())
}

/// The first top-level stage of the pipeline outside API Version 1.
fn first_foreign_stage<'a>(req: &Request<'a>) -> Option<&'a str> {
    let Some(RawBsonRef::Array(stages)) = req.get("pipeline") else {
        return None;
    };
    stages.into_iter().find_map(|stage| match stage {
        Ok(RawBsonRef::Document(d)) => d
            .iter()
            .next()
            .and_then(Result::ok)
            .map(|(k, _)| k.as_str())
            .filter(|k| NOT_V1_STAGES.contains(k)),
        _ => None,
    })
}

fn flag(req: &Request<'_>, field: &str) -> CommandResult<Option<bool>> {
    match req.get(field) {
        None => Ok(None),
        Some(RawBsonRef::Boolean(b)) => Ok(Some(b)),
        Some(other) => Err(wrong_type(field, other, "boolean")),
    }
}

fn wrong_type(field: &str, value: RawBsonRef<'_>, expected: &str) -> CommandError {
    CommandError::new(
        code::TYPE_MISMATCH,
        format!(
            "BSON field '{field}' is the wrong type '{}', expected type '{expected}'",
            mangrove_query::element_type_name(value.element_type())
        ),
    )
}

fn strict_error(message: String) -> CommandError {
    CommandError::new(code::API_STRICT_ERROR, message)
}
