//! `$jsonSchema`: MongoDB's subset of JSON Schema draft 4, plus `bsonType`.
//!
//! A schema is compiled once into a tree of checks and then evaluated directly against raw BSON
//! values, the top-level schema against the document itself. As in JSON Schema (and unlike
//! MongoDB's own query operators), a keyword that constrains one type says nothing about values
//! of other types: `minimum` accepts a string, `required` accepts an array. Only `type` and
//! `bsonType` reject values for their type, and none of the checks traverse arrays implicitly.
//!
//! Known differences from mongod: property names are taken literally (mongod would read a dotted
//! name as a path), Decimal128 values go through their nearest double like everywhere else in this
//! crate, and the client-side-encryption keywords `encrypt`/`encryptMetadata` are refused.

use std::cmp::Ordering;

use bson::{RawArrayBuf, RawBson, RawBsonRef, RawDocumentBuf};

use crate::compare::{MAX_DEPTH, Num, as_num, compare_values};
use crate::error::QueryError;
use crate::preds::{CmpOp, MAX_FILTER_DEPTH, TypeSel, compare_matches, type_alias, type_matches};
use crate::regex::Re;
use crate::types::raw_type_name as type_name;

#[derive(Debug, Clone)]
pub(crate) struct Schema {
    checks: Vec<Check>,
}

#[derive(Debug, Clone)]
enum Check {
    /// `type` or `bsonType`, kept as `$type` selectors so both share one notion of type.
    Type(Vec<TypeSel>),
    /// `minimum`/`maximum` as `$gte`/`$gt`/`$lte`/`$lt`, which already compare numbers across
    /// int/long/double/decimal and treat NaN as mongod does.
    Bound(CmpOp, RawBson),
    MultipleOf(Num),
    MinLength(u64),
    MaxLength(u64),
    Pattern(Box<Re>),
    MinItems(u64),
    MaxItems(u64),
    UniqueItems,
    Items(Box<Schema>),
    TupleItems {
        items: Vec<Schema>,
        additional: Option<Extra>,
    },
    Required(Vec<String>),
    Properties(Vec<(String, Schema)>),
    /// `patternProperties` and `additionalProperties`, which both need to know which fields the
    /// other keywords already account for.
    Allowed {
        named: Vec<String>,
        patterns: Vec<(Re, Schema)>,
        additional: Extra,
    },
    MinProperties(u64),
    MaxProperties(u64),
    PropertyDependency(String, Vec<String>),
    SchemaDependency(String, Box<Schema>),
    AllOf(Vec<Schema>),
    AnyOf(Vec<Schema>),
    OneOf(Vec<Schema>),
    Not(Box<Schema>),
    /// Canonical forms (see [`canonical`]) so that lookups ignore field order, as mongod does.
    Enum(Vec<RawBson>),
}

/// What `additionalProperties`/`additionalItems` demand of the members they cover.
#[derive(Debug, Clone)]
enum Extra {
    Any,
    None,
    Schema(Box<Schema>),
}

impl Extra {
    fn allows(&self, v: RawBsonRef<'_>) -> bool {
        match self {
            Extra::Any => true,
            Extra::None => false,
            Extra::Schema(s) => s.matches(v),
        }
    }
}

const KEYWORDS: &[&str] = &[
    "additionalItems",
    "additionalProperties",
    "allOf",
    "anyOf",
    "bsonType",
    "dependencies",
    "description",
    "enum",
    "exclusiveMaximum",
    "exclusiveMinimum",
    "items",
    "maxItems",
    "maxLength",
    "maxProperties",
    "maximum",
    "minItems",
    "minLength",
    "minProperties",
    "minimum",
    "multipleOf",
    "not",
    "oneOf",
    "pattern",
    "patternProperties",
    "properties",
    "required",
    "title",
    "type",
    "uniqueItems",
];

/// Draft 4 keywords mongod recognises but refuses, with a message of their own.
const UNSUPPORTED: &[&str] = &[
    "$ref",
    "$schema",
    "default",
    "definitions",
    "format",
    "id",
    // Client-side field level encryption: meaningless without the encryption machinery.
    "encrypt",
    "encryptMetadata",
];

