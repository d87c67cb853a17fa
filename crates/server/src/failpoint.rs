//! Fail points: test hooks that make chosen commands fail, stall or drop their connection, as
//! mongod's `configureFailPoint` does. They exist only with `--enable-test-commands`, because
//! the drivers' spec tests need them and nobody else should be able to break a server this way.
//!
//! Supported, with mongod's field names:
//! - `failCommand`: `failCommands`, `errorCode`, `errorLabels`, `writeConcernError`,
//!   `closeConnection`, `blockConnection` + `blockTimeMS`, `appName`, `namespace`;
//! - `onPrimaryTransactionalWrite`: fires inside a retryable write, before or after its commit
//!   (`closeConnection`, default true; `failBeforeCommitExceptionCode`);
//! - `failGetMoreAfterCursorCheckout`: `errorCode` for the next `getMore`s;
//! - `maxTimeAlwaysTimeOut`: a command that has a `maxTimeMS` fails with MaxTimeMSExpired (50)
//!   before it runs, as if its time had run out;
//! - `logWriterPanic` (Mangrove's own): any mode but `off` makes the log writer thread panic
//!   while installing its next batch, once, to test the panic policy (the server stops).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bson::raw::RawBsonRef;
use bson::{Bson, Document, doc};

use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;

pub(crate) const KNOWN: &[&str] = &[
    "failCommand",
    "onPrimaryTransactionalWrite",
    "failGetMoreAfterCursorCheckout",
    "maxTimeAlwaysTimeOut",
    "logWriterPanic",
];

#[derive(Clone, Copy, Debug)]
enum Mode {
    Off,
    AlwaysOn,
    /// Fires this many more times, then turns itself off.
    Times(i64),
    /// Lets this many matching evaluations pass, then fires every time.
    Skip(i64),
}

struct FailPoint {
    mode: Mode,
    data: Document,
    /// How often it fired since it was configured; returned as `count` by the next configure.
    entered: i64,
}

/// The registry; empty (and never consulted past one lock) unless a test configures a point.
#[derive(Default)]
pub(crate) struct FailPoints {
    points: Mutex<HashMap<String, FailPoint>>,
}

/// What an armed `failCommand` does to one command.
#[derive(Default, Debug)]
pub(crate) struct FailCommand {
    pub block: Option<Duration>,
    pub close_connection: bool,
    pub error_code: Option<i32>,
    /// `Some(vec![])` means "no labels at all", overriding the server's own labelling.
    pub error_labels: Option<Vec<String>>,
    pub write_concern_error: Option<Document>,
}

/// What an armed `onPrimaryTransactionalWrite` does to one retryable write.
#[derive(Debug)]
pub(crate) struct TransactionalWriteFault {
    pub close_connection: bool,
    pub fail_before_commit: Option<i32>,
}

impl FailPoints {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, FailPoint>> {
        self.points.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `configureFailPoint`: sets a point's mode and data; replies with how often it fired.
    pub fn configure(&self, req: &Request<'_>) -> CommandResult<Document> {
        let name = match req.command_value() {
            Some(RawBsonRef::String(s)) => s,
            _ => {
                return Err(CommandError::type_mismatch(
                    "configureFailPoint takes the fail point's name as a string",
                ));
            }
        };
        if !KNOWN.contains(&name) {
            return Err(CommandError::bad_value(format!(
                "Unknown fail point '{name}'; Mangrove supports {}",
                KNOWN.join(", ")
            )));
        }
        let mode = parse_mode(req)?;
        let data = parse_data(req, name, mode)?;
        if name == "logWriterPanic" && !matches!(mode, Mode::Off) {
            mangrove_storage::panic_policy::arm_log_writer_panic();
        }
        let mut points = self.lock();
        let previous = points.insert(
            name.to_string(),
            FailPoint {
                mode,
                data,
                entered: 0,
            },
        );
        tracing::info!(fail_point = name, ?mode, "fail point configured");
        Ok(doc! { "count": previous.map_or(0, |p| p.entered), "ok": 1.0 })
    }

