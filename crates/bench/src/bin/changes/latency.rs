//! The `latency` scenario: how long after a commit's acknowledgement its event reaches a
//! watcher, paced and at full speed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::{Document, doc};
use mangrove_bench::mongo;
use mangrove_bench::workload::PAD;
use mongodb::Collection;
use mongodb::change_stream::ChangeStream;

use super::{Ctx, DB, GRACE, describe, ensure_collection};

/// One write whose event the watcher should see.
struct Write {
    id: i64,
    /// When the commit was sent (the insert, or the transaction's `commitTransaction`).
    sent: Instant,
    /// When its acknowledgement arrived.
    acked: Instant,
    measured: bool,
}

#[derive(Default)]
struct Writes {
    done: Vec<Write>,
    errors: u64,
    first_error: Option<String>,
}

impl Writes {
    fn absorb(&mut self, other: Writes) {
        self.done.extend(other.done);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn fail(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }
}

#[derive(Clone, Copy)]
enum Pace {
    /// One `insert_one` per tick, this many per second, whether or not earlier ones returned.
    Paced(f64),
    /// The transfer workload with this many clients, back to back.
    Max(usize),
}

pub(super) async fn latency(ctx: &Ctx) -> Result<String, String> {
    ensure_collection(ctx, "change_marks").await?;
    let mut out = String::from(
        "A watcher (`watch()` on `bench.change_marks`, its own connection pool) and a writer in \
         one client process. Paced: one `insert_one` (`w: \"majority\"`) per tick, open loop. \
         Max: the transfer workload, each transaction also inserting a marker document into \
         `change_marks` (`commitTransaction` with `w: \"majority\"`). ack → event: the watcher \
         received the event minus the writer received the acknowledgement (negative when the \
         event came first); sent → event: minus when the insert or `commitTransaction` was \
         sent; commit: sent → ack.\n\n\
         | writer | commits/s | events | missing | errors | ack → event p50 | p99 | max | \
         event before ack | sent → event p50 | p99 | max | commit p50 | p99 |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut notes = String::new();
    for pace in [Pace::Paced(ctx.plan.rate), Pace::Max(ctx.plan.clients)] {
        let r = latency_phase(ctx, pace).await?;
        eprintln!("  {}", r.row());
        out += &r.row();
        out.push('\n');
        if let Some(e) = &r.first_error {
            notes += &format!("- {}: first error: {e}\n", r.name);
        }
        if let Some(e) = &r.watch_error {
            notes += &format!("- {}: the change stream failed: {e}\n", r.name);
        }
    }
    out += &format!(
        "\n{} s measured per phase after {} s of warm-up; milliseconds. Goal (issue 13): p99 \
         ack → event under 5 ms at 1,000 commits/s.\n",
        ctx.plan.latency.duration.as_secs_f64(),
        ctx.plan.latency.warmup.as_secs_f64()
    );
    if !notes.is_empty() {
        out += &format!("\n{notes}");
    }
    Ok(out)
}

struct LatencyResult {
    name: String,
    commits_per_sec: f64,
    /// Acknowledged measured writes.
    writes: usize,
    received: usize,
    errors: u64,
    first_error: Option<String>,
    watch_error: Option<String>,
    ack_to_event: Vec<i64>,
    sent_to_event: Vec<i64>,
    commit: Vec<i64>,
}

impl LatencyResult {
    fn row(&self) -> String {
        let p = |v: &[i64], q: f64| percentile(v, q).map_or("–".into(), ms);
        let early = self.ack_to_event.iter().filter(|&&v| v < 0).count();
        format!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.name,
            self.commits_per_sec,
            self.received,
            self.writes - self.received,
            self.errors,
            p(&self.ack_to_event, 0.5),
            p(&self.ack_to_event, 0.99),
            p(&self.ack_to_event, 1.0),
            early,
            p(&self.sent_to_event, 0.5),
            p(&self.sent_to_event, 0.99),
            p(&self.sent_to_event, 1.0),
            p(&self.commit, 0.5),
            p(&self.commit, 0.99),
        )
    }
}

fn ms(us: i64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// Nearest-rank quantile of sorted `v`.
fn percentile(v: &[i64], q: f64) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// `to − from` in µs, negative when `to` came first.
fn signed_us(from: Instant, to: Instant) -> i64 {
    if to >= from {
        (to - from).as_micros() as i64
    } else {
        -((from - to).as_micros() as i64)
    }
}

/// One phase: a fresh stream, the writer, then the events joined to the writes by `_id`.
async fn latency_phase(ctx: &Ctx, pace: Pace) -> Result<LatencyResult, String> {
    let marks = mongo::collection(&ctx.db(&ctx.writers), "change_marks");
    let stream = mongo::collection(&ctx.db(&ctx.watchers), "change_marks")
        .watch()
        .await
        .map_err(describe)
        .map_err(|e| format!("watch() on {DB}.change_marks: {e}"))?
        .with_type::<Document>();
    let stop = Arc::new(AtomicBool::new(false));
    let expect = Arc::new(AtomicU64::new(u64::MAX));
    let watcher = tokio::spawn(receive_marks(stream, stop.clone(), expect.clone()));
    let measure_from = Instant::now() + ctx.plan.latency.warmup;
    let end = measure_from + ctx.plan.latency.duration;
    let (name, writes) = match pace {
        Pace::Paced(rate) => (
            format!("paced {rate:.0}/s"),
            paced_writes(ctx, &marks, rate, measure_from, end).await,
        ),
        Pace::Max(clients) => (
            format!("max: transfer, {clients} clients"),
            max_writes(ctx, &marks, clients, measure_from, end).await?,
        ),
    };
    expect.store(writes.done.len() as u64, Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let (events, watch_error) = watcher
        .await
        .map_err(|e| format!("the watcher task panicked: {e}"))?;
    let arrived: HashMap<i64, Instant> = events.into_iter().collect();
    let measured: Vec<&Write> = writes.done.iter().filter(|w| w.measured).collect();
    let mut r = LatencyResult {
        name,
        commits_per_sec: measured.len() as f64 / ctx.plan.latency.duration.as_secs_f64(),
        writes: measured.len(),
        received: 0,
        errors: writes.errors,
        first_error: writes.first_error,
        watch_error,
        ack_to_event: Vec::new(),
        sent_to_event: Vec::new(),
        commit: Vec::new(),
    };
    for w in measured {
        r.commit.push(signed_us(w.sent, w.acked));
        if let Some(&t) = arrived.get(&w.id) {
            r.received += 1;
            r.ack_to_event.push(signed_us(w.acked, t));
            r.sent_to_event.push(signed_us(w.sent, t));
        }
    }
    for v in [&mut r.ack_to_event, &mut r.sent_to_event, &mut r.commit] {
        v.sort_unstable();
    }
    Ok(r)
}

/// Receives insert events and when each arrived, until the writers stopped and every
/// acknowledged write's event arrived (or `GRACE` passed). Returns the events and, if the
/// stream failed, the error.
async fn receive_marks(
    mut stream: ChangeStream<Document>,
    stop: Arc<AtomicBool>,
    expect: Arc<AtomicU64>,
) -> (Vec<(i64, Instant)>, Option<String>) {
    let mut got = Vec::new();
    let mut stopped: Option<Instant> = None;
    loop {
        if stop.load(Ordering::SeqCst) {
            let since = *stopped.get_or_insert_with(Instant::now);
            if got.len() as u64 >= expect.load(Ordering::SeqCst) || since.elapsed() > GRACE {
                return (got, None);
            }
        }
        match stream.next_if_any().await {
            Ok(Some(event)) => {
                let at = Instant::now();
                let id = event
                    .get_document("documentKey")
                    .ok()
                    .and_then(|k| k.get_i64("_id").ok());
                if let Some(id) = id {
                    got.push((id, at));
                }
            }
            Ok(None) => {}
            Err(e) => return (got, Some(describe(e))),
        }
    }
}

/// Open loop: an `insert_one` every `1/rate` s, each in its own task.
async fn paced_writes(
    ctx: &Ctx,
    marks: &Collection<Document>,
    rate: f64,
    measure_from: Instant,
    end: Instant,
) -> Writes {
    let results = Arc::new(Mutex::new(Writes::default()));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tick.tick().await;
        if Instant::now() >= end {
            break;
        }
        let id = ctx.next_mark.fetch_add(1, Ordering::Relaxed);
        let (marks, results) = (marks.clone(), results.clone());
        tasks.spawn(async move {
            let sent = Instant::now();
            let r = marks.insert_one(doc! { "_id": id, "pad": PAD }).await;
            let acked = Instant::now();
            let mut results = results.lock().unwrap();
            match r {
                Ok(_) => results.done.push(Write {
                    id,
                    sent,
                    acked,
                    measured: sent >= measure_from,
                }),
                Err(e) => {
                    let e = describe(e);
                    results.fail(format!("insert_one: {e}"))
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    std::mem::take(&mut *results.lock().unwrap())
}

/// The transfer workload at full speed, each transaction also inserting a marker.
async fn max_writes(
    ctx: &Ctx,
    marks: &Collection<Document>,
    clients: usize,
    measure_from: Instant,
    end: Instant,
) -> Result<Writes, String> {
    let mut tasks = Vec::new();
    for mut w in ctx.transfer_workers(clients).await? {
        let marks = marks.clone();
        // Each client takes ids from its own stripe, so no shared counter is contended.
        let base = ctx.next_mark.fetch_add(1 << 32, Ordering::Relaxed);
        tasks.push(tokio::spawn(async move {
            let mut s = Writes::default();
            let mut id = base;
            while Instant::now() < end {
                id += 1;
                let started = Instant::now();
                match w.transfer_marked(&marks, id).await {
                    Ok((_, sent)) => s.done.push(Write {
                        id,
                        sent,
                        acked: Instant::now(),
                        measured: started >= measure_from,
                    }),
                    Err(e) => {
                        s.fail(e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (s, w)
        }));
    }
    let mut total = Writes::default();
    let mut finished = Vec::new();
    for t in tasks {
        let (s, w) = t.await.map_err(|e| format!("a writer panicked: {e}"))?;
        total.absorb(s);
        finished.push(w);
    }
    Ok(total)
}
