//! `$densify` (documents added so a numeric or date field has every value of a step sequence,
//! per partition) and the parsing of `$fill` (written as a `$setWindowFields` for its methods and
//! an `$addFields` of `$ifNull`s for its values, as mongod desugars it).
//!
//! Invariants:
//! - `$densify` sorts its input by partition, then field, through the stage's sort (bounded by
//!   `Limits::stage_bytes`, 292, or spilled under `allowDiskUse`, as mongod's `$sort` before
//!   its `$_internalDensify`), then streams: it holds one input document and the next value.
//!   Generated values are always `lower + k * step`; a document already at a generated value
//!   stands for it.
//! - At most [`MAX_GENERATED`] documents are generated per stage (mongod's
//!   `internalQueryMaxAllowedDensifyDocs`, 5897900), so a tiny step cannot exhaust memory.

use bson::raw::RawBsonRef;
use bson::{Bson, DateTime, Document, RawDocumentBuf};

use crate::QueryError;
use crate::doc_ops::{nested, raw_err, set_path, to_raw};
use crate::expr::{Expr, add_months, cmp_bson, sum_values};
use crate::path::split_path;
use crate::window::Window;
use crate::window_fn::{Func, Output};
use crate::window_spec::{Bound, Bounds, parse_unit, type_of};
use crate::window_spill::Entries;

/// mongod's default `internalQueryMaxAllowedDensifyDocs`.
const MAX_GENERATED: usize = 500_000;

pub(crate) struct Densify {
    field: Vec<String>,
    partitions: Vec<Vec<String>>,
    step: Bson,
    /// Milliseconds, or months as a negative count; `None` for numbers.
    unit: Option<i64>,
    bounds: Range,
}

enum Range {
    Full,
    Partition,
    Explicit(Box<(Bson, Bson)>),
}

fn unknown(field: &str) -> QueryError {
    QueryError::location(40415, format!("BSON field '{field}' is an unknown field."))
}

fn missing(field: &str) -> QueryError {
    QueryError::location(
        40414,
        format!("BSON field '{field}' is missing but a required field"),
    )
}

fn wrong_type(field: &str, v: RawBsonRef<'_>, expected: &str) -> QueryError {
    QueryError::type_mismatch(format!(
        "BSON field '{field}' is the wrong type '{}', expected type '{expected}'",
        type_of(v)
    ))
}

pub(crate) fn parse(spec: RawBsonRef<'_>) -> Result<Densify, QueryError> {
    let RawBsonRef::Document(spec) = spec else {
        return Err(QueryError::location(
            6246300,
            "$densify expects an object as its specification",
        ));
    };
    let (mut field, mut partitions, mut range) = (None, Vec::new(), None);
    for item in spec {
        let (k, v) = item.map_err(raw_err)?;
        match (k.as_str(), v) {
            ("field", RawBsonRef::String(f)) => field = Some(f),
            ("field", v) => return Err(wrong_type("$densify.field", v, "string")),
            ("partitionByFields", RawBsonRef::Array(a)) => {
                for f in a {
                    match f.map_err(raw_err)? {
                        RawBsonRef::String(f) => partitions.push(split_path(f)),
                        v => return Err(wrong_type("$densify.partitionByFields", v, "string")),
                    }
                }
            }
            ("partitionByFields", v) => {
                return Err(wrong_type("$densify.partitionByFields", v, "array"));
            }
            ("range", RawBsonRef::Document(r)) => range = Some(r),
            ("range", v) => return Err(wrong_type("$densify.range", v, "object")),
            (other, _) => return Err(unknown(&format!("$densify.{other}"))),
        }
    }
    let field = field.ok_or_else(|| missing("$densify.field"))?;
    if field.starts_with('$') {
        return Err(QueryError::location(
            16410,
            format!("FieldPath field names may not start with '$': '{field}'"),
        ));
    }
    let range = range.ok_or_else(|| missing("$densify.range"))?;
    let (step, unit, bounds) = parse_range(range)?;
    if matches!(bounds, Range::Partition) && partitions.is_empty() {
        return Err(QueryError::location(
            5733408,
            "one may not specify the bounds as 'partition' without specifying a non-empty array of partitionByFields. You may have meant to specify 'full' bounds.",
        ));
    }
    Ok(Densify {
        field: split_path(field),
        partitions,
        step,
        unit,
        bounds,
    })
}

