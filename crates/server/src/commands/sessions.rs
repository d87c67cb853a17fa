//! The logical-session commands: start, refresh, end and kill sessions (ending a session aborts
//! its open transaction), and the answer to `commitTransaction`/`abortTransaction` sent outside
//! a transaction. The transactions themselves run in [`super::txn`].

use bson::doc;
use bson::raw::RawBsonRef;

use crate::Shared;
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;

use super::Reply;

/// `endSessions` and `killSessions`: an array of lsids; their open transactions abort at once.
pub(super) async fn end_sessions(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    let Some(RawBsonRef::Array(lsids)) = req.command_value() else {
        return Err(CommandError::type_mismatch(format!(
            "{} takes an array of session ids",
            req.name
        )));
    };
    for lsid in lsids {
        if let Ok(RawBsonRef::Document(lsid)) = lsid {
            shared.sessions.end(lsid, req.owner.as_deref()).await;
        }
    }
    Ok(doc! { "ok": 1.0 }.into())
}

pub(super) async fn kill_all_sessions(shared: &Shared) -> CommandResult<Reply> {
    shared.sessions.end_all().await;
    Ok(doc! { "ok": 1.0 }.into())
}

/// `killAllSessionsByPattern`: `[{lsid: {...}}, ...]` kills those sessions; an empty list, an
/// empty pattern or a `uid`/`users`/`roles` pattern kills all (there is one user: no auth).
pub(super) async fn kill_sessions_by_pattern(
    shared: &Shared,
    req: &Request<'_>,
) -> CommandResult<Reply> {
    let Some(RawBsonRef::Array(patterns)) = req.command_value() else {
        return Err(CommandError::type_mismatch(
            "killAllSessionsByPattern takes an array of patterns",
        ));
    };
    let mut lsids = Vec::new();
    let mut all = true;
    for pattern in patterns {
        all = false;
        match pattern {
            Ok(RawBsonRef::Document(p)) => match p.get("lsid") {
                Ok(Some(RawBsonRef::Document(lsid))) => lsids.push(lsid),
                _ => all = true,
            },
            _ => {
                return Err(CommandError::type_mismatch(
                    "killAllSessionsByPattern patterns must be documents",
                ));
            }
        }
        if all {
            break;
        }
    }
    if all {
        shared.sessions.end_all().await;
    } else {
        for lsid in lsids {
            shared.sessions.end_any_owner(lsid).await;
        }
    }
    Ok(doc! { "ok": 1.0 }.into())
}

pub(super) fn start_session() -> CommandResult<Reply> {
    Ok(doc! {
        "id": { "id": bson::Uuid::new() },
        "timeoutMinutes": 30,
        "ok": 1.0,
    }
    .into())
}

pub(super) fn refresh_sessions(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    if let Some(RawBsonRef::Array(lsids)) = req.command_value() {
        for lsid in lsids.into_iter().flatten() {
            if let RawBsonRef::Document(lsid) = lsid {
                shared.sessions.touch(lsid, req.owner.as_deref());
            }
        }
    }
    Ok(doc! { "ok": 1.0 }.into())
}

/// `commitTransaction` or `abortTransaction` without `autocommit: false`.
pub(super) fn not_in_transaction(req: &Request<'_>) -> CommandResult<Reply> {
    Err(CommandError::new(
        code::INVALID_OPTIONS,
        format!(
            "{} must be run within a transaction: it needs lsid, txnNumber and autocommit: false",
            req.name
        ),
    ))
}
