//! The streaming pipeline gives exactly the results the eager implementation gave before it
//! (`data/stream_golden.txt`, produced by that implementation at 8d154cc over `corpus`).
//! `MANGROVE_WRITE_GOLDEN=<path>` writes the current results there instead of comparing.

use crate::corpus;

#[test]
fn streaming_results_match_the_eager_implementation() {
    let mut actual = String::new();
    for (name, stages) in corpus::pipelines() {
        let out = corpus::run_whole(&stages).unwrap_or_else(|e| panic!("{name}: {e}"));
        actual.push_str(&corpus::render(name, &out));
    }
    if let Ok(path) = std::env::var("MANGROVE_WRITE_GOLDEN") {
        std::fs::write(path, &actual).unwrap();
        return;
    }
    let expected = include_str!("data/stream_golden.txt");
    for (a, e) in actual.lines().zip(expected.lines()) {
        assert_eq!(a, e);
    }
    assert_eq!(actual.lines().count(), expected.lines().count());
}
