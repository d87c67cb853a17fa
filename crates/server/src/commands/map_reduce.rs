//! `mapReduce`, as mongod 7.0 runs it: translated into an aggregation pipeline and run by
//! `aggregate`'s machinery, reading one snapshot and writing its output as `$out` (replace) or
//! `$merge` (merge) do.
//!
//! The pipeline: `$match` (query), `$sort`, `$limit`, `$project` with `$_internalJsEmit` (the
//! map function over `$$ROOT`, giving the `{k, v}` pairs it emitted), `$unwind`, `$group` by
//! `k` with `$_internalJsReduce` (reduce over all of a key's values), and `$project` with
//! `$function` for `finalize`. The `scope` reaches every function as bound names. The `reduce`
//! output mode reads the target's documents with the same `_id`s and reduces each existing value
//! with the new one (`reduce(key, [old, new])`, after finalize, as mongod's `$merge` pipeline
//! does) before writing them like `merge`.
//!
//! Refused in transactions (the command table), as in mongod.

use bson::raw::cstr;
use bson::raw::{RawBsonRef, RawDocument};
use bson::{Bson, Document, RawDocumentBuf, doc};
use mangrove_storage::Snapshot;

use crate::Shared;
use crate::auth::roles::Action;
use crate::error::{CommandError, CommandResult, code};
use crate::request::Request;

use super::aggregate;
use super::write_path::WriteOptions;
use super::{Client, Reply};

const FIELDS: &[&str] = &[
    "map",
    "reduce",
    "finalize",
    "query",
    "sort",
    "limit",
    "scope",
    "out",
    "verbose",
    "bypassDocumentValidation",
    "jsMode",
    "collation",
    "maxTimeMS",
    "readConcern",
    "writeConcern",
];

/// Where the results go.
enum Out {
    Inline,
    Replace(Option<String>, String),
    Merge(Option<String>, String),
    Reduce(Option<String>, String),
}

/// The parsed command: the functions and the reading options, kept as BSON for the pipeline.
struct Spec {
    map: String,
    reduce: String,
    finalize: Option<String>,
    scope: Document,
    out: Out,
}

pub(super) async fn map_reduce(
    shared: &Shared,
    client: &mut Client,
    req: &Request<'_>,
    at: Option<Snapshot>,
) -> CommandResult<Reply> {
    req.check_fields(FIELDS)?;
    let coll = req.collection()?;
    let spec = parse(req)?;
    check_output_rights(shared, client, req, &spec.out)?;
    let body = aggregate_body(req, coll, &spec)?;
    let mut agg = Request::new("aggregate", req.db, &body, &[]);
    agg.owner = req.owner.clone();
    match &spec.out {
        Out::Inline => {
            let docs = aggregate::collect(shared, &agg, at)?;
            inline_reply(shared, docs)
        }
        Out::Replace(db, c) | Out::Merge(db, c) => {
            let reply = aggregate::aggregate(shared, &agg, None, at).await?;
            Ok(output_reply(reply, db.as_deref(), c))
        }
        Out::Reduce(db, c) => {
            let docs = aggregate::collect(shared, &agg, at)?;
            let target = format!("{}.{c}", db.as_deref().unwrap_or(req.db));
            let docs = reduce_into_existing(shared, &target, &spec, docs)?;
            let opts = WriteOptions::from_request(req)?;
            let sink = mangrove_query::Sink::Merge {
                db: db.clone(),
                coll: c.clone(),
                when_matched: mangrove_query::WhenMatched::Replace,
                when_not_matched: mangrove_query::WhenNotMatched::Insert,
            };
            aggregate::write_sink(shared, req, &sink, docs, &opts).await?;
            let mut reply = result_doc(db.as_deref(), c);
            if let Some(wce) = opts.wc_error() {
                reply.insert("writeConcernError", wce);
            }
            Ok(reply.into())
        }
    }
}

/// Writing an output collection needs the rights mongod asks there: insert, and remove to
/// replace or update to merge and reduce, on the target's database (the table entry asks only
/// for find on the input).
fn check_output_rights(
    shared: &Shared,
    client: &mut Client,
    req: &Request<'_>,
    out: &Out,
) -> CommandResult<()> {
    let (db, second) = match out {
        Out::Inline => return Ok(()),
        Out::Replace(db, _) => (db, Action::Remove),
        Out::Merge(db, _) | Out::Reduce(db, _) => (db, Action::Update),
    };
    let db = db.as_deref().unwrap_or(req.db);
    for action in [Action::Insert, second] {
        if !crate::auth::may(shared, &mut client.identity, db, action)? {
            return Err(crate::auth::unauthorized(db, req.name));
        }
    }
    Ok(())
}

fn missing(field: &str) -> CommandError {
    CommandError::new(
        code::MISSING_FIELD,
        format!("BSON field 'MapReduce.{field}' is missing but a required field"),
    )
}

