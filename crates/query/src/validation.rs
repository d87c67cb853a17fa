//! Collection validators: a `validator` query document, whether a document satisfies it, and
//! when it does not, the `errInfo` mongod 5.0+ attaches to DocumentValidationFailure (121).
//!
//! Invariants:
//! - Whether a document passes is decided by the validator's one [`Filter`], exactly as a query
//!   with that filter would match it; the error description below never changes the verdict.
//! - The description is rebuilt from the validator's own document (every clause re-parsed and
//!   re-run on its own), so it costs nothing until a document fails, and each clause it reports
//!   really fails (or, under `$nor`/`$not`, really matches) the document.
//! - A validator never holds `$where`, `$text`, `$near` or `$nearSphere` (mongod refuses them in
//!   validators); `$expr` and `$jsonSchema` are allowed.
//!
//! The description follows mongod's shape (`operatorName`, `specifiedAs`, `reason`,
//! `consideredValue(s)`, `clausesNotSatisfied`, `schemaRulesNotSatisfied`, ...) for the
//! operators and keywords users meet most; rarer ones get `operatorName` and `specifiedAs` only.

use bson::{Bson, Document, RawBsonRef, RawDocument, RawDocumentBuf, doc};

use crate::error::QueryError;
use crate::filter::Filter;

mod schema;

/// A collection's parsed `validator`.
#[derive(Debug, Clone)]
pub struct Validator {
    filter: Filter,
    spec: Document,
}

impl Validator {
    /// Parses a validator as mongod does: any query, minus the operators it refuses there.
    pub fn parse(spec: &RawDocument) -> Result<Validator, QueryError> {
        refuse_banned(spec)?;
        let filter = Filter::parse(spec)?;
        let spec = Document::try_from(spec).map_err(|e| QueryError::bad_value(e.to_string()))?;
        Ok(Validator { filter, spec })
    }

    /// Whether `doc` satisfies the validator (an `$expr` that fails to evaluate does not).
    pub fn matches(&self, doc: &RawDocument) -> bool {
        self.filter.matches(doc)
    }

    /// `None` when `doc` satisfies the validator; else the `errInfo` of its failure:
    /// `{failingDocumentId, details}`.
    pub fn error_info(&self, doc: &RawDocument) -> Option<Document> {
        if self.matches(doc) {
            return None;
        }
        let owned = Document::try_from(doc).unwrap_or_default();
        let mut info = Document::new();
        if let Some(id) = owned.get("_id") {
            info.insert("failingDocumentId", id.clone());
        }
        info.insert("details", query_details(&self.spec, &owned, false));
        Some(info)
    }
}

