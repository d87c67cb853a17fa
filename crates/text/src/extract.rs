//! The strings of a document that a text index indexes, each with its field's weight and its
//! language: walks the document (nested documents and arrays; an array's elements share its
//! path), and lets the `language_override` field of each (sub)document set the language of
//! what it contains, as mongod's element iterator does. Bounded by the document's depth.

use bson::{RawBsonRef, RawDocument};

use crate::error::TextError;
use crate::language::Language;
use crate::spec::TextIndex;

/// One indexed string.
#[derive(Debug, Clone, Copy)]
pub struct TextField<'a> {
    pub text: &'a str,
    pub weight: f64,
    pub language: Language,
}

const MAX_DEPTH: usize = 200;

impl TextIndex {
    /// The language `doc` sets for itself and what it contains, or `current`.
    fn language_of(&self, doc: &RawDocument, current: Language) -> Result<Language, TextError> {
        match doc.get(&self.language_override) {
            Ok(None) | Err(_) => Ok(current),
            Ok(Some(RawBsonRef::String(name))) => Language::parse(name).ok_or_else(|| {
                TextError::new(
                    17262,
                    "Location17262",
                    format!("language override unsupported: {name}"),
                )
            }),
            Ok(Some(_)) => Err(TextError::new(
                17261,
                "Location17261",
                "found language override field in document with non-string type",
            )),
        }
    }

    /// Every indexed string of `doc`.
    pub fn text_fields<'a>(&self, doc: &'a RawDocument) -> Result<Vec<TextField<'a>>, TextError> {
        let language = self.language_of(doc, self.default_language)?;
        let mut out = Vec::new();
        self.walk_doc(doc, "", language, &mut out, 0)?;
        Ok(out)
    }

    fn walk_doc<'a>(
        &self,
        doc: &'a RawDocument,
        prefix: &str,
        language: Language,
        out: &mut Vec<TextField<'a>>,
        depth: usize,
    ) -> Result<(), TextError> {
        for (name, value) in doc.iter().map_while(Result::ok) {
            let path = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}.{name}")
            };
            self.walk_value(value, &path, language, out, depth + 1)?;
        }
        Ok(())
    }

    fn walk_value<'a>(
        &self,
        value: RawBsonRef<'a>,
        path: &str,
        language: Language,
        out: &mut Vec<TextField<'a>>,
        depth: usize,
    ) -> Result<(), TextError> {
        if depth > MAX_DEPTH {
            return Ok(());
        }
        match value {
            RawBsonRef::String(text) => {
                if let Some(weight) = self.weight(path) {
                    out.push(TextField {
                        text,
                        weight,
                        language,
                    });
                }
            }
            RawBsonRef::Document(d) if self.may_contain(path) => {
                let language = self.language_of(d, language)?;
                self.walk_doc(d, path, language, out, depth)?;
            }
            RawBsonRef::Array(a) => {
                for v in a.into_iter().map_while(Result::ok) {
                    self.walk_value(v, path, language, out, depth + 1)?;
                }
            }
            _ => {}
        }
        Ok(())
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

    #[test]
    fn nested_paths_arrays_and_languages() {
        let idx = index(doc! { "a.b": 2, "c": 1 });
        let d = rawdoc! {
            "a": [{ "b": "one" }, { "b": ["two", "three"], "language": "french" }],
            "c": "four", "d": "skipped",
        };
        let fields = idx.text_fields(&d).unwrap();
        let texts: Vec<_> = fields
            .iter()
            .map(|f| (f.text, f.weight, f.language))
            .collect();
        assert_eq!(
            texts,
            [
                ("one", 2.0, Language::English),
                ("two", 2.0, Language::French),
                ("three", 2.0, Language::French),
                ("four", 1.0, Language::English),
            ]
        );
        let bad = idx
            .text_fields(&rawdoc! { "c": "x", "language": 5 })
            .unwrap_err();
        assert_eq!(bad.code, 17261);
        assert!(
            idx.text_fields(&rawdoc! { "language": "spanglish" })
                .is_err()
        );
    }
}
