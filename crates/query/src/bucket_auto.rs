//! `$bucketAuto`: documents sorted by `groupBy` and cut into about `buckets` buckets of equal
//! size, each `{_id: {min, max}, <output accumulators>}`, optionally with boundaries rounded to a
//! preferred-number series (`granularity`), as mongod's `DocumentSourceBucketAuto`.
//!
//! Invariants:
//! - The stage is blocking: it holds every input document with its `groupBy` value, bounded by
//!   `Limits::stage_bytes` (292), or under `allowDiskUse` sorts them by key through the
//!   spilling sort (`stream.rs`); then it walks them in key order holding the accumulators of
//!   one bucket at a time (bounded by `Limits::group_bytes` through the `Grouper`).
//! - Equal `groupBy` values always share a bucket; a bucket's `min` is inclusive and its `max`
//!   exclusive but for the last bucket's, and with a granularity every boundary is a value of
//!   the series and each `min` is the previous bucket's `max`.

use bson::raw::{RawBsonRef, RawDocument};
use bson::{Bson, Document, RawDocumentBuf, doc};

use crate::QueryError;
use crate::doc_ops::{raw_err, to_raw};
use crate::expr::{Expr, cmp_bson};
use crate::group::{Acc, Grouper, SpillTo, parse_accumulators};
use crate::limits::Limits;

pub(crate) struct BucketAuto {
    group_by: Expr,
    buckets: usize,
    pub(crate) accs: Vec<(String, Acc)>,
    granularity: Option<Granularity>,
}

