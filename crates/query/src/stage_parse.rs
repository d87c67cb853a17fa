//! Parsing a pipeline: each stage's specification checked and turned into a [`Stage`], with
//! mongod's error codes for each malformed one. Anything unknown is refused (40324).

use bson::Bson;
use bson::raw::{RawArray, RawBsonRef, RawDocument};

use crate::compare::as_num;
use crate::doc_ops::raw_err;
use crate::expr::{Expr, with_bound};
use crate::group::{Acc, Group, parse_bucket, parse_group};
use crate::limits::{Limits, MAX_SUBPIPELINE_DEPTH};
use crate::path::split_path;
use crate::stage::{
    GraphLookup, Lookup, Pipeline, Sink, Stage, Unwind, WhenMatched, WhenNotMatched,
};
use crate::{Filter, Projection, QueryError, SortSpec};

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
            ("on", on) => check_merge_on(on)?,
            ("whenMatched", RawBsonRef::String(m)) => when_matched = when_matched_mode(m)?,
            ("whenMatched", RawBsonRef::Array(_)) => {
                return Err(QueryError::new(
                    115,
                    "CommandNotSupported",
                    "$merge with a whenMatched pipeline is not supported by Mangrove yet",
                ));
            }
            ("whenNotMatched", RawBsonRef::String(m)) => {
                when_not_matched = when_not_matched_mode(m)?
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

/// `$merge`'s `on`: only `_id` (other fields need a unique index to match on).
fn check_merge_on(on: RawBsonRef<'_>) -> Result<(), QueryError> {
    match on {
        RawBsonRef::String("_id") => Ok(()),
        RawBsonRef::Array(a) if a.into_iter().flatten().all(|f| f.as_str() == Some("_id")) => {
            Ok(())
        }
        _ => Err(QueryError::location(
            51183,
            "Cannot find index to verify that join fields will be unique: $merge on fields other than _id needs a unique index, which Mangrove does not have yet",
        )),
    }
}

fn when_matched_mode(m: &str) -> Result<WhenMatched, QueryError> {
    Ok(match m {
        "replace" => WhenMatched::Replace,
        "keepExisting" => WhenMatched::KeepExisting,
        "merge" => WhenMatched::Merge,
        "fail" => WhenMatched::Fail,
        other => {
            return Err(QueryError::bad_value(format!(
                "Enumeration value '{other}' for field 'whenMatched' is not a valid value."
            )));
        }
    })
}

fn when_not_matched_mode(m: &str) -> Result<WhenNotMatched, QueryError> {
    Ok(match m {
        "insert" => WhenNotMatched::Insert,
        "discard" => WhenNotMatched::Discard,
        "fail" => WhenNotMatched::Fail,
        other => {
            return Err(QueryError::bad_value(format!(
                "Enumeration value '{other}' for field 'whenNotMatched' is not a valid value."
            )));
        }
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
        Self::parse_at(pipeline, 0)
    }

    pub(crate) fn parse_at(pipeline: &RawArray, depth: usize) -> Result<Pipeline, QueryError> {
        if depth > MAX_SUBPIPELINE_DEPTH {
            return Err(QueryError::new(
                crate::error_codes::MAX_SUB_PIPELINE_DEPTH_EXCEEDED,
                "MaxSubPipelineDepthExceeded",
                format!(
                    "Maximum number of nested sub-pipelines exceeded. Limit is {MAX_SUBPIPELINE_DEPTH}"
                ),
            ));
        }
        let mut stages = Vec::new();
        let mut sink = None;
        for item in pipeline {
            if sink.is_some() {
                return Err(QueryError::location(
                    40601,
                    "$out and $merge can only be the final stage in the pipeline",
                ));
            }
            let (name, spec) = stage_field(item.map_err(raw_err)?)?;
            sink = parse_stage(name, spec, depth, &mut stages)?;
            // `$match` with `$text` only first, in a top-level pipeline (mongod's 17313).
            if let Some(Stage::Match(f)) = stages.last()
                && f.text_search().is_some()
                && (stages.len() > 1 || depth > 0)
            {
                return Err(QueryError::location(
                    17313,
                    "$match with $text is only allowed as the first pipeline stage",
                ));
            }
        }
        Ok(Pipeline {
            stages,
            sink,
            limits: Limits::default(),
        })
    }
}

/// A stage's one field: its name and specification.
fn stage_field(item: RawBsonRef<'_>) -> Result<(&str, RawBsonRef<'_>), QueryError> {
    let stage = match item {
        RawBsonRef::Document(d) => d,
        _ => {
            return Err(QueryError::type_mismatch(
                "Each element of the 'pipeline' array must be an object",
            ));
        }
    };
    let mut fields = stage.iter();
    match (fields.next(), fields.next()) {
        (Some(Ok((name, spec))), None) => Ok((name.as_str(), spec)),
        _ => Err(QueryError::location(
            40323,
            "A pipeline stage specification object must contain exactly one field.",
        )),
    }
}

/// The specification of stage `name`, which must be an object.
fn doc_spec<'a>(name: &str, spec: RawBsonRef<'a>) -> Result<&'a RawDocument, QueryError> {
    match spec {
        RawBsonRef::Document(d) => Ok(d),
        _ => Err(QueryError::failed_to_parse(format!(
            "the {name} stage specification must be an object"
        ))),
    }
}

