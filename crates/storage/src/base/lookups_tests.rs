//! `BaseStore::get_many` answers every key as `get` does, in the order asked, however the keys
//! lie (close together, scattered, absent, repeated) and whichever way it reads them.

use std::sync::Arc;

use bson::RawDocumentBuf;
use proptest::prelude::*;

use super::{BaseStore, CheckpointData, Lookups, WALK_RETRY};
use crate::scratch::Scratch;
use crate::{DocKey, Timestamp};

const COLL: u64 = 7;

fn key(n: u32) -> DocKey {
    DocKey(n.to_be_bytes().to_vec())
}

/// A store holding the even keys below `n` of `COLL`, and key 1 of the collections around it
/// (so a walk meets the neighbouring keyspaces' edges).
fn store(dir: &std::path::Path, n: u32) -> BaseStore {
    let base = BaseStore::open(&dir.join("base.redb"), 1 << 20).unwrap();
    let doc = |v: u32| {
        Some(Arc::new(
            RawDocumentBuf::try_from(&bson::doc! { "v": v as i32 }).unwrap(),
        ))
    };
    let mut docs: Vec<_> = (0..n)
        .step_by(2)
        .map(|k| (COLL, key(k), Timestamp(5), doc(k)))
        .collect();
    docs.push((COLL - 1, key(1), Timestamp(5), doc(1_000_001)));
    docs.push((COLL + 1, key(1), Timestamp(5), doc(1_000_002)));
    base.write_checkpoint(&CheckpointData {
        ts: Timestamp(5),
        next_coll_id: COLL + 2,
        docs,
        catalog: Vec::new(),
        dropped: Vec::new(),
    })
    .unwrap();
    base
}

fn value(found: &Option<(Timestamp, crate::StoredDoc)>) -> Option<u32> {
    found.as_ref().map(|(_, d)| d.get_i32("v").unwrap() as u32)
}

fn check(base: &BaseStore, asked: &[u32], lookups: &mut Lookups) {
    let keys: Vec<DocKey> = asked.iter().map(|&k| key(k)).collect();
    let got = base.get_many(COLL, keys.iter(), lookups).unwrap();
    let got: Vec<Option<u32>> = got.iter().map(value).collect();
    let expected: Vec<Option<u32>> = asked
        .iter()
        .map(|&k| (k % 2 == 0 && k < 2000).then_some(k))
        .collect();
    assert_eq!(got, expected, "asked {asked:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn get_many_answers_as_get_does(
        chunks in proptest::collection::vec(
            prop_oneof![
                // Close together: a run of neighbouring keys, shuffled a little.
                (0u32..2100, 1usize..300).prop_map(|(start, n)| {
                    let mut v: Vec<u32> = (start..start + n as u32).collect();
                    v.reverse();
                    v
                }),
                // Scattered, with repeats and keys past the end.
                proptest::collection::vec(0u32..2200, 1..300),
            ],
            1..40,
        )
    ) {
        let dir = Scratch::new("lookups");
        let base = store(&dir.0, 2000);
        let mut lookups = Lookups::default();
        for asked in &chunks {
            check(&base, asked, &mut lookups);
        }
    }
}

#[test]
fn scattered_keys_switch_to_lookups_and_close_ones_back_to_walks() {
    let dir = Scratch::new("lookups");
    let base = store(&dir.0, 2000);
    let mut lookups = Lookups::default();
    let scattered: Vec<u32> = (0..100).map(|i| (i * 797) % 2000).collect();
    check(&base, &scattered, &mut lookups);
    assert_eq!(
        lookups.since_walk,
        Some(0),
        "a walk that found one key per seek"
    );
    for _ in 1..WALK_RETRY {
        check(&base, &scattered, &mut lookups);
        assert!(lookups.since_walk.is_some());
    }
    // The retry walks close keys and keeps walking.
    let close: Vec<u32> = (400..700).collect();
    check(&base, &close, &mut lookups);
    assert_eq!(lookups.since_walk, None);
}
