//! Spilling blocking stages (`allowDiskUse`) through an in-memory `SpillStore`: the results
//! equal the unspilled ones (ties in input order), runs really are written, files are
//! released, and without a store the stage still fails with 292.

use std::sync::{Arc, Mutex};

use bson::{Document, RawDocumentBuf, doc};
use mangrove_query::{
    Limits, Pipeline, QueryError, RunHandle, RunReader, SpillFile, SpillStats, SpillStore, Step,
};

/// Runs written through the files it opened, and the files still open.
#[derive(Default, Clone)]
struct MemoryStore {
    runs: Arc<Mutex<Vec<Vec<RawDocumentBuf>>>>,
    open_files: Arc<Mutex<usize>>,
}

struct MemoryFile(MemoryStore);

impl SpillStore for MemoryStore {
    fn open(&self) -> Result<Box<dyn SpillFile>, QueryError> {
        *self.open_files.lock().unwrap() += 1;
        Ok(Box::new(MemoryFile(self.clone())))
    }
}

impl Drop for MemoryFile {
    fn drop(&mut self) {
        *self.0.open_files.lock().unwrap() -= 1;
    }
}

impl SpillFile for MemoryFile {
    fn write_run(
        &mut self,
        docs: &mut dyn Iterator<Item = Result<RawDocumentBuf, QueryError>>,
    ) -> Result<RunHandle, QueryError> {
        let docs = docs.collect::<Result<Vec<_>, _>>()?;
        let len = docs.iter().map(|d| d.as_bytes().len() as u64).sum();
        let mut runs = self.0.runs.lock().unwrap();
        runs.push(docs);
        Ok(RunHandle {
            offset: runs.len() as u64 - 1,
            len,
        })
    }

    fn read_run(&self, run: RunHandle, _: usize) -> Result<RunReader, QueryError> {
        let docs = self.0.runs.lock().unwrap()[run.offset as usize].clone();
        Ok(Box::new(docs.into_iter().map(Ok)))
    }
}

fn pipeline(stages: Vec<Document>, limit: usize) -> Pipeline {
    let wrapped = doc! { "p": stages };
    let raw = RawDocumentBuf::try_from(&wrapped).unwrap();
    Pipeline::parse(raw.get_array("p").unwrap())
        .unwrap()
        .with_limits(Limits {
            stage_bytes: limit,
            group_bytes: limit,
            ..Limits::default()
        })
}

/// Feeds `input` through the pipeline a few documents at a time, as the server does, with
/// `store` (if any) allowed for spilling.
fn run(
    p: Pipeline,
    input: &[Document],
    store: Option<&MemoryStore>,
) -> Result<Vec<Document>, QueryError> {
    let mut runner = p.into_runner();
    if let Some(s) = store {
        runner.allow_disk_use(Arc::new(s.clone()));
    }
    let mut docs = input.iter().map(|d| RawDocumentBuf::try_from(d).unwrap());
    let mut out = Vec::new();
    loop {
        match runner.step(&mangrove_query::NoForeign)? {
            Step::Doc(d) => out.push(Document::try_from(d.as_ref()).unwrap()),
            Step::End => break,
            Step::NeedInput => match docs.next() {
                Some(d) => runner.feed(d),
                None => runner.end_input(),
            },
        }
    }
    Ok(out)
}

/// `n` documents with few distinct sort keys (many ties) and a payload.
fn input(n: i32) -> Vec<Document> {
    (0..n)
        .map(|i| doc! { "_id": i, "k": (i * 7919) % 13, "s": format!("{:03}", (i * 31) % 97), "pad": "x".repeat(200) })
        .collect()
}

