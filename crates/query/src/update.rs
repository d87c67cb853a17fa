//! Update documents: operator updates (`{$set: ...}`), replacements, array filters.

use std::cmp::Ordering;
use std::collections::HashMap;

use bson::{Bson, Document, RawBson, RawBsonRef, RawDocument, RawDocumentBuf, Timestamp};

use crate::compare::{compare_values, values_equal};
use crate::error::QueryError;
use crate::filter::{Node, Pred, parse_doc, parse_operators};
use crate::path::parse_index;
use crate::sort::SortSpec;
/// Kept here too for the modules that name it by its old path.
pub(crate) use crate::types::type_name;

#[derive(Debug, Clone)]
pub struct Update {
    kind: Kind,
    array_filters: HashMap<String, Node>,
}

#[derive(Debug, Clone)]
enum Kind {
    Replacement(Document),
    Ops(Vec<Op>),
    /// A pipeline-style update: `$set`/`$addFields`, `$project`/`$unset` and
    /// `$replaceRoot`/`$replaceWith` stages run over the one document.
    Pipeline(std::sync::Arc<UpdatePipeline>),
}

struct UpdatePipeline(crate::Pipeline);

impl std::fmt::Debug for UpdatePipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpdatePipeline")
    }
}

#[derive(Debug, Clone)]
struct Op {
    path: String,
    parts: Vec<String>,
    action: Action,
}

#[derive(Debug, Clone)]
enum Action {
    Set(Bson),
    SetOnInsert(Bson),
    Unset,
    Inc(Bson),
    Mul(Bson),
    Min(Bson),
    Max(Bson),
    CurrentDate { timestamp: bool },
    Rename { to: String, to_parts: Vec<String> },
    Push(PushSpec),
    AddToSet(Vec<Bson>),
    Pop { first: bool },
    Pull(PullCond),
    PullAll(Vec<Bson>),
    Bit(Vec<(BitOp, Bson)>),
}

#[derive(Debug, Clone, Copy)]
enum BitOp {
    And,
    Or,
    Xor,
}

#[derive(Debug, Clone)]
struct PushSpec {
    each: Vec<Bson>,
    slice: Option<i64>,
    sort: Option<PushSort>,
    position: Option<i64>,
}

#[derive(Debug, Clone)]
enum PushSort {
    Whole { descending: bool },
    Fields(SortSpec),
}

#[derive(Debug, Clone)]
enum PullCond {
    /// A plain value (or regex, via `Pred::Regex`) tested against each element.
    Value(Pred),
    /// `{$gte: 6}`-style operators applied to each element.
    Operators(Vec<Pred>),
    /// `{field: cond}` applied to elements that are documents.
    Query(Node),
}

impl Action {
    /// Whether the operator creates missing path components (as opposed to being a no-op).
    fn creates(&self) -> bool {
        !matches!(
            self,
            Action::Unset | Action::Pop { .. } | Action::Pull(_) | Action::PullAll(_)
        )
    }

    fn name(&self) -> &'static str {
        match self {
            Action::Set(_) => "$set",
            Action::SetOnInsert(_) => "$setOnInsert",
            Action::Unset => "$unset",
            Action::Inc(_) => "$inc",
            Action::Mul(_) => "$mul",
            Action::Min(_) => "$min",
            Action::Max(_) => "$max",
            Action::CurrentDate { .. } => "$currentDate",
            Action::Rename { .. } => "$rename",
            Action::Push(_) => "$push",
            Action::AddToSet(_) => "$addToSet",
            Action::Pop { .. } => "$pop",
            Action::Pull(_) => "$pull",
            Action::PullAll(_) => "$pullAll",
            Action::Bit(_) => "$bit",
        }
    }
}

fn bad(msg: impl Into<String>) -> QueryError {
    QueryError::bad_value(msg)
}

fn to_raw(v: &Bson) -> RawBson {
    RawBson::try_from(v.clone()).unwrap_or(RawBson::Null)
}

fn cmp_bson(a: &Bson, b: &Bson) -> Ordering {
    compare_values(to_raw(a).as_raw_bson_ref(), to_raw(b).as_raw_bson_ref())
}

fn is_number(v: &Bson) -> bool {
    matches!(
        v,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_)
    )
}

impl Update {
    pub fn parse(update: &Bson) -> Result<Update, QueryError> {
        Self::parse_with_array_filters(update, None)
    }

    pub fn parse_with_array_filters(
        update: &Bson,
        array_filters: Option<&[Document]>,
    ) -> Result<Update, QueryError> {
        let doc = match update {
            Bson::Document(d) => d,
            Bson::Array(stages) => return parse_pipeline(stages, array_filters),
            _ => {
                return Err(QueryError::failed_to_parse(
                    "Update argument must be either an object or an array",
                ));
            }
        };
        let filters = parse_array_filters(array_filters.unwrap_or(&[]))?;
        let is_ops = doc.keys().next().is_some_and(|k| k.starts_with('$'));
        if !is_ops {
            return parse_replacement(doc, filters);
        }
        let mut ops = parse_ops(doc)?;
        check_conflicts(&ops)?;
        check_identifiers(&ops, &filters, doc)?;
        // MongoDB applies modifications in field-name order, which decides where new fields land.
        ops.sort_by(|a, b| sort_parts(a).cmp(sort_parts(b)));
        Ok(Update {
            kind: Kind::Ops(ops),
            array_filters: filters,
        })
    }

    pub fn is_replacement(&self) -> bool {
        matches!(self.kind, Kind::Replacement(_))
    }

    pub fn apply(&self, doc: &Document, is_upsert_insert: bool) -> Result<Document, QueryError> {
        self.apply_with_positional(doc, is_upsert_insert, None)
    }

