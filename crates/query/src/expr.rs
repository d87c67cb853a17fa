//! Aggregation expressions: parsing into an [`Expr`] tree and evaluation against a document.
//!
//! Variables come in two kinds. A command's `let` variables are constants, evaluated once by
//! [`with_let`] and substituted while parsing. Variables bound inside the pipeline (`$let`,
//! `$map`/`$filter`/`$reduce`, and a `$lookup`'s `let`) change per element or per document, so
//! parsing records their names and evaluation reads their values from a runtime scope.
//! Both scopes are thread-local because parsing and evaluation are synchronous and nested
//! calls (a `$match` inside a `$lookup` pipeline evaluating `$expr`) share no other channel.
//!
//! Decimal128 arithmetic goes through the nearest double: exact for the values people usually
//! store, but not for all 34 significant digits. Conversions from strings are exact.

use std::cell::{Cell, RefCell};
use std::str::FromStr;

use bson::oid::ObjectId;
use bson::raw::RawBsonRef;
use bson::{Bson, DateTime, Decimal128, Document, RawDocument};

use crate::compare::{compare_values, decimal_to_f64};
use crate::dates;
use crate::error::QueryError;
use crate::filter::Re;
use crate::limits::MAX_EXPRESSION_DEPTH as MAX_DEPTH;
use crate::memory::{self, Held};

mod builders;
use crate::path::split_path;
use crate::update::type_name;

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
        op: &'static str,
        input: Box<Expr>,
        re: Box<Re>,
    },
    /// Every other operator: arguments are evaluated first (missing stays `None`), then the
    /// operator is applied. Named-argument operators are normalised to positional ones.
    Op(&'static str, Vec<Expr>),
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

thread_local! {
    /// The command's `let` variables while its filters, updates and pipelines are parsed.
    static LET_VARS: RefCell<Vec<(String, Bson)>> = const { RefCell::new(Vec::new()) };
    /// Names bound by enclosing `$let`/`$map`/`$filter`/`$reduce`/`$lookup` while parsing.
    static BOUND: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// Their values while evaluating; innermost last.
    static VARS: RefCell<Vec<(String, Bson)>> = const { RefCell::new(Vec::new()) };
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Runs `parse` with the command's `let` variables defined: each is an expression evaluated
/// once, up front (so `{$rand: {}}` gives one value for the whole command, as in mongod).
pub fn with_let<T, E: From<QueryError>>(
    lets: Option<&RawDocument>,
    parse: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let Some(lets) = lets else {
        return parse();
    };
    let mut vars = Vec::new();
    for item in lets {
        let (name, value) = item.map_err(|e| E::from(QueryError::bad_value(e.to_string())))?;
        let name = name.as_str();
        check_var_name(name)?;
        let empty = bson::RawDocumentBuf::new();
        let value = Expr::parse(value)?.eval(&empty)?.unwrap_or(Bson::Null);
        vars.push((name.to_string(), value));
    }
    struct Restore(Vec<(String, Bson)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = std::mem::take(&mut self.0);
            LET_VARS.with(|v| *v.borrow_mut() = previous);
        }
    }
    let _restore = Restore(LET_VARS.with(|v| std::mem::replace(&mut *v.borrow_mut(), vars)));
    parse()
}

pub(crate) fn check_var_name(name: &str) -> Result<(), QueryError> {
    if name.is_empty()
        || !name.starts_with(|c: char| c.is_ascii_lowercase() || !c.is_ascii())
        || name.contains('.')
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || !c.is_ascii())
    {
        return Err(QueryError::location(
            16867,
            format!("'{name}' starts with an invalid character for a user variable name"),
        ));
    }
    Ok(())
}

fn let_var(name: &str) -> Option<Bson> {
    LET_VARS.with(|v| {
        v.borrow()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
    })
}

/// Runs `f` with `names` known as runtime variables, so `$$name` parses to a variable.
pub(crate) fn with_bound<T>(names: &[String], f: impl FnOnce() -> T) -> T {
    struct Pop(usize);
    impl Drop for Pop {
        fn drop(&mut self) {
            BOUND.with(|b| b.borrow_mut().truncate(self.0));
        }
    }
    let _pop = Pop(BOUND.with(|b| {
        let mut b = b.borrow_mut();
        let len = b.len();
        b.extend(names.iter().cloned());
        len
    }));
    f()
}

/// Runs `f` with variables set to values (shadowing outer ones of the same name).
pub(crate) fn with_vars<T>(vars: Vec<(String, Bson)>, f: impl FnOnce() -> T) -> T {
    struct Pop(usize);
    impl Drop for Pop {
        fn drop(&mut self) {
            VARS.with(|v| v.borrow_mut().truncate(self.0));
        }
    }
    let _pop = Pop(VARS.with(|v| {
        let mut v = v.borrow_mut();
        let len = v.len();
        v.extend(vars);
        len
    }));
    f()
}

fn var_value(name: &str) -> Option<Bson> {
    VARS.with(|v| {
        v.borrow()
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
    })
}

/// A random double in [0, 1) for `$rand` and `$sample`, from the standard library's randomly
/// seeded hasher.
pub(crate) fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

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

/// (minimum, maximum) argument counts of the eagerly evaluated operators.
fn arity(op: &str) -> Option<(&'static str, usize, usize)> {
    const ANY: usize = usize::MAX;
    let table: &[(&'static str, usize, usize)] = &[
        ("$add", 0, ANY),
        ("$subtract", 2, 2),
        ("$multiply", 0, ANY),
        ("$divide", 2, 2),
        ("$mod", 2, 2),
        ("$abs", 1, 1),
        ("$ceil", 1, 1),
        ("$floor", 1, 1),
        ("$round", 1, 2),
        ("$trunc", 1, 2),
        ("$pow", 2, 2),
        ("$sqrt", 1, 1),
        ("$exp", 1, 1),
        ("$ln", 1, 1),
        ("$log", 2, 2),
        ("$log10", 1, 1),
        ("$sum", 0, ANY),
        ("$avg", 0, ANY),
        ("$min", 0, ANY),
        ("$max", 0, ANY),
        ("$stdDevPop", 0, ANY),
        ("$stdDevSamp", 0, ANY),
        ("$concat", 0, ANY),
        ("$substr", 3, 3),
        ("$substrBytes", 3, 3),
        ("$substrCP", 3, 3),
        ("$toUpper", 1, 1),
        ("$toLower", 1, 1),
        ("$strLenCP", 1, 1),
        ("$strLenBytes", 1, 1),
        ("$split", 2, 2),
        ("$indexOfCP", 2, 4),
        ("$indexOfBytes", 2, 4),
        ("$strcasecmp", 2, 2),
        ("$size", 1, 1),
        ("$arrayElemAt", 2, 2),
        ("$first", 1, 1),
        ("$last", 1, 1),
        ("$in", 2, 2),
        ("$concatArrays", 0, ANY),
        ("$slice", 2, 3),
        ("$reverseArray", 1, 1),
        ("$isArray", 1, 1),
        ("$range", 2, 3),
        ("$indexOfArray", 2, 4),
        ("$setUnion", 0, ANY),
        ("$setIntersection", 0, ANY),
        ("$setDifference", 2, 2),
        ("$setEquals", 2, ANY),
        ("$setIsSubset", 2, 2),
        ("$allElementsTrue", 1, 1),
        ("$anyElementTrue", 1, 1),
        ("$type", 1, 1),
        ("$isNumber", 1, 1),
        ("$toString", 1, 1),
        ("$toInt", 1, 1),
        ("$toLong", 1, 1),
        ("$toDouble", 1, 1),
        ("$toDecimal", 1, 1),
        ("$toBool", 1, 1),
        ("$toObjectId", 1, 1),
        ("$toDate", 1, 1),
        ("$mergeObjects", 0, ANY),
        ("$objectToArray", 1, 1),
        ("$arrayToObject", 1, 1),
    ];
    table.iter().find(|(name, _, _)| *name == op).copied()
}

const DATE_PARTS: &[&str] = &[
    "$year",
    "$month",
    "$dayOfMonth",
    "$hour",
    "$minute",
    "$second",
    "$millisecond",
    "$dayOfWeek",
    "$dayOfYear",
    "$week",
    "$isoWeek",
    "$isoWeekYear",
    "$isoDayOfWeek",
];

fn items_of(arg: RawBsonRef<'_>) -> Result<Vec<RawBsonRef<'_>>, QueryError> {
    match arg {
        RawBsonRef::Array(a) => a
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string())),
        single => Ok(vec![single]),
    }
}

/// The named arguments of an object-form operator; unknown names are refused with `code`.
fn named<'a>(
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

fn pick<'a>(args: &[(String, RawBsonRef<'a>)], name: &str) -> Option<RawBsonRef<'a>> {
    args.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
}

fn parse_opt(v: Option<RawBsonRef<'_>>) -> Result<Expr, QueryError> {
    v.map_or(Ok(Expr::Missing), Expr::parse)
}