#[test]
fn spilled_sort_equals_the_in_memory_sort_and_keeps_ties_in_input_order() {
    let docs = input(3000);
    for sort in [doc! { "k": 1 }, doc! { "k": -1, "s": 1 }, doc! { "s": -1 }] {
        let stages = vec![doc! { "$sort": sort.clone() }];
        let expected = run(pipeline(stages.clone(), usize::MAX), &docs, None).unwrap();
        let store = MemoryStore::default();
        // About 250 bytes a document: a 20 KB limit writes ~40 runs.
        let got = run(pipeline(stages, 20_000), &docs, Some(&store)).unwrap();
        let runs = store.runs.lock().unwrap().len();
        assert!(runs > 30, "{sort}: only {runs} runs were written");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "{sort}: the merged order differs");
        assert_eq!(
            *store.open_files.lock().unwrap(),
            0,
            "the file was not released"
        );
    }
    // Ties keep the input order: within one key, `_id` ascends.
    let store = MemoryStore::default();
    let got = run(
        pipeline(vec![doc! { "$sort": { "k": 1 } }], 20_000),
        &docs,
        Some(&store),
    )
    .unwrap();
    for pair in got.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.get_i32("k").unwrap() == b.get_i32("k").unwrap() {
            assert!(a.get_i32("_id").unwrap() < b.get_i32("_id").unwrap());
        }
    }
}

#[test]
fn spilled_top_k_and_later_stages_see_the_same_documents() {
    let docs = input(2000);
    let stages = vec![
        doc! { "$sort": { "s": 1 } },
        doc! { "$limit": 1500 },
        doc! { "$project": { "pad": 0 } },
    ];
    let expected = run(pipeline(stages.clone(), usize::MAX), &docs, None).unwrap();
    let store = MemoryStore::default();
    let got = run(pipeline(stages, 20_000), &docs, Some(&store)).unwrap();
    assert!(!store.runs.lock().unwrap().is_empty(), "nothing spilled");
    assert_eq!(got.len(), 1500);
    assert!(got == expected);
}

#[test]
fn without_a_store_the_sort_still_fails_with_292_and_a_dropped_runner_releases_its_file() {
    let docs = input(500);
    let e = run(
        pipeline(vec![doc! { "$sort": { "k": 1 } }], 20_000),
        &docs,
        None,
    )
    .unwrap_err();
    assert_eq!(e.code, 292);
    // A runner dropped half-way (a killed cursor) releases its spill file.
    let store = MemoryStore::default();
    let p = pipeline(vec![doc! { "$sort": { "k": 1 } }], 20_000);
    let mut runner = p.into_runner();
    runner.allow_disk_use(Arc::new(store.clone()));
    for d in &docs {
        runner.feed(RawDocumentBuf::try_from(d).unwrap());
    }
    runner.end_input();
    assert!(matches!(
        runner.step(&mangrove_query::NoForeign).unwrap(),
        Step::Doc(_)
    ));
    assert!(runner.used_disk());
    assert_eq!(*store.open_files.lock().unwrap(), 1);
    drop(runner);
    assert_eq!(*store.open_files.lock().unwrap(), 0);
}

/// A run whose reader fails part-way: the error reaches the caller, no document after it.
struct Damaged;

impl SpillStore for Damaged {
    fn open(&self) -> Result<Box<dyn SpillFile>, QueryError> {
        Ok(Box::new(Damaged))
    }
}

impl SpillFile for Damaged {
    fn write_run(
        &mut self,
        docs: &mut dyn Iterator<Item = Result<RawDocumentBuf, QueryError>>,
    ) -> Result<RunHandle, QueryError> {
        docs.for_each(drop);
        Ok(RunHandle { offset: 0, len: 0 })
    }

    fn read_run(&self, _: RunHandle, _: usize) -> Result<RunReader, QueryError> {
        let bad = QueryError::location(301, "spill file x damaged at offset 8");
        Ok(Box::new(std::iter::once(Err(bad))))
    }
}

