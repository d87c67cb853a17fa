//! Arithmetic operators (`$add` … `$log10`, `$round`/`$trunc`) and the list statistics
//! (`$sum`, `$avg`, `$min`, `$max`, `$stdDevPop`, `$stdDevSamp`) with MongoDB's numeric
//! promotion: int op int gives int (long on overflow), long overflow falls back to double,
//! and double or decimal is contagious.

use std::str::FromStr;

use bson::{Bson, DateTime, Decimal128};

use super::ops::Op;
use super::{Val, bad, cmp_bson, loc, nullish, tname, type_name, unrecognized};
use crate::compare::decimal_to_f64;
use crate::error::QueryError;

/// Applies an arithmetic operator to its argument values.
pub(super) fn apply(op: Op, vals: Vec<Val>) -> Result<Val, QueryError> {
    let arg = |i: usize| vals.get(i).cloned().flatten();
    match op {
        Op::Add => add(vals),
        Op::Subtract => subtract(arg(0), arg(1)),
        Op::Multiply => multiply(vals),
        Op::Divide => divide(arg(0), arg(1)),
        Op::Mod => modulo(arg(0), arg(1)),
        Op::Abs | Op::Ceil | Op::Floor | Op::Sqrt | Op::Exp | Op::Ln | Op::Log10 => {
            unary_math(op, arg(0))
        }
        Op::Log => log(arg(0), arg(1)),
        Op::Pow => pow(arg(0), arg(1)),
        Op::Round | Op::Trunc => round(op, arg(0), vals.get(1).cloned()),
        _ => list_stat(op, vals),
    }
}

/// A numeric value by BSON type; decimals are carried as their nearest double (see the module
/// comment).
#[derive(Clone, Copy, Debug)]
pub(super) enum N {
    I(i32),
    L(i64),
    D(f64),
    M(f64),
}

impl N {
    pub(super) fn of(v: &Bson) -> Option<N> {
        match v {
            Bson::Int32(i) => Some(N::I(*i)),
            Bson::Int64(i) => Some(N::L(*i)),
            Bson::Double(d) => Some(N::D(*d)),
            Bson::Decimal128(d) => Some(N::M(decimal_to_f64(*d))),
            _ => None,
        }
    }

    fn f(self) -> f64 {
        match self {
            N::I(i) => f64::from(i),
            N::L(i) => i as f64,
            N::D(d) | N::M(d) => d,
        }
    }

    fn int(self) -> Option<i64> {
        match self {
            N::I(i) => Some(i64::from(i)),
            N::L(i) => Some(i),
            _ => None,
        }
    }

    fn bson(self) -> Bson {
        match self {
            N::I(i) => Bson::Int32(i),
            N::L(i) => Bson::Int64(i),
            N::D(d) => Bson::Double(d),
            N::M(d) => decimal(d),
        }
    }

    fn is_zero(self) -> bool {
        self.f() == 0.0
    }
}

pub(crate) fn decimal(d: f64) -> Bson {
    let text = if d.is_nan() {
        "NaN".to_string()
    } else if d.is_infinite() {
        if d > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
    } else {
        format!("{d:e}")
    };
    Decimal128::from_str(&text).map_or(Bson::Double(d), Bson::Decimal128)
}

fn narrow(i: i64) -> N {
    i32::try_from(i).map_or(N::L(i), N::I)
}

/// Applies a binary operation with MongoDB's promotion: int op int gives int (or long when it
/// overflows int), long overflow falls back to double, and double or decimal is contagious.
fn arith(a: N, b: N, int_op: fn(i64, i64) -> Option<i64>, f_op: fn(f64, f64) -> f64) -> N {
    match (a, b) {
        (N::M(_), _) | (_, N::M(_)) => N::M(f_op(a.f(), b.f())),
        (N::D(_), _) | (_, N::D(_)) => N::D(f_op(a.f(), b.f())),
        (N::I(x), N::I(y)) => match int_op(i64::from(x), i64::from(y)) {
            Some(r) => narrow(r),
            None => N::D(f_op(a.f(), b.f())),
        },
        _ => match (a.int(), b.int()) {
            (Some(x), Some(y)) => match int_op(x, y) {
                Some(r) => N::L(r),
                None => N::D(f_op(a.f(), b.f())),
            },
            _ => N::D(f_op(a.f(), b.f())),
        },
    }
}