impl Schema {
    /// Compiles the argument of `$jsonSchema`; `depth` is the filter depth it appears at.
    pub(crate) fn parse(value: RawBsonRef<'_>, depth: usize) -> Result<Schema, QueryError> {
        match value {
            RawBsonRef::Document(d) => parse_schema(d, depth + 1),
            _ => Err(QueryError::type_mismatch("$jsonSchema must be an object")),
        }
    }

    pub(crate) fn matches_document(&self, doc: &bson::RawDocument) -> bool {
        self.matches(RawBsonRef::Document(doc))
    }

    fn matches(&self, v: RawBsonRef<'_>) -> bool {
        self.checks.iter().all(|c| c.matches(v))
    }
}

impl Check {
    fn matches(&self, v: RawBsonRef<'_>) -> bool {
        match self {
            Check::Type(sels) => type_matches(sels, v),
            Check::Bound(op, operand) => {
                as_num(v).is_none() || compare_matches(*op, operand.as_raw_bson_ref(), Some(v))
            }
            Check::MultipleOf(divisor) => as_num(v).is_none_or(|n| is_multiple(n, *divisor)),
            Check::MinLength(n) => string_len(v).is_none_or(|len| len >= *n),
            Check::MaxLength(n) => string_len(v).is_none_or(|len| len <= *n),
            Check::Pattern(re) => match v {
                RawBsonRef::String(s) => re.is_match(s),
                _ => true,
            },
            Check::MinItems(n) => array_len(v).is_none_or(|len| len >= *n),
            Check::MaxItems(n) => array_len(v).is_none_or(|len| len <= *n),
            Check::UniqueItems => unique_items(v),
            Check::Items(schema) => match v {
                RawBsonRef::Array(arr) => arr
                    .into_iter()
                    .map_while(Result::ok)
                    .all(|e| schema.matches(e)),
                _ => true,
            },
            Check::TupleItems { items, additional } => tuple_items(items, additional.as_ref(), v),
            Check::Required(names) => match v {
                RawBsonRef::Document(d) => names.iter().all(|n| matches!(d.get(n), Ok(Some(_)))),
                _ => true,
            },
            Check::Properties(props) => match v {
                RawBsonRef::Document(d) => props.iter().all(|(name, schema)| match d.get(name) {
                    Ok(Some(field)) => schema.matches(field),
                    _ => true,
                }),
                _ => true,
            },
            Check::Allowed {
                named,
                patterns,
                additional,
            } => allowed(named, patterns, additional, v),
            Check::MinProperties(n) => field_count(v).is_none_or(|len| len >= *n),
            Check::MaxProperties(n) => field_count(v).is_none_or(|len| len <= *n),
            Check::PropertyDependency(name, needed) => match v {
                RawBsonRef::Document(d) if matches!(d.get(name), Ok(Some(_))) => {
                    needed.iter().all(|n| matches!(d.get(n), Ok(Some(_))))
                }
                _ => true,
            },
            Check::SchemaDependency(name, schema) => match v {
                RawBsonRef::Document(d) if matches!(d.get(name), Ok(Some(_))) => schema.matches(v),
                _ => true,
            },
            Check::AllOf(schemas) => schemas.iter().all(|s| s.matches(v)),
            Check::AnyOf(schemas) => schemas.iter().any(|s| s.matches(v)),
            Check::OneOf(schemas) => schemas.iter().filter(|s| s.matches(v)).take(2).count() == 1,
            Check::Not(schema) => !schema.matches(v),
            Check::Enum(values) => in_enum(values, v),
        }
    }
}

/// `uniqueItems`: no two elements equal (field order aside).
fn unique_items(v: RawBsonRef<'_>) -> bool {
    let RawBsonRef::Array(arr) = v else {
        return true;
    };
    let mut items: Vec<RawBson> = arr
        .into_iter()
        .map_while(Result::ok)
        .map(|e| canonical(e, 0))
        .collect();
    // Sorting makes duplicates neighbours: arrays can be long, pairs quadratic.
    items.sort_by(|a, b| compare_values(a.as_raw_bson_ref(), b.as_raw_bson_ref()));
    !items
        .windows(2)
        .any(|w| compare_values(w[0].as_raw_bson_ref(), w[1].as_raw_bson_ref()) == Ordering::Equal)
}