#[derive(Clone, Copy)]
enum Granularity {
    Series(&'static [f64]),
    PowersOf2,
}

const R5: &[f64] = &[10.0, 16.0, 25.0, 40.0, 63.0];
const R10: &[f64] = &[
    100.0, 125.0, 160.0, 200.0, 250.0, 315.0, 400.0, 500.0, 630.0, 800.0,
];
const R20: &[f64] = &[
    100.0, 112.0, 125.0, 140.0, 160.0, 180.0, 200.0, 224.0, 250.0, 280.0, 315.0, 355.0, 400.0,
    450.0, 500.0, 560.0, 630.0, 710.0, 800.0, 900.0,
];
const R40: &[f64] = &[
    100.0, 106.0, 112.0, 118.0, 125.0, 132.0, 140.0, 150.0, 160.0, 170.0, 180.0, 190.0, 200.0,
    212.0, 224.0, 236.0, 250.0, 265.0, 280.0, 300.0, 315.0, 335.0, 355.0, 375.0, 400.0, 425.0,
    450.0, 475.0, 500.0, 530.0, 560.0, 600.0, 630.0, 670.0, 710.0, 750.0, 800.0, 850.0, 900.0,
    950.0,
];
const R80: &[f64] = &[
    103.0, 109.0, 115.0, 122.0, 128.0, 136.0, 145.0, 155.0, 165.0, 175.0, 185.0, 195.0, 206.0,
    218.0, 230.0, 243.0, 258.0, 272.0, 290.0, 307.0, 325.0, 345.0, 365.0, 387.0, 412.0, 437.0,
    462.0, 487.0, 515.0, 545.0, 575.0, 615.0, 650.0, 690.0, 730.0, 775.0, 825.0, 875.0, 925.0,
    975.0,
];
const S125: &[f64] = &[10.0, 20.0, 50.0];
const E6: &[f64] = &[10.0, 15.0, 22.0, 33.0, 47.0, 68.0];
const E12: &[f64] = &[
    10.0, 12.0, 15.0, 18.0, 22.0, 27.0, 33.0, 39.0, 47.0, 56.0, 68.0, 82.0,
];
const E24: &[f64] = &[
    10.0, 11.0, 12.0, 13.0, 15.0, 16.0, 18.0, 20.0, 22.0, 24.0, 27.0, 30.0, 33.0, 36.0, 39.0, 43.0,
    47.0, 51.0, 56.0, 62.0, 68.0, 75.0, 82.0, 91.0,
];
const E48: &[f64] = &[
    100.0, 105.0, 110.0, 115.0, 121.0, 127.0, 133.0, 140.0, 147.0, 154.0, 162.0, 169.0, 178.0,
    187.0, 196.0, 205.0, 215.0, 226.0, 237.0, 249.0, 261.0, 274.0, 287.0, 301.0, 316.0, 332.0,
    348.0, 365.0, 383.0, 402.0, 422.0, 442.0, 464.0, 487.0, 511.0, 536.0, 562.0, 590.0, 619.0,
    649.0, 681.0, 715.0, 750.0, 787.0, 825.0, 866.0, 909.0, 953.0,
];
const E96: &[f64] = &[
    100.0, 102.0, 105.0, 107.0, 110.0, 113.0, 115.0, 118.0, 121.0, 124.0, 127.0, 130.0, 133.0,
    137.0, 140.0, 143.0, 147.0, 150.0, 154.0, 158.0, 162.0, 165.0, 169.0, 174.0, 178.0, 182.0,
    187.0, 191.0, 196.0, 200.0, 205.0, 210.0, 215.0, 221.0, 226.0, 232.0, 237.0, 243.0, 249.0,
    255.0, 261.0, 267.0, 274.0, 280.0, 287.0, 294.0, 301.0, 309.0, 316.0, 324.0, 332.0, 340.0,
    348.0, 357.0, 365.0, 374.0, 383.0, 392.0, 402.0, 412.0, 422.0, 432.0, 442.0, 453.0, 464.0,
    475.0, 487.0, 499.0, 511.0, 523.0, 536.0, 549.0, 562.0, 576.0, 590.0, 604.0, 619.0, 634.0,
    649.0, 665.0, 681.0, 698.0, 715.0, 732.0, 750.0, 768.0, 787.0, 806.0, 825.0, 845.0, 866.0,
    887.0, 909.0, 931.0, 953.0, 976.0,
];
const E192: &[f64] = &[
    100.0, 101.0, 102.0, 104.0, 105.0, 106.0, 107.0, 109.0, 110.0, 111.0, 113.0, 114.0, 115.0,
    117.0, 118.0, 120.0, 121.0, 123.0, 124.0, 126.0, 127.0, 129.0, 130.0, 132.0, 133.0, 135.0,
    137.0, 138.0, 140.0, 142.0, 143.0, 145.0, 147.0, 149.0, 150.0, 152.0, 154.0, 156.0, 158.0,
    160.0, 162.0, 164.0, 165.0, 167.0, 169.0, 172.0, 174.0, 176.0, 178.0, 180.0, 182.0, 184.0,
    187.0, 189.0, 191.0, 193.0, 196.0, 198.0, 200.0, 203.0, 205.0, 208.0, 210.0, 213.0, 215.0,
    218.0, 221.0, 223.0, 226.0, 229.0, 232.0, 234.0, 237.0, 240.0, 243.0, 246.0, 249.0, 252.0,
    255.0, 258.0, 261.0, 264.0, 267.0, 271.0, 274.0, 277.0, 280.0, 284.0, 287.0, 291.0, 294.0,
    298.0, 301.0, 305.0, 309.0, 312.0, 316.0, 320.0, 324.0, 328.0, 332.0, 336.0, 340.0, 344.0,
    348.0, 352.0, 357.0, 361.0, 365.0, 370.0, 374.0, 379.0, 383.0, 388.0, 392.0, 397.0, 402.0,
    407.0, 412.0, 417.0, 422.0, 427.0, 432.0, 437.0, 442.0, 448.0, 453.0, 459.0, 464.0, 470.0,
    475.0, 481.0, 487.0, 493.0, 499.0, 505.0, 511.0, 517.0, 523.0, 530.0, 536.0, 542.0, 549.0,
    556.0, 562.0, 569.0, 576.0, 583.0, 590.0, 597.0, 604.0, 612.0, 619.0, 626.0, 634.0, 642.0,
    649.0, 657.0, 665.0, 673.0, 681.0, 690.0, 698.0, 706.0, 715.0, 723.0, 732.0, 741.0, 750.0,
    759.0, 768.0, 777.0, 787.0, 796.0, 806.0, 816.0, 825.0, 835.0, 845.0, 856.0, 866.0, 876.0,
    887.0, 898.0, 909.0, 920.0, 931.0, 942.0, 953.0, 965.0, 976.0, 988.0,
];

fn granularity(name: &str) -> Result<Granularity, QueryError> {
    Ok(Granularity::Series(match name {
        "R5" => R5,
        "R10" => R10,
        "R20" => R20,
        "R40" => R40,
        "R80" => R80,
        "1-2-5" => S125,
        "E6" => E6,
        "E12" => E12,
        "E24" => E24,
        "E48" => E48,
        "E96" => E96,
        "E192" => E192,
        "POWERSOF2" => return Ok(Granularity::PowersOf2),
        other => {
            return Err(QueryError::location(
                40257,
                format!("Unknown rounding granularity '{other}'"),
            ));
        }
    }))
}

fn type_of(v: RawBsonRef<'_>) -> &'static str {
    Bson::try_from(v).map_or("unknown", |b| crate::update::type_name(&b))
}

/// `buckets`: a positive 32-bit integral number.
fn parse_buckets(v: RawBsonRef<'_>) -> Result<usize, QueryError> {
    let Some(n) = crate::compare::as_num(v).map(|n| n.to_f64()) else {
        return Err(QueryError::location(
            40241,
            format!(
                "The $bucketAuto 'buckets' field must be a numeric value, but found type: {}",
                type_of(v)
            ),
        ));
    };
    if n.fract() != 0.0 || n > f64::from(i32::MAX) || n < f64::from(i32::MIN) {
        return Err(QueryError::location(
            40242,
            format!(
                "The $bucketAuto 'buckets' field must be representable as a 32-bit integer, but found {n}"
            ),
        ));
    }
    if n <= 0.0 {
        return Err(QueryError::location(
            40243,
            format!("The $bucketAuto 'buckets' field must be greater than 0, but found: {n}"),
        ));
    }
    Ok(n as usize)
}

/// `groupBy`: a `$`-path or an operator expression (40239).
fn parse_group_by(v: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let ok = match v {
        RawBsonRef::String(s) => s.starts_with('$'),
        RawBsonRef::Document(d) => d
            .iter()
            .next()
            .is_some_and(|f| f.is_ok_and(|(k, _)| k.as_str().starts_with('$'))),
        _ => false,
    };
    if !ok {
        return Err(QueryError::location(
            40239,
            format!(
                "The $bucketAuto 'groupBy' field must be defined as a $-prefixed path or an expression object, but found: {:?}",
                Bson::try_from(v).unwrap_or(Bson::Null)
            ),
        ));
    }
    Expr::parse(v)
}

pub(crate) fn parse(spec: RawBsonRef<'_>) -> Result<BucketAuto, QueryError> {
    let RawBsonRef::Document(spec) = spec else {
        return Err(QueryError::location(
            40240,
            format!(
                "The argument to $bucketAuto must be an object, but found type: {}",
                type_of(spec)
            ),
        ));
    };
    let (mut group_by, mut buckets, mut accs, mut gran) = (None, None, None, None);
    for item in spec {
        let (k, v) = item.map_err(raw_err)?;
        match (k.as_str(), v) {
            ("groupBy", v) => group_by = Some(parse_group_by(v)?),
            ("buckets", v) => buckets = Some(parse_buckets(v)?),
            ("output", RawBsonRef::Document(d)) => accs = Some(parse_accumulators(d, &[])?),
            ("output", v) => {
                return Err(QueryError::location(
                    40244,
                    format!(
                        "The $bucketAuto 'output' field must be an object, but found type: {}",
                        type_of(v)
                    ),
                ));
            }
            ("granularity", RawBsonRef::String(g)) => gran = Some(granularity(g)?),
            ("granularity", v) => {
                return Err(QueryError::location(
                    40261,
                    format!(
                        "The $bucketAuto 'granularity' field must be a string, but found type: {}",
                        type_of(v)
                    ),
                ));
            }
            (other, _) => {
                return Err(QueryError::location(
                    40245,
                    format!("Unrecognized option to $bucketAuto: {other}"),
                ));
            }
        }
    }
    let (Some(group_by), Some(buckets)) = (group_by, buckets) else {
        return Err(QueryError::location(
            40246,
            "$bucketAuto requires 'groupBy' and 'buckets' to be specified",
        ));
    };
    let accs = accs
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| vec![("count".into(), Acc::Sum(Expr::Const(Bson::Int32(1))))]);
    Ok(BucketAuto {
        group_by,
        buckets,
        accs,
        granularity: gran,
    })
}

fn as_f64(v: &Bson) -> Option<f64> {
    crate::expr::quantile::number(v)
}

impl BucketAuto {
    /// The `groupBy` value of `doc` (missing is null); with a granularity, a non-negative number.
    pub(crate) fn key(&self, doc: &RawDocument) -> Result<Bson, QueryError> {
        let key = self.group_by.eval(doc)?.unwrap_or(Bson::Null);
        if self.granularity.is_some() {
            let Some(x) = as_f64(&key) else {
                return Err(QueryError::location(
                    40258,
                    format!(
                        "$bucketAuto can specify a 'granularity' with numeric boundaries only, but found type: {}",
                        crate::update::type_name(&key)
                    ),
                ));
            };
            if x.is_nan() {
                return Err(QueryError::location(
                    40259,
                    "$bucketAuto can specify a 'granularity' with numeric boundaries only, but found a NaN",
                ));
            }
            if x < 0.0 {
                return Err(QueryError::location(
                    40260,
                    "$bucketAuto can specify a 'granularity' with non-negative numbers only, but found a negative number",
                ));
            }
        }
        Ok(key)
    }