fn parse_range(r: &bson::RawDocument) -> Result<(Bson, Option<i64>, Range), QueryError> {
    let (mut step, mut unit, mut bounds) = (None, None, None);
    for item in r {
        let (k, v) = item.map_err(raw_err)?;
        match k.as_str() {
            "step" => step = Some(v),
            "unit" => unit = Some(parse_unit(v)?),
            "bounds" => bounds = Some(parse_bounds(v)?),
            other => return Err(unknown(&format!("$densify.range.{other}"))),
        }
    }
    let step = step.ok_or_else(|| missing("$densify.range.step"))?;
    let bounds = bounds.ok_or_else(|| missing("$densify.range.bounds"))?;
    let step = Bson::try_from(step).map_err(raw_err)?;
    let positive = crate::expr::quantile::number(&step).is_some_and(|s| s > 0.0);
    if !positive {
        return Err(QueryError::location(
            5733401,
            "the step parameter in a range statement must be a strictly positive numeric value",
        ));
    }
    if unit.is_some() && crate::expr::quantile::number(&step).is_some_and(|s| s.fract() != 0.0) {
        return Err(QueryError::location(
            6586400,
            "The step parameter in a range satement must be a whole number when densifying a date range",
        ));
    }
    if let Range::Explicit(b) = &bounds {
        let date = matches!(b.0, Bson::DateTime(_));
        if date && unit.is_none() {
            return Err(QueryError::location(
                5733410,
                "A bounding array in a range statement must contain numeric values when no unit is specified",
            ));
        }
        if !date && unit.is_some() {
            return Err(QueryError::location(
                5733409,
                "A bounding array in a range statement must contain dates when a unit is specified",
            ));
        }
    }
    Ok((step, unit, bounds))
}

fn parse_bounds(v: RawBsonRef<'_>) -> Result<Range, QueryError> {
    match v {
        RawBsonRef::String("full") => Ok(Range::Full),
        RawBsonRef::String("partition") => Ok(Range::Partition),
        RawBsonRef::String(_) => Err(QueryError::location(
            5946802,
            "Bounds string must either be 'full' or 'partition'",
        )),
        RawBsonRef::Array(a) => {
            let items: Vec<Bson> = a
                .into_iter()
                .map(|b| {
                    b.map_err(raw_err)
                        .and_then(|b| Bson::try_from(b).map_err(raw_err))
                })
                .collect::<Result<_, _>>()?;
            let [lo, hi] = <[Bson; 2]>::try_from(items).map_err(|_| {
                QueryError::location(
                    5733403,
                    "a bounding array in a range statement must have exactly two elements",
                )
            })?;
            let numeric = |b: &Bson| crate::expr::quantile::number(b).is_some();
            let dates = matches!((&lo, &hi), (Bson::DateTime(_), Bson::DateTime(_)));
            if !(dates || numeric(&lo) && numeric(&hi)) {
                return Err(QueryError::location(
                    5733402,
                    "a bounding array must contain either both dates or both numeric types",
                ));
            }
            if cmp_bson(&lo, &hi).is_gt() {
                return Err(QueryError::location(
                    5733406,
                    "A bounding array in a range statement must be sorted",
                ));
            }
            Ok(Range::Explicit(Box::new((lo, hi))))
        }
        other => Err(wrong_type(
            "$densify.range.bounds",
            other,
            "string or array",
        )),
    }
}

impl Densify {
    /// The field's value, checked against the range's type (missing and null are `None`).
    fn value(&self, d: &bson::RawDocument) -> Result<Option<Bson>, QueryError> {
        let v = match nested(d, &self.field) {
            None | Some(RawBsonRef::Null) | Some(RawBsonRef::Undefined) => return Ok(None),
            Some(v) => Bson::try_from(v).map_err(raw_err)?,
        };
        match (&v, self.unit) {
            (Bson::DateTime(_), Some(_)) => Ok(Some(v)),
            (_, None) if crate::expr::quantile::number(&v).is_some() => Ok(Some(v)),
            (_, Some(_)) => Err(QueryError::location(
                6053600,
                "Densify field type must be a date when a unit is specified",
            )),
            _ => Err(QueryError::location(
                5733201,
                "Densify field type must be numeric",
            )),
        }
    }