/// Parses one stage onto `stages` (`$sortByCount` is two); a `$out` or `$merge` is returned as
/// the pipeline's sink instead.
fn parse_stage(
    name: &str,
    spec: RawBsonRef<'_>,
    depth: usize,
    stages: &mut Vec<Stage>,
) -> Result<Option<Sink>, QueryError> {
    let doc = || doc_spec(name, spec);
    let parsed = match name {
        "$match" => Stage::Match(match_filter(doc()?)?),
        "$sort" => Stage::Sort(SortSpec::parse(doc()?)?),
        "$skip" => Stage::Skip(stage_number(spec, "$skip")?),
        "$limit" => match stage_number(spec, "$limit")? {
            0 => return Err(QueryError::location(15958, "the limit must be positive")),
            n => Stage::Limit(n),
        },
        "$project" => Stage::Project(Projection::parse(doc()?)?),
        "$replaceRoot" => parse_replace_root(doc()?)?,
        "$replaceWith" => Stage::ReplaceRoot(Expr::parse(spec)?),
        "$unset" => parse_unset(spec)?,
        "$addFields" | "$set" => {
            let mut fields = Vec::new();
            add_field_specs(doc()?, &[], &mut fields, 0)?;
            Stage::AddFields(fields)
        }
        "$count" => parse_count(spec)?,
        "$group" => Stage::Group(parse_group(doc()?)?),
        "$sortByCount" => {
            stages.push(parse_sort_by_count(spec)?);
            Stage::Sort(SortSpec::parse(&bson::rawdoc! { "count": -1 })?)
        }
        "$unwind" => Stage::Unwind(parse_unwind(spec)?),
        "$lookup" => Stage::Lookup(Box::new(parse_lookup(doc()?, depth)?)),
        "$facet" => Stage::Facet(parse_facet(doc()?, depth)?),
        "$sample" => parse_sample(doc()?)?,
        "$documents" if !stages.is_empty() => {
            return Err(QueryError::location(
                40602,
                "$documents is only valid as the first stage in a pipeline",
            ));
        }
        "$documents" => Stage::Documents(Expr::parse(spec)?),
        "$bucket" => Stage::Bucket(Box::new(parse_bucket(doc()?)?)),
        "$unionWith" => parse_union_with(spec, depth)?,
        "$graphLookup" => Stage::GraphLookup(Box::new(parse_graph_lookup(doc()?)?)),
        "$bucketAuto" => Stage::BucketAuto(Box::new(crate::bucket_auto::parse(spec)?)),
        "$setWindowFields" => Stage::Window(Box::new(crate::window::parse(spec)?)),
        "$densify" => Stage::Densify(Box::new(crate::densify::parse(spec)?)),
        "$fill" => match parse_fill(spec, stages)? {
            Some(stage) => stage,
            None => return Ok(None),
        },
        "$redact" => Stage::Redact(crate::redact::parse(spec)?),
        "$out" | "$merge" if depth > 0 => {
            return Err(QueryError::location(
                51047,
                format!("{name} is not allowed within a $lookup or $facet sub-pipeline"),
            ));
        }
        "$out" => return Ok(Some(parse_out(spec)?)),
        "$merge" => return Ok(Some(parse_merge(spec)?)),
        other => Stage::GeoNear(crate::geo_stage::other_stage(
            other,
            spec,
            stages.is_empty() && depth == 0,
        )?),
    };
    stages.push(parsed);
    Ok(None)
}

