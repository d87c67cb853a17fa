//! A `Runner` fed its input piecewise, and pulled between feeds, gives the same results as the
//! whole input at once (which `stream_golden.rs` ties to the implementation before streaming);
//! a finished `$limit` stops asking for input; blocking stages answer only after the input ends.

use std::collections::HashMap;

use crate::corpus;

use bson::{Document, RawDocumentBuf, doc};
use mangrove_query::{Runner, Step};

fn runner(stages: &[Document]) -> Runner {
    let mut foreign = HashMap::new();
    foreign.insert("other".to_string(), corpus::raw(&corpus::foreign()));
    corpus::parse(stages).into_runner(foreign)
}

/// Feeds the input `chunk` documents at a time, pulling everything available after each feed;
/// returns the results and how many documents were fed before the runner ended.
fn run_piecewise(stages: &[Document], chunk: usize) -> (Vec<Document>, usize) {
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
        match r.step().unwrap() {
            Step::Doc(d) => out.push(Document::try_from(d.as_ref()).unwrap()),
            Step::End => return (out, fed),
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
        assert!(matches!(r.step().unwrap(), Step::NeedInput));
    }
    r.end_input();
    let Step::Doc(d) = r.step().unwrap() else {
        panic!("no group");
    };
    assert_eq!(d.get_i32("n").unwrap(), 40);
    assert!(matches!(r.step().unwrap(), Step::End));
    // Once ended, more input is ignored.
    r.feed(RawDocumentBuf::new());
    assert!(matches!(r.step().unwrap(), Step::End));
}

#[test]
fn streaming_stages_answer_as_documents_arrive() {
    let mut r = runner(&[
        doc! { "$unwind": "$sub.tags" },
        doc! { "$project": { "t": "$sub.tags" } },
    ]);
    assert!(matches!(r.step().unwrap(), Step::NeedInput));
    r.feed(corpus::raw(&corpus::input()[..1])[0].clone());
    let mut tags = Vec::new();
    while let Step::Doc(d) = r.step().unwrap() {
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
    while let Step::Doc(d) = r.step().unwrap() {
        assert_eq!(d.get_i32("k").unwrap(), 0);
        ids.push(d.get_i32("_id").unwrap());
    }
    assert_eq!(ids, [0, 13, 26, 39, 52]);
}
