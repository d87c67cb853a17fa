//! Comparison, boolean and conditional expressions (`$eq`…`$cmp`, `$and`, `$or`, `$not`,
//! `$cond`, `$ifNull`, `$switch`): parsed into their own nodes so that operands are evaluated
//! lazily, left to right, stopping as soon as the answer is known.

use bson::raw::RawBsonRef;
use bson::{Bson, RawDocument};

use super::args::{exact_args, named, one_arg, pick};
use super::ops::Op;
use super::{CmpExpr, Expr, Val, bad, loc, nullish, unrecognized};
use crate::compare::{compare_values, decimal_to_f64};
use crate::error::QueryError;

/// Parses the operators of this family; `op` is one of them.
pub(super) fn parse(op: Op, arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let kind = match op {
        Op::Eq => CmpExpr::Eq,
        Op::Ne => CmpExpr::Ne,
        Op::Gt => CmpExpr::Gt,
        Op::Gte => CmpExpr::Gte,
        Op::Lt => CmpExpr::Lt,
        Op::Lte => CmpExpr::Lte,
        Op::Cmp => CmpExpr::Cmp,
        Op::And => return Ok(Expr::And(exact_args(op, arg, usize::MAX)?)),
        Op::Or => return Ok(Expr::Or(exact_args(op, arg, usize::MAX)?)),
        Op::Not => return Ok(Expr::Not(Box::new(one_arg(op, arg)?))),
        Op::Cond => return parse_cond(op, arg),
        Op::IfNull => return parse_if_null(op, arg),
        Op::Switch => return parse_switch(arg),
        _ => return Err(unrecognized(op.name())),
    };
    let mut a = exact_args(op, arg, 2)?.into_iter();
    match (a.next(), a.next()) {
        (Some(x), Some(y)) => Ok(Expr::Cmp(kind, Box::new(x), Box::new(y))),
        _ => Err(bad(format!("{} takes two arguments", op.name()))),
    }
}

/// `$cond`: `{if, then, else}` or `[if, then, else]`.
fn parse_cond(op: Op, arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let (i, t, e) = match arg {
        RawBsonRef::Document(_) => {
            let spec = named(op.name(), arg, &["if", "then", "else"], 17083)?;
            let need = |name: &str, code: i32| {
                pick(&spec, name)
                    .ok_or_else(|| loc(code, format!("Missing '{name}' parameter to $cond")))
                    .and_then(Expr::parse)
            };
            (
                need("if", 17080)?,
                need("then", 17081)?,
                need("else", 17082)?,
            )
        }
        _ => {
            let mut a = exact_args(op, arg, 3)?.into_iter();
            match (a.next(), a.next(), a.next()) {
                (Some(i), Some(t), Some(e)) => (i, t, e),
                _ => return Err(bad("$cond takes three arguments")),
            }
        }
    };
    Ok(Expr::Cond(Box::new((i, t, e))))
}

fn parse_if_null(op: Op, arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let a = exact_args(op, arg, usize::MAX)?;
    if a.len() < 2 {
        return Err(loc(1257300, "$ifNull needs at least two arguments"));
    }
    Ok(Expr::IfNull(a))
}

/// `$switch: {branches: [{case, then}, ...], default}`.
fn parse_switch(arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let spec = named("$switch", arg, &["branches", "default"], 40067)?;
    let branches = match pick(&spec, "branches") {
        Some(RawBsonRef::Array(a)) => {
            let mut branches = Vec::new();
            for b in a {
                branches.push(parse_branch(b.map_err(|e| bad(e.to_string()))?)?);
            }
            branches
        }
        _ => return Err(loc(40061, "$switch expected an array for 'branches'")),
    };
    if branches.is_empty() {
        return Err(loc(40068, "$switch requires at least one branch."));
    }
    let default = match pick(&spec, "default") {
        Some(d) => Some(Box::new(Expr::parse(d)?)),
        None => None,
    };
    Ok(Expr::Switch(branches, default))
}

