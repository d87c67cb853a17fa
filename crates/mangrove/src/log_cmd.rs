//! `mangrove log`: read the transaction log of a data directory, live or stopped.
//!
//! Reading never takes the data directory's lock and never writes, so it is safe beside a
//! running server; a record still being written shows up as an incomplete tail, not an error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bson::{Bson, DateTime, Document};
use clap::{Args, Subcommand};
use mangrove_storage::restore::summarize;
use mangrove_storage::txlog::{self, LogOp, LogRecord, RecordPos};

#[derive(Subcommand)]
pub enum LogCommand {
    /// One line per committed transaction: time, commit timestamp, session, namespaces.
    List(ListArgs),
    /// Every committed transaction with the documents it wrote (ids and operation types).
    Show(ListArgs),
    /// Checks every record's checksum and that no segment is missing or cut; reports the first
    /// problem (exit 2).
    Verify(DirArg),
}

#[derive(Args)]
pub struct DirArg {
    /// The server's data directory.
    #[arg(long, default_value = "mangrove-data", env = "MANGROVE_DATA_DIR")]
    data_dir: PathBuf,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Only transactions committed at or after this time (RFC 3339, e.g. 2026-11-22T10:00:00Z,
    /// or seconds since the epoch).
    #[arg(long)]
    since: Option<String>,
    /// Only transactions committed before this time (same forms as --since).
    #[arg(long)]
    until: Option<String>,
    /// Only transactions of this logical session (the lsid's UUID).
    #[arg(long)]
    lsid: Option<String>,
    /// Only transactions that wrote this namespace ("db.collection") or database ("db").
    #[arg(long)]
    ns: Option<String>,
    /// Only transactions with an operation of this kind: insert, update, delete, create,
    /// drop, createIndex, dropIndex, collMod (with --ns: on that namespace). `--op drop --ns
    /// db.coll` finds the transaction that dropped a collection, for `mangrove restore
    /// --until-log-position`.
    #[arg(long, value_name = "KIND")]
    op: Option<String>,
    /// Read this directory of log segments instead of the data directory's (for example the
    /// server's --log-archive-dir, or a backup's log).
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// One JSON object per transaction (relaxed Extended JSON), for machines.
    #[arg(long)]
    json: bool,
}

pub fn run(command: LogCommand) -> ExitCode {
    let result = match command {
        LogCommand::List(args) => print_records(&args, false),
        LogCommand::Show(args) => print_records(&args, true),
        LogCommand::Verify(args) => verify(&args.data_dir),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("mangrove log: {message}");
            ExitCode::FAILURE
        }
    }
}

fn log_dir(data_dir: &Path) -> Result<PathBuf, String> {
    let dir = data_dir.join("log");
    if !dir.is_dir() {
        return Err(format!(
            "no transaction log at {}: is --data-dir the server's data directory?",
            dir.display()
        ));
    }
    Ok(dir)
}

pub(crate) fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs.saturating_mul(1000));
    }
    DateTime::parse_rfc3339_str(s)
        .map(|d| d.timestamp_millis())
        .map_err(|_| format!("cannot read time {s:?}: use RFC 3339 (2026-11-22T10:00:00Z) or seconds since the epoch"))
}

/// The session UUID of a record, as text.
fn lsid_text(record: &LogRecord) -> Option<String> {
    match record.meta.lsid.as_ref()?.get("id")? {
        Bson::Binary(b) => {
            Some(bson::Uuid::from_bytes(b.bytes.as_slice().try_into().ok()?).to_string())
        }
        other => Some(other.to_string()),
    }
}

fn matches(record: &LogRecord, args: &ListArgs, since: Option<i64>, until: Option<i64>) -> bool {
    if since.is_some_and(|s| record.wall_ms < s) || until.is_some_and(|u| record.wall_ms >= u) {
        return false;
    }
    if let Some(want) = &args.lsid
        && lsid_text(record).as_deref() != Some(want.as_str())
    {
        return false;
    }
    let in_ns = |op: &LogOp| {
        args.ns.as_deref().is_none_or(|ns| {
            let op_ns = op.ns();
            op_ns == ns || op_ns.split_once('.').is_some_and(|(db, _)| db == ns)
        })
    };
    let of_kind = |op: &LogOp| args.op.as_deref().is_none_or(|kind| op.kind() == kind);
    (args.ns.is_none() && args.op.is_none()) || record.ops.iter().any(|op| in_ns(op) && of_kind(op))
}

