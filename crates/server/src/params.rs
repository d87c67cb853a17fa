//! Runtime server parameters and the numeric bounds of client-supplied times.
//!
//! Invariants:
//! - A stored parameter is always inside mongod 7.0's range for it (the `validator` bounds of
//!   its `.idl` declaration, within the C++ type it is declared as), so code that turns one
//!   into a `Duration` or adds it to an `Instant` cannot overflow.
//! - A value outside the range is refused with BadValue (2) and mongod's message, and the old
//!   value stays: `setParameter` never half-applies one parameter.
//! - `maxTimeMS` is checked once for every command, as mongod's generic-argument parsing
//!   does, so handlers only ever see 0..=i32::MAX.
//! - A TTL index's `expireAfterSeconds` is 0..=i32::MAX before the index exists, so the TTL
//!   monitor's `seconds × 1000` cannot overflow.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bson::Document;
use bson::raw::RawBsonRef;

use crate::error::{CommandError, CommandResult, code};
use crate::request::{Request, as_bool, as_i64};

/// An integer parameter's valid range, inclusive.
struct Range {
    name: &'static str,
    min: i64,
    max: i64,
}

const INT32: (i64, i64) = (i32::MIN as i64, i32::MAX as i64);

/// `transactionLifetimeLimitSeconds`: int32, `validator: {gte: 1}`
/// (src/mongo/db/transaction/transaction_participant.idl).
const TRANSACTION_LIFETIME: Range = Range {
    name: "transactionLifetimeLimitSeconds",
    min: 1,
    max: INT32.1,
};
/// `maxTransactionLockRequestTimeoutMillis`: int32 without a validator (negative disables it).
const LOCK_REQUEST_TIMEOUT: Range = Range {
    name: "maxTransactionLockRequestTimeoutMillis",
    min: INT32.0,
    max: INT32.1,
};
/// `ttlMonitorSleepSecs`: int32, `validator: {gte: 1}` (src/mongo/db/ttl.idl). mongod sets it
/// at startup only; Mangrove also lets tests shorten it at runtime.
const TTL_MONITOR_SLEEP: Range = Range {
    name: "ttlMonitorSleepSecs",
    min: 1,
    max: INT32.1,
};

/// Parameters `setParameter` may change while the server runs.
pub(crate) struct RuntimeParams {
    /// `transactionLifetimeLimitSeconds`.
    pub transaction_lifetime_secs: AtomicU64,
    /// `maxTransactionLockRequestTimeoutMillis`: kept for compatibility only. Mangrove takes no
    /// collection locks a transaction could time out on, so nothing waits on it.
    pub max_transaction_lock_request_timeout_ms: AtomicI64,
    /// `ttlMonitorSleepSecs`: the pause between TTL passes (60 s, as in MongoDB).
    pub ttl_monitor_sleep_secs: AtomicU64,
    /// `ttlMonitorEnabled`.
    pub ttl_monitor_enabled: AtomicBool,
    /// `allowDiskUseByDefault`: whether blocking stages of a find or aggregate without an
    /// `allowDiskUse` option may spill to disk (true, as in mongod 7.0).
    pub allow_disk_use_by_default: AtomicBool,
    /// The query memory limits (`internalQueryMaxPushBytes`, ...).
    pub query: crate::query_params::QueryParams,
}

impl RuntimeParams {
    /// Starts from the configured lifetime, clamped into the parameter's range.
    pub fn new(transaction_lifetime: Duration, query: mangrove_query::Limits) -> RuntimeParams {
        let secs = transaction_lifetime
            .as_secs()
            .clamp(1, TRANSACTION_LIFETIME.max as u64);
        RuntimeParams {
            transaction_lifetime_secs: AtomicU64::new(secs),
            max_transaction_lock_request_timeout_ms: AtomicI64::new(5),
            ttl_monitor_sleep_secs: AtomicU64::new(60),
            ttl_monitor_enabled: AtomicBool::new(true),
            allow_disk_use_by_default: AtomicBool::new(true),
            query: crate::query_params::QueryParams::new(query),
        }
    }

    pub fn transaction_lifetime(&self) -> Duration {
        Duration::from_secs(self.transaction_lifetime_secs.load(Relaxed).max(1))
    }