/// Refuses the operators mongod does not allow in a validator, with its messages; they may sit
/// under `$and`/`$or`/`$nor` and, for the geo ones, under a field.
fn refuse_banned(spec: &RawDocument) -> Result<(), QueryError> {
    let bad = |msg: &str| Err(QueryError::bad_value(msg));
    for item in spec.iter().map_while(Result::ok) {
        let (key, value) = (item.0.as_str(), item.1);
        match (key, value) {
            ("$where", _) => return bad("$where is not allowed in this context"),
            ("$text", _) => return bad("$text is not allowed in this context"),
            ("$expr", v) if names_function(v) => {
                return Err(QueryError::location(
                    4660800,
                    "$function cannot be used inside a validator.",
                ));
            }
            ("$and" | "$or" | "$nor", RawBsonRef::Array(items)) => {
                for d in items.into_iter().map_while(Result::ok) {
                    if let RawBsonRef::Document(d) = d {
                        refuse_banned(d)?;
                    }
                }
            }
            (_, RawBsonRef::Document(ops))
                if !key.starts_with('$')
                    && (ops.get("$near").ok().flatten().is_some()
                        || ops.get("$nearSphere").ok().flatten().is_some()) =>
            {
                return bad("$geoNear, $near, and $nearSphere are not allowed in this context");
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether an expression holds `$function` anywhere (mongod keeps JavaScript out of validators).
fn names_function(v: RawBsonRef<'_>) -> bool {
    let children: Box<dyn Iterator<Item = RawBsonRef<'_>>> = match v {
        RawBsonRef::Document(d) => {
            if d.get("$function").ok().flatten().is_some() {
                return true;
            }
            Box::new(d.iter().map_while(Result::ok).map(|(_, v)| v))
        }
        RawBsonRef::Array(a) => Box::new(a.into_iter().map_while(Result::ok)),
        _ => return false,
    };
    children.into_iter().any(names_function)
}

/// One clause of a query document, as mongod's parser splits it: each operator of a field is
/// its own clause (`{a: {$gt: 1, $lt: 5}}` is two).
struct Clause {
    /// The clause alone, as a query: also its `specifiedAs`.
    spec: Document,
    kind: Kind,
}

enum Kind {
    /// A field operator (`$eq` for an implicit equality).
    Field {
        path: String,
        op: String,
    },
    Logical {
        op: String,
        items: Vec<Document>,
    },
    Not {
        path: String,
        inner: Document,
    },
    Expr(Bson),
    JsonSchema(Document),
    /// `$alwaysTrue`, `$alwaysFalse` and whatever else stands alone.
    Other(String),
}

fn clauses(query: &Document) -> Vec<Clause> {
    let mut out = Vec::new();
    for (key, value) in query {
        let spec = doc! { key.as_str(): value.clone() };
        let kind = match (key.as_str(), value) {
            ("$comment", _) => continue,
            ("$and" | "$or" | "$nor", Bson::Array(items)) => Kind::Logical {
                op: key.clone(),
                items: items
                    .iter()
                    .filter_map(|i| i.as_document().cloned())
                    .collect(),
            },
            ("$expr", v) => Kind::Expr(v.clone()),
            ("$jsonSchema", Bson::Document(s)) => Kind::JsonSchema(s.clone()),
            (k, _) if k.starts_with('$') => Kind::Other(key.clone()),
            (_, Bson::Document(ops)) if ops.keys().next().is_some_and(|k| k.starts_with('$')) => {
                field_clauses(key, ops, &mut out);
                continue;
            }
            _ => Kind::Field {
                path: key.clone(),
                op: if matches!(value, Bson::RegularExpression(_)) {
                    "$regex"
                } else {
                    "$eq"
                }
                .to_string(),
            },
        };
        out.push(Clause { spec, kind });
    }
    out
}

/// The clauses of one field's operators; `$options` belongs to its `$regex`.
fn field_clauses(path: &str, ops: &Document, out: &mut Vec<Clause>) {
    for (op, value) in ops {
        let mut alone = doc! { op.as_str(): value.clone() };
        match op.as_str() {
            "$options" => continue,
            "$regex" => {
                if let Some(options) = ops.get("$options") {
                    alone.insert("$options", options.clone());
                }
            }
            _ => {}
        }
        let kind = match (op.as_str(), value) {
            ("$not", Bson::Document(inner)) => Kind::Not {
                path: path.to_string(),
                inner: inner.clone(),
            },
            _ => Kind::Field {
                path: path.to_string(),
                op: op.clone(),
            },
        };
        out.push(Clause {
            spec: doc! { path: alone },
            kind,
        });
    }
}

/// Whether `query` matches `doc` (a clause that cannot be parsed alone counts as matching, so
/// it is left out of the description rather than misreported).
fn query_matches(query: &Document, doc: &Document) -> bool {
    let (Ok(q), Ok(d)) = (
        RawDocumentBuf::try_from(query),
        RawDocumentBuf::try_from(doc),
    ) else {
        return true;
    };
    Filter::parse(&q).map(|f| f.matches(&d)).unwrap_or(true)
}

/// The description of why `doc` fails `query` (or, `inverted`, why it matches it): its one
/// clause's, or an implicit `$and`'s over the clauses that fail.
pub(crate) fn query_details(query: &Document, doc: &Document, inverted: bool) -> Document {
    let mut all = clauses(query);
    if all.len() == 1 {
        return clause_details(&all.remove(0), doc, inverted);
    }
    let mut failing = Vec::new();
    for (index, clause) in all.iter().enumerate() {
        if query_matches(&clause.spec, doc) == inverted {
            failing.push(doc! {
                "index": index as i32,
                "details": clause_details(clause, doc, inverted),
            });
        }
    }
    doc! { "operatorName": "$and", "clausesNotSatisfied": failing }
}

fn clause_details(clause: &Clause, doc: &Document, inverted: bool) -> Document {
    match &clause.kind {
        Kind::Field { path, op } => field_details(&clause.spec, path, op, doc, inverted),
        Kind::Logical { op, items } => logical_details(op, items, doc, inverted),
        Kind::Not { path, inner } => {
            let inner = query_details(&doc! { path.as_str(): inner.clone() }, doc, !inverted);
            doc! { "operatorName": "$not", "details": inner }
        }
        Kind::Expr(expr) => expr_details(&clause.spec, expr, doc, inverted),
        Kind::JsonSchema(schema) if !inverted => doc! {
            "operatorName": "$jsonSchema",
            "schemaRulesNotSatisfied": schema::schema_errors(schema, &Bson::Document(doc.clone())),
        },
        Kind::JsonSchema(_) => doc! { "operatorName": "$jsonSchema", "reason": "schema matched" },
        Kind::Other(op) => {
            let reason = if inverted {
                "expression always evaluates to true"
            } else {
                "expression always evaluates to false"
            };
            doc! { "operatorName": op, "specifiedAs": clause.spec.clone(), "reason": reason }
        }
    }
}

/// `$and`, `$or`, `$nor`: the clauses responsible, by index. Under `$nor` (or an inverted
/// context) a clause is responsible by matching.
fn logical_details(op: &str, items: &[Document], doc: &Document, inverted: bool) -> Document {
    let child_inverted = inverted != (op == "$nor");
    let mut responsible = Vec::new();
    for (index, item) in items.iter().enumerate() {
        if query_matches(item, doc) == child_inverted {
            responsible.push(doc! {
                "index": index as i32,
                "details": query_details(item, doc, child_inverted),
            });
        }
    }
    doc! { "operatorName": op, "clausesNotSatisfied": responsible }
}

fn expr_details(spec: &Document, expr: &Bson, doc: &Document, inverted: bool) -> Document {
    let mut out = doc! { "operatorName": "$expr", "specifiedAs": spec.clone() };
    let evaluated = bson_raw(expr).and_then(|raw| {
        let e = crate::expr::Expr::parse(raw.as_raw_bson_ref()).ok()?;
        let d = RawDocumentBuf::try_from(doc).ok()?;
        Some(e.eval(&d))
    });
    match evaluated {
        Some(Ok(value)) => {
            let reason = if inverted {
                "expression did match"
            } else {
                "expression did not match"
            };
            out.insert("reason", reason);
            out.insert("expressionResult", value.unwrap_or(Bson::Null));
        }
        Some(Err(e)) => {
            out.insert("reason", "failed to evaluate aggregation expression");
            out.insert(
                "details",
                doc! { "code": e.code, "codeName": e.code_name.to_string(), "errmsg": e.message },
            );
        }
        None => {}
    }
    out
}

fn bson_raw(v: &Bson) -> Option<bson::RawBson> {
    bson::RawBson::try_from(v.clone()).ok()
}

/// mongod's reasons for a field operator that failed (and, inverted, matched), the types it
/// expects (a value of another type fails it for that reason), and whether it looks at an
/// array at the end of the path as a whole rather than element by element.
fn operator_traits(op: &str) -> (&'static str, &'static str, &'static [&'static str], bool) {
    const NUMBERS: &[&str] = &["decimal", "double", "int", "long"];
    const BITS: &[&str] = &["binData", "decimal", "double", "int", "long"];
    const ARRAY: &[&str] = &["array"];
    match op {
        "$eq" | "$gt" | "$gte" | "$lt" | "$lte" => {
            ("comparison failed", "comparison succeeded", &[], false)
        }
        "$ne" => ("comparison succeeded", "comparison failed", &[], false),
        "$in" => (
            "no matching value found in array",
            "matching value found in array",
            &[],
            false,
        ),
        "$nin" => (
            "matching value found in array",
            "no matching value found in array",
            &[],
            false,
        ),
        "$exists" => ("path does not exist", "path does exist", &[], false),
        "$type" => ("type did not match", "type did match", &[], false),
        "$regex" => (
            "regular expression did not match",
            "regular expression did match",
            &["regex", "string", "symbol"],
            false,
        ),
        "$mod" => (
            "$mod did not evaluate to expected remainder",
            "$mod did evaluate to expected remainder",
            NUMBERS,
            false,
        ),
        "$size" => (
            "array length was not equal to given size",
            "array length was equal to given size",
            ARRAY,
            true,
        ),
        "$elemMatch" => (
            "array did not satisfy the child predicate",
            "array did satisfy the child predicate",
            ARRAY,
            true,
        ),
        "$all" => (
            "array did not contain all specified values",
            "array did contain all specified values",
            &[],
            true,
        ),
        "$bitsAllSet" | "$bitsAllClear" | "$bitsAnySet" | "$bitsAnyClear" => (
            "bitwise operator failed to match",
            "bitwise operator matched successfully",
            BITS,
            false,
        ),
        _ => ("", "", &[], false),
    }
}

/// A field operator's description: `specifiedAs`, why it failed, and the values it considered.
fn field_details(
    spec: &Document,
    path: &str,
    op: &str,
    doc: &Document,
    inverted: bool,
) -> Document {
    let (mut normal, mut opposite, expected, whole_arrays) = operator_traits(op);
    // `{$exists: false}` fails where the path exists: the reasons swap.
    if op == "$exists" && !spec_operand(spec, path, op).is_some_and(truthy) {
        std::mem::swap(&mut normal, &mut opposite);
    }
    let mut out = doc! { "operatorName": op, "specifiedAs": spec.clone() };
    let values = considered_values(doc, path, !whole_arrays);
    match &values {
        None if op != "$exists" => {
            out.insert("reason", "field was missing");
        }
        Some(vs)
            if !expected.is_empty() && !vs.iter().any(|v| expected.contains(&type_name(v))) =>
        {
            out.insert("reason", "type did not match");
            insert_types(&mut out, vs);
            match expected {
                [one] => out.insert("expectedType", *one),
                many => out.insert("expectedTypes", many.to_vec()),
            };
        }
        _ if !normal.is_empty() => {
            out.insert("reason", if inverted { opposite } else { normal });
        }
        _ => {}
    }
    if op == "$exists" {
        return out;
    }
    if let Some(vs) = &values {
        match vs.as_slice() {
            [one] => out.insert("consideredValue", one.clone()),
            many => out.insert("consideredValues", many.to_vec()),
        };
        if op == "$type" {
            insert_types(&mut out, vs);
        }
    }
    out
}

/// The operand of `{path: {op: operand}}`.
fn spec_operand<'a>(spec: &'a Document, path: &str, op: &str) -> Option<&'a Bson> {
    spec.get_document(path).ok()?.get(op)
}

