//! The window functions of `$setWindowFields`: parsing each (with the `sortBy` it needs) and
//! computing one output column over one sorted partition.
//!
//! Invariants:
//! - A function sees only its partition; a window is a contiguous index range of it, found from
//!   the bounds (documents: offsets; range: the single `sortBy` value plus offsets).
//! - A window's result is recomputed only when its range changes, so the default window (the
//!   whole partition) costs one pass; a moving window costs its width per document.
//! - Inputs are evaluated once per document, so a window function holds one value per
//!   document of the partition besides the documents themselves.

use bson::Bson;
use bson::raw::{RawBsonRef, RawDocument};

use crate::doc_ops::raw_err;
use crate::expr::quantile::{self as percentile, Quantile};
use crate::expr::{Expr, add_months, cmp_bson, std_dev, sum_values};
use crate::group::NKind;
use crate::top_n::{self, Ranked, TopBottom};
use crate::window_spec::{Bound, Bounds, type_of};
use crate::{QueryError, SortSpec};

/// One output field of the stage: where it goes, what computes it, over which window.
pub(crate) struct Output {
    pub(crate) path: Vec<String>,
    pub(crate) func: Func,
    pub(crate) bounds: Bounds,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Simple {
    Sum,
    Avg,
    Min,
    Max,
    Push,
    AddToSet,
    First,
    Last,
    StdDevPop,
    StdDevSamp,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum RankKind {
    Rank,
    Dense,
    Number,
}

pub(crate) enum Func {
    Simple(Simple, Expr),
    Count,
    Covariance(Expr, Expr, bool),
    Rank(RankKind),
    Shift {
        output: Expr,
        by: i64,
        default: Bson,
    },
    ExpMovingAvg {
        input: Expr,
        alpha: f64,
    },
    Derivative {
        input: Expr,
        unit: Option<i64>,
    },
    Integral {
        input: Expr,
        unit: Option<i64>,
    },
    Locf(Expr),
    LinearFill(Expr),
    TopBottom(Box<TopBottom>, usize),
    NValues(NKind, Expr, usize),
    Quantile(Box<Quantile>),
}

fn failed(msg: impl Into<String>) -> QueryError {
    QueryError::failed_to_parse(msg)
}

fn simple(name: &str) -> Option<Simple> {
    Some(match name {
        "$sum" => Simple::Sum,
        "$avg" => Simple::Avg,
        "$min" => Simple::Min,
        "$max" => Simple::Max,
        "$push" => Simple::Push,
        "$addToSet" => Simple::AddToSet,
        "$first" => Simple::First,
        "$last" => Simple::Last,
        "$stdDevPop" => Simple::StdDevPop,
        "$stdDevSamp" => Simple::StdDevSamp,
        _ => return None,
    })
}

/// One window function `{name: arg}`.
pub(crate) fn parse(
    name: &str,
    arg: RawBsonRef<'_>,
    sort: Option<&SortSpec>,
) -> Result<Func, QueryError> {
    if let Some(s) = simple(name) {
        return Ok(Func::Simple(s, Expr::parse(arg)?));
    }
    let one_sort_field = || {
        if sort.is_none_or(|s| s.fields().count() != 1) {
            return Err(QueryError::location(
                5371602,
                format!(
                    "{name} must be specified with a top level sortBy expression with exactly one element"
                ),
            ));
        }
        Ok(())
    };
    let needs_sort = || {
        if sort.is_none() {
            return Err(failed(format!("{name} requires a sortBy")));
        }
        Ok(())
    };
    Ok(match name {
        "$count" => match arg {
            RawBsonRef::Document(d) if d.is_empty() => Func::Count,
            _ => return Err(failed("$count only accepts an empty object as input")),
        },
        "$covariancePop" | "$covarianceSamp" => parse_covariance(name, arg)?,
        "$rank" | "$denseRank" | "$documentNumber" => {
            let rank = parse_rank(name, arg)?;
            one_sort_field()?;
            rank
        }
        "$shift" => {
            needs_sort()?;
            parse_shift(arg)?
        }
        "$expMovingAvg" => {
            needs_sort()?;
            parse_ema(arg)?
        }
        "$derivative" | "$integral" => {
            one_sort_field()?;
            parse_rate(name, arg)?
        }
        "$locf" => Func::Locf(Expr::parse(arg)?),
        "$linearFill" => {
            one_sort_field()?;
            Func::LinearFill(Expr::parse(arg)?)
        }
        n if top_n::is_top_bottom(n) => {
            let spec = top_n::parse(n, arg)?;
            let count = top_n::validate_n(spec.n.eval(&bson::RawDocumentBuf::new())?)?;
            Func::TopBottom(Box::new(spec), count)
        }
        "$firstN" | "$lastN" | "$minN" | "$maxN" => parse_n_values(name, arg)?,
        "$median" | "$percentile" => {
            Func::Quantile(Box::new(percentile::parse(name, arg, 7429703)?))
        }
        other => return Err(failed(format!("Unrecognized window function, {other}"))),
    })
}

/// `$rank`, `$denseRank` and `$documentNumber` take an empty object.
fn parse_rank(name: &str, arg: RawBsonRef<'_>) -> Result<Func, QueryError> {
    if !matches!(arg, RawBsonRef::Document(d) if d.is_empty()) {
        return Err(failed(format!(
            "{name} accepts an empty object as its argument"
        )));
    }
    Ok(Func::Rank(match name {
        "$rank" => RankKind::Rank,
        "$denseRank" => RankKind::Dense,
        _ => RankKind::Number,
    }))
}

fn parse_covariance(name: &str, arg: RawBsonRef<'_>) -> Result<Func, QueryError> {
    let items: Vec<RawBsonRef<'_>> = match arg {
        RawBsonRef::Array(a) => a.into_iter().collect::<Result<_, _>>().map_err(raw_err)?,
        _ => Vec::new(),
    };
    if items.len() != 2 {
        return Err(failed(format!(
            "{name} requires an array of two expressions"
        )));
    }
    Ok(Func::Covariance(
        Expr::parse(items[0])?,
        Expr::parse(items[1])?,
        name == "$covarianceSamp",
    ))
}

/// The named arguments of an object-form window function; unknown names fail.
fn named_args<'a>(
    name: &str,
    arg: RawBsonRef<'a>,
    allowed: &[&str],
) -> Result<Vec<(String, RawBsonRef<'a>)>, QueryError> {
    let RawBsonRef::Document(d) = arg else {
        return Err(failed(format!(
            "Argument to {name} must be an object, found {}",
            type_of(arg)
        )));
    };
    let mut out = Vec::new();
    for item in d {
        let (k, v) = item.map_err(raw_err)?;
        if !allowed.contains(&k.as_str()) {
            return Err(failed(format!(
                "{name} got unexpected argument: {}",
                k.as_str()
            )));
        }
        out.push((k.as_str().to_string(), v));
    }
    Ok(out)
}

