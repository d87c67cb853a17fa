//! The difference between two versions of a document as a change stream's `updateDescription`
//! reports it: mongod's `doc_diff` (`computeOplogDiff`) computed from the pre- and post-image,
//! then flattened to dotted paths the way mongod's change-stream diff parser does.
//!
//! Invariants:
//! - applying the description to `pre` gives `post` (modulo field order): every field that
//!   differs is in exactly one of `updatedFields` (set to its new value), `removedFields`, or
//!   under a path of an array listed in `truncatedArrays`;
//! - `_id` never appears (it cannot change);
//! - a path is in `disambiguatedPaths` exactly when one of its field names is numeric-looking or
//!   contains a dot, so the dotted string alone would be ambiguous; array indices in its
//!   component list are Int32, field names strings (mongod 6.1+).
//!
//! Like mongod, the diff recurses into sub-documents present in both versions and into arrays
//! present in both, but gives up on an array (setting it whole) once the description of its
//! element sets and resizes would be larger than the array itself (changes inside an element
//! are not counted, so an operator update's path inside an array element stays precise, as
//! mongod reports it). mongod computes `updateDescription` for
//! operator updates from the operators rather than from the images (a `$set` of a whole
//! sub-document reports the whole value); here it is always the images' difference, which
//! describes the same change, sometimes at finer paths.

use std::collections::BTreeSet;

use bson::raw::{RawArrayBuf, cstr};
use bson::{Bson, Document, RawArray, RawBsonRef, RawDocument, RawDocumentBuf};

/// mongod's `updateDescription` of the change from `pre` to `post`: `{updatedFields,
/// removedFields, truncatedArrays}`, plus `disambiguatedPaths` when some path needs it (mongod
/// with `showExpandedEvents` always reports it, `{}` when empty; add it there).
pub fn update_description(pre: &RawDocument, post: &RawDocument) -> Document {
    // The raw form is built from valid documents' values, so it converts back.
    Document::try_from(update_description_raw(pre, post).as_ref()).unwrap_or_default()
}

/// [`update_description`] as raw BSON, built without parsing a value: what the commit path
/// stores in the log (values are copied as they are, once).
pub fn update_description_raw(pre: &RawDocument, post: &RawDocument) -> RawDocumentBuf {
    let diff = doc_diff(pre, post, true);
    let mut out = Flat::default();
    let mut path = Vec::new();
    flatten_doc(&diff, &mut path, &mut out);
    let mut description = RawDocumentBuf::new();
    description.append(cstr!("updatedFields"), out.updated);
    description.append(cstr!("removedFields"), out.removed);
    description.append(cstr!("truncatedArrays"), out.truncated);
    if !out.disambiguated.is_empty()
        && let Ok(paths) = RawDocumentBuf::try_from(&out.disambiguated)
    {
        description.append(cstr!("disambiguatedPaths"), paths);
    }
    description
}

/// The changes of one sub-document (mongod's document diff: deletes, updates of existing
/// fields, inserts of new or moved fields, and sub-diffs).
#[derive(Default)]
struct DocDiff<'a> {
    deletes: BTreeSet<&'a str>,
    updates: Vec<(&'a str, RawBsonRef<'a>)>,
    inserts: Vec<(&'a str, RawBsonRef<'a>)>,
    subs: Vec<(&'a str, Sub<'a>)>,
}

/// The changes of one array: elements set by index, sub-diffs by index, and a new length when
/// it got shorter. `size` estimates the BSON size of mongod's encoding of it.
struct ArrDiff<'a> {
    entries: Vec<(usize, ArrEntry<'a>)>,
    resize: Option<usize>,
    size: usize,
}

