//! UTC (and fixed-offset) calendar arithmetic on epoch milliseconds, for the date expression
//! operators. Civil-date conversion follows the proleptic Gregorian calendar, as BSON dates do.

use crate::error::QueryError;

const MS_PER_DAY: i64 = 86_400_000;

/// A date broken into the fields the date operators report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parts {
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub hour: i64,
    pub minute: i64,
    pub second: i64,
    pub millis: i64,
    /// 1 (Sunday) to 7 (Saturday), as `$dayOfWeek`.
    pub day_of_week: i64,
    /// 1 to 366.
    pub day_of_year: i64,
}

/// Days since 1970-01-01 to (year, month, day).
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) to days since 1970-01-01.
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y.saturating_sub(1) } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    // Saturates for years far beyond any representable date rather than overflowing.
    era.saturating_mul(146_097).saturating_add(doe - 719_468)
}

pub(crate) fn parts(ms: i64) -> Parts {
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    Parts {
        year,
        month,
        day,
        hour: in_day / 3_600_000,
        minute: in_day / 60_000 % 60,
        second: in_day / 1000 % 60,
        millis: in_day % 1000,
        // 1970-01-01 was a Thursday.
        day_of_week: (days + 4).rem_euclid(7) + 1,
        day_of_year: days - days_from_civil(year, 1, 1) + 1,
    }
}

impl Parts {
    /// `$week`: weeks start on Sunday; days before the year's first Sunday are week 0.
    pub(crate) fn week(&self) -> i64 {
        (self.day_of_year - 1 + 7 - (self.day_of_week - 1)) / 7
    }

    /// 1 (Monday) to 7 (Sunday).
    pub(crate) fn iso_day_of_week(&self) -> i64 {
        (self.day_of_week + 5) % 7 + 1
    }

    /// (ISO week-numbering year, ISO week).
    pub(crate) fn iso_week(&self) -> (i64, i64) {
        let week = (self.day_of_year - self.iso_day_of_week() + 10) / 7;
        if week < 1 {
            (self.year - 1, iso_weeks_in(self.year - 1))
        } else if week > iso_weeks_in(self.year) {
            (self.year + 1, 1)
        } else {
            (self.year, week)
        }
    }
}

fn iso_weeks_in(year: i64) -> i64 {
    let p = |y: i64| (y + y.div_euclid(4) - y.div_euclid(100) + y.div_euclid(400)).rem_euclid(7);
    if p(year) == 4 || p(year - 1) == 3 {
        53
    } else {
        52
    }
}

/// A time zone as minutes east of UTC. Olson names other than UTC need a tz database, which
/// Mangrove does not carry, so they are refused rather than silently treated as UTC.
pub(crate) fn parse_timezone(tz: &str) -> Result<i64, QueryError> {
    if matches!(tz, "UTC" | "GMT" | "Z" | "Etc/UTC" | "Etc/GMT" | "UCT") {
        return Ok(0);
    }
    let bad = || {
        QueryError::location(
            40485,
            format!(
                "unrecognized time zone identifier: \"{tz}\" (Mangrove supports only UTC and fixed offsets such as +05:30)"
            ),
        )
    };
    let (sign, rest) = match tz.as_bytes().first() {
        Some(b'+') => (1, &tz[1..]),
        Some(b'-') => (-1, &tz[1..]),
        _ => return Err(bad()),
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) || !matches!(digits.len(), 2 | 4) {
        return Err(bad());
    }
    let hours: i64 = digits[..2].parse().map_err(|_| bad())?;
    let minutes: i64 = if digits.len() == 4 {
        digits[2..].parse().map_err(|_| bad())?
    } else {
        0
    };
    if hours > 23 || minutes > 59 {
        return Err(bad());
    }
    Ok(sign * (hours * 60 + minutes))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// `$dateToString`'s format language; `offset` is the zone in minutes east of UTC.
pub(crate) fn format(ms: i64, fmt: &str, offset: i64) -> Result<String, QueryError> {
    let p = parts(ms.saturating_add(offset.saturating_mul(60_000)));
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(spec) = chars.next() else {
            return Err(QueryError::location(
                18535,
                "Unmatched '%' at end of format string",
            ));
        };
        let month_name = MONTHS[(p.month - 1).clamp(0, 11) as usize];
        match spec {
            'Y' => out.push_str(&format!("{:04}", p.year)),
            'm' => out.push_str(&format!("{:02}", p.month)),
            'd' => out.push_str(&format!("{:02}", p.day)),
            'H' => out.push_str(&format!("{:02}", p.hour)),
            'M' => out.push_str(&format!("{:02}", p.minute)),
            'S' => out.push_str(&format!("{:02}", p.second)),
            'L' => out.push_str(&format!("{:03}", p.millis)),
            'j' => out.push_str(&format!("{:03}", p.day_of_year)),
            'w' => out.push_str(&p.day_of_week.to_string()),
            'u' => out.push_str(&p.iso_day_of_week().to_string()),
            'U' => out.push_str(&format!("{:02}", p.week())),
            'V' => out.push_str(&format!("{:02}", p.iso_week().1)),
            'G' => out.push_str(&format!("{:04}", p.iso_week().0)),
            'b' => out.push_str(&month_name[..3]),
            'B' => out.push_str(month_name),
            'z' => {
                let sign = if offset < 0 { '-' } else { '+' };
                out.push_str(&format!(
                    "{sign}{:02}{:02}",
                    offset.abs() / 60,
                    offset.abs() % 60
                ));
            }
            'Z' => {
                if offset >= 0 {
                    out.push('+');
                }
                out.push_str(&offset.to_string());
            }
            '%' => out.push('%'),
            other => {
                return Err(QueryError::location(
                    18536,
                    format!("Invalid format character '%{other}' in format string"),
                ));
            }
        }
    }
    Ok(out)
}

