//! `$function` and mapReduce's `$_internalJsEmit`: expressions that call JavaScript through
//! `mangrove-js`, which takes source text and BSON and knows nothing of expressions.
//!
//! The source is checked (compiled) at parse time, so a syntax error is the command's parse
//! error as in mongod; arguments are evaluated per document like any operand.

use bson::raw::RawBsonRef;
use bson::{Bson, Document, RawDocument};

use super::{Expr, Val, bad, loc, tname};
use crate::error::QueryError;

pub(crate) enum JsKind {
    /// `$function`: `args` evaluates to the argument array.
    Function,
    /// `$_internalJsEmit`: `args` evaluates to the document that is `this` of the map
    /// function; the result is the array of `{k, v}` it emitted.
    Emit,
}

pub(crate) struct JsExpr {
    kind: JsKind,
    source: String,
    scope: Option<Document>,
    args: Expr,
}

/// mongod's refusal when JavaScript is disabled (`--javascript-enabled=false`), for every JS
/// feature but `$where`.
pub(crate) fn check_enabled() -> Result<(), QueryError> {
    if mangrove_js::enabled() {
        Ok(())
    } else {
        Err(loc(
            31264,
            "Cannot run server-side javascript without the javascript engine enabled",
        ))
    }
}

/// A function given as a string or Code.
pub(crate) fn code_of(v: RawBsonRef<'_>) -> Option<&str> {
    match v {
        RawBsonRef::String(s) | RawBsonRef::JavaScriptCode(s) => Some(s),
        _ => None,
    }
}

/// The optional `scope` document mapReduce passes down (not part of mongod's `$function`
/// syntax, which ignores fields it does not know).
fn scope_of(v: Option<RawBsonRef<'_>>) -> Result<Option<Document>, QueryError> {
    match v {
        Some(RawBsonRef::Document(d)) => {
            Ok(Some(Document::try_from(d).map_err(|e| bad(e.to_string()))?))
        }
        _ => Ok(None),
    }
}

pub(crate) fn parse_function(arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    check_enabled()?;
    let RawBsonRef::Document(spec) = arg else {
        return Err(loc(
            31260,
            format!(
                "$function requires an object as an argument, found: {:?}",
                arg.element_type()
            ),
        ));
    };
    let field = |name| spec.get(name).ok().flatten();
    let body = field("body").ok_or_else(|| loc(31261, "The body function must be specified."))?;
    let body = code_of(body).ok_or_else(|| {
        loc(
            31262,
            "The body function must evaluate to type string or code",
        )
    })?;
    let args = field("args").ok_or_else(|| loc(31263, "The args field must be specified."))?;
    let lang = field("lang").ok_or_else(|| loc(31418, "The lang field must be specified."))?;
    if !matches!(lang, RawBsonRef::String("js")) {
        return Err(loc(
            31419,
            "Currently the only supported language specifier is 'js'.",
        ));
    }
    let scope = scope_of(field("_internalScope"))?;
    mangrove_js::check(body, scope.as_ref())?;
    Ok(Expr::Js(Box::new(JsExpr {
        kind: JsKind::Function,
        source: body.to_owned(),
        scope,
        args: Expr::parse(args)?,
    })))
}

/// `{$_internalJsEmit: {eval: <map>, this: <expr>, scope?: <doc>}}`.
pub(crate) fn parse_emit(arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    check_enabled()?;
    let RawBsonRef::Document(spec) = arg else {
        return Err(loc(
            31221,
            "$_internalJsEmit requires an object as an argument",
        ));
    };
    let field = |name| spec.get(name).ok().flatten();
    let eval = field("eval")
        .and_then(code_of)
        .ok_or_else(|| loc(31222, "The map function must be specified."))?;
    let this = field("this").ok_or_else(|| loc(31223, "The 'this' field must be specified."))?;
    let scope = scope_of(field("scope"))?;
    mangrove_js::check(eval, scope.as_ref())?;
    Ok(Expr::Js(Box::new(JsExpr {
        kind: JsKind::Emit,
        source: eval.to_owned(),
        scope,
        args: Expr::parse(this)?,
    })))
}

impl JsExpr {
    pub(crate) fn eval(&self, doc: &RawDocument) -> Result<Val, QueryError> {
        let input = self.args.eval(doc)?;
        match self.kind {
            JsKind::Function => {
                let Some(Bson::Array(args)) = input else {
                    return Err(loc(31266, "The args field must be of type array"));
                };
                let out = mangrove_js::call(&self.source, self.scope.as_ref(), None, &args)?;
                Ok(Some(out))
            }
            JsKind::Emit => {
                let Some(Bson::Document(this)) = &input else {
                    return Err(loc(
                        31225,
                        format!("'this' must be an object, found {}", tname(&input)),
                    ));
                };
                let emitted = mangrove_js::map(
                    &self.source,
                    self.scope.as_ref(),
                    &bson::RawDocumentBuf::try_from(this).map_err(|e| bad(e.to_string()))?,
                )?;
                let pairs = emitted
                    .into_iter()
                    .map(|(k, v)| Bson::Document(bson::doc! { "k": k, "v": v }))
                    .collect();
                Ok(Some(Bson::Array(pairs)))
            }
        }
    }
}
