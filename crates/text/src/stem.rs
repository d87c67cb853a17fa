//! Snowball stemming per language (`rust-stemmers`, the same Snowball algorithms mongod
//! links); `none` leaves words as they are. Stemmers are made once per language.

use std::borrow::Cow;
use std::sync::OnceLock;

use rust_stemmers::{Algorithm, Stemmer};

use crate::language::Language;

fn algorithm(language: Language) -> Option<Algorithm> {
    Some(match language {
        Language::Danish => Algorithm::Danish,
        Language::Dutch => Algorithm::Dutch,
        Language::English => Algorithm::English,
        Language::Finnish => Algorithm::Finnish,
        Language::French => Algorithm::French,
        Language::German => Algorithm::German,
        Language::Hungarian => Algorithm::Hungarian,
        Language::Italian => Algorithm::Italian,
        Language::Norwegian => Algorithm::Norwegian,
        Language::Portuguese => Algorithm::Portuguese,
        Language::Romanian => Algorithm::Romanian,
        Language::Russian => Algorithm::Russian,
        Language::Spanish => Algorithm::Spanish,
        Language::Swedish => Algorithm::Swedish,
        Language::Turkish => Algorithm::Turkish,
        Language::None => return None,
    })
}

fn stemmer(language: Language) -> Option<&'static Stemmer> {
    const COUNT: usize = 16;
    static STEMMERS: [OnceLock<Option<Stemmer>>; COUNT] = [const { OnceLock::new() }; COUNT];
    STEMMERS[language as usize % COUNT]
        .get_or_init(|| algorithm(language).map(Stemmer::create))
        .as_ref()
}

/// `word` stemmed by `language`'s Snowball stemmer.
pub fn stem(word: &str, language: Language) -> Cow<'_, str> {
    match stemmer(language) {
        Some(s) => s.stem(word),
        None => Cow::Borrowed(word),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_per_language() {
        assert_eq!(stem("running", Language::English), "run");
        assert_eq!(stem("coffee", Language::English), "coffe");
        assert_eq!(stem("cafés", Language::French), "caf");
        assert_eq!(stem("running", Language::None), "running");
    }
}
