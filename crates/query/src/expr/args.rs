//! Reading an operator's argument: a positional list of a given length, or an object of
//! named arguments checked against the names the operator allows. A leaf of the expression
//! modules: every family's parser uses it, and it uses none of them.

use bson::raw::RawBsonRef;

use super::ops::Op;
use super::{Expr, bad, loc};
use crate::error::QueryError;

pub(super) fn items_of(arg: RawBsonRef<'_>) -> Result<Vec<RawBsonRef<'_>>, QueryError> {
    match arg {
        RawBsonRef::Array(a) => a
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string())),
        single => Ok(vec![single]),
    }
}

/// The named arguments of an object-form operator; unknown names are refused with `code`.
pub(super) fn named<'a>(
    op: &str,
    arg: RawBsonRef<'a>,
    allowed: &[&str],
    code: i32,
) -> Result<Vec<(String, RawBsonRef<'a>)>, QueryError> {
    let RawBsonRef::Document(d) = arg else {
        return Err(loc(
            code,
            format!("{op} only supports an object as its argument"),
        ));
    };
    let mut out = Vec::new();
    for item in d {
        let (k, v) = item.map_err(|e| bad(e.to_string()))?;
        if !allowed.contains(&k.as_str()) {
            return Err(loc(
                code,
                format!("{op} found an unknown argument: {}", k.as_str()),
            ));
        }
        out.push((k.as_str().to_string(), v));
    }
    Ok(out)
}

pub(super) fn pick<'a>(args: &[(String, RawBsonRef<'a>)], name: &str) -> Option<RawBsonRef<'a>> {
    args.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
}

pub(super) fn parse_opt(v: Option<RawBsonRef<'_>>) -> Result<Expr, QueryError> {
    v.map_or(Ok(Expr::Missing), Expr::parse)
}

/// The argument as a list of exactly `n` expressions (16020 otherwise), counted before any
/// is parsed.
pub(super) fn exact_args(op: Op, arg: RawBsonRef<'_>, n: usize) -> Result<Vec<Expr>, QueryError> {
    let items = items_of(arg)?;
    if n != usize::MAX && items.len() != n {
        return Err(loc(
            16020,
            format!(
                "Expression {} takes exactly {n} arguments. {} were passed in.",
                op.name(),
                items.len()
            ),
        ));
    }
    items.into_iter().map(Expr::parse).collect()
}

/// The argument as one expression.
pub(super) fn one_arg(op: Op, arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    exact_args(op, arg, 1)?
        .pop()
        .ok_or_else(|| bad(format!("{} takes one argument", op.name())))
}
