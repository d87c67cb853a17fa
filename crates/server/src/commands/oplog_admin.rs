//! How much history the transaction log keeps for change streams and `local.oplog.rs`:
//! `replSetResizeOplog` changes mongod's two knobs (oplog size and minimum retention) at
//! runtime, and `serverStatus` reports them (`oplogTruncation`, as mongod, and
//! `mangrove.history`: what the log holds now).
//!
//! Invariant: the engine only ever sees a validated setting: a size within mongod's range
//! (990 MB to 1 PB; any positive size with `--enable-test-commands`, so tests need not write a
//! gigabyte) and a finite, non-negative retention.

use std::time::Duration;

use bson::raw::RawBsonRef;
use bson::{Bson, DateTime, Document, doc};

use crate::Shared;
use crate::error::{CommandError, CommandResult, code};
use crate::request::{Request, type_name};

use super::Reply;

/// mongod's bounds on `size`, in MB (`resize_oplog.idl`): 990 MB to 1 PB.
const MIN_SIZE_MB: f64 = 990.0;
const MAX_SIZE_MB: f64 = 1024.0 * 1024.0 * 1024.0;
/// The code of an IDL validator's failure in mongod 7.0 (BadValue from 7.1 on).
const IDL_VALIDATOR: i32 = 51024;
const MB: f64 = 1024.0 * 1024.0;

/// A field as IDL's `safeDouble` reads it: any number.
fn safe_double(req: &Request<'_>, field: &str) -> CommandResult<Option<f64>> {
    let Some(v) = req.get(field) else {
        return Ok(None);
    };
    let n = match v {
        RawBsonRef::Double(d) => d,
        RawBsonRef::Int32(i) => f64::from(i),
        RawBsonRef::Int64(i) => i as f64,
        RawBsonRef::Decimal128(d) => d.to_string().parse::<f64>().unwrap_or(f64::NAN),
        other => {
            return Err(CommandError::type_mismatch(format!(
                "BSON field 'ReplSetResizeOplogRequest.{field}' is the wrong type '{}', expected types '[long, int, decimal, double]'",
                type_name(other.element_type())
            )));
        }
    };
    Ok(Some(n))
}

fn out_of_range(field: &str, bound: &str, value: f64) -> CommandError {
    CommandError::new(
        IDL_VALIDATOR,
        format!("BSON field '{field}' value must be {bound}, actual value '{value}'"),
    )
}

/// `{replSetResizeOplog: 1, size: <MB>, minRetentionHours: <hours>}` (admin only).
pub(super) fn resize_oplog(shared: &Shared, req: &Request<'_>) -> CommandResult<Reply> {
    req.check_fields(&["size", "minRetentionHours"])?;
    let size_mb = safe_double(req, "size")?;
    let hours = safe_double(req, "minRetentionHours")?;
    let min_mb = match shared.config.enable_test_commands {
        true => f64::MIN_POSITIVE,
        false => MIN_SIZE_MB,
    };
    if let Some(mb) = size_mb {
        // NaN fails both, as IDL's comparisons do.
        if mb.is_nan() || mb < min_mb {
            return Err(out_of_range("size", &format!(">= {min_mb}"), mb));
        }
        if mb > MAX_SIZE_MB {
            return Err(out_of_range("size", &format!("<= {MAX_SIZE_MB}"), mb));
        }
    }
    let retention = match hours {
        None => None,
        Some(h) if h.is_nan() || h < 0.0 => {
            return Err(out_of_range("minRetentionHours", ">= 0", h));
        }
        Some(h) => Some(
            Duration::try_from_secs_f64(h * 3600.0)
                .map_err(|_| out_of_range("minRetentionHours", "a number of hours", h))?,
        ),
    };
    if size_mb.is_none() && retention.is_none() {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "replSetResizeOplog requires 'size' and/or 'minRetentionHours'",
        ));
    }
    let current = shared.engine.history_window()?;
    let size_bytes = size_mb.map_or(current.size_limit_bytes, |mb| (mb * MB) as u64);
    let retention = retention.unwrap_or(current.min_retention);
    shared.engine.set_history_retention(size_bytes, retention);
    tracing::info!(
        size_bytes,
        min_retention_hours = retention.as_secs_f64() / 3600.0,
        "replSetResizeOplog: history retention changed"
    );
    Ok(doc! { "ok": 1.0 }.into())
}

/// `serverStatus.oplogTruncation`, mongod's fields: history is removed by scanning segment
/// names, never sampled.
pub(super) fn oplog_truncation(shared: &Shared) -> Document {
    let stats = shared.engine.history_truncation_stats();
    let hours = shared
        .engine
        .history_window()
        .map_or(0.0, |w| w.min_retention.as_secs_f64() / 3600.0);
    doc! {
        "totalTimeProcessingMicros": stats.processing_micros as i64,
        "processingMethod": "scanning",
        "oplogMinRetentionHours": hours,
        "totalTimeTruncatingMicros": stats.truncating_micros as i64,
        "truncateCount": stats.truncate_count as i64,
    }
}

/// `serverStatus.mangrove.history`: the oldest and newest commits the log holds, its size and
/// retention. An error reading the log is reported in place, not as serverStatus's failure.
pub(super) fn history_status(shared: &Shared) -> Document {
    let window = match shared.engine.history_window() {
        Ok(w) => w,
        Err(e) => return doc! { "errmsg": e.to_string() },
    };
    let date =
        |ms: Option<i64>| ms.map_or(Bson::Null, |ms| Bson::DateTime(DateTime::from_millis(ms)));
    doc! {
        "oldest": window.oldest.map_or(Bson::Null, |ts| Bson::Timestamp(ts.to_bson())),
        "newest": window.newest.to_bson(),
        "oldestWall": date(window.oldest_wall_ms),
        "newestWall": date(window.newest_wall_ms),
        "retainedBytes": window.retained_bytes as i64,
        "sizeLimitBytes": window.size_limit_bytes as i64,
        "minRetentionHours": window.min_retention.as_secs_f64() / 3600.0,
    }
}
