//! `$setWindowFields` (and `$fill`, which is written in terms of it): parsing the stage and its
//! window functions, and running it over partitions. The functions themselves are computed in
//! `window_fn.rs`.
//!
//! Invariants:
//! - The stage is blocking: it holds its whole input (sorted by partition, then `sortBy`, as
//!   mongod's desugared `$sort` does), bounded by `Limits::stage_bytes`; crossing it fails with
//!   mongod's 5643011. The output documents are bounded by the same limit before they are
//!   answered.
//! - Every output field is computed from the documents as they came in (outputs never see each
//!   other's values), and a window never reaches outside its partition.

use std::cmp::Ordering;

use bson::raw::{RawBsonRef, RawDocument};
use bson::{Bson, Document, RawDocumentBuf};

use crate::doc_ops::{key_of, raw_err, set_path, to_raw};
use crate::expr::Expr;
use crate::limits::Limits;
use crate::path::split_path;
use crate::window_fn::{self, Output};
use crate::window_spec::{Bound, Bounds, parse_unit, type_of};
use crate::{QueryError, SortSpec};

pub(crate) struct Window {
    pub(crate) partition: Option<Expr>,
    pub(crate) sort: Option<SortSpec>,
    pub(crate) outputs: Vec<Output>,
}

fn failed(msg: impl Into<String>) -> QueryError {
    QueryError::failed_to_parse(msg)
}

pub(crate) fn parse(spec: RawBsonRef<'_>) -> Result<Window, QueryError> {
    let RawBsonRef::Document(spec) = spec else {
        return Err(failed(
            "the $setWindowFields stage specification must be an object",
        ));
    };
    let (mut partition, mut sort, mut output) = (None, None, None);
    for item in spec {
        let (k, v) = item.map_err(raw_err)?;
        match (k.as_str(), v) {
            ("partitionBy", v) => partition = Some(parse_partition_by(v)?),
            ("sortBy", RawBsonRef::Document(d)) => sort = Some(SortSpec::parse(d)?),
            ("output", RawBsonRef::Document(d)) => output = Some(d),
            (f @ ("sortBy" | "output"), v) => {
                return Err(QueryError::type_mismatch(format!(
                    "BSON field '$setWindowFields.{f}' is the wrong type '{}', expected type 'object'",
                    type_of(v)
                )));
            }
            (other, _) => {
                return Err(QueryError::location(
                    40415,
                    format!("BSON field '$setWindowFields.{other}' is an unknown field."),
                ));
            }
        }
    }
    let Some(output) = output else {
        return Err(QueryError::location(
            40414,
            "BSON field '$setWindowFields.output' is missing but a required field",
        ));
    };
    let mut outputs = Vec::new();
    for item in output {
        let (k, v) = item.map_err(raw_err)?;
        outputs.push(parse_output(k.as_str(), v, sort.as_ref())?);
    }
    Ok(Window {
        partition,
        sort,
        outputs,
    })
}

/// `partitionBy`: any expression but an object literal of plain fields is fine; mongod refuses
/// only a literal object (it would be one partition anyway).
fn parse_partition_by(v: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    Expr::parse(v)
}

fn parse_output(
    name: &str,
    v: RawBsonRef<'_>,
    sort: Option<&SortSpec>,
) -> Result<Output, QueryError> {
    if name.is_empty() || name.starts_with('$') {
        return Err(QueryError::location(
            16410,
            format!("FieldPath field names may not start with '$': '{name}'"),
        ));
    }
    let RawBsonRef::Document(d) = v else {
        return Err(failed(format!(
            "The field '{name}' must be an object, but found type: {}",
            type_of(v)
        )));
    };
    let (mut func, mut window) = (None, None);
    for item in d {
        let (k, v) = item.map_err(raw_err)?;
        match k.as_str() {
            "window" => window = Some(v),
            f if f.starts_with('$') && func.is_none() => func = Some((f, v)),
            f if f.starts_with('$') => {
                return Err(failed(format!(
                    "Window function found an unknown argument: {f}"
                )));
            }
            f => {
                return Err(failed(format!(
                    "Window function found an unknown argument: {f}"
                )));
            }
        }
    }
    let Some((fname, arg)) = func else {
        return Err(failed(format!(
            "Expected a $-prefixed window function, {name}"
        )));
    };
    let func = window_fn::parse(fname, arg, sort)?;
    let bounds = match window {
        Some(w) => {
            window_fn::check_window_allowed(fname, &func)?;
            parse_window(w, sort)?
        }
        None => func.default_bounds(fname)?,
    };
    Ok(Output {
        path: split_path(name),
        func,
        bounds,
    })
}

fn parse_window(w: RawBsonRef<'_>, sort: Option<&SortSpec>) -> Result<Bounds, QueryError> {
    let RawBsonRef::Document(w) = w else {
        return Err(failed("'window' field must be an object"));
    };
    let (mut docs, mut range, mut unit) = (None, None, None);
    for item in w {
        let (k, v) = item.map_err(raw_err)?;
        match k.as_str() {
            "documents" => docs = Some(v),
            "range" => range = Some(v),
            "unit" => unit = Some(parse_unit(v)?),
            other => {
                return Err(failed(format!(
                    "'window' field that is not an object: unknown argument {other}"
                )));
            }
        }
    }
    match (docs, range) {
        (Some(_), Some(_)) => Err(failed(
            "Window bounds can specify either 'documents' or 'unit', not both",
        )),
        (Some(_), None) if unit.is_some() => Err(failed(
            "Window bounds can specify either 'documents' or 'unit', not both",
        )),
        (Some(d), None) => {
            if sort.is_none() && !matches!(bounds_pair(d)?, (Bound::Unbounded, Bound::Unbounded)) {
                return Err(failed("Document-based bounds require a sortBy"));
            }
            let (lo, hi) = bounds_pair(d)?;
            check_order(lo, hi)?;
            Ok(Bounds::Documents(lo, hi))
        }
        (None, Some(r)) => {
            if sort.is_none_or(|s| s.fields().count() != 1) {
                return Err(failed("Range-based bounds require sortBy a single field"));
            }
            let (lo, hi) = bounds_pair(r)?;
            check_order(lo, hi)?;
            Ok(Bounds::Range(lo, hi, unit))
        }
        (None, None) => Err(failed(
            "'window' field must specify either 'documents' or 'range'",
        )),
    }
}

