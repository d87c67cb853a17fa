//! Time-series and clustered collections: their `create` options, checked and stored as mongod
//! 7.0 stores them, and what they change about a collection.
//!
//! - A **time-series** collection (`timeseries: {timeField, metaField, granularity,
//!   bucketMaxSpanSeconds, bucketRoundingSeconds}`) is stored as one document per measurement,
//!   keyed by insertion order like a capped collection (`capped.rs`'s writer hands out the
//!   numbers), with no `_id` index: as in mongod, `_id`s may repeat. Every document written
//!   must carry its time field as a date. mongod groups measurements into buckets; Mangrove does
//!   not (see docs/COMPATIBILITY.md): queries, aggregation, updates and deletes work as on any
//!   collection, and `listCollections` says `type: "timeseries"`. With a `metaField`, the
//!   `{meta: 1, time: 1}` index mongod creates is created too.
//! - A **clustered** collection (`clusteredIndex: {key: {_id: 1}, unique: true, name}`) is what
//!   every Mangrove collection already is: documents ordered by `_id`. The option is stored and
//!   `listIndexes` shows the `_id` index as clustered, under its name.
//! - `expireAfterSeconds` (only on those two) is served by an internal TTL index on the time
//!   field or `_id` ([`TTL_INDEX`]), which the TTL monitor runs like any other and
//!   `listIndexes` does not show.
//!
//! Invariant: pure checks of options and documents; no I/O.

use bson::raw::RawBsonRef;
use bson::{Bson, Document, RawDocument, doc};
use mangrove_storage::CollectionInfo;

use crate::error::{CommandError, CommandResult, code};

/// The name of the internal TTL index behind a time-series or clustered collection's
/// `expireAfterSeconds`; `createIndexes` refuses it as a user's index name.
pub const TTL_INDEX: &str = "$ts_expireAfterSeconds";

/// The prefix of the server's own index names, which `createIndexes` refuses in a user's
/// (a wildcard text index is `$**_text`: a leading `$` alone is a user's name).
pub const INTERNAL_INDEX_PREFIX: &str = "$ts_";

/// Whether an index is the server's own, internal to a collection's options and hidden from
/// `listIndexes`.
pub fn is_internal_index(name: &str) -> bool {
    name.starts_with(INTERNAL_INDEX_PREFIX)
}

/// The largest bucket span mongod accepts (a year), in seconds.
const MAX_SPAN_SECONDS: i64 = 31_536_000;

pub fn is_timeseries(coll: &CollectionInfo) -> bool {
    coll.options.contains_key("timeseries")
}

/// The time field every document of `coll` must carry, for a time-series collection.
pub fn time_field(coll: &CollectionInfo) -> Option<&str> {
    coll.options
        .get_document("timeseries")
        .ok()?
        .get_str("timeField")
        .ok()
}

/// The clustered `_id` index as `listIndexes` shows it, for a clustered collection.
pub fn clustered_id_index(coll: &CollectionInfo) -> Option<Document> {
    let spec = coll.options.get_document("clusteredIndex").ok()?;
    Some(doc! {
        "v": spec.get("v").cloned().unwrap_or(Bson::Int32(2)),
        "key": { "_id": 1 },
        "name": spec.get_str("name").unwrap_or("_id_"),
        "unique": true,
        "clustered": true,
    })
}

/// Refuses a document without a date in the time field.
pub fn check_document(field: &str, doc: &RawDocument) -> CommandResult<()> {
    match doc.get(field) {
        Ok(Some(RawBsonRef::DateTime(_))) => Ok(()),
        _ => Err(CommandError::bad_value(format!(
            "'{field}' must be present and contain a valid BSON UTC datetime value"
        ))),
    }
}

