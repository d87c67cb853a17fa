//! Types and conversions: `$convert`, the `$toX` shorthands, `$type` and `$isNumber`. Target
//! types are named or numbered as in the BSON type table (`crate::types`).
//!
//! Invariant: a failed conversion is error 241 (ConversionFailure), which `onError` catches;
//! every other error passes through it.

use std::str::FromStr;

use bson::oid::ObjectId;
use bson::raw::RawBsonRef;
use bson::{Bson, DateTime, Decimal128, RawDocument};

use super::args::{named, pick};
use super::arith::{N, decimal, exact_int};
use super::ops::Op;
use super::string::stringify;
use super::{Expr, Val, display, loc, nullish, tname, truthy, type_name};
use crate::compare::decimal_to_f64;
use crate::dates;
use crate::error::QueryError;
use crate::types::{code_of_name, name_of_code};

/// A `$convert` target, by its BSON type number.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    Double = 1,
    String = 2,
    ObjectId = 7,
    Bool = 8,
    Date = 9,
    Int = 16,
    Long = 18,
    Decimal = 19,
}

/// Applies `$type`, `$isNumber` or a `$toX` to its argument values.
pub(super) fn apply(op: Op, vals: Vec<Val>) -> Result<Val, QueryError> {
    let to = match op {
        Op::Type => return Ok(Some(Bson::String(tname(&vals[0]).to_string()))),
        Op::IsNumber => {
            return Ok(Some(Bson::Boolean(
                vals[0].as_ref().and_then(N::of).is_some(),
            )));
        }
        Op::ToString => Target::String,
        Op::ToInt => Target::Int,
        Op::ToLong => Target::Long,
        Op::ToDouble => Target::Double,
        Op::ToDecimal => Target::Decimal,
        Op::ToBool => Target::Bool,
        Op::ToObjectId => Target::ObjectId,
        _ => Target::Date,
    };
    if nullish(&vals[0]) {
        return Ok(Some(Bson::Null));
    }
    convert(vals[0].clone(), to)
}

/// `$convert: {input, to, onError, onNull}`.
pub(super) fn parse_convert(arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let spec = named(
        "$convert",
        arg,
        &["input", "to", "onError", "onNull"],
        40712,
    )?;
    let input = pick(&spec, "input").ok_or_else(|| {
        loc(
            40414,
            "BSON field '$convert.input' is missing but a required field",
        )
    })?;
    let to = pick(&spec, "to").ok_or_else(|| {
        loc(
            40414,
            "BSON field '$convert.to' is missing but a required field",
        )
    })?;
    let opt = |name: &str| -> Result<Option<Box<Expr>>, QueryError> {
        Ok(match pick(&spec, name) {
            Some(v) => Some(Box::new(Expr::parse(v)?)),
            None => None,
        })
    };
    Ok(Expr::Convert {
        input: Box::new(Expr::parse(input)?),
        to: Box::new(Expr::parse(to)?),
        on_error: opt("onError")?,
        on_null: opt("onNull")?,
    })
}

/// Evaluates `$convert`: a null target gives null, a null input `onNull`, and a conversion
/// failure `onError` when given.
pub(super) fn eval_convert(
    input: &Expr,
    to: &Expr,
    on_error: Option<&Expr>,
    on_null: Option<&Expr>,
    doc: &RawDocument,
) -> Result<Val, QueryError> {
    let v = input.eval(doc)?;
    let target = match to.eval(doc)? {
        Some(t) if !matches!(t, Bson::Null | Bson::Undefined) => convert_target(&t)?,
        _ => return Ok(Some(Bson::Null)),
    };
    if nullish(&v) {
        return match on_null {
            Some(e) => e.eval(doc),
            None => Ok(Some(Bson::Null)),
        };
    }
    match convert(v, target) {
        Err(e) if e.code == 241 => match on_error {
            Some(fallback) => fallback.eval(doc),
            None => Err(e),
        },
        other => other,
    }
}

fn convert_target(v: &Bson) -> Result<Target, QueryError> {
    let code = match v {
        Bson::String(s) => code_of_name(s).map(i64::from),
        other => exact_int(other),
    };
    let t = code.and_then(|code| {
        Some(match code {
            1 => Target::Double,
            2 => Target::String,
            7 => Target::ObjectId,
            8 => Target::Bool,
            9 => Target::Date,
            16 => Target::Int,
            18 => Target::Long,
            19 => Target::Decimal,
            _ => return None,
        })
    });
    t.ok_or_else(|| QueryError::new(2, "BadValue", format!("Unknown type name: {}", display(v))))
}

pub(super) fn conversion_failure(msg: String) -> QueryError {
    QueryError::new(241, "ConversionFailure", msg)
}

fn target_name(t: Target) -> &'static str {
    name_of_code(t as i32).unwrap_or("unknown")
}

fn unsupported(v: &Bson, to: Target) -> QueryError {
    conversion_failure(format!(
        "Unsupported conversion from {} to {} in $convert with no onError value",
        type_name(v),
        target_name(to)
    ))
}

fn parse_fail(s: &str) -> QueryError {
    conversion_failure(format!(
        "Failed to parse number '{s}' in $convert with no onError value"
    ))
}

fn overflow(v: &Bson) -> QueryError {
    conversion_failure(format!(
        "Conversion would overflow target type in $convert with no onError value: {}",
        display(v)
    ))
}

/// A double truncated to an integer within [lo, hi].
fn float_to_int(v: &Bson, d: f64, lo: f64, hi: f64) -> Result<i64, QueryError> {
    if d.is_nan() {
        return Err(conversion_failure(
            "Attempt to convert NaN value to integer type in $convert with no onError value".into(),
        ));
    }
    let t = d.trunc();
    if t < lo || t > hi {
        return Err(overflow(v));
    }
    Ok(t as i64)
}