fn truthy(v: &Bson) -> bool {
    match v {
        Bson::Boolean(b) => *b,
        Bson::Null | Bson::Undefined => false,
        Bson::Int32(i) => *i != 0,
        Bson::Int64(i) => *i != 0,
        Bson::Double(d) => *d != 0.0,
        _ => true,
    }
}

/// `consideredType`, or `consideredTypes` (sorted, distinct) when the values differ in type.
fn insert_types(out: &mut Document, values: &[Bson]) {
    let mut types: Vec<&str> = values.iter().map(type_name).collect();
    types.sort_unstable();
    types.dedup();
    match types.as_slice() {
        [] => {}
        [one] => {
            out.insert("consideredType", *one);
        }
        many => {
            out.insert("consideredTypes", many.to_vec());
        }
    }
}

pub(crate) fn type_name(v: &Bson) -> &'static str {
    crate::types::element_type_name(v.element_type())
}

/// The values a path reaches in `doc`, arrays on the way traversed; at the end of the path an
/// array gives its elements when `omit_array` (else itself). `None`: the path is missing.
fn considered_values(doc: &Document, path: &str, omit_array: bool) -> Option<Vec<Bson>> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut out = Vec::new();
    let mut found = false;
    let root = Bson::Document(doc.clone());
    collect(&root, &parts, omit_array, &mut out, &mut found);
    found.then_some(out)
}

fn collect(v: &Bson, parts: &[&str], omit_array: bool, out: &mut Vec<Bson>, found: &mut bool) {
    let Some((first, rest)) = parts.split_first() else {
        *found = true;
        match v {
            Bson::Array(items) if omit_array => out.extend(items.iter().cloned()),
            _ => out.push(v.clone()),
        }
        return;
    };
    match v {
        Bson::Document(d) => {
            if let Some(next) = d.get(*first) {
                collect(next, rest, omit_array, out, found);
            }
        }
        Bson::Array(items) => {
            if let Some(next) = mangrove_bson::path::parse_index(first).and_then(|i| items.get(i)) {
                collect(next, rest, omit_array, out, found);
            }
            for item in items.iter().filter(|i| matches!(i, Bson::Document(_))) {
                collect(item, parts, omit_array, out, found);
            }
        }
        _ => {}
    }
}
