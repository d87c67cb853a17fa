//! A compiled query regular expression (`$regex`, `/.../` values, `$regexMatch`…), shared by
//! filters, updates, `$jsonSchema` and aggregation expressions. A leaf: it imports no other
//! query module but the error type.
//!
//! mongod uses PCRE2. Most patterns compile with the `regex` crate, whose matching is linear in
//! the input; a pattern it refuses because it needs backtracking (look-around, back-references,
//! atomic groups, possessive quantifiers) compiles with `fancy-regex` instead, whose backtracking
//! is bounded by [`BACKTRACK_LIMIT`] steps per match, so a catastrophic pattern cannot stall the
//! server. A match that reaches the bound fails the operation with mongod's error for a regex
//! that could not run (51156) instead of being taken as "no match"; it is recorded in a
//! thread-local that `Filter::matches_checked` and the expression evaluator report.

use std::cell::RefCell;

use bson::RawBsonRef;

use crate::error::QueryError;

/// Backtracking steps one match of a backtracking pattern may take (about 10–50 ms).
pub(crate) const BACKTRACK_LIMIT: usize = 1_000_000;

/// Compiled-program size bound, so a hostile pattern cannot take unbounded memory to compile.
const SIZE_LIMIT: usize = 8 << 20;

thread_local! {
    /// The first match that failed (the backtracking bound) since it was last taken.
    static MATCH_ERROR: RefCell<Option<QueryError>> = const { RefCell::new(None) };
}

thread_local! {
    /// Backtracking patterns compiled on this thread: a parser compares it before and after to
    /// learn whether what it parsed holds one (and must check for match errors).
    static BACKTRACKING_COMPILED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

pub(crate) fn backtracking_compiled() -> u64 {
    BACKTRACKING_COMPILED.with(std::cell::Cell::get)
}

/// Takes the error of a match that could not run, if one happened on this thread.
pub(crate) fn take_match_error() -> Option<QueryError> {
    MATCH_ERROR.with(|slot| slot.borrow_mut().take())
}

fn note_match_error(pattern: &str, e: &fancy_regex::Error) {
    MATCH_ERROR.with(|slot| {
        slot.borrow_mut().get_or_insert_with(|| {
            QueryError::location(
                51156,
                format!(
                    "Error using regex: /{pattern}/ could not be matched: {e} (it backtracks more than {BACKTRACK_LIMIT} steps; simplify the pattern or anchor it)"
                ),
            )
        });
    });
}

#[derive(Debug, Clone)]
enum Engine {
    Linear(regex::Regex),
    Backtracking(Box<fancy_regex::Regex>),
}

#[derive(Debug, Clone)]
pub(crate) struct Re {
    engine: Engine,
    pattern: String,
    options: String,
}

/// One match: each group's start (in bytes) and text, group 0 the whole match.
pub(crate) type Groups<'s> = Vec<Option<(usize, &'s str)>>;

impl Re {
    pub(crate) fn compile(pattern: &str, options: &str) -> Result<Re, QueryError> {
        let flags = Flags::parse(options)?;
        let engine = match flags.linear(pattern) {
            Ok(regex) => Engine::Linear(regex),
            Err(linear_error) => {
                BACKTRACKING_COMPILED.with(|c| c.set(c.get() + 1));
                Engine::Backtracking(Box::new(flags.backtracking(pattern).map_err(|e| {
                    QueryError::location(
                        51091,
                        format!("Regular expression is invalid: {e} ({linear_error})"),
                    )
                })?))
            }
        };
        Ok(Re {
            engine,
            pattern: pattern.to_owned(),
            options: options.to_owned(),
        })
    }

    /// Whether `s` has a match (a match that could not run counts as none, and is recorded).
    pub(crate) fn is_match(&self, s: &str) -> bool {
        match &self.engine {
            Engine::Linear(r) => r.is_match(s),
            Engine::Backtracking(r) => r.is_match(s).unwrap_or_else(|e| {
                note_match_error(&self.pattern, &e);
                false
            }),
        }
    }