    /// Like `apply`, with the array index the query matched (see `Filter::positional_index`),
    /// which the positional `$` path component refers to.
    pub fn apply_with_positional(
        &self,
        doc: &Document,
        is_upsert_insert: bool,
        positional: Option<usize>,
    ) -> Result<Document, QueryError> {
        let old_id = doc.get("_id");
        match &self.kind {
            Kind::Pipeline(p) => apply_pipeline(p, doc, old_id),
            Kind::Replacement(repl) => apply_replacement(repl, old_id),
            Kind::Ops(ops) => self.apply_ops(ops, doc, is_upsert_insert, positional),
        }
    }

    /// Applies update operators in order; `_id` may not change and stays first.
    fn apply_ops(
        &self,
        ops: &[Op],
        doc: &Document,
        is_upsert_insert: bool,
        positional: Option<usize>,
    ) -> Result<Document, QueryError> {
        let old_id = doc.get("_id");
        let mut out = doc.clone();
        let ctx = Ctx {
            filters: &self.array_filters,
            positional,
            id: old_id.map(|v| v.to_string()).unwrap_or_default(),
            now: bson::DateTime::now(),
        };
        for op in ops {
            if matches!(op.action, Action::SetOnInsert(_)) && !is_upsert_insert {
                continue;
            }
            apply_op(&mut out, op, &ctx)?;
        }
        match (old_id, out.get("_id")) {
            (Some(old), new) if new != Some(old) => {
                return Err(QueryError::immutable_field(
                    "Performing an update on the path '_id' would modify the immutable field '_id'",
                ));
            }
            _ => {}
        }
        if let Some(Bson::Array(_)) = out.get("_id") {
            return Err(QueryError::new(
                53,
                "InvalidIdField",
                "The '_id' value cannot be of type array",
            ));
        }
        if out.keys().next().is_some_and(|k| k != "_id")
            && let Some(id) = out.remove("_id")
        {
            let mut reordered = Document::new();
            reordered.insert("_id", id);
            reordered.extend(out);
            out = reordered;
        }
        Ok(out)
    }
}

/// Runs a pipeline-style update; the pipeline cannot change `_id`.
fn apply_pipeline(
    p: &UpdatePipeline,
    doc: &Document,
    old_id: Option<&Bson>,
) -> Result<Document, QueryError> {
    let raw =
        bson::RawDocumentBuf::try_from(doc).map_err(|e| QueryError::bad_value(e.to_string()))?;
    let out = p.0.run(vec![raw])?;
    let mut new = match out.into_iter().next() {
        Some(d) => Document::try_from(d.as_ref() as &bson::RawDocument)
            .map_err(|e| QueryError::bad_value(e.to_string()))?,
        None => Document::new(),
    };
    // The pipeline cannot change _id; one it dropped comes back, first.
    match (old_id, new.remove("_id")) {
        (Some(old), Some(id)) if *old != id => Err(QueryError::immutable_field(format!(
            "After applying the update, the (immutable) field '_id' was found to have been altered to _id: {id}"
        ))),
        (old, id) => {
            let mut out = Document::new();
            if let Some(id) = id.or_else(|| old.cloned()) {
                out.insert("_id", id);
            }
            out.extend(new);
            Ok(out)
        }
    }
}