fn pick<'a>(args: &[(String, RawBsonRef<'a>)], f: &str) -> Option<RawBsonRef<'a>> {
    args.iter().find(|(k, _)| k == f).map(|(_, v)| *v)
}

fn parse_shift(arg: RawBsonRef<'_>) -> Result<Func, QueryError> {
    let args = named_args("$shift", arg, &["output", "by", "default"])?;
    let output =
        pick(&args, "output").ok_or_else(|| failed("$shift requires an 'output' expression."))?;
    let by = match pick(&args, "by")
        .and_then(|v| crate::compare::as_num(v))
        .map(|n| n.to_f64())
    {
        Some(b) if b.fract() == 0.0 && b.abs() < 2e9 => b as i64,
        _ => return Err(failed("'$shift:by' field must be an integer, but found  ")),
    };
    let default = match pick(&args, "default").map(Expr::parse).transpose()? {
        None => Bson::Null,
        Some(Expr::Const(c)) => c,
        Some(_) => {
            return Err(failed(
                "'$shift:default' expression must yield a constant value.",
            ));
        }
    };
    Ok(Func::Shift {
        output: Expr::parse(output)?,
        by,
        default,
    })
}

fn parse_ema(arg: RawBsonRef<'_>) -> Result<Func, QueryError> {
    let args = named_args("$expMovingAvg", arg, &["input", "N", "alpha"])?;
    let input = pick(&args, "input")
        .ok_or_else(|| failed("$expMovingAvg requires an 'input' expression"))?;
    let num = |f| {
        pick(&args, f)
            .and_then(crate::compare::as_num)
            .map(|n| n.to_f64())
    };
    let alpha = match (pick(&args, "N"), pick(&args, "alpha")) {
        (Some(_), None) => match num("N") {
            Some(n) if n >= 1.0 && n.fract() == 0.0 => 2.0 / (n + 1.0),
            _ => return Err(failed("'N' field must be an integer greater than zero")),
        },
        (None, Some(_)) => match num("alpha") {
            Some(a) if a > 0.0 && a < 1.0 => a,
            _ => return Err(failed("'alpha' must be between 0 and 1 (exclusive)")),
        },
        _ => {
            return Err(failed(
                "$expMovingAvg requires exactly one of 'N' or 'alpha'",
            ));
        }
    };
    Ok(Func::ExpMovingAvg {
        input: Expr::parse(input)?,
        alpha,
    })
}