    /// Calls `each` with every match's groups, leftmost first, until it returns `false`.
    pub(crate) fn for_each_match<'s>(
        &self,
        s: &'s str,
        each: &mut dyn FnMut(Groups<'s>) -> Result<bool, QueryError>,
    ) -> Result<(), QueryError> {
        match &self.engine {
            Engine::Linear(r) => {
                for caps in r.captures_iter(s) {
                    let groups = caps.iter().map(|m| m.map(|m| (m.start(), m.as_str())));
                    if !each(groups.collect())? {
                        break;
                    }
                }
            }
            Engine::Backtracking(r) => {
                for caps in r.captures_iter(s) {
                    let caps = caps.map_err(|e| {
                        note_match_error(&self.pattern, &e);
                        take_match_error().unwrap_or_else(|| QueryError::bad_value(e.to_string()))
                    })?;
                    let groups = caps.iter().map(|m| m.map(|m| (m.start(), m.as_str())));
                    if !each(groups.collect())? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    pub(crate) fn matches(&self, v: RawBsonRef<'_>) -> bool {
        match v {
            RawBsonRef::String(s) | RawBsonRef::Symbol(s) => self.is_match(s),
            RawBsonRef::RegularExpression(r) => {
                r.pattern.as_str() == self.pattern
                    && sorted_options(r.options.as_str()) == sorted_options(&self.options)
            }
            _ => false,
        }
    }
}

/// The options of a pattern: mongod's `i`, `m`, `s`, `x` (`u` and `l` change nothing here).
struct Flags {
    case_insensitive: bool,
    multi_line: bool,
    dot_all: bool,
    extended: bool,
}

impl Flags {
    fn parse(options: &str) -> Result<Flags, QueryError> {
        let mut f = Flags {
            case_insensitive: false,
            multi_line: false,
            dot_all: false,
            extended: false,
        };
        for c in options.chars() {
            match c {
                'i' => f.case_insensitive = true,
                'm' => f.multi_line = true,
                's' => f.dot_all = true,
                'x' => f.extended = true,
                // 'u' and 'l' only affect PCRE's character classes; ours are Unicode already.
                'u' | 'l' => {}
                other => {
                    return Err(QueryError::location(
                        51108,
                        format!("invalid flag in regex options: {other}"),
                    ));
                }
            }
        }
        Ok(f)
    }

    fn linear(&self, pattern: &str) -> Result<regex::Regex, regex::Error> {
        regex::RegexBuilder::new(pattern)
            .case_insensitive(self.case_insensitive)
            .multi_line(self.multi_line)
            .dot_matches_new_line(self.dot_all)
            .ignore_whitespace(self.extended)
            .size_limit(SIZE_LIMIT)
            .dfa_size_limit(SIZE_LIMIT)
            .build()
    }

    fn backtracking(&self, pattern: &str) -> Result<fancy_regex::Regex, Box<fancy_regex::Error>> {
        // This engine takes the other flags inline only.
        let mut inline = String::new();
        for (on, flag) in [
            (self.multi_line, 'm'),
            (self.dot_all, 's'),
            (self.extended, 'x'),
        ] {
            if on {
                inline.push(flag);
            }
        }
        let pattern = if inline.is_empty() {
            pattern.to_string()
        } else {
            format!("(?{inline}){pattern}")
        };
        let mut b = fancy_regex::RegexBuilder::new(&pattern);
        b.case_insensitive(self.case_insensitive)
            .backtrack_limit(BACKTRACK_LIMIT)
            .delegate_size_limit(SIZE_LIMIT)
            .delegate_dfa_size_limit(SIZE_LIMIT);
        b.build().map_err(Box::new)
    }
}

fn sorted_options(o: &str) -> Vec<char> {
    let mut v: Vec<char> = o.chars().collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_around_and_back_references_work_as_in_pcre() {
        let re = Re::compile(r"^(?=.*\d)(?!.*admin)\w+$", "").unwrap();
        assert!(re.is_match("user42"));
        assert!(!re.is_match("admin42"));
        assert!(!re.is_match("nodigits"));
        let twice = Re::compile(r"\b(\w+) \1\b", "i").unwrap();
        assert!(twice.is_match("IT is is so"));
        assert!(!twice.is_match("it is not"));
        let behind = Re::compile(r"(?<=\$)\d+", "").unwrap();
        let mut found = Vec::new();
        behind
            .for_each_match("cost $42 or $7", &mut |g| {
                found.push(g[0].map(|(_, t)| t.to_string()));
                Ok(true)
            })
            .unwrap();
        assert_eq!(found, vec![Some("42".to_string()), Some("7".to_string())]);
    }

    #[test]
    fn a_catastrophic_pattern_is_stopped_and_reported() {
        let re = Re::compile(r"^(a+)+\1$", "").unwrap();
        let input = format!("{}b", "a".repeat(40));
        assert!(take_match_error().is_none());
        assert!(!re.is_match(&input));
        let e = take_match_error().expect("the bound was reached");
        assert_eq!(e.code, 51156);
        // Taken once.
        assert!(take_match_error().is_none());
    }

    #[test]
    fn invalid_patterns_and_flags_are_refused() {
        assert_eq!(Re::compile("(", "").unwrap_err().code, 51091);
        assert_eq!(Re::compile("a", "q").unwrap_err().code, 51108);
    }
}