/// `items` as an array of schemas, position by position, with `additionalItems` past them.
fn tuple_items(items: &[Schema], additional: Option<&Extra>, v: RawBsonRef<'_>) -> bool {
    let RawBsonRef::Array(arr) = v else {
        return true;
    };
    arr.into_iter()
        .map_while(Result::ok)
        .enumerate()
        .all(|(i, e)| match items.get(i) {
            Some(schema) => schema.matches(e),
            None => additional.is_none_or(|extra| extra.allows(e)),
        })
}

/// `patternProperties` and `additionalProperties`: every field is named, matches a pattern
/// (and that pattern's schema), or is allowed as additional.
fn allowed(
    named: &[String],
    patterns: &[(Re, Schema)],
    additional: &Extra,
    v: RawBsonRef<'_>,
) -> bool {
    let RawBsonRef::Document(d) = v else {
        return true;
    };
    d.iter().map_while(Result::ok).all(|(key, field)| {
        let key = key.as_str();
        let mut covered = named.iter().any(|n| n == key);
        for (re, schema) in patterns {
            if re.is_match(key) {
                covered = true;
                if !schema.matches(field) {
                    return false;
                }
            }
        }
        covered || additional.allows(field)
    })
}

/// `enum`: equal to one of the values (field order aside).
fn in_enum(values: &[RawBson], v: RawBsonRef<'_>) -> bool {
    // Only containers have a field order to normalise; scalars are compared as is.
    let owned =
        matches!(v, RawBsonRef::Document(_) | RawBsonRef::Array(_)).then(|| canonical(v, 0));
    let v = owned.as_ref().map_or(v, RawBson::as_raw_bson_ref);
    values
        .iter()
        .any(|e| compare_values(e.as_raw_bson_ref(), v) == Ordering::Equal)
}

fn string_len(v: RawBsonRef<'_>) -> Option<u64> {
    match v {
        // JSON Schema lengths count code points, not bytes.
        RawBsonRef::String(s) => Some(s.chars().count() as u64),
        _ => None,
    }
}

fn array_len(v: RawBsonRef<'_>) -> Option<u64> {
    match v {
        RawBsonRef::Array(arr) => Some(arr.into_iter().map_while(Result::ok).count() as u64),
        _ => None,
    }
}

fn field_count(v: RawBsonRef<'_>) -> Option<u64> {
    match v {
        RawBsonRef::Document(d) => Some(d.iter().map_while(Result::ok).count() as u64),
        _ => None,
    }
}

/// The value with every embedded document's fields sorted by name, so that `compare_values`
/// equality becomes mongod's field-order-insensitive equality for `enum` and `uniqueItems`.
fn canonical(v: RawBsonRef<'_>, depth: usize) -> RawBson {
    if depth > MAX_DEPTH {
        return v.into();
    }
    match v {
        RawBsonRef::Document(d) => {
            let mut fields: Vec<_> = d.iter().map_while(Result::ok).collect();
            fields.sort_by(|a, b| a.0.as_str().as_bytes().cmp(b.0.as_str().as_bytes()));
            let mut out = RawDocumentBuf::new();
            for (key, field) in fields {
                out.append(key, canonical(field, depth + 1));
            }
            RawBson::Document(out)
        }
        RawBsonRef::Array(arr) => {
            let mut out = RawArrayBuf::new();
            for e in arr.into_iter().map_while(Result::ok) {
                out.push(canonical(e, depth + 1));
            }
            RawBson::Array(out)
        }
        _ => v.into(),
    }
}

/// Whether `value` is an exact multiple of `divisor` in decimal arithmetic. mongod computes the
/// remainder in Decimal128 after rounding doubles to 15 significant digits, which is what makes
/// 0.3 a multiple of 0.1 although it is not one in binary floating point.
fn is_multiple(value: Num, divisor: Num) -> bool {
    match (decimal_parts(value), decimal_parts(divisor)) {
        (Some((vm, ve)), Some((dm, de))) => {
            if vm == 0 {
                return true;
            }
            // Both mantissas are free of trailing zeros, so a value with finer digits than the
            // divisor cannot be a multiple of it.
            if ve < de {
                return false;
            }
            // vm * 10^(ve - de) mod dm without materialising the (possibly huge) product.
            let mut rem = vm % dm;
            for _ in 0..(ve - de) {
                rem = (rem * 10) % dm;
            }
            rem == 0
        }
        // x mod ±inf is x, so only zero is a multiple of infinity; NaN is nobody's multiple.
        (Some((vm, _)), None) => vm == 0 && divisor.to_f64().is_infinite(),
        _ => false,
    }
}

