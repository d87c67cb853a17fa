//! Find projections: inclusion, exclusion, `$slice`, `$elemMatch`, positional (`a.$`), literal
//! values and (as in
//! MongoDB 4.4+) aggregation expressions such as `{x: "$a.b"}` or `{y: {$add: ["$a", 1]}}`.

use bson::raw::CStr;
use bson::{RawArray, RawArrayBuf, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};

use crate::compare::as_num;
use crate::error::QueryError;
use crate::filter::{Pred, parse_elem_match, truthy};

#[derive(Debug, Clone)]
pub struct Projection {
    root: Node,
    inclusion: bool,
    /// `{}` returns documents untouched.
    identity: bool,
    /// Has a positional (`a.$`) item, which needs the query's filter to find its element.
    positional: bool,
    filter: Option<crate::Filter>,
    /// Has `$meta: "textScore"`; the matcher that scores (`text.rs`), once bound.
    meta: bool,
    text: Option<std::sync::Arc<mangrove_text::TextMatch>>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    children: Vec<(String, Item)>,
}

#[derive(Debug, Clone)]
enum Item {
    Include,
    Exclude,
    Sub(Node),
    Slice {
        skip: i64,
        limit: Option<i64>,
    },
    ElemMatch(Box<Pred>),
    /// `a.$`: the array element the query's condition matched.
    Positional,
    Literal(RawBson),
    /// An aggregation expression, evaluated against the whole document.
    Computed(std::sync::Arc<Computed>),
}

struct Computed(crate::expr::Expr);

impl std::fmt::Debug for Computed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("expression")
    }
}

fn computed(value: RawBsonRef<'_>) -> Result<(Item, Kind), QueryError> {
    let item = match crate::expr::Expr::parse(value)? {
        crate::expr::Expr::Const(b) => {
            Item::Literal(RawBson::try_from(b).map_err(|e| bad(e.to_string()))?)
        }
        e => Item::Computed(std::sync::Arc::new(Computed(e))),
    };
    Ok((item, Kind::Include))
}

