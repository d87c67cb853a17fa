//! Crash test with real process kills: a child process runs concurrent multi-document transfers
//! between accounts, printing each one only after its commit is durable; the parent SIGKILLs it
//! at a random moment, reopens the data directory, and checks that
//! - every acknowledged transfer is present,
//! - no transfer is half applied (each account's balance equals its opening balance plus the
//!   transfers recorded in and out of it),
//! - the sum of all balances is unchanged,
//! - every secondary index (on balances, on transfer sources, a unique one on transfer numbers)
//!   holds exactly the entries its documents derive, in key order.
//!
//! `MANGROVE_CRASH_CYCLES` sets the number of kill cycles (default 12).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::ops::ControlFlow;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bson::rawdoc;
use common::*;
use mangrove_storage::{Engine, StorageError};

const ACCOUNTS: i64 = 50;
const OPENING_BALANCE: i64 = 1_000;
const THREADS: i64 = 8;
/// (collection, indexed field, index name, unique)
const INDEXES: &[(&str, &str, &str, bool)] = &[
    ("bank.accounts", "balance", "balance_1", false),
    ("bank.transfers", "from", "from_1", false),
    ("bank.transfers", "seq", "seq_1", true),
];

/// xorshift: enough randomness for picking accounts and kill times, no dependency.
struct Rng(u64);

impl Rng {
    fn seeded(extra: u64) -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(
            (nanos ^ (std::process::id() as u64) << 32 ^ extra.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                | 1,
        )
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        child(&args[2], args[3].parse().unwrap());
        return;
    }
    parent();
}