/// A finite number as `mantissa * 10^exponent` with no trailing zeros in the mantissa; doubles
/// are first rounded to 15 significant digits (see [`is_multiple`]).
fn decimal_parts(n: Num) -> Option<(i128, i32)> {
    let (mut mantissa, mut exponent) = match n {
        Num::Int(i) => (i128::from(i), 0),
        Num::Dbl(d) if d.is_finite() => {
            let text = format!("{d:.14e}");
            let (digits, exp) = text.split_once('e')?;
            let exp: i32 = exp.parse().ok()?;
            let negative = digits.starts_with('-');
            let magnitude: i128 = digits
                .chars()
                .filter(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()?;
            (if negative { -magnitude } else { magnitude }, exp - 14)
        }
        Num::Dbl(_) => return None,
    };
    if mantissa == 0 {
        return Some((0, 0));
    }
    while mantissa % 10 == 0 {
        mantissa /= 10;
        exponent += 1;
    }
    Some((mantissa, exponent))
}

// ---------------------------------------------------------------------------------------------
// Parsing

fn failed(msg: impl Into<String>) -> QueryError {
    QueryError::failed_to_parse(msg)
}

fn mismatch(msg: impl Into<String>) -> QueryError {
    QueryError::type_mismatch(msg)
}

fn invalid_bson(e: impl std::fmt::Display) -> QueryError {
    QueryError::bad_value(format!("invalid BSON in $jsonSchema: {e}"))
}

/// The keywords of one schema object, looked up by name once duplicates have been refused.
struct Keywords<'a> {
    entries: Vec<(&'a str, RawBsonRef<'a>)>,
}

impl<'a> Keywords<'a> {
    fn get(&self, name: &str) -> Option<RawBsonRef<'a>> {
        self.entries
            .iter()
            .find_map(|(k, v)| (*k == name).then_some(*v))
    }
}