fn var_name_of(op: &str, v: Option<RawBsonRef<'_>>, default: &str) -> Result<String, QueryError> {
    match v {
        None => Ok(default.to_string()),
        Some(RawBsonRef::String(s)) => {
            check_var_name(s)?;
            Ok(s.to_string())
        }
        Some(_) => Err(bad(format!("{op} 'as' must be a string"))),
    }
}

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

    /// Aggregation truthiness: false, null, missing and zero are false; everything else true.
    pub(crate) fn truthy(&self, doc: &RawDocument) -> Result<bool, QueryError> {
        Ok(truthy(&self.eval(doc)?))
    }

    fn parse_operator(d: &RawDocument) -> Result<Expr, QueryError> {
        let mut fields = d.iter();
        let (op, arg) = match (fields.next(), fields.next()) {
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
        let op = op.as_str();
        let args = |n: usize| -> Result<Vec<Expr>, QueryError> {
            let items = items_of(arg)?;
            if n != usize::MAX && items.len() != n {
                return Err(loc(
                    16020,
                    format!(
                        "Expression {op} takes exactly {n} arguments. {} were passed in.",
                        items.len()
                    ),
                ));
            }
            items.into_iter().map(Expr::parse).collect()
        };
        let cmp = |kind: CmpExpr| -> Result<Expr, QueryError> {
            let mut a = args(2)?.into_iter();
            match (a.next(), a.next()) {
                (Some(x), Some(y)) => Ok(Expr::Cmp(kind, Box::new(x), Box::new(y))),
                _ => Err(bad(format!("{op} takes two arguments"))),
            }
        };
        let one = || -> Result<Expr, QueryError> {
            args(1)?
                .pop()
                .ok_or_else(|| bad(format!("{op} takes one argument")))
        };
        match op {
            "$eq" => cmp(CmpExpr::Eq),
            "$ne" => cmp(CmpExpr::Ne),
            "$gt" => cmp(CmpExpr::Gt),
            "$gte" => cmp(CmpExpr::Gte),
            "$lt" => cmp(CmpExpr::Lt),
            "$lte" => cmp(CmpExpr::Lte),
            "$cmp" => cmp(CmpExpr::Cmp),
            "$and" => Ok(Expr::And(args(usize::MAX)?)),
            "$or" => Ok(Expr::Or(args(usize::MAX)?)),
            "$not" => Ok(Expr::Not(Box::new(one()?))),
            "$rand" => match arg {
                RawBsonRef::Document(d) if d.is_empty() => Ok(Expr::Rand),
                _ => Err(loc(3040501, "$rand does not currently accept arguments")),
            },
            "$literal" => Ok(Expr::Const(
                Bson::try_from(arg).map_err(|e| bad(e.to_string()))?,
            )),
            "$setField" => {
                let spec = named(op, arg, &["field", "input", "value"], 4161100)?;
                let field = match pick(&spec, "field") {
                    Some(RawBsonRef::String(f)) => f.to_string(),
                    Some(RawBsonRef::Document(lit)) => match lit.get("$literal").ok().flatten() {
                        Some(RawBsonRef::String(f)) => f.to_string(),
                        _ => {
                            return Err(loc(
                                4161106,
                                "$setField requires 'field' to evaluate to a constant string",
                            ));
                        }
                    },
                    _ => return Err(loc(4161102, "$setField requires 'field' to be specified")),
                };
                let part = |name: &str, code: i32| {
                    pick(&spec, name)
                        .ok_or_else(|| {
                            loc(code, format!("$setField requires '{name}' to be specified"))
                        })
                        .and_then(Expr::parse)
                };
                Ok(Expr::Op(
                    "$setField",
                    vec![
                        Expr::Const(Bson::String(field)),
                        part("input", 4161103)?,
                        part("value", 4161104)?,
                    ],
                ))
            }
            "$getField" => {
                let (field, input) = match arg {
                    RawBsonRef::Document(d)
                        if d.get("field").ok().flatten().is_some()
                            && !d.iter().flatten().any(|(k, _)| k.as_str().starts_with('$')) =>
                    {
                        let spec = named(op, arg, &["field", "input"], 3041701)?;
                        let field = pick(&spec, "field").unwrap_or(RawBsonRef::Null);
                        let input = match pick(&spec, "input") {
                            Some(i) => Expr::parse(i)?,
                            None => Expr::Root(Vec::new()),
                        };
                        (field, input)
                    }
                    other => (other, Expr::Root(Vec::new())),
                };
                let field = match field {
                    RawBsonRef::String(s) if !s.starts_with('$') => s.to_string(),
                    RawBsonRef::Document(lit) => match lit.get("$literal").ok().flatten() {
                        Some(RawBsonRef::String(s)) => s.to_string(),
                        _ => {
                            return Err(loc(
                                5654602,
                                "$getField requires 'field' to evaluate to a constant string",
                            ));
                        }
                    },
                    _ => {
                        return Err(loc(
                            5654602,
                            "$getField requires 'field' to evaluate to a constant string",
                        ));
                    }
                };
                Ok(Expr::Op(
                    "$getField",
                    vec![Expr::Const(Bson::String(field)), input],
                ))
            }
            "$cond" => {
                let (i, t, e) = match arg {
                    RawBsonRef::Document(_) => {
                        let spec = named(op, arg, &["if", "then", "else"], 17083)?;
                        let need = |name: &str, code: i32| {
                            pick(&spec, name)
                                .ok_or_else(|| {
                                    loc(code, format!("Missing '{name}' parameter to $cond"))
                                })
                                .and_then(Expr::parse)
                        };
                        (
                            need("if", 17080)?,
                            need("then", 17081)?,
                            need("else", 17082)?,
                        )
                    }
                    _ => {
                        let mut a = args(3)?.into_iter();
                        match (a.next(), a.next(), a.next()) {
                            (Some(i), Some(t), Some(e)) => (i, t, e),
                            _ => return Err(bad("$cond takes three arguments")),
                        }
                    }
                };
                Ok(Expr::Cond(Box::new((i, t, e))))
            }
            "$ifNull" => {
                let a = args(usize::MAX)?;
                if a.len() < 2 {
                    return Err(loc(1257300, "$ifNull needs at least two arguments"));
                }
                Ok(Expr::IfNull(a))
            }
            "$switch" => {
                let spec = named(op, arg, &["branches", "default"], 40067)?;
                let mut branches = Vec::new();
                match pick(&spec, "branches") {
                    Some(RawBsonRef::Array(a)) => {
                        for b in a {
                            let RawBsonRef::Document(b) = b.map_err(|e| bad(e.to_string()))? else {
                                return Err(loc(
                                    40061,
                                    "$switch expected each branch to be an object",
                                ));
                            };
                            let (case, then) =
                                (b.get("case").ok().flatten(), b.get("then").ok().flatten());
                            match (case, then) {
                                (Some(c), Some(t)) => {
                                    branches.push((Expr::parse(c)?, Expr::parse(t)?))
                                }
                                (None, _) => {
                                    return Err(loc(
                                        40064,
                                        "$switch requires each branch have a 'case' expression",
                                    ));
                                }
                                (_, None) => {
                                    return Err(loc(
                                        40065,
                                        "$switch requires each branch have a 'then' expression.",
                                    ));
                                }
                            }
                        }
                    }
                    _ => return Err(loc(40061, "$switch expected an array for 'branches'")),
                }
                if branches.is_empty() {
                    return Err(loc(40068, "$switch requires at least one branch."));
                }
                let default = match pick(&spec, "default") {
                    Some(d) => Some(Box::new(Expr::parse(d)?)),
                    None => None,
                };
                Ok(Expr::Switch(branches, default))
            }
            "$let" => {
                let spec = named(op, arg, &["vars", "in"], 16875)?;
                let Some(RawBsonRef::Document(vars)) = pick(&spec, "vars") else {
                    return Err(loc(16876, "Missing 'vars' parameter to $let"));
                };
                let body = pick(&spec, "in")
                    .ok_or_else(|| loc(16877, "Missing 'in' parameter to $let"))?;
                let mut bound = Vec::new();
                for item in vars {
                    let (k, v) = item.map_err(|e| bad(e.to_string()))?;
                    check_var_name(k.as_str())?;
                    bound.push((k.as_str().to_string(), Expr::parse(v)?));
                }
                let names: Vec<String> = bound.iter().map(|(n, _)| n.clone()).collect();
                let body = with_bound(&names, || Expr::parse(body))?;
                Ok(Expr::Let(bound, Box::new(body)))
            }
            "$map" => {
                let spec = named(op, arg, &["input", "as", "in"], 16879)?;
                let input = pick(&spec, "input")
                    .ok_or_else(|| loc(16880, "Missing 'input' parameter to $map"))?;
                let var = var_name_of(op, pick(&spec, "as"), "this")?;
                let each = pick(&spec, "in")
                    .ok_or_else(|| loc(16882, "Missing 'in' parameter to $map"))?;
                let each = with_bound(std::slice::from_ref(&var), || Expr::parse(each))?;
                Ok(Expr::Map {
                    input: Box::new(Expr::parse(input)?),
                    var,
                    each: Box::new(each),
                })
            }
            "$filter" => {
                let spec = named(op, arg, &["input", "as", "cond", "limit"], 28647)?;
                let input = pick(&spec, "input")
                    .ok_or_else(|| loc(28648, "Missing 'input' parameter to $filter"))?;
                let var = var_name_of(op, pick(&spec, "as"), "this")?;
                let cond = pick(&spec, "cond")
                    .ok_or_else(|| loc(28650, "Missing 'cond' parameter to $filter"))?;
                let cond = with_bound(std::slice::from_ref(&var), || Expr::parse(cond))?;
                let limit = match pick(&spec, "limit") {
                    Some(l) => Some(Box::new(Expr::parse(l)?)),
                    None => None,
                };
                Ok(Expr::Filter {
                    input: Box::new(Expr::parse(input)?),
                    var,
                    cond: Box::new(cond),
                    limit,
                })
            }
            "$reduce" => {
                let spec = named(op, arg, &["input", "initialValue", "in"], 40076)?;
                let input = pick(&spec, "input")
                    .ok_or_else(|| loc(40077, "Missing 'input' parameter to $reduce"))?;
                let initial = pick(&spec, "initialValue")
                    .ok_or_else(|| loc(40078, "Missing 'initialValue' parameter to $reduce"))?;
                let each = pick(&spec, "in")
                    .ok_or_else(|| loc(40079, "Missing 'in' parameter to $reduce"))?;
                let each = with_bound(&["this".to_string(), "value".to_string()], || {
                    Expr::parse(each)
                })?;
                Ok(Expr::Reduce {
                    input: Box::new(Expr::parse(input)?),
                    initial: Box::new(Expr::parse(initial)?),
                    each: Box::new(each),
                })
            }
            "$convert" => {
                let spec = named(op, arg, &["input", "to", "onError", "onNull"], 40712)?;
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
            "$regexMatch" | "$regexFind" | "$regexFindAll" => {
                let spec = named(op, arg, &["input", "regex", "options"], 51106)?;
                let input = pick(&spec, "input")
                    .ok_or_else(|| loc(31022, format!("{op} requires 'input' parameter")))?;
                let regex = pick(&spec, "regex")
                    .ok_or_else(|| loc(31023, format!("{op} requires 'regex' parameter")))?;
                let options = pick(&spec, "options");
                // A constant pattern is compiled once rather than per document.
                let constant = match (regex, options) {
                    (RawBsonRef::String(p), None) => Some((p.to_string(), String::new())),
                    (RawBsonRef::String(p), Some(RawBsonRef::String(o))) => {
                        Some((p.to_string(), o.to_string()))
                    }
                    (RawBsonRef::RegularExpression(r), None) => {
                        Some((r.pattern.to_string(), r.options.to_string()))
                    }
                    _ => None,
                };
                if let Some((p, o)) = constant {
                    return Ok(Expr::Regex {
                        op: static_name(op),
                        input: Box::new(Expr::parse(input)?),
                        re: Box::new(Re::compile(&p, &o)?),
                    });
                }
                Ok(Expr::Op(
                    static_name(op),
                    vec![
                        Expr::parse(input)?,
                        Expr::parse(regex)?,
                        parse_opt(options)?,
                    ],
                ))
            }
            "$firstN" | "$lastN" | "$minN" | "$maxN" => {
                let spec = named(op, arg, &["input", "n"], 5787901)?;
                let need = |name: &str| {
                    pick(&spec, name)
                        .ok_or_else(|| loc(5787907, format!("{op} requires an '{name}' field")))
                        .and_then(Expr::parse)
                };
                Ok(Expr::Op(static_name(op), vec![need("input")?, need("n")?]))
            }
            "$replaceOne" | "$replaceAll" => {
                let spec = named(op, arg, &["input", "find", "replacement"], 51750)?;
                let need = |name: &str| {
                    pick(&spec, name)
                        .ok_or_else(|| {
                            loc(51749, format!("{op} requires '{name}' to be specified"))
                        })
                        .and_then(Expr::parse)
                };
                Ok(Expr::Op(
                    static_name(op),
                    vec![need("input")?, need("find")?, need("replacement")?],
                ))
            }
            "$trim" | "$ltrim" | "$rtrim" => {
                let spec = named(op, arg, &["input", "chars"], 50696)?;
                let input = pick(&spec, "input")
                    .ok_or_else(|| loc(50695, format!("{op} requires an 'input' field")))?;
                Ok(Expr::Op(
                    static_name(op),
                    vec![Expr::parse(input)?, parse_opt(pick(&spec, "chars"))?],
                ))
            }
            "$dateAdd" | "$dateSubtract" | "$dateDiff" | "$dateTrunc" | "$dateFromParts"
            | "$dateToParts" | "$dateFromString" => {
                let (names, required): (&[&str], &[&str]) = match op {
                    "$dateAdd" | "$dateSubtract" => (
                        &["startDate", "unit", "amount", "timezone"],
                        &["startDate", "unit", "amount"],
                    ),
                    "$dateDiff" => (
                        &["startDate", "endDate", "unit", "timezone", "startOfWeek"],
                        &["startDate", "endDate", "unit"],
                    ),
                    "$dateTrunc" => (
                        &["date", "unit", "binSize", "timezone", "startOfWeek"],
                        &["date", "unit"],
                    ),
                    "$dateFromParts" => (
                        &[
                            "year",
                            "month",
                            "day",
                            "hour",
                            "minute",
                            "second",
                            "millisecond",
                            "timezone",
                            "isoWeekYear",
                            "isoWeek",
                            "isoDayOfWeek",
                        ],
                        &[],
                    ),
                    "$dateToParts" => (&["date", "timezone", "iso8601"], &["date"]),
                    _ => (
                        &["dateString", "format", "timezone", "onError", "onNull"],
                        &["dateString"],
                    ),
                };
                let spec = named(op, arg, names, 5166401)?;
                for r in required {
                    if pick(&spec, r).is_none() {
                        return Err(loc(5166402, format!("{op} requires '{r}' to be specified")));
                    }
                }
                let mut args = Vec::with_capacity(names.len());
                for n in names {
                    args.push(parse_opt(pick(&spec, n))?);
                }
                Ok(Expr::Op(static_name(op), args))
            }
            "$dateToString" => {
                let spec = named(op, arg, &["date", "format", "timezone", "onNull"], 18534)?;
                let date = pick(&spec, "date")
                    .ok_or_else(|| loc(18628, "Missing 'date' parameter to $dateToString"))?;
                Ok(Expr::Op(
                    "$dateToString",
                    vec![
                        Expr::parse(date)?,
                        parse_opt(pick(&spec, "format"))?,
                        parse_opt(pick(&spec, "timezone"))?,
                        parse_opt(pick(&spec, "onNull"))?,
                    ],
                ))
            }
            _ if DATE_PARTS.contains(&op) => {
                let (date, tz) = match arg {
                    RawBsonRef::Document(d)
                        if d.get("date").ok().flatten().is_some()
                            && !d.iter().flatten().any(|(k, _)| k.as_str().starts_with('$')) =>
                    {
                        let spec = named(op, arg, &["date", "timezone"], 40535)?;
                        (
                            Expr::parse(pick(&spec, "date").unwrap_or(RawBsonRef::Null))?,
                            parse_opt(pick(&spec, "timezone"))?,
                        )
                    }
                    _ => (one()?, Expr::Missing),
                };
                Ok(Expr::Op(static_name(op), vec![date, tz]))
            }
            _ => match arity(op) {
                Some((name, min, max)) => {
                    let a = args(usize::MAX)?;
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
                                "Expression {op} takes {expected} arguments. {} were passed in.",
                                a.len()
                            ),
                        ));
                    }
                    Ok(Expr::Op(name, a))
                }
                None => Err(unrecognized(op)),
            },
        }
    }

    /// The value, or `None` for a missing field.
    pub(crate) fn eval(&self, doc: &RawDocument) -> Result<Val, QueryError> {
        Ok(match self {
            Expr::Const(b) => Some(b.clone()),
            Expr::Missing => None,
            Expr::Rand => Some(Bson::Double(random_unit())),
            Expr::Path(parts) => raw_path(doc, parts),
            Expr::Root(parts) if parts.is_empty() => Some(Bson::Document(
                Document::try_from(doc).map_err(|e| bad(e.to_string()))?,
            )),
            Expr::Root(parts) => raw_path(doc, parts),
            Expr::Var(name, parts) => {
                let v = var_value(name);
                match v {
                    Some(v) if parts.is_empty() => Some(v),
                    Some(v) => bson_path(&v, parts),
                    None => None,
                }
            }
            Expr::Doc(fields) => return builders::object(fields, doc),
            Expr::Array(items) => return builders::array(items, doc),
            Expr::Cmp(kind, a, b) => {
                let ord = cmp_vals(&a.eval(doc)?, &b.eval(doc)?);
                Some(match kind {
                    CmpExpr::Eq => Bson::Boolean(ord.is_eq()),
                    CmpExpr::Ne => Bson::Boolean(ord.is_ne()),
                    CmpExpr::Gt => Bson::Boolean(ord.is_gt()),
                    CmpExpr::Gte => Bson::Boolean(ord.is_ge()),
                    CmpExpr::Lt => Bson::Boolean(ord.is_lt()),
                    CmpExpr::Lte => Bson::Boolean(ord.is_le()),
                    CmpExpr::Cmp => Bson::Int32(ord as i32),
                })
            }
            Expr::And(items) => {
                for e in items {
                    if !e.truthy(doc)? {
                        return Ok(Some(Bson::Boolean(false)));
                    }
                }
                Some(Bson::Boolean(true))
            }
            Expr::Or(items) => {
                for e in items {
                    if e.truthy(doc)? {
                        return Ok(Some(Bson::Boolean(true)));
                    }
                }
                Some(Bson::Boolean(false))
            }
            Expr::Not(e) => Some(Bson::Boolean(!e.truthy(doc)?)),
            Expr::Cond(parts) => {
                let (i, t, e) = &**parts;
                if i.truthy(doc)? {
                    t.eval(doc)?
                } else {
                    e.eval(doc)?
                }
            }
            Expr::IfNull(items) => {
                let (last, rest) = items.split_last().ok_or_else(|| bad("$ifNull"))?;
                for e in rest {
                    let v = e.eval(doc)?;
                    if !nullish(&v) {
                        return Ok(v);
                    }
                }
                last.eval(doc)?
            }
            Expr::Switch(branches, default) => {
                for (case, then) in branches {
                    if case.truthy(doc)? {
                        return then.eval(doc);
                    }
                }
                match default {
                    Some(d) => d.eval(doc)?,
                    None => {
                        return Err(loc(
                            40066,
                            "$switch could not find a matching branch for an input, and no default was specified.",
                        ));
                    }
                }
            }
            Expr::Let(vars, body) => return builders::let_in(vars, body, doc),
            Expr::Map { input, var, each } => return builders::map(input, var, each, doc),
            Expr::Filter {
                input,
                var,
                cond,
                limit,
            } => return builders::filter(input, var, cond, limit.as_deref(), doc),
            Expr::Reduce {
                input,
                initial,
                each,
            } => return builders::reduce(input, initial, each, doc),
            Expr::Convert {
                input,
                to,
                on_error,
                on_null,
            } => {
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
                    Ok(out) => out,
                    Err(e) if e.code == 241 => match on_error {
                        Some(fallback) => fallback.eval(doc)?,
                        None => return Err(e),
                    },
                    Err(e) => return Err(e),
                }
            }
            Expr::Regex { op, input, re } => regex_op(op, input.eval(doc)?, re)?,
            Expr::Op(name, args) => return builders::operator(name, args, doc),
        })
    }
}

