//! `$text` above the filter: binding a filter's (or a pipeline's leading `$match`'s) `$text`
//! to the collection's text index (parsing `$search` in the index's or the query's language),
//! and the index bounds of a bound query (one interval per term, after the prefix fields'
//! equalities). Nothing in the crate imports this file; the server calls it. The node and the
//! score live in `text_meta.rs`.

use std::sync::Arc;

use bson::{Bson, RawBsonRef};
use mangrove_bson::KeyInterval;
use mangrove_text::{TextIndex, TextMatch, TextQuery, TextSearch};

use crate::error::QueryError;
use crate::filter::{Filter, Node, Pred};
use crate::index::IndexSpec;
use crate::plan::IndexBounds;
use crate::text_meta::from_text_error;

fn contains_text(node: &Node) -> bool {
    match node {
        Node::Text(_) => true,
        Node::And(c) | Node::Or(c) | Node::Nor(c) => c.iter().any(contains_text),
        _ => false,
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
    /// Binds the filter's `$text` to the collection's text index: parses `$search` in the
    /// index's (or the query's) language. Returns the matcher projections and sorts score with;
    /// binding an already bound filter returns its matcher.
    pub fn bind_text(&self, index: &TextIndex) -> Result<Arc<TextMatch>, QueryError> {
        if text_in_or(self.root()) {
            return Err(QueryError::new(
                291,
                "NoQueryExecutionPlans",
                "error processing query: planner returned error :: caused by :: Failed to produce a solution for TEXT under OR - other non-TEXT clauses under OR have to be indexed as well.",
            ));
        }
        let Some(node) = self.text_node() else {
            return Err(QueryError::bad_value("the filter has no $text"));
        };
        if let Some(bound) = node.bound.get() {
            return Ok(bound.clone());
        }
        let query =
            TextQuery::parse(&node.search, index.default_language).map_err(from_text_error)?;
        let matcher = Arc::new(TextMatch::new(index.clone(), query));
        Ok(node.bound.get_or_init(|| matcher).clone())
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
