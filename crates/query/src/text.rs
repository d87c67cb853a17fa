//! `$text` in the query language: the filter node (parsed arguments, later bound to the
//! collection's text index), mongod's placement rules (once, at the top level or under
//! top-level `$and`/`$or`, never under `$nor` or `$elemMatch`), the index bounds of a text
//! query (one interval per term, after the prefix fields' equalities), and `$meta:
//! "textScore"`.
//!
//! How the score reaches projections and sorts: a document's score is a function of the
//! document, the index's weights and languages, and the query (mongod reads the same number
//! back from the index keys it scanned). The server binds the query to its index
//! ([`crate::Filter::bind_text`]) and hands the resulting [`TextMatch`] to the projection,
//! the sort and the pipeline, which compute the score of the document they are given. The
//! expression `$meta` reads the matcher from a thread-local that [`with_scorer`] sets around
//! one projection or one pipeline pull, so expressions need no extra argument.

use std::cell::RefCell;
use std::sync::Arc;

use bson::{Bson, Document, RawBsonRef, RawDocument};
use mangrove_bson::KeyInterval;
use mangrove_text::{TextError, TextIndex, TextMatch, TextQuery, TextSearch};

use crate::error::QueryError;
use crate::filter::{Filter, Node, Pred};
use crate::index::IndexSpec;
use crate::plan::IndexBounds;

/// A `$text` node: its arguments, and the matcher once bound to the collection's index.
#[derive(Debug, Clone)]
pub(crate) struct TextNode {
    pub search: TextSearch,
    pub bound: Option<Arc<TextMatch>>,
}

pub(crate) fn from_text_error(e: TextError) -> QueryError {
    QueryError::location(e.code, e.message)
}

/// `{$text: {...}}` as a filter node.
pub(crate) fn parse_node(value: RawBsonRef<'_>) -> Result<Node, QueryError> {
    let RawBsonRef::Document(d) = value else {
        return Err(QueryError::bad_value("$text expects an object"));
    };
    let spec = Document::try_from(d).map_err(|e| QueryError::bad_value(e.to_string()))?;
    let search = TextSearch::from_document(&spec).map_err(from_text_error)?;
    Ok(Node::Text(Box::new(TextNode {
        search,
        bound: None,
    })))
}

/// mongod's rules on where `$text` may be: counts them, refusing one under `$nor` or inside a
/// field's operator (`$elemMatch`).
pub(crate) fn check_placement(root: &Node) -> Result<(), QueryError> {
    let mut count = 0;
    walk_placement(root, true, &mut count)?;
    if count > 1 {
        return Err(QueryError::bad_value("Too many text expressions"));
    }
    Ok(())
}

fn walk_placement(node: &Node, allowed: bool, count: &mut usize) -> Result<(), QueryError> {
    match node {
        Node::Text(_) if !allowed => {
            Err(QueryError::bad_value("text expression not allowed in nor"))
        }
        Node::Text(_) => {
            *count += 1;
            Ok(())
        }
        Node::And(c) | Node::Or(c) => c.iter().try_for_each(|n| walk_placement(n, allowed, count)),
        Node::Nor(c) => c.iter().try_for_each(|n| walk_placement(n, false, count)),
        Node::Field {
            pred: Pred::ElemMatchObj(inner),
            ..
        } if contains_text(inner) => Err(QueryError::bad_value(
            "$text can only be applied to the top-level document",
        )),
        _ => Ok(()),
    }
}

fn contains_text(node: &Node) -> bool {
    match node {
        Node::Text(_) => true,
        Node::And(c) | Node::Or(c) | Node::Nor(c) => c.iter().any(contains_text),
        _ => false,
    }
}

fn find_text_mut(node: &mut Node) -> Option<&mut TextNode> {
    match node {
        Node::Text(t) => Some(t),
        Node::And(c) | Node::Or(c) => c.iter_mut().find_map(find_text_mut),
        _ => None,
    }
}