/// `$fill`, rewritten as mongod does: a `$setWindowFields` for `locf`/`linear` outputs (pushed
/// onto `stages`), then the `$addFields` of its `value` outputs, if any, which is returned.
fn parse_fill(spec: RawBsonRef<'_>, stages: &mut Vec<Stage>) -> Result<Option<Stage>, QueryError> {
    let (window, values) = crate::densify::parse_fill(spec)?;
    if let Some(w) = window {
        stages.push(Stage::Window(Box::new(w)));
    }
    Ok(values.map(Stage::AddFields))
}

fn parse_out(spec: RawBsonRef<'_>) -> Result<Sink, QueryError> {
    let (db, coll) = sink_target(spec, "$out")?;
    Ok(Sink::Out { db, coll })
}

fn parse_replace_root(spec: &RawDocument) -> Result<Stage, QueryError> {
    let new_root = spec.get("newRoot").ok().flatten().ok_or_else(|| {
        QueryError::location(40231, "no newRoot specified for the $replaceRoot stage")
    })?;
    Ok(Stage::ReplaceRoot(Expr::parse(new_root)?))
}

/// `$unset`: a field name or an array of them, run as an exclusion projection.
fn parse_unset(spec: RawBsonRef<'_>) -> Result<Stage, QueryError> {
    let names: Vec<&str> = match spec {
        RawBsonRef::String(f) => vec![f],
        RawBsonRef::Array(a) => a
            .into_iter()
            .map(|f| match f {
                Ok(RawBsonRef::String(f)) => Ok(f),
                _ => Err(QueryError::location(
                    31120,
                    "$unset specification must be a string or an array containing only string values",
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(QueryError::location(
                31002,
                "$unset specification must be a string or an array",
            ));
        }
    };
    let mut exclusion = bson::RawDocumentBuf::new();
    for n in names {
        exclusion.append(bson::raw::CString::try_from(n).map_err(raw_err)?, 0i32);
    }
    Ok(Stage::Unset(Projection::parse(&exclusion)?))
}

fn parse_count(spec: RawBsonRef<'_>) -> Result<Stage, QueryError> {
    match spec {
        RawBsonRef::String(s) if !s.is_empty() && !s.starts_with('$') && !s.contains('.') => {
            Ok(Stage::Count(s.to_string()))
        }
        _ => Err(QueryError::location(
            40156,
            "the count field must be a non-empty string without '$' or '.'",
        )),
    }
}

/// `$sortByCount`'s `$group` (the `$sort` by count follows it).
fn parse_sort_by_count(spec: RawBsonRef<'_>) -> Result<Stage, QueryError> {
    let by = match spec {
        RawBsonRef::String(s) if s.starts_with('$') => Expr::parse(spec)?,
        RawBsonRef::Document(d)
            if d.iter()
                .next()
                .is_some_and(|f| f.is_ok_and(|(k, _)| k.as_str().starts_with('$'))) =>
        {
            Expr::parse(spec)?
        }
        _ => {
            return Err(QueryError::location(
                40148,
                "the sortByCount field must be defined as a $-prefixed path or an expression object",
            ));
        }
    };
    Ok(Stage::Group(Group {
        id: by,
        accs: vec![("count".into(), Acc::Sum(Expr::Const(Bson::Int32(1))))],
    }))
}

fn parse_sample(spec: &RawDocument) -> Result<Stage, QueryError> {
    let size = spec
        .get("size")
        .ok()
        .flatten()
        .ok_or_else(|| QueryError::location(28749, "$sample stage must specify a size"))?;
    match as_num(size).map(|n| n.to_f64()) {
        Some(n) if n >= 0.0 => Ok(Stage::Sample(n as usize)),
        Some(_) => Err(QueryError::location(
            28747,
            "size argument to $sample must not be negative",
        )),
        None => Err(QueryError::location(
            28746,
            "size argument to $sample must be a number",
        )),
    }
}

/// `$addFields` specs: a nested object without operators names sub-fields (`{a: {b: 1}}` is
/// `{"a.b": 1}`, merging into an existing `a`), as in mongod.
fn add_field_specs(
    spec: &RawDocument,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, Expr)>,
    depth: usize,
) -> Result<(), QueryError> {
    if depth > 100 {
        return Err(QueryError::bad_value(
            "$addFields specification is nested too deeply",
        ));
    }
    for item in spec {
        let (k, v) = item.map_err(raw_err)?;
        if k.as_str().is_empty() || k.as_str().starts_with('$') {
            return Err(QueryError::location(
                16410,
                format!(
                    "FieldPath field names may not start with '$': '{}'",
                    k.as_str()
                ),
            ));
        }
        let mut path = prefix.to_vec();
        path.extend(split_path(k.as_str()));
        match v {
            RawBsonRef::Document(d)
                if !d.is_empty()
                    && !d
                        .iter()
                        .next()
                        .is_some_and(|f| f.is_ok_and(|(k, _)| k.as_str().starts_with('$'))) =>
            {
                add_field_specs(d, &path, out, depth + 1)?;
            }
            _ => out.push((path, Expr::parse(v)?)),
        }
    }
    Ok(())
}

/// `$unwind`'s document form: its path, `includeArrayIndex` and `preserveNullAndEmptyArrays`.
fn unwind_options(d: &RawDocument) -> Result<(&str, Option<&str>, bool), QueryError> {
    let mut path = None;
    let mut index = None;
    let mut preserve = false;
    for item in d {
        let (k, v) = item.map_err(raw_err)?;
        match (k.as_str(), v) {
            ("path", RawBsonRef::String(p)) => path = Some(p),
            ("path", _) => {
                return Err(QueryError::location(
                    28808,
                    "expected a string as the path for $unwind stage",
                ));
            }
            ("includeArrayIndex", RawBsonRef::String(i)) => {
                if i.is_empty() || i.starts_with('$') {
                    return Err(QueryError::location(
                        28822,
                        format!(
                            "includeArrayIndex option to $unwind stage should not be prefixed with a '$': {i}"
                        ),
                    ));
                }
                index = Some(i);
            }
            ("includeArrayIndex", _) => {
                return Err(QueryError::location(
                    28810,
                    "expected a non-empty string for the includeArrayIndex option to $unwind stage",
                ));
            }
            ("preserveNullAndEmptyArrays", RawBsonRef::Boolean(b)) => preserve = b,
            ("preserveNullAndEmptyArrays", _) => {
                return Err(QueryError::location(
                    28809,
                    "expected a boolean for the preserveNullAndEmptyArrays option to $unwind stage",
                ));
            }
            (other, _) => {
                return Err(QueryError::location(
                    28811,
                    format!("unrecognized option to $unwind stage: {other}"),
                ));
            }
        }
    }
    let path =
        path.ok_or_else(|| QueryError::location(28812, "no path specified to $unwind stage"))?;
    Ok((path, index, preserve))
}

fn parse_unwind(spec: RawBsonRef<'_>) -> Result<Unwind, QueryError> {
    let (path, index, preserve) = match spec {
        RawBsonRef::String(p) => (p, None, false),
        RawBsonRef::Document(d) => unwind_options(d)?,
        other => {
            return Err(QueryError::location(
                15981,
                format!(
                    "expected either a string or an object as specification for $unwind stage, got {}",
                    crate::update::type_name(&Bson::try_from(other).unwrap_or(Bson::Null))
                ),
            ));
        }
    };
    let Some(field) = path.strip_prefix('$').filter(|f| !f.is_empty()) else {
        return Err(QueryError::location(
            28818,
            format!("path option to $unwind stage should be prefixed with a '$': {path}"),
        ));
    };
    Ok(Unwind {
        path: split_path(field),
        index: index.map(split_path),
        preserve,
    })
}

fn parse_union_with(spec: RawBsonRef<'_>, depth: usize) -> Result<Stage, QueryError> {
    match spec {
        RawBsonRef::String(c) if !c.is_empty() => Ok(Stage::UnionWith(c.to_string(), None)),
        RawBsonRef::Document(d) => {
            let mut coll = None;
            let mut pipeline = None;
            for item in d {
                let (k, v) = item.map_err(raw_err)?;
                match (k.as_str(), v) {
                    ("coll", RawBsonRef::String(c)) if !c.is_empty() => coll = Some(c.to_string()),
                    ("pipeline", RawBsonRef::Array(p)) => {
                        pipeline = Some(Pipeline::parse_at(p, depth + 1)?)
                    }
                    (other, _) => {
                        return Err(QueryError::failed_to_parse(format!(
                            "$unionWith: unexpected or malformed argument '{other}'"
                        )));
                    }
                }
            }
            let coll = coll.ok_or_else(|| {
                QueryError::failed_to_parse("$unionWith requires a 'coll' collection name")
            })?;
            Ok(Stage::UnionWith(coll, pipeline))
        }
        _ => Err(QueryError::failed_to_parse(
            "the $unionWith stage specification must be an object or a string",
        )),
    }
}

fn parse_facet(spec: &RawDocument, depth: usize) -> Result<Vec<(String, Pipeline)>, QueryError> {
    let mut facets = Vec::new();
    for item in spec {
        let (k, v) = item.map_err(raw_err)?;
        let name = k.as_str();
        if name.is_empty() || name.starts_with('$') || name.contains('.') {
            return Err(QueryError::location(
                40352,
                format!("FieldPath field names may not start with '$' or contain '.': '{name}'"),
            ));
        }
        let RawBsonRef::Array(stages) = v else {
            return Err(QueryError::location(
                40170,
                format!(
                    "arguments to $facet must be arrays, {name} is type {:?}",
                    v.element_type()
                ),
            ));
        };
        for stage in stages {
            if let Ok(RawBsonRef::Document(s)) = stage
                && let Some(Ok((stage_name, _))) = s.iter().next()
                && matches!(
                    stage_name.as_str(),
                    "$facet" | "$out" | "$merge" | "$documents"
                )
            {
                return Err(QueryError::location(
                    40600,
                    format!(
                        "{} is not allowed to be used within a $facet stage",
                        stage_name.as_str()
                    ),
                ));
            }
        }
        facets.push((name.to_string(), Pipeline::parse_at(stages, depth + 1)?));
    }
    if facets.is_empty() {
        return Err(QueryError::location(
            40169,
            "the $facet specification must be a non-empty object",
        ));
    }
    Ok(facets)
}

/// `$lookup`'s fields as given, before they are checked against each other.
#[derive(Default)]
struct LookupFields<'a> {
    from: Option<String>,
    as_field: Option<String>,
    local: Option<String>,
    foreign: Option<String>,
    lets: Option<&'a RawDocument>,
    pipeline: Option<&'a RawArray>,
}

fn lookup_fields(spec: &RawDocument) -> Result<LookupFields<'_>, QueryError> {
    let mut f = LookupFields::default();
    for item in spec {
        let (k, v) = item.map_err(raw_err)?;
        match (k.as_str(), v) {
            ("from", RawBsonRef::String(s)) if !s.is_empty() => f.from = Some(s.to_string()),
            ("from", RawBsonRef::Document(d)) => {
                return Err(QueryError::failed_to_parse(format!(
                    "$lookup from another database is not supported: {d:?}"
                )));
            }
            ("as", RawBsonRef::String(a)) => f.as_field = Some(a.to_string()),
            ("localField", RawBsonRef::String(l)) => f.local = Some(l.to_string()),
            ("foreignField", RawBsonRef::String(s)) => f.foreign = Some(s.to_string()),
            ("let", RawBsonRef::Document(d)) => f.lets = Some(d),
            ("pipeline", RawBsonRef::Array(p)) => f.pipeline = Some(p),
            ("from" | "as" | "localField" | "foreignField" | "let" | "pipeline", _) => {
                return Err(QueryError::failed_to_parse(format!(
                    "$lookup argument '{}' has the wrong type",
                    k.as_str()
                )));
            }
            (other, _) => {
                return Err(QueryError::failed_to_parse(format!(
                    "unknown argument to $lookup: {other}"
                )));
            }
        }
    }
    Ok(f)
}