#[test]
fn a_damaged_run_fails_the_pipeline() {
    let docs = input(500);
    let mut runner = pipeline(vec![doc! { "$sort": { "k": 1 } }], 20_000).into_runner();
    runner.allow_disk_use(Arc::new(Damaged));
    for d in &docs {
        runner.feed(RawDocumentBuf::try_from(d).unwrap());
    }
    runner.end_input();
    let e = runner.step(&mangrove_query::NoForeign).unwrap_err();
    assert_eq!(e.code, 301);
    assert!(e.message.contains("offset 8"));
}

/// Every accumulator whose partial states merge, over interleaved groups; ties everywhere.
fn all_accumulators() -> Document {
    doc! {
        "_id": "$g",
        "sum": { "$sum": "$v" },
        "count": { "$count": {} },
        "avg": { "$avg": "$v" },
        "min": { "$min": "$m" },
        "max": { "$max": "$m" },
        "first": { "$first": "$_id" },
        "last": { "$last": "$_id" },
        "push": { "$push": "$_id" },
        "set": { "$addToSet": "$m" },
        "merged": { "$mergeObjects": { "x": "$_id", "m": "$m" } },
        "pop": { "$stdDevPop": "$v" },
        "samp": { "$stdDevSamp": "$v" },
        "firstN": { "$firstN": { "input": "$_id", "n": 3 } },
        "lastN": { "$lastN": { "input": "$_id", "n": 3 } },
        "minN": { "$minN": { "input": "$m", "n": 4 } },
        "maxN": { "$maxN": { "input": "$m", "n": 4 } },
        "top": { "$top": { "sortBy": { "v": 1 }, "output": "$_id" } },
        "bottom": { "$bottom": { "sortBy": { "v": 1 }, "output": "$_id" } },
        "topN": { "$topN": { "sortBy": { "v": -1 }, "output": "$_id", "n": 3 } },
        "bottomN": { "$bottomN": { "sortBy": { "v": -1 }, "output": "$_id", "n": 3 } },
        "median": { "$median": { "input": "$v", "method": "approximate" } },
    }
}

/// Groups `g` interleaved; `m` equal numbers of two types (ties for `$min`/`$max`).
fn group_input(n: i32) -> Vec<Document> {
    (0..n)
        .map(|i| {
            let m = if i % 2 == 0 {
                bson::Bson::Int32(i % 5)
            } else {
                bson::Bson::Double((i % 5) as f64)
            };
            doc! { "_id": i, "g": (i * 37) % 200, "v": (i * 13) % 7, "m": m }
        })
        .collect()
}

fn by_id(mut docs: Vec<Document>) -> Vec<Document> {
    docs.sort_by_key(|a| a.get_i32("_id").unwrap());
    docs
}

/// The standard deviations of the spilled groups agree to rounding; everything else exactly.
fn assert_same_groups(got: Vec<Document>, expected: Vec<Document>) {
    assert_eq!(got.len(), expected.len());
    for (mut g, mut e) in got.into_iter().zip(expected) {
        for f in ["pop", "samp"] {
            let (a, b) = (g.remove(f).unwrap(), e.remove(f).unwrap());
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{f}: {a} vs {b}");
        }
        assert_eq!(g, e);
    }
}

#[test]
fn spilled_groups_equal_the_unspilled_ones() {
    let docs = group_input(4000);
    let stages = vec![doc! { "$group": all_accumulators() }];
    let expected = by_id(run(pipeline(stages.clone(), usize::MAX), &docs, None).unwrap());
    assert_eq!(expected.len(), 200);
    let store = MemoryStore::default();
    let got = run(pipeline(stages, 60_000), &docs, Some(&store)).unwrap();
    let runs = store.runs.lock().unwrap().len();
    assert!(runs > 10, "only {runs} runs were written");
    // Spilled groups come out in key order (numbers ascending here).
    let ids: Vec<i32> = got.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_same_groups(got, expected);
    assert_eq!(*store.open_files.lock().unwrap(), 0);
}