    /// Sets one parameter; the reply's `was`, or the error for a bad name or value.
    fn set(&self, key: &str, value: RawBsonRef<'_>) -> CommandResult<bson::Bson> {
        Ok(match key {
            "ttlMonitorEnabled" => {
                let on = as_bool(value).ok_or_else(|| cannot_coerce(key, value, "a boolean"))?;
                self.ttl_monitor_enabled.swap(on, Relaxed).into()
            }
            "allowDiskUseByDefault" => {
                let on = as_bool(value).ok_or_else(|| cannot_coerce(key, value, "a boolean"))?;
                self.allow_disk_use_by_default.swap(on, Relaxed).into()
            }
            "transactionLifetimeLimitSeconds" => {
                let secs = TRANSACTION_LIFETIME.check(value)? as u64;
                (self.transaction_lifetime_secs.swap(secs, Relaxed) as i64).into()
            }
            "ttlMonitorSleepSecs" => {
                let secs = TTL_MONITOR_SLEEP.check(value)? as u64;
                (self.ttl_monitor_sleep_secs.swap(secs, Relaxed) as i64).into()
            }
            "maxTransactionLockRequestTimeoutMillis" => {
                let ms = LOCK_REQUEST_TIMEOUT.check(value)?;
                self.max_transaction_lock_request_timeout_ms
                    .swap(ms, Relaxed)
                    .into()
            }
            other if crate::query_params::QueryParams::names().any(|n| n == other) => {
                let bytes = as_i64(value)
                    .ok_or_else(|| cannot_coerce(other, value, "a positive number of bytes"))?;
                match self.query.set(other, bytes) {
                    Some(was) => was?.into(),
                    None => unreachable!("{other} is a query parameter"),
                }
            }
            other => {
                return Err(CommandError::new(
                    code::INVALID_OPTIONS,
                    format!(
                        "attempted to set unrecognized parameter [{other}], use help:true to see options; Mangrove can set transactionLifetimeLimitSeconds, maxTransactionLockRequestTimeoutMillis, ttlMonitorSleepSecs, ttlMonitorEnabled, allowDiskUseByDefault, {}",
                        crate::query_params::QueryParams::names()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        })
    }
}

impl Range {
    /// The value as an integer inside the range, or mongod's BadValue.
    fn check(&self, value: RawBsonRef<'_>) -> CommandResult<i64> {
        let hint = format!("an integer from {} to {}", self.min, self.max);
        let out_of_range = |shown: String, below: bool| {
            let (relation, bound) = if below {
                ("greater than or equal to", self.min)
            } else {
                ("less than or equal to", self.max)
            };
            CommandError::bad_value(format!(
                "Invalid value for parameter {}: {shown} is not {relation} {bound}; give {hint}",
                self.name
            ))
        };
        let n = match value {
            RawBsonRef::Int32(i) => i64::from(i),
            RawBsonRef::Int64(i) => i,
            // mongod truncates a double towards zero; NaN has no integer value at all.
            RawBsonRef::Double(d) if d.is_nan() => {
                return Err(cannot_coerce(self.name, value, &hint));
            }
            RawBsonRef::Double(d) if d < self.min as f64 => {
                return Err(out_of_range(d.to_string(), true));
            }
            RawBsonRef::Double(d) if d >= self.max as f64 + 1.0 => {
                return Err(out_of_range(d.to_string(), false));
            }
            RawBsonRef::Double(d) => d.trunc() as i64,
            RawBsonRef::Decimal128(d) => d
                .to_string()
                .parse::<i64>()
                .map_err(|_| cannot_coerce(self.name, value, &hint))?,
            _ => return Err(cannot_coerce(self.name, value, &hint)),
        };
        if n < self.min || n > self.max {
            return Err(out_of_range(n.to_string(), n < self.min));
        }
        Ok(n)
    }
}

fn cannot_coerce(name: &str, value: RawBsonRef<'_>, want: &str) -> CommandError {
    CommandError::bad_value(format!(
        "Invalid value for parameter {name}: Can't coerce value of type {:?}; give {want}",
        value.element_type()
    ))
}

/// `setParameter`: replies with the old value as `was`, as mongod does.
pub(crate) fn set_parameter(params: &RuntimeParams, req: &Request<'_>) -> CommandResult<Document> {
    let mut reply = Document::new();
    for item in req.body.iter() {
        let (key, value) = item.map_err(|e| CommandError::new(22, e.to_string()))?;
        let key = key.as_str();
        if key == req.name || key.starts_with('$') || key == "lsid" || key == "comment" {
            continue;
        }
        let was = params.set(key, value)?;
        tracing::info!(parameter = key, value = ?value, "server parameter changed");
        reply.insert("was", was);
    }
    if reply.is_empty() {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "no option found to set, use help:true to see options",
        ));
    }
    reply.insert("ok", 1.0);
    Ok(reply)
}

/// mongod's bound on `maxTimeMS` (and the other `*TimeMS` generic arguments).
const MAX_TIME_MS: i64 = i32::MAX as i64;

/// `maxTimeMS` as mongod's generic-argument parser reads it: a number, whole, 0..=i32::MAX.
pub(crate) fn check_max_time_ms(req: &Request<'_>) -> CommandResult<()> {
    let Some(value) = req.get("maxTimeMS") else {
        return Ok(());
    };
    let n = match value {
        RawBsonRef::Int32(i) => i64::from(i),
        RawBsonRef::Int64(i) => i,
        RawBsonRef::Double(d) if d.is_nan() || d.fract() != 0.0 && d.is_finite() => {
            return Err(CommandError::bad_value(
                "maxTimeMS has a fractional component; give whole milliseconds",
            ));
        }
        RawBsonRef::Double(d) => d.clamp(i64::MIN as f64, i64::MAX as f64) as i64,
        RawBsonRef::Decimal128(d) => d.to_string().parse::<f64>().unwrap_or(f64::NAN) as i64,
        _ => return Err(CommandError::bad_value("maxTimeMS must be a number")),
    };
    if !(0..=MAX_TIME_MS).contains(&n) {
        return Err(CommandError::bad_value(format!(
            "{n} value for maxTimeMS is out of range [0, {MAX_TIME_MS}]"
        )));
    }
    Ok(())
}

/// mongod's CannotCreateIndex, for a TTL option out of its range.
const CANNOT_CREATE_INDEX: i32 = 67;

/// A TTL index's `expireAfterSeconds` as mongod 7.0 accepts it: a number from 0 to i32::MAX
/// (a fraction dropped), else CannotCreateIndex (67). The TTL monitor multiplies it by 1,000,
/// so the range also keeps that product far from overflowing. Returns the specification
/// rewritten with an int32, when it came as another numeric type.
pub(crate) fn check_expire_after_seconds(
    spec: &bson::RawDocument,
) -> CommandResult<Option<bson::RawDocumentBuf>> {
    let Ok(Some(value)) = spec.get("expireAfterSeconds") else {
        return Ok(None);
    };
    let refuse = |why: String| {
        CommandError::new(
            CANNOT_CREATE_INDEX,
            format!(
                "TTL index 'expireAfterSeconds' option {why}; give whole seconds from 0 to {}",
                i32::MAX
            ),
        )
    };
    let secs = match value {
        RawBsonRef::Int32(i) if i >= 0 => return Ok(None),
        RawBsonRef::Int32(i) => f64::from(i),
        RawBsonRef::Int64(i) => i as f64,
        RawBsonRef::Double(d) => d,
        RawBsonRef::Decimal128(d) => d.to_string().parse::<f64>().unwrap_or(f64::NAN),
        other => {
            return Err(refuse(format!(
                "must be numeric, but received a type of {:?}",
                other.element_type()
            )));
        }
    };
    if !(0.0..=f64::from(i32::MAX)).contains(&secs) {
        return Err(refuse(format!(
            "must be within an acceptable range, got {secs}"
        )));
    }
    let mut doc = Document::try_from(spec).map_err(|e| CommandError::new(22, e.to_string()))?;
    doc.insert("expireAfterSeconds", secs.trunc() as i32);
    bson::RawDocumentBuf::try_from(&doc)
        .map(Some)
        .map_err(|e| CommandError::new(22, e.to_string()))
}
