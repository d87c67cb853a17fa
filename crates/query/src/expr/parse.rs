//! Parsing an expression's BSON into an [`Expr`] tree: literals, field paths, variables, and
//! the operator object `{$op: argument}`, whose name is looked up once in the operator table
//! ([`Op`]) and whose argument is read by the family that owns it.
//!
//! Invariant: parsing nests at most `MAX_EXPRESSION_DEPTH` levels (the `DEPTH` guard).

use bson::raw::RawBsonRef;
use bson::{Bson, DateTime, RawDocument};

use super::args::exact_args;
use super::ops::{Form, Op};
use super::vars::{BOUND, DEPTH, let_var};
use super::{Expr, bad, bson_path, loc, unrecognized};
use super::{array, convert, date, js, logic, object, string, vars};
use crate::error::QueryError;
use crate::limits::MAX_EXPRESSION_DEPTH as MAX_DEPTH;
use crate::path::split_path;

impl Expr {
    pub(crate) fn parse(v: RawBsonRef<'_>) -> Result<Expr, QueryError> {
        struct Leave;
        impl Drop for Leave {
            fn drop(&mut self) {
                DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
            }
        }
        let depth = DEPTH.with(|d| {
            d.set(d.get() + 1);
            d.get()
        });
        let _leave = Leave;
        if depth > MAX_DEPTH {
            return Err(bad(format!(
                "expression is nested more than {MAX_DEPTH} levels deep"
            )));
        }
        Self::parse_inner(v)
    }

    fn parse_inner(v: RawBsonRef<'_>) -> Result<Expr, QueryError> {
        match v {
            RawBsonRef::String(s) if s.starts_with("$$") => Self::parse_var(&s[2..]),
            RawBsonRef::String(s) if s.starts_with('$') => {
                if s.len() == 1 {
                    return Err(loc(16872, "'$' by itself is not a valid FieldPath"));
                }
                let parts = split_path(&s[1..]);
                if parts.iter().any(String::is_empty) {
                    return Err(loc(
                        15998,
                        format!("FieldPath field names may not be empty strings: '{s}'"),
                    ));
                }
                Ok(Expr::Path(parts))
            }
            RawBsonRef::Document(d)
                if d.iter()
                    .next()
                    .is_some_and(|f| f.is_ok_and(|(k, _)| k.as_str().starts_with('$'))) =>
            {
                Self::parse_operator(d)
            }
            RawBsonRef::Document(d) => {
                let mut fields = Vec::new();
                for item in d {
                    let (k, v) = item.map_err(|e| bad(e.to_string()))?;
                    if k.as_str().starts_with('$') {
                        return Err(unrecognized(k.as_str()));
                    }
                    if k.as_str().contains('.') {
                        return Err(loc(
                            16412,
                            format!(
                                "FieldPath field names may not contain '.': '{}'",
                                k.as_str()
                            ),
                        ));
                    }
                    fields.push((k.as_str().to_string(), Expr::parse(v)?));
                }
                Ok(Expr::Doc(fields))
            }
            RawBsonRef::Array(a) => {
                let mut items = Vec::new();
                for item in a {
                    items.push(Expr::parse(item.map_err(|e| bad(e.to_string()))?)?);
                }
                if items.iter().all(|e| matches!(e, Expr::Const(_))) {
                    let consts = items
                        .into_iter()
                        .map(|e| match e {
                            Expr::Const(b) => b,
                            _ => Bson::Null,
                        })
                        .collect();
                    return Ok(Expr::Const(Bson::Array(consts)));
                }
                Ok(Expr::Array(items))
            }
            other => Ok(Expr::Const(
                Bson::try_from(other).map_err(|e| bad(e.to_string()))?,
            )),
        }
    }