fn parse_rate(name: &str, arg: RawBsonRef<'_>) -> Result<Func, QueryError> {
    let args = named_args(name, arg, &["input", "unit"])?;
    let input = pick(&args, "input")
        .ok_or_else(|| failed(format!("{name} requires an 'input' expression")))?;
    let unit = pick(&args, "unit")
        .map(crate::window_spec::parse_unit)
        .transpose()?;
    if unit.is_some_and(|u| u < 0) {
        return Err(failed(format!(
            "{name}: 'unit' must be a fixed-length unit (week or shorter)"
        )));
    }
    let input = Expr::parse(input)?;
    Ok(if name == "$derivative" {
        Func::Derivative { input, unit }
    } else {
        Func::Integral { input, unit }
    })
}

fn parse_n_values(name: &str, arg: RawBsonRef<'_>) -> Result<Func, QueryError> {
    let args = named_args(name, arg, &["input", "n"])?;
    let input = pick(&args, "input")
        .ok_or_else(|| QueryError::location(5787907, "Missing value for 'input'"))?;
    let n =
        pick(&args, "n").ok_or_else(|| QueryError::location(5787906, "Missing value for 'n'"))?;
    let n = match Expr::parse(n)? {
        Expr::Const(c) => top_n::validate_n(Some(c))?,
        _ => {
            return Err(failed(format!(
                "{name}: 'n' must be a constant in a window"
            )));
        }
    };
    let kind = match name {
        "$firstN" => NKind::First,
        "$lastN" => NKind::Last,
        "$minN" => NKind::Min,
        _ => NKind::Max,
    };
    Ok(Func::NValues(kind, Expr::parse(input)?, n))
}

impl Func {
    /// The window when none is given: the whole partition, except where mongod demands one.
    pub(crate) fn default_bounds(&self, name: &str) -> Result<Bounds, QueryError> {
        if let Func::Derivative { .. } = self {
            return Err(QueryError::location(
                5624901,
                format!("{name} requires explicit window bounds"),
            ));
        }
        Ok(Bounds::Documents(Bound::Unbounded, Bound::Unbounded))
    }
}

/// Functions computed over the partition in order take no `window`.
pub(crate) fn check_window_allowed(name: &str, f: &Func) -> Result<(), QueryError> {
    match f {
        Func::Rank(_)
        | Func::Shift { .. }
        | Func::ExpMovingAvg { .. }
        | Func::Locf(_)
        | Func::LinearFill(_) => Err(QueryError::location(
            5371601,
            format!("{name} does not accept a 'window' field"),
        )),
        _ => Ok(()),
    }
}

type Part<'a> = [(Vec<Bson>, &'a RawDocument)];

fn eval_all(e: &Expr, part: &Part<'_>) -> Result<Vec<Option<Bson>>, QueryError> {
    part.iter().map(|(_, d)| e.eval(d)).collect()
}