fn static_name(op: &str) -> &'static str {
    const NAMES: &[&str] = &[
        "$firstN",
        "$lastN",
        "$minN",
        "$maxN",
        "$dateAdd",
        "$dateSubtract",
        "$dateDiff",
        "$dateTrunc",
        "$dateFromParts",
        "$dateToParts",
        "$dateFromString",
        "$regexMatch",
        "$regexFind",
        "$regexFindAll",
        "$replaceOne",
        "$replaceAll",
        "$trim",
        "$ltrim",
        "$rtrim",
        "$year",
        "$month",
        "$dayOfMonth",
        "$hour",
        "$minute",
        "$second",
        "$millisecond",
        "$dayOfWeek",
        "$dayOfYear",
        "$week",
        "$isoWeek",
        "$isoWeekYear",
        "$isoDayOfWeek",
    ];
    NAMES
        .iter()
        .find(|n| **n == op)
        .copied()
        .unwrap_or("$unknown")
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

// ---------------------------------------------------------------------------------------------
// Numbers

/// A numeric value by BSON type; decimals are carried as their nearest double (see the module
/// comment).
#[derive(Clone, Copy, Debug)]
enum N {
    I(i32),
    L(i64),
    D(f64),
    M(f64),
}

impl N {
    fn of(v: &Bson) -> Option<N> {
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

fn exact_int(v: &Bson) -> Option<i64> {
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

fn unary_math(op: &str, v: Val) -> Result<Val, QueryError> {
    let Some(n) = num_arg(op, &v, 28765)? else {
        return Ok(Some(Bson::Null));
    };
    let as_double = |f: f64| match n {
        N::M(_) => decimal(f),
        _ => Bson::Double(f),
    };
    Ok(Some(match op {
        "$abs" => match n {
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
        "$ceil" | "$floor" => match n {
            N::I(_) | N::L(_) => n.bson(),
            _ => as_double(if op == "$ceil" {
                n.f().ceil()
            } else {
                n.f().floor()
            }),
        },
        "$sqrt" => {
            if n.f() < 0.0 {
                return Err(loc(
                    28714,
                    "$sqrt's argument must be greater than or equal to 0",
                ));
            }
            as_double(n.f().sqrt())
        }
        "$exp" => as_double(n.f().exp()),
        "$ln" | "$log10" => {
            if n.f() <= 0.0 && !n.f().is_nan() {
                let code = if op == "$ln" { 28766 } else { 28761 };
                return Err(loc(
                    code,
                    format!(
                        "{op}'s argument must be a positive number, but is {}",
                        n.f()
                    ),
                ));
            }
            as_double(if op == "$ln" {
                n.f().ln()
            } else {
                n.f().log10()
            })
        }
        _ => return Err(unrecognized(op)),
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
fn round(op: &str, v: Val, place: Option<Val>) -> Result<Val, QueryError> {
    let place = match &place {
        None => 0,
        Some(p) if nullish(p) => return Ok(Some(Bson::Null)),
        Some(p) => match p.as_ref().and_then(exact_int) {
            Some(p) if (-20..=100).contains(&p) => p,
            _ => {
                return Err(loc(
                    51155,
                    format!(
                        "{op} requires \"place\" argument to be an integer between -20 and 100"
                    ),
                ));
            }
        },
    };
    let Some(n) = num_arg(op, &v, 51081)? else {
        return Ok(Some(Bson::Null));
    };
    let is_round = op == "$round";
    let apply_f = |x: f64| -> f64 {
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
    };
    Ok(Some(match n {
        N::I(_) | N::L(_) if place >= 0 => n.bson(),
        N::I(_) | N::L(_) => {
            let x = n.int().unwrap_or(0);
            let r = match 10i64.checked_pow((-place) as u32) {
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
            };
            match n {
                N::I(_) => narrow(r).bson(),
                _ => Bson::Int64(r),
            }
        }
        N::D(d) => Bson::Double(apply_f(d)),
        N::M(d) => decimal(apply_f(d)),
    }))
}

/// `$sum`, `$avg`, `$min`, `$max` and the standard deviations as expressions: one array
/// argument means its elements; several arguments mean themselves.
fn list_stat(op: &str, vals: Vec<Val>) -> Result<Val, QueryError> {
    let items: Vec<Bson> = match vals.as_slice() {
        [Some(Bson::Array(a))] => a.clone(),
        _ => vals.into_iter().flatten().collect(),
    };
    match op {
        "$min" | "$max" => {
            let mut best: Option<Bson> = None;
            for v in items {
                if matches!(v, Bson::Null | Bson::Undefined) {
                    continue;
                }
                let better = match &best {
                    None => true,
                    Some(b) => {
                        let ord = cmp_bson(&v, b);
                        if op == "$min" {
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
                "$sum" => Ok(Some(
                    nums.iter()
                        .fold(N::I(0), |t, n| arith(t, *n, i64::checked_add, |a, b| a + b))
                        .bson(),
                )),
                "$avg" => {
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
                    op == "$stdDevSamp",
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

// ---------------------------------------------------------------------------------------------
// Strings

fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "NaN".into();
    }
    if d.is_infinite() {
        return if d > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if d != 0.0 && (d.abs() >= 1e15 || d.abs() < 1e-4) {
        let s = format!("{d:e}");
        return match s.split_once('e') {
            Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
            _ => s,
        };
    }
    format!("{d}")
}

/// The string form `$concat`-like operators and `$toString` give scalars; `None` when the
/// type has none.
fn stringify(v: &Bson) -> Option<String> {
    Some(match v {
        Bson::String(s) | Bson::Symbol(s) => s.clone(),
        Bson::Int32(i) => i.to_string(),
        Bson::Int64(i) => i.to_string(),
        Bson::Double(d) => format_double(*d),
        Bson::Decimal128(d) => d.to_string(),
        Bson::Boolean(b) => b.to_string(),
        Bson::ObjectId(o) => o.to_hex(),
        Bson::DateTime(d) => dates::iso(d.timestamp_millis()),
        _ => return None,
    })
}

/// `$toUpper`, `$substr` and `$strcasecmp` treat null and missing as the empty string.
fn coerce_str(op: &str, v: &Val) -> Result<String, QueryError> {
    if nullish(v) {
        return Ok(String::new());
    }
    match v.as_ref().and_then(stringify) {
        Some(s) => Ok(s),
        None => Err(loc(
            16007,
            format!("can't convert from BSON type {} to String ({op})", tname(v)),
        )),
    }
}

fn str_of(v: &Val) -> Option<&str> {
    match v {
        Some(Bson::String(s)) | Some(Bson::Symbol(s)) => Some(s),
        _ => None,
    }
}

fn int_arg(op: &str, v: &Val, what: &str, code: i32) -> Result<i64, QueryError> {
    v.as_ref().and_then(exact_int).ok_or_else(|| {
        loc(
            code,
            format!("{op}: {what} must be a numeric type representable as a 32-bit integral value, found {}", tname(v)),
        )
    })
}

fn substr_bytes(op: &str, s: &str, start: &Val, len: &Val) -> Result<Val, QueryError> {
    let start = int_arg(op, start, "starting index", 16034)?;
    let len = int_arg(op, len, "length", 16035)?;
    if start < 0 {
        return Err(loc(
            50752,
            format!("{op}: starting index must be non-negative (got: {start})"),
        ));
    }
    let bytes = s.as_bytes();
    let begin = (start as usize).min(bytes.len());
    let end = if len < 0 {
        bytes.len()
    } else {
        begin.saturating_add(len as usize).min(bytes.len())
    };
    if !s.is_char_boundary(begin) {
        return Err(loc(
            28656,
            format!("{op}:  Invalid range, starting index is a UTF-8 continuation byte."),
        ));
    }
    if !s.is_char_boundary(end) {
        return Err(loc(
            28657,
            format!("{op}:  Invalid range, ending index is in the middle of a UTF-8 character."),
        ));
    }
    Ok(Some(Bson::String(s[begin..end].to_string())))
}

fn substr_cp(s: &str, start: &Val, len: &Val) -> Result<Val, QueryError> {
    let start_i = match start.as_ref().and_then(exact_int) {
        Some(i) => i,
        None => {
            return Err(loc(
                34450,
                format!(
                    "$substrCP: starting index must be a numeric type (is BSON type {})",
                    tname(start)
                ),
            ));
        }
    };
    let len_i = match len.as_ref().and_then(exact_int) {
        Some(i) => i,
        None => {
            return Err(loc(
                34452,
                format!(
                    "$substrCP: length must be a numeric type (is BSON type {})",
                    tname(len)
                ),
            ));
        }
    };
    if start_i < 0 {
        return Err(loc(34455, "$substrCP: starting index must be non-negative"));
    }
    if len_i < 0 {
        return Err(loc(
            34454,
            "$substrCP: length must be a nonnegative integer.",
        ));
    }
    Ok(Some(Bson::String(
        s.chars()
            .skip(start_i as usize)
            .take(len_i as usize)
            .collect(),
    )))
}

/// The characters `$trim` removes by default: ASCII and Unicode whitespace and NUL.
fn default_trim(c: char) -> bool {
    c == '\0' || c.is_whitespace()
}

fn index_of(op: &str, vals: &[Val]) -> Result<Val, QueryError> {
    let hay = &vals[0];
    if nullish(hay) {
        return Ok(Some(Bson::Null));
    }
    let Some(hay) = str_of(hay) else {
        return Err(loc(
            40091,
            format!(
                "{op} requires a string as the first argument, found: {}",
                tname(hay)
            ),
        ));
    };
    let Some(needle) = str_of(&vals[1]) else {
        return Err(loc(
            40092,
            format!(
                "{op} requires a string as the second argument, found: {}",
                tname(&vals[1])
            ),
        ));
    };
    let bound = |i: usize, what: &str| -> Result<Option<usize>, QueryError> {
        match vals.get(i) {
            None => Ok(None),
            Some(v) => match v.as_ref().and_then(exact_int) {
                Some(n) if n >= 0 => Ok(Some(n as usize)),
                Some(_) => Err(loc(
                    40097,
                    format!("{op} requires a nonnegative {what}, found: {}", tname(v)),
                )),
                None => Err(loc(
                    40096,
                    format!(
                        "{op} requires an integral {what}, found a value of type: {}",
                        tname(v)
                    ),
                )),
            },
        }
    };
    let start = bound(2, "start index")?.unwrap_or(0);
    let bytes_mode = op == "$indexOfBytes";
    let units: usize = if bytes_mode {
        hay.len()
    } else {
        hay.chars().count()
    };
    let end = bound(3, "ending index")?.unwrap_or(units).min(units);
    if start > end {
        return Ok(Some(Bson::Int32(-1)));
    }
    let found = if bytes_mode {
        (start..=end)
            .filter(|i| hay.is_char_boundary(*i))
            .find(|&i| i + needle.len() <= end && hay[i..].starts_with(needle))
    } else {
        let chars: Vec<char> = hay.chars().collect();
        let needle: Vec<char> = needle.chars().collect();
        (start..=end).find(|&i| i + needle.len() <= end && chars[i..].starts_with(&needle))
    };
    Ok(Some(Bson::Int32(found.map_or(-1, |i| i as i32))))
}

fn regex_op(op: &str, input: Val, re: &Re) -> Result<Val, QueryError> {
    let s = match &input {
        v if nullish(v) => {
            return Ok(Some(match op {
                "$regexMatch" => Bson::Boolean(false),
                "$regexFindAll" => Bson::Array(Vec::new()),
                _ => Bson::Null,
            }));
        }
        Some(Bson::String(s)) => s.as_str(),
        _ => {
            return Err(loc(
                51104,
                format!("{op} needs 'input' to be of type string"),
            ));
        }
    };
    let regex = re.regex();
    let found = |m: regex::Captures<'_>| -> Bson {
        let whole = m.get(0);
        let idx = whole.map_or(0, |w| s[..w.start()].chars().count());
        let captures: Vec<Bson> = m
            .iter()
            .skip(1)
            .map(|c| c.map_or(Bson::Null, |c| Bson::String(c.as_str().to_string())))
            .collect();
        let mut d = Document::new();
        d.insert("match", whole.map_or("", |w| w.as_str()));
        d.insert("idx", idx as i32);
        d.insert("captures", captures);
        Bson::Document(d)
    };
    Ok(Some(match op {
        "$regexMatch" => Bson::Boolean(regex.is_match(s)),
        "$regexFind" => regex.captures(s).map_or(Bson::Null, found),
        _ => {
            // One document per match: a pattern matching everywhere in a long string makes
            // many, so each is charged as it is made.
            let mut held = Held::new("$regexFindAll");
            let mut all = Vec::new();
            for m in regex.captures_iter(s) {
                let d = found(m);
                held.keep(&d)?;
                all.push(d);
            }
            Bson::Array(all)
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// Conversions

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Double,
    String,
    ObjectId,
    Bool,
    Date,
    Int,
    Long,
    Decimal,
}

fn convert_target(v: &Bson) -> Result<Target, QueryError> {
    let by_name = |s: &str| -> Option<Target> {
        Some(match s {
            "double" => Target::Double,
            "string" => Target::String,
            "objectId" => Target::ObjectId,
            "bool" => Target::Bool,
            "date" => Target::Date,
            "int" => Target::Int,
            "long" => Target::Long,
            "decimal" => Target::Decimal,
            _ => return None,
        })
    };
    let t = match v {
        Bson::String(s) => by_name(s),
        other => exact_int(other).and_then(|code| match code {
            1 => Some(Target::Double),
            2 => Some(Target::String),
            7 => Some(Target::ObjectId),
            8 => Some(Target::Bool),
            9 => Some(Target::Date),
            16 => Some(Target::Int),
            18 => Some(Target::Long),
            19 => Some(Target::Decimal),
            _ => None,
        }),
    };
    t.ok_or_else(|| QueryError::new(2, "BadValue", format!("Unknown type name: {}", display(v))))
}

fn conversion_failure(msg: String) -> QueryError {
    QueryError::new(241, "ConversionFailure", msg)
}

fn target_name(t: Target) -> &'static str {
    match t {
        Target::Double => "double",
        Target::String => "string",
        Target::ObjectId => "objectId",
        Target::Bool => "bool",
        Target::Date => "date",
        Target::Int => "int",
        Target::Long => "long",
        Target::Decimal => "decimal",
    }
}

/// `$convert` and the `$toX` shorthands, for a non-null input.
fn convert(v: Val, to: Target) -> Result<Val, QueryError> {
    let Some(v) = v else {
        return Ok(Some(Bson::Null));
    };
    let unsupported = || {
        conversion_failure(format!(
            "Unsupported conversion from {} to {} in $convert with no onError value",
            type_name(&v),
            target_name(to)
        ))
    };
    let parse_fail = |s: &str| {
        conversion_failure(format!(
            "Failed to parse number '{s}' in $convert with no onError value"
        ))
    };
    let overflow = || {
        conversion_failure(format!(
            "Conversion would overflow target type in $convert with no onError value: {}",
            display(&v)
        ))
    };
    let float_to_int = |d: f64, lo: f64, hi: f64| -> Result<i64, QueryError> {
        if d.is_nan() {
            return Err(conversion_failure(
                "Attempt to convert NaN value to integer type in $convert with no onError value"
                    .into(),
            ));
        }
        let t = d.trunc();
        if t < lo || t > hi {
            return Err(overflow());
        }
        Ok(t as i64)
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
            None => return Err(unsupported()),
        },
        Target::Int | Target::Long => {
            let (lo, hi) = if to == Target::Int {
                (f64::from(i32::MIN), f64::from(i32::MAX))
            } else {
                (-9_223_372_036_854_775_808.0, 9_223_372_036_854_775_807.0)
            };
            let i = match &v {
                Bson::Boolean(b) => i64::from(*b),
                Bson::Int32(i) => i64::from(*i),
                Bson::Int64(i) => *i,
                Bson::Double(d) => float_to_int(*d, lo, hi)?,
                Bson::Decimal128(d) => float_to_int(decimal_to_f64(*d), lo, hi)?,
                Bson::DateTime(d) if to == Target::Long => d.timestamp_millis(),
                Bson::String(s) => {
                    let t = s.trim();
                    if t.len() != s.len() || s.is_empty() {
                        return Err(parse_fail(s));
                    }
                    s.parse::<i64>().map_err(|_| parse_fail(s))?
                }
                _ => return Err(unsupported()),
            };
            if to == Target::Int {
                Bson::Int32(i32::try_from(i).map_err(|_| overflow())?)
            } else {
                Bson::Int64(i)
            }
        }
        Target::Double | Target::Decimal => {
            let f = match &v {
                Bson::Boolean(b) => f64::from(u8::from(*b)),
                Bson::Int32(i) => f64::from(*i),
                Bson::Int64(i) => *i as f64,
                Bson::Double(d) => *d,
                Bson::Decimal128(d) => {
                    if to == Target::Decimal {
                        return Ok(Some(Bson::Decimal128(*d)));
                    }
                    decimal_to_f64(*d)
                }
                Bson::DateTime(d) => d.timestamp_millis() as f64,
                Bson::String(s) => {
                    if to == Target::Decimal {
                        return Decimal128::from_str(s)
                            .map(|d| Some(Bson::Decimal128(d)))
                            .map_err(|_| parse_fail(s));
                    }
                    let lower = s.to_ascii_lowercase();
                    match lower.as_str() {
                        "nan" => f64::NAN,
                        "inf" | "infinity" => f64::INFINITY,
                        "-inf" | "-infinity" => f64::NEG_INFINITY,
                        _ if s.is_empty() || s.trim().len() != s.len() => {
                            return Err(parse_fail(s));
                        }
                        _ => s.parse::<f64>().map_err(|_| parse_fail(s))?,
                    }
                }
                _ => return Err(unsupported()),
            };
            if to == Target::Double {
                Bson::Double(f)
            } else {
                match &v {
                    // Integers convert exactly through their decimal text.
                    Bson::Int32(i) => Decimal128::from_str(&i.to_string())
                        .map_or_else(|_| decimal(f), Bson::Decimal128),
                    Bson::Int64(i) => Decimal128::from_str(&i.to_string())
                        .map_or_else(|_| decimal(f), Bson::Decimal128),
                    _ => decimal(f),
                }
            }
        }
        Target::ObjectId => match &v {
            Bson::ObjectId(o) => Bson::ObjectId(*o),
            Bson::String(s) => match ObjectId::parse_str(s) {
                Ok(o) if s.len() == 24 => Bson::ObjectId(o),
                _ => {
                    return Err(conversion_failure(format!(
                        "Failed to parse objectId '{s}' in $convert with no onError value: Invalid string length for parsing to OID, expected 24 but found {}",
                        s.len()
                    )));
                }
            },
            _ => return Err(unsupported()),
        },
        Target::Date => match &v {
            Bson::DateTime(d) => Bson::DateTime(*d),
            Bson::Int64(i) => Bson::DateTime(DateTime::from_millis(*i)),
            Bson::Double(d) => {
                Bson::DateTime(DateTime::from_millis(float_to_int(*d, -9.2e18, 9.2e18)?))
            }
            Bson::Decimal128(d) => Bson::DateTime(DateTime::from_millis(float_to_int(
                decimal_to_f64(*d),
                -9.2e18,
                9.2e18,
            )?)),
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
            _ => return Err(unsupported()),
        },
    }))
}

fn date_millis(op: &str, v: &Bson) -> Result<i64, QueryError> {
    match v {
        Bson::DateTime(d) => Ok(d.timestamp_millis()),
        Bson::Timestamp(t) => Ok(i64::from(t.time) * 1000),
        Bson::ObjectId(o) => Ok(o.timestamp().timestamp_millis()),
        other => Err(loc(
            16006,
            format!(
                "can't convert from BSON type {} to Date ({op})",
                type_name(other)
            ),
        )),
    }
}

fn timezone_of(tz: &Val) -> Result<Option<i64>, QueryError> {
    match tz {
        None => Ok(Some(0)),
        Some(Bson::Null) | Some(Bson::Undefined) => Ok(None),
        Some(Bson::String(s)) => dates::parse_timezone(s).map(Some),
        Some(other) => Err(loc(
            40517,
            format!(
                "timezone must evaluate to a string, found {}",
                type_name(other)
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Arrays and objects

fn array_arg<'a>(
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

fn contains(items: &[Bson], v: &Bson) -> bool {
    items.iter().any(|i| cmp_bson(i, v).is_eq())
}

fn dedup(items: Vec<Bson>) -> Vec<Bson> {
    let mut out: Vec<Bson> = Vec::new();
    for i in items {
        if !contains(&out, &i) {
            out.push(i);
        }
    }
    out
}

fn set_op(op: &str, vals: Vec<Val>) -> Result<Val, QueryError> {
    let code = match op {
        "$setUnion" => 17043,
        "$setIntersection" => 17047,
        "$setDifference" => 17048,
        "$setEquals" => 17044,
        "$setIsSubset" => 17046,
        _ => 17043,
    };
    if matches!(op, "$setUnion" | "$setIntersection" | "$setDifference") && vals.iter().any(nullish)
    {
        return Ok(Some(Bson::Null));
    }
    let mut sets = Vec::with_capacity(vals.len());
    for (i, v) in vals.iter().enumerate() {
        match v {
            Some(Bson::Array(a)) => sets.push(a.clone()),
            other => {
                return Err(loc(
                    if op == "$setIsSubset" && i == 1 {
                        17042
                    } else {
                        code
                    },
                    format!(
                        "All operands of {op} must be arrays. One argument is of type: {}",
                        tname(other)
                    ),
                ));
            }
        }
    }
    Ok(Some(match op {
        "$setUnion" => Bson::Array(dedup(sets.into_iter().flatten().collect())),
        "$setIntersection" => {
            let mut iter = sets.into_iter();
            let first = dedup(iter.next().unwrap_or_default());
            let rest: Vec<Vec<Bson>> = iter.collect();
            Bson::Array(
                first
                    .into_iter()
                    .filter(|v| rest.iter().all(|s| contains(s, v)))
                    .collect(),
            )
        }
        "$setDifference" => {
            let b = sets.get(1).cloned().unwrap_or_default();
            Bson::Array(
                dedup(sets.into_iter().next().unwrap_or_default())
                    .into_iter()
                    .filter(|v| !contains(&b, v))
                    .collect(),
            )
        }
        "$setIsSubset" => {
            let b = sets.get(1).cloned().unwrap_or_default();
            Bson::Boolean(sets[0].iter().all(|v| contains(&b, v)))
        }
        _ => {
            let first = &sets[0];
            Bson::Boolean(sets.iter().all(|s| {
                s.iter().all(|v| contains(first, v)) && first.iter().all(|v| contains(s, v))
            }))
        }
    }))
}

fn array_to_object(v: &Val) -> Result<Val, QueryError> {
    let Some(items) = array_arg(
        "$arrayToObject",
        v,
        40386,
        " requires an array input, found: ",
    )?
    else {
        return Ok(Some(Bson::Null));
    };
    let mut out = Document::new();
    for item in items {
        let (k, val) = match item {
            Bson::Array(pair) => {
                if pair.len() != 2 {
                    return Err(loc(
                        40397,
                        format!(
                            "$arrayToObject requires an array of size 2 arrays,found array of size: {}",
                            pair.len()
                        ),
                    ));
                }
                match &pair[0] {
                    Bson::String(k) => (k.clone(), pair[1].clone()),
                    other => {
                        return Err(loc(
                            40395,
                            format!(
                                "$arrayToObject requires an array of key-value pairs, where the key must be of type string. Found key type: {}",
                                type_name(other)
                            ),
                        ));
                    }
                }
            }
            Bson::Document(d) => {
                if d.len() != 2 {
                    return Err(loc(
                        40392,
                        format!(
                            "$arrayToObject requires an object keys of 'k' and 'v'. Found incorrect number of keys:{}",
                            d.len()
                        ),
                    ));
                }
                match (d.get("k"), d.get("v")) {
                    (Some(Bson::String(k)), Some(val)) => (k.clone(), val.clone()),
                    (Some(other), Some(_)) => {
                        return Err(loc(
                            40394,
                            format!(
                                "$arrayToObject requires an object with keys 'k' and 'v', where the value of 'k' must be of type string. Found type: {}",
                                type_name(other)
                            ),
                        ));
                    }
                    _ => {
                        return Err(loc(
                            40393,
                            "$arrayToObject requires an object with keys 'k' and 'v'. Missing either or both keys from: {}",
                        ));
                    }
                }
            }
            other => {
                return Err(loc(
                    40398,
                    format!(
                        "Unrecognised input type format for $arrayToObject: {}",
                        type_name(other)
                    ),
                ));
            }
        };
        if k.contains('\0') {
            return Err(loc(
                4940400,
                "Key field cannot contain an embedded null byte",
            ));
        }
        out.insert(k, val);
    }
    Ok(Some(Bson::Document(out)))
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

/// Applies an eagerly evaluated operator to its argument values.
fn apply(op: &str, vals: Vec<Val>) -> Result<Val, QueryError> {
    let arg = |i: usize| vals.get(i).cloned().flatten();
    Ok(match op {
        "$add" => return add(vals),
        "$subtract" => return subtract(arg(0), arg(1)),
        "$multiply" => return multiply(vals),
        "$divide" => return divide(arg(0), arg(1)),
        "$mod" => return modulo(arg(0), arg(1)),
        "$abs" | "$ceil" | "$floor" | "$sqrt" | "$exp" | "$ln" | "$log10" => {
            return unary_math(op, arg(0));
        }
        "$log" => return log(arg(0), arg(1)),
        "$pow" => return pow(arg(0), arg(1)),
        "$round" | "$trunc" => return round(op, arg(0), vals.get(1).cloned()),
        "$sum" | "$avg" | "$min" | "$max" | "$stdDevPop" | "$stdDevSamp" => {
            return list_stat(op, vals);
        }
        "$concat" => {
            let mut parts = Vec::with_capacity(vals.len());
            for v in &vals {
                match v {
                    v if nullish(v) => return Ok(Some(Bson::Null)),
                    Some(Bson::String(s)) => parts.push(s.as_str()),
                    other => {
                        return Err(loc(
                            16702,
                            format!("$concat only supports strings, not {}", tname(other)),
                        ));
                    }
                }
            }
            let len = parts.iter().fold(0usize, |n, s| n.saturating_add(s.len()));
            memory::reserve_string(op, len)?;
            Some(Bson::String(parts.concat()))
        }
        "$substr" | "$substrBytes" => {
            let s = coerce_str(op, &vals[0])?;
            return substr_bytes(op, &s, &vals[1], &vals[2]);
        }
        "$substrCP" => {
            let s = coerce_str(op, &vals[0])?;
            return substr_cp(&s, &vals[1], &vals[2]);
        }
        "$toUpper" => Some(Bson::String(coerce_str(op, &vals[0])?.to_ascii_uppercase())),
        "$toLower" => Some(Bson::String(coerce_str(op, &vals[0])?.to_ascii_lowercase())),
        "$strLenCP" | "$strLenBytes" => match str_of(&vals[0]) {
            Some(s) => {
                let n = if op == "$strLenCP" {
                    s.chars().count()
                } else {
                    s.len()
                };
                Some(Bson::Int32(i32::try_from(n).unwrap_or(i32::MAX)))
            }
            None => {
                return Err(loc(
                    if op == "$strLenCP" { 34471 } else { 34473 },
                    format!(
                        "{op} requires a string argument, found: {}",
                        tname(&vals[0])
                    ),
                ));
            }
        },
        "$split" => {
            if nullish(&vals[0]) || nullish(&vals[1]) {
                return Ok(Some(Bson::Null));
            }
            let Some(s) = str_of(&vals[0]) else {
                return Err(loc(
                    40085,
                    format!(
                        "$split requires an expression that evaluates to a string as a first argument, found: {}",
                        tname(&vals[0])
                    ),
                ));
            };
            let Some(sep) = str_of(&vals[1]) else {
                return Err(loc(
                    40086,
                    format!(
                        "$split requires an expression that evaluates to a string as a second argument, found: {}",
                        tname(&vals[1])
                    ),
                ));
            };
            if sep.is_empty() {
                return Err(loc(40087, "$split requires a non-empty separator"));
            }
            memory::reserve_split(s, sep)?;
            Some(Bson::Array(
                s.split(sep).map(|p| Bson::String(p.to_string())).collect(),
            ))
        }
        "$trim" | "$ltrim" | "$rtrim" => {
            if nullish(&vals[0]) {
                return Ok(Some(Bson::Null));
            }
            let Some(s) = str_of(&vals[0]) else {
                return Err(loc(
                    50699,
                    format!(
                        "{op} requires its input to be a string, got {} instead.",
                        tname(&vals[0])
                    ),
                ));
            };
            let chars: Option<Vec<char>> = match &vals[1] {
                None => None,
                v if nullish(v) => return Ok(Some(Bson::Null)),
                Some(Bson::String(c)) => Some(c.chars().collect()),
                other => {
                    return Err(loc(
                        50700,
                        format!(
                            "{op} requires 'chars' to be a string, got {} instead.",
                            tname(other)
                        ),
                    ));
                }
            };
            let strip = |c: char| match &chars {
                Some(set) => set.contains(&c),
                None => default_trim(c),
            };
            let out = match op {
                "$trim" => s.trim_matches(strip),
                "$ltrim" => s.trim_start_matches(strip),
                _ => s.trim_end_matches(strip),
            };
            Some(Bson::String(out.to_string()))
        }
        "$indexOfCP" | "$indexOfBytes" => return index_of(op, &vals),
        "$strcasecmp" => {
            let a = coerce_str(op, &vals[0])?.to_ascii_lowercase();
            let b = coerce_str(op, &vals[1])?.to_ascii_lowercase();
            Some(Bson::Int32(a.cmp(&b) as i32))
        }
        "$regexMatch" | "$regexFind" | "$regexFindAll" => {
            let (pattern, options) = match (&vals[1], &vals[2]) {
                (v, _) if nullish(v) => return regex_op(op, None, &Re::compile("", "")?),
                (Some(Bson::String(p)), o) => (p.clone(), str_of(o).unwrap_or("").to_string()),
                (Some(Bson::RegularExpression(r)), o) => {
                    if str_of(o).is_some() && !r.options.as_str().is_empty() {
                        return Err(loc(
                            51075,
                            format!("{op}: options set in both regex and options"),
                        ));
                    }
                    (
                        r.pattern.to_string(),
                        str_of(o).map_or(r.options.to_string(), str::to_string),
                    )
                }
                (other, _) => {
                    return Err(loc(
                        51105,
                        format!(
                            "{op} needs 'regex' to be of type string or regex, not {}",
                            tname(other)
                        ),
                    ));
                }
            };
            return regex_op(op, vals[0].clone(), &Re::compile(&pattern, &options)?);
        }
        "$replaceOne" | "$replaceAll" => {
            if vals.iter().any(nullish) {
                return Ok(Some(Bson::Null));
            }
            let names = ["input", "find", "replacement"];
            let mut strs = Vec::new();
            for (v, name) in vals.iter().zip(names) {
                match str_of(v) {
                    Some(s) => strs.push(s),
                    None => {
                        return Err(loc(
                            51746,
                            format!(
                                "{op} requires that '{name}' be a string, found: {}",
                                tname(v)
                            ),
                        ));
                    }
                }
            }
            let all = op == "$replaceAll";
            memory::reserve_string(op, memory::replaced_len(strs[0], strs[1], strs[2], all))?;
            Some(Bson::String(if all {
                strs[0].replace(strs[1], strs[2])
            } else {
                strs[0].replacen(strs[1], strs[2], 1)
            }))
        }
        "$size" => match &vals[0] {
            Some(Bson::Array(a)) => Some(Bson::Int32(i32::try_from(a.len()).unwrap_or(i32::MAX))),
            other => {
                return Err(loc(
                    17124,
                    format!(
                        "The argument to $size must be an array. Type of argument is: {}",
                        tname(other)
                    ),
                ));
            }
        },
        "$arrayElemAt" => {
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
            if i < 0 || i >= len {
                None
            } else {
                Some(items[i as usize].clone())
            }
        }
        "$first" | "$last" => match &vals[0] {
            None => None,
            Some(Bson::Null) | Some(Bson::Undefined) => Some(Bson::Null),
            Some(Bson::Array(items)) => {
                if op == "$first" {
                    items.first().cloned()
                } else {
                    items.last().cloned()
                }
            }
            other => {
                return Err(loc(
                    28689,
                    format!("{op}'s argument must be an array, but is {}", tname(other)),
                ));
            }
        },
        "$in" => match &vals[1] {
            Some(Bson::Array(items)) => {
                let needle = vals[0].clone().unwrap_or(Bson::Null);
                Some(Bson::Boolean(vals[0].is_some() && contains(items, &needle)))
            }
            other => {
                return Err(loc(
                    40081,
                    format!(
                        "$in requires an array as a second argument, found: {}",
                        tname(other)
                    ),
                ));
            }
        },
        "$concatArrays" => {
            let mut arrays = Vec::with_capacity(vals.len());
            for v in &vals {
                match array_arg(op, v, 28664, " only supports arrays, not ")? {
                    Some(a) => arrays.push(a),
                    None => return Ok(Some(Bson::Null)),
                }
            }
            memory::reserve_concat_arrays(&arrays)?;
            let mut out = Vec::with_capacity(arrays.iter().map(|a| a.len()).sum());
            for a in arrays {
                out.extend(a.iter().cloned());
            }
            Some(Bson::Array(out))
        }
        "$slice" => return slice(&vals),
        "$firstN" | "$lastN" | "$minN" | "$maxN" => {
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
            let Some(items) =
                array_arg(op, &vals[0], 5788200, " requires an array 'input', found: ")?
            else {
                return Ok(Some(Bson::Null));
            };
            let mut items = items.clone();
            match op {
                "$firstN" => items.truncate(n),
                "$lastN" => {
                    let skip = items.len().saturating_sub(n);
                    items.drain(..skip);
                }
                _ => {
                    items.retain(|v| !matches!(v, Bson::Null | Bson::Undefined));
                    // A stable sort keeps equal values in input order, as the accumulators do.
                    items.sort_by(|a, b| {
                        let ord = cmp_bson(a, b);
                        if op == "$minN" { ord } else { ord.reverse() }
                    });
                    items.truncate(n);
                }
            }
            Some(Bson::Array(items))
        }
        "$reverseArray" => {
            match array_arg(op, &vals[0], 34435, " must be an array, but was of type: ")? {
                Some(a) => {
                    memory::reserve_concat_arrays(&[a])?;
                    Some(Bson::Array(a.iter().rev().cloned().collect()))
                }
                None => Some(Bson::Null),
            }
        }
        "$isArray" => Some(Bson::Boolean(matches!(vals[0], Some(Bson::Array(_))))),
        "$range" => return range(&vals),
        "$indexOfArray" => {
            let Some(items) = array_arg(
                op,
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
            Some(Bson::Int32(found.map_or(-1, |i| i as i32)))
        }
        "$setUnion" | "$setIntersection" | "$setDifference" | "$setEquals" | "$setIsSubset" => {
            return set_op(op, vals);
        }
        "$allElementsTrue" | "$anyElementTrue" => match &vals[0] {
            Some(Bson::Array(items)) => {
                let t = |b: &Bson| truthy(&Some(b.clone()));
                Some(Bson::Boolean(if op == "$allElementsTrue" {
                    items.iter().all(t)
                } else {
                    items.iter().any(t)
                }))
            }
            other => {
                return Err(loc(
                    if op == "$allElementsTrue" {
                        17040
                    } else {
                        17041
                    },
                    format!("{op}'s argument must be an array, but is {}", tname(other)),
                ));
            }
        },
        "$type" => Some(Bson::String(tname(&vals[0]).to_string())),
        "$isNumber" => Some(Bson::Boolean(vals[0].as_ref().and_then(N::of).is_some())),
        "$toString" | "$toInt" | "$toLong" | "$toDouble" | "$toDecimal" | "$toBool"
        | "$toObjectId" | "$toDate" => {
            if nullish(&vals[0]) {
                return Ok(Some(Bson::Null));
            }
            let to = match op {
                "$toString" => Target::String,
                "$toInt" => Target::Int,
                "$toLong" => Target::Long,
                "$toDouble" => Target::Double,
                "$toDecimal" => Target::Decimal,
                "$toBool" => Target::Bool,
                "$toObjectId" => Target::ObjectId,
                _ => Target::Date,
            };
            return convert(vals[0].clone(), to);
        }
        "$mergeObjects" => {
            let mut out = Document::new();
            for (i, v) in vals.iter().enumerate() {
                match v {
                    v if nullish(v) => {}
                    Some(Bson::Document(d)) => {
                        for (k, val) in d {
                            out.insert(k.clone(), val.clone());
                        }
                    }
                    other => {
                        return Err(loc(
                            40400,
                            format!(
                                "$mergeObjects requires object inputs, but input {} is of type {}",
                                i,
                                tname(other)
                            ),
                        ));
                    }
                }
            }
            Some(Bson::Document(out))
        }
        "$objectToArray" => match &vals[0] {
            v if nullish(v) => Some(Bson::Null),
            Some(Bson::Document(d)) => Some(Bson::Array(
                d.iter()
                    .map(|(k, v)| {
                        let mut pair = Document::new();
                        pair.insert("k", k.clone());
                        pair.insert("v", v.clone());
                        Bson::Document(pair)
                    })
                    .collect(),
            )),
            other => {
                return Err(loc(
                    40390,
                    format!(
                        "$objectToArray requires a document input, found: {}",
                        tname(other)
                    ),
                ));
            }
        },
        "$arrayToObject" => return array_to_object(&vals[0]),
        "$getField" => {
            let field = str_of(&vals[0]).unwrap_or_default().to_string();
            match &vals[1] {
                Some(Bson::Document(d)) => d.get(&field).cloned(),
                v if nullish(v) => None,
                _ => None,
            }
        }
        "$setField" => {
            let field = str_of(&vals[0]).unwrap_or_default().to_string();
            let mut target = match &vals[1] {
                Some(Bson::Document(d)) => d.clone(),
                v if nullish(v) => return Ok(Some(Bson::Null)),
                other => {
                    return Err(loc(
                        4161105,
                        format!(
                            "$setField requires 'input' to evaluate to type Object, found {}",
                            tname(other)
                        ),
                    ));
                }
            };
            match &vals[2] {
                Some(v) => {
                    target.insert(field, v.clone());
                }
                None => {
                    target.remove(&field);
                }
            }
            Some(Bson::Document(target))
        }
        "$dateAdd" | "$dateSubtract" | "$dateDiff" | "$dateTrunc" | "$dateFromParts"
        | "$dateToParts" | "$dateFromString" => return date_op(op, vals),
        "$dateToString" => {
            let date = &vals[0];
            if nullish(date) {
                return Ok(match &vals[3] {
                    None => Some(Bson::Null),
                    on_null => on_null.clone(),
                });
            }
            let ms = date_millis(op, date.as_ref().unwrap_or(&Bson::Null))?;
            let Some(offset) = timezone_of(&vals[2])? else {
                return Ok(Some(Bson::Null));
            };
            let format = match &vals[1] {
                None => "%Y-%m-%dT%H:%M:%S.%LZ".to_string(),
                v if nullish(v) => return Ok(Some(Bson::Null)),
                Some(Bson::String(f)) => f.clone(),
                other => {
                    return Err(loc(
                        18533,
                        format!(
                            "$dateToString requires that 'format' be a string, found: {}",
                            tname(other)
                        ),
                    ));
                }
            };
            Some(Bson::String(dates::format(ms, &format, offset)?))
        }
        _ if DATE_PARTS.contains(&op) => {
            if nullish(&vals[0]) {
                return Ok(Some(Bson::Null));
            }
            let ms = date_millis(op, vals[0].as_ref().unwrap_or(&Bson::Null))?;
            let Some(offset) = timezone_of(&vals[1])? else {
                return Ok(Some(Bson::Null));
            };
            let p = dates::parts(ms.saturating_add(offset.saturating_mul(60_000)));
            let n = match op {
                "$year" => p.year,
                "$month" => p.month,
                "$dayOfMonth" => p.day,
                "$hour" => p.hour,
                "$minute" => p.minute,
                "$second" => p.second,
                "$millisecond" => p.millis,
                "$dayOfWeek" => p.day_of_week,
                "$dayOfYear" => p.day_of_year,
                "$week" => p.week(),
                "$isoWeek" => p.iso_week().1,
                "$isoWeekYear" => {
                    return Ok(Some(Bson::Int64(p.iso_week().0)));
                }
                _ => p.iso_day_of_week(),
            };
            Some(Bson::Int32(i32::try_from(n).unwrap_or(i32::MAX)))
        }
        other => return Err(unrecognized(other)),
    })
}

/// `$sum`'s running total: numbers add with promotion; anything else is ignored.
pub(crate) fn sum_values(total: &Bson, v: &Bson) -> Bson {
    match (N::of(total), N::of(v)) {
        (Some(t), Some(n)) => arith(t, n, i64::checked_add, |a, b| a + b).bson(),
        _ => total.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Calendar operators ($dateAdd, $dateDiff, $dateTrunc, $dateFromParts, $dateToParts,
// $dateFromString). Time zones are UTC or fixed offsets, so "local" time is a plain shift.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Year,
    Quarter,
    Month,
    Week,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

fn unit_of(op: &str, v: &Val) -> Result<Unit, QueryError> {
    Ok(match str_of(v) {
        Some("year") => Unit::Year,
        Some("quarter") => Unit::Quarter,
        Some("month") => Unit::Month,
        Some("week") => Unit::Week,
        Some("day") => Unit::Day,
        Some("hour") => Unit::Hour,
        Some("minute") => Unit::Minute,
        Some("second") => Unit::Second,
        Some("millisecond") => Unit::Millisecond,
        _ => {
            return Err(loc(
                5439014,
                format!(
                    "{op} parameter 'unit' value cannot be recognized as a time unit: {}",
                    v.as_ref().map_or("missing".to_string(), display)
                ),
            ));
        }
    })
}

fn fixed_ms(unit: Unit) -> Option<i64> {
    Some(match unit {
        Unit::Week => 7 * 86_400_000,
        Unit::Day => 86_400_000,
        Unit::Hour => 3_600_000,
        Unit::Minute => 60_000,
        Unit::Second => 1000,
        Unit::Millisecond => 1,
        _ => return None,
    })
}

/// Day of the week a week starts on, 0 = Sunday (the default).
fn week_start(op: &str, v: &Val) -> Result<i64, QueryError> {
    let Some(s) = str_of(v) else {
        return if v.is_none() {
            Ok(0)
        } else {
            Err(loc(
                5439015,
                format!("{op} requires 'startOfWeek' to be a string"),
            ))
        };
    };
    let lower = s.to_ascii_lowercase();
    let days = [
        ("sun", "sunday"),
        ("mon", "monday"),
        ("tue", "tuesday"),
        ("wed", "wednesday"),
        ("thu", "thursday"),
        ("fri", "friday"),
        ("sat", "saturday"),
    ];
    days.iter()
        .position(|(short, long)| lower == *short || lower == *long)
        .map(|i| i as i64)
        .ok_or_else(|| {
            loc(
                5439016,
                format!("{op} parameter 'startOfWeek' value cannot be recognized as a day of a week: {s}"),
            )
        })
}

/// `ms` (local) plus `months` calendar months, clamping the day to the target month's length.
fn add_months(ms: i64, months: i64) -> Option<i64> {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = dates::civil_from_days(days);
    let total = (y.checked_mul(12)?)
        .checked_add(m - 1)?
        .checked_add(months)?;
    let (ny, nm) = (total.div_euclid(12), total.rem_euclid(12) + 1);
    let last = dates::days_in_month(ny, nm);
    let nd = d.min(last);
    dates::days_from_civil(ny, nm, nd)
        .checked_mul(86_400_000)?
        .checked_add(in_day)
}

fn date_op(op: &str, vals: Vec<Val>) -> Result<Val, QueryError> {
    let null = Ok(Some(Bson::Null));
    let offset_arg = |i: usize| timezone_of(vals.get(i).unwrap_or(&None));
    match op {
        "$dateAdd" | "$dateSubtract" => {
            if vals[..3].iter().any(nullish) {
                return null;
            }
            let start = date_millis(op, vals[0].as_ref().unwrap_or(&Bson::Null))?;
            let unit = unit_of(op, &vals[1])?;
            let Some(amount) = vals[2].as_ref().and_then(exact_int) else {
                return Err(loc(
                    5166403,
                    format!(
                        "{op} requires 'amount' to be an integer, found {}",
                        tname(&vals[2])
                    ),
                ));
            };
            let amount = if op == "$dateSubtract" {
                amount.checked_neg()
            } else {
                Some(amount)
            };
            let Some(offset) = offset_arg(3)? else {
                return null;
            };
            let shift = offset * 60_000;
            let overflow = || loc(5166406, format!("{op} overflowed"));
            let amount = amount.ok_or_else(overflow)?;
            let out = match (unit, fixed_ms(unit)) {
                (_, Some(step)) => amount.checked_mul(step).and_then(|d| start.checked_add(d)),
                _ => {
                    let per = match unit {
                        Unit::Year => 12,
                        Unit::Quarter => 3,
                        _ => 1,
                    };
                    amount
                        .checked_mul(per)
                        .zip(start.checked_add(shift))
                        .and_then(|(m, local)| add_months(local, m))
                        .and_then(|l| l.checked_sub(shift))
                }
            };
            Ok(Some(Bson::DateTime(DateTime::from_millis(
                out.ok_or_else(overflow)?,
            ))))
        }
        "$dateDiff" => {
            if vals[..3].iter().any(nullish) {
                return null;
            }
            let a = date_millis(op, vals[0].as_ref().unwrap_or(&Bson::Null))?;
            let b = date_millis(op, vals[1].as_ref().unwrap_or(&Bson::Null))?;
            let unit = unit_of(op, &vals[2])?;
            let Some(offset) = offset_arg(3)? else {
                return null;
            };
            let (a, b) = (
                a.saturating_add(offset * 60_000),
                b.saturating_add(offset * 60_000),
            );
            let (pa, pb) = (dates::parts(a), dates::parts(b));
            let diff = match unit {
                Unit::Year => pb.year - pa.year,
                Unit::Quarter => {
                    (pb.year * 4 + (pb.month - 1) / 3) - (pa.year * 4 + (pa.month - 1) / 3)
                }
                Unit::Month => (pb.year * 12 + pb.month) - (pa.year * 12 + pa.month),
                Unit::Week => {
                    let start = week_start(op, vals.get(4).unwrap_or(&None))?;
                    // Day 0 (1970-01-01) was a Thursday (4); count whole weeks from a week start.
                    let week = |ms: i64| (ms.div_euclid(86_400_000) + 4 - start).div_euclid(7);
                    week(b) - week(a)
                }
                _ => {
                    let step = fixed_ms(unit).unwrap_or(1);
                    b.div_euclid(step)
                        .checked_sub(a.div_euclid(step))
                        .ok_or_else(|| loc(5166309, "$dateDiff result overflows a long"))?
                }
            };
            Ok(Some(Bson::Int64(diff)))
        }
        "$dateTrunc" => {
            if nullish(&vals[0]) || nullish(&vals[1]) {
                return null;
            }
            let ms = date_millis(op, vals[0].as_ref().unwrap_or(&Bson::Null))?;
            let unit = unit_of(op, &vals[1])?;
            let bin = match &vals[2] {
                None => 1,
                v if nullish(v) => return null,
                Some(v) => match exact_int(v) {
                    Some(n) if n > 0 => n,
                    _ => {
                        return Err(loc(
                            5439017,
                            format!(
                                "{op} requires 'binSize' to be a positive integer, found {}",
                                display(v)
                            ),
                        ));
                    }
                },
            };
            let Some(offset) = offset_arg(3)? else {
                return null;
            };
            let shift = offset * 60_000;
            let local = ms.saturating_add(shift);
            // Bins count from 2000-01-01 (local), as mongod's reference point.
            let reference = dates::days_from_civil(2000, 1, 1) * 86_400_000;
            let truncated = match unit {
                Unit::Year | Unit::Quarter | Unit::Month => {
                    let p = dates::parts(local);
                    let per_bin: i64 = match unit {
                        Unit::Year => 12,
                        Unit::Quarter => 3,
                        _ => 1,
                    };
                    let months_per = per_bin.saturating_mul(bin);
                    let since = (p.year - 2000) * 12 + (p.month - 1);
                    let start = since.div_euclid(months_per).saturating_mul(months_per);
                    dates::days_from_civil(
                        2000i64.saturating_add(start.div_euclid(12)),
                        start.rem_euclid(12) + 1,
                        1,
                    )
                    .saturating_mul(86_400_000)
                }
                Unit::Week => {
                    let start = week_start(op, vals.get(4).unwrap_or(&None))?;
                    // 2000-01-01 was a Saturday (6); the first week start on or after it.
                    let first = reference + (start - 6).rem_euclid(7) * 86_400_000;
                    let step = (7 * 86_400_000i64).saturating_mul(bin);
                    first.saturating_add(
                        local
                            .saturating_sub(first)
                            .div_euclid(step)
                            .saturating_mul(step),
                    )
                }
                _ => {
                    let step = fixed_ms(unit).unwrap_or(1).saturating_mul(bin);
                    reference.saturating_add(
                        local
                            .saturating_sub(reference)
                            .div_euclid(step)
                            .saturating_mul(step),
                    )
                }
            };
            Ok(Some(Bson::DateTime(DateTime::from_millis(
                truncated.saturating_sub(shift),
            ))))
        }
        "$dateFromParts" => {
            let names = [
                "year",
                "month",
                "day",
                "hour",
                "minute",
                "second",
                "millisecond",
                "timezone",
                "isoWeekYear",
                "isoWeek",
                "isoDayOfWeek",
            ];
            let iso = vals[8].is_some();
            if iso == vals[0].is_some() {
                return Err(loc(
                    40516,
                    "$dateFromParts requires either 'year' or 'isoWeekYear' to be specified, but not both",
                ));
            }
            let mut n = [0i64; 11];
            for (i, v) in vals.iter().enumerate() {
                if i == 7 {
                    continue;
                }
                match v {
                    None => n[i] = if matches!(i, 1 | 2 | 9 | 10) { 1 } else { 0 },
                    v if nullish(v) => return null,
                    // mongod bounds every part but the year to a 16-bit range, which also
                    // keeps the arithmetic below far from overflow.
                    Some(b) => match exact_int(b) {
                        Some(x) if (-32768..=32767).contains(&x) || (i == 0 || i == 8) => n[i] = x,
                        Some(x) => {
                            return Err(loc(
                                31034,
                                format!(
                                    "'{}' must evaluate to a value in the range [-32768, 32767]; value {x} is not in range",
                                    names[i]
                                ),
                            ));
                        }
                        _ => {
                            return Err(loc(
                                40515,
                                format!(
                                    "'{}' must evaluate to an integer, found {} with value {}",
                                    names[i],
                                    type_name(b),
                                    display(b)
                                ),
                            ));
                        }
                    },
                }
            }
            let year = if iso { n[8] } else { n[0] };
            if !(1..=9999).contains(&year) {
                return Err(loc(
                    31095,
                    format!(
                        "'{}' must evaluate to an integer in the range 1 to 9999, found {year}",
                        if iso { "isoWeekYear" } else { "year" }
                    ),
                ));
            }
            let Some(offset) = offset_arg(7)? else {
                return null;
            };
            let days = if iso {
                let jan4 = dates::days_from_civil(year, 1, 4);
                let jan4_iso_dow = (jan4 + 3).rem_euclid(7); // 0 = Monday
                let week1_monday = jan4 - jan4_iso_dow;
                week1_monday + (n[9] - 1) * 7 + (n[10] - 1)
            } else {
                let total = year * 12 + (n[1] - 1);
                dates::days_from_civil(total.div_euclid(12), total.rem_euclid(12) + 1, 1)
                    + (n[2] - 1)
            };
            let ms = days * 86_400_000 + n[3] * 3_600_000 + n[4] * 60_000 + n[5] * 1000 + n[6]
                - offset * 60_000;
            Ok(Some(Bson::DateTime(DateTime::from_millis(ms))))
        }
        "$dateToParts" => {
            if nullish(&vals[0]) {
                return null;
            }
            let ms = date_millis(op, vals[0].as_ref().unwrap_or(&Bson::Null))?;
            let Some(offset) = offset_arg(1)? else {
                return null;
            };
            let iso = match &vals[2] {
                None => false,
                Some(Bson::Boolean(b)) => *b,
                v if nullish(v) => return null,
                other => {
                    return Err(loc(
                        40521,
                        format!("iso8601 must evaluate to a bool, found {}", tname(other)),
                    ));
                }
            };
            let p = dates::parts(ms.saturating_add(offset * 60_000));
            let mut d = Document::new();
            let int = |x: i64| Bson::Int32(i32::try_from(x).unwrap_or(i32::MAX));
            if iso {
                let (wy, w) = p.iso_week();
                d.insert("isoWeekYear", int(wy));
                d.insert("isoWeek", int(w));
                d.insert("isoDayOfWeek", int(p.iso_day_of_week()));
            } else {
                d.insert("year", int(p.year));
                d.insert("month", int(p.month));
                d.insert("day", int(p.day));
            }
            d.insert("hour", int(p.hour));
            d.insert("minute", int(p.minute));
            d.insert("second", int(p.second));
            d.insert("millisecond", int(p.millis));
            Ok(Some(Bson::Document(d)))
        }
        _ => {
            // $dateFromString: [dateString, format, timezone, onError, onNull]
            if nullish(&vals[0]) {
                return Ok(match &vals[4] {
                    None => Some(Bson::Null),
                    v => v.clone(),
                });
            }
            let fail = |msg: String| -> Result<Val, QueryError> {
                match &vals[3] {
                    Some(fallback) => Ok(Some(fallback.clone())),
                    None => Err(conversion_failure(msg)),
                }
            };
            let Some(text) = str_of(&vals[0]) else {
                return fail(format!(
                    "$dateFromString requires that 'dateString' be a string, found: {}",
                    tname(&vals[0])
                ));
            };
            let Some(offset) = offset_arg(2)? else {
                return null;
            };
            let parsed = match &vals[1] {
                None => dates::parse_iso(text).map(|ms| {
                    // Without an explicit zone in the string, the `timezone` argument applies.
                    let has_zone =
                        text.ends_with('Z') || text.len() > 10 && text[10..].contains(['+', '-']);
                    if has_zone { ms } else { ms - offset * 60_000 }
                }),
                Some(Bson::String(f)) => {
                    dates::parse_with_format(text, f).map(|(ms, zone)| match zone {
                        Some(z) => ms - z * 60_000,
                        None => ms - offset * 60_000,
                    })
                }
                v if nullish(v) => return null,
                other => {
                    return Err(loc(
                        40684,
                        format!(
                            "$dateFromString requires that 'format' be a string, found: {}",
                            tname(other)
                        ),
                    ));
                }
            };
            match parsed {
                Some(ms) => Ok(Some(Bson::DateTime(DateTime::from_millis(ms)))),
                None => fail(format!("Error parsing date string '{text}'")),
            }
        }
    }
}