pub(super) fn exact_int(v: &Bson) -> Option<i64> {
    match N::of(v)? {
        N::I(i) => Some(i64::from(i)),
        N::L(i) => Some(i),
        N::D(d) | N::M(d) if d.fract() == 0.0 && d.abs() < 9.2e18 => Some(d as i64),
        _ => None,
    }
}

fn num_arg(op: &str, v: &Val, code: i32) -> Result<Option<N>, QueryError> {
    if nullish(v) {
        return Ok(None);
    }
    match v.as_ref().and_then(N::of) {
        Some(n) => Ok(Some(n)),
        None => Err(loc(
            code,
            format!("{op} only supports numeric types, not {}", tname(v)),
        )),
    }
}

fn add(vals: Vec<Val>) -> Result<Val, QueryError> {
    let mut total = N::I(0);
    let mut date: Option<i64> = None;
    let mut null = false;
    for v in &vals {
        match v {
            None | Some(Bson::Null) | Some(Bson::Undefined) => null = true,
            Some(Bson::DateTime(d)) => {
                if date.is_some() {
                    return Err(loc(16612, "only one date allowed in an $add expression"));
                }
                date = Some(d.timestamp_millis());
            }
            Some(other) => match N::of(other) {
                Some(n) => total = arith(total, n, i64::checked_add, |a, b| a + b),
                None => {
                    return Err(loc(
                        16554,
                        format!(
                            "$add only supports numeric or date types, not {}",
                            type_name(other)
                        ),
                    ));
                }
            },
        }
    }
    if null {
        return Ok(Some(Bson::Null));
    }
    Ok(Some(match date {
        Some(ms) => {
            let delta = match total {
                N::I(_) | N::L(_) => total.int().unwrap_or(0),
                _ => total.f().round() as i64,
            };
            Bson::DateTime(DateTime::from_millis(ms.saturating_add(delta)))
        }
        None => total.bson(),
    }))
}

fn subtract(a: Val, b: Val) -> Result<Val, QueryError> {
    if nullish(&a) || nullish(&b) {
        return Ok(Some(Bson::Null));
    }
    let (Some(x), Some(y)) = (a, b) else {
        return Ok(Some(Bson::Null));
    };
    Ok(Some(match (&x, &y) {
        (Bson::DateTime(p), Bson::DateTime(q)) => {
            Bson::Int64(p.timestamp_millis().saturating_sub(q.timestamp_millis()))
        }
        (Bson::DateTime(p), other) if N::of(other).is_some() => {
            let n = N::of(other).unwrap_or(N::I(0));
            let delta = n.int().unwrap_or_else(|| n.f().round() as i64);
            Bson::DateTime(DateTime::from_millis(
                p.timestamp_millis().saturating_sub(delta),
            ))
        }
        _ => match (N::of(&x), N::of(&y)) {
            (Some(p), Some(q)) => arith(p, q, i64::checked_sub, |a, b| a - b).bson(),
            _ => {
                return Err(loc(
                    16556,
                    format!("can't $subtract {} from {}", type_name(&y), type_name(&x)),
                ));
            }
        },
    }))
}

fn multiply(vals: Vec<Val>) -> Result<Val, QueryError> {
    let mut total = N::I(1);
    let mut null = false;
    for v in &vals {
        match num_arg("$multiply", v, 16555)? {
            Some(n) => total = arith(total, n, i64::checked_mul, |a, b| a * b),
            None => null = true,
        }
    }
    Ok(Some(if null { Bson::Null } else { total.bson() }))
}

