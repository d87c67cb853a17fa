//! The transaction log: one record per committed transaction, in segment files.
//!
//! ```text
//! log/<first ts, 16 hex digits>.log   segments, oldest first by name
//! log/control                          where the log must at least reach (control.rs)
//! segment file  = header record*       (the header names the segment before it: segment.rs)
//! record        = payload length u32 LE | crc32c u32 LE | payload
//! payload       = commit ts u64 LE | wall clock ms i64 LE | BSON body
//! body          = { v: 2, lsid?: doc, txnNumber?: long, multi?: true, ops: [op, ...] }
//!                 (multi: a multi-document transaction, not a retryable write)
//! op            = { op: "i", ns, k: binData, o: doc }                       (insert)
//!               | { op: "u", ns, k: binData, o: doc, diff?: doc, pre?: doc } (update)
//!               | { op: "d", ns, k: binData, _id, pre?: doc }              (delete)
//!               | { op: "c", ns, o: options }  |  { op: "x", ns }           (create, drop)
//!               | { op: "co", ns, o: options }                              (collMod: new options)
//!               | { op: "ci", ns, o: index spec } | { op: "di", ns, name }   (create/drop index)
//!               | { op: "n", ns, o: doc }             (annotation: the command the ops implement)
//! ```
//!
//! What change streams need (version 2): an update's `o` is the whole new document; `diff` is
//! its `updateDescription` from the document before the transaction (`mangrove_bson::diff`),
//! present when the update was made by operators or a pipeline and absent when the document was
//! replaced (a replacement, findAndModify's replacement, `$merge`). `pre` is the document before
//! the transaction, only for collections with `changeStreamPreAndPostImages: {enabled: true}`.
//! A record holds at most one op per document (the transaction's net effect on it), in the
//! order the transaction first wrote each document; creations, option and index changes come
//! before the documents, drops after them, then annotations (`n`, which replay ignores).
//! Version 1 bodies (no `diff`, `pre`, `co` or `n`) are still read: their updates decode as
//! replacements.
//!
//! The CRC covers the length prefix and the payload, so a torn length is caught as well as a torn
//! body. Records are appended in commit-timestamp order and never span segments; a segment is
//! named after the timestamp of its first record, so names sort in log order.
//!
//! Segments are preallocated with zeros ahead of the records (see [`PREALLOCATE_BYTES`]), so a
//! segment's valid records are followed by zeros: reading stops there, as at the end of a file.
//!
//! Reading (`scan.rs`) tells a write a crash cut short (cut off at the next start, saying what
//! was cut) from damage to committed records and from missing or cut segments (start-up stops,
//! naming the file and offset, unless the operator asks to cut the log there: `writer.rs`).

use std::path::{Path, PathBuf};

use std::sync::Arc;

use bson::raw::{RawArrayBuf, RawBinaryRef, RawBson, RawBsonRef, RawDocument, cstr};
use bson::{Bson, Document, RawDocumentBuf};

use crate::{StorageError, StoredDoc, Timestamp};

pub(crate) const RECORD_HEADER_LEN: usize = 8;
/// The body version written; version 1 (no diffs, pre-images or annotations) is still read.
const RECORD_VERSION: i32 = 2;
/// Fixed part of a payload before the BSON body.
pub(crate) const PAYLOAD_PREFIX_LEN: usize = 16;
/// A record larger than this is refused at commit (and treated as damage when read): it bounds
/// the memory a reader needs for one record.
pub const MAX_RECORD_LEN: usize = 256 * 1024 * 1024;
const SEGMENT_SUFFIX: &str = ".log";
/// How far ahead of its records a segment is zero-filled. Overwriting blocks that are already
/// part of the file lets fdatasync skip the file-size metadata write that an append needs: on
/// the benchmark machine that is 7,900 fdatasyncs/s against 5,450/s for appends (PostgreSQL
/// zero-fills its WAL segments for the same reason). Zero-filling writes real zeros rather
/// than `fallocate`, whose unwritten extents would need metadata updates on first write. One
/// extension costs about a millisecond on that disk, once per this many log bytes.
const PREALLOCATE_BYTES: u64 = 1024 * 1024;

