//! A `Runner` fed its input piecewise, and pulled between feeds, gives the same results as the
//! whole input at once (which `stream_golden.rs` ties to the implementation before streaming);
//! a finished `$limit` stops asking for input; blocking stages answer only after the input ends.

use std::sync::Arc;

use crate::corpus;

use bson::{Document, RawDocument, RawDocumentBuf, doc};
use mangrove_query::{Chunk, ForeignSource, QueryError, Runner, Step};

/// How the corpus's foreign collection ("other") is read, as the server may read one.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Way {
    /// Whole, in memory (a hash join).
    Whole,
    /// An index answers every field: `$lookup` asks per input document, `$graphLookup` per
    /// round.
    Indexed,
    /// Too large to hold: `$lookup` scans per input document, `$graphLookup` per round.
    TooLarge,
}

struct Other {
    docs: Arc<Vec<RawDocumentBuf>>,
    way: Way,
}

impl Other {
    fn new(way: Way) -> Other {
        let docs = Arc::new(corpus::raw(&corpus::foreign()));
        Other { docs, way }
    }
}

impl ForeignSource for Other {
    fn whole(&self, name: &str, _: usize) -> Result<Option<Arc<Vec<RawDocumentBuf>>>, QueryError> {
        assert_eq!(name, "other");
        Ok((self.way != Way::TooLarge).then(|| self.docs.clone()))
    }

    fn each_match(
        &self,
        name: &str,
        filter: &RawDocument,
        visit: &mut dyn FnMut(&RawDocument) -> Result<(), QueryError>,
    ) -> Result<mangrove_query::ForeignRead, QueryError> {
        assert_eq!(name, "other");
        assert_ne!(self.way, Way::Whole, "a join that fits asks no query");
        mangrove_query::each_match_in(&self.docs, filter, visit)
    }

    fn indexed(&self, _: &str, _: &str) -> bool {
        self.way == Way::Indexed
    }

    /// Three documents at a time, so a `$unionWith` resumes between chunks.
    fn next_chunk(&self, name: &str, after: Option<&[u8]>, _: usize) -> Result<Chunk, QueryError> {
        assert_eq!(name, "other");
        let from = after.map_or(0, |a| usize::from(a[0]) + 1);
        let to = (from + 3).min(self.docs.len());
        let resume = (to < self.docs.len()).then(|| vec![(to - 1) as u8]);
        Ok((self.docs[from..to].to_vec(), resume))
    }
}

fn runner(stages: &[Document]) -> Runner {
    corpus::parse(stages).into_runner()
}

/// Feeds the input `chunk` documents at a time, pulling everything available after each feed;
/// returns the results and how many documents were fed before the runner ended.
fn run_piecewise(stages: &[Document], chunk: usize) -> (Vec<Document>, usize) {
    run_piecewise_reading(stages, chunk, Way::Whole).unwrap()
}

fn run_piecewise_reading(
    stages: &[Document],
    chunk: usize,
    way: Way,
) -> Result<(Vec<Document>, usize), QueryError> {
    let other = Other::new(way);
    let p = corpus::parse(stages);
    let mut input = corpus::raw(&corpus::input());
    if let Some(f) = p.leading_match() {
        input.retain(|d| f.matches(d));
    }
    if p.starts_with_documents() {
        input.clear();
    }
    let mut r = runner(stages);
    let mut out = Vec::new();
    let mut fed = 0;
    let mut rest = input.into_iter();
    loop {
        match r.step(&other)? {
            Step::Doc(d) => out.push(Document::try_from(d.as_ref()).unwrap()),
            Step::End => return Ok((out, fed)),
            Step::NeedInput => {
                let next: Vec<RawDocumentBuf> = rest.by_ref().take(chunk).collect();
                if next.is_empty() {
                    r.end_input();
                }
                fed += next.len();
                next.into_iter().for_each(|d| r.feed(d));
            }
        }
    }
}

#[test]
fn piecewise_feeding_gives_the_whole_input_results() {
    for (name, stages) in corpus::pipelines() {
        let whole = corpus::run_whole(&stages).unwrap();
        for chunk in [1, 3, 7, 1000] {
            let (piecewise, _) = run_piecewise(&stages, chunk);
            assert_eq!(piecewise, whole, "{name}, chunks of {chunk}");
        }
    }
}