fn divide(a: Val, b: Val) -> Result<Val, QueryError> {
    if nullish(&a) || nullish(&b) {
        return Ok(Some(Bson::Null));
    }
    let (Some(x), Some(y)) = (a.as_ref().and_then(N::of), b.as_ref().and_then(N::of)) else {
        return Err(loc(
            16609,
            format!(
                "$divide only supports numeric types, not {} and {}",
                tname(&a),
                tname(&b)
            ),
        ));
    };
    if y.is_zero() {
        return Err(bad("can't $divide by zero"));
    }
    Ok(Some(match (x, y) {
        (N::M(_), _) | (_, N::M(_)) => decimal(x.f() / y.f()),
        _ => Bson::Double(x.f() / y.f()),
    }))
}

fn modulo(a: Val, b: Val) -> Result<Val, QueryError> {
    if nullish(&a) || nullish(&b) {
        return Ok(Some(Bson::Null));
    }
    let (Some(x), Some(y)) = (a.as_ref().and_then(N::of), b.as_ref().and_then(N::of)) else {
        return Err(loc(
            16611,
            format!(
                "$mod only supports numeric types, not {} and {}",
                tname(&a),
                tname(&b)
            ),
        ));
    };
    if y.is_zero() {
        return Err(loc(16610, "can't $mod by zero"));
    }
    // i64::MIN % -1 overflows in Rust; its remainder is 0.
    Ok(Some(
        arith(
            x,
            y,
            |p, q| Some(p.checked_rem(q).unwrap_or(0)),
            |p, q| p % q,
        )
        .bson(),
    ))
}

fn unary_math(op: Op, v: Val) -> Result<Val, QueryError> {
    let Some(n) = num_arg(op.name(), &v, 28765)? else {
        return Ok(Some(Bson::Null));
    };
    let as_double = |f: f64| match n {
        N::M(_) => decimal(f),
        _ => Bson::Double(f),
    };
    Ok(Some(match op {
        Op::Abs => match n {
            N::I(i) => i
                .checked_abs()
                .map_or(Bson::Int64(-i64::from(i)), Bson::Int32),
            N::L(i) => match i.checked_abs() {
                Some(a) => Bson::Int64(a),
                None => return Err(loc(28680, "can't take $abs of long long min")),
            },
            N::D(d) => Bson::Double(d.abs()),
            N::M(d) => decimal(d.abs()),
        },
        Op::Ceil | Op::Floor => match n {
            N::I(_) | N::L(_) => n.bson(),
            _ => as_double(if op == Op::Ceil {
                n.f().ceil()
            } else {
                n.f().floor()
            }),
        },
        Op::Sqrt => {
            if n.f() < 0.0 {
                return Err(loc(
                    28714,
                    "$sqrt's argument must be greater than or equal to 0",
                ));
            }
            as_double(n.f().sqrt())
        }
        Op::Exp => as_double(n.f().exp()),
        Op::Ln | Op::Log10 => {
            if n.f() <= 0.0 && !n.f().is_nan() {
                let code = if op == Op::Ln { 28766 } else { 28761 };
                return Err(loc(
                    code,
                    format!(
                        "{}'s argument must be a positive number, but is {}",
                        op.name(),
                        n.f()
                    ),
                ));
            }
            as_double(if op == Op::Ln {
                n.f().ln()
            } else {
                n.f().log10()
            })
        }
        _ => return Err(unrecognized(op.name())),
    }))
}