    /// Consumes one firing of `name` if it is armed and `matches` accepts its data.
    fn fire(&self, name: &str, matches: impl FnOnce(&Document) -> bool) -> Option<Document> {
        let mut points = self.lock();
        let point = points.get_mut(name)?;
        if matches!(point.mode, Mode::Off) || !matches(&point.data) {
            return None;
        }
        match &mut point.mode {
            Mode::Off => return None,
            Mode::AlwaysOn => {}
            Mode::Times(n) => {
                if *n <= 0 {
                    return None;
                }
                *n -= 1;
                if *n == 0 {
                    point.mode = Mode::Off;
                }
            }
            Mode::Skip(n) => {
                if *n > 0 {
                    *n -= 1;
                    return None;
                }
            }
        }
        point.entered += 1;
        Some(point.data.clone())
    }

    /// The `failCommand` action for this command, if the point is armed for it.
    pub fn fail_command(&self, req: &Request<'_>, app_name: Option<&str>) -> Option<FailCommand> {
        if req.name == "configureFailPoint" {
            return None;
        }
        // mongod matches a command's registered name: `ismaster` is `isMaster` there.
        let name = match req.name {
            "ismaster" => "isMaster",
            name => name,
        };
        let data = self.fire("failCommand", |data| {
            let listed = match data.get("failCommands") {
                Some(Bson::Array(names)) => names.iter().any(|n| n.as_str() == Some(name)),
                _ => false,
            };
            let app_ok = match data.get_str("appName") {
                Ok(want) => app_name == Some(want),
                Err(_) => true,
            };
            let ns_ok = match data.get_str("namespace") {
                Ok(want) => match req.collection() {
                    Ok(coll) => req.ns(coll) == want,
                    Err(_) => req.db == want,
                },
                Err(_) => true,
            };
            listed && app_ok && ns_ok
        })?;
        let int = |key: &str| int_field(&data, key);
        let block = if data.get_bool("blockConnection").unwrap_or(false) {
            Some(Duration::from_millis(
                int("blockTimeMS").unwrap_or(0).max(0) as u64,
            ))
        } else {
            None
        };
        let error_labels = match data.get("errorLabels") {
            Some(Bson::Array(labels)) => Some(
                labels
                    .iter()
                    .filter_map(|l| l.as_str().map(str::to_string))
                    .collect(),
            ),
            _ => None,
        };
        Some(FailCommand {
            block,
            close_connection: data.get_bool("closeConnection").unwrap_or(false),
            error_code: int("errorCode").map(|c| c as i32),
            error_labels,
            write_concern_error: data.get_document("writeConcernError").ok().cloned(),
        })
    }

    /// The `onPrimaryTransactionalWrite` action for one retryable write, if armed.
    pub fn transactional_write(&self) -> Option<TransactionalWriteFault> {
        let data = self.fire("onPrimaryTransactionalWrite", |_| true)?;
        let fail_before_commit =
            int_field(&data, "failBeforeCommitExceptionCode").map(|c| c as i32);
        Some(TransactionalWriteFault {
            close_connection: data.get_bool("closeConnection").unwrap_or(true),
            fail_before_commit,
        })
    }

    /// MaxTimeMSExpired for a command with a (non-zero) `maxTimeMS` while
    /// `maxTimeAlwaysTimeOut` is armed.
    pub fn max_time_expired(&self, req: &Request<'_>) -> Option<CommandError> {
        let limited = req
            .get("maxTimeMS")
            .and_then(crate::request::as_i64)
            .is_some_and(|ms| ms > 0);
        if !limited || req.name == "configureFailPoint" {
            return None;
        }
        self.max_time_always_times_out()
    }

    /// MaxTimeMSExpired for an operation that has a time limit, while `maxTimeAlwaysTimeOut`
    /// is armed (also a `getMore` spending its cursor's leftover time).
    pub fn max_time_always_times_out(&self) -> Option<CommandError> {
        self.fire("maxTimeAlwaysTimeOut", |_| true)?;
        Some(CommandError::new(
            code::MAX_TIME_MS_EXPIRED,
            "operation exceeded time limit",
        ))
    }