impl Node {
    fn get(&self, key: &str) -> Option<&Item> {
        self.children.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn has_literals(&self) -> bool {
        self.children.iter().any(|(_, item)| match item {
            Item::Literal(_) | Item::Computed(_) => true,
            Item::Sub(n) => n.has_literals(),
            _ => false,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Include,
    Exclude,
    /// `$slice`/`$elemMatch`: valid in either mode and decide neither.
    Neutral,
}

/// A field's kind decides the projection's mode (inclusion: `Some(true)`) or must agree with it.
fn settle_mode(kind: Kind, mode: &mut Option<bool>, path: &str) -> Result<(), QueryError> {
    match (kind, *mode) {
        (Kind::Include, Some(false)) => Err(QueryError::location(
            31253,
            format!("Cannot do inclusion on field {path} in exclusion projection"),
        )),
        (Kind::Exclude, Some(true)) => Err(QueryError::location(
            31254,
            format!("Cannot do exclusion on field {path} in inclusion projection"),
        )),
        (Kind::Include, None) => {
            *mode = Some(true);
            Ok(())
        }
        (Kind::Exclude, None) => {
            *mode = Some(false);
            Ok(())
        }
        _ => Ok(()),
    }
}

fn bad(msg: impl Into<String>) -> QueryError {
    QueryError::bad_value(msg)
}

impl Projection {
    pub fn parse(spec: &RawDocument) -> Result<Projection, QueryError> {
        let mut root = Node::default();
        let mut mode: Option<bool> = None;
        let mut has_id = false;
        let mut flat = Vec::new();
        flatten(spec, String::new(), &mut flat)?;
        let mut positional = false;
        let mut elem_match = false;
        let mut metas = 0;
        for (path, value) in flat {
            let (path, item, kind) = match path.strip_suffix(".$") {
                Some(base) if !base.is_empty() && !base.contains(".$") => {
                    if positional {
                        return Err(QueryError::location(
                            31276,
                            "Cannot specify more than one positional proj. per query.",
                        ));
                    }
                    if !truthy(value) || matches!(value, RawBsonRef::Document(_)) {
                        return Err(bad(format!(
                            "positional projection on '{path}' must be an inclusion (1 or true)"
                        )));
                    }
                    positional = true;
                    (base.to_owned(), Item::Positional, Kind::Include)
                }
                _ => {
                    let (item, kind) = parse_item(&path, value)?;
                    (path, item, kind)
                }
            };
            let is_id = path == "_id";
            has_id |= is_id;
            elem_match |= matches!(item, Item::ElemMatch(_));
            // `$meta` decides no mode: `{_id: 1, s: {$meta: ...}}` is still `_id` alone.
            metas += usize::from(
                matches!(&item, Item::Computed(c) if matches!(c.0, crate::expr::Expr::TextScore)),
            );
            if !is_id {
                settle_mode(kind, &mut mode, &path)?;
            }
            insert(&mut root, &path, item)?;
        }
        let only_id_included = mode.is_none()
            && matches!(root.get("_id"), Some(Item::Include))
            && root.children.len() == 1 + metas;
        // `$slice` alone keeps the other fields (an exclusion); `$elemMatch` alone returns only
        // its field and `_id` (an inclusion), as mongod does.
        let inclusion = mode.unwrap_or(only_id_included || elem_match);
        if inclusion && !has_id {
            root.children.insert(0, ("_id".to_owned(), Item::Include));
        }
        Ok(Projection {
            identity: root.children.is_empty(),
            root,
            inclusion,
            positional,
            filter: None,
            meta: crate::text_meta::mentions_meta(spec),
            text: None,
        })
    }

    /// Gives a positional projection the query's filter, which decides the element `a.$`
    /// returns (the first one the filter's condition on that array matched).
    pub fn with_filter(mut self, filter: &crate::Filter) -> Projection {
        if self.positional {
            self.filter = Some(filter.clone());
        }
        self
    }

    /// Whether the projection asks for `$meta: "textScore"`.
    pub fn needs_text_score(&self) -> bool {
        self.meta
    }

    /// Gives `$meta: "textScore"` the query's text matcher, which scores each document.
    pub fn bind_text(&mut self, matcher: std::sync::Arc<mangrove_text::TextMatch>) {
        self.text = Some(matcher);
    }

    pub fn apply(&self, doc: &RawDocument) -> Result<RawDocumentBuf, QueryError> {
        // Bound (find), the projection scores; else a pipeline's scorer is in place.
        if let Some(text) = self.text.as_ref().filter(|_| self.meta) {
            return crate::text_meta::with_scorer(Some(text), || self.apply_inner(doc));
        }
        self.apply_inner(doc)
    }

    fn apply_inner(&self, doc: &RawDocument) -> Result<RawDocumentBuf, QueryError> {
        if self.identity {
            return Ok(doc.to_owned());
        }
        let pos = match &self.filter {
            Some(f) if self.positional => f.positional_index(doc),
            _ => None,
        };
        project_doc(doc, doc, &self.root, self.inclusion, pos)
    }
}

/// Expands nested sub-projections (`{a: {b: 1}}`) into dotted paths.
fn flatten<'a>(
    spec: &'a RawDocument,
    prefix: String,
    out: &mut Vec<(String, RawBsonRef<'a>)>,
) -> Result<(), QueryError> {
    for elem in spec.iter() {
        let (key, value) = elem.map_err(|e| bad(format!("invalid BSON in projection: {e}")))?;
        let path = if prefix.is_empty() {
            key.as_str().to_owned()
        } else {
            format!("{prefix}.{}", key.as_str())
        };
        match value {
            RawBsonRef::Document(d) if !starts_with_dollar(d) => {
                if d.is_empty() {
                    return Err(QueryError::new(
                        51270,
                        "Location51270",
                        format!(
                            "An empty sub-projection is not a valid value. Found empty object at path {path}"
                        ),
                    ));
                }
                flatten(d, path, out)?;
            }
            _ => out.push((path, value)),
        }
    }
    Ok(())
}

fn starts_with_dollar(d: &RawDocument) -> bool {
    matches!(d.iter().next(), Some(Ok((k, _))) if k.as_str().starts_with('$'))
}

fn parse_item(path: &str, value: RawBsonRef<'_>) -> Result<(Item, Kind), QueryError> {
    if path.split('.').any(str::is_empty) {
        return Err(bad(format!(
            "FieldPath field names may not be empty strings: '{path}'"
        )));
    }
    if path.ends_with(".$") || path == "$" || path.contains(".$.") {
        return Err(bad(format!(
            "positional projection must be on a field path ending in '.$', once: '{path}'"
        )));
    }
    if path.split('.').any(|p| p.starts_with('$')) {
        return Err(bad(format!(
            "FieldPath field names may not start with '$': '{path}'"
        )));
    }
    match value {
        RawBsonRef::Boolean(_)
        | RawBsonRef::Int32(_)
        | RawBsonRef::Int64(_)
        | RawBsonRef::Double(_)
        | RawBsonRef::Decimal128(_) => Ok(if truthy(value) {
            (Item::Include, Kind::Include)
        } else {
            (Item::Exclude, Kind::Exclude)
        }),
        RawBsonRef::Document(d) => parse_operator_item(path, d, value),
        RawBsonRef::String(v) if v.starts_with('$') => computed(value),
        RawBsonRef::Array(_) => computed(value),
        // Any other value is a computed field whose value is that literal.
        _ => Ok((Item::Literal(value.into()), Kind::Include)),
    }
}

/// `{$op: argument}` at `path`: a find projection operator, or else a computed field.
fn parse_operator_item(
    path: &str,
    d: &RawDocument,
    value: RawBsonRef<'_>,
) -> Result<(Item, Kind), QueryError> {
    let mut it = d.iter();
    let (op, arg) = match it.next() {
        Some(Ok((k, v))) => (k.as_str(), v),
        _ => return Err(bad("invalid projection operator")),
    };
    if it.next().is_some() {
        return Err(bad(format!(
            "Projection operator documents must contain exactly one field at path {path}"
        )));
    }
    match op {
        // `{$slice: ["$arr", n]}` (an array expression first) is the aggregation
        // operator; numbers alone are the find projection's `$slice`.
        "$slice" => match arg {
            RawBsonRef::Array(items)
                if items
                    .get(0)
                    .ok()
                    .flatten()
                    .is_some_and(|first| as_num(first).is_none()) =>
            {
                computed(value)
            }
            _ => Ok((parse_slice(arg)?, Kind::Neutral)),
        },
        "$elemMatch" => {
            if path.contains('.') {
                return Err(bad("Cannot use $elemMatch projection on a nested field."));
            }
            Ok((
                Item::ElemMatch(Box::new(parse_elem_match(arg, 0)?)),
                Kind::Neutral,
            ))
        }
        "$literal" => Ok((Item::Literal(arg.into()), Kind::Include)),
        "$meta" => {
            crate::text_meta::parse_meta(arg)?;
            let score = crate::expr::Expr::TextScore;
            Ok((
                Item::Computed(std::sync::Arc::new(Computed(score))),
                Kind::Neutral,
            ))
        }
        _ => computed(value),
    }
}

fn parse_slice(arg: RawBsonRef<'_>) -> Result<Item, QueryError> {
    let int = |v: RawBsonRef<'_>| -> Option<i64> {
        as_num(v).map(|n| match n {
            crate::compare::Num::Int(i) => i,
            crate::compare::Num::Dbl(d) => d as i64,
        })
    };
    match arg {
        RawBsonRef::Array(arr) => {
            let items: Vec<RawBsonRef<'_>> = arr.into_iter().map_while(Result::ok).collect();
            if items.len() != 2 {
                return Err(bad("$slice array wrong size"));
            }
            let skip = int(items[0]).ok_or_else(|| bad("$slice only supports numbers"))?;
            let limit = int(items[1]).ok_or_else(|| bad("$slice only supports numbers"))?;
            if limit <= 0 {
                return Err(bad("$slice limit must be positive"));
            }
            Ok(Item::Slice {
                skip,
                limit: Some(limit),
            })
        }
        _ => {
            let n = int(arg)
                .ok_or_else(|| bad("$slice only supports numbers and [skip, limit] arrays"))?;
            Ok(Item::Slice {
                skip: n,
                limit: None,
            })
        }
    }
}

fn insert(root: &mut Node, path: &str, item: Item) -> Result<(), QueryError> {
    let parts: Vec<&str> = path.split('.').collect();
    let collision = || QueryError::location(31250, format!("Path collision at {path}"));
    let mut node = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let pos = node.children.iter().position(|(k, _)| k == part);
        if last {
            if pos.is_some() {
                return Err(collision());
            }
            node.children.push(((*part).to_owned(), item));
            return Ok(());
        }
        let idx = match pos {
            Some(idx) => idx,
            None => {
                node.children
                    .push(((*part).to_owned(), Item::Sub(Node::default())));
                node.children.len() - 1
            }
        };
        node = match &mut node.children[idx].1 {
            Item::Sub(n) => n,
            _ => return Err(collision()),
        };
    }
    Ok(())
}

fn cstr(key: &str) -> Result<&CStr, QueryError> {
    <&CStr>::try_from(key).map_err(|_| bad(format!("field name contains a NUL byte: {key:?}")))
}

fn project_doc(
    root: &RawDocument,
    doc: &RawDocument,
    node: &Node,
    inclusion: bool,
    pos: Option<usize>,
) -> Result<RawDocumentBuf, QueryError> {
    let mut out = RawDocumentBuf::new();
    for elem in doc.iter() {
        let (key, value) = elem.map_err(|e| bad(format!("invalid BSON in document: {e}")))?;
        project_field(
            root,
            key,
            value,
            node.get(key.as_str()),
            inclusion,
            pos,
            &mut out,
        )?;
    }
    add_new_fields(root, doc, node, inclusion, pos, &mut out)?;
    Ok(out)
}

/// One field of the input document, projected by its item (`None`: not named).
fn project_field(
    root: &RawDocument,
    key: &CStr,
    value: RawBsonRef<'_>,
    item: Option<&Item>,
    inclusion: bool,
    pos: Option<usize>,
    out: &mut RawDocumentBuf,
) -> Result<(), QueryError> {
    match item {
        None => {
            if !inclusion {
                out.append(key, value);
            }
        }
        Some(Item::Include) => out.append(key, value),
        Some(Item::Exclude) | Some(Item::Literal(_)) | Some(Item::Computed(_)) => {}
        Some(Item::Sub(child)) => match value {
            RawBsonRef::Document(d) => out.append(
                key,
                RawBson::Document(project_doc(root, d, child, inclusion, pos)?),
            ),
            RawBsonRef::Array(a) => out.append(
                key,
                RawBson::Array(project_array(root, a, child, inclusion, pos)?),
            ),
            _ => {
                if !inclusion {
                    out.append(key, value);
                }
            }
        },
        Some(Item::Positional) => match value {
            RawBsonRef::Array(a) => {
                let element = pos.and_then(|i| a.into_iter().map_while(Result::ok).nth(i));
                let Some(element) = element else {
                    return Err(QueryError::location(
                        51246,
                        "Executor error during find command :: caused by :: positional operator '.$' couldn't find a matching element in the array",
                    ));
                };
                let mut arr = RawArrayBuf::new();
                arr.push(element);
                out.append(key, RawBson::Array(arr));
            }
            _ => out.append(key, value),
        },
        Some(Item::Slice { skip, limit }) => match value {
            RawBsonRef::Array(a) => out.append(key, RawBson::Array(slice(a, *skip, *limit))),
            _ => out.append(key, value),
        },
        Some(Item::ElemMatch(pred)) => {
            if let RawBsonRef::Array(a) = value
                && let Some(e) = a
                    .into_iter()
                    .map_while(Result::ok)
                    .find(|e| elem_matches(pred, *e))
            {
                let mut arr = RawArrayBuf::new();
                arr.push(e);
                out.append(key, RawBson::Array(arr));
            }
        }
    }
    Ok(())
}

/// The fields the projection adds: literals, computed values, and sub-documents holding them
/// where the input has none.
fn add_new_fields(
    root: &RawDocument,
    doc: &RawDocument,
    node: &Node,
    inclusion: bool,
    pos: Option<usize>,
    out: &mut RawDocumentBuf,
) -> Result<(), QueryError> {
    // Computed fields are charged as they are added, so many large ones cannot add up to a
    // document beyond what one evaluation may hold.
    let mut held = crate::memory::Held::new("$project");
    for (key, item) in &node.children {
        let present = doc.get(key).ok().flatten().is_some();
        match item {
            Item::Literal(v) => out.append(cstr(key)?, v.clone()),
            Item::Computed(e) => {
                if let Some(v) = e.0.eval(root)? {
                    held.keep(&v)?;
                    out.append(
                        cstr(key)?,
                        RawBson::try_from(v).map_err(|e| bad(e.to_string()))?,
                    );
                }
            }
            Item::Sub(child) if !present && child.has_literals() => {
                let empty = RawDocumentBuf::new();
                out.append(
                    cstr(key)?,
                    RawBson::Document(project_doc(root, &empty, child, inclusion, pos)?),
                );
            }
            _ => {}
        }
    }
    Ok(())
}

fn project_array(
    root: &RawDocument,
    arr: &RawArray,
    node: &Node,
    inclusion: bool,
    pos: Option<usize>,
) -> Result<RawArrayBuf, QueryError> {
    let mut out = RawArrayBuf::new();
    for v in arr.into_iter().map_while(Result::ok) {
        match v {
            RawBsonRef::Document(d) => out.push(RawBson::Document(project_doc(
                root, d, node, inclusion, pos,
            )?)),
            RawBsonRef::Array(a) => out.push(RawBson::Array(project_array(
                root, a, node, inclusion, pos,
            )?)),
            // Inclusion of a sub-path drops scalars; exclusion leaves them alone.
            _ => {
                if !inclusion {
                    out.push(v);
                }
            }
        }
    }
    Ok(out)
}

fn elem_matches(pred: &Pred, e: RawBsonRef<'_>) -> bool {
    match pred {
        Pred::ElemMatchObj(node) => match e {
            RawBsonRef::Document(d) => node.matches(d),
            _ => false,
        },
        Pred::ElemMatchVal(preds) => preds.iter().all(|p| p.matches_value(Some(e))),
        _ => false,
    }
}

fn slice(arr: &RawArray, skip: i64, limit: Option<i64>) -> RawArrayBuf {
    let items: Vec<RawBsonRef<'_>> = arr.into_iter().map_while(Result::ok).collect();
    let len = items.len() as i64;
    let (start, count) = match limit {
        None if skip >= 0 => (0, skip),
        None => ((len + skip).max(0), len),
        Some(limit) => {
            let start = if skip >= 0 {
                skip.min(len)
            } else {
                (len + skip).max(0)
            };
            (start, limit)
        }
    };
    items
        .into_iter()
        .skip(start as usize)
        .take(count.max(0) as usize)
        .collect()
}
