//! The `memory` scenario: the server's RSS with many open change-stream cursors.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bson::{Bson, Document, doc};
use mangrove_bench::workload::PAD;
use mangrove_bench::{mongo, probe};
use mongodb::{Client, ClientSession};

use super::{Ctx, DB, describe, ensure_collection, open_cursors};

/// A measured point of the memory scenario: what had happened, `VmRSS` and `VmHWM` in KiB, and
/// how long the step took.
struct Stage {
    what: String,
    rss_kib: u64,
    hwm_kib: u64,
    took: Option<f64>,
    /// serverStatus `metrics.cursor.open.total` right after.
    cursors: Option<u64>,
}

/// What the memory scenario did, for its report.
#[derive(Default)]
struct MemoryRun {
    stages: Vec<Stage>,
    events: u64,
}

pub(super) async fn memory(ctx: &Ctx) -> Result<String, String> {
    let pid = ctx
        .server_pid
        .ok_or("no server pid: pass --server-pid (serverStatus has no pid)".to_string())?;
    let (n, writes) = (ctx.plan.streams, ctx.plan.memory_writes);
    let k = ctx.plan.connections.min(n);
    let mut run = MemoryRun::default();
    // The stages measured before a failure are reported with it.
    let failed = memory_steps(ctx, pid, k, &mut run).await.err();
    let mut out = format!(
        "{n} `aggregate` commands with `[{{$changeStream: {{}}}}]` on `bench.change_memory`, \
         through {k} connections (one session each); then {writes} single-document inserts \
         (`w: \"majority\"`); then one `getMore` on every cursor ({} events returned in all, \
         {} expected); then `killCursors`. RSS (`VmRSS`) of pid {pid}.\n\n\
         | stage | RSS MiB | vs before | per stream | took | server cursors open |\n\
         |---|---:|---:|---:|---:|---:|\n",
        run.events,
        n * writes
    );
    let base = run.stages.first().map_or(0, |s| s.rss_kib);
    for s in &run.stages {
        let delta = s.rss_kib as i64 - base as i64;
        out += &format!(
            "| {} | {:.1} | {:+.1} MiB | {:+.1} KiB | {} | {} |\n",
            s.what,
            s.rss_kib as f64 / 1024.0,
            delta as f64 / 1024.0,
            delta as f64 / n as f64,
            s.took.map_or("–".into(), |t| format!("{t:.2} s")),
            s.cursors.map_or("?".into(), |c| c.to_string()),
        );
    }
    if let Some(last) = run.stages.last() {
        out += &format!(
            "\nPeak RSS (`VmHWM`) of the server since it started: {:.1} MiB.\n",
            last.hwm_kib as f64 / 1024.0
        );
    }
    match failed {
        None => Ok(out),
        Some(e) => Err(format!("{e}\n\nMeasured before the failure:\n\n{out}")),
    }
}

async fn memory_steps(ctx: &Ctx, pid: u32, k: usize, run: &mut MemoryRun) -> Result<(), String> {
    let measure = |run: &mut MemoryRun, what: String, took: Option<Instant>| {
        let (rss_kib, hwm_kib) = probe::rss_kib(pid).ok_or_else(|| {
            format!("cannot read /proc/{pid}/status: is the server running on this machine?")
        })?;
        let took = took.map(|t| t.elapsed().as_secs_f64());
        run.stages.push(Stage {
            what,
            rss_kib,
            hwm_kib,
            took,
            cursors: None,
        });
        Ok::<(), String>(())
    };
    let (n, writes) = (ctx.plan.streams, ctx.plan.memory_writes);
    ensure_collection(ctx, "change_memory").await?;
    let client = mongo::connect(&ctx.uri, k).await?;
    measure(run, "before opening".into(), None)?;
    note_cursors(ctx, run).await;
    let t = Instant::now();
    let mut groups = open_streams(&client, n, k).await?;
    measure(run, format!("{n} streams open"), Some(t))?;
    note_cursors(ctx, run).await;
    let marks = mongo::collection(&ctx.db(&ctx.writers), "change_memory");
    for i in 0..writes {
        let id = ctx.next_mark.fetch_add(1, Ordering::Relaxed);
        marks
            .insert_one(doc! { "_id": id, "i": i as i64, "pad": PAD })
            .await
            .map_err(describe)
            .map_err(|e| format!("insert into {DB}.change_memory: {e}"))?;
    }
    let t = Instant::now();
    run.events = get_more_round(&mut groups).await?;
    measure(
        run,
        format!("after {writes} commits and one getMore on each"),
        Some(t),
    )?;
    note_cursors(ctx, run).await;
    let t = Instant::now();
    kill_all(&client, &groups).await?;
    measure(run, "after killCursors".into(), Some(t))?;
    note_cursors(ctx, run).await;
    // Freed memory goes back to the system a little later, if the allocator returns it at all.
    tokio::time::sleep(Duration::from_secs(1)).await;
    measure(run, "1 s after killCursors".into(), None)?;
    note_cursors(ctx, run).await;
    Ok(())
}