/// The checked, normalized `timeseries`, `clusteredIndex` and `expireAfterSeconds` options of
/// `create` (empty when none is given), and the indexes they need.
pub fn create_options(
    timeseries: Option<&Bson>,
    clustered: Option<&Bson>,
    expire: Option<&Bson>,
) -> CommandResult<(Document, Vec<Document>)> {
    let mut options = Document::new();
    let mut indexes = Vec::new();
    let mut ttl_field = None;
    if let Some(ts) = timeseries {
        let ts = normalize_timeseries(ts)?;
        let time = ts.get_str("timeField").unwrap_or_default().to_string();
        if let Ok(meta) = ts.get_str("metaField") {
            let name = format!("{meta}_1_{time}_1");
            indexes.push(doc! { "v": 2, "key": { meta: 1, time.as_str(): 1 }, "name": name });
        }
        ttl_field = Some(time);
        options.insert("timeseries", ts);
    }
    if let Some(c) = clustered {
        if timeseries.is_some() {
            return Err(CommandError::new(
                code::INVALID_OPTIONS,
                "Invalid option 'clusteredIndex': cannot be specified with 'timeseries'",
            ));
        }
        options.insert("clusteredIndex", normalize_clustered(c)?);
        ttl_field = Some("_id".to_string());
    }
    if let Some(expire) = expire {
        let Some(field) = ttl_field else {
            return Err(CommandError::new(
                code::INVALID_OPTIONS,
                "'expireAfterSeconds' is only supported on time-series collections or when the 'clusteredIndex' option is specified",
            ));
        };
        let secs = expire_seconds(expire)?;
        options.insert("expireAfterSeconds", secs);
        indexes.push(doc! {
            "v": 2, "key": { field: 1 }, "name": TTL_INDEX, "expireAfterSeconds": secs as i32,
        });
    }
    Ok((options, indexes))
}

pub fn expire_seconds(v: &Bson) -> CommandResult<i64> {
    let secs = match v {
        Bson::Int32(n) => i64::from(*n),
        Bson::Int64(n) => *n,
        Bson::Double(d) if d.is_finite() => *d as i64,
        _ => {
            return Err(CommandError::type_mismatch(
                "'expireAfterSeconds' must be a number",
            ));
        }
    };
    if !(0..=i64::from(i32::MAX)).contains(&secs) {
        return Err(CommandError::bad_value(
            "TTL index 'expireAfterSeconds' option must be within an acceptable range, try a lower number",
        ));
    }
    Ok(secs)
}

/// `collMod`'s `timeseries`: a coarser `granularity` (seconds, then minutes, then hours), or
/// new equal `bucketMaxSpanSeconds` and `bucketRoundingSeconds`; the new options.
pub fn modified(current: &Document, given: &Bson) -> CommandResult<Document> {
    let Bson::Document(given) = given else {
        return Err(CommandError::type_mismatch(
            "'timeseries' must be an object",
        ));
    };
    let mut spec = doc! {};
    for (k, v) in given {
        if !matches!(
            k.as_str(),
            "granularity" | "bucketMaxSpanSeconds" | "bucketRoundingSeconds"
        ) {
            return Err(CommandError::new(
                code::UNKNOWN_FIELD,
                format!("BSON field 'collMod.timeseries.{k}' is an unknown field."),
            ));
        }
        spec.insert(k.clone(), v.clone());
    }
    let rank = |g: &str| ["seconds", "minutes", "hours"].iter().position(|x| *x == g);
    if let (Ok(old), Ok(new)) = (current.get_str("granularity"), spec.get_str("granularity"))
        && rank(new) < rank(old)
    {
        return Err(CommandError::new(
            code::INVALID_OPTIONS,
            "Invalid transition for timeseries.granularity. Can only transition from 'seconds' to 'minutes' or 'minutes' to 'hours'.",
        ));
    }
    for field in ["timeField", "metaField"] {
        if let Some(v) = current.get(field) {
            spec.insert(field, v.clone());
        }
    }
    normalize_timeseries(&Bson::Document(spec))
}

/// mongod's `clusteredIndex`: `{key: {_id: 1}, unique: true}` with an optional `name` and `v`.
fn normalize_clustered(v: &Bson) -> CommandResult<Document> {
    let Bson::Document(spec) = v else {
        return Err(CommandError::type_mismatch(
            "'clusteredIndex' must be an object",
        ));
    };
    let mut out = Document::new();
    for (k, v) in spec {
        match (k.as_str(), v) {
            ("key", Bson::Document(key)) if key == &doc! { "_id": 1 } => {
                out.insert("key", key.clone());
            }
            ("key", _) => {
                return Err(CommandError::new(
                    code::INVALID_OPTIONS,
                    "The clusteredIndex key must be {_id: 1}: Mangrove clusters collections by _id only",
                ));
            }
            ("unique", Bson::Boolean(true)) => {
                out.insert("unique", true);
            }
            ("unique", _) => {
                return Err(CommandError::new(
                    code::INVALID_OPTIONS,
                    "The clusteredIndex option must have 'unique: true'",
                ));
            }
            ("name", Bson::String(n)) => {
                out.insert("name", n.clone());
            }
            ("v", Bson::Int32(2) | Bson::Int64(2)) => {}
            ("v", _) => {
                return Err(CommandError::new(
                    code::INVALID_OPTIONS,
                    "The clusteredIndex version must be 2",
                ));
            }
            (other, _) => {
                return Err(CommandError::new(
                    code::UNKNOWN_FIELD,
                    format!("BSON field 'clusteredIndex.{other}' is an unknown field."),
                ));
            }
        }
    }
    for required in ["key", "unique"] {
        if !out.contains_key(required) {
            return Err(CommandError::new(
                code::MISSING_FIELD,
                format!("BSON field 'clusteredIndex.{required}' is missing but a required field"),
            ));
        }
    }
    out.insert("v", 2i32);
    Ok(out)
}