#[test]
fn a_spilled_bucket_keeps_boundary_order_and_the_default_last() {
    let docs = group_input(3000);
    let stages = vec![doc! { "$bucket": {
        "groupBy": "$g",
        "boundaries": [20, 60, 120, 150],
        "default": -1,
        "output": { "ids": { "$push": "$_id" }, "n": { "$sum": 1 }, "first": { "$first": "$_id" } },
    } }];
    let expected = run(pipeline(stages.clone(), usize::MAX), &docs, None).unwrap();
    let store = MemoryStore::default();
    let got = run(pipeline(stages, 20_000), &docs, Some(&store)).unwrap();
    assert!(!store.runs.lock().unwrap().is_empty(), "nothing spilled");
    let ids: Vec<_> = got.iter().map(|d| d.get("_id").unwrap().clone()).collect();
    assert_eq!(ids, [20, 60, 120, -1].map(bson::Bson::Int32));
    assert!(got == expected);
}

#[test]
fn groups_that_cannot_spill_fail_with_292_naming_the_accumulator() {
    let docs = group_input(2000);
    let js = doc! { "$accumulator": {
        "init": "function() { return 0; }",
        "accumulate": "function(s, v) { return s + v; }",
        "accumulateArgs": ["$v"],
        "merge": "function(a, b) { return a + b; }",
        "lang": "js",
    } };
    let stages = vec![doc! { "$group": { "_id": "$_id", "total": js } }];
    let store = MemoryStore::default();
    let e = run(pipeline(stages, 20_000), &docs, Some(&store)).unwrap_err();
    assert_eq!(e.code, 292, "{}", e.message);
    assert!(e.message.contains("'total'"), "{}", e.message);
    // Without a store, the ordinary 292.
    let stages = vec![doc! { "$group": { "_id": "$_id", "n": { "$sum": 1 } } }];
    let e = run(pipeline(stages, 20_000), &docs, None).unwrap_err();
    assert_eq!(e.code, 292);
}

/// A small deterministic generator (xorshift), so failures repeat.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// A sort key of a mixed type: numbers of three types, strings, null, arrays, or missing.
    fn value(&mut self) -> Option<bson::Bson> {
        use bson::Bson;
        Some(match self.next(7) {
            0 => Bson::Int32(self.next(10) as i32),
            1 => Bson::Double(self.next(10) as f64 / 2.0),
            2 => Bson::Int64(self.next(10) as i64),
            3 => Bson::String(format!("s{}", self.next(5))),
            4 => Bson::Null,
            5 => Bson::Array(vec![
                Bson::Int32(self.next(10) as i32),
                Bson::Int32(self.next(10) as i32),
            ]),
            _ => return None,
        })
    }
}

#[test]
fn random_inputs_and_limits_sort_as_in_memory() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut spilled = 0;
    for round in 0..20 {
        let n = 200 + rng.next(1500) as i32;
        let docs: Vec<Document> = (0..n)
            .map(|i| {
                let mut d = doc! { "_id": i, "pad": "z".repeat(rng.next(300) as usize) };
                for f in ["a", "b"] {
                    if let Some(v) = rng.value() {
                        d.insert(f, v);
                    }
                }
                d
            })
            .collect();
        let mut stages =
            vec![doc! { "$sort": { "a": if round % 2 == 0 { 1 } else { -1 }, "b": -1 } }];
        if round % 3 == 0 {
            stages.push(doc! { "$limit": rng.next(n as u64) as i64 + 1 });
        }
        let expected = run(pipeline(stages.clone(), usize::MAX), &docs, None).unwrap();
        let limit = 2_000 + rng.next(30_000) as usize;
        let store = MemoryStore::default();
        let got = run(pipeline(stages, limit), &docs, Some(&store)).unwrap();
        assert!(got == expected, "round {round}: n {n}, limit {limit}");
        spilled += usize::from(!store.runs.lock().unwrap().is_empty());
    }
    assert!(spilled >= 10, "only {spilled} of 20 rounds spilled");
}

