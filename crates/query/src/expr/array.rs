//! Array operators: `$size`, `$arrayElemAt`, `$first`/`$last`, `$in`, `$concatArrays`,
//! `$slice`, `$firstN`/`$lastN`/`$minN`/`$maxN`, `$reverseArray`, `$isArray`, `$range` and
//! `$indexOfArray`. Operators that build large arrays reserve their size first (`memory`).

use bson::Bson;
use bson::raw::RawBsonRef;

use super::args::{named, pick};
use super::arith::{N, exact_int};
use super::ops::Op;
use super::{Expr, Val, cmp_bson, display, loc, nullish, tname};
use crate::error::QueryError;
use crate::memory;

/// Applies an array operator to its argument values.
pub(super) fn apply(op: Op, vals: Vec<Val>) -> Result<Val, QueryError> {
    match op {
        Op::Size => size(&vals[0]),
        Op::ArrayElemAt => elem_at(&vals),
        Op::First | Op::Last => first_or_last(op, &vals[0]),
        Op::In => is_in(&vals),
        Op::ConcatArrays => concat_arrays(&vals),
        Op::Slice => slice(&vals),
        Op::FirstN | Op::LastN | Op::MinN | Op::MaxN => first_n(op, &vals),
        Op::Median | Op::Percentile => {
            let ps: Vec<f64> = match &vals[1] {
                Some(Bson::Array(ps)) => ps.iter().filter_map(super::quantile::number).collect(),
                _ => Vec::new(),
            };
            let median = op == Op::Median;
            Ok(Some(super::quantile::eval_expr(
                &ps,
                median,
                vals[0].as_ref(),
            )))
        }
        Op::ReverseArray => {
            match array_arg(
                "$reverseArray",
                &vals[0],
                34435,
                " must be an array, but was of type: ",
            )? {
                Some(a) => {
                    memory::reserve_concat_arrays(&[a])?;
                    Ok(Some(Bson::Array(a.iter().rev().cloned().collect())))
                }
                None => Ok(Some(Bson::Null)),
            }
        }
        Op::IsArray => Ok(Some(Bson::Boolean(matches!(vals[0], Some(Bson::Array(_)))))),
        Op::Range => range(&vals),
        _ => index_of_array(&vals),
    }
}

/// `$firstN`/`$lastN`/`$minN`/`$maxN: {input, n}`.
pub(super) fn parse_n(op: Op, arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let name = op.name();
    let spec = named(name, arg, &["input", "n"], 5787901)?;
    let need = |field: &str| {
        pick(&spec, field)
            .ok_or_else(|| loc(5787907, format!("{name} requires an '{field}' field")))
            .and_then(Expr::parse)
    };
    Ok(Expr::Op(op, vec![need("input")?, need("n")?]))
}

/// `$percentile`/`$median` as expressions: `[input, p]` (p constant, checked here).
pub(super) fn parse_quantile(op: Op, arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let q = super::quantile::parse(op.name(), arg, 7436200)?;
    let ps = q.ps.into_iter().map(Bson::Double).collect();
    Ok(Expr::Op(op, vec![q.input, Expr::Const(Bson::Array(ps))]))
}

pub(super) fn array_arg<'a>(
    op: &str,
    v: &'a Val,
    code: i32,
    what: &str,
) -> Result<Option<&'a Vec<Bson>>, QueryError> {
    match v {
        v if nullish(v) => Ok(None),
        Some(Bson::Array(a)) => Ok(Some(a)),
        other => Err(loc(code, format!("{op}{what}{}", tname(other)))),
    }
}

pub(super) fn contains(items: &[Bson], v: &Bson) -> bool {
    items.iter().any(|i| cmp_bson(i, v).is_eq())
}

pub(super) fn dedup(items: Vec<Bson>) -> Vec<Bson> {
    let mut out: Vec<Bson> = Vec::new();
    for i in items {
        if !contains(&out, &i) {
            out.push(i);
        }
    }
    out
}