fn log(a: Val, b: Val) -> Result<Val, QueryError> {
    if nullish(&a) || nullish(&b) {
        return Ok(Some(Bson::Null));
    }
    let x = a.as_ref().and_then(N::of).ok_or_else(|| {
        loc(
            28756,
            format!("$log's argument must be numeric, not {}", tname(&a)),
        )
    })?;
    let base = b.as_ref().and_then(N::of).ok_or_else(|| {
        loc(
            28757,
            format!("$log's base must be numeric, not {}", tname(&b)),
        )
    })?;
    if x.f() <= 0.0 {
        return Err(loc(
            28758,
            format!(
                "$log's argument must be a positive number, but is {}",
                x.f()
            ),
        ));
    }
    if base.f() <= 0.0 || base.f() == 1.0 {
        return Err(loc(
            28759,
            format!(
                "$log's base must be a positive number not equal to 1, but is {}",
                base.f()
            ),
        ));
    }
    let r = x.f().ln() / base.f().ln();
    Ok(Some(match (x, base) {
        (N::M(_), _) | (_, N::M(_)) => decimal(r),
        _ => Bson::Double(r),
    }))
}

fn pow(a: Val, b: Val) -> Result<Val, QueryError> {
    if nullish(&a) || nullish(&b) {
        return Ok(Some(Bson::Null));
    }
    let base = a.as_ref().and_then(N::of).ok_or_else(|| {
        loc(
            28762,
            format!("$pow's base must be numeric, not {}", tname(&a)),
        )
    })?;
    let exp = b.as_ref().and_then(N::of).ok_or_else(|| {
        loc(
            28763,
            format!("$pow's exponent must be numeric, not {}", tname(&b)),
        )
    })?;
    if let (Some(x), Some(e)) = (base.int(), exp.int()) {
        if x == 0 && e < 0 {
            return Err(loc(
                28764,
                "$pow cannot take a base of 0 and a negative exponent",
            ));
        }
        let both_int = matches!((base, exp), (N::I(_), N::I(_)));
        if e >= 0 {
            if let Some(r) = u32::try_from(e).ok().and_then(|e| x.checked_pow(e)) {
                return Ok(Some(if both_int {
                    narrow(r).bson()
                } else {
                    Bson::Int64(r)
                }));
            }
        } else if x == 1 || x == -1 {
            let r = if x == -1 && e % 2 != 0 { -1 } else { 1 };
            return Ok(Some(if both_int {
                Bson::Int32(r)
            } else {
                Bson::Int64(i64::from(r))
            }));
        }
        return Ok(Some(Bson::Double((x as f64).powf(e as f64))));
    }
    let r = base.f().powf(exp.f());
    Ok(Some(match (base, exp) {
        (N::M(_), _) | (_, N::M(_)) => decimal(r),
        _ => Bson::Double(r),
    }))
}

/// `$round` (half to even, as mongod) and `$trunc` to `place` decimal digits.
fn round(op: Op, v: Val, place: Option<Val>) -> Result<Val, QueryError> {
    let place = match &place {
        None => 0,
        Some(p) if nullish(p) => return Ok(Some(Bson::Null)),
        Some(p) => match p.as_ref().and_then(exact_int) {
            Some(p) if (-20..=100).contains(&p) => p,
            _ => {
                return Err(loc(
                    51155,
                    format!(
                        "{} requires \"place\" argument to be an integer between -20 and 100",
                        op.name()
                    ),
                ));
            }
        },
    };
    let Some(n) = num_arg(op.name(), &v, 51081)? else {
        return Ok(Some(Bson::Null));
    };
    let is_round = op == Op::Round;
    Ok(Some(match n {
        N::I(_) | N::L(_) if place >= 0 => n.bson(),
        N::I(_) | N::L(_) => {
            let r = round_int(n.int().unwrap_or(0), place, is_round);
            match n {
                N::I(_) => narrow(r).bson(),
                _ => Bson::Int64(r),
            }
        }
        N::D(d) => Bson::Double(round_float(d, place, is_round)),
        N::M(d) => decimal(round_float(d, place, is_round)),
    }))
}

