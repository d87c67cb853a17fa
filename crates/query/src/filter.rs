//! Query filters (`find`'s `filter`, `update`'s `q`, ...).

use bson::{Bson, Document, RawBson, RawBsonRef, RawDocument};

use crate::compare::{Num, as_num, compare_values, values_equal};
use crate::error::QueryError;
use crate::path::{split_path, walk};
pub(crate) use crate::preds::{CmpOp, MAX_FILTER_DEPTH, TypeSel};
use crate::preds::{compare_matches, type_alias, type_matches};
use crate::regex::Re;
use crate::text_meta::TextNode;

/// A parsed filter, evaluated per document against the raw bytes.
#[derive(Debug, Clone)]
pub struct Filter {
    root: Node,
    /// Has an `$expr`, whose evaluation can fail at runtime (`$divide` by zero).
    has_expr: bool,
}

#[derive(Debug, Clone)]
pub(crate) enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Nor(Vec<Node>),
    /// `$expr`: an aggregation expression over the whole document, true when truthy.
    Expr(std::sync::Arc<ExprNode>),
    /// `$jsonSchema`, judged against the whole document (an array element under `$elemMatch`).
    JsonSchema(Box<crate::jsonschema::Schema>),
    /// `$where`: a JavaScript function of the document, true when its result is truthy.
    Where(std::sync::Arc<str>),
    Field {
        path: String,
        parts: Vec<String>,
        pred: Pred,
    },
    /// `$text` (`text.rs`): matches only once bound to the collection's text index.
    Text(Box<crate::text_meta::TextNode>),
}

pub(crate) struct ExprNode(crate::expr::Expr);

thread_local! {
    /// The first runtime error of an `$expr` since the last `matches_checked`.
    static EXPR_ERROR: std::cell::RefCell<Option<QueryError>> = const { std::cell::RefCell::new(None) };
}

impl std::fmt::Debug for ExprNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("$expr")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BitOp {
    AllSet,
    AllClear,
    AnySet,
    AnyClear,
}

#[derive(Debug, Clone)]
pub(crate) enum Pred {
    Eq(RawBson),
    Cmp(CmpOp, RawBson),
    Regex(Box<Re>),
    In {
        values: Vec<RawBson>,
        regexes: Vec<Re>,
        has_null: bool,
    },
    Exists(bool),
    Type(Vec<TypeSel>),
    Size(i64),
    Mod(i64, i64),
    Bits(BitOp, Vec<u8>),
    ElemMatchObj(Box<Node>),
    ElemMatchVal(Vec<Pred>),
    /// Conjunction where each member is evaluated over the whole path independently.
    All(Vec<Pred>),
    /// Negation of a conjunction evaluated over the whole path (`$not`, `$ne`, `$nin`).
    Not(Vec<Pred>),
    Never,
    /// A geospatial operator (`geo_filter.rs`), over the whole value at the path.
    Geo(std::sync::Arc<mangrove_geo::GeoOp>),
}

impl Filter {
    /// Whether the filter runs JavaScript (`$where`), which aggregation's `$match` refuses.
    pub fn has_where(&self) -> bool {
        fn walk(n: &Node) -> bool {
            match n {
                Node::Where(_) => true,
                Node::And(c) | Node::Or(c) | Node::Nor(c) => c.iter().any(walk),
                _ => false,
            }
        }
        walk(&self.root)
    }

    pub fn parse(filter: &RawDocument) -> Result<Filter, QueryError> {
        let backtracking_before = crate::regex::backtracking_compiled();
        let root = parse_doc(filter, 0)?;
        // A backtracking pattern anywhere in the filter can fail at runtime, like `$expr`.
        let backtracking = crate::regex::backtracking_compiled() != backtracking_before;
        check_text_placement(&root, true, &mut 0)?;
        check_near_placement(&root)?;
        Ok(Filter {
            has_expr: backtracking || contains_expr(&root),
            root,
        })
    }

    /// [`Filter::matches`], reporting an `$expr` that fails at runtime as mongod does; costs
    /// nothing extra for filters without `$expr`.
    pub fn try_matches(&self, doc: &RawDocument) -> Result<bool, QueryError> {
        if self.has_expr {
            self.matches_checked(doc)
        } else {
            Ok(self.root.matches(doc))
        }
    }

    pub fn matches(&self, doc: &RawDocument) -> bool {
        self.root.matches(doc)
    }

    pub(crate) fn root(&self) -> &Node {
        &self.root
    }

    /// The `$text` node, found where mongod allows it: at the top, or under `$and`/`$or`.
    pub(crate) fn text_node(&self) -> Option<&TextNode> {
        fn find(node: &Node) -> Option<&TextNode> {
            match node {
                Node::Text(t) => Some(t),
                Node::And(c) | Node::Or(c) => c.iter().find_map(find),
                _ => None,
            }
        }
        find(&self.root)
    }