/// A replacement document, keeping the old `_id` first.
fn apply_replacement(repl: &Document, old_id: Option<&Bson>) -> Result<Document, QueryError> {
    let mut out = Document::new();
    match (old_id, repl.get("_id")) {
        (Some(old), Some(new)) if old != new => {
            return Err(QueryError::immutable_field(format!(
                "After applying the update, the (immutable) field '_id' was found to have been altered to _id: {new}"
            )));
        }
        (Some(id), _) | (None, Some(id)) => {
            out.insert("_id", id.clone());
        }
        (None, None) => {}
    }
    for (k, v) in repl {
        if k != "_id" {
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(out)
}

/// A pipeline-style update: a list of `$set`-like stages, without array filters.
fn parse_pipeline(
    stages: &[Bson],
    array_filters: Option<&[Document]>,
) -> Result<Update, QueryError> {
    if stages.is_empty() {
        return Err(bad("pipeline-style update must have at least one stage"));
    }
    if array_filters.is_some_and(|f| !f.is_empty()) {
        return Err(QueryError::failed_to_parse(
            "arrayFilters may not be specified for pipeline-style updates",
        ));
    }
    let mut raw = bson::RawArrayBuf::new();
    for stage in stages {
        raw.push(
            bson::RawBson::try_from(stage.clone())
                .map_err(|e| QueryError::bad_value(e.to_string()))?,
        );
    }
    let pipeline = crate::Pipeline::parse(&raw)?;
    if !pipeline.is_update_pipeline() {
        return Err(QueryError::location(
            72,
            "Only $addFields, $set, $project, $unset, $replaceRoot and $replaceWith are allowed in a pipeline-style update",
        ));
    }
    Ok(Update {
        kind: Kind::Pipeline(std::sync::Arc::new(UpdatePipeline(pipeline))),
        array_filters: HashMap::new(),
    })
}

/// A replacement document: no `$`-prefixed field, and no array filter to use.
fn parse_replacement(doc: &Document, filters: HashMap<String, Node>) -> Result<Update, QueryError> {
    if let Some(k) = doc.keys().find(|k| k.starts_with('$')) {
        return Err(QueryError::new(
            52,
            "DollarPrefixedFieldName",
            format!(
                "The dollar ($) prefixed field '{k}' in '{k}' is not allowed in the context of an update's replacement document. Consider using an aggregation pipeline with $replaceWith."
            ),
        ));
    }
    if !filters.is_empty() {
        let id = filters.keys().next().cloned().unwrap_or_default();
        return Err(QueryError::failed_to_parse(format!(
            "The array filter for identifier '{id}' was not used in the update {doc}"
        )));
    }
    Ok(Update {
        kind: Kind::Replacement(doc.clone()),
        array_filters: filters,
    })
}

/// The operators of an update document, one `Op` per field they name.
fn parse_ops(doc: &Document) -> Result<Vec<Op>, QueryError> {
    let mut ops = Vec::new();
    for (modifier, arg) in doc {
        let Bson::Document(fields) = arg else {
            if !modifier.starts_with('$') {
                return Err(unknown_modifier(modifier));
            }
            return Err(QueryError::failed_to_parse(format!(
                "Modifiers operate on fields but we found type {} instead. For example: {{$mod: {{<field>: ...}}}} not {{{modifier}: {arg}}}",
                type_name(arg)
            )));
        };
        for (path, value) in fields {
            validate_path(path)?;
            let action = parse_action(modifier, path, value)?;
            if let Action::Rename { to, .. } = &action {
                validate_path(to)?;
            }
            ops.push(Op {
                path: path.clone(),
                parts: path.split('.').map(str::to_owned).collect(),
                action,
            });
        }
    }
    Ok(ops)
}

fn sort_parts(op: &Op) -> &[String] {
    match &op.action {
        Action::Rename { to_parts, .. } => to_parts,
        _ => &op.parts,
    }
}

fn unknown_modifier(m: &str) -> QueryError {
    QueryError::failed_to_parse(format!(
        "Unknown modifier: {m}. Expected a valid update modifier or pipeline-style update specified as an array"
    ))
}

fn validate_path(path: &str) -> Result<(), QueryError> {
    if path.is_empty() {
        return Err(QueryError::new(
            56,
            "EmptyFieldName",
            "An empty update path is not valid.",
        ));
    }
    if path.split('.').any(str::is_empty) {
        return Err(QueryError::new(
            56,
            "EmptyFieldName",
            format!("The update path '{path}' contains an empty field name, which is not allowed."),
        ));
    }
    // One `$` names one array element the query matched; a second has nothing to refer to.
    if path.split('.').filter(|part| *part == "$").count() > 1 {
        return Err(bad(format!(
            "Too many positional (i.e. '$') elements found in path '{path}'"
        )));
    }
    Ok(())
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase()) && chars.all(|c| c.is_ascii_alphanumeric())
}

fn parse_array_filters(filters: &[Document]) -> Result<HashMap<String, Node>, QueryError> {
    let mut out = HashMap::new();
    for f in filters {
        let mut id: Option<String> = None;
        for key in f.keys() {
            let top = key.split('.').next().unwrap_or("");
            if top.starts_with('$') {
                // Logical operators at the top are allowed; their identifiers are nested.
                continue;
            }
            if !is_identifier(top) {
                return Err(bad(format!(
                    "The top-level field name must be an alphanumeric string beginning with a lowercase letter, found '{top}'"
                )));
            }
            match &id {
                None => id = Some(top.to_owned()),
                Some(prev) if prev != top => {
                    return Err(QueryError::failed_to_parse(format!(
                        "Error parsing array filter :: caused by :: Expected a single top-level field name, found '{prev}' and '{top}'"
                    )));
                }
                _ => {}
            }
        }
        let Some(id) = id else {
            return Err(QueryError::failed_to_parse(
                "Cannot use an expression without a top-level field name in arrayFilters",
            ));
        };
        let raw = RawDocumentBuf::try_from(f)
            .map_err(|e| bad(format!("invalid BSON in arrayFilters: {e}")))?;
        let node = parse_doc(&raw, 0)?;
        if out.insert(id.clone(), node).is_some() {
            return Err(QueryError::failed_to_parse(format!(
                "Found multiple array filters with the same top-level field name {id}"
            )));
        }
    }
    Ok(out)
}

fn check_identifiers(
    ops: &[Op],
    filters: &HashMap<String, Node>,
    update: &Document,
) -> Result<(), QueryError> {
    let mut used = std::collections::HashSet::new();
    for op in ops {
        for part in &op.parts {
            if let Some(id) = part.strip_prefix("$[").and_then(|s| s.strip_suffix(']'))
                && !id.is_empty()
            {
                if !filters.contains_key(id) {
                    return Err(bad(format!(
                        "No array filter found for identifier '{id}' in path '{}'",
                        op.path
                    )));
                }
                used.insert(id.to_owned());
            }
        }
    }
    if let Some(id) = filters.keys().find(|id| !used.contains(*id)) {
        return Err(QueryError::failed_to_parse(format!(
            "The array filter for identifier '{id}' was not used in the update {update}"
        )));
    }
    Ok(())
}

fn check_conflicts(ops: &[Op]) -> Result<(), QueryError> {
    let mut paths: Vec<(&str, &[String])> = Vec::new();
    for op in ops {
        paths.push((&op.path, &op.parts));
        if let Action::Rename { to, to_parts } = &op.action {
            paths.push((to, to_parts));
        }
    }
    for (i, (pa, a)) in paths.iter().enumerate() {
        for (pb, b) in paths.iter().skip(i + 1) {
            let n = a.len().min(b.len());
            if a[..n] == b[..n] {
                let (longer, shorter) = if a.len() >= b.len() {
                    (pa, pb)
                } else {
                    (pb, pa)
                };
                return Err(QueryError::conflicting_update(format!(
                    "Updating the path '{longer}' would create a conflict at '{shorter}'"
                )));
            }
        }
    }
    Ok(())
}

fn int_arg(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(d) if d.fract() == 0.0 && d.is_finite() => Some(*d as i64),
        Bson::Decimal128(d) => {
            let f = crate::compare::decimal_to_f64(*d);
            (f.fract() == 0.0 && f.is_finite()).then_some(f as i64)
        }
        _ => None,
    }
}

