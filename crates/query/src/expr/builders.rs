//! The expressions that build a value piece by piece: object and array literals, an operator's
//! operands, `$map`, `$filter`, `$reduce` and `$let`.
//!
//! Invariant: every piece they keep while computing the next (an operand, an element, the
//! accumulator, a bound variable) is charged to a `memory::Held` guard, so what one evaluation
//! holds stays within `Limits::expression_bytes` (146 past it) and no value is nested deeper
//! than `MAX_VALUE_DEPTH` (15). The guards drop when the value is returned: from then on it is
//! the caller's to charge if it keeps it.

use bson::{Bson, Document, RawDocument};

use super::arith::exact_int;
use super::ops::Op;
use super::{Expr, Val, apply, display, loc, nullish, tname, with_vars};
use crate::error::QueryError;
use crate::memory::Held;

/// `{field: expression, ...}`: fields whose value is missing are left out.
pub(super) fn object(fields: &[(String, Expr)], doc: &RawDocument) -> Result<Val, QueryError> {
    let mut held = Held::new("an object expression");
    let mut out = Document::new();
    for (k, e) in fields {
        if let Some(v) = e.eval(doc)? {
            held.keep(&v)?;
            out.insert(k.clone(), v);
        }
    }
    Ok(Some(Bson::Document(out)))
}

/// `[expression, ...]`: a missing element becomes null.
pub(super) fn array(items: &[Expr], doc: &RawDocument) -> Result<Val, QueryError> {
    let mut held = Held::new("an array expression");
    let mut out = Vec::with_capacity(items.len());
    for e in items {
        let v = e.eval(doc)?.unwrap_or(Bson::Null);
        held.keep(&v)?;
        out.push(v);
    }
    Ok(Some(Bson::Array(out)))
}

/// An operator over its evaluated operands (missing ones stay `None`).
pub(super) fn operator(op: Op, args: &[Expr], doc: &RawDocument) -> Result<Val, QueryError> {
    let mut held = Held::new(op.name());
    let mut vals = Vec::with_capacity(args.len());
    for a in args {
        let v = a.eval(doc)?;
        held.keep_opt(&v)?;
        vals.push(v);
    }
    apply(op, vals)
}

pub(super) fn map(
    input: &Expr,
    var: &str,
    each: &Expr,
    doc: &RawDocument,
) -> Result<Val, QueryError> {
    let mut held = Held::new("$map");
    let items = match input.eval(doc)? {
        v if nullish(&v) => return Ok(Some(Bson::Null)),
        Some(Bson::Array(items)) => items,
        other => {
            return Err(loc(
                16883,
                format!("input to $map must be an array not {}", tname(&other)),
            ));
        }
    };
    held.keep(&Bson::Array(Vec::new()))?;
    for item in &items {
        held.keep(item)?;
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let v = with_vars(vec![(var.to_string(), item)], || each.eval(doc))?;
        let v = v.unwrap_or(Bson::Null);
        held.keep(&v)?;
        out.push(v);
    }
    Ok(Some(Bson::Array(out)))
}

/// `$filter`'s `limit`: `None` for no limit.
fn filter_limit(limit: Option<&Expr>, doc: &RawDocument) -> Result<Option<usize>, QueryError> {
    let Some(l) = limit else {
        return Ok(None);
    };
    match l.eval(doc)? {
        v if nullish(&v) => Ok(None),
        Some(v) => match exact_int(&v) {
            Some(n) if n > 0 => Ok(Some(n as usize)),
            _ => Err(loc(
                327392,
                format!("$filter: limit must be greater than 0: {}", display(&v)),
            )),
        },
        None => Ok(None),
    }
}

pub(super) fn filter(
    input: &Expr,
    var: &str,
    cond: &Expr,
    limit: Option<&Expr>,
    doc: &RawDocument,
) -> Result<Val, QueryError> {
    let limit = filter_limit(limit, doc)?;
    let items = match input.eval(doc)? {
        v if nullish(&v) => return Ok(Some(Bson::Null)),
        Some(Bson::Array(items)) => items,
        other => {
            return Err(loc(
                28651,
                format!("input to $filter must be an array not {}", tname(&other)),
            ));
        }
    };
    let mut held = Held::new("$filter");
    held.keep(&Bson::Array(Vec::new()))?;
    for item in &items {
        held.keep(item)?;
    }
    let mut out = Vec::new();
    for item in items {
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        let keep = with_vars(vec![(var.to_string(), item.clone())], || cond.truthy(doc))?;
        if keep {
            out.push(item);
        }
    }
    Ok(Some(Bson::Array(out)))
}

pub(super) fn reduce(
    input: &Expr,
    initial: &Expr,
    each: &Expr,
    doc: &RawDocument,
) -> Result<Val, QueryError> {
    let items = match input.eval(doc)? {
        v if nullish(&v) => return Ok(Some(Bson::Null)),
        Some(Bson::Array(items)) => items,
        other => {
            return Err(loc(
                40080,
                format!(
                    "$reduce requires that 'input' be an array, found: {}",
                    tname(&other)
                ),
            ));
        }
    };
    let mut held = Held::new("$reduce");
    for item in &items {
        held.keep(item)?;
    }
    let mut acc = initial.eval(doc)?;
    // The accumulator is charged on its own guard, replaced as the accumulator is.
    let mut acc_held = Held::new("$reduce");
    acc_held.keep_opt(&acc)?;
    for item in items {
        let value = acc.take().unwrap_or(Bson::Null);
        acc = with_vars(
            vec![("this".to_string(), item), ("value".to_string(), value)],
            || each.eval(doc),
        )?;
        acc_held.release();
        acc_held.keep_opt(&acc)?;
    }
    Ok(acc)
}

pub(super) fn let_in(
    vars: &[(String, Expr)],
    body: &Expr,
    doc: &RawDocument,
) -> Result<Val, QueryError> {
    let mut held = Held::new("$let");
    let mut values = Vec::with_capacity(vars.len());
    for (name, e) in vars {
        let v = e.eval(doc)?.unwrap_or(Bson::Null);
        held.keep(&v)?;
        values.push((name.clone(), v));
    }
    with_vars(values, || body.eval(doc))
}