    fn partition(&self, d: &bson::RawDocument) -> Result<Vec<Option<Bson>>, QueryError> {
        self.partitions
            .iter()
            .map(|p| {
                nested(d, p)
                    .map(|v| Bson::try_from(v).map_err(raw_err))
                    .transpose()
            })
            .collect()
    }

    /// `v` plus one step.
    fn next(&self, v: &Bson) -> Bson {
        match (v, self.unit) {
            (Bson::DateTime(t), Some(unit)) => {
                let steps = crate::expr::quantile::number(&self.step).unwrap_or(1.0) as i64;
                let ms = t.timestamp_millis();
                let next = if unit < 0 {
                    add_months(ms, steps * -unit).unwrap_or(i64::MAX)
                } else {
                    ms.saturating_add(steps.saturating_mul(unit))
                };
                Bson::DateTime(DateTime::from_millis(next))
            }
            _ => sum_values(v, &self.step),
        }
    }
}

/// The lowest and highest value of the field over the whole input, which `full` bounds need
/// before the first partition is filled.
pub(crate) type Span = Option<(Bson, Bson)>;

/// A partition's values, a missing one as MinKey (below every value), as one array.
fn part_bson(p: &[Option<Bson>]) -> Bson {
    Bson::Array(
        p.iter()
            .map(|v| v.clone().unwrap_or(Bson::MinKey))
            .collect(),
    )
}

impl Densify {
    /// What the input is sorted by before densifying: the partition, then the field's value
    /// (missing or null first), as one array. Under `full` bounds it also widens `span`.
    pub(crate) fn sort_key(
        &self,
        d: &bson::RawDocument,
        span: &mut Span,
    ) -> Result<Bson, QueryError> {
        let part = part_bson(&self.partition(d)?);
        let v = self.value(d)?;
        if let (Range::Full, Some(v)) = (&self.bounds, &v) {
            *span = Some(match span.take() {
                None => (v.clone(), v.clone()),
                Some((lo, hi)) => (
                    if cmp_bson(v, &lo).is_lt() {
                        v.clone()
                    } else {
                        lo
                    },
                    if cmp_bson(v, &hi).is_gt() {
                        v.clone()
                    } else {
                        hi
                    },
                ),
            });
        }
        Ok(Bson::Array(vec![part, v.unwrap_or(Bson::Null)]))
    }

    /// Where generation starts in a new partition (`partition` bounds: at its first value).
    fn start(&self, span: &Span) -> Option<Bson> {
        match &self.bounds {
            Range::Full => span.as_ref().map(|(lo, _)| lo.clone()),
            Range::Explicit(b) => Some(b.0.clone()),
            Range::Partition => None,
        }
    }

    /// Whether `v` is below the range's upper bound (`partition` bounds generate only between
    /// a partition's values, so below its highest).
    fn in_range(&self, v: &Bson, span: &Span) -> bool {
        let (hi, inclusive) = match &self.bounds {
            Range::Full => match span {
                Some((_, hi)) => (hi, true),
                None => return false,
            },
            Range::Explicit(b) => (&b.1, false),
            Range::Partition => return true,
        };
        let o = cmp_bson(v, hi);
        o.is_lt() || (inclusive && o.is_eq())
    }
}

/// A document read from the sorted input and not yet answered: the gap before its value (or
/// the previous partition's tail) is generated first.
struct Pending {
    part: Vec<Option<Bson>>,
    value: Option<Bson>,
    doc: RawDocumentBuf,
}

/// `$densify` over its input sorted by partition, then value (in memory or merged from
/// spilled runs): each document is answered after the values missing before it, and a
/// partition's tail up to the upper bound after its last document. Memory holds one document
/// and the partition's next value, whatever the input's size.
pub(crate) struct DensifyStream {
    entries: Entries,
    span: Span,
    /// The partition being filled (its first document's values) and the next value to
    /// generate in it, if any.
    part: Option<Vec<Option<Bson>>>,
    cur: Option<Bson>,
    ahead: Option<Pending>,
    generated: usize,
}

impl DensifyStream {
    pub(crate) fn new(entries: Entries, span: Span) -> DensifyStream {
        DensifyStream {
            entries,
            span,
            part: None,
            cur: None,
            ahead: None,
            generated: 0,
        }
    }

