//! String operators: `$concat`, `$substr*`, `$toUpper`/`$toLower`, `$strLen*`, `$split`,
//! `$trim`s, `$indexOf*`, `$strcasecmp`, `$replaceOne`/`$replaceAll` and the `$regex*` family.
//! Offsets are in UTF-8 bytes for the `Bytes` forms and in code points for the `CP` forms.

use bson::raw::RawBsonRef;
use bson::{Bson, Document};

use super::args::{named, parse_opt, pick};
use super::arith::exact_int;
use super::ops::Op;
use super::{Expr, Val, loc, nullish, tname};
use crate::dates;
use crate::error::QueryError;
use crate::memory::{self, Held};
use crate::regex::{Groups, Re};

/// Applies a string operator to its argument values.
pub(super) fn apply(op: Op, vals: Vec<Val>) -> Result<Val, QueryError> {
    let name = op.name();
    match op {
        Op::Concat => concat(&vals),
        Op::Substr | Op::SubstrBytes => {
            let s = coerce_str(name, &vals[0])?;
            substr_bytes(name, &s, &vals[1], &vals[2])
        }
        Op::SubstrCP => {
            let s = coerce_str(name, &vals[0])?;
            substr_cp(&s, &vals[1], &vals[2])
        }
        Op::ToUpper => Ok(Some(Bson::String(
            coerce_str(name, &vals[0])?.to_ascii_uppercase(),
        ))),
        Op::ToLower => Ok(Some(Bson::String(
            coerce_str(name, &vals[0])?.to_ascii_lowercase(),
        ))),
        Op::StrLenCP | Op::StrLenBytes => str_len(op, &vals[0]),
        Op::Split => split(&vals),
        Op::Trim | Op::Ltrim | Op::Rtrim => trim(op, &vals),
        Op::IndexOfCP | Op::IndexOfBytes => index_of(op, &vals),
        Op::Strcasecmp => {
            let a = coerce_str(name, &vals[0])?.to_ascii_lowercase();
            let b = coerce_str(name, &vals[1])?.to_ascii_lowercase();
            Ok(Some(Bson::Int32(a.cmp(&b) as i32)))
        }
        Op::RegexMatch | Op::RegexFind | Op::RegexFindAll => regex_dynamic(op, &vals),
        _ => replace(op, &vals),
    }
}

/// `$regexMatch`/`$regexFind`/`$regexFindAll: {input, regex, options}`; a constant pattern is
/// compiled once here rather than per document.
pub(super) fn parse_regex(op: Op, arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let name = op.name();
    let spec = named(name, arg, &["input", "regex", "options"], 51106)?;
    let input = pick(&spec, "input")
        .ok_or_else(|| loc(31022, format!("{name} requires 'input' parameter")))?;
    let regex = pick(&spec, "regex")
        .ok_or_else(|| loc(31023, format!("{name} requires 'regex' parameter")))?;
    let options = pick(&spec, "options");
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
            op,
            input: Box::new(Expr::parse(input)?),
            re: Box::new(Re::compile(&p, &o)?),
        });
    }
    Ok(Expr::Op(
        op,
        vec![
            Expr::parse(input)?,
            Expr::parse(regex)?,
            parse_opt(options)?,
        ],
    ))
}

/// `$replaceOne`/`$replaceAll: {input, find, replacement}`.
pub(super) fn parse_replace(op: Op, arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let name = op.name();
    let spec = named(name, arg, &["input", "find", "replacement"], 51750)?;
    let need = |field: &str| {
        pick(&spec, field)
            .ok_or_else(|| loc(51749, format!("{name} requires '{field}' to be specified")))
            .and_then(Expr::parse)
    };
    Ok(Expr::Op(
        op,
        vec![need("input")?, need("find")?, need("replacement")?],
    ))
}

/// `$trim`/`$ltrim`/`$rtrim: {input, chars}`.
pub(super) fn parse_trim(op: Op, arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let name = op.name();
    let spec = named(name, arg, &["input", "chars"], 50696)?;
    let input = pick(&spec, "input")
        .ok_or_else(|| loc(50695, format!("{name} requires an 'input' field")))?;
    Ok(Expr::Op(
        op,
        vec![Expr::parse(input)?, parse_opt(pick(&spec, "chars"))?],
    ))
}