/// The output column of one window function over one partition.
pub(crate) fn compute(
    o: &Output,
    sort: Option<&SortSpec>,
    part: &Part<'_>,
) -> Result<Vec<Bson>, QueryError> {
    let desc = sort.and_then(|s| s.fields().next()).is_some_and(|(_, d)| d);
    match &o.func {
        Func::Rank(kind) => Ok(ranks(*kind, sort, part)),
        Func::Shift {
            output,
            by,
            default,
        } => {
            let vals = eval_all(output, part)?;
            Ok((0..part.len())
                .map(|i| {
                    let j = i as i64 + by;
                    match usize::try_from(j).ok().and_then(|j| vals.get(j)) {
                        Some(v) => v.clone().unwrap_or(Bson::Null),
                        None => default.clone(),
                    }
                })
                .collect())
        }
        Func::ExpMovingAvg { input, alpha } => Ok(ema(&eval_all(input, part)?, *alpha)),
        Func::Locf(e) => Ok(locf(&eval_all(e, part)?)),
        Func::LinearFill(e) => linear_fill(&eval_all(e, part)?, part),
        _ => windowed(o, desc, part),
    }
}

fn ranks(kind: RankKind, sort: Option<&SortSpec>, part: &Part<'_>) -> Vec<Bson> {
    let (mut rank, mut dense) = (0usize, 0usize);
    let mut out = Vec::with_capacity(part.len());
    for (i, (key, _)) in part.iter().enumerate() {
        let tie = i > 0 && sort.is_some_and(|s| s.compare_keys(&part[i - 1].0, key).is_eq());
        if !tie {
            rank = i + 1;
            dense += 1;
        }
        let n = match kind {
            RankKind::Rank => rank,
            RankKind::Dense => dense,
            RankKind::Number => i + 1,
        };
        out.push(count_bson(n));
    }
    out
}

fn count_bson(n: usize) -> Bson {
    i32::try_from(n).map_or(Bson::Int64(n as i64), Bson::Int32)
}

fn ema(vals: &[Option<Bson>], alpha: f64) -> Vec<Bson> {
    let mut current: Option<f64> = None;
    vals.iter()
        .map(|v| {
            if let Some(x) = v.as_ref().and_then(percentile::number) {
                current = Some(match current {
                    None => x,
                    Some(c) => alpha * x + (1.0 - alpha) * c,
                });
            }
            current.map_or(Bson::Null, Bson::Double)
        })
        .collect()
}

fn nullish(v: &Option<Bson>) -> bool {
    matches!(v, None | Some(Bson::Null) | Some(Bson::Undefined))
}

fn locf(vals: &[Option<Bson>]) -> Vec<Bson> {
    let mut last = Bson::Null;
    vals.iter()
        .map(|v| {
            if !nullish(v) {
                last = v.clone().unwrap_or(Bson::Null);
            }
            last.clone()
        })
        .collect()
}

/// A sort value as a number (dates as milliseconds), for ranges and rates.
fn axis(v: &Bson) -> Option<f64> {
    match v {
        Bson::DateTime(d) => Some(d.timestamp_millis() as f64),
        other => percentile::number(other),
    }
}

fn linear_fill(vals: &[Option<Bson>], part: &Part<'_>) -> Result<Vec<Bson>, QueryError> {
    let xs: Vec<Option<f64>> = part.iter().map(|(k, _)| k.first().and_then(axis)).collect();
    let known: Vec<usize> = (0..vals.len()).filter(|&i| !nullish(&vals[i])).collect();
    let mut out = Vec::with_capacity(vals.len());
    for i in 0..vals.len() {
        if !nullish(&vals[i]) {
            out.push(vals[i].clone().unwrap_or(Bson::Null));
            continue;
        }
        let after = known.partition_point(|&k| k < i);
        let filled = match (after.checked_sub(1).map(|b| known[b]), known.get(after)) {
            (Some(a), Some(&b)) => interpolate(&vals[a], &vals[b], xs[a], xs[b], xs[i])?,
            _ => Bson::Null,
        };
        out.push(filled);
    }
    Ok(out)
}

