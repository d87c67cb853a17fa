//! `local.oplog.rs` entries, derived from the log's records in MongoDB's format, so that oplog
//! tailers (Meteor, CDC tools, `rs.printReplicationInfo()`) can read Mangrove's history.
//!
//! Invariants:
//! - One record makes one entry if it holds one write, else one `applyOps` command entry with
//!   every write in order (a transaction is atomic in the oplog as in the data).
//! - An update is written as a replacement (`o` is the whole new document, `o2` its `_id`):
//!   mongod writes a `$v: 2` diff, but a replacement applies the same way and is what the log
//!   holds; tailers that rebuild data accept both.
//! - A record that implements an annotated command (`renameCollection`, `dropDatabase`,
//!   `collMod`, `convertToCapped`) shows the command, as mongod's oplog does, not the writes
//!   that carried it out (mongod 7.0 logs a `convertToCapped` as a copy and a rename; the
//!   command entry is the older form, which applies the same way).

use bson::{Bson, Document, RawDocumentBuf, doc};
use mangrove_storage::StoredDoc;
use mangrove_storage::txlog::{LogOp, LogRecord};

use super::event::{Event, Uuids};
use super::token::ResumeToken;

/// mongod's term for a one-member set that never held an election.
const TERM: i64 = 1;

/// The oplog entries of one record (as events whose token is the record's place).
pub fn record_entries(record: &LogRecord, uuids: Uuids<'_>) -> Vec<Event> {
    let ops = entry_ops(record, uuids);
    let entry = match ops.len() {
        0 => return Vec::new(),
        1 => {
            let mut single = ops.into_iter().next().unwrap_or_default();
            stamp(&mut single, record);
            single
        }
        _ => {
            let mut e = doc! {
                "op": "c",
                "ns": "admin.$cmd",
                "o": {"applyOps": ops.into_iter().map(Bson::Document).collect::<Vec<_>>()},
            };
            stamp(&mut e, record);
            e
        }
    };
    vec![Event {
        token: ResumeToken::event(record.ts, 0),
        doc: StoredDoc::new(RawDocumentBuf::try_from(&entry).unwrap_or_default()),
    }]
}

/// `ts`, `t`, `v`, `wall`, and the session fields of a transaction, as mongod stamps them.
fn stamp(e: &mut Document, record: &LogRecord) {
    let mut out = doc! {"ts": record.ts.to_bson(), "t": TERM, "v": 2i64};
    out.extend(std::mem::take(e));
    out.insert("wall", bson::DateTime::from_millis(record.wall_ms));
    if let (Some(lsid), Some(n)) = (&record.meta.lsid, record.meta.txn_number) {
        out.insert("lsid", lsid.clone());
        out.insert("txnNumber", n);
        out.insert("stmtId", 0i32);
        out.insert(
            "prevOpTime",
            doc! {"ts": bson::Timestamp{time: 0, increment: 0}, "t": -1i64},
        );
    }
    *e = out;
}

/// The entries (without `ts` and the rest of `stamp`) of a record's ops.
fn entry_ops(record: &LogRecord, uuids: Uuids<'_>) -> Vec<Document> {
    let mut op_entry = |op: &LogOp| {
        let mut entry = op_entry(op)?;
        // `ui`: the UUID of the collection a write is to (commands name theirs in `o`).
        if matches!(
            op,
            LogOp::Insert { .. } | LogOp::Update { .. } | LogOp::Delete { .. }
        ) && let Some(&uuid) = uuids.get(op.ns())
        {
            entry.insert("ui", uuid);
        }
        Some(entry)
    };
    let command = record.ops.iter().find_map(|op| match op {
        LogOp::Command { ns, o } => command_entry(ns, o),
        _ => None,
    });
    let Some(command) = command else {
        return record.ops.iter().filter_map(&mut op_entry).collect();
    };
    // dropDatabase keeps its drops before it; a rename or collMod is the command alone.
    let drops_database = command
        .get_document("o")
        .is_ok_and(|o| o.contains_key("dropDatabase"));
    let mut out: Vec<Document> = Vec::new();
    if drops_database {
        out.extend(record.ops.iter().filter_map(&mut op_entry));
    }
    out.push(command);
    out
}

fn command_entry(ns: &str, o: &Document) -> Option<Document> {
    let db = ns.split_once('.').map_or(ns, |(db, _)| db);
    let name = o.keys().next()?;
    matches!(
        name.as_str(),
        "renameCollection" | "dropDatabase" | "collMod" | "convertToCapped"
    )
    .then(|| doc! {"op": "c", "ns": format!("{db}.$cmd"), "o": o.clone()})
}

/// The session records of retryable writes and transactions: mongod derives them from the
/// oplog rather than logging them, and so does Mangrove's oplog.
const SESSION_RECORDS: &str = "config.transactions";

fn op_entry(op: &LogOp) -> Option<Document> {
    if op.ns() == SESSION_RECORDS {
        return None;
    }
    let split = |ns: &str| -> (String, String) {
        match ns.split_once('.') {
            Some((db, coll)) => (db.to_string(), coll.to_string()),
            None => (ns.to_string(), String::new()),
        }
    };
    let to_doc =
        |d: &mangrove_storage::StoredDoc| Document::try_from(d.as_ref() as &bson::RawDocument).ok();
    Some(match op {
        LogOp::Insert { ns, doc, .. } => {
            let o = to_doc(doc)?;
            let id = o.get("_id").cloned().unwrap_or(Bson::Null);
            doc! {"op": "i", "ns": ns, "o": o, "o2": {"_id": id}}
        }
        LogOp::Update { ns, doc, .. } => {
            let o = to_doc(doc)?;
            let id = o.get("_id").cloned().unwrap_or(Bson::Null);
            doc! {"op": "u", "ns": ns, "o": o, "o2": {"_id": id}}
        }
        LogOp::Delete { ns, id, .. } => doc! {"op": "d", "ns": ns, "o": {"_id": id.clone()}},
        LogOp::CreateCollection { ns, options } => {
            let (db, coll) = split(ns);
            let mut o = doc! {"create": coll};
            o.extend(options.clone());
            o.remove(mangrove_storage::UUID_OPTION);
            o.remove(crate::access::COLLATED_ID_OPTION);
            doc! {"op": "c", "ns": format!("{db}.$cmd"), "o": o}
        }
        LogOp::DropCollection { ns } => {
            let (db, coll) = split(ns);
            doc! {"op": "c", "ns": format!("{db}.$cmd"), "o": {"drop": coll}}
        }
        // A capped collection's own `_id_` index comes with its `create`.
        LogOp::CreateIndex { spec, .. } if spec.get_str("name").is_ok_and(|n| n == "_id_") => {
            return None;
        }
        LogOp::CreateIndex { ns, spec } => {
            let (db, coll) = split(ns);
            let mut o = doc! {"createIndexes": coll};
            o.extend(spec.clone());
            doc! {"op": "c", "ns": format!("{db}.$cmd"), "o": o}
        }
        LogOp::DropIndex { ns, name } => {
            let (db, coll) = split(ns);
            doc! {"op": "c", "ns": format!("{db}.$cmd"), "o": {"dropIndexes": coll, "index": name}}
        }
        _ => return None,
    })
}
