//! Stop words per language: the Snowball lists (as NLTK keeps them, through the `stop-words`
//! crate), which are what mongod's lists were taken from. Lists are built into sets once, on
//! first use. A word is looked up lower-cased, with its diacritics, as mongod does.

use std::collections::HashSet;
use std::sync::OnceLock;

use crate::language::Language;

const COUNT: usize = 16;

fn index(language: Language) -> usize {
    language as usize
}

fn set(language: Language) -> &'static HashSet<&'static str> {
    static SETS: [OnceLock<HashSet<&'static str>>; COUNT] = [const { OnceLock::new() }; COUNT];
    SETS[index(language) % COUNT].get_or_init(|| {
        language
            .iso_code()
            .and_then(stop_words::lookup)
            .map(|words| words.iter().copied().collect())
            .unwrap_or_default()
    })
}

/// Whether `word` (lower case) is a stop word of `language`; `none` has none.
pub fn is_stop_word(word: &str, language: Language) -> bool {
    set(language).contains(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_and_french_lists() {
        assert!(is_stop_word("the", Language::English));
        assert!(is_stop_word("don't", Language::English));
        assert!(!is_stop_word("coffee", Language::English));
        assert!(is_stop_word("le", Language::French));
        assert!(!is_stop_word("the", Language::None));
        assert!(!is_stop_word("the", Language::French));
    }
}