/// One write of a committed transaction, as the log records it.
#[derive(Clone, Debug, PartialEq)]
pub enum LogOp {
    Insert {
        ns: String,
        key: Vec<u8>,
        doc: StoredDoc,
    },
    /// `doc` is the new document. `diff` is its `updateDescription` (see
    /// [`mangrove_bson::update_description`]) from the document before the transaction, for an
    /// update made by operators or a pipeline; `None` when the document was replaced. `pre` is
    /// the document before the transaction, when the collection records pre-images.
    Update {
        ns: String,
        key: Vec<u8>,
        doc: StoredDoc,
        diff: Option<StoredDoc>,
        pre: Option<StoredDoc>,
    },
    /// `pre` is the deleted document, when the collection records pre-images.
    Delete {
        ns: String,
        key: Vec<u8>,
        id: Bson,
        pre: Option<StoredDoc>,
    },
    CreateCollection {
        ns: String,
        options: Document,
    },
    DropCollection {
        ns: String,
    },
    /// Adds a secondary index (its normalized specification) and builds it from the
    /// collection's documents at this point of the log.
    CreateIndex {
        ns: String,
        spec: Document,
    },
    DropIndex {
        ns: String,
        name: String,
    },
    /// The collection's options are now `options` (collMod).
    SetCollectionOptions {
        ns: String,
        options: Document,
    },
    /// An annotation: the command that the record's other ops implement (renameCollection,
    /// dropDatabase, collMod), for change streams and the oplog. Replay ignores it.
    Command {
        ns: String,
        o: Document,
    },
}

impl LogOp {
    pub fn ns(&self) -> &str {
        match self {
            LogOp::Insert { ns, .. }
            | LogOp::Update { ns, .. }
            | LogOp::Delete { ns, .. }
            | LogOp::CreateCollection { ns, .. }
            | LogOp::DropCollection { ns }
            | LogOp::CreateIndex { ns, .. }
            | LogOp::DropIndex { ns, .. }
            | LogOp::SetCollectionOptions { ns, .. }
            | LogOp::Command { ns, .. } => ns,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            LogOp::Insert { .. } => "insert",
            LogOp::Update { .. } => "update",
            LogOp::Delete { .. } => "delete",
            LogOp::CreateCollection { .. } => "create",
            LogOp::DropCollection { .. } => "drop",
            LogOp::CreateIndex { .. } => "createIndex",
            LogOp::DropIndex { .. } => "dropIndex",
            LogOp::SetCollectionOptions { .. } => "collMod",
            LogOp::Command { .. } => "command",
        }
    }

    /// The `_id` of the document written, for display.
    pub fn id(&self) -> Option<Bson> {
        match self {
            LogOp::Insert { doc, .. } | LogOp::Update { doc, .. } => doc
                .get("_id")
                .ok()
                .flatten()
                .and_then(|v| Bson::try_from(v).ok()),
            LogOp::Delete { id, .. } => Some(id.clone()),
            _ => None,
        }
    }
}

/// Who committed a transaction: MongoDB's logical session id and transaction number.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommitMeta {
    pub lsid: Option<Document>,
    pub txn_number: Option<i64>,
    /// A multi-document transaction (`autocommit: false`), not a retryable write: change
    /// events show the session fields only for these, as mongod's do.
    pub in_transaction: bool,
}

/// A committed transaction as read back from the log.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRecord {
    pub ts: Timestamp,
    pub wall_ms: i64,
    pub meta: CommitMeta,
    pub ops: Vec<LogOp>,
}

/// Where a record lives, for error messages and `mangrove log`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordPos {
    pub segment: PathBuf,
    pub offset: u64,
    pub len: u64,
}