fn parse_action(modifier: &str, path: &str, value: &Bson) -> Result<Action, QueryError> {
    Ok(match modifier {
        "$set" => Action::Set(value.clone()),
        "$setOnInsert" => Action::SetOnInsert(value.clone()),
        "$unset" => Action::Unset,
        "$inc" | "$mul" => {
            if !is_number(value) {
                let verb = if modifier == "$inc" {
                    "increment"
                } else {
                    "multiply"
                };
                return Err(QueryError::type_mismatch(format!(
                    "Cannot {verb} with non-numeric argument: {{{path}: {value}}}"
                )));
            }
            if modifier == "$inc" {
                Action::Inc(value.clone())
            } else {
                Action::Mul(value.clone())
            }
        }
        "$min" => Action::Min(value.clone()),
        "$max" => Action::Max(value.clone()),
        "$currentDate" => parse_current_date(value)?,
        "$rename" => parse_rename(path, value)?,
        "$push" => Action::Push(parse_push(value)?),
        "$addToSet" => Action::AddToSet(parse_add_to_set(value)?),
        "$pop" => match int_arg(value) {
            Some(1) => Action::Pop { first: false },
            Some(-1) => Action::Pop { first: true },
            _ => {
                return Err(QueryError::failed_to_parse(format!(
                    "$pop expects 1 or -1, found: {value}"
                )));
            }
        },
        "$pull" => Action::Pull(parse_pull(value)?),
        "$pullAll" => match value {
            Bson::Array(items) => Action::PullAll(items.clone()),
            _ => {
                return Err(bad(format!(
                    "$pullAll requires an array argument but was given a {}",
                    type_name(value)
                )));
            }
        },
        "$bit" => Action::Bit(parse_bit(path, value)?),
        _ => return Err(unknown_modifier(modifier)),
    })
}

/// `$currentDate`'s argument: `true`, or `{$type: "date" | "timestamp"}`.
fn parse_current_date(value: &Bson) -> Result<Action, QueryError> {
    Ok(match value {
        Bson::Boolean(_) => Action::CurrentDate { timestamp: false },
        Bson::Document(d) if d.len() == 1 => match d.get("$type") {
            Some(Bson::String(t)) if t == "date" => Action::CurrentDate { timestamp: false },
            Some(Bson::String(t)) if t == "timestamp" => Action::CurrentDate { timestamp: true },
            Some(Bson::String(_)) => {
                return Err(bad(
                    "The '$type' string field is required to be 'date' or 'timestamp': {$currentDate: {field : {$type: 'date'}}}",
                ));
            }
            _ => return Err(bad(format!("Unrecognized $currentDate option: {value}"))),
        },
        _ => {
            return Err(bad(format!(
                "{} is not valid type for $currentDate. Please use a boolean ('true') or a $type expression ({{$type: 'timestamp/date'}}).",
                type_name(value)
            )));
        }
    })
}

/// `$rename`'s target: a different, non-positional path.
fn parse_rename(path: &str, value: &Bson) -> Result<Action, QueryError> {
    let Bson::String(to) = value else {
        return Err(bad(format!(
            "The 'to' field for $rename must be a string: {path}: {value}"
        )));
    };
    if to == path {
        return Err(bad(format!(
            "The source and target field for $rename must differ: {path}: \"{to}\""
        )));
    }
    for p in [path, to.as_str()] {
        if p.split('.').any(|c| c.starts_with('$')) {
            return Err(bad(format!(
                "The source and target field for $rename must not contain positional operators: {p}"
            )));
        }
    }
    Ok(Action::Rename {
        to: to.clone(),
        to_parts: to.split('.').map(str::to_owned).collect(),
    })
}

fn parse_bit(path: &str, value: &Bson) -> Result<Vec<(BitOp, Bson)>, QueryError> {
    let Bson::Document(d) = value else {
        return Err(bad(format!(
            "The $bit modifier is not compatible with a {}. You must pass in an embedded document: {{$bit: {{field: {{and/or/xor: #}}}}",
            type_name(value)
        )));
    };
    let mut out = Vec::new();
    for (k, v) in d {
        let op = match k.as_str() {
            "and" => BitOp::And,
            "or" => BitOp::Or,
            "xor" => BitOp::Xor,
            _ => {
                return Err(bad(format!(
                    "The $bit modifier only supports 'and', 'or', and 'xor', not '{k}' which is an unknown operator: {{{k}: {v}}}"
                )));
            }
        };
        if !matches!(v, Bson::Int32(_) | Bson::Int64(_)) {
            return Err(bad(format!(
                "The $bit modifier field must be an Integer(32/64 bit); a '{}' is not supported here: {{{k}: {v}}}",
                type_name(v)
            )));
        }
        out.push((op, v.clone()));
    }
    if out.is_empty() {
        return Err(bad(format!(
            "You must pass in at least one bitwise operation. The format is: {{$bit: {{field: {{and/or/xor: #}}}}}} (field: {path})"
        )));
    }
    Ok(out)
}

fn has_each(v: &Bson) -> Option<&Document> {
    match v {
        Bson::Document(d) if d.contains_key("$each") => Some(d),
        _ => None,
    }
}

fn parse_push(value: &Bson) -> Result<PushSpec, QueryError> {
    let Some(d) = has_each(value) else {
        return Ok(PushSpec {
            each: vec![value.clone()],
            slice: None,
            sort: None,
            position: None,
        });
    };
    let mut spec = PushSpec {
        each: Vec::new(),
        slice: None,
        sort: None,
        position: None,
    };
    for (k, v) in d {
        match k.as_str() {
            "$each" => match v {
                Bson::Array(items) => spec.each = items.clone(),
                _ => {
                    return Err(bad(format!(
                        "The argument to $each in $push must be an array but it was of type: {}",
                        type_name(v)
                    )));
                }
            },
            "$slice" => {
                spec.slice = Some(int_arg(v).ok_or_else(|| {
                    bad(format!(
                        "The value for $slice must be an integer value but was given type: {}",
                        type_name(v)
                    ))
                })?)
            }
            "$position" => {
                spec.position = Some(int_arg(v).ok_or_else(|| {
                    bad(format!(
                        "The value for $position must be an integer value, not of type: {}",
                        type_name(v)
                    ))
                })?)
            }
            "$sort" => spec.sort = Some(parse_push_sort(v)?),
            _ => return Err(bad(format!("Unrecognized clause in $push: {k}"))),
        }
    }
    Ok(spec)
}