fn interpolate(
    ya: &Option<Bson>,
    yb: &Option<Bson>,
    xa: Option<f64>,
    xb: Option<f64>,
    x: Option<f64>,
) -> Result<Bson, QueryError> {
    let (Some(ya), Some(yb)) = (
        ya.as_ref().and_then(percentile::number),
        yb.as_ref().and_then(percentile::number),
    ) else {
        return Err(QueryError::location(
            7578300,
            "$linearFill only supports numeric types",
        ));
    };
    let (Some(xa), Some(xb), Some(x)) = (xa, xb, x) else {
        return Err(QueryError::location(
            7578300,
            "$linearFill requires a numeric or date sortBy field",
        ));
    };
    if xb == xa {
        return Ok(Bson::Double(ya));
    }
    Ok(Bson::Double(ya + (yb - ya) * (x - xa) / (xb - xa)))
}

/// The per-document inputs of a windowed function.
struct Inputs {
    a: Vec<Option<Bson>>,
    b: Vec<Option<Bson>>,
    /// `$top`-family sort keys, from the function's own `sortBy`.
    keys: Vec<Vec<Bson>>,
    /// The stage's `sortBy` value as a number, for rates.
    xs: Vec<Option<f64>>,
}

fn inputs(f: &Func, part: &Part<'_>) -> Result<Inputs, QueryError> {
    let mut i = Inputs {
        a: Vec::new(),
        b: Vec::new(),
        keys: Vec::new(),
        xs: Vec::new(),
    };
    match f {
        Func::Simple(_, e) | Func::NValues(_, e, _) => i.a = eval_all(e, part)?,
        Func::Quantile(q) => i.a = eval_all(&q.input, part)?,
        Func::Covariance(x, y, _) => {
            i.a = eval_all(x, part)?;
            i.b = eval_all(y, part)?;
        }
        Func::TopBottom(spec, _) => {
            i.a = eval_all(&spec.output, part)?;
            i.keys = part.iter().map(|(_, d)| spec.sort.key_values(d)).collect();
        }
        Func::Derivative { input, .. } | Func::Integral { input, .. } => {
            i.a = eval_all(input, part)?;
            i.xs = part.iter().map(|(k, _)| k.first().and_then(axis)).collect();
            check_rate_axis(f, part)?;
        }
        _ => {}
    }
    Ok(i)
}

/// Dates need a `unit`; numbers must not have one.
fn check_rate_axis(f: &Func, part: &Part<'_>) -> Result<(), QueryError> {
    let unit = match f {
        Func::Derivative { unit, .. } | Func::Integral { unit, .. } => *unit,
        _ => None,
    };
    for (k, _) in part {
        match (k.first(), unit) {
            (Some(Bson::DateTime(_)), None) => {
                return Err(QueryError::location(
                    5624900,
                    "For windows that involve date or time ranges, a unit must be provided.",
                ));
            }
            (Some(Bson::DateTime(_)), Some(_)) | (_, None) => {}
            (Some(_), Some(_)) | (None, Some(_)) => {
                return Err(QueryError::location(
                    5624900,
                    "For windows that involve date or time ranges, a unit must be provided, and the sortBy field must be a date",
                ));
            }
        }
    }
    Ok(())
}

fn windowed(o: &Output, desc: bool, part: &Part<'_>) -> Result<Vec<Bson>, QueryError> {
    let ins = inputs(&o.func, part)?;
    let axis_vals = match o.bounds {
        Bounds::Range(..) => Some(range_axis(part, desc)?),
        Bounds::Documents(..) => None,
    };
    let mut out = Vec::with_capacity(part.len());
    let mut cached: Option<((usize, usize), Bson)> = None;
    for i in 0..part.len() {
        let (lo, hi) = match (&o.bounds, &axis_vals) {
            (Bounds::Documents(l, u), _) => doc_window(*l, *u, i, part.len()),
            (Bounds::Range(l, u, unit), Some(xs)) => range_window(*l, *u, *unit, i, xs),
            _ => (0, part.len()),
        };
        if let Some((range, v)) = &cached
            && *range == (lo, hi)
        {
            out.push(v.clone());
            continue;
        }
        let v = apply(&o.func, &ins, lo, hi)?;
        cached = Some(((lo, hi), v.clone()));
        out.push(v);
    }
    Ok(out)
}