fn parse_schema(d: &bson::RawDocument, depth: usize) -> Result<Schema, QueryError> {
    if depth > MAX_FILTER_DEPTH {
        return Err(QueryError::bad_value(format!(
            "exceeded maximum query tree depth of {MAX_FILTER_DEPTH}"
        )));
    }
    let mut entries: Vec<(&str, RawBsonRef<'_>)> = Vec::new();
    for elem in d.iter() {
        let (key, value) = elem.map_err(invalid_bson)?;
        let key = key.as_str();
        if !KEYWORDS.contains(&key) {
            return Err(if UNSUPPORTED.contains(&key) {
                failed(format!(
                    "$jsonSchema keyword '{key}' is not currently supported"
                ))
            } else {
                failed(format!("Unknown $jsonSchema keyword: {key}"))
            });
        }
        if entries.iter().any(|(k, _)| *k == key) {
            return Err(failed(format!("Duplicate $jsonSchema keyword: {key}")));
        }
        entries.push((key, value));
    }
    let kw = Keywords { entries };

    for name in ["description", "title"] {
        if let Some(v) = kw.get(name)
            && !matches!(v, RawBsonRef::String(_))
        {
            return Err(mismatch(format!(
                "$jsonSchema keyword '{name}' must be of type string"
            )));
        }
    }

    // Errors surface in mongod's order: types, then scalar, array, object and logical keywords.
    let mut checks = Vec::new();
    match (kw.get("type"), kw.get("bsonType")) {
        (Some(_), Some(_)) => {
            return Err(failed(
                "Cannot specify both $jsonSchema keywords 'type' and 'bsonType'",
            ));
        }
        (Some(t), None) => checks.push(Check::Type(parse_types("type", t)?)),
        (None, Some(t)) => checks.push(Check::Type(parse_types("bsonType", t)?)),
        (None, None) => {}
    }
    parse_scalar_keywords(&kw, &mut checks)?;
    parse_array_keywords(&kw, depth, &mut checks)?;
    parse_object_keywords(&kw, depth, &mut checks)?;
    parse_logical_keywords(&kw, depth, &mut checks)?;
    Ok(Schema { checks })
}

fn parse_types(keyword: &str, v: RawBsonRef<'_>) -> Result<Vec<TypeSel>, QueryError> {
    let mut names: Vec<&str> = Vec::new();
    match v {
        RawBsonRef::String(s) => names.push(s),
        RawBsonRef::Array(arr) => {
            for item in arr {
                let RawBsonRef::String(s) = item.map_err(invalid_bson)? else {
                    return Err(mismatch(format!(
                        "$jsonSchema keyword '{keyword}' array elements must be strings"
                    )));
                };
                if s == "integer" {
                    return Err(integer_unsupported());
                }
                if names.contains(&s) {
                    return Err(failed(format!(
                        "$jsonSchema keyword '{keyword}' has duplicate value: {s}"
                    )));
                }
                names.push(s);
            }
        }
        _ => {
            return Err(mismatch(format!(
                "$jsonSchema keyword '{keyword}' must be either a string or an array of strings"
            )));
        }
    }
    if names.contains(&"integer") {
        return Err(integer_unsupported());
    }
    if names.is_empty() {
        return Err(failed(format!(
            "$jsonSchema keyword '{keyword}' must name at least one type"
        )));
    }
    let mut sels = Vec::new();
    for name in names {
        let sel = if keyword == "type" {
            json_type(name)
        } else {
            type_alias(name)
        };
        match sel {
            Some(sel) => sels.push(sel),
            None if name == "missing" => {
                return Err(QueryError::bad_value(
                    "'missing' is not a legal type name. To query for non-existence of a field, use {$exists:false}.",
                ));
            }
            None => {
                return Err(QueryError::bad_value(format!(
                    "Unknown type name alias: {name}"
                )));
            }
        }
    }
    Ok(sels)
}

fn integer_unsupported() -> QueryError {
    failed("$jsonSchema type 'integer' is not currently supported.")
}

/// JSON Schema's type names; JSON has a single number type and no integer one in mongod.
fn json_type(name: &str) -> Option<TypeSel> {
    let code = match name {
        "object" => 3,
        "array" => 4,
        "boolean" => 8,
        "string" => 2,
        "null" => 10,
        "number" => return Some(TypeSel::Number),
        _ => return None,
    };
    Some(TypeSel::Code(code))
}

fn parse_scalar_keywords(kw: &Keywords<'_>, checks: &mut Vec<Check>) -> Result<(), QueryError> {
    if let Some(v) = kw.get("pattern") {
        let RawBsonRef::String(p) = v else {
            return Err(mismatch("$jsonSchema keyword 'pattern' must be a string"));
        };
        // JSON Schema has no way to spell regex flags.
        checks.push(Check::Pattern(Box::new(Re::compile(p, "")?)));
    }
    if let Some(v) = kw.get("maxLength") {
        checks.push(Check::MaxLength(non_negative("maxLength", v)?));
    }
    if let Some(v) = kw.get("minLength") {
        checks.push(Check::MinLength(non_negative("minLength", v)?));
    }
    if let Some(v) = kw.get("multipleOf") {
        let n = as_num(v)
            .ok_or_else(|| mismatch("$jsonSchema keyword 'multipleOf' must be a number"))?;
        if !n.is_nan() && n.to_f64() <= 0.0 {
            return Err(failed(
                "$jsonSchema keyword 'multipleOf' must have a positive value",
            ));
        }
        checks.push(Check::MultipleOf(n));
    }
    for (bound, exclusive, strict, loose) in [
        ("maximum", "exclusiveMaximum", CmpOp::Lt, CmpOp::Lte),
        ("minimum", "exclusiveMinimum", CmpOp::Gt, CmpOp::Gte),
    ] {
        match kw.get(bound) {
            Some(v) => {
                let is_exclusive = match kw.get(exclusive) {
                    None => false,
                    Some(RawBsonRef::Boolean(b)) => b,
                    Some(_) => {
                        return Err(mismatch(format!(
                            "$jsonSchema keyword '{exclusive}' must be a boolean"
                        )));
                    }
                };
                if as_num(v).is_none() {
                    return Err(mismatch(format!(
                        "$jsonSchema keyword '{bound}' must be a number"
                    )));
                }
                let op = if is_exclusive { strict } else { loose };
                checks.push(Check::Bound(op, v.into()));
            }
            // mongod's message, grammar included.
            None if kw.get(exclusive).is_some() => {
                return Err(failed(format!(
                    "$jsonSchema keyword '{bound}' must be a present if {exclusive} is present"
                )));
            }
            None => {}
        }
    }
    Ok(())
}

fn parse_array_keywords(
    kw: &Keywords<'_>,
    depth: usize,
    checks: &mut Vec<Check>,
) -> Result<(), QueryError> {
    if let Some(v) = kw.get("minItems") {
        checks.push(Check::MinItems(non_negative("minItems", v)?));
    }
    if let Some(v) = kw.get("maxItems") {
        checks.push(Check::MaxItems(non_negative("maxItems", v)?));
    }
    if let Some(v) = kw.get("uniqueItems") {
        let RawBsonRef::Boolean(unique) = v else {
            return Err(mismatch(
                "$jsonSchema keyword 'uniqueItems' must be a boolean",
            ));
        };
        if unique {
            checks.push(Check::UniqueItems);
        }
    }
    let mut tuple = None;
    match kw.get("items") {
        None => {}
        Some(RawBsonRef::Document(d)) => {
            checks.push(Check::Items(Box::new(parse_schema(d, depth + 1)?)))
        }
        Some(RawBsonRef::Array(arr)) => {
            let mut items = Vec::new();
            for item in arr {
                match item.map_err(invalid_bson)? {
                    RawBsonRef::Document(d) => items.push(parse_schema(d, depth + 1)?),
                    other => {
                        return Err(mismatch(format!(
                            "$jsonSchema keyword 'items' requires that each element of the array is an object, but found a {}",
                            type_name(other)
                        )));
                    }
                }
            }
            tuple = Some(items);
        }
        Some(other) => {
            return Err(mismatch(format!(
                "$jsonSchema keyword 'items' must be an array or an object, not {}",
                type_name(other)
            )));
        }
    }
    let additional = match kw.get("additionalItems") {
        None => None,
        Some(v) => Some(parse_extra(v, depth, |t| {
            format!(
                "$jsonSchema keyword 'additionalItems' must be either an object or a boolean, but got a {t}"
            )
        })?),
    };
    // `additionalItems` only means something after a positional `items` list.
    if let Some(items) = tuple {
        checks.push(Check::TupleItems { items, additional });
    }
    Ok(())
}

fn parse_extra(
    v: RawBsonRef<'_>,
    depth: usize,
    message: impl Fn(&str) -> String,
) -> Result<Extra, QueryError> {
    match v {
        RawBsonRef::Boolean(true) => Ok(Extra::Any),
        RawBsonRef::Boolean(false) => Ok(Extra::None),
        RawBsonRef::Document(d) => Ok(Extra::Schema(Box::new(parse_schema(d, depth + 1)?))),
        other => Err(mismatch(message(type_name(other)))),
    }
}

fn parse_object_keywords(
    kw: &Keywords<'_>,
    depth: usize,
    checks: &mut Vec<Check>,
) -> Result<(), QueryError> {
    let required = match kw.get("required") {
        None => None,
        Some(v) => Some(parse_required(v)?),
    };
    let mut named = Vec::new();
    if let Some(v) = kw.get("properties") {
        checks.push(parse_properties(v, depth, &mut named)?);
    }
    let pattern_props = kw.get("patternProperties");
    let additional_props = kw.get("additionalProperties");
    if pattern_props.is_some() || additional_props.is_some() {
        checks.push(parse_allowed(
            pattern_props,
            additional_props,
            named,
            depth,
        )?);
    }
    if let Some(required) = required {
        checks.push(Check::Required(required));
    }
    if let Some(v) = kw.get("minProperties") {
        checks.push(Check::MinProperties(non_negative("minProperties", v)?));
    }
    if let Some(v) = kw.get("maxProperties") {
        checks.push(Check::MaxProperties(non_negative("maxProperties", v)?));
    }
    if let Some(v) = kw.get("dependencies") {
        parse_dependencies(v, depth, checks)?;
    }
    Ok(())
}

/// `properties`; the names go to `named` for `additionalProperties`.
fn parse_properties(
    v: RawBsonRef<'_>,
    depth: usize,
    named: &mut Vec<String>,
) -> Result<Check, QueryError> {
    let RawBsonRef::Document(props) = v else {
        return Err(mismatch(
            "$jsonSchema keyword 'properties' must be an object",
        ));
    };
    let mut parsed = Vec::new();
    for prop in props {
        let (name, schema) = prop.map_err(invalid_bson)?;
        let RawBsonRef::Document(schema) = schema else {
            return Err(mismatch(format!(
                "Nested schema for $jsonSchema property '{}' must be an object",
                name.as_str()
            )));
        };
        named.push(name.as_str().to_owned());
        parsed.push((name.as_str().to_owned(), parse_schema(schema, depth + 1)?));
    }
    Ok(Check::Properties(parsed))
}

/// `patternProperties` and `additionalProperties`, together.
fn parse_allowed(
    pattern_props: Option<RawBsonRef<'_>>,
    additional_props: Option<RawBsonRef<'_>>,
    named: Vec<String>,
    depth: usize,
) -> Result<Check, QueryError> {
    let mut patterns = Vec::new();
    if let Some(v) = pattern_props {
        let RawBsonRef::Document(d) = v else {
            return Err(mismatch(
                "$jsonSchema keyword 'patternProperties' must be an object",
            ));
        };
        for entry in d {
            let (pattern, schema) = entry.map_err(invalid_bson)?;
            let RawBsonRef::Document(schema) = schema else {
                return Err(mismatch(format!(
                    "$jsonSchema keyword 'patternProperties' has property '{}' which is not an object",
                    pattern.as_str()
                )));
            };
            let schema = parse_schema(schema, depth + 1)?;
            patterns.push((Re::compile(pattern.as_str(), "")?, schema));
        }
    }
    let additional = match additional_props {
        None => Extra::Any,
        Some(v) => parse_extra(v, depth, |_| {
            "$jsonSchema keyword 'additionalProperties' must be an object or a boolean".into()
        })?,
    };
    Ok(Check::Allowed {
        named,
        patterns,
        additional,
    })
}

/// `dependencies`: a schema or a list of required fields per present field.
fn parse_dependencies(
    v: RawBsonRef<'_>,
    depth: usize,
    checks: &mut Vec<Check>,
) -> Result<(), QueryError> {
    let RawBsonRef::Document(deps) = v else {
        return Err(mismatch(
            "$jsonSchema keyword 'dependencies' must be an object",
        ));
    };
    for dep in deps {
        let (name, dep) = dep.map_err(invalid_bson)?;
        let name = name.as_str();
        match dep {
            RawBsonRef::Document(d) => checks.push(Check::SchemaDependency(
                name.to_owned(),
                Box::new(parse_schema(d, depth + 1)?),
            )),
            RawBsonRef::Array(arr) => checks.push(Check::PropertyDependency(
                name.to_owned(),
                parse_needed(name, arr)?,
            )),
            _ => {
                return Err(mismatch(format!(
                    "property '{name}' in $jsonSchema keyword 'dependencies' must be either an object or an array"
                )));
            }
        }
    }
    Ok(())
}

/// The fields a present `name` requires, in `dependencies`.
fn parse_needed(name: &str, arr: &bson::RawArray) -> Result<Vec<String>, QueryError> {
    let mut needed: Vec<String> = Vec::new();
    for item in arr {
        let item = item.map_err(invalid_bson)?;
        let RawBsonRef::String(s) = item else {
            return Err(mismatch(format!(
                "array '{name}' in $jsonSchema keyword 'dependencies' can only contain strings, but found element of type: {}",
                type_name(item)
            )));
        };
        if needed.iter().any(|n| n == s) {
            return Err(failed(format!(
                "array '{name}' in $jsonSchema keyword 'dependencies' contains duplicate element: {s}"
            )));
        }
        needed.push(s.to_owned());
    }
    if needed.is_empty() {
        return Err(failed(format!(
            "property '{name}' in $jsonSchema keyword 'dependencies' cannot be an empty array"
        )));
    }
    Ok(needed)
}

fn parse_required(v: RawBsonRef<'_>) -> Result<Vec<String>, QueryError> {
    let RawBsonRef::Array(arr) = v else {
        return Err(mismatch(format!(
            "$jsonSchema keyword 'required' must be an array, but found an element of type {}",
            type_name(v)
        )));
    };
    let mut names: Vec<String> = Vec::new();
    for item in arr {
        let item = item.map_err(invalid_bson)?;
        let RawBsonRef::String(s) = item else {
            return Err(mismatch(format!(
                "$jsonSchema keyword 'required' must be an array of strings, but found an element of type: {}",
                type_name(item)
            )));
        };
        names.push(s.to_owned());
    }
    if names.is_empty() {
        return Err(failed(
            "$jsonSchema keyword 'required' cannot be an empty array",
        ));
    }
    let mut sorted = names.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err(failed(
            "$jsonSchema keyword 'required' array cannot contain duplicate values",
        ));
    }
    Ok(names)
}

