//! Collations: locale-aware string comparison for filters, sorts, `distinct` and `$group`.
//!
//! Mangrove implements the part of ICU's collation that applications rely on: comparison
//! strength 1 (base letters: case and accents ignored), 2 (accents count, case ignored) and 3
//! (the default: case counts too, lowercase first), and `numericOrdering`. Strings are compared
//! level by level on their canonical decomposition (NFD): base characters case-folded first,
//! then the accents, then the case. This matches ICU for Latin, Greek and Cyrillic text; it does
//! not reproduce locale-specific tailorings (Swedish `ä` after `z`, Spanish `ñ`), and other
//! options (`caseFirst`, `alternate: "shifted"`, `backwards`) are refused with a clear error.
//!
//! A collation applies to one command: the server runs the command's matching and sorting
//! inside [`with_collation`], which sets it for the current thread. So filters, sorts and
//! expressions need no extra parameter, and every comparison of two strings in
//! [`crate::compare_values`] honours it. (The numbers of its options go through
//! [`crate::numbers`], so this module sits below `compare` and is imported by it, not the
//! reverse.)

use std::cell::{Cell, RefCell};
use std::cmp::Ordering;

use bson::{RawBsonRef, RawDocument};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::error::CodedError;
use crate::numbers::as_num;

/// A non-simple collation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collation {
    pub locale: String,
    strength: u8,
    numeric: bool,
}

thread_local! {
    static ACTIVE: RefCell<Option<Collation>> = const { RefCell::new(None) };
    /// Mirrors `ACTIVE.is_some()`: string comparisons check this cheap flag first.
    static ON: Cell<bool> = const { Cell::new(false) };
}

fn bad(message: impl Into<String>) -> CodedError {
    CodedError::bad_value(message)
}

/// A collation document's options as [`Collation::parse`] reads them, before the locale
/// decides whether the collation is simple.
struct Options {
    locale: Option<String>,
    strength: u8,
    numeric: bool,
}

impl Options {
    /// Takes one option, refusing unknown ones and those Mangrove does not implement.
    fn set(&mut self, key: &str, value: RawBsonRef<'_>) -> Result<(), CodedError> {
        let as_bool = |v: RawBsonRef<'_>| match v {
            RawBsonRef::Boolean(b) => Ok(b),
            _ => Err(CodedError::type_mismatch(format!(
                "collation option '{key}' must be a boolean"
            ))),
        };
        match key {
            "locale" => match value {
                RawBsonRef::String(l) if !l.is_empty() => self.locale = Some(l.to_owned()),
                _ => return Err(bad("Field 'locale' is invalid in the collation")),
            },
            "strength" => {
                let n = as_num(value)
                    .map(|n| n.to_f64())
                    .filter(|n| n.fract() == 0.0 && (1.0..=5.0).contains(n))
                    .ok_or_else(|| bad("collation strength must be an integer between 1 and 5"))?;
                self.strength = n as u8;
            }
            "numericOrdering" => self.numeric = as_bool(value)?,
            "caseLevel" | "normalization" | "backwards" => {
                if as_bool(value)? && key != "normalization" {
                    return Err(bad(format!(
                        "collation option '{key}: true' is not supported by Mangrove"
                    )));
                }
            }
            "caseFirst" => {
                if !matches!(value, RawBsonRef::String("off")) {
                    return Err(bad(
                        "collation option 'caseFirst' other than \"off\" is not supported by Mangrove",
                    ));
                }
            }
            "alternate" => {
                if !matches!(value, RawBsonRef::String("non-ignorable")) {
                    return Err(bad(
                        "collation option 'alternate: \"shifted\"' is not supported by Mangrove",
                    ));
                }
            }
            "maxVariable" | "version" => {}
            other => {
                return Err(CodedError::location(
                    crate::error_codes::UNKNOWN_FIELD,
                    format!("BSON field 'collation.{other}' is an unknown field."),
                ));
            }
        }
        Ok(())
    }
}

impl Collation {
    /// Parses a command's `collation`; `None` for the simple (binary) collation, which an empty
    /// document also means (mongod builds no collator for `collation: {}`).
    pub fn parse(spec: &RawDocument) -> Result<Option<Collation>, CodedError> {
        if spec.is_empty() {
            return Ok(None);
        }
        let mut options = Options {
            locale: None,
            strength: 3,
            numeric: false,
        };
        for item in spec.iter() {
            let (key, value) = item.map_err(|e| bad(format!("invalid collation: {e}")))?;
            options.set(key.as_str(), value)?;
        }
        let locale = options.locale.ok_or_else(|| {
            CodedError::location(
                crate::error_codes::MISSING_FIELD,
                "BSON field 'collation.locale' is missing but a required field",
            )
        })?;
        if locale == "simple" {
            return Ok(None);
        }
        Ok(Some(Collation {
            locale,
            strength: options.strength,
            numeric: options.numeric,
        }))
    }