    /// The filter's `$near`/`$nearSphere` (in its top-level conjunction) and its path.
    pub fn near(&self) -> Option<(&str, &mangrove_geo::Near)> {
        fn find(node: &Node) -> Option<(&str, &mangrove_geo::Near)> {
            match node {
                Node::And(children) => children.iter().find_map(find),
                Node::Field {
                    path,
                    pred: Pred::Geo(op),
                    ..
                } => match op.as_ref() {
                    mangrove_geo::GeoOp::Near(n) => Some((path.as_str(), n)),
                    _ => None,
                },
                _ => None,
            }
        }
        find(&self.root)
    }

    /// The filter's `$text` arguments, if it has one.
    pub fn text_search(&self) -> Option<&mangrove_text::TextSearch> {
        self.text_node().map(|t| &t.search)
    }

    /// The matcher `bind_text` (`text.rs`) gave the filter's `$text`, if any.
    pub fn text_match(&self) -> Option<std::sync::Arc<mangrove_text::TextMatch>> {
        self.text_node().and_then(|t| t.bound.get().cloned())
    }

    /// Like [`Filter::matches`], but an `$expr` that fails at runtime (`$divide` by zero, a
    /// bad conversion) is reported as the error mongod would return.
    pub fn matches_checked(&self, doc: &RawDocument) -> Result<bool, QueryError> {
        EXPR_ERROR.with(|slot| slot.borrow_mut().take());
        crate::regex::take_match_error();
        let matched = self.root.matches(doc);
        match EXPR_ERROR.with(|slot| slot.borrow_mut().take()) {
            Some(err) => Err(err),
            None => crate::regex::take_match_error().map_or(Ok(matched), Err),
        }
    }

    /// The single `_id` value the filter pins, enabling a point lookup instead of a scan.
    pub fn id_equality(&self) -> Option<RawBson> {
        let mut eqs = Vec::new();
        collect_equalities(&self.root, &mut eqs);
        eqs.into_iter().find_map(|(path, v)| {
            let operator_like = matches!(v, RawBson::Document(d)
                if matches!(d.iter().next(), Some(Ok((k, _))) if k.as_str().starts_with('$')));
            let usable = path == "_id"
                && !operator_like
                && !matches!(
                    v,
                    RawBson::Array(_) | RawBson::RegularExpression(_) | RawBson::Undefined
                );
            usable.then(|| v.clone())
        })
    }

    /// The document an upsert starts from: every top-level equality, dotted paths expanded.
    pub fn equality_seed(&self) -> Result<Document, QueryError> {
        let mut eqs = Vec::new();
        collect_equalities(&self.root, &mut eqs);
        let mut seen: Vec<&str> = Vec::new();
        let mut out = Document::new();
        for (path, value) in eqs {
            for prev in &seen {
                if *prev == path {
                    return Err(not_single_value(format!(
                        "cannot infer query fields to set, path '{path}' is matched twice"
                    )));
                }
                let (short, long) = if prev.len() < path.len() {
                    (*prev, path)
                } else {
                    (path, *prev)
                };
                if long.starts_with(short) && long.as_bytes().get(short.len()) == Some(&b'.') {
                    return Err(not_single_value(format!(
                        "cannot infer query fields to set, both paths '{short}' and '{long}' are matched"
                    )));
                }
            }
            seen.push(path);
            let value = Bson::try_from(value.clone())
                .map_err(|e| QueryError::bad_value(format!("invalid BSON in filter: {e}")))?;
            insert_path(&mut out, path, value);
        }
        Ok(out)
    }
}

impl Filter {
    /// The index of the array element the filter matched, for the positional `$` update and
    /// projection operator: the first array met along a path of a top-level condition, and
    /// the first of its elements satisfying that condition.
    pub fn positional_index(&self, doc: &RawDocument) -> Option<usize> {
        let mut fields = Vec::new();
        collect_fields(&self.root, &mut fields);
        fields
            .into_iter()
            .find_map(|(parts, pred)| first_array_match(doc, parts, pred))
    }
}

fn collect_fields<'a>(node: &'a Node, out: &mut Vec<(&'a [String], &'a Pred)>) {
    match node {
        Node::And(children) => children.iter().for_each(|c| collect_fields(c, out)),
        // A field that must be absent names no element; one that must exist names the first
        // element that has it.
        Node::Field { parts, pred, .. } if !matches!(pred, Pred::Not(_) | Pred::Exists(false)) => {
            out.push((parts, pred));
        }
        _ => {}
    }
}

fn first_array_match(doc: &RawDocument, parts: &[String], pred: &Pred) -> Option<usize> {
    let mut current = doc;
    for (i, part) in parts.iter().enumerate() {
        match current.get(part).ok().flatten()? {
            RawBsonRef::Document(d) => current = d,
            RawBsonRef::Array(arr) => {
                let rest = &parts[i + 1..];
                return arr
                    .into_iter()
                    .map_while(Result::ok)
                    .position(|e| element_satisfies(e, rest, pred));
            }
            _ => return None,
        }
    }
    None
}