fn wall_text(wall_ms: i64) -> String {
    DateTime::from_millis(wall_ms)
        .try_to_rfc3339_string()
        .unwrap_or_else(|_| wall_ms.to_string())
}

/// What a record's line says of its operations: for `list`, each namespace's kinds ("drop
/// shop.orders, insert ×3 shop.log"); for `show`, which prints every op below it, the
/// namespaces alone.
fn record_line_ops(record: &LogRecord, show: bool) -> String {
    if !show {
        return summarize(record).ops.join(", ");
    }
    let mut namespaces: Vec<&str> = record.ops.iter().map(LogOp::ns).collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    namespaces.join(" ")
}

fn record_json(pos: &RecordPos, record: &LogRecord, with_docs: bool) -> serde_json::Value {
    let mut d = Document::new();
    d.insert("ts", record.ts.to_bson());
    d.insert("wall", DateTime::from_millis(record.wall_ms));
    if let Some(lsid) = &record.meta.lsid {
        d.insert("lsid", lsid.clone());
    }
    if let Some(n) = record.meta.txn_number {
        d.insert("txnNumber", n);
    }
    d.insert(
        "segment",
        pos.segment
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    d.insert("offset", pos.offset as i64);
    let ops: Vec<Bson> = record
        .ops
        .iter()
        .map(|op| {
            let mut o = Document::new();
            o.insert("op", op.kind());
            o.insert("ns", op.ns());
            if let Some(id) = op.id() {
                o.insert("_id", id);
            }
            if with_docs {
                op_json(op, &mut o);
            }
            Bson::Document(o)
        })
        .collect();
    d.insert("ops", ops);
    Bson::Document(d).into_relaxed_extjson()
}

/// The contents of one op for `log show --json`: documents, update description (or
/// `replaced: true`), pre-image, options, index spec, annotation.
fn op_json(op: &LogOp, o: &mut Document) {
    let parsed = |d: &bson::RawDocumentBuf| Document::try_from(d.as_ref()).ok();
    match op {
        LogOp::Insert { doc, .. } => {
            if let Some(doc) = parsed(doc) {
                o.insert("doc", doc);
            }
        }
        LogOp::Update { doc, diff, pre, .. } => {
            if let Some(doc) = parsed(doc) {
                o.insert("doc", doc);
            }
            match diff.as_deref().and_then(parsed) {
                Some(diff) => o.insert("diff", diff),
                None => o.insert("replaced", true),
            };
            if let Some(pre) = pre.as_deref().and_then(parsed) {
                o.insert("pre", pre);
            }
        }
        LogOp::Delete { pre, .. } => {
            if let Some(pre) = pre.as_deref().and_then(parsed) {
                o.insert("pre", pre);
            }
        }
        LogOp::CreateCollection { options, .. } | LogOp::SetCollectionOptions { options, .. } => {
            o.insert("options", options.clone());
        }
        LogOp::CreateIndex { spec, .. } => {
            o.insert("spec", spec.clone());
        }
        LogOp::DropIndex { name, .. } => {
            o.insert("name", name.clone());
        }
        LogOp::Command { o: command, .. } => {
            o.insert("o", command.clone());
        }
        LogOp::DropCollection { .. } => {}
    }
}

/// One op for `log show`: kind, namespace, `_id`, and what change streams read: an update's
/// description (or "replaced"), whether a pre-image is recorded, an annotation's command.
fn op_line(op: &LogOp) -> String {
    let mut line = format!("    {:<7} {}", op.kind(), op.ns());
    if let Some(id) = op.id() {
        line.push_str(&format!("  _id: {id}"));
    }
    let pre_flag = |pre: &Option<mangrove_storage::StoredDoc>| {
        if pre.is_some() { "  +pre" } else { "" }
    };
    match op {
        LogOp::Update { diff, pre, .. } => {
            match diff.as_deref().map(|d| Document::try_from(d.as_ref())) {
                Some(Ok(diff)) => line.push_str(&format!("  diff {diff}")),
                Some(Err(_)) => line.push_str("  diff (unreadable)"),
                None => line.push_str("  replaced"),
            }
            line.push_str(pre_flag(pre));
        }
        LogOp::Delete { pre, .. } => line.push_str(pre_flag(pre)),
        LogOp::SetCollectionOptions { options, .. } => {
            line.push_str(&format!("  options {options}"));
        }
        LogOp::Command { o, .. } => line.push_str(&format!("  {o}")),
        _ => {}
    }
    line
}

fn print_records(args: &ListArgs, show: bool) -> Result<ExitCode, String> {
    let dir = match &args.log_dir {
        Some(d) => d.clone(),
        None => log_dir(&args.dir.data_dir)?,
    };
    let since = args.since.as_deref().map(parse_time).transpose()?;
    let until = args.until.as_deref().map(parse_time).transpose()?;
    let scan = txlog::scan_log(&dir, None, |_, _| {}).map_err(|e| e.to_string())?;
    let mut shown = 0usize;
    for (pos, record) in &scan.records {
        if !matches(record, args, since, until) {
            continue;
        }
        shown += 1;
        if args.json {
            println!("{}", record_json(pos, record, show));
            continue;
        }
        let session = match (lsid_text(record), record.meta.txn_number) {
            (Some(l), Some(n)) => format!("lsid {l} txn {n}"),
            (Some(l), None) => format!("lsid {l}"),
            _ => "no session".to_string(),
        };
        let ts = record.ts.to_bson();
        println!(
            "{}  ts {}:{}  {}  {} op{}  {}",
            wall_text(record.wall_ms),
            ts.time,
            ts.increment,
            session,
            record.ops.len(),
            if record.ops.len() == 1 { "" } else { "s" },
            record_line_ops(record, show)
        );
        if show {
            for op in &record.ops {
                println!("{}", op_line(op));
            }
        }
    }
    if !args.json {
        eprintln!(
            "{shown} of {} transactions, {} segment{}, {} bytes",
            scan.records.len(),
            scan.segments,
            if scan.segments == 1 { "" } else { "s" },
            scan.bytes
        );
    }
    Ok(scan_end_verdict(&scan, args.log_dir.is_some()))
}

/// Notes on how the scanned log ends; exit 2 on damage. A directory given with `--log-dir`
/// (an archive, a backup's log) has no control file to end it, and that is no damage.
fn scan_end_verdict(scan: &txlog::LogScan, own_dir: bool) -> ExitCode {
    if let Some(torn) = &scan.torn_tail {
        eprintln!(
            "note: {} ends with {} bytes that are not a whole record (offset {}): a write in progress, or a crash that the next start cuts off",
            torn.segment.display(),
            torn.bytes,
            torn.offset
        );
    }
    match &scan.damage {
        Some(damage) if own_dir && damage.cut_from.is_none() => {
            eprintln!(
                "note: {}: the end of this log cannot be checked",
                damage.detail
            );
        }
        Some(damage) => {
            eprintln!("damaged: {}", damage.to_error());
            return ExitCode::from(2);
        }
        None => {}
    }
    ExitCode::SUCCESS
}

fn verify(data_dir: &Path) -> Result<ExitCode, String> {
    let dir = log_dir(data_dir)?;
    let scan = txlog::scan_log(&dir, None, |_, _| {}).map_err(|e| e.to_string())?;
    let lines = verdict(&scan);
    for line in &lines.0 {
        println!("{line}");
    }
    Ok(if lines.1 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// What a scan of the log says, as lines for a person, and whether it found damage.
pub fn verdict(scan: &txlog::LogScan) -> (Vec<String>, bool) {
    let mut lines = Vec::new();
    let segments = format!(
        "{} segment{}",
        scan.segments,
        if scan.segments == 1 { "" } else { "s" }
    );
    if let Some(damage) = &scan.damage {
        lines.push(format!(
            "damaged: {} (the {} transactions before it are intact)",
            damage.to_error(),
            scan.records.len()
        ));
        return (lines, true);
    }
    lines.push(format!(
        "ok: {} transactions in {segments}, {} bytes, every checksum valid, no segment missing",
        scan.records.len(),
        scan.bytes
    ));
    if let Some(torn) = &scan.torn_tail {
        lines.push(format!(
            "note: {} ends with a torn write of {} bytes at offset {} ({}): never fdatasynced, so never acknowledged as durable; the next start cuts it off",
            torn.segment.display(),
            torn.bytes,
            torn.offset,
            torn.record
        ));
    }
    (lines, false)
}