fn find_text(node: &Node) -> Option<&TextNode> {
    match node {
        Node::Text(t) => Some(t),
        Node::And(c) | Node::Or(c) => c.iter().find_map(find_text),
        _ => None,
    }
}

/// Whether `$text` sits in an `$or` next to other clauses (which mongod answers only when
/// every clause has an index; Mangrove refuses it).
fn text_in_or(node: &Node) -> bool {
    match node {
        Node::Or(c) => c.len() > 1 && c.iter().any(contains_text) || c.iter().any(text_in_or),
        Node::And(c) => c.iter().any(text_in_or),
        _ => false,
    }
}

impl Filter {
    /// The filter's `$text` arguments, if it has one.
    pub fn text_search(&self) -> Option<&TextSearch> {
        find_text(self.root()).map(|t| &t.search)
    }

    /// The matcher [`Filter::bind_text`] made, if any.
    pub fn text_match(&self) -> Option<Arc<TextMatch>> {
        find_text(self.root()).and_then(|t| t.bound.clone())
    }

    /// Binds the filter's `$text` to the collection's text index: parses `$search` in the
    /// index's (or the query's) language. Returns the matcher projections and sorts score with.
    pub fn bind_text(&mut self, index: &TextIndex) -> Result<Arc<TextMatch>, QueryError> {
        if text_in_or(self.root()) {
            return Err(QueryError::new(
                291,
                "NoQueryExecutionPlans",
                "error processing query: planner returned error :: caused by :: Failed to produce a solution for TEXT under OR - other non-TEXT clauses under OR have to be indexed as well.",
            ));
        }
        let Some(node) = find_text_mut(self.root_mut()) else {
            return Err(QueryError::bad_value("the filter has no $text"));
        };
        let query =
            TextQuery::parse(&node.search, index.default_language).map_err(from_text_error)?;
        let matcher = Arc::new(TextMatch::new(index.clone(), query));
        node.bound = Some(matcher.clone());
        Ok(matcher)
    }
}

/// The equality values the filter gives a text index's prefix fields, in order.
fn prefix_values<'f>(
    filter: &'f Filter,
    prefix: &[String],
) -> Result<Vec<RawBsonRef<'f>>, QueryError> {
    let mut eqs = Vec::new();
    collect_eqs(filter.root(), &mut eqs);
    prefix
        .iter()
        .map(|field| {
            eqs.iter().find(|(p, _)| p == field).map(|(_, v)| *v).ok_or_else(|| {
                QueryError::new(291, "NoQueryExecutionPlans", format!(
                    "error processing query: planner returned error :: caused by :: failed to use text index to satisfy $text query (if text index is compound, are equality predicates given for all prefix fields?): need an equality filter on: {field}"
                ))
            })
        })
        .collect()
}

fn collect_eqs<'f>(node: &'f Node, out: &mut Vec<(String, RawBsonRef<'f>)>) {
    match node {
        Node::And(c) => c.iter().for_each(|n| collect_eqs(n, out)),
        Node::Field {
            path,
            pred: Pred::Eq(v),
            ..
        } => out.push((path.clone(), v.as_raw_bson_ref())),
        _ => {}
    }
}

/// The smallest key above every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The text index's intervals for a bound `$text` query: one per folded positive term.
pub fn text_bounds(spec: &IndexSpec, filter: &Filter) -> Result<IndexBounds, QueryError> {
    use std::ops::Bound;
    let matcher = filter
        .text_match()
        .ok_or_else(|| QueryError::bad_value("the filter's $text is not bound to an index"))?;
    let values = prefix_values(filter, &matcher.index.prefix)?;
    let mut intervals: Vec<KeyInterval> = Vec::new();
    let mut terms = Vec::new();
    for term in &matcher.query.terms_for_bounds {
        let start = mangrove_bson::index::term_prefix(spec, &values, term);
        let end = prefix_end(&start).map_or(Bound::Unbounded, Bound::Excluded);
        intervals.push((Bound::Included(start), end));
        terms.push(Bson::String(format!("[\"{term}\", \"{term}\"]")));
    }
    // Terms are in byte order, and so are their keys: the intervals ascend, disjoint.
    Ok(IndexBounds {
        intervals,
        display: bson::doc! { "_fts": terms, "_ftsx": ["[MinKey, MaxKey]"] },
        score: 0,
        eq_prefix: 0,
    })
}

