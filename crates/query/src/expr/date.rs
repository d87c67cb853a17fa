//! Date operators: the parts (`$year` … `$isoDayOfWeek`), `$dateToString`, and the calendar
//! operators (`$dateAdd`, `$dateSubtract`, `$dateDiff`, `$dateTrunc`, `$dateFromParts`,
//! `$dateToParts`, `$dateFromString`). Time zones are UTC or fixed offsets, so "local" time is
//! a plain shift; the calendar arithmetic itself is in `crate::dates`.

use bson::raw::RawBsonRef;
use bson::{Bson, DateTime, Document};

use super::args::{named, one_arg, parse_opt, pick};
use super::arith::exact_int;
use super::convert::conversion_failure;
use super::ops::Op;
use super::string::str_of;
use super::{Expr, Val, display, loc, nullish, tname, type_name};
use crate::dates;
use crate::error::QueryError;

/// Applies a date operator to its argument values.
pub(super) fn apply(op: Op, vals: Vec<Val>) -> Result<Val, QueryError> {
    match op {
        Op::DateAdd | Op::DateSubtract => date_add(op, &vals),
        Op::DateDiff => date_diff(op, &vals),
        Op::DateTrunc => date_trunc(op, &vals),
        Op::DateFromParts => date_from_parts(&vals),
        Op::DateToParts => date_to_parts(op, &vals),
        Op::DateFromString => date_from_string(&vals),
        Op::DateToString => date_to_string(&vals),
        _ => date_part(op, &vals),
    }
}

/// The calendar operators, whose named arguments become positional ones in this order.
pub(super) fn is_named(op: Op) -> bool {
    named_args(op).is_some()
}

/// `$dateFromParts`' arguments, in the positional order its evaluation reads them.
const FROM_PARTS: [&str; 11] = [
    "year",
    "month",
    "day",
    "hour",
    "minute",
    "second",
    "millisecond",
    "timezone",
    "isoWeekYear",
    "isoWeek",
    "isoDayOfWeek",
];

/// (all names in positional order, required names) of a calendar operator.
fn named_args(op: Op) -> Option<(&'static [&'static str], &'static [&'static str])> {
    Some(match op {
        Op::DateAdd | Op::DateSubtract => (
            &["startDate", "unit", "amount", "timezone"],
            &["startDate", "unit", "amount"],
        ),
        Op::DateDiff => (
            &["startDate", "endDate", "unit", "timezone", "startOfWeek"],
            &["startDate", "endDate", "unit"],
        ),
        Op::DateTrunc => (
            &["date", "unit", "binSize", "timezone", "startOfWeek"],
            &["date", "unit"],
        ),
        Op::DateFromParts => (&FROM_PARTS, &[]),
        Op::DateToParts => (&["date", "timezone", "iso8601"], &["date"]),
        Op::DateFromString => (
            &["dateString", "format", "timezone", "onError", "onNull"],
            &["dateString"],
        ),
        _ => return None,
    })
}

/// A calendar operator's named arguments, as positional ones (missing ones `$$REMOVE`).
pub(super) fn parse_named(op: Op, arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let Some((names, required)) = named_args(op) else {
        return Err(super::unrecognized(op.name()));
    };
    let spec = named(op.name(), arg, names, 5166401)?;
    for r in required {
        if pick(&spec, r).is_none() {
            return Err(loc(
                5166402,
                format!("{} requires '{r}' to be specified", op.name()),
            ));
        }
    }
    let mut args = Vec::with_capacity(names.len());
    for n in names {
        args.push(parse_opt(pick(&spec, n))?);
    }
    Ok(Expr::Op(op, args))
}

/// `$dateToString: {date, format, timezone, onNull}`.
pub(super) fn parse_to_string(arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let spec = named(
        "$dateToString",
        arg,
        &["date", "format", "timezone", "onNull"],
        18534,
    )?;
    let date = pick(&spec, "date")
        .ok_or_else(|| loc(18628, "Missing 'date' parameter to $dateToString"))?;
    Ok(Expr::Op(
        Op::DateToString,
        vec![
            Expr::parse(date)?,
            parse_opt(pick(&spec, "format"))?,
            parse_opt(pick(&spec, "timezone"))?,
            parse_opt(pick(&spec, "onNull"))?,
        ],
    ))
}