/// Adds the server's open cursor count to the last stage.
async fn note_cursors(ctx: &Ctx, run: &mut MemoryRun) {
    let open = open_cursors(ctx).await;
    if let Some(stage) = run.stages.last_mut() {
        stage.cursors = open;
    }
}

/// Cursors opened through one session (and so, one at a time, one connection).
struct CursorGroup {
    session: ClientSession,
    ids: Vec<i64>,
}

async fn open_streams(client: &Client, n: usize, k: usize) -> Result<Vec<CursorGroup>, String> {
    let mut tasks = Vec::new();
    for g in 0..k {
        let client = client.clone();
        let count = n / k + usize::from(g < n % k);
        tasks.push(tokio::spawn(async move {
            let mut session = client
                .start_session()
                .await
                .map_err(describe)
                .map_err(|e| format!("start_session: {e}"))?;
            let db = client.database(DB);
            let mut ids = Vec::with_capacity(count);
            for i in 0..count {
                let reply = db
                    .run_command(doc! {
                        "aggregate": "change_memory",
                        "pipeline": [{ "$changeStream": {} }],
                        "cursor": {},
                    })
                    .session(&mut session)
                    .await
                    .map_err(describe)
                    .map_err(|e| {
                        format!(
                            "aggregate with $changeStream (cursor {} of connection {g}): {e}",
                            i + 1
                        )
                    })?;
                let id = reply
                    .get_document("cursor")
                    .ok()
                    .and_then(|c| c.get_i64("id").ok())
                    .filter(|&id| id != 0)
                    .ok_or_else(|| {
                        format!(
                            "aggregate with $changeStream answered without an open cursor: {reply}"
                        )
                    })?;
                ids.push(id);
            }
            Ok::<_, String>(CursorGroup { session, ids })
        }));
    }
    let mut groups = Vec::new();
    for t in tasks {
        groups.push(t.await.map_err(|e| format!("an opener panicked: {e}"))??);
    }
    Ok(groups)
}

/// One `getMore` on every cursor; returns how many events they answered with.
async fn get_more_round(groups: &mut Vec<CursorGroup>) -> Result<u64, String> {
    let mut tasks = Vec::new();
    for mut g in std::mem::take(groups) {
        tasks.push(tokio::spawn(async move {
            let mut events = 0u64;
            for &id in &g.ids {
                let reply = run_in(
                    &mut g.session,
                    doc! {
                        "getMore": id,
                        "collection": "change_memory",
                        "maxTimeMS": 1000,
                    },
                )
                .await
                .map_err(describe)
                .map_err(|e| format!("getMore on change-stream cursor {id}: {e}"))?;
                let batch = reply
                    .get_document("cursor")
                    .ok()
                    .and_then(|c| c.get_array("nextBatch").ok())
                    .ok_or_else(|| {
                        format!("getMore on cursor {id} answered without cursor.nextBatch: {reply}")
                    })?;
                events += batch.len() as u64;
            }
            Ok::<_, String>((g, events))
        }));
    }
    let mut events = 0;
    for t in tasks {
        let (g, e) = t
            .await
            .map_err(|e| format!("a getMore task panicked: {e}"))??;
        groups.push(g);
        events += e;
    }
    Ok(events)
}

/// `killCursors` on every cursor, outside the sessions (the driver refuses to send
/// `killCursors` in a session).
async fn kill_all(client: &Client, groups: &[CursorGroup]) -> Result<(), String> {
    for g in groups {
        let ids: Vec<Bson> = g.ids.iter().map(|&id| Bson::Int64(id)).collect();
        client
            .database(DB)
            .run_command(doc! { "killCursors": "change_memory", "cursors": ids })
            .await
            .map_err(describe)
            .map_err(|e| format!("killCursors: {e}"))?;
    }
    Ok(())
}

async fn run_in(
    session: &mut ClientSession,
    command: Document,
) -> mongodb::error::Result<Document> {
    let client = session.client();
    client
        .database(DB)
        .run_command(command)
        .session(session)
        .await
}