/// An integer rounded (half to even) or truncated to a negative `place`: to tens, hundreds…
fn round_int(x: i64, place: i64, is_round: bool) -> i64 {
    match 10i64.checked_pow((-place) as u32) {
        None => 0,
        Some(scale) => {
            let q = x / scale;
            let rem = x % scale;
            let q = if is_round {
                let twice = rem.unsigned_abs().saturating_mul(2);
                let half = scale.unsigned_abs();
                if twice > half || (twice == half && q % 2 != 0) {
                    q + x.signum()
                } else {
                    q
                }
            } else {
                q
            };
            q.saturating_mul(scale)
        }
    }
}

/// A double rounded (half to even) or truncated to `place` decimal digits.
fn round_float(x: f64, place: i64, is_round: bool) -> f64 {
    if !x.is_finite() {
        return x;
    }
    let r = |y: f64| {
        if is_round {
            y.round_ties_even()
        } else {
            y.trunc()
        }
    };
    if place >= 0 {
        let scale = 10f64.powi(place as i32);
        let scaled = x * scale;
        if !scaled.is_finite() {
            return x;
        }
        r(scaled) / scale
    } else {
        let scale = 10f64.powi((-place) as i32);
        r(x / scale) * scale
    }
}

/// `$sum`, `$avg`, `$min`, `$max` and the standard deviations as expressions: one array
/// argument means its elements; several arguments mean themselves.
fn list_stat(op: Op, vals: Vec<Val>) -> Result<Val, QueryError> {
    let items: Vec<Bson> = match vals.as_slice() {
        [Some(Bson::Array(a))] => a.clone(),
        _ => vals.into_iter().flatten().collect(),
    };
    match op {
        Op::Min | Op::Max => {
            let mut best: Option<Bson> = None;
            for v in items {
                if matches!(v, Bson::Null | Bson::Undefined) {
                    continue;
                }
                let better = match &best {
                    None => true,
                    Some(b) => {
                        let ord = cmp_bson(&v, b);
                        if op == Op::Min {
                            ord.is_lt()
                        } else {
                            ord.is_gt()
                        }
                    }
                };
                if better {
                    best = Some(v);
                }
            }
            Ok(Some(best.unwrap_or(Bson::Null)))
        }
        _ => {
            let nums: Vec<N> = items.iter().filter_map(N::of).collect();
            match op {
                Op::Sum => Ok(Some(
                    nums.iter()
                        .fold(N::I(0), |t, n| arith(t, *n, i64::checked_add, |a, b| a + b))
                        .bson(),
                )),
                Op::Avg => {
                    if nums.is_empty() {
                        return Ok(Some(Bson::Null));
                    }
                    let mean = nums.iter().map(|n| n.f()).sum::<f64>() / nums.len() as f64;
                    Ok(Some(if nums.iter().any(|n| matches!(n, N::M(_))) {
                        decimal(mean)
                    } else {
                        Bson::Double(mean)
                    }))
                }
                _ => Ok(Some(std_dev(
                    nums.iter().map(|n| n.f()),
                    op == Op::StdDevSamp,
                ))),
            }
        }
    }
}

pub(crate) fn std_dev(values: impl Iterator<Item = f64>, sample: bool) -> Bson {
    // Welford's method keeps the running variance stable for large, close values.
    let (mut n, mut mean, mut m2) = (0u64, 0.0f64, 0.0f64);
    for x in values {
        n += 1;
        let delta = x - mean;
        mean += delta / n as f64;
        m2 += delta * (x - mean);
    }
    let denom = if sample { n.saturating_sub(1) } else { n };
    if denom == 0 {
        return Bson::Null;
    }
    Bson::Double((m2 / denom as f64).sqrt())
}

/// `$sum`'s running total: numbers add with promotion; anything else is ignored.
pub(crate) fn sum_values(total: &Bson, v: &Bson) -> Bson {
    match (N::of(total), N::of(v)) {
        (Some(t), Some(n)) => arith(t, n, i64::checked_add, |a, b| a + b).bson(),
        _ => total.clone(),
    }
}