    /// The next document out: generated or from the input.
    pub(crate) fn next(&mut self, spec: &Densify) -> Result<Option<RawDocumentBuf>, QueryError> {
        if self.ahead.is_none() {
            self.ahead = self.read(spec)?;
        }
        let new_part = match (&self.ahead, &self.part) {
            (Some(p), Some(q)) => cmp_bson(&part_bson(&p.part), &part_bson(q)).is_ne(),
            _ => true,
        };
        if new_part {
            if let Some(d) = self.tail(spec)? {
                return Ok(Some(d));
            }
            let Some(p) = &self.ahead else {
                return Ok(None);
            };
            self.part = Some(p.part.clone());
            self.cur = spec.start(&self.span);
        }
        let Some(x) = self.ahead.as_ref().and_then(|p| p.value.clone()) else {
            return Ok(self.ahead.take().map(|p| p.doc));
        };
        let cur = self.cur.get_or_insert_with(|| x.clone());
        if cmp_bson(cur, &x).is_lt() && spec.in_range(cur, &self.span) {
            return self.generate(spec).map(Some);
        }
        if cmp_bson(cur, &x).is_eq() {
            *cur = spec.next(cur);
        }
        Ok(self.ahead.take().map(|p| p.doc))
    }

    fn read(&mut self, spec: &Densify) -> Result<Option<Pending>, QueryError> {
        let Some((_, doc)) = self.entries.next().transpose()? else {
            return Ok(None);
        };
        Ok(Some(Pending {
            part: spec.partition(&doc)?,
            value: spec.value(&doc)?,
            doc,
        }))
    }