/// A `$lookup` asking per input document, and a `$graphLookup` per round (through an index, or
/// scanning a collection too large to hold), join exactly what the in-memory hash joins do
/// (and a `$unionWith` reads in chunks, whichever way).
#[test]
fn every_way_of_reading_the_foreign_collection_joins_alike() {
    let mut joins = 0;
    for (name, stages) in corpus::pipelines() {
        let whole = corpus::run_whole(&stages).unwrap();
        for way in [Way::Indexed, Way::TooLarge] {
            let (out, _) = run_piecewise_reading(&stages, 3, way).unwrap();
            assert_eq!(out, whole, "{name}, read {way:?}");
        }
        let text = format!("{stages:?}");
        joins += usize::from(text.contains("$lookup") || text.contains("$graphLookup"));
    }
    assert!(joins >= 3, "the corpus joins with $lookup and $graphLookup");
}

#[test]
fn a_finished_limit_stops_reading_the_input() {
    let stages = [doc! { "$match": { "g": 1 } }, doc! { "$limit": 2 }];
    let (out, fed) = run_piecewise(&stages, 1);
    assert_eq!(out.len(), 2);
    // The leading $match is applied while reading: the runner needs two of its ten matches.
    assert_eq!(fed, 2, "documents fed before the end");
    let stages = [
        doc! { "$project": { "g": 1 } },
        doc! { "$skip": 3 },
        doc! { "$limit": 4 },
    ];
    let (out, fed) = run_piecewise(&stages, 2);
    assert_eq!(out.len(), 4);
    assert_eq!(fed, 8, "seven documents needed, fed two at a time");
}

#[test]
fn blocking_stages_answer_only_at_the_end_of_the_input() {
    let mut r = runner(&[doc! { "$group": { "_id": null, "n": { "$sum": 1 } } }]);
    for d in corpus::raw(&corpus::input()) {
        r.feed(d);
        assert!(matches!(
            r.step(&Other::new(Way::Whole)).unwrap(),
            Step::NeedInput
        ));
    }
    r.end_input();
    let Step::Doc(d) = r.step(&Other::new(Way::Whole)).unwrap() else {
        panic!("no group");
    };
    assert_eq!(d.get_i32("n").unwrap(), 40);
    assert!(matches!(
        r.step(&Other::new(Way::Whole)).unwrap(),
        Step::End
    ));
    // Once ended, more input is ignored.
    r.feed(RawDocumentBuf::new());
    assert!(matches!(
        r.step(&Other::new(Way::Whole)).unwrap(),
        Step::End
    ));
}

#[test]
fn streaming_stages_answer_as_documents_arrive() {
    let mut r = runner(&[
        doc! { "$unwind": "$sub.tags" },
        doc! { "$project": { "t": "$sub.tags" } },
    ]);
    assert!(matches!(
        r.step(&Other::new(Way::Whole)).unwrap(),
        Step::NeedInput
    ));
    r.feed(corpus::raw(&corpus::input()[..1])[0].clone());
    let mut tags = Vec::new();
    while let Step::Doc(d) = r.step(&Other::new(Way::Whole)).unwrap() {
        tags.push(d.get_str("t").unwrap().to_string());
    }
    assert_eq!(tags, ["t0", "all"]);
}

#[test]
fn a_sort_before_a_limit_keeps_only_the_best() {
    // Many more documents than the limit: the top-k sort must equal a full sort's prefix,
    // ties in input order.
    let mut r = runner(&[doc! { "$sort": { "k": 1 } }, doc! { "$limit": 5 }]);
    for i in 0..1000i32 {
        r.feed(RawDocumentBuf::try_from(&doc! { "_id": i, "k": (i * 7919) % 13 }).unwrap());
    }
    r.end_input();
    let mut ids = Vec::new();
    while let Step::Doc(d) = r.step(&Other::new(Way::Whole)).unwrap() {
        assert_eq!(d.get_i32("k").unwrap(), 0);
        ids.push(d.get_i32("_id").unwrap());
    }
    assert_eq!(ids, [0, 13, 26, 39, 52]);
}