fn element_satisfies(e: RawBsonRef<'_>, rest: &[String], pred: &Pred) -> bool {
    if rest.is_empty() {
        return match pred {
            Pred::ElemMatchObj(node) => matches!(e, RawBsonRef::Document(d) if node.matches(d)),
            Pred::ElemMatchVal(preds) => preds.iter().all(|p| p.matches_value(Some(e))),
            Pred::All(preds) => preds.iter().all(|p| p.matches_value(Some(e))),
            _ => pred.matches_value(Some(e)),
        };
    }
    match e {
        RawBsonRef::Document(d) => pred.matches_path(d, rest),
        _ => false,
    }
}

fn not_single_value(msg: String) -> QueryError {
    QueryError::new(54, "NotSingleValueField", msg)
}

fn insert_path(doc: &mut Document, path: &str, value: Bson) {
    match path.split_once('.') {
        None => {
            doc.insert(path, value);
        }
        Some((head, rest)) => {
            let entry = doc
                .entry(head.to_owned())
                .or_insert_with(|| Bson::Document(Document::new()));
            if !matches!(entry, Bson::Document(_)) {
                *entry = Bson::Document(Document::new());
            }
            if let Bson::Document(sub) = entry {
                insert_path(sub, rest, value);
            }
        }
    }
}

fn collect_equalities<'a>(node: &'a Node, out: &mut Vec<(&'a str, &'a RawBson)>) {
    match node {
        Node::And(children) => children.iter().for_each(|c| collect_equalities(c, out)),
        Node::Field {
            path,
            pred: Pred::Eq(v),
            ..
        } => out.push((path, v)),
        _ => {}
    }
}

impl Node {
    pub(crate) fn matches(&self, doc: &RawDocument) -> bool {
        match self {
            Node::And(children) => children.iter().all(|c| c.matches(doc)),
            Node::Or(children) => children.iter().any(|c| c.matches(doc)),
            Node::Nor(children) => !children.iter().any(|c| c.matches(doc)),
            Node::Field { parts, pred, .. } => pred.matches_path(doc, parts),
            Node::JsonSchema(schema) => schema.matches_document(doc),
            Node::Text(t) => t.matches(doc),
            // Matching is infallible by signature; an expression's runtime error is kept for
            // `Filter::matches_checked` to report and the document counts as not matching.
            Node::Expr(e) => e.0.truthy(doc).unwrap_or_else(|err| {
                EXPR_ERROR.with(|slot| {
                    slot.borrow_mut().get_or_insert(err);
                });
                false
            }),
            Node::Where(f) => mangrove_js::where_matches(f, doc).unwrap_or_else(|err| {
                EXPR_ERROR.with(|slot| {
                    slot.borrow_mut().get_or_insert(err);
                });
                false
            }),
        }
    }
}

impl Pred {
    fn matches_path(&self, doc: &RawDocument, parts: &[String]) -> bool {
        match self {
            Pred::Not(preds) => !preds.iter().all(|p| p.matches_path(doc, parts)),
            Pred::All(preds) => preds.iter().all(|p| p.matches_path(doc, parts)),
            Pred::Never => false,
            Pred::Exists(want) => walk(doc, parts, false, &mut |v| v.is_some()) == *want,
            Pred::Geo(_) => walk(doc, parts, false, &mut |v| self.matches_value(v)),
            // Array-shape operators look at arrays as a whole, never at their elements.
            Pred::Size(_) | Pred::ElemMatchObj(_) | Pred::ElemMatchVal(_) => {
                walk(doc, parts, false, &mut |v| self.matches_value(v))
            }
            _ => walk(doc, parts, true, &mut |v| self.matches_value(v)),
        }
    }

