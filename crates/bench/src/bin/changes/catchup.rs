//! The `catchup` scenario: how fast one stream reads about 0.9 GB of history.

use std::time::{Duration, Instant};

use bson::{Bson, Document, RawDocumentBuf, Timestamp, doc};
use mangrove_bench::mongo;
use mongodb::Collection;

use super::{Ctx, DB, bson_u64, describe, log_field, server_status};

/// Bytes of padding that make a history document `{_id: <int64>, pad: <string>}` 1 KiB.
const HISTORY_PAD: usize = 1024 - 28;

pub(super) async fn catchup(ctx: &Ctx) -> Result<String, String> {
    // A new collection each run: a stream starting before a drop of its collection would be
    // invalidated by it.
    let name = format!(
        "change_history_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    let coll = mongo::collection(&ctx.db(&ctx.writers), &name);
    let before = server_status(&ctx.writers).await?;
    let start = match log_field(&before, "lastCommit") {
        Some(Bson::Timestamp(ts)) => *ts,
        other => {
            return Err(format!(
                "serverStatus has no mangrove.log.lastCommit timestamp to start from (found {other:?})"
            ));
        }
    };
    let docs = ctx.plan.catchup_docs;
    let doc_bytes = bson_len(&history_doc(0))?;
    eprintln!("  writing {docs} documents of {doc_bytes} bytes to {DB}.{name} ...");
    let t = Instant::now();
    write_history(&coll, docs).await?;
    let write_secs = t.elapsed().as_secs_f64();
    let after = server_status(&ctx.writers).await?;
    let log_bytes = log_field(&before, "bytes")
        .and_then(bson_u64)
        .zip(log_field(&after, "bytes").and_then(bson_u64))
        .map(|(b, a)| a.saturating_sub(b));
    eprintln!("  reading them back from {start:?} ...");
    let read = read_history(ctx, &name, start, docs).await?;
    let secs = read.elapsed.as_secs_f64();
    let mb = |bytes: u64| bytes as f64 / 1e6;
    let total_doc_bytes = docs * doc_bytes as u64;
    let mut out = format!(
        "{docs} documents of {doc_bytes} bytes (`insert_many` of 1,000, 4 writers, `w: \
         \"majority\"`) written in {write_secs:.1} s; then one `watch()` on the collection with \
         `startAtOperationTime` = serverStatus `mangrove.log.lastCommit` taken before the writes \
         (Timestamp({}, {})), read to the last event. Time from the `watch()` call to the last \
         event.\n\n\
         | events | read time | events/s | log bytes | log MB/s | document bytes | document MB/s \
         | event bytes received | first event after |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        start.time, start.increment,
    );
    out += &format!(
        "| {} | {secs:.2} s | {:.0} | {} | {} | {:.0} MB | {:.1} | {:.0} MB | {:.1} ms |\n",
        read.events,
        read.events as f64 / secs,
        log_bytes.map_or("not reported".into(), |b| format!("{:.0} MB", mb(b))),
        log_bytes.map_or("–".into(), |b| format!("{:.1}", mb(b) / secs)),
        mb(total_doc_bytes),
        mb(total_doc_bytes) / secs,
        mb(read.event_bytes),
        read.first_event.as_secs_f64() * 1000.0,
    );
    out += "\nLog bytes: the growth of serverStatus `mangrove.log.bytes` over the writes. MB = 10^6 bytes.\n";
    if read.other_events > 0 {
        out += &format!(
            "\n{} events other than inserts were received too.\n",
            read.other_events
        );
    }
    Ok(out)
}

fn history_doc(id: i64) -> Document {
    doc! { "_id": id, "pad": "h".repeat(HISTORY_PAD) }
}

fn bson_len(d: &Document) -> Result<usize, String> {
    RawDocumentBuf::try_from(d)
        .map(|r| r.as_bytes().len())
        .map_err(|e| format!("encoding a document: {e}"))
}

async fn write_history(coll: &Collection<Document>, docs: u64) -> Result<(), String> {
    const BATCH: u64 = 1000;
    const WRITERS: u64 = 4;
    let batches = docs.div_ceil(BATCH);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let coll = coll.clone();
        tasks.push(tokio::spawn(async move {
            for b in (w..batches).step_by(WRITERS as usize) {
                let ids = b * BATCH..((b + 1) * BATCH).min(docs);
                coll.insert_many(ids.map(|i| history_doc(i as i64)))
                    .await
                    .map_err(describe)
                    .map_err(|e| format!("insert_many of history: {e}"))?;
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| format!("a history writer panicked: {e}"))??;
    }
    Ok(())
}

struct HistoryRead {
    events: u64,
    other_events: u64,
    event_bytes: u64,
    elapsed: Duration,
    first_event: Duration,
}

async fn read_history(
    ctx: &Ctx,
    name: &str,
    start: Timestamp,
    docs: u64,
) -> Result<HistoryRead, String> {
    let t = Instant::now();
    let mut stream = mongo::collection(&ctx.db(&ctx.watchers), name)
        .watch()
        .start_at_operation_time(start)
        .await
        .map_err(describe)
        .map_err(|e| format!("watch() with startAtOperationTime {start:?}: {e}"))?
        .with_type::<RawDocumentBuf>();
    let mut r = HistoryRead {
        events: 0,
        other_events: 0,
        event_bytes: 0,
        elapsed: Duration::ZERO,
        first_event: Duration::ZERO,
    };
    let mut last_progress = Instant::now();
    while r.events < docs {
        let event =
            stream.next_if_any().await.map_err(describe).map_err(|e| {
                format!("reading the history stream after {} events: {e}", r.events)
            })?;
        let Some(event) = event else {
            if last_progress.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "the history stream stopped after {} of {docs} insert events (no event for 30 s)",
                    r.events
                ));
            }
            continue;
        };
        if r.events == 0 {
            r.first_event = t.elapsed();
        }
        last_progress = Instant::now();
        r.event_bytes += event.as_bytes().len() as u64;
        match event.get_str("operationType") {
            Ok("insert") => r.events += 1,
            _ => r.other_events += 1,
        }
    }
    r.elapsed = t.elapsed();
    Ok(r)
}