fn doc_window(l: Bound, u: Bound, i: usize, len: usize) -> (usize, usize) {
    let at = |b: Bound, unbounded: i64| match b {
        Bound::Unbounded => unbounded,
        Bound::Current => i as i64,
        Bound::At(k) => i as i64 + k as i64,
    };
    let lo = at(l, 0).clamp(0, len as i64) as usize;
    let hi = (at(u, len as i64 - 1) + 1).clamp(0, len as i64) as usize;
    (lo, hi.max(lo))
}

/// The sort values as numbers, negated for a descending sort so windows always look forward
/// in the partition's order.
fn range_axis(part: &Part<'_>, desc: bool) -> Result<Vec<f64>, QueryError> {
    part.iter()
        .map(|(k, _)| {
            let v = k.first().cloned().unwrap_or(Bson::Null);
            match axis(&v) {
                Some(x) => Ok(if desc { -x } else { x }),
                None => Err(QueryError::location(
                    5429413,
                    format!(
                        "Invalid range: Expected the sortBy field to be a number or a date, but it was {}",
                        crate::update::type_name(&v)
                    ),
                )),
            }
        })
        .collect()
}

fn range_window(l: Bound, u: Bound, unit: Option<i64>, i: usize, xs: &[f64]) -> (usize, usize) {
    let x = xs[i];
    let shift = |k: f64| match unit {
        Some(months) if months < 0 => {
            add_months(x as i64, (k as i64) * -months).map_or(f64::INFINITY, |m| m as f64)
        }
        Some(ms) => x + k * ms as f64,
        None => x + k,
    };
    let lo = match l {
        Bound::Unbounded => 0,
        Bound::Current => xs.partition_point(|&v| v < x),
        Bound::At(k) => xs.partition_point(|&v| v < shift(k)),
    };
    let hi = match u {
        Bound::Unbounded => xs.len(),
        Bound::Current => xs.partition_point(|&v| v <= x),
        Bound::At(k) => xs.partition_point(|&v| v <= shift(k)),
    };
    (lo, hi.max(lo))
}

/// One window's value of `f` over documents `lo..hi`.
fn apply(f: &Func, ins: &Inputs, lo: usize, hi: usize) -> Result<Bson, QueryError> {
    let vals = &ins.a[lo.min(ins.a.len())..hi.min(ins.a.len())];
    Ok(match f {
        Func::Simple(kind, _) => simple_value(*kind, vals),
        Func::Count => count_bson(hi - lo),
        Func::Covariance(_, _, sample) => covariance(vals, &ins.b[lo..hi], *sample),
        Func::NValues(kind, _, n) => n_values(*kind, vals, *n),
        Func::Quantile(q) => {
            let mut xs: Vec<f64> = vals
                .iter()
                .flatten()
                .filter_map(percentile::number)
                .collect();
            percentile::result(&q.ps, q.median, &mut xs)
        }
        Func::TopBottom(spec, n) => {
            let mut ranked = Ranked {
                n: *n,
                ..Ranked::default()
            };
            for j in lo..hi {
                let out = ins.a[j].clone().unwrap_or(Bson::Null);
                ranked.insert(spec, ins.keys[j].clone(), out)?;
            }
            ranked.finish(spec)
        }
        Func::Derivative { unit, .. } => derivative(vals, &ins.xs[lo..hi], *unit),
        Func::Integral { unit, .. } => integral(vals, &ins.xs[lo..hi], *unit),
        _ => Bson::Null,
    })
}