    /// The bytes whose order is this collation's order of strings (equal bytes: equal
    /// strings), level after level as [`Collation::compare`] compares them: base characters
    /// (a run of digits as its value under `numericOrdering`), then accents, then case, then
    /// the string itself, each level closed by a zero below every character it holds.
    pub fn sort_key(&self, s: &str) -> Vec<u8> {
        let levels = Levels::of(s);
        let mut out = Vec::with_capacity(s.len() * 6);
        let push = |out: &mut Vec<u8>, n: u32| out.extend_from_slice(&(n + 1).to_be_bytes());
        if self.numeric {
            primary_numeric(&levels.base, &mut out);
        } else {
            for &c in &levels.base {
                push(&mut out, c as u32);
            }
        }
        out.extend_from_slice(&[0; 4]);
        if self.strength >= 2 {
            for &(at, mark) in &levels.marks {
                push(&mut out, at as u32);
                push(&mut out, mark as u32);
            }
            out.extend_from_slice(&[0; 4]);
        }
        if self.strength >= 3 {
            out.extend(levels.upper.iter().map(|&u| if u { 2 } else { 1 }));
            out.push(0);
        }
        if self.strength >= 4 {
            for c in s.chars() {
                push(&mut out, c as u32);
            }
            out.extend_from_slice(&[0; 4]);
        }
        out
    }

    /// The normalized specification an index stores, with ICU's defaults as mongod shows them.
    pub fn index_spec(&self) -> bson::Document {
        bson::doc! {
            "locale": &self.locale,
            "caseLevel": false,
            "caseFirst": "off",
            "strength": i32::from(self.strength),
            "numericOrdering": self.numeric,
            "alternate": "non-ignorable",
            "maxVariable": "punct",
            "normalization": false,
            "backwards": false,
            "version": "57.1",
        }
    }

    fn compare(&self, a: &str, b: &str) -> Ordering {
        let (x, y) = (Levels::of(a), Levels::of(b));
        let primary = if self.numeric {
            numeric_cmp(&x.base, &y.base)
        } else {
            x.base.cmp(&y.base)
        };
        primary
            .then_with(|| {
                if self.strength >= 2 {
                    x.marks.cmp(&y.marks)
                } else {
                    Ordering::Equal
                }
            })
            .then_with(|| {
                if self.strength >= 3 {
                    x.upper.cmp(&y.upper)
                } else {
                    Ordering::Equal
                }
            })
            .then_with(|| {
                // Strength 4 and 5 ("identical") tell apart what the levels above do not.
                if self.strength >= 4 {
                    a.cmp(b)
                } else {
                    Ordering::Equal
                }
            })
    }
}

/// A string taken apart into the levels a collation compares.
struct Levels {
    /// Base characters, case-folded.
    base: Vec<char>,
    /// Accents, each with the position of the base character it follows.
    marks: Vec<(usize, char)>,
    /// For each base character, whether it was uppercase (lowercase sorts first).
    upper: Vec<bool>,
}

impl Levels {
    fn of(s: &str) -> Levels {
        let mut l = Levels {
            base: Vec::with_capacity(s.len()),
            marks: Vec::new(),
            upper: Vec::with_capacity(s.len()),
        };
        for c in s.nfd() {
            if is_combining_mark(c) {
                l.marks.push((l.base.len(), c));
                continue;
            }
            l.upper.push(c.is_uppercase());
            l.base.extend(c.to_lowercase());
        }
        l
    }
}

/// The primary level of a sort key under `numericOrdering`: a run of digits is one unit that
/// sorts where any digit does (all digits are consecutive characters, so against any other
/// character it compares as a digit would), then by its length without leading zeros, then by
/// its digits, as [`numeric_cmp`] compares.
fn primary_numeric(base: &[char], out: &mut Vec<u8>) {
    let push = |out: &mut Vec<u8>, n: u32| out.extend_from_slice(&(n + 1).to_be_bytes());
    let mut i = 0;
    while i < base.len() {
        if !base[i].is_ascii_digit() {
            push(out, base[i] as u32);
            i += 1;
            continue;
        }
        let start = i;
        while i < base.len() && base[i].is_ascii_digit() {
            i += 1;
        }
        let digits: Vec<char> = base[start..i]
            .iter()
            .copied()
            .skip_while(|&d| d == '0')
            .collect();
        push(out, '0' as u32);
        push(out, digits.len() as u32);
        for d in digits {
            push(out, d as u32);
        }
    }
}

