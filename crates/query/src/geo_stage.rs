//! The `$geoNear` stage: its specification (`near`, `distanceField`, `spherical`,
//! `maxDistance`, `minDistance`, `query`, `includeLocs`, `distanceMultiplier`, `key`) and what
//! it adds to each document. Ordering by distance is the reader's: the server walks the geo
//! index nearest first (it resolves `key` to the index's field) and feeds the stage; the stage
//! checks the query and the distance limits again and sets the output fields.
//!
//! Invariant: only the first stage of a top-level pipeline (40602); a `$near` in its `query`
//! or in any `$match` is refused (BadValue), as mongod refuses it.

use bson::{RawBsonRef, RawDocument, RawDocumentBuf};
use mangrove_geo::Near;

use crate::error::QueryError;
use crate::filter::Filter;

/// A parsed `$geoNear`.
pub(crate) struct GeoNear {
    pub(crate) near: Near,
    pub(crate) distance_field: Vec<String>,
    pub(crate) include_locs: Option<Vec<String>>,
    pub(crate) multiplier: f64,
    pub(crate) query: Filter,
    pub(crate) raw_query: RawDocumentBuf,
    /// The geo field: given, or resolved by the server from the collection's geo index.
    pub(crate) key: Option<String>,
}

fn bad(msg: impl Into<String>) -> QueryError {
    QueryError::bad_value(msg)
}

fn number(v: RawBsonRef<'_>, name: &str) -> Result<f64, QueryError> {
    match v {
        RawBsonRef::Double(d) => Ok(d),
        RawBsonRef::Int32(i) => Ok(i as f64),
        RawBsonRef::Int64(i) => Ok(i as f64),
        _ => Err(bad(format!("{name} must be a number"))),
    }
}

fn string(v: RawBsonRef<'_>, name: &str) -> Result<String, QueryError> {
    match v {
        RawBsonRef::String(s) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(QueryError::type_mismatch(format!(
            "$geoNear requires that '{name}' option is a String"
        ))),
    }
}

/// The refusal of a `$near` where mongod refuses it (a `$match`, `$geoNear`'s `query`).
pub(crate) fn refuse_near(filter: &Filter) -> Result<(), QueryError> {
    match filter.near() {
        Some(_) => Err(bad(
            "$geoNear, $near, and $nearSphere are not allowed in this context",
        )),
        None => Ok(()),
    }
}

/// A stage `stage_parse.rs`'s table does not hold: `$geoNear` (only `first` in a top-level
/// pipeline, 40602), else unknown (40324).
pub(crate) fn other_stage(
    name: &str,
    spec: RawBsonRef<'_>,
    first: bool,
) -> Result<Box<GeoNear>, QueryError> {
    match (name, spec) {
        ("$geoNear", _) if !first => Err(QueryError::location(
            40602,
            "$geoNear is only valid as the first stage in a pipeline.",
        )),
        ("$geoNear", RawBsonRef::Document(d)) => Ok(Box::new(parse(d)?)),
        ("$geoNear", _) => Err(QueryError::failed_to_parse(
            "the $geoNear stage specification must be an object",
        )),
        _ => Err(QueryError::location(
            40324,
            format!("Unrecognized pipeline stage name: '{name}'"),
        )),
    }
}

/// Parses a `$geoNear` specification.
pub(crate) fn parse(d: &RawDocument) -> Result<GeoNear, QueryError> {
    let (mut near, mut spherical, mut min, mut max) = (None, false, None, None);
    let (mut field, mut locs, mut multiplier, mut key) = (None, None, 1.0, None);
    let mut raw_query = RawDocumentBuf::new();
    for (k, v) in d.iter().map_while(Result::ok) {
        match k.as_str() {
            "near" => near = Some(v),
            "spherical" => spherical = crate::filter::truthy(v),
            "maxDistance" => max = Some(non_negative(number(v, "maxDistance")?, "maxDistance")?),
            "minDistance" => min = Some(non_negative(number(v, "minDistance")?, "minDistance")?),
            "distanceField" => field = Some(string(v, "distanceField")?),
            "includeLocs" => locs = Some(string(v, "includeLocs")?),
            "distanceMultiplier" => {
                multiplier = non_negative(number(v, "distanceMultiplier")?, "distanceMultiplier")?
            }
            "key" => key = Some(string(v, "key")?),
            "query" => match v {
                RawBsonRef::Document(q) => raw_query = q.to_owned(),
                _ => return Err(QueryError::type_mismatch("query must be an object")),
            },
            "num" | "limit" => {
                return Err(bad(format!("$geoNear no longer supports the '{k}' option")));
            }
            other => return Err(bad(format!("unknown argument to $geoNear: {other}"))),
        }
    }
    let near = near.ok_or_else(|| bad("$geoNear requires a 'near' option as an Array"))?;
    let near = Near::for_stage(near, spherical, min, max).map_err(bad)?;
    let field =
        field.ok_or_else(|| bad("$geoNear requires a 'distanceField' option as a String"))?;
    let query = Filter::parse(&raw_query)?;
    refuse_near(&query)?;
    let split = |s: String| s.split('.').map(str::to_string).collect::<Vec<_>>();
    Ok(GeoNear {
        near,
        distance_field: split(field),
        include_locs: locs.map(split),
        multiplier,
        query,
        raw_query,
        key,
    })
}

fn non_negative(n: f64, name: &str) -> Result<f64, QueryError> {
    if n.is_nan() || n < 0.0 {
        return Err(bad(format!("{name} must be nonnegative")));
    }
    Ok(n)
}

impl GeoNear {
    /// The document with the distance (and location) fields set, or `None` when it is not a
    /// match: the query fails, no location, or outside the distance limits.
    pub(crate) fn annotate(&self, doc: &RawDocument) -> Result<Option<RawDocumentBuf>, QueryError> {
        let Some(key) = &self.key else {
            return Err(QueryError::new(
                27,
                "IndexNotFound",
                "$geoNear requires a 2d or 2dsphere index, but none were found",
            ));
        };
        if !self.query.try_matches(doc)? {
            return Ok(None);
        }
        let Some((d, loc)) = crate::geo_filter::near_distance(&self.near, key, doc) else {
            return Ok(None);
        };
        if !self.near.admits(d) {
            return Ok(None);
        }
        let mut out = bson::Document::try_from(doc).map_err(|e| bad(e.to_string()))?;
        crate::doc_ops::set_path(
            &mut out,
            &self.distance_field,
            Some(bson::Bson::Double(d * self.multiplier)),
        );
        if let Some(path) = &self.include_locs {
            let loc = bson::Bson::try_from(loc).unwrap_or(bson::Bson::Null);
            crate::doc_ops::set_path(&mut out, path, Some(loc));
        }
        crate::doc_ops::to_raw(&out).map(Some)
    }
}
