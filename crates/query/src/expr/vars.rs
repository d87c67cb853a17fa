//! Variables: the command's `let` constants, the names bound while parsing, their values while
//! evaluating, and the operators that bind them (`$let`, `$map`, `$filter`, `$reduce`).
//!
//! Both scopes are thread-local because parsing and evaluation are synchronous and nested
//! calls (a `$match` inside a `$lookup` pipeline evaluating `$expr`) share no other channel.
//! Invariant: every push onto a scope is undone by a drop guard, so an error leaves no binding.

use std::cell::{Cell, RefCell};

use bson::raw::RawBsonRef;
use bson::{Bson, RawDocument};

use super::args::{named, pick};
use super::{Expr, bad, loc};
use crate::error::QueryError;

thread_local! {
    /// The command's `let` variables while its filters, updates and pipelines are parsed.
    pub(super) static LET_VARS: RefCell<Vec<(String, Bson)>> = const { RefCell::new(Vec::new()) };
    /// Names bound by enclosing `$let`/`$map`/`$filter`/`$reduce`/`$lookup` while parsing.
    pub(super) static BOUND: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    /// Their values while evaluating; innermost last.
    pub(super) static VARS: RefCell<Vec<(String, Bson)>> = const { RefCell::new(Vec::new()) };
    pub(super) static DEPTH: Cell<usize> = const { Cell::new(0) };
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

pub(super) fn let_var(name: &str) -> Option<Bson> {
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

pub(super) fn var_value(name: &str) -> Option<Bson> {
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

/// `$let: {vars: {...}, in: ...}`: the body is parsed with the names bound.
pub(super) fn parse_let(arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let spec = named("$let", arg, &["vars", "in"], 16875)?;
    let Some(RawBsonRef::Document(vars)) = pick(&spec, "vars") else {
        return Err(loc(16876, "Missing 'vars' parameter to $let"));
    };
    let body = pick(&spec, "in").ok_or_else(|| loc(16877, "Missing 'in' parameter to $let"))?;
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

/// `$map: {input, as, in}`.
pub(super) fn parse_map(arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let op = "$map";
    let spec = named(op, arg, &["input", "as", "in"], 16879)?;
    let input =
        pick(&spec, "input").ok_or_else(|| loc(16880, "Missing 'input' parameter to $map"))?;
    let var = var_name_of(op, pick(&spec, "as"), "this")?;
    let each = pick(&spec, "in").ok_or_else(|| loc(16882, "Missing 'in' parameter to $map"))?;
    let each = with_bound(std::slice::from_ref(&var), || Expr::parse(each))?;
    Ok(Expr::Map {
        input: Box::new(Expr::parse(input)?),
        var,
        each: Box::new(each),
    })
}

/// `$filter: {input, as, cond, limit}`.
pub(super) fn parse_filter(arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let op = "$filter";
    let spec = named(op, arg, &["input", "as", "cond", "limit"], 28647)?;
    let input =
        pick(&spec, "input").ok_or_else(|| loc(28648, "Missing 'input' parameter to $filter"))?;
    let var = var_name_of(op, pick(&spec, "as"), "this")?;
    let cond =
        pick(&spec, "cond").ok_or_else(|| loc(28650, "Missing 'cond' parameter to $filter"))?;
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

/// `$reduce: {input, initialValue, in}`: `in` sees `$$this` and `$$value`.
pub(super) fn parse_reduce(arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let spec = named("$reduce", arg, &["input", "initialValue", "in"], 40076)?;
    let input =
        pick(&spec, "input").ok_or_else(|| loc(40077, "Missing 'input' parameter to $reduce"))?;
    let initial = pick(&spec, "initialValue")
        .ok_or_else(|| loc(40078, "Missing 'initialValue' parameter to $reduce"))?;
    let each = pick(&spec, "in").ok_or_else(|| loc(40079, "Missing 'in' parameter to $reduce"))?;
    let each = with_bound(&["this".to_string(), "value".to_string()], || {
        Expr::parse(each)
    })?;
    Ok(Expr::Reduce {
        input: Box::new(Expr::parse(input)?),
        initial: Box::new(Expr::parse(initial)?),
        each: Box::new(each),
    })
}

pub(super) fn var_name_of(
    op: &str,
    v: Option<RawBsonRef<'_>>,
    default: &str,
) -> Result<String, QueryError> {
    match v {
        None => Ok(default.to_string()),
        Some(RawBsonRef::String(s)) => {
            check_var_name(s)?;
            Ok(s.to_string())
        }
        Some(_) => Err(bad(format!("{op} 'as' must be a string"))),
    }
}