fn slice(vals: &[Val]) -> Result<Val, QueryError> {
    if vals.iter().any(nullish) {
        return Ok(Some(Bson::Null));
    }
    let Some(Bson::Array(items)) = &vals[0] else {
        return Err(loc(
            28724,
            format!(
                "First argument to $slice must be an array, but is of type: {}",
                tname(&vals[0])
            ),
        ));
    };
    let len = items.len() as i64;
    let n = vals[1].as_ref().and_then(exact_int).ok_or_else(|| {
        loc(
            28725,
            format!(
                "Second argument to $slice must be a numeric value, but is of type: {}",
                tname(&vals[1])
            ),
        )
    })?;
    let (start, count) = if vals.len() == 2 {
        if n >= 0 {
            (0, n)
        } else {
            ((len + n).max(0), len)
        }
    } else {
        let count = vals[2].as_ref().and_then(exact_int).ok_or_else(|| {
            loc(
                28727,
                format!(
                    "Third argument to $slice must be numeric, but is of type: {}",
                    tname(&vals[2])
                ),
            )
        })?;
        if count <= 0 {
            return Err(loc(
                28729,
                format!("Third argument to $slice must be positive: {count}"),
            ));
        }
        let start = if n >= 0 { n.min(len) } else { (len + n).max(0) };
        (start, count)
    };
    Ok(Some(Bson::Array(
        items
            .iter()
            .skip(start as usize)
            .take(count.max(0) as usize)
            .cloned()
            .collect(),
    )))
}

fn range(vals: &[Val]) -> Result<Val, QueryError> {
    let get = |i: usize, what: &str, code: i32| -> Result<i64, QueryError> {
        let v = &vals[i];
        match v.as_ref().and_then(exact_int) {
            Some(n) if i32::try_from(n).is_ok() => Ok(n),
            Some(_) => Err(loc(
                code + 1,
                format!(
                    "$range requires a {what} that can be represented as a 32-bit integer, found value: {}",
                    v.as_ref().map_or(String::new(), display)
                ),
            )),
            None => Err(loc(
                code,
                format!(
                    "$range requires a numeric {what}, found value of type: {}",
                    tname(v)
                ),
            )),
        }
    };
    let start = get(0, "starting value", 34443)?;
    let end = get(1, "ending value", 34445)?;
    let step = if vals.len() > 2 {
        get(2, "step value", 34447)?
    } else {
        1
    };
    if step == 0 {
        return Err(loc(34449, "$range requires a non-zero step value"));
    }
    let len = memory::range_len(start, end, step);
    memory::reserve_range(len)?;
    let mut out = Vec::with_capacity(len);
    let mut i = start;
    while (step > 0 && i < end) || (step < 0 && i > end) {
        out.push(Bson::Int32(i as i32));
        i += step;
    }
    Ok(Some(Bson::Array(out)))
}

fn size(v: &Val) -> Result<Val, QueryError> {
    match v {
        Some(Bson::Array(a)) => Ok(Some(Bson::Int32(
            i32::try_from(a.len()).unwrap_or(i32::MAX),
        ))),
        other => Err(loc(
            17124,
            format!(
                "The argument to $size must be an array. Type of argument is: {}",
                tname(other)
            ),
        )),
    }
}

fn elem_at(vals: &[Val]) -> Result<Val, QueryError> {
    if nullish(&vals[0]) || nullish(&vals[1]) {
        return Ok(Some(Bson::Null));
    }
    let Some(Bson::Array(items)) = &vals[0] else {
        return Err(loc(
            28689,
            format!(
                "$arrayElemAt's first argument must be an array, but is {}",
                tname(&vals[0])
            ),
        ));
    };
    let Some(idx) = vals[1].as_ref().and_then(exact_int) else {
        return Err(loc(
            if vals[1].as_ref().and_then(N::of).is_some() {
                28691
            } else {
                28690
            },
            format!(
                "$arrayElemAt's second argument must be a numeric value, but is {}",
                tname(&vals[1])
            ),
        ));
    };
    let len = items.len() as i64;
    let i = if idx < 0 { len + idx } else { idx };
    Ok(if i < 0 || i >= len {
        None
    } else {
        Some(items[i as usize].clone())
    })
}