/// A function given as Code or a string (CodeWithScope's code, its scope ignored).
fn function(req: &Request<'_>, field: &str) -> CommandResult<Option<String>> {
    match req.get(field) {
        None => Ok(None),
        Some(RawBsonRef::String(s) | RawBsonRef::JavaScriptCode(s)) => Ok(Some(s.to_owned())),
        Some(RawBsonRef::JavaScriptCodeWithScope(c)) => Ok(Some(c.code.to_owned())),
        Some(other) => Err(CommandError::type_mismatch(format!(
            "BSON field 'MapReduce.{field}' is the wrong type '{}', expected types '[string, javascript]'",
            mangrove_query::element_type_name(other.element_type())
        ))),
    }
}

fn parse(req: &Request<'_>) -> CommandResult<Spec> {
    let map = function(req, "map")?.ok_or_else(|| missing("map"))?;
    let reduce = function(req, "reduce")?.ok_or_else(|| missing("reduce"))?;
    let finalize = function(req, "finalize")?;
    let out = parse_out(req.get("out").ok_or_else(|| missing("out"))?)?;
    let scope = match req.get("scope") {
        Some(RawBsonRef::Document(d)) => Document::try_from(d)
            .map_err(|e| CommandError::bad_value(format!("invalid scope: {e}")))?,
        _ => Document::new(),
    };
    if let Some(v) = req.get("verbose")
        && !matches!(v, RawBsonRef::Boolean(_))
    {
        return Err(CommandError::type_mismatch(
            "BSON field 'MapReduce.verbose' is the wrong type, expected type 'bool'",
        ));
    }
    Ok(Spec {
        map,
        reduce,
        finalize,
        scope,
        out,
    })
}

/// `out`: a collection name (replace), `{inline: 1}`, or `{replace|merge|reduce: name, db?}`.
fn parse_out(v: RawBsonRef<'_>) -> CommandResult<Out> {
    let d = match v {
        RawBsonRef::String(name) => return Ok(Out::Replace(None, name.to_owned())),
        RawBsonRef::Document(d) => d,
        _ => {
            return Err(CommandError::new(
                13606,
                "'out' has to be a string or an object",
            ));
        }
    };
    let db = match d.get("db").ok().flatten() {
        None => None,
        Some(RawBsonRef::String(db)) => Some(db.to_owned()),
        Some(_) => return Err(CommandError::bad_value("'db' in 'out' must be a string")),
    };
    let mut mode = None;
    for (k, v) in d.iter().map_while(Result::ok) {
        match k.as_str() {
            "inline" => mode = Some(Out::Inline),
            "replace" | "merge" | "reduce" => {
                let RawBsonRef::String(name) = v else {
                    return Err(CommandError::bad_value(format!(
                        "'out.{}' must be a collection name",
                        k.as_str()
                    )));
                };
                let (db, name) = (db.clone(), name.to_owned());
                mode = Some(match k.as_str() {
                    "replace" => Out::Replace(db, name),
                    "merge" => Out::Merge(db, name),
                    _ => Out::Reduce(db, name),
                });
            }
            "db" | "sharded" | "nonAtomic" => {}
            other => {
                return Err(CommandError::bad_value(format!(
                    "unknown out specifier [{other}]"
                )));
            }
        }
    }
    mode.ok_or_else(|| {
        CommandError::bad_value("'out' needs one of inline, replace, merge or reduce")
    })
}

/// The `aggregate` command mongod would run for this mapReduce.
fn aggregate_body(req: &Request<'_>, coll: &str, spec: &Spec) -> CommandResult<RawDocumentBuf> {
    let mut pipeline = Vec::new();
    if let Some(q) = req.opt_doc("query")? {
        pipeline.push(doc! { "$match": to_doc(q)? });
    }
    if let Some(s) = req.opt_doc("sort")?
        && !s.is_empty()
    {
        pipeline.push(doc! { "$sort": to_doc(s)? });
    }
    match req.opt_i64("limit")? {
        Some(n) if n < 0 => return Err(CommandError::bad_value("limit must be non-negative")),
        Some(n) if n > 0 => pipeline.push(doc! { "$limit": n }),
        _ => {}
    }
    pipeline.extend(js_stages(spec));
    match &spec.out {
        Out::Replace(db, c) => pipeline.push(doc! { "$out": target(db.as_deref(), c) }),
        Out::Merge(db, c) => pipeline.push(doc! { "$merge": {
            "into": target(db.as_deref(), c), "on": "_id",
            "whenMatched": "replace", "whenNotMatched": "insert",
        } }),
        Out::Inline | Out::Reduce(..) => {}
    }
    let mut body = doc! { "aggregate": coll, "pipeline": pipeline, "cursor": {} };
    for field in [
        "collation",
        "maxTimeMS",
        "readConcern",
        "writeConcern",
        "bypassDocumentValidation",
    ] {
        if let Some(v) = req.get(field) {
            body.insert(
                field,
                Bson::try_from(v).map_err(|e| CommandError::bad_value(e.to_string()))?,
            );
        }
    }
    RawDocumentBuf::try_from(&body).map_err(|e| CommandError::bad_value(e.to_string()))
}

