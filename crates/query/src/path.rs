//! Dotted-path traversal over raw documents with MongoDB's implicit array semantics.

use bson::{RawBsonRef, RawDocument};

/// Parses a path component as an array index the way MongoDB does: plain decimal digits only,
/// so "01" or "+1" are field names, not positions.
pub(crate) fn parse_index(part: &str) -> Option<usize> {
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
pub(crate) fn walk<'a>(
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

pub(crate) fn walk_value<'a>(
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

pub(crate) fn split_path(path: &str) -> Vec<String> {
    path.split('.').map(str::to_owned).collect()
}
