//! Whether a document matches a parsed `$text` query under one text index, and its score (mongod's
//! `FTSMatcher` and the scores its TEXT_OR stage sums). A document matches when one of its
//! indexed strings has a positive term, none has a negated term, every phrase appears in one
//! of its strings, and no negated phrase does. Each string is tokenized in its own language
//! (the document's `language_override`); phrases are compared folded unless the query is
//! case- or diacritic-sensitive. The score sums the document's scores of the query's folded
//! positive terms, so it is the same number the index keys carry.

use bson::RawDocument;

use crate::error::TextError;
use crate::extract::TextField;
use crate::fold::fold;
use crate::language::Language;
use crate::query::TextQuery;
use crate::spec::TextIndex;
use crate::tokenize::{Options, Tokenizer};

/// A query bound to the index that answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct TextMatch {
    pub index: TextIndex,
    pub query: TextQuery,
}

impl TextMatch {
    pub fn new(index: TextIndex, query: TextQuery) -> Self {
        TextMatch { index, query }
    }

    fn options(&self) -> Options {
        Options {
            filter_stop_words: true,
            case_sensitive: self.query.case_sensitive,
            diacritic_sensitive: self.query.diacritic_sensitive,
        }
    }

    fn any_term(
        &self,
        fields: &[TextField<'_>],
        terms: &std::collections::BTreeSet<String>,
    ) -> bool {
        if terms.is_empty() {
            return false;
        }
        let options = self.options();
        fields.iter().any(|f| {
            Tokenizer::new(f.language, options)
                .terms(f.text)
                .any(|t| terms.contains(&t))
        })
    }

    fn contains_phrase(&self, fields: &[TextField<'_>], phrase: &str) -> bool {
        let q = &self.query;
        let language = q.language.unwrap_or(Language::English);
        let needle = fold(phrase, language, q.case_sensitive, q.diacritic_sensitive);
        fields.iter().any(|f| {
            fold(f.text, f.language, q.case_sensitive, q.diacritic_sensitive).contains(&needle)
        })
    }

    /// Whether `doc` matches the query.
    pub fn matches(&self, doc: &RawDocument) -> Result<bool, TextError> {
        let fields = self.index.text_fields(doc)?;
        let q = &self.query;
        Ok(self.any_term(&fields, &q.terms)
            && !self.any_term(&fields, &q.negated_terms)
            && q.phrases.iter().all(|p| self.contains_phrase(&fields, p))
            && !q
                .negated_phrases
                .iter()
                .any(|p| self.contains_phrase(&fields, p)))
    }

    /// `doc`'s text score: its term scores summed over the query's positive terms.
    pub fn score(&self, doc: &RawDocument) -> Result<f64, TextError> {
        let scores = self.index.term_scores(doc)?;
        Ok(self
            .query
            .terms_for_bounds
            .iter()
            .filter_map(|t| scores.get(t))
            .sum())
    }
}

#[cfg(test)]
mod tests {
    use bson::{doc, rawdoc};

    use super::*;
    use crate::query::TextSearch;

    fn matcher(search: &str, case: bool, diacritics: bool) -> TextMatch {
        let index = TextIndex::from_spec(&doc! {
            "key": { "_fts": "text", "_ftsx": 1 }, "weights": { "body": 1, "title": 5 },
        })
        .unwrap();
        let s = TextSearch {
            search: search.into(),
            language: None,
            case_sensitive: case,
            diacritic_sensitive: diacritics,
        };
        let query = TextQuery::parse(&s, index.default_language).unwrap();
        TextMatch::new(index, query)
    }

    #[test]
    fn terms_negations_and_phrases() {
        let d = rawdoc! { "title": "Coffee", "body": "The best espresso in Paris" };
        assert!(matcher("coffee tea", false, false).matches(&d).unwrap());
        assert!(!matcher("coffee -paris", false, false).matches(&d).unwrap());
        assert!(
            matcher("\"best espresso\"", false, false)
                .matches(&d)
                .unwrap()
        );
        assert!(
            !matcher("\"espresso best\" coffee", false, false)
                .matches(&d)
                .unwrap()
        );
        assert!(
            !matcher("coffee -\"in paris\"", false, false)
                .matches(&d)
                .unwrap()
        );
        assert!(!matcher("-coffee", false, false).matches(&d).unwrap());
        assert!(!matcher("the", false, false).matches(&d).unwrap());
    }

    #[test]
    fn case_and_diacritic_sensitivity() {
        let d = rawdoc! { "body": "Café au lait" };
        assert!(matcher("cafe", false, false).matches(&d).unwrap());
        assert!(!matcher("cafe", true, false).matches(&d).unwrap());
        assert!(matcher("Cafe", true, false).matches(&d).unwrap());
        assert!(!matcher("Cafe", false, true).matches(&d).unwrap());
        assert!(matcher("café", false, true).matches(&d).unwrap());
        assert!(matcher("\"CAFE AU\"", false, false).matches(&d).unwrap());
        assert!(!matcher("\"CAFE AU\"", true, false).matches(&d).unwrap());
    }

    /// title weight 5: "Coffee" alone → 5 · 1 · 1 · 1.1? No: the term is "coffe", the string
    /// "Coffee" differs from it, so 5; the body's espresso: 1 of 3 terms (best, espresso,
    /// paris) → 0.5/3 + 0.5.
    #[test]
    fn scores_sum_the_query_terms() {
        let d = rawdoc! { "title": "Coffee", "body": "The best espresso in Paris" };
        let s = matcher("coffee espresso milk", false, false)
            .score(&d)
            .unwrap();
        assert!((s - (5.0 + 0.5 / 3.0 + 0.5)).abs() < 1e-9);
    }
}