/// Map, group-and-reduce, and finalize.
fn js_stages(spec: &Spec) -> Vec<Document> {
    let scope = spec.scope.clone();
    let mut stages = vec![
        doc! { "$project": { "_id": 0, "emits": { "$_internalJsEmit": {
        "eval": &spec.map, "this": "$$ROOT", "scope": scope.clone() } } } },
        doc! { "$unwind": "$emits" },
        doc! { "$group": { "_id": "$emits.k", "value": { "$_internalJsReduce": {
        "data": "$emits", "eval": &spec.reduce, "scope": scope.clone() } } } },
    ];
    if let Some(f) = &spec.finalize {
        stages.push(doc! { "$project": { "value": { "$function": {
        "body": f, "args": ["$_id", "$value"], "lang": "js", "_internalScope": scope } } } });
    }
    stages
}

fn target(db: Option<&str>, coll: &str) -> Bson {
    match db {
        Some(db) => Bson::Document(doc! { "db": db, "coll": coll }),
        None => Bson::String(coll.to_owned()),
    }
}

fn to_doc(d: &RawDocument) -> CommandResult<Document> {
    Document::try_from(d).map_err(|e| CommandError::bad_value(e.to_string()))
}

/// `{results: [...], ok: 1}`, refused (BSONObjectTooLarge) past the largest reply.
fn inline_reply(shared: &Shared, docs: Vec<RawDocumentBuf>) -> CommandResult<Reply> {
    let bytes: usize = docs.iter().map(|d| d.as_bytes().len()).sum();
    if bytes > shared.config.max_bson_size {
        return Err(CommandError::new(
            code::BSON_OBJECT_TOO_LARGE,
            format!(
                "mapReduce's inline results hold {bytes} bytes, more than a reply can ({}); use an output collection",
                shared.config.max_bson_size
            ),
        ));
    }
    let mut results = bson::RawArrayBuf::new();
    for d in docs {
        results.push(d);
    }
    let mut reply = RawDocumentBuf::new();
    reply.append(cstr!("results"), results);
    reply.append(cstr!("ok"), 1.0);
    Ok(Reply::Raw(reply))
}

/// `{result: name}` (or `{result: {db, collection}}` when `out` named a database).
fn result_doc(db: Option<&str>, coll: &str) -> Document {
    match db {
        Some(db) => doc! { "result": { "db": db, "collection": coll }, "ok": 1.0 },
        None => doc! { "result": coll, "ok": 1.0 },
    }
}

/// The aggregate's reply (an empty cursor) as mapReduce's, keeping a write concern error.
fn output_reply(reply: Reply, db: Option<&str>, coll: &str) -> Reply {
    let mut out = result_doc(db, coll);
    if let Reply::Doc(d) = &reply
        && let Some(wce) = d.get("writeConcernError")
    {
        out.insert("writeConcernError", wce.clone());
    }
    out.into()
}

/// `out: {reduce}`: each new `{_id, value}` whose `_id` the target already holds becomes
/// `{_id, value: reduce(_id, [old, new])}`.
fn reduce_into_existing(
    shared: &Shared,
    target: &str,
    spec: &Spec,
    docs: Vec<RawDocumentBuf>,
) -> CommandResult<Vec<RawDocumentBuf>> {
    let snapshot = shared.engine.snapshot();
    let Some(coll) = snapshot.collection(target) else {
        return Ok(docs);
    };
    let mut out = Vec::with_capacity(docs.len());
    for d in docs {
        let Some(id) = d.get("_id").ok().flatten() else {
            out.push(d);
            continue;
        };
        let key = crate::access::doc_key(&coll, id);
        let Some(old) = mangrove_storage::ReadView::get(&snapshot, &coll, &key)? else {
            out.push(d);
            continue;
        };
        let id = Bson::try_from(id).map_err(|e| CommandError::bad_value(e.to_string()))?;
        let value = |doc: &RawDocument| {
            doc.get("value")
                .ok()
                .flatten()
                .map_or(Ok(Bson::Null), Bson::try_from)
                .map_err(|e| CommandError::bad_value(e.to_string()))
        };
        let values = Bson::Array(vec![value(&old)?, value(&d)?]);
        let scope = (!spec.scope.is_empty()).then_some(&spec.scope);
        let reduced = mangrove_js::call(&spec.reduce, scope, None, &[id.clone(), values])?;
        let merged = doc! { "_id": id, "value": reduced };
        out.push(
            RawDocumentBuf::try_from(&merged)
                .map_err(|e| CommandError::bad_value(e.to_string()))?,
        );
    }
    Ok(out)
}