#[test]
fn a_spilled_bucket_auto_equals_the_in_memory_one() {
    let mut docs = group_input(3000);
    // Arrays and equal keys too: arrays compare as whole values, equal keys share a bucket.
    for (i, d) in docs.iter_mut().enumerate().take(40) {
        d.insert("g", vec![i as i32 % 3, 1]);
    }
    // `$first`/`$last` see ties in input order both ways (the merge is stable).
    let output = doc! {
        "n": { "$sum": 1 }, "first": { "$first": "$_id" }, "last": { "$last": "$_id" },
        "lo": { "$min": "$_id" }, "hi": { "$max": "$_id" },
    };
    for spec in [
        doc! { "groupBy": "$g", "buckets": 7, "output": output.clone() },
        doc! { "groupBy": "$_id", "buckets": 5, "granularity": "R20", "output": output.clone() },
    ] {
        let stages = vec![doc! { "$bucketAuto": spec.clone() }];
        let numeric = spec.contains_key("granularity");
        let input: &[Document] = if numeric { &docs[40..] } else { &docs };
        let expected = run(pipeline(stages.clone(), usize::MAX), input, None).unwrap();
        assert!(expected.len() > 2, "{expected:?}");
        let without = run(pipeline(stages.clone(), 20_000), input, None).unwrap_err();
        assert_eq!(without.code, 292, "{without:?}");
        let store = MemoryStore::default();
        let got = run(pipeline(stages, 20_000), input, Some(&store)).unwrap();
        assert!(
            store.runs.lock().unwrap().len() > 5,
            "nothing spilled for {spec}"
        );
        assert!(got == expected, "{spec}: {got:?}\n!=\n{expected:?}");
        assert_eq!(*store.open_files.lock().unwrap(), 0);
    }
}

#[test]
fn a_spilled_set_window_fields_equals_the_in_memory_one() {
    let docs = group_input(3000);
    let stages = vec![doc! { "$setWindowFields": {
        "partitionBy": { "$mod": ["$g", 9] },
        "sortBy": { "v": -1, "_id": 1 },
        "output": {
            "running": { "$sum": "$v", "window": { "documents": ["unbounded", "current"] } },
            "firstId": { "$first": "$_id", "window": { "documents": ["unbounded", "current"] } },
            "around": { "$avg": "$_id", "window": { "documents": [-2, 2] } },
        },
    } }];
    let expected = run(pipeline(stages.clone(), usize::MAX), &docs, None).unwrap();
    assert_eq!(expected.len(), 3000);
    let without = run(pipeline(stages.clone(), 40_000), &docs, None).unwrap_err();
    assert_eq!(without.code, 5643011, "{without:?}");
    let store = MemoryStore::default();
    let got = run(pipeline(stages.clone(), 40_000), &docs, Some(&store)).unwrap();
    let runs = store.runs.lock().unwrap().len();
    assert!(runs >= 3, "only {runs} runs were written");
    assert!(got == expected, "spilled output differs");
    assert_eq!(*store.open_files.lock().unwrap(), 0);
    // One partition larger than the limit cannot be computed a partition at a time.
    let one = vec![doc! { "$setWindowFields": {
        "sortBy": { "_id": 1 },
        "output": { "n": { "$count": {} } },
    } }];
    let err = run(pipeline(one, 40_000), &docs, Some(&MemoryStore::default())).unwrap_err();
    assert_eq!(err.code, 5643011);
    assert!(err.message.contains("one partition"), "{err:?}");
}

/// Runs `stages` with the store and returns the result, the runner's `usedDisk` and the runs.
fn run_spilling(stages: Vec<Document>, limit: usize, docs: &[Document]) -> (Vec<Document>, usize) {
    let store = MemoryStore::default();
    let got = run(pipeline(stages, limit), docs, Some(&store)).unwrap();
    assert_eq!(
        *store.open_files.lock().unwrap(),
        0,
        "the file was not released"
    );
    let runs = store.runs.lock().unwrap().len();
    (got, runs)
}