/// mongod's checks of `timeseries`, and the form it stores (`granularity` with its default
/// span, or the custom bucketing pair).
fn normalize_timeseries(v: &Bson) -> CommandResult<Document> {
    let Bson::Document(spec) = v else {
        return Err(CommandError::type_mismatch(
            "'timeseries' must be an object",
        ));
    };
    let mut time = None;
    let mut meta = None;
    let mut granularity = None;
    let mut span = None;
    let mut rounding = None;
    for (k, v) in spec {
        match k.as_str() {
            "timeField" => time = Some(field_name("timeField", v)?),
            "metaField" => meta = Some(field_name("metaField", v)?),
            "granularity" => match v {
                Bson::String(g) if matches!(g.as_str(), "seconds" | "minutes" | "hours") => {
                    granularity = Some(g.clone())
                }
                _ => {
                    return Err(CommandError::bad_value(format!(
                        "Enumeration value '{v}' for field 'timeseries.granularity' is not a valid value."
                    )));
                }
            },
            "bucketMaxSpanSeconds" => span = Some(seconds("bucketMaxSpanSeconds", v)?),
            "bucketRoundingSeconds" => rounding = Some(seconds("bucketRoundingSeconds", v)?),
            other => {
                return Err(CommandError::new(
                    code::UNKNOWN_FIELD,
                    format!("BSON field 'timeseries.{other}' is an unknown field."),
                ));
            }
        }
    }
    let Some(time) = time else {
        return Err(CommandError::new(
            code::MISSING_FIELD,
            "BSON field 'timeseries.timeField' is missing but a required field",
        ));
    };
    if meta.as_deref() == Some(time.as_str()) {
        return Err(CommandError::bad_value(
            "The 'metaField' and 'timeField' cannot be the same",
        ));
    }
    let mut out = doc! { "timeField": time };
    if let Some(meta) = meta {
        out.insert("metaField", meta);
    }
    bucketing(&mut out, granularity, span, rounding)?;
    Ok(out)
}

/// `granularity` (with its span) or `bucketMaxSpanSeconds` = `bucketRoundingSeconds`, as mongod
/// requires them.
fn bucketing(
    out: &mut Document,
    granularity: Option<String>,
    span: Option<i64>,
    rounding: Option<i64>,
) -> CommandResult<()> {
    let invalid = |m: &str| Err(CommandError::new(code::INVALID_OPTIONS, m.to_string()));
    match (granularity, span, rounding) {
        (Some(_), _, Some(_)) => {
            invalid("Time-series 'bucketRoundingSeconds' cannot be set with 'granularity'")
        }
        (None, Some(s), Some(r)) if s != r => {
            invalid("Time-series 'bucketMaxSpanSeconds' and 'bucketRoundingSeconds' must be equal")
        }
        (None, Some(s), Some(_)) => {
            out.insert("bucketRoundingSeconds", s as i32);
            out.insert("bucketMaxSpanSeconds", s as i32);
            Ok(())
        }
        (None, Some(_), None) | (None, None, Some(_)) => invalid(
            "Time-series 'bucketMaxSpanSeconds' and 'bucketRoundingSeconds' must both be set",
        ),
        (g, s, None) => {
            let g = g.unwrap_or_else(|| "seconds".to_string());
            let default = match g.as_str() {
                "seconds" => 3600,
                "minutes" => 86_400,
                _ => 2_592_000,
            };
            if s.is_some_and(|s| s != default) {
                return invalid(&format!(
                    "Time-series 'bucketMaxSpanSeconds' must be {default} for granularity '{g}'"
                ));
            }
            out.insert("granularity", g);
            out.insert("bucketMaxSpanSeconds", default as i32);
            Ok(())
        }
    }
}