pub(crate) fn parse_lookup(spec: &RawDocument, depth: usize) -> Result<Lookup, QueryError> {
    let f = lookup_fields(spec)?;
    let from = f
        .from
        .ok_or_else(|| QueryError::failed_to_parse("must specify 'from' field for a $lookup"))?;
    let as_field = f
        .as_field
        .ok_or_else(|| QueryError::failed_to_parse("must specify 'as' field for a $lookup"))?;
    if as_field.is_empty() || as_field.starts_with('$') {
        return Err(QueryError::location(
            16410,
            format!("FieldPath field names may not start with '$': '{as_field}'"),
        ));
    }
    let equality = match (f.local, f.foreign) {
        (Some(l), Some(f)) => Some((f, split_path(&l))),
        (None, None) => None,
        _ => {
            return Err(QueryError::failed_to_parse(
                "$lookup requires both or neither of 'localField' and 'foreignField' to be specified",
            ));
        }
    };
    if equality.is_none() && f.pipeline.is_none() {
        return Err(QueryError::failed_to_parse(
            "$lookup requires either 'pipeline' or both 'localField' and 'foreignField' to be specified",
        ));
    }
    if f.lets.is_some() && f.pipeline.is_none() {
        return Err(QueryError::failed_to_parse(
            "$lookup with 'let' must also specify 'pipeline'",
        ));
    }
    let lets = f.lets.map(parse_lets).transpose()?.unwrap_or_default();
    let names: Vec<String> = lets.iter().map(|(n, _)| n.clone()).collect();
    let pipeline = match f.pipeline {
        Some(p) => Some(with_bound(&names, || Pipeline::parse_at(p, depth + 1))?),
        None => None,
    };
    Ok(Lookup {
        from,
        as_path: split_path(&as_field),
        equality,
        lets,
        pipeline,
    })
}