fn parse_logical_keywords(
    kw: &Keywords<'_>,
    depth: usize,
    checks: &mut Vec<Check>,
) -> Result<(), QueryError> {
    if let Some(v) = kw.get("allOf") {
        checks.push(Check::AllOf(parse_schema_list("allOf", v, depth)?));
    }
    if let Some(v) = kw.get("anyOf") {
        checks.push(Check::AnyOf(parse_schema_list("anyOf", v, depth)?));
    }
    if let Some(v) = kw.get("oneOf") {
        checks.push(Check::OneOf(parse_schema_list("oneOf", v, depth)?));
    }
    if let Some(v) = kw.get("not") {
        let RawBsonRef::Document(d) = v else {
            return Err(mismatch(format!(
                "$jsonSchema keyword 'not' must be an object, but found an element of type {}",
                type_name(v)
            )));
        };
        checks.push(Check::Not(Box::new(parse_schema(d, depth + 1)?)));
    }
    if let Some(v) = kw.get("enum") {
        checks.push(parse_enum(v)?);
    }
    Ok(())
}

fn parse_schema_list(
    keyword: &str,
    v: RawBsonRef<'_>,
    depth: usize,
) -> Result<Vec<Schema>, QueryError> {
    let RawBsonRef::Array(arr) = v else {
        return Err(mismatch(format!(
            "$jsonSchema keyword '{keyword}' must be an array"
        )));
    };
    let mut schemas = Vec::new();
    for item in arr {
        match item.map_err(invalid_bson)? {
            RawBsonRef::Document(d) => schemas.push(parse_schema(d, depth + 1)?),
            other => {
                return Err(mismatch(format!(
                    "$jsonSchema keyword '{keyword}' must be an array of objects, but found an element of type {}",
                    type_name(other)
                )));
            }
        }
    }
    if schemas.is_empty() {
        return Err(QueryError::bad_value(format!(
            "$jsonSchema keyword '{keyword}' must be a non-empty array"
        )));
    }
    Ok(schemas)
}