fn child(dir: &str, cycle: i64) {
    // Small segments and frequent checkpoints, so that kills also land in the middle of a
    // checkpoint and of log cleanup.
    let opts = mangrove_storage::EngineOptions {
        data_dir: Some(dir.into()),
        segment_bytes: 128 * 1024,
        checkpoint_log_bytes: 256 * 1024,
        // Some history, so kills also land in retention's removals.
        history_size_bytes: 512 * 1024,
        ..mangrove_storage::EngineOptions::default()
    };
    let (engine, _) = Engine::open(opts, |_, _| {}).expect("child: open");
    let accounts = collection(&engine, "bank.accounts");
    let transfers = collection(&engine, "bank.transfers");
    // The first cycle builds the indexes (a kill may land in the build; the next cycle retries).
    for (ns, key, name, unique) in INDEXES {
        let current = engine.snapshot().collection(ns).unwrap();
        if current.index(name).is_none() {
            let mut spec = bson::doc! { "key": { *key: 1 }, "name": *name };
            if *unique {
                spec.insert("unique", true);
            }
            let spec = mangrove_bson::IndexSpec::normalize(
                &bson::RawDocumentBuf::try_from(&spec).unwrap(),
                &mangrove_bson::no_partial_filters,
            )
            .unwrap();
            let mut t = engine.begin();
            t.create_index(ns, spec).unwrap();
            commit_durable(t).unwrap();
        }
    }
    if engine.snapshot().count(&accounts).unwrap() == 0 {
        let mut t = engine.begin();
        for a in 0..ACCOUNTS {
            t.insert(
                &accounts,
                key(a),
                Arc::new(rawdoc! { "_id": a, "balance": OPENING_BALANCE }),
            )
            .unwrap();
        }
        commit_durable(t).unwrap();
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            let engine = engine.clone();
            let (accounts, transfers) = (accounts.clone(), transfers.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::seeded((cycle << 8 | thread) as u64);
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                for n in 0.. {
                    let id = cycle * 10_000_000 + thread * 1_000_000 + n;
                    let from = rng.below(ACCOUNTS as u64) as i64;
                    let to = (from + 1 + rng.below(ACCOUNTS as u64 - 1) as i64) % ACCOUNTS;
                    let amount = 1 + rng.below(50) as i64;
                    loop {
                        let mut t = engine.begin();
                        let balance = |t: &mangrove_storage::Txn, a: i64| {
                            t.get(&accounts, &key(a)).unwrap().unwrap().get_i64("balance").unwrap()
                        };
                        let (bf, bt) = (balance(&t, from), balance(&t, to));
                        let result = t
                            .replace(&accounts, key(from), Arc::new(rawdoc! { "_id": from, "balance": bf - amount }))
                            .and_then(|_| t.replace(&accounts, key(to), Arc::new(rawdoc! { "_id": to, "balance": bt + amount })))
                            .and_then(|_| {
                                t.insert(
                                    &transfers,
                                    key(id),
                                    Arc::new(rawdoc! { "_id": id, "from": from, "to": to, "amount": amount, "seq": -id }),
                                )
                            });
                        match result {
                            Ok(()) => {
                                let mut ticket = t.commit().unwrap();
                                runtime.block_on(ticket.durable()).unwrap();
                                let mut out = std::io::stdout().lock();
                                writeln!(out, "ack {id}").unwrap();
                                out.flush().unwrap();
                                break;
                            }
                            Err(StorageError::WriteConflict) => {
                                drop(t);
                                std::thread::sleep(Duration::from_micros(100 + rng.below(400)));
                            }
                            Err(e) => panic!("child: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

struct Verdict {
    acked_present: usize,
    transfers_total: usize,
}

fn verify(dir: &TempDir, acked: &HashSet<i64>) -> Verdict {
    let (engine, report) = open(options(dir)).expect("reopen after the kill");
    let snap = engine.snapshot();
    let accounts = snap.collection("bank.accounts").expect("accounts exist");
    let transfers = snap.collection("bank.transfers").expect("transfers exist");
    let mut balances = BTreeMap::new();
    snap.scan(&accounts, None, |_, d| {
        balances.insert(d.get_i64("_id").unwrap(), d.get_i64("balance").unwrap());
        ControlFlow::Continue(())
    })
    .unwrap();
    let mut expected: BTreeMap<i64, i64> = (0..ACCOUNTS).map(|a| (a, OPENING_BALANCE)).collect();
    let mut present = HashSet::new();
    snap.scan(&transfers, None, |_, d| {
        let amount = d.get_i64("amount").unwrap();
        *expected.get_mut(&d.get_i64("from").unwrap()).unwrap() -= amount;
        *expected.get_mut(&d.get_i64("to").unwrap()).unwrap() += amount;
        present.insert(d.get_i64("_id").unwrap());
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(balances.len() as i64, ACCOUNTS, "accounts lost");
    let sum: i64 = balances.values().sum();
    assert_eq!(
        sum,
        ACCOUNTS * OPENING_BALANCE,
        "money created or destroyed"
    );
    assert_eq!(
        balances, expected,
        "a transfer is half applied (balances disagree with the transfer records)"
    );
    let lost: Vec<_> = acked.iter().filter(|id| !present.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged transfers lost: {lost:?} (torn tail: {:?})",
        report.torn_tail
    );
    for (ns, field, name, unique) in INDEXES {
        check_index(&snap, ns, field, name, *unique);
    }
    // Natural order and every index agree with the documents after recovery.
    let derived = snap.verify_indexes().expect("verify after the kill");
    assert!(derived.problems.is_empty(), "{:?}", derived.problems);
    drop(snap);
    engine.close();
    Verdict {
        acked_present: acked.len(),
        transfers_total: present.len(),
    }
}

/// The index's entries, in key order, point at exactly the documents sorted by the indexed
/// field (then `_id` for a non-unique index): nothing missing, nothing stale, nothing extra.
fn check_index(snap: &mangrove_storage::Snapshot, ns: &str, field: &str, name: &str, unique: bool) {
    let coll = snap.collection(ns).unwrap();
    let Some(index) = coll.index(name).cloned() else {
        return; // killed before the first build committed
    };
    let mut docs = Vec::new();
    snap.scan(&coll, None, |_, d| {
        docs.push((d.get_i64(field).unwrap(), d.get_i64("_id").unwrap()));
        ControlFlow::Continue(())
    })
    .unwrap();
    docs.sort();
    if unique {
        let before = docs.len();
        docs.dedup_by_key(|(v, _)| *v);
        assert_eq!(
            before,
            docs.len(),
            "{name}: duplicate values under a unique index"
        );
    }
    let entries: Vec<i64> = snap
        .index_scan(
            &index,
            &(std::ops::Bound::Unbounded, std::ops::Bound::Unbounded),
            None,
            usize::MAX,
            false,
        )
        .unwrap()
        .into_iter()
        .map(|(_, target)| {
            snap.get(&coll, &target)
                .unwrap()
                .unwrap_or_else(|| panic!("{name}: an entry points at a missing document"))
                .get_i64("_id")
                .unwrap()
        })
        .collect();
    let want: Vec<i64> = docs.iter().map(|(_, id)| *id).collect();
    assert_eq!(
        entries, want,
        "{name}: index entries disagree with the documents"
    );
}

fn parent() {
    let cycles: usize = std::env::var("MANGROVE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let dir = TempDir::new("crash");
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::seeded(0);
    let mut acked = HashSet::new();
    let mut torn_tails = 0;
    let started = Instant::now();
    let mut last = Verdict {
        acked_present: 0,
        transfers_total: 0,
    };
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .args(["child", dir.0.to_str().unwrap(), &cycle.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut ids = Vec::new();
            let mut ready = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "ready" {
                    ready = true;
                } else if let Some(id) = line.strip_prefix("ack ") {
                    // A line cut by the kill has no newline and is not yielded whole; a
                    // complete line was printed only after its commit was durable.
                    if let Ok(id) = id.parse::<i64>() {
                        ids.push(id);
                    }
                }
            }
            (ready, ids)
        });
        std::thread::sleep(Duration::from_millis(150 + rng.below(350)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (ready, ids) = reader.join().unwrap();
        assert!(ready || cycle > 0, "the first child never became ready");
        let before = acked.len();
        acked.extend(ids);
        // Did the kill tear the log? Look before reopening truncates it.
        if mangrove_storage::txlog::scan_log(&dir.0.join("log"), None, |_, _| {})
            .map(|s| s.torn_tail.is_some())
            .unwrap_or(false)
        {
            torn_tails += 1;
        }
        last = verify(&dir, &acked);
        println!(
            "cycle {cycle:>2}: {:>5} transfers acknowledged this cycle, {:>6} in total, {:>6} committed, 0 lost, 0 partial",
            acked.len() - before,
            acked.len(),
            last.transfers_total
        );
    }
    assert!(
        acked.len() >= cycles,
        "too few acknowledged transfers ({}) for the test to mean anything",
        acked.len()
    );
    println!(
        "crash test: {cycles} SIGKILL cycles, {} transfers acknowledged, {} committed, 0 lost, 0 partial, sum of balances unchanged, 3 indexes consistent; {torn_tails} kills left a torn log tail ({:.1}s)",
        last.acked_present,
        last.transfers_total,
        started.elapsed().as_secs_f64()
    );
    println!("1 passed, 0 failed");
}
