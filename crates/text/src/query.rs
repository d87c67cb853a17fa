//! `$text`'s arguments and the parsed `$search` string, as mongod parses it (`FTSQueryImpl`):
//! words are OR'ed terms; a quoted phrase must appear as written (and its words are terms
//! too); a `-` right before a word or phrase (after white space or at the start) negates it,
//! up to the next white space. Terms are the tokenizer's, in the query's language: stop words
//! removed, stemmed, folded unless `$caseSensitive`/`$diacriticSensitive`. The number of terms
//! and phrases is bounded ([`MAX_QUERY_TERMS`]).

use std::collections::BTreeSet;

use bson::{Bson, Document};

use crate::error::TextError;
use crate::language::Language;
use crate::tokenize::{Options, Tokenizer};

/// Terms plus phrases one `$search` may hold.
pub const MAX_QUERY_TERMS: usize = 1_000;

/// `$text`'s arguments, checked but not yet parsed (the language may be the index's).
#[derive(Debug, Clone, PartialEq)]
pub struct TextSearch {
    pub search: String,
    pub language: Option<String>,
    pub case_sensitive: bool,
    pub diacritic_sensitive: bool,
}

/// A parsed `$search`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TextQuery {
    pub language: Option<Language>,
    /// Positive terms as the matcher compares them (case/diacritic sensitive if asked).
    pub terms: BTreeSet<String>,
    pub negated_terms: BTreeSet<String>,
    pub phrases: Vec<String>,
    pub negated_phrases: Vec<String>,
    /// Positive terms folded: the index keys to scan and the terms a score sums.
    pub terms_for_bounds: BTreeSet<String>,
    pub case_sensitive: bool,
    pub diacritic_sensitive: bool,
}

fn bad(message: impl Into<String>) -> TextError {
    TextError::bad_value(message)
}

fn flag(value: &Bson, name: &str) -> Result<bool, TextError> {
    match value {
        Bson::Boolean(b) => Ok(*b),
        _ => Err(TextError::new(
            14,
            "TypeMismatch",
            format!("{name} requires a boolean value"),
        )),
    }
}

impl TextSearch {
    /// `$text`'s argument document, checked as mongod checks it.
    pub fn from_document(spec: &Document) -> Result<TextSearch, TextError> {
        let mut out = TextSearch {
            search: String::new(),
            language: None,
            case_sensitive: false,
            diacritic_sensitive: false,
        };
        let mut has_search = false;
        for (name, value) in spec {
            match (name.as_str(), value) {
                ("$search", Bson::String(s)) => {
                    out.search = s.clone();
                    has_search = true;
                }
                ("$search", _) => return Err(bad("$search requires a string value")),
                ("$language", Bson::String(s)) => out.language = Some(s.clone()),
                ("$language", _) => return Err(bad("$language requires a string value")),
                ("$caseSensitive", v) => out.case_sensitive = flag(v, "$caseSensitive")?,
                ("$diacriticSensitive", v) => {
                    out.diacritic_sensitive = flag(v, "$diacriticSensitive")?
                }
                _ => return Err(bad(format!("extra fields in $text: {name}"))),
            }
        }
        if !has_search {
            return Err(bad("$search needs a String"));
        }
        if let Some(l) = &out.language {
            Language::parse_query(l)?;
        }
        Ok(out)
    }
}

/// The parser's state across the query's characters.
#[derive(Default)]
struct Parse {
    negating: bool,
    in_phrase: bool,
    phrase_start: usize,
}

impl TextQuery {
    /// Parses `search` in `language` (the `$language`, else the index's default).
    pub fn parse(search: &TextSearch, default_language: Language) -> Result<TextQuery, TextError> {
        let language = match &search.language {
            Some(l) => Language::parse_query(l)?,
            None => default_language,
        };
        let mut q = TextQuery {
            language: Some(language),
            case_sensitive: search.case_sensitive,
            diacritic_sensitive: search.diacritic_sensitive,
            ..TextQuery::default()
        };
        let text = search.search.as_str();
        let mut st = Parse::default();
        let mut word_start: Option<usize> = None;
        let mut after_space = true;
        for (i, c) in text
            .char_indices()
            .chain(std::iter::once((text.len(), ' ')))
        {
            let special = c.is_whitespace() || c == '-' || c == '"';
            if !special {
                word_start.get_or_insert(i);
                continue;
            }
            if let Some(start) = word_start.take() {
                q.word(&text[start..i], &mut st, after_space, language);
                after_space = false;
            }
            if c.is_whitespace() {
                after_space = true;
                continue;
            }
            q.delimiter(c, i, text, &mut st, after_space);
            after_space = false;
        }
        q.check_size()?;
        Ok(q)
    }