fn parse_push_sort(v: &Bson) -> Result<PushSort, QueryError> {
    let invalid = || {
        bad(
            "The $sort is invalid: use 1/-1 to sort the whole element, or {field:1/-1} to sort embedded fields",
        )
    };
    match v {
        Bson::Document(d) => {
            if d.is_empty() {
                return Err(bad(
                    "The $sort pattern is empty when it should be a set of fields.",
                ));
            }
            let raw = RawDocumentBuf::try_from(d).map_err(|_| invalid())?;
            SortSpec::parse(&raw)
                .map(PushSort::Fields)
                .map_err(|_| invalid())
        }
        _ => match int_arg(v) {
            Some(1) => Ok(PushSort::Whole { descending: false }),
            Some(-1) => Ok(PushSort::Whole { descending: true }),
            _ => Err(invalid()),
        },
    }
}

fn parse_add_to_set(value: &Bson) -> Result<Vec<Bson>, QueryError> {
    let Some(d) = has_each(value) else {
        return Ok(vec![value.clone()]);
    };
    if d.len() > 1 {
        return Err(bad(format!(
            "Found unexpected fields after $each in $addToSet: {d}"
        )));
    }
    match d.get("$each") {
        Some(Bson::Array(items)) => Ok(items.clone()),
        Some(other) => Err(bad(format!(
            "The argument to $each in $addToSet must be an array but it was of type {}",
            type_name(other)
        ))),
        None => Ok(Vec::new()),
    }
}

fn parse_pull(value: &Bson) -> Result<PullCond, QueryError> {
    let raw = to_raw(value);
    match raw.as_raw_bson_ref() {
        RawBsonRef::Document(d) => {
            let first_is_op = matches!(d.iter().next(), Some(Ok((k, _)))
                if k.as_str().starts_with('$') && !matches!(k.as_str(), "$and" | "$or" | "$nor"));
            if first_is_op {
                Ok(PullCond::Operators(parse_operators(d, 0)?))
            } else {
                Ok(PullCond::Query(parse_doc(d, 0)?))
            }
        }
        RawBsonRef::RegularExpression(r) => Ok(PullCond::Value(Pred::Regex(Box::new(
            crate::regex::Re::compile(r.pattern.as_str(), r.options.as_str())?,
        )))),
        _ => Ok(PullCond::Value(Pred::Eq(raw.clone()))),
    }
}

// ---------------------------------------------------------------------------------------------
// Application

struct Ctx<'a> {
    filters: &'a HashMap<String, Node>,
    positional: Option<usize>,
    /// The document's `_id`, rendered for error messages.
    id: String,
    now: bson::DateTime,
}

enum Slot<'a> {
    Doc(&'a mut Document, &'a str),
    Arr(&'a mut Vec<Bson>, usize),
}

impl Slot<'_> {
    fn get(&self) -> Option<&Bson> {
        match self {
            Slot::Doc(d, k) => d.get(*k),
            Slot::Arr(a, i) => a.get(*i),
        }
    }

    fn get_mut(&mut self) -> Option<&mut Bson> {
        match self {
            Slot::Doc(d, k) => d.get_mut(*k),
            Slot::Arr(a, i) => a.get_mut(*i),
        }
    }

    fn set(&mut self, v: Bson) {
        match self {
            Slot::Doc(d, k) => {
                d.insert(*k, v);
            }
            Slot::Arr(a, i) => {
                if *i >= a.len() {
                    a.resize(*i + 1, Bson::Null);
                }
                a[*i] = v;
            }
        }
    }

    fn remove(&mut self) {
        match self {
            Slot::Doc(d, k) => {
                d.remove(*k);
            }
            // Removing from an array would shift later elements; MongoDB nulls the slot instead.
            Slot::Arr(a, i) => {
                if let Some(v) = a.get_mut(*i) {
                    *v = Bson::Null;
                }
            }
        }
    }

    fn name(&self) -> String {
        match self {
            Slot::Doc(_, k) => (*k).to_owned(),
            Slot::Arr(_, i) => i.to_string(),
        }
    }
}

fn apply_op(root: &mut Document, op: &Op, ctx: &Ctx<'_>) -> Result<(), QueryError> {
    if let Action::Rename { to, to_parts } = &op.action {
        return apply_rename(root, op, to, to_parts, ctx);
    }
    apply_in_doc(root, &op.parts, 0, op, ctx)
}

fn apply_in_doc(
    doc: &mut Document,
    parts: &[String],
    i: usize,
    op: &Op,
    ctx: &Ctx<'_>,
) -> Result<(), QueryError> {
    let Some(key) = parts.get(i) else {
        return Ok(());
    };
    if key.starts_with("$[") || key == "$" {
        if key == "$" && ctx.positional.is_none() {
            return Err(positional_not_found());
        }
        return Err(bad(format!(
            "Cannot apply array updates to non-array element {}: {}",
            parts[..i].join("."),
            Bson::Document(doc.clone())
        )));
    }
    if i + 1 == parts.len() {
        return apply_leaf(Slot::Doc(doc, key), op, ctx);
    }
    if !doc.contains_key(key) {
        if !op.action.creates() {
            return Ok(());
        }
        doc.insert(key.clone(), Document::new());
    }
    match doc.get_mut(key) {
        Some(child) => apply_in_value(child, parts, i + 1, op, ctx, key),
        None => Ok(()),
    }
}