/// A date part: `{$year: date}` or `{$year: {date, timezone}}`.
pub(super) fn parse_part(op: Op, arg: RawBsonRef<'_>) -> Result<Expr, QueryError> {
    let (date, tz) = match arg {
        RawBsonRef::Document(d)
            if d.get("date").ok().flatten().is_some()
                && !d.iter().flatten().any(|(k, _)| k.as_str().starts_with('$')) =>
        {
            let spec = named(op.name(), arg, &["date", "timezone"], 40535)?;
            (
                Expr::parse(pick(&spec, "date").unwrap_or(RawBsonRef::Null))?,
                parse_opt(pick(&spec, "timezone"))?,
            )
        }
        _ => (one_arg(op, arg)?, Expr::Missing),
    };
    Ok(Expr::Op(op, vec![date, tz]))
}

fn date_to_string(vals: &[Val]) -> Result<Val, QueryError> {
    let date = &vals[0];
    if nullish(date) {
        return Ok(match &vals[3] {
            None => Some(Bson::Null),
            on_null => on_null.clone(),
        });
    }
    let ms = date_millis("$dateToString", date.as_ref().unwrap_or(&Bson::Null))?;
    let Some(offset) = timezone_of(&vals[2])? else {
        return Ok(Some(Bson::Null));
    };
    let format = match &vals[1] {
        None => "%Y-%m-%dT%H:%M:%S.%LZ".to_string(),
        v if nullish(v) => return Ok(Some(Bson::Null)),
        Some(Bson::String(f)) => f.clone(),
        other => {
            return Err(loc(
                18533,
                format!(
                    "$dateToString requires that 'format' be a string, found: {}",
                    tname(other)
                ),
            ));
        }
    };
    Ok(Some(Bson::String(dates::format(ms, &format, offset)?)))
}

fn date_part(op: Op, vals: &[Val]) -> Result<Val, QueryError> {
    if nullish(&vals[0]) {
        return Ok(Some(Bson::Null));
    }
    let ms = date_millis(op.name(), vals[0].as_ref().unwrap_or(&Bson::Null))?;
    let Some(offset) = timezone_of(&vals[1])? else {
        return Ok(Some(Bson::Null));
    };
    let p = dates::parts(ms.saturating_add(offset.saturating_mul(60_000)));
    let n = match op {
        Op::Year => p.year,
        Op::Month => p.month,
        Op::DayOfMonth => p.day,
        Op::Hour => p.hour,
        Op::Minute => p.minute,
        Op::Second => p.second,
        Op::Millisecond => p.millis,
        Op::DayOfWeek => p.day_of_week,
        Op::DayOfYear => p.day_of_year,
        Op::Week => p.week(),
        Op::IsoWeek => p.iso_week().1,
        Op::IsoWeekYear => return Ok(Some(Bson::Int64(p.iso_week().0))),
        _ => p.iso_day_of_week(),
    };
    Ok(Some(Bson::Int32(i32::try_from(n).unwrap_or(i32::MAX))))
}

fn date_millis(op: &str, v: &Bson) -> Result<i64, QueryError> {
    match v {
        Bson::DateTime(d) => Ok(d.timestamp_millis()),
        Bson::Timestamp(t) => Ok(i64::from(t.time) * 1000),
        Bson::ObjectId(o) => Ok(o.timestamp().timestamp_millis()),
        other => Err(loc(
            16006,
            format!(
                "can't convert from BSON type {} to Date ({op})",
                type_name(other)
            ),
        )),
    }
}

fn timezone_of(tz: &Val) -> Result<Option<i64>, QueryError> {
    match tz {
        None => Ok(Some(0)),
        Some(Bson::Null) | Some(Bson::Undefined) => Ok(None),
        Some(Bson::String(s)) => dates::parse_timezone(s).map(Some),
        Some(other) => Err(loc(
            40517,
            format!(
                "timezone must evaluate to a string, found {}",
                type_name(other)
            ),
        )),
    }
}