/// A `let` document: variable names and the expressions that bind them.
fn parse_lets(d: &RawDocument) -> Result<Vec<(String, Expr)>, QueryError> {
    let mut lets = Vec::new();
    for item in d {
        let (k, v) = item.map_err(raw_err)?;
        crate::expr::check_var_name(k.as_str())?;
        lets.push((k.as_str().to_string(), Expr::parse(v)?));
    }
    Ok(lets)
}

/// A `$graphLookup` field naming a field: non-empty, without a leading `$` (40103).
fn field_name(name: &str, v: RawBsonRef<'_>) -> Result<String, QueryError> {
    match v {
        RawBsonRef::String(s) if !s.is_empty() && !s.starts_with('$') => Ok(s.to_string()),
        _ => Err(QueryError::location(
            40103,
            format!("expected a non-empty string without a leading '$' for '{name}'"),
        )),
    }
}

fn graph_max_depth(v: RawBsonRef<'_>) -> Result<u64, QueryError> {
    match as_num(v).map(|n| n.to_f64()) {
        Some(n) if n >= 0.0 && n.fract() == 0.0 => Ok(n as u64),
        _ => Err(QueryError::location(
            40101,
            "maxDepth requires a nonnegative argument",
        )),
    }
}

/// A `$match` filter; aggregation refuses `$where` (mongod's rule), though `$function` runs.
fn match_filter(spec: &RawDocument) -> Result<Filter, QueryError> {
    let filter = Filter::parse(spec)?;
    if filter.has_where() {
        return Err(QueryError::bad_value(
            "$where is not allowed inside of a $match aggregation expression",
        ));
    }
    crate::geo_stage::refuse_near(&filter)?;
    Ok(filter)
}