    fn word(&mut self, word: &str, st: &mut Parse, after_space: bool, language: Language) {
        if st.in_phrase && st.negating {
            return;
        }
        if st.negating && after_space {
            st.negating = false;
        }
        self.add_terms(word, st.negating, language);
    }

    fn delimiter(&mut self, c: char, at: usize, text: &str, st: &mut Parse, after_space: bool) {
        if c == '-' {
            if !st.in_phrase && after_space {
                st.negating = true;
            }
            return;
        }
        // A quote: ends the open phrase, or opens one.
        if st.in_phrase {
            let phrase = text[st.phrase_start..at].to_string();
            if st.negating {
                self.negated_phrases.push(phrase);
            } else {
                self.phrases.push(phrase);
            }
            st.in_phrase = false;
        } else {
            st.in_phrase = true;
            if st.negating && after_space {
                st.negating = false;
            }
            st.phrase_start = at + 1;
        }
    }

    fn add_terms(&mut self, word: &str, negated: bool, language: Language) {
        if self.terms.len() + self.negated_terms.len() > MAX_QUERY_TERMS {
            return;
        }
        let folded = Tokenizer::new(language, Options::INDEX);
        let exact = Tokenizer::new(
            language,
            Options {
                filter_stop_words: true,
                case_sensitive: self.case_sensitive,
                diacritic_sensitive: self.diacritic_sensitive,
            },
        );
        if !negated {
            self.terms_for_bounds.extend(folded.terms(word));
        }
        let active = if negated {
            &mut self.negated_terms
        } else {
            &mut self.terms
        };
        active.extend(exact.terms(word));
    }

    fn check_size(&self) -> Result<(), TextError> {
        let n = self.terms.len()
            + self.negated_terms.len()
            + self.phrases.len()
            + self.negated_phrases.len();
        if n > MAX_QUERY_TERMS {
            return Err(bad(format!(
                "$text: the search has more than {MAX_QUERY_TERMS} terms and phrases"
            )));
        }
        Ok(())
    }

    /// mongod's `parsedTextQuery` for `explain`.
    pub fn explain(&self) -> Document {
        let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>();
        bson::doc! {
            "terms": list(&self.terms),
            "negatedTerms": list(&self.negated_terms),
            "phrases": self.phrases.clone(),
            "negatedPhrases": self.negated_phrases.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(search: &str) -> TextQuery {
        let s = TextSearch {
            search: search.into(),
            language: None,
            case_sensitive: false,
            diacritic_sensitive: false,
        };
        TextQuery::parse(&s, Language::English).unwrap()
    }

    fn set(words: &[&str]) -> BTreeSet<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn terms_phrases_and_negations() {
        let q = parse("running coffee -tea \"the espresso bar\" -\"iced latte\" the");
        assert_eq!(q.terms, set(&["run", "coffe", "espresso", "bar"]));
        assert_eq!(q.negated_terms, set(&["tea"]));
        assert_eq!(q.phrases, ["the espresso bar"]);
        assert_eq!(q.negated_phrases, ["iced latte"]);
        assert_eq!(q.terms_for_bounds, q.terms);
    }

    #[test]
    fn negation_lasts_until_white_space() {
        let q = parse("-foo-bar baz - qux pq-rs");
        assert_eq!(q.negated_terms, set(&["foo", "bar"]));
        assert_eq!(q.terms, set(&["baz", "qux", "pq", "rs"]));
        let p = parse("-\"one two\"-\"three four\"");
        assert_eq!(p.negated_phrases, ["one two", "three four"]);
        assert!(p.terms.is_empty());
    }

    #[test]
    fn sensitive_terms_keep_case_but_bounds_fold() {
        let s = TextSearch {
            search: "Café".into(),
            language: Some("none".into()),
            case_sensitive: true,
            diacritic_sensitive: true,
        };
        let q = TextQuery::parse(&s, Language::English).unwrap();
        assert_eq!(q.terms, set(&["Café"]));
        assert_eq!(q.terms_for_bounds, set(&["cafe"]));
    }

    #[test]
    fn arguments_checked() {
        use bson::doc;
        assert!(TextSearch::from_document(&doc! { "$search": "a", "$language": "fr" }).is_ok());
        assert_eq!(TextSearch::from_document(&doc! {}).unwrap_err().code, 2);
        assert_eq!(
            TextSearch::from_document(&doc! { "$search": 1 })
                .unwrap_err()
                .code,
            2
        );
        assert_eq!(
            TextSearch::from_document(&doc! { "$search": "a", "$language": "xx" })
                .unwrap_err()
                .code,
            2
        );
        let flag = doc! { "$search": "a", "$caseSensitive": 1 };
        assert_eq!(TextSearch::from_document(&flag).unwrap_err().code, 14);
        assert_eq!(
            TextSearch::from_document(&doc! { "$search": "a", "x": 1 })
                .unwrap_err()
                .code,
            2
        );
    }
}