/// The time zone argument at `i`, as [`timezone_of`].
fn offset_arg(vals: &[Val], i: usize) -> Result<Option<i64>, QueryError> {
    timezone_of(vals.get(i).unwrap_or(&None))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Year,
    Quarter,
    Month,
    Week,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

fn unit_of(op: &str, v: &Val) -> Result<Unit, QueryError> {
    Ok(match str_of(v) {
        Some("year") => Unit::Year,
        Some("quarter") => Unit::Quarter,
        Some("month") => Unit::Month,
        Some("week") => Unit::Week,
        Some("day") => Unit::Day,
        Some("hour") => Unit::Hour,
        Some("minute") => Unit::Minute,
        Some("second") => Unit::Second,
        Some("millisecond") => Unit::Millisecond,
        _ => {
            return Err(loc(
                5439014,
                format!(
                    "{op} parameter 'unit' value cannot be recognized as a time unit: {}",
                    v.as_ref().map_or("missing".to_string(), display)
                ),
            ));
        }
    })
}

fn fixed_ms(unit: Unit) -> Option<i64> {
    Some(match unit {
        Unit::Week => 7 * 86_400_000,
        Unit::Day => 86_400_000,
        Unit::Hour => 3_600_000,
        Unit::Minute => 60_000,
        Unit::Second => 1000,
        Unit::Millisecond => 1,
        _ => return None,
    })
}

/// Day of the week a week starts on, 0 = Sunday (the default).
fn week_start(op: &str, v: &Val) -> Result<i64, QueryError> {
    let Some(s) = str_of(v) else {
        return if v.is_none() {
            Ok(0)
        } else {
            Err(loc(
                5439015,
                format!("{op} requires 'startOfWeek' to be a string"),
            ))
        };
    };
    let lower = s.to_ascii_lowercase();
    let days = [
        ("sun", "sunday"),
        ("mon", "monday"),
        ("tue", "tuesday"),
        ("wed", "wednesday"),
        ("thu", "thursday"),
        ("fri", "friday"),
        ("sat", "saturday"),
    ];
    days.iter()
        .position(|(short, long)| lower == *short || lower == *long)
        .map(|i| i as i64)
        .ok_or_else(|| {
            loc(
                5439016,
                format!("{op} parameter 'startOfWeek' value cannot be recognized as a day of a week: {s}"),
            )
        })
}

/// `ms` (local) plus `months` calendar months, clamping the day to the target month's length.
pub(crate) fn add_months(ms: i64, months: i64) -> Option<i64> {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = dates::civil_from_days(days);
    let total = (y.checked_mul(12)?)
        .checked_add(m - 1)?
        .checked_add(months)?;
    let (ny, nm) = (total.div_euclid(12), total.rem_euclid(12) + 1);
    let last = dates::days_in_month(ny, nm);
    let nd = d.min(last);
    dates::days_from_civil(ny, nm, nd)
        .checked_mul(86_400_000)?
        .checked_add(in_day)
}

/// `$dateAdd`/`$dateSubtract`: [startDate, unit, amount, timezone].
fn date_add(op: Op, vals: &[Val]) -> Result<Val, QueryError> {
    let name = op.name();
    if vals[..3].iter().any(nullish) {
        return Ok(Some(Bson::Null));
    }
    let start = date_millis(name, vals[0].as_ref().unwrap_or(&Bson::Null))?;
    let unit = unit_of(name, &vals[1])?;
    let Some(amount) = vals[2].as_ref().and_then(exact_int) else {
        return Err(loc(
            5166403,
            format!(
                "{name} requires 'amount' to be an integer, found {}",
                tname(&vals[2])
            ),
        ));
    };
    let amount = if op == Op::DateSubtract {
        amount.checked_neg()
    } else {
        Some(amount)
    };
    let Some(offset) = offset_arg(vals, 3)? else {
        return Ok(Some(Bson::Null));
    };
    let shift = offset * 60_000;
    let overflow = || loc(5166406, format!("{name} overflowed"));
    let amount = amount.ok_or_else(overflow)?;
    let out = match (unit, fixed_ms(unit)) {
        (_, Some(step)) => amount.checked_mul(step).and_then(|d| start.checked_add(d)),
        _ => {
            let per = match unit {
                Unit::Year => 12,
                Unit::Quarter => 3,
                _ => 1,
            };
            amount
                .checked_mul(per)
                .zip(start.checked_add(shift))
                .and_then(|(m, local)| add_months(local, m))
                .and_then(|l| l.checked_sub(shift))
        }
    };
    Ok(Some(Bson::DateTime(DateTime::from_millis(
        out.ok_or_else(overflow)?,
    ))))
}

/// `$dateDiff`: [startDate, endDate, unit, timezone, startOfWeek], in whole units crossed.
fn date_diff(op: Op, vals: &[Val]) -> Result<Val, QueryError> {
    let name = op.name();
    if vals[..3].iter().any(nullish) {
        return Ok(Some(Bson::Null));
    }
    let a = date_millis(name, vals[0].as_ref().unwrap_or(&Bson::Null))?;
    let b = date_millis(name, vals[1].as_ref().unwrap_or(&Bson::Null))?;
    let unit = unit_of(name, &vals[2])?;
    let Some(offset) = offset_arg(vals, 3)? else {
        return Ok(Some(Bson::Null));
    };
    let (a, b) = (
        a.saturating_add(offset * 60_000),
        b.saturating_add(offset * 60_000),
    );
    let (pa, pb) = (dates::parts(a), dates::parts(b));
    let diff = match unit {
        Unit::Year => pb.year - pa.year,
        Unit::Quarter => (pb.year * 4 + (pb.month - 1) / 3) - (pa.year * 4 + (pa.month - 1) / 3),
        Unit::Month => (pb.year * 12 + pb.month) - (pa.year * 12 + pa.month),
        Unit::Week => {
            let start = week_start(name, vals.get(4).unwrap_or(&None))?;
            // Day 0 (1970-01-01) was a Thursday (4); count whole weeks from a week start.
            let week = |ms: i64| (ms.div_euclid(86_400_000) + 4 - start).div_euclid(7);
            week(b) - week(a)
        }
        _ => {
            let step = fixed_ms(unit).unwrap_or(1);
            b.div_euclid(step)
                .checked_sub(a.div_euclid(step))
                .ok_or_else(|| loc(5166309, "$dateDiff result overflows a long"))?
        }
    };
    Ok(Some(Bson::Int64(diff)))
}

/// `$dateTrunc`: [date, unit, binSize, timezone, startOfWeek].
fn date_trunc(op: Op, vals: &[Val]) -> Result<Val, QueryError> {
    let name = op.name();
    if nullish(&vals[0]) || nullish(&vals[1]) {
        return Ok(Some(Bson::Null));
    }
    let ms = date_millis(name, vals[0].as_ref().unwrap_or(&Bson::Null))?;
    let unit = unit_of(name, &vals[1])?;
    let bin = match &vals[2] {
        None => 1,
        v if nullish(v) => return Ok(Some(Bson::Null)),
        Some(v) => match exact_int(v) {
            Some(n) if n > 0 => n,
            _ => {
                return Err(loc(
                    5439017,
                    format!(
                        "{name} requires 'binSize' to be a positive integer, found {}",
                        display(v)
                    ),
                ));
            }
        },
    };
    let Some(offset) = offset_arg(vals, 3)? else {
        return Ok(Some(Bson::Null));
    };
    let shift = offset * 60_000;
    let local = ms.saturating_add(shift);
    let start_of_week = || week_start(name, vals.get(4).unwrap_or(&None));
    let truncated = truncate_local(local, unit, bin, start_of_week)?;
    Ok(Some(Bson::DateTime(DateTime::from_millis(
        truncated.saturating_sub(shift),
    ))))
}

/// A local time truncated to the start of its bin of `bin` units; weeks start on the day
/// `start_of_week` gives.
fn truncate_local(
    local: i64,
    unit: Unit,
    bin: i64,
    start_of_week: impl FnOnce() -> Result<i64, QueryError>,
) -> Result<i64, QueryError> {
    // Bins count from 2000-01-01 (local), as mongod's reference point.
    let reference = dates::days_from_civil(2000, 1, 1) * 86_400_000;
    Ok(match unit {
        Unit::Year | Unit::Quarter | Unit::Month => {
            let p = dates::parts(local);
            let per_bin: i64 = match unit {
                Unit::Year => 12,
                Unit::Quarter => 3,
                _ => 1,
            };
            let months_per = per_bin.saturating_mul(bin);
            let since = (p.year - 2000) * 12 + (p.month - 1);
            let start = since.div_euclid(months_per).saturating_mul(months_per);
            dates::days_from_civil(
                2000i64.saturating_add(start.div_euclid(12)),
                start.rem_euclid(12) + 1,
                1,
            )
            .saturating_mul(86_400_000)
        }
        Unit::Week => {
            let start = start_of_week()?;
            // 2000-01-01 was a Saturday (6); the first week start on or after it.
            let first = reference + (start - 6).rem_euclid(7) * 86_400_000;
            let step = (7 * 86_400_000i64).saturating_mul(bin);
            first.saturating_add(
                local
                    .saturating_sub(first)
                    .div_euclid(step)
                    .saturating_mul(step),
            )
        }
        _ => {
            let step = fixed_ms(unit).unwrap_or(1).saturating_mul(bin);
            reference.saturating_add(
                local
                    .saturating_sub(reference)
                    .div_euclid(step)
                    .saturating_mul(step),
            )
        }
    })
}

/// `$dateFromParts`: [year, month, day, hour, minute, second, millisecond, timezone,
/// isoWeekYear, isoWeek, isoDayOfWeek].
fn date_from_parts(vals: &[Val]) -> Result<Val, QueryError> {
    let iso = vals[8].is_some();
    if iso == vals[0].is_some() {
        return Err(loc(
            40516,
            "$dateFromParts requires either 'year' or 'isoWeekYear' to be specified, but not both",
        ));
    }
    let Some(n) = part_numbers(vals)? else {
        return Ok(Some(Bson::Null));
    };
    let year = if iso { n[8] } else { n[0] };
    if !(1..=9999).contains(&year) {
        return Err(loc(
            31095,
            format!(
                "'{}' must evaluate to an integer in the range 1 to 9999, found {year}",
                if iso { "isoWeekYear" } else { "year" }
            ),
        ));
    }
    let Some(offset) = offset_arg(vals, 7)? else {
        return Ok(Some(Bson::Null));
    };
    let days = if iso {
        let jan4 = dates::days_from_civil(year, 1, 4);
        let jan4_iso_dow = (jan4 + 3).rem_euclid(7); // 0 = Monday
        let week1_monday = jan4 - jan4_iso_dow;
        week1_monday + (n[9] - 1) * 7 + (n[10] - 1)
    } else {
        let total = year * 12 + (n[1] - 1);
        dates::days_from_civil(total.div_euclid(12), total.rem_euclid(12) + 1, 1) + (n[2] - 1)
    };
    let ms =
        days * 86_400_000 + n[3] * 3_600_000 + n[4] * 60_000 + n[5] * 1000 + n[6] - offset * 60_000;
    Ok(Some(Bson::DateTime(DateTime::from_millis(ms))))
}

/// `$dateFromParts`' numbers, with defaults for the missing ones; `None` when one is null.
fn part_numbers(vals: &[Val]) -> Result<Option<[i64; 11]>, QueryError> {
    let mut n = [0i64; 11];
    for (i, v) in vals.iter().enumerate() {
        if i == 7 {
            continue;
        }
        match v {
            None => n[i] = if matches!(i, 1 | 2 | 9 | 10) { 1 } else { 0 },
            v if nullish(v) => return Ok(None),
            // mongod bounds every part but the year to a 16-bit range, which also
            // keeps the arithmetic below far from overflow.
            Some(b) => match exact_int(b) {
                Some(x) if (-32768..=32767).contains(&x) || (i == 0 || i == 8) => n[i] = x,
                Some(x) => {
                    return Err(loc(
                        31034,
                        format!(
                            "'{}' must evaluate to a value in the range [-32768, 32767]; value {x} is not in range",
                            FROM_PARTS[i]
                        ),
                    ));
                }
                _ => {
                    return Err(loc(
                        40515,
                        format!(
                            "'{}' must evaluate to an integer, found {} with value {}",
                            FROM_PARTS[i],
                            type_name(b),
                            display(b)
                        ),
                    ));
                }
            },
        }
    }
    Ok(Some(n))
}

/// `$dateToParts`: [date, timezone, iso8601].
fn date_to_parts(op: Op, vals: &[Val]) -> Result<Val, QueryError> {
    let name = op.name();
    if nullish(&vals[0]) {
        return Ok(Some(Bson::Null));
    }
    let ms = date_millis(name, vals[0].as_ref().unwrap_or(&Bson::Null))?;
    let Some(offset) = offset_arg(vals, 1)? else {
        return Ok(Some(Bson::Null));
    };
    let iso = match &vals[2] {
        None => false,
        Some(Bson::Boolean(b)) => *b,
        v if nullish(v) => return Ok(Some(Bson::Null)),
        other => {
            return Err(loc(
                40521,
                format!("iso8601 must evaluate to a bool, found {}", tname(other)),
            ));
        }
    };
    let p = dates::parts(ms.saturating_add(offset * 60_000));
    let mut d = Document::new();
    let int = |x: i64| Bson::Int32(i32::try_from(x).unwrap_or(i32::MAX));
    if iso {
        let (wy, w) = p.iso_week();
        d.insert("isoWeekYear", int(wy));
        d.insert("isoWeek", int(w));
        d.insert("isoDayOfWeek", int(p.iso_day_of_week()));
    } else {
        d.insert("year", int(p.year));
        d.insert("month", int(p.month));
        d.insert("day", int(p.day));
    }
    d.insert("hour", int(p.hour));
    d.insert("minute", int(p.minute));
    d.insert("second", int(p.second));
    d.insert("millisecond", int(p.millis));
    Ok(Some(Bson::Document(d)))
}

/// `$dateFromString`: [dateString, format, timezone, onError, onNull].
fn date_from_string(vals: &[Val]) -> Result<Val, QueryError> {
    // $dateFromString: [dateString, format, timezone, onError, onNull]
    if nullish(&vals[0]) {
        return Ok(match &vals[4] {
            None => Some(Bson::Null),
            v => v.clone(),
        });
    }
    let fail = |msg: String| -> Result<Val, QueryError> {
        match &vals[3] {
            Some(fallback) => Ok(Some(fallback.clone())),
            None => Err(conversion_failure(msg)),
        }
    };
    let Some(text) = str_of(&vals[0]) else {
        return fail(format!(
            "$dateFromString requires that 'dateString' be a string, found: {}",
            tname(&vals[0])
        ));
    };
    let Some(offset) = offset_arg(vals, 2)? else {
        return Ok(Some(Bson::Null));
    };
    let parsed = match &vals[1] {
        None => dates::parse_iso(text).map(|ms| {
            // Without an explicit zone in the string, the `timezone` argument applies.
            let has_zone =
                text.ends_with('Z') || text.len() > 10 && text[10..].contains(['+', '-']);
            if has_zone { ms } else { ms - offset * 60_000 }
        }),
        Some(Bson::String(f)) => dates::parse_with_format(text, f).map(|(ms, zone)| match zone {
            Some(z) => ms - z * 60_000,
            None => ms - offset * 60_000,
        }),
        v if nullish(v) => return Ok(Some(Bson::Null)),
        other => {
            return Err(loc(
                40684,
                format!(
                    "$dateFromString requires that 'format' be a string, found: {}",
                    tname(other)
                ),
            ));
        }
    };
    match parsed {
        Some(ms) => Ok(Some(Bson::DateTime(DateTime::from_millis(ms)))),
        None => fail(format!("Error parsing date string '{text}'")),
    }
}
