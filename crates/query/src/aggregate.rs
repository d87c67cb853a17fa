//! A first slice of the aggregation pipeline: `$match`, `$sort`, `$skip`, `$limit`, `$project`
//! (inclusion and exclusion), `$addFields`/`$set`, `$count`, `$group`, and `$out`/`$merge` as a
//! [`Sink`] the server writes to. `$group` takes `$sum`, `$avg`, `$min`, `$max`,
//! `$first`, `$last`, `$push`, `$addToSet` and `$count`. Expressions are field paths (`"$a.b"`)
//! and constants. Anything else is refused with MongoDB's error, never half-evaluated.

use std::collections::HashMap;

use bson::raw::{RawArray, RawBsonRef, RawDocument};
use bson::{Bson, Document, RawDocumentBuf};

use crate::compare::{as_num, compare_values};
use crate::path::{split_path, walk};
use crate::{Filter, Projection, QueryError, SortSpec, encode_key};

pub(crate) enum Expr {
    Path(Vec<String>),
    /// `$$REMOVE`: evaluates to missing.
    Missing,
    /// `$eq`, `$ne`, `$gt`, `$gte`, `$lt`, `$lte` and `$cmp` over two expressions, in BSON order.
    Cmp(CmpExpr, Box<Expr>, Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Rand,
    /// `$$ROOT` / `$$CURRENT`, optionally followed by a path.
    Root(Vec<String>),
    Const(Bson),
    Doc(Vec<(String, Expr)>),
    /// `{$setField: {field, input, value}}`: `input` with one field set, whatever its name
    /// (dots and dollars included).
    SetField {
        field: String,
        input: Box<Expr>,
        value: Box<Expr>,
    },
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

thread_local! {
    /// The command's `let` variables while its filters, updates and pipelines are parsed (see
    /// [`with_let`]); they are constants, so parsing substitutes their values.
    static LET_VARS: std::cell::RefCell<Vec<(String, Bson)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `parse` with the command's `let` variables defined: each is an expression evaluated
/// once, up front (so `{$rand: {}}` gives one value for the whole command, as in mongod).
/// Parsing is synchronous, so a thread-local scope is exactly as long as the closure.
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
        if name.is_empty()
            || !name.starts_with(|c: char| c.is_ascii_lowercase() || !c.is_ascii())
            || name.contains('.')
        {
            return Err(E::from(QueryError::location(
                16867,
                format!("'{name}' starts with an invalid character for a user variable name"),
            )));
        }
        let empty = bson::RawDocumentBuf::new();
        let value = Expr::parse(value)?.eval(&empty).unwrap_or(Bson::Null);
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

fn let_var(name: &str) -> Option<Bson> {
    LET_VARS.with(|v| {
        v.borrow()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
    })
}

/// A random double in [0, 1) for `$rand`, from the standard library's randomly seeded hasher.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

impl Expr {
    pub(crate) fn parse(v: RawBsonRef<'_>) -> Result<Expr, QueryError> {
        match v {
            RawBsonRef::String(s) if s.starts_with("$$") => {
                let mut parts = split_path(&s[2..]);
                match parts.first().map(String::as_str) {
                    Some("ROOT" | "CURRENT") => {
                        parts.remove(0);
                        Ok(Expr::Root(parts))
                    }
                    Some("REMOVE") if parts.len() == 1 => Ok(Expr::Missing),
                    Some("NOW") if parts.len() == 1 => {
                        Ok(Expr::Const(Bson::DateTime(bson::DateTime::now())))
                    }
                    Some(name) => match let_var(name) {
                        Some(value) if parts.len() == 1 => Ok(Expr::Const(value)),
                        Some(value) => {
                            // `$$var.a.b`: a path into the variable's value.
                            let doc = match value {
                                Bson::Document(d) => d,
                                _ => return Ok(Expr::Missing),
                            };
                            let raw = bson::RawDocumentBuf::try_from(&doc)
                                .map_err(|e| QueryError::bad_value(e.to_string()))?;
                            Ok(Expr::Path(parts[1..].to_vec())
                                .eval(&raw)
                                .map_or(Expr::Missing, Expr::Const))
                        }
                        None => Err(QueryError::location(
                            17276,
                            format!("Use of undefined variable: {name}"),
                        )),
                    },
                    None => Err(QueryError::location(17276, "Use of undefined variable: ")),
                }
            }
            RawBsonRef::Document(d)
                if d.iter()
                    .next()
                    .is_some_and(|f| f.is_ok_and(|(k, _)| k.as_str().starts_with('$'))) =>
            {
                Self::parse_operator(d)
            }
            RawBsonRef::String(s) if s.len() > 1 && s.starts_with('$') => {
                Ok(Expr::Path(split_path(&s[1..])))
            }
            RawBsonRef::Document(d) => {
                let mut fields = Vec::new();
                for item in d {
                    let (k, v) = item.map_err(|e| QueryError::bad_value(e.to_string()))?;
                    if k.as_str().starts_with('$') {
                        return Err(QueryError::new(
                            168,
                            "InvalidPipelineOperator",
                            format!("Unrecognized expression '{}'", k.as_str()),
                        ));
                    }
                    fields.push((k.as_str().to_string(), Expr::parse(v)?));
                }
                Ok(Expr::Doc(fields))
            }
            other => Ok(Expr::Const(
                Bson::try_from(other).map_err(|e| QueryError::bad_value(e.to_string()))?,
            )),
        }
    }

    /// Aggregation truthiness: false, null, missing and zero are false; everything else true.
    pub(crate) fn truthy(&self, doc: &RawDocument) -> bool {
        match self.eval(doc) {
            None | Some(Bson::Null) | Some(Bson::Undefined) | Some(Bson::Boolean(false)) => false,
            Some(Bson::Int32(0)) | Some(Bson::Int64(0)) => false,
            Some(Bson::Double(d)) => d != 0.0,
            Some(_) => true,
        }
    }

    /// Operator expressions: comparisons, `$and`/`$or`/`$not`, `$rand`, `$literal` and
    /// `$setField`; the rest of the expression language comes later.
    fn parse_operator(d: &RawDocument) -> Result<Expr, QueryError> {
        let mut fields = d.iter();
        let (op, arg) = match (fields.next(), fields.next()) {
            (Some(Ok(first)), None) => first,
            _ => {
                return Err(QueryError::location(
                    15983,
                    "An object representing an expression must have exactly one field",
                ));
            }
        };
        let args = |n: usize| -> Result<Vec<Expr>, QueryError> {
            let items: Vec<RawBsonRef<'_>> = match arg {
                RawBsonRef::Array(a) => a
                    .into_iter()
                    .collect::<Result<_, _>>()
                    .map_err(|e| QueryError::bad_value(e.to_string()))?,
                single => vec![single],
            };
            if n != usize::MAX && items.len() != n {
                return Err(QueryError::location(
                    16020,
                    format!(
                        "Expression {} takes exactly {n} arguments. {} were passed in.",
                        op.as_str(),
                        items.len()
                    ),
                ));
            }
            items.into_iter().map(Expr::parse).collect()
        };
        let cmp = |kind: CmpExpr| -> Result<Expr, QueryError> {
            let mut a = args(2)?;
            let b = a.pop().expect("two arguments");
            let a = a.pop().expect("two arguments");
            Ok(Expr::Cmp(kind, Box::new(a), Box::new(b)))
        };
        match op.as_str() {
            "$eq" => cmp(CmpExpr::Eq),
            "$ne" => cmp(CmpExpr::Ne),
            "$gt" => cmp(CmpExpr::Gt),
            "$gte" => cmp(CmpExpr::Gte),
            "$lt" => cmp(CmpExpr::Lt),
            "$lte" => cmp(CmpExpr::Lte),
            "$cmp" => cmp(CmpExpr::Cmp),
            "$and" => Ok(Expr::And(args(usize::MAX)?)),
            "$or" => Ok(Expr::Or(args(usize::MAX)?)),
            "$not" => Ok(Expr::Not(Box::new(args(1)?.pop().expect("one argument")))),
            "$rand" => match arg {
                RawBsonRef::Document(d) if d.is_empty() => Ok(Expr::Rand),
                _ => Err(QueryError::location(
                    3040501,
                    "$rand does not currently accept arguments",
                )),
            },
            "$literal" => Ok(Expr::Const(
                Bson::try_from(arg).map_err(|e| QueryError::bad_value(e.to_string()))?,
            )),
            "$setField" => {
                let RawBsonRef::Document(spec) = arg else {
                    return Err(QueryError::location(
                        4161100,
                        "$setField only supports an object as its argument",
                    ));
                };
                let field = match spec.get("field").ok().flatten() {
                    Some(RawBsonRef::String(f)) => f.to_string(),
                    Some(RawBsonRef::Document(lit)) => match lit.get("$literal").ok().flatten() {
                        Some(RawBsonRef::String(f)) => f.to_string(),
                        _ => {
                            return Err(QueryError::location(
                                4161106,
                                "$setField requires 'field' to evaluate to a constant string",
                            ));
                        }
                    },
                    _ => {
                        return Err(QueryError::location(
                            4161102,
                            "$setField requires 'field' to be specified",
                        ));
                    }
                };
                let part = |name: &str, code: i32| {
                    spec.get(name)
                        .ok()
                        .flatten()
                        .ok_or_else(|| {
                            QueryError::location(
                                code,
                                format!("$setField requires '{name}' to be specified"),
                            )
                        })
                        .and_then(Expr::parse)
                };
                Ok(Expr::SetField {
                    field,
                    input: Box::new(part("input", 4161103)?),
                    value: Box::new(part("value", 4161104)?),
                })
            }
            other => Err(QueryError::new(
                168,
                "InvalidPipelineOperator",
                format!("Unrecognized expression '{other}'"),
            )),
        }
    }

    /// The value, or `None` for a missing field.
    pub(crate) fn eval(&self, doc: &RawDocument) -> Option<Bson> {
        match self {
            Expr::Const(b) => Some(b.clone()),
            Expr::Missing => None,
            Expr::Rand => Some(Bson::Double(random_unit())),
            Expr::Cmp(kind, a, b) => {
                // Missing sorts before every value (it is less than null), as in mongod.
                let ord = match (a.eval(doc), b.eval(doc)) {
                    (None, None) => std::cmp::Ordering::Equal,
                    (None, Some(_)) => std::cmp::Ordering::Less,
                    (Some(_), None) => std::cmp::Ordering::Greater,
                    (Some(x), Some(y)) => {
                        let (x, y) = (
                            bson::RawBson::try_from(x).ok()?,
                            bson::RawBson::try_from(y).ok()?,
                        );
                        compare_values(x.as_raw_bson_ref(), y.as_raw_bson_ref())
                    }
                };
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
            Expr::And(items) => Some(Bson::Boolean(items.iter().all(|e| e.truthy(doc)))),
            Expr::Or(items) => Some(Bson::Boolean(items.iter().any(|e| e.truthy(doc)))),
            Expr::Not(e) => Some(Bson::Boolean(!e.truthy(doc))),
            Expr::Root(parts) if parts.is_empty() => {
                Document::try_from(doc).ok().map(Bson::Document)
            }
            Expr::Root(parts) => Expr::Path(parts.clone()).eval(doc),
            Expr::SetField {
                field,
                input,
                value,
            } => {
                let mut target = match input.eval(doc) {
                    Some(Bson::Document(d)) => d,
                    _ => return Some(Bson::Null),
                };
                match value.eval(doc) {
                    Some(v) => {
                        target.insert(field.clone(), v);
                    }
                    None => {
                        target.remove(field);
                    }
                }
                Some(Bson::Document(target))
            }
            Expr::Path(parts) => {
                let mut found = None;
                walk(doc, parts, false, &mut |v| {
                    found = v.and_then(|v| Bson::try_from(v).ok());
                    found.is_some()
                });
                found
            }
            Expr::Doc(fields) => {
                let mut out = Document::new();
                for (k, e) in fields {
                    if let Some(v) = e.eval(doc) {
                        out.insert(k.clone(), v);
                    }
                }
                Some(Bson::Document(out))
            }
        }
    }
}

enum Acc {
    Sum(Expr),
    Avg(Expr),
    Min(Expr),
    Max(Expr),
    First(Expr),
    Last(Expr),
    Push(Expr),
    AddToSet(Expr),
    Count,
}

enum AccState {
    Sum { int: i64, dbl: f64, is_double: bool },
    Avg { total: f64, n: u64 },
    Pick(Option<Bson>),
    Array(Vec<Bson>),
}

struct Group {
    id: Expr,
    accs: Vec<(String, Acc)>,
}

enum Stage {
    Match(Filter),
    Sort(SortSpec),
    Skip(usize),
    Limit(usize),
    Project(Projection),
    /// `$addFields` and its alias `$set`: (dotted path, expression) pairs.
    AddFields(Vec<(Vec<String>, Expr)>),
    /// `$replaceRoot: {newRoot}` and `$replaceWith`.
    ReplaceRoot(Expr),
    /// `$unset`: paths to remove, as an exclusion projection.
    Unset(Projection),
    Count(String),
    Group(Group),
}

pub struct Pipeline {
    stages: Vec<Stage>,
    sink: Option<Sink>,
}

/// Where a pipeline's output goes when its last stage is `$out` or `$merge`. Writing is the
/// server's job; the pipeline only says where and how.
#[derive(Debug, Clone, PartialEq)]
pub enum Sink {
    /// Replace the target collection's contents with the output.
    Out { db: Option<String>, coll: String },
    /// Merge the output into the target, matching on `_id`.
    Merge {
        db: Option<String>,
        coll: String,
        when_matched: WhenMatched,
        when_not_matched: WhenNotMatched,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenMatched {
    Replace,
    KeepExisting,
    Merge,
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenNotMatched {
    Insert,
    Discard,
    Fail,
}

/// `"coll"` or `{db, coll}`.
fn sink_target(spec: RawBsonRef<'_>, stage: &str) -> Result<(Option<String>, String), QueryError> {
    match spec {
        RawBsonRef::String(c) if !c.is_empty() => Ok((None, c.to_string())),
        RawBsonRef::Document(d) => {
            let db = d.get_str("db").ok().map(str::to_string);
            match d.get_str("coll") {
                Ok(c) if !c.is_empty() => Ok((db, c.to_string())),
                _ => Err(QueryError::failed_to_parse(format!(
                    "{stage} needs a target collection name"
                ))),
            }
        }
        _ => Err(QueryError::failed_to_parse(format!(
            "{stage} takes a collection name or {{db, coll}}"
        ))),
    }
}

fn parse_merge(spec: RawBsonRef<'_>) -> Result<Sink, QueryError> {
    let d = match spec {
        RawBsonRef::String(_) => {
            let (db, coll) = sink_target(spec, "$merge")?;
            return Ok(Sink::Merge {
                db,
                coll,
                when_matched: WhenMatched::Merge,
                when_not_matched: WhenNotMatched::Insert,
            });
        }
        RawBsonRef::Document(d) => d,
        _ => {
            return Err(QueryError::failed_to_parse(
                "$merge takes a document or a collection name",
            ));
        }
    };
    let into = d
        .get("into")
        .ok()
        .flatten()
        .ok_or_else(|| QueryError::failed_to_parse("$merge needs 'into'"))?;
    let (db, coll) = sink_target(into, "$merge")?;
    let mut when_matched = WhenMatched::Merge;
    let mut when_not_matched = WhenNotMatched::Insert;
    for item in d {
        let (k, v) = item.map_err(|e| QueryError::bad_value(e.to_string()))?;
        match (k.as_str(), v) {
            ("into", _) => {}
            ("on", RawBsonRef::String("_id")) => {}
            ("on", RawBsonRef::Array(a))
                if a.into_iter().flatten().all(|f| f.as_str() == Some("_id")) => {}
            ("on", _) => {
                return Err(QueryError::location(
                    51183,
                    "Cannot find index to verify that join fields will be unique: $merge on fields other than _id needs a unique index, which Mangrove does not have yet",
                ));
            }
            ("whenMatched", RawBsonRef::String(m)) => {
                when_matched = match m {
                    "replace" => WhenMatched::Replace,
                    "keepExisting" => WhenMatched::KeepExisting,
                    "merge" => WhenMatched::Merge,
                    "fail" => WhenMatched::Fail,
                    other => {
                        return Err(QueryError::bad_value(format!(
                            "Enumeration value '{other}' for field 'whenMatched' is not a valid value."
                        )));
                    }
                }
            }
            ("whenMatched", RawBsonRef::Array(_)) => {
                return Err(QueryError::new(
                    115,
                    "CommandNotSupported",
                    "$merge with a whenMatched pipeline is not supported by Mangrove yet",
                ));
            }
            ("whenNotMatched", RawBsonRef::String(m)) => {
                when_not_matched = match m {
                    "insert" => WhenNotMatched::Insert,
                    "discard" => WhenNotMatched::Discard,
                    "fail" => WhenNotMatched::Fail,
                    other => {
                        return Err(QueryError::bad_value(format!(
                            "Enumeration value '{other}' for field 'whenNotMatched' is not a valid value."
                        )));
                    }
                }
            }
            ("let", _) => {
                return Err(QueryError::new(
                    115,
                    "CommandNotSupported",
                    "$merge with 'let' is not supported by Mangrove yet",
                ));
            }
            (other, _) => {
                return Err(QueryError::location(
                    40415,
                    format!("BSON field '$merge.{other}' is an unknown field."),
                ));
            }
        }
    }
    Ok(Sink::Merge {
        db,
        coll,
        when_matched,
        when_not_matched,
    })
}

fn stage_number(v: RawBsonRef<'_>, stage: &str) -> Result<usize, QueryError> {
    match as_num(v).map(|n| n.to_f64()) {
        Some(n) if n >= 0.0 && n.fract() == 0.0 => Ok(n as usize),
        _ => Err(QueryError::location(
            15956,
            format!("invalid argument to {stage} stage: expected a non-negative integer"),
        )),
    }
}

impl Pipeline {
    pub fn parse(pipeline: &RawArray) -> Result<Pipeline, QueryError> {
        let mut stages = Vec::new();
        let mut sink = None;
        for item in pipeline {
            if sink.is_some() {
                return Err(QueryError::location(
                    40601,
                    "$out and $merge can only be the final stage in the pipeline",
                ));
            }
            let stage = match item.map_err(|e| QueryError::bad_value(e.to_string()))? {
                RawBsonRef::Document(d) => d,
                _ => {
                    return Err(QueryError::type_mismatch(
                        "Each element of the 'pipeline' array must be an object",
                    ));
                }
            };
            let mut fields = stage.iter();
            let (name, spec) = match (fields.next(), fields.next()) {
                (Some(Ok(first)), None) => first,
                _ => {
                    return Err(QueryError::location(
                        40323,
                        "A pipeline stage specification object must contain exactly one field.",
                    ));
                }
            };
            let doc_spec = || match spec {
                RawBsonRef::Document(d) => Ok(d),
                _ => Err(QueryError::failed_to_parse(format!(
                    "the {} stage specification must be an object",
                    name.as_str()
                ))),
            };
            stages.push(match name.as_str() {
                "$match" => Stage::Match(Filter::parse(doc_spec()?)?),
                "$sort" => Stage::Sort(SortSpec::parse(doc_spec()?)?),
                "$skip" => Stage::Skip(stage_number(spec, "$skip")?),
                "$limit" => match stage_number(spec, "$limit")? {
                    0 => return Err(QueryError::location(15958, "the limit must be positive")),
                    n => Stage::Limit(n),
                },
                "$project" => Stage::Project(Projection::parse(doc_spec()?)?),
                "$replaceRoot" => {
                    let new_root = doc_spec()?
                        .get("newRoot")
                        .ok()
                        .flatten()
                        .ok_or_else(|| QueryError::location(40231, "no newRoot specified for the $replaceRoot stage"))?;
                    Stage::ReplaceRoot(Expr::parse(new_root)?)
                }
                "$replaceWith" => Stage::ReplaceRoot(Expr::parse(spec)?),
                "$unset" => {
                    let names: Vec<&str> = match spec {
                        RawBsonRef::String(f) => vec![f],
                        RawBsonRef::Array(a) => a
                            .into_iter()
                            .map(|f| match f {
                                Ok(RawBsonRef::String(f)) => Ok(f),
                                _ => Err(QueryError::location(31120, "$unset specification must be a string or an array containing only string values")),
                            })
                            .collect::<Result<_, _>>()?,
                        _ => {
                            return Err(QueryError::location(31002, "$unset specification must be a string or an array"));
                        }
                    };
                    let mut exclusion = bson::RawDocumentBuf::new();
                    for n in names {
                        exclusion.append(bson::raw::CString::try_from(n).map_err(|e| QueryError::bad_value(e.to_string()))?, 0i32);
                    }
                    Stage::Unset(Projection::parse(&exclusion)?)
                }
                "$addFields" | "$set" => {
                    let mut fields = Vec::new();
                    for item in doc_spec()? {
                        let (k, v) = item.map_err(|e| QueryError::bad_value(e.to_string()))?;
                        if k.as_str().is_empty() || k.as_str().starts_with('$') {
                            return Err(QueryError::location(
                                16410,
                                format!(
                                    "FieldPath field names may not start with '$': '{}'",
                                    k.as_str()
                                ),
                            ));
                        }
                        fields.push((split_path(k.as_str()), Expr::parse(v)?));
                    }
                    Stage::AddFields(fields)
                }
                "$count" => match spec {
                    RawBsonRef::String(s)
                        if !s.is_empty() && !s.starts_with('$') && !s.contains('.') =>
                    {
                        Stage::Count(s.to_string())
                    }
                    _ => {
                        return Err(QueryError::location(
                            40156,
                            "the count field must be a non-empty string without '$' or '.'",
                        ));
                    }
                },
                "$group" => Stage::Group(parse_group(doc_spec()?)?),
                "$out" => {
                    let (db, coll) = sink_target(spec, "$out")?;
                    sink = Some(Sink::Out { db, coll });
                    continue;
                }
                "$merge" => {
                    sink = Some(parse_merge(spec)?);
                    continue;
                }
                other => {
                    return Err(QueryError::location(
                        40324,
                        format!("Unrecognized pipeline stage name: '{other}'"),
                    ));
                }
            });
        }
        Ok(Pipeline { stages, sink })
    }

    /// Whether every stage may appear in a pipeline-style update (which reshapes one document).
    pub fn is_update_pipeline(&self) -> bool {
        self.sink.is_none()
            && self.stages.iter().all(|s| {
                matches!(
                    s,
                    Stage::AddFields(_)
                        | Stage::Project(_)
                        | Stage::Unset(_)
                        | Stage::ReplaceRoot(_)
                )
            })
    }

    /// The `$out` or `$merge` that ends the pipeline, if any.
    pub fn sink(&self) -> Option<&Sink> {
        self.sink.as_ref()
    }

    /// The filter of a leading `$match`, so the caller can apply it while reading.
    pub fn leading_match(&self) -> Option<&Filter> {
        match self.stages.first() {
            Some(Stage::Match(f)) => Some(f),
            _ => None,
        }
    }

    /// Runs the stages over `docs`, which have already passed [`Pipeline::leading_match`].
    pub fn run(&self, docs: Vec<RawDocumentBuf>) -> Result<Vec<RawDocumentBuf>, QueryError> {
        let mut docs = docs;
        let skip_first = usize::from(self.leading_match().is_some());
        for stage in &self.stages[skip_first..] {
            docs = match stage {
                Stage::Match(f) => docs.into_iter().filter(|d| f.matches(d)).collect(),
                Stage::Sort(s) => {
                    docs.sort_by(|a, b| s.compare(a, b));
                    docs
                }
                Stage::Skip(n) => docs.into_iter().skip(*n).collect(),
                Stage::Limit(n) => docs.into_iter().take(*n).collect(),
                Stage::Project(p) => docs.iter().map(|d| p.apply(d)).collect::<Result<_, _>>()?,
                Stage::AddFields(fields) => docs
                    .iter()
                    .map(|d| add_fields(d, fields))
                    .collect::<Result<_, _>>()?,
                Stage::Unset(p) => docs.iter().map(|d| p.apply(d)).collect::<Result<_, _>>()?,
                Stage::ReplaceRoot(e) => docs
                    .iter()
                    .map(|d| match e.eval(d) {
                        Some(Bson::Document(root)) => to_raw(&root),
                        other => Err(QueryError::location(
                            40228,
                            format!(
                                "'newRoot' expression must evaluate to an object, but resulting value was: {}",
                                other.map_or("MISSING".to_string(), |v| v.to_string())
                            ),
                        )),
                    })
                    .collect::<Result<_, _>>()?,
                Stage::Count(field) => {
                    if docs.is_empty() {
                        Vec::new()
                    } else {
                        let mut out = Document::new();
                        out.insert(field.clone(), docs.len() as i32);
                        vec![to_raw(&out)?]
                    }
                }
                Stage::Group(g) => run_group(g, &docs)?,
            };
        }
        Ok(docs)
    }
}

/// Sets each path to its expression's value (computed on the input document); a missing value
/// adds nothing.
fn add_fields(
    doc: &RawDocument,
    fields: &[(Vec<String>, Expr)],
) -> Result<RawDocumentBuf, QueryError> {
    let mut out = Document::try_from(doc).map_err(|e| QueryError::bad_value(e.to_string()))?;
    for (path, expr) in fields {
        let Some(value) = expr.eval(doc) else {
            continue;
        };
        let (last, parents) = path.split_last().expect("paths are never empty");
        let mut target = &mut out;
        for part in parents {
            if !matches!(target.get(part), Some(Bson::Document(_))) {
                target.insert(part.clone(), Document::new());
            }
            target = match target.get_mut(part) {
                Some(Bson::Document(d)) => d,
                _ => unreachable!("just made a document"),
            };
        }
        target.insert(last.clone(), value);
    }
    to_raw(&out)
}

fn to_raw(d: &Document) -> Result<RawDocumentBuf, QueryError> {
    RawDocumentBuf::try_from(d).map_err(|e| QueryError::bad_value(e.to_string()))
}

fn parse_group(spec: &RawDocument) -> Result<Group, QueryError> {
    let mut id = None;
    let mut accs = Vec::new();
    for item in spec {
        let (k, v) = item.map_err(|e| QueryError::bad_value(e.to_string()))?;
        if k.as_str() == "_id" {
            id = Some(Expr::parse(v)?);
            continue;
        }
        let RawBsonRef::Document(acc) = v else {
            return Err(QueryError::location(
                40234,
                format!("The field '{}' must be an accumulator object", k.as_str()),
            ));
        };
        let (op, arg) = match acc.iter().next() {
            Some(Ok(pair)) => pair,
            _ => {
                return Err(QueryError::location(
                    40238,
                    format!("The field '{}' must specify one accumulator", k.as_str()),
                ));
            }
        };
        let acc = match op.as_str() {
            "$sum" => Acc::Sum(Expr::parse(arg)?),
            "$avg" => Acc::Avg(Expr::parse(arg)?),
            "$min" => Acc::Min(Expr::parse(arg)?),
            "$max" => Acc::Max(Expr::parse(arg)?),
            "$first" => Acc::First(Expr::parse(arg)?),
            "$last" => Acc::Last(Expr::parse(arg)?),
            "$push" => Acc::Push(Expr::parse(arg)?),
            "$addToSet" => Acc::AddToSet(Expr::parse(arg)?),
            "$count" => Acc::Count,
            other => {
                return Err(QueryError::location(
                    15952,
                    format!("unknown group operator '{other}'"),
                ));
            }
        };
        accs.push((k.as_str().to_string(), acc));
    }
    let id =
        id.ok_or_else(|| QueryError::location(15955, "a group specification must include an _id"))?;
    Ok(Group { id, accs })
}

fn fresh(acc: &Acc) -> AccState {
    match acc {
        Acc::Sum(_) | Acc::Count => AccState::Sum {
            int: 0,
            dbl: 0.0,
            is_double: false,
        },
        Acc::Avg(_) => AccState::Avg { total: 0.0, n: 0 },
        Acc::Min(_) | Acc::Max(_) | Acc::First(_) | Acc::Last(_) => AccState::Pick(None),
        Acc::Push(_) | Acc::AddToSet(_) => AccState::Array(Vec::new()),
    }
}

fn raw_of(b: &Bson) -> Option<bson::RawBson> {
    bson::RawBson::try_from(b.clone()).ok()
}

fn add_number(state: &mut AccState, v: &Bson) {
    let AccState::Sum {
        int,
        dbl,
        is_double,
    } = state
    else {
        return;
    };
    match v {
        Bson::Int32(i) => match int.checked_add(i64::from(*i)) {
            Some(s) => *int = s,
            None => *is_double = true,
        },
        Bson::Int64(i) => match int.checked_add(*i) {
            Some(s) => *int = s,
            None => *is_double = true,
        },
        Bson::Double(d) => {
            *dbl += d;
            *is_double = true;
        }
        _ => {}
    }
}

fn accumulate(acc: &Acc, state: &mut AccState, doc: &RawDocument, first_doc: bool) {
    match acc {
        Acc::Count => add_number(state, &Bson::Int32(1)),
        Acc::Sum(e) => {
            if let Some(v) = e.eval(doc) {
                add_number(state, &v);
            }
        }
        Acc::Avg(e) => {
            if let (Some(v), AccState::Avg { total, n }) = (e.eval(doc), state)
                && let Some(x) = raw_of(&v).and_then(|r| as_num(r.as_raw_bson_ref()))
            {
                *total += x.to_f64();
                *n += 1;
            }
        }
        Acc::Min(e) | Acc::Max(e) => {
            let Some(v) = e.eval(doc).filter(|v| !matches!(v, Bson::Null)) else {
                return;
            };
            let AccState::Pick(current) = state else {
                return;
            };
            let better = match current {
                None => true,
                Some(c) => match (raw_of(&v), raw_of(c)) {
                    (Some(a), Some(b)) => {
                        let ord = compare_values(a.as_raw_bson_ref(), b.as_raw_bson_ref());
                        if matches!(acc, Acc::Min(_)) {
                            ord.is_lt()
                        } else {
                            ord.is_gt()
                        }
                    }
                    _ => false,
                },
            };
            if better {
                *current = Some(v);
            }
        }
        Acc::First(e) => {
            if first_doc && let AccState::Pick(current) = state {
                *current = Some(e.eval(doc).unwrap_or(Bson::Null));
            }
        }
        Acc::Last(e) => {
            if let AccState::Pick(current) = state {
                *current = Some(e.eval(doc).unwrap_or(Bson::Null));
            }
        }
        Acc::Push(e) | Acc::AddToSet(e) => {
            let (Some(v), AccState::Array(items)) = (e.eval(doc), state) else {
                return;
            };
            if matches!(acc, Acc::AddToSet(_)) && items.contains(&v) {
                return;
            }
            items.push(v);
        }
    }
}

fn finish(state: AccState) -> Bson {
    match state {
        AccState::Sum {
            int,
            dbl,
            is_double,
        } => {
            if is_double {
                Bson::Double(dbl + int as f64)
            } else if let Ok(small) = i32::try_from(int) {
                Bson::Int32(small)
            } else {
                Bson::Int64(int)
            }
        }
        AccState::Avg { total, n } => {
            if n == 0 {
                Bson::Null
            } else {
                Bson::Double(total / n as f64)
            }
        }
        AccState::Pick(v) => v.unwrap_or(Bson::Null),
        AccState::Array(items) => Bson::Array(items),
    }
}

fn run_group(g: &Group, docs: &[RawDocumentBuf]) -> Result<Vec<RawDocumentBuf>, QueryError> {
    // Groups in first-seen order, looked up by the order-preserving key of their _id so that
    // equal values of different numeric types share a group, as in MongoDB.
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut groups: Vec<(Bson, Vec<AccState>)> = Vec::new();
    for doc in docs {
        let id = g.id.eval(doc).unwrap_or(Bson::Null);
        let mut key = Vec::new();
        if let Some(raw) = raw_of(&id) {
            encode_key(raw.as_raw_bson_ref(), &mut key);
        }
        let (slot, first_doc) = match index.get(&key) {
            Some(&i) => (i, false),
            None => {
                groups.push((id, g.accs.iter().map(|(_, a)| fresh(a)).collect()));
                index.insert(key, groups.len() - 1);
                (groups.len() - 1, true)
            }
        };
        for ((_, acc), state) in g.accs.iter().zip(groups[slot].1.iter_mut()) {
            accumulate(acc, state, doc, first_doc);
        }
    }
    groups
        .into_iter()
        .map(|(id, states)| {
            let mut out = Document::new();
            out.insert("_id", id);
            for ((name, _), state) in g.accs.iter().zip(states) {
                out.insert(name.clone(), finish(state));
            }
            to_raw(&out)
        })
        .collect()
}
