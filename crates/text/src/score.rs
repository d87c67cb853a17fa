//! The scores of a document's terms, as text index version 3 computes them (mongod's
//! `FTSSpec::scoreDocument`). For each indexed string, with its field's weight `w`: a term
//! seen `count` times among the string's `n` terms (stop words excluded) has
//! `freq = 1 + 1/2 + 1/4 + ...` (one halving per repeat) and scores
//! `w · freq · (0.5 · count / n + 0.5)`, times 1.1 when the whole string is that one term; a
//! term's scores over all strings add up. These are the scores index keys carry and `$meta:
//! "textScore"` sums over a query's terms.

use std::collections::BTreeMap;

use bson::RawDocument;

use crate::error::TextError;
use crate::spec::TextIndex;
use crate::tokenize::{Options, Tokenizer};

/// Term → score, sorted by term.
pub type TermScores = BTreeMap<String, f64>;

/// Per term of one string: (count, freq).
fn count_terms(text: &str, tokenizer: &Tokenizer) -> (BTreeMap<String, (f64, f64)>, f64) {
    let mut terms: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let mut total = 0.0;
    for term in tokenizer.terms(text) {
        let (count, freq) = terms.entry(term).or_insert((0.0, 0.0));
        // The n-th repeat adds 1 / 2^(n-1).
        *freq += 0.5f64.powf(*count);
        *count += 1.0;
        total += 1.0;
    }
    (terms, total)
}

/// Adds one string's term scores, at `weight`, to `scores`.
pub fn score_string(text: &str, weight: f64, tokenizer: &Tokenizer, scores: &mut TermScores) {
    let (terms, total) = count_terms(text, tokenizer);
    for (term, (count, freq)) in terms {
        let coeff = 0.5 * count / total + 0.5;
        let adjustment = if text.len() == term.len() && text.eq_ignore_ascii_case(&term) {
            1.1
        } else {
            1.0
        };
        *scores.entry(term).or_insert(0.0) += weight * freq * coeff * adjustment;
    }
}

impl TextIndex {
    /// Every term of `doc` with its score: what its index keys are made of.
    pub fn term_scores(&self, doc: &RawDocument) -> Result<TermScores, TextError> {
        let mut scores = TermScores::new();
        for field in self.text_fields(doc)? {
            let tokenizer = Tokenizer::new(field.language, Options::INDEX);
            score_string(field.text, field.weight, &tokenizer, &mut scores);
        }
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use bson::{doc, rawdoc};

    use super::*;

    fn index(weights: bson::Document) -> TextIndex {
        TextIndex::from_spec(&doc! { "key": { "_fts": "text", "_ftsx": 1 }, "weights": weights })
            .unwrap()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// "coffee shop coffee": coffe ×2 of 3 terms: freq 1.5, coeff 0.5·2/3+0.5 → 1.25;
    /// shop: 1 · (0.5/3 + 0.5) → 0.666…; with weight 10 on the title, ten times as much.
    #[test]
    fn mongod_formula_by_hand() {
        let idx = index(doc! { "body": 1, "title": 10 });
        let s = idx
            .term_scores(&rawdoc! { "body": "coffee shop coffee" })
            .unwrap();
        assert!(close(s["coffe"], 1.25));
        assert!(close(s["shop"], 2.0 / 3.0));
        let t = idx.term_scores(&rawdoc! { "title": "The coffee" }).unwrap();
        assert!(close(t["coffe"], 10.0));
        // The whole string is the term: a 1.1 boost; both fields add up.
        let u = idx
            .term_scores(&rawdoc! { "title": "run", "body": "running late" })
            .unwrap();
        assert!(close(u["run"], 10.0 * 1.1 + 0.75));
        assert!(close(u["late"], 0.75));
    }

    #[test]
    fn repeats_halve() {
        let idx = index(doc! { "b": 1 });
        let s = idx
            .term_scores(&rawdoc! { "b": "tea tea tea tea" })
            .unwrap();
        assert!(close(s["tea"], 1.875));
    }
}