thread_local! {
    static SCORER: RefCell<Option<Arc<TextMatch>>> = const { RefCell::new(None) };
}

/// Runs `f` with `scorer` answering `$meta: "textScore"`.
pub fn with_scorer<T>(scorer: Option<&Arc<TextMatch>>, f: impl FnOnce() -> T) -> T {
    let previous = SCORER.with(|s| s.replace(scorer.cloned()));
    let out = f();
    SCORER.with(|s| *s.borrow_mut() = previous);
    out
}

/// The score of `doc` under the scorer [`with_scorer`] set.
pub(crate) fn current_score(doc: &RawDocument) -> Result<Option<Bson>, QueryError> {
    SCORER.with(|s| match s.borrow().as_ref() {
        Some(m) => m
            .score(doc)
            .map(|v| Some(Bson::Double(v)))
            .map_err(from_text_error),
        None => Err(no_score()),
    })
}

/// mongod's error for `$meta: "textScore"` without `$text`.
pub fn no_score() -> QueryError {
    QueryError::location(
        40218,
        "query requires text score metadata, but it is not available",
    )
}

/// `{$meta: <arg>}`: only `"textScore"` is known here.
pub(crate) fn parse_meta(arg: RawBsonRef<'_>) -> Result<(), QueryError> {
    match arg {
        RawBsonRef::String("textScore") => Ok(()),
        RawBsonRef::String(other) => Err(QueryError::bad_value(format!(
            "$meta: \"{other}\" is not supported by Mangrove; only \"textScore\" is"
        ))),
        _ => Err(QueryError::location(
            17307,
            "$meta only supports string arguments",
        )),
    }
}

/// Whether a specification has a `$meta` anywhere (a projection or stage asking for scores).
pub(crate) fn mentions_meta(spec: &RawDocument) -> bool {
    fn value(v: RawBsonRef<'_>, depth: usize) -> bool {
        match v {
            RawBsonRef::Document(d) => doc(d, depth + 1),
            RawBsonRef::Array(a) if depth < 200 => a
                .into_iter()
                .map_while(Result::ok)
                .any(|v| value(v, depth + 1)),
            _ => false,
        }
    }
    fn doc(d: &RawDocument, depth: usize) -> bool {
        depth < 200
            && d.iter()
                .map_while(Result::ok)
                .any(|(k, v)| k.as_str() == "$meta" || value(v, depth))
    }
    doc(spec, 0)
}

/// `$match` with `$text` only as the first stage of a top-level pipeline (mongod's 17313).
pub(crate) fn check_stage_position(
    stages: &[crate::stage::Stage],
    depth: usize,
) -> Result<(), QueryError> {
    if let Some(crate::stage::Stage::Match(f)) = stages.last()
        && f.text_search().is_some()
        && (stages.len() > 1 || depth > 0)
    {
        return Err(QueryError::location(
            17313,
            "$match with $text is only allowed as the first pipeline stage",
        ));
    }
    Ok(())
}

impl crate::aggregate::Pipeline {
    /// The leading `$match`'s `$text` arguments, if it has one.
    pub fn text_search(&self) -> Option<&TextSearch> {
        self.leading_match().and_then(Filter::text_search)
    }

    /// Binds the leading `$match`'s `$text` to the collection's text index; the pipeline then
    /// scores `$meta: "textScore"` with it.
    pub fn bind_text(&mut self, index: &TextIndex) -> Result<Arc<TextMatch>, QueryError> {
        match self.stages.first_mut() {
            Some(crate::stage::Stage::Match(f)) => f.bind_text(index),
            _ => Err(QueryError::bad_value("the pipeline has no leading $match")),
        }
    }
}