fn positional_not_found() -> QueryError {
    bad("The positional operator did not find the match needed from the query.")
}

fn apply_in_value(
    v: &mut Bson,
    parts: &[String],
    i: usize,
    op: &Op,
    ctx: &Ctx<'_>,
    parent_key: &str,
) -> Result<(), QueryError> {
    match v {
        Bson::Document(d) => apply_in_doc(d, parts, i, op, ctx),
        Bson::Array(arr) => apply_in_array(arr, parts, i, op, ctx, parent_key),
        other => {
            if op.action.creates() {
                Err(QueryError::path_not_viable(format!(
                    "Cannot create field '{}' in element {{{parent_key}: {other}}}",
                    parts[i]
                )))
            } else {
                Ok(())
            }
        }
    }
}

fn apply_in_array(
    arr: &mut Vec<Bson>,
    parts: &[String],
    i: usize,
    op: &Op,
    ctx: &Ctx<'_>,
    parent_key: &str,
) -> Result<(), QueryError> {
    let key = &parts[i];
    let indexes: Vec<usize> = if key == "$[]" {
        (0..arr.len()).collect()
    } else if let Some(id) = key.strip_prefix("$[").and_then(|s| s.strip_suffix(']')) {
        let Some(filter) = ctx.filters.get(id) else {
            return Err(bad(format!(
                "No array filter found for identifier '{id}' in path '{}'",
                op.path
            )));
        };
        let mut matching = Vec::new();
        for (idx, e) in arr.iter().enumerate() {
            // The filter names the element by its identifier, so wrap it as `{id: element}`.
            let mut wrapper = Document::new();
            wrapper.insert(id, e.clone());
            if let Ok(raw) = RawDocumentBuf::try_from(&wrapper)
                && filter.matches(&raw)
            {
                matching.push(idx);
            }
        }
        matching
    } else if key == "$" {
        vec![ctx.positional.ok_or_else(positional_not_found)?]
    } else if let Some(idx) = parse_index(key) {
        vec![idx]
    } else if op.action.creates() {
        return Err(QueryError::path_not_viable(format!(
            "Cannot create field '{key}' in element {{{parent_key}: {}}}",
            Bson::Array(arr.clone())
        )));
    } else {
        return Ok(());
    };
    let last = i + 1 == parts.len();
    for idx in indexes {
        if last {
            apply_leaf(Slot::Arr(arr, idx), op, ctx)?;
            continue;
        }
        if idx >= arr.len() {
            if !op.action.creates() {
                continue;
            }
            arr.resize(idx, Bson::Null);
            arr.push(Bson::Document(Document::new()));
        }
        apply_in_value(&mut arr[idx], parts, i + 1, op, ctx, key)?;
    }
    Ok(())
}

fn apply_leaf(mut slot: Slot<'_>, op: &Op, ctx: &Ctx<'_>) -> Result<(), QueryError> {
    match &op.action {
        Action::Set(v) | Action::SetOnInsert(v) => slot.set(v.clone()),
        Action::Unset => slot.remove(),
        Action::Inc(arg) | Action::Mul(arg) => apply_inc_mul(&mut slot, op, arg, ctx)?,
        Action::Min(arg) | Action::Max(arg) => apply_min_max(&mut slot, op, arg),
        Action::CurrentDate { timestamp } => slot.set(current_date(*timestamp, ctx)),
        Action::Push(spec) => apply_push(&mut slot, spec, ctx)?,
        Action::AddToSet(items) => apply_add_to_set(&mut slot, items)?,
        Action::Pop { first } => apply_pop(&mut slot, op, *first)?,
        Action::Pull(cond) => match slot.get_mut() {
            None => {}
            Some(Bson::Array(a)) => a.retain(|e| !pull_matches(cond, e)),
            Some(_) => return Err(bad("Cannot apply $pull to a non-array value")),
        },
        Action::PullAll(items) => apply_pull_all(&mut slot, items)?,
        Action::Bit(ops) => apply_bit(&mut slot, ops, ctx)?,
        Action::Rename { .. } => {}
    }
    Ok(())
}

/// `$inc`/`$mul`: a missing field becomes the increment (or a zero of its type).
fn apply_inc_mul(
    slot: &mut Slot<'_>,
    op: &Op,
    arg: &Bson,
    ctx: &Ctx<'_>,
) -> Result<(), QueryError> {
    let field = slot.name();
    let is_inc = matches!(op.action, Action::Inc(_));
    let result = match slot.get() {
        None => {
            if is_inc {
                arg.clone()
            } else {
                zero_like(arg)
            }
        }
        Some(cur) if is_number(cur) => arith(cur, arg, is_inc).ok_or_else(|| {
            bad(format!(
                "Failed to apply {} operations to current value ({cur}) for document {{_id: {}}}",
                op.action.name(),
                ctx.id
            ))
        })?,
        Some(cur) => {
            return Err(QueryError::type_mismatch(format!(
                "Cannot apply {} to a value of non-numeric type. {{_id: {}}} has the field '{field}' of non-numeric type {}",
                op.action.name(),
                ctx.id,
                type_name(cur)
            )));
        }
    };
    slot.set(result);
    Ok(())
}

/// `$min`/`$max`: replaces the field when the argument is below (above) it, or it is missing.
fn apply_min_max(slot: &mut Slot<'_>, op: &Op, arg: &Bson) {
    let want = if matches!(op.action, Action::Min(_)) {
        Ordering::Less
    } else {
        Ordering::Greater
    };
    let replace = match slot.get() {
        None => true,
        Some(cur) => cmp_bson(arg, cur) == want,
    };
    if replace {
        slot.set(arg.clone());
    }
}

