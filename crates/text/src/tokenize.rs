//! Text index version 3's tokenizer: a word is a run of characters between delimiters (white
//! space, dashes, quotation marks, sentence and syntax punctuation: mongod's Unicode property
//! list, approximated here by ranges); English keeps the apostrophe inside words (`don't`).
//! Each word is lower-cased, dropped if it is a stop word, stemmed, and then stripped of
//! diacritics, unless the options ask for case- or diacritic-sensitive words. Stop words are
//! compared lower-cased and with their diacritics, stemming sees the diacritics, as in mongod.

use crate::fold::{is_mark, lower, strip_diacritics};
use crate::language::Language;
use crate::stem::stem;
use crate::stopwords::is_stop_word;

/// What the tokenizer produces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    pub filter_stop_words: bool,
    pub case_sensitive: bool,
    pub diacritic_sensitive: bool,
}

impl Options {
    /// Index terms: stop words dropped, case and diacritics folded.
    pub const INDEX: Options = Options {
        filter_stop_words: true,
        case_sensitive: false,
        diacritic_sensitive: false,
    };
}

/// Splits text into a language's words.
#[derive(Debug, Clone, Copy)]
pub struct Tokenizer {
    pub language: Language,
    pub options: Options,
}

/// Delimiters outside ASCII and Latin-1: general punctuation, arrows, box drawing, dingbats,
/// supplemental punctuation, CJK and full-width punctuation.
const DELIMITER_RANGES: &[(u32, u32)] = &[
    (0x037E, 0x037E),
    (0x0387, 0x0387),
    (0x055C, 0x055E),
    (0x0589, 0x058A),
    (0x05BE, 0x05BE),
    (0x060C, 0x060C),
    (0x061B, 0x061F),
    (0x06D4, 0x06D4),
    (0x0964, 0x0965),
    (0x2000, 0x205E),
    (0x2190, 0x245F),
    (0x2500, 0x2775),
    (0x2794, 0x2BFF),
    (0x2E00, 0x2E7F),
    (0x3000, 0x3003),
    (0x3008, 0x3020),
    (0x3030, 0x3030),
    (0xFD3E, 0xFD3F),
    (0xFE10, 0xFE19),
    (0xFE30, 0xFE52),
    (0xFE54, 0xFE66),
    (0xFF01, 0xFF0F),
    (0xFF1A, 0xFF20),
    (0xFF3B, 0xFF3E),
    (0xFF40, 0xFF40),
    (0xFF5B, 0xFF65),
];

/// Whether `c` separates words in `language`.
pub fn is_delimiter(c: char, language: Language) -> bool {
    if c.is_ascii() {
        return match c {
            '\'' => language != Language::English,
            '_' => false,
            c => c.is_ascii_whitespace() || c.is_ascii_punctuation() || c == '\x0b',
        };
    }
    if c.is_whitespace() {
        return true;
    }
    if (c as u32) < 0x100 {
        return matches!(
            c,
            '\u{a1}'
                ..='\u{a7}'
                    | '\u{a9}'
                    | '\u{ab}'
                    | '\u{ac}'
                    | '\u{ae}'
                    | '\u{b0}'
                    | '\u{b1}'
                    | '\u{b6}'
                    | '\u{b7}'
                    | '\u{bb}'
                    | '\u{bf}'
                    | '\u{d7}'
                    | '\u{f7}'
        );
    }
    if is_mark(c) {
        return false;
    }
    let n = c as u32;
    DELIMITER_RANGES
        .iter()
        .any(|&(lo, hi)| (lo..=hi).contains(&n))
}

/// The raw words of `text`: the runs between delimiters, as written.
pub fn raw_words(text: &str, language: Language) -> impl Iterator<Item = &str> {
    text.split(move |c| is_delimiter(c, language))
        .filter(|w| !w.is_empty())
}

impl Tokenizer {
    pub fn new(language: Language, options: Options) -> Self {
        Tokenizer { language, options }
    }

    /// One raw word made a term, or `None` for a stop word.
    pub fn term(&self, raw: &str) -> Option<String> {
        let lowered = lower(raw, self.language);
        if self.options.filter_stop_words && is_stop_word(&lowered, self.language) {
            return None;
        }
        let word = if self.options.case_sensitive {
            raw.to_string()
        } else {
            lowered
        };
        let stemmed = stem(&word, self.language);
        Some(if self.options.diacritic_sensitive {
            stemmed.into_owned()
        } else {
            strip_diacritics(&stemmed)
        })
    }

    /// The terms of `text`, in order, repeats included.
    pub fn terms<'a>(&'a self, text: &'a str) -> impl Iterator<Item = String> + 'a {
        raw_words(text, self.language).filter_map(|w| self.term(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(text: &str, language: Language, options: Options) -> Vec<String> {
        Tokenizer::new(language, options).terms(text).collect()
    }

    #[test]
    fn splits_on_delimiters_and_stems() {
        let t = terms(
            "The runner was running—fast, faster!",
            Language::English,
            Options::INDEX,
        );
        assert_eq!(t, ["runner", "run", "fast", "faster"]);
        assert_eq!(
            terms("snake_case a-b", Language::None, Options::INDEX),
            ["snake_case", "a", "b"]
        );
    }

    #[test]
    fn english_keeps_apostrophes_others_split() {
        assert_eq!(
            terms("don't stop", Language::English, Options::INDEX),
            ["stop"]
        );
        assert_eq!(terms("l'homme", Language::French, Options::INDEX), ["homm"]);
    }

    #[test]
    fn sensitivity_options() {
        let folded = terms("Café CAFÉ", Language::English, Options::INDEX);
        assert_eq!(folded, ["cafe", "cafe"]);
        let cased = Options {
            case_sensitive: true,
            ..Options::INDEX
        };
        assert_eq!(terms("Café", Language::English, cased), ["Cafe"]);
        let accents = Options {
            diacritic_sensitive: true,
            ..Options::INDEX
        };
        assert_eq!(terms("Café", Language::English, accents), ["café"]);
        let keep = Options {
            filter_stop_words: false,
            ..Options::INDEX
        };
        assert_eq!(terms("the", Language::English, keep), ["the"]);
    }
}