enum ArrEntry<'a> {
    Set(RawBsonRef<'a>),
    Sub(Sub<'a>),
}

enum Sub<'a> {
    Doc(DocDiff<'a>),
    Arr(ArrDiff<'a>),
}

impl Sub<'_> {
    fn is_empty(&self) -> bool {
        match self {
            Sub::Doc(d) => {
                d.deletes.is_empty()
                    && d.updates.is_empty()
                    && d.inserts.is_empty()
                    && d.subs.is_empty()
            }
            Sub::Arr(a) => a.entries.is_empty() && a.resize.is_none(),
        }
    }
}

/// mongod's `computeDocDiff`: walks both documents in order while their field names agree;
/// from the first disagreement on, fields of `pre` missing later are deletes and the rest of
/// `post` is inserted (a moved field is set whole, as mongod does). Malformed elements (never
/// in stored documents) end the walk rather than panic.
fn doc_diff<'a>(pre: &'a RawDocument, post: &'a RawDocument, top: bool) -> DocDiff<'a> {
    let mut diff = DocDiff::default();
    let mut pre_it = pre
        .iter()
        .map_while(Result::ok)
        .map(|(k, v)| (k.as_str(), v));
    let mut post_it = post
        .iter()
        .map_while(Result::ok)
        .map(|(k, v)| (k.as_str(), v))
        .peekable();
    let mut pre_rest = Vec::new();
    for (name, old) in pre_it.by_ref() {
        match post_it.peek() {
            Some((post_name, new)) if *post_name == name => {
                sub_diff(name, old, *new, &mut diff);
                post_it.next();
            }
            Some(_) => {
                diff.deletes.insert(name);
            }
            None => pre_rest.push(name),
        }
    }
    for (name, new) in post_it {
        diff.deletes.remove(name);
        diff.inserts.push((name, new));
    }
    diff.deletes.extend(pre_rest);
    if top {
        // `_id` cannot change; a reordered `_id` would otherwise show as set.
        diff.deletes.remove("_id");
        diff.inserts.retain(|(n, _)| *n != "_id");
        diff.updates.retain(|(n, _)| *n != "_id");
    }
    diff
}

/// mongod's `calculateSubDiffHelper` for a field present in both versions.
fn sub_diff<'a>(name: &'a str, old: RawBsonRef<'a>, new: RawBsonRef<'a>, diff: &mut DocDiff<'a>) {
    match (old, new) {
        (RawBsonRef::Document(a), RawBsonRef::Document(b)) => {
            let sub = Sub::Doc(doc_diff(a, b, false));
            if !sub.is_empty() {
                diff.subs.push((name, sub));
            }
        }
        (RawBsonRef::Array(a), RawBsonRef::Array(b)) => match arr_diff(a, b) {
            Some(sub) if sub.is_empty() => {}
            Some(sub) => diff.subs.push((name, sub)),
            None => diff.updates.push((name, new)),
        },
        _ if !same_value(old, new) => diff.updates.push((name, new)),
        _ => {}
    }
}

/// mongod's `computeArrayDiff`: elements compared by index, documents and arrays of the same
/// type at one index diffed recursively, appended elements set, a shorter array resized.
/// `None` when the diff would be larger than the new array: then it is set whole.
fn arr_diff<'a>(pre: &'a RawArray, post: &'a RawArray) -> Option<Sub<'a>> {
    let post_size = post.as_bytes().len();
    // `{a: true}` marks an array diff in mongod's encoding.
    let mut diff = ArrDiff {
        entries: Vec::new(),
        resize: None,
        size: 9,
    };
    let mut pre_it = pre.into_iter().map_while(Result::ok);
    let mut post_it = post.into_iter().map_while(Result::ok);
    let mut i = 0;
    loop {
        if post_size < diff.size {
            return None;
        }
        let (old, new) = match (pre_it.next(), post_it.next()) {
            (Some(old), Some(new)) => (old, new),
            (None, Some(new)) => {
                diff.push(i, ArrEntry::Set(new));
                i += 1;
                post_it.by_ref().for_each(|new| {
                    diff.push(i, ArrEntry::Set(new));
                    i += 1;
                });
                break;
            }
            (Some(_), None) => {
                diff.resize = Some(i);
                diff.size += 7;
                break;
            }
            (None, None) => break,
        };
        if !same_value(old, new) {
            let sub = match (old, new) {
                (RawBsonRef::Document(a), RawBsonRef::Document(b)) => {
                    Some(Sub::Doc(doc_diff(a, b, false)))
                }
                (RawBsonRef::Array(a), RawBsonRef::Array(b)) => arr_diff(a, b),
                _ => None,
            };
            diff.push(i, sub.map_or(ArrEntry::Set(new), ArrEntry::Sub));
        }
        i += 1;
    }
    (post_size > diff.size).then_some(Sub::Arr(diff))
}

