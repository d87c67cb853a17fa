//! The JavaScript accumulators of `$group`: `$accumulator` (user-written `init`/`accumulate`/
//! `finalize`) and mapReduce's `$_internalJsReduce` (the reduce function over every value
//! emitted for one key). The functions run in `mangrove-js`; this module keeps each group's state.
//!
//! State lives as BSON between calls, as in mongod, so it is counted like any group's memory.
//! `merge` is checked but never called: Mangrove neither spills groups nor merges partial ones.

use bson::raw::RawBsonRef;
use bson::{Bson, Document, RawDocument};

use crate::QueryError;
use crate::doc_ops::raw_err;
use crate::expr::Expr;
use crate::expr::js::{check_enabled, code_of};
use crate::memory::mem_size;

pub(crate) enum JsAcc {
    Accumulator {
        init: String,
        init_args: Option<Expr>,
        accumulate: String,
        accumulate_args: Expr,
        finalize: Option<String>,
    },
    /// `{$_internalJsReduce: {data: <expr of {k, v}>, eval: <reduce>, scope?: <doc>}}`.
    Reduce {
        data: Expr,
        reduce: String,
        scope: Option<Document>,
    },
}

/// A group's state: `$accumulator`'s value, or the key and the values to reduce.
#[derive(Default)]
pub(crate) struct JsState {
    value: Option<Bson>,
    key: Option<Bson>,
    values: Vec<Bson>,
}

fn loc(code: i32, msg: impl Into<String>) -> QueryError {
    QueryError::location(code, msg)
}

pub(crate) fn parse(op: &str, arg: RawBsonRef<'_>) -> Result<JsAcc, QueryError> {
    check_enabled()?;
    if op == "$_internalJsReduce" {
        return parse_reduce(arg);
    }
    let RawBsonRef::Document(spec) = arg else {
        return Err(loc(
            4544703,
            format!(
                "$accumulator expects an object as an argument; found: {:?}",
                arg.element_type()
            ),
        ));
    };
    let (mut init, mut accumulate, mut merge, mut finalize) = (None, None, None, None);
    let (mut init_args, mut accumulate_args) = (None, None);
    for item in spec {
        let (name, v) = item.map_err(raw_err)?;
        let function = |field: &str| {
            let code = code_of(v).ok_or_else(|| {
                loc(
                    4544702,
                    format!("$accumulator '{field}' must be a String or Code"),
                )
            })?;
            mangrove_js::check(code, None)?;
            Ok::<_, QueryError>(Some(code.to_owned()))
        };
        match name.as_str() {
            "init" => init = function("init")?,
            "accumulate" => accumulate = function("accumulate")?,
            "merge" => merge = function("merge")?,
            "finalize" => finalize = function("finalize")?,
            "initArgs" => init_args = Some(Expr::parse(v)?),
            "accumulateArgs" => accumulate_args = Some(Expr::parse(v)?),
            "lang" => check_lang(v)?,
            other => {
                return Err(loc(
                    4544706,
                    format!("$accumulator got an unexpected field: {other}"),
                ));
            }
        }
    }
    let missing = |code, what: &str| {
        loc(
            code,
            format!("$accumulator missing required argument '{what}'"),
        )
    };
    let init = init.ok_or_else(|| missing(4544707, "init"))?;
    let accumulate = accumulate.ok_or_else(|| missing(4544708, "accumulate"))?;
    merge.ok_or_else(|| missing(4544709, "merge"))?;
    let accumulate_args = accumulate_args.ok_or_else(|| missing(4544710, "accumulateArgs"))?;
    Ok(JsAcc::Accumulator {
        init,
        init_args,
        accumulate,
        accumulate_args,
        finalize,
    })
}

fn check_lang(v: RawBsonRef<'_>) -> Result<(), QueryError> {
    match v {
        RawBsonRef::String("js") => Ok(()),
        RawBsonRef::String(_) => Err(loc(4544705, "$accumulator only supports lang: 'js'")),
        other => Err(loc(
            4544704,
            format!(
                "$accumulator lang must be a string; found: {:?}",
                other.element_type()
            ),
        )),
    }
}