    /// The buckets over every held (key, document) pair.
    pub(crate) fn finish(
        &self,
        mut entries: Vec<(Bson, RawDocumentBuf)>,
        limits: &Limits,
    ) -> Result<Vec<RawDocumentBuf>, QueryError> {
        entries.sort_by(|a, b| cmp_bson(&a.0, &b.0));
        let n = entries.len();
        self.finish_sorted(entries.into_iter().map(Ok), n, limits)
    }

    /// The buckets over `n` (key, document) pairs coming in key order (from memory, or merged
    /// from spilled runs): one bucket's accumulators are held at a time, never its documents.
    pub(crate) fn finish_sorted(
        &self,
        entries: impl Iterator<Item = Result<(Bson, RawDocumentBuf), QueryError>>,
        n: usize,
        limits: &Limits,
    ) -> Result<Vec<RawDocumentBuf>, QueryError> {
        let approx = ((n as f64 / self.buckets as f64).round() as usize).max(1);
        let mut it = Ahead {
            it: entries,
            next: None,
        };
        let mut out = Vec::new();
        let (mut number, mut prev_max) = (0, None);
        while it.peek()?.is_some() {
            number += 1;
            let mut bucket = Grouper::default();
            let (min, max) = self.cut(
                &mut it,
                approx,
                number,
                prev_max.take(),
                &mut bucket,
                limits,
            )?;
            prev_max = Some(max.clone());
            out.push(self.bucket_doc(bucket, min, max, limits)?);
        }
        Ok(out)
    }

