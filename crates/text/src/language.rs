//! The languages of text index version 3, by mongod's names and ISO 639-1 codes, and `none`
//! (no stop words, no stemming). A name is looked up case-insensitively, as mongod does.

use crate::error::TextError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    Danish,
    Dutch,
    English,
    Finnish,
    French,
    German,
    Hungarian,
    Italian,
    Norwegian,
    Portuguese,
    Romanian,
    Russian,
    Spanish,
    Swedish,
    Turkish,
    None,
}

/// (name, ISO code, language): mongod's table for text index version 3.
const LANGUAGES: &[(&str, &str, Language)] = &[
    ("danish", "da", Language::Danish),
    ("dutch", "nl", Language::Dutch),
    ("english", "en", Language::English),
    ("finnish", "fi", Language::Finnish),
    ("french", "fr", Language::French),
    ("german", "de", Language::German),
    ("hungarian", "hu", Language::Hungarian),
    ("italian", "it", Language::Italian),
    ("norwegian", "nb", Language::Norwegian),
    ("portuguese", "pt", Language::Portuguese),
    ("romanian", "ro", Language::Romanian),
    ("russian", "ru", Language::Russian),
    ("spanish", "es", Language::Spanish),
    ("swedish", "sv", Language::Swedish),
    ("turkish", "tr", Language::Turkish),
    ("none", "none", Language::None),
];

impl Language {
    /// The language a name or code stands for, if mongod knows it.
    pub fn parse(name: &str) -> Option<Language> {
        let lower = name.to_ascii_lowercase();
        LANGUAGES
            .iter()
            .find(|(n, code, _)| *n == lower || *code == lower)
            .map(|(_, _, l)| *l)
    }

    /// [`Language::parse`], or mongod's BadValue for a `$language` it does not support.
    pub fn parse_query(name: &str) -> Result<Language, TextError> {
        Language::parse(name).ok_or_else(|| {
            TextError::bad_value(format!(
                "unsupported language: \"{name}\" for text index version 3"
            ))
        })
    }

    /// mongod's name for the language.
    pub fn name(self) -> &'static str {
        LANGUAGES
            .iter()
            .find(|(_, _, l)| *l == self)
            .map_or("none", |(n, _, _)| n)
    }

    /// The ISO 639-1 code its stop-word list is filed under (`None` has no list).
    pub(crate) fn iso_code(self) -> Option<&'static str> {
        LANGUAGES
            .iter()
            .find(|(_, code, l)| *l == self && *code != "none")
            .map(|(_, code, _)| *code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_case_insensitively() {
        assert_eq!(Language::parse("English"), Some(Language::English));
        assert_eq!(Language::parse("es"), Some(Language::Spanish));
        assert_eq!(Language::parse("NONE"), Some(Language::None));
        assert_eq!(Language::parse("spanglish"), None);
        assert_eq!(Language::parse_query("klingon").unwrap_err().code, 2);
        assert_eq!(Language::French.name(), "french");
        assert_eq!(Language::None.iso_code(), None);
    }
}
