//! What both systems run: the workloads, the logical arguments of each operation (drawn the same
//! way for both), and the timed loop that runs one cell (system x workload x clients).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use crate::rng::{Rng, Zipf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    TransferUniform,
    TransferZipf,
    Order,
    PointRead,
    Insert,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::TransferUniform,
        Workload::TransferZipf,
        Workload::Order,
        Workload::PointRead,
        Workload::Insert,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::TransferUniform => "transfer-uniform",
            Workload::TransferZipf => "transfer-zipf",
            Workload::Order => "order",
            Workload::PointRead => "point-read",
            Workload::Insert => "insert",
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }

    /// Whether each operation is a durable commit (so commits per fdatasync means something).
    pub fn commits(self) -> bool {
        !matches!(self, Workload::PointRead)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub accounts: u64,
    pub customers: u64,
    pub items: u64,
}

/// Zipf exponent of the skewed transfer: the hottest account is in about a tenth of transfers
/// at 10,000 accounts, so concurrent transfers really collide.
pub const ZIPF_THETA: f64 = 0.99;
pub const OPENING_BALANCE: i64 = 1_000_000;
/// Filler so that documents are a realistic ~200 bytes rather than a few numbers.
pub const PAD: &str = "................................................................................................";

/// State every worker of a run shares: sizes, the Zipf table, and id counters for inserted
/// documents (unique over the whole run, so cells never collide on `_id`).
pub struct Shared {
    pub sizes: Sizes,
    pub zipf: Zipf,
    pub next_order: AtomicI64,
    pub next_insert: AtomicI64,
}

impl Shared {
    pub fn new(sizes: Sizes) -> Arc<Shared> {
        Arc::new(Shared {
            sizes,
            zipf: Zipf::new(sizes.accounts, ZIPF_THETA),
            next_order: AtomicI64::new(1),
            next_insert: AtomicI64::new(1),
        })
    }
}

pub fn transfer_args(rng: &mut Rng, shared: &Shared, skewed: bool) -> (i64, i64, i64) {
    let n = shared.sizes.accounts;
    let pick = |rng: &mut Rng| {
        if skewed {
            shared.zipf.sample(rng)
        } else {
            rng.below(n)
        }
    };
    let from = pick(rng);
    let mut to = pick(rng);
    while to == from {
        to = pick(rng);
    }
    (from as i64, to as i64, 1 + rng.below(100) as i64)
}

/// The two accounts of a transfer in the order to touch them: ascending `_id`, as an
/// application does to keep PostgreSQL's row locks free of deadlocks (each one would cost
/// `deadlock_timeout`, a second, before it is detected). Mangrove never waits on a lock, so the
/// order does not matter to it, but both systems run the same statements.
pub fn lock_order(from: i64, to: i64) -> [i64; 2] {
    [from.min(to), from.max(to)]
}

/// One New-Order: a customer and 5 to 15 distinct items (TPC-C's `ol_cnt`, mean 10) with
/// quantities 1 to 10. Items are sorted, as an application avoiding deadlocks would do.
pub struct OrderArgs {
    pub customer: i64,
    pub lines: Vec<(i64, i64)>,
}

pub fn order_args(rng: &mut Rng, shared: &Shared) -> OrderArgs {
    let count = 5 + rng.below(11) as usize;
    let mut items: Vec<i64> = Vec::with_capacity(count);
    while items.len() < count {
        let i = rng.below(shared.sizes.items) as i64;
        if !items.contains(&i) {
            items.push(i);
        }
    }
    items.sort_unstable();
    OrderArgs {
        customer: rng.below(shared.sizes.customers) as i64,
        lines: items
            .into_iter()
            .map(|i| (i, 1 + rng.below(10) as i64))
            .collect(),
    }
}

/// A transaction of the benchmark, with its arguments.
pub enum TxnOp {
    Transfer((i64, i64, i64)),
    /// The order's id and its customer and lines.
    Order(i64, OrderArgs),
}

/// One logical operation with its arguments, drawn the same way for both systems so that they
/// run the same operations.
pub enum Op {
    Txn(TxnOp),
    /// A point read of this account.
    PointRead(i64),
    /// An insert outside a transaction, with this `_id`.
    Insert(i64),
}