    /// Tests one value (no implicit array traversal); `None` is a missing field.
    pub(crate) fn matches_value(&self, v: Option<RawBsonRef<'_>>) -> bool {
        match self {
            Pred::Eq(operand) => match operand {
                RawBson::Null => matches!(v, None | Some(RawBsonRef::Null)),
                _ => v.is_some_and(|v| values_equal(v, operand.as_raw_bson_ref())),
            },
            Pred::Cmp(op, operand) => compare_matches(*op, operand.as_raw_bson_ref(), v),
            Pred::Regex(re) => v.is_some_and(|v| re.matches(v)),
            Pred::In {
                values,
                regexes,
                has_null,
            } => match v {
                None | Some(RawBsonRef::Null) if *has_null => true,
                None => false,
                Some(v) => {
                    values
                        .binary_search_by(|x| compare_values(x.as_raw_bson_ref(), v))
                        .is_ok()
                        || regexes.iter().any(|re| re.matches(v))
                }
            },
            Pred::Exists(want) => v.is_some() == *want,
            Pred::Type(sels) => v.is_some_and(|v| type_matches(sels, v)),
            Pred::Size(n) => match v {
                Some(RawBsonRef::Array(arr)) => {
                    arr.into_iter().map_while(Result::ok).count() as i64 == *n
                }
                _ => false,
            },
            Pred::Mod(divisor, remainder) => v
                .and_then(as_num)
                .and_then(num_to_i64_trunc)
                .is_some_and(|x| x.wrapping_rem(*divisor) == *remainder),
            Pred::Bits(op, mask) => v.is_some_and(|v| bits_match(*op, mask, v)),
            Pred::ElemMatchObj(node) => match v {
                Some(RawBsonRef::Array(arr)) => {
                    arr.into_iter().map_while(Result::ok).any(|e| match e {
                        RawBsonRef::Document(d) => node.matches(d),
                        RawBsonRef::Array(a) => {
                            RawDocument::from_bytes(a.as_bytes()).is_ok_and(|d| node.matches(d))
                        }
                        _ => false,
                    })
                }
                _ => false,
            },
            Pred::ElemMatchVal(preds) => match v {
                Some(RawBsonRef::Array(arr)) => arr
                    .into_iter()
                    .map_while(Result::ok)
                    .any(|e| preds.iter().all(|p| p.matches_value(Some(e)))),
                _ => false,
            },
            Pred::All(preds) => preds.iter().all(|p| p.matches_value(v)),
            Pred::Not(preds) => !preds.iter().all(|p| p.matches_value(v)),
            Pred::Never => false,
            Pred::Geo(op) => v.is_some_and(|v| op.matches(v)),
        }
    }
}

/// mongod's rule for `$near`/`$nearSphere`: at most one, in the top-level conjunction.
fn check_near_placement(root: &Node) -> Result<(), QueryError> {
    fn is_near(p: &Pred) -> bool {
        matches!(p, Pred::Geo(op) if matches!(op.as_ref(), mangrove_geo::GeoOp::Near(_)))
    }
    fn nears(node: &Node) -> usize {
        match node {
            Node::And(c) | Node::Or(c) | Node::Nor(c) => c.iter().map(nears).sum(),
            Node::Field { pred, .. } => pred_nears(pred),
            _ => 0,
        }
    }
    fn pred_nears(p: &Pred) -> usize {
        match p {
            Pred::Not(ps) | Pred::All(ps) | Pred::ElemMatchVal(ps) => {
                ps.iter().map(pred_nears).sum()
            }
            Pred::ElemMatchObj(n) => nears(n),
            p => usize::from(is_near(p)),
        }
    }
    fn top(node: &Node) -> usize {
        match node {
            Node::And(c) => c.iter().map(top).sum(),
            Node::Field { pred, .. } => usize::from(is_near(pred)),
            _ => 0,
        }
    }
    match nears(root) {
        0 => Ok(()),
        n if n > 1 => Err(bad("Too many geoNear expressions")),
        _ if top(root) == 1 => Ok(()),
        _ => Err(bad("geoNear must be top-level expr")),
    }
}

fn num_to_i64_trunc(n: Num) -> Option<i64> {
    match n {
        Num::Int(i) => Some(i),
        Num::Dbl(d) if d.is_finite() => Some(d.trunc() as i64),
        Num::Dbl(_) => None,
    }
}

fn bits_match(op: BitOp, mask: &[u8], v: RawBsonRef<'_>) -> bool {
    let value_bit: Box<dyn Fn(usize) -> bool> = match v {
        RawBsonRef::Binary(b) => {
            let bytes = b.bytes;
            Box::new(move |i| {
                bytes
                    .get(i / 8)
                    .is_some_and(|byte| byte >> (i % 8) & 1 == 1)
            })
        }
        _ => {
            let Some(x) = as_num(v).and_then(integral_i64) else {
                return false;
            };
            // Two's complement: bits above 63 repeat the sign bit.
            Box::new(move |i| if i >= 64 { x < 0 } else { (x >> i) & 1 == 1 })
        }
    };
    let mut mask_bits = (0..mask.len() * 8).filter(|&i| mask[i / 8] >> (i % 8) & 1 == 1);
    match op {
        BitOp::AllSet => mask_bits.all(&value_bit),
        BitOp::AllClear => mask_bits.all(|i| !value_bit(i)),
        BitOp::AnySet => mask_bits.any(&value_bit),
        BitOp::AnyClear => mask_bits.any(|i| !value_bit(i)),
    }
}