    fn parse_var(spec: &str) -> Result<Expr, QueryError> {
        let mut parts = split_path(spec);
        let name = parts.remove(0);
        match name.as_str() {
            "ROOT" | "CURRENT" => return Ok(Expr::Root(parts)),
            "REMOVE" if parts.is_empty() => return Ok(Expr::Missing),
            "NOW" if parts.is_empty() => return Ok(Expr::Const(Bson::DateTime(DateTime::now()))),
            _ => {}
        }
        if BOUND.with(|b| b.borrow().contains(&name)) {
            return Ok(Expr::Var(name, parts));
        }
        match let_var(&name) {
            Some(value) if parts.is_empty() => Ok(Expr::Const(value)),
            Some(value) => Ok(bson_path(&value, &parts).map_or(Expr::Missing, Expr::Const)),
            None => Err(loc(17276, format!("Use of undefined variable: {name}"))),
        }
    }

    /// `{$op: argument}`: exactly one field, a known operator.
    fn parse_operator(d: &RawDocument) -> Result<Expr, QueryError> {
        let mut fields = d.iter();
        let (name, arg) = match (fields.next(), fields.next()) {
            (Some(Ok(first)), None) => first,
            (Some(Ok((k, _))), Some(_)) => {
                return Err(loc(
                    15983,
                    format!(
                        "an expression specification must contain exactly one field, the name of the expression. Found 2 fields in {:?}, while parsing object {:?}",
                        k.as_str(),
                        d
                    ),
                ));
            }
            _ => return Err(bad("invalid expression object")),
        };
        if name.as_str() == "$meta" {
            crate::text_meta::parse_meta(arg)?;
            return Ok(Expr::TextScore);
        }
        let Some(op) = Op::from_name(name.as_str()) else {
            return Err(unrecognized(name.as_str()));
        };
        match op.form() {
            Form::Args(min, max) => parse_args(op, arg, min, max),
            Form::Own => parse_own(op, arg),
        }
    }
}

/// The operators with their own argument rules, each read by its family.
fn parse_own(op: Op, arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    match op {
        Op::Rand => match arg {
            RawBsonRef::Document(d) if d.is_empty() => Ok(Expr::Rand),
            _ => Err(loc(3040501, "$rand does not currently accept arguments")),
        },
        Op::Literal => Ok(Expr::Const(
            Bson::try_from(arg).map_err(|e| bad(e.to_string()))?,
        )),
        Op::Let => vars::parse_let(arg),
        Op::Map => vars::parse_map(arg),
        Op::Filter => vars::parse_filter(arg),
        Op::Reduce => vars::parse_reduce(arg),
        Op::Convert => convert::parse_convert(arg),
        Op::Function => js::parse_function(arg),
        Op::InternalJsEmit => js::parse_emit(arg),
        Op::GetField => object::parse_get_field(arg),
        Op::SetField => object::parse_set_field(arg),
        Op::FirstN | Op::LastN | Op::MinN | Op::MaxN => array::parse_n(op, arg),
        Op::Median | Op::Percentile => array::parse_quantile(op, arg),
        Op::RegexMatch | Op::RegexFind | Op::RegexFindAll => string::parse_regex(op, arg),
        Op::ReplaceOne | Op::ReplaceAll => string::parse_replace(op, arg),
        Op::Trim | Op::Ltrim | Op::Rtrim => string::parse_trim(op, arg),
        Op::DateToString => date::parse_to_string(arg),
        _ if op.is_date_part() => date::parse_part(op, arg),
        _ if date::is_named(op) => date::parse_named(op, arg),
        _ => logic::parse(op, arg),
    }
}

/// An eagerly evaluated operator: every argument parsed, then the count checked against the
/// table's bounds.
fn parse_args(op: Op, arg: RawBsonRef<'_>, min: usize, max: usize) -> Result<Expr, QueryError> {
    let a = exact_args(op, arg, usize::MAX)?;
    if a.len() < min || a.len() > max {
        let expected = if min == max {
            format!("exactly {min}")
        } else if max == usize::MAX {
            format!("at least {min}")
        } else {
            format!("between {min} and {max}")
        };
        return Err(loc(
            16020,
            format!(
                "Expression {} takes {expected} arguments. {} were passed in.",
                op.name(),
                a.len()
            ),
        ));
    }
    Ok(Expr::Op(op, a))
}