/// Encodes a record whose timestamp and wall clock are filled in later by
/// [`seal_record`], so that the costly part happens outside the commit lock. Documents are
/// copied into the record as they are stored, never parsed: this runs once per commit.
pub(crate) fn encode_record(meta: &CommitMeta, ops: &[LogOp]) -> Result<Vec<u8>, StorageError> {
    let encoding = |e: bson::error::Error| StorageError::Encoding(e.to_string());
    let mut body = RawDocumentBuf::new();
    body.append(cstr!("v"), RECORD_VERSION);
    if let Some(lsid) = &meta.lsid {
        body.append(
            cstr!("lsid"),
            RawDocumentBuf::try_from(lsid).map_err(encoding)?,
        );
    }
    if let Some(n) = meta.txn_number {
        body.append(cstr!("txnNumber"), n);
    }
    if meta.in_transaction {
        body.append(cstr!("multi"), true);
    }
    let mut encoded_ops = RawArrayBuf::new();
    for op in ops {
        encoded_ops.push(encode_op(op)?);
    }
    body.append(cstr!("ops"), encoded_ops);
    let body = body.into_bytes();
    let payload_len = PAYLOAD_PREFIX_LEN + body.len();
    if payload_len > MAX_RECORD_LEN {
        return Err(StorageError::TransactionTooLarge {
            bytes: payload_len,
            max: MAX_RECORD_LEN,
        });
    }
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + payload_len);
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc, set by seal_record
    out.extend_from_slice(&[0; PAYLOAD_PREFIX_LEN]);
    out.extend_from_slice(&body);
    Ok(out)
}

/// One op of a record's body (see the module comment for its fields).
fn encode_op(op: &LogOp) -> Result<RawDocumentBuf, StorageError> {
    // An op without a namespace would replay as a write to nothing: a bug upstream.
    assert!(
        !op.ns().is_empty(),
        "a {} log op without a namespace",
        op.kind()
    );
    let encoding = |e: bson::error::Error| StorageError::Encoding(e.to_string());
    let mut d = RawDocumentBuf::new();
    let code = match op {
        LogOp::Insert { .. } => "i",
        LogOp::Update { .. } => "u",
        LogOp::Delete { .. } => "d",
        LogOp::CreateCollection { .. } => "c",
        LogOp::DropCollection { .. } => "x",
        LogOp::CreateIndex { .. } => "ci",
        LogOp::DropIndex { .. } => "di",
        LogOp::SetCollectionOptions { .. } => "co",
        LogOp::Command { .. } => "n",
    };
    d.append(cstr!("op"), code);
    d.append(cstr!("ns"), op.ns());
    match op {
        LogOp::Insert { .. } | LogOp::Update { .. } | LogOp::Delete { .. } => {
            encode_doc_op(&mut d, op)?;
        }
        LogOp::CreateCollection { options, .. }
        | LogOp::SetCollectionOptions { options, .. }
        | LogOp::Command { o: options, .. } => {
            d.append(
                cstr!("o"),
                RawDocumentBuf::try_from(options).map_err(encoding)?,
            );
        }
        LogOp::DropCollection { .. } => {}
        LogOp::CreateIndex { spec, .. } => {
            d.append(
                cstr!("o"),
                RawDocumentBuf::try_from(spec).map_err(encoding)?,
            );
        }
        LogOp::DropIndex { name, .. } => {
            d.append(cstr!("name"), name.as_str());
        }
    }
    Ok(d)
}

/// The fields of a document op after its kind and namespace. Documents are copied as stored.
fn encode_doc_op(d: &mut RawDocumentBuf, op: &LogOp) -> Result<(), StorageError> {
    let encoding = |e: bson::error::Error| StorageError::Encoding(e.to_string());
    match op {
        LogOp::Insert { key, doc, .. } => {
            d.append(cstr!("k"), binary(key));
            d.append(cstr!("o"), doc.as_ref() as &RawDocument);
        }
        LogOp::Update {
            key,
            doc,
            diff,
            pre,
            ..
        } => {
            d.append(cstr!("k"), binary(key));
            d.append(cstr!("o"), doc.as_ref() as &RawDocument);
            if let Some(diff) = diff {
                d.append(cstr!("diff"), diff.as_ref() as &RawDocument);
            }
            if let Some(pre) = pre {
                d.append(cstr!("pre"), pre.as_ref() as &RawDocument);
            }
        }
        LogOp::Delete { key, id, pre, .. } => {
            d.append(cstr!("k"), binary(key));
            d.append(
                cstr!("_id"),
                RawBson::try_from(id.clone()).map_err(encoding)?,
            );
            if let Some(pre) = pre {
                d.append(cstr!("pre"), pre.as_ref() as &RawDocument);
            }
        }
        _ => unreachable!("encode_doc_op is called for document ops only"),
    }
    Ok(())
}