fn first_or_last(op: Op, v: &Val) -> Result<Val, QueryError> {
    match v {
        None => Ok(None),
        Some(Bson::Null) | Some(Bson::Undefined) => Ok(Some(Bson::Null)),
        Some(Bson::Array(items)) => Ok(if op == Op::First {
            items.first().cloned()
        } else {
            items.last().cloned()
        }),
        other => Err(loc(
            28689,
            format!(
                "{}'s argument must be an array, but is {}",
                op.name(),
                tname(other)
            ),
        )),
    }
}

fn is_in(vals: &[Val]) -> Result<Val, QueryError> {
    match &vals[1] {
        Some(Bson::Array(items)) => {
            let needle = vals[0].clone().unwrap_or(Bson::Null);
            Ok(Some(Bson::Boolean(
                vals[0].is_some() && contains(items, &needle),
            )))
        }
        other => Err(loc(
            40081,
            format!(
                "$in requires an array as a second argument, found: {}",
                tname(other)
            ),
        )),
    }
}

fn concat_arrays(vals: &[Val]) -> Result<Val, QueryError> {
    let mut arrays = Vec::with_capacity(vals.len());
    for v in vals {
        match array_arg("$concatArrays", v, 28664, " only supports arrays, not ")? {
            Some(a) => arrays.push(a),
            None => return Ok(Some(Bson::Null)),
        }
    }
    memory::reserve_concat_arrays(&arrays)?;
    let mut out = Vec::with_capacity(arrays.iter().map(|a| a.len()).sum());
    for a in arrays {
        out.extend(a.iter().cloned());
    }
    Ok(Some(Bson::Array(out)))
}

fn first_n(op: Op, vals: &[Val]) -> Result<Val, QueryError> {
    let n = match vals[1].as_ref().and_then(exact_int) {
        Some(n) if n > 0 => n as usize,
        _ => {
            return Err(loc(
                5787908,
                format!(
                    "Value for 'n' must be a positive integral number; found {}",
                    vals[1].as_ref().map_or("missing".to_string(), display)
                ),
            ));
        }
    };
    let Some(items) = array_arg(
        op.name(),
        &vals[0],
        5788200,
        " requires an array 'input', found: ",
    )?
    else {
        return Ok(Some(Bson::Null));
    };
    let mut items = items.clone();
    match op {
        Op::FirstN => items.truncate(n),
        Op::LastN => {
            let skip = items.len().saturating_sub(n);
            items.drain(..skip);
        }
        _ => {
            items.retain(|v| !matches!(v, Bson::Null | Bson::Undefined));
            // A stable sort keeps equal values in input order, as the accumulators do.
            items.sort_by(|a, b| {
                let ord = cmp_bson(a, b);
                if op == Op::MinN { ord } else { ord.reverse() }
            });
            items.truncate(n);
        }
    }
    Ok(Some(Bson::Array(items)))
}

fn index_of_array(vals: &[Val]) -> Result<Val, QueryError> {
    let Some(items) = array_arg(
        "$indexOfArray",
        &vals[0],
        40090,
        " requires an array as a first argument, found: ",
    )?
    else {
        return Ok(Some(Bson::Null));
    };
    let bound = |i: usize| -> Result<Option<usize>, QueryError> {
        match vals.get(i) {
            None => Ok(None),
            Some(v) => match v.as_ref().and_then(exact_int) {
                Some(n) if n >= 0 => Ok(Some(n as usize)),
                _ => Err(loc(
                    40097,
                    format!(
                        "$indexOfArray requires a nonnegative integral index, found: {}",
                        tname(v)
                    ),
                )),
            },
        }
    };
    let start = bound(2)?.unwrap_or(0);
    let end = bound(3)?.unwrap_or(items.len()).min(items.len());
    let needle = vals[1].clone().unwrap_or(Bson::Null);
    let found = (start..end).find(|&i| cmp_bson(&items[i], &needle).is_eq());
    Ok(Some(Bson::Int32(found.map_or(-1, |i| i as i32))))
}