/// The ISO-8601 form `$toString` gives dates: `2024-01-31T12:00:00.000Z`.
pub(crate) fn iso(ms: i64) -> String {
    format(ms, "%Y-%m-%dT%H:%M:%S.%LZ", 0).unwrap_or_default()
}

/// Parses `YYYY-MM-DD[(T| )HH:MM[:SS[.fff]]][Z|±HH[:MM]]`, the forms `$toDate` accepts in
/// practice; anything else is `None`.
pub(crate) fn parse_iso(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let year = num(0, 4)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let month = num(5, 2)?;
    let day = num(8, 2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut ms = days_from_civil(year, month, day) * MS_PER_DAY;
    let mut i = 10;
    if matches!(b.get(i), Some(b'T' | b' ')) {
        let hour = num(i + 1, 2)?;
        if b.get(i + 3) != Some(&b':') {
            return None;
        }
        let minute = num(i + 4, 2)?;
        i += 6;
        let mut second = 0;
        let mut millis = 0;
        if b.get(i) == Some(&b':') {
            second = num(i + 1, 2)?;
            i += 3;
            if b.get(i) == Some(&b'.') {
                let start = i + 1;
                let mut end = start;
                while b.get(end).is_some_and(u8::is_ascii_digit) {
                    end += 1;
                }
                if end == start {
                    return None;
                }
                let frac = &s[start..end.min(start + 3)];
                millis = format!("{frac:0<3}").parse().ok()?;
                i = end;
            }
        }
        if hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        ms += hour * 3_600_000 + minute * 60_000 + second * 1000 + millis;
    }
    match b.get(i) {
        None => Some(ms),
        Some(b'Z') if i + 1 == b.len() => Some(ms),
        Some(b'+' | b'-') => {
            let offset = parse_timezone(&s[i..]).ok()?;
            Some(ms - offset * 60_000)
        }
        _ => None,
    }
}

/// Parses `s` by a `$dateFromString` format (`%Y %m %d %H %M %S %L %j %z %Z %%`); returns the
/// local epoch millis and the zone offset in minutes if the string carried one.
pub(crate) fn parse_with_format(s: &str, fmt: &str) -> Option<(i64, Option<i64>)> {
    let b = s.as_bytes();
    let mut i = 0;
    let (mut year, mut month, mut day) = (1970, 1, 1);
    let mut day_of_year = None;
    let (mut hour, mut minute, mut second, mut millis) = (0, 0, 0, 0);
    let mut zone = None;
    let digits = |i: &mut usize, max: usize| -> Option<i64> {
        let start = *i;
        while *i < b.len() && *i - start < max && b[*i].is_ascii_digit() {
            *i += 1;
        }
        if *i == start {
            return None;
        }
        s[start..*i].parse().ok()
    };
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            let mut buf = [0u8; 4];
            let lit = c.encode_utf8(&mut buf).as_bytes();
            if b.get(i..i + lit.len())? != lit {
                return None;
            }
            i += lit.len();
            continue;
        }
        match chars.next()? {
            'Y' => year = digits(&mut i, 4)?,
            'm' => month = digits(&mut i, 2)?,
            'd' => day = digits(&mut i, 2)?,
            'H' => hour = digits(&mut i, 2)?,
            'M' => minute = digits(&mut i, 2)?,
            'S' => second = digits(&mut i, 2)?,
            'L' => millis = digits(&mut i, 3)?,
            'j' => day_of_year = Some(digits(&mut i, 3)?),
            'z' | 'Z' => zone = Some(parse_zone(s, &mut i)?),
            '%' => {
                if b.get(i) != Some(&b'%') {
                    return None;
                }
                i += 1;
            }
            _ => return None,
        }
    }
    if i != b.len() || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = match day_of_year {
        Some(n) if (1..=366).contains(&n) => days_from_civil(year, 1, 1) + n - 1,
        Some(_) => return None,
        None => days_from_civil(year, month, day),
    };
    let ms = days * 86_400_000 + hour * 3_600_000 + minute * 60_000 + second * 1000 + millis;
    Some((ms, zone))
}

/// A `%z`/`%Z` zone at `i`: `Z`, or `+hh[:]mm`/`-hh[:]mm`, as minutes east of UTC.
fn parse_zone(s: &str, i: &mut usize) -> Option<i64> {
    let b = s.as_bytes();
    let start = *i;
    if !matches!(b.get(*i), Some(b'+' | b'-')) {
        if b.get(*i) == Some(&b'Z') {
            *i += 1;
            return Some(0);
        }
        return None;
    }
    *i += 1;
    while *i < b.len() && (b[*i].is_ascii_digit() || b[*i] == b':') {
        *i += 1;
    }
    parse_timezone(&s[start..*i]).ok()
}

pub(crate) fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip_and_known_dates() {
        for days in [-800_000, -1, 0, 1, 59, 365, 11_016, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        // 2024-02-29T13:14:15.678Z, a Thursday.
        let p = parts(1_709_212_455_678);
        assert_eq!(
            (p.year, p.month, p.day, p.hour, p.minute, p.second, p.millis),
            (2024, 2, 29, 13, 14, 15, 678)
        );
        assert_eq!(p.day_of_week, 5);
        assert_eq!(p.day_of_year, 60);
        assert_eq!(
            parse_iso("2024-02-29T13:14:15.678Z"),
            Some(1_709_212_455_678)
        );
        assert_eq!(parse_iso("2024-02-30"), None);
        // 2021-01-01 is a Friday in ISO week 53 of 2020.
        let p = parts(parse_iso("2021-01-01").unwrap());
        assert_eq!(p.iso_week(), (2020, 53));
        assert_eq!(p.week(), 0);
    }
}
