//! `$redact`: an expression decides, level by level, whether a (sub)document is kept whole
//! (`$$KEEP`), dropped (`$$PRUNE`) or kept with its embedded documents decided in turn
//! (`$$DESCEND`), as in mongod.
//!
//! Invariants: streaming (one document at a time); recursion follows the document's own
//! nesting, which values cap at `MAX_VALUE_DEPTH`. Known difference: at an embedded level,
//! `$$ROOT` names that level's document (mongod keeps it the top-level document).

use bson::raw::RawBsonRef;
use bson::{Bson, Document, RawDocumentBuf};

use crate::QueryError;
use crate::doc_ops::{raw_err, to_raw};
use crate::expr::{Expr, with_bound, with_vars};

const NAMES: [&str; 3] = ["DESCEND", "PRUNE", "KEEP"];

pub(crate) fn parse(spec: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let names: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
    with_bound(&names, || Expr::parse(spec))
}

/// The redacted document, or `None` when the top level is pruned.
pub(crate) fn redact(e: &Expr, doc: RawDocumentBuf) -> Result<Option<RawDocumentBuf>, QueryError> {
    let vars = NAMES
        .iter()
        .map(|n| (n.to_string(), Bson::String(n.to_lowercase())))
        .collect();
    with_vars(vars, || match decide(e, &doc)? {
        Decision::Keep => Ok(Some(doc)),
        Decision::Prune => Ok(None),
        Decision::Descend => {
            let d = Document::try_from(doc.as_ref()).map_err(raw_err)?;
            Ok(Some(to_raw(&descend(e, d)?)?))
        }
    })
}

enum Decision {
    Keep,
    Prune,
    Descend,
}

fn decide(e: &Expr, doc: &bson::RawDocument) -> Result<Decision, QueryError> {
    match e.eval(doc)? {
        Some(Bson::String(s)) if s == "keep" => Ok(Decision::Keep),
        Some(Bson::String(s)) if s == "prune" => Ok(Decision::Prune),
        Some(Bson::String(s)) if s == "descend" => Ok(Decision::Descend),
        other => Err(QueryError::location(
            17053,
            format!(
                "$redact's expression should not return anything aside from the variables $$KEEP, $$DESCEND, and $$PRUNE, but returned {}",
                other.map_or("missing".to_string(), |v| v.to_string())
            ),
        )),
    }
}

/// `d` with each embedded document (also inside arrays) decided in turn.
fn descend(e: &Expr, d: Document) -> Result<Document, QueryError> {
    let mut out = Document::new();
    for (k, v) in d {
        if let Some(v) = redact_value(e, v)? {
            out.insert(k, v);
        }
    }
    Ok(out)
}

fn redact_value(e: &Expr, v: Bson) -> Result<Option<Bson>, QueryError> {
    match v {
        Bson::Document(sub) => {
            let raw = to_raw(&sub)?;
            Ok(match decide(e, &raw)? {
                Decision::Keep => Some(Bson::Document(sub)),
                Decision::Prune => None,
                Decision::Descend => Some(Bson::Document(descend(e, sub)?)),
            })
        }
        Bson::Array(items) => {
            let mut kept = Vec::with_capacity(items.len());
            for item in items {
                if let Some(i) = redact_value(e, item)? {
                    kept.push(i);
                }
            }
            Ok(Some(Bson::Array(kept)))
        }
        other => Ok(Some(other)),
    }
}