    /// Takes the next bucket's entries into `bucket`; returns its boundaries.
    fn cut<I: Iterator<Item = Result<(Bson, RawDocumentBuf), QueryError>>>(
        &self,
        it: &mut Ahead<I>,
        approx: usize,
        number: usize,
        prev_max: Option<Bson>,
        bucket: &mut Grouper,
        limits: &Limits,
    ) -> Result<(Bson, Bson), QueryError> {
        let last = number == self.buckets;
        let mut add = |d: RawDocumentBuf| self.add(bucket, &d, limits);
        let (first_key, first) = it.take()?.expect("cut is called with an entry ahead");
        add(first)?;
        let (mut max, mut taken) = (first_key.clone(), 1);
        while taken < approx || last {
            let Some((k, d)) = it.take()? else { break };
            add(d)?;
            max = k;
            taken += 1;
        }
        let Some(g) = self.granularity else {
            while let Some((k, _)) = it.peek()?
                && cmp_bson(k, &max).is_eq()
            {
                add(it.take()?.expect("peeked").1)?;
            }
            if let Some((k, _)) = it.peek()? {
                max = k.clone();
            }
            return Ok((first_key, max));
        };
        let min = match prev_max {
            Some(m) => m,
            None => round_down(g, &first_key)?,
        };
        let boundary = round_up(g, &max)?;
        while let Some((k, _)) = it.peek()?
            && (cmp_bson(&boundary, k).is_gt() || cmp_bson(&max, k).is_eq())
        {
            let (k, d) = it.take()?.expect("peeked");
            add(d)?;
            max = k;
        }
        let max = match it.peek()? {
            Some((k, _)) if as_f64(&boundary) == Some(0.0) => round_down(g, k)?,
            _ => boundary,
        };
        Ok((min, max))
    }

    fn add(
        &self,
        bucket: &mut Grouper,
        d: &RawDocumentBuf,
        limits: &Limits,
    ) -> Result<(), QueryError> {
        // One bucket's accumulators, bounded by the group limit; they do not spill.
        let no_spill = SpillTo {
            store: None,
            bucket: None,
        };
        bucket.add(&self.accs, Bson::Null, d, "$bucketAuto", limits, no_spill)
    }

