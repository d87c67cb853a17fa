//! Dotted-path traversal over raw documents with MongoDB's implicit array semantics.

use bson::{RawBsonRef, RawDocument};

/// Parses a path component as an array index the way MongoDB does: plain decimal digits only,
/// so "01" or "+1" are field names, not positions.
pub fn parse_index(part: &str) -> Option<usize> {
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if part.len() > 1 && part.starts_with('0') {
        return None;
    }
    part.parse().ok()
}

/// Calls `f` with every value the path reaches (`None` where the path is missing), stopping as
/// soon as `f` returns true. Arrays met mid-path fan out to their document elements (and to the
/// indexed element when the next component is numeric). At the end of the path an array is
/// reported itself and, if `expand_leaf`, element by element too.
pub fn walk<'a>(
    doc: &'a RawDocument,
    parts: &[String],
    expand_leaf: bool,
    f: &mut dyn FnMut(Option<RawBsonRef<'a>>) -> bool,
) -> bool {
    walk_doc(doc, parts, expand_leaf, f)
}

fn walk_doc<'a>(
    doc: &'a RawDocument,
    parts: &[String],
    expand_leaf: bool,
    f: &mut dyn FnMut(Option<RawBsonRef<'a>>) -> bool,
) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return f(None);
    };
    match doc.get(first) {
        Ok(Some(v)) => walk_value(v, rest, expand_leaf, f),
        _ => f(None),
    }
}

pub fn walk_value<'a>(
    v: RawBsonRef<'a>,
    parts: &[String],
    expand_leaf: bool,
    f: &mut dyn FnMut(Option<RawBsonRef<'a>>) -> bool,
) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        if expand_leaf && let RawBsonRef::Array(arr) = v {
            for e in arr.into_iter().map_while(Result::ok) {
                if f(Some(e)) {
                    return true;
                }
            }
        }
        return f(Some(v));
    };
    match v {
        RawBsonRef::Document(d) => walk_doc(d, parts, expand_leaf, f),
        RawBsonRef::Array(arr) => {
            if let Some(idx) = parse_index(first) {
                match arr.get(idx) {
                    Ok(Some(e)) => {
                        if walk_value(e, rest, expand_leaf, f) {
                            return true;
                        }
                    }
                    _ => {
                        if f(None) {
                            return true;
                        }
                    }
                }
            }
            for e in arr.into_iter().map_while(Result::ok) {
                if let RawBsonRef::Document(d) = e
                    && walk_doc(d, parts, expand_leaf, f)
                {
                    return true;
                }
            }
            false
        }
        _ => f(None),
    }
}

pub fn split_path(path: &str) -> Vec<String> {
    path.split('.').map(str::to_owned).collect()
}

/// The values `distinct` collects from one document at `path`: every value the path reaches,
/// with an array at the end of the path contributing its elements rather than itself.
pub fn distinct_values<'a>(doc: &'a RawDocument, path: &str) -> Vec<RawBsonRef<'a>> {
    let parts = split_path(path);
    let mut out = Vec::new();
    walk(doc, &parts, false, &mut |v| {
        match v {
            Some(RawBsonRef::Array(arr)) => out.extend(arr.into_iter().map_while(Result::ok)),
            Some(v) => out.push(v),
            None => {}
        }
        false
    });
    out
}

#[cfg(test)]
mod distinct_tests {
    use super::*;
    use bson::rawdoc;

    #[test]
    fn arrays_at_the_leaf_contribute_their_elements() {
        let doc = rawdoc! { "a": [1, 2, [3]], "b": { "c": [{ "d": 4 }, { "d": 5 }] } };
        let a: Vec<_> = distinct_values(&doc, "a")
            .into_iter()
            .map(|v| format!("{v:?}"))
            .collect();
        assert_eq!(a.len(), 3, "{a:?}");
        assert!(
            a[2].contains("Array"),
            "a nested array stays one value: {a:?}"
        );
        let d = distinct_values(&doc, "b.c.d");
        assert_eq!(d, vec![RawBsonRef::Int32(4), RawBsonRef::Int32(5)]);
        assert!(distinct_values(&doc, "missing").is_empty());
    }
}