fn ids(docs: &[Document]) -> Vec<i32> {
    docs.iter().map(|d| d.get_i32("_id").unwrap()).collect()
}

#[test]
fn a_spilled_sample_is_a_uniform_sample_without_duplicates() {
    let docs = input(2000);
    let sample = |n: i32| vec![doc! { "$sample": { "size": n } }];
    // 200 documents of ~250 bytes do not fit 10 KB: without a store, 292 naming $sample.
    let e = run(pipeline(sample(200), 10_000), &docs, None).unwrap_err();
    assert_eq!(e.code, 292, "{e:?}");
    assert!(e.message.starts_with("$sample exceeded"), "{e:?}");
    assert!(e.message.contains("allowDiskUse"), "{e:?}");
    // In memory (no limit) nothing is written and the sample is whole.
    assert_eq!(
        run(pipeline(sample(200), usize::MAX), &docs, None)
            .unwrap()
            .len(),
        200
    );
    let mut deciles = [0u32; 10];
    let mut in_order = 0;
    for _ in 0..30 {
        let (got, runs) = run_spilling(sample(200), 10_000, &docs);
        assert!(runs > 3, "only {runs} runs were written");
        let got_ids = ids(&got);
        let distinct: std::collections::BTreeSet<i32> = got_ids.iter().copied().collect();
        assert_eq!(distinct.len(), 200, "duplicates in the sample");
        // The documents come back whole, without the sort's wrapping.
        for d in &got {
            let id = d.get_i32("_id").unwrap();
            assert_eq!(d, &docs[id as usize]);
        }
        if got_ids.windows(2).all(|w| w[0] < w[1]) {
            in_order += 1;
        }
        for id in got_ids {
            deciles[id as usize / 200] += 1;
        }
    }
    assert_eq!(in_order, 0, "samples came back in input order");
    // 6,000 picks, 600 expected per decile (σ ≈ 23): every run's documents take part, not
    // only the last run's or the first ones read.
    for (i, n) in deciles.iter().enumerate() {
        assert!(
            (450..=750).contains(n),
            "decile {i}: {n} picks of 6000 ({deciles:?})"
        );
    }
    // A size above the input's answers all of it, once each, in a random order.
    let (got, runs) = run_spilling(sample(5000), 10_000, &docs);
    assert!(runs > 3);
    let mut all = ids(&got);
    assert_ne!(all, (0..2000).collect::<Vec<_>>());
    all.sort();
    assert_eq!(all, (0..2000).collect::<Vec<_>>());
}

#[test]
fn a_sample_that_fits_after_pruning_does_not_fail_without_a_store() {
    // 60 documents fit the 20 KB limit, 120 do not: the kept ones are pruned to the sample's
    // size before the limit is enforced, so no error and no spill is needed.
    let docs = input(3000);
    let got = run(
        pipeline(vec![doc! { "$sample": { "size": 60 } }], 20_000),
        &docs,
        None,
    )
    .unwrap();
    assert_eq!(got.len(), 60);
}

/// Documents in 3 × 2 partitions (one field sometimes missing), values with gaps, some
/// missing or null, in a scrambled order.
fn densify_input(n: i32) -> Vec<Document> {
    (0..n)
        .map(|i| {
            let mut d = doc! { "_id": i, "p": i % 3, "pad": "y".repeat(100) };
            if i % 4 != 0 {
                d.insert("q", if i % 2 == 0 { "a" } else { "b" });
            }
            match i % 17 {
                0 => {}
                1 => {
                    d.insert("v", bson::Bson::Null);
                }
                _ => {
                    d.insert("v", ((i * 7919) % 1500) * 2);
                }
            }
            d
        })
        .collect()
}