fn parse_enum(v: RawBsonRef<'_>) -> Result<Check, QueryError> {
    let RawBsonRef::Array(arr) = v else {
        return Err(mismatch(format!(
            "$jsonSchema keyword 'enum' must be an array, but found an element of type {}",
            type_name(v)
        )));
    };
    let mut values = Vec::new();
    for item in arr {
        let item = canonical(item.map_err(invalid_bson)?, 0);
        if values.iter().any(|e: &RawBson| {
            compare_values(e.as_raw_bson_ref(), item.as_raw_bson_ref()) == Ordering::Equal
        }) {
            return Err(failed(
                "$jsonSchema keyword 'enum' array cannot contain duplicate values.",
            ));
        }
        values.push(item);
    }
    if values.is_empty() {
        return Err(failed(
            "$jsonSchema keyword 'enum' cannot be an empty array",
        ));
    }
    Ok(Check::Enum(values))
}

/// mongod's reading of a count argument (`minLength`, `maxItems`, ...): an integral number that
/// fits in 64 bits and is not negative. All failures are FailedToParse.
fn non_negative(keyword: &str, v: RawBsonRef<'_>) -> Result<u64, QueryError> {
    let n = match as_num(v) {
        None => {
            return Err(failed(format!(
                "Expected a number in: {keyword}: {}",
                shown(v)
            )));
        }
        Some(Num::Int(i)) => i,
        Some(Num::Dbl(d)) => {
            if d.is_nan() {
                return Err(failed(format!(
                    "Expected an integer, but found NaN in: {keyword}: {d}"
                )));
            }
            if d.fract() != 0.0 {
                return Err(failed(format!("Expected an integer: {keyword}: {d}")));
            }
            if !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&d) {
                return Err(failed(format!(
                    "Cannot represent as a 64-bit integer: {keyword}: {d}"
                )));
            }
            d as i64
        }
    };
    u64::try_from(n).map_err(|_| failed(format!("Expected a positive number in: {keyword}: {n}")))
}

fn shown(v: RawBsonRef<'_>) -> String {
    bson::Bson::try_from(RawBson::from(v))
        .map(|b| b.to_string())
        .unwrap_or_else(|_| type_name(v).to_owned())
}