fn concat(vals: &[Val]) -> Result<Val, QueryError> {
    let mut parts = Vec::with_capacity(vals.len());
    for v in vals {
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
    memory::reserve_string("$concat", len)?;
    Ok(Some(Bson::String(parts.concat())))
}

fn str_len(op: Op, v: &Val) -> Result<Val, QueryError> {
    match str_of(v) {
        Some(s) => {
            let n = if op == Op::StrLenCP {
                s.chars().count()
            } else {
                s.len()
            };
            Ok(Some(Bson::Int32(i32::try_from(n).unwrap_or(i32::MAX))))
        }
        None => Err(loc(
            if op == Op::StrLenCP { 34471 } else { 34473 },
            format!(
                "{} requires a string argument, found: {}",
                op.name(),
                tname(v)
            ),
        )),
    }
}

fn split(vals: &[Val]) -> Result<Val, QueryError> {
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
    Ok(Some(Bson::Array(
        s.split(sep).map(|p| Bson::String(p.to_string())).collect(),
    )))
}

fn trim(op: Op, vals: &[Val]) -> Result<Val, QueryError> {
    let name = op.name();
    if nullish(&vals[0]) {
        return Ok(Some(Bson::Null));
    }
    let Some(s) = str_of(&vals[0]) else {
        return Err(loc(
            50699,
            format!(
                "{name} requires its input to be a string, got {} instead.",
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
                    "{name} requires 'chars' to be a string, got {} instead.",
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
        Op::Trim => s.trim_matches(strip),
        Op::Ltrim => s.trim_start_matches(strip),
        _ => s.trim_end_matches(strip),
    };
    Ok(Some(Bson::String(out.to_string())))
}

/// A `$regex*` whose pattern is only known per document: compiled on each evaluation.
fn regex_dynamic(op: Op, vals: &[Val]) -> Result<Val, QueryError> {
    let (pattern, options) = match (&vals[1], &vals[2]) {
        (v, _) if nullish(v) => return regex_op(op, None, &Re::compile("", "")?),
        (Some(Bson::String(p)), o) => (p.clone(), str_of(o).unwrap_or("").to_string()),
        (Some(Bson::RegularExpression(r)), o) => {
            if str_of(o).is_some() && !r.options.as_str().is_empty() {
                return Err(loc(
                    51075,
                    format!("{}: options set in both regex and options", op.name()),
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
                    "{} needs 'regex' to be of type string or regex, not {}",
                    op.name(),
                    tname(other)
                ),
            ));
        }
    };
    regex_op(op, vals[0].clone(), &Re::compile(&pattern, &options)?)
}

fn replace(op: Op, vals: &[Val]) -> Result<Val, QueryError> {
    let name = op.name();
    if vals.iter().any(nullish) {
        return Ok(Some(Bson::Null));
    }
    let names = ["input", "find", "replacement"];
    let mut strs = Vec::new();
    for (v, field) in vals.iter().zip(names) {
        match str_of(v) {
            Some(s) => strs.push(s),
            None => {
                return Err(loc(
                    51746,
                    format!(
                        "{name} requires that '{field}' be a string, found: {}",
                        tname(v)
                    ),
                ));
            }
        }
    }
    let all = op == Op::ReplaceAll;
    memory::reserve_string(name, memory::replaced_len(strs[0], strs[1], strs[2], all))?;
    Ok(Some(Bson::String(if all {
        strs[0].replace(strs[1], strs[2])
    } else {
        strs[0].replacen(strs[1], strs[2], 1)
    })))
}

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
pub(super) fn stringify(v: &Bson) -> Option<String> {
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

pub(super) fn str_of(v: &Val) -> Option<&str> {
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

fn index_of(op: Op, vals: &[Val]) -> Result<Val, QueryError> {
    let bytes_mode = op == Op::IndexOfBytes;
    let op = op.name();
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

pub(super) fn regex_op(op: Op, input: Val, re: &Re) -> Result<Val, QueryError> {
    let s = match &input {
        v if nullish(v) => {
            return Ok(Some(match op {
                Op::RegexMatch => Bson::Boolean(false),
                Op::RegexFindAll => Bson::Array(Vec::new()),
                _ => Bson::Null,
            }));
        }
        Some(Bson::String(s)) => s.as_str(),
        _ => {
            return Err(loc(
                51104,
                format!("{} needs 'input' to be of type string", op.name()),
            ));
        }
    };
    let found = |groups: &Groups<'_>| -> Bson {
        let whole = groups.first().copied().flatten();
        let idx = whole.map_or(0, |(start, _)| s[..start].chars().count());
        let captures: Vec<Bson> = groups
            .iter()
            .skip(1)
            .map(|c| c.map_or(Bson::Null, |(_, text)| Bson::String(text.to_string())))
            .collect();
        let mut d = Document::new();
        d.insert("match", whole.map_or("", |(_, text)| text));
        d.insert("idx", idx as i32);
        d.insert("captures", captures);
        Bson::Document(d)
    };
    let result = match op {
        Op::RegexMatch => Bson::Boolean(re.is_match(s)),
        Op::RegexFind => {
            let mut first = Bson::Null;
            re.for_each_match(s, &mut |groups| {
                first = found(&groups);
                Ok(false)
            })?;
            first
        }
        _ => {
            // One document per match: a pattern matching everywhere in a long string makes
            // many, so each is charged as it is made.
            let mut held = Held::new("$regexFindAll");
            let mut all = Vec::new();
            re.for_each_match(s, &mut |groups| {
                let d = found(&groups);
                held.keep(&d)?;
                all.push(d);
                Ok(true)
            })?;
            Bson::Array(all)
        }
    };
    match crate::regex::take_match_error() {
        Some(e) => Err(e),
        None => Ok(Some(result)),
    }
}