impl<'a> ArrDiff<'a> {
    fn push(&mut self, index: usize, entry: ArrEntry<'a>) {
        let name = index.to_string().len() + 3;
        self.size += name
            + match &entry {
                ArrEntry::Set(v) => value_size(v),
                // A change inside an element costs only its name here: an operator update
                // (`$set: {"a.0.b": 1}`) is reported by mongod at its path however small the
                // array, and this diff is also what operator updates report.
                ArrEntry::Sub(_) => 0,
            };
        self.entries.push((index, entry));
    }
}

/// mongod's `binaryEqualValues`: the same type and the same bytes (so `1` and `1.0` differ, and
/// so do `0.0` and `-0.0`).
fn same_value(a: RawBsonRef<'_>, b: RawBsonRef<'_>) -> bool {
    match (a, b) {
        (RawBsonRef::Double(x), RawBsonRef::Double(y)) => x.to_bits() == y.to_bits(),
        (RawBsonRef::Document(x), RawBsonRef::Document(y)) => x.as_bytes() == y.as_bytes(),
        (RawBsonRef::Array(x), RawBsonRef::Array(y)) => x.as_bytes() == y.as_bytes(),
        _ => a == b,
    }
}

/// The size of a value's BSON encoding (exact for the common types, an estimate for the rest):
/// only the array bail-out's heuristic uses it.
fn value_size(v: &RawBsonRef<'_>) -> usize {
    match v {
        RawBsonRef::Document(d) => d.as_bytes().len(),
        RawBsonRef::Array(a) => a.as_bytes().len(),
        RawBsonRef::String(s) => s.len() + 5,
        RawBsonRef::Binary(b) => b.bytes.len() + 5,
        RawBsonRef::Boolean(_) | RawBsonRef::Null | RawBsonRef::Undefined => 1,
        RawBsonRef::Int32(_) => 4,
        RawBsonRef::Decimal128(_) => 16,
        _ => 8,
    }
}

/// One component of a path: a field name, or an array index.
#[derive(Clone, Copy)]
enum Part<'a> {
    Field(&'a str),
    Index(usize),
}

#[derive(Default)]
struct Flat {
    /// Each path once: the diff names a field in one place only.
    updated: RawDocumentBuf,
    removed: RawArrayBuf,
    truncated: RawArrayBuf,
    disambiguated: Document,
}