fn binary(bytes: &[u8]) -> RawBinaryRef<'_> {
    RawBinaryRef {
        subtype: bson::spec::BinarySubtype::Generic,
        bytes,
    }
}

/// Stamps the commit timestamp and wall clock into an encoded record and computes its CRC.
pub(crate) fn seal_record(record: &mut [u8], ts: Timestamp, wall_ms: i64) {
    assert!(record.len() >= RECORD_HEADER_LEN + PAYLOAD_PREFIX_LEN);
    record[8..16].copy_from_slice(&ts.0.to_le_bytes());
    record[16..24].copy_from_slice(&wall_ms.to_le_bytes());
    let crc = record_crc(&record[0..4], &record[RECORD_HEADER_LEN..]);
    record[4..8].copy_from_slice(&crc.to_le_bytes());
}

fn record_crc(len: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len), payload)
}

/// Reads a record's payload on the raw bytes: documents are copied out once, not parsed and
/// rebuilt (replay speed is recovery time).
fn decode_payload(payload: &[u8]) -> Result<LogRecord, String> {
    let (prefix, body) = payload
        .split_at_checked(PAYLOAD_PREFIX_LEN)
        .ok_or("record shorter than its fixed prefix")?;
    let ts = Timestamp(u64::from_le_bytes(
        prefix[0..8].try_into().map_err(|_| "bad ts")?,
    ));
    let wall_ms = i64::from_le_bytes(prefix[8..16].try_into().map_err(|_| "bad wall clock")?);
    let body = RawDocument::from_bytes(body).map_err(bad("body is not BSON"))?;
    match body.get_i32("v") {
        Ok(1 | RECORD_VERSION) => {}
        other => return Err(format!("unsupported record version {other:?}")),
    }
    let meta = CommitMeta {
        lsid: match body.get_document("lsid") {
            Ok(lsid) => Some(Document::try_from(lsid).map_err(bad("lsid"))?),
            Err(_) => None,
        },
        txn_number: body.get_i64("txnNumber").ok(),
        in_transaction: body.get_bool("multi").unwrap_or(false),
    };
    let mut ops = Vec::new();
    for op in body.get_array("ops").map_err(bad("ops"))? {
        let op = match op.map_err(bad("ops"))? {
            RawBsonRef::Document(op) => op,
            _ => return Err("op is not a document".into()),
        };
        ops.push(decode_op(op)?);
    }
    Ok(LogRecord {
        ts,
        wall_ms,
        meta,
        ops,
    })
}

fn bad(what: &'static str) -> impl Fn(bson::error::Error) -> String {
    move |e| format!("record {what}: {e}")
}

/// The fields of one op, found in one pass over it (a record is decoded once per reader of
/// the log's tail and at every replay: looking each field up again would walk the op's keys
/// once per field).
#[derive(Default)]
struct OpFields<'a> {
    kind: Option<&'a str>,
    ns: Option<&'a str>,
    key: Option<&'a [u8]>,
    o: Option<RawBsonRef<'a>>,
    diff: Option<RawBsonRef<'a>>,
    pre: Option<RawBsonRef<'a>>,
    id: Option<RawBsonRef<'a>>,
    name: Option<&'a str>,
}

impl<'a> OpFields<'a> {
    fn of(op: &'a RawDocument) -> Result<OpFields<'a>, String> {
        let mut f = OpFields::default();
        for element in op {
            let (key, value) = element.map_err(bad("op"))?;
            match key.as_str() {
                "op" => f.kind = value.as_str(),
                "ns" => f.ns = value.as_str(),
                "k" => f.key = value.as_binary().map(|b| b.bytes),
                "o" => f.o = Some(value),
                "diff" => f.diff = Some(value),
                "pre" => f.pre = Some(value),
                "_id" => f.id = Some(value),
                "name" => f.name = value.as_str(),
                _ => {}
            }
        }
        Ok(f)
    }

    fn key(&self) -> Result<Vec<u8>, String> {
        self.key
            .map(<[u8]>::to_vec)
            .ok_or_else(|| "record key: missing or not binary".to_string())
    }

    fn o_doc(&self, what: &str) -> Result<&'a RawDocument, String> {
        match self.o {
            Some(RawBsonRef::Document(d)) => Ok(d),
            _ => Err(format!("record {what}: missing or not a document")),
        }
    }