fn graph_restrict(v: RawBsonRef<'_>) -> Result<Filter, QueryError> {
    match v {
        RawBsonRef::Document(d) => Filter::parse(d),
        _ => Err(QueryError::location(
            40185,
            "restrictSearchWithMatch must be an object",
        )),
    }
}

pub(crate) fn parse_graph_lookup(spec: &RawDocument) -> Result<GraphLookup, QueryError> {
    let mut from = None;
    let mut start_with = None;
    let mut connect_from = None;
    let mut connect_to = None;
    let mut as_field = None;
    let mut max_depth = None;
    let mut depth_field = None;
    let mut restrict = None;
    for item in spec {
        let (k, v) = item.map_err(raw_err)?;
        match k.as_str() {
            "from" => from = Some(field_name("from", v)?),
            "startWith" => start_with = Some(Expr::parse(v)?),
            "connectFromField" => connect_from = Some(field_name("connectFromField", v)?),
            "connectToField" => connect_to = Some(split_path(&field_name("connectToField", v)?)),
            "as" => as_field = Some(split_path(&field_name("as", v)?)),
            "depthField" => depth_field = Some(split_path(&field_name("depthField", v)?)),
            "maxDepth" => max_depth = Some(graph_max_depth(v)?),
            "restrictSearchWithMatch" => restrict = Some(graph_restrict(v)?),
            other => {
                return Err(QueryError::location(
                    40104,
                    format!("Unknown argument to $graphLookup: {other}"),
                ));
            }
        }
    }
    match (from, start_with, connect_from, connect_to, as_field) {
        (Some(from), Some(start_with), Some(connect_from), Some(connect_to), Some(as_path)) => {
            Ok(GraphLookup {
                from,
                start_with,
                connect_from,
                connect_to,
                as_path,
                max_depth,
                depth_field,
                restrict,
            })
        }
        _ => Err(QueryError::location(
            40105,
            "from, as, startWith, connectFromField, and connectToField must all be specified.",
        )),
    }
}