fn integral_i64(n: Num) -> Option<i64> {
    match n {
        Num::Int(i) => Some(i),
        Num::Dbl(d)
            if d.fract() == 0.0
                && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&d) =>
        {
            Some(d as i64)
        }
        Num::Dbl(_) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

fn bad(msg: impl Into<String>) -> QueryError {
    QueryError::bad_value(msg)
}

fn invalid_bson(e: impl std::fmt::Display) -> QueryError {
    bad(format!("invalid BSON in filter: {e}"))
}

/// mongod's rules on where `$text` may be: once, never under `$nor` or inside `$elemMatch`.
fn check_text_placement(node: &Node, allowed: bool, seen: &mut usize) -> Result<(), QueryError> {
    match node {
        Node::Text(_) if !allowed => Err(bad("text expression not allowed in nor")),
        Node::Text(_) => {
            *seen += 1;
            match *seen {
                1 => Ok(()),
                _ => Err(bad("Too many text expressions")),
            }
        }
        Node::And(c) | Node::Or(c) => c
            .iter()
            .try_for_each(|n| check_text_placement(n, allowed, seen)),
        Node::Nor(c) => c
            .iter()
            .try_for_each(|n| check_text_placement(n, false, seen)),
        Node::Field {
            pred: Pred::ElemMatchObj(inner),
            ..
        } => check_text_placement(inner, false, &mut 0)
            .map_err(|_| bad("$text can only be applied to the top-level document")),
        _ => Ok(()),
    }
}

fn contains_expr(node: &Node) -> bool {
    match node {
        Node::Expr(_) | Node::Where(_) => true,
        Node::And(c) | Node::Or(c) | Node::Nor(c) => c.iter().any(contains_expr),
        // $elemMatch holds nested filters, but $expr is not allowed inside it.
        _ => false,
    }
}

pub(crate) fn parse_doc(doc: &RawDocument, depth: usize) -> Result<Node, QueryError> {
    if depth > MAX_FILTER_DEPTH {
        return Err(bad(format!(
            "exceeded maximum query tree depth of {MAX_FILTER_DEPTH}"
        )));
    }
    let mut nodes = Vec::new();
    for elem in doc.iter() {
        let (key, value) = elem.map_err(invalid_bson)?;
        let key = key.as_str();
        // DBRef's fields are field names, not operators (mongod), e.g. inside `$elemMatch`.
        if let Some(op) = key.strip_prefix('$').filter(|_| !is_dbref_field(key)) {
            match op {
                "and" | "or" | "nor" => {
                    let children = parse_logical_list(key, value, depth)?;
                    nodes.push(match op {
                        "and" => Node::And(children),
                        "or" => Node::Or(children),
                        _ => Node::Nor(children),
                    });
                }
                "comment" => {}
                "alwaysTrue" => nodes.push(Node::And(Vec::new())),
                "alwaysFalse" => nodes.push(Node::Or(Vec::new())),
                "expr" => nodes.push(Node::Expr(std::sync::Arc::new(ExprNode(
                    crate::expr::Expr::parse(value)?,
                )))),
                "jsonSchema" => nodes.push(Node::JsonSchema(Box::new(
                    crate::jsonschema::Schema::parse(value, depth)?,
                ))),
                "where" => nodes.push(parse_where(value)?),
                "text" => nodes.push(Node::Text(Box::new(TextNode::parse(value)?))),
                "sampleRate" => {
                    return Err(bad(format!("{key} is not supported yet")));
                }
                _ => {
                    return Err(bad(format!(
                        "unknown top level operator: {key}. If you have a field name that starts with a '$' symbol, consider using $getField or $setField."
                    )));
                }
            }
        } else {
            nodes.push(parse_field(key, value, depth)?);
        }
    }
    Ok(if nodes.len() == 1 {
        nodes.pop().unwrap_or(Node::And(Vec::new()))
    } else {
        Node::And(nodes)
    })
}

/// `$where`: a string or Code (mongod 4.4+ refuses CodeWithScope), compiled now so a syntax
/// error is the parse's error; refused outright when JavaScript is disabled.
fn parse_where(value: RawBsonRef<'_>) -> Result<Node, QueryError> {
    if !mangrove_js::enabled() {
        return Err(QueryError::location(
            6108304,
            "no globalScriptEngine in $where parsing",
        ));
    }
    let code = match value {
        RawBsonRef::String(s) => s,
        RawBsonRef::JavaScriptCode(s) => s,
        RawBsonRef::JavaScriptCodeWithScope(_) => {
            return Err(QueryError::location(
                4649201,
                "$where no longer supports deprecated BSON type CodeWScope",
            ));
        }
        _ => return Err(bad("$where got bad type")),
    };
    Ok(Node::Where(mangrove_js::where_source(code)?.into()))
}

fn parse_logical_list(
    key: &str,
    value: RawBsonRef<'_>,
    depth: usize,
) -> Result<Vec<Node>, QueryError> {
    let RawBsonRef::Array(arr) = value else {
        return Err(bad(format!("{key} must be an array")));
    };
    let mut children = Vec::new();
    for item in arr {
        match item.map_err(invalid_bson)? {
            RawBsonRef::Document(d) => children.push(parse_doc(d, depth + 1)?),
            _ => return Err(bad("$or/$and/$nor entries need to be full objects")),
        }
    }
    if children.is_empty() {
        return Err(bad("$and/$or/$nor must be a nonempty array"));
    }
    Ok(children)
}

fn field_node(path: &str, pred: Pred) -> Node {
    Node::Field {
        path: path.to_owned(),
        parts: split_path(path),
        pred,
    }
}

/// A document value is an operator expression when its first key is `$`-prefixed, except for
/// DBRef-style documents, which are literal values.
fn is_operator_doc(d: &RawDocument) -> bool {
    match d.iter().next() {
        Some(Ok((k, _))) => {
            let k = k.as_str();
            k.starts_with('$') && !is_dbref_field(k)
        }
        _ => false,
    }
}

fn is_dbref_field(key: &str) -> bool {
    matches!(key, "$ref" | "$id" | "$db")
}

fn parse_field(path: &str, value: RawBsonRef<'_>, depth: usize) -> Result<Node, QueryError> {
    match value {
        RawBsonRef::Document(d) if is_operator_doc(d) => {
            let preds = parse_operators(d, depth)?;
            let mut nodes: Vec<Node> = preds.into_iter().map(|p| field_node(path, p)).collect();
            Ok(if nodes.len() == 1 {
                nodes.pop().unwrap_or(Node::And(Vec::new()))
            } else {
                Node::And(nodes)
            })
        }
        RawBsonRef::RegularExpression(r) => Ok(field_node(
            path,
            Pred::Regex(Box::new(Re::compile(
                r.pattern.as_str(),
                r.options.as_str(),
            )?)),
        )),
        _ => Ok(field_node(path, Pred::Eq(value.into()))),
    }
}

/// Parses `{$op: arg, ...}`; every key must be an operator.
pub(crate) fn parse_operators(d: &RawDocument, depth: usize) -> Result<Vec<Pred>, QueryError> {
    if depth > MAX_FILTER_DEPTH {
        return Err(bad(format!(
            "exceeded maximum query tree depth of {MAX_FILTER_DEPTH}"
        )));
    }
    if let Some(near) = crate::geo_filter::parse_near(d)? {
        return Ok(vec![Pred::Geo(near)]);
    }
    let mut preds = Vec::new();
    let mut regex: Option<RawBsonRef<'_>> = None;
    let mut options: Option<RawBsonRef<'_>> = None;
    for elem in d.iter() {
        let (key, value) = elem.map_err(invalid_bson)?;
        match key.as_str() {
            "$regex" => regex = Some(value),
            "$options" => options = Some(value),
            name => preds.push(parse_operator(name, value, depth)?),
        }
    }
    if let Some(pred) = parse_regex_operator(regex, options)? {
        preds.push(pred);
    }
    Ok(preds)
}

fn parse_regex_operator(
    regex: Option<RawBsonRef<'_>>,
    options: Option<RawBsonRef<'_>>,
) -> Result<Option<Pred>, QueryError> {
    let opts = match options {
        None => None,
        Some(RawBsonRef::String(s)) => Some(s),
        Some(_) => return Err(bad("$options has to be a string")),
    };
    let Some(regex) = regex else {
        return match opts {
            Some(_) => Err(bad("$options needs a $regex")),
            None => Ok(None),
        };
    };
    let re = match regex {
        RawBsonRef::String(p) => Re::compile(p, opts.unwrap_or(""))?,
        RawBsonRef::RegularExpression(r) => {
            if opts.is_some() && !r.options.as_str().is_empty() {
                return Err(QueryError::location(
                    51075,
                    "options set in both $regex and $options",
                ));
            }
            Re::compile(r.pattern.as_str(), opts.unwrap_or(r.options.as_str()))?
        }
        _ => return Err(bad("$regex has to be a string")),
    };
    Ok(Some(Pred::Regex(Box::new(re))))
}

fn parse_operator(name: &str, value: RawBsonRef<'_>, depth: usize) -> Result<Pred, QueryError> {
    let cmp = |op| Ok(Pred::Cmp(op, value.into()));
    match name {
        "$eq" => Ok(Pred::Eq(value.into())),
        "$ne" => {
            if let RawBsonRef::RegularExpression(_) = value {
                return Err(bad("Can't have regex as arg to $ne."));
            }
            Ok(Pred::Not(vec![Pred::Eq(value.into())]))
        }
        "$gt" => cmp(CmpOp::Gt),
        "$gte" => cmp(CmpOp::Gte),
        "$lt" => cmp(CmpOp::Lt),
        "$lte" => cmp(CmpOp::Lte),
        "$in" => parse_in(value, "$in"),
        "$nin" => Ok(Pred::Not(vec![parse_in(value, "$nin")?])),
        "$exists" => Ok(Pred::Exists(truthy(value))),
        "$not" => match value {
            RawBsonRef::RegularExpression(r) => Ok(Pred::Not(vec![Pred::Regex(Box::new(
                Re::compile(r.pattern.as_str(), r.options.as_str())?,
            ))])),
            RawBsonRef::Document(d) => {
                if d.is_empty() {
                    return Err(bad("$not cannot be empty"));
                }
                if !is_operator_doc(d) {
                    return Err(bad("$not needs a regex or a document"));
                }
                Ok(Pred::Not(parse_operators(d, depth + 1)?))
            }
            _ => Err(bad("$not needs a regex or a document")),
        },
        "$size" => parse_size(value),
        "$type" => parse_type(value),
        "$all" => parse_all(value, depth),
        "$elemMatch" => parse_elem_match(value, depth),
        "$mod" => parse_mod(value),
        "$bitsAllSet" => parse_bits(BitOp::AllSet, name, value),
        "$bitsAllClear" => parse_bits(BitOp::AllClear, name, value),
        "$bitsAnySet" => parse_bits(BitOp::AnySet, name, value),
        "$bitsAnyClear" => parse_bits(BitOp::AnyClear, name, value),
        "$where" => Err(bad("$where cannot be applied to a field")),
        "$geoWithin" | "$within" | "$geoIntersects" => {
            Ok(Pred::Geo(crate::geo_filter::parse(name, value)?))
        }
        "$text" | "$expr" => Err(bad(format!("{name} is not supported yet"))),
        _ => Err(bad(format!("unknown operator: {name}"))),
    }
}

pub(crate) fn truthy(v: RawBsonRef<'_>) -> bool {
    match v {
        RawBsonRef::Boolean(b) => b,
        RawBsonRef::Null | RawBsonRef::Undefined => false,
        _ => match as_num(v) {
            Some(Num::Int(i)) => i != 0,
            Some(Num::Dbl(d)) => d != 0.0,
            None => true,
        },
    }
}

fn parse_in(value: RawBsonRef<'_>, name: &str) -> Result<Pred, QueryError> {
    let RawBsonRef::Array(arr) = value else {
        return Err(bad(format!("{name} needs an array")));
    };
    let mut values: Vec<RawBson> = Vec::new();
    let mut regexes = Vec::new();
    let mut has_null = false;
    for item in arr {
        match item.map_err(invalid_bson)? {
            RawBsonRef::RegularExpression(r) => {
                regexes.push(Re::compile(r.pattern.as_str(), r.options.as_str())?)
            }
            RawBsonRef::Document(d) if is_operator_doc(d) => {
                return Err(bad(format!("cannot nest $ under {name}")));
            }
            RawBsonRef::Null => has_null = true,
            v => values.push(v.into()),
        }
    }
    // Sorted so that matching is a binary search: `$in` lists of thousands of ids are common.
    values.sort_by(|a, b| compare_values(a.as_raw_bson_ref(), b.as_raw_bson_ref()));
    Ok(Pred::In {
        values,
        regexes,
        has_null,
    })
}

fn parse_size(value: RawBsonRef<'_>) -> Result<Pred, QueryError> {
    let n = match as_num(value) {
        Some(Num::Int(i)) => i,
        Some(Num::Dbl(d)) => {
            if d.fract() != 0.0 || !d.is_finite() {
                return Err(bad(format!(
                    "Failed to parse $size. Expected an integer in: $size: {d}"
                )));
            }
            d as i64
        }
        None => {
            return Err(bad(format!(
                "Failed to parse $size. Expected a number in: $size: {value:?}"
            )));
        }
    };
    if n < 0 {
        return Err(bad(format!(
            "Failed to parse $size. Expected a non-negative number in: $size: {n}"
        )));
    }
    Ok(Pred::Size(n))
}

fn parse_type(value: RawBsonRef<'_>) -> Result<Pred, QueryError> {
    let mut sels = Vec::new();
    match value {
        RawBsonRef::Array(arr) => {
            for item in arr {
                sels.push(parse_type_one(item.map_err(invalid_bson)?)?);
            }
        }
        v => sels.push(parse_type_one(v)?),
    }
    Ok(Pred::Type(sels))
}

fn parse_type_one(v: RawBsonRef<'_>) -> Result<TypeSel, QueryError> {
    match v {
        RawBsonRef::String(s) => {
            type_alias(s).ok_or_else(|| bad(format!("Unknown type name alias: {s}")))
        }
        _ => match as_num(v) {
            Some(n) => {
                let code =
                    integral_i64(n).filter(|c| matches!(*c, -1 | 127) || (1..=19).contains(c));
                match code {
                    Some(c) => Ok(TypeSel::Code(c as i32)),
                    None => Err(bad(format!("Invalid numerical type code: {}", n.to_f64()))),
                }
            }
            None => Err(QueryError::type_mismatch(
                "type must be represented as a number or a string",
            )),
        },
    }
}

fn parse_all(value: RawBsonRef<'_>, depth: usize) -> Result<Pred, QueryError> {
    let RawBsonRef::Array(arr) = value else {
        return Err(bad("$all needs an array"));
    };
    let mut preds = Vec::new();
    let mut elem_match_mode: Option<bool> = None;
    for item in arr {
        let item = item.map_err(invalid_bson)?;
        let is_elem_match = matches!(item, RawBsonRef::Document(d)
            if matches!(d.iter().next(), Some(Ok((k, _))) if k.as_str() == "$elemMatch"));
        if *elem_match_mode.get_or_insert(is_elem_match) != is_elem_match {
            return Err(bad("$all/$elemMatch has to be consistent"));
        }
        match item {
            RawBsonRef::Document(d) if is_elem_match => {
                for op in parse_operators(d, depth + 1)? {
                    preds.push(op);
                }
            }
            RawBsonRef::Document(d) if is_operator_doc(d) => {
                return Err(bad("no $ expressions in $all"));
            }
            RawBsonRef::RegularExpression(r) => preds.push(Pred::Regex(Box::new(Re::compile(
                r.pattern.as_str(),
                r.options.as_str(),
            )?))),
            v => preds.push(Pred::Eq(v.into())),
        }
    }
    if preds.is_empty() {
        return Ok(Pred::Never);
    }
    Ok(Pred::All(preds))
}

pub(crate) fn parse_elem_match(value: RawBsonRef<'_>, depth: usize) -> Result<Pred, QueryError> {
    let RawBsonRef::Document(d) = value else {
        return Err(bad("$elemMatch needs an Object"));
    };
    let value_mode = match d.iter().next() {
        Some(Ok((k, _))) => {
            let k = k.as_str();
            k.starts_with('$')
                && !is_dbref_field(k)
                && !matches!(
                    k,
                    "$and"
                        | "$or"
                        | "$nor"
                        | "$where"
                        | "$expr"
                        | "$text"
                        | "$comment"
                        | "$jsonSchema"
                )
        }
        _ => false,
    };
    if value_mode {
        Ok(Pred::ElemMatchVal(parse_operators(d, depth + 1)?))
    } else {
        Ok(Pred::ElemMatchObj(Box::new(parse_doc(d, depth + 1)?)))
    }
}

fn parse_mod(value: RawBsonRef<'_>) -> Result<Pred, QueryError> {
    let RawBsonRef::Array(arr) = value else {
        return Err(bad("malformed mod, needs to be an array"));
    };
    let items: Vec<RawBsonRef<'_>> = arr
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(invalid_bson)?;
    if items.len() < 2 {
        return Err(bad("malformed mod, not enough elements"));
    }
    if items.len() > 2 {
        return Err(bad("malformed mod, too many elements"));
    }
    let to_int = |v: RawBsonRef<'_>, what: &str| -> Result<i64, QueryError> {
        let n = as_num(v).ok_or_else(|| bad(format!("malformed mod, {what} not a number")))?;
        num_to_i64_trunc(n).ok_or_else(|| {
            bad(format!(
                "malformed mod, {what} value is invalid :: caused by :: Unable to coerce NaN/Inf to integral type"
            ))
        })
    };
    let divisor = to_int(items[0], "divisor")?;
    let remainder = to_int(items[1], "remainder")?;
    if divisor == 0 {
        return Err(bad("divisor cannot be 0"));
    }
    Ok(Pred::Mod(divisor, remainder))
}

