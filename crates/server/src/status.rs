//! The status page of `--metrics-addr`: `GET /` is `status_page.html` (inline CSS, JS and SVG
//! drawing, no external resource), which polls `GET /status.json`, built here.
//!
//! Invariants:
//! - The JSON is small and bounded: at most [`MAX_TXNS`] open transactions with at most
//!   [`MAX_NAMESPACES`] namespaces each, and the profiler's ring of recent slow operations
//!   (`profile::RECENT_SLOW`); counters are cumulative, the page computes rates from two polls.
//! - Building it reads counters and takes only the transaction registry's and the profiler
//!   ring's locks, as `metrics::render` does.
//! - The JSON encoder below escapes every string (quotes, backslashes, control characters, and
//!   `<`, `>`, `&` as `\u00XX`), so no client string can break out of it; the page puts
//!   strings into the DOM with `textContent` only.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use bson::{Bson, Document, RawDocumentBuf, doc};

use crate::Shared;

/// The page, served as is.
pub(crate) const PAGE: &str = include_str!("status_page.html");
/// At most this many open transactions are listed (the oldest first).
const MAX_TXNS: usize = 20;
/// At most this many namespaces are listed per transaction.
const MAX_NAMESPACES: usize = 10;

/// `/status.json`'s body.
pub(crate) fn render_json(shared: &Shared) -> String {
    let c = &shared.counters;
    let latency = shared.metrics.command_totals();
    let buckets: Vec<Bson> = latency
        .buckets
        .iter()
        .map(|(bound, n)| Bson::Array(vec![Bson::Int64(*bound as i64), Bson::Int64(*n as i64)]))
        .collect();
    let status = doc! {
        "uptimeSeconds": shared.started.elapsed().as_secs_f64(),
        "connections": c.connections_current.load(Relaxed) as i64,
        "logCommits": shared.engine.log_stats().commits as i64,
        "operations": c.opcounters(),
        "latency": {
            "count": latency.count as i64,
            "sumMicros": latency.sum as i64,
            "buckets": buckets,
        },
        "transactions": transactions(shared),
        "slowOps": slow_ops(shared),
    };
    let mut out = String::with_capacity(4096);
    write_doc(&mut out, &status);
    out
}

fn transactions(shared: &Shared) -> Document {
    let mut open = shared.sessions.open.list();
    open.sort_by_key(|t| t.started);
    let list: Vec<Bson> = open
        .iter()
        .take(MAX_TXNS)
        .map(|t| {
            let lsid = RawDocumentBuf::try_from(&t.lsid)
                .map(|raw| crate::session::lsid_display(&raw))
                .unwrap_or_default();
            let namespaces: Vec<Bson> = t
                .namespaces
                .iter()
                .take(MAX_NAMESPACES)
                .map(|ns| Bson::String(ns.clone()))
                .collect();
            Bson::Document(doc! {
                "lsid": lsid,
                "txnNumber": t.txn_number,
                "ageSeconds": t.started.elapsed().as_secs_f64(),
                "namespaces": namespaces,
                "running": t.running,
            })
        })
        .collect();
    doc! {
        "open": open.len() as i64,
        "started": shared.sessions.open.stats.started.load(Relaxed) as i64,
        "list": list,
    }
}

fn slow_ops(shared: &Shared) -> Vec<Bson> {
    shared
        .profiler
        .recent_slow()
        .into_iter()
        .map(|s| {
            Bson::Document(doc! {
                "at": s.at.try_to_rfc3339_string().unwrap_or_default(),
                "ns": s.ns,
                "op": s.op,
                "command": s.command,
                "millis": s.millis,
            })
        })
        .collect()
}

/// JSON for the few BSON types built above; anything else is `null`.
fn write_value(out: &mut String, v: &Bson) {
    match v {
        Bson::Document(d) => write_doc(out, d),
        Bson::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, x);
            }
            out.push(']');
        }
        Bson::String(s) => write_str(out, s),
        Bson::Int32(n) => {
            let _ = write!(out, "{n}");
        }
        Bson::Int64(n) => {
            let _ = write!(out, "{n}");
        }
        Bson::Double(f) if f.is_finite() => {
            let _ = write!(out, "{f}");
        }
        Bson::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        _ => out.push_str("null"),
    }
}

/// `d` as JSON (the types `write_value` knows; others as `null`).
pub(crate) fn json_of(d: &Document) -> String {
    let mut out = String::new();
    write_doc(&mut out, d);
    out
}

fn write_doc(out: &mut String, d: &Document) {
    out.push('{');
    for (i, (k, v)) in d.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, k);
        out.push(':');
        write_value(out, v);
    }
    out.push('}');
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || matches!(c, '<' | '>' | '&' | '\u{2028}' | '\u{2029}') => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        let mut out = String::new();
        write_doc(
            &mut out,
            &doc! { "a\"": "x<script>\\\n\u{1}", "n": 1.5, "i": Bson::Null },
        );
        assert_eq!(
            out,
            r#"{"a\"":"x\u003cscript\u003e\\\n\u0001","n":1.5,"i":null}"#
        );
    }

    #[test]
    fn non_finite_doubles_are_null() {
        let mut out = String::new();
        write_value(&mut out, &Bson::Double(f64::NAN));
        assert_eq!(out, "null");
    }
}