    fn bucket_doc(
        &self,
        bucket: Grouper,
        min: Bson,
        max: Bson,
        limits: &Limits,
    ) -> Result<RawDocumentBuf, QueryError> {
        let done = bucket
            .finish(&self.accs, None, limits)?
            .next(&self.accs, None, limits)?;
        let raw = done.unwrap_or_default();
        let mut d = Document::try_from(raw.as_ref()).map_err(raw_err)?;
        d.insert("_id", doc! { "min": min, "max": max });
        to_raw(&d)
    }
}

/// An iterator of results with one entry looked at ahead.
struct Ahead<I> {
    it: I,
    next: Option<(Bson, RawDocumentBuf)>,
}

impl<I: Iterator<Item = Result<(Bson, RawDocumentBuf), QueryError>>> Ahead<I> {
    fn peek(&mut self) -> Result<Option<&(Bson, RawDocumentBuf)>, QueryError> {
        if self.next.is_none() {
            self.next = self.it.next().transpose()?;
        }
        Ok(self.next.as_ref())
    }

    fn take(&mut self) -> Result<Option<(Bson, RawDocumentBuf)>, QueryError> {
        self.peek()?;
        Ok(self.next.take())
    }
}

/// mongod's rounders refuse what they cannot round (the stage checked already; kept for
/// boundaries computed from other boundaries).
fn rounding_input(v: &Bson) -> Result<f64, QueryError> {
    let Some(x) = as_f64(v) else {
        return Err(QueryError::location(
            40262,
            format!(
                "A granularity rounder can only round numeric values, but found type: {}",
                crate::update::type_name(v)
            ),
        ));
    };
    if x.is_nan() {
        return Err(QueryError::location(
            40263,
            "A granularity rounder cannot round NaN",
        ));
    }
    if x < 0.0 {
        return Err(QueryError::location(
            40268,
            "A granularity rounder can only round non-negative numbers",
        ));
    }
    Ok(x)
}

/// The smallest series value strictly greater than `v` (0 stays 0).
fn round_up(g: Granularity, v: &Bson) -> Result<Bson, QueryError> {
    let x = rounding_input(v)?;
    if x == 0.0 {
        return Ok(v.clone());
    }
    let Granularity::Series(series) = g else {
        return Ok(power_of_two(v, x.log2().floor() + 1.0));
    };
    let (first, last) = (series[0], series[series.len() - 1]);
    let mut m = 1.0;
    while x >= last * m {
        m *= 10.0;
    }
    while x < first * m {
        let previous_min = first * m;
        m /= 10.0;
        if x >= last * m {
            return Ok(Bson::Double(previous_min));
        }
    }
    let up = series
        .iter()
        .find(|&&s| x < s * m)
        .map_or(last * m, |s| s * m);
    Ok(Bson::Double(up))
}

/// The largest series value strictly less than `v` (0 stays 0).
fn round_down(g: Granularity, v: &Bson) -> Result<Bson, QueryError> {
    let x = rounding_input(v)?;
    if x == 0.0 {
        return Ok(v.clone());
    }
    let Granularity::Series(series) = g else {
        return Ok(power_of_two(v, x.log2().ceil() - 1.0));
    };
    let (first, last) = (series[0], series[series.len() - 1]);
    let mut m = 1.0;
    while x <= first * m {
        m /= 10.0;
    }
    while x > last * m {
        let previous_max = last * m;
        m *= 10.0;
        if x <= first * m {
            return Ok(Bson::Double(previous_max));
        }
    }
    let down = series
        .iter()
        .rev()
        .find(|&&s| s * m < x)
        .map_or(first * m, |s| s * m);
    Ok(Bson::Double(down))
}

/// `2^exp`, integral when the input was and the power is whole (as mongod's `$pow`).
fn power_of_two(input: &Bson, exp: f64) -> Bson {
    let p = 2f64.powf(exp);
    match input {
        Bson::Int32(_) if exp >= 0.0 && p <= f64::from(i32::MAX) => Bson::Int32(p as i32),
        Bson::Int32(_) | Bson::Int64(_) if (0.0..63.0).contains(&exp) => Bson::Int64(p as i64),
        _ => Bson::Double(p),
    }
}