/// `$convert` and the `$toX` shorthands, for a non-null input.
pub(super) fn convert(v: Val, to: Target) -> Result<Val, QueryError> {
    let Some(v) = v else {
        return Ok(Some(Bson::Null));
    };
    Ok(Some(match to {
        Target::Bool => match &v {
            Bson::Boolean(b) => Bson::Boolean(*b),
            Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => {
                Bson::Boolean(truthy(&Some(v.clone())))
            }
            _ => Bson::Boolean(true),
        },
        Target::String => match stringify(&v) {
            Some(s) => Bson::String(s),
            None => return Err(unsupported(&v, to)),
        },
        Target::Int | Target::Long => to_integer(&v, to)?,
        Target::Double | Target::Decimal => to_float(&v, to)?,
        Target::ObjectId => to_object_id(&v)?,
        Target::Date => to_date(&v)?,
    }))
}

fn to_integer(v: &Bson, to: Target) -> Result<Bson, QueryError> {
    let (lo, hi) = if to == Target::Int {
        (f64::from(i32::MIN), f64::from(i32::MAX))
    } else {
        (-9_223_372_036_854_775_808.0, 9_223_372_036_854_775_807.0)
    };
    let i = match v {
        Bson::Boolean(b) => i64::from(*b),
        Bson::Int32(i) => i64::from(*i),
        Bson::Int64(i) => *i,
        Bson::Double(d) => float_to_int(v, *d, lo, hi)?,
        Bson::Decimal128(d) => float_to_int(v, decimal_to_f64(*d), lo, hi)?,
        Bson::DateTime(d) if to == Target::Long => d.timestamp_millis(),
        Bson::String(s) => {
            let t = s.trim();
            if t.len() != s.len() || s.is_empty() {
                return Err(parse_fail(s));
            }
            s.parse::<i64>().map_err(|_| parse_fail(s))?
        }
        _ => return Err(unsupported(v, to)),
    };
    if to == Target::Int {
        Ok(Bson::Int32(i32::try_from(i).map_err(|_| overflow(v))?))
    } else {
        Ok(Bson::Int64(i))
    }
}

fn to_float(v: &Bson, to: Target) -> Result<Bson, QueryError> {
    let f = match v {
        Bson::Boolean(b) => f64::from(u8::from(*b)),
        Bson::Int32(i) => f64::from(*i),
        Bson::Int64(i) => *i as f64,
        Bson::Double(d) => *d,
        Bson::Decimal128(d) => {
            if to == Target::Decimal {
                return Ok(Bson::Decimal128(*d));
            }
            decimal_to_f64(*d)
        }
        Bson::DateTime(d) => d.timestamp_millis() as f64,
        Bson::String(s) if to == Target::Decimal => {
            return Decimal128::from_str(s)
                .map(Bson::Decimal128)
                .map_err(|_| parse_fail(s));
        }
        Bson::String(s) => parse_double(s)?,
        _ => return Err(unsupported(v, to)),
    };
    if to == Target::Double {
        return Ok(Bson::Double(f));
    }
    Ok(match v {
        // Integers convert exactly through their decimal text.
        Bson::Int32(i) => {
            Decimal128::from_str(&i.to_string()).map_or_else(|_| decimal(f), Bson::Decimal128)
        }
        Bson::Int64(i) => {
            Decimal128::from_str(&i.to_string()).map_or_else(|_| decimal(f), Bson::Decimal128)
        }
        _ => decimal(f),
    })
}

fn parse_double(s: &str) -> Result<f64, QueryError> {
    let lower = s.to_ascii_lowercase();
    Ok(match lower.as_str() {
        "nan" => f64::NAN,
        "inf" | "infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        _ if s.is_empty() || s.trim().len() != s.len() => {
            return Err(parse_fail(s));
        }
        _ => s.parse::<f64>().map_err(|_| parse_fail(s))?,
    })
}

fn to_object_id(v: &Bson) -> Result<Bson, QueryError> {
    match v {
        Bson::ObjectId(o) => Ok(Bson::ObjectId(*o)),
        Bson::String(s) => match ObjectId::parse_str(s) {
            Ok(o) if s.len() == 24 => Ok(Bson::ObjectId(o)),
            _ => Err(conversion_failure(format!(
                "Failed to parse objectId '{s}' in $convert with no onError value: Invalid string length for parsing to OID, expected 24 but found {}",
                s.len()
            ))),
        },
        _ => Err(unsupported(v, Target::ObjectId)),
    }
}

fn to_date(v: &Bson) -> Result<Bson, QueryError> {
    let ms = |d: f64| float_to_int(v, d, -9.2e18, 9.2e18).map(DateTime::from_millis);
    Ok(match v {
        Bson::DateTime(d) => Bson::DateTime(*d),
        Bson::Int64(i) => Bson::DateTime(DateTime::from_millis(*i)),
        Bson::Double(d) => Bson::DateTime(ms(*d)?),
        Bson::Decimal128(d) => Bson::DateTime(ms(decimal_to_f64(*d))?),
        Bson::ObjectId(o) => Bson::DateTime(o.timestamp()),
        Bson::Timestamp(t) => Bson::DateTime(DateTime::from_millis(i64::from(t.time) * 1000)),
        Bson::String(s) => match dates::parse_iso(s) {
            Some(ms) => Bson::DateTime(DateTime::from_millis(ms)),
            None => {
                return Err(conversion_failure(format!(
                    "Error parsing date string '{s}'; in $convert with no onError value"
                )));
            }
        },
        _ => return Err(unsupported(v, Target::Date)),
    })
}
