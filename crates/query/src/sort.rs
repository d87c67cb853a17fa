//! Sort specifications (`{a: 1, b: -1}`).

use std::cmp::Ordering;

use bson::{RawBsonRef, RawDocument};

use crate::compare::{as_num, compare_values};
use crate::error::QueryError;
use crate::path::{split_path, walk};

#[derive(Debug, Clone)]
pub struct SortSpec {
    keys: Vec<SortKey>,
    /// The matcher that scores `$meta: "textScore"` keys (`text.rs`), once bound.
    text: Option<std::sync::Arc<mangrove_text::TextMatch>>,
}

#[derive(Debug, Clone)]
struct SortKey {
    parts: Vec<String>,
    descending: bool,
    /// `{$meta: "textScore"}`: the document's text score, highest first.
    meta: bool,
}

impl SortSpec {
    pub fn parse(spec: &RawDocument) -> Result<SortSpec, QueryError> {
        let mut keys = Vec::new();
        for elem in spec.iter() {
            let (key, value) =
                elem.map_err(|e| QueryError::bad_value(format!("invalid BSON in sort: {e}")))?;
            let key = key.as_str();
            if key.is_empty() || key.split('.').any(str::is_empty) {
                return Err(QueryError::bad_value(format!(
                    "FieldPath field names may not be empty strings: '{key}'"
                )));
            }
            if key.starts_with('$') {
                return Err(QueryError::bad_value(format!(
                    "FieldPath field names may not start with '$'. Consider using $getField or $setField: '{key}'"
                )));
            }
            let descending = match value {
                RawBsonRef::Document(d) if d.get("$meta").ok().flatten().is_some() => {
                    crate::text_meta::parse_meta(d.get("$meta").ok().flatten().unwrap_or(value))?;
                    keys.push(SortKey {
                        parts: split_path(key),
                        descending: true,
                        meta: true,
                    });
                    continue;
                }
                _ => match as_num(value).map(|n| n.to_f64()) {
                    Some(1.0) => false,
                    Some(-1.0) => true,
                    Some(_) => {
                        return Err(QueryError::location(
                            15975,
                            "$sort key ordering must be 1 (for ascending) or -1 (for descending)",
                        ));
                    }
                    None => {
                        return Err(QueryError::location(
                            15974,
                            format!("Illegal key in $sort specification: {key}: {value:?}"),
                        ));
                    }
                },
            };
            keys.push(SortKey {
                parts: split_path(key),
                descending,
                meta: false,
            });
        }
        Ok(SortSpec { keys, text: None })
    }

    /// Sorts `items` (stably) by the documents `doc` gives; with a `$meta: "textScore"` key,
    /// each document's keys are computed once rather than at every comparison.
    pub fn sort_items<T>(&self, items: &mut Vec<T>, doc: impl Fn(&T) -> &RawDocument) {
        if !self.needs_text_score() {
            items.sort_by(|a, b| self.compare(doc(a), doc(b)));
            return;
        }
        let mut keyed: Vec<(Vec<bson::Bson>, T)> = items
            .drain(..)
            .map(|t| (self.key_values(doc(&t)), t))
            .collect();
        keyed.sort_by(|a, b| self.compare_keys(&a.0, &b.0));
        items.extend(keyed.into_iter().map(|(_, t)| t));
    }

    /// Whether a key is `{$meta: "textScore"}`.
    pub fn needs_text_score(&self) -> bool {
        self.keys.iter().any(|k| k.meta)
    }

    /// Gives `$meta: "textScore"` keys the query's text matcher.
    pub fn bind_text(&mut self, matcher: std::sync::Arc<mangrove_text::TextMatch>) {
        self.text = Some(matcher);
    }

    /// The bound matcher's score (find), else the pipeline's scorer's (`text::with_scorer`).
    fn score(&self, doc: &RawDocument) -> f64 {
        match &self.text {
            Some(m) => m.score(doc).unwrap_or(0.0),
            None => match crate::text_meta::current_score(doc) {
                Ok(Some(bson::Bson::Double(s))) => s,
                _ => 0.0,
            },
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn compare(&self, a: &RawDocument, b: &RawDocument) -> Ordering {
        for key in &self.keys {
            if key.meta {
                let o = self.score(b).total_cmp(&self.score(a));
                if o != Ordering::Equal {
                    return o;
                }
                continue;
            }
            let ka = sort_value(a, key);
            let kb = sort_value(b, key);
            let o = compare_values(ka, kb);
            let o = if key.descending { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    }

    /// The values `doc` sorts by, one per key, so documents can be ranked after they are gone
    /// (`$top`, window functions) with [`SortSpec::compare_keys`].
    pub(crate) fn key_values(&self, doc: &RawDocument) -> Vec<bson::Bson> {
        self.keys
            .iter()
            .map(|k| match k.meta {
                true => bson::Bson::Double(self.score(doc)),
                false => bson::Bson::try_from(sort_value(doc, k)).unwrap_or(bson::Bson::Null),
            })
            .collect()
    }

    /// Compares two [`SortSpec::key_values`] results as [`SortSpec::compare`] would.
    pub(crate) fn compare_keys(&self, a: &[bson::Bson], b: &[bson::Bson]) -> Ordering {
        for ((key, x), y) in self.keys.iter().zip(a).zip(b) {
            let o = crate::expr::cmp_bson(x, y);
            let o = if key.descending { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    }

    /// Whether a key sorts by `{$meta: "textScore"}` rather than a field.
    pub(crate) fn has_meta(&self) -> bool {
        self.keys.iter().any(|k| k.meta)
    }

    /// The keys as (path, descending) pairs.
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&[String], bool)> {
        self.keys.iter().map(|k| (&k.parts[..], k.descending))
    }
}

/// The value a document sorts by for one key: the smallest reachable value when ascending and
/// the largest when descending, arrays contributing their elements; missing sorts as null and an
/// empty array as undefined (just below null), as in MongoDB.
fn sort_value<'a>(doc: &'a RawDocument, key: &SortKey) -> RawBsonRef<'a> {
    let mut best: Option<RawBsonRef<'a>> = None;
    let mut consider = |v: RawBsonRef<'a>| {
        let better = match best {
            None => true,
            Some(b) => {
                let o = compare_values(v, b);
                if key.descending {
                    o == Ordering::Greater
                } else {
                    o == Ordering::Less
                }
            }
        };
        if better {
            best = Some(v);
        }
    };
    walk(doc, &key.parts, false, &mut |v| {
        match v {
            None => consider(RawBsonRef::Null),
            Some(RawBsonRef::Array(arr)) => {
                let mut any = false;
                for e in arr.into_iter().map_while(Result::ok) {
                    any = true;
                    consider(e);
                }
                if !any {
                    consider(RawBsonRef::Undefined);
                }
            }
            Some(v) => consider(v),
        }
        false
    });
    best.unwrap_or(RawBsonRef::Null)
}