impl Op {
    pub fn draw(workload: Workload, rng: &mut Rng, shared: &Shared) -> Op {
        match workload {
            Workload::TransferUniform | Workload::TransferZipf => Op::Txn(TxnOp::Transfer(
                transfer_args(rng, shared, workload == Workload::TransferZipf),
            )),
            Workload::Order => {
                let args = order_args(rng, shared);
                let id = shared.next_order.fetch_add(1, Ordering::Relaxed);
                Op::Txn(TxnOp::Order(id, args))
            }
            Workload::PointRead => Op::PointRead(rng.below(shared.sizes.accounts) as i64),
            Workload::Insert => Op::Insert(shared.next_insert.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

pub fn item_price(item: i64) -> f64 {
    1.0 + (item % 100) as f64
}

/// What one logical operation cost: whether it made a durable commit, and how many attempts
/// were aborted (and retried) before it succeeded.
pub struct OpOutcome {
    pub committed: bool,
    pub aborts: u64,
}

/// Give up on one operation after this many aborted attempts: past it something is wrong, not
/// just contended.
pub const MAX_ATTEMPTS: u64 = 10_000;

pub trait Worker: Send + 'static {
    fn op(&mut self, workload: Workload) -> impl Future<Output = Result<OpOutcome, String>> + Send;
}

#[derive(Clone, Copy)]
pub struct Timing {
    pub warmup: Duration,
    pub duration: Duration,
}

#[derive(Default)]
pub struct CellStats {
    /// Latency of each operation started in the measured window, retries included, in µs.
    pub latencies_us: Vec<u32>,
    pub ops: u64,
    pub aborts: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Durable commits over the whole cell, warm-up included (the window of the sync counters).
    pub commits_total: u64,
    /// Operations over the whole cell, warm-up included (the window of the CPU counters).
    pub ops_total: u64,
    pub elapsed: Duration,
}

impl CellStats {
    pub fn throughput(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.ops as f64 / self.elapsed.as_secs_f64()
        }
    }

    /// Latency at quantile `q` in milliseconds (nearest rank); `latencies_us` must be sorted.
    pub fn percentile_ms(&self, q: f64) -> Option<f64> {
        let n = self.latencies_us.len();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        Some(self.latencies_us[rank - 1] as f64 / 1000.0)
    }
}

/// Runs every worker for warm-up plus duration and merges what they measured.
pub async fn run_cell<W: Worker>(workers: Vec<W>, workload: Workload, timing: Timing) -> CellStats {
    let measure_from = Instant::now() + timing.warmup;
    let end = measure_from + timing.duration;
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|w| tokio::spawn(client_loop(w, workload, measure_from, end)))
        .collect();
    let mut total = CellStats::default();
    let mut finished = Vec::new();
    for t in tasks {
        match t.await {
            Ok((s, w)) => {
                total.absorb(s);
                finished.push(w);
            }
            Err(e) => {
                total.errors += 1;
                total
                    .first_error
                    .get_or_insert(format!("a client task panicked: {e}"));
            }
        }
    }
    // Workers (and so their connections) close only here, after every one has stopped, so a
    // closing connection never competes with a running client.
    drop(finished);
    total.latencies_us.sort_unstable();
    total
}

/// One client: operations back to back until `end`, measured from `measure_from`.
async fn client_loop<W: Worker>(
    mut w: W,
    workload: Workload,
    measure_from: Instant,
    end: Instant,
) -> (CellStats, W) {
    let mut s = CellStats::default();
    let mut last = measure_from;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let result = w.op(workload).await;
        let t1 = Instant::now();
        let measured = t0 >= measure_from;
        match result {
            Ok(outcome) => {
                s.commits_total += outcome.committed as u64;
                s.ops_total += 1;
                if measured {
                    s.ops += 1;
                    s.aborts += outcome.aborts;
                    let us = (t1 - t0).as_micros().min(u32::MAX as u128) as u32;
                    s.latencies_us.push(us);
                }
            }
            Err(e) => {
                s.errors += 1;
                s.first_error.get_or_insert(e);
                // A broken connection fails at once: do not spin on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if measured {
            last = t1;
        }
    }
    s.elapsed = last - measure_from;
    (s, w)
}

impl CellStats {
    /// Adds one client's numbers to the cell's.
    fn absorb(&mut self, s: CellStats) {
        self.latencies_us.extend_from_slice(&s.latencies_us);
        self.ops += s.ops;
        self.aborts += s.aborts;
        self.errors += s.errors;
        self.commits_total += s.commits_total;
        self.ops_total += s.ops_total;
        self.elapsed = self.elapsed.max(s.elapsed);
        if self.first_error.is_none() {
            self.first_error = s.first_error;
        }
    }
}