#[test]
fn a_spilled_densify_equals_the_in_memory_one() {
    let docs = densify_input(2000);
    for range in [
        doc! { "step": 1, "bounds": "full" },
        doc! { "step": 3, "bounds": "partition" },
        doc! { "step": 2, "bounds": [100, 1400] },
    ] {
        let stages = vec![doc! { "$densify": {
            "field": "v", "partitionByFields": ["p", "q"], "range": range.clone(),
        } }];
        let expected = run(pipeline(stages.clone(), usize::MAX), &docs, None).unwrap();
        assert!(
            expected.len() > 3000,
            "{range}: {} documents",
            expected.len()
        );
        let e = run(pipeline(stages.clone(), 30_000), &docs, None).unwrap_err();
        assert_eq!(e.code, 292, "{e:?}");
        assert!(e.message.starts_with("$densify exceeded"), "{e:?}");
        let (got, runs) = run_spilling(stages, 30_000, &docs);
        assert!(runs > 5, "{range}: only {runs} runs were written");
        assert_eq!(got.len(), expected.len(), "{range}");
        assert!(got == expected, "{range}: the spilled output differs");
    }
}

#[test]
fn densify_streams_its_output_in_partition_then_value_order() {
    // Partition `full` bounds over [0, 10] with step 5, one document at 5 in each of two
    // partitions and one without the field: the input comes back in place, the gaps filled.
    let docs = vec![
        doc! { "_id": 1, "p": "b", "v": 5 },
        doc! { "_id": 2, "p": "a", "v": 10 },
        doc! { "_id": 3, "p": "a" },
        doc! { "_id": 4, "p": "a", "v": 0 },
    ];
    let stages = vec![doc! { "$densify": {
        "field": "v", "partitionByFields": ["p"], "range": { "step": 5, "bounds": "full" },
    } }];
    let got = run(pipeline(stages, usize::MAX), &docs, None).unwrap();
    assert_eq!(
        got,
        vec![
            doc! { "_id": 3, "p": "a" },
            doc! { "_id": 4, "p": "a", "v": 0 },
            doc! { "p": "a", "v": 5 },
            doc! { "_id": 2, "p": "a", "v": 10 },
            doc! { "p": "b", "v": 0 },
            doc! { "_id": 1, "p": "b", "v": 5 },
            doc! { "p": "b", "v": 10 },
        ]
    );
}

#[test]
fn the_runner_reports_used_disk_for_a_spilled_sample_and_densify() {
    let docs = densify_input(1500);
    let densify = doc! { "$densify": {
        "field": "v", "partitionByFields": ["p"], "range": { "step": 1, "bounds": "partition" },
    } };
    // A sample of 10 fits in memory; the others do not.
    for (stages, spills) in [
        (vec![doc! { "$sample": { "size": 1000 } }], true),
        (vec![densify.clone()], true),
        (vec![densify, doc! { "$count": "n" }], true),
        (vec![doc! { "$sample": { "size": 10 } }], false),
    ] {
        let mut runner = pipeline(stages.clone(), 20_000).into_runner();
        runner.allow_disk_use(Arc::new(MemoryStore::default()));
        for d in &docs {
            runner.feed(RawDocumentBuf::try_from(d).unwrap());
        }
        runner.end_input();
        while let Step::Doc(_) = runner.step(&mangrove_query::NoForeign).unwrap() {}
        assert_eq!(runner.used_disk(), spills, "{stages:?}");
    }
}