    /// The next value of the finished partition's tail, up to the upper bound (none for
    /// `partition` bounds, which end at the partition's last value).
    fn tail(&mut self, spec: &Densify) -> Result<Option<RawDocumentBuf>, QueryError> {
        match &self.cur {
            Some(c) if !matches!(spec.bounds, Range::Partition) && spec.in_range(c, &self.span) => {
                self.generate(spec).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// A document at the current value, in the current partition; the value moves one step.
    fn generate(&mut self, spec: &Densify) -> Result<RawDocumentBuf, QueryError> {
        let cur = self.cur.take().expect("generating at a value");
        let part = self.part.as_deref().unwrap_or_default();
        let d = spec.generate(part, &cur, &mut self.generated)?;
        self.cur = Some(spec.next(&cur));
        Ok(d)
    }
}

impl Densify {
    /// A new document: the partition's fields and the field at `v`.
    fn generate(
        &self,
        p: &[Option<Bson>],
        v: &Bson,
        generated: &mut usize,
    ) -> Result<RawDocumentBuf, QueryError> {
        *generated += 1;
        if *generated > MAX_GENERATED {
            return Err(QueryError::location(
                5897900,
                format!(
                    "Generated {generated} documents in $densify, which is over the limit of {MAX_GENERATED}. Increase the 'internalQueryMaxAllowedDensifyDocs' parameter to allow more generated documents"
                ),
            ));
        }
        let mut d = Document::new();
        for (path, value) in self.partitions.iter().zip(p) {
            if let Some(value) = value {
                set_path(&mut d, path, Some(value.clone()));
            }
        }
        set_path(&mut d, &self.field, Some(v.clone()));
        to_raw(&d)
    }
}

/// `$fill`: the window stage for its `method` outputs and the `$addFields` for its `value`
/// outputs (either may be absent).
pub(crate) type FillStages = (Option<Window>, Option<Vec<(Vec<String>, Expr)>>);

pub(crate) fn parse_fill(spec: RawBsonRef<'_>) -> Result<FillStages, QueryError> {
    let RawBsonRef::Document(spec) = spec else {
        return Err(QueryError::failed_to_parse(
            "the $fill stage specification must be an object",
        ));
    };
    let (mut partition, mut fields, mut sort, mut output) = (None, None, None, None);
    for item in spec {
        let (k, v) = item.map_err(raw_err)?;
        match (k.as_str(), v) {
            ("partitionBy", v) => partition = Some(Expr::parse(v)?),
            ("partitionByFields", RawBsonRef::Array(a)) => fields = Some(fill_partition_fields(a)?),
            ("partitionByFields", v) => {
                return Err(wrong_type("$fill.partitionByFields", v, "array"));
            }
            ("sortBy", RawBsonRef::Document(d)) => sort = Some(crate::SortSpec::parse(d)?),
            ("sortBy", v) => return Err(wrong_type("$fill.sortBy", v, "object")),
            ("output", RawBsonRef::Document(d)) => output = Some(d),
            ("output", v) => return Err(wrong_type("$fill.output", v, "object")),
            (other, _) => return Err(unknown(&format!("$fill.{other}"))),
        }
    }
    if partition.is_some() && fields.is_some() {
        return Err(QueryError::location(
            6050204,
            "Maximum one of 'partitionBy' and 'partitionByFields can be specified in '$fill'",
        ));
    }
    let output = output.ok_or_else(|| missing("$fill.output"))?;
    let (methods, values) = fill_outputs(output, sort.as_ref())?;
    let window = (!methods.is_empty()).then(|| Window {
        partition: partition.or(fields),
        sort,
        outputs: methods,
    });
    Ok((window, (!values.is_empty()).then_some(values)))
}

/// `partitionByFields` as one partition expression: the fields' values in a document.
fn fill_partition_fields(a: &bson::RawArray) -> Result<Expr, QueryError> {
    let mut parts = Vec::new();
    for (i, f) in a.into_iter().enumerate() {
        match f.map_err(raw_err)? {
            RawBsonRef::String(f) if !f.starts_with('$') => {
                parts.push((i.to_string(), Expr::Path(split_path(f))));
            }
            v => return Err(wrong_type("$fill.partitionByFields", v, "string")),
        }
    }
    Ok(Expr::Doc(parts))
}

type FillOutputs = (Vec<Output>, Vec<(Vec<String>, Expr)>);

fn fill_outputs(
    output: &bson::RawDocument,
    sort: Option<&crate::SortSpec>,
) -> Result<FillOutputs, QueryError> {
    let (mut methods, mut values) = (Vec::new(), Vec::new());
    for item in output {
        let (k, v) = item.map_err(raw_err)?;
        let path = split_path(k.as_str());
        let RawBsonRef::Document(d) = v else {
            return Err(wrong_type(
                &format!("$fill.output.{}", k.as_str()),
                v,
                "object",
            ));
        };
        let mut fields = d.iter();
        let (name, arg) = match (fields.next(), fields.next()) {
            (Some(Ok(pair)), None) => pair,
            _ => {
                return Err(QueryError::location(
                    6050203,
                    "Exactly one of 'value' and 'method' must be specified in '$fill'",
                ));
            }
        };
        match (name.as_str(), arg) {
            ("value", arg) => values.push((path.clone(), if_null(&path, arg)?)),
            ("method", RawBsonRef::String(m @ ("linear" | "locf"))) => {
                methods.push(fill_method(m, path, sort)?);
            }
            ("method", _) => {
                return Err(QueryError::location(
                    6050202,
                    "Method must be either linear or locf",
                ));
            }
            (other, _) => return Err(unknown(&format!("$fill.output.{}.{other}", k.as_str()))),
        }
    }
    Ok((methods, values))
}

fn fill_method(
    method: &str,
    path: Vec<String>,
    sort: Option<&crate::SortSpec>,
) -> Result<Output, QueryError> {
    let input = Expr::Path(path.clone());
    let func = if method == "locf" {
        Func::Locf(input)
    } else {
        if sort.is_none_or(|s| s.fields().count() != 1) {
            return Err(QueryError::location(
                6050201,
                "$fill must specify sortBy with exactly one field to use method 'linear'",
            ));
        }
        Func::LinearFill(input)
    };
    if method == "locf" && sort.is_none() {
        return Err(QueryError::location(
            6050201,
            "$fill requires a sortBy to use method 'locf'",
        ));
    }
    Ok(Output {
        path,
        func,
        bounds: Bounds::Documents(Bound::Unbounded, Bound::Unbounded),
    })
}

/// `{$ifNull: ["$<path>", value]}`.
fn if_null(path: &[String], value: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let value = Bson::try_from(value).map_err(raw_err)?;
    let mut d = Document::new();
    d.insert(
        "$ifNull",
        vec![Bson::String(format!("${}", path.join("."))), value],
    );
    let raw = to_raw(&d)?;
    Expr::parse(RawBsonRef::Document(&raw))
}