/// `$currentDate`'s value: the update's one "now", as a date or a timestamp.
fn current_date(timestamp: bool, ctx: &Ctx<'_>) -> Bson {
    if timestamp {
        let millis = ctx.now.timestamp_millis();
        Bson::Timestamp(Timestamp {
            time: u32::try_from(millis / 1000).unwrap_or(u32::MAX),
            increment: 1,
        })
    } else {
        Bson::DateTime(ctx.now)
    }
}

fn apply_push(slot: &mut Slot<'_>, spec: &PushSpec, ctx: &Ctx<'_>) -> Result<(), QueryError> {
    let field = slot.name();
    let mut arr = match slot.get() {
        None => Vec::new(),
        Some(Bson::Array(a)) => a.clone(),
        Some(other) => {
            return Err(bad(format!(
                "The field '{field}' must be an array but is of type {} in document {{_id: {}}}",
                type_name(other),
                ctx.id
            )));
        }
    };
    push(&mut arr, spec);
    slot.set(Bson::Array(arr));
    Ok(())
}

/// `$addToSet`: appends the items not already present (by BSON equality).
fn apply_add_to_set(slot: &mut Slot<'_>, items: &[Bson]) -> Result<(), QueryError> {
    let field = slot.name();
    let mut arr = match slot.get() {
        None => Vec::new(),
        Some(Bson::Array(a)) => a.clone(),
        Some(other) => {
            return Err(bad(format!(
                "Cannot apply $addToSet to non-array field. Field named '{field}' has non-array type {}",
                type_name(other)
            )));
        }
    };
    let mut raws: Vec<RawBson> = arr.iter().map(to_raw).collect();
    for item in items {
        let raw = to_raw(item);
        if !raws
            .iter()
            .any(|r| values_equal(r.as_raw_bson_ref(), raw.as_raw_bson_ref()))
        {
            arr.push(item.clone());
            raws.push(raw);
        }
    }
    slot.set(Bson::Array(arr));
    Ok(())
}

fn apply_pop(slot: &mut Slot<'_>, op: &Op, first: bool) -> Result<(), QueryError> {
    match slot.get_mut() {
        None => {}
        Some(Bson::Array(a)) if first => {
            // An empty array has nothing to pop; drain keeps that a no-op.
            a.drain(..a.len().min(1));
        }
        Some(Bson::Array(a)) => {
            a.pop();
        }
        Some(other) => {
            return Err(QueryError::type_mismatch(format!(
                "Path '{}' contains an element of non-array type '{}'",
                op.path,
                type_name(other)
            )));
        }
    }
    Ok(())
}

fn apply_pull_all(slot: &mut Slot<'_>, items: &[Bson]) -> Result<(), QueryError> {
    match slot.get_mut() {
        None => {}
        Some(Bson::Array(a)) => {
            let raws: Vec<RawBson> = items.iter().map(to_raw).collect();
            a.retain(|e| {
                let e = to_raw(e);
                !raws
                    .iter()
                    .any(|r| values_equal(r.as_raw_bson_ref(), e.as_raw_bson_ref()))
            });
        }
        Some(_) => return Err(bad("Cannot apply $pull to a non-array value")),
    }
    Ok(())
}

/// `$bit`: and/or/xor in order, on an int or long (a missing field starts at 0).
fn apply_bit(slot: &mut Slot<'_>, ops: &[(BitOp, Bson)], ctx: &Ctx<'_>) -> Result<(), QueryError> {
    let field = slot.name();
    let mut cur = match slot.get() {
        None => match ops.first() {
            Some((_, Bson::Int64(_))) => Bson::Int64(0),
            _ => Bson::Int32(0),
        },
        Some(v @ (Bson::Int32(_) | Bson::Int64(_))) => v.clone(),
        Some(other) => {
            return Err(bad(format!(
                "Cannot apply $bit to a value of non-integral type.{{_id: {}}} has the field {field} of non-integer type {}",
                ctx.id,
                type_name(other)
            )));
        }
    };
    for (bop, arg) in ops {
        cur = bit(&cur, *bop, arg);
    }
    slot.set(cur);
    Ok(())
}

fn bit(cur: &Bson, op: BitOp, arg: &Bson) -> Bson {
    let f = |a: i64, b: i64| match op {
        BitOp::And => a & b,
        BitOp::Or => a | b,
        BitOp::Xor => a ^ b,
    };
    match (cur, arg) {
        (Bson::Int32(a), Bson::Int32(b)) => Bson::Int32(f(i64::from(*a), i64::from(*b)) as i32),
        (Bson::Int32(a), Bson::Int64(b)) => Bson::Int64(f(i64::from(*a), *b)),
        (Bson::Int64(a), Bson::Int32(b)) => Bson::Int64(f(*a, i64::from(*b))),
        (Bson::Int64(a), Bson::Int64(b)) => Bson::Int64(f(*a, *b)),
        _ => cur.clone(),
    }
}

fn zero_like(arg: &Bson) -> Bson {
    match arg {
        Bson::Int32(_) => Bson::Int32(0),
        Bson::Int64(_) => Bson::Int64(0),
        Bson::Decimal128(_) => "0"
            .parse()
            .map(Bson::Decimal128)
            .unwrap_or(Bson::Double(0.0)),
        _ => Bson::Double(0.0),
    }
}

