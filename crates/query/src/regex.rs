//! A compiled query regular expression (`$regex`, `/.../` values, `$regexMatch`…), shared by
//! filters, updates, `$jsonSchema` and aggregation expressions. A leaf: it imports no other
//! query module but the error type.

use bson::RawBsonRef;

use crate::error::QueryError;

#[derive(Debug, Clone)]
pub(crate) struct Re {
    regex: regex::Regex,
    pattern: String,
    options: String,
}

impl Re {
    pub(crate) fn compile(pattern: &str, options: &str) -> Result<Re, QueryError> {
        let mut builder = regex::RegexBuilder::new(pattern);
        for c in options.chars() {
            match c {
                'i' => builder.case_insensitive(true),
                'm' => builder.multi_line(true),
                's' => builder.dot_matches_new_line(true),
                'x' => builder.ignore_whitespace(true),
                // 'u' and 'l' only affect PCRE's character classes; ours are Unicode already.
                'u' | 'l' => &mut builder,
                other => {
                    return Err(QueryError::location(
                        51108,
                        format!("invalid flag in regex options: {other}"),
                    ));
                }
            };
        }
        // Keeps a hostile pattern from consuming unbounded memory at compile time.
        builder.size_limit(8 << 20).dfa_size_limit(8 << 20);
        let regex = builder.build().map_err(|e| {
            QueryError::location(51091, format!("Regular expression is invalid: {e}"))
        })?;
        Ok(Re {
            regex,
            pattern: pattern.to_owned(),
            options: options.to_owned(),
        })
    }

    pub(crate) fn regex(&self) -> &regex::Regex {
        &self.regex
    }

    pub(crate) fn matches(&self, v: RawBsonRef<'_>) -> bool {
        match v {
            RawBsonRef::String(s) | RawBsonRef::Symbol(s) => self.regex.is_match(s),
            RawBsonRef::RegularExpression(r) => {
                r.pattern.as_str() == self.pattern
                    && sorted_options(r.options.as_str()) == sorted_options(&self.options)
            }
            _ => false,
        }
    }
}

fn sorted_options(o: &str) -> Vec<char> {
    let mut v: Vec<char> = o.chars().collect();
    v.sort_unstable();
    v
}