fn parse_branch(b: RawBsonRef<'_>) -> Result<(Expr, Expr), QueryError> {
    let RawBsonRef::Document(b) = b else {
        return Err(loc(40061, "$switch expected each branch to be an object"));
    };
    let (case, then) = (b.get("case").ok().flatten(), b.get("then").ok().flatten());
    match (case, then) {
        (Some(c), Some(t)) => Ok((Expr::parse(c)?, Expr::parse(t)?)),
        (None, _) => Err(loc(
            40064,
            "$switch requires each branch have a 'case' expression",
        )),
        (_, None) => Err(loc(
            40065,
            "$switch requires each branch have a 'then' expression.",
        )),
    }
}

/// `$eq` … `$cmp` in BSON order, missing below everything.
pub(super) fn compare(
    kind: CmpExpr,
    a: &Expr,
    b: &Expr,
    doc: &RawDocument,
) -> Result<Val, QueryError> {
    let ord = cmp_vals(&a.eval(doc)?, &b.eval(doc)?);
    Ok(Some(match kind {
        CmpExpr::Eq => Bson::Boolean(ord.is_eq()),
        CmpExpr::Ne => Bson::Boolean(ord.is_ne()),
        CmpExpr::Gt => Bson::Boolean(ord.is_gt()),
        CmpExpr::Gte => Bson::Boolean(ord.is_ge()),
        CmpExpr::Lt => Bson::Boolean(ord.is_lt()),
        CmpExpr::Lte => Bson::Boolean(ord.is_le()),
        CmpExpr::Cmp => Bson::Int32(ord as i32),
    }))
}

/// `$and` (`all == true`) or `$or` (`all == false`), stopping at the first decisive operand.
pub(super) fn all_or_any(items: &[Expr], all: bool, doc: &RawDocument) -> Result<Val, QueryError> {
    for e in items {
        if e.truthy(doc)? != all {
            return Ok(Some(Bson::Boolean(!all)));
        }
    }
    Ok(Some(Bson::Boolean(all)))
}

pub(super) fn cond(parts: &(Expr, Expr, Expr), doc: &RawDocument) -> Result<Val, QueryError> {
    let (i, t, e) = parts;
    if i.truthy(doc)? {
        t.eval(doc)
    } else {
        e.eval(doc)
    }
}

pub(super) fn if_null(items: &[Expr], doc: &RawDocument) -> Result<Val, QueryError> {
    let (last, rest) = items.split_last().ok_or_else(|| bad("$ifNull"))?;
    for e in rest {
        let v = e.eval(doc)?;
        if !nullish(&v) {
            return Ok(v);
        }
    }
    last.eval(doc)
}

pub(super) fn switch(
    branches: &[(Expr, Expr)],
    default: Option<&Expr>,
    doc: &RawDocument,
) -> Result<Val, QueryError> {
    for (case, then) in branches {
        if case.truthy(doc)? {
            return then.eval(doc);
        }
    }
    match default {
        Some(d) => d.eval(doc),
        None => Err(loc(
            40066,
            "$switch could not find a matching branch for an input, and no default was specified.",
        )),
    }
}

pub(crate) fn truthy(v: &Val) -> bool {
    match v {
        None | Some(Bson::Null) | Some(Bson::Undefined) | Some(Bson::Boolean(false)) => false,
        Some(Bson::Int32(0)) | Some(Bson::Int64(0)) => false,
        Some(Bson::Double(d)) => *d != 0.0,
        Some(Bson::Decimal128(d)) => decimal_to_f64(*d) != 0.0,
        Some(_) => true,
    }
}

/// BSON order with missing below everything, as aggregation comparisons want.
pub(crate) fn cmp_vals(a: &Val, b: &Val) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => cmp_bson(x, y),
    }
}

pub(crate) fn cmp_bson(x: &Bson, y: &Bson) -> std::cmp::Ordering {
    match (
        bson::RawBson::try_from(x.clone()),
        bson::RawBson::try_from(y.clone()),
    ) {
        (Ok(x), Ok(y)) => compare_values(x.as_raw_bson_ref(), y.as_raw_bson_ref()),
        _ => std::cmp::Ordering::Equal,
    }
}