fn parse_reduce(arg: RawBsonRef<'_>) -> Result<JsAcc, QueryError> {
    let RawBsonRef::Document(spec) = arg else {
        return Err(loc(
            31326,
            "$_internalJsReduce requires a document argument",
        ));
    };
    let field = |name| spec.get(name).ok().flatten();
    let reduce = field("eval")
        .and_then(code_of)
        .ok_or_else(|| loc(31245, "$_internalJsReduce requires 'eval' argument"))?;
    let data =
        field("data").ok_or_else(|| loc(31349, "$_internalJsReduce requires 'data' argument"))?;
    let scope = match field("scope") {
        Some(RawBsonRef::Document(d)) => Some(Document::try_from(d).map_err(raw_err)?),
        _ => None,
    };
    mangrove_js::check(reduce, scope.as_ref())?;
    Ok(JsAcc::Reduce {
        data: Expr::parse(data)?,
        reduce: reduce.to_owned(),
        scope,
    })
}

/// An argument expression's value, which must be an array (`code` names the one that is not).
fn arg_array(e: &Expr, doc: &RawDocument, code: i32, what: &str) -> Result<Vec<Bson>, QueryError> {
    match e.eval(doc)? {
        Some(Bson::Array(a)) => Ok(a),
        other => Err(loc(
            code,
            format!("$accumulator {what} must evaluate to an array: {other:?}"),
        )),
    }
}

impl JsAcc {
    /// Folds one document in; returns how many bytes the state grew (or shrank).
    pub(crate) fn accumulate(
        &self,
        state: &mut JsState,
        doc: &RawDocument,
        first_doc: bool,
    ) -> Result<isize, QueryError> {
        let before = state_size(state)?;
        match self {
            JsAcc::Accumulator {
                init,
                init_args,
                accumulate,
                accumulate_args,
                ..
            } => {
                if first_doc {
                    let args = match init_args {
                        Some(e) => arg_array(e, doc, 4544711, "initArgs")?,
                        None => Vec::new(),
                    };
                    state.value = Some(mangrove_js::call(init, None, None, &args)?);
                }
                let mut args = vec![state.value.take().unwrap_or(Bson::Null)];
                args.extend(arg_array(accumulate_args, doc, 4544712, "accumulateArgs")?);
                state.value = Some(mangrove_js::call(accumulate, None, None, &args)?);
            }
            JsAcc::Reduce { data, .. } => match data.eval(doc)? {
                None => {}
                Some(Bson::Document(mut d))
                    if d.len() == 2 && d.contains_key("k") && d.contains_key("v") =>
                {
                    state.key = d.remove("k");
                    state.values.extend(d.remove("v"));
                }
                Some(other) => {
                    return Err(loc(
                        31251,
                        format!(
                            "$_internalJsReduce requires the 'data' argument to have a 'k' and 'v' field. Instead found {other}"
                        ),
                    ));
                }
            },
        }
        let after = state_size(state)?;
        Ok(after as isize - before as isize)
    }

    /// The group's result: `finalize(state)` (or the state), or `reduce(key, values)`.
    pub(crate) fn finish(&self, state: JsState) -> Result<Bson, QueryError> {
        match self {
            JsAcc::Accumulator { finalize, .. } => {
                let value = state.value.unwrap_or(Bson::Null);
                match finalize {
                    Some(f) => Ok(mangrove_js::call(f, None, None, &[value])?),
                    None => Ok(value),
                }
            }
            JsAcc::Reduce { reduce, scope, .. } => {
                if state.values.is_empty() {
                    return Ok(Bson::Null);
                }
                let key = state.key.unwrap_or(Bson::Null);
                let args = [key, Bson::Array(state.values)];
                Ok(mangrove_js::call(reduce, scope.as_ref(), None, &args)?)
            }
        }
    }
}

fn state_size(state: &JsState) -> Result<usize, QueryError> {
    let mut n = 0;
    for v in state.value.iter().chain(&state.key).chain(&state.values) {
        n += mem_size(v)?;
    }
    Ok(n)
}