fn field_name(option: &str, v: &Bson) -> CommandResult<String> {
    match v {
        Bson::String(s) if s.is_empty() || s.starts_with('$') || s.contains('.') => {
            Err(CommandError::bad_value(format!(
                "The '{option}' must be a non-empty top-level field name without '$' or '.': '{s}'"
            )))
        }
        Bson::String(s) if option == "metaField" && s == "_id" => {
            Err(CommandError::bad_value("The 'metaField' cannot be '_id'"))
        }
        Bson::String(s) => Ok(s.clone()),
        _ => Err(CommandError::type_mismatch(format!(
            "BSON field 'timeseries.{option}' is the wrong type, expected type 'string'"
        ))),
    }
}

fn seconds(option: &str, v: &Bson) -> CommandResult<i64> {
    let n = match v {
        Bson::Int32(n) => i64::from(*n),
        Bson::Int64(n) => *n,
        Bson::Double(d) if d.fract() == 0.0 && d.is_finite() => *d as i64,
        _ => {
            return Err(CommandError::type_mismatch(format!(
                "BSON field 'timeseries.{option}' is the wrong type, expected a whole number"
            )));
        }
    };
    if !(1..=MAX_SPAN_SECONDS).contains(&n) {
        return Err(CommandError::bad_value(format!(
            "BSON field 'timeseries.{option}' value must be in the range [1, {MAX_SPAN_SECONDS}]"
        )));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(spec: Document) -> CommandResult<Document> {
        normalize_timeseries(&Bson::Document(spec))
    }

    #[test]
    fn timeseries_options_are_normalized_and_checked_like_mongod() {
        assert_eq!(
            ts(doc! { "timeField": "t" }).unwrap(),
            doc! { "timeField": "t", "granularity": "seconds", "bucketMaxSpanSeconds": 3600 }
        );
        assert_eq!(
            ts(doc! { "timeField": "t", "metaField": "m", "granularity": "hours" }).unwrap(),
            doc! { "timeField": "t", "metaField": "m", "granularity": "hours", "bucketMaxSpanSeconds": 2_592_000 }
        );
        assert_eq!(
            ts(doc! { "timeField": "t", "bucketMaxSpanSeconds": 60, "bucketRoundingSeconds": 60 })
                .unwrap(),
            doc! { "timeField": "t", "bucketRoundingSeconds": 60, "bucketMaxSpanSeconds": 60 }
        );
        let code_of = |spec| ts(spec).unwrap_err().code;
        assert_eq!(code_of(doc! {}), code::MISSING_FIELD);
        assert_eq!(code_of(doc! { "timeField": 1 }), code::TYPE_MISMATCH);
        assert_eq!(
            code_of(doc! { "timeField": "t", "x": 1 }),
            code::UNKNOWN_FIELD
        );
        assert_eq!(
            code_of(doc! { "timeField": "t", "metaField": "t" }),
            code::BAD_VALUE
        );
        assert_eq!(
            code_of(doc! { "timeField": "t", "granularity": "days" }),
            code::BAD_VALUE
        );
        assert_eq!(
            code_of(doc! { "timeField": "t", "bucketMaxSpanSeconds": 60 }),
            code::INVALID_OPTIONS
        );
        assert_eq!(
            code_of(
                doc! { "timeField": "t", "bucketMaxSpanSeconds": 60, "bucketRoundingSeconds": 30 }
            ),
            code::INVALID_OPTIONS
        );
    }

    #[test]
    fn expire_after_seconds_needs_timeseries_or_clustering() {
        let e = create_options(None, None, Some(&Bson::Int32(5))).unwrap_err();
        assert_eq!(e.code, code::INVALID_OPTIONS);
        let clustered = Bson::Document(doc! { "key": { "_id": 1 }, "unique": true });
        let (options, indexes) =
            create_options(None, Some(&clustered), Some(&Bson::Int32(5))).unwrap();
        assert_eq!(options.get_i64("expireAfterSeconds").unwrap(), 5);
        assert_eq!(indexes[0].get_str("name").unwrap(), TTL_INDEX);
        let bad = Bson::Document(doc! { "key": { "a": 1 }, "unique": true });
        assert!(create_options(None, Some(&bad), None).is_err());
    }
}