    fn doc(&self) -> Result<StoredDoc, String> {
        Ok(Arc::new(self.o_doc("document")?.to_owned()))
    }

    /// An op's `o`, parsed (catalog ops and annotations: small, and used parsed).
    fn owned_o(&self, what: &'static str) -> Result<Document, String> {
        Document::try_from(self.o_doc(what)?).map_err(bad(what))
    }
}

/// An optional document of an op: absent in version 1, and when not recorded.
fn optional_doc(value: Option<RawBsonRef<'_>>, field: &str) -> Result<Option<StoredDoc>, String> {
    match value {
        None => Ok(None),
        Some(RawBsonRef::Document(d)) => Ok(Some(Arc::new(d.to_owned()))),
        Some(_) => Err(format!("record {field} is not a document")),
    }
}

/// One op of a record's body.
fn decode_op(op: &RawDocument) -> Result<LogOp, String> {
    let f = OpFields::of(op)?;
    let ns =
        f.ns.ok_or_else(|| "record ns: missing or not a string".to_string())?
            .to_string();
    let kind = f
        .kind
        .ok_or_else(|| "record kind: missing or not a string".to_string())?;
    Ok(match kind {
        "i" => LogOp::Insert {
            ns,
            key: f.key()?,
            doc: f.doc()?,
        },
        "u" => LogOp::Update {
            ns,
            key: f.key()?,
            doc: f.doc()?,
            diff: optional_doc(f.diff, "diff")?,
            pre: optional_doc(f.pre, "pre")?,
        },
        "d" => LogOp::Delete {
            ns,
            key: f.key()?,
            id: match f.id {
                Some(id) => Bson::try_from(id).map_err(bad("_id"))?,
                None => Bson::Null,
            },
            pre: optional_doc(f.pre, "pre")?,
        },
        "c" => LogOp::CreateCollection {
            ns,
            options: match f.o {
                Some(RawBsonRef::Document(o)) => Document::try_from(o).map_err(bad("options"))?,
                _ => Document::new(),
            },
        },
        "x" => LogOp::DropCollection { ns },
        "ci" => LogOp::CreateIndex {
            ns,
            spec: f.owned_o("index spec")?,
        },
        "co" => LogOp::SetCollectionOptions {
            ns,
            options: f.owned_o("options")?,
        },
        "n" => LogOp::Command {
            ns,
            o: f.owned_o("annotation")?,
        },
        "di" => LogOp::DropIndex {
            ns,
            name: f
                .name
                .ok_or_else(|| "record index name: missing or not a string".to_string())?
                .to_string(),
        },
        other => return Err(format!("unknown op kind {other:?}")),
    })
}

pub(crate) fn segment_name(first_ts: Timestamp) -> String {
    format!("{:016x}{SEGMENT_SUFFIX}", first_ts.0)
}

/// The segment files of a log directory, oldest first.
pub fn list_segments(dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(StorageError::io(
                format!("cannot list {}", dir.display()),
                e,
            ));
        }
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| StorageError::io(format!("cannot list {}", dir.display()), e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX)
            && stem.len() == 16
            && stem.chars().all(|c| c.is_ascii_hexdigit())
        {
            segments.push(entry.path());
        }
    }
    segments.sort();
    Ok(segments)
}

mod control;
mod copy;
pub(crate) mod reader;
mod scan;
mod segment;
mod writer;