impl Flat {
    /// The dotted form of `path`, registering its components when it is ambiguous.
    fn name(&mut self, path: &[Part<'_>]) -> String {
        let mut dotted = String::new();
        let mut ambiguous = false;
        for (i, part) in path.iter().enumerate() {
            if i > 0 {
                dotted.push('.');
            }
            match part {
                Part::Field(f) => {
                    ambiguous |=
                        f.contains('.') || (!f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
                    dotted.push_str(f);
                }
                Part::Index(n) => dotted.push_str(&n.to_string()),
            }
        }
        if ambiguous {
            let parts: Vec<Bson> = path
                .iter()
                .map(|p| match p {
                    Part::Field(f) => Bson::String(f.to_string()),
                    Part::Index(n) => Bson::Int32(i32::try_from(*n).unwrap_or(i32::MAX)),
                })
                .collect();
            self.disambiguated.insert(dotted.clone(), parts);
        }
        dotted
    }

    fn set(&mut self, path: &[Part<'_>], value: RawBsonRef<'_>) {
        let name = self.name(path);
        // Field names read from BSON hold no NUL, so the key always converts.
        if let Ok(key) = bson::raw::CString::try_from(name) {
            self.updated.append(key, value);
        }
    }
}

/// mongod's diff parser: deletes, then updates and inserts, then sub-diffs, depth first.
fn flatten_doc<'a>(diff: &DocDiff<'a>, path: &mut Vec<Part<'a>>, out: &mut Flat) {
    for name in &diff.deletes {
        path.push(Part::Field(name));
        let dotted = out.name(path);
        out.removed.push(dotted.as_str());
        path.pop();
    }
    for (name, value) in diff.updates.iter().chain(&diff.inserts) {
        path.push(Part::Field(name));
        out.set(path, *value);
        path.pop();
    }
    for (name, sub) in &diff.subs {
        path.push(Part::Field(name));
        flatten_sub(sub, path, out);
        path.pop();
    }
}

fn flatten_sub<'a>(sub: &Sub<'a>, path: &mut Vec<Part<'a>>, out: &mut Flat) {
    let arr = match sub {
        Sub::Doc(d) => return flatten_doc(d, path, out),
        Sub::Arr(a) => a,
    };
    if let Some(len) = arr.resize {
        let field = out.name(path);
        let new_size = i32::try_from(len).unwrap_or(i32::MAX);
        let mut entry = RawDocumentBuf::new();
        entry.append(cstr!("field"), field.as_str());
        entry.append(cstr!("newSize"), new_size);
        out.truncated.push(entry);
    }
    for (index, entry) in &arr.entries {
        path.push(Part::Index(*index));
        match entry {
            ArrEntry::Set(v) => out.set(path, *v),
            ArrEntry::Sub(s) => flatten_sub(s, path, out),
        }
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{RawDocumentBuf, doc};

    fn describe(pre: Document, post: Document) -> Document {
        let pre = RawDocumentBuf::try_from(&pre).unwrap();
        let post = RawDocumentBuf::try_from(&post).unwrap();
        update_description(&pre, &post)
    }

    fn plain(updated: Document, removed: Vec<&str>, truncated: Vec<Document>) -> Document {
        doc! { "updatedFields": updated, "removedFields": removed, "truncatedArrays": truncated }
    }

    #[test]
    fn set_top_level_field() {
        let d = describe(doc! { "_id": 1, "x": 1 }, doc! { "_id": 1, "x": 2 });
        assert_eq!(d, plain(doc! { "x": 2 }, vec![], vec![]));
    }

    #[test]
    fn numeric_field_name_is_disambiguated() {
        let d = describe(
            doc! { "_id": 1, "a": { "1": 1 } },
            doc! { "_id": 1, "a": { "1": 2 } },
        );
        let mut want = plain(doc! { "a.1": 2 }, vec![], vec![]);
        want.insert("disambiguatedPaths", doc! { "a.1": ["a", "1"] });
        assert_eq!(d, want);
    }

    #[test]
    fn array_index_then_numeric_field() {
        let d = describe(
            doc! { "_id": 1, "a": [{ "1": 1 }] },
            doc! { "_id": 1, "a": [{ "1": 2 }] },
        );
        let mut want = plain(doc! { "a.0.1": 2 }, vec![], vec![]);
        want.insert("disambiguatedPaths", doc! { "a.0.1": ["a", 0i32, "1"] });
        assert_eq!(d, want);
    }

    #[test]
    fn truncated_array() {
        let pre = doc! { "_id": 1, "array": ["foo", { "a": "bar" }, 1, 2, 3] };
        let post = doc! { "_id": 1, "array": ["foo", { "a": "bar" }] };
        let want = plain(
            doc! {},
            vec![],
            vec![doc! { "field": "array", "newSize": 2 }],
        );
        assert_eq!(describe(pre, post), want);
    }

    #[test]
    fn removed_inserted_and_nested_fields() {
        let pre = doc! { "_id": 1, "a": 1, "b": { "c": 1, "d": 2 }, "z": 0 };
        let post = doc! { "_id": 1, "a": 1, "b": { "c": 1, "e": 3 }, "n": "new" };
        let want = plain(doc! { "n": "new", "b.e": 3 }, vec!["z", "b.d"], vec![]);
        assert_eq!(describe(pre, post), want);
    }

    #[test]
    fn type_change_sets_whole_value() {
        let pre = doc! { "_id": 1, "a": { "b": 1 }, "n": 1 };
        let post = doc! { "_id": 1, "a": [1], "n": 1.0 };
        assert_eq!(
            describe(pre, post),
            plain(doc! { "a": [1], "n": 1.0 }, vec![], vec![])
        );
    }

    #[test]
    fn array_elements_changed_and_appended() {
        let big = "*".repeat(64);
        let pre = doc! { "_id": 1, "a": [&big, 1, { "x": 1, "y": &big }] };
        let post = doc! { "_id": 1, "a": [&big, 2, { "x": 2, "y": &big }, 4] };
        let want = plain(doc! { "a.1": 2, "a.3": 4, "a.2.x": 2 }, vec![], vec![]);
        let got = describe(pre, post);
        assert_eq!(got.get_document("updatedFields").unwrap().len(), 3);
        for (k, v) in want.get_document("updatedFields").unwrap() {
            assert_eq!(
                got.get_document("updatedFields").unwrap().get(k),
                Some(v),
                "{k}"
            );
        }
        assert!(got.get("disambiguatedPaths").is_none());
    }

    #[test]
    fn small_array_rewritten_whole() {
        // mongod's jstest: [0, 1, 2, 3] -> [0] is reported as the whole new array, the diff
        // (resize to 1) being larger than the array.
        let pre = doc! { "_id": 1, "arr": [0, 1, 2, 3] };
        let post = doc! { "_id": 1, "arr": [0] };
        assert_eq!(
            describe(pre, post),
            plain(doc! { "arr": [0] }, vec![], vec![])
        );
    }

    #[test]
    fn dotted_field_names_are_disambiguated() {
        let big = "*".repeat(128);
        let pre = doc! { "_id": 1, "obj": { "sub.obj": { "d.a..": [[{ "a": { "b.c": 1, "f": &big } }, "t"]] } } };
        let post = doc! { "_id": 1, "obj": { "sub.obj": { "d.a..": [[{ "a": { "b.c": 2, "f": &big } }]] } } };
        let got = describe(pre, post);
        let updated = "obj.sub.obj.d.a...0.0.a.b.c";
        let truncated = "obj.sub.obj.d.a...0";
        let mut want = plain(
            doc! { updated: 2 },
            vec![],
            vec![doc! { "field": truncated, "newSize": 1 }],
        );
        want.insert(
            "disambiguatedPaths",
            doc! {
                truncated: ["obj", "sub.obj", "d.a..", 0i32],
                updated: ["obj", "sub.obj", "d.a..", 0i32, 0i32, "a", "b.c"],
            },
        );
        assert_eq!(got, want);
    }

    #[test]
    fn array_index_alone_is_not_ambiguous() {
        let big = "*".repeat(64);
        let pre = doc! { "_id": 1, "a": [&big, 1] };
        let post = doc! { "_id": 1, "a": [&big, 3] };
        assert_eq!(
            describe(pre, post),
            plain(doc! { "a.1": 3 }, vec![], vec![])
        );
    }

    #[test]
    fn id_and_reordering() {
        let pre = doc! { "_id": 1, "a": 1, "b": 2 };
        let post = doc! { "b": 2, "_id": 1, "a": 1 };
        // Moved fields are set whole, as mongod does; `_id` never appears.
        let got = describe(pre, post);
        assert!(
            !got.get_document("updatedFields")
                .unwrap()
                .contains_key("_id")
        );
        assert_eq!(got.get_array("removedFields").unwrap().len(), 0);
    }

    #[test]
    fn identical_documents_describe_nothing() {
        let d = doc! { "_id": 1, "a": [1, { "b": 2 }], "c": { "d": null } };
        assert_eq!(describe(d.clone(), d), plain(doc! {}, vec![], vec![]));
    }
}
