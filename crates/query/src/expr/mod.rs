//! Aggregation expressions: the [`Expr`] tree, its evaluation against a document, and the
//! helpers every operator family shares. Parsing is in `parse`, the operator table in `ops`,
//! and each family of operators in its own module.
//!
//! Variables come in two kinds. A command's `let` variables are constants, evaluated once by
//! [`with_let`] and substituted while parsing. Variables bound inside the pipeline (`$let`,
//! `$map`/`$filter`/`$reduce`, and a `$lookup`'s `let`) change per element or per document, so
//! parsing records their names and evaluation reads their values from a runtime scope (`vars`).
//!
//! Decimal128 arithmetic goes through the nearest double: exact for the values people usually
//! store, but not for all 34 significant digits. Conversions from strings are exact.

use bson::raw::RawBsonRef;
use bson::{Bson, Document, RawDocument};

use crate::error::QueryError;
use crate::regex::Re;
use crate::types::type_name;

mod args;
mod arith;
mod array;
mod builders;
mod convert;
mod date;
pub(crate) mod js;
mod logic;
mod object;
mod ops;
mod parse;
pub(crate) mod quantile;
mod set;
mod string;
mod vars;

pub(crate) use arith::{decimal, std_dev, sum_values};
pub(crate) use date::add_months;
pub(crate) use logic::{cmp_bson, truthy};
use ops::{Family, Op};
pub use vars::with_let;
pub(crate) use vars::{check_var_name, random_unit, with_bound, with_vars};

pub(crate) enum Expr {
    /// A field path of the current document, with aggregation's array semantics.
    Path(Vec<String>),
    /// `$$REMOVE`: evaluates to missing.
    Missing,
    /// A variable bound inside the pipeline, optionally followed by a path.
    Var(String, Vec<String>),
    /// `$$ROOT` / `$$CURRENT`, optionally followed by a path.
    Root(Vec<String>),
    Const(Bson),
    Doc(Vec<(String, Expr)>),
    Array(Vec<Expr>),
    Rand,
    /// `{$meta: "textScore"}`: the document's text score (`text.rs`).
    TextScore,
    /// `$eq`, `$ne`, `$gt`, `$gte`, `$lt`, `$lte` and `$cmp` over two expressions, in BSON order.
    Cmp(CmpExpr, Box<Expr>, Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Cond(Box<(Expr, Expr, Expr)>),
    IfNull(Vec<Expr>),
    Switch(Vec<(Expr, Expr)>, Option<Box<Expr>>),
    Let(Vec<(String, Expr)>, Box<Expr>),
    Map {
        input: Box<Expr>,
        var: String,
        each: Box<Expr>,
    },
    Filter {
        input: Box<Expr>,
        var: String,
        cond: Box<Expr>,
        limit: Option<Box<Expr>>,
    },
    Reduce {
        input: Box<Expr>,
        initial: Box<Expr>,
        each: Box<Expr>,
    },
    Convert {
        input: Box<Expr>,
        to: Box<Expr>,
        on_error: Option<Box<Expr>>,
        on_null: Option<Box<Expr>>,
    },
    /// `$regexMatch` etc. with a constant pattern, compiled once.
    Regex {
        op: Op,
        input: Box<Expr>,
        re: Box<Re>,
    },
    /// `$function` and mapReduce's `$_internalJsEmit`.
    Js(Box<js::JsExpr>),
    /// Every other operator: arguments are evaluated first (missing stays `None`), then the
    /// operator is applied. Named-argument operators are normalised to positional ones.
    Op(Op, Vec<Expr>),
}

#[derive(Clone, Copy)]
pub(crate) enum CmpExpr {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    Cmp,
}

type Val = Option<Bson>;

fn bad(msg: impl Into<String>) -> QueryError {
    QueryError::bad_value(msg)
}

fn loc(code: i32, msg: impl Into<String>) -> QueryError {
    QueryError::location(code, msg)
}

fn tname(v: &Val) -> &'static str {
    v.as_ref().map_or("missing", type_name)
}

fn nullish(v: &Val) -> bool {
    matches!(v, None | Some(Bson::Null) | Some(Bson::Undefined))
}

fn unrecognized(op: &str) -> QueryError {
    QueryError::new(
        168,
        "InvalidPipelineOperator",
        format!("Unrecognized expression '{op}'"),
    )
}

impl Expr {
    /// Aggregation truthiness: false, null, missing and zero are false; everything else true.
    pub(crate) fn truthy(&self, doc: &RawDocument) -> Result<bool, QueryError> {
        Ok(truthy(&self.eval(doc)?))
    }