pub use control::{Control, DurableEnd};
pub(crate) use control::{read as read_control, write as write_control};
pub use copy::{CopyEnd, CopyLimit, SegmentCopy, copy_segment};
pub(crate) use copy::{
    archive_sealed, check_link, check_starts_after, copy_log_range, file_name, segments_between,
    sync_dir,
};
pub(crate) use scan::name_ts;
pub use scan::scan_log_for_recovery;
pub use scan::{LogDamage, LogEnd, LogScan, TornTail, scan_log};
pub use segment::{Predecessor, SegmentHeader};
pub(crate) use writer::{ControlHandle, LogWriter, Retention, remove_covered_segments};
pub use writer::{CutReport, cut_at_damage};

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, rawdoc};

    /// A payload as `encode_record` and `seal_record` frame it, with the given body.
    fn payload(body: &RawDocument) -> Vec<u8> {
        let mut p = vec![0u8; PAYLOAD_PREFIX_LEN];
        p[0..8].copy_from_slice(&7u64.to_le_bytes());
        p.extend_from_slice(body.as_bytes());
        p
    }

    #[test]
    fn version_1_records_still_decode() {
        let key = bson::Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: vec![1, 2],
        };
        let body = rawdoc! {
            "v": 1,
            "ops": [
                { "op": "u", "ns": "db.c", "k": key.clone(), "o": { "_id": 1, "v": 2 } },
                { "op": "d", "ns": "db.c", "k": key, "_id": 1 },
            ],
        };
        let record = decode_payload(&payload(&body)).unwrap();
        assert_eq!(record.ts, Timestamp(7));
        assert!(matches!(
            &record.ops[0],
            LogOp::Update {
                diff: None,
                pre: None,
                ..
            }
        ));
        assert!(matches!(&record.ops[1], LogOp::Delete { pre: None, .. }));
    }

    #[test]
    fn version_2_ops_round_trip() {
        let stored = |d: RawDocumentBuf| Arc::new(d);
        let ops = vec![
            LogOp::SetCollectionOptions {
                ns: "db.c".into(),
                options: doc! { "changeStreamPreAndPostImages": { "enabled": true } },
            },
            LogOp::Update {
                ns: "db.c".into(),
                key: vec![1],
                doc: stored(rawdoc! { "_id": 1, "v": 2 }),
                diff: Some(stored(rawdoc! { "updatedFields": { "v": 2 } })),
                pre: Some(stored(rawdoc! { "_id": 1, "v": 1 })),
            },
            LogOp::Update {
                ns: "db.c".into(),
                key: vec![2],
                doc: stored(rawdoc! { "_id": 2 }),
                diff: None,
                pre: None,
            },
            LogOp::Delete {
                ns: "db.c".into(),
                key: vec![3],
                id: Bson::Int32(3),
                pre: Some(stored(rawdoc! { "_id": 3 })),
            },
            LogOp::Command {
                ns: "db.$cmd".into(),
                o: doc! { "dropDatabase": 1 },
            },
            LogOp::Insert {
                ns: "db.c".into(),
                key: vec![4],
                doc: stored(rawdoc! { "_id": 4, "a": [1, 2] }),
            },
            LogOp::CreateCollection {
                ns: "db.d".into(),
                options: doc! { "capped": true, "size": 4096 },
            },
            LogOp::CreateIndex {
                ns: "db.d".into(),
                spec: doc! { "v": 2, "key": { "a": 1 }, "name": "a_1" },
            },
            LogOp::DropIndex {
                ns: "db.d".into(),
                name: "a_1".into(),
            },
            LogOp::DropCollection { ns: "db.d".into() },
        ];
        let meta = CommitMeta {
            lsid: Some(
                doc! { "id": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![7; 16] } },
            ),
            txn_number: Some(42),
            in_transaction: true,
        };
        let mut record = encode_record(&meta, &ops).unwrap();
        seal_record(&mut record, Timestamp(9), 0);
        let decoded = decode_payload(&record[RECORD_HEADER_LEN..]).unwrap();
        assert_eq!(decoded.ops, ops);
        assert_eq!(decoded.meta, meta);
        let body = RawDocument::from_bytes(&record[RECORD_HEADER_LEN + PAYLOAD_PREFIX_LEN..]);
        assert_eq!(body.unwrap().get_i32("v").unwrap(), RECORD_VERSION);
    }
}