fn parse_bits(op: BitOp, name: &str, value: RawBsonRef<'_>) -> Result<Pred, QueryError> {
    let mask = match value {
        RawBsonRef::Binary(b) => b.bytes.to_vec(),
        RawBsonRef::Array(arr) => {
            let mut mask = Vec::new();
            for item in arr {
                let item = item.map_err(invalid_bson)?;
                let pos = as_num(item).and_then(integral_i64).ok_or_else(|| {
                    bad(format!(
                        "bit positions must be an integer but got: {item:?}"
                    ))
                })?;
                if pos < 0 {
                    return Err(bad(format!("bit positions must be >= 0 but got: {pos}")));
                }
                // Positions past the sign-extended 64 bits all behave like bit 63.
                let pos = pos.min(1023) as usize;
                if mask.len() <= pos / 8 {
                    mask.resize(pos / 8 + 1, 0);
                }
                mask[pos / 8] |= 1 << (pos % 8);
            }
            mask
        }
        _ => {
            let n = as_num(value).ok_or_else(|| {
                bad(format!(
                    "{name} takes an Array, a number, or a BinData but received: {value:?}"
                ))
            })?;
            let x = integral_i64(n).ok_or_else(|| {
                bad(format!(
                    "Expected an integer representable as a 64-bit integer: {name}: {}",
                    n.to_f64()
                ))
            })?;
            if x < 0 {
                return Err(bad(format!("Expected a positive number in: {name}: {x}")));
            }
            x.to_le_bytes().to_vec()
        }
    };
    Ok(Pred::Bits(op, mask))
}