    /// The value, or `None` for a missing field.
    pub(crate) fn eval(&self, doc: &RawDocument) -> Result<Val, QueryError> {
        match self {
            Expr::Const(b) => Ok(Some(b.clone())),
            Expr::Missing => Ok(None),
            Expr::Rand => Ok(Some(Bson::Double(random_unit()))),
            Expr::TextScore => crate::text_meta::current_score(doc),
            Expr::Path(parts) => Ok(raw_path(doc, parts)),
            Expr::Root(parts) if parts.is_empty() => Ok(Some(Bson::Document(
                Document::try_from(doc).map_err(|e| bad(e.to_string()))?,
            ))),
            Expr::Root(parts) => Ok(raw_path(doc, parts)),
            Expr::Var(name, parts) => Ok(match vars::var_value(name) {
                Some(v) if parts.is_empty() => Some(v),
                Some(v) => bson_path(&v, parts),
                None => None,
            }),
            Expr::Doc(fields) => builders::object(fields, doc),
            Expr::Array(items) => builders::array(items, doc),
            Expr::Cmp(kind, a, b) => logic::compare(*kind, a, b, doc),
            Expr::And(items) => logic::all_or_any(items, true, doc),
            Expr::Or(items) => logic::all_or_any(items, false, doc),
            Expr::Not(e) => Ok(Some(Bson::Boolean(!e.truthy(doc)?))),
            Expr::Cond(parts) => logic::cond(parts, doc),
            Expr::IfNull(items) => logic::if_null(items, doc),
            Expr::Switch(branches, default) => logic::switch(branches, default.as_deref(), doc),
            Expr::Let(vars, body) => builders::let_in(vars, body, doc),
            Expr::Map { input, var, each } => builders::map(input, var, each, doc),
            Expr::Filter {
                input,
                var,
                cond,
                limit,
            } => builders::filter(input, var, cond, limit.as_deref(), doc),
            Expr::Reduce {
                input,
                initial,
                each,
            } => builders::reduce(input, initial, each, doc),
            Expr::Convert {
                input,
                to,
                on_error,
                on_null,
            } => convert::eval_convert(input, to, on_error.as_deref(), on_null.as_deref(), doc),
            Expr::Regex { op, input, re } => string::regex_op(*op, input.eval(doc)?, re),
            Expr::Op(op, args) => builders::operator(*op, args, doc),
            Expr::Js(js) => js.eval(doc),
        }
    }
}

/// Applies an eagerly evaluated operator to its argument values, in its family's module.
fn apply(op: Op, vals: Vec<Val>) -> Result<Val, QueryError> {
    match op.family() {
        Family::Arith => arith::apply(op, vals),
        Family::Str => string::apply(op, vals),
        Family::Array => array::apply(op, vals),
        Family::Set => set::apply(op, vals),
        Family::Conv => convert::apply(op, vals),
        Family::Object => object::apply(op, vals),
        Family::Date => date::apply(op, vals),
        Family::Node => Err(unrecognized(op.name())),
    }
}

fn display(v: &Bson) -> String {
    v.to_string()
}

/// A field path with aggregation semantics: arrays met on the way map the rest of the path
/// over their elements (dropping elements where it is missing), and numeric components are
/// field names, not positions.
pub(crate) fn raw_path(doc: &RawDocument, parts: &[String]) -> Val {
    let (first, rest) = parts.split_first()?;
    let v = doc.get(first).ok()??;
    raw_value_path(v, rest)
}

fn raw_value_path(v: RawBsonRef<'_>, rest: &[String]) -> Val {
    if rest.is_empty() {
        return Bson::try_from(v).ok();
    }
    match v {
        RawBsonRef::Document(d) => raw_path(d, rest),
        RawBsonRef::Array(a) => Some(Bson::Array(
            a.into_iter()
                .map_while(Result::ok)
                .filter_map(|e| match e {
                    RawBsonRef::Document(_) | RawBsonRef::Array(_) => raw_value_path(e, rest),
                    _ => None,
                })
                .collect(),
        )),
        _ => None,
    }
}

pub(crate) fn bson_path(v: &Bson, rest: &[String]) -> Val {
    let Some((first, tail)) = rest.split_first() else {
        return Some(v.clone());
    };
    match v {
        Bson::Document(d) => bson_path(d.get(first)?, tail),
        Bson::Array(items) => Some(Bson::Array(
            items
                .iter()
                .filter_map(|e| match e {
                    Bson::Document(_) | Bson::Array(_) => bson_path(e, rest),
                    _ => None,
                })
                .collect(),
        )),
        _ => None,
    }
}
