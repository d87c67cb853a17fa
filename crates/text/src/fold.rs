//! Case folding and diacritic stripping, as text index version 3 compares words: lower case
//! (Turkish maps `I` to dotless `ı` and `İ` to `i`), and diacritics removed by decomposing
//! (NFD) and dropping the combining marks. Pure functions over `&str`.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::language::Language;

/// `word` in lower case; Turkish has its own dotted and dotless `i`.
pub fn lower(word: &str, language: Language) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        match (language, c) {
            (Language::Turkish, 'I') => out.push('ı'),
            (Language::Turkish, 'İ') => out.push('i'),
            _ => out.extend(c.to_lowercase()),
        }
    }
    out
}

/// `word` without its diacritics (`é` → `e`, `ñ` → `n`); letters that are not a base letter
/// plus marks (`ø`, `ß`) stay.
pub fn strip_diacritics(word: &str) -> String {
    if word.is_ascii() {
        return word.to_string();
    }
    word.nfd().filter(|c| !is_combining_mark(*c)).collect()
}

/// Whether `c` is a combining mark (a diacritic, part of the word it follows).
pub fn is_mark(c: char) -> bool {
    is_combining_mark(c)
}

/// `text` folded for comparison with the given sensitivities.
pub fn fold(
    text: &str,
    language: Language,
    case_sensitive: bool,
    diacritic_sensitive: bool,
) -> String {
    let cased = if case_sensitive {
        text.to_string()
    } else {
        lower(text, language)
    };
    if diacritic_sensitive {
        cased
    } else {
        strip_diacritics(&cased)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_and_diacritics() {
        assert_eq!(lower("CAFÉ", Language::English), "café");
        assert_eq!(strip_diacritics("café señor"), "cafe senor");
        assert_eq!(
            fold("Crème Brûlée", Language::French, false, false),
            "creme brulee"
        );
        assert_eq!(fold("Crème", Language::French, true, false), "Creme");
        assert_eq!(fold("Crème", Language::French, false, true), "crème");
        assert_eq!(lower("DIŞ", Language::Turkish), "dış");
    }
}