fn simple_value(kind: Simple, vals: &[Option<Bson>]) -> Bson {
    let present = || vals.iter().flatten();
    let numbers = || present().filter_map(percentile::number);
    match kind {
        Simple::Sum => present().fold(Bson::Int32(0), |t, v| sum_values(&t, v)),
        Simple::Avg => {
            let (n, total) = numbers().fold((0u64, 0.0), |(n, t), x| (n + 1, t + x));
            if n == 0 {
                Bson::Null
            } else {
                Bson::Double(total / n as f64)
            }
        }
        Simple::Min | Simple::Max => present()
            .filter(|v| !matches!(v, Bson::Null | Bson::Undefined))
            .fold(None::<&Bson>, |best, v| match best {
                Some(b) if kind == Simple::Min && cmp_bson(v, b).is_ge() => Some(b),
                Some(b) if kind == Simple::Max && cmp_bson(v, b).is_le() => Some(b),
                _ => Some(v),
            })
            .cloned()
            .unwrap_or(Bson::Null),
        Simple::Push => Bson::Array(present().cloned().collect()),
        Simple::AddToSet => {
            let mut out: Vec<Bson> = Vec::new();
            for v in present() {
                if !out.iter().any(|o| cmp_bson(o, v).is_eq()) {
                    out.push(v.clone());
                }
            }
            Bson::Array(out)
        }
        Simple::First => vals.first().cloned().flatten().unwrap_or(Bson::Null),
        Simple::Last => vals.last().cloned().flatten().unwrap_or(Bson::Null),
        Simple::StdDevPop => std_dev(numbers(), false),
        Simple::StdDevSamp => std_dev(numbers(), true),
    }
}

fn covariance(xs: &[Option<Bson>], ys: &[Option<Bson>], sample: bool) -> Bson {
    let pairs: Vec<(f64, f64)> = xs
        .iter()
        .zip(ys)
        .filter_map(|(x, y)| {
            Some((
                x.as_ref().and_then(percentile::number)?,
                y.as_ref().and_then(percentile::number)?,
            ))
        })
        .collect();
    let n = pairs.len() as f64;
    let denom = if sample { n - 1.0 } else { n };
    if denom <= 0.0 {
        return Bson::Null;
    }
    let (mx, my) = (
        pairs.iter().map(|p| p.0).sum::<f64>() / n,
        pairs.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let c: f64 = pairs.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    Bson::Double(c / denom)
}

fn n_values(kind: NKind, vals: &[Option<Bson>], n: usize) -> Bson {
    let mut items: Vec<Bson> = match kind {
        NKind::First | NKind::Last => vals
            .iter()
            .map(|v| v.clone().unwrap_or(Bson::Null))
            .collect(),
        _ => vals
            .iter()
            .flatten()
            .filter(|v| !matches!(v, Bson::Null | Bson::Undefined))
            .cloned()
            .collect(),
    };
    match kind {
        NKind::First => items.truncate(n),
        NKind::Last => {
            let skip = items.len().saturating_sub(n);
            items.drain(..skip);
        }
        NKind::Min | NKind::Max => {
            items.sort_by(|a, b| {
                let o = cmp_bson(a, b);
                if kind == NKind::Min { o } else { o.reverse() }
            });
            items.truncate(n);
        }
    }
    Bson::Array(items)
}

fn unit_scale(unit: Option<i64>) -> f64 {
    unit.map_or(1.0, |u| u as f64)
}

/// (last - first) / (x_last - x_first), per `unit` for dates; null under two points.
fn derivative(ys: &[Option<Bson>], xs: &[Option<f64>], unit: Option<i64>) -> Bson {
    if ys.len() < 2 {
        return Bson::Null;
    }
    let y = |i: usize| ys[i].as_ref().and_then(percentile::number);
    let (Some(y0), Some(y1), Some(x0), Some(x1)) = (y(0), y(ys.len() - 1), xs[0], xs[xs.len() - 1])
    else {
        return Bson::Null;
    };
    let dx = (x1 - x0) / unit_scale(unit);
    if dx == 0.0 {
        return Bson::Null;
    }
    Bson::Double((y1 - y0) / dx)
}

/// The trapezoidal area under the points, per `unit` for dates; null when none is numeric.
fn integral(ys: &[Option<Bson>], xs: &[Option<f64>], unit: Option<i64>) -> Bson {
    let points: Vec<(f64, f64)> = xs
        .iter()
        .zip(ys)
        .filter_map(|(x, y)| Some(((*x)?, y.as_ref().and_then(percentile::number)?)))
        .collect();
    if points.is_empty() {
        return Bson::Null;
    }
    let area: f64 = points
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) / unit_scale(unit) * (w[0].1 + w[1].1) / 2.0)
        .sum();
    Bson::Double(area)
}