/// Compares with runs of ASCII digits taken as numbers (`numericOrdering: true`).
fn numeric_cmp(a: &[char], b: &[char]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let si = i;
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let x: String = a[si..i].iter().collect::<String>();
            let y: String = b[sj..j].iter().collect::<String>();
            let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
            let o = x.len().cmp(&y.len()).then_with(|| x.cmp(y));
            if o != Ordering::Equal {
                return o;
            }
            continue;
        }
        let o = a[i].cmp(&b[j]);
        if o != Ordering::Equal {
            return o;
        }
        i += 1;
        j += 1;
    }
    (a.len() - i).cmp(&(b.len() - j))
}

/// Runs `f` with `collation` governing string comparisons on this thread (none: binary).
/// Nesting restores the outer collation.
pub fn with_collation<T>(collation: Option<&Collation>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Collation>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            ON.with(|on| on.set(previous.is_some()));
            ACTIVE.with(|a| *a.borrow_mut() = previous);
        }
    }
    let previous = ACTIVE.with(|a| std::mem::replace(&mut *a.borrow_mut(), collation.cloned()));
    ON.with(|on| on.set(collation.is_some()));
    let _restore = Restore(previous);
    f()
}

/// The active collation's order of two strings, or `None` when comparison is binary.
pub fn compare_strings(a: &str, b: &str) -> Option<Ordering> {
    if !ON.with(Cell::get) {
        return None;
    }
    ACTIVE.with(|c| c.borrow().as_ref().map(|c| c.compare(a, b)))
}

/// The collation active on this thread, if any (an index serves a query only under its own).
pub fn active_collation() -> Option<Collation> {
    if !ON.with(Cell::get) {
        return None;
    }
    ACTIVE.with(|c| c.borrow().clone())
}

/// Whether a collation is active on this thread.
pub fn collation_active() -> bool {
    ON.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(strength: u8) -> Collation {
        Collation {
            locale: "en".into(),
            strength,
            numeric: false,
        }
    }

    #[test]
    fn strengths() {
        assert_eq!(c(1).compare("cafe", "Café"), Ordering::Equal);
        assert_eq!(c(2).compare("cafe", "CAFE"), Ordering::Equal);
        assert_eq!(c(2).compare("cafe", "café"), Ordering::Less);
        assert_eq!(c(3).compare("ping", "Ping"), Ordering::Less);
        assert_eq!(c(3).compare("Ping", "pinh"), Ordering::Less);
        // Binary order would put every uppercase letter first.
        assert_eq!(c(3).compare("apple", "Banana"), Ordering::Less);
        assert_eq!(c(1).compare("résumé", "resume"), Ordering::Equal);
    }

    #[test]
    fn numeric_ordering() {
        let n = Collation {
            numeric: true,
            ..c(3)
        };
        assert_eq!(n.compare("item10", "item9"), Ordering::Greater);
        assert_eq!(n.compare("item010", "item9"), Ordering::Greater);
        assert_eq!(c(3).compare("item10", "item9"), Ordering::Less);
    }

    /// Sort keys order strings exactly as `compare` does, over words that exercise every level.
    #[test]
    fn sort_keys_agree_with_compare() {
        let words = [
            "", "a", "A", "á", "Á", "ab", "aB", "Ab", "b", "café", "cafe", "Café", "CAFE", "cafés",
            "item9", "item10", "item010", "item0", "item", "9", "10", "x1y", "x01y", "x1", "é",
            "e\u{301}", "z", "Z", "ß", "ss", "a b", "a-b", "résumé", "resume", "Resume",
        ];
        for strength in 1..=5 {
            for numeric in [false, true] {
                let col = Collation {
                    locale: "en".into(),
                    strength,
                    numeric,
                };
                for a in words {
                    for b in words {
                        let by_keys = col.sort_key(a).cmp(&col.sort_key(b));
                        assert_eq!(
                            by_keys,
                            col.compare(a, b),
                            "{a:?} {b:?} {strength} {numeric}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn active_only_inside() {
        assert_eq!(compare_strings("a", "A"), None);
        with_collation(Some(&c(2)), || {
            assert_eq!(compare_strings("a", "A"), Some(Ordering::Equal));
            with_collation(None, || assert_eq!(compare_strings("a", "A"), None));
            assert_eq!(compare_strings("a", "A"), Some(Ordering::Equal));
        });
        assert_eq!(compare_strings("a", "A"), None);
    }
}
