//! Object operators: `$mergeObjects`, `$objectToArray`, `$arrayToObject`, `$getField` and
//! `$setField`. `$getField`/`$setField` name their field by a constant string, checked when
//! parsed.

use bson::raw::RawBsonRef;
use bson::{Bson, Document};

use super::args::{named, pick};
use super::array::array_arg;
use super::ops::Op;
use super::string::str_of;
use super::{Expr, Val, loc, nullish, tname, type_name};
use crate::error::QueryError;

/// Applies an object operator to its argument values.
pub(super) fn apply(op: Op, vals: Vec<Val>) -> Result<Val, QueryError> {
    match op {
        Op::MergeObjects => merge_objects(&vals),
        Op::ObjectToArray => object_to_array(&vals[0]),
        Op::ArrayToObject => array_to_object(&vals[0]),
        Op::GetField => {
            let field = str_of(&vals[0]).unwrap_or_default().to_string();
            Ok(match &vals[1] {
                Some(Bson::Document(d)) => d.get(&field).cloned(),
                _ => None,
            })
        }
        _ => set_field(&vals),
    }
}

/// `$setField: {field, input, value}`, `field` a constant string.
pub(super) fn parse_set_field(arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let spec = named("$setField", arg, &["field", "input", "value"], 4161100)?;
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
            .ok_or_else(|| loc(code, format!("$setField requires '{name}' to be specified")))
            .and_then(Expr::parse)
    };
    Ok(Expr::Op(
        Op::SetField,
        vec![
            Expr::Const(Bson::String(field)),
            part("input", 4161103)?,
            part("value", 4161104)?,
        ],
    ))
}

/// `$getField: {field, input}` or `$getField: field` (of `$$CURRENT`).
pub(super) fn parse_get_field(arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let (field, input) = match arg {
        RawBsonRef::Document(d)
            if d.get("field").ok().flatten().is_some()
                && !d.iter().flatten().any(|(k, _)| k.as_str().starts_with('$')) =>
        {
            let spec = named("$getField", arg, &["field", "input"], 3041701)?;
            let field = pick(&spec, "field").unwrap_or(RawBsonRef::Null);
            let input = match pick(&spec, "input") {
                Some(i) => Expr::parse(i)?,
                None => Expr::Root(Vec::new()),
            };
            (field, input)
        }
        other => (other, Expr::Root(Vec::new())),
    };
    let constant = match field {
        RawBsonRef::String(s) if !s.starts_with('$') => Some(s.to_string()),
        RawBsonRef::Document(lit) => match lit.get("$literal").ok().flatten() {
            Some(RawBsonRef::String(s)) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    };
    let Some(field) = constant else {
        return Err(loc(
            5654602,
            "$getField requires 'field' to evaluate to a constant string",
        ));
    };
    Ok(Expr::Op(
        Op::GetField,
        vec![Expr::Const(Bson::String(field)), input],
    ))
}

fn set_field(vals: &[Val]) -> Result<Val, QueryError> {
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
    Ok(Some(Bson::Document(target)))
}

fn merge_objects(vals: &[Val]) -> Result<Val, QueryError> {
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
    Ok(Some(Bson::Document(out)))
}

fn object_to_array(v: &Val) -> Result<Val, QueryError> {
    match v {
        v if nullish(v) => Ok(Some(Bson::Null)),
        Some(Bson::Document(d)) => Ok(Some(Bson::Array(
            d.iter()
                .map(|(k, v)| {
                    let mut pair = Document::new();
                    pair.insert("k", k.clone());
                    pair.insert("v", v.clone());
                    Bson::Document(pair)
                })
                .collect(),
        ))),
        other => Err(loc(
            40390,
            format!(
                "$objectToArray requires a document input, found: {}",
                tname(other)
            ),
        )),
    }
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
            Bson::Array(pair) => pair_entry(pair)?,
            Bson::Document(d) => kv_entry(d)?,
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

/// `[key, value]` as an `$arrayToObject` entry.
fn pair_entry(pair: &[Bson]) -> Result<(String, Bson), QueryError> {
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
        Bson::String(k) => Ok((k.clone(), pair[1].clone())),
        other => Err(loc(
            40395,
            format!(
                "$arrayToObject requires an array of key-value pairs, where the key must be of type string. Found key type: {}",
                type_name(other)
            ),
        )),
    }
}

/// `{k: key, v: value}` as an `$arrayToObject` entry.
fn kv_entry(d: &Document) -> Result<(String, Bson), QueryError> {
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
        (Some(Bson::String(k)), Some(val)) => Ok((k.clone(), val.clone())),
        (Some(other), Some(_)) => Err(loc(
            40394,
            format!(
                "$arrayToObject requires an object with keys 'k' and 'v', where the value of 'k' must be of type string. Found type: {}",
                type_name(other)
            ),
        )),
        _ => Err(loc(
            40393,
            "$arrayToObject requires an object with keys 'k' and 'v'. Missing either or both keys from: {}",
        )),
    }
}