fn check_order(lo: Bound, hi: Bound) -> Result<(), QueryError> {
    let at = |b: Bound, upper: bool| match b {
        Bound::Unbounded if upper => f64::INFINITY,
        Bound::Unbounded => f64::NEG_INFINITY,
        Bound::Current => 0.0,
        Bound::At(x) => x,
    };
    if at(lo, false) > at(hi, true) {
        return Err(failed("Lower bound must not exceed upper bound"));
    }
    Ok(())
}

/// `[lower, upper]`: each "unbounded", "current" or a number.
fn bounds_pair(v: RawBsonRef<'_>) -> Result<(Bound, Bound), QueryError> {
    let RawBsonRef::Array(a) = v else {
        return Err(failed(
            "Window bounds must be a 2-element array, but got a non-array",
        ));
    };
    let items: Vec<RawBsonRef<'_>> = a.into_iter().collect::<Result<_, _>>().map_err(raw_err)?;
    if items.len() != 2 {
        return Err(failed(format!(
            "Window bounds must be a 2-element array, but got {} elements",
            items.len()
        )));
    }
    Ok((bound(items[0])?, bound(items[1])?))
}

fn bound(v: RawBsonRef<'_>) -> Result<Bound, QueryError> {
    match v {
        RawBsonRef::String("unbounded") => Ok(Bound::Unbounded),
        RawBsonRef::String("current") => Ok(Bound::Current),
        other => match crate::compare::as_num(other).map(|n| n.to_f64()) {
            Some(x) if x.is_finite() => Ok(Bound::At(x)),
            _ => Err(failed(format!(
                "Window bounds must be 'unbounded', 'current', or a number, but found {}",
                type_of(other)
            ))),
        },
    }
}

/// The stage over its whole (held) input.
pub(crate) fn run(
    w: &Window,
    docs: Vec<RawDocumentBuf>,
    limits: &Limits,
) -> Result<Vec<RawDocumentBuf>, QueryError> {
    let mut keyed = Vec::with_capacity(docs.len());
    for d in docs {
        let part = match &w.partition {
            Some(p) => p.eval(&d)?.unwrap_or(Bson::Null),
            None => Bson::Null,
        };
        let sort_key = w
            .sort
            .as_ref()
            .map(|s| s.key_values(&d))
            .unwrap_or_default();
        keyed.push((part, sort_key, d));
    }
    keyed.sort_by(|a, b| {
        crate::expr::cmp_bson(&a.0, &b.0).then_with(|| match &w.sort {
            Some(s) => s.compare_keys(&a.1, &b.1),
            None => Ordering::Equal,
        })
    });
    let mut out = Vec::with_capacity(keyed.len());
    let mut used = 0usize;
    let mut start = 0;
    while start < keyed.len() {
        let id = part_key(&keyed[start].0);
        let end = start
            + keyed[start..]
                .iter()
                .position(|k| part_key(&k.0) != id)
                .unwrap_or(keyed.len() - start);
        let part: Vec<(Vec<Bson>, &RawDocument)> = keyed[start..end]
            .iter()
            .map(|(_, k, d)| (k.clone(), d.as_ref()))
            .collect();
        for d in run_partition(w, &part)? {
            used += d.as_bytes().len();
            check_memory(used, limits)?;
            out.push(d);
        }
        start = end;
    }
    Ok(out)
}

pub(crate) fn part_key(v: &Bson) -> Vec<u8> {
    match bson::RawBson::try_from(v.clone()) {
        Ok(raw) => key_of(raw.as_raw_bson_ref()),
        Err(_) => Vec::new(),
    }
}

/// mongod's 5643011 when the held documents outgrow the per-stage limit.
pub(crate) fn check_memory(used: usize, limits: &Limits) -> Result<(), QueryError> {
    if used <= limits.stage_bytes {
        return Ok(());
    }
    Err(QueryError::location(
        5643011,
        format!(
            "Exceeded memory limit in DocumentSourceSetWindowFields, used {used} bytes but max allowed is {} bytes; $match or $project before $setWindowFields to hold less, or pass allowDiskUse: true to spill it (one partition at a time is then held)",
            limits.stage_bytes
        ),
    ))
}

/// One partition's documents (sort keys alongside), with every output added.
pub(crate) fn run_partition(
    w: &Window,
    part: &[(Vec<Bson>, &RawDocument)],
) -> Result<Vec<RawDocumentBuf>, QueryError> {
    let mut values: Vec<Vec<Bson>> = vec![Vec::new(); part.len()];
    for o in &w.outputs {
        let col = window_fn::compute(o, w.sort.as_ref(), part)?;
        for (slot, v) in values.iter_mut().zip(col) {
            slot.push(v);
        }
    }
    let mut out = Vec::with_capacity(part.len());
    for ((_, d), vals) in part.iter().zip(values) {
        let mut doc = Document::try_from(*d).map_err(raw_err)?;
        for (o, v) in w.outputs.iter().zip(vals) {
            set_path(&mut doc, &o.path, Some(v));
        }
        out.push(to_raw(&doc)?);
    }
    Ok(out)
}
