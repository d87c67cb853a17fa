//! Text search as MongoDB 7.0's text indexes (version 3) do it: tokenizing, case and diacritic
//! folding, stop words, stemming, the scores of a document's terms, the parsed `$search`
//! query, and whether a document matches it.
//!
//! **Invariant:** this crate knows text and BSON values only. It knows no filter, index key
//! encoding, storage, command or wire: `mangrove-bson` turns the terms it returns into index
//! keys, `mangrove-query` asks it whether a document matches, and the server asks it for a
//! document's score. It depends on the `bson` crate and the text crates, nothing of Mangrove.
//! Every function is total on its input: no panics, bounded work per call.

mod error;
mod extract;
mod fold;
mod language;
mod matcher;
mod query;
mod score;
mod spec;
mod stem;
mod stopwords;
mod tokenize;

pub use error::TextError;
pub use language::Language;
pub use matcher::TextMatch;
pub use query::{MAX_QUERY_TERMS, TextQuery, TextSearch};
pub use score::TermScores;
pub use spec::{TEXT_INDEX_VERSION, TextIndex, is_text_key_pattern, normalize_text_spec};
pub use tokenize::{Options, Tokenizer};