    /// The error code `failGetMoreAfterCursorCheckout` makes the next `getMore` fail with.
    pub fn get_more_error(&self) -> Option<CommandError> {
        let data = self.fire("failGetMoreAfterCursorCheckout", |_| true)?;
        let code = int_field(&data, "errorCode").map_or(code::INTERNAL_ERROR, |c| c as i32);
        Some(CommandError::new(
            code,
            "Failing getMore via 'failGetMoreAfterCursorCheckout' failpoint",
        ))
    }
}

/// A fail point's `mode`: `alwaysOn`, `off`, `{times: n}` or `{skip: n}`.
fn parse_mode(req: &Request<'_>) -> CommandResult<Mode> {
    let mode = match req.get("mode") {
        Some(RawBsonRef::String("alwaysOn")) => Mode::AlwaysOn,
        Some(RawBsonRef::String("off")) => Mode::Off,
        Some(RawBsonRef::Document(d)) => {
            let n = |key: &str| match d.get(key).ok().flatten() {
                Some(RawBsonRef::Int32(n)) => Some(n as i64),
                Some(RawBsonRef::Int64(n)) => Some(n),
                Some(RawBsonRef::Double(n)) if n.fract() == 0.0 => Some(n as i64),
                _ => None,
            };
            match (n("times"), n("skip")) {
                (Some(t), None) if t >= 0 => Mode::Times(t),
                (None, Some(s)) if s >= 0 => Mode::Skip(s),
                _ => {
                    return Err(CommandError::bad_value(
                        "mode must be 'alwaysOn', 'off', {times: n} or {skip: n} with n >= 0",
                    ));
                }
            }
        }
        Some(RawBsonRef::String(other)) => {
            return Err(CommandError::bad_value(format!(
                "unknown fail point mode '{other}'"
            )));
        }
        _ => {
            return Err(CommandError::new(
                code::MISSING_FIELD,
                "configureFailPoint needs a mode",
            ));
        }
    };
    Ok(mode)
}

/// A fail point's `data`; `failCommand` must list the commands it fails.
fn parse_data(req: &Request<'_>, name: &str, mode: Mode) -> CommandResult<Document> {
    let data = match req.get("data") {
        None => Document::new(),
        Some(RawBsonRef::Document(d)) => {
            Document::try_from(d).map_err(|e| CommandError::bad_value(e.to_string()))?
        }
        Some(_) => return Err(CommandError::type_mismatch("data must be a document")),
    };
    if name == "failCommand" && !matches!(mode, Mode::Off) {
        match data.get("failCommands") {
            Some(Bson::Array(names)) if names.iter().all(|n| n.as_str().is_some()) => {}
            _ => {
                return Err(CommandError::bad_value(
                    "failCommand needs data.failCommands, an array of command names",
                ));
            }
        }
    }
    Ok(data)
}

/// A numeric field of a fail point's data, whatever number type the test sent.
fn int_field(data: &Document, key: &str) -> Option<i64> {
    match data.get(key)? {
        Bson::Int32(n) => Some(*n as i64),
        Bson::Int64(n) => Some(*n),
        Bson::Double(n) => Some(*n as i64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn armed(mode: Mode) -> FailPoints {
        let fps = FailPoints::default();
        fps.lock().insert(
            "failGetMoreAfterCursorCheckout".into(),
            FailPoint {
                mode,
                data: doc! { "errorCode": 91 },
                entered: 0,
            },
        );
        fps
    }

    #[test]
    fn times_fires_exactly_n_times() {
        let fps = armed(Mode::Times(2));
        assert_eq!(fps.get_more_error().map(|e| e.code), Some(91));
        assert!(fps.get_more_error().is_some());
        assert!(fps.get_more_error().is_none());
        assert!(fps.get_more_error().is_none());
    }

    #[test]
    fn skip_lets_n_pass_then_always_fires() {
        let fps = armed(Mode::Skip(1));
        assert!(fps.get_more_error().is_none());
        assert!(fps.get_more_error().is_some());
        assert!(fps.get_more_error().is_some());
    }

    #[test]
    fn off_never_fires() {
        let fps = armed(Mode::Off);
        assert!(fps.get_more_error().is_none());
    }
}
