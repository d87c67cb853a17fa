//! `$percentile` and `$median`, as accumulators (kept here, below the expressions, because
//! the expression form and the accumulators share it) (`$group`, `$bucket`, `$bucketAuto`,
//! `$setWindowFields`) and as expressions over an array.
//!
//! mongod 7.0 accepts only `method: "approximate"` (a t-digest). Mangrove answers every method
//! with the exact *discrete* percentile instead: the value at rank `ceil(p * n) - 1` of the
//! sorted numeric inputs (the last for `p = 1`). mongod's expression form already does exactly
//! this, and its t-digest gives the same answer while every input is its own centroid (small
//! groups), so results only differ from mongod's on large groups, where mongod's are
//! approximations anyway.
//!
//! Invariants: only numeric inputs are kept (as doubles, 8 bytes each, counted by the owning
//! stage); non-numeric inputs are ignored; no numeric input gives null (`$median`) or an array of
//! nulls (`$percentile`), as in mongod.

use bson::Bson;
use bson::raw::{RawBsonRef, RawDocument};

use super::Expr;
use crate::QueryError;

/// One parsed `$percentile`/`$median`.
pub(crate) struct Quantile {
    pub(crate) input: Expr,
    pub(crate) ps: Vec<f64>,
    pub(crate) median: bool,
}

/// Parses `{input, p, method}` (`{input, method}` for `$median`) as mongod's IDL does; `code` is
/// the operator's "must be an object" location (accumulator and expression differ).
pub(crate) fn parse(op: &str, arg: RawBsonRef<'_>, code: i32) -> Result<Quantile, QueryError> {
    let RawBsonRef::Document(spec) = arg else {
        return Err(QueryError::location(
            code,
            format!("specification must be an object; found {arg:?}"),
        ));
    };
    let median = op == "$median";
    let (mut input, mut p, mut method) = (None, None, false);
    for item in spec {
        let (k, v) = item.map_err(|e| QueryError::bad_value(e.to_string()))?;
        match (k.as_str(), v) {
            ("input", v) => input = Some(v),
            ("p", v) if !median => p = Some(v),
            ("method", RawBsonRef::String(m)) => {
                check_method(m)?;
                method = true;
            }
            ("method", other) => {
                return Err(QueryError::type_mismatch(format!(
                    "BSON field '{op}.method' is the wrong type '{}', expected type 'string'",
                    type_of(other)
                )));
            }
            (other, _) => {
                return Err(QueryError::location(
                    40415,
                    format!("BSON field '{op}.{other}' is an unknown field."),
                ));
            }
        }
    }
    let required = |f: &str| {
        QueryError::location(
            40414,
            format!("BSON field '{op}.{f}' is missing but a required field"),
        )
    };
    let input = input.ok_or_else(|| required("input"))?;
    let ps = match p {
        _ if median => vec![0.5],
        Some(p) => parse_p(p)?,
        None => return Err(required("p")),
    };
    if !method {
        return Err(required("method"));
    }
    Ok(Quantile {
        input: Expr::parse(input)?,
        ps,
        median,
    })
}

fn type_of(v: RawBsonRef<'_>) -> &'static str {
    crate::types::raw_type_name(v)
}

/// mongod 7.0 knows only "approximate" (see the module comment for what Mangrove computes).
fn check_method(m: &str) -> Result<(), QueryError> {
    if m == "approximate" {
        return Ok(());
    }
    Err(QueryError::bad_value(
        "Currently only 'approximate' can be used as percentile 'method'.",
    ))
}

/// `p`: a constant, non-empty array of numbers in [0, 1].
fn parse_p(v: RawBsonRef<'_>) -> Result<Vec<f64>, QueryError> {
    let msg = "The $percentile 'p' field must be an array of numbers from [0.0, 1.0], but found: ";
    let value = match Expr::parse(v)? {
        Expr::Const(b) => b,
        _ => {
            return Err(QueryError::location(
                7750300,
                format!(
                    "The $percentile 'p' field must be an array of constant values, but found value: {:?}.",
                    Bson::try_from(v).unwrap_or(Bson::Null)
                ),
            ));
        }
    };
    let items = match value {
        Bson::Array(items) if !items.is_empty() => items,
        other => return Err(QueryError::location(7750301, format!("{msg}{other}"))),
    };
    let mut ps = Vec::with_capacity(items.len());
    for item in items {
        let Some(p) = number(&item) else {
            return Err(QueryError::location(7750302, format!("{msg}{item}")));
        };
        if !(0.0..=1.0).contains(&p) {
            return Err(QueryError::location(7750303, format!("{msg}{p}")));
        }
        ps.push(p);
    }
    Ok(ps)
}

pub(crate) fn number(v: &Bson) -> Option<f64> {
    match v {
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(d) => Some(*d),
        Bson::Decimal128(d) => Some(crate::compare::decimal_to_f64(*d)),
        _ => None,
    }
}

/// The numeric input of `doc`, if any (what the accumulator keeps).
pub(crate) fn sample(q: &Quantile, doc: &RawDocument) -> Result<Option<f64>, QueryError> {
    Ok(q.input.eval(doc)?.as_ref().and_then(number))
}

/// The result over `samples` (sorted in place).
pub(crate) fn result(ps: &[f64], median: bool, samples: &mut [f64]) -> Bson {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    let at = |p: f64| {
        if n == 0 {
            return Bson::Null;
        }
        let rank = if p >= 1.0 {
            n - 1
        } else {
            ((p * n as f64).ceil() as usize)
                .saturating_sub(1)
                .min(n - 1)
        };
        Bson::Double(samples[rank])
    };
    if median {
        return at(0.5);
    }
    Bson::Array(ps.iter().map(|&p| at(p)).collect())
}

/// The expression form: a number stands for itself, an array for its numeric elements.
pub(crate) fn eval_expr(ps: &[f64], median: bool, input: Option<&Bson>) -> Bson {
    let mut samples: Vec<f64> = match input {
        Some(Bson::Array(items)) => items.iter().filter_map(number).collect(),
        Some(v) => number(v).into_iter().collect(),
        None => Vec::new(),
    };
    result(ps, median, &mut samples)
}