/// `$inc`/`$mul` with MongoDB's type promotion: int32 widens to int64 on overflow, int64
/// overflow is an error (None), doubles win over integers and Decimal128 over everything.
/// Decimal arithmetic is exact (see `decimal.rs`) unless the operands are too wide for it, then
/// approximated through doubles.
fn arith(cur: &Bson, arg: &Bson, add: bool) -> Option<Bson> {
    let as_f64 = |v: &Bson| match v {
        Bson::Int32(i) => f64::from(*i),
        Bson::Int64(i) => *i as f64,
        Bson::Double(d) => *d,
        Bson::Decimal128(d) => crate::compare::decimal_to_f64(*d),
        _ => 0.0,
    };
    let as_i64 = |v: &Bson| match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        _ => None,
    };
    match (cur, arg) {
        (Bson::Decimal128(_), _) | (_, Bson::Decimal128(_)) => {
            if let Some(exact) = crate::decimal::arith(cur, arg, add) {
                return Some(exact);
            }
            let x = if add {
                as_f64(cur) + as_f64(arg)
            } else {
                as_f64(cur) * as_f64(arg)
            };
            Some(
                format!("{x:e}")
                    .parse()
                    .map(Bson::Decimal128)
                    .unwrap_or(Bson::Double(x)),
            )
        }
        (Bson::Double(_), _) | (_, Bson::Double(_)) => Some(Bson::Double(if add {
            as_f64(cur) + as_f64(arg)
        } else {
            as_f64(cur) * as_f64(arg)
        })),
        (Bson::Int32(a), Bson::Int32(b)) => {
            let r = if add {
                a.checked_add(*b)
            } else {
                a.checked_mul(*b)
            };
            match r {
                Some(r) => Some(Bson::Int32(r)),
                None => {
                    let (a, b) = (i64::from(*a), i64::from(*b));
                    Some(Bson::Int64(if add { a + b } else { a * b }))
                }
            }
        }
        _ => {
            let (a, b) = (as_i64(cur)?, as_i64(arg)?);
            let r = if add {
                a.checked_add(b)
            } else {
                a.checked_mul(b)
            };
            r.map(Bson::Int64)
        }
    }
}

fn push(arr: &mut Vec<Bson>, spec: &PushSpec) {
    let len = arr.len() as i64;
    let at = match spec.position {
        None => len,
        Some(p) if p >= 0 => p.min(len),
        Some(p) => (len + p).max(0),
    } as usize;
    let tail = arr.split_off(at);
    arr.extend(spec.each.iter().cloned());
    arr.extend(tail);
    if let Some(sort) = &spec.sort {
        sort_array(arr, sort);
    }
    if let Some(n) = spec.slice {
        let len = arr.len() as i64;
        if n >= 0 {
            arr.truncate(n.min(len) as usize);
        } else {
            let drop = (len + n).max(0) as usize;
            arr.drain(..drop);
        }
    }
}

fn sort_array(arr: &mut Vec<Bson>, sort: &PushSort) {
    match sort {
        PushSort::Whole { descending } => {
            let mut keyed: Vec<(RawBson, Bson)> = arr.drain(..).map(|v| (to_raw(&v), v)).collect();
            keyed.sort_by(|a, b| {
                let o = compare_values(a.0.as_raw_bson_ref(), b.0.as_raw_bson_ref());
                if *descending { o.reverse() } else { o }
            });
            arr.extend(keyed.into_iter().map(|(_, v)| v));
        }
        PushSort::Fields(spec) => {
            let empty = RawDocumentBuf::new();
            let mut keyed: Vec<(Option<RawDocumentBuf>, Bson)> = arr
                .drain(..)
                .map(|v| {
                    let raw = match &v {
                        Bson::Document(d) => RawDocumentBuf::try_from(d).ok(),
                        _ => None,
                    };
                    (raw, v)
                })
                .collect();
            keyed.sort_by(|a, b| {
                let da: &RawDocument = a.0.as_deref().unwrap_or(&empty);
                let db: &RawDocument = b.0.as_deref().unwrap_or(&empty);
                spec.compare(da, db)
            });
            arr.extend(keyed.into_iter().map(|(_, v)| v));
        }
    }
}

fn pull_matches(cond: &PullCond, e: &Bson) -> bool {
    let raw = to_raw(e);
    let r = raw.as_raw_bson_ref();
    match cond {
        PullCond::Value(p) => p.matches_value(Some(r)),
        PullCond::Operators(preds) => preds.iter().all(|p| p.matches_value(Some(r))),
        PullCond::Query(node) => match r {
            RawBsonRef::Document(d) => node.matches(d),
            _ => false,
        },
    }
}

fn apply_rename(
    root: &mut Document,
    op: &Op,
    to: &str,
    to_parts: &[String],
    ctx: &Ctx<'_>,
) -> Result<(), QueryError> {
    // Locate the source; renames never traverse arrays.
    let mut cur: &Bson = &Bson::Null;
    let mut container: &Document = root;
    for (i, part) in op.parts.iter().enumerate() {
        match container.get(part) {
            None => return Ok(()),
            Some(v) if i + 1 == op.parts.len() => cur = v,
            Some(Bson::Document(d)) => container = d,
            Some(Bson::Array(_)) => {
                return Err(bad(format!(
                    "The source field cannot be an array element, '{}' in doc with {} has an array field called '{part}'",
                    op.path, ctx.id
                )));
            }
            Some(_) => return Ok(()),
        }
    }
    let value = cur.clone();
    // The destination may not sit inside an array either.
    let mut container: &Document = root;
    for part in &to_parts[..to_parts.len().saturating_sub(1)] {
        match container.get(part) {
            Some(Bson::Document(d)) => container = d,
            Some(Bson::Array(_)) => {
                return Err(bad(format!(
                    "The destination field cannot be an array element, '{to}' in doc with {} has an array field called '{part}'",
                    ctx.id
                )));
            }
            _ => break,
        }
    }
    let unset = Op {
        path: op.path.clone(),
        parts: op.parts.clone(),
        action: Action::Unset,
    };
    apply_in_doc(root, &unset.parts, 0, &unset, ctx)?;
    let set = Op {
        path: to.to_owned(),
        parts: to_parts.to_vec(),
        action: Action::Set(value),
    };
    apply_in_doc(root, &set.parts, 0, &set, ctx)
}