#[test]
fn stage_stats_tell_what_each_stage_returned_and_what_it_spilled() {
    let docs = input(2000);
    let stages = vec![
        doc! { "$match": { "_id": { "$gte": 0 } } },
        doc! { "$sort": { "k": 1 } },
        doc! { "$group": { "_id": "$k", "n": { "$sum": 1 } } },
        doc! { "$project": { "n": 1 } },
    ];
    let store = MemoryStore::default();
    let mut runner = pipeline(stages.clone(), 20_000).into_runner();
    runner.allow_disk_use(Arc::new(store.clone()));
    assert!(runner.applies_leading_match());
    let mut fed = 0u64;
    for d in &docs {
        let raw = RawDocumentBuf::try_from(d).unwrap();
        fed += raw.as_bytes().len() as u64;
        runner.feed(raw);
    }
    runner.end_input();
    let mut result_bytes = 0u64;
    while let Step::Doc(d) = runner.step(&mangrove_query::NoForeign).unwrap() {
        result_bytes += d.as_bytes().len() as u64;
    }
    // Only the $sort spilled: what the store holds is what it wrote.
    let runs = store.runs.lock().unwrap().clone();
    let spilled = SpillStats {
        used_disk: true,
        spills: runs.len() as u64,
        bytes: runs
            .iter()
            .flatten()
            .map(|d| d.as_bytes().len() as u64)
            .sum(),
        records: runs.iter().map(|r| r.len() as u64).sum(),
    };
    assert!(
        spilled.spills >= 2 && spilled.records <= 2000,
        "{spilled:?}"
    );
    let stats = runner.stage_stats();
    let names: Vec<_> = stats.iter().map(|s| (s.name, s.returned)).collect();
    assert_eq!(names, [("$sort", 2000), ("$group", 13), ("$project", 13)]);
    assert_eq!(stats[0].spill, Some(spilled));
    assert_eq!(stats[1].spill, Some(SpillStats::default()));
    assert_eq!(stats[2].spill, None);
    // A stage's input is what the one before it answered; the first's, what was fed.
    assert_eq!(stats[0].input_bytes, fed);
    assert_eq!(
        stats[0].returned_bytes, fed,
        "a sort answers what it was given"
    );
    assert_eq!(stats[1].input_bytes, fed);
    assert_eq!(stats[2].input_bytes, stats[1].returned_bytes);
    assert_eq!(stats[2].returned_bytes, result_bytes);
    assert!(stats.iter().all(|s| s.micros.is_none()), "not timed");
    assert!(stats.iter().all(|s| s.join.is_none()));

    // Without allowDiskUse nothing spills, and the stages still report it.
    let small = vec![doc! { "$sort": { "k": 1 } }];
    let mut runner = pipeline(small, usize::MAX).into_runner();
    runner.feed(RawDocumentBuf::try_from(&docs[0]).unwrap());
    runner.end_input();
    while let Step::Doc(_) = runner.step(&mangrove_query::NoForeign).unwrap() {}
    let stats = runner.stage_stats();
    assert_eq!((stats[0].name, stats[0].returned), ("$sort", 1));
    assert_eq!(stats[0].spill, Some(SpillStats::default()));
}

#[test]
fn timed_stage_stats_are_cumulative() {
    let docs = input(3000);
    let stages = vec![
        doc! { "$sort": { "k": -1 } },
        doc! { "$addFields": { "twice": { "$multiply": ["$k", 2] } } },
        doc! { "$group": { "_id": "$k", "n": { "$sum": 1 } } },
    ];
    let mut runner = pipeline(stages, usize::MAX).into_runner();
    runner.time_stages();
    for d in &docs {
        runner.feed(RawDocumentBuf::try_from(d).unwrap());
    }
    runner.end_input();
    while let Step::Doc(_) = runner.step(&mangrove_query::NoForeign).unwrap() {}
    let micros: Vec<u64> = runner
        .stage_stats()
        .iter()
        .map(|s| s.micros.expect("timed"))
        .collect();
    // Each stage's time includes the stages before it, since it pulled from them.
    assert!(micros.windows(2).all(|w| w[0] <= w[1]), "{micros:?}");
    assert!(
        micros[0] > 0,
        "sorting 3,000 documents takes some time: {micros:?}"
    );
}
