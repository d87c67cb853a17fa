//! Random interleavings of transactions, checked step by step against a model of snapshot
//! isolation with first-writer-wins conflicts (MongoDB's semantics):
//! - a transaction reads the last commit before it began, plus its own writes;
//! - writing a key that another open transaction wrote, or that was committed after this
//!   transaction began, is a WriteConflict at once;
//! - a commit makes all of a transaction's writes visible together.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

use common::*;
use mangrove_storage::{CollectionInfo, Engine, StorageError, Txn};
use proptest::prelude::*;

const KEYS: i64 = 5;
const TXNS: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    Read(i64),
    Write(i64, i64),
    Delete(i64),
    Scan,
    Commit,
    Abort,
}

fn op() -> impl Strategy<Value = (usize, Op)> {
    let kind = prop_oneof![
        3 => (0..KEYS).prop_map(Op::Read),
        4 => (0..KEYS, 0..1000i64).prop_map(|(k, v)| Op::Write(k, v)),
        1 => (0..KEYS).prop_map(Op::Delete),
        1 => Just(Op::Scan),
        2 => Just(Op::Commit),
        1 => Just(Op::Abort),
    ];
    (0..TXNS, kind)
}

/// The model: every committed state, in commit order, and the keys each commit wrote (a write
/// counts even when it leaves the value as it was, as a delete of a missing key does).
struct Model {
    history: Vec<BTreeMap<i64, i64>>,
    written: Vec<BTreeSet<i64>>,
}

struct ModelTxn {
    /// Index into `history` of the state this transaction reads.
    snapshot: usize,
    writes: BTreeMap<i64, Option<i64>>,
}

impl Model {
    fn view(&self, t: &ModelTxn) -> BTreeMap<i64, i64> {
        let mut view = self.history[t.snapshot].clone();
        for (k, v) in &t.writes {
            match v {
                Some(v) => view.insert(*k, *v),
                None => view.remove(k),
            };
        }
        view
    }

    /// Did a commit after `snapshot` write `k`?
    fn committed_since(&self, snapshot: usize, k: i64) -> bool {
        self.written[snapshot + 1..]
            .iter()
            .any(|keys| keys.contains(&k))
    }
}

fn engine_view(t: &Txn, coll: &CollectionInfo) -> BTreeMap<i64, i64> {
    let mut out = BTreeMap::new();
    t.scan(coll, None, |_, d| {
        out.insert(d.get_i64("_id").unwrap(), d.get_i64("v").unwrap());
        ControlFlow::Continue(())
    })
    .unwrap();
    out
}

fn run(ops: Vec<(usize, Op)>) -> Result<(), TestCaseError> {
    let engine = Engine::in_memory();
    let coll = collection(&engine, "db.c");
    let mut model = Model {
        history: vec![BTreeMap::new()],
        written: vec![BTreeSet::new()],
    };
    let mut open: Vec<Option<(Txn, ModelTxn)>> = (0..TXNS).map(|_| None).collect();
    // Keys written by each open transaction, for the intent rule.
    for (i, op) in ops {
        if open[i].is_none() {
            open[i] = Some((
                engine.begin(),
                ModelTxn {
                    snapshot: model.history.len() - 1,
                    writes: BTreeMap::new(),
                },
            ));
        }
        let others_wrote = |k: i64, open: &Vec<Option<(Txn, ModelTxn)>>| {
            open.iter()
                .enumerate()
                .any(|(j, t)| j != i && t.as_ref().is_some_and(|(_, m)| m.writes.contains_key(&k)))
        };
        match op {
            Op::Read(k) => {
                let (t, m) = open[i].as_ref().unwrap();
                let got = t
                    .get(&coll, &key(k))
                    .unwrap()
                    .map(|d| d.get_i64("v").unwrap());
                prop_assert_eq!(
                    got,
                    model.view(m).get(&k).copied(),
                    "read of {} by txn {}",
                    k,
                    i
                );
            }
            Op::Scan => {
                let (t, m) = open[i].as_ref().unwrap();
                prop_assert_eq!(engine_view(t, &coll), model.view(m));
            }
            Op::Write(k, _) | Op::Delete(k) => {
                let conflict = {
                    let (_, m) = open[i].as_ref().unwrap();
                    !m.writes.contains_key(&k)
                        && (others_wrote(k, &open) || model.committed_since(m.snapshot, k))
                };
                let (t, m) = open[i].as_mut().unwrap();
                let result = match op {
                    Op::Write(k, v) => t.replace(&coll, key(k), doc(k, v)),
                    _ => t.delete(&coll, key(k)),
                };
                if conflict {
                    prop_assert_eq!(
                        result,
                        Err(StorageError::WriteConflict),
                        "write of {} by txn {}",
                        k,
                        i
                    );
                    // MongoDB aborts a transaction on a write conflict.
                    let (t, _) = open[i].take().unwrap();
                    t.abort();
                } else {
                    prop_assert_eq!(result, Ok(()), "write of {} by txn {}", k, i);
                    m.writes.insert(
                        k,
                        match op {
                            Op::Write(_, v) => Some(v),
                            _ => None,
                        },
                    );
                }
            }
            Op::Commit => {
                let (t, m) = open[i].take().unwrap();
                let mut ticket = t.commit().unwrap();
                block_on(ticket.visible()).unwrap();
                if !m.writes.is_empty() {
                    let mut next = model.history.last().unwrap().clone();
                    for (k, v) in &m.writes {
                        match v {
                            Some(v) => next.insert(*k, *v),
                            None => next.remove(k),
                        };
                    }
                    model.history.push(next);
                    model.written.push(m.writes.keys().copied().collect());
                }
                // A fresh snapshot sees exactly the newest committed state.
                let fresh = engine.begin();
                prop_assert_eq!(
                    engine_view(&fresh, &coll),
                    model.history.last().unwrap().clone()
                );
            }
            Op::Abort => {
                let (t, _) = open[i].take().unwrap();
                t.abort();
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn interleavings_match_the_snapshot_isolation_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
